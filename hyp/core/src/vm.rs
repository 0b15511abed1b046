//! The hyp-owned VM and vCPU table.
//!
//! The host names VMs by handle and vCPUs by index; everything else about a
//! guest (its stage-2, its registers, its power states, the MMIO pages it
//! guarded) lives here, in hyp memory the host cannot reach. The shape is
//! pKVM's `pkvm.c`:
//!
//! - **Fixed capacity**: [`MAX_VMS`] VMs of up to [`MAX_VCPUS`] vCPUs, in a
//!   table built at compile time ([`VmTable::new`] is `const`), so the hyp
//!   never allocates VM state. (pKVM has the host donate the memory for
//!   each VM's metadata instead; a fixed table keeps this crate heap- and
//!   donation-free, and gives the same isolation: the table is hyp memory.)
//! - **Handles** are the slot index plus [`HANDLE_OFFSET`] (pKVM's
//!   `HANDLE_OFFSET`, `0x1000`), so 0 and small integers are never valid and
//!   a stale or guessed value is easy to spot. Slot `i` runs with VMID
//!   `i + 1` (VMID 0 is the host's).
//! - **Publication order**: [`VmTable::create_vm`] reserves a free slot
//!   first (pKVM's `RESERVED_ENTRY`), builds the VM's stage-2, and only then
//!   marks the slot live: the last store publishes the VM ("Must be called
//!   last since this publishes the VM", `insert_vm_table_entry`). A failure
//!   in between gives the slot back and leaves nothing behind.
//! - **Two-phase teardown** (`__pkvm_start_teardown_vm` /
//!   `__pkvm_finalize_teardown_vm`): [`VmTable::start_teardown`] marks the
//!   VM dying, after which no vCPU is loaded again and no memory is added;
//!   [`VmTable::finalize_teardown`] reclaims every page through
//!   [`MemProtect::reclaim_guest`] (donated pages are zeroed before the host
//!   gets them back), frees the stage-2 tables and releases the slot.
//!
//! # VM kinds
//!
//! `KVM_CREATE_VM`'s type chooses the kind ([`VmKind::from_kvm_type`]):
//! `0` is a **normal** VM, whose memory the host lends
//! ([`MemProtect::host_share_guest`]) and whose registers it may read and
//! write while the vCPU is not running, as with KVM; `KVM_VM_TYPE_ARM_PROTECTED`
//! (`1 << 31`) is a **protected** VM, whose memory the host donates
//! ([`MemProtect::host_donate_guest`]) and whose registers the host may set
//! only as far as booting needs: `PC` and `X0`, before the vCPU first runs,
//! and nothing after ([`Vcpu::set_reg_from_host`]). Any other type bit,
//! including KVM's IPA-size field (the hyp has one IPA size, 39 bits), is
//! refused.
//!
//! # vCPU state
//!
//! [`VcpuContext`] is a plain `#[repr(C)]` struct that the arch glue's
//! world-switch code saves into and restores from; the offsets it uses are
//! constants in [`ctx_offset`], checked against the struct at compile time.
//! A vCPU is *loaded* between [`VmTable::vcpu_load`] and
//! [`VmTable::vcpu_put`] (it runs, or is about to): the host may not touch
//! its registers and the VM may not start teardown meanwhile.
//!
//! Power states follow PSCI ([`PowerState`]): a vCPU created with
//! `KVM_ARM_VCPU_POWER_OFF` starts `Off`; a guest's CPU_ON makes another vCPU
//! `OnPending` with the guest's entry point and context ID (kept here, never
//! taken from the host); the next [`VmTable::vcpu_load`] resets the vCPU
//! to them and turns it `On`; CPU_OFF turns the caller `Off`.
//!
//! # Locking
//!
//! `&mut VmTable` stands for pKVM's `vm_table_lock`; page moves also take
//! the host component ([`MemProtect`]) and the VM's [`GuestMem`], in that
//! order. The arch glue may hold one lock for all three; a finer-grained
//! glue pins the VM (a loaded vCPU does) before dropping the table lock, as
//! pKVM does with its VM page refcount.

use core::fmt;
use core::mem::offset_of;

use crate::abi::{self, ret};
use crate::addr::{Ipa, Pfn};
use crate::exits::{self, PendingExit, RunRequest};
use crate::guest_abi::MmioGuardSet;
use crate::hal::{Hal, PageAllocator};
use crate::mem_protect::{GuestMem, MemProtect, MemProtectError, VmHandle};
use crate::stage2::Vmid;
use crate::vgic::GicCpuState;

/// Number of VM slots.
pub const MAX_VMS: usize = 8;
/// Number of vCPUs a VM can have.
pub const MAX_VCPUS: usize = 8;
/// The handle of slot 0 (pKVM's `HANDLE_OFFSET`): 0 is never a handle.
pub const HANDLE_OFFSET: u16 = 0x1000;

/// `KVM_VM_TYPE_ARM_IPA_SIZE_MASK`: the IPA-size field of a KVM VM type.
pub const KVM_VM_TYPE_ARM_IPA_SIZE_MASK: u64 = 0xff;
/// `vcpu_feature` bits `VCPU_CREATE` accepts.
pub const VCPU_FEATURES_SUPPORTED: u64 = abi::vcpu_feature::POWER_OFF | abi::vcpu_feature::PSCI_0_2;

/// PSTATE a vCPU starts with (KVM's `VCPU_RESET_PSTATE_EL1`): EL1h with
/// D, A, I and F masked.
pub const RESET_PSTATE: u64 = 0x3c5;
/// SCTLR_EL1 a vCPU starts with (KVM's reset value): MMU and caches off,
/// little-endian, RES1 bits set.
pub const RESET_SCTLR_EL1: u64 = 0x00c5_0078;
/// The affinity fields of MPIDR_EL1 (Aff3..Aff0): `MPIDR_HWID_BITMASK`.
pub const MPIDR_HWID_MASK: u64 = 0xff_00ff_ffff;
/// MPIDR_EL1 bit 31, RES1: set in the VMPIDR_EL2 value.
const MPIDR_RES1: u64 = 1 << 31;
/// PSTATE.M\[4:0\] (bit 4 set would be AArch32, which guests cannot use).
const PSTATE_MODE_MASK: u64 = 0x1f;
const PSTATE_MODE_EL0T: u64 = 0b0_0000;
const PSTATE_MODE_EL1T: u64 = 0b0_0100;
const PSTATE_MODE_EL1H: u64 = 0b0_0101;

/// What kind of VM: who may see its memory and registers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum VmKind {
    /// KVM type 0: the host lends the memory and keeps access to it.
    Normal,
    /// `KVM_VM_TYPE_ARM_PROTECTED`: the memory is donated and private.
    Protected,
}

impl VmKind {
    /// The kind for a `KVM_CREATE_VM` type.
    ///
    /// # Errors
    /// [`VmError::IpaSizeUnsupported`] if the IPA-size field (bits 7..0) is
    /// set; [`VmError::UnknownTypeBits`] for any other bit but 31.
    pub const fn from_kvm_type(kvm_type: u64) -> Result<Self, VmError> {
        if kvm_type == abi::vm_type::NORMAL {
            Ok(Self::Normal)
        } else if kvm_type == abi::vm_type::PROTECTED {
            Ok(Self::Protected)
        } else if kvm_type & KVM_VM_TYPE_ARM_IPA_SIZE_MASK != 0 {
            Err(VmError::IpaSizeUnsupported { kvm_type })
        } else {
            Err(VmError::UnknownTypeBits { kvm_type })
        }
    }

