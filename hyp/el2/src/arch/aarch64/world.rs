//! Host <-> guest world switch: per-CPU save areas, EL1 system registers,
//! the virtual timer and FP/SIMD, and the guest's HCR_EL2. The register file
//! moves are in switch.S; this module decides what is saved when.

use core::cell::UnsafeCell;

use core::sync::atomic::{AtomicUsize, Ordering};

use cloister_hyp_core::exits::GuestTrap;
use cloister_hyp_core::vgic::{GicCpuState, MAX_LRS};
use cloister_hyp_core::vm::{El1SysRegs, FpState, VcpuContext, VtimerState};

use super::{isb, read_sysreg, write_sysreg, MAX_CPUS};

/// Per-CPU EL2 data; TPIDR_EL2 points at this CPU's. The first fields are
/// read by switch.S and vectors.S at fixed offsets.
#[repr(C, align(1024))]
pub struct PerCpu {
    /// The running guest's context, or 0 when the host runs (offset 0).
    guest_ctx: u64,
    /// The EL2 stack pointer `guest_enter` returns with (offset 8).
    host_sp: u64,
    /// The host's callee-saved x19..x30 across `guest_enter` (offset 16).
    host_callee: [u64; 12],
    /// The host's EL1 state while a guest runs.
    host: HostEl1,
}

/// What the host's EL1 owns and a guest would overwrite.
#[repr(C)]
struct HostEl1 {
    sys: El1SysRegs,
    sp_el1: u64,
    elr_el1: u64,
    spsr_el1: u64,
    timer: VtimerState,
    fp: FpState,
}

const _: () = assert!(
    core::mem::size_of::<PerCpu>() == 0x400,
    "PERCPU_SIZE in entry.S"
);
const _: () = assert!(core::mem::offset_of!(PerCpu, guest_ctx) == 0);
const _: () = assert!(core::mem::offset_of!(PerCpu, host_sp) == 8);
const _: () = assert!(core::mem::offset_of!(PerCpu, host_callee) == 16);

/// Every CPU's [`PerCpu`]; reached only through TPIDR_EL2, which entry.S
/// points at this symbol's entries.
#[allow(dead_code)]
pub struct PerCpuArea(UnsafeCell<[PerCpu; MAX_CPUS]>);

// SAFETY: each CPU only touches its own entry (found through TPIDR_EL2).
unsafe impl Sync for PerCpuArea {}

#[no_mangle]
static HYP_PERCPU: PerCpuArea = PerCpuArea(UnsafeCell::new(
    [const {
        PerCpu {
            guest_ctx: 0,
            host_sp: 0,
            host_callee: [0; 12],
            host: HostEl1 {
                sys: VcpuContext::ZERO.sys,
                sp_el1: 0,
                elr_el1: 0,
                spsr_el1: 0,
                timer: VcpuContext::ZERO.timer,
                fp: VcpuContext::ZERO.fp,
            },
        }
    }; MAX_CPUS],
));

extern "C" {
    fn guest_enter(pcpu: *mut PerCpu, ctx: *mut VcpuContext) -> u64;
    fn fp_save(fp: *mut FpState);
    fn fp_restore(fp: *const FpState);
}

macro_rules! el1_regs {
    ($m:ident, $s:expr) => {
        $m!($s, sctlr_el1, "sctlr_el1");
        $m!($s, ttbr0_el1, "ttbr0_el1");
        $m!($s, ttbr1_el1, "ttbr1_el1");
        $m!($s, tcr_el1, "tcr_el1");
        $m!($s, mair_el1, "mair_el1");
        $m!($s, amair_el1, "amair_el1");
        $m!($s, vbar_el1, "vbar_el1");
        $m!($s, contextidr_el1, "contextidr_el1");
        $m!($s, tpidr_el0, "tpidr_el0");
        $m!($s, tpidrro_el0, "tpidrro_el0");
        $m!($s, tpidr_el1, "tpidr_el1");
        $m!($s, sp_el0, "sp_el0");
        $m!($s, esr_el1, "esr_el1");
        $m!($s, far_el1, "far_el1");
        $m!($s, afsr0_el1, "afsr0_el1");
        $m!($s, afsr1_el1, "afsr1_el1");
        $m!($s, par_el1, "par_el1");
        $m!($s, cntkctl_el1, "cntkctl_el1");
        $m!($s, cpacr_el1, "cpacr_el1");
        $m!($s, csselr_el1, "csselr_el1");
        $m!($s, mdscr_el1, "mdscr_el1");
    };
}

