//! `cloister-vmm`: run a VM on Cloister.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use cloister_vmm::arch::layout::{DEFAULT_DMA_POOL_MIB, MAX_MEM_MIB, MIN_MEM_MIB};

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
    /// A protected VM (its memory is donated to the hypervisor; devices
    /// see only what the guest shares).
    #[arg(long, conflicts_with = "normal")]
    protected: bool,
    /// A normal VM (the default; the host can read all its memory).
    #[arg(long)]
    normal: bool,
    /// A virtio-blk disk backed by this file (read-only if it cannot be
    /// opened for writing).
    #[arg(long, value_name = "PATH")]
    disk: Option<PathBuf>,
    /// A virtio console: `-` for the VMM's stdout and stdin, or a file
    /// to write the guest's output to (guest: console=hvc0).
    #[arg(long, value_name = "PATH|-")]
    console: Option<String>,
    /// Size of the restricted DMA pool the virtio devices bounce through
    /// (MiB; only with --disk or --console).
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_DMA_POOL_MIB,
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    dma_pool: u64,
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
        protected: cli.protected && !cli.normal,
        memory: cli.memory.map(|m| match m {
            Memory::Anon => MemoryModel::Anon,
            Memory::GuestMemfd => MemoryModel::GuestMemfd,
        }),
        configured_memory,
        devices: cloister_vmm::devices::setup::DeviceOptions {
            console: cli
                .console
                .as_deref()
                .map(cloister_vmm::devices::setup::ConsoleTarget::parse),
            disk: cli.disk,
        },
        dma_pool_mib: cli.dma_pool,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cloister-vmm").chain(args.iter().copied()))
    }

    #[test]
    fn linux_guest_options_parse() {
        let cli = parse(&[
            "--kernel",
            "Image",
            "--initrd",
            "rootfs.cpio",
            "--cmdline",
            "console=hvc0",
            "--mem",
            "512",
            "--cpus",
            "2",
            "--disk",
            "disk.img",
            "--console",
            "-",
            "--protected",
            "--memory",
            "guest-memfd",
        ])
        .unwrap();
        assert!(cli.protected && !cli.normal);
        assert_eq!(cli.cpus, 2);
        assert_eq!(cli.console.as_deref(), Some("-"));
        assert_eq!(cli.disk, Some(PathBuf::from("disk.img")));
        assert_eq!(cli.dma_pool, DEFAULT_DMA_POOL_MIB);
        // Today's conformance invocation still works.
        let old = parse(&["--kernel", "c.bin", "--cpus", "2", "--mem", "64"]).unwrap();
        assert!(old.console.is_none() && old.disk.is_none() && !old.protected);
    }

    #[test]
    fn bad_inputs_are_named() {
        let e = parse(&["--kernel", "k", "--protected", "--normal"]).unwrap_err();
        assert!(e.to_string().contains("--normal"), "{e}");
        let e = parse(&["--kernel", "k", "--cpus", "9"]).unwrap_err();
        assert!(e.to_string().contains("--cpus"), "{e}");
        let e = parse(&["--kernel", "k", "--dma-pool", "0"]).unwrap_err();
        assert!(e.to_string().contains("--dma-pool"), "{e}");
        let e = parse(&["--kernel", "k", "--memory", "ram"]).unwrap_err();
        assert!(e.to_string().contains("ram"), "{e}");
    }
}
