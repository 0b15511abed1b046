//! QEMU command lines for a stack: one place builds them for `run`, `test`
//! and `--dry-run`, so what a user debugs is what CI boots.
//!
//! Two ways to boot (`qemu.boot`): `kernel` hands QEMU `cloister.img` (or the
//! host Image) with `-kernel` and the command line with `-append`; `disk`
//! starts a firmware (`-bios`, Debian's U-Boot) with the disk image on
//! virtio-blk, and the firmware boots what the disk's boot partition holds.
//! `-append` cannot reach that kernel: its command line is `uEnv.txt` in the
//! boot partition, so a boot with other words gets a private copy of the
//! disk from [`prepare_boot`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cloister_agent::protocol::{RESULT_PORT_NAME, SCENARIO_CMDLINE_KEY};

use crate::disk::{self, BootFile};
use crate::manifest::{Item, Manifest};
use crate::stack::{BootMethod, Stack};

pub const QEMU: &str = "qemu-system-aarch64";

/// Finds the QEMU binary on `path_var`, or says how to install it.
pub fn locate(program: &str, path_var: &str) -> Result<PathBuf> {
    match crate::deps::find_on_path(program, path_var) {
        Some(path) => Ok(path),
        None => bail!(
            "{program} not found on PATH; install it as root with:\n  apt-get install -y qemu-system-arm"
        ),
    }
}

/// Finds the QEMU binary on this process's PATH.
pub fn binary() -> Result<PathBuf> {
    locate(QEMU, &std::env::var("PATH").unwrap_or_default())
}

/// How the serial console is wired.
#[derive(Debug, Clone)]
pub enum Console {
    /// `-nographic`: serial and monitor multiplexed on the terminal.
    Interactive,
    /// Serial console on QEMU's stdin/stdout (pipes), no monitor.
    Stdio,
    /// Serial console written to a file, no input.
    File(PathBuf),
}

/// Everything that varies between boots of the same stack.
#[derive(Debug, Clone)]
pub struct BootOptions {
    pub console: Console,
    /// Appended to the stack's kernel command line (`-append`; on a disk
    /// boot, the `uEnv.txt` of the copy [`prepare_boot`] writes).
    pub extra_cmdline: Vec<String>,
    /// Where the agent's result port is written, if anywhere.
    pub results: Option<PathBuf>,
    /// `-s -S`: gdbstub on :1234, CPUs stopped until gdb continues.
    pub gdb: bool,
    /// `-d int,guest_errors,unimp -D <file>`.
    pub trace: Option<PathBuf>,
    /// `-smp` instead of the stack's.
    pub smp: Option<u32>,
}

impl BootOptions {
    /// A plain boot with `console`: nothing appended, no result port, no
    /// debugging, the stack's CPU count. Callers change what differs.
    pub fn new(console: Console) -> Self {
        BootOptions {
            console,
            extra_cmdline: Vec::new(),
            results: None,
            gdb: false,
            trace: None,
            smp: None,
        }
    }
}

/// The kernel command line for a boot.
pub fn cmdline(stack: &Stack, extra: &[String]) -> String {
    let mut parts = vec![stack.file.kernel.cmdline.clone()];
    parts.extend(extra.iter().cloned());
    parts.join(" ").trim().to_owned()
}

/// Kernel command-line words that make a boot run one agent scenario.
pub fn agent_cmdline(scenario: &str) -> Vec<String> {
    vec![
        "rdinit=/sbin/cloister-agent".into(),
        format!("{SCENARIO_CMDLINE_KEY}={scenario}"),
        // A crash of PID 1 must end QEMU at once, not hang until the timeout.
        "panic=-1".into(),
    ]
}

