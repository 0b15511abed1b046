//! The guest hypercall ABI: pKVM's, exactly as an unmodified mainline Linux
//! 6.12 guest expects it, for normal and protected VMs.
//!
//! A guest calls with `HVC #0` (its DT `psci` node says `method = "hvc"`),
//! SMCCC 1.1: function ID in `w0` (the upper half of `x0` is ignored, as
//! KVM's `smccc_get_function` reads a `u32`), arguments in `x1..`, results
//! in `x0..x3`. Two steps, as for the host ([`crate::hypercall`]):
//! [`decode_guest_call`] is the one `match` on the function ID and checks
//! reserved arguments the way pKVM does; [`handle_guest_call`] runs the call
//! against the VM and the page database and returns a [`GuestOutcome`] the
//! arch glue acts on. Every failing call returns the error the spec gives and
//! changes nothing.
//!
//! # Calls and results
//!
//! Return values are 64-bit two's complement. "Both" = normal and protected
//! VMs; anything not in the table, and the protected-only calls in a normal
//! VM, return `NOT_SUPPORTED` (-1). Sources, all Linux 6.12 unless said
//! otherwise: `include/linux/arm-smccc.h` (IDs), `Documentation/virt/kvm/arm/hypercalls.rst`
//! (the pKVM calls), `arch/arm64/kvm/hypercalls.c` and `arch/arm64/kvm/psci.c`
//! (what mainline KVM answers a normal guest), `include/uapi/linux/psci.h`
//! (PSCI IDs and codes), and pKVM's `kvm_handle_pvm_hvc64` /
//! `pkvm_memshare_call` (arm64/kvm/hyp/nvhe/pkvm.c after 6.12, for what the
//! hypervisor itself checks and returns).
//!
//! | call | ID | VMs | arguments | result `x0` (`x1..x3` 0 unless said) |
//! |------|----|-----|-----------|-------------------------------------|
//! | SMCCC_VERSION | `0x80000000` | both | — | `0x10001` (1.1) |
//! | SMCCC_ARCH_FEATURES | `0x80000001` | both | `w1` fid | `NOT_SUPPORTED` for every fid: no firmware workaround is offered (KVM's answer on a host that has none) |
//! | VENDOR_HYP_CALL_UID | `0x8600ff01` | both | — | KVM's UID: `0xb66fb428 0xe911c52e 0x564bcaa9 0x743a004d` in `x0..x3` |
//! | KVM FEATURES | `0x86000000` | both | — | bitmap of KVM functions: protected `0x9d` (0 FEATURES, 2 HYP_MEMINFO, 3 MEM_SHARE, 4 MEM_UNSHARE, 7 MMIO_GUARD); normal `0x1` (FEATURES; mainline also sets 1 PTP, which a VMM may clear) |
//! | HYP_MEMINFO | `0xc6000002` | protected | `x1..x3` must be 0 | `4096` (the granule), or `INVALID_PARAMETER` (-3) |
//! | MEM_SHARE | `0xc6000003` | protected | `x1` IPA; `x2`, `x3` must be 0 | `SUCCESS` and an exit to the host, or `INVALID_PARAMETER` for anything wrong (non-zero `x2`/`x3`, unaligned, not the guest's, already shared, no memory) |
//! | MEM_UNSHARE | `0xc6000004` | protected | as MEM_SHARE | as MEM_SHARE |
//! | MMIO_GUARD | `0xc6000007` | protected | `x1` IPA; `x2`, `x3` must be 0 | `SUCCESS` (idempotent), or `INVALID_PARAMETER` (unaligned, outside the IPA space, guest memory, guard set full) |
//! | PSCI_VERSION | `0x84000000` | both | — | `0x10001` (PSCI 1.1) |
//! | PSCI_FEATURES | `0x8400000a` | both | `w1` fid | `SUCCESS` for VERSION, CPU_SUSPEND, CPU_OFF, CPU_ON, AFFINITY_INFO, MIGRATE_INFO_TYPE, SYSTEM_OFF, SYSTEM_RESET, PSCI_FEATURES, SYSTEM_RESET2 (32- and 64-bit) and SMCCC_VERSION; else `NOT_SUPPORTED` |
//! | CPU_SUSPEND | `0x84000001` / `0xc4000001` | both | ignored | `SUCCESS` after a wait for interrupt (KVM treats every state as standby) |
//! | CPU_OFF | `0x84000002` | both | — | does not return; the vCPU is off until a CPU_ON |
//! | CPU_ON | `0x84000003` / `0xc4000003` | both | `x1` target MPIDR, `x2` entry, `x3` context ID (32-bit ID: low halves) | `SUCCESS`; `INVALID_PARAMETERS` (-2) for bits outside Aff3..Aff0 or no such vCPU; `ALREADY_ON` (-4); `ON_PENDING` (-5) |
//! | AFFINITY_INFO | `0x84000004` / `0xc4000004` | both | `x1` target, `x2` lowest level | `ON` (0) if a matching vCPU is on, else `ON_PENDING` (2) if one is pending, else `OFF` (1); `INVALID_PARAMETERS` for bad bits, a level above 3, or no match |
//! | MIGRATE_INFO_TYPE | `0x84000006` | both | — | `2` (trusted OS is MP or absent) |
//! | SYSTEM_OFF | `0x84000008` | both | — | exit to the host (`KVM_SYSTEM_EVENT_SHUTDOWN`); `INTERNAL_FAILURE` (-6) if the guest is ever resumed |
//! | SYSTEM_RESET | `0x84000009` | both | — | as SYSTEM_OFF, `KVM_SYSTEM_EVENT_RESET` |
//! | SYSTEM_RESET2 | `0x84000012` / `0xc4000012` | both | `w1` reset type, `x2` cookie | as SYSTEM_RESET with flag `PSCI_RESET2`; `INVALID_PARAMETERS` for a type that is neither 0 (warm) nor vendor (bit 31) |
//!
//! SMCCC_ARCH_FEATURES, MIGRATE_INFO_TYPE and the KVM FEATURES bitmap of a
//! normal VM follow mainline KVM; pKVM's own handler answers a protected
//! guest `NOT_SUPPORTED` for the first two, which a 6.12 guest handles the
//! same way. The Android extension of MEM_SHARE to ranges (`x2` = count) is
//! not offered: mainline's rule, `x2` = `x3` = 0, holds.
//!
//! # Outcomes
//!
//! [`handle_guest_call`] changes the hyp's state (page database, stage-2
//! tables, guard set, power states) and tells the glue what to do next: write
//! `x0..x3` and resume ([`GuestOutcome::Return`]); the same and then wait for
//! an interrupt ([`GuestOutcome::Halt`]); or write `x0..x3` and return to the
//! host from `VCPU_RUN` with a [`HostExit`] ([`GuestOutcome::ExitToHost`]).
//! The guest's result is decided here, before the host runs: the host cannot
//! change what a protected guest sees. The host gets what it needs to act and
//! nothing more: the IPA of a shared page, the index of a vCPU to wake (not
//! the guest's entry point), the kind of system event.
//!
//! # MMIO
//!
//! [`mmio_exit_allowed`] is the rule for handing a guest access to the host
//! for emulation: a normal VM may exit on any IPA its stage-2 does not map
//! (the host decides what is there, as KVM does); a protected VM only on pages
//! it guarded with MMIO_GUARD, so a host cannot make it fetch "device" data
//! from an address it believes is RAM. [`classify_guest_abort`] applies it to
//! a stage-2 abort.

