//! The hyp's console: the UART the DTB's `stdout-path` names, a PL011 or
//! an 8250/16550 (which registers, how wide, when to write: the portable
//! driver in `cloister_hyp_core::uart`; only the MMIO accesses are here).
//! It is shared with the host, which drives the same UART once it boots.
//! Output is line-buffered behind a spinlock so lines from two CPUs never
//! interleave.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cloister_hyp_core::uart::{Console, IoWidth, Reg, Uart, UartIo, UartKind};

static UART_BASE: AtomicU64 = AtomicU64::new(0);
/// `UartKind::encode` of the console's kind.
static UART_KIND: AtomicU64 = AtomicU64::new(0);
static LOCK: AtomicBool = AtomicBool::new(false);

/// Uses `uart` from now on.
pub fn init(uart: &Uart) {
    UART_KIND.store(uart.kind.encode(), Ordering::SeqCst);
    UART_BASE.store(uart.base.raw(), Ordering::SeqCst);
}

/// The UART's registers: base plus `Reg::offset`, identity-mapped as
/// device memory at EL2 (or the MMU is off); `host_platform` checked that
/// each lies inside the console's `reg` and is aligned to its width.
struct Mmio(u64);

impl Mmio {
    fn addr(&self, reg: Reg) -> usize {
        (self.0 + reg.offset) as usize
    }
}

impl UartIo for Mmio {
    fn read(&mut self, reg: Reg) -> u32 {
        let addr = self.addr(reg);
        match reg.width {
            // SAFETY: a register of the DTB's console UART, mapped as device memory.
            IoWidth::U8 => u32::from(unsafe { core::ptr::read_volatile(addr as *const u8) }),
            // SAFETY: as above; aligned to 2 (checked by `UartKind::check`).
            IoWidth::U16 => u32::from(unsafe { core::ptr::read_volatile(addr as *const u16) }),
            // SAFETY: as above; aligned to 4 (checked by `UartKind::check`).
            IoWidth::U32 => unsafe { core::ptr::read_volatile(addr as *const u32) },
        }
    }

    fn write(&mut self, reg: Reg, value: u32) {
        let addr = self.addr(reg);
        let [low, high, ..] = value.to_le_bytes();
        match reg.width {
            // SAFETY: a register of the DTB's console UART, mapped as device memory.
            IoWidth::U8 => unsafe { core::ptr::write_volatile(addr as *mut u8, low) },
            // SAFETY: as above; aligned to 2 (checked by `UartKind::check`).
            IoWidth::U16 => unsafe {
                core::ptr::write_volatile(addr as *mut u16, u16::from_le_bytes([low, high]));
            },
            // SAFETY: as above; aligned to 4 (checked by `UartKind::check`).
            IoWidth::U32 => unsafe { core::ptr::write_volatile(addr as *mut u32, value) },
        }
    }
}

/// The console, once `init` ran.
fn console() -> Option<Console<Mmio>> {
    let base = UART_BASE.load(Ordering::SeqCst);
    let kind = UartKind::decode(UART_KIND.load(Ordering::SeqCst))?;
    (base != 0).then(|| Console::new(kind, Mmio(base)))
}

/// Prints to the console (nothing if there is none yet).
pub fn print(args: fmt::Arguments<'_>) {
    let Some(mut console) = console() else {
        return;
    };
    while LOCK
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    let _ = console.write_fmt(args);
    LOCK.store(false, Ordering::Release);
}

/// Prints without taking the lock: for the panic and fatal-trap paths, where
/// the lock may be held by the CPU that failed.
pub fn print_unlocked(args: fmt::Arguments<'_>) {
    if let Some(mut console) = console() {
        let _ = console.write_fmt(args);
    }
}

/// `println!` for the hyp: every line starts with `cloister-hyp: `.
#[macro_export]
macro_rules! hyp_println {
    ($($arg:tt)*) => {
        $crate::console::print(format_args!("cloister-hyp: {}\n", format_args!($($arg)*)))
    };
}
