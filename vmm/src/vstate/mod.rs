//! The VM and its vCPUs on `/dev/cloister` (aarch64 hosts only).
//!
//! Today one vCPU runs on the VMM's main thread: enough for a bare-metal
//! guest. Secondary vCPUs are created powered off, for the guest to start
//! with PSCI CPU_ON (vCPU threads come with the Linux guest).

use std::ffi::CString;
use std::io::Write;
use std::path::{Path, PathBuf};

use kvm_bindings::{
    kvm_userspace_memory_region, kvm_vcpu_init, KVM_ARM_VCPU_POWER_OFF, KVM_REG_ARM_CORE,
    KVM_REG_SIZE_U64,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::fdt::{create_fdt, FdtConfig};
use crate::arch::layout::{fdt_addr, RAM_BASE, UART_BASE, UART_SIZE};
use crate::devices::pl011::Pl011;
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
}

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
    #[error("unexpected exit from vCPU 0: {0}")]
    UnexpectedExit(String),
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

/// Creates the VM, loads the guest and runs it until it powers off.
///
/// # Errors
/// [`VmmError`] naming the step that failed.
pub fn run(cfg: &VmConfig, console: impl Write) -> Result<GuestEnd, VmmError> {
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
    let vm = ioctl("KVM_CREATE_VM", kvm.create_vm_with_type(vm_type))?;

    let mem_size = cfg.mem_mib << 20;
    let mem = GuestMemoryMmap::from_ranges(&[(
        GuestAddress(RAM_BASE),
        usize::try_from(mem_size).unwrap_or(usize::MAX),
    )])
    .map_err(|e| VmmError::Memory(e.to_string()))?;
    register_memory(&vm, &mem)?;
    let loaded = load_kernel(&mem, mem_size, &cfg.kernel)?;
    let initrd = match &cfg.initrd {
        Some(path) => Some(load_initrd(&mem, path, loaded.end, fdt_addr(mem_size))?),
        None => None,
    };
    let dtb = create_fdt(&FdtConfig {
        vcpus: cfg.vcpus,
        mem_size,
        cmdline: cfg.cmdline.clone(),
        initrd,
    })
    .map_err(|e| VmmError::Memory(format!("building the DTB: {e}")))?;
    mem.write_slice(&dtb, GuestAddress(fdt_addr(mem_size)))
        .map_err(|e| VmmError::Memory(e.to_string()))?;

    let mut vcpus = Vec::new();
    for i in 0..cfg.vcpus {
        vcpus.push(create_vcpu(&vm, i, loaded.entry, fdt_addr(mem_size))?);
    }
    let mut uart = Pl011::new(console);
    let boot = vcpus
        .first_mut()
        .ok_or_else(|| VmmError::UnexpectedExit("no vCPU".into()))?;
    loop {
        match ioctl("KVM_RUN", boot.run())? {
            VcpuExit::MmioRead(addr, data)
                if (UART_BASE..UART_BASE + UART_SIZE).contains(&addr) =>
            {
                uart.read(addr - UART_BASE, data);
            }
            VcpuExit::MmioWrite(addr, data)
                if (UART_BASE..UART_BASE + UART_SIZE).contains(&addr) =>
            {
                uart.write(addr - UART_BASE, data);
            }
            VcpuExit::MmioRead(_, data) => data.fill(0),
            VcpuExit::MmioWrite(..) => {}
            VcpuExit::SystemEvent(kind, _) => {
                return Ok(match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => GuestEnd::PowerOff,
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => GuestEnd::Reset,
                    other => GuestEnd::Other(other),
                });
            }
            VcpuExit::Hypercall(h) => {
                // Share/unshare notices: nothing to do for a bare-metal guest.
                *h.ret = 0;
            }
            other => return Err(VmmError::UnexpectedExit(format!("{other:?}"))),
        }
    }
}

fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmmError> {
    for (slot, region) in (0u32..).zip(mem.iter()) {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| VmmError::Memory(e.to_string()))?;
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the mapping belongs to `mem`, which outlives the VM in `run`.
        ioctl("KVM_SET_USER_MEMORY_REGION", unsafe {
            vm.set_user_memory_region(region)
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