use crate::abi::{self, fast_call_id, ret, smccc, SMCCC_OWNER_VENDOR_HYP};
use crate::addr::{Ipa, PAGE_SHIFT, PAGE_SIZE};
use crate::hal::Hal;
use crate::mem_protect::MemProtect;
use crate::stage2::IPA_LIMIT;
use crate::vm::{PowerState, Vm, VmKind, MPIDR_HWID_MASK};

/// KVM vendor-hypervisor function numbers (`ARM_SMCCC_KVM_FUNC_*`): bit
/// positions in the KVM FEATURES bitmap.
pub mod kvm_func {
    /// `ARM_SMCCC_KVM_FUNC_FEATURES`.
    pub const FEATURES: u16 = 0;
    /// `ARM_SMCCC_KVM_FUNC_PTP` (not offered).
    pub const PTP: u16 = 1;
    /// `ARM_SMCCC_KVM_FUNC_HYP_MEMINFO`.
    pub const HYP_MEMINFO: u16 = 2;
    /// `ARM_SMCCC_KVM_FUNC_MEM_SHARE`.
    pub const MEM_SHARE: u16 = 3;
    /// `ARM_SMCCC_KVM_FUNC_MEM_UNSHARE`.
    pub const MEM_UNSHARE: u16 = 4;
    /// `ARM_SMCCC_KVM_FUNC_MMIO_GUARD`.
    pub const MMIO_GUARD: u16 = 7;
}

/// KVM vendor-hypervisor function IDs (`ARM_SMCCC_VENDOR_HYP_KVM_*_FUNC_ID`).
/// The SMCCC ones guests use are [`abi::smccc`]'s.
pub mod kvm {
    use super::{fast_call_id, kvm_func, SMCCC_OWNER_VENDOR_HYP};

    /// KVM FEATURES (SMC32).
    pub const FEATURES: u32 = fast_call_id(false, SMCCC_OWNER_VENDOR_HYP, kvm_func::FEATURES);
    /// PTP (SMC32; not offered).
    pub const PTP: u32 = fast_call_id(false, SMCCC_OWNER_VENDOR_HYP, kvm_func::PTP);
    /// HYP_MEMINFO (SMC64).
    pub const HYP_MEMINFO: u32 = fast_call_id(true, SMCCC_OWNER_VENDOR_HYP, kvm_func::HYP_MEMINFO);
    /// MEM_SHARE (SMC64).
    pub const MEM_SHARE: u32 = fast_call_id(true, SMCCC_OWNER_VENDOR_HYP, kvm_func::MEM_SHARE);
    /// MEM_UNSHARE (SMC64).
    pub const MEM_UNSHARE: u32 = fast_call_id(true, SMCCC_OWNER_VENDOR_HYP, kvm_func::MEM_UNSHARE);
    /// MMIO_GUARD (SMC64).
    pub const MMIO_GUARD: u32 = fast_call_id(true, SMCCC_OWNER_VENDOR_HYP, kvm_func::MMIO_GUARD);
}

/// `SMCCC_ARCH_WORKAROUND_1` (a fid guests ask `ARCH_FEATURES` about).
pub const SMCCC_ARCH_WORKAROUND_1: u32 = 0x8000_8000;