    /// The `KVM_CREATE_VM` type of this kind.
    pub const fn kvm_type(self) -> u64 {
        match self {
            Self::Normal => abi::vm_type::NORMAL,
            Self::Protected => abi::vm_type::PROTECTED,
        }
    }

    /// The ABI code ([`abi::vm_kind`]).
    pub const fn abi_code(self) -> u64 {
        match self {
            Self::Normal => abi::vm_kind::NORMAL,
            Self::Protected => abi::vm_kind::PROTECTED,
        }
    }

    /// Whether this is a protected VM.
    pub const fn is_protected(self) -> bool {
        matches!(self, Self::Protected)
    }
}

/// The EL1 system registers the hyp switches per vCPU (saved and restored in
/// field order, 8 bytes each, from [`ctx_offset::SYS`]).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct El1SysRegs {
    /// `SCTLR_EL1`.
    pub sctlr_el1: u64,
    /// `TTBR0_EL1`.
    pub ttbr0_el1: u64,
    /// `TTBR1_EL1`.
    pub ttbr1_el1: u64,
    /// `TCR_EL1`.
    pub tcr_el1: u64,
    /// `MAIR_EL1`.
    pub mair_el1: u64,
    /// `AMAIR_EL1`.
    pub amair_el1: u64,
    /// `VBAR_EL1`.
    pub vbar_el1: u64,
    /// `CONTEXTIDR_EL1`.
    pub contextidr_el1: u64,
    /// `TPIDR_EL0`.
    pub tpidr_el0: u64,
    /// `TPIDRRO_EL0`.
    pub tpidrro_el0: u64,
    /// `TPIDR_EL1`.
    pub tpidr_el1: u64,
    /// `SP_EL0`.
    pub sp_el0: u64,
    /// `ESR_EL1`.
    pub esr_el1: u64,
    /// `FAR_EL1`.
    pub far_el1: u64,
    /// `AFSR0_EL1`.
    pub afsr0_el1: u64,
    /// `AFSR1_EL1`.
    pub afsr1_el1: u64,
    /// `PAR_EL1`.
    pub par_el1: u64,
    /// `CNTKCTL_EL1`.
    pub cntkctl_el1: u64,
    /// `CPACR_EL1`.
    pub cpacr_el1: u64,
    /// `CSSELR_EL1`.
    pub csselr_el1: u64,
    /// `MDSCR_EL1`.
    pub mdscr_el1: u64,
}

/// The guest's virtual timer (the EL1 virtual timer the guest owns; the
/// host uses the physical one). `CNTVOFF_EL2` is the glue's, per VM.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct VtimerState {
    /// `CNTV_CTL_EL0`.
    pub cntv_ctl_el0: u64,
    /// `CNTV_CVAL_EL0`.
    pub cntv_cval_el0: u64,
}

/// FP/SIMD registers: `V0..V31`, `FPSR`, `FPCR` (16-byte aligned for
/// `stp q`/`ldp q`).
#[repr(C, align(16))]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct FpState {
    /// `V0..V31`.
    pub vregs: [u128; 32],
    /// `FPSR` (zero-extended).
    pub fpsr: u64,
    /// `FPCR` (zero-extended).
    pub fpcr: u64,
}

/// Everything the hyp saves and restores for a vCPU. The layout is ABI
/// between this crate and the world-switch assembly:
///
/// | offset | size | field              |
/// |--------|------|--------------------|
/// | 0      | 248  | `x[0..31]`         |
/// | 248    | 8    | `pc` (ELR_EL2)     |
/// | 256    | 8    | `pstate` (SPSR_EL2)|
/// | 264    | 8    | `sp_el1`           |
/// | 272    | 8    | `elr_el1`          |
/// | 280    | 8    | `spsr_el1`         |
/// | 288    | 168  | `sys` ([`El1SysRegs`]) |
/// | 456    | 16   | `timer` ([`VtimerState`]) |
/// | 472    | 8    | padding            |
/// | 480    | 512  | `fp.vregs`         |
/// | 992    | 8    | `fp.fpsr`          |
/// | 1000   | 8    | `fp.fpcr`          |
/// | 1008   | 152  | `gic` ([`GicCpuState`], not touched by assembly) |
///
/// Size 1168 (with padding), alignment 16 (see [`ctx_offset`]).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct VcpuContext {
    /// General registers `X0..X30`.
    pub x: [u64; 31],
    /// Where the vCPU resumes.
    pub pc: u64,
    /// PSTATE it resumes with.
    pub pstate: u64,
    /// `SP_EL1`.
    pub sp_el1: u64,
    /// `ELR_EL1`.
    pub elr_el1: u64,
    /// `SPSR_EL1`.
    pub spsr_el1: u64,
    /// EL1 system registers.
    pub sys: El1SysRegs,
    /// Virtual timer.
    pub timer: VtimerState,
    /// FP/SIMD.
    pub fp: FpState,
    /// The GIC's virtual CPU interface.
    pub gic: GicCpuState,
}

/// Byte offsets into [`VcpuContext`] for the world-switch assembly.
pub mod ctx_offset {
    /// `x[0]`; `Xn` is at `X + 8 * n`.
    pub const X: usize = 0;
    /// `pc`.
    pub const PC: usize = 248;
    /// `pstate`.
    pub const PSTATE: usize = 256;
    /// `sp_el1`.
    pub const SP_EL1: usize = 264;
    /// `elr_el1`.
    pub const ELR_EL1: usize = 272;
    /// `spsr_el1`.
    pub const SPSR_EL1: usize = 280;
    /// First EL1 system register (`sctlr_el1`); the rest follow in
    /// [`super::El1SysRegs`] field order.
    pub const SYS: usize = 288;
    /// Number of registers in [`super::El1SysRegs`].
    pub const SYS_COUNT: usize = 21;
    /// `timer.cntv_ctl_el0` (then `cntv_cval_el0`).
    pub const TIMER: usize = 456;
    /// `fp.vregs[0]`; `Vn` is at `FP + 16 * n`.
    pub const FP: usize = 480;
    /// `fp.fpsr`.
    pub const FPSR: usize = 992;
    /// `fp.fpcr`.
    pub const FPCR: usize = 1000;
    /// Size of the context.
    pub const SIZE: usize = 1168;
}

const _: () = {
    assert!(offset_of!(VcpuContext, x) == ctx_offset::X);
    assert!(offset_of!(VcpuContext, pc) == ctx_offset::PC);
    assert!(offset_of!(VcpuContext, pstate) == ctx_offset::PSTATE);
    assert!(offset_of!(VcpuContext, sp_el1) == ctx_offset::SP_EL1);
    assert!(offset_of!(VcpuContext, elr_el1) == ctx_offset::ELR_EL1);
    assert!(offset_of!(VcpuContext, spsr_el1) == ctx_offset::SPSR_EL1);
    assert!(offset_of!(VcpuContext, sys) == ctx_offset::SYS);
    assert!(offset_of!(VcpuContext, sys.sctlr_el1) == ctx_offset::SYS);
    assert!(offset_of!(VcpuContext, sys.mdscr_el1) == ctx_offset::SYS + 8 * 20);
    assert!(size_of::<El1SysRegs>() == 8 * ctx_offset::SYS_COUNT);
    assert!(offset_of!(VcpuContext, timer) == ctx_offset::TIMER);
    assert!(offset_of!(VcpuContext, timer.cntv_cval_el0) == ctx_offset::TIMER + 8);
    assert!(offset_of!(VcpuContext, fp) == ctx_offset::FP);
    assert!(offset_of!(VcpuContext, fp.vregs) == ctx_offset::FP);
    assert!(offset_of!(VcpuContext, fp.fpsr) == ctx_offset::FPSR);
    assert!(offset_of!(VcpuContext, fp.fpcr) == ctx_offset::FPCR);
    assert!(size_of::<VcpuContext>() == ctx_offset::SIZE);
    assert!(align_of::<VcpuContext>() == 16);
    assert!(ctx_offset::FP.is_multiple_of(16));
};

