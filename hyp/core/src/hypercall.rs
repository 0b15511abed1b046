//! Host hypercalls: decode registers into a typed call, then dispatch.
//!
//! Two steps, kept apart as in pKVM's `hyp-main.c` (`handle___*` unpacking
//! registers, then the `__pkvm_*` core function):
//!
//! - [`decode_host_call`] is the single `match` on the function ID. It turns
//!   `x0..x7` into a [`HostCall`] or a [`DecodeError`], and nothing else;
//!   every register is hostile, every value is accepted without panicking.
//! - [`handle_host_call`] runs a decoded call against the page database and
//!   returns `x0..x3`. Transitions change nothing when they fail.
//!
//! The register conventions are in [`crate::abi`].

use crate::abi::{self, hc, ret, smccc};
use crate::addr::{Pfn, PhysAddr};
use crate::hal::Hal;
use crate::mem_protect::{MemProtect, MemProtectError, Owner};

/// A decoded host call, with typed arguments.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HostCall {
    /// `SMCCC_VERSION`.
    SmcccVersion,
    /// `SMCCC_ARCH_FEATURES(fid)`.
    SmcccArchFeatures {
        /// The function ID asked about (`w1`).
        fid: u32,
    },
    /// Vendor-hyp `Call UID` query.
    VendorHypCallUid,
    /// Vendor-hyp `Revision` query.
    VendorHypRevision,
    /// `GET_VERSION`.
    GetVersion,
    /// `HOST_SHARE_HYP(pfn)`.
    HostShareHyp {
        /// Frame to share.
        pfn: Pfn,
    },
    /// `HOST_UNSHARE_HYP(pfn)`.
    HostUnshareHyp {
        /// Frame to unshare.
        pfn: Pfn,
    },
    /// `HOST_DONATE_HYP(pfn, count)`.
    HostDonateHyp {
        /// First frame.
        pfn: Pfn,
        /// Number of frames.
        count: u64,
    },
    /// `HYP_DONATE_HOST(pfn, count)`.
    HypDonateHost {
        /// First frame.
        pfn: Pfn,
        /// Number of frames.
        count: u64,
    },
    /// Debug: `PAGE_OWNER(pa)`.
    PageOwner {
        /// Any address in the page asked about.
        pa: PhysAddr,
    },
}

/// Why registers did not decode to a call.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DecodeError {
    /// No such function (`x0` as received).
    UnknownFunction {
        /// The raw `x0`.
        x0: u64,
    },
    /// A register the call does not use is non-zero.
    ReservedArgNonZero {
        /// The register number (1..=7).
        reg: u8,
    },
}

impl DecodeError {
    /// The result registers `x0..x3` for this error.
    pub const fn to_regs(&self) -> [u64; 4] {
        match *self {
            Self::UnknownFunction { .. } => [ret::NOT_SUPPORTED, abi::err::UNKNOWN_FUNCTION, 0, 0],
            Self::ReservedArgNonZero { reg } => [
                ret::INVALID_PARAMETER,
                abi::err::RESERVED_ARG,
                reg as u64,
                0,
            ],
        }
    }
}

/// Requires `x(used+1)..x7` to be zero.
fn reserved_zero(regs: &[u64; 8], used: usize) -> Result<(), DecodeError> {
    match regs
        .iter()
        .enumerate()
        .skip(used + 1)
        .find(|(_, &v)| v != 0)
    {
        Some((reg, _)) => Err(DecodeError::ReservedArgNonZero {
            reg: u8::try_from(reg).unwrap_or(u8::MAX),
        }),
        None => Ok(()),
    }
}

/// The function ID in `x0`: bits 63..32 must be clear; the SVE hint is
/// dropped.
fn function_id(x0: u64) -> Option<u32> {
    let id = u32::try_from(x0).ok()?;
    Some(id & !abi::SMCCC_SVE_HINT)
}

/// The low 32 bits of a register (SMC32 arguments live in `wN`).
fn low32(x: u64) -> u32 {
    u32::try_from(x & u64::from(u32::MAX)).unwrap_or(0)
}

