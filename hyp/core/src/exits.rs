//! Guest exits: what a trap from a running guest means, and what happens
//! before the guest runs again.
//!
//! The arch glue runs a vCPU until it traps to EL2 and hands the trap to
//! [`handle_guest_exit`] as a [`GuestTrap`] (vector, `ESR_EL2`, `FAR_EL2`,
//! the faulting IPA). The answer is [`ExitAction::Resume`] (run the guest
//! again now) or [`ExitAction::Exit`] (return from `VCPU_RUN` with these
//! `x0..x3`). Everything a guest can make happen is decided here, in
//! portable code with unit tests; the glue only moves registers.
//!
//! | trap | what happens |
//! |------|--------------|
//! | IRQ, FIQ (the host's interrupts) | exit `INTERRUPTED` |
//! | HVC, SMC (AArch64) | the pKVM guest ABI ([`crate::guest_abi`]); an SMC is first stepped over |
//! | WFI, PSCI CPU_SUSPEND | step over; resume if an interrupt is pending or the timer fires, else exit `HALT` with the timer's deadline; WFE: step over, resume |
//! | debug, OS-lock, PMU and `CNTP_*` registers (trapped by MDCR_EL2 / CNTHCTL_EL2) | read as zero, writes ignored; step over |
//! | `MSR ICC_SGI1R_EL1` | the SGI becomes pending on its targets; exit `KICK` with the other targets, else resume (`ICC_ASGI1R_EL1`, `ICC_SGI0R_EL1`: ignored) |
//! | stage-2 abort on guest memory | resume (the mapping appeared meanwhile: retry) |
//! | stage-2 data abort the VM may show the host as MMIO, syndrome valid | exit `MMIO`; the access stays pending until the next `VCPU_RUN` |
//! | any other stage-2 abort | exit `MEM_FAULT`; if the host runs the vCPU again without mapping the IPA, a synchronous external abort is injected (data or prefetch, as KVM does for an access outside every memslot) |
//! | anything else (another trapped system register, AArch32 HVC, unknown) | an undefined-instruction exception is injected; resume |
//!
//! Injected exceptions follow the architecture's exception entry to EL1
//! (KVM's `inject_abt64` / `inject_undef64`): `ESR_EL1`, `FAR_EL1` for
//! aborts, `ELR_EL1` = the faulting PC, `SPSR_EL1` = its PSTATE, PSTATE =
//! EL1h with D, A, I, F masked, PC = `VBAR_EL1` + the vector for where the
//! guest was (current EL with SP0 or SPx, or lower EL).

use crate::abi::{self, exit, mem_fault, ret, run_flag};
use crate::addr::Ipa;
use crate::guest_abi::{self, classify_guest_abort, AbortAction, GuestAbort, GuestOutcome};
use crate::hal::Hal;
use crate::mem_protect::{MemProtect, VmHandle};
use crate::vgic::{self, SgiRequest};
use crate::vm::{Vcpu, VcpuContext, VmTable, RESET_PSTATE};

/// Exception vector offsets as `guest_enter` reports them: lower EL,
/// AArch64, synchronous.
pub const VECTOR_LOWER_SYNC: u64 = 8;
/// Lower EL, AArch64, IRQ.
pub const VECTOR_LOWER_IRQ: u64 = 9;
/// Lower EL, AArch64, FIQ.
pub const VECTOR_LOWER_FIQ: u64 = 10;

/// ESR exception classes used here.
pub mod ec {
    /// Unknown reason (what an undefined instruction reports).
    pub const UNKNOWN: u64 = 0x00;
    /// WFI or WFE.
    pub const WFX: u64 = 0x01;
    /// HVC from AArch64.
    pub const HVC64: u64 = 0x16;
    /// SMC from AArch64.
    pub const SMC64: u64 = 0x17;
    /// Instruction abort from a lower EL.
    pub const IABT_LOW: u64 = 0x20;
    /// Instruction abort from the current EL.
    pub const IABT_CUR: u64 = 0x21;
    /// Data abort from a lower EL.
    pub const DABT_LOW: u64 = 0x24;
    /// Data abort from the current EL.
    pub const DABT_CUR: u64 = 0x25;
    /// Trapped `MSR`/`MRS` (AArch64 system register access).
    pub const SYSREG: u64 = 0x18;
}

