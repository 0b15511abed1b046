//! The VM and its vCPUs on `/dev/cloister` (aarch64 hosts only).
//!
//! Each vCPU runs on its own thread. Secondary vCPUs are created powered
//! off; their threads wait in `KVM_RUN` until the guest starts them with
//! PSCI CPU_ON. The first system event (or failure) ends the run: the other
//! threads are kicked out of `KVM_RUN` with a signal.

use std::ffi::CString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_create_guest_memfd, kvm_userspace_memory_region2, kvm_vcpu_init, KVM_ARM_VCPU_POWER_OFF,
    KVM_MEM_GUEST_MEMFD, KVM_REG_ARM_CORE, KVM_REG_SIZE_U64,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::raw::c_ulong;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vm_memory::{FileOffset, GuestRegionMmap};

use crate::arch::fdt::{create_fdt, FdtConfig};
use crate::arch::layout::{dma_pool, fdt_addr, RAM_BASE};
use crate::devices::gic::{kvm_irq_line_spi, Gic, GicError};
use crate::devices::setup::{spawn_input_reader, DeviceOptions, DevicePlan, Devices, SetupError};
use crate::devices::test_dev::{self, TestDevice};
use crate::devices::virtio::MmioTransport;
use crate::devices::{Bus, Claim};
use crate::guest_mem::{GuestRam, SharedPages};
use crate::loader::{load_kernel, LoadError};

/// `KVM_CREATE_VM` type of a protected VM (mainline and Android).
pub const KVM_VM_TYPE_ARM_PROTECTED: u64 = 1 << 31;
const KVM_REG_ARM64: u64 = 0x6000_0000_0000_0000;

/// What to run.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The KVM-compatible device (`/dev/cloister`).
    pub device: PathBuf,
    /// Guest kernel: arm64 Image or raw binary.
    pub kernel: PathBuf,
    /// Guest initramfs, placed after the kernel.
    pub initrd: Option<PathBuf>,
    /// Guest kernel command line.
    pub cmdline: String,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// A protected VM (memory donated to the hyp) instead of a normal one.
    pub protected: bool,
    /// Where guest RAM comes from; `None`: [`MemoryModel::default_for`].
    pub memory: Option<MemoryModel>,
    /// The image's configured default (`vmm.conf`), used when `memory` is
    /// `None`.
    pub configured_memory: Option<MemoryModel>,
    /// virtio devices (console, disk).
    pub devices: DeviceOptions,
    /// Size of the restricted DMA pool the virtio devices use (MiB).
    pub dma_pool_mib: u64,
}

pub use crate::memory::{MemoryModel, GUEST_MEMFD_FLAG_MMAP};

