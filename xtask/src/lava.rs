//! `cargo xtask lava --stack S [--out DIR] [--run]`: LAVA job definitions
//! that run the e2e scenarios as LAVA test cases, one case per scenario, and
//! a local run of them with LAVA's own dispatcher (`lava-run`).
//!
//! A job boots the stack on a LAVA device (the `qemu` device type with the
//! stack's machine, CPU, memory and CPU count; or, for a stack with
//! `[board]`, the lab's device type for the board, with TFTP and U-Boot's
//! `booti`: [`UBootBoardProfile`]), waits for the demo
//! shell's prompt and runs `cloister-agent <scenario>` for each scenario.
//! The verdict is decided on the device, by a shell function that applies
//! the e2e runner's rules to the agent's report (hello line, every expected
//! fact line, `{"event":"done","ok":true}` last), so a LAVA server records
//! the same pass/fail per case as `cargo xtask test` without xtask. `--run`
//! also re-judges each report with the runner's own code and fails on any
//! disagreement.
//!
//! How the case results reach LAVA depends on how the device boots:
//!
//! - the host kernel and a separate initramfs (`qemu-virt-direct`): LAVA
//!   puts its test overlay into the initramfs and an inline lava-test-shell
//!   definition reports each case with `lava-test-case NAME --result R`;
//! - `cloister.img` (every stack with the hypervisor, from `-kernel` or from
//!   a U-Boot disk): the hyp boots the initramfs inside its own payload and
//!   ignores a bootloader's (QEMU's `-initrd`, U-Boot's), so LAVA's overlay
//!   never reaches the host. These jobs use LAVA's `interactive` test action
//!   instead: the same commands typed at the prompt, each a named case
//!   judged by the line it prints. (Once the hyp hands the host a
//!   bootloader's initrd, these stacks can use lava-test-shell too: see
//!   [`QemuProfile::test_style`].)
//!
//! Every written job and device dictionary is checked with LAVA's own schema
//! (`lava_common.schemas`); a rejected one is an error naming the file and
//! the field.
//!
//! `cargo xtask test` runs [`TEST_RUN_SCENARIOS`] once more as a LAVA job
//! ([`check_against_test_run`]) and requires LAVA's per-case results to be
//! the verdicts the test run itself got.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cloister_agent::protocol::{Report, PROTOCOL_VERSION};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::e2e::{self, Expectations, Expected, Kind, Verdict, INTERRUPTED};
use crate::manifest::Manifest;
use crate::qemu::ArtifactPaths;
use crate::stack::Stack;
use crate::stage::{shell_quote, Outcome};

mod yaml;

/// The Debian packages `lava` needs: the schema, and the dispatcher for `--run`.
const SCHEMA_PACKAGES: &[&str] = &["lava-common"];
const RUN_PACKAGES: &[&str] = &["lava-common", "lava-dispatcher"];

/// LAVA's Python side: schema validation and log reading.
const HELPER: &str = include_str!("lava/lava_helper.py");

/// Debian's Python, where the Debian LAVA packages put their modules (a
/// `python3` earlier on PATH, e.g. pyenv's, does not see them).
const PYTHON: &str = "/usr/bin/python3";

/// The test definition (lava-test-shell) or interactive script name; LAVA
/// records cases under `<stage>_<this>`.
pub const DEFINITION: &str = "cloister-e2e";

/// Where the demo initramfs keeps the agent.
const AGENT_PATH: &str = "/sbin/cloister-agent";

/// Kernel command line word that keeps the demo console in the host shell
/// (`stacks/rootfs/host/etc/init.d/demo`): LAVA's jobs run the agent
/// there, not in the Linux guest the demo otherwise starts first. A QEMU
/// stack that boots a disk carries its command line in the disk's boot
/// script; its demo starts the guest first, and its LAVA jobs would wait
/// at the guest's prompt (none is run today: `cargo xtask test` runs LAVA
/// on the default stack, which boots the kernel directly).
pub const LAVA_DEMO_ARG: &str = "cloister.demo=host";

/// The prompt LAVA waits for: the host's busybox shell (`/etc/profile`).
pub const PROMPT: &str = "cloister-host:/#";

/// Printed before each line of an agent report on the console, so `--run`
/// can re-judge the report from LAVA's log.
const REPORT_MARK: &str = "@cloister-report";

/// What an interactive case prints: `cloister-case: NAME pass|fail`.
const CASE_MARK: &str = "cloister-case:";

/// busybox ash's line editor keeps at most 1024 characters of a typed line.
const MAX_TYPED_LINE: usize = 1000;

/// `cargo xtask lava --stack S [--out DIR] [--run] [--artifact-url URL]`
#[derive(Debug, clap::Args)]
pub struct Lava {
    /// Stack to write jobs for (built first if needed).
    #[arg(long, default_value = crate::DEFAULT_STACK)]
    stack: String,
    /// Where the jobs, device dictionaries and artifacts go
    /// (default target/cloister/<stack>/lava/).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Run every job with LAVA's dispatcher (`lava-run`) and compare its
    /// per-case results with the scenario list.
    #[arg(long)]
    run: bool,
    /// URL the artifacts in DIR will be served from on a LAVA server
    /// (default: file:// URLs into DIR, for lava-run on this machine).
    #[arg(long, value_name = "URL")]
    artifact_url: Option<String>,
}

impl Lava {
    pub fn run(self) -> Result<()> {
        let root = crate::project_root();
        let stack = crate::stack::load(&root, &self.stack)?;
        let logs = crate::build::stack_dir(&self.stack).join("logs");
        ensure_packages(
            if self.run {
                RUN_PACKAGES
            } else {
                SCHEMA_PACKAGES
            },
            &logs,
        )?;
        let manifest = crate::build::build_image(&self.stack, false)?;
        let out = self
            .out
            .clone()
            .unwrap_or_else(|| crate::build::stack_dir(&self.stack).join("lava"));
        let out = absolute(&out)?;
        let generated = generate(&stack, &manifest, &out, self.artifact_url.as_deref())?;
        validate_files(&generated.files_to_validate())?;
        // With --run the scenarios left out are listed with the results.
        print_generated(&generated, !self.run);
        if !self.run {
            return Ok(());
        }
        let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
        let mut verdicts = Vec::new();
        for (i, job) in generated.jobs.iter().enumerate() {
            let job_id = std::process::id()
                .wrapping_mul(10)
                .wrapping_add(u32::try_from(i).unwrap_or(0));
            let run_dir = out.join("runs").join(&job.stem);
            let run = run_job(job, job_id, &run_dir)?;
            verdicts.extend(report_run(job, &run));
        }
        let passed = verdicts.iter().filter(|v| **v == Verdict::Pass).count();
        let failed = verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Fail(_)))
            .count();
        let skipped = generated.not_run.len();
        for (name, why) in &generated.not_run {
            println!("  skip  {name}: not run under LAVA: {why}");
        }
        println!("{passed} passed, {failed} failed, {skipped} skipped");
        if failed > 0 {
            bail!(
                "{failed} LAVA case(s) failed; logs in {}",
                out.join("runs").display()
            );
        }
        Ok(())
    }
}