/// A trapped system register access's ISS without `Rt` and direction:
/// Op0, Op2, Op1, CRn, CRm in their ISS positions.
const ISS_SYSREG_MASK: u64 = 0x3f_fc1e;
const ISS_SYSREG_READ: u64 = 1;
const ISS_SYSREG_RT_SHIFT: u32 = 5;

/// The ISS encoding (masked with [`ISS_SYSREG_MASK`]) of a system register.
const fn sysreg_iss(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    op0 << 20 | op2 << 17 | op1 << 14 | crn << 10 | crm << 1
}

/// What a guest's trapped access to a system register other than the SGI
/// registers gets.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SysregTrap {
    /// Reads as zero, writes ignored: the debug and OS-lock registers
    /// (Op0 2), the PMU (`PM*`) and the EL1 physical timer (`CNTP_*`),
    /// which stay the host's. Linux touches some at boot (`MDSCR_EL1` in
    /// `__cpu_setup`, `OSLAR_EL1`, `PMUSERENR_EL0`) and must not die for
    /// it; pKVM gives protected guests the same answer for debug.
    RazWi,
    /// Anything else: an undefined-instruction exception.
    Undef,
}

/// Classifies a trapped system register by its ISS (Op0, Op1, CRn, CRm).
pub fn classify_sysreg(iss: u64) -> SysregTrap {
    let op0 = iss >> 20 & 3;
    let op1 = iss >> 14 & 7;
    let crn = iss >> 10 & 0xf;
    let crm = iss >> 1 & 0xf;
    let pmu = op0 == 3 && crn == 9 && (12..=14).contains(&crm);
    let pmu_event = op0 == 3 && op1 == 3 && crn == 14 && crm >= 8;
    let cntp = op0 == 3 && op1 == 3 && crn == 14 && crm == 2;
    if op0 == 2 || pmu || pmu_event || cntp {
        SysregTrap::RazWi
    } else {
        SysregTrap::Undef
    }
}

/// `ICC_SGI1R_EL1`: a group 1 SGI.
const ICC_SGI1R_EL1: u64 = sysreg_iss(3, 0, 12, 11, 5);
/// `ICC_ASGI1R_EL1`: a group 1 SGI for the other security state.
const ICC_ASGI1R_EL1: u64 = sysreg_iss(3, 0, 12, 11, 6);
/// `ICC_SGI0R_EL1`: a group 0 SGI.
const ICC_SGI0R_EL1: u64 = sysreg_iss(3, 0, 12, 11, 7);

const ESR_EC_SHIFT: u32 = 26;
const ESR_IL: u64 = 1 << 25;
const ISS_ISV: u64 = 1 << 24;
const ISS_SAS_SHIFT: u32 = 22;
const ISS_SSE: u64 = 1 << 21;
const ISS_SRT_SHIFT: u32 = 16;
const ISS_SF: u64 = 1 << 15;
const ISS_S1PTW: u64 = 1 << 7;
const ISS_WNR: u64 = 1 << 6;
const ISS_WFX_TI_WFE: u64 = 1;
/// DFSC/IFSC: synchronous external abort, not on a table walk.
pub const FSC_EXTABT: u64 = 0x10;

const PSTATE_MODE_MASK: u64 = 0x1f;
const PSTATE_MODE_EL1T: u64 = 0b0_0100;
const PSTATE_MODE_EL1H: u64 = 0b0_0101;
/// Vector table offsets (`VBAR_EL1` + ...) of the synchronous entries.
const VBAR_CURRENT_SP0: u64 = 0x000;
const VBAR_CURRENT_SPX: u64 = 0x200;
const VBAR_LOWER_A64: u64 = 0x400;

/// A trap from a running guest, as the glue read it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GuestTrap {
    /// The EL2 vector it came through ([`VECTOR_LOWER_SYNC`], ...).
    pub vector: u64,
    /// `ESR_EL2`.
    pub esr: u64,
    /// `FAR_EL2` (the guest's virtual address, for aborts).
    pub far: u64,
    /// The faulting IPA (`HPFAR_EL2` and `FAR_EL2`'s page offset), for
    /// stage-2 aborts.
    pub ipa: u64,
    /// The virtual counter (`CNTVCT_EL0`) when the guest stopped.
    pub now: u64,
}

