//! Reading memory that may fault, in this process: a load whose fault is
//! caught and stepped over, so a test can ask "what does this process see
//! at this address?" without forking (a fork would copy pinned guest pages,
//! and guest memory is MADV_DONTFORK anyway).

use std::sync::atomic::{AtomicI32, Ordering};

/// The signal the last probe took (0 = none).
static FAULT: AtomicI32 = AtomicI32::new(0);

/// What a probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The load returned this value.
    Value(u64),
    /// The load faulted with this signal.
    Signal(i32),
}

impl Probe {
    /// `SIGSEGV`, `SIGBUS`, or the value in hex.
    pub fn describe(self) -> String {
        match self {
            Probe::Value(v) => format!("{v:#x}"),
            Probe::Signal(libc::SIGSEGV) => "SIGSEGV".into(),
            Probe::Signal(libc::SIGBUS) => "SIGBUS".into(),
            Probe::Signal(s) => format!("signal {s}"),
        }
    }
}

extern "C" fn on_fault(sig: libc::c_int, _: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    FAULT.store(sig, Ordering::SeqCst);
    // SAFETY: the kernel passes a valid ucontext_t to an SA_SIGINFO handler;
    // the faulting instruction is the probe's single 4-byte `ldr`, so the
    // PC moves past it and the probe sees the fault in FAULT.
    unsafe {
        let uc = ctx.cast::<libc::ucontext_t>();
        (*uc).uc_mcontext.pc += 4;
    }
}

/// Loads the 64-bit word at `addr`, catching SIGSEGV and SIGBUS. Not
/// reentrant: one probe at a time per process.
pub fn read_u64(addr: *const u64) -> Probe {
    const SIGNALS: [libc::c_int; 2] = [libc::SIGSEGV, libc::SIGBUS];
    // SAFETY: installs a handler for the duration of one load and restores
    // the previous ones; the handler only touches an atomic and the PC.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_fault as extern "C" fn(_, _, _) as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        let mut old: [libc::sigaction; 2] = std::mem::zeroed();
        for (sig, old) in SIGNALS.iter().zip(old.iter_mut()) {
            libc::sigaction(*sig, &sa, old);
        }
        FAULT.store(0, Ordering::SeqCst);
        let value: u64;
        // One instruction, so the handler's `pc += 4` lands after it; x0
        // keeps 0 if the load faults.
        std::arch::asm!(
            "mov {v}, xzr",
            "ldr {v}, [{a}]",
            v = out(reg) value,
            a = in(reg) addr,
            options(nostack, readonly),
        );
        for (sig, old) in SIGNALS.iter().zip(old.iter()) {
            libc::sigaction(*sig, old, std::ptr::null_mut());
        }
        match FAULT.swap(0, Ordering::SeqCst) {
            0 => Probe::Value(value),
            sig => Probe::Signal(sig),
        }
    }
}
