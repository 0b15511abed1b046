//! The aarch64 glue: entry and vectors (assembly), `HVC`, MMIO loads and
//! stores, the PL011, the exception handler, and `rust_main`, which hands
//! everything to the library's [`suite`].
//!
//! The guest runs at EL1 with the MMU off (every data access is
//! Device-nGnRnE, which is why MMIO and the test pages are touched with
//! single aligned `LDR`/`STR`s and nothing uses exclusives). An exception
//! taken while a call or load is "armed" is recorded and stepped over, so
//! the suite sees what the hypervisor injected; any other exception is
//! fatal: `Bail out!` on the console, then SYSTEM_OFF.

use core::arch::{asm, global_asm};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use cloister_conformance::dtb::{self, DtbError, DtbInfo};
use cloister_conformance::secret;
use cloister_conformance::spec::Exception;
use cloister_conformance::suite::{self, Config, Platform};
use cloister_conformance::tap::Tap;
use cloister_hyp_core::guest_abi::{kvm, psci};

global_asm!(include_str!("entry.S"));
global_asm!(include_str!("vectors.S"));

extern "C" {
    /// The second vCPU's entry point (entry.S).
    fn secondary_entry();
    /// The first byte after the image, .bss and stacks included
    /// (conformance.ld; page-aligned).
    static __image_end: u8;
}

/// Where the second vCPU stores its context ID (written by entry.S).
#[no_mangle]
static SECONDARY_FLAG: AtomicU64 = AtomicU64::new(0);

/// 1 while a call or load may take an exception the suite wants to see.
static ARMED: AtomicU64 = AtomicU64::new(0);
/// 1 once an armed exception was taken; its ESR and FAR.
static TAKEN: AtomicU64 = AtomicU64::new(0);
static TAKEN_ESR: AtomicU64 = AtomicU64::new(0);
static TAKEN_FAR: AtomicU64 = AtomicU64::new(0);
/// The console for the fatal paths (0 before `rust_main` chose it).
static CONSOLE: AtomicU64 = AtomicU64::new(0);
/// 1 once a fatal path started (a second fatal exception skips printing).
static DYING: AtomicU64 = AtomicU64::new(0);

/// Vector index of a synchronous exception from EL1 with SP_EL1 (vectors.S).
const VECTOR_CURRENT_SPX_SYNC: u64 = 4;
/// Every AArch64 instruction is 4 bytes.
const INSN_SIZE: u64 = 4;

/// Two pages of the guest's own RAM for MEM_SHARE / MEM_UNSHARE (in .bss,
/// which is in the image file, so they are guest memory from the start).
#[repr(C, align(4096))]
#[derive(Debug)]
struct Page([AtomicU64; 512]);

static PAGES: [Page; 2] = [
    Page([const { AtomicU64::new(0) }; 512]),
    Page([const { AtomicU64::new(0) }; 512]),
];

/// The page secret mode keeps its secret in.
static SECRET_PAGE: Page = Page([const { AtomicU64::new(0) }; 512]);

/// The registers vectors.S saves, in its order.
#[repr(C)]
#[derive(Debug)]
struct ExceptionFrame {
    x: [u64; 19],
    x29: u64,
    x30: u64,
    elr: u64,
    spsr: u64,
    pad: u64,
}

const _: () = assert!(core::mem::size_of::<ExceptionFrame>() == 192);

fn hvc_raw(regs: [u64; 4]) -> [u64; 4] {
    let [mut x0, mut x1, mut x2, mut x3] = regs;
    // SAFETY: an SMCCC 1.1 call: the hypervisor (or firmware) only writes
    // x0..x17, all declared clobbered; it does not touch our memory or
    // stack. If HVC traps in the guest instead, the exception handler
    // steps over it and leaves every register as it was.
    unsafe {
        asm!(
            "hvc #0",
            inout("x0") x0,
            inout("x1") x1,
            inout("x2") x2,
            inout("x3") x3,
            inout("x4") 0u64 => _,
            inout("x5") 0u64 => _,
            inout("x6") 0u64 => _,
            inout("x7") 0u64 => _,
            out("x8") _,
            out("x9") _,
            out("x10") _,
            out("x11") _,
            out("x12") _,
            out("x13") _,
            out("x14") _,
            out("x15") _,
            out("x16") _,
            out("x17") _,
            options(nostack),
        );
    }
    [x0, x1, x2, x3]
}