/// A guest data access the host emulates: decoded from a valid data-abort
/// syndrome.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct MmioAccess {
    /// The IPA accessed.
    pub ipa: Ipa,
    /// Access size in bytes: 1, 2, 4 or 8.
    pub size: u8,
    /// A store.
    pub write: bool,
    /// The transfer register (31 = XZR).
    pub srt: u8,
    /// A load sign-extends (LDRS*).
    pub sign_extend: bool,
    /// The register is 64-bit (else the result is 32-bit, upper half zero).
    pub sixty_four: bool,
    /// The instruction is 32-bit (`ESR.IL`): the PC moves by 4, else by 2.
    pub il32: bool,
}

impl MmioAccess {
    /// Decodes a data-abort syndrome whose ISS is valid (`ISV`); `None`
    /// without it (the host cannot emulate what it cannot decode).
    pub fn decode(esr: u64, ipa: Ipa) -> Option<Self> {
        if esr & ISS_ISV == 0 {
            return None;
        }
        let sas = (esr >> ISS_SAS_SHIFT) & 0b11;
        Some(Self {
            ipa,
            size: 1 << sas,
            write: esr & ISS_WNR != 0,
            srt: u8::try_from((esr >> ISS_SRT_SHIFT) & 0x1f).unwrap_or(31),
            sign_extend: esr & ISS_SSE != 0,
            sixty_four: esr & ISS_SF != 0,
            il32: esr & ESR_IL != 0,
        })
    }

    fn mask(&self) -> u64 {
        match self.size {
            8 => u64::MAX,
            n => (1u64 << (8 * u32::from(n))) - 1,
        }
    }

    /// The value a store writes: the register's low `size` bytes (XZR is 0).
    pub fn write_value(&self, ctx: &VcpuContext) -> u64 {
        let reg = ctx.x.get(usize::from(self.srt)).copied().unwrap_or(0);
        reg & self.mask()
    }

    /// What a load of `data` leaves in the register: `data` cut to the
    /// access size, sign-extended if asked, cut to 32 bits for a W
    /// register (Arm ARM `AArch64.DataAbort` syndrome semantics; KVM's
    /// `kvm_handle_mmio_return`).
    pub fn read_result(&self, data: u64) -> u64 {
        let mut value = data & self.mask();
        if self.sign_extend && self.size < 8 {
            let bits = 8 * u32::from(self.size);
            let shift = 64 - bits;
            value = ((value << shift).cast_signed() >> shift).cast_unsigned();
        }
        if !self.sixty_four {
            value &= u64::from(u32::MAX);
        }
        value
    }

    /// `VCPU_RUN`'s `x0..x3` for this exit.
    pub fn exit_regs(&self, ctx: &VcpuContext) -> [u64; 4] {
        let mut code = exit::MMIO | u64::from(self.size) << exit::MMIO_SIZE_SHIFT;
        let mut data = 0;
        if self.write {
            code |= exit::MMIO_WRITE;
            data = self.write_value(ctx);
        }
        [ret::SUCCESS, code, self.ipa.raw(), data]
    }
}

/// What a vCPU left for the host to answer: kept in the hyp with the vCPU
/// until its next `VCPU_RUN`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum PendingExit {
    /// An MMIO access the host emulates.
    Mmio(MmioAccess),
    /// An access to an IPA with no memory behind it.
    MemFault {
        /// The IPA.
        ipa: Ipa,
        /// `FAR_EL2`: the guest VA, for `FAR_EL1` if an abort is injected.
        far: u64,
        /// An instruction fetch.
        fetch: bool,
        /// The instruction is 32-bit.
        il32: bool,
    },
    /// A guest call (MEM_SHARE) that needs the page at `ipa`: the vCPU's
    /// PC is back on its HVC/SMC, to run it again once the page is there.
    CallFault {
        /// The IPA.
        ipa: Ipa,
    },
}

/// What the host said with `VCPU_RUN`'s `flags` and `data`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct RunRequest {
    /// [`run_flag`] bits (checked by the decoder: only known bits).
    pub flags: u64,
    /// The value an MMIO read returns.
    pub data: u64,
    /// Virtual INTIDs (bit n = INTID n) the host makes pending on the vCPU
    /// before it runs.
    pub pending: u128,
}

