//! The boot sequence, primary and secondary CPUs, and the hyp's global
//! state (the page database and host stage-2 behind one lock).
//!
//! Primary CPU, MMU off, entered from entry.S:
//! 1. read the platform from the DTB (RAM, console UART, PSCI, CPUs) and
//!    what the host stage-2 maps besides the hyp's RAM bank (other banks,
//!    reserved memory outside RAM, MMIO: `cloister_hyp_core::host_map`);
//! 2. validate the payload table appended to the image (refuse to boot a
//!    damaged image, with a console message, then power off);
//! 3. carve out the hyp's memory: its image, and a pool at the top of its
//!    RAM bank for the page database and stage-2 tables;
//! 4. lay out the host: initramfs and DTB above the payload, the kernel
//!    Image moved to the first 2 MiB boundary after the hyp;
//! 5. EL2 stage-1 identity map with W^X, MMU on;
//! 6. page database + host stage-2 (the hyp's bank but the carve-outs),
//!    the other RAM (host-only) and the DTB's device memory;
//! 7. write the host DTB with the carve-outs as `no-map` reserved memory
//!    and the initramfs location, then ERET to the kernel at EL1.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use cloister_hyp_core::addr::{Ipa, Pfn, PfnRange, PhysAddr};
use cloister_hyp_core::hal::{PageAllocator, PageWords, TlbMaintenance};
use cloister_hyp_core::host_map::{HostMap, RunList};
use cloister_hyp_core::mem_protect::{MemProtect, PageMeta};
use cloister_hyp_core::stage2::{self, Vmid};
use cloister_hyp_core::vm::VmTable;
use cloister_hyp_core::{abi, fdt, hypercall, payload};

use crate::arch::{self, S1Attr, Stage1Builder, MAX_CPUS};

const MIB: u64 = 1 << 20;
const SZ_2M: u64 = 2 * MIB;
const PAGE: u64 = 4096;
/// Room for the rewritten DTB (the source's size plus this).
const DTB_SLACK: u64 = 64 * 1024;

/// The RAM region the hyp was loaded into.
#[derive(Clone, Copy)]
struct Ram {
    base: u64,
    size: u64,
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// Size of a run list in MiB, rounded up.
fn mib<const N: usize>(runs: &RunList<N>) -> u64 {
    (runs.pages() * PAGE).div_ceil(MIB)
}

/// MPIDR of each CPU, in DTB order (index = CPU index in the hyp).
static CPU_MPIDR: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(u64::MAX) }; MAX_CPUS];
static CPU_COUNT: AtomicUsize = AtomicUsize::new(0);
/// Where each secondary enters the host (PSCI CPU_ON's entry and context).
static HOST_ENTRY: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static HOST_CONTEXT: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static TTBR0_EL2: AtomicU64 = AtomicU64::new(0);
static VTTBR_EL2: AtomicU64 = AtomicU64::new(0);

/// The page database and host stage-2, and the pool their tables come from.
struct HypState {
    mem: MemProtect<'static>,
    hal: PoolHal,
}

struct StateCell(core::cell::UnsafeCell<Option<HypState>>);
// SAFETY: every access goes through `with_state`, which holds STATE_LOCK.
unsafe impl Sync for StateCell {}
static STATE: StateCell = StateCell(core::cell::UnsafeCell::new(None));
static STATE_LOCK: AtomicBool = AtomicBool::new(false);

/// The VM table (~70 KiB: a static, never built on the 16 KiB EL2 stack),
/// under the same lock as STATE.
struct VmsCell(core::cell::UnsafeCell<VmTable>);
// SAFETY: every access goes through `with_state`, which holds STATE_LOCK.
unsafe impl Sync for VmsCell {}
static VMS: VmsCell = VmsCell(core::cell::UnsafeCell::new(VmTable::new()));

fn with_state<R>(f: impl FnOnce(&mut Option<HypState>) -> R) -> R {
    while STATE_LOCK
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    // SAFETY: STATE_LOCK is held, so this is the only reference.
    let r = f(unsafe { &mut *STATE.0.get() });
    STATE_LOCK.store(false, Ordering::Release);
    r
}