macro_rules! save_one {
    ($s:expr, $field:ident, $reg:literal) => {
        $s.$field = read_sysreg!($reg)
    };
}

macro_rules! restore_one {
    ($s:expr, $field:ident, $reg:literal) => {
        write_sysreg!($reg, $s.$field)
    };
}

fn save_el1(sys: &mut El1SysRegs) {
    el1_regs!(save_one, sys);
}

fn restore_el1(sys: &El1SysRegs) {
    el1_regs!(restore_one, sys);
}

/// HCR_EL2 while a guest runs: stage-2 on; physical IRQ/FIQ/SError to EL2
/// (the host handles its own interrupts); WFI, SMC and the IMPDEF, ACTLR and
/// set/way operations trapped; EL1 is AArch64; pointer auth untrapped.
const HCR_GUEST: u64 = (1 << 0) // VM
    | (1 << 1) // SWIO
    | (1 << 2) // PTW
    | (1 << 3) // FMO
    | (1 << 4) // IMO
    | (1 << 5) // AMO
    | (1 << 13) // TWI
    | (1 << 19) // TSC
    | (1 << 20) // TIDCP
    | (1 << 21) // TACR
    | (1 << 22) // TSW
    | (1 << 31) // RW
    | (1 << 40) // APK
    | (1 << 41); // API

/// MDCR_EL2 bits set while a guest runs: its PMU, debug and OS-lock
/// register accesses trap (and become undefined-instruction exceptions in
/// the guest), so it can neither read nor change the host's state there
/// (Armv8.0 bits only; debug exceptions stay the guest's: no TDE).
const MDCR_GUEST_TRAPS: u64 = (1 << 5) // TPMCR
    | (1 << 6) // TPM
    | (1 << 9) // TDA
    | (1 << 10) // TDOSA
    | (1 << 11); // TDRA

/// CPTR_EL2 bits set while a guest runs: SVE and SME trap (and become
/// undefined-instruction exceptions): the world switch moves only the
/// FP/SIMD registers, so the wider SVE/SME state would pass between host
/// and guest.
const CPTR_GUEST_TRAPS: u64 = (1 << 8) // TZ
    | (1 << 12); // TSM

fn save_host(host: &mut HostEl1) {
    save_el1(&mut host.sys);
    host.sp_el1 = read_sysreg!("sp_el1");
    host.elr_el1 = read_sysreg!("elr_el1");
    host.spsr_el1 = read_sysreg!("spsr_el1");
    host.timer.cntv_ctl_el0 = read_sysreg!("cntv_ctl_el0");
    host.timer.cntv_cval_el0 = read_sysreg!("cntv_cval_el0");
    // SAFETY: writes the register file into a save area we own.
    unsafe { fp_save(&mut host.fp) };
}

fn restore_host(host: &HostEl1) {
    restore_el1(&host.sys);
    write_sysreg!("sp_el1", host.sp_el1);
    write_sysreg!("elr_el1", host.elr_el1);
    write_sysreg!("spsr_el1", host.spsr_el1);
    write_sysreg!("cntv_cval_el0", host.timer.cntv_cval_el0);
    write_sysreg!("cntv_ctl_el0", host.timer.cntv_ctl_el0);
    // SAFETY: reads a save area we own into the register file.
    unsafe { fp_restore(&host.fp) };
}

