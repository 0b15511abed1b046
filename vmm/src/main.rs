//! `cloister-vmm`: run a VM on Cloister.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use cloister_vmm::arch::layout::{MAX_MEM_MIB, MIN_MEM_MIB};

/// Run a normal or protected VM on the Cloister hypervisor through
/// /dev/cloister (a subset of the KVM ioctl ABI).
#[derive(Debug, Parser)]
#[command(name = "cloister-vmm", version)]
struct Cli {
    /// Guest kernel: an arm64 Linux Image or a raw binary.
    #[arg(long)]
    kernel: PathBuf,
    /// Guest initramfs.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Guest kernel command line.
    #[arg(long, default_value = "console=ttyAMA0")]
    cmdline: String,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(MIN_MEM_MIB..=MAX_MEM_MIB))]
    mem: u64,
    /// vCPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    cpus: u32,
    /// A protected VM (its memory is donated to the hypervisor).
    #[arg(long)]
    protected: bool,
    /// Where guest RAM comes from: `anon` (pKVM's pinned anonymous
    /// memory) or `guest-memfd` (an fd the host cannot read while private).
    /// Default: the image's /lib/cloister/vmm.conf (the stack's [vm]
    /// table; guest-memfd without one) for protected VMs if the device
    /// offers guest_memfd, else anon.
    #[arg(long, value_enum)]
    memory: Option<Memory>,
    /// The KVM-compatible device to use.
    #[arg(long, default_value = "/dev/cloister")]
    device: PathBuf,
}

/// `--memory` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Memory {
    /// The VMM's anonymous mapping, pinned and donated on first touch.
    Anon,
    /// A guest_memfd mapped by the VMM for in-place sharing.
    GuestMemfd,
}

#[cfg(target_arch = "aarch64")]
fn main() -> ExitCode {
    use cloister_vmm::memory::{from_conf, CONF_PATH};
    use cloister_vmm::vstate::MemoryModel;
    let cli = Cli::parse();
    // The image's defaults (the stack's [vm] table); none outside a
    // Cloister host image.
    let configured_memory = match std::fs::read_to_string(CONF_PATH) {
        Ok(text) => match from_conf(&text) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("cloister-vmm: {e}");
                return ExitCode::FAILURE;
            }
        },
        Err(_) => None,
    };
    let cfg = cloister_vmm::vstate::VmConfig {
        device: cli.device,
        kernel: cli.kernel,
        initrd: cli.initrd,
        cmdline: cli.cmdline,
        mem_mib: cli.mem,
        vcpus: cli.cpus,
        protected: cli.protected,
        memory: cli.memory.map(|m| match m {
            Memory::Anon => MemoryModel::Anon,
            Memory::GuestMemfd => MemoryModel::GuestMemfd,
        }),
        configured_memory,
    };
    match cloister_vmm::vstate::run(&cfg, std::io::stdout()) {
        Ok(cloister_vmm::vstate::GuestEnd::PowerOff) => ExitCode::SUCCESS,
        Ok(end) => {
            eprintln!("cloister-vmm: guest ended with {end:?}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("cloister-vmm: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(target_arch = "aarch64"))]
fn main() -> ExitCode {
    let _ = Cli::parse();
    eprintln!("cloister-vmm runs on aarch64 hosts (the Cloister host); build it with `cargo xtask build-image`");
    ExitCode::FAILURE
}