/// PSCI function IDs and return values (`include/uapi/linux/psci.h`).
pub mod psci {
    /// `PSCI_0_2_FN_PSCI_VERSION`.
    pub const VERSION: u32 = 0x8400_0000;
    /// `PSCI_0_2_FN_CPU_SUSPEND`.
    pub const CPU_SUSPEND: u32 = 0x8400_0001;
    /// `PSCI_0_2_FN64_CPU_SUSPEND`.
    pub const CPU_SUSPEND_64: u32 = 0xc400_0001;
    /// `PSCI_0_2_FN_CPU_OFF`.
    pub const CPU_OFF: u32 = 0x8400_0002;
    /// `PSCI_0_2_FN_CPU_ON`.
    pub const CPU_ON: u32 = 0x8400_0003;
    /// `PSCI_0_2_FN64_CPU_ON`.
    pub const CPU_ON_64: u32 = 0xc400_0003;
    /// `PSCI_0_2_FN_AFFINITY_INFO`.
    pub const AFFINITY_INFO: u32 = 0x8400_0004;
    /// `PSCI_0_2_FN64_AFFINITY_INFO`.
    pub const AFFINITY_INFO_64: u32 = 0xc400_0004;
    /// `PSCI_0_2_FN_MIGRATE_INFO_TYPE`.
    pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
    /// `PSCI_0_2_FN_SYSTEM_OFF`.
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    /// `PSCI_0_2_FN_SYSTEM_RESET`.
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
    /// `PSCI_1_0_FN_PSCI_FEATURES`.
    pub const FEATURES: u32 = 0x8400_000a;
    /// `PSCI_1_1_FN_SYSTEM_RESET2`.
    pub const SYSTEM_RESET2: u32 = 0x8400_0012;
    /// `PSCI_1_1_FN64_SYSTEM_RESET2`.
    pub const SYSTEM_RESET2_64: u32 = 0xc400_0012;

    /// PSCI 1.1, as PSCI_VERSION returns it.
    pub const VERSION_1_1: u64 = 0x1_0001;

    /// `PSCI_RET_SUCCESS`.
    pub const RET_SUCCESS: u64 = 0;
    /// `PSCI_RET_NOT_SUPPORTED` (the same value as SMCCC's).
    pub const RET_NOT_SUPPORTED: u64 = (-1i64).cast_unsigned();
    /// `PSCI_RET_INVALID_PARAMS`.
    pub const RET_INVALID_PARAMS: u64 = (-2i64).cast_unsigned();
    /// `PSCI_RET_ALREADY_ON`.
    pub const RET_ALREADY_ON: u64 = (-4i64).cast_unsigned();
    /// `PSCI_RET_ON_PENDING`.
    pub const RET_ON_PENDING: u64 = (-5i64).cast_unsigned();
    /// `PSCI_RET_INTERNAL_FAILURE`.
    pub const RET_INTERNAL_FAILURE: u64 = (-6i64).cast_unsigned();

    /// AFFINITY_INFO: a matching CPU is on.
    pub const AFFINITY_LEVEL_ON: u64 = 0;
    /// AFFINITY_INFO: all matching CPUs are off.
    pub const AFFINITY_LEVEL_OFF: u64 = 1;
    /// AFFINITY_INFO: a matching CPU is being turned on.
    pub const AFFINITY_LEVEL_ON_PENDING: u64 = 2;
    /// MIGRATE_INFO_TYPE: trusted OS is multicore or absent.
    pub const TOS_MP: u64 = 2;
    /// SYSTEM_RESET2 type: architectural warm reset.
    pub const RESET_TYPE_WARM: u32 = 0;
    /// SYSTEM_RESET2 types from here (bit 31) are vendor-specific.
    pub const RESET_TYPE_VENDOR_START: u32 = 0x8000_0000;
}

/// KVM userspace ABI values the host turns [`HostExit`]s into
/// (`include/uapi/linux/kvm.h`, `arch/arm64/include/uapi/asm/kvm.h`).
pub mod kvm_uapi {
    /// `KVM_EXIT_HYPERCALL`.
    pub const EXIT_HYPERCALL: u32 = 3;
    /// `KVM_EXIT_MMIO`.
    pub const EXIT_MMIO: u32 = 6;
    /// `KVM_EXIT_SYSTEM_EVENT`.
    pub const EXIT_SYSTEM_EVENT: u32 = 24;
    /// `KVM_SYSTEM_EVENT_SHUTDOWN`.
    pub const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
    /// `KVM_SYSTEM_EVENT_RESET`.
    pub const SYSTEM_EVENT_RESET: u32 = 2;
    /// `KVM_SYSTEM_EVENT_RESET_FLAG_PSCI_RESET2` (in `data[0]`).
    pub const SYSTEM_EVENT_RESET_FLAG_PSCI_RESET2: u64 = 1;
}

const fn bit(n: u16) -> u32 {
    1 << n
}

/// KVM FEATURES bitmap for a protected VM (pKVM's `kvm_handle_pvm_hvc64`,
/// with 6.12's single MMIO_GUARD call).
pub const PROTECTED_VM_FEATURES: u32 = bit(kvm_func::FEATURES)
    | bit(kvm_func::HYP_MEMINFO)
    | bit(kvm_func::MEM_SHARE)
    | bit(kvm_func::MEM_UNSHARE)
    | bit(kvm_func::MMIO_GUARD);

/// KVM FEATURES bitmap for a normal VM: FEATURES only. Mainline KVM
/// defaults to FEATURES | PTP; PTP needs the host's clock, which the hyp
/// does not have, and a VMM may clear it with `KVM_REG_ARM_VENDOR_HYP_BMAP`,
/// so this is still a bitmap a mainline KVM guest can see.
pub const NORMAL_VM_FEATURES: u32 = bit(kvm_func::FEATURES);

/// The protection granule HYP_MEMINFO reports (and MEM_SHARE moves).
pub const HYP_MEMINFO_GRANULE: u64 = PAGE_SIZE;

const _: () = assert!(kvm::FEATURES == 0x8600_0000);
const _: () = assert!(kvm::HYP_MEMINFO == 0xc600_0002);
const _: () = assert!(kvm::MEM_SHARE == 0xc600_0003);
const _: () = assert!(kvm::MEM_UNSHARE == 0xc600_0004);
const _: () = assert!(kvm::MMIO_GUARD == 0xc600_0007);
const _: () = assert!(PROTECTED_VM_FEATURES == 0x9d);
const _: () = assert!(psci::RET_NOT_SUPPORTED == ret::NOT_SUPPORTED);

