//! aarch64 glue: entry code, vectors, system registers, the EL2 stage-1
//! identity map, TLB maintenance and SMC calls. This is the only module
//! with `unsafe`; each block says why it is sound.

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;

global_asm!(include_str!("entry.S"));
global_asm!(include_str!("vectors.S"));
global_asm!(include_str!("switch.S"));

mod stage1;
mod world;
pub use stage1::{enable_mmu, S1Attr, Stage1Builder};
pub use world::{counter_now, nr_lrs, run_guest};

/// CPUs the hyp supports (entry.S checks secondaries against it).
pub const MAX_CPUS: usize = 8;
/// EL2 stack per CPU (entry.S uses the same value).
pub const STACK_SIZE: usize = 0x4000;

/// Per-CPU EL2 stacks; entry.S points SP_EL2 at the top of slot `cpu`.
#[repr(C, align(4096))]
pub struct StackArea(UnsafeCell<[[u8; STACK_SIZE]; MAX_CPUS]>);

// SAFETY: each CPU only ever uses its own slot, and only through SP.
unsafe impl Sync for StackArea {}

#[no_mangle]
static HYP_STACKS: StackArea = StackArea(UnsafeCell::new([[0; STACK_SIZE]; MAX_CPUS]));

extern "C" {
    static __hyp_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __hyp_end: u8;
    fn enter_host(entry: u64, x0: u64, spsr: u64) -> !;
    fn secondary_entry();
}

/// Addresses of the hyp image's sections (physical = virtual: identity map).
#[derive(Clone, Copy, Debug)]
pub struct ImageLayout {
    pub start: u64,
    pub text_end: u64,
    pub rodata_end: u64,
    pub end: u64,
}

pub fn image_layout() -> ImageLayout {
    // Linker-defined symbols: only their addresses are taken.
    ImageLayout {
        start: core::ptr::addr_of!(__hyp_start) as u64,
        text_end: core::ptr::addr_of!(__text_end) as u64,
        rodata_end: core::ptr::addr_of!(__rodata_end) as u64,
        end: core::ptr::addr_of!(__hyp_end) as u64,
    }
}

/// Physical address secondaries start at (passed to PSCI CPU_ON).
pub fn secondary_entry_pa() -> u64 {
    secondary_entry as *const () as u64
}

/// The interrupted context, as vectors.S saves it.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub x: [u64; 31],
    pub elr: u64,
    pub spsr: u64,
    _pad: u64,
}

const _: () = assert!(core::mem::size_of::<TrapFrame>() == 272);

macro_rules! read_sysreg {
    ($reg:literal) => {{
        let value: u64;
        // SAFETY: reading an EL2-accessible system register has no side effects.
        unsafe { core::arch::asm!(concat!("mrs {}, ", $reg), out(reg) value, options(nomem, nostack, preserves_flags)) };
        value
    }};
}

macro_rules! write_sysreg {
    ($reg:literal, $value:expr) => {{
        let value: u64 = $value;
        // SAFETY: only this module writes EL2 control registers, with values
        // computed here for the hyp's own configuration.
        unsafe { core::arch::asm!(concat!("msr ", $reg, ", {}"), in(reg) value, options(nostack, preserves_flags)) };
    }};
}

pub(crate) use {read_sysreg, write_sysreg};

pub fn isb() {
    // SAFETY: a barrier has no memory-safety effects.
    unsafe { asm!("isb", options(nostack, preserves_flags)) };
}

pub fn dsb_ish() {
    // SAFETY: a barrier has no memory-safety effects.
    unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
}

/// Parks this CPU for good.
pub fn halt() -> ! {
    loop {
        // SAFETY: wfe only waits.
        unsafe { asm!("wfe", options(nomem, nostack, preserves_flags)) };
    }
}