/// QEMU arguments (without the binary) to boot `manifest`'s artifacts.
///
/// With a firmware in `manifest_or_paths` (a `qemu.boot = "disk"` stack)
/// QEMU starts the firmware and the disk image instead of `-kernel`; the
/// command line is then the one in the disk's `uEnv.txt`, so pass paths from
/// [`prepare_boot`] when `opts.extra_cmdline` is not empty.
pub fn args(stack: &Stack, manifest_or_paths: &ArtifactPaths, opts: &BootOptions) -> Vec<String> {
    let q = &stack.file.qemu;
    let mut a: Vec<String> = vec![
        "-M".into(),
        q.machine.clone(),
        "-cpu".into(),
        q.cpu.clone(),
        "-smp".into(),
        opts.smp.unwrap_or(q.smp).to_string(),
        "-m".into(),
        format!("{}M", q.memory_mib),
    ];
    match (&manifest_or_paths.firmware, &manifest_or_paths.disk) {
        (Some(firmware), Some(disk)) => {
            a.extend([
                "-bios".into(),
                firmware.display().to_string(),
                "-drive".into(),
                // Read-only: the image is a build output with a sha256 in the
                // manifest, and nothing on this path writes to its disk.
                format!(
                    "if=none,file={},format=raw,id=disk,readonly=on",
                    disk.display().to_string().replace(',', ",,")
                ),
                "-device".into(),
                "virtio-blk-device,drive=disk".into(),
            ]);
        }
        _ => {
            a.extend([
                "-kernel".into(),
                manifest_or_paths.kernel.display().to_string(),
            ]);
            // cloister.img carries the initramfs in its payload table.
            if let Some(initrd) = &manifest_or_paths.initrd {
                a.extend(["-initrd".into(), initrd.display().to_string()]);
            }
            a.extend(["-append".into(), cmdline(stack, &opts.extra_cmdline)]);
        }
    }
    // A reset or a panic ends QEMU instead of booting again.
    a.push("-no-reboot".into());
    match &opts.console {
        Console::Interactive => a.push("-nographic".into()),
        Console::Stdio => {
            a.extend(["-display", "none", "-monitor", "none", "-serial", "stdio"].map(String::from))
        }
        Console::File(path) => {
            a.extend(["-display", "none", "-monitor", "none", "-serial"].map(String::from));
            a.push(format!("file:{}", path.display()));
        }
    }
    if let Some(results) = &opts.results {
        a.extend([
            "-device".into(),
            "virtio-serial-device".into(),
            "-chardev".into(),
            format!("file,id=results,path={}", results.display()),
            "-device".into(),
            format!("virtserialport,chardev=results,name={RESULT_PORT_NAME}"),
        ]);
    }
    if opts.gdb {
        a.extend(["-s", "-S"].map(String::from));
    }
    if let Some(trace) = &opts.trace {
        a.extend([
            "-d".into(),
            "int,guest_errors,unimp".into(),
            "-D".into(),
            trace.display().to_string(),
        ]);
    }
    a.extend(q.extra_args.iter().cloned());
    a
}

/// The files a boot needs.
#[derive(Debug, Clone)]
pub struct ArtifactPaths {
    /// What `-kernel` loads: `cloister.img` with the hyp, else the host Image.
    pub kernel: PathBuf,
    /// `-initrd`, only when the host kernel boots directly.
    pub initrd: Option<PathBuf>,
    pub vmlinux: PathBuf,
    /// The disk image (`cloister-<stack>.img`), when the stack has one.
    pub disk: Option<PathBuf>,
    /// `-bios`: set only when QEMU boots the disk through it
    /// (`qemu.boot = "disk"`).
    pub firmware: Option<PathBuf>,
}

/// Manifest input name of the firmware a disk boot starts.
pub const FIRMWARE_INPUT: &str = "qemu-firmware";
/// Manifest output name of the disk image.
pub const DISK_OUTPUT: &str = "disk-image";

impl ArtifactPaths {
    pub fn from_manifest(m: &Manifest) -> Result<Self> {
        let vmlinux = m.output("host-vmlinux")?.to_path_buf();
        let disk = m.output(DISK_OUTPUT).ok().map(Path::to_path_buf);
        let firmware = m
            .inputs
            .iter()
            .find(|i| i.name == FIRMWARE_INPUT)
            .and_then(|i| i.path.clone());
        if firmware.is_some() && disk.is_none() {
            bail!(
                "manifest of stack {} lists a {FIRMWARE_INPUT} but no {DISK_OUTPUT} for it \
                 to boot; rebuild with `cargo xtask build-image {}`",
                m.stack,
                m.stack
            );
        }
        Ok(match m.output("cloister-img") {
            Ok(img) => ArtifactPaths {
                kernel: img.to_path_buf(),
                initrd: None,
                vmlinux,
                disk,
                firmware,
            },
            Err(_) => ArtifactPaths {
                kernel: m.output("host-kernel")?.to_path_buf(),
                initrd: Some(m.output("host-initramfs")?.to_path_buf()),
                vmlinux,
                disk,
                firmware,
            },
        })
    }