/// Decodes the host's `x0..x7` into a call. Never panics.
///
/// # Errors
/// [`DecodeError::UnknownFunction`] for any `x0` that is not an implemented
/// function; [`DecodeError::ReservedArgNonZero`] when a Cloister call has a
/// non-zero register beyond its arguments.
pub fn decode_host_call(regs: &[u64; 8]) -> Result<HostCall, DecodeError> {
    let unknown = DecodeError::UnknownFunction { x0: regs[0] };
    let id = function_id(regs[0]).ok_or(unknown)?;
    let call = match id {
        // Standard SMCCC queries: unused registers are ignored (see abi).
        smccc::VERSION => HostCall::SmcccVersion,
        smccc::ARCH_FEATURES => HostCall::SmcccArchFeatures {
            fid: low32(regs[1]),
        },
        smccc::VENDOR_HYP_CALL_UID => HostCall::VendorHypCallUid,
        smccc::VENDOR_HYP_REVISION => HostCall::VendorHypRevision,
        // Cloister calls: unused registers must be zero.
        hc::GET_VERSION => {
            reserved_zero(regs, 0)?;
            HostCall::GetVersion
        }
        hc::HOST_SHARE_HYP => {
            reserved_zero(regs, 1)?;
            HostCall::HostShareHyp {
                pfn: Pfn::new(regs[1]),
            }
        }
        hc::HOST_UNSHARE_HYP => {
            reserved_zero(regs, 1)?;
            HostCall::HostUnshareHyp {
                pfn: Pfn::new(regs[1]),
            }
        }
        hc::HOST_DONATE_HYP => {
            reserved_zero(regs, 2)?;
            HostCall::HostDonateHyp {
                pfn: Pfn::new(regs[1]),
                count: regs[2],
            }
        }
        hc::HYP_DONATE_HOST => {
            reserved_zero(regs, 2)?;
            HostCall::HypDonateHost {
                pfn: Pfn::new(regs[1]),
                count: regs[2],
            }
        }
        hc::PAGE_OWNER => {
            reserved_zero(regs, 1)?;
            HostCall::PageOwner {
                pa: PhysAddr::new(regs[1]),
            }
        }
        _ => return Err(unknown),
    };
    Ok(call)
}

/// Whether `fid` names a function the host may call (for `ARCH_FEATURES`).
pub fn is_implemented(fid: u32) -> bool {
    matches!(
        fid,
        smccc::VERSION
            | smccc::ARCH_FEATURES
            | smccc::VENDOR_HYP_CALL_UID
            | smccc::VENDOR_HYP_REVISION
    ) || abi::HOST_CALLS.iter().any(|c| c.id == fid)
}

fn status(r: Result<(), MemProtectError>) -> [u64; 4] {
    match r {
        Ok(()) => [ret::SUCCESS, 0, 0, 0],
        Err(e) => e.to_regs(),
    }
}

/// Runs a decoded host call and returns `x0..x3`. A failing call changes
/// nothing.
pub fn handle_host_call<H: Hal + ?Sized>(
    call: HostCall,
    state: &mut MemProtect<'_>,
    hal: &mut H,
) -> [u64; 4] {
    let version = abi::ABI_VERSION;
    match call {
        HostCall::SmcccVersion => [abi::SMCCC_VERSION_1_1, 0, 0, 0],
        HostCall::SmcccArchFeatures { fid } => {
            let code = if is_implemented(fid) {
                ret::SUCCESS
            } else {
                ret::NOT_SUPPORTED
            };
            [code, 0, 0, 0]
        }
        HostCall::VendorHypCallUid => abi::CLOISTER_UID.map(u64::from),
        HostCall::VendorHypRevision => [u64::from(version.major), u64::from(version.minor), 0, 0],
        HostCall::GetVersion => [
            ret::SUCCESS,
            u64::from(version.major),
            u64::from(version.minor),
            abi::pack_version(abi::HYP_VERSION),
        ],
        HostCall::HostShareHyp { pfn } => status(state.host_share_hyp(pfn, hal)),
        HostCall::HostUnshareHyp { pfn } => status(state.host_unshare_hyp(pfn, hal)),
        HostCall::HostDonateHyp { pfn, count } => status(state.host_donate_hyp(pfn, count, hal)),
        HostCall::HypDonateHost { pfn, count } => status(state.hyp_donate_host(pfn, count, hal)),
        HostCall::PageOwner { pa } => match state.db().get(pa.pfn()) {
            Some(m) => {
                let handle = match m.owner() {
                    Owner::Guest(h) => u64::from(h.raw()),
                    Owner::Host | Owner::Hyp => 0,
                };
                let states = m.host_state().abi_code() | m.hyp_state().abi_code() << 8;
                [ret::SUCCESS, m.owner().abi_code(), handle, states]
            }
            None => MemProtectError::OutOfRange {
                pfn: pa.pfn(),
                count: 1,
            }
            .to_regs(),
        },
    }
}