/// The KVM FEATURES bitmap a VM of `kind` gets.
pub const fn kvm_features(kind: VmKind) -> u32 {
    match kind {
        VmKind::Normal => NORMAL_VM_FEATURES,
        VmKind::Protected => PROTECTED_VM_FEATURES,
    }
}

/// A decoded guest call, with typed arguments.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GuestCall {
    /// `SMCCC_VERSION`.
    SmcccVersion,
    /// `SMCCC_ARCH_FEATURES(fid)`.
    SmcccArchFeatures {
        /// The function asked about (`w1`).
        fid: u32,
    },
    /// `VENDOR_HYP_CALL_UID`.
    VendorHypCallUid,
    /// KVM `FEATURES`.
    KvmFeatures,
    /// pKVM `HYP_MEMINFO`.
    HypMeminfo,
    /// pKVM `MEM_SHARE(ipa)`.
    MemShare {
        /// The page to share.
        ipa: Ipa,
    },
    /// pKVM `MEM_UNSHARE(ipa)`.
    MemUnshare {
        /// The page to unshare.
        ipa: Ipa,
    },
    /// pKVM `MMIO_GUARD(ipa)`.
    MmioGuard {
        /// The page the guest will access as MMIO.
        ipa: Ipa,
    },
    /// `PSCI_VERSION`.
    PsciVersion,
    /// `PSCI_FEATURES(fid)`.
    PsciFeatures {
        /// The function asked about (`w1`).
        fid: u32,
    },
    /// `CPU_SUSPEND` (arguments ignored, as KVM does).
    CpuSuspend,
    /// `CPU_OFF`.
    CpuOff,
    /// `CPU_ON(target, entry, context_id)`.
    CpuOn {
        /// Target MPIDR (affinity fields only; checked).
        target: u64,
        /// Entry point.
        entry: u64,
        /// Context ID (the target's X0).
        context_id: u64,
    },
    /// `AFFINITY_INFO(target, lowest_level)`.
    AffinityInfo {
        /// Target affinity (affinity fields only; checked).
        target: u64,
        /// Lowest affinity level, 0..=3 (checked).
        lowest_level: u8,
    },
    /// `MIGRATE_INFO_TYPE`.
    MigrateInfoType,
    /// `SYSTEM_OFF`.
    SystemOff,
    /// `SYSTEM_RESET`.
    SystemReset,
    /// `SYSTEM_RESET2(reset_type, cookie)`.
    SystemReset2 {
        /// Reset type: warm (0) or vendor (bit 31 set); checked.
        reset_type: u32,
        /// Cookie (not used).
        cookie: u64,
    },
}

/// Why registers did not decode to a call the VM may make. Nothing changes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GuestCallError {
    /// No such function, or not offered to this kind of VM: SMCCC and PSCI
    /// `NOT_SUPPORTED` (-1).
    NotSupported {
        /// The function ID (`w0`).
        fid: u32,
    },
    /// A register pKVM requires to be zero is not: `INVALID_PARAMETER` (-3).
    ReservedArgNonZero {
        /// The function ID.
        fid: u32,
        /// The register number (1..=3).
        reg: u8,
    },
    /// A PSCI argument out of range: PSCI `INVALID_PARAMETERS` (-2).
    PsciInvalidParams {
        /// The function ID.
        fid: u32,
    },
}

impl GuestCallError {
    /// The guest's `x0..x3` for this error.
    pub const fn to_regs(&self) -> [u64; 4] {
        let x0 = match self {
            Self::NotSupported { .. } => ret::NOT_SUPPORTED,
            Self::ReservedArgNonZero { .. } => ret::INVALID_PARAMETER,
            Self::PsciInvalidParams { .. } => psci::RET_INVALID_PARAMS,
        };
        [x0, 0, 0, 0]
    }
}

/// The low 32 bits of a register (SMC32 arguments live in `wN`).
fn low32(x: u64) -> u32 {
    u32::try_from(x & u64::from(u32::MAX)).unwrap_or(0)
}

/// Requires `x1..=x3` from `first` on to be zero (pKVM checks `x1..x3`
/// only; `x4..x7` are ignored, as SMCCC allows).
fn zero_from(regs: &[u64; 8], fid: u32, first: usize) -> Result<(), GuestCallError> {
    match (first..=3).find(|&r| regs.get(r).is_some_and(|&v| v != 0)) {
        Some(r) => Err(GuestCallError::ReservedArgNonZero {
            fid,
            reg: u8::try_from(r).unwrap_or(u8::MAX),
        }),
        None => Ok(()),
    }
}

/// Whether `mpidr` has bits outside the affinity fields
/// (`kvm_psci_valid_affinity`).
const fn valid_affinity(mpidr: u64) -> bool {
    mpidr & !MPIDR_HWID_MASK == 0
}