    /// Where build-image puts them (for `--dry-run` before any build).
    pub fn expected(stack: &Stack, stack_dir: &Path) -> Self {
        // Only for --dry-run; a real run reads the path from manifest.json.
        let vmlinux = stack_dir.join("host-vmlinux");
        let disk = stack
            .file
            .disk
            .enabled
            .then(|| disk::image_path(stack_dir, &stack.name));
        let firmware = match stack.file.qemu.boot {
            BootMethod::Disk => stack.file.qemu.firmware.clone(),
            BootMethod::Kernel => None,
        };
        if stack.file.hyp.enabled {
            ArtifactPaths {
                kernel: stack_dir.join("cloister.img"),
                initrd: None,
                vmlinux,
                disk,
                firmware,
            }
        } else {
            ArtifactPaths {
                kernel: stack_dir.join("host-Image"),
                initrd: Some(stack_dir.join("host-initramfs.cpio")),
                vmlinux,
                disk,
                firmware,
            }
        }
    }
}

/// File name of a per-boot disk copy in its boot directory.
pub const PER_BOOT_DISK: &str = "disk.img";

/// The paths to boot with `opts`. A disk boot whose command line differs
/// from the stack's gets a private sparse copy of the disk image in `dir`
/// (`dir/disk.img`) with its own `uEnv.txt`; anything else boots the built
/// artifacts as they are.
pub fn prepare_boot(
    stack: &Stack,
    paths: &ArtifactPaths,
    opts: &BootOptions,
    dir: &Path,
) -> Result<ArtifactPaths> {
    if paths.firmware.is_none() || opts.extra_cmdline.is_empty() {
        return Ok(paths.clone());
    }
    private_disk(stack, paths, opts, dir, &[])
}

/// Like [`prepare_boot`] but always writes the private copy, with `files`
/// replaced in its boot partition (scenarios that damage the disk use it).
pub fn private_disk(
    stack: &Stack,
    paths: &ArtifactPaths,
    opts: &BootOptions,
    dir: &Path,
    files: &[BootFile],
) -> Result<ArtifactPaths> {
    let base = paths.disk.as_deref().with_context(|| {
        format!(
            "stack {} has no disk image (set `disk.enabled = true` in its stack file)",
            stack.name
        )
    })?;
    let copy = dir.join(PER_BOOT_DISK);
    let bootargs = cmdline(stack, &opts.extra_cmdline);
    disk::per_boot_copy(base, &copy, Some(&bootargs), files)
        .with_context(|| format!("writing the per-boot disk image {}", copy.display()))?;
    Ok(ArtifactPaths {
        disk: Some(copy),
        ..paths.clone()
    })
}