impl RunRequest {
    /// Whether the host completes a pending MMIO access.
    pub fn mmio_complete(&self) -> bool {
        self.flags & run_flag::MMIO_COMPLETE != 0
    }

    /// Whether this request fits what is pending: completing needs a
    /// pending MMIO access, and `data` only means something for a read.
    pub fn fits(&self, pending: Option<&PendingExit>) -> bool {
        match pending {
            Some(PendingExit::Mmio(access)) if self.mmio_complete() => {
                !access.write || self.data == 0
            }
            _ => !self.mmio_complete() && self.data == 0,
        }
    }
}

/// Settles what the last exit left pending, before the vCPU runs again
/// (`run` has been checked with [`RunRequest::fits`]):
/// - an MMIO access the host completed: a load gets `run.data` in its
///   register; both move the PC past the instruction;
/// - an MMIO access not completed: runs again (the host mapped memory
///   there, or wants the access retried);
/// - a memory fault: if `still_unmapped`, the guest gets a synchronous
///   external abort; else the access runs again.
pub fn settle_pending(
    ctx: &mut VcpuContext,
    pending: Option<PendingExit>,
    run: RunRequest,
    still_unmapped: bool,
) {
    match pending {
        Some(PendingExit::Mmio(access)) if run.mmio_complete() => {
            if !access.write {
                if let Some(reg) = ctx.x.get_mut(usize::from(access.srt)) {
                    *reg = access.read_result(run.data);
                }
            }
            step_over(ctx, access.il32);
        }
        Some(PendingExit::MemFault {
            far, fetch, il32, ..
        }) if still_unmapped => inject_external_abort(ctx, fetch, far, il32),
        // The host gave no memory there: the call fails, as it would have.
        Some(PendingExit::CallFault { .. }) if still_unmapped => {
            ctx.x[0] = ret::INVALID_PARAMETER;
            step_over(ctx, true);
        }
        _ => {}
    }
}

fn step_over(ctx: &mut VcpuContext, il32: bool) {
    ctx.pc = ctx.pc.wrapping_add(if il32 { 4 } else { 2 });
}

/// Takes a synchronous exception to the guest's EL1 with syndrome `esr`
/// (`esr`'s EC is for an exception from a lower EL; it becomes the
/// current-EL class if the guest was at EL1, as the architecture reports).
fn enter_el1(ctx: &mut VcpuContext, esr_lower: u64, far: Option<u64>, current_ec: Option<u64>) {
    let mode = ctx.pstate & PSTATE_MODE_MASK;
    let (offset, esr) = match mode {
        PSTATE_MODE_EL1T | PSTATE_MODE_EL1H => {
            let offset = if mode == PSTATE_MODE_EL1T {
                VBAR_CURRENT_SP0
            } else {
                VBAR_CURRENT_SPX
            };
            let esr = match current_ec {
                Some(ec) => (esr_lower & !(0x3f << ESR_EC_SHIFT)) | ec << ESR_EC_SHIFT,
                None => esr_lower,
            };
            (offset, esr)
        }
        _ => (VBAR_LOWER_A64, esr_lower),
    };
    ctx.sys.esr_el1 = esr;
    if let Some(far) = far {
        ctx.sys.far_el1 = far;
    }
    ctx.elr_el1 = ctx.pc;
    ctx.spsr_el1 = ctx.pstate;
    ctx.pstate = RESET_PSTATE;
    ctx.pc = ctx.sys.vbar_el1.wrapping_add(offset);
}

/// Injects a synchronous external abort: a data abort, or a prefetch abort
/// if `fetch`, at guest VA `far`.
pub fn inject_external_abort(ctx: &mut VcpuContext, fetch: bool, far: u64, il32: bool) {
    let (low, cur) = if fetch {
        (ec::IABT_LOW, ec::IABT_CUR)
    } else {
        (ec::DABT_LOW, ec::DABT_CUR)
    };
    let il = if il32 { ESR_IL } else { 0 };
    enter_el1(
        ctx,
        low << ESR_EC_SHIFT | il | FSC_EXTABT,
        Some(far),
        Some(cur),
    );
}

