//! The cases, in the order they run, and the value each must produce in a
//! protected and in a normal VM: pKVM's answer to a protected guest, and
//! mainline KVM's to a normal one.
//!
//! Sources (Linux 6.12 unless said otherwise): the KVM UID, function
//! numbers and SMCCC codes from `include/linux/arm-smccc.h`; the pKVM calls'
//! arguments ("Reserved / Must be zero") and results (`INVALID_PARAMETER`
//! on error, MEMINFO = the granule) from
//! `Documentation/virt/kvm/arm/hypercalls.rst`; the guest's use of them
//! from `drivers/virt/coco/pkvm-guest/arm-pkvm-guest.c` (MEMINFO must not
//! exceed `PAGE_SIZE`; MMIO_GUARD page by page, before the first access);
//! the normal VM's answers from `arch/arm64/kvm/hypercalls.c` (calls
//! outside the vendor-hypervisor bitmap: `NOT_SUPPORTED`) and
//! `arch/arm64/kvm/psci.c` (PSCI 1.1, `ALREADY_ON`, `INVALID_PARAMS` for no
//! such vCPU); the protected VM's PSCI and error paths from pKVM's
//! `kvm_handle_pvm_hvc64` / `pkvm_memshare_call` / `pvm_psci_*` (Android's
//! `arch/arm64/kvm/hyp/nvhe/pkvm.c`, which 6.12 does not carry).
//!
//! Function IDs, return codes and the UID come from `cloister-hyp-core`
//! (`abi`, `guest_abi`), whose own tests pin them to those headers; the
//! expected results are written out here, independently of how the hyp
//! computes them.

use core::fmt;

use cloister_hyp_core::abi::{self, fast_call_id, ret, smccc, SMCCC_OWNER_VENDOR_HYP};
use cloister_hyp_core::guest_abi::{kvm, kvm_func, psci};

use crate::dtb::Wanted;

/// The protection granule pKVM reports with HYP_MEMINFO (its `PAGE_SIZE`).
pub const GRANULE: u64 = 4096;

/// A vendor-hypervisor function no KVM or pKVM version defines (KVM
/// function number 64, SMC64).
pub const UNKNOWN_FID: u32 = fast_call_id(true, SMCCC_OWNER_VENDOR_HYP, 64);

/// A function number in the PSCI range that PSCI 1.1 does not define.
pub const UNKNOWN_PSCI_FID: u32 = 0x8400_001f;

/// The context ID the second vCPU gets from CPU_ON (its `x0`) and stores
/// for the first one to see.
pub const CONTEXT_ID: u64 = 0xc105_7e12_c0de_0001;

/// `ESR_ELx.EC` of a data abort taken without a change of exception level.
pub const EC_DATA_ABORT_SAME_EL: u64 = 0x25;
/// `ESR_ELx.ISS.DFSC`: synchronous external abort, not on a table walk.
pub const DFSC_SYNC_EXTERNAL: u64 = 0x10;
/// `ESR_ELx.ISS.FnV`: `FAR` is not valid.
const ESR_FNV: u64 = 1 << 10;

/// The KVM FEATURES bits a 6.12 guest looks at: FEATURES, HYP_MEMINFO,
/// MEM_SHARE, MEM_UNSHARE, MMIO_GUARD.
pub const FEATURES_CHECKED: u64 = bit(kvm_func::FEATURES)
    | bit(kvm_func::HYP_MEMINFO)
    | bit(kvm_func::MEM_SHARE)
    | bit(kvm_func::MEM_UNSHARE)
    | bit(kvm_func::MMIO_GUARD);

const fn bit(n: u16) -> u64 {
    1 << n
}

/// What kind of VM the guest finds itself in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VmKind {
    /// KVM FEATURES advertises MEM_SHARE: pKVM's protected-guest ABI.
    Protected,
    /// Anything else: a normal VM.
    Normal,
}