fn absolute(path: &Path) -> Result<PathBuf> {
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    })
}

// ---------------------------------------------------------------------------
// Which scenarios run, in which job.

/// One e2e scenario as a LAVA test case.
#[derive(Debug, Clone)]
pub struct Case {
    /// The e2e scenario's name, which is also the LAVA case name.
    pub name: &'static str,
    pub agent_scenario: &'static str,
    pub facts: &'static [Expected],
}

/// The cases one job runs, and the values they are judged against.
#[derive(Debug, Clone)]
pub struct JobPlan {
    /// File stem: `<stack>` or `<stack>-smp<N>`.
    pub stem: String,
    pub smp: u32,
    pub expectations: Expectations,
    pub cases: Vec<Case>,
}

/// Every job for a stack, and the scenarios no job runs (with why).
#[derive(Debug, Clone)]
pub struct Plan {
    pub jobs: Vec<JobPlan>,
    pub not_run: Vec<(&'static str, String)>,
}

/// Groups the stack's agent scenarios into jobs by CPU count; every other
/// scenario is listed as not run, with the reason.
pub fn plan(stack: &Stack, kernel_release: &str, scenarios: &[e2e::Scenario]) -> Plan {
    let mut jobs: Vec<JobPlan> = Vec::new();
    let mut not_run = Vec::new();
    for s in scenarios {
        // The same skip, with the same words, as `cargo xtask test`.
        if s.needs_hyp && !stack.file.hyp.enabled {
            not_run.push((
                s.name,
                "needs the hypervisor (hyp.enabled = false on this stack)".to_owned(),
            ));
            continue;
        }
        let Kind::Agent {
            agent_scenario,
            facts,
        } = &s.kind
        else {
            not_run.push((s.name, not_run_reason(&s.kind)));
            continue;
        };
        let smp = match (&stack.file.board, s.smp) {
            (Some(_), Some(n)) => {
                not_run.push((
                    s.name,
                    format!(
                        "boots QEMU with -smp {n}; a board has the CPUs it has \
                         (`board.cpus`)"
                    ),
                ));
                continue;
            }
            (Some(board), None) => board.cpus,
            (None, n) => n.unwrap_or(stack.file.qemu.smp),
        };
        let case = Case {
            name: s.name,
            agent_scenario,
            facts,
        };
        match jobs.iter_mut().find(|j| j.smp == smp) {
            Some(job) => job.cases.push(case),
            None => jobs.push(JobPlan {
                stem: if stack.file.board.is_some() || smp == stack.file.qemu.smp {
                    stack.name.clone()
                } else {
                    format!("{}-smp{smp}", stack.name)
                },
                smp,
                expectations: Expectations {
                    entry_el: stack.file.expect.entry_el,
                    kernel_release: kernel_release.to_owned(),
                    smp,
                },
                cases: vec![case],
            }),
        }
    }
    Plan { jobs, not_run }
}

/// Why a scenario that is not an agent scenario stays out of the jobs.
fn not_run_reason(kind: &Kind) -> String {
    match kind {
        Kind::DemoShell => "checks QEMU's exit status after `poweroff`, which LAVA does not \
                            report (LAVA's own boot action checks that the prompt comes up)"
            .to_owned(),
        Kind::GuestPlainQemu { .. } => "boots the guest kernel on a QEMU of its own, not the \
                                        stack, and checks the disk file it leaves on the \
                                        runner; it stays with `cargo xtask test`"
            .to_owned(),
        _ => "boots a deliberately broken image and passes when the boot fails; LAVA counts \
              a failed boot as an incomplete job, so it stays with `cargo xtask test`"
            .to_owned(),
    }
}

// ---------------------------------------------------------------------------
// The shell side: one function applies the runner's rules on the device.

/// How a job reports its cases to LAVA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestStyle {
    /// Inline lava-test-shell definition; `lava-test-case NAME --result R`.
    Shell,
    /// LAVA `interactive` test: each case a named command judged by the
    /// `cloister-case: NAME pass|fail` line it prints.
    Interactive,
}

/// Where `cloister_want` keeps expected lines for the next case (the host's
/// /tmp is a tmpfs); `$CLOISTER_WANT` overrides it.
const WANT_FILE: &str = "/tmp/cloister-want";

/// The shell functions every job defines first. `cloister_case` takes the
/// case name, agent scenario, hello-line prefix and suffix, done line and
/// fact lines, plus any fact lines `cloister_want` stored before it (for a
/// case too long to type as one line); it uses and removes them.
pub fn case_function(style: TestStyle) -> String {
    let report = match style {
        TestStyle::Shell => "lava-test-case \"$n\" --result \"$r\"".to_owned(),
        TestStyle::Interactive => format!("echo \"{CASE_MARK} $n $r\""),
    };
    format!(
        "cloister_want() {{ for x in \"$@\"; do printf '%s\\n' \"$x\"; done \
         >> \"${{CLOISTER_WANT:-{WANT_FILE}}}\"; }}; \
         cloister_case() {{ n=$1; s=$2; h=$3; t=$4; d=$5; shift 5; \
         o=$(\"${{CLOISTER_AGENT:-{AGENT_PATH}}}\" \"$s\") || true; \
         printf '%s\\n' \"$o\" | sed \"s/^/{REPORT_MARK} $n /\"; r=pass; \
         f=$(printf '%s\\n' \"$o\" | head -n 1); case \"$f\" in \"$h\"*\"$t\") ;; *) r=fail ;; esac; \
         l=$(printf '%s\\n' \"$o\" | tail -n 1); [ \"$l\" = \"$d\" ] || r=fail; \
         for x in \"$@\"; do printf '%s\\n' \"$o\" | grep -qxF -e \"$x\" || r=fail; done; \
         w=${{CLOISTER_WANT:-{WANT_FILE}}}; if [ -f \"$w\" ]; then \
         while IFS= read -r x; do printf '%s\\n' \"$o\" | grep -qxF -e \"$x\" || r=fail; done < \"$w\"; \
         rm -f \"$w\"; fi; \
         {report}; }}"
    )
}

