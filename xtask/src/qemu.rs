//! QEMU command lines for a stack: one place builds them for `run`, `test`
//! and `--dry-run`, so what a user debugs is what CI boots.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use cloister_agent::protocol::{RESULT_PORT_NAME, SCENARIO_CMDLINE_KEY};

use crate::manifest::Manifest;
use crate::stack::Stack;

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
    /// Appended to the stack's kernel command line.
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
        "-kernel".into(),
        manifest_or_paths.kernel.display().to_string(),
    ];
    // cloister.img carries the initramfs in its payload table.
    if let Some(initrd) = &manifest_or_paths.initrd {
        a.extend(["-initrd".into(), initrd.display().to_string()]);
    }
    a.extend([
        "-append".into(),
        cmdline(stack, &opts.extra_cmdline),
        // A reset or a panic ends QEMU instead of booting again.
        "-no-reboot".into(),
    ]);
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
}

impl ArtifactPaths {
    pub fn from_manifest(m: &Manifest) -> Result<Self> {
        let vmlinux = m.output("host-vmlinux")?.to_path_buf();
        Ok(match m.output("cloister-img") {
            Ok(img) => ArtifactPaths {
                kernel: img.to_path_buf(),
                initrd: None,
                vmlinux,
            },
            Err(_) => ArtifactPaths {
                kernel: m.output("host-kernel")?.to_path_buf(),
                initrd: Some(m.output("host-initramfs")?.to_path_buf()),
                vmlinux,
            },
        })
    }

    /// Where build-image puts them (for `--dry-run` before any build).
    pub fn expected(stack: &Stack, stack_dir: &Path) -> Self {
        // Only for --dry-run; a real run reads the path from manifest.json.
        let vmlinux = stack_dir.join("host-vmlinux");
        if stack.file.hyp.enabled {
            ArtifactPaths {
                kernel: stack_dir.join("cloister.img"),
                initrd: None,
                vmlinux,
            }
        } else {
            ArtifactPaths {
                kernel: stack_dir.join("host-Image"),
                initrd: Some(stack_dir.join("host-initramfs.cpio")),
                vmlinux,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack() -> Stack {
        crate::stack::load(&crate::project_root(), crate::DEFAULT_STACK).unwrap()
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