impl VmKind {
    /// Detects the kind from KVM FEATURES' result: bit 3 (MEM_SHARE) set
    /// means protected (a trap or an error code means normal: `-1` has
    /// every bit set, so an error is never read as a bitmap).
    pub fn detect(features: &Result<[u64; 4], Exception>) -> Self {
        match features {
            Ok([x0, ..]) if *x0 != ret::NOT_SUPPORTED && x0 & bit(kvm_func::MEM_SHARE) != 0 => {
                Self::Protected
            }
            _ => Self::Normal,
        }
    }

    /// `protected` or `normal`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Protected => "protected",
            Self::Normal => "normal",
        }
    }
}

/// A synchronous exception the guest took at EL1 during a call or access
/// (and stepped over).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Exception {
    /// `ESR_EL1`.
    pub esr: u64,
    /// `FAR_EL1`.
    pub far: u64,
}

impl Exception {
    /// `ESR_EL1.EC`.
    pub const fn ec(&self) -> u64 {
        (self.esr >> 26) & 0x3f
    }

    /// `ESR_EL1.ISS` bits 5:0 (DFSC for a data abort).
    pub const fn fsc(&self) -> u64 {
        self.esr & 0x3f
    }
}

/// Where a page-sized address argument points; the runner resolves it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Place {
    /// A page of the guest's own RAM the suite shares and unshares.
    SharedPage,
    /// A page of the guest's own RAM never shared (written first, so it is
    /// the guest's memory even where the host donates pages on first
    /// touch).
    PrivatePage,
    /// The first page past the end of the DTB's RAM.
    RamEnd,
    /// The console's page (MMIO).
    Console,
    /// The MMIO page the suite probes: not guest memory and not the
    /// console ([`PROBE_IPA`], or `probe=<hex>` from the bootargs).
    Probe,
}

/// The page the suite probes with loads ([`Place::Probe`]) unless the
/// bootargs say `probe=<hex>`: in the VMM's memory map nothing lives there
/// (reads of unknown MMIO give 0); on QEMU virt it is a virtio-mmio slot.
pub const PROBE_IPA: u64 = 0x0a00_0000;

/// An argument register's value.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Arg {
    /// A constant.
    Imm(u64),
    /// A place plus a byte offset.
    At(Place, u64),
    /// This vCPU's MPIDR affinity.
    ThisCpu,
    /// The DTB's first CPU that is not this one.
    OtherCpu,
    /// An MPIDR no DTB CPU has.
    NoSuchCpu,
    /// The second vCPU's entry point.
    SecondaryEntry,
    /// [`CONTEXT_ID`].
    ContextId,
}

/// What a case does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Action {
    /// Compares the detected kind with the bootargs' `expect=`.
    KindMatchesExpect,
    /// Reports the MMIO_GUARD of the console the guest made at boot,
    /// before its first print (as Linux's ioremap hook does).
    ConsoleGuardAtBoot,
    /// `HVC #0` with `x0` = `fid` and `x1..x3` = `args`.
    Hvc {
        /// The function ID.
        fid: u32,
        /// `x1..x3`.
        args: [Arg; 3],
    },
    /// A 32-bit load from a place.
    Load(Place),
    /// Waits (bounded) for the second vCPU to store its context ID.
    SecondaryStarted,
    /// Polls (bounded) AFFINITY_INFO of the second vCPU until it is OFF.
    SecondaryOff,
}

/// What must come out.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Expect {
    /// The call returns with this `x0`.
    X0(u64),
    /// The call returns with `x0 & mask == value`.
    X0Bits {
        /// Bits compared.
        mask: u64,
        /// Their required value.
        value: u64,
    },
    /// The call returns with these `x0..x3`.
    Regs([u64; 4]),
    /// The access completes, with no exception.
    Completes,
    /// The access takes a synchronous external abort: a data abort from
    /// EL1 (EC 0x25), DFSC 0x10, and `FAR` = the address when `FnV` is
    /// clear.
    ExternalAbort,
    /// The second vCPU stored [`CONTEXT_ID`].
    Stored(u64),
    /// The detected kind is the one `expect=` asks for.
    KindMatches,
}