/// Injects an undefined-instruction exception (EC 0, unknown reason).
pub fn inject_undef(ctx: &mut VcpuContext, il32: bool) {
    let il = if il32 { ESR_IL } else { 0 };
    enter_el1(ctx, ec::UNKNOWN << ESR_EC_SHIFT | il, None, None);
}

/// A vCPU waiting for an interrupt (WFI, CPU_SUSPEND): if one is already
/// pending for it, or its timer fires, it runs on; otherwise it exits
/// `HALT` with its timer's deadline for the host to sleep until.
fn halt_or_resume(vcpu: &Vcpu, now: u64) -> ExitAction {
    let ctx = &vcpu.ctx;
    if vgic::should_wake(&ctx.gic, &ctx.timer, vcpu.irq_pending, now) {
        ExitAction::Resume
    } else {
        let deadline = vgic::timer_deadline(&ctx.timer);
        ExitAction::Exit([ret::SUCCESS, exit::HALT, deadline, 0])
    }
}

/// What the glue does after a trap.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ExitAction {
    /// Run the guest again.
    Resume,
    /// Return from `VCPU_RUN` with these `x0..x3`.
    Exit([u64; 4]),
}

const INTERNAL: ExitAction = ExitAction::Exit([ret::INVALID_PARAMETER, abi::err::INTERNAL, 0, 0]);

/// Handles a trap from vCPU `index` of `handle`, which is loaded (the glue
/// has stopped it and saved its context into the table), and counts it
/// (`VM_STATS`).
pub fn handle_guest_exit<H: Hal + ?Sized>(
    vms: &mut VmTable,
    handle: VmHandle,
    index: usize,
    trap: GuestTrap,
    mem: &mut MemProtect<'_>,
    hal: &mut H,
) -> ExitAction {
    let action = decide_guest_exit(vms, handle, index, trap, mem, hal);
    if let Some(vm) = vms.get_mut(handle) {
        let stats = &mut vm.stats;
        stats.guest_traps = stats.guest_traps.wrapping_add(1);
        if let ExitAction::Exit(_) = action {
            stats.host_exits = stats.host_exits.wrapping_add(1);
        }
    }
    action
}