/// Page-table pages for the host stage-2, from the carve-out at the top of
/// RAM; freed pages go on a free list threaded through their first word.
pub struct PoolHal {
    next: u64,
    end: u64,
    free: u64,
    ram: PfnRange,
}

impl PageAllocator for PoolHal {
    fn alloc_zeroed_page(&mut self) -> Option<PhysAddr> {
        let pa = if self.free != 0 {
            let pa = self.free;
            self.free = self.page(PhysAddr::new(pa)).map_or(0, |p| p[0]);
            pa
        } else if self.next < self.end {
            self.next += PAGE;
            self.next - PAGE
        } else {
            return None;
        };
        let page = self.page_mut(PhysAddr::new(pa))?;
        page.fill(0);
        Some(PhysAddr::new(pa))
    }

    fn free_page(&mut self, pa: PhysAddr) {
        let head = self.free;
        if let Some(page) = self.page_mut(pa) {
            page[0] = head;
            self.free = pa.raw();
        }
    }

    fn page(&self, pa: PhysAddr) -> Option<&PageWords> {
        (pa.is_page_aligned() && self.ram.contains(pa.pfn())).then(|| {
            // SAFETY: an aligned page of RAM the database manages, identity
            // mapped at EL2; the core only asks for tables and pages it owns.
            unsafe { &*(pa.raw() as usize as *const PageWords) }
        })
    }

    fn page_mut(&mut self, pa: PhysAddr) -> Option<&mut PageWords> {
        (pa.is_page_aligned() && self.ram.contains(pa.pfn())).then(|| {
            // SAFETY: as for `page`; `&mut self` makes the borrow unique.
            unsafe { &mut *(pa.raw() as usize as *mut PageWords) }
        })
    }
}

impl TlbMaintenance for PoolHal {
    fn invalidate_ipa_range(&mut self, _vmid: Vmid, ipa: Ipa, pages: u64) {
        arch::tlbi_host_ipa_range(ipa.raw(), pages);
    }

    fn invalidate_vmid(&mut self, _vmid: Vmid) {
        arch::tlbi_host_ipa_range(0, 0);
    }
}

/// Stops the machine after a boot error the hyp cannot recover from: print
/// why, then PSCI SYSTEM_OFF so QEMU (or the board) does not hang silently.
fn refuse(why: core::fmt::Arguments<'_>) -> ! {
    hyp_println!("refusing to boot the host: {}", why);
    arch::smc([0x8400_0008, 0, 0, 0]);
    arch::halt()
}

