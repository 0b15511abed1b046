//! What happens when the host traps to EL2: SMCCC calls (HVC, or SMC trapped
//! by HCR_EL2.TSC), stage-2 aborts on memory the host does not own, and
//! anything unexpected.
//!
//! Nothing the host does may stop the hyp: a call it should not make gets an
//! SMCCC error, an access it may not make becomes an abort injected back
//! into the host, an instruction the hyp does not emulate becomes an
//! undefined-instruction exception in the host. Only an exception taken *at*
//! EL2 (a hyp bug) stops the machine, after printing everything.

use crate::arch::{self, read_sysreg, write_sysreg, TrapFrame};
use crate::boot;

const EC_UNKNOWN: u64 = 0x00;
const EC_HVC64: u64 = 0x16;
const EC_SMC64: u64 = 0x17;
const EC_IABT_LOW: u64 = 0x20;
const EC_IABT_CUR: u64 = 0x21;
const EC_DABT_LOW: u64 = 0x24;
const EC_DABT_CUR: u64 = 0x25;

/// Vector 8: synchronous exception from the host (lower EL, AArch64).
const KIND_LOWER_SYNC: u64 = 8;

const VECTOR_NAMES: [&str; 16] = [
    "current EL SP0 sync",
    "current EL SP0 irq",
    "current EL SP0 fiq",
    "current EL SP0 serror",
    "current EL SPx sync",
    "current EL SPx irq",
    "current EL SPx fiq",
    "current EL SPx serror",
    "lower EL A64 sync",
    "lower EL A64 irq",
    "lower EL A64 fiq",
    "lower EL A64 serror",
    "lower EL A32 sync",
    "lower EL A32 irq",
    "lower EL A32 fiq",
    "lower EL A32 serror",
];

#[no_mangle]
extern "C" fn rust_trap(frame: &mut TrapFrame, kind: u64) {
    if kind != KIND_LOWER_SYNC {
        fatal(frame, kind, "unexpected exception");
    }
    let esr = read_sysreg!("esr_el2");
    match esr >> 26 {
        EC_HVC64 => handle_smccc(frame),
        EC_SMC64 => {
            handle_smccc(frame);
            // A trapped SMC returns to the SMC itself; skip it.
            frame.elr += 4;
        }
        ec @ (EC_DABT_LOW | EC_IABT_LOW) => {
            let far = read_sysreg!("far_el2");
            let hpfar = read_sysreg!("hpfar_el2");
            let ipa = ((hpfar & 0x0000_0fff_ffff_fff0) << 8) | (far & 0xfff);
            hyp_println!(
                "host {} at {:#x} (PA {:#x}) from {:#x} denied: page not owned by the host; abort injected",
                if ec == EC_DABT_LOW { "access" } else { "fetch" },
                far,
                ipa,
                frame.elr
            );
            inject_abort(frame, esr, far);
        }
        _ => inject_undef(frame),
    }
}

/// One SMCCC call from the host: x0 = function ID, results in x0..x3.
/// PSCI is relayed to the firmware (CPU_ON through the hyp's own secondary
/// entry); everything else is decoded and answered by the portable core.
fn handle_smccc(frame: &mut TrapFrame) {
    let fid = u32::try_from(frame.x[0] & 0xffff_ffff).unwrap_or(u32::MAX);
    let result = match fid {
        0x8400_0000..=0x8400_001f | 0xc400_0000..=0xc400_001f => {
            boot::psci(fid, [frame.x[1], frame.x[2], frame.x[3]])
        }
        _ => {
            let mut regs = [0u64; 8];
            regs.copy_from_slice(&frame.x[..8]);
            boot::host_hypercall(&regs)
        }
    };
    frame.x[..4].copy_from_slice(&result);
}

/// Where an exception taken to EL1 lands, relative to VBAR_EL1, and
/// whether it came from EL0.
fn el1_vector_offset(spsr: u64) -> (u64, bool) {
    match spsr & 0xf {
        0b0000 => (0x400, true),  // EL0t: lower EL, AArch64
        0b0100 => (0x000, false), // EL1t: current EL, SP0
        _ => (0x200, false),      // EL1h: current EL, SPx
    }
}

/// Makes the host take an exception at EL1 as if its own CPU raised it.
fn enter_el1_exception(frame: &mut TrapFrame, esr_el1: u64, far: Option<u64>) {
    let (offset, _) = el1_vector_offset(frame.spsr);
    write_sysreg!("esr_el1", esr_el1);
    if let Some(far) = far {
        write_sysreg!("far_el1", far);
    }
    write_sysreg!("elr_el1", frame.elr);
    write_sysreg!("spsr_el1", frame.spsr);
    frame.elr = read_sysreg!("vbar_el1") + offset;
    // EL1h with D, A, I, F masked, as a real exception entry does.
    frame.spsr = 0x3c5;
}

/// Injects a synchronous external abort for an access to memory the host
/// does not own. Like pKVM, ESR.S1PTW is set to mark it as coming from the
/// hypervisor, so the host can tell it from a real external abort.
fn inject_abort(frame: &mut TrapFrame, esr_el2: u64, far: u64) {
    let (_, from_el0) = el1_vector_offset(frame.spsr);
    let data = esr_el2 >> 26 == EC_DABT_LOW;
    let ec = match (data, from_el0) {
        (true, true) => EC_DABT_LOW,
        (true, false) => EC_DABT_CUR,
        (false, true) => EC_IABT_LOW,
        (false, false) => EC_IABT_CUR,
    };
    const IL: u64 = 1 << 25;
    const WNR: u64 = 1 << 6;
    const S1PTW: u64 = 1 << 7;
    const FSC_SEA: u64 = 0x10;
    let iss = (esr_el2 & if data { WNR } else { 0 }) | S1PTW | FSC_SEA;
    enter_el1_exception(frame, (ec << 26) | IL | iss, Some(far));
}

/// Injects an undefined-instruction exception (the host ran something the
/// hyp traps but does not emulate).
fn inject_undef(frame: &mut TrapFrame) {
    enter_el1_exception(frame, (EC_UNKNOWN << 26) | (1 << 25), None);
}

/// Prints everything about an exception taken at EL2 and stops.
fn fatal(frame: &TrapFrame, kind: u64, what: &str) -> ! {
    let name = usize::try_from(kind)
        .ok()
        .and_then(|k| VECTOR_NAMES.get(k))
        .copied()
        .unwrap_or("?");
    let p = crate::console::print_unlocked;
    p(format_args!(
        "\ncloister-hyp: FATAL {what}: vector {kind} ({name}) on CPU {:#x}\n",
        arch::this_mpidr()
    ));
    p(format_args!(
        "  ESR_EL2 {:#018x}  ELR_EL2 {:#018x}  FAR_EL2 {:#018x}  SPSR_EL2 {:#018x}\n",
        read_sysreg!("esr_el2"),
        frame.elr,
        read_sysreg!("far_el2"),
        frame.spsr
    ));
    for (i, pair) in frame.x.chunks(2).enumerate() {
        match pair {
            [a, b] => p(format_args!(
                "  x{:<2} {:#018x}  x{:<2} {:#018x}\n",
                2 * i,
                a,
                2 * i + 1,
                b
            )),
            [a] => p(format_args!("  x{:<2} {:#018x}\n", 2 * i, a)),
            _ => {}
        }
    }
    arch::halt()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    crate::console::print_unlocked(format_args!(
        "\ncloister-hyp: PANIC on CPU {:#x}: {info}\n",
        arch::this_mpidr()
    ));
    arch::halt()
}