/// Decodes and runs one host HVC: the whole path from the trap handler's
/// saved `x0..x7` to the `x0..x3` it writes back.
pub fn handle_host_hvc<H: Hal + ?Sized>(
    regs: &[u64; 8],
    state: &mut MemProtect<'_>,
    hal: &mut H,
) -> [u64; 4] {
    match decode_host_call(regs) {
        Ok(call) => handle_host_call(call, state, hal),
        Err(e) => e.to_regs(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(x0: u32, args: &[u64]) -> [u64; 8] {
        let mut r = [0; 8];
        r[0] = u64::from(x0);
        r[1..=args.len()].copy_from_slice(args);
        r
    }

    #[test]
    fn decodes_every_table_call() {
        let expected = [
            (hc::GET_VERSION, HostCall::GetVersion),
            (
                hc::HOST_SHARE_HYP,
                HostCall::HostShareHyp { pfn: Pfn::new(7) },
            ),
            (
                hc::HOST_UNSHARE_HYP,
                HostCall::HostUnshareHyp { pfn: Pfn::new(7) },
            ),
            (
                hc::HOST_DONATE_HYP,
                HostCall::HostDonateHyp {
                    pfn: Pfn::new(7),
                    count: 9,
                },
            ),
            (
                hc::HYP_DONATE_HOST,
                HostCall::HypDonateHost {
                    pfn: Pfn::new(7),
                    count: 9,
                },
            ),
            (
                hc::PAGE_OWNER,
                HostCall::PageOwner {
                    pa: PhysAddr::new(7),
                },
            ),
        ];
        assert_eq!(expected.len(), abi::HOST_CALLS.len());
        for call in abi::HOST_CALLS {
            let args = [7, 9];
            let r = regs(call.id, &args[..call.args.len()]);
            let want = expected
                .iter()
                .find(|(id, _)| *id == call.id)
                .map(|(_, c)| *c);
            assert_eq!(decode_host_call(&r).ok(), want, "{}", call.name);
            assert!(is_implemented(call.id), "{}", call.name);
            // One more non-zero register than the call takes is rejected.
            let mut extra = r;
            let reg = call.args.len() + 1;
            extra[reg] = 1;
            assert_eq!(
                decode_host_call(&extra),
                Err(DecodeError::ReservedArgNonZero {
                    reg: u8::try_from(reg).unwrap_or(0)
                }),
                "{}",
                call.name
            );
            // x7 too.
            let mut last = r;
            last[7] = u64::MAX;
            assert_eq!(
                decode_host_call(&last),
                Err(DecodeError::ReservedArgNonZero { reg: 7 }),
                "{}",
                call.name
            );
            // The SVE hint is ignored; high bits of x0 are not.
            let mut hinted = r;
            hinted[0] |= u64::from(abi::SMCCC_SVE_HINT);
            assert_eq!(decode_host_call(&hinted).ok(), want);
            let mut high = r;
            high[0] |= 1 << 32;
            assert_eq!(
                decode_host_call(&high),
                Err(DecodeError::UnknownFunction { x0: high[0] })
            );
        }
    }

    #[test]
    fn standard_queries_ignore_unused_registers() {
        let junk = [u64::MAX; 7];
        let mut r = regs(smccc::VERSION, &junk);
        assert_eq!(decode_host_call(&r), Ok(HostCall::SmcccVersion));
        r[0] = u64::from(smccc::VENDOR_HYP_CALL_UID);
        assert_eq!(decode_host_call(&r), Ok(HostCall::VendorHypCallUid));
        r[0] = u64::from(smccc::VENDOR_HYP_REVISION);
        assert_eq!(decode_host_call(&r), Ok(HostCall::VendorHypRevision));
        r[0] = u64::from(smccc::ARCH_FEATURES);
        r[1] = 0xdead_beef_0000_0000 | u64::from(hc::GET_VERSION);
        assert_eq!(
            decode_host_call(&r),
            Ok(HostCall::SmcccArchFeatures {
                fid: hc::GET_VERSION
            })
        );
    }

    #[test]
    fn handles_every_call_end_to_end() {
        use crate::mem_protect::PageState;
        use crate::test_utils::{self as tu, pfn, HOST_FIRST};
        let mut mem = tu::memory();
        let mut metas = tu::metas();
        let mut hal = tu::hal(&mut mem);
        let mut mp = tu::mem_protect(&mut metas, &mut hal);
        let mut call = |x0: u32, args: &[u64], mp: &mut MemProtect<'_>| {
            handle_host_hvc(&regs(x0, args), mp, &mut hal)
        };
        let p = pfn(HOST_FIRST + 1).raw();
        let pa_of = |p: u64| p << crate::addr::PAGE_SHIFT;
        let owner = abi::owner::HOST;
        let states = |host: PageState, hyp: PageState| host.abi_code() | hyp.abi_code() << 8;

        assert_eq!(call(smccc::VERSION, &[], &mut mp), [0x1_0001, 0, 0, 0]);
        assert_eq!(
            call(
                smccc::ARCH_FEATURES,
                &[u64::from(hc::HOST_DONATE_HYP)],
                &mut mp
            )[0],
            ret::SUCCESS
        );
        assert_eq!(
            call(smccc::ARCH_FEATURES, &[0xc600_00bf], &mut mp)[0],
            ret::NOT_SUPPORTED
        );
        assert_eq!(
            call(smccc::VENDOR_HYP_CALL_UID, &[], &mut mp),
            [0x6779_03f5, 0xdd43_e845, 0xa318_ea99, 0xf794_3656]
        );
        assert_eq!(call(smccc::VENDOR_HYP_REVISION, &[], &mut mp), [0, 1, 0, 0]);
        assert_eq!(
            call(hc::GET_VERSION, &[], &mut mp),
            [ret::SUCCESS, 0, 1, abi::pack_version((0, 1, 0))]
        );
        assert_eq!(abi::HYP_VERSION, (0, 1, 0), "crate version 0.1.0");

        let owned = states(PageState::Owned, PageState::NoPage);
        assert_eq!(
            call(hc::PAGE_OWNER, &[pa_of(p) + 0x123], &mut mp),
            [ret::SUCCESS, owner, 0, owned]
        );
        assert_eq!(
            call(hc::HOST_SHARE_HYP, &[p], &mut mp),
            [ret::SUCCESS, 0, 0, 0]
        );
        let shared = states(PageState::SharedOwned, PageState::SharedBorrowed);
        assert_eq!(
            call(hc::PAGE_OWNER, &[pa_of(p)], &mut mp),
            [ret::SUCCESS, owner, 0, shared]
        );
        let again = call(hc::HOST_SHARE_HYP, &[p], &mut mp);
        assert_eq!(
            again,
            [
                ret::DENIED,
                abi::err::BAD_STATE,
                p,
                abi::owner::HOST << 8 | 1
            ]
        );
        assert_eq!(
            call(hc::HOST_UNSHARE_HYP, &[p], &mut mp),
            [ret::SUCCESS, 0, 0, 0]
        );

        assert_eq!(
            call(hc::HOST_DONATE_HYP, &[p, 3], &mut mp),
            [ret::SUCCESS, 0, 0, 0]
        );
        let donated = states(PageState::NoPage, PageState::Owned);
        assert_eq!(
            call(hc::PAGE_OWNER, &[pa_of(p + 2)], &mut mp),
            [ret::SUCCESS, abi::owner::HYP, 0, donated]
        );
        assert_eq!(
            call(hc::HYP_DONATE_HOST, &[p, 3], &mut mp),
            [ret::SUCCESS, 0, 0, 0]
        );
        assert_eq!(
            call(hc::PAGE_OWNER, &[pa_of(p + 2)], &mut mp),
            [ret::SUCCESS, owner, 0, owned]
        );

        // The hyp's own memory stays the hyp's.
        let hyp_pfn = pfn(0).raw();
        assert_eq!(
            call(hc::HYP_DONATE_HOST, &[hyp_pfn, 1], &mut mp),
            [ret::DENIED, abi::err::NOT_DONATED, hyp_pfn, 0]
        );
        assert_eq!(
            call(hc::HOST_DONATE_HYP, &[p, 0], &mut mp),
            [ret::INVALID_PARAMETER, abi::err::ZERO_COUNT, 0, 0]
        );
        assert_eq!(
            call(hc::PAGE_OWNER, &[0x1000], &mut mp),
            [ret::INVALID_PARAMETER, abi::err::OUT_OF_RANGE, 1, 1]
        );
        assert_eq!(mp.check_invariants(&hal), Ok(()));
        mp.destroy(&mut hal);
        assert_eq!(hal.live_pages(), 0);
    }

    #[test]
    fn unknown_ids_are_not_supported() {
        for x0 in [
            0,
            0xc600_0000,
            0xc600_007f,
            0xc600_00bf,
            0x8600_0080,
            0x8400_0000,
            u64::MAX,
        ] {
            let r = [x0, 0, 0, 0, 0, 0, 0, 0];
            assert_eq!(
                decode_host_call(&r),
                Err(DecodeError::UnknownFunction { x0 })
            );
            assert_eq!(
                DecodeError::UnknownFunction { x0 }.to_regs(),
                [ret::NOT_SUPPORTED, abi::err::UNKNOWN_FUNCTION, 0, 0]
            );
        }
        assert!(
            !is_implemented(0x8000_8000),
            "ARCH_WORKAROUND_1 is firmware's"
        );
        assert_eq!(
            DecodeError::ReservedArgNonZero { reg: 3 }.to_regs(),
            [ret::INVALID_PARAMETER, abi::err::RESERVED_ARG, 3, 0]
        );
    }
}
