//! The guest's interrupts as the hyp runs them (docs/interrupts.md): the
//! GICv3 virtual CPU interface's list registers, the virtual timer's
//! interrupt, and SGIs a guest sends.
//!
//! The VMM emulates the distributor and redistributors; the hyp owns only
//! what a protected guest's privacy and timeliness need. The host hands it
//! INTIDs to make pending (`VCPU_RUN`'s `x5`, `x6`), other vCPUs' SGIs add
//! to the same set, and before each entry [`prepare_entry`] moves what fits
//! into free list registers. Nothing here touches hardware: the glue saves
//! and restores [`GicCpuState`] and the timer around each run.

use crate::abi::vgic::{LR_PRIORITY, NO_DEADLINE, NR_INTIDS, VTIMER_INTID};
use crate::vm::VtimerState;

/// List registers the hyp saves and restores (the architecture's maximum).
pub const MAX_LRS: usize = 16;

/// The virtual CPU interface's state while the vCPU is not running.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct GicCpuState {
    /// `ICH_LR<n>_EL2`; only the first `ICH_VTR_EL2.ListRegs + 1` are used.
    pub lr: [u64; MAX_LRS],
    /// `ICH_VMCR_EL2`: the guest's PMR, BPRs and group enables.
    pub vmcr: u64,
    /// `ICH_AP0R0_EL2`: active priorities, group 0.
    pub ap0r0: u64,
    /// `ICH_AP1R0_EL2`: active priorities, group 1.
    pub ap1r0: u64,
}

impl GicCpuState {
    /// A CPU interface after reset: no interrupt in flight, all disabled.
    pub const RESET: GicCpuState = GicCpuState {
        lr: [0; MAX_LRS],
        vmcr: 0,
        ap0r0: 0,
        ap1r0: 0,
    };
}

/// `ICH_LR<n>_EL2` fields.
pub mod lr {
    /// The virtual INTID.
    pub const VINTID_MASK: u64 = 0xffff_ffff;
    /// Priority, bits 55:48.
    pub const PRIORITY_SHIFT: u32 = 48;
    /// Group 1.
    pub const GROUP1: u64 = 1 << 60;
    /// The state field, bits 63:62.
    pub const STATE_SHIFT: u32 = 62;
    /// State: not in use.
    pub const INVALID: u64 = 0;
    /// State: pending.
    pub const PENDING: u64 = 1;
    /// State: active.
    pub const ACTIVE: u64 = 2;
    /// State: pending and active.
    pub const PENDING_ACTIVE: u64 = 3;
}

/// A list register holding `intid`, pending, group 1, at [`LR_PRIORITY`].
pub fn make_lr(intid: u32) -> u64 {
    lr::PENDING << lr::STATE_SHIFT
        | lr::GROUP1
        | u64::from(LR_PRIORITY) << lr::PRIORITY_SHIFT
        | u64::from(intid)
}

/// The state field of a list register.
pub fn lr_state(value: u64) -> u64 {
    value >> lr::STATE_SHIFT
}

/// The virtual INTID of a list register.
pub fn lr_intid(value: u64) -> u32 {
    (value & lr::VINTID_MASK) as u32
}

/// Moves pending INTIDs into `lrs` (the implemented list registers),
/// lowest INTID first. An INTID already in a list register merges there
/// (pending stays pending; active becomes pending and active); the rest go
/// to free registers; what does not fit stays in `pending`.
pub fn fill(lrs: &mut [u64], pending: &mut u128) {
    let mut left = *pending;
    while left != 0 {
        let intid = left.trailing_zeros();
        let bit = 1u128 << intid;
        left &= !bit;
        let held = lrs
            .iter_mut()
            .find(|v| lr_state(**v) != lr::INVALID && lr_intid(**v) == intid);
        if let Some(v) = held {
            if lr_state(*v) == lr::ACTIVE {
                *v |= lr::PENDING << lr::STATE_SHIFT;
            }
            *pending &= !bit;
            continue;
        }
        match lrs.iter_mut().find(|v| lr_state(**v) == lr::INVALID) {
            Some(free) => {
                *free = make_lr(intid);
                *pending &= !bit;
            }
            // No free register: the rest wait for the next entry.
            None => break,
        }
    }
}

/// Whether a list register holds a pending interrupt (what wakes a WFI).
pub fn any_pending(lrs: &[u64]) -> bool {
    lrs.iter()
        .any(|v| matches!(lr_state(*v), lr::PENDING | lr::PENDING_ACTIVE))
}