/// A case: a name for the TAP line, an action, and its result in each kind
/// of VM.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Case {
    /// The TAP description.
    pub name: &'static str,
    /// What to do.
    pub action: Action,
    /// pKVM's answer to a protected VM.
    pub protected: Expect,
    /// KVM's answer to a normal VM.
    pub normal: Expect,
}

impl Case {
    /// The expectation for `kind`.
    pub const fn expect(&self, kind: VmKind) -> Expect {
        match kind {
            VmKind::Protected => self.protected,
            VmKind::Normal => self.normal,
        }
    }
}

const Z: Arg = Arg::Imm(0);
const SUCCESS: Expect = Expect::X0(ret::SUCCESS);
const NOT_SUPPORTED: Expect = Expect::X0(ret::NOT_SUPPORTED);
const INVALID_PARAMETER: Expect = Expect::X0(ret::INVALID_PARAMETER);

const fn hvc(fid: u32, args: [Arg; 3]) -> Action {
    Action::Hvc { fid, args }
}

const fn both(name: &'static str, action: Action, expect: Expect) -> Case {
    Case {
        name,
        action,
        protected: expect,
        normal: expect,
    }
}

/// A pKVM call: `protected` in a protected VM, `NOT_SUPPORTED` in a normal
/// one (mainline KVM denies vendor-hypervisor calls outside the VM's
/// bitmap, and the bitmap of a normal VM has no pKVM bit).
const fn pkvm(name: &'static str, action: Action, protected: Expect) -> Case {
    Case {
        name,
        action,
        protected,
        normal: NOT_SUPPORTED,
    }
}