/// Issues an SMC (SMCCC 1.1 fast call) to the firmware (QEMU's PSCI, or
/// TF-A on boards) and returns x0..x3.
pub fn smc(args: [u64; 4]) -> [u64; 4] {
    let (mut r0, mut r1, mut r2, mut r3) = (args[0], args[1], args[2], args[3]);
    // SAFETY: SMCCC fast calls return in x0..x3 and may clobber x4..x17;
    // all are declared, and the firmware cannot touch hyp memory.
    unsafe {
        asm!(
            "smc #0",
            inout("x0") r0, inout("x1") r1, inout("x2") r2, inout("x3") r3,
            out("x4") _, out("x5") _, out("x6") _, out("x7") _,
            out("x8") _, out("x9") _, out("x10") _, out("x11") _,
            out("x12") _, out("x13") _, out("x14") _, out("x15") _,
            out("x16") _, out("x17") _,
            options(nostack)
        )
    };
    [r0, r1, r2, r3]
}

/// Leaves EL2 for the host kernel at EL1h, interrupts masked, x0 = `x0`.
pub fn enter_host_el1(entry: u64, x0: u64) -> ! {
    const SPSR_EL1H_DAIF: u64 = 0x3c5;
    // SAFETY: the host stage-2 and EL2 state are installed on this CPU; the
    // host runs at EL1 under them and can only come back through the vectors.
    unsafe { enter_host(entry, x0, SPSR_EL1H_DAIF) }
}

/// Reads `len` bytes at physical address `pa` (identity-mapped RAM).
///
/// # Safety
/// `[pa, pa + len)` must be RAM that nothing else writes while the slice lives.
pub unsafe fn phys_slice<'a>(pa: u64, len: usize) -> &'a [u8] {
    // SAFETY: guaranteed by the caller.
    unsafe { core::slice::from_raw_parts(pa as usize as *const u8, len) }
}

/// Mutable view of `len` bytes at physical address `pa`.
///
/// # Safety
/// `[pa, pa + len)` must be RAM owned by the caller for the slice's lifetime.
pub unsafe fn phys_slice_mut<'a>(pa: u64, len: usize) -> &'a mut [u8] {
    // SAFETY: guaranteed by the caller.
    unsafe { core::slice::from_raw_parts_mut(pa as usize as *mut u8, len) }
}

/// Copies `len` bytes between possibly overlapping physical ranges.
///
/// # Safety
/// Both ranges must be RAM the hyp owns at this point of the boot.
pub unsafe fn phys_copy(dst: u64, src: u64, len: usize) {
    // SAFETY: guaranteed by the caller; `copy` handles overlap.
    unsafe { core::ptr::copy(src as usize as *const u8, dst as usize as *mut u8, len) };
}

/// Makes data written with the MMU off or to code visible everywhere
/// (clean + invalidate to the point of coherency, then invalidate the
/// instruction cache) for `[start, end)`.
pub fn clean_dcache_range(start: u64, end: u64) {
    let mut line = start & !63;
    while line < end {
        // SAFETY: cache maintenance by VA on mapped or identity RAM.
        unsafe { asm!("dc civac, {}", in(reg) line, options(nostack, preserves_flags)) };
        line += 64;
    }
    dsb_ish();
    // SAFETY: invalidating the instruction cache has no memory effects.
    unsafe { asm!("ic iallu", options(nostack, preserves_flags)) };
    dsb_ish();
    isb();
}