impl VcpuContext {
    /// Every register zero.
    pub const ZERO: VcpuContext = VcpuContext {
        x: [0; 31],
        pc: 0,
        pstate: 0,
        sp_el1: 0,
        elr_el1: 0,
        spsr_el1: 0,
        sys: El1SysRegs {
            sctlr_el1: 0,
            ttbr0_el1: 0,
            ttbr1_el1: 0,
            tcr_el1: 0,
            mair_el1: 0,
            amair_el1: 0,
            vbar_el1: 0,
            contextidr_el1: 0,
            tpidr_el0: 0,
            tpidrro_el0: 0,
            tpidr_el1: 0,
            sp_el0: 0,
            esr_el1: 0,
            far_el1: 0,
            afsr0_el1: 0,
            afsr1_el1: 0,
            par_el1: 0,
            cntkctl_el1: 0,
            cpacr_el1: 0,
            csselr_el1: 0,
            mdscr_el1: 0,
        },
        timer: VtimerState {
            cntv_ctl_el0: 0,
            cntv_cval_el0: 0,
        },
        fp: FpState {
            vregs: [0; 32],
            fpsr: 0,
            fpcr: 0,
        },
        gic: GicCpuState::RESET,
    };

    /// The state of a vCPU after reset (KVM's `kvm_reset_vcpu`): every
    /// register zero but PSTATE ([`RESET_PSTATE`]) and SCTLR_EL1
    /// ([`RESET_SCTLR_EL1`]). Linux's boot protocol wants exactly this, plus
    /// `PC` = entry and `X0` = DTB (or the PSCI context ID).
    pub const RESET: VcpuContext = {
        let mut c = Self::ZERO;
        c.pstate = RESET_PSTATE;
        c.sys.sctlr_el1 = RESET_SCTLR_EL1;
        c
    };
}

/// A vCPU's PSCI power state.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum PowerState {
    /// Off: not runnable until another vCPU's CPU_ON.
    Off,
    /// Turned on by CPU_ON, not yet run: the next load resets it to here.
    OnPending {
        /// Entry point (the new PC).
        entry: u64,
        /// Context ID (the new X0).
        context_id: u64,
    },
    /// On.
    On,
}

/// A register the host names in `VCPU_SET_REG` / `VCPU_GET_REG`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum VcpuReg {
    /// `Xn`, n in 0..=30.
    X(u8),
    /// `SP_EL0`.
    SpEl0,
    /// The PC.
    Pc,
    /// PSTATE.
    Pstate,
    /// `SP_EL1`.
    SpEl1,
    /// `ELR_EL1`.
    ElrEl1,
    /// `SPSR_EL1`.
    SpsrEl1,
}

impl VcpuReg {
    /// The register for an ABI number ([`abi::vcpu_reg`]).
    pub fn from_abi(n: u64) -> Option<Self> {
        use abi::vcpu_reg as r;
        Some(match n {
            r::X0..=r::X30 => Self::X(u8::try_from(n).ok()?),
            r::SP_EL0 => Self::SpEl0,
            r::PC => Self::Pc,
            r::PSTATE => Self::Pstate,
            r::SP_EL1 => Self::SpEl1,
            r::ELR_EL1 => Self::ElrEl1,
            r::SPSR_EL1 => Self::SpsrEl1,
            _ => return None,
        })
    }

    /// The ABI number.
    pub fn abi(self) -> u64 {
        use abi::vcpu_reg as r;
        match self {
            Self::X(n) => r::X0 + u64::from(n),
            Self::SpEl0 => r::SP_EL0,
            Self::Pc => r::PC,
            Self::Pstate => r::PSTATE,
            Self::SpEl1 => r::SP_EL1,
            Self::ElrEl1 => r::ELR_EL1,
            Self::SpsrEl1 => r::SPSR_EL1,
        }
    }

    fn slot(self, ctx: &mut VcpuContext) -> Option<&mut u64> {
        Some(match self {
            Self::X(n) => ctx.x.get_mut(usize::from(n))?,
            Self::SpEl0 => &mut ctx.sys.sp_el0,
            Self::Pc => &mut ctx.pc,
            Self::Pstate => &mut ctx.pstate,
            Self::SpEl1 => &mut ctx.sp_el1,
            Self::ElrEl1 => &mut ctx.elr_el1,
            Self::SpsrEl1 => &mut ctx.spsr_el1,
        })
    }

    fn read(self, ctx: &VcpuContext) -> Option<u64> {
        Some(match self {
            Self::X(n) => *ctx.x.get(usize::from(n))?,
            Self::SpEl0 => ctx.sys.sp_el0,
            Self::Pc => ctx.pc,
            Self::Pstate => ctx.pstate,
            Self::SpEl1 => ctx.sp_el1,
            Self::ElrEl1 => ctx.elr_el1,
            Self::SpsrEl1 => ctx.spsr_el1,
        })
    }
}

/// Why the host may not access a vCPU register. Nothing changed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VcpuError {
    /// Protected VM: only `PC` and `X0`, only before the first run; never a
    /// read.
    Denied {
        /// The register.
        reg: VcpuReg,
    },
    /// No such register number.
    UnknownReg {
        /// The number the host passed.
        reg: u64,
    },
    /// A value the register cannot hold (a PSTATE mode other than EL0t,
    /// EL1t or EL1h, as KVM's `set_core_reg` checks).
    BadValue {
        /// The register.
        reg: VcpuReg,
        /// The value.
        value: u64,
    },
    /// The vCPU is loaded (running).
    Running,
}

impl VcpuError {
    /// The host ABI result registers `x0..x3`.
    pub fn to_regs(&self) -> [u64; 4] {
        match *self {
            Self::Denied { reg } => [ret::DENIED, abi::err::REG_DENIED, reg.abi(), 0],
            Self::UnknownReg { reg } => [ret::INVALID_PARAMETER, abi::err::UNKNOWN_REG, reg, 0],
            Self::BadValue { reg, value } => [
                ret::INVALID_PARAMETER,
                abi::err::BAD_REG_VALUE,
                reg.abi(),
                value,
            ],
            Self::Running => [ret::DENIED, abi::err::VCPU_BUSY, 0, 0],
        }
    }
}

impl fmt::Display for VcpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Denied { reg } => write!(f, "the host may not access {reg:?} of this vCPU"),
            Self::UnknownReg { reg } => write!(f, "no vCPU register {reg}"),
            Self::BadValue { reg, value } => write!(f, "{reg:?} cannot hold {value:#x}"),
            Self::Running => write!(f, "the vCPU is running"),
        }
    }
}