/// Every case, in order. The order matters: the double share needs the
/// first share, the load after MMIO_GUARD needs the guard, the second vCPU
/// is checked OFF before it is started.
pub const CASES: &[Case] = &[
    both(
        "vm kind matches expect",
        Action::KindMatchesExpect,
        Expect::KindMatches,
    ),
    both(
        "smccc version is 1.1",
        hvc(smccc::VERSION, [Z, Z, Z]),
        Expect::X0(abi::SMCCC_VERSION_1_1),
    ),
    both(
        "smccc arch features of an unknown function",
        hvc(smccc::ARCH_FEATURES, [Arg::Imm(UNKNOWN_FID as u64), Z, Z]),
        NOT_SUPPORTED,
    ),
    both(
        "vendor hyp call uid is kvm's",
        hvc(smccc::VENDOR_HYP_CALL_UID, [Z, Z, Z]),
        Expect::Regs([
            abi::KVM_UID[0] as u64,
            abi::KVM_UID[1] as u64,
            abi::KVM_UID[2] as u64,
            abi::KVM_UID[3] as u64,
        ]),
    ),
    Case {
        name: "kvm features bitmap",
        action: hvc(kvm::FEATURES, [Z, Z, Z]),
        protected: Expect::X0Bits {
            mask: FEATURES_CHECKED,
            value: FEATURES_CHECKED,
        },
        normal: Expect::X0Bits {
            mask: FEATURES_CHECKED,
            value: bit(kvm_func::FEATURES),
        },
    },
    pkvm(
        "hyp meminfo is the 4 KiB granule",
        hvc(kvm::HYP_MEMINFO, [Z, Z, Z]),
        Expect::X0(GRANULE),
    ),
    pkvm(
        "hyp meminfo with a non-zero reserved x1",
        hvc(kvm::HYP_MEMINFO, [Arg::Imm(1), Z, Z]),
        INVALID_PARAMETER,
    ),
    pkvm(
        "mmio guard of the console before its first use",
        Action::ConsoleGuardAtBoot,
        SUCCESS,
    ),
    pkvm(
        "mem share of a page of own ram",
        hvc(kvm::MEM_SHARE, [Arg::At(Place::SharedPage, 0), Z, Z]),
        SUCCESS,
    ),
    pkvm(
        "mem share of a page already shared",
        hvc(kvm::MEM_SHARE, [Arg::At(Place::SharedPage, 0), Z, Z]),
        INVALID_PARAMETER,
    ),
    pkvm(
        "mem unshare of the shared page",
        hvc(kvm::MEM_UNSHARE, [Arg::At(Place::SharedPage, 0), Z, Z]),
        SUCCESS,
    ),
    pkvm(
        "mem unshare of a page no longer shared",
        hvc(kvm::MEM_UNSHARE, [Arg::At(Place::SharedPage, 0), Z, Z]),
        INVALID_PARAMETER,
    ),
    pkvm(
        "mem unshare of a page never shared",
        hvc(kvm::MEM_UNSHARE, [Arg::At(Place::PrivatePage, 0), Z, Z]),
        INVALID_PARAMETER,
    ),
    pkvm(
        "mem share of a misaligned ipa",
        hvc(kvm::MEM_SHARE, [Arg::At(Place::PrivatePage, 0x10), Z, Z]),
        INVALID_PARAMETER,
    ),
    pkvm(
        "mem unshare of a misaligned ipa",
        hvc(kvm::MEM_UNSHARE, [Arg::At(Place::PrivatePage, 0x10), Z, Z]),
        INVALID_PARAMETER,
    ),
    pkvm(
        "mem share of an ipa outside guest memory",
        hvc(kvm::MEM_SHARE, [Arg::At(Place::RamEnd, 0), Z, Z]),
        INVALID_PARAMETER,
    ),
    pkvm(
        "mem share of an mmio ipa (the console)",
        hvc(kvm::MEM_SHARE, [Arg::At(Place::Console, 0), Z, Z]),
        INVALID_PARAMETER,
    ),
    pkvm(
        "mem share with a non-zero reserved x3",
        hvc(
            kvm::MEM_SHARE,
            [Arg::At(Place::PrivatePage, 0), Z, Arg::Imm(1)],
        ),
        INVALID_PARAMETER,
    ),
    pkvm(
        "mmio guard of a misaligned ipa",
        hvc(kvm::MMIO_GUARD, [Arg::At(Place::Probe, 0x10), Z, Z]),
        INVALID_PARAMETER,
    ),
    pkvm(
        "mmio guard of guest memory",
        hvc(kvm::MMIO_GUARD, [Arg::At(Place::PrivatePage, 0), Z, Z]),
        INVALID_PARAMETER,
    ),
    Case {
        name: "mmio load from an unguarded page",
        action: Action::Load(Place::Probe),
        protected: Expect::ExternalAbort,
        normal: Expect::Completes,
    },
    pkvm(
        "mmio guard of that page",
        hvc(kvm::MMIO_GUARD, [Arg::At(Place::Probe, 0), Z, Z]),
        SUCCESS,
    ),
    both(
        "mmio load from that page once guarded",
        Action::Load(Place::Probe),
        Expect::Completes,
    ),
    both(
        "unknown function id",
        hvc(UNKNOWN_FID, [Z, Z, Z]),
        NOT_SUPPORTED,
    ),
    both(
        "psci version is 1.1",
        hvc(psci::VERSION, [Z, Z, Z]),
        Expect::X0(psci::VERSION_1_1),
    ),
    both(
        "psci features of cpu_on",
        hvc(psci::FEATURES, [Arg::Imm(psci::CPU_ON_64 as u64), Z, Z]),
        Expect::X0(psci::RET_SUCCESS),
    ),
    both(
        "psci features of an unknown function",
        hvc(psci::FEATURES, [Arg::Imm(UNKNOWN_PSCI_FID as u64), Z, Z]),
        Expect::X0(psci::RET_NOT_SUPPORTED),
    ),
    both(
        "affinity info of this cpu is on",
        hvc(psci::AFFINITY_INFO_64, [Arg::ThisCpu, Z, Z]),
        Expect::X0(psci::AFFINITY_LEVEL_ON),
    ),
    both(
        "cpu_on of this cpu is already on",
        hvc(
            psci::CPU_ON_64,
            [Arg::ThisCpu, Arg::SecondaryEntry, Arg::ContextId],
        ),
        Expect::X0(psci::RET_ALREADY_ON),
    ),
    both(
        "cpu_on of a cpu that does not exist",
        hvc(
            psci::CPU_ON_64,
            [Arg::NoSuchCpu, Arg::SecondaryEntry, Arg::ContextId],
        ),
        Expect::X0(psci::RET_INVALID_PARAMS),
    ),
    both(
        "affinity info of the second cpu before cpu_on is off",
        hvc(psci::AFFINITY_INFO_64, [Arg::OtherCpu, Z, Z]),
        Expect::X0(psci::AFFINITY_LEVEL_OFF),
    ),
    both(
        "cpu_on of the second cpu",
        hvc(
            psci::CPU_ON_64,
            [Arg::OtherCpu, Arg::SecondaryEntry, Arg::ContextId],
        ),
        Expect::X0(psci::RET_SUCCESS),
    ),
    both(
        "second cpu ran with its context id",
        Action::SecondaryStarted,
        Expect::Stored(CONTEXT_ID),
    ),
    both(
        "affinity info of the second cpu after cpu_off is off",
        Action::SecondaryOff,
        Expect::X0(psci::AFFINITY_LEVEL_OFF),
    ),
];