/// Sets up this CPU's EL2 controls for a host at EL1 (nVHE), following what
/// Linux's own `init_el2_state` does when it is entered at EL2, then installs
/// the host stage-2.
pub fn init_el2_for_host(vttbr: u64, vtcr: u64) {
    let pfr0 = read_sysreg!("id_aa64pfr0_el1");
    let pfr1 = read_sysreg!("id_aa64pfr1_el1");
    let mmfr1 = read_sysreg!("id_aa64mmfr1_el1");
    let dfr0 = read_sysreg!("id_aa64dfr0_el1");
    let field = |reg: u64, shift: u32| (reg >> shift) & 0xf;

    // Timers: EL1 may use the physical counter and timer.
    write_sysreg!("cnthctl_el2", 0b11);
    write_sysreg!("cntvoff_el2", 0);
    // The host sees the real CPU identity.
    write_sysreg!("vpidr_el2", read_sysreg!("midr_el1"));
    write_sysreg!("vmpidr_el2", read_sysreg!("mpidr_el1"));
    // No FP/SIMD/SVE/SME/trace traps (only the RES1 bits of CPTR_EL2).
    write_sysreg!("cptr_el2", 0x22ff);
    write_sysreg!("hstr_el2", 0);
    // PMU: EL1 owns every counter.
    let pmuver = field(dfr0, 8);
    let mdcr = if pmuver != 0 && pmuver != 0xf {
        (read_sysreg!("pmcr_el0") >> 11) & 0x1f
    } else {
        0
    };
    write_sysreg!("mdcr_el2", mdcr);
    // GICv3 system registers for EL1.
    if field(pfr0, 24) != 0 {
        let sre = read_sysreg!("s3_4_c12_c9_5"); // ICC_SRE_EL2
        write_sysreg!("s3_4_c12_c9_5", sre | 0b1001); // SRE | Enable
        isb();
        write_sysreg!("s3_4_c12_c11_0", 0); // ICH_HCR_EL2
        world::init_gic_virt();
    }
    // SVE: full vector length for EL1.
    if field(pfr0, 32) != 0 {
        write_sysreg!("s3_4_c1_c2_0", 0xf); // ZCR_EL2
    }
    // SME: full streaming vector length, FA64, ZT0.
    let sme = field(pfr1, 24);
    if sme != 0 {
        let ezt0 = if sme >= 2 { 1 << 30 } else { 0 };
        write_sysreg!("s3_4_c1_c2_6", 0xf | (1 << 31) | ezt0); // SMCR_EL2
        write_sysreg!("s3_4_c1_c2_5", 0); // SMPRIMAP_EL2
    }
    // FEAT_HCX: let EL1 use the memory-copy instructions.
    if field(mmfr1, 40) != 0 {
        write_sysreg!("s3_4_c1_c2_2", 1 << 11); // HCRX_EL2.MSCEn
    }
    // Host stage-2.
    write_sysreg!("vtcr_el2", vtcr);
    write_sysreg!("vttbr_el2", vttbr);
    isb();
    // SAFETY: invalidates stale stage-1+2 entries of every VMID; no memory effects.
    unsafe {
        asm!(
            "tlbi alle1",
            "dsb ish",
            "isb",
            options(nostack, preserves_flags)
        )
    };

    const HCR_VM: u64 = 1 << 0;
    const HCR_SWIO: u64 = 1 << 1;
    const HCR_TSC: u64 = 1 << 19;
    const HCR_RW: u64 = 1 << 31;
    const HCR_APK: u64 = 1 << 40;
    const HCR_API: u64 = 1 << 41;
    write_sysreg!(
        "hcr_el2",
        HCR_VM | HCR_SWIO | HCR_TSC | HCR_RW | HCR_APK | HCR_API
    );
    isb();
}

/// Stage-2 TLB maintenance for the host (VMID 0) after a mapping was
/// removed or downgraded.
pub fn tlbi_host_ipa_range(ipa: u64, pages: u64) {
    dsb_ishst();
    for i in 0..pages {
        let arg = (ipa + i * 4096) >> 12;
        // SAFETY: TLB invalidation has no memory-safety effects.
        unsafe { asm!("tlbi ipas2e1is, {}", in(reg) arg, options(nostack, preserves_flags)) };
    }
    // SAFETY: barriers and a stage-1 invalidate for the current VMID.
    unsafe {
        asm!(
            "dsb ish",
            "tlbi vmalle1is",
            "dsb ish",
            "isb",
            options(nostack, preserves_flags)
        )
    };
}

fn dsb_ishst() {
    // SAFETY: a barrier has no memory-safety effects.
    unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) };
}

/// This CPU's MPIDR affinity fields.
pub fn this_mpidr() -> u64 {
    read_sysreg!("mpidr_el1") & 0xff_00ff_ffff
}
