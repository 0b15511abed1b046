//! `cargo xtask run [STACK]`: boot a stack with the console on this terminal.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::build;
use crate::manifest::Manifest;
use crate::qemu::{self, ArtifactPaths, BootOptions, Console};
use crate::stage::{display_command, shell_quote};

/// `cargo xtask run [STACK] [--gdb] [--trace] [--append ARGS] [--timeout S] [--dry-run]`
#[derive(Debug, clap::Args)]
pub struct Run {
    /// Stack name (a file in stacks/ without .toml).
    #[arg(default_value = crate::DEFAULT_STACK)]
    stack: String,
    /// Start QEMU's gdbstub on :1234 with the CPUs stopped; prints the
    /// gdb-multiarch line to attach.
    #[arg(long)]
    gdb: bool,
    /// Log interrupts, guest errors and unimplemented accesses
    /// (`-d int,guest_errors,unimp`) to target/cloister/<stack>/logs/qemu-trace.log.
    #[arg(long)]
    trace: bool,
    /// Extra kernel command-line arguments.
    #[arg(long, value_name = "ARGS")]
    append: Vec<String>,
    /// Stop QEMU after this many seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Print the QEMU command line instead of building and booting.
    #[arg(long)]
    dry_run: bool,
    /// Boot the stack's Linux guest on plain QEMU instead (no hypervisor,
    /// hvc0 on this terminal, a fresh disk in
    /// target/cloister/<stack>/guest-run/): a busybox shell, or the tests
    /// `--append cloister.test=boot,blk` names.
    #[arg(long, conflicts_with_all = ["gdb", "trace"])]
    guest: bool,
}

impl Run {
    pub fn run(self) -> Result<()> {
        let root = crate::project_root();
        let stack = crate::stack::load(&root, &self.stack)?;
        let stack_dir = build::stack_dir(&self.stack);
        if self.guest {
            return self.run_guest(&stack, &stack_dir);
        }
        let paths = if self.dry_run {
            ArtifactPaths::expected(&stack, &stack_dir)
        } else {
            let manifest = build::build_image(&self.stack, false)?;
            ArtifactPaths::from_manifest(&manifest)?
        };
        let trace = self.trace.then(|| stack_dir.join("logs/qemu-trace.log"));
        let opts = BootOptions {
            extra_cmdline: self.append.clone(),
            gdb: self.gdb,
            trace: trace.clone(),
            ..BootOptions::new(Console::Interactive)
        };
        let qemu_path = if self.dry_run {
            qemu::binary().unwrap_or_else(|_| qemu::QEMU.into())
        } else {
            qemu::binary()?
        };
        // On a disk boot --append reaches the kernel through a per-boot copy
        // of the disk image (its uEnv.txt): -append cannot.
        let paths = if self.dry_run {
            paths
        } else {
            qemu::prepare_boot(&stack, &paths, &opts, &stack_dir.join("boot"))?
        };
        let mut cmd = Command::new(&qemu_path);
        cmd.args(qemu::args(&stack, &paths, &opts));
        if self.dry_run {
            println!("{}", display_command(&cmd));
            if paths.firmware.is_some() && !self.append.is_empty() {
                eprintln!(
                    "note: a real run boots a copy of the disk image, {}, whose uEnv.txt \
                     carries the --append words",
                    stack_dir.join("boot").join(qemu::PER_BOOT_DISK).display()
                );
            }
            return Ok(());
        }
        let manifest = Manifest::load(&build::manifest_path(&self.stack))?;
        if self.gdb {
            println!(
                "QEMU waits for gdb on :1234. Attach with:\n  gdb-multiarch {} -ex {}",
                shell_quote(&paths.vmlinux.display().to_string()),
                shell_quote("target remote localhost:1234")
            );
            if let Ok(hyp) = manifest.output("hyp-elf") {
                // The hyp is a PIE linked at 0; QEMU virt loads -kernel
                // images at RAM + 2 MiB, U-Boot's boot script at its
                // kernel_addr_r (RAM + 4 MiB; booti leaves it there).
                let (loader, base) = if paths.firmware.is_some() {
                    ("U-Boot's booti", "0x40400000")
                } else {
                    ("QEMU virt", "0x40200000")
                };
                println!(
                    "  hyp symbols ({loader} loads it at {base}):\n    -ex {}",
                    shell_quote(&format!("add-symbol-file {} -o {base}", hyp.display()))
                );
            }
        }
        if let Some(t) = &trace {
            println!("QEMU trace -> {}", t.display());
        }
        println!(
            "Booting {} (Ctrl-A X quits QEMU; `poweroff` in the shell exits cleanly)",
            stack.name
        );
        self.wait(&mut cmd)
    }

    /// `--guest`: the stack's guest on plain QEMU, hvc0 on this terminal.
    fn run_guest(&self, stack: &crate::stack::Stack, stack_dir: &std::path::Path) -> Result<()> {
        let guest = stack.file.guest.as_ref().with_context(|| {
            format!(
                "stack {} has no [guest] table, so no guest to boot (see docs/stacks.md)",
                stack.name
            )
        })?;
        let dir = stack_dir.join("guest-run");
        let (kernel, initramfs) = if self.dry_run {
            (
                stack_dir.join("guest-Image"),
                stack_dir.join("guest-initramfs.cpio"),
            )
        } else {
            let manifest = build::build_image(&self.stack, false)?;
            (
                manifest
                    .output(crate::manifest::GUEST_KERNEL)?
                    .to_path_buf(),
                manifest
                    .output(crate::manifest::GUEST_INITRAMFS)?
                    .to_path_buf(),
            )
        };
        let boot = crate::guest::PlainBoot {
            kernel,
            initramfs,
            disk: dir.join(qemu::PER_BOOT_DISK),
            console: crate::guest::GuestConsole::Interactive,
            serial: dir.join("serial.log"),
            extra_cmdline: self.append.clone(),
        };
        let qemu_path = qemu::binary().unwrap_or_else(|_| qemu::QEMU.into());
        let mut cmd = Command::new(&qemu_path);
        cmd.args(crate::guest::plain_qemu_args(guest, &boot));
        if self.dry_run {
            println!("{}", display_command(&cmd));
            return Ok(());
        }
        std::fs::create_dir_all(&dir)?;
        crate::guest::create_disk(&boot.disk, guest.disk_mib)?;
        println!(
            "Booting the {} guest on plain QEMU (Ctrl-A X quits QEMU; `poweroff` in the shell \
             exits cleanly; PL011 output in {})",
            stack.name,
            boot.serial.display()
        );
        self.wait(&mut cmd)
    }

    /// Runs QEMU on this terminal until it exits or `--timeout` passes.
    fn wait(&self, cmd: &mut Command) -> Result<()> {
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", cmd.get_program().to_string_lossy()))?;
        let deadline = self
            .timeout
            .map(|s| Instant::now() + Duration::from_secs(s));
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                crate::e2e::terminate(&mut child);
                anyhow::bail!(
                    "QEMU stopped after the --timeout of {}s",
                    self.timeout.unwrap_or(0)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        if !status.success() {
            anyhow::bail!("QEMU exited with {status}");
        }
        Ok(())
    }
}