/// What a case produced.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Observed<'a> {
    /// An HVC: its `x0..x3`, or the exception it raised in the guest.
    Call(Result<[u64; 4], Exception>),
    /// A load from `addr`: the value, or the exception.
    Load {
        /// The address loaded from.
        addr: u64,
        /// What happened.
        result: Result<u64, Exception>,
    },
    /// A value another vCPU stored (0 if nothing yet).
    Stored(u64),
    /// A bounded wait ran out; the last thing seen.
    TimedOut(&'a Observed<'a>),
    /// The detected kind and `expect=`.
    Kind {
        /// Detected from KVM FEATURES.
        detected: VmKind,
        /// From the bootargs.
        wanted: Option<Wanted<'a>>,
    },
}

/// The outcome of a case.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verdict {
    /// As expected.
    Pass,
    /// Not as expected.
    Fail,
    /// Not run, for this reason.
    Skip(&'static str),
}

/// Judges `observed` against `expect`.
pub fn judge(expect: &Expect, observed: &Observed<'_>) -> Verdict {
    let pass = match (expect, observed) {
        (Expect::X0(want), Observed::Call(Ok(regs))) => regs[0] == *want,
        (Expect::X0Bits { mask, value }, Observed::Call(Ok(regs))) => {
            regs[0] != ret::NOT_SUPPORTED && regs[0] & mask == *value
        }
        (Expect::Regs(want), Observed::Call(Ok(regs))) => regs == want,
        (Expect::Completes, Observed::Load { result, .. }) => result.is_ok(),
        (
            Expect::ExternalAbort,
            Observed::Load {
                addr,
                result: Err(e),
            },
        ) => {
            e.ec() == EC_DATA_ABORT_SAME_EL
                && e.fsc() == DFSC_SYNC_EXTERNAL
                && (e.esr & ESR_FNV != 0 || e.far == *addr)
        }
        (Expect::Stored(want), Observed::Stored(got)) => got == want,
        (Expect::KindMatches, Observed::Kind { detected, wanted }) => match wanted {
            None => return Verdict::Skip("no expect= in /chosen/bootargs"),
            Some(Wanted::Protected) => *detected == VmKind::Protected,
            Some(Wanted::Normal) => *detected == VmKind::Normal,
            Some(Wanted::Other(_)) => false,
        },
        _ => false,
    };
    if pass {
        Verdict::Pass
    } else {
        Verdict::Fail
    }
}