/// `CNTV_CTL_EL0` bits.
pub mod cntv_ctl {
    /// The timer is enabled.
    pub const ENABLE: u64 = 1 << 0;
    /// Its interrupt is masked.
    pub const IMASK: u64 = 1 << 1;
    /// Its condition is met (read-only in hardware).
    pub const ISTATUS: u64 = 1 << 2;
}

/// Whether the guest's timer asserts its interrupt at counter value `now`.
pub fn timer_fires(timer: &VtimerState, now: u64) -> bool {
    timer.cntv_ctl_el0 & (cntv_ctl::ENABLE | cntv_ctl::IMASK) == cntv_ctl::ENABLE
        && timer.cntv_cval_el0 <= now
}

/// When the guest's timer will assert its interrupt ([`NO_DEADLINE`] if
/// it is disabled or masked).
pub fn timer_deadline(timer: &VtimerState) -> u64 {
    if timer.cntv_ctl_el0 & (cntv_ctl::ENABLE | cntv_ctl::IMASK) == cntv_ctl::ENABLE {
        timer.cntv_cval_el0
    } else {
        NO_DEADLINE
    }
}

/// Before the vCPU runs, at counter value `now`, with `nr_lrs` list
/// registers: a firing timer makes [`VTIMER_INTID`] pending and is masked
/// for the guest, as a level interrupt its handler re-arms (Linux's does:
/// it masks the timer and programs the next event, which unmasks it), so
/// the physical timer interrupt does not fire again while the guest
/// handles it. Then the list registers are filled from `pending`.
pub fn prepare_entry(
    gic: &mut GicCpuState,
    timer: &mut VtimerState,
    pending: &mut u128,
    now: u64,
    nr_lrs: usize,
) {
    if timer_fires(timer, now) {
        timer.cntv_ctl_el0 |= cntv_ctl::IMASK;
        *pending |= 1 << VTIMER_INTID;
    }
    let n = nr_lrs.min(MAX_LRS);
    fill(&mut gic.lr[..n], pending);
}

/// Whether a vCPU that executed WFI should run on instead of halting: an
/// interrupt is pending in a list register, waiting for one, or its timer
/// fires at `now`.
pub fn should_wake(gic: &GicCpuState, timer: &VtimerState, pending: u128, now: u64) -> bool {
    pending != 0 || any_pending(&gic.lr) || timer_fires(timer, now)
}

/// `ICC_SGI1R_EL1` as an `MSR` writes it: the SGI's INTID and who gets it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SgiRequest {
    /// The SGI, 0..=15.
    pub intid: u32,
    /// Every vCPU but the sender (`IRM`).
    pub all_but_self: bool,
    /// Aff3.Aff2.Aff1 of the targets, in MPIDR layout (Aff0 clear).
    pub affinity: u64,
    /// Target Aff0 values: bit n = Aff0 `range_base + n`.
    pub target_list: u16,
    /// `RS` * 16.
    pub range_base: u64,
}

impl SgiRequest {
    /// Decodes the value written to `ICC_SGI1R_EL1`.
    pub fn decode(value: u64) -> Self {
        let aff1 = value >> 16 & 0xff;
        let aff2 = value >> 32 & 0xff;
        let aff3 = value >> 48 & 0xff;
        SgiRequest {
            intid: (value >> 24 & 0xf) as u32,
            all_but_self: value >> 40 & 1 != 0,
            affinity: aff3 << 32 | aff2 << 16 | aff1 << 8,
            target_list: (value & 0xffff) as u16,
            range_base: (value >> 44 & 0xf) * 16,
        }
    }

    /// Whether the vCPU with affinity `mpidr` (Aff fields only), not the
    /// sender `sender`, is a target.
    pub fn targets(&self, mpidr: u64, sender: u64) -> bool {
        if self.all_but_self {
            return mpidr != sender;
        }
        let aff0 = mpidr & 0xff;
        mpidr & !0xff == self.affinity
            && aff0 >= self.range_base
            && aff0 < self.range_base + 16
            && self.target_list >> (aff0 - self.range_base) & 1 != 0
    }
}

/// Masks of every INTID a vCPU can have; bits above are ignored.
pub const ALL_INTIDS: u128 = if NR_INTIDS >= 128 {
    u128::MAX
} else {
    (1u128 << NR_INTIDS) - 1
};

#[cfg(test)]
mod tests;