/// Why the VM could not be created or run.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The device could not be opened.
    #[error("opening {device}: {source} (is this host running on Cloister with its host driver?)")]
    Open {
        /// The device path.
        device: String,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// An ioctl failed.
    #[error("{what}: {source}")]
    Kvm {
        /// Which step.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be set up.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The kernel could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The guest did something the VMM does not handle.
    #[error("unexpected exit: {0}")]
    UnexpectedExit(String),
    /// The guest touched memory the host cannot give it (a guest_memfd
    /// page punched out, or unpinnable memory): `KVM_RUN` failed with
    /// EFAULT and `KVM_EXIT_MEMORY_FAULT`.
    #[error("vCPU {vcpu}: guest memory at {gpa:#x} (+{size:#x}) is gone (KVM_EXIT_MEMORY_FAULT)")]
    MemoryFault {
        /// The vCPU.
        vcpu: usize,
        /// The guest-physical address.
        gpa: u64,
        /// The size.
        size: u64,
    },
    /// A vCPU thread could not be started.
    #[error("starting a vCPU thread: {0}")]
    Thread(String),
    /// A device's host file could not be opened.
    #[error(transparent)]
    Devices(#[from] SetupError),
    /// The interrupt controller could not be built.
    #[error("GIC: {0}")]
    Gic(#[from] GicError),
    /// The restricted DMA pool does not fit in guest RAM.
    #[error("--dma-pool {pool_mib} MiB does not fit in {mem_mib} MiB of guest RAM (it must stay above the first quarter, below the DTB)")]
    DmaPool {
        /// Pool size (MiB).
        pool_mib: u64,
        /// Guest RAM (MiB).
        mem_mib: u64,
    },
}

/// How the guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestEnd {
    /// PSCI SYSTEM_OFF (or KVM_SYSTEM_EVENT_SHUTDOWN).
    PowerOff,
    /// PSCI SYSTEM_RESET.
    Reset,
    /// Another system event, with its KVM type.
    Other(u32),
}

fn ioctl<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, VmmError> {
    r.map_err(|source| VmmError::Kvm { what, source })
}

/// A KVM register ID for a core register at byte `offset` of `kvm_regs`.
const fn core_reg(offset: u64) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE as u64 | (offset / 4)
}
/// `kvm_regs.regs.regs[0]`.
const REG_X0: u64 = core_reg(0);
/// `kvm_regs.regs.pc` (after 31 general registers and sp).
const REG_PC: u64 = core_reg(32 * 8);

/// What the guest did, counted by the vCPU threads: each is one exit to
/// the VMM (for "exits per I/O request" benchmarks).
#[derive(Debug, Default)]
pub struct ExitCounts {
    /// MEM_SHARE notices (KVM_EXIT_HYPERCALL).
    pub shares: AtomicU64,
    /// MEM_UNSHARE notices.
    pub unshares: AtomicU64,
    /// MMIO accesses no device claimed.
    pub unclaimed_mmio: AtomicU64,
    /// GICD / GICR accesses.
    pub gic_mmio: AtomicU64,
    /// virtio-mmio register accesses other than notifies.
    pub virtio_mmio: AtomicU64,
    /// virtio-mmio `QueueNotify` writes.
    pub virtio_notifies: AtomicU64,
    /// PL011 accesses.
    pub uart_mmio: AtomicU64,
    /// Test-device accesses.
    pub test_dev_mmio: AtomicU64,
    /// `KVM_RUN` ending with EINTR (kicks, signals).
    pub interrupted: AtomicU64,
}

impl ExitCounts {
    /// Counts one MMIO exit by the device that took it.
    pub fn mmio(&self, claim: Claim) {
        let counter = match claim {
            Claim::Uart => &self.uart_mmio,
            Claim::TestDev => &self.test_dev_mmio,
            Claim::Gic => &self.gic_mmio,
            Claim::Virtio => &self.virtio_mmio,
            Claim::VirtioNotify => &self.virtio_notifies,
            Claim::Unclaimed => &self.unclaimed_mmio,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A created VM with its guest loaded, not yet running.
pub struct Machine {
    vm: Arc<VmFd>,
    ram: Arc<GuestRam>,
    vcpus: Vec<VcpuFd>,
    model: MemoryModel,
    gic: Arc<Gic>,
    devices: Devices,
    console_reads_stdin: bool,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("vcpus", &self.vcpus.len())
            .finish_non_exhaustive()
    }
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn ignore_signal(_: libc::c_int) {}

fn install_kick_handler() {
    // SAFETY: a zeroed sigaction with a handler that does nothing and no
    // SA_RESTART, so a blocked KVM_RUN returns EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(kick_signal(), &sa, std::ptr::null_mut());
    }
}

impl Machine {
    /// Opens the device, creates the VM and its memory, loads the guest,
    /// writes the DTB and creates the vCPUs (vCPU 0 at the entry point with
    /// `x0` = the DTB; the others powered off).
    ///
    /// # Errors
    /// [`VmmError`] naming the step that failed.
    pub fn create(cfg: &VmConfig) -> Result<Self, VmmError> {
        let device = CString::new(cfg.device.as_os_str().as_encoded_bytes()).map_err(|_| {
            VmmError::Memory(format!("device path {} contains NUL", cfg.device.display()))
        })?;
        let kvm = Kvm::new_with_path(&device).map_err(|source| VmmError::Open {
            device: cfg.device.display().to_string(),
            source,
        })?;
        let vm_type = if cfg.protected {
            KVM_VM_TYPE_ARM_PROTECTED
        } else {
            0
        };
        // Host files first: a bad --disk is reported before a VM exists.
        let plan = DevicePlan::open(&cfg.devices)?;
        let vm = Arc::new(ioctl("KVM_CREATE_VM", kvm.create_vm_with_type(vm_type))?);

        let mem_size = cfg.mem_mib << 20;
        let virtio = plan.slots();
        let pool = if virtio.is_empty() {
            None
        } else {
            let pool = dma_pool(mem_size, cfg.dma_pool_mib << 20);
            Some(pool.ok_or(VmmError::DmaPool {
                pool_mib: cfg.dma_pool_mib,
                mem_mib: cfg.mem_mib,
            })?)
        };
        // The initramfs must end below the pool (or the DTB).
        let initrd_limit = pool.map_or(fdt_addr(mem_size), |(base, _)| base);
        let size = usize::try_from(mem_size).unwrap_or(usize::MAX);
        let model = cfg.memory.unwrap_or_else(|| {
            let cap = vm.check_extension_raw(c_ulong::from(kvm_bindings::KVM_CAP_GUEST_MEMFD));
            MemoryModel::default_for(cfg.protected, cap > 0, cfg.configured_memory)
        });
        let mem = match model {
            MemoryModel::Anon => GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), size)])
                .map_err(|e| VmmError::Memory(e.to_string()))?,
            MemoryModel::GuestMemfd => guest_memfd_memory(&vm, mem_size)?,
        };
        dont_fork(&mem)?;
        register_memory(&vm, &mem, model)?;
        let loaded = load_kernel(&mem, mem_size, &cfg.kernel)?;
        if loaded.end > initrd_limit {
            return Err(VmmError::Memory(format!(
                "the kernel ends at {:#x}, past the DMA pool or DTB at {initrd_limit:#x}: give the guest more --mem",
                loaded.end
            )));
        }
        let initrd = match &cfg.initrd {
            Some(path) => Some(load_initrd(&mem, path, loaded.end, initrd_limit)?),
            None => None,
        };
        let dtb = create_fdt(&FdtConfig {
            vcpus: cfg.vcpus,
            mem_size,
            cmdline: cfg.cmdline.clone(),
            initrd,
            dma_pool: pool,
            virtio,
        })
        .map_err(|e| VmmError::Memory(format!("building the DTB: {e}")))?;
        mem.write_slice(&dtb, GuestAddress(fdt_addr(mem_size)))
            .map_err(|e| VmmError::Memory(e.to_string()))?;

        let mut vcpus = Vec::new();
        for i in 0..cfg.vcpus {
            vcpus.push(create_vcpu(&vm, i, loaded.entry, fdt_addr(mem_size))?);
        }
        // A protected guest shares pages one by one (MEM_SHARE); a normal
        // guest's memory is all the host's to read.
        let shared = if cfg.protected {
            SharedPages::none(RAM_BASE, mem_size)
        } else {
            SharedPages::all(RAM_BASE, mem_size)
        };
        let ram = Arc::new(GuestRam::new(mem, shared));
        let injector_vm = Arc::clone(&vm);
        let injector = move |vcpu: u32, intid: u32| {
            injector_vm
                .set_irq_line(kvm_irq_line_spi(vcpu, intid), true)
                .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
        };
        let gic = Arc::new(Gic::new(cfg.vcpus, Box::new(injector))?);
        let console_reads_stdin = plan.console_reads_stdin();
        let devices = plan.build(&ram, &gic, cfg.protected);
        Ok(Self {
            vm,
            ram,
            vcpus,
            model,
            gic,
            devices,
            console_reads_stdin,
        })
    }

    /// The guest's RAM as this process maps it (for a protected VM, pages
    /// the guest has touched are the guest's: reading them faults).
    pub fn memory(&self) -> &GuestMemoryMmap {
        self.ram.backend()
    }

    /// Guest RAM as devices see it: only the pages the guest shared.
    pub fn guest_ram(&self) -> &Arc<GuestRam> {
        &self.ram
    }

    /// The interrupt controller.
    pub fn gic(&self) -> &Arc<Gic> {
        &self.gic
    }

    /// The virtio transports, in slot order.
    pub fn virtio(&self) -> Vec<Arc<Mutex<MmioTransport>>> {
        self.devices.transports.clone()
    }

    /// Where its RAM comes from.
    pub fn memory_model(&self) -> MemoryModel {
        self.model
    }

    /// The VM fd (for tests of the ioctl ABI).
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm
    }

    /// Runs every vCPU on its own thread until the guest powers off or
    /// resets (or a vCPU fails); then stops the others.
    ///
    /// # Errors
    /// The first vCPU's failure, naming the vCPU.
    pub fn run<W: Write + Send>(
        &mut self,
        bus: &Bus<W>,
        counts: &ExitCounts,
    ) -> Result<GuestEnd, VmmError> {
        install_kick_handler();
        let outcome: Mutex<Option<Result<GuestEnd, VmmError>>> = Mutex::new(None);
        let stop = AtomicBool::new(false);
        // Each vCPU thread says it ended; the first message starts the stop.
        let (ended, first_end) = std::sync::mpsc::channel::<()>();
        // Each thread's pthread_t, for kicks.
        // (As an address-sized integer: musl's pthread_t is a pointer.)
        let ids: Vec<Mutex<Option<usize>>> = self.vcpus.iter().map(|_| Mutex::new(None)).collect();
        let shared = self.ram.shared();
        std::thread::scope(|s| {
            let mut threads = Vec::new();
            for ((index, vcpu), id) in self.vcpus.iter_mut().enumerate().zip(&ids) {
                let (outcome, stop, ended) = (&outcome, &stop, ended.clone());
                let t = std::thread::Builder::new()
                    .name(format!("vcpu{index}"))
                    .spawn_scoped(s, move || {
                        if let Ok(mut id) = id.lock() {
                            // SAFETY: pthread_self has no preconditions.
                            *id = Some(unsafe { libc::pthread_self() } as usize);
                        }
                        let r = run_vcpu(index, vcpu, bus, counts, shared, stop);
                        if let Some(r) = r {
                            if let Ok(mut o) = outcome.lock() {
                                o.get_or_insert(r);
                            }
                        }
                        stop.store(true, Ordering::SeqCst);
                        let _ = ended.send(());
                    });
                match t {
                    Ok(t) => threads.push((t, id)),
                    Err(e) => {
                        stop.store(true, Ordering::SeqCst);
                        if let Ok(mut o) = outcome.lock() {
                            o.get_or_insert(Err(VmmError::Thread(e.to_string())));
                        }
                    }
                }
            }
            // Wait for the first end (or for a spawn failure, which set
            // `stop`), then kick the rest out of KVM_RUN until they are
            // gone: a kick that lands outside KVM_RUN is lost, so keep
            // kicking.
            drop(ended);
            if !stop.load(Ordering::SeqCst) {
                let _ = first_end.recv();
            }
            while threads.iter().any(|(t, _)| !t.is_finished()) {
                for (_, id) in threads.iter().filter(|(t, _)| !t.is_finished()) {
                    let Ok(id) = id.lock() else { continue };
                    if let Some(id) = *id {
                        // SAFETY: the thread is alive (scoped, not finished),
                        // so its pthread_t is valid; the handler is a no-op.
                        unsafe { libc::pthread_kill(id as libc::pthread_t, kick_signal()) };
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
        outcome
            .into_inner()
            .ok()
            .flatten()
            .unwrap_or_else(|| Err(VmmError::UnexpectedExit("no vCPU reported an end".into())))
    }
}

/// Creates the VM, loads the guest and runs it until it powers off, with
/// the console on `console` and test-device events logged to stderr.
///
/// # Errors
/// [`VmmError`] naming the step that failed.
pub fn run(cfg: &VmConfig, console: impl Write + Send) -> Result<GuestEnd, VmmError> {
    let mut machine = Machine::create(cfg)?;
    eprintln!(
        "cloister-vmm: {} VM, {} vCPU(s), {} MiB of {} memory",
        if cfg.protected { "protected" } else { "normal" },
        cfg.vcpus,
        cfg.mem_mib,
        machine.memory_model().name()
    );
    let test = TestDevice::new(Box::new(|e, v| {
        eprintln!(
            "cloister-vmm: guest event {} {v:#x}",
            test_dev::event::name(e)
        );
        0
    }));
    let bus = Bus::new(console, test)
        .with_gic(Arc::clone(machine.gic()))
        .with_virtio(machine.virtio());
    // Keeps the terminal's settings until the guest is gone.
    let _raw = machine
        .console_reads_stdin
        .then(|| crate::term::RawGuard::new(libc::STDIN_FILENO))
        .flatten();
    if machine.console_reads_stdin {
        if let Some((input, transport)) = &machine.devices.console_input {
            // Detached: it ends with stdin, or with the process.
            spawn_input_reader(std::io::stdin(), input.clone(), Arc::clone(transport))
                .map_err(|e| VmmError::Thread(format!("console input: {e}")))?;
        }
    }
    let counts = ExitCounts::default();
    let end = machine.run(&bus, &counts);
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    eprintln!(
        "cloister-vmm: guest shared {} and unshared {} pages; {} unclaimed MMIO accesses",
        n(&counts.shares),
        n(&counts.unshares),
        n(&counts.unclaimed_mmio)
    );
    eprintln!(
        "cloister-vmm: exits: gic {} virtio {} notify {} uart {} test {} eintr {}; SPIs injected {}",
        n(&counts.gic_mmio),
        n(&counts.virtio_mmio),
        n(&counts.virtio_notifies),
        n(&counts.uart_mmio),
        n(&counts.test_dev_mmio),
        n(&counts.interrupted),
        n(&machine.gic().stats().injected)
    );
    for (slot, t) in machine.virtio().iter().enumerate() {
        let t = t.lock().unwrap_or_else(|e| e.into_inner());
        let stats = t.stats();
        eprintln!(
            "cloister-vmm: virtio slot {slot} ({t:?}): {} notifies, {} interrupts, {} errors",
            n(&stats.notifies),
            n(&stats.interrupts),
            n(&stats.errors)
        );
    }
    end
}

/// One vCPU's loop; `None` when stopped from outside.
fn run_vcpu<W: Write>(
    index: usize,
    vcpu: &mut VcpuFd,
    bus: &Bus<W>,
    counts: &ExitCounts,
    shared: &SharedPages,
    stop: &AtomicBool,
) -> Option<Result<GuestEnd, VmmError>> {
    loop {
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        let exit = match vcpu.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                counts.interrupted.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(source) => {
                return Some(Err(VmmError::Kvm {
                    what: "KVM_RUN",
                    source,
                }))
            }
        };
        match exit {
            // A kick that ended KVM_RUN without an error (as EINTR does).
            VcpuExit::Intr => {
                counts.interrupted.fetch_add(1, Ordering::Relaxed);
            }
            VcpuExit::MmioRead(addr, data) => counts.mmio(bus.read(addr, data)),
            VcpuExit::MmioWrite(addr, data) => counts.mmio(bus.write(addr, data)),
            VcpuExit::SystemEvent(kind, _) => {
                return Some(Ok(match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => GuestEnd::PowerOff,
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => GuestEnd::Reset,
                    other => GuestEnd::Other(other),
                }));
            }
            VcpuExit::MemoryFault { gpa, size, .. } => {
                return Some(Err(VmmError::MemoryFault {
                    vcpu: index,
                    gpa,
                    size,
                }))
            }
            VcpuExit::Hypercall(h) => {
                // Devices may touch the page from now on (share), or not
                // any more (unshare: the guest already lost it to the hyp).
                match h.nr {
                    MEM_SHARE_FUNC_ID => {
                        shared.share(h.args[0]);
                        counts.shares.fetch_add(1, Ordering::Relaxed);
                    }
                    MEM_UNSHARE_FUNC_ID => {
                        shared.unshare(h.args[0]);
                        counts.unshares.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                *h.ret = 0;
            }
            other => {
                return Some(Err(VmmError::UnexpectedExit(format!(
                    "vCPU {index}: {other:?}"
                ))))
            }
        }
    }
}

/// `ARM_SMCCC_VENDOR_HYP_KVM_MEM_SHARE_FUNC_ID`: the `nr` of a share notice.
pub const MEM_SHARE_FUNC_ID: u64 = 0xc600_0003;
/// `ARM_SMCCC_VENDOR_HYP_KVM_MEM_UNSHARE_FUNC_ID`.
pub const MEM_UNSHARE_FUNC_ID: u64 = 0xc600_0004;

/// Keeps guest memory out of child processes (crosvm does the same): a
/// fork would copy the pages the host driver pinned for the guest, and a
/// protected guest's pages are not the host's to read.
fn dont_fork(mem: &GuestMemoryMmap) -> Result<(), VmmError> {
    for region in mem.iter() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| VmmError::Memory(e.to_string()))?;
        let len = usize::try_from(region.len()).unwrap_or(usize::MAX);
        // SAFETY: advice on a mapping `mem` owns; it changes no contents.
        if unsafe { libc::madvise(host.cast(), len, libc::MADV_DONTFORK) } != 0 {
            return Err(VmmError::Memory(format!(
                "madvise(MADV_DONTFORK): {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

/// Guest RAM in a guest_memfd the VMM maps (shared) to load the guest.
fn guest_memfd_memory(vm: &VmFd, mem_size: u64) -> Result<GuestMemoryMmap, VmmError> {
    let fd = ioctl(
        "KVM_CREATE_GUEST_MEMFD",
        vm.create_guest_memfd(kvm_create_guest_memfd {
            size: mem_size,
            flags: GUEST_MEMFD_FLAG_MMAP,
            ..Default::default()
        }),
    )?;
    // SAFETY: the ioctl returned a new fd that nothing else owns.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    let size = usize::try_from(mem_size).unwrap_or(usize::MAX);
    let region =
        GuestRegionMmap::from_range(GuestAddress(RAM_BASE), size, Some(FileOffset::new(file, 0)))
            .map_err(|e| VmmError::Memory(format!("mapping the guest_memfd: {e}")))?;
    GuestMemoryMmap::from_regions(vec![region]).map_err(|e| VmmError::Memory(e.to_string()))
}

fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap, model: MemoryModel) -> Result<(), VmmError> {
    for (slot, region) in (0u32..).zip(mem.iter()) {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| VmmError::Memory(e.to_string()))?;
        let gmem = match (model, region.file_offset()) {
            (MemoryModel::GuestMemfd, Some(f)) => Some((f.file().as_raw_fd(), f.start())),
            (MemoryModel::GuestMemfd, None) => {
                return Err(VmmError::Memory("guest_memfd region without its fd".into()))
            }
            (MemoryModel::Anon, _) => None,
        };
        let region = kvm_userspace_memory_region2 {
            slot,
            flags: if gmem.is_some() {
                KVM_MEM_GUEST_MEMFD
            } else {
                0
            },
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            guest_memfd_offset: gmem.map_or(0, |(_, off)| off),
            guest_memfd: gmem.map_or(0, |(fd, _)| u32::try_from(fd).unwrap_or(u32::MAX)),
            ..Default::default()
        };
        // SAFETY: the mapping belongs to `mem`, which outlives the VM in `run`.
        ioctl("KVM_SET_USER_MEMORY_REGION2", unsafe {
            vm.set_user_memory_region2(region)
        })?;
    }
    Ok(())
}

fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    after: u64,
    limit: u64,
) -> Result<(u64, u64), VmmError> {
    let data = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let start = after.div_ceil(0x1000) * 0x1000;
    let end = start + data.len() as u64;
    if end > limit {
        return Err(VmmError::Memory(format!(
            "initramfs {} does not fit below the DTB",
            path.display()
        )));
    }
    mem.write_slice(&data, GuestAddress(start))
        .map_err(|e| VmmError::Memory(e.to_string()))?;
    Ok((start, end))
}

fn create_vcpu(vm: &VmFd, index: u32, entry: u64, fdt: u64) -> Result<VcpuFd, VmmError> {
    let vcpu = ioctl("KVM_CREATE_VCPU", vm.create_vcpu(u64::from(index)))?;
    let mut init = kvm_vcpu_init::default();
    ioctl(
        "KVM_ARM_PREFERRED_TARGET",
        vm.get_preferred_target(&mut init),
    )?;
    init.features[0] |= 1 << kvm_bindings::KVM_ARM_VCPU_PSCI_0_2;
    if index > 0 {
        init.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
    }
    ioctl("KVM_ARM_VCPU_INIT", vcpu.vcpu_init(&init))?;
    if index == 0 {
        ioctl(
            "KVM_SET_ONE_REG(pc)",
            vcpu.set_one_reg(REG_PC, &entry.to_le_bytes()),
        )?;
        ioctl(
            "KVM_SET_ONE_REG(x0)",
            vcpu.set_one_reg(REG_X0, &fdt.to_le_bytes()),
        )?;
    }
    Ok(vcpu)
}