/// The MPIDR affinity of vCPU `index` (KVM's `reset_mpidr`: Aff0 = bits
/// 3..0 of the index, Aff1 = bits 11..4, Aff2 = bits 19..12).
pub fn mpidr_for_index(index: usize) -> u64 {
    let id = u64::try_from(index).unwrap_or(0);
    (id & 0xf) | ((id >> 4) & 0xff) << 8 | ((id >> 12) & 0xff) << 16
}

/// One vCPU: its registers and PSCI state.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Vcpu {
    pub(crate) ctx: VcpuContext,
    power: PowerState,
    mpidr: u64,
    loaded: bool,
    has_run: bool,
    /// What the last exit left for the host to answer.
    pub(crate) pending: Option<PendingExit>,
    /// INTIDs waiting for a list register (bit n = INTID n): from the
    /// host's `VCPU_RUN` and other vCPUs' SGIs.
    pub(crate) irq_pending: u128,
}

impl Vcpu {
    fn new(index: usize, power_off: bool) -> Self {
        Self {
            ctx: VcpuContext::RESET,
            power: if power_off {
                PowerState::Off
            } else {
                PowerState::On
            },
            mpidr: mpidr_for_index(index),
            loaded: false,
            has_run: false,
            pending: None,
            irq_pending: 0,
        }
    }

    /// The registers (as last saved).
    pub fn context(&self) -> &VcpuContext {
        &self.ctx
    }

    /// The PSCI power state.
    pub fn power(&self) -> PowerState {
        self.power
    }

    /// The MPIDR affinity fields (what the guest's DT names the CPU by).
    pub fn mpidr(&self) -> u64 {
        self.mpidr
    }

    /// The `VMPIDR_EL2` value for this vCPU.
    pub fn vmpidr_el2(&self) -> u64 {
        self.mpidr | MPIDR_RES1
    }

    /// Whether the vCPU is loaded (between load and put).
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// Whether the vCPU has been loaded at least once.
    pub fn has_run(&self) -> bool {
        self.has_run
    }

    /// What the last exit left for the host to answer, if anything.
    pub fn pending(&self) -> Option<PendingExit> {
        self.pending
    }

    pub(crate) fn set_power(&mut self, power: PowerState) {
        self.power = power;
    }

    /// Sets a register on the host's behalf. Normal VMs: any register, any
    /// time the vCPU is not running. Protected VMs: `PC` and `X0` only, and
    /// only before the vCPU first ran; after that, nothing.
    ///
    /// # Errors
    /// [`VcpuError::Running`], [`VcpuError::Denied`],
    /// [`VcpuError::BadValue`] (PSTATE mode). Nothing changes on error.
    pub fn set_reg_from_host(
        &mut self,
        kind: VmKind,
        reg: VcpuReg,
        value: u64,
    ) -> Result<(), VcpuError> {
        if self.loaded {
            return Err(VcpuError::Running);
        }
        if kind.is_protected() && (self.has_run || !matches!(reg, VcpuReg::Pc | VcpuReg::X(0))) {
            return Err(VcpuError::Denied { reg });
        }
        if reg == VcpuReg::Pstate
            && !matches!(
                value & PSTATE_MODE_MASK,
                PSTATE_MODE_EL0T | PSTATE_MODE_EL1T | PSTATE_MODE_EL1H
            )
        {
            return Err(VcpuError::BadValue { reg, value });
        }
        let slot = reg
            .slot(&mut self.ctx)
            .ok_or(VcpuError::UnknownReg { reg: reg.abi() })?;
        *slot = value;
        Ok(())
    }

    /// Reads a register for the host: normal VMs only, while the vCPU is not
    /// running.
    ///
    /// # Errors
    /// [`VcpuError::Running`], [`VcpuError::Denied`] (protected VM).
    pub fn get_reg_for_host(&self, kind: VmKind, reg: VcpuReg) -> Result<u64, VcpuError> {
        if self.loaded {
            return Err(VcpuError::Running);
        }
        if kind.is_protected() {
            return Err(VcpuError::Denied { reg });
        }
        reg.read(&self.ctx)
            .ok_or(VcpuError::UnknownReg { reg: reg.abi() })
    }

    /// Resets the vCPU for a PSCI CPU_ON (KVM's `kvm_reset_vcpu` with a
    /// reset state): everything to [`VcpuContext::RESET`], then `PC` =
    /// `entry`, `X0` = `context_id`; the vCPU is `On`.
    fn reset_for_cpu_on(&mut self, entry: u64, context_id: u64) {
        self.ctx = VcpuContext::RESET;
        self.ctx.pc = entry;
        self.ctx.x[0] = context_id;
        self.power = PowerState::On;
        self.pending = None;
    }
}

/// The life of a VM slot.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum VmState {
    /// Unused.
    Free,
    /// Taken by a `create_vm` in progress; not visible yet.
    Reserved,
    /// Published: lookups find it, vCPUs run.
    Live,
    /// Teardown started: lookups find it, nothing runs, nothing is added.
    Dying,
}

/// A VM: its stage-2, its vCPUs, and the MMIO pages it guarded.
#[derive(Debug)]
pub struct Vm {
    handle: VmHandle,
    state: VmState,
    kind: VmKind,
    /// `Some` exactly when the VM is live or dying.
    pub(crate) mem: Option<GuestMem>,
    pub(crate) mmio_guard: MmioGuardSet,
    pub(crate) vcpus: [Option<Vcpu>; MAX_VCPUS],
    pub(crate) stats: VmStats,
}

/// What a VM's vCPUs cost in transitions (`VM_STATS`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct VmStats {
    /// Traps from the guest into the hyp.
    pub guest_traps: u64,
    /// Those that ended `VCPU_RUN`: exits to the host.
    pub host_exits: u64,
}

impl Vm {
    const FREE: Vm = Vm {
        handle: VmHandle::new(0),
        state: VmState::Free,
        kind: VmKind::Normal,
        mem: None,
        mmio_guard: MmioGuardSet::new(),
        vcpus: [const { None }; MAX_VCPUS],
        stats: VmStats {
            guest_traps: 0,
            host_exits: 0,
        },
    };

    /// The VM's handle.
    pub fn handle(&self) -> VmHandle {
        self.handle
    }

    /// The VM's kind.
    pub fn kind(&self) -> VmKind {
        self.kind
    }

    /// Where the slot is in its life.
    pub fn state(&self) -> VmState {
        self.state
    }

    /// The guest's memory (its stage-2): `None` only for a slot that is not
    /// live or dying, which lookups never return.
    pub fn guest_mem(&self) -> Option<&GuestMem> {
        self.mem.as_ref()
    }

    /// `VTTBR_EL2` for this VM's vCPUs.
    pub fn vttbr_el2(&self) -> Option<u64> {
        self.mem.as_ref().map(|g| g.stage2().vttbr_el2())
    }

    /// The MMIO pages the guest guarded.
    pub fn mmio_guard(&self) -> &MmioGuardSet {
        &self.mmio_guard
    }

    /// vCPU `index`, if created.
    pub fn vcpu(&self, index: usize) -> Option<&Vcpu> {
        self.vcpus.get(index)?.as_ref()
    }

    /// Number of vCPUs created.
    pub fn vcpu_count(&self) -> usize {
        self.vcpus.iter().flatten().count()
    }