/// A register value as a human reads it: small negative numbers (the SMCCC
/// and PSCI error codes) in decimal, everything else in hex.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Value(pub u64);

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let signed = self.0.cast_signed();
        if (-16..0).contains(&signed) {
            write!(f, "{signed}")
        } else {
            write!(f, "{:#x}", self.0)
        }
    }
}

impl fmt::Display for Exception {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exception EC {:#x} ISS {:#x} (ESR {:#x} FAR {:#x})",
            self.ec(),
            self.esr & 0x1ff_ffff,
            self.esr,
            self.far
        )
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::X0(v) => write!(f, "{}", Value(*v)),
            Self::X0Bits { mask, value } => write!(f, "{value:#x} in mask {mask:#x}"),
            Self::Regs(r) => write_regs(f, r),
            Self::Completes => f.write_str("no exception"),
            Self::ExternalAbort => write!(
                f,
                "data abort EC {EC_DATA_ABORT_SAME_EL:#x} DFSC {DFSC_SYNC_EXTERNAL:#x}"
            ),
            Self::Stored(v) => write!(f, "{v:#x} stored"),
            Self::KindMatches => f.write_str("the same kind"),
        }
    }
}

fn write_regs(f: &mut fmt::Formatter<'_>, r: &[u64; 4]) -> fmt::Result {
    write!(f, "{:#x} {:#x} {:#x} {:#x}", r[0], r[1], r[2], r[3])
}

/// `observed`, shown the way `expect` looks at it (all four registers for
/// a UID, only `x0` otherwise).
#[derive(Clone, Copy, Debug)]
pub struct Got<'a> {
    /// What was expected.
    pub expect: &'a Expect,
    /// What came out.
    pub observed: &'a Observed<'a>,
}