#[no_mangle]
extern "C" fn rust_primary_entry(dtb_pa: u64, load_pa: u64) -> ! {
    // 1. Platform from the DTB.
    // SAFETY: x0 points at the DTB the loader placed in RAM; its header is
    // 40 bytes and `totalsize` bounds the rest (checked by the parser).
    let dtb_len = u64::from(u32::from_be_bytes(
        unsafe { arch::phys_slice(dtb_pa, 8) }
            .get(4..8)
            .and_then(|b| b.try_into().ok())
            .unwrap_or([0; 4]),
    ));
    // SAFETY: as above, bounded by the header's totalsize.
    let dtb =
        unsafe { arch::phys_slice(dtb_pa, usize::try_from(dtb_len.min(2 * MIB)).unwrap_or(0)) };
    let platform = match fdt::host_platform(dtb) {
        Ok(p) => p,
        Err(_) => arch::halt(), // no console to say why
    };
    crate::console::init(&platform.uart);
    let image = arch::image_layout();
    hyp_println!(
        "Cloister EL2 hypervisor {} (ABI {}.{}) at {:#x}, DTB at {:#x}, {} CPU(s), console {} at {:#x}",
        env!("CARGO_PKG_VERSION"),
        abi::ABI_VERSION.major,
        abi::ABI_VERSION.minor,
        load_pa,
        dtb_pa,
        platform.cpus.len(),
        platform.uart.kind,
        platform.uart.base.raw()
    );
    for (i, mpidr) in platform.cpus.as_slice().iter().enumerate().take(MAX_CPUS) {
        CPU_MPIDR[i].store(*mpidr & 0xff_00ff_ffff, Ordering::SeqCst);
    }
    CPU_COUNT.store(platform.cpus.len().min(MAX_CPUS), Ordering::SeqCst);
    let Some(ram) = platform
        .ram
        .as_slice()
        .iter()
        .map(|r| Ram {
            base: r.base.raw(),
            size: r.size,
        })
        .find(|r| r.base <= load_pa && load_pa < r.base + r.size)
    else {
        refuse(format_args!(
            "the hyp at {load_pa:#x} is not inside a /memory region"
        ));
    };
    let ram_end = ram.base + ram.size;
    let Some(ram_range) = PfnRange::new(Pfn::new(ram.base / PAGE), ram.size / PAGE) else {
        refuse(format_args!("the RAM bank at {:#x} is empty", ram.base));
    };
    let host_map = match HostMap::from_dtb(dtb, platform.ram.as_slice(), ram_range) {
        Ok(m) => m,
        Err(e) => refuse(format_args!(
            "cannot map the host's memory and devices: {e}"
        )),
    };

    // 2. Payload table.
    let hyp_size = image.end - image.start;
    let table_pa = load_pa
        + u64::try_from(payload::table_offset(
            usize::try_from(hyp_size).unwrap_or(0),
        ))
        .unwrap_or(0);
    // SAFETY: RAM from the table to the end of this RAM region, read only.
    let tail =
        unsafe { arch::phys_slice(table_pa, usize::try_from(ram_end - table_pa).unwrap_or(0)) };
    let table = match payload::parse(tail) {
        Ok(t) => t,
        Err(e) => refuse(format_args!(
            "payload table at {table_pa:#x} is invalid: {e}"
        )),
    };
    let kernel = table.kernel();
    let initramfs = table.initramfs().unwrap_or(&[]);
    let payload_end = table_pa + table.total_size();

    // 3. Carve-outs: the hyp image, and a pool at the top of RAM (the host
    // stage-2's tables, plus room for guests' tables).
    let ram_pages = ram.size / PAGE;
    let meta_bytes = ram_pages * core::mem::size_of::<PageMeta>() as u64;
    let table_pages = host_map.table_pages() + 64;
    let pool_size = align_up(meta_bytes + table_pages * PAGE, SZ_2M);
    let pool_base = ram_end - pool_size;

    // 4. Host layout.
    let kernel_image_size = kernel
        .get(16..24)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .filter(|&s| s != 0)
        .unwrap_or(kernel.len() as u64);
    let kernel_pa = align_up(image.end, SZ_2M);
    let initrd_pa = align_up(payload_end.max(kernel_pa + kernel_image_size), PAGE);
    let initrd_end = initrd_pa + initramfs.len() as u64;
    let new_dtb_pa = align_up(initrd_end, PAGE);
    let new_dtb_size = dtb_len + DTB_SLACK;
    if new_dtb_pa + new_dtb_size > pool_base {
        refuse(format_args!(
            "RAM too small: host layout ends at {:#x}, pool starts at {pool_base:#x}",
            new_dtb_pa + new_dtb_size
        ));
    }
    // SAFETY: destination above the payload (no overlap), RAM nobody uses yet.
    unsafe { arch::phys_copy(initrd_pa, initramfs.as_ptr() as u64, initramfs.len()) };
    // SAFETY: both ranges are RAM below the pool; `phys_copy` handles overlap.
    unsafe { arch::phys_copy(kernel_pa, kernel.as_ptr() as u64, kernel.len()) };

    // 5. EL2 stage-1, MMU on.
    let mut s1 = Stage1Builder::take();
    let mapped = s1
        .map(image.start, image.text_end, S1Attr::Text)
        .and_then(|()| s1.map(image.text_end, image.rodata_end, S1Attr::ReadOnly))
        .and_then(|()| s1.map(image.rodata_end, image.end, S1Attr::ReadWrite))
        .and_then(|()| s1.map(ram.base, image.start, S1Attr::ReadWrite))
        .and_then(|()| s1.map(image.end, ram_end, S1Attr::ReadWrite))
        .and_then(|()| {
            let uart = platform.uart.base.raw();
            s1.map(
                uart & !(PAGE - 1),
                align_up(uart + platform.uart.kind.span(), PAGE),
                S1Attr::Device,
            )
        });
    if let Err(e) = mapped {
        refuse(format_args!("cannot build the EL2 page tables: {e}"));
    }
    arch::clean_dcache_range(image.start, image.end);
    arch::enable_mmu(s1.root_pa());
    TTBR0_EL2.store(s1.root_pa(), Ordering::SeqCst);
    hyp_println!(
        "EL2 MMU on: text RX, rodata R, data RW-NX ({} table pages)",
        s1.tables_used()
    );

    // 6. Page database and host stage-2.
    let meta_pa = pool_base;
    // SAFETY: the pool is hyp memory from here on; the slice covers its head.
    let meta: &'static mut [PageMeta] = unsafe {
        let ptr = meta_pa as usize as *mut PageMeta;
        for i in 0..usize::try_from(ram_pages).unwrap_or(0) {
            ptr.add(i).write(PageMeta::HOST_OWNED);
        }
        core::slice::from_raw_parts_mut(ptr, usize::try_from(ram_pages).unwrap_or(0))
    };
    let hyp_range = PfnRange::new(Pfn::new(image.start / PAGE), hyp_size / PAGE);
    let pool_range = PfnRange::new(Pfn::new(pool_base / PAGE), pool_size / PAGE);
    let (Some(hyp_range), Some(pool_range)) = (hyp_range, pool_range) else {
        refuse(format_args!("memory ranges out of bounds"));
    };
    let mut hal = PoolHal {
        next: align_up(meta_pa + meta_bytes, PAGE),
        end: ram_end,
        free: 0,
        ram: ram_range,
    };
    let mut mem = match MemProtect::new(
        Pfn::new(ram.base / PAGE),
        meta,
        &[hyp_range, pool_range],
        &mut hal,
    ) {
        Ok(m) => m,
        Err(e) => refuse(format_args!("cannot build the host stage-2: {e}")),
    };
    for r in host_map.devices().iter() {
        if let Some(Err(e)) = r
            .start()
            .phys()
            .map(|pa| mem.map_host_mmio(pa, r.count(), &mut hal))
        {
            refuse(format_args!("cannot map host MMIO {r:?}: {e}"));
        }
    }
    for r in host_map.other_ram().iter() {
        if let Some(Err(e)) = r
            .start()
            .phys()
            .map(|pa| mem.map_host_unmanaged_ram(pa, r.count(), &mut hal))
        {
            refuse(format_args!("cannot map host RAM {r:?}: {e}"));
        }
    }
    let vttbr = mem.host_stage2().vttbr_el2();
    VTTBR_EL2.store(vttbr, Ordering::SeqCst);
    hyp_println!(
        "host stage-2 ready: hyp {:#x}..{:#x} and pool {:#x}..{:#x} withheld from the host",
        image.start,
        image.end,
        pool_base,
        ram_end
    );
    hyp_println!(
        "host stage-2: {} device range(s), {} MiB; {} RAM range(s) outside the page database, {} MiB, host-only; {} table pages",
        host_map.devices().len(),
        mib(host_map.devices()),
        host_map.other_ram().len(),
        mib(host_map.other_ram()),
        mem.host_stage2().table_pages()
    );

    // 7. Host DTB.
    let reserve = [
        fdt::Reservation {
            base: PhysAddr::new(image.start),
            size: align_up(hyp_size, PAGE),
        },
        fdt::Reservation {
            base: PhysAddr::new(pool_base),
            size: pool_size,
        },
    ];
    let edits = fdt::Edits {
        reserve: &reserve,
        initrd: Some(fdt::InitrdRange {
            start: PhysAddr::new(initrd_pa),
            end: PhysAddr::new(initrd_end),
        }),
        bootargs: None,
    };
    // SAFETY: RAM between the initramfs and the pool, reserved for the DTB above.
    let dst =
        unsafe { arch::phys_slice_mut(new_dtb_pa, usize::try_from(new_dtb_size).unwrap_or(0)) };
    if let Err(e) = fdt::rewrite(dtb, dst, &edits) {
        refuse(format_args!("cannot write the host DTB: {e}"));
    }
    with_state(|s| *s = Some(HypState { mem, hal }));

    hyp_println!(
        "entering the host at EL1: kernel {:#x} ({} KiB), initramfs {:#x} ({} KiB), DTB {:#x}",
        kernel_pa,
        kernel.len() / 1024,
        initrd_pa,
        initramfs.len() / 1024,
        new_dtb_pa
    );
    arch::clean_dcache_range(kernel_pa, kernel_pa + kernel.len() as u64);
    arch::init_el2_for_host(vttbr, stage2::vtcr_el2());
    arch::enter_host_el1(kernel_pa, new_dtb_pa)
}