fn load_guest(guest: &VcpuContext) {
    restore_el1(&guest.sys);
    write_sysreg!("sp_el1", guest.sp_el1);
    write_sysreg!("elr_el1", guest.elr_el1);
    write_sysreg!("spsr_el1", guest.spsr_el1);
    // The virtual timer is the guest's (the host ticks on the physical one,
    // host patch 0008); its interrupt while the guest runs is a physical
    // IRQ, taken to EL2, and the next entry injects it (vgic::prepare_entry).
    write_sysreg!("cntv_cval_el0", guest.timer.cntv_cval_el0);
    write_sysreg!("cntv_ctl_el0", guest.timer.cntv_ctl_el0);
    // The physical timer stays the host's: the guest's accesses trap.
    write_sysreg!("cnthctl_el2", CNTHCTL_EL1PCTEN);
    load_gic(&guest.gic);
    // SAFETY: reads the vCPU's saved FP state into the register file.
    unsafe { fp_restore(&guest.fp) };
}

/// CNTHCTL_EL2.EL1PCTEN: EL1 may read the physical counter.
const CNTHCTL_EL1PCTEN: u64 = 1 << 0;
/// CNTHCTL_EL2.EL1PCEN: EL1 may use the physical timer (the host only).
const CNTHCTL_EL1PCEN: u64 = 1 << 1;
/// ICH_HCR_EL2.En: the virtual CPU interface is on.
const ICH_HCR_EN: u64 = 1 << 0;

/// List registers this CPU implements (ICH_VTR_EL2.ListRegs + 1), read
/// once at boot by [`init_gic_virt`]; 0 until then (no list register used).
static NR_LRS: AtomicUsize = AtomicUsize::new(0);

/// Records how many list registers the GIC's virtual CPU interface has.
pub fn init_gic_virt() {
    let vtr = read_sysreg!("s3_4_c12_c11_1"); // ICH_VTR_EL2
    NR_LRS.store(((vtr & 0x1f) as usize + 1).min(MAX_LRS), Ordering::Relaxed);
}

/// List registers in use (for `vgic::prepare_entry`).
pub fn nr_lrs() -> usize {
    NR_LRS.load(Ordering::Relaxed)
}

/// The virtual counter now (CNTVOFF_EL2 is 0: the physical count).
pub fn counter_now() -> u64 {
    read_sysreg!("cntvct_el0")
}

macro_rules! lr_access {
    ($n:expr, $value:ident, $op:ident) => {
        match $n {
            0 => $op!("s3_4_c12_c12_0", $value),
            1 => $op!("s3_4_c12_c12_1", $value),
            2 => $op!("s3_4_c12_c12_2", $value),
            3 => $op!("s3_4_c12_c12_3", $value),
            4 => $op!("s3_4_c12_c12_4", $value),
            5 => $op!("s3_4_c12_c12_5", $value),
            6 => $op!("s3_4_c12_c12_6", $value),
            7 => $op!("s3_4_c12_c12_7", $value),
            8 => $op!("s3_4_c12_c13_0", $value),
            9 => $op!("s3_4_c12_c13_1", $value),
            10 => $op!("s3_4_c12_c13_2", $value),
            11 => $op!("s3_4_c12_c13_3", $value),
            12 => $op!("s3_4_c12_c13_4", $value),
            13 => $op!("s3_4_c12_c13_5", $value),
            14 => $op!("s3_4_c12_c13_6", $value),
            _ => $op!("s3_4_c12_c13_7", $value),
        }
    };
}

macro_rules! lr_write {
    ($reg:literal, $value:ident) => {
        write_sysreg!($reg, $value)
    };
}

macro_rules! lr_read {
    ($reg:literal, $value:ident) => {
        $value = read_sysreg!($reg)
    };
}

/// Loads the guest's virtual CPU interface and turns it on.
fn load_gic(gic: &GicCpuState) {
    for (n, lr) in gic.lr.iter().enumerate().take(nr_lrs()) {
        let value = *lr;
        lr_access!(n, value, lr_write);
    }
    write_sysreg!("s3_4_c12_c11_7", gic.vmcr); // ICH_VMCR_EL2
    write_sysreg!("s3_4_c12_c8_0", gic.ap0r0); // ICH_AP0R0_EL2
    write_sysreg!("s3_4_c12_c9_0", gic.ap1r0); // ICH_AP1R0_EL2
    write_sysreg!("s3_4_c12_c11_0", ICH_HCR_EN); // ICH_HCR_EL2
}