/// One 32-bit `LDR` with no writeback (its abort syndrome is valid, so a
/// hypervisor can emulate it).
fn mmio_read32(addr: u64) -> u32 {
    let value: u32;
    // SAFETY: a load from an MMIO or RAM address the caller chose; it
    // changes no memory. A fault is taken by the vectors, which either
    // step over the instruction (armed) or stop the guest.
    unsafe {
        asm!("ldr {v:w}, [{a}]", a = in(reg) addr, v = lateout(reg) value, options(nostack));
    }
    value
}

/// One 32-bit `STR` with no writeback.
fn mmio_write32(addr: u64, value: u32) {
    // SAFETY: a store to the console's data register; the console is
    // device memory nothing else in the guest uses.
    unsafe {
        asm!("str {v:w}, [{a}]", a = in(reg) addr, v = in(reg) value, options(nostack));
    }
}

/// Runs `f` (one call or load) with exceptions recorded instead of fatal.
fn catching<T>(f: impl FnOnce() -> T) -> Result<T, Exception> {
    TAKEN.store(0, SeqCst);
    ARMED.store(1, SeqCst);
    let value = f();
    ARMED.store(0, SeqCst);
    if TAKEN.load(SeqCst) == 0 {
        Ok(value)
    } else {
        Err(Exception {
            esr: TAKEN_ESR.load(SeqCst),
            far: TAKEN_FAR.load(SeqCst),
        })
    }
}

macro_rules! read_sysreg {
    ($name:literal) => {{
        let v: u64;
        // SAFETY: reading an EL1/EL0-accessible system register has no
        // side effects.
        unsafe {
            asm!(concat!("mrs {}, ", $name), out(reg) v, options(nomem, nostack, preserves_flags));
        }
        v
    }};
}

/// Called by vectors.S for every exception.
#[no_mangle]
extern "C" fn rust_exception(kind: u64, frame: &mut ExceptionFrame) {
    let esr = read_sysreg!("esr_el1");
    let far = read_sysreg!("far_el1");
    if kind == VECTOR_CURRENT_SPX_SYNC && ARMED.load(SeqCst) == 1 {
        TAKEN_ESR.store(esr, SeqCst);
        TAKEN_FAR.store(far, SeqCst);
        TAKEN.store(1, SeqCst);
        frame.elr = frame.elr.wrapping_add(INSN_SIZE);
        return;
    }
    fatal(format_args!(
        "unexpected exception: vector {kind} ESR {esr:#x} FAR {far:#x} ELR {:#x} SPSR {:#x}",
        frame.elr, frame.spsr
    ));
}

/// `Bail out!` with `why`, then SYSTEM_OFF; never returns.
fn fatal(why: fmt::Arguments<'_>) -> ! {
    if DYING.swap_free() == 0 {
        let base = CONSOLE.load(SeqCst);
        if base != 0 {
            let _ = writeln!(Console(base), "Bail out! {why}");
        }
    }
    hvc_raw([u64::from(psci::SYSTEM_OFF), 0, 0, 0]);
    halt()
}

trait SwapFree {
    /// Sets the flag to 1 and returns what it was, with a plain load and
    /// store (no exclusives: they need not work on Device memory).
    fn swap_free(&self) -> u64;
}

impl SwapFree for AtomicU64 {
    fn swap_free(&self) -> u64 {
        let was = self.load(SeqCst);
        self.store(1, SeqCst);
        was
    }
}