#[no_mangle]
extern "C" fn rust_secondary_entry(cpu: u64) -> ! {
    let idx = usize::try_from(cpu).unwrap_or(usize::MAX);
    let (Some(entry), Some(ctx)) = (HOST_ENTRY.get(idx), HOST_CONTEXT.get(idx)) else {
        arch::halt()
    };
    arch::enable_mmu(TTBR0_EL2.load(Ordering::SeqCst));
    arch::init_el2_for_host(VTTBR_EL2.load(Ordering::SeqCst), stage2::vtcr_el2());
    arch::enter_host_el1(entry.load(Ordering::SeqCst), ctx.load(Ordering::SeqCst))
}

const PSCI_CPU_ON_32: u32 = 0x8400_0003;
const PSCI_CPU_ON_64: u32 = 0xc400_0003;
const PSCI_FEATURES: u32 = 0x8400_000a;
const PSCI_INVALID_PARAMETERS: u64 = (-2i64).cast_unsigned();

/// Relays a host PSCI call to the firmware. CPU_ON is rewritten so the new
/// CPU starts in the hyp (per-CPU EL2 setup) and only then enters the host
/// at the host's entry point with the host's context.
pub fn psci(fid: u32, args: [u64; 3]) -> [u64; 4] {
    match fid {
        PSCI_CPU_ON_32 | PSCI_CPU_ON_64 => {
            let count = CPU_COUNT.load(Ordering::SeqCst);
            let target = args[0] & 0xff_00ff_ffff;
            let Some(idx) = (0..count).find(|&i| CPU_MPIDR[i].load(Ordering::SeqCst) == target)
            else {
                return [PSCI_INVALID_PARAMETERS, 0, 0, 0];
            };
            HOST_ENTRY[idx].store(args[1], Ordering::SeqCst);
            HOST_CONTEXT[idx].store(args[2], Ordering::SeqCst);
            let r = arch::smc([
                u64::from(fid),
                args[0],
                arch::secondary_entry_pa(),
                idx as u64,
            ]);
            [r[0], 0, 0, 0]
        }
        // The host may ask whether SMCCC_VERSION exists (it does: the hyp
        // answers it), whatever the firmware says.
        PSCI_FEATURES if args[0] == 0x8000_0000 => [0, 0, 0, 0],
        _ => arch::smc([u64::from(fid), args[0], args[1], args[2]]),
    }
}