/// Decodes a guest's `x0..x7` into a call its VM may make. Never panics.
///
/// The 32-bit PSCI calls see only the low halves of `x1..x3` (KVM's
/// `kvm_psci_narrow_to_32bit`).
///
/// # Errors
/// [`GuestCallError::NotSupported`] for an unknown function or a
/// protected-only call in a normal VM; [`GuestCallError::ReservedArgNonZero`]
/// when a pKVM call has a non-zero reserved register;
/// [`GuestCallError::PsciInvalidParams`] for PSCI arguments out of range.
pub fn decode_guest_call(regs: &[u64; 8], vm_kind: VmKind) -> Result<GuestCall, GuestCallError> {
    let fid = low32(regs[0]);
    let protected = vm_kind.is_protected();
    let not_supported = GuestCallError::NotSupported { fid };
    let invalid = GuestCallError::PsciInvalidParams { fid };
    let arg = |i: usize, narrow: bool| {
        let v = regs.get(i).copied().unwrap_or(0);
        if narrow {
            u64::from(low32(v))
        } else {
            v
        }
    };
    let call = match fid {
        smccc::VERSION => GuestCall::SmcccVersion,
        smccc::ARCH_FEATURES => GuestCall::SmcccArchFeatures {
            fid: low32(regs[1]),
        },
        smccc::VENDOR_HYP_CALL_UID => GuestCall::VendorHypCallUid,
        kvm::FEATURES => GuestCall::KvmFeatures,
        kvm::HYP_MEMINFO | kvm::MEM_SHARE | kvm::MEM_UNSHARE | kvm::MMIO_GUARD if !protected => {
            return Err(not_supported)
        }
        kvm::HYP_MEMINFO => {
            zero_from(regs, fid, 1)?;
            GuestCall::HypMeminfo
        }
        kvm::MEM_SHARE | kvm::MEM_UNSHARE | kvm::MMIO_GUARD => {
            zero_from(regs, fid, 2)?;
            let ipa = Ipa::new(regs[1]);
            match fid {
                kvm::MEM_SHARE => GuestCall::MemShare { ipa },
                kvm::MEM_UNSHARE => GuestCall::MemUnshare { ipa },
                _ => GuestCall::MmioGuard { ipa },
            }
        }
        psci::VERSION => GuestCall::PsciVersion,
        psci::FEATURES => GuestCall::PsciFeatures {
            fid: low32(regs[1]),
        },
        psci::CPU_SUSPEND | psci::CPU_SUSPEND_64 => GuestCall::CpuSuspend,
        psci::CPU_OFF => GuestCall::CpuOff,
        psci::CPU_ON | psci::CPU_ON_64 => {
            let narrow = fid == psci::CPU_ON;
            let target = arg(1, narrow);
            if !valid_affinity(target) {
                return Err(invalid);
            }
            GuestCall::CpuOn {
                target,
                entry: arg(2, narrow),
                context_id: arg(3, narrow),
            }
        }
        psci::AFFINITY_INFO | psci::AFFINITY_INFO_64 => {
            let narrow = fid == psci::AFFINITY_INFO;
            let target = arg(1, narrow);
            let lowest_level = u8::try_from(arg(2, narrow))
                .ok()
                .filter(|&l| l <= 3)
                .ok_or(invalid)?;
            if !valid_affinity(target) {
                return Err(invalid);
            }
            GuestCall::AffinityInfo {
                target,
                lowest_level,
            }
        }
        psci::MIGRATE_INFO_TYPE => GuestCall::MigrateInfoType,
        psci::SYSTEM_OFF => GuestCall::SystemOff,
        psci::SYSTEM_RESET => GuestCall::SystemReset,
        psci::SYSTEM_RESET2 | psci::SYSTEM_RESET2_64 => {
            let reset_type = low32(regs[1]);
            if reset_type != psci::RESET_TYPE_WARM && reset_type < psci::RESET_TYPE_VENDOR_START {
                return Err(invalid);
            }
            GuestCall::SystemReset2 {
                reset_type,
                cookie: arg(2, fid == psci::SYSTEM_RESET2),
            }
        }
        _ => return Err(not_supported),
    };
    Ok(call)
}

/// Whether a guest's PSCI_FEATURES may report `fid` as implemented (KVM's
/// `kvm_psci_1_x_call` list for PSCI 1.1, without SYSTEM_SUSPEND, which is
/// off unless a VMM enables it).
pub const fn psci_feature_supported(fid: u32) -> bool {
    matches!(
        fid,
        psci::VERSION
            | psci::CPU_SUSPEND
            | psci::CPU_SUSPEND_64
            | psci::CPU_OFF
            | psci::CPU_ON
            | psci::CPU_ON_64
            | psci::AFFINITY_INFO
            | psci::AFFINITY_INFO_64
            | psci::MIGRATE_INFO_TYPE
            | psci::SYSTEM_OFF
            | psci::SYSTEM_RESET
            | psci::FEATURES
            | psci::SYSTEM_RESET2
            | psci::SYSTEM_RESET2_64
            | smccc::VERSION
    )
}

/// A PSCI system event the host must carry out.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SystemEvent {
    /// SYSTEM_OFF.
    Shutdown,
    /// SYSTEM_RESET.
    Reset,
    /// SYSTEM_RESET2 (warm or vendor reset).
    Reset2 {
        /// The reset type the guest asked for.
        reset_type: u32,
    },
}

impl SystemEvent {
    /// `kvm_run.system_event.type`.
    pub const fn kvm_type(self) -> u32 {
        match self {
            Self::Shutdown => kvm_uapi::SYSTEM_EVENT_SHUTDOWN,
            Self::Reset | Self::Reset2 { .. } => kvm_uapi::SYSTEM_EVENT_RESET,
        }
    }

    /// `kvm_run.system_event.data[0]` (the flags).
    pub const fn kvm_flags(self) -> u64 {
        match self {
            Self::Shutdown | Self::Reset => 0,
            Self::Reset2 { .. } => kvm_uapi::SYSTEM_EVENT_RESET_FLAG_PSCI_RESET2,
        }
    }
}