    pub(crate) fn vcpu_mut(&mut self, index: usize) -> Option<&mut Vcpu> {
        self.vcpus.get_mut(index)?.as_mut()
    }

    /// vCPU `sender` wrote `ICC_SGI1R_EL1`: the SGI becomes pending on each
    /// target (the sender included, if it names itself). Returns the mask
    /// of other vCPUs' indices the host must wake ([`abi::exit::KICK`]).
    pub(crate) fn send_sgi(&mut self, sender: usize, req: &crate::vgic::SgiRequest) -> u64 {
        let Some(from) = self.vcpu(sender).map(Vcpu::mpidr) else {
            return 0;
        };
        let mut kick = 0u64;
        for (index, vcpu) in self.vcpus.iter_mut().enumerate() {
            let Some(vcpu) = vcpu else { continue };
            if req.targets(vcpu.mpidr, from) {
                vcpu.irq_pending |= 1 << req.intid;
                if index != sender && index < 64 {
                    kick |= 1 << index;
                }
            }
        }
        kick
    }

    /// Whether `ipa` is guest memory (mapped in the guest's stage-2).
    pub fn is_guest_memory<H: PageAllocator + ?Sized>(&self, ipa: Ipa, hal: &H) -> bool {
        self.mem
            .as_ref()
            .is_some_and(|g| g.stage2().walk(ipa, hal).is_some())
    }

    /// Whether a guest access to `ipa` may exit to the host as MMIO
    /// ([`crate::guest_abi::mmio_exit_allowed`]).
    pub fn mmio_exit_allowed(&self, ipa: Ipa) -> bool {
        crate::guest_abi::mmio_exit_allowed(self.kind, &self.mmio_guard, ipa)
    }
}

/// Why a VM operation was refused. Nothing changed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VmError {
    /// A `KVM_CREATE_VM` type with an IPA-size field: the hyp has one fixed
    /// IPA size (39 bits) for every VM.
    IpaSizeUnsupported {
        /// The type.
        kvm_type: u64,
    },
    /// A `KVM_CREATE_VM` type with bits other than
    /// `KVM_VM_TYPE_ARM_PROTECTED`.
    UnknownTypeBits {
        /// The type.
        kvm_type: u64,
    },
    /// Every slot is in use.
    TableFull,
    /// No live or dying VM has this handle.
    NoSuchVm {
        /// The handle as passed.
        handle: u64,
    },
    /// No vCPU with this index.
    NoSuchVcpu {
        /// The index as passed.
        vcpu: u64,
    },
    /// The vCPU exists already.
    VcpuExists {
        /// The index.
        vcpu: u64,
    },
    /// vCPU feature bits other than `POWER_OFF` and `PSCI_0_2`.
    BadVcpuFeatures {
        /// The features as passed.
        features: u64,
    },
    /// The VM is being torn down.
    Dying {
        /// Its handle.
        handle: u64,
    },
    /// Finalize before start of teardown.
    NotDying {
        /// The handle.
        handle: u64,
    },
    /// A vCPU is loaded (running).
    Busy {
        /// Its index.
        vcpu: u64,
    },
    /// The vCPU is powered off.
    VcpuOff {
        /// Its index.
        vcpu: u64,
    },
    /// Not for this kind of VM (donating to a normal VM, lending to a
    /// protected one).
    WrongKind {
        /// The VM's kind.
        kind: VmKind,
    },
    /// The guest made this IPA an MMIO page: no memory may go there.
    IpaGuarded {
        /// The IPA.
        ipa: Ipa,
    },
    /// `VCPU_RUN`'s flags or data do not fit what the vCPU left pending
    /// (completing an MMIO access that is not pending, data for a write).
    NoPendingMmio {
        /// The vCPU.
        vcpu: u64,
    },
    /// A register access was refused.
    Vcpu(VcpuError),
    /// A page transition was refused.
    Mem(MemProtectError),
    /// A live VM without a stage-2, or one that kept a page after reclaim
    /// (a bug).
    Internal,
}

impl VmError {
    /// The host ABI result registers `x0..x3`: status, detail
    /// ([`abi::err`]), what it is about, extra detail.
    pub fn to_regs(&self) -> [u64; 4] {
        use abi::err;
        match *self {
            Self::IpaSizeUnsupported { kvm_type } | Self::UnknownTypeBits { kvm_type } => {
                [ret::INVALID_PARAMETER, err::BAD_VM_TYPE, kvm_type, 0]
            }
            Self::TableFull => [ret::NO_MEMORY, err::VM_TABLE_FULL, 0, 0],
            Self::NoSuchVm { handle } => [ret::INVALID_PARAMETER, err::NO_SUCH_VM, handle, 0],
            Self::NoSuchVcpu { vcpu } => [ret::INVALID_PARAMETER, err::NO_SUCH_VCPU, vcpu, 0],
            Self::VcpuExists { vcpu } => [ret::DENIED, err::VCPU_EXISTS, vcpu, 0],
            Self::BadVcpuFeatures { features } => {
                [ret::INVALID_PARAMETER, err::BAD_VCPU_FEATURES, features, 0]
            }
            Self::Dying { handle } => [ret::DENIED, err::VM_DYING, handle, 0],
            Self::NotDying { handle } => [ret::DENIED, err::VM_NOT_DYING, handle, 0],
            Self::Busy { vcpu } => [ret::DENIED, err::VCPU_BUSY, vcpu, 0],
            Self::VcpuOff { vcpu } => [ret::DENIED, err::VCPU_OFF, vcpu, 0],
            Self::WrongKind { kind } => [ret::DENIED, err::WRONG_VM_KIND, kind.abi_code(), 0],
            Self::IpaGuarded { ipa } => [ret::DENIED, err::IPA_GUARDED, ipa.raw(), 0],
            Self::NoPendingMmio { vcpu } => [ret::INVALID_PARAMETER, err::NO_PENDING_MMIO, vcpu, 0],
            Self::Vcpu(e) => e.to_regs(),
            Self::Mem(e) => e.to_regs(),
            Self::Internal => [ret::DENIED, err::INTERNAL, 0, 0],
        }
    }
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IpaSizeUnsupported { kvm_type } => write!(
                f,
                "VM type {kvm_type:#x} asks for an IPA size; the hypervisor has one (39 bits)"
            ),
            Self::UnknownTypeBits { kvm_type } => write!(
                f,
                "VM type {kvm_type:#x} is neither 0 nor KVM_VM_TYPE_ARM_PROTECTED"
            ),
            Self::TableFull => write!(f, "all {MAX_VMS} VM slots are in use"),
            Self::NoSuchVm { handle } => write!(f, "no VM with handle {handle:#x}"),
            Self::NoSuchVcpu { vcpu } => write!(f, "no vCPU {vcpu}"),
            Self::VcpuExists { vcpu } => write!(f, "vCPU {vcpu} exists already"),
            Self::BadVcpuFeatures { features } => {
                write!(f, "unsupported vCPU features {features:#x}")
            }
            Self::Dying { handle } => write!(f, "VM {handle:#x} is being torn down"),
            Self::NotDying { handle } => write!(f, "VM {handle:#x} teardown has not started"),
            Self::Busy { vcpu } => write!(f, "vCPU {vcpu} is running"),
            Self::VcpuOff { vcpu } => write!(f, "vCPU {vcpu} is powered off"),
            Self::WrongKind { kind } => write!(f, "not allowed for a {kind:?} VM"),
            Self::IpaGuarded { ipa } => write!(f, "{ipa} is a guarded MMIO page"),
            Self::NoPendingMmio { vcpu } => write!(
                f,
                "vCPU {vcpu}: no MMIO read pending to complete with these flags and data"
            ),
            Self::Vcpu(e) => write!(f, "{e}"),
            Self::Mem(e) => write!(f, "{e}"),
            Self::Internal => write!(f, "internal VM table error"),
        }
    }
}