impl fmt::Display for Got<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.observed {
            Observed::Call(Ok(regs)) => match self.expect {
                Expect::Regs(_) => write_regs(f, regs),
                Expect::X0Bits { mask, .. } => {
                    write!(f, "{} ({:#x} in mask)", Value(regs[0]), regs[0] & mask)
                }
                _ => write!(f, "{}", Value(regs[0])),
            },
            Observed::Call(Err(e)) | Observed::Load { result: Err(e), .. } => write!(f, "{e}"),
            Observed::Load {
                addr,
                result: Ok(v),
            } => write!(f, "no exception (load from {addr:#x} read {v:#x})"),
            Observed::Stored(v) => write!(f, "{v:#x} stored"),
            Observed::TimedOut(last) => write!(
                f,
                "a timeout, last {}",
                Got {
                    expect: self.expect,
                    observed: last
                }
            ),
            Observed::Kind { detected, wanted } => {
                write!(f, "{}", detected.name())?;
                match wanted {
                    Some(Wanted::Protected) => f.write_str(" (expect=protected)"),
                    Some(Wanted::Normal) => f.write_str(" (expect=normal)"),
                    Some(Wanted::Other(v)) => write!(f, " (expect={v}, not a kind)"),
                    None => Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DABT: Exception = Exception {
        esr: (0x25 << 26) | (1 << 25) | 0x10,
        far: PROBE_IPA,
    };

    fn call(x0: u64) -> Observed<'static> {
        Observed::Call(Ok([x0, 0, 0, 0]))
    }

    fn find(name: &str) -> &'static Case {
        CASES.iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn values_are_the_specs() {
        // include/linux/arm-smccc.h, hypercalls.rst, uapi/linux/psci.h.
        assert_eq!(UNKNOWN_FID, 0xc600_0040);
        assert_eq!(FEATURES_CHECKED, 0b1001_1101);
        assert_eq!(ret::INVALID_PARAMETER, (-3i64).cast_unsigned());
        assert_eq!(psci::RET_ALREADY_ON, (-4i64).cast_unsigned());
        assert_eq!(
            find("vendor hyp call uid is kvm's").protected,
            Expect::Regs([0xb66f_b428, 0xe911_c52e, 0x564b_caa9, 0x743a_004d])
        );
        assert_eq!(
            find("hyp meminfo is the 4 KiB granule").protected,
            Expect::X0(4096)
        );
    }

    #[test]
    fn names_are_unique_and_tap_safe() {
        for (i, a) in CASES.iter().enumerate() {
            assert!(
                !a.name.contains('#'),
                "{}: '#' starts a TAP directive",
                a.name
            );
            assert!(
                !a.name.starts_with(|c: char| c.is_ascii_digit()),
                "{}",
                a.name
            );
            assert!(
                CASES[i + 1..].iter().all(|b| b.name != a.name),
                "{} twice",
                a.name
            );
        }
    }

    /// A normal VM gets NOT_SUPPORTED for every pKVM call, and nothing in
    /// its FEATURES bitmap that a 6.12 guest would take for pKVM.
    #[test]
    fn a_normal_vm_is_offered_no_pkvm_call() {
        for case in CASES {
            if let Action::Hvc { fid, .. } = case.action {
                if [
                    kvm::HYP_MEMINFO,
                    kvm::MEM_SHARE,
                    kvm::MEM_UNSHARE,
                    kvm::MMIO_GUARD,
                ]
                .contains(&fid)
                {
                    assert_eq!(case.normal, NOT_SUPPORTED, "{}", case.name);
                    assert_ne!(case.protected, NOT_SUPPORTED, "{}", case.name);
                }
            }
        }
        let features = find("kvm features bitmap");
        assert_eq!(
            judge(&features.normal, &call(0b11)),
            Verdict::Pass,
            "FEATURES | PTP"
        );
        assert_eq!(judge(&features.normal, &call(0b1)), Verdict::Pass);
        assert_eq!(judge(&features.normal, &call(0b1001)), Verdict::Fail);
        assert_eq!(judge(&features.normal, &call(0x81)), Verdict::Fail);
        assert_eq!(judge(&features.normal, &call(0)), Verdict::Fail);
        assert_eq!(judge(&features.protected, &call(0x9d)), Verdict::Pass);
        // Android's pKVM advertises more (MMIO_GUARD_INFO, ENROLL, ...).
        assert_eq!(judge(&features.protected, &call(0xffd)), Verdict::Pass);
        assert_eq!(judge(&features.protected, &call(0x1d)), Verdict::Fail);
        assert_eq!(
            judge(&features.protected, &call(ret::NOT_SUPPORTED)),
            Verdict::Fail
        );
    }

    #[test]
    fn detection_reads_the_mem_share_bit() {
        assert_eq!(VmKind::detect(&Ok([0x9d, 0, 0, 0])), VmKind::Protected);
        assert_eq!(VmKind::detect(&Ok([0x8, 0, 0, 0])), VmKind::Protected);
        assert_eq!(VmKind::detect(&Ok([0x3, 0, 0, 0])), VmKind::Normal);
        assert_eq!(
            VmKind::detect(&Ok([ret::NOT_SUPPORTED, 0, 0, 0])),
            VmKind::Normal
        );
        assert_eq!(VmKind::detect(&Err(DABT)), VmKind::Normal);
    }

    #[test]
    fn only_a_synchronous_external_data_abort_at_the_address_passes() {
        let load = |result| Observed::Load {
            addr: PROBE_IPA,
            result,
        };
        let e = Expect::ExternalAbort;
        assert_eq!(judge(&e, &load(Err(DABT))), Verdict::Pass);
        assert_eq!(judge(&e, &load(Ok(0))), Verdict::Fail);
        let wrong_far = Exception {
            far: PROBE_IPA + 0x1000,
            ..DABT
        };
        assert_eq!(judge(&e, &load(Err(wrong_far))), Verdict::Fail);
        let far_not_valid = Exception {
            esr: DABT.esr | ESR_FNV,
            ..wrong_far
        };
        assert_eq!(judge(&e, &load(Err(far_not_valid))), Verdict::Pass);
        let translation_fault = Exception {
            esr: (0x25 << 26) | 0x07,
            ..DABT
        };
        assert_eq!(judge(&e, &load(Err(translation_fault))), Verdict::Fail);
        let lower_el = Exception {
            esr: (0x24 << 26) | 0x10,
            ..DABT
        };
        assert_eq!(judge(&e, &load(Err(lower_el))), Verdict::Fail);
        assert_eq!(judge(&Expect::Completes, &load(Ok(0))), Verdict::Pass);
        assert_eq!(judge(&Expect::Completes, &load(Err(DABT))), Verdict::Fail);
    }

    #[test]
    fn kind_check_skips_without_expect_and_fails_on_a_typo() {
        let kind = |detected, wanted| Observed::Kind { detected, wanted };
        let e = Expect::KindMatches;
        assert_eq!(
            judge(&e, &kind(VmKind::Normal, None)),
            Verdict::Skip("no expect= in /chosen/bootargs")
        );
        assert_eq!(
            judge(&e, &kind(VmKind::Protected, Some(Wanted::Protected))),
            Verdict::Pass
        );
        assert_eq!(
            judge(&e, &kind(VmKind::Normal, Some(Wanted::Protected))),
            Verdict::Fail
        );
        assert_eq!(
            judge(&e, &kind(VmKind::Normal, Some(Wanted::Other("normol")))),
            Verdict::Fail
        );
    }

    #[test]
    fn an_exception_or_a_timeout_never_passes_a_call() {
        for case in CASES {
            for kind in [VmKind::Protected, VmKind::Normal] {
                let expect = case.expect(kind);
                assert_ne!(
                    judge(&expect, &Observed::Call(Err(DABT))),
                    Verdict::Pass,
                    "{}",
                    case.name
                );
                let last = call(0);
                assert_ne!(
                    judge(&expect, &Observed::TimedOut(&last)),
                    Verdict::Pass,
                    "{}",
                    case.name
                );
            }
        }
    }

    #[test]
    fn got_and_expected_read_well() {
        let show = |e: &Expect, o: &Observed<'_>| {
            format!(
                "got {} expected {e}",
                Got {
                    expect: e,
                    observed: o
                }
            )
        };
        assert_eq!(show(&INVALID_PARAMETER, &call(0)), "got 0x0 expected -3");
        assert_eq!(
            show(&Expect::X0(GRANULE), &call(ret::NOT_SUPPORTED)),
            "got -1 expected 0x1000"
        );
        assert_eq!(
            show(
                &Expect::X0Bits {
                    mask: 0x9d,
                    value: 0x9d
                },
                &call(0x3)
            ),
            "got 0x3 (0x1 in mask) expected 0x9d in mask 0x9d"
        );
        assert_eq!(
            show(
                &Expect::ExternalAbort,
                &Observed::Load {
                    addr: PROBE_IPA,
                    result: Ok(0)
                }
            ),
            "got no exception (load from 0xa000000 read 0x0) expected data abort EC 0x25 DFSC 0x10"
        );
        assert_eq!(
            show(&Expect::Completes, &Observed::Call(Err(DABT))),
            "got exception EC 0x25 ISS 0x10 (ESR 0x96000010 FAR 0xa000000) expected no exception"
        );
        let last = Observed::Stored(0);
        assert_eq!(
            show(&Expect::Stored(CONTEXT_ID), &Observed::TimedOut(&last)),
            "got a timeout, last 0x0 stored expected 0xc1057e12c0de0001 stored"
        );
    }
}