/// Why a vCPU returns to the host, as `VCPU_RUN` reports it
/// ([`abi::exit`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HostExit {
    /// The guest shared the page at `ipa` with the host
    /// (`KVM_EXIT_HYPERCALL`, nr = MEM_SHARE, `args[0]` = IPA).
    MemShare {
        /// The page.
        ipa: Ipa,
    },
    /// The guest took the page at `ipa` back (`KVM_EXIT_HYPERCALL`, nr =
    /// MEM_UNSHARE).
    MemUnshare {
        /// The page.
        ipa: Ipa,
    },
    /// A PSCI system event (`KVM_EXIT_SYSTEM_EVENT`).
    SystemEvent(SystemEvent),
    /// CPU_ON made vCPU `target` runnable: the host wakes its thread. The
    /// entry point and context ID stay in the hyp.
    CpuOn {
        /// The vCPU index.
        target: usize,
        /// Its MPIDR.
        mpidr: u64,
    },
    /// The calling vCPU turned itself off (CPU_OFF).
    CpuOff,
}

impl HostExit {
    /// `VCPU_RUN`'s `x1..x3`: exit code and details.
    pub fn to_regs(self) -> [u64; 3] {
        match self {
            Self::MemShare { ipa } => [abi::exit::MEM_SHARE, ipa.raw(), 0],
            Self::MemUnshare { ipa } => [abi::exit::MEM_UNSHARE, ipa.raw(), 0],
            Self::SystemEvent(e) => [
                abi::exit::SYSTEM_EVENT,
                u64::from(e.kvm_type()),
                e.kvm_flags(),
            ],
            Self::CpuOn { target, mpidr } => [
                abi::exit::CPU_ON,
                u64::try_from(target).unwrap_or(u64::MAX),
                mpidr,
            ],
            Self::CpuOff => [abi::exit::CPU_OFF, 0, 0],
        }
    }
}

/// What the arch glue does after a guest call. In every case it writes the
/// four registers into the guest's `x0..x3` first (the `ELR_EL2` of an HVC
/// already points past it; a trapped SMC needs `+ 4`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GuestOutcome {
    /// Resume the guest.
    Return([u64; 4]),
    /// Resume the guest once an interrupt is pending (WFI semantics; the
    /// glue may return to the host with [`abi::exit::HALT`] to wait).
    Halt([u64; 4]),
    /// Return to the host from `VCPU_RUN` with `exit`; the guest resumes on
    /// the next `VCPU_RUN` (unless the exit turned it off).
    ExitToHost {
        /// The guest's `x0..x3`.
        regs: [u64; 4],
        /// What the host is told.
        exit: HostExit,
    },
    /// The call names guest memory the host has not given yet (memory is
    /// donated on first touch, and a guest may share a page it never
    /// touched: Linux shares its whole DMA pool at boot). The glue leaves
    /// `x0..x3` alone, exits `MEM_FAULT` for `ipa` and runs the call again
    /// once the host mapped it (pKVM faults the page in the same way).
    FaultIn {
        /// The page the call needs.
        ipa: Ipa,
    },
}

impl GuestOutcome {
    /// The guest's `x0..x3`.
    pub const fn regs(&self) -> [u64; 4] {
        match *self {
            Self::Return(r) | Self::Halt(r) => r,
            Self::ExitToHost { regs, .. } => regs,
            Self::FaultIn { .. } => [0; 4],
        }
    }
}

const fn answer(x0: u64) -> GuestOutcome {
    GuestOutcome::Return([x0, 0, 0, 0])
}

/// Guest frame numbers guarded as MMIO are kept as this many runs.
pub const MMIO_GUARD_RUNS: usize = 32;

/// Why a page could not be guarded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GuardError {
    /// The IPA is not page-aligned.
    Unaligned,
    /// The IPA is outside the IPA space.
    OutOfRange,
    /// No run left to record a page that extends none.
    Full,
}

/// The pages a protected guest declared MMIO (MMIO_GUARD), as sorted,
/// disjoint, non-adjacent runs of guest frame numbers, so a guest that
/// guards a device region page by page (as Linux's ioremap hook does) uses
/// one run per region. Fixed capacity: [`MMIO_GUARD_RUNS`] runs.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct MmioGuardSet {
    /// `[start, end)` guest frame numbers; `runs[..len]` are used.
    runs: [(u64, u64); MMIO_GUARD_RUNS],
    len: usize,
}

impl Default for MmioGuardSet {
    fn default() -> Self {
        Self::new()
    }
}

impl MmioGuardSet {
    /// An empty set.
    pub const fn new() -> Self {
        Self {
            runs: [(0, 0); MMIO_GUARD_RUNS],
            len: 0,
        }
    }

    fn used(&self) -> &[(u64, u64)] {
        self.runs.get(..self.len).unwrap_or(&[])
    }

    /// Whether the page containing `ipa` is guarded.
    pub fn contains(&self, ipa: Ipa) -> bool {
        let g = ipa.gfn();
        self.used().iter().any(|&(s, e)| s <= g && g < e)
    }

    /// Whether any of `pages` pages from the page containing `ipa` is
    /// guarded.
    pub fn overlaps(&self, ipa: Ipa, pages: u64) -> bool {
        let start = ipa.gfn();
        let end = start.saturating_add(pages);
        self.used().iter().any(|&(s, e)| s < end && start < e)
    }