fn decide_guest_exit<H: Hal + ?Sized>(
    vms: &mut VmTable,
    handle: VmHandle,
    index: usize,
    trap: GuestTrap,
    mem: &mut MemProtect<'_>,
    hal: &mut H,
) -> ExitAction {
    match trap.vector {
        VECTOR_LOWER_SYNC => {}
        VECTOR_LOWER_IRQ | VECTOR_LOWER_FIQ => {
            return ExitAction::Exit([ret::SUCCESS, exit::INTERRUPTED, 0, 0])
        }
        other => {
            return ExitAction::Exit([ret::INVALID_PARAMETER, abi::err::INTERNAL, other, trap.esr])
        }
    }
    let Some(vm) = vms.get_mut(handle) else {
        return INTERNAL;
    };
    let il32 = trap.esr & ESR_IL != 0;
    let class = trap.esr >> ESR_EC_SHIFT & 0x3f;
    match class {
        ec::HVC64 | ec::SMC64 => {
            let Some(vcpu) = vm.vcpu_mut(index) else {
                return INTERNAL;
            };
            if class == ec::SMC64 {
                // A trapped SMC returns to the SMC itself.
                step_over(&mut vcpu.ctx, true);
            }
            let mut regs = [0u64; 8];
            regs.copy_from_slice(&vcpu.ctx.x[..8]);
            let outcome = guest_abi::handle_guest_hvc(&regs, index, mem, vm, hal);
            let Some(vcpu) = vm.vcpu_mut(index) else {
                return INTERNAL;
            };
            if let GuestOutcome::FaultIn { ipa } = outcome {
                // Back onto the HVC (or the SMC stepped over above).
                vcpu.ctx.pc = vcpu.ctx.pc.wrapping_sub(4);
                vcpu.pending = Some(PendingExit::CallFault { ipa });
                return ExitAction::Exit([
                    ret::SUCCESS,
                    exit::MEM_FAULT,
                    ipa.raw(),
                    mem_fault::WRITE,
                ]);
            }
            vcpu.ctx.x[..4].copy_from_slice(&outcome.regs());
            match outcome {
                GuestOutcome::Return(_) => ExitAction::Resume,
                GuestOutcome::Halt(_) => halt_or_resume(vcpu, trap.now),
                GuestOutcome::ExitToHost { exit, .. } => {
                    let [code, a, b] = exit.to_regs();
                    ExitAction::Exit([ret::SUCCESS, code, a, b])
                }
                GuestOutcome::FaultIn { .. } => INTERNAL,
            }
        }
        ec::WFX => {
            let Some(vcpu) = vm.vcpu_mut(index) else {
                return INTERNAL;
            };
            step_over(&mut vcpu.ctx, il32);
            if trap.esr & ISS_WFX_TI_WFE != 0 {
                ExitAction::Resume
            } else {
                halt_or_resume(vcpu, trap.now)
            }
        }
        ec::SYSREG => {
            let iss = trap.esr & ISS_SYSREG_MASK;
            let read = trap.esr & ISS_SYSREG_READ != 0;
            let rt = (trap.esr >> ISS_SYSREG_RT_SHIFT & 0x1f) as usize;
            let sgi = matches!(iss, ICC_SGI1R_EL1 | ICC_ASGI1R_EL1 | ICC_SGI0R_EL1);
            let Some(vcpu) = vm.vcpu_mut(index) else {
                return INTERNAL;
            };
            if !sgi {
                match classify_sysreg(iss) {
                    SysregTrap::RazWi => {
                        if read && rt < 31 {
                            vcpu.ctx.x[rt] = 0;
                        }
                        step_over(&mut vcpu.ctx, il32);
                    }
                    SysregTrap::Undef => inject_undef(&mut vcpu.ctx, il32),
                }
                return ExitAction::Resume;
            }
            if read {
                inject_undef(&mut vcpu.ctx, il32);
                return ExitAction::Resume;
            }
            // Rt = 31 is XZR.
            let value = vcpu.ctx.x.get(rt).copied().unwrap_or(0);
            step_over(&mut vcpu.ctx, il32);
            // Guests have no group 0 and one security state: only group 1
            // SGIs are delivered; the other two registers ignore writes.
            if iss != ICC_SGI1R_EL1 {
                return ExitAction::Resume;
            }
            match vm.send_sgi(index, &SgiRequest::decode(value)) {
                0 => ExitAction::Resume,
                kick => ExitAction::Exit([ret::SUCCESS, exit::KICK, kick, 0]),
            }
        }
        ec::DABT_LOW | ec::IABT_LOW => {
            let ipa = Ipa::new(trap.ipa);
            let fetch = class == ec::IABT_LOW;
            let abort = GuestAbort {
                ipa,
                fetch,
                s1ptw: trap.esr & ISS_S1PTW != 0,
                isv: !fetch && trap.esr & ISS_ISV != 0,
            };
            let mapped = vm.is_guest_memory(ipa, hal);
            let action = classify_guest_abort(vm.kind(), vm.mmio_guard(), &abort, mapped);
            let Some(vcpu) = vm.vcpu_mut(index) else {
                return INTERNAL;
            };
            match action {
                AbortAction::Retry => ExitAction::Resume,
                AbortAction::Mmio => match MmioAccess::decode(trap.esr, ipa) {
                    Some(access) => {
                        vcpu.pending = Some(PendingExit::Mmio(access));
                        ExitAction::Exit(access.exit_regs(&vcpu.ctx))
                    }
                    None => INTERNAL,
                },
                AbortAction::MemFault => {
                    vcpu.pending = Some(PendingExit::MemFault {
                        ipa,
                        far: trap.far,
                        fetch,
                        il32,
                    });
                    let mut flags = 0;
                    if fetch {
                        flags |= mem_fault::EXEC;
                    } else if trap.esr & ISS_WNR != 0 {
                        flags |= mem_fault::WRITE;
                    }
                    if abort.s1ptw {
                        flags |= mem_fault::S1PTW;
                    }
                    ExitAction::Exit([ret::SUCCESS, exit::MEM_FAULT, ipa.raw(), flags])
                }
            }
        }
        _ => {
            let Some(vcpu) = vm.vcpu_mut(index) else {
                return INTERNAL;
            };
            inject_undef(&mut vcpu.ctx, il32);
            ExitAction::Resume
        }
    }
}

#[cfg(test)]
mod tests;