/// The call of [`case_function`] for one case: the exact lines the agent
/// must print come from the protocol's own encoder.
pub fn case_command(case: &Case, exp: &Expectations) -> String {
    let (head, facts) = case_words(case, exp);
    head.iter()
        .chain(&facts)
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// [`case_command`] as lines of at most `max` characters, for a shell
/// that cannot take a longer typed line: when the one command is too long,
/// `cloister_want` lines carry its fact lines first and the last line is
/// the `cloister_case` call without them. Fails when one fact alone is too
/// long.
pub fn case_commands(case: &Case, exp: &Expectations, max: usize) -> Result<Vec<String>> {
    let whole = case_command(case, exp);
    if whole.len() <= max {
        return Ok(vec![whole]);
    }
    let (head, facts) = case_words(case, exp);
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for fact in &facts {
        let word = shell_quote(fact);
        if !line.is_empty() && line.len() + 1 + word.len() > max {
            lines.push(std::mem::take(&mut line));
        }
        if line.is_empty() {
            line = format!("cloister_want {word}");
            if line.len() > max {
                bail!(
                    "case {}: the expected line {fact} alone makes a {}-character command, more \
                     than the {max} a typed line may have",
                    case.name,
                    line.len()
                );
            }
        } else {
            line.push(' ');
            line.push_str(&word);
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    let call = head
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ");
    if call.len() > max {
        bail!(
            "case {}: its call is {} characters without its facts, more than {max}",
            case.name,
            call.len()
        );
    }
    lines.push(call);
    Ok(lines)
}

/// The words of a case's call: the function, name, scenario, hello prefix
/// and suffix and done line; then the fact lines.
fn case_words(case: &Case, exp: &Expectations) -> (Vec<String>, Vec<String>) {
    const MARK: &str = "\u{1}agent\u{1}";
    let hello = Report::Hello {
        protocol: PROTOCOL_VERSION,
        agent_version: MARK.to_owned(),
        scenario: case.agent_scenario.to_owned(),
    }
    .to_line();
    let marked = serde_json::to_string(MARK).unwrap_or_default();
    let (prefix, suffix) = hello.split_once(&marked).unwrap_or((&hello, ""));
    // The hello line up to the version's opening quote, and from its
    // closing quote on.
    let prefix = format!("{prefix}\"");
    let suffix = format!("\"{suffix}");
    let done = Report::Done { ok: true }.to_line();
    let head = vec![
        "cloister_case".to_owned(),
        case.name.to_owned(),
        case.agent_scenario.to_owned(),
        prefix,
        suffix,
        done,
    ];
    let facts = case
        .facts
        .iter()
        .map(|fact| {
            Report::Fact {
                key: fact.key().to_owned(),
                value: fact.value(exp),
            }
            .to_line()
        })
        .collect();
    (head, facts)
}

// ---------------------------------------------------------------------------
// Device types.

/// A file the job downloads.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub url: String,
    pub sha256: String,
}

/// How jobs for one LAVA device type are written: [`QemuProfile`] for the
/// QEMU stacks, [`UBootBoardProfile`] for a board stack (`[board]`).
pub trait DeviceProfile: std::fmt::Debug {
    /// LAVA's `device_type`.
    fn device_type(&self) -> &str;
    /// How the cases reach LAVA on this device.
    fn test_style(&self) -> TestStyle;
    /// The files the jobs download, by LAVA image label.
    fn artifacts(&self) -> Vec<(&'static str, PathBuf)>;
    /// The job's `context` (device-type template variables) for `smp` CPUs;
    /// None when the device type needs none.
    fn context(&self, smp: u32) -> Option<Value>;
    /// The deploy and boot actions.
    fn deploy_and_boot(&self, artifacts: &BTreeMap<&'static str, Artifact>) -> Vec<Value>;
    /// The device dictionary `lava-run` needs, rendered for this job's
    /// context; None where the device lives in a lab.
    fn local_device(&self, smp: u32) -> Option<Value>;
}

/// LAVA's `qemu` device type, with the stack's QEMU settings.
#[derive(Debug, Clone)]
pub struct QemuProfile {
    pub machine: String,
    pub cpu: String,
    pub memory_mib: u32,
    pub extra_args: Vec<String>,
    pub boot: QemuBoot,
}

/// What QEMU starts, as in the stack's `qemu.boot`.
#[derive(Debug, Clone)]
pub enum QemuBoot {
    /// `-kernel` (cloister.img, or the host Image with `-initrd`, which the
    /// job gzips so LAVA can add its overlay) and `-append`.
    Kernel {
        kernel: PathBuf,
        ramdisk: Option<PathBuf>,
        cmdline: String,
    },
    /// `-bios` (U-Boot) and the disk image on virtio-blk; the kernel
    /// command line is the disk's own (uEnv.txt).
    Disk { firmware: PathBuf, disk: PathBuf },
}

impl DeviceProfile for QemuProfile {
    fn device_type(&self) -> &str {
        "qemu"
    }

    fn test_style(&self) -> TestStyle {
        // LAVA's overlay rides in a separate ramdisk; cloister.img (and a
        // disk holding it) has none LAVA can reach.
        match &self.boot {
            QemuBoot::Kernel {
                ramdisk: Some(_), ..
            } => TestStyle::Shell,
            _ => TestStyle::Interactive,
        }
    }

    fn artifacts(&self) -> Vec<(&'static str, PathBuf)> {
        match &self.boot {
            QemuBoot::Kernel {
                kernel, ramdisk, ..
            } => {
                let mut out = vec![("kernel", kernel.clone())];
                if let Some(r) = ramdisk {
                    out.push(("ramdisk", r.clone()));
                }
                out
            }
            QemuBoot::Disk { firmware, disk } => {
                vec![("bios", firmware.clone()), ("disk", disk.clone())]
            }
        }
    }

    fn context(&self, smp: u32) -> Option<Value> {
        let mut extra = vec![format!("-smp {smp}")];
        extra.extend(self.extra_args.iter().cloned());
        Some(json!({
            "arch": "arm64",
            "machine": self.machine,
            "cpu": self.cpu,
            "memory": self.memory_mib,
            "extra_options": extra,
        }))
    }

    fn deploy_and_boot(&self, artifacts: &BTreeMap<&'static str, Artifact>) -> Vec<Value> {
        let mut images = serde_json::Map::new();
        for (label, artifact) in artifacts {
            let mut image = json!({"url": artifact.url, "sha256sum": artifact.sha256});
            let arg = match (*label, &self.boot) {
                ("kernel", QemuBoot::Kernel { cmdline, .. }) => {
                    format!("-kernel {{kernel}} -append \"{cmdline}\"")
                }
                ("ramdisk", _) => {
                    image["compression"] = json!("gz");
                    image["format"] = json!("cpio.newc");
                    image["overlays"] = json!({"lava": true});
                    "-initrd {ramdisk}".to_owned()
                }
                ("bios", _) => "-bios {bios}".to_owned(),
                ("disk", _) => "-drive if=none,file={disk},format=raw,id=disk \
                                -device virtio-blk-device,drive=disk"
                    .to_owned(),
                (other, _) => format!("{{{other}}}"),
            };
            image["image_arg"] = json!(arg);
            images.insert((*label).to_owned(), image);
        }
        vec![
            json!({"deploy": {
                "to": "tmpfs",
                "timeout": {"minutes": 5},
                "images": images,
            }}),
            json!({"boot": {
                "method": "qemu",
                "media": "tmpfs",
                "timeout": {"minutes": 5},
                "prompts": [PROMPT],
            }}),
        ]
    }

    fn local_device(&self, smp: u32) -> Option<Value> {
        // What lava-server's qemu.jinja2 renders for the job's context
        // (lava-server 2023.01), trimmed to what a qemu job reads.
        let mut extra = vec![format!("-smp {smp}")];
        extra.extend(self.extra_args.iter().cloned());
        Some(json!({
            "constants": {
                "posix": {
                    "lava_test_sh_cmd": "/bin/sh",
                    "lava_test_results_dir": "/lava-%s",
                    "lava_test_shell_file": "~/.bashrc",
                },
                "shutdown-message": "The system is going down for reboot NOW",
                "kernel-start-message": "Linux version [0-9]",
                "default-shell-prompt": "lava-test: # ",
                "spawn_maxread": "4092",
                "failure_retry": 1,
                "boot_retry": 1,
            },
            "parameters": {"pass": null},
            "available_architectures": ["arm64", "aarch64"],
            "actions": {
                "deploy": {
                    "connections": {"serial": null},
                    "methods": {"image": {"parameters": {"guest": {
                        "size": 512, "interface": "ide", "driveid": "lavatest",
                    }}}},
                },
                "boot": {
                    "connections": {"serial": null},
                    "methods": {"minimal": null, "qemu": {"parameters": {
                        "command": crate::qemu::QEMU,
                        "boot_options": {
                            "root": "/dev/vda2 rw rootwait",
                            "console": "ttyAMA0 115200",
                            "ip": "dhcp",
                            "mem": format!("{}M", self.memory_mib),
                        },
                        "options": [
                            format!("-cpu {}", self.cpu),
                            format!("-machine {}", self.machine),
                            "-nographic",
                            "-net nic,model=virtio,macaddr=52:54:00:12:34:58 -net user",
                            format!("-m {}", self.memory_mib),
                            "-monitor none",
                        ],
                        "extra": extra,
                    }}},
                },
            },
            "timeouts": {
                "actions": {
                    "lava-test-shell": {"minutes": 3},
                    "auto-login-action": {"minutes": 2},
                    "boot-qemu-image": {"minutes": 2},
                    "http-download": {"minutes": 5},
                    "download-retry": {"minutes": 5},
                },
                "connections": {
                    "lava-test-shell": {"seconds": 10},
                    "auto-login-action": {"minutes": 2},
                },
            },
        }))
    }
}

/// A board in a LAVA lab booted by U-Boot (a stack with `[board]`): TFTP
/// deploy of `cloister.img` and the board DTB, U-Boot's `booti` of them
/// with the stack's command line, then the interactive test on the serial
/// console. The lab owns the device dictionary (no `lava-run` here).
#[derive(Debug, Clone)]
pub struct UBootBoardProfile {
    /// The lab's device type (`board.lava-device-type`).
    pub device_type: String,
    pub kernel: PathBuf,
    pub dtb: PathBuf,
    pub cmdline: String,
}

impl DeviceProfile for UBootBoardProfile {
    fn device_type(&self) -> &str {
        &self.device_type
    }

    fn test_style(&self) -> TestStyle {
        // cloister.img boots its own initramfs; LAVA's overlay cannot reach it.
        TestStyle::Interactive
    }

    fn artifacts(&self) -> Vec<(&'static str, PathBuf)> {
        vec![("kernel", self.kernel.clone()), ("dtb", self.dtb.clone())]
    }

    fn context(&self, _smp: u32) -> Option<Value> {
        // The device type's own defaults (console, baud rate, load
        // addresses) are the board's.
        None
    }

    fn deploy_and_boot(&self, artifacts: &BTreeMap<&'static str, Artifact>) -> Vec<Value> {
        let image = |label: &str| {
            artifacts.get(label).map_or(
                Value::Null,
                |a| json!({"url": a.url, "sha256sum": a.sha256}),
            )
        };
        let mut kernel = image("kernel");
        // cloister.img has an arm64 Image header: `booti`.
        kernel["type"] = json!("image");
        vec![
            json!({"deploy": {
                "to": "tftp",
                "timeout": {"minutes": 10},
                "kernel": kernel,
                "dtb": image("dtb"),
            }}),
            json!({"boot": {
                "method": "u-boot",
                "timeout": {"minutes": 10},
                // LAVA substitutes the placeholders from the device type:
                // {BOOTX} is `booti <kernel addr> - <dtb addr>`.
                "commands": [
                    "setenv autoload no",
                    "dhcp",
                    "setenv serverip {SERVER_IP}",
                    "tftp {KERNEL_ADDR} {KERNEL}",
                    "tftp {DTB_ADDR} {DTB}",
                    format!("setenv bootargs '{}'", self.cmdline),
                    "{BOOTX}",
                ],
                "prompts": [PROMPT],
            }}),
        ]
    }

    fn local_device(&self, _smp: u32) -> Option<Value> {
        None
    }
}

/// The LAVA device profile for a stack.
pub fn profile_for(stack: &Stack, manifest: &Manifest) -> Result<Box<dyn DeviceProfile>> {
    let paths = ArtifactPaths::from_manifest(manifest)?;
    if let Some(board) = &stack.file.board {
        let cmdline = format!("{} {LAVA_DEMO_ARG}", stack.file.kernel.cmdline);
        if cmdline.contains(['\'', '\n']) {
            bail!(
                "{}: key `kernel.cmdline` contains a single quote or a newline, which U-Boot's \
                 `setenv bootargs '...'` cannot carry",
                stack.path.display()
            );
        }
        let dtb = manifest
            .output(crate::build::BOARD_DTB_OUTPUT)
            .with_context(|| {
                format!(
                    "stack {} is a board ({}) but its manifest lists no board DTB; set \
                 `disk.kernel-dtb` and rebuild",
                    stack.name, board.name
                )
            })?;
        return Ok(Box::new(UBootBoardProfile {
            device_type: board.lava_device_type.clone(),
            kernel: paths.kernel.clone(),
            dtb: dtb.to_path_buf(),
            cmdline,
        }));
    }
    let q = &stack.file.qemu;
    let boot = match (&paths.firmware, &paths.disk) {
        (Some(firmware), Some(disk)) => QemuBoot::Disk {
            firmware: firmware.clone(),
            disk: disk.clone(),
        },
        _ => {
            let cmdline = format!("{} {LAVA_DEMO_ARG}", stack.file.kernel.cmdline);
            if cmdline.contains('"') {
                bail!(
                    "{}: key `kernel.cmdline` contains a double quote, which LAVA's -append \
                     cannot carry",
                    stack.path.display()
                );
            }
            QemuBoot::Kernel {
                kernel: paths.kernel.clone(),
                ramdisk: paths.initrd.clone(),
                cmdline,
            }
        }
    };
    Ok(Box::new(QemuProfile {
        machine: q.machine.clone(),
        cpu: q.cpu.clone(),
        memory_mib: q.memory_mib,
        extra_args: q.extra_args.clone(),
        boot,
    }))
}

// ---------------------------------------------------------------------------
// Writing the jobs.

/// One written job.
#[derive(Debug, Clone)]
pub struct GeneratedJob {
    pub stem: String,
    pub path: PathBuf,
    /// The device dictionary for lava-run, when the device is local.
    pub device: Option<PathBuf>,
    pub style: TestStyle,
    pub plan: JobPlan,
    /// From the job's timeouts, for lava-run's watchdog.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Generated {
    pub jobs: Vec<GeneratedJob>,
    pub not_run: Vec<(&'static str, String)>,
}

impl Generated {
    fn files_to_validate(&self) -> Vec<(FileKind, PathBuf)> {
        let mut files = Vec::new();
        for job in &self.jobs {
            files.push((FileKind::Job, job.path.clone()));
            if let Some(device) = &job.device {
                files.push((FileKind::Device, device.clone()));
            }
        }
        files
    }
}

/// Job timeout: generous for TCG; a whole job takes about a minute here.
const JOB_MINUTES: u64 = 30;

/// Builds one job definition.
pub fn job_definition(
    stack_name: &str,
    git: &str,
    profile: &dyn DeviceProfile,
    artifacts: &BTreeMap<&'static str, Artifact>,
    job: &JobPlan,
    not_run: &[(&'static str, String)],
) -> Result<Value> {
    let style = profile.test_style();
    let mut actions = profile.deploy_and_boot(artifacts);
    let function = case_function(style);
    let commands: Vec<(&Case, String)> = job
        .cases
        .iter()
        .map(|c| (c, case_command(c, &job.expectations)))
        .collect();
    let test = match style {
        TestStyle::Shell => {
            let mut steps = vec![function];
            steps.extend(commands.iter().map(|(_, cmd)| cmd.clone()));
            json!({
                "timeout": {"minutes": 20},
                "definitions": [{
                    "from": "inline",
                    "name": DEFINITION,
                    "path": format!("inline/{DEFINITION}.yaml"),
                    "repository": {
                        "metadata": {
                            "format": "Lava-Test Test Definition 1.0",
                            "name": DEFINITION,
                            "description": format!("Cloister e2e scenarios on {stack_name}"),
                        },
                        "run": {"steps": steps},
                    },
                }],
            })
        }
        TestStyle::Interactive => {
            if function.len() > MAX_TYPED_LINE {
                bail!(
                    "an interactive command is {} characters, more than the {MAX_TYPED_LINE} \
                     busybox's line editor keeps: {function}",
                    function.len()
                );
            }
            let mut script = vec![json!({"command": function})];
            for (case, _) in &commands {
                // busybox's line editor keeps at most MAX_TYPED_LINE
                // characters: long fact lists go first, via cloister_want.
                let mut lines = case_commands(case, &job.expectations, MAX_TYPED_LINE)?;
                let cmd = lines.pop().unwrap_or_default();
                script.extend(lines.into_iter().map(|l| json!({ "command": l })));
                script.push(json!({
                    "command": cmd,
                    "name": case.name,
                    "successes": [{"message": format!("{CASE_MARK} {} pass", regex_escape(case.name))}],
                    "failures": [{"message": format!("{CASE_MARK} {} fail", regex_escape(case.name))}],
                }));
            }
            json!({
                "timeout": {"minutes": 20},
                "interactive": [{
                    "name": DEFINITION,
                    "prompts": [PROMPT],
                    "script": script,
                }],
            })
        }
    };
    actions.push(json!({ "test": test }));
    let not_run: serde_json::Map<String, Value> = not_run
        .iter()
        .map(|(n, why)| ((*n).to_owned(), Value::String(why.clone())))
        .collect();
    let mut def = json!({
        "device_type": profile.device_type(),
        "job_name": format!("cloister {} e2e ({} cases, {} CPUs)", job.stem, job.cases.len(), job.smp),
        "timeouts": {
            "job": {"minutes": JOB_MINUTES},
            "action": {"minutes": 20},
            "connection": {"minutes": 2},
        },
        "priority": "medium",
        "visibility": "public",
        "metadata": {
            "cloister.stack": stack_name,
            "cloister.git": git,
            "cloister.cases": job.cases.iter().map(|c| c.name).collect::<Vec<_>>().join(" "),
            "cloister.not-run": not_run,
        },
        "actions": actions,
    });
    if let Some(context) = profile.context(job.smp) {
        def["context"] = context;
    }
    Ok(def)
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

/// Writes the artifacts, jobs and device dictionaries into `out`.
pub fn generate(
    stack: &Stack,
    manifest: &Manifest,
    out: &Path,
    artifact_url: Option<&str>,
) -> Result<Generated> {
    generate_scenarios(stack, manifest, out, artifact_url, &e2e::scenarios())
}

/// [`generate`] for the given scenarios only.
pub fn generate_scenarios(
    stack: &Stack,
    manifest: &Manifest,
    out: &Path,
    artifact_url: Option<&str>,
    scenarios: &[e2e::Scenario],
) -> Result<Generated> {
    let profile = profile_for(stack, manifest)?;
    let plan = plan(stack, &manifest.kernel_release, scenarios);
    if plan.jobs.is_empty() {
        bail!("stack {} has no scenario LAVA can run", stack.name);
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut artifacts = BTreeMap::new();
    for (label, src) in profile.artifacts() {
        let artifact = stage_artifact(label, &src, out, artifact_url)?;
        artifacts.insert(label, artifact);
    }
    let git = format!(
        "{}{}",
        manifest.git.revision,
        if manifest.git.dirty { " (dirty)" } else { "" }
    );
    let mut jobs = Vec::new();
    for job in &plan.jobs {
        let def = job_definition(
            &stack.name,
            &git,
            profile.as_ref(),
            &artifacts,
            job,
            &plan.not_run,
        )?;
        let path = out.join(format!("{}.yaml", job.stem));
        let header = format!(
            "LAVA job: Cloister e2e scenarios on stack {} ({} device type).\n\
             Generated by `cargo xtask lava --stack {}`; edit the generator, not this file.\n\
             Submit: lavacli jobs submit {}.yaml (artifacts served at the URLs below).",
            stack.name,
            profile.device_type(),
            stack.name,
            job.stem
        );
        std::fs::write(&path, yaml::to_yaml(&def, &header))
            .with_context(|| format!("writing {}", path.display()))?;
        let device = match profile.local_device(job.smp) {
            Some(dict) => {
                let p = out.join(format!("{}.device.yaml", job.stem));
                let header = format!(
                    "LAVA device dictionary for lava-run: what lava-server's {}.jinja2 renders\n\
                     for the context of {}.yaml. A LAVA server renders its own.",
                    profile.device_type(),
                    job.stem
                );
                std::fs::write(&p, yaml::to_yaml(&dict, &header))
                    .with_context(|| format!("writing {}", p.display()))?;
                Some(p)
            }
            None => None,
        };
        jobs.push(GeneratedJob {
            stem: job.stem.clone(),
            path,
            device,
            style: profile.test_style(),
            plan: job.clone(),
            timeout: Duration::from_secs(JOB_MINUTES * 60),
        });
    }
    Ok(Generated {
        jobs,
        not_run: plan.not_run,
    })
}

/// Copies (the ramdisk: gzips) an artifact into `out`; returns its URL.
fn stage_artifact(
    label: &'static str,
    src: &Path,
    out: &Path,
    artifact_url: Option<&str>,
) -> Result<Artifact> {
    let name = src
        .file_name()
        .with_context(|| format!("{} has no file name", src.display()))?
        .to_string_lossy()
        .into_owned();
    let (file, name) = if label == "ramdisk" {
        let name = format!("{name}.gz");
        let dst = out.join(&name);
        let gz = Command::new("gzip")
            .args(["-9", "-n", "-c"])
            .arg(src)
            .output()
            .with_context(|| format!("running gzip on {}", src.display()))?;
        if !gz.status.success() {
            bail!(
                "gzip {} failed: {}",
                src.display(),
                String::from_utf8_lossy(&gz.stderr)
            );
        }
        std::fs::write(&dst, gz.stdout).with_context(|| format!("writing {}", dst.display()))?;
        (dst, name)
    } else {
        let dst = out.join(&name);
        std::fs::copy(src, &dst)
            .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        (dst, name)
    };
    let url = match artifact_url {
        Some(base) => format!("{}/{name}", base.trim_end_matches('/')),
        None => format!("file://{}", file.display()),
    };
    Ok(Artifact {
        sha256: crate::cache::sha256_file(&file)?,
        url,
    })
}

fn print_generated(g: &Generated, with_not_run: bool) {
    for job in &g.jobs {
        println!(
            "LAVA job {} ({} cases, {}): {}",
            job.stem,
            job.plan.cases.len(),
            match job.style {
                TestStyle::Shell => "lava-test-shell",
                TestStyle::Interactive => "interactive test",
            },
            job.path.display()
        );
        if let Some(device) = &job.device {
            println!("  device dictionary for lava-run: {}", device.display());
        }
    }
    if with_not_run {
        for (name, why) in &g.not_run {
            println!("  not in any job: {name}: {why}");
        }
    }
}

// ---------------------------------------------------------------------------
// LAVA's own validation.

/// What a file is, for LAVA's validator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Job,
    Device,
}

#[derive(Debug, Deserialize)]
struct Validation {
    file: String,
    ok: bool,
    path: String,
    msg: String,
}

/// Checks every file with LAVA's schema; the error names file and field.
pub fn validate_files(files: &[(FileKind, PathBuf)]) -> Result<()> {
    let mut cmd = Command::new(PYTHON);
    cmd.arg("-c").arg(HELPER).arg("validate");
    for (kind, path) in files {
        let kind = match kind {
            FileKind::Job => "job",
            FileKind::Device => "device",
        };
        cmd.arg(format!("{kind}={}", path.display()));
    }
    let out = cmd
        .output()
        .context("running python3 with LAVA's schema (lava_common)")?;
    if !out.status.success() {
        bail!(
            "LAVA's schema validator failed to run ({}):\n{}\n(install LAVA: {})",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            crate::deps::install_hint(&[SCHEMA_PACKAGES.join(" ")])
        );
    }
    let mut problems = Vec::new();
    let mut seen = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Validation = serde_json::from_str(line)
            .with_context(|| format!("reading the validator's output {line:?}"))?;
        seen += 1;
        if !v.ok {
            problems.push(if v.path.is_empty() {
                format!("LAVA rejects {}: {}", v.file, v.msg)
            } else {
                format!("LAVA rejects {}: field `{}`: {}", v.file, v.path, v.msg)
            });
        }
    }
    if seen != files.len() {
        bail!(
            "LAVA's validator answered for {seen} of {} files",
            files.len()
        );
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(())
}

/// Installs `packages` when missing: apt-get as root, else the exact
/// command to run (the same policy as the build's packages).
pub fn ensure_packages(packages: &[&str], logs: &Path) -> Result<()> {
    static APT: Mutex<()> = Mutex::new(());
    let _one_at_a_time = APT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let missing = crate::deps::missing_packages(packages)?;
    if missing.is_empty() {
        return Ok(());
    }
    if !crate::deps::is_root() {
        bail!(
            "`cargo xtask lava` needs LAVA's Debian packages ({}); run as root:\n  {}",
            missing.join(", "),
            crate::deps::install_hint(&missing)
        );
    }
    crate::stage::run_stage(logs, "lava-install", |stage| {
        crate::deps::apt_install(stage, &missing)?;
        Ok((
            (),
            Outcome::Built(format!("installed {}", missing.join(" "))),
        ))
    })
}

// ---------------------------------------------------------------------------
// Running a job with lava-run and reading its results.

/// What one lava-run left.
#[derive(Debug)]
pub struct Run {
    pub log: PathBuf,
    pub results: LavaResults,
    pub seconds: f64,
    /// Set when lava-run did not end by itself.
    pub aborted: Option<String>,
}

/// Kills lava-run's whole process group (lava-run, QEMU) when dropped.
#[derive(Debug)]
struct GroupGuard(Child);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(Some(_))) {
            return;
        }
        let Ok(pid) = i32::try_from(self.0.id()) else {
            return;
        };
        // SAFETY: kill(2) on the process group this guard's child leads (it
        // was spawned with process_group(0)); the child is not reaped yet.
        unsafe { libc::kill(-pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// Runs `job` with lava-run; stdout (LAVA's log) goes to `run_dir/lava.log`.
pub fn run_job(job: &GeneratedJob, job_id: u32, run_dir: &Path) -> Result<Run> {
    let device = job.device.as_ref().with_context(|| {
        format!(
            "job {} targets a lab device; submit it to a LAVA server instead",
            job.stem
        )
    })?;
    let _ = std::fs::remove_dir_all(run_dir);
    std::fs::create_dir_all(run_dir)?;
    let log = run_dir.join("lava.log");
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new("lava-run");
    cmd.arg("--job-id")
        .arg(job_id.to_string())
        .arg("--output-dir")
        .arg(run_dir.join("output"))
        .arg("--device")
        .arg(device)
        .arg(&job.path)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .process_group(0);
    println!(
        "lava-run {} ({} cases; log {})",
        job.stem,
        job.plan.cases.len(),
        log.display()
    );
    let started = Instant::now();
    let child = cmd.spawn().context("starting lava-run")?;
    let mut guard = GroupGuard(child);
    let deadline = started + job.timeout + Duration::from_secs(60);
    let aborted = loop {
        if let Some(status) = guard.0.try_wait()? {
            break (!status.success()).then(|| format!("lava-run exited with {status}"));
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            break Some("interrupted (Ctrl-C)".to_owned());
        }
        if Instant::now() >= deadline {
            break Some(format!(
                "lava-run still running after {}s",
                (job.timeout + Duration::from_secs(60)).as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(guard);
    let results = read_results(&log)?;
    Ok(Run {
        log,
        results,
        seconds: started.elapsed().as_secs_f64(),
        aborted,
    })
}

/// One `results` record of LAVA's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    pub definition: String,
    pub case: String,
    pub result: String,
    /// `error_msg` or `extra.fail`, when LAVA gives one.
    pub detail: Option<String>,
}

/// What LAVA's log says.
#[derive(Debug, Clone, Default)]
pub struct LavaResults {
    pub cases: Vec<CaseResult>,
    /// Agent report lines per case, from the console (`@cloister-report`).
    pub reports: BTreeMap<String, Vec<String>>,
    /// `error` records.
    pub errors: Vec<String>,
}

impl LavaResults {
    /// The job's own result (`lava` / `job`).
    pub fn job(&self) -> Option<&CaseResult> {
        self.cases
            .iter()
            .find(|c| c.definition == "lava" && c.case == "job")
    }

    /// Results of our definition's cases, by case name.
    pub fn ours(&self) -> Vec<&CaseResult> {
        let suffix = format!("_{DEFINITION}");
        self.cases
            .iter()
            .filter(|c| c.definition.ends_with(&suffix))
            .collect()
    }
}

#[derive(Debug, Deserialize)]
struct Record {
    lvl: String,
    msg: Value,
}

/// Reads LAVA's stdout log (YAML records, read with LAVA's own YAML library).
pub fn read_results(log: &Path) -> Result<LavaResults> {
    let out = Command::new(PYTHON)
        .arg("-c")
        .arg(HELPER)
        .arg("results")
        .arg(log)
        .output()
        .context("running python3 to read LAVA's log")?;
    if !out.status.success() {
        bail!(
            "reading LAVA's log {} failed: {}",
            log.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_records(&String::from_utf8_lossy(&out.stdout))
}

/// Parses the helper's JSON lines.
pub fn parse_records(text: &str) -> Result<LavaResults> {
    let mut results = LavaResults::default();
    let mark = format!("{REPORT_MARK} ");
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let rec: Record = serde_json::from_str(line).with_context(|| format!("record {line:?}"))?;
        match rec.lvl.as_str() {
            "results" => {
                let s = |k: &str| rec.msg.get(k).and_then(Value::as_str).map(str::to_owned);
                let detail = s("error_msg").or_else(|| {
                    rec.msg
                        .get("extra")
                        .and_then(|e| e.get("fail"))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                });
                results.cases.push(CaseResult {
                    definition: s("definition").unwrap_or_default(),
                    case: s("case").unwrap_or_default(),
                    result: s("result").unwrap_or_default(),
                    detail,
                });
            }
            "target" => {
                // LAVA logs console output with every `"` escaped as `\"`
                // (lava_dispatcher.shell.ShellLogger); undo that.
                let text = rec.msg.as_str().map(|m| m.replace("\\\"", "\""));
                if let Some(rest) = text.as_deref().and_then(|m| m.strip_prefix(&mark)) {
                    if let Some((case, line)) = rest.split_once(' ') {
                        results
                            .reports
                            .entry(case.to_owned())
                            .or_default()
                            .push(line.to_owned());
                    }
                }
            }
            "error" => results.errors.push(match &rec.msg {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
            _ => {}
        }
    }
    Ok(results)
}

/// Each planned case's verdict from LAVA's results, cross-checked with the
/// runner's judgement of the same agent report.
pub fn judge(job: &JobPlan, results: &LavaResults) -> Vec<(String, Verdict)> {
    let ours = results.ours();
    let job_note = match results.job() {
        Some(j) if j.result != "pass" => format!(
            " (LAVA job {}{})",
            j.result,
            j.detail
                .as_ref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        ),
        None => " (LAVA recorded no job result: lava-run did not finish)".to_owned(),
        _ => String::new(),
    };
    let mut out = Vec::new();
    for case in &job.cases {
        let lava: Vec<&&CaseResult> = ours.iter().filter(|c| c.case == case.name).collect();
        let report = results
            .reports
            .get(case.name)
            .map(|lines| lines.join("\n"))
            .unwrap_or_default();
        let runner = e2e::evaluate(case.agent_scenario, case.facts, &report, &job.expectations);
        let verdict = match (lava.as_slice(), &runner) {
            ([], _) => Verdict::Fail(format!("LAVA recorded no result{job_note}")),
            ([one], Verdict::Pass) if one.result == "pass" => Verdict::Pass,
            ([one], Verdict::Fail(why)) if one.result == "fail" => {
                Verdict::Fail(format!("LAVA: fail; the agent's report: {why}"))
            }
            ([one], Verdict::Pass) => Verdict::Fail(format!(
                "LAVA recorded {}, but the runner passes the same report (the job's \
                 in-device check and the runner disagree)",
                one.result
            )),
            ([one], other) => Verdict::Fail(format!(
                "LAVA recorded {}, but the runner judges the same report {other:?} (the \
                 job's in-device check and the runner disagree)",
                one.result
            )),
            (many, _) => Verdict::Fail(format!("LAVA recorded {} results", many.len())),
        };
        out.push((case.name.to_owned(), verdict));
    }
    for extra in ours
        .iter()
        .filter(|c| !job.cases.iter().any(|p| p.name == c.case))
    {
        out.push((
            extra.case.clone(),
            Verdict::Fail(format!(
                "LAVA recorded case {} ({}), which is no scenario of this job",
                extra.case, extra.result
            )),
        ));
    }
    out
}

/// Prints a run's per-case results; returns the verdicts.
fn report_run(job: &GeneratedJob, run: &Run) -> Vec<Verdict> {
    let job_line = match run.results.job() {
        Some(j) => format!(
            "job {}{}",
            if j.result == "pass" {
                "complete"
            } else {
                "INCOMPLETE"
            },
            j.detail
                .as_ref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        ),
        None => "no job result".to_owned(),
    };
    let mut header = format!(
        "LAVA results for {} ({:.1}s, {job_line})",
        job.stem, run.seconds
    );
    if let Some(why) = &run.aborted {
        let _ = write!(header, "; {why}");
    }
    println!("{header}");
    let mut verdicts = Vec::new();
    for (name, verdict) in judge(&job.plan, &run.results) {
        let lava = run
            .results
            .ours()
            .iter()
            .find(|c| c.case == name)
            .map_or("-", |c| c.result.as_str())
            .to_owned();
        match &verdict {
            Verdict::Pass => println!("  pass  {name:18} LAVA: {lava}"),
            Verdict::Fail(why) => println!("  FAIL  {name:18} LAVA: {lava}: {why}"),
            Verdict::Skip(why) => println!("  skip  {name:18} {why}"),
        }
        verdicts.push(verdict);
    }
    if verdicts.iter().any(|v| matches!(v, Verdict::Fail(_))) {
        for e in run.results.errors.iter().take(5) {
            println!("  LAVA error: {e}");
        }
        println!("  full LAVA log: {}", run.log.display());
    }
    verdicts
}

// ---------------------------------------------------------------------------
// `cargo xtask test`: the same scenarios under lava-run.

/// The scenarios `cargo xtask test` also runs through LAVA: the fewest that
/// prove the plumbing end to end (one job, one boot under `lava-run`): the
/// agent's hello and done lines (`boot`) and a fact whose expected value the
/// runner writes into the job for the stack (`entry-el`).
pub const TEST_RUN_SCENARIOS: [&str; 2] = ["boot", "entry-el"];

/// Runs [`TEST_RUN_SCENARIOS`] on `stack` (already built) as a LAVA job
/// with `lava-run`, in `out`, and checks that LAVA records a result for each
/// and that it is the verdict `cargo xtask test` got for the same scenario
/// (`test_run(name)`; None when it did not run). Installs LAVA's dispatcher
/// first (as root; otherwise fails with the apt-get line).
pub fn check_against_test_run(
    stack: &Stack,
    out: &Path,
    test_run: &dyn Fn(&str) -> Option<Verdict>,
) -> Verdict {
    let scenarios: Vec<e2e::Scenario> = e2e::scenarios()
        .into_iter()
        .filter(|s| TEST_RUN_SCENARIOS.contains(&s.name))
        .filter(|s| {
            matches!(
                test_run(s.name),
                Some(Verdict::Pass) | Some(Verdict::Fail(_))
            )
        })
        .collect();
    if scenarios.is_empty() {
        return Verdict::Skip(format!(
            "none of {} ran on {} in this run: nothing to compare",
            TEST_RUN_SCENARIOS.join(", "),
            stack.name
        ));
    }
    let run = || -> Result<Vec<String>> {
        ensure_packages(RUN_PACKAGES, &out.join("logs"))?;
        let manifest = Manifest::load(&crate::build::manifest_path(&stack.name))?;
        let generated = generate_scenarios(stack, &manifest, out, None, &scenarios)?;
        validate_files(&generated.files_to_validate())?;
        let mut problems = Vec::new();
        for (i, job) in generated.jobs.iter().enumerate() {
            let job_id = std::process::id()
                .wrapping_mul(10)
                .wrapping_add(u32::try_from(i).unwrap_or(0));
            let run = run_job(job, job_id, &out.join("runs").join(&job.stem))?;
            let mut mine = Vec::new();
            for (name, agrees) in compare_with_test_run(&job.plan, &run.results, test_run) {
                if let Err(why) = agrees {
                    mine.push(format!("{name}: {why}"));
                }
            }
            if !mine.is_empty() {
                if let Some(why) = &run.aborted {
                    mine.push(format!("lava-run: {why}"));
                }
                mine.push(format!("LAVA's log: {}", run.log.display()));
            }
            problems.extend(mine);
        }
        Ok(problems)
    };
    match run() {
        Ok(problems) if problems.is_empty() => Verdict::Pass,
        Ok(problems) => Verdict::Fail(problems.join("\n")),
        Err(e) => Verdict::Fail(format!("{e:#}")),
    }
}

/// For each planned case: Ok when LAVA recorded exactly one result, the
/// runner's rules give the same verdict on the report LAVA's log holds, and
/// both equal the verdict `cargo xtask test` got (`test_run`); else why not.
pub fn compare_with_test_run(
    job: &JobPlan,
    results: &LavaResults,
    test_run: &dyn Fn(&str) -> Option<Verdict>,
) -> Vec<(String, std::result::Result<(), String>)> {
    let ours = results.ours();
    let word = |pass: bool| if pass { "pass" } else { "fail" };
    job.cases
        .iter()
        .map(|case| {
            let test = match test_run(case.name) {
                Some(Verdict::Pass) => true,
                Some(Verdict::Fail(_)) => false,
                other => {
                    return (
                        case.name.to_owned(),
                        Err(format!(
                            "cargo xtask test has no verdict to compare ({other:?})"
                        )),
                    )
                }
            };
            let lava: Vec<&&CaseResult> = ours.iter().filter(|c| c.case == case.name).collect();
            let [lava] = lava.as_slice() else {
                return (
                    case.name.to_owned(),
                    Err(format!(
                        "LAVA recorded {} results for it, expected one",
                        lava.len()
                    )),
                );
            };
            let report = results
                .reports
                .get(case.name)
                .map(|lines| lines.join("\n"))
                .unwrap_or_default();
            let rerun = e2e::evaluate(case.agent_scenario, case.facts, &report, &job.expectations);
            let rerun_pass = rerun == Verdict::Pass;
            let agrees = lava.result == word(test) && rerun_pass == test;
            (
                case.name.to_owned(),
                if agrees {
                    Ok(())
                } else {
                    Err(format!(
                        "cargo xtask test: {}; LAVA: {}{}; the runner on LAVA's report: {}",
                        word(test),
                        lava.result,
                        lava.detail
                            .as_ref()
                            .map(|d| format!(" ({d})"))
                            .unwrap_or_default(),
                        match rerun {
                            Verdict::Fail(why) => format!("fail: {why}"),
                            other => format!("{other:?}").to_lowercase(),
                        }
                    ))
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests;