/// Saves the guest's virtual CPU interface and turns it off, so nothing of
/// the guest's is signalled while the host runs.
fn save_gic(gic: &mut GicCpuState) {
    for n in 0..nr_lrs() {
        let value: u64;
        lr_access!(n, value, lr_read);
        gic.lr[n] = value;
        let zero = 0u64;
        lr_access!(n, zero, lr_write);
    }
    gic.vmcr = read_sysreg!("s3_4_c12_c11_7");
    gic.ap0r0 = read_sysreg!("s3_4_c12_c8_0");
    gic.ap1r0 = read_sysreg!("s3_4_c12_c9_0");
    write_sysreg!("s3_4_c12_c11_0", 0);
}

fn save_guest(guest: &mut VcpuContext) {
    save_el1(&mut guest.sys);
    guest.sp_el1 = read_sysreg!("sp_el1");
    guest.elr_el1 = read_sysreg!("elr_el1");
    guest.spsr_el1 = read_sysreg!("spsr_el1");
    guest.timer.cntv_ctl_el0 = read_sysreg!("cntv_ctl_el0");
    guest.timer.cntv_cval_el0 = read_sysreg!("cntv_cval_el0");
    // Off until the host's own value is back (restore_host): the guest's
    // timer must not interrupt the host.
    write_sysreg!("cntv_ctl_el0", 0);
    write_sysreg!("cnthctl_el2", CNTHCTL_EL1PCTEN | CNTHCTL_EL1PCEN);
    save_gic(&mut guest.gic);
    // SAFETY: writes the register file into the vCPU's context.
    unsafe { fp_save(&mut guest.fp) };
}

/// Runs the guest whose context is `ctx` on this CPU until it exits.
///
/// # Safety
/// `ctx` must be a loaded vCPU's context (nothing else reads or writes it
/// until it is put), `vttbr` its VM's stage-2, and the caller must hold no
/// lock the guest's exits will need.
pub unsafe fn run_guest(ctx: *mut VcpuContext, vttbr: u64, vmpidr: u64) -> GuestTrap {
    let pcpu = read_sysreg!("tpidr_el2") as usize as *mut PerCpu;
    // SAFETY: TPIDR_EL2 points at this CPU's PerCpu (entry.S) and only this
    // CPU uses it; `ctx` is ours alone per the contract.
    let (host, guest) = unsafe { (&mut (*pcpu).host, &mut *ctx) };
    save_host(host);
    load_guest(guest);
    let host_hcr = read_sysreg!("hcr_el2");
    let host_vttbr = read_sysreg!("vttbr_el2");
    let host_vmpidr = read_sysreg!("vmpidr_el2");
    let host_mdcr = read_sysreg!("mdcr_el2");
    write_sysreg!("mdcr_el2", host_mdcr | MDCR_GUEST_TRAPS);
    let host_cptr = read_sysreg!("cptr_el2");
    write_sysreg!("cptr_el2", host_cptr | CPTR_GUEST_TRAPS);
    write_sysreg!("vmpidr_el2", vmpidr);
    write_sysreg!("vttbr_el2", vttbr);
    write_sysreg!("hcr_el2", HCR_GUEST);
    isb();

    // SAFETY: the guest context and per-CPU area are valid (above); the
    // guest runs at EL1 under its stage-2 and comes back through the vectors.
    let vector = unsafe { guest_enter(pcpu, ctx) };
    let esr = read_sysreg!("esr_el2");
    let far = read_sysreg!("far_el2");
    let hpfar = read_sysreg!("hpfar_el2");
    let now = counter_now();

    write_sysreg!("hcr_el2", host_hcr);
    write_sysreg!("vttbr_el2", host_vttbr);
    write_sysreg!("vmpidr_el2", host_vmpidr);
    write_sysreg!("mdcr_el2", host_mdcr);
    write_sysreg!("cptr_el2", host_cptr);
    // SAFETY: as above; guest_enter has returned, so no one else writes it.
    let (host, guest) = unsafe { (&mut (*pcpu).host, &mut *ctx) };
    save_guest(guest);
    restore_host(host);
    isb();
    GuestTrap {
        vector,
        esr,
        far,
        ipa: ((hpfar & 0x0000_0fff_ffff_fff0) << 8) | (far & 0xfff),
        now,
    }
}
