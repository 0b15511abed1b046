//! Host hypercalls: decode registers into a typed call, then dispatch.
//!
//! Two steps, kept apart as in pKVM's `hyp-main.c` (`handle___*` unpacking
//! registers, then the `__pkvm_*` core function):
//!
//! - [`decode_host_call`] is the single `match` on the function ID. It turns
//!   `x0..x7` into a [`HostCall`] or a [`DecodeError`], and nothing else;
//!   every register is hostile, every value is accepted without panicking.
//! - [`handle_host_call`] runs a decoded call against the page database and
//!   the VM table and returns a [`HostOutcome`]: almost always `x0..x3`;
//!   for `VCPU_RUN`, a request to the arch glue to run the vCPU.
//!   Calls change nothing when they fail.
//!
//! The register conventions are in [`crate::abi`]. VM handles and vCPU
//! indices are decoded as the raw `u64`s the host passed; the VM table
//! resolves them ([`VmTable::resolve`]), so a stale handle is a
//! `NO_SUCH_VM` error, not a decode error.

use crate::abi::{self, hc, ret, smccc};
use crate::addr::{Ipa, Pfn, PhysAddr};
use crate::exits::RunRequest;
use crate::hal::Hal;
use crate::mem_protect::{MemProtect, MemProtectError, Owner, VmHandle};
use crate::vm::{VmError, VmKind, VmTable};

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
    /// `VM_CREATE(kvm_type)`.
    VmCreate {
        /// `KVM_CREATE_VM`'s type.
        kvm_type: u64,
    },
    /// `VCPU_CREATE(handle, vcpu, features)`.
    VcpuCreate {
        /// VM handle.
        handle: u64,
        /// vCPU index.
        vcpu: u64,
        /// `kvm_vcpu_init.features[0]`.
        features: u64,
    },
    /// `VM_DONATE(handle, pfn, ipa, count)`.
    VmDonate {
        /// VM handle.
        handle: u64,
        /// First host frame.
        pfn: Pfn,
        /// First guest IPA.
        ipa: Ipa,
        /// Number of pages.
        count: u64,
    },
    /// `VM_MAP_SHARED(handle, pfn, ipa, count)`.
    VmMapShared {
        /// VM handle.
        handle: u64,
        /// First host frame.
        pfn: Pfn,
        /// First guest IPA.
        ipa: Ipa,
        /// Number of pages.
        count: u64,
    },
    /// `VM_UNMAP_SHARED(handle, ipa)`.
    VmUnmapShared {
        /// VM handle.
        handle: u64,
        /// Guest IPA of the page.
        ipa: Ipa,
    },
    /// `VCPU_SET_REG(handle, vcpu, reg, value)`.
    VcpuSetReg {
        /// VM handle.
        handle: u64,
        /// vCPU index.
        vcpu: u64,
        /// Register number ([`abi::vcpu_reg`]).
        reg: u64,
        /// Value.
        value: u64,
    },
    /// `VCPU_GET_REG(handle, vcpu, reg)`.
    VcpuGetReg {
        /// VM handle.
        handle: u64,
        /// vCPU index.
        vcpu: u64,
        /// Register number ([`abi::vcpu_reg`]).
        reg: u64,
    },
    /// `VCPU_RUN(handle, vcpu, flags, data, pending_lo, pending_hi)`.
    VcpuRun {
        /// VM handle.
        handle: u64,
        /// vCPU index.
        vcpu: u64,
        /// Flags and MMIO data (flags checked: known bits only).
        run: RunRequest,
    },
    /// `VM_TEARDOWN(handle)`.
    VmTeardown {
        /// VM handle.
        handle: u64,
    },
    /// `VM_RECLAIM(handle)`.
    VmReclaim {
        /// VM handle.
        handle: u64,
    },
    /// `VM_RECLAIM_PAGE(handle, ipa)`.
    VmReclaimPage {
        /// VM handle.
        handle: u64,
        /// Guest IPA of the page.
        ipa: Ipa,
    },
    /// Debug: `PAGE_OWNER(pa)`.
    PageOwner {
        /// Any address in the page asked about.
        pa: PhysAddr,
    },
    /// Debug: `OWNERSHIP_DIGEST()`.
    OwnershipDigest,
    /// Debug: `VM_STATS(handle)`.
    VmStats {
        /// The VM.
        handle: u64,
    },
}