/// The hyp's state was not set up (a call before boot finished).
#[derive(Debug)]
pub struct StateGuardError;

/// Runs `f` with the page database, the VM table and the page pool, under
/// the one state lock.
pub fn with_vms<R>(
    f: impl FnOnce(&mut MemProtect<'static>, &mut VmTable, &mut PoolHal) -> R,
) -> Result<R, StateGuardError> {
    with_state(|s| match s {
        Some(state) => {
            // SAFETY: STATE_LOCK is held (we are inside `with_state`), so
            // this is the only reference to the VM table.
            let vms = unsafe { &mut *VMS.0.get() };
            Ok(f(&mut state.mem, vms, &mut state.hal))
        }
        None => Err(StateGuardError),
    })
}

/// Answers a non-PSCI SMCCC call from the host through the portable core;
/// VCPU_RUN runs the guest with the state lock released.
pub fn host_hypercall(regs: &[u64; 8]) -> [u64; 4] {
    let outcome = with_vms(|mem, vms, hal| hypercall::handle_host_hvc(regs, mem, vms, hal));
    match outcome {
        Ok(hypercall::HostOutcome::Return(r)) => r,
        Ok(hypercall::HostOutcome::RunVcpu { handle, vcpu, run }) => {
            crate::guest::run_vcpu(handle, vcpu, run)
        }
        Err(StateGuardError) => [abi::ret::NOT_SUPPORTED, 0, 0, 0],
    }
}