fn halt() -> ! {
    loop {
        // SAFETY: waits for an interrupt; no memory or register effects.
        unsafe { asm!("wfi", options(nomem, nostack, preserves_flags)) };
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    fatal(format_args!("panic: {info}"))
}

/// The PL011 at `.0`: transmit only, `\n` sent as `\r\n`.
#[derive(Debug)]
struct Console(u64);

const UARTDR: u64 = 0x00;
const UARTFR: u64 = 0x18;
const FR_TXFF: u32 = 1 << 5;
/// Polls of a full transmit FIFO before writing anyway.
const TX_POLLS: u32 = 1_000_000;

impl Console {
    fn put(&self, byte: u8) {
        for _ in 0..TX_POLLS {
            if mmio_read32(self.0 + UARTFR) & FR_TXFF == 0 {
                break;
            }
        }
        mmio_write32(self.0 + UARTDR, u32::from(byte));
    }
}

impl Write for Console {
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

/// The machine, for the suite.
#[derive(Debug, Default)]
struct Hw {
    /// Clock calls so far (the clock when the counter frequency is 0).
    ticks: u64,
}

impl Platform for Hw {
    fn hvc(&mut self, regs: [u64; 4]) -> Result<[u64; 4], Exception> {
        catching(|| hvc_raw(regs))
    }

    fn load32(&mut self, addr: u64) -> Result<u64, Exception> {
        catching(|| mmio_read32(addr)).map(u64::from)
    }

    fn mpidr(&self) -> u64 {
        read_sysreg!("mpidr_el1")
    }

    fn secondary_entry(&self) -> u64 {
        (secondary_entry as *const ()).addr() as u64
    }

    fn secondary_stored(&mut self) -> u64 {
        SECONDARY_FLAG.load(SeqCst)
    }

    fn millis(&mut self) -> u64 {
        self.ticks += 1;
        let freq = read_sysreg!("cntfrq_el0");
        if freq == 0 {
            return self.ticks / 1000;
        }
        let count = read_sysreg!("cntvct_el0");
        u64::try_from(u128::from(count) * 1000 / u128::from(freq)).unwrap_or(u64::MAX)
    }

    fn own_pages(&mut self) -> [u64; 2] {
        PAGES.each_ref().map(|page| {
            // Written before use: where the host donates a protected VM's
            // memory on first touch, this makes the page the guest's.
            page.0[0].store(0x5eed, SeqCst);
            core::ptr::from_ref(page).addr() as u64
        })
    }
}

/// Reads the DTB at `addr` (`x0` at entry).
fn read_dtb(addr: u64) -> Result<DtbInfo<'static>, DtbError> {
    if addr == 0 || !addr.is_multiple_of(8) {
        return Err(DtbError::BadAddress);
    }
    let ptr = usize::try_from(addr).map_err(|_| DtbError::BadAddress)? as *const u8;
    // SAFETY: the boot protocol puts a DTB (at least its 40-byte header)
    // at `addr` in RAM, 8-byte aligned, and nothing writes it while the
    // guest runs.
    let header = unsafe { core::slice::from_raw_parts(ptr, dtb::HEADER_SIZE) };
    let size = dtb::total_size(header)?;
    // SAFETY: as above; `size` is the header's totalsize (at most
    // dtb::MAX_SIZE, the VMM's DTB window).
    let blob = unsafe { core::slice::from_raw_parts(ptr, size) };
    dtb::parse(blob)
}

/// Tells the test device `event` with `value` (an IPA or a count).
fn test_event(event: u32, value: u64) {
    mmio_write64(secret::TEST_DEV + secret::VALUE, value);
    mmio_write32(secret::TEST_DEV + secret::EVENT, event);
}

/// One 64-bit `STR` with no writeback.
fn mmio_write64(addr: u64, value: u64) {
    // SAFETY: a store to the test device's VALUE register, device memory
    // nothing else in the guest uses.
    unsafe {
        asm!("str {v}, [{a}]", a = in(reg) addr, v = in(reg) value, options(nostack));
    }
}

/// `mode=bench`: times share + unshare rounds and first touches of all
/// RAM between the image and the DTB; reports through the test device.
fn bench_mode(ram: Option<(u64, u64)>, dtb_addr: u64) -> ! {
    let _ = hvc_raw([u64::from(kvm::MMIO_GUARD), secret::TEST_DEV, 0, 0]);
    test_event(secret::BENCH_READY, read_sysreg!("cntfrq_el0"));
    let page = core::ptr::from_ref(&SECRET_PAGE).addr() as u64;
    SECRET_PAGE.0[0].store(1, SeqCst);
    let start = read_sysreg!("cntvct_el0");
    for _ in 0..secret::BENCH_ROUNDS {
        let _ = hvc_raw([u64::from(kvm::MEM_SHARE), page, 0, 0]);
        let _ = hvc_raw([u64::from(kvm::MEM_UNSHARE), page, 0, 0]);
    }
    test_event(
        secret::BENCH_SHARE_TICKS,
        read_sysreg!("cntvct_el0") - start,
    );
    // Every page above the image up to the DTB: one store each, each a
    // first touch. (Only the symbol's address is taken, never its value.)
    let first = core::ptr::addr_of!(__image_end).addr() as u64;
    let end = match ram {
        Some((base, size)) => (base + size).min(dtb_addr & !0xfff),
        None => first,
    };
    let start = read_sysreg!("cntvct_el0");
    let mut pages = 0u64;
    let mut at = first;
    while at < end {
        // SAFETY: guest RAM below the DTB and above this image: nothing in
        // the guest uses it.
        unsafe { core::ptr::write_volatile(at as *mut u64, at) };
        at += 0x1000;
        pages += 1;
    }
    let ticks = read_sysreg!("cntvct_el0") - start;
    test_event(secret::BENCH_TOUCH_PAGES, pages);
    test_event(secret::BENCH_TOUCH_TICKS, ticks);
    let _ = hvc_raw([u64::from(psci::SYSTEM_OFF), 0, 0, 0]);
    halt()
}

/// Secret mode (see `secret`): never returns.
fn secret_mode(mode: secret::Mode, console: u64) -> ! {
    let seed = mode.seed();
    let _ = hvc_raw([u64::from(kvm::MMIO_GUARD), secret::TEST_DEV, 0, 0]);
    let mut s = seed;
    for word in &SECRET_PAGE.0 {
        s = secret::next(s);
        word.store(s, SeqCst);
    }
    let ipa = core::ptr::from_ref(&SECRET_PAGE).addr() as u64;
    test_event(secret::SECRET_READY, ipa);
    if let secret::Mode::Touch { .. } = mode {
        // The host may have taken the page meanwhile: this load is then a
        // memory fault the host cannot resolve.
        let first = SECRET_PAGE.0[0].load(SeqCst);
        test_event(secret::TOUCHED, ipa);
        let _ = writeln!(Console(console), "# touched {first:#x}");
        let _ = hvc_raw([u64::from(psci::SYSTEM_OFF), 0, 0, 0]);
        halt();
    }
    if let secret::Mode::Hold { .. } = mode {
        test_event(secret::HOLDING, ipa);
        let _ = writeln!(Console(console), "# holding the secret at {ipa:#x}");
        halt();
    }
    let share = hvc_raw([u64::from(kvm::MEM_SHARE), ipa, 0, 0]);
    test_event(secret::SHARED, ipa);
    let unshare = hvc_raw([u64::from(kvm::MEM_UNSHARE), ipa, 0, 0]);
    test_event(secret::UNSHARED, ipa);
    let _ = writeln!(
        Console(console),
        "# secret mode: share {:#x}, unshare {:#x}",
        share[0],
        unshare[0]
    );
    let _ = hvc_raw([u64::from(psci::SYSTEM_OFF), 0, 0, 0]);
    halt()
}

/// Called by entry.S on the first vCPU with the DTB address from `x0`.
#[no_mangle]
extern "C" fn rust_main(dtb_addr: u64) -> ! {
    let cfg = Config::new(dtb_addr, read_dtb(dtb_addr));
    let el = (read_sysreg!("currentel") >> 2) & 3;
    if el != 1 {
        // HVC would trap to this image itself: nothing sane to test.
        let _ = writeln!(
            Console(cfg.console),
            "Bail out! entered at EL{el}; the conformance guest runs at EL1"
        );
        halt();
    }
    let mut hw = Hw::default();
    // No print before this: a protected guest must guard the console first.
    let boot = suite::boot(&mut hw, &cfg);
    CONSOLE.store(cfg.console, SeqCst);
    let bootargs = cfg.dtb.ok().and_then(|d| d.bootargs).unwrap_or("");
    match secret::mode(bootargs) {
        None => {}
        Some(Ok(secret::Mode::Bench { .. })) => {
            bench_mode(cfg.dtb.ok().and_then(|d| d.ram), dtb_addr)
        }
        Some(Ok(mode)) => secret_mode(mode, cfg.console),
        Some(Err(why)) => fatal(format_args!("{why}")),
    }
    let mut tap = Tap::new(Console(cfg.console));
    let _ = suite::run(&mut hw, &cfg, &boot, &mut tap);
    let _ = suite::power_off(&mut hw, &mut tap);
    halt()
}