/// What to do with a host call's result.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HostOutcome {
    /// Write `x0..x3` and return to the host.
    Return([u64; 4]),
    /// `VCPU_RUN` passed [`VmTable::check_runnable`]: the arch glue loads
    /// the vCPU ([`VmTable::vcpu_load`]), runs it until an exit the host
    /// must see, puts it ([`VmTable::vcpu_put`]) and returns
    /// `[SUCCESS, exit, info0, info1]`.
    RunVcpu {
        /// The VM.
        handle: VmHandle,
        /// The vCPU index (checked).
        vcpu: usize,
        /// What to do with the pending exit ([`VmTable::settle_pending`]).
        run: RunRequest,
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
        hc::VM_CREATE => {
            reserved_zero(regs, 1)?;
            HostCall::VmCreate { kvm_type: regs[1] }
        }
        hc::VCPU_CREATE => {
            reserved_zero(regs, 3)?;
            HostCall::VcpuCreate {
                handle: regs[1],
                vcpu: regs[2],
                features: regs[3],
            }
        }
        hc::VM_DONATE => {
            reserved_zero(regs, 4)?;
            HostCall::VmDonate {
                handle: regs[1],
                pfn: Pfn::new(regs[2]),
                ipa: Ipa::new(regs[3]),
                count: regs[4],
            }
        }
        hc::VM_MAP_SHARED => {
            reserved_zero(regs, 4)?;
            HostCall::VmMapShared {
                handle: regs[1],
                pfn: Pfn::new(regs[2]),
                ipa: Ipa::new(regs[3]),
                count: regs[4],
            }
        }
        hc::VM_UNMAP_SHARED => {
            reserved_zero(regs, 2)?;
            HostCall::VmUnmapShared {
                handle: regs[1],
                ipa: Ipa::new(regs[2]),
            }
        }
        hc::VCPU_SET_REG => {
            reserved_zero(regs, 4)?;
            HostCall::VcpuSetReg {
                handle: regs[1],
                vcpu: regs[2],
                reg: regs[3],
                value: regs[4],
            }
        }
        hc::VCPU_GET_REG => {
            reserved_zero(regs, 3)?;
            HostCall::VcpuGetReg {
                handle: regs[1],
                vcpu: regs[2],
                reg: regs[3],
            }
        }
        hc::VCPU_RUN => {
            reserved_zero(regs, 6)?;
            if regs[3] & !abi::run_flag::ALL != 0 {
                return Err(DecodeError::ReservedArgNonZero { reg: 3 });
            }
            HostCall::VcpuRun {
                handle: regs[1],
                vcpu: regs[2],
                run: RunRequest {
                    flags: regs[3],
                    data: regs[4],
                    pending: u128::from(regs[5]) | u128::from(regs[6]) << 64,
                },
            }
        }
        hc::VM_TEARDOWN => {
            reserved_zero(regs, 1)?;
            HostCall::VmTeardown { handle: regs[1] }
        }
        hc::VM_RECLAIM => {
            reserved_zero(regs, 1)?;
            HostCall::VmReclaim { handle: regs[1] }
        }
        hc::VM_RECLAIM_PAGE => {
            reserved_zero(regs, 2)?;
            HostCall::VmReclaimPage {
                handle: regs[1],
                ipa: Ipa::new(regs[2]),
            }
        }
        hc::PAGE_OWNER => {
            reserved_zero(regs, 1)?;
            HostCall::PageOwner {
                pa: PhysAddr::new(regs[1]),
            }
        }
        hc::OWNERSHIP_DIGEST => {
            reserved_zero(regs, 0)?;
            HostCall::OwnershipDigest
        }
        hc::VM_STATS => {
            reserved_zero(regs, 1)?;
            HostCall::VmStats { handle: regs[1] }
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

/// `x0..x3` for a VM call: SUCCESS and up to one result, or the error.
fn vm_status(r: Result<u64, VmError>) -> [u64; 4] {
    match r {
        Ok(x1) => [ret::SUCCESS, x1, 0, 0],
        Err(e) => e.to_regs(),
    }
}

/// Runs a decoded host call. A failing call changes nothing.
pub fn handle_host_call<H: Hal + ?Sized>(
    call: HostCall,
    state: &mut MemProtect<'_>,
    vms: &mut VmTable,
    hal: &mut H,
) -> HostOutcome {
    let regs = match call {
        HostCall::VcpuRun { handle, vcpu, run } => {
            let checked = vms
                .resolve(handle)
                .and_then(|h| vms.check_run(h, vcpu, run).map(|i| (h, i)));
            return match checked {
                Ok((handle, vcpu)) => HostOutcome::RunVcpu { handle, vcpu, run },
                Err(e) => HostOutcome::Return(e.to_regs()),
            };
        }
        HostCall::VmCreate { kvm_type } => vm_status(
            VmKind::from_kvm_type(kvm_type)
                .and_then(|kind| vms.create_vm(kind, hal))
                .map(|h| u64::from(h.raw())),
        ),
        HostCall::VcpuCreate {
            handle,
            vcpu,
            features,
        } => vm_status(
            vms.resolve(handle)
                .and_then(|h| vms.create_vcpu(h, vcpu, features)),
        ),
        HostCall::VmDonate {
            handle,
            pfn,
            ipa,
            count,
        } => vm_status(
            vms.resolve(handle)
                .and_then(|h| vms.donate(state, h, pfn, ipa, count, hal))
                .map(|()| 0),
        ),
        HostCall::VmMapShared {
            handle,
            pfn,
            ipa,
            count,
        } => vm_status(
            vms.resolve(handle)
                .and_then(|h| vms.map_shared(state, h, pfn, ipa, count, hal))
                .map(|()| 0),
        ),
        HostCall::VmUnmapShared { handle, ipa } => vm_status(
            vms.resolve(handle)
                .and_then(|h| vms.unmap_shared(state, h, ipa, hal))
                .map(|()| 0),
        ),
        HostCall::VcpuSetReg {
            handle,
            vcpu,
            reg,
            value,
        } => vm_status(
            vms.resolve(handle)
                .and_then(|h| vms.set_vcpu_reg(h, vcpu, reg, value))
                .map(|()| 0),
        ),
        HostCall::VcpuGetReg { handle, vcpu, reg } => vm_status(
            vms.resolve(handle)
                .and_then(|h| vms.get_vcpu_reg(h, vcpu, reg)),
        ),
        HostCall::VmTeardown { handle } => vm_status(
            vms.resolve(handle)
                .and_then(|h| vms.start_teardown(h))
                .map(|()| 0),
        ),
        HostCall::VmReclaim { handle } => vm_status(
            vms.resolve(handle)
                .and_then(|h| vms.finalize_teardown(state, h, hal)),
        ),
        HostCall::VmReclaimPage { handle, ipa } => vm_status(
            vms.resolve(handle)
                .and_then(|h| vms.reclaim_page(state, h, ipa, hal))
                .map(|pfn| pfn.raw()),
        ),
        HostCall::OwnershipDigest => {
            let (digest, not_host) = state.db().digest();
            let live = vms.iter().count();
            [
                ret::SUCCESS,
                digest,
                not_host,
                u64::try_from(live).unwrap_or(u64::MAX),
            ]
        }
        HostCall::VmStats { handle } => match vms.resolve(handle).and_then(|h| {
            let stats = vms.stats(h)?;
            Ok((stats, state.db().shared_with_host(h)))
        }) {
            Ok((s, shared)) => [ret::SUCCESS, s.guest_traps, s.host_exits, shared],
            Err(e) => e.to_regs(),
        },
        _ => handle_mem_call(call, state, hal),
    };
    HostOutcome::Return(regs)
}

/// The calls that concern only the page database (ABI 0.1).
fn handle_mem_call<H: Hal + ?Sized>(
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
        // The VM calls are handle_host_call's.
        HostCall::VmCreate { .. }
        | HostCall::VcpuCreate { .. }
        | HostCall::VmDonate { .. }
        | HostCall::VmMapShared { .. }
        | HostCall::VmUnmapShared { .. }
        | HostCall::VcpuSetReg { .. }
        | HostCall::VcpuGetReg { .. }
        | HostCall::VcpuRun { .. }
        | HostCall::OwnershipDigest
        | HostCall::VmStats { .. }
        | HostCall::VmTeardown { .. }
        | HostCall::VmReclaim { .. }
        | HostCall::VmReclaimPage { .. } => [ret::NOT_SUPPORTED, abi::err::INTERNAL, 0, 0],
    }
}

/// Decodes and runs one host HVC: the whole path from the trap handler's
/// saved `x0..x7` to what it does next (usually: write back `x0..x3`).
pub fn handle_host_hvc<H: Hal + ?Sized>(
    regs: &[u64; 8],
    state: &mut MemProtect<'_>,
    vms: &mut VmTable,
    hal: &mut H,
) -> HostOutcome {
    match decode_host_call(regs) {
        Ok(call) => handle_host_call(call, state, vms, hal),
        Err(e) => HostOutcome::Return(e.to_regs()),
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
            (hc::VM_CREATE, HostCall::VmCreate { kvm_type: 7 }),
            (
                hc::VCPU_CREATE,
                HostCall::VcpuCreate {
                    handle: 7,
                    vcpu: 9,
                    features: 11,
                },
            ),
            (
                hc::VM_DONATE,
                HostCall::VmDonate {
                    handle: 7,
                    pfn: Pfn::new(9),
                    ipa: Ipa::new(11),
                    count: 13,
                },
            ),
            (
                hc::VM_MAP_SHARED,
                HostCall::VmMapShared {
                    handle: 7,
                    pfn: Pfn::new(9),
                    ipa: Ipa::new(11),
                    count: 13,
                },
            ),
            (
                hc::VM_UNMAP_SHARED,
                HostCall::VmUnmapShared {
                    handle: 7,
                    ipa: Ipa::new(9),
                },
            ),
            (
                hc::VCPU_SET_REG,
                HostCall::VcpuSetReg {
                    handle: 7,
                    vcpu: 9,
                    reg: 11,
                    value: 13,
                },
            ),
            (
                hc::VCPU_GET_REG,
                HostCall::VcpuGetReg {
                    handle: 7,
                    vcpu: 9,
                    reg: 11,
                },
            ),
            (
                hc::VCPU_RUN,
                HostCall::VcpuRun {
                    handle: 7,
                    vcpu: 9,
                    run: RunRequest {
                        flags: abi::run_flag::MMIO_COMPLETE,
                        data: 13,
                        pending: 15 | 17 << 64,
                    },
                },
            ),
            (hc::OWNERSHIP_DIGEST, HostCall::OwnershipDigest),
            (hc::VM_STATS, HostCall::VmStats { handle: 7 }),
            (hc::VM_TEARDOWN, HostCall::VmTeardown { handle: 7 }),
            (hc::VM_RECLAIM, HostCall::VmReclaim { handle: 7 }),
            (
                hc::VM_RECLAIM_PAGE,
                HostCall::VmReclaimPage {
                    handle: 7,
                    ipa: Ipa::new(9),
                },
            ),
        ];
        assert_eq!(expected.len(), abi::HOST_CALLS.len());
        for call in abi::HOST_CALLS {
            // VCPU_RUN's third argument is flags: only known bits.
            let third = if call.id == hc::VCPU_RUN {
                abi::run_flag::MMIO_COMPLETE
            } else {
                11
            };
            let args = [7, 9, third, 13, 15, 17];
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
        let mut vms = VmTable::new();
        let mut call = |x0: u32, args: &[u64], mp: &mut MemProtect<'_>| match handle_host_hvc(
            &regs(x0, args),
            mp,
            &mut vms,
            &mut hal,
        ) {
            HostOutcome::Return(r) => r,
            other => panic!("{other:?}"),
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
        assert_eq!(call(smccc::VENDOR_HYP_REVISION, &[], &mut mp), [0, 5, 0, 0]);
        assert_eq!(
            call(hc::GET_VERSION, &[], &mut mp),
            [ret::SUCCESS, 0, 5, abi::pack_version((0, 1, 0))]
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
    fn vm_calls_end_to_end() {
        use crate::mem_protect::PageState;
        use crate::test_utils::{self as tu, pfn, HOST_FIRST};
        use crate::vm::{PowerState, HANDLE_OFFSET, MAX_VMS};
        let mut mem = tu::memory();
        let mut metas = tu::metas();
        let mut hal = tu::hal(&mut mem);
        let mut mp = tu::mem_protect(&mut metas, &mut hal);
        let mut vms = VmTable::new();
        let mut call = |x0: u32, args: &[u64], mp: &mut MemProtect<'_>, vms: &mut VmTable| {
            handle_host_hvc(&regs(x0, args), mp, vms, &mut hal)
        };
        let ret_of = |o: HostOutcome| match o {
            HostOutcome::Return(r) => r,
            other => panic!("{other:?}"),
        };
        let ok = |x1: u64| HostOutcome::Return([ret::SUCCESS, x1, 0, 0]);
        let p = pfn(HOST_FIRST + 2).raw();
        let ipa = 0x8000_0000u64;

        // Type checks.
        assert_eq!(
            ret_of(call(hc::VM_CREATE, &[1 << 30], &mut mp, &mut vms)),
            [ret::INVALID_PARAMETER, abi::err::BAD_VM_TYPE, 1 << 30, 0]
        );
        assert_eq!(
            ret_of(call(hc::VM_CREATE, &[40], &mut mp, &mut vms)),
            [ret::INVALID_PARAMETER, abi::err::BAD_VM_TYPE, 40, 0]
        );

        // A protected VM with a boot vCPU and a secondary that starts off.
        let pvm = u64::from(HANDLE_OFFSET);
        let prot = abi::vm_type::PROTECTED;
        assert_eq!(call(hc::VM_CREATE, &[prot], &mut mp, &mut vms), ok(pvm));
        assert_eq!(
            call(hc::VCPU_CREATE, &[pvm, 0, 0], &mut mp, &mut vms),
            ok(0)
        );
        let off = abi::vcpu_feature::POWER_OFF | abi::vcpu_feature::PSCI_0_2;
        assert_eq!(
            call(hc::VCPU_CREATE, &[pvm, 1, off], &mut mp, &mut vms),
            ok(1)
        );
        assert_eq!(
            ret_of(call(hc::VCPU_CREATE, &[pvm, 1, 0], &mut mp, &mut vms)),
            [ret::DENIED, abi::err::VCPU_EXISTS, 1, 0]
        );
        assert_eq!(
            ret_of(call(hc::VCPU_CREATE, &[pvm, 8, 0], &mut mp, &mut vms)),
            [ret::INVALID_PARAMETER, abi::err::NO_SUCH_VCPU, 8, 0]
        );
        assert_eq!(
            ret_of(call(hc::VCPU_CREATE, &[pvm, 2, 1 << 4], &mut mp, &mut vms)),
            [
                ret::INVALID_PARAMETER,
                abi::err::BAD_VCPU_FEATURES,
                1 << 4,
                0
            ]
        );
        assert_eq!(
            call(hc::VM_DONATE, &[pvm, p, ipa, 3], &mut mp, &mut vms),
            ok(0)
        );
        assert_eq!(
            ret_of(call(
                hc::VM_MAP_SHARED,
                &[pvm, p + 3, ipa + 0x10_0000, 1],
                &mut mp,
                &mut vms
            )),
            [
                ret::DENIED,
                abi::err::WRONG_VM_KIND,
                abi::vm_kind::PROTECTED,
                0
            ]
        );
        // The host may set PC and X0 before the first run, nothing else.
        let pc = abi::vcpu_reg::PC;
        assert_eq!(
            call(hc::VCPU_SET_REG, &[pvm, 0, pc, ipa], &mut mp, &mut vms),
            ok(0)
        );
        assert_eq!(
            call(
                hc::VCPU_SET_REG,
                &[pvm, 0, 0, 0x4800_0000],
                &mut mp,
                &mut vms
            ),
            ok(0)
        );
        assert_eq!(
            ret_of(call(hc::VCPU_SET_REG, &[pvm, 0, 1, 5], &mut mp, &mut vms)),
            [ret::DENIED, abi::err::REG_DENIED, 1, 0]
        );
        assert_eq!(
            ret_of(call(hc::VCPU_GET_REG, &[pvm, 0, pc], &mut mp, &mut vms)),
            [ret::DENIED, abi::err::REG_DENIED, pc, 0]
        );
        assert_eq!(
            ret_of(call(hc::VCPU_SET_REG, &[pvm, 0, 99, 5], &mut mp, &mut vms)),
            [ret::INVALID_PARAMETER, abi::err::UNKNOWN_REG, 99, 0]
        );
        let h = VmHandle::new(HANDLE_OFFSET);
        assert_eq!(
            call(hc::VCPU_RUN, &[pvm, 0], &mut mp, &mut vms),
            HostOutcome::RunVcpu {
                handle: h,
                vcpu: 0,
                run: RunRequest::default()
            }
        );
        assert_eq!(
            ret_of(call(hc::VCPU_RUN, &[pvm, 1], &mut mp, &mut vms)),
            [ret::DENIED, abi::err::VCPU_OFF, 1, 0]
        );
        // The glue loads vCPU 0 and runs it; after that the host is locked out.
        assert_eq!(vms.vcpu_load(h, 0).map(|_| ()), Ok(()));
        assert_eq!(
            ret_of(call(hc::VM_TEARDOWN, &[pvm], &mut mp, &mut vms)),
            [ret::DENIED, abi::err::VCPU_BUSY, 0, 0]
        );
        assert_eq!(vms.vcpu_put(h, 0), Ok(()));
        assert_eq!(
            ret_of(call(hc::VCPU_SET_REG, &[pvm, 0, pc, 0], &mut mp, &mut vms)),
            [ret::DENIED, abi::err::REG_DENIED, pc, 0]
        );
        assert_eq!(
            vms.get(h).and_then(|vm| vm.vcpu(1)).map(|v| v.power()),
            Some(PowerState::Off)
        );
        let owned = PageState::NoPage.abi_code() | PageState::NoPage.abi_code() << 8;
        assert_eq!(
            ret_of(call(hc::PAGE_OWNER, &[p << 12], &mut mp, &mut vms)),
            [ret::SUCCESS, abi::owner::GUEST, pvm, owned]
        );

        // A normal VM: memory lent, registers readable.
        let nvm = pvm + 1;
        assert_eq!(call(hc::VM_CREATE, &[0], &mut mp, &mut vms), ok(nvm));
        assert_eq!(
            call(hc::VCPU_CREATE, &[nvm, 0, 0], &mut mp, &mut vms),
            ok(0)
        );
        assert_eq!(
            call(hc::VM_MAP_SHARED, &[nvm, p + 3, ipa, 2], &mut mp, &mut vms),
            ok(0)
        );
        assert_eq!(
            ret_of(call(
                hc::VM_DONATE,
                &[nvm, p + 5, ipa + 0x4000, 1],
                &mut mp,
                &mut vms
            )),
            [
                ret::DENIED,
                abi::err::WRONG_VM_KIND,
                abi::vm_kind::NORMAL,
                0
            ]
        );
        assert_eq!(
            call(hc::VCPU_SET_REG, &[nvm, 0, 7, 0xabc], &mut mp, &mut vms),
            ok(0)
        );
        assert_eq!(
            call(hc::VCPU_GET_REG, &[nvm, 0, 7], &mut mp, &mut vms),
            ok(0xabc)
        );
        let pstate = abi::vcpu_reg::PSTATE;
        assert_eq!(
            call(hc::VCPU_GET_REG, &[nvm, 0, pstate], &mut mp, &mut vms),
            ok(0x3c5)
        );
        assert_eq!(
            ret_of(call(
                hc::VCPU_SET_REG,
                &[nvm, 0, pstate, 0x10],
                &mut mp,
                &mut vms
            )),
            [
                ret::INVALID_PARAMETER,
                abi::err::BAD_REG_VALUE,
                pstate,
                0x10
            ]
        );
        assert_eq!(
            call(hc::VM_UNMAP_SHARED, &[nvm, ipa + 0x1000], &mut mp, &mut vms),
            ok(0)
        );

        // Teardown: first phase stops runs, second gives the pages back.
        assert_eq!(
            ret_of(call(hc::VM_RECLAIM, &[pvm], &mut mp, &mut vms)),
            [ret::DENIED, abi::err::VM_NOT_DYING, pvm, 0]
        );
        assert_eq!(call(hc::VM_TEARDOWN, &[pvm], &mut mp, &mut vms), ok(0));
        assert_eq!(
            ret_of(call(hc::VM_TEARDOWN, &[pvm], &mut mp, &mut vms)),
            [ret::DENIED, abi::err::VM_DYING, pvm, 0]
        );
        assert_eq!(
            ret_of(call(hc::VCPU_RUN, &[pvm, 0], &mut mp, &mut vms)),
            [ret::DENIED, abi::err::VM_DYING, pvm, 0]
        );
        assert_eq!(
            ret_of(call(
                hc::VM_DONATE,
                &[pvm, p + 6, ipa + 0x8000, 1],
                &mut mp,
                &mut vms
            )),
            [ret::DENIED, abi::err::VM_DYING, pvm, 0]
        );
        assert_eq!(call(hc::VM_RECLAIM, &[pvm], &mut mp, &mut vms), ok(3));
        assert_eq!(
            ret_of(call(hc::VM_RECLAIM, &[pvm], &mut mp, &mut vms)),
            [ret::INVALID_PARAMETER, abi::err::NO_SUCH_VM, pvm, 0]
        );
        assert_eq!(call(hc::VM_TEARDOWN, &[nvm], &mut mp, &mut vms), ok(0));
        assert_eq!(call(hc::VM_RECLAIM, &[nvm], &mut mp, &mut vms), ok(1));
        for i in 0..5 {
            let row = mp.db().get(pfn(HOST_FIRST + 2 + i));
            assert_eq!(row.map(|m| m.owner()), Some(Owner::Host), "frame {i}");
        }

        // The table holds MAX_VMS; a freed slot is reused.
        for i in 0..MAX_VMS {
            let h = u64::from(HANDLE_OFFSET) + u64::try_from(i).unwrap_or(0);
            assert_eq!(call(hc::VM_CREATE, &[0], &mut mp, &mut vms), ok(h));
        }
        assert_eq!(
            ret_of(call(hc::VM_CREATE, &[0], &mut mp, &mut vms)),
            [ret::NO_MEMORY, abi::err::VM_TABLE_FULL, 0, 0]
        );
        for bad in [0, 1, pvm - 1, pvm + 8, u64::MAX] {
            assert_eq!(
                ret_of(call(hc::VM_TEARDOWN, &[bad], &mut mp, &mut vms)),
                [ret::INVALID_PARAMETER, abi::err::NO_SUCH_VM, bad, 0]
            );
        }
        for i in 0..MAX_VMS {
            let h = u64::from(HANDLE_OFFSET) + u64::try_from(i).unwrap_or(0);
            assert_eq!(call(hc::VM_TEARDOWN, &[h], &mut mp, &mut vms), ok(0));
            assert_eq!(call(hc::VM_RECLAIM, &[h], &mut mp, &mut vms), ok(0));
        }
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