    /// Guards the page at `ipa` (idempotent). Changes nothing on error.
    ///
    /// # Errors
    /// [`GuardError::Unaligned`], [`GuardError::OutOfRange`],
    /// [`GuardError::Full`].
    pub fn insert(&mut self, ipa: Ipa) -> Result<(), GuardError> {
        if !ipa.is_page_aligned() {
            return Err(GuardError::Unaligned);
        }
        if ipa.raw() >= IPA_LIMIT {
            return Err(GuardError::OutOfRange);
        }
        let g = ipa.gfn();
        let len = self.len;
        // First run that ends at or after g; every run before it ends
        // before g, so cannot contain or touch it.
        let k = self.used().iter().position(|&(_, e)| e >= g).unwrap_or(len);
        if let Some(&(s, e)) = self.used().get(k) {
            if s <= g && g < e {
                return Ok(());
            }
            if e == g {
                // Run k grows right; it may now touch run k + 1.
                let next_end = self
                    .used()
                    .get(k + 1)
                    .filter(|&&(ns, _)| ns == g + 1)
                    .map(|&(_, ne)| ne);
                if let Some(run) = self.runs.get_mut(k) {
                    run.1 = next_end.unwrap_or(g + 1);
                }
                if next_end.is_some() {
                    self.remove(k + 1);
                }
                return Ok(());
            }
            if s == g + 1 {
                if let Some(run) = self.runs.get_mut(k) {
                    run.0 = g;
                }
                return Ok(());
            }
        }
        if len >= MMIO_GUARD_RUNS {
            return Err(GuardError::Full);
        }
        self.runs.copy_within(k..len, k + 1);
        if let Some(run) = self.runs.get_mut(k) {
            *run = (g, g + 1);
        }
        self.len = len + 1;
        Ok(())
    }

    fn remove(&mut self, i: usize) {
        if i < self.len {
            self.runs.copy_within(i + 1..self.len, i);
            self.len -= 1;
            if let Some(run) = self.runs.get_mut(self.len) {
                *run = (0, 0);
            }
        }
    }

    /// Number of guarded pages.
    pub fn pages(&self) -> u64 {
        self.used().iter().map(|&(s, e)| e - s).sum()
    }

    /// The guarded runs: first IPA and page count, in IPA order.
    pub fn runs(&self) -> impl Iterator<Item = (Ipa, u64)> + '_ {
        self.used()
            .iter()
            .map(|&(s, e)| (Ipa::new(s << PAGE_SHIFT), e - s))
    }

    /// Forgets every page.
    pub fn clear(&mut self) {
        *self = Self::new();
    }
}

/// Whether a guest access to `ipa` (which its stage-2 does not map) may be
/// handed to the host for MMIO emulation: for a normal VM, any IPA in the
/// IPA space; for a protected VM, only a page it guarded with MMIO_GUARD.
pub fn mmio_exit_allowed(vm_kind: VmKind, guard: &MmioGuardSet, ipa: Ipa) -> bool {
    ipa.raw() < IPA_LIMIT
        && match vm_kind {
            VmKind::Normal => true,
            VmKind::Protected => guard.contains(ipa),
        }
}

/// A guest stage-2 abort, as the glue reads it from `ESR_EL2` and
/// `HPFAR_EL2`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GuestAbort {
    /// The faulting IPA.
    pub ipa: Ipa,
    /// An instruction abort (EC `0x20`) rather than a data abort.
    pub fetch: bool,
    /// ISS.S1PTW: the fault hit a stage-1 table walk.
    pub s1ptw: bool,
    /// ISS.ISV: the syndrome describes the access (size, register), so it
    /// can be emulated.
    pub isv: bool,
}

/// What to do with a guest stage-2 abort.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AbortAction {
    /// Exit to the host for emulation (`KVM_EXIT_MMIO`).
    Mmio,
    /// Not MMIO the host may see: exit to the host as a memory fault (it
    /// may map memory there); if it does not, the guest gets a synchronous
    /// external abort ([`crate::exits`]).
    MemFault,
    /// The IPA is guest memory now (the fault raced with a mapping change):
    /// resume the guest to retry the access.
    Retry,
}

/// Classifies a guest stage-2 abort; `is_guest_memory` is whether the
/// guest's stage-2 maps `abort.ipa` now ([`Vm::is_guest_memory`]).
///
/// Guest memory: retry. Otherwise the access must be an emulatable data
/// access (not a fetch, not a stage-1 walk, syndrome valid) that
/// [`mmio_exit_allowed`] lets out, or it is a memory fault: the host may
/// put memory there (a protected VM's memory is donated on first touch),
/// and if it does not the guest gets an external abort. In a protected VM,
/// touching an unguarded IPA never shows the host the access itself.
pub fn classify_guest_abort(
    vm_kind: VmKind,
    guard: &MmioGuardSet,
    abort: &GuestAbort,
    is_guest_memory: bool,
) -> AbortAction {
    if is_guest_memory {
        return AbortAction::Retry;
    }
    if abort.fetch || abort.s1ptw || !abort.isv {
        return AbortAction::MemFault;
    }
    if mmio_exit_allowed(vm_kind, guard, abort.ipa) {
        AbortAction::Mmio
    } else {
        AbortAction::MemFault
    }
}