impl From<MemProtectError> for VmError {
    fn from(e: MemProtectError) -> Self {
        Self::Mem(e)
    }
}

impl From<VcpuError> for VmError {
    fn from(e: VcpuError) -> Self {
        Self::Vcpu(e)
    }
}

/// Which VM states a call accepts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Liveness {
    /// Live only (teardown not started).
    Live,
    /// Live or dying (teardown started, not finished).
    LiveOrDying,
}

/// The VM table: [`MAX_VMS`] slots, in hyp memory.
#[derive(Debug)]
pub struct VmTable {
    vms: [Vm; MAX_VMS],
}

impl Default for VmTable {
    fn default() -> Self {
        Self::new()
    }
}

/// The handle of slot `index`.
fn handle_of(index: usize) -> Option<VmHandle> {
    let index = u16::try_from(index).ok()?;
    Some(VmHandle::new(HANDLE_OFFSET.checked_add(index)?))
}

impl VmTable {
    /// An empty table (`const`, so it can be a `static` in the hyp image).
    pub const fn new() -> Self {
        Self {
            vms: [const { Vm::FREE }; MAX_VMS],
        }
    }

    /// The slot index of a handle, if it names a live or dying VM.
    fn index_of(&self, handle: u64) -> Option<usize> {
        let index = usize::try_from(handle.checked_sub(u64::from(HANDLE_OFFSET))?).ok()?;
        let vm = self.vms.get(index)?;
        matches!(vm.state, VmState::Live | VmState::Dying).then_some(index)
    }

    /// A live or dying VM's transition counts (`VM_STATS`).
    ///
    /// # Errors
    /// `NoSuchVm`.
    pub fn stats(&self, handle: VmHandle) -> Result<VmStats, VmError> {
        self.get(handle)
            .map(|vm| vm.stats)
            .ok_or(VmError::NoSuchVm {
                handle: u64::from(handle.raw()),
            })
    }

    /// Turns a hostile `u64` into the handle of a live or dying VM.
    ///
    /// # Errors
    /// [`VmError::NoSuchVm`].
    pub fn resolve(&self, handle: u64) -> Result<VmHandle, VmError> {
        let index = self.index_of(handle).ok_or(VmError::NoSuchVm { handle })?;
        self.vms
            .get(index)
            .map(|vm| vm.handle)
            .ok_or(VmError::NoSuchVm { handle })
    }

    /// The live or dying VM with this handle.
    pub fn get(&self, handle: VmHandle) -> Option<&Vm> {
        let index = self.index_of(u64::from(handle.raw()))?;
        self.vms.get(index)
    }

    /// The live or dying VM with this handle, mutably (the arch glue uses it
    /// to hand a VM to [`crate::guest_abi::handle_guest_hvc`]).
    pub fn get_mut(&mut self, handle: VmHandle) -> Option<&mut Vm> {
        let index = self.index_of(u64::from(handle.raw()))?;
        self.vms.get_mut(index)
    }

    /// Every live or dying VM.
    pub fn iter(&self) -> impl Iterator<Item = &Vm> {
        self.vms
            .iter()
            .filter(|vm| matches!(vm.state, VmState::Live | VmState::Dying))
    }

    fn vm_mut(&mut self, handle: VmHandle) -> Result<&mut Vm, VmError> {
        let raw = u64::from(handle.raw());
        self.get_mut(handle)
            .ok_or(VmError::NoSuchVm { handle: raw })
    }

    /// A VM that is live (not dying).
    /// VM `handle` if it is of kind `want` (the VM calls that exist for
    /// one kind only); `Dying` first when `liveness` asks for a live VM.
    fn vm_of_kind(
        &mut self,
        handle: VmHandle,
        want: VmKind,
        liveness: Liveness,
    ) -> Result<&mut Vm, VmError> {
        let vm = match liveness {
            Liveness::Live => self.live_vm_mut(handle)?,
            Liveness::LiveOrDying => self.vm_mut(handle)?,
        };
        if vm.kind != want {
            return Err(VmError::WrongKind { kind: vm.kind });
        }
        Ok(vm)
    }

    fn live_vm_mut(&mut self, handle: VmHandle) -> Result<&mut Vm, VmError> {
        let vm = self.vm_mut(handle)?;
        if vm.state != VmState::Live {
            return Err(VmError::Dying {
                handle: u64::from(handle.raw()),
            });
        }
        Ok(vm)
    }

    /// Creates a VM with an empty stage-2 (`VM_CREATE`). The slot is
    /// reserved first and published last; on failure it is free again and
    /// nothing was allocated.
    ///
    /// # Errors
    /// [`VmError::TableFull`]; [`VmError::Mem`] with `NoMemory` if no page
    /// is left for the stage-2 root.
    pub fn create_vm<H: PageAllocator + ?Sized>(
        &mut self,
        kind: VmKind,
        hal: &mut H,
    ) -> Result<VmHandle, VmError> {
        let index = self
            .vms
            .iter()
            .position(|vm| vm.state == VmState::Free)
            .ok_or(VmError::TableFull)?;
        let (Some(handle), Ok(vmid)) = (handle_of(index), u8::try_from(index + 1)) else {
            return Err(VmError::TableFull);
        };
        let vm = self.vms.get_mut(index).ok_or(VmError::TableFull)?;
        // Reserve: no other creation can take the slot, lookups skip it.
        vm.state = VmState::Reserved;
        let mem = match GuestMem::new(handle, Vmid(vmid), hal) {
            Ok(mem) => mem,
            Err(e) => {
                vm.state = VmState::Free;
                return Err(e.into());
            }
        };
        // Fill in place (the vCPU array is large; no temporary copy).
        vm.handle = handle;
        vm.kind = kind;
        vm.mem = Some(mem);
        vm.mmio_guard.clear();
        vm.stats = VmStats::default();
        for vcpu in &mut vm.vcpus {
            *vcpu = None;
        }
        // Publish last.
        vm.state = VmState::Live;
        Ok(handle)
    }

    /// Creates vCPU `index` (`VCPU_CREATE`) and returns its MPIDR affinity.
    /// `features` are `kvm_vcpu_init.features[0]` bits: `POWER_OFF` makes it
    /// start off (a secondary waiting for CPU_ON); `PSCI_0_2` is accepted and
    /// always true.
    ///
    /// # Errors
    /// `NoSuchVm`, `Dying`, `NoSuchVcpu` (index out of range),
    /// `VcpuExists`, `BadVcpuFeatures`.
    pub fn create_vcpu(
        &mut self,
        handle: VmHandle,
        index: u64,
        features: u64,
    ) -> Result<u64, VmError> {
        let vm = self.live_vm_mut(handle)?;
        let i = usize::try_from(index)
            .ok()
            .filter(|&i| i < MAX_VCPUS)
            .ok_or(VmError::NoSuchVcpu { vcpu: index })?;
        if features & !VCPU_FEATURES_SUPPORTED != 0 {
            return Err(VmError::BadVcpuFeatures { features });
        }
        let slot = vm
            .vcpus
            .get_mut(i)
            .ok_or(VmError::NoSuchVcpu { vcpu: index })?;
        if slot.is_some() {
            return Err(VmError::VcpuExists { vcpu: index });
        }
        let vcpu = slot.insert(Vcpu::new(i, features & abi::vcpu_feature::POWER_OFF != 0));
        Ok(vcpu.mpidr)
    }

