//! The hyp's console: the PL011 the DTB's `stdout-path` names, shared with
//! the host (which drives the same UART once it boots). Output is line-
//! buffered behind a spinlock so lines from two CPUs never interleave.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static UART_BASE: AtomicU64 = AtomicU64::new(0);
static LOCK: AtomicBool = AtomicBool::new(false);

const UARTDR: u64 = 0x00;
const UARTFR: u64 = 0x18;
const FR_TXFF: u32 = 1 << 5;

/// Uses the PL011 at `base` from now on.
pub fn init(base: u64) {
    UART_BASE.store(base, Ordering::SeqCst);
}

struct Pl011(u64);

impl Pl011 {
    fn put(&self, byte: u8) {
        let fr = (self.0 + UARTFR) as usize as *const u32;
        let dr = (self.0 + UARTDR) as usize as *mut u32;
        // SAFETY: `base` is the PL011 from the DTB, identity-mapped as device
        // memory (or the MMU is off); these are its FR and DR registers.
        unsafe {
            while core::ptr::read_volatile(fr) & FR_TXFF != 0 {}
            core::ptr::write_volatile(dr, u32::from(byte));
        }
    }
}

impl Write for Pl011 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
        Ok(())
    }
}

/// Prints to the console (nothing if there is none yet).
pub fn print(args: fmt::Arguments<'_>) {
    let base = UART_BASE.load(Ordering::SeqCst);
    if base == 0 {
        return;
    }
    while LOCK
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    let _ = Pl011(base).write_fmt(args);
    LOCK.store(false, Ordering::Release);
}

/// Prints without taking the lock: for the panic and fatal-trap paths, where
/// the lock may be held by the CPU that failed.
pub fn print_unlocked(args: fmt::Arguments<'_>) {
    let base = UART_BASE.load(Ordering::SeqCst);
    if base != 0 {
        let _ = Pl011(base).write_fmt(args);
    }
}

/// `println!` for the hyp: every line starts with `cloister-hyp: `.
#[macro_export]
macro_rules! hyp_println {
    ($($arg:tt)*) => {
        $crate::console::print(format_args!("cloister-hyp: {}\n", format_args!($($arg)*)))
    };
}