/// The manifest input for the stack's firmware (`qemu.firmware`), with the
/// version of the Debian package that ships it.
pub fn firmware_input(stack: &Stack) -> Result<Option<Item>> {
    let Some(firmware) = &stack.file.qemu.firmware else {
        return Ok(None);
    };
    if !firmware.is_file() {
        let hint = if firmware.starts_with("/usr/lib/u-boot") {
            "it comes from Debian's u-boot-qemu; install it as root with:\n  \
             apt-get install -y u-boot-qemu"
        } else {
            "install the package that ships it, or fix the path"
        };
        bail!(
            "{} (`qemu.firmware` of stack {}) does not exist; {hint}",
            firmware.display(),
            stack.name
        );
    }
    let version = crate::deps::owning_package(firmware).map(|(pkg, v)| format!("{pkg} {v}"));
    Ok(Some(Item::file(FIRMWARE_INPUT, firmware, version)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack() -> Stack {
        crate::stack::load(&crate::project_root(), crate::DEFAULT_STACK).unwrap()
    }

    fn uboot_stack() -> Stack {
        crate::stack::load(&crate::project_root(), "qemu-uboot").unwrap()
    }

    fn agent_opts(scenario: &str) -> BootOptions {
        BootOptions {
            console: Console::File("/o/console.log".into()),
            extra_cmdline: agent_cmdline(scenario),
            results: Some("/o/results.jsonl".into()),
            gdb: false,
            trace: None,
            smp: None,
        }
    }

    #[test]
    fn disk_boot_starts_the_firmware_with_the_disk_and_no_kernel() {
        let stack = uboot_stack();
        let paths = ArtifactPaths::expected(&stack, Path::new("/o"));
        assert_eq!(
            paths.disk.as_deref(),
            Some(Path::new("/o/cloister-qemu-uboot.img"))
        );
        let a = args(&stack, &paths, &agent_opts("boot"));
        let joined = a.join(" ");
        assert!(
            joined.contains("-bios /usr/lib/u-boot/qemu_arm64/u-boot.bin -drive if=none,file=/o/cloister-qemu-uboot.img,format=raw,id=disk,readonly=on -device virtio-blk-device,drive=disk"),
            "{joined}"
        );
        assert!(
            joined.contains("-M virt,virtualization=on,gic-version=3"),
            "{joined}"
        );
        assert!(joined.ends_with("-nic none"), "{joined}");
        for flag in ["-kernel", "-initrd", "-append"] {
            assert!(!a.iter().any(|x| x == flag), "{flag} in {joined}");
        }
        // A comma in the path is escaped for -drive.
        let odd = ArtifactPaths {
            disk: Some("/o/a,b.img".into()),
            ..paths
        };
        assert!(args(&stack, &odd, &agent_opts("boot"))
            .join(" ")
            .contains("file=/o/a,,b.img,"));
    }

    #[test]
    fn kernel_boot_paths_have_no_disk_or_firmware() {
        let paths = ArtifactPaths::expected(&stack(), Path::new("/o"));
        assert_eq!((paths.disk, paths.firmware), (None, None));
    }

    #[test]
    fn prepare_boot_writes_a_disk_copy_carrying_the_command_line() {
        let stack = uboot_stack();
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.img");
        let layout = disk::Layout {
            table: crate::stack::PartitionTable::Gpt,
            boot_size_mib: 8,
            id: "t".into(),
        };
        let files = [
            disk::BootFile::new(
                disk::BOOT_ENV,
                disk::uenv("console=ttyAMA0 earlycon").unwrap(),
            ),
            disk::BootFile::new(disk::BOOT_IMAGE, b"img".to_vec()),
        ];
        disk::write(&base, &layout, &files).unwrap();
        let paths = ArtifactPaths {
            disk: Some(base.clone()),
            ..ArtifactPaths::expected(&stack, dir.path())
        };
        let boot_dir = dir.path().join("boot");

        // The stack's own command line: the built image boots as it is.
        let demo = BootOptions {
            extra_cmdline: Vec::new(),
            ..agent_opts("x")
        };
        let same = prepare_boot(&stack, &paths, &demo, &boot_dir).unwrap();
        assert_eq!(same.disk.as_deref(), Some(base.as_path()));
        assert!(!boot_dir.exists());

        // A scenario's words: a private copy with its own uEnv.txt.
        let booted = prepare_boot(&stack, &paths, &agent_opts("entry-el"), &boot_dir).unwrap();
        let copy = boot_dir.join("disk.img");
        assert_eq!(booted.disk.as_deref(), Some(copy.as_path()));
        assert_eq!(
            String::from_utf8(disk::read_boot_file(&copy, disk::BOOT_ENV).unwrap()).unwrap(),
            "bootargs=console=ttyAMA0 earlycon rdinit=/sbin/cloister-agent \
             cloister.scenario=entry-el panic=-1\n"
        );
        assert_eq!(
            disk::read_boot_file(&base, disk::BOOT_ENV).unwrap(),
            b"bootargs=console=ttyAMA0 earlycon\n"
        );
        let joined = args(&stack, &booted, &agent_opts("entry-el")).join(" ");
        assert!(
            joined.contains(&format!("file={},", copy.display())),
            "{joined}"
        );

        // private_disk always copies, replacing files.
        let damaged = private_disk(
            &stack,
            &paths,
            &demo,
            &dir.path().join("d"),
            &[disk::BootFile::new(disk::BOOT_IMAGE, b"bad".to_vec())],
        )
        .unwrap();
        let copy = damaged.disk.unwrap();
        assert_eq!(
            disk::read_boot_file(&copy, disk::BOOT_IMAGE).unwrap(),
            b"bad"
        );

        // A kernel-boot stack never copies anything.
        let kernel_paths = ArtifactPaths::expected(
            &crate::stack::load(&crate::project_root(), crate::DEFAULT_STACK).unwrap(),
            dir.path(),
        );
        let p = prepare_boot(
            &stack,
            &kernel_paths,
            &agent_opts("boot"),
            &dir.path().join("k"),
        )
        .unwrap();
        assert_eq!(p.disk, None);
        let err = private_disk(&stack, &kernel_paths, &demo, dir.path(), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("stack qemu-uboot has no disk image"), "{err}");
    }

    #[test]
    fn the_firmware_is_a_manifest_input_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let firmware = dir.path().join("u-boot.bin");
        std::fs::write(&firmware, b"firmware").unwrap();
        let mut uboot = uboot_stack();
        uboot.file.qemu.firmware = Some(firmware.clone());
        let item = firmware_input(&uboot).unwrap().unwrap();
        assert_eq!(item.name, FIRMWARE_INPUT);
        assert_eq!(item.path.as_deref(), Some(firmware.as_path()));
        assert_eq!(item.size, Some(8));
        assert_eq!(item.version, None, "no Debian package owns a temp file");

        uboot.file.qemu.firmware = Some("/usr/lib/u-boot/qemu_nope/u-boot.bin".into());
        let err = firmware_input(&uboot).unwrap_err().to_string();
        assert!(
            err.contains(
                "/usr/lib/u-boot/qemu_nope/u-boot.bin (`qemu.firmware` of stack qemu-uboot) \
                 does not exist"
            ),
            "{err}"
        );
        assert!(err.contains("apt-get install -y u-boot-qemu"), "{err}");
        assert!(firmware_input(&stack()).unwrap().is_none());
    }

    #[test]
    fn missing_qemu_names_the_package_to_install() {
        let err = locate(QEMU, "/nonexistent-a:/nonexistent-b")
            .unwrap_err()
            .to_string();
        assert!(err.contains("qemu-system-aarch64 not found"), "{err}");
        assert!(err.contains("apt-get install -y qemu-system-arm"), "{err}");
    }

    #[test]
    fn headless_agent_boot_has_results_port_and_scenario() {
        let paths = ArtifactPaths::expected(&stack(), Path::new("/o"));
        let opts = BootOptions {
            console: Console::File("/o/console.log".into()),
            extra_cmdline: agent_cmdline("entry-el"),
            results: Some("/o/results.jsonl".into()),
            gdb: false,
            trace: None,
            smp: None,
        };
        let a = args(&stack(), &paths, &opts);
        let joined = a.join(" ");
        assert!(
            joined.contains("-M virt,virtualization=on,gic-version=3"),
            "{joined}"
        );
        assert!(joined.contains("-serial file:/o/console.log"), "{joined}");
        assert!(
            joined.contains("virtserialport,chardev=results,name=org.cloister.results"),
            "{joined}"
        );
        let append = &a[a.iter().position(|x| x == "-append").unwrap() + 1];
        assert!(append.starts_with("console=ttyAMA0"), "{append}");
        assert!(
            append.contains("rdinit=/sbin/cloister-agent cloister.scenario=entry-el"),
            "{append}"
        );
        assert!(!joined.contains(" -S"), "{joined}");
    }

    #[test]
    fn debug_flags_add_gdbstub_and_trace() {
        let paths = ArtifactPaths::expected(&stack(), Path::new("/o"));
        let opts = BootOptions {
            console: Console::Interactive,
            extra_cmdline: vec!["loglevel=8".into()],
            results: None,
            gdb: true,
            trace: Some("/o/trace.log".into()),
            smp: Some(4),
        };
        let joined = args(&stack(), &paths, &opts).join(" ");
        assert!(joined.contains("-nographic"), "{joined}");
        assert!(joined.contains("-smp 4"), "{joined}");
        assert!(joined.contains("-s -S"), "{joined}");
        assert!(
            joined.contains("-d int,guest_errors,unimp -D /o/trace.log"),
            "{joined}"
        );
        assert!(joined.contains("earlycon loglevel=8"), "{joined}");
    }
}