    /// Donates `count` host pages from `pfn` to a protected VM at `ipa..`
    /// (`VM_DONATE`, [`MemProtect::host_donate_guest`]). Not into pages the
    /// guest guarded as MMIO.
    ///
    /// # Errors
    /// `NoSuchVm`, `Dying`, `WrongKind` (normal VM), `IpaGuarded`, and the
    /// transition's errors.
    pub fn donate<H: Hal + ?Sized>(
        &mut self,
        mem: &mut MemProtect<'_>,
        handle: VmHandle,
        pfn: Pfn,
        ipa: Ipa,
        count: u64,
        hal: &mut H,
    ) -> Result<(), VmError> {
        let vm = self.vm_of_kind(handle, VmKind::Protected, Liveness::Live)?;
        if vm.mmio_guard.overlaps(ipa, count) {
            return Err(VmError::IpaGuarded { ipa });
        }
        let guest = vm.mem.as_mut().ok_or(VmError::Internal)?;
        Ok(mem.host_donate_guest(pfn, count, guest, ipa, hal)?)
    }

    /// Takes the page at `ipa` back from a live protected VM
    /// (`VM_RECLAIM_PAGE`, [`MemProtect::reclaim_guest_page`]): unmapped
    /// from the guest, zeroed, the host's again. Returns its frame.
    ///
    /// # Errors
    /// `NoSuchVm`, `Dying`, `WrongKind` (normal VM: use `VM_UNMAP_SHARED`),
    /// and the transition's errors (`IpaNotMapped` when nothing is there).
    pub fn reclaim_page<H: Hal + ?Sized>(
        &mut self,
        mem: &mut MemProtect<'_>,
        handle: VmHandle,
        ipa: Ipa,
        hal: &mut H,
    ) -> Result<Pfn, VmError> {
        let vm = self.vm_of_kind(handle, VmKind::Protected, Liveness::Live)?;
        let guest = vm.mem.as_mut().ok_or(VmError::Internal)?;
        let pfn = guest.stage2().walk(ipa, hal).map(|leaf| leaf.pa.pfn());
        mem.reclaim_guest_page(guest, ipa, hal)?;
        pfn.ok_or(VmError::Internal)
    }

    /// Lends `count` host pages from `pfn` to a normal VM at `ipa..`
    /// (`VM_MAP_SHARED`, [`MemProtect::host_share_guest`]).
    ///
    /// # Errors
    /// `NoSuchVm`, `Dying`, `WrongKind` (protected VM), and the
    /// transition's errors.
    pub fn map_shared<H: Hal + ?Sized>(
        &mut self,
        mem: &mut MemProtect<'_>,
        handle: VmHandle,
        pfn: Pfn,
        ipa: Ipa,
        count: u64,
        hal: &mut H,
    ) -> Result<(), VmError> {
        let vm = self.vm_of_kind(handle, VmKind::Normal, Liveness::Live)?;
        let guest = vm.mem.as_mut().ok_or(VmError::Internal)?;
        Ok(mem.host_share_guest(pfn, count, guest, ipa, hal)?)
    }

    /// Takes back the page lent to a normal VM at `ipa` (`VM_UNMAP_SHARED`,
    /// [`MemProtect::host_unshare_guest`]); allowed while the VM is dying.
    ///
    /// # Errors
    /// `NoSuchVm`, `WrongKind` (protected VM), and the transition's errors.
    pub fn unmap_shared<H: Hal + ?Sized>(
        &mut self,
        mem: &mut MemProtect<'_>,
        handle: VmHandle,
        ipa: Ipa,
        hal: &mut H,
    ) -> Result<(), VmError> {
        let vm = self.vm_of_kind(handle, VmKind::Normal, Liveness::LiveOrDying)?;
        let guest = vm.mem.as_mut().ok_or(VmError::Internal)?;
        Ok(mem.host_unshare_guest(guest, ipa, hal)?)
    }

    fn vcpu_of(vm: &mut Vm, index: u64) -> Result<(usize, &mut Vcpu), VmError> {
        let i = usize::try_from(index).map_err(|_| VmError::NoSuchVcpu { vcpu: index })?;
        let vcpu = vm.vcpu_mut(i).ok_or(VmError::NoSuchVcpu { vcpu: index })?;
        Ok((i, vcpu))
    }

    /// `VCPU_SET_REG`: see [`Vcpu::set_reg_from_host`].
    ///
    /// # Errors
    /// `NoSuchVm`, `Dying`, `NoSuchVcpu`, `Busy`, and [`VcpuError`]s.
    pub fn set_vcpu_reg(
        &mut self,
        handle: VmHandle,
        index: u64,
        reg: u64,
        value: u64,
    ) -> Result<(), VmError> {
        let vm = self.live_vm_mut(handle)?;
        let kind = vm.kind;
        let (_, vcpu) = Self::vcpu_of(vm, index)?;
        if vcpu.loaded {
            return Err(VmError::Busy { vcpu: index });
        }
        let reg = VcpuReg::from_abi(reg).ok_or(VcpuError::UnknownReg { reg })?;
        Ok(vcpu.set_reg_from_host(kind, reg, value)?)
    }

    /// `VCPU_GET_REG`: see [`Vcpu::get_reg_for_host`].
    ///
    /// # Errors
    /// `NoSuchVm`, `NoSuchVcpu`, `Busy`, and [`VcpuError`]s.
    pub fn get_vcpu_reg(&self, handle: VmHandle, index: u64, reg: u64) -> Result<u64, VmError> {
        let raw = u64::from(handle.raw());
        let vm = self.get(handle).ok_or(VmError::NoSuchVm { handle: raw })?;
        let vcpu = usize::try_from(index)
            .ok()
            .and_then(|i| vm.vcpu(i))
            .ok_or(VmError::NoSuchVcpu { vcpu: index })?;
        if vcpu.loaded {
            return Err(VmError::Busy { vcpu: index });
        }
        let reg = VcpuReg::from_abi(reg).ok_or(VcpuError::UnknownReg { reg })?;
        Ok(vcpu.get_reg_for_host(vm.kind, reg)?)
    }

    /// Checks, changing nothing, that vCPU `index` could be loaded now
    /// (what `VCPU_RUN` validates before the glue runs it).
    ///
    /// # Errors
    /// As [`vcpu_load`](Self::vcpu_load).
    pub fn check_runnable(&self, handle: VmHandle, index: u64) -> Result<usize, VmError> {
        let raw = u64::from(handle.raw());
        let vm = self.get(handle).ok_or(VmError::NoSuchVm { handle: raw })?;
        if vm.state != VmState::Live {
            return Err(VmError::Dying { handle: raw });
        }
        let i = usize::try_from(index).map_err(|_| VmError::NoSuchVcpu { vcpu: index })?;
        let vcpu = vm.vcpu(i).ok_or(VmError::NoSuchVcpu { vcpu: index })?;
        if vcpu.loaded {
            return Err(VmError::Busy { vcpu: index });
        }
        if vcpu.power == PowerState::Off {
            return Err(VmError::VcpuOff { vcpu: index });
        }
        Ok(i)
    }