/// Runs a decoded call made by vCPU `caller` of `vm`. Memory calls go through
/// [`MemProtect`] (host component, then the VM's guest component); PSCI
/// changes power states in `vm`. A failing call changes nothing.
pub fn handle_guest_call<H: Hal + ?Sized>(
    call: GuestCall,
    caller: usize,
    mem: &mut MemProtect<'_>,
    vm: &mut Vm,
    hal: &mut H,
) -> GuestOutcome {
    const INVALID: GuestOutcome = answer(ret::INVALID_PARAMETER);
    let ok = [ret::SUCCESS, 0, 0, 0];
    match call {
        GuestCall::SmcccVersion => answer(abi::SMCCC_VERSION_1_1),
        GuestCall::SmcccArchFeatures { .. } => answer(ret::NOT_SUPPORTED),
        GuestCall::VendorHypCallUid => GuestOutcome::Return(abi::KVM_UID.map(u64::from)),
        GuestCall::KvmFeatures => answer(u64::from(kvm_features(vm.kind()))),
        GuestCall::HypMeminfo => answer(HYP_MEMINFO_GRANULE),
        GuestCall::MemShare { ipa } => {
            if ipa.is_page_aligned()
                && ipa.raw() < crate::stage2::IPA_LIMIT
                && !vm.is_guest_memory(ipa, hal)
            {
                return GuestOutcome::FaultIn { ipa };
            }
            let Some(guest) = vm.mem.as_mut() else {
                return INVALID;
            };
            match mem.guest_share_host(guest, ipa, hal) {
                Ok(()) => GuestOutcome::ExitToHost {
                    regs: ok,
                    exit: HostExit::MemShare { ipa },
                },
                Err(_) => INVALID,
            }
        }
        GuestCall::MemUnshare { ipa } => {
            let Some(guest) = vm.mem.as_mut() else {
                return INVALID;
            };
            match mem.guest_unshare_host(guest, ipa, hal) {
                Ok(()) => GuestOutcome::ExitToHost {
                    regs: ok,
                    exit: HostExit::MemUnshare { ipa },
                },
                Err(_) => INVALID,
            }
        }
        GuestCall::MmioGuard { ipa } => {
            if vm.is_guest_memory(ipa, hal) {
                return INVALID;
            }
            match vm.mmio_guard.insert(ipa) {
                Ok(()) => answer(ret::SUCCESS),
                Err(_) => INVALID,
            }
        }
        GuestCall::PsciVersion => answer(psci::VERSION_1_1),
        GuestCall::PsciFeatures { fid } => answer(if psci_feature_supported(fid) {
            psci::RET_SUCCESS
        } else {
            psci::RET_NOT_SUPPORTED
        }),
        GuestCall::CpuSuspend => GuestOutcome::Halt(ok),
        GuestCall::CpuOff => match vm.vcpu_mut(caller) {
            Some(vcpu) => {
                vcpu.set_power(PowerState::Off);
                GuestOutcome::ExitToHost {
                    regs: ok,
                    exit: HostExit::CpuOff,
                }
            }
            None => answer(psci::RET_INTERNAL_FAILURE),
        },
        GuestCall::CpuOn {
            target,
            entry,
            context_id,
        } => cpu_on(vm, target, entry, context_id),
        GuestCall::AffinityInfo {
            target,
            lowest_level,
        } => answer(affinity_info(vm, target, lowest_level)),
        GuestCall::MigrateInfoType => answer(psci::TOS_MP),
        GuestCall::SystemOff => system_event(SystemEvent::Shutdown),
        GuestCall::SystemReset => system_event(SystemEvent::Reset),
        GuestCall::SystemReset2 { reset_type, .. } => {
            system_event(SystemEvent::Reset2 { reset_type })
        }
    }
}

/// A system event exits to the host; a guest resumed after it sees
/// `INTERNAL_FAILURE` (KVM preloads it the same way).
const fn system_event(e: SystemEvent) -> GuestOutcome {
    GuestOutcome::ExitToHost {
        regs: [psci::RET_INTERNAL_FAILURE, 0, 0, 0],
        exit: HostExit::SystemEvent(e),
    }
}

fn cpu_on(vm: &mut Vm, target: u64, entry: u64, context_id: u64) -> GuestOutcome {
    let target = target & MPIDR_HWID_MASK;
    let found = vm
        .vcpus
        .iter_mut()
        .enumerate()
        .find_map(|(i, v)| v.as_mut().filter(|v| v.mpidr() == target).map(|v| (i, v)));
    let Some((index, vcpu)) = found else {
        return answer(psci::RET_INVALID_PARAMS);
    };
    match vcpu.power() {
        PowerState::On => answer(psci::RET_ALREADY_ON),
        PowerState::OnPending { .. } => answer(psci::RET_ON_PENDING),
        PowerState::Off => {
            vcpu.set_power(PowerState::OnPending { entry, context_id });
            GuestOutcome::ExitToHost {
                regs: [psci::RET_SUCCESS, 0, 0, 0],
                exit: HostExit::CpuOn {
                    target: index,
                    mpidr: target,
                },
            }
        }
    }
}

/// AFFINITY_INFO as pKVM answers it: ON if a matching vCPU is on, else
/// ON_PENDING if one is pending, else OFF; INVALID_PARAMETERS without a
/// match. Levels are 0..=3 (checked by the decoder).
fn affinity_info(vm: &Vm, target: u64, lowest_level: u8) -> u64 {
    let shift = 8 * u32::from(lowest_level.min(3));
    // Level 3's field is bits 39..32: the mask is the same MPIDR_HWID_MASK
    // minus the fields below the level.
    let mask = MPIDR_HWID_MASK & !((1u64 << shift) - 1);
    let target = target & mask;
    let mut result = None;
    for vcpu in vm.vcpus.iter().flatten() {
        if vcpu.mpidr() & mask != target {
            continue;
        }
        match vcpu.power() {
            PowerState::On => return psci::AFFINITY_LEVEL_ON,
            PowerState::OnPending { .. } => result = Some(psci::AFFINITY_LEVEL_ON_PENDING),
            PowerState::Off => {
                result.get_or_insert(psci::AFFINITY_LEVEL_OFF);
            }
        }
    }
    result.unwrap_or(psci::RET_INVALID_PARAMS)
}

/// Decodes and runs one guest HVC of vCPU `caller`: the whole path from the
/// saved `x0..x7` to the outcome.
pub fn handle_guest_hvc<H: Hal + ?Sized>(
    regs: &[u64; 8],
    caller: usize,
    mem: &mut MemProtect<'_>,
    vm: &mut Vm,
    hal: &mut H,
) -> GuestOutcome {
    match decode_guest_call(regs, vm.kind()) {
        Ok(call) => handle_guest_call(call, caller, mem, vm, hal),
        Err(e) => GuestOutcome::Return(e.to_regs()),
    }
}

#[cfg(test)]
mod tests;