    /// [`check_runnable`](Self::check_runnable), and that `run` fits what
    /// the vCPU left pending ([`RunRequest::fits`]): what `VCPU_RUN`
    /// validates before the glue runs anything.
    ///
    /// # Errors
    /// As `check_runnable`, and `NoPendingMmio`.
    pub fn check_run(
        &self,
        handle: VmHandle,
        index: u64,
        run: RunRequest,
    ) -> Result<usize, VmError> {
        let i = self.check_runnable(handle, index)?;
        let pending = self
            .get(handle)
            .and_then(|vm| vm.vcpu(i))
            .and_then(|v| v.pending);
        if !run.fits(pending.as_ref()) {
            return Err(VmError::NoPendingMmio { vcpu: index });
        }
        Ok(i)
    }

    /// Settles what vCPU `index`'s last exit left pending, as `run` says
    /// ([`exits::settle_pending`]), before [`vcpu_load`](Self::vcpu_load).
    ///
    /// # Errors
    /// As [`check_run`](Self::check_run); nothing changes on error.
    pub fn settle_pending<H: PageAllocator + ?Sized>(
        &mut self,
        handle: VmHandle,
        index: u64,
        run: RunRequest,
        hal: &H,
    ) -> Result<(), VmError> {
        self.check_run(handle, index, run)?;
        let vm = self.live_vm_mut(handle)?;
        let pending = Self::vcpu_of(vm, index)?.1.pending;
        let still_unmapped = match pending {
            Some(PendingExit::MemFault { ipa, .. } | PendingExit::CallFault { ipa }) => {
                !vm.is_guest_memory(ipa, hal)
            }
            _ => false,
        };
        let (_, vcpu) = Self::vcpu_of(vm, index)?;
        let pending = vcpu.pending.take();
        exits::settle_pending(&mut vcpu.ctx, pending, run, still_unmapped);
        vcpu.irq_pending |= run.pending & crate::vgic::ALL_INTIDS;
        Ok(())
    }

    /// Just before loaded vCPU `index` enters the guest, at counter value
    /// `now`, with `nr_lrs` list registers: its timer's interrupt and what
    /// is pending go into its list registers ([`crate::vgic::prepare_entry`]).
    pub fn prepare_entry(&mut self, handle: VmHandle, index: usize, now: u64, nr_lrs: usize) {
        if let Some(vcpu) = self.get_mut(handle).and_then(|vm| vm.vcpu_mut(index)) {
            if vcpu.loaded {
                crate::vgic::prepare_entry(
                    &mut vcpu.ctx.gic,
                    &mut vcpu.ctx.timer,
                    &mut vcpu.irq_pending,
                    now,
                    nr_lrs,
                );
            }
        }
    }

    /// Loads vCPU `index` to run it: a pending CPU_ON resets it to the
    /// guest's entry point and context ID first. Returns the context the
    /// world switch restores from and saves to until
    /// [`vcpu_put`](Self::vcpu_put).
    ///
    /// # Errors
    /// `NoSuchVm`, `Dying` (teardown started), `NoSuchVcpu`, `Busy`
    /// (loaded already), `VcpuOff`.
    pub fn vcpu_load(&mut self, handle: VmHandle, index: u64) -> Result<&mut VcpuContext, VmError> {
        self.check_runnable(handle, index)?;
        let vm = self.live_vm_mut(handle)?;
        let (_, vcpu) = Self::vcpu_of(vm, index)?;
        if let PowerState::OnPending { entry, context_id } = vcpu.power {
            vcpu.reset_for_cpu_on(entry, context_id);
        }
        vcpu.loaded = true;
        vcpu.has_run = true;
        Ok(&mut vcpu.ctx)
    }

    /// The context of vCPU `index` while it is loaded (between
    /// [`vcpu_load`](Self::vcpu_load) and [`vcpu_put`](Self::vcpu_put)).
    pub fn loaded_context(&mut self, handle: VmHandle, index: usize) -> Option<&mut VcpuContext> {
        let vcpu = self.get_mut(handle)?.vcpu_mut(index)?;
        vcpu.loaded.then_some(&mut vcpu.ctx)
    }

    /// Ends a [`vcpu_load`](Self::vcpu_load): the vCPU stopped running and
    /// its context is saved.
    ///
    /// # Errors
    /// `NoSuchVm`, `NoSuchVcpu`.
    pub fn vcpu_put(&mut self, handle: VmHandle, index: u64) -> Result<(), VmError> {
        let vm = self.vm_mut(handle)?;
        let (_, vcpu) = Self::vcpu_of(vm, index)?;
        vcpu.loaded = false;
        Ok(())
    }

    /// First phase of teardown (`VM_TEARDOWN`): from now on no vCPU is
    /// loaded, no vCPU is created and no memory is added.
    ///
    /// # Errors
    /// `NoSuchVm`, `Dying` (started already), `Busy` (a vCPU is loaded:
    /// stop it first).
    pub fn start_teardown(&mut self, handle: VmHandle) -> Result<(), VmError> {
        let vm = self.live_vm_mut(handle)?;
        if let Some(i) = vm
            .vcpus
            .iter()
            .position(|v| v.as_ref().is_some_and(|v| v.loaded))
        {
            return Err(VmError::Busy {
                vcpu: u64::try_from(i).unwrap_or(u64::MAX),
            });
        }
        vm.state = VmState::Dying;
        Ok(())
    }

    /// Second phase of teardown (`VM_RECLAIM`): every page the guest maps
    /// goes back to the host (donated ones zeroed, lent ones as they are),
    /// the stage-2 tables are freed and the slot is released. Returns the
    /// number of pages reclaimed.
    ///
    /// If a page cannot move (the host stage-2 needs a table page and the
    /// pool is empty), the pages moved so far stay moved, the VM stays
    /// dying, and a later call continues.
    ///
    /// # Errors
    /// `NoSuchVm`, `NotDying`, and reclaim errors.
    pub fn finalize_teardown<H: Hal + ?Sized>(
        &mut self,
        mem: &mut MemProtect<'_>,
        handle: VmHandle,
        hal: &mut H,
    ) -> Result<u64, VmError> {
        let vm = self.vm_mut(handle)?;
        if vm.state != VmState::Dying {
            return Err(VmError::NotDying {
                handle: u64::from(handle.raw()),
            });
        }
        let guest = vm.mem.as_mut().ok_or(VmError::Internal)?;
        let pages = mem.reclaim_guest(guest, hal)?;
        let guest = vm.mem.take().ok_or(VmError::Internal)?;
        if let Err(guest) = guest.destroy(hal) {
            vm.mem = Some(guest);
            return Err(VmError::Internal);
        }
        // The table is hyp memory the host never gets back; clear the
        // registers anyway before the slot is reused.
        for vcpu in vm.vcpus.iter_mut() {
            if let Some(v) = vcpu {
                v.ctx = VcpuContext::ZERO;
            }
            *vcpu = None;
        }
        vm.mmio_guard.clear();
        vm.kind = VmKind::Normal;
        vm.handle = VmHandle::new(0);
        vm.state = VmState::Free;
        Ok(pages)
    }
}

#[cfg(test)]
mod tests;
