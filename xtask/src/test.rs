//! `cargo xtask test`: fmt, clippy, unit tests, then every e2e scenario on a
//! fresh QEMU each. Results go to the terminal as TAP, and to
//! `target/cloister/test-results/` as TAP and JUnit XML. The last line is
//! `N passed, N failed`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use crate::e2e::{self, Expectations, Kind, ScenarioFiles, Verdict, INTERRUPTED};
use crate::qemu::{self, ArtifactPaths, BootOptions, Console};
use crate::stage::Stage;
use crate::{build, disk, manifest, stack};

/// `cargo xtask test [--stack S] [--filter PATTERN] [--no-gates]`
#[derive(Debug, clap::Args)]
pub struct Test {
    /// Stacks to boot the e2e scenarios on (repeat the flag for several).
    #[arg(long, default_values_t = TEST_STACKS.map(String::from))]
    stack: Vec<String>,
    /// Run only the e2e scenarios whose name contains PATTERN.
    #[arg(long, value_name = "PATTERN")]
    filter: Option<String>,
    /// Skip fmt, clippy and unit tests (e2e only).
    #[arg(long)]
    no_gates: bool,
    /// List the e2e scenarios and exit.
    #[arg(long)]
    list: bool,
}

/// One line of the TAP stream and one JUnit case.
#[derive(Debug)]
struct Outcome {
    suite: &'static str,
    name: String,
    verdict: Verdict,
    time: Duration,
}

/// Stacks `cargo xtask test` covers by default: the default stack (under the
/// hypervisor), the same kernel booted directly, as the baseline, and the
/// board boot path (a real U-Boot booting the disk image; ~3 s a boot).
const TEST_STACKS: [&str; 3] = [
    crate::DEFAULT_STACK,
    crate::bench::DIRECT_STACK,
    UBOOT_STACK,
];

/// The stack a real U-Boot boots from the disk image (stacks/qemu-uboot.toml).
const UBOOT_STACK: &str = "qemu-uboot";

/// The gates: each a cargo command that must succeed.
const GATES: &[(&str, &[&str])] = &[
    ("fmt", &["fmt", "--all", "--", "--check"]),
    (
        "clippy",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    ),
    (
        "clippy-el2",
        &[
            "clippy",
            "--release",
            "--target",
            "aarch64-unknown-none",
            "-p",
            "cloister-hyp",
            "-p",
            "cloister-conformance",
            "--",
            "-D",
            "warnings",
        ],
    ),
    (
        "clippy-musl",
        &[
            "clippy",
            "--release",
            "--target",
            "aarch64-unknown-linux-musl",
            "-p",
            "cloister-agent",
            "-p",
            "cloister-guest-agent",
            "-p",
            "cloister-vmm",
            "--",
            "-D",
            "warnings",
        ],
    ),
    ("unit-tests", &["test", "--workspace"]),
];

impl Test {
    pub fn run(self) -> Result<()> {
        let root = crate::project_root();
        let stacks = self
            .stack
            .iter()
            .map(|name| stack::load(&root, name))
            .collect::<Result<Vec<_>>>()?;
        let all = e2e::scenarios();
        if self.list {
            for s in &all {
                println!("{:16} {}", s.name, s.what);
            }
            return Ok(());
        }
        let selected: Vec<_> = all
            .iter()
            .filter(|s| self.filter.as_deref().is_none_or(|f| s.name.contains(f)))
            .cloned()
            .collect();
        if selected.is_empty() {
            let names: Vec<&str> = all.iter().map(|s| s.name).collect();
            bail!(
                "--filter {:?} matches no scenario; scenarios: {}",
                self.filter.unwrap_or_default(),
                names.join(", ")
            );
        }
        let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));

        let results_dir = crate::cloister_dir().join("test-results");
        let logs = results_dir.join("logs");
        let gates: &[(&str, &[&str])] = if self.no_gates { &[] } else { GATES };
        let mut tap = Tap::new(gates.len() + stacks.len() * (1 + selected.len()) + 1);
        let mut outcomes = Vec::new();

        for (name, args) in gates {
            let started = Instant::now();
            let verdict = run_gate(&root, &logs, name, args);
            outcomes.push(tap.record("gates", format!("gate: {name}"), verdict, started.elapsed()));
        }

        let qemu_binary = qemu::binary();
        for stack in &stacks {
            let started = Instant::now();
            let built = if INTERRUPTED.load(Ordering::SeqCst) {
                Err(anyhow::anyhow!("interrupted"))
            } else {
                build::build_image(&stack.name, false)
            };
            let manifest = match built {
                Ok(m) => {
                    outcomes.push(tap.record(
                        "build",
                        format!("build-image {}", stack.name),
                        Verdict::Pass,
                        started.elapsed(),
                    ));
                    Some(m)
                }
                Err(e) => {
                    let verdict = Verdict::Fail(format!("{e:#}"));
                    outcomes.push(tap.record(
                        "build",
                        format!("build-image {}", stack.name),
                        verdict,
                        started.elapsed(),
                    ));
                    None
                }
            };

            for scenario in &selected {
                let started = Instant::now();
                let name = format!("{}: {}", stack.name, scenario.name);
                let verdict = match (&manifest, &qemu_binary) {
                    _ if INTERRUPTED.load(Ordering::SeqCst) => {
                        Verdict::Fail("not run: interrupted (Ctrl-C)".into())
                    }
                    (None, _) => Verdict::Fail("not run: build-image failed".into()),
                    (_, Err(e)) => Verdict::Fail(format!("{e:#}")),
                    (Some(m), Ok(qemu_path)) => {
                        let dir = results_dir.join(&stack.name).join(scenario.name);
                        let verdict = run_scenario(stack, m, qemu_path, scenario, &dir)
                            .unwrap_or_else(|e| Verdict::Fail(format!("{e:#}")));
                        // A per-boot disk copy is kept only to debug a failure.
                        if !matches!(verdict, Verdict::Fail(_)) {
                            let _ = std::fs::remove_file(dir.join(qemu::PER_BOOT_DISK));
                        }
                        verdict
                    }
                };
                outcomes.push(tap.record("e2e", name, verdict, started.elapsed()));
            }
        }

        outcomes.push(lava_check(&mut tap, &stacks, &outcomes, &results_dir));

        std::fs::create_dir_all(&results_dir)?;
        std::fs::write(results_dir.join("results.tap"), &tap.text)?;
        write_junit(&results_dir.join("junit.xml"), &outcomes)?;
        let passed = outcomes
            .iter()
            .filter(|o| o.verdict == Verdict::Pass)
            .count();
        let failed = outcomes
            .iter()
            .filter(|o| matches!(o.verdict, Verdict::Fail(_)))
            .count();
        println!(
            "results: {} and {}",
            results_dir.join("results.tap").display(),
            results_dir.join("junit.xml").display()
        );
        let skipped = outcomes
            .iter()
            .filter(|o| matches!(o.verdict, Verdict::Skip(_)))
            .count();
        // The closing line CI reads; skips are only scenarios a stack does
        // not support, each with its reason above.
        if skipped > 0 {
            println!("{passed} passed, {failed} failed, {skipped} skipped");
        } else {
            println!("{passed} passed, {failed} failed");
        }
        if failed > 0 {
            std::process::exit(1);
        }
        Ok(())
    }
}

/// The LAVA item: [`crate::lava::TEST_RUN_SCENARIOS`] on the default stack
/// (else the first QEMU stack of this run) as a LAVA job under `lava-run`,
/// whose per-case results must be the verdicts this run got for them.
fn lava_check(
    tap: &mut Tap,
    stacks: &[stack::Stack],
    outcomes: &[Outcome],
    results_dir: &Path,
) -> Outcome {
    let started = Instant::now();
    let chosen = stacks
        .iter()
        .find(|s| s.name == crate::DEFAULT_STACK)
        .or_else(|| stacks.iter().find(|s| s.file.board.is_none()));
    let what = format!(
        "lava-run of {} matches cargo xtask test",
        crate::lava::TEST_RUN_SCENARIOS.join(", ")
    );
    let (name, verdict) = match chosen {
        _ if INTERRUPTED.load(Ordering::SeqCst) => (
            format!("lava: {what}"),
            Verdict::Fail("not run: interrupted (Ctrl-C)".into()),
        ),
        None => (
            format!("lava: {what}"),
            Verdict::Skip("no QEMU stack in this run".into()),
        ),
        Some(stack) => {
            let verdict_of = |scenario: &str| {
                let name = format!("{}: {scenario}", stack.name);
                outcomes
                    .iter()
                    .find(|o| o.suite == "e2e" && o.name == name)
                    .map(|o| o.verdict.clone())
            };
            let out = results_dir.join("lava").join(&stack.name);
            (
                format!("lava: {}: {what}", stack.name),
                crate::lava::check_against_test_run(stack, &out, &verdict_of),
            )
        }
    };
    tap.record("e2e", name, verdict, started.elapsed())
}

/// Runs one cargo gate with its output in `logs/<name>.log`.
fn run_gate(root: &Path, logs: &Path, name: &str, args: &[&str]) -> Verdict {
    let stage = match Stage::begin(logs, name) {
        Ok(s) => s,
        Err(e) => return Verdict::Fail(format!("{e:#}")),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let result = stage.run(Command::new(cargo).args(args).current_dir(root));
    stage.finish();
    match result {
        Ok(()) => Verdict::Pass,
        Err(e) => {
            crate::stage::print_tail(stage.log_path());
            Verdict::Fail(format!("{e:#} (full log: {})", stage.log_path().display()))
        }
    }
}

fn run_scenario(
    stack: &stack::Stack,
    manifest: &crate::manifest::Manifest,
    qemu_path: &PathBuf,
    scenario: &e2e::Scenario,
    dir: &Path,
) -> Result<Verdict> {
    let files = ScenarioFiles::new(dir)?;
    let paths = ArtifactPaths::from_manifest(manifest)?;
    if scenario.needs_hyp && !stack.file.hyp.enabled {
        return Ok(Verdict::Skip(
            "needs the hypervisor (hyp.enabled = false on this stack)".into(),
        ));
    }
    let exp = Expectations {
        entry_el: stack.file.expect.entry_el,
        kernel_release: manifest.kernel_release.clone(),
        smp: scenario.smp.unwrap_or(stack.file.qemu.smp),
    };
    // Every boot of this scenario: its console, its CPU count.
    let boot_opts = |console| BootOptions {
        smp: scenario.smp,
        ..BootOptions::new(console)
    };
    match &scenario.kind {
        Kind::Agent {
            agent_scenario,
            facts,
        } => {
            let opts = BootOptions {
                extra_cmdline: qemu::agent_cmdline(agent_scenario),
                results: Some(files.results.clone()),
                ..boot_opts(Console::File(files.console.clone()))
            };
            // A disk boot carries the scenario's command line in a per-boot
            // copy of the disk image (uEnv.txt); -append cannot reach it.
            let paths = qemu::prepare_boot(stack, &paths, &opts, dir)?;
            let mut cmd = Command::new(qemu_path);
            cmd.args(qemu::args(stack, &paths, &opts));
            e2e::run_agent_scenario(scenario, agent_scenario, facts, cmd, &files, &exp)
        }
        Kind::DemoShell => {
            let opts = boot_opts(Console::Stdio);
            let paths = qemu::prepare_boot(stack, &paths, &opts, dir)?;
            let mut cmd = Command::new(qemu_path);
            cmd.args(qemu::args(stack, &paths, &opts));
            // With a hypervisor and a [guest], the demo starts the Linux
            // guest on the console first; its `poweroff` leads to the host.
            let guest = stack.file.hyp.enabled && stack.file.guest.is_some();
            e2e::run_demo_shell(scenario, cmd, &files, guest)
        }
        Kind::DamagedImage(damage) => {
            let damaged = dir.join("damaged.img");
            let expected = e2e::damage_image(&paths.kernel, &damaged, *damage)?;
            let opts = boot_opts(Console::File(files.console.clone()));
            let damaged_paths = if paths.firmware.is_some() {
                // Through U-Boot: the damaged image replaces cloister.img in
                // a per-boot copy of the disk.
                let bytes = std::fs::read(&damaged)
                    .with_context(|| format!("reading {}", damaged.display()))?;
                let file = disk::BootFile::new(disk::BOOT_IMAGE, bytes);
                qemu::private_disk(stack, &paths, &opts, dir, &[file])?
            } else {
                ArtifactPaths {
                    kernel: damaged,
                    ..paths.clone()
                }
            };
            let mut cmd = Command::new(qemu_path);
            cmd.args(qemu::args(stack, &damaged_paths, &opts));
            e2e::run_damaged_image(scenario, cmd, &files, &expected)
        }
        Kind::GuestPlainQemu { tests, facts } => {
            let Some(guest) = &stack.file.guest else {
                return Ok(Verdict::Skip(
                    "boots the stack's Linux guest (this stack has no [guest] table)".into(),
                ));
            };
            let exp = Expectations {
                kernel_release: manifest
                    .output_item(manifest::GUEST_KERNEL)?
                    .version
                    .clone()
                    .unwrap_or_default(),
                smp: guest.cpus,
                ..exp
            };
            crate::guest::run_plain_scenario(
                qemu_path,
                guest,
                manifest.output(manifest::GUEST_KERNEL)?,
                manifest.output(manifest::GUEST_INITRAMFS)?,
                tests,
                facts,
                &exp,
                scenario.timeout,
                dir,
            )
        }
        Kind::BrokenDisk(damage) => {
            if paths.firmware.is_none() {
                return Ok(Verdict::Skip(
                    "boots a damaged disk image through U-Boot (qemu.boot = \"kernel\" on this \
                     stack)"
                        .into(),
                ));
            }
            let opts = boot_opts(Console::File(files.console.clone()));
            let broken = qemu::private_disk(stack, &paths, &opts, dir, &[])?;
            damage.apply(broken.disk.as_deref().context("no per-boot disk image")?)?;
            let mut cmd = Command::new(qemu_path);
            cmd.args(qemu::args(stack, &broken, &opts));
            let expected = damage.expected_messages(stack.file.disk.partition_table);
            e2e::run_broken_disk(scenario, cmd, &files, expected)
        }
    }
    .context("running scenario")
}

/// A TAP 13 stream printed as it goes and kept for results.tap.
#[derive(Debug)]
struct Tap {
    text: String,
    next: usize,
}

impl Tap {
    fn new(planned: usize) -> Self {
        let mut tap = Tap {
            text: String::new(),
            next: 1,
        };
        tap.emit("TAP version 13");
        tap.emit(&format!("1..{planned}"));
        tap
    }

    fn emit(&mut self, line: &str) {
        println!("{line}");
        self.text.push_str(line);
        self.text.push('\n');
    }

    fn record(
        &mut self,
        suite: &'static str,
        name: String,
        verdict: Verdict,
        time: Duration,
    ) -> Outcome {
        let n = self.next;
        self.next += 1;
        match &verdict {
            Verdict::Pass => self.emit(&format!("ok {n} - {name} # {:.1}s", time.as_secs_f64())),
            Verdict::Skip(why) => self.emit(&format!("ok {n} - {name} # SKIP {why}")),
            Verdict::Fail(why) => {
                self.emit(&format!("not ok {n} - {name}"));
                self.emit("  ---");
                self.emit("  message: |");
                for line in why.lines() {
                    self.emit(&format!("    {line}"));
                }
                self.emit("  ...");
            }
        }
        Outcome {
            suite,
            name,
            verdict,
            time,
        }
    }
}

fn write_junit(path: &Path, outcomes: &[Outcome]) -> Result<()> {
    let mut report = Report::new("cloister");
    for suite_name in ["gates", "build", "e2e"] {
        let mut suite = TestSuite::new(suite_name);
        for o in outcomes.iter().filter(|o| o.suite == suite_name) {
            let status = match &o.verdict {
                Verdict::Pass => TestCaseStatus::success(),
                Verdict::Skip(why) => {
                    let mut s = TestCaseStatus::skipped();
                    s.set_message(why.clone());
                    s
                }
                Verdict::Fail(why) => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    s.set_message(why.lines().next().unwrap_or("failed").to_owned());
                    s.set_description(why.clone());
                    s
                }
            };
            let mut case = TestCase::new(o.name.clone(), status);
            case.set_time(o.time);
            suite.add_test_case(case);
        }
        report.add_test_suite(suite);
    }
    std::fs::write(path, report.to_string()?).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_stream_has_plan_and_diagnostics() {
        let mut tap = Tap::new(2);
        tap.record(
            "e2e",
            "a".into(),
            Verdict::Pass,
            Duration::from_millis(1500),
        );
        tap.record(
            "e2e",
            "b".into(),
            Verdict::Fail("line one\nline two".into()),
            Duration::ZERO,
        );
        assert_eq!(
            tap.text,
            "TAP version 13\n1..2\nok 1 - a # 1.5s\nnot ok 2 - b\n  ---\n  message: |\n    line one\n    line two\n  ...\n"
        );
    }

    #[test]
    fn junit_lists_failures_with_messages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junit.xml");
        let outcomes = vec![
            Outcome {
                suite: "gates",
                name: "gate: fmt".into(),
                verdict: Verdict::Pass,
                time: Duration::ZERO,
            },
            Outcome {
                suite: "e2e",
                name: "s: boot".into(),
                verdict: Verdict::Fail("boom\nmore".into()),
                time: Duration::ZERO,
            },
        ];
        write_junit(&path, &outcomes).unwrap();
        let xml = std::fs::read_to_string(path).unwrap();
        assert!(
            xml.contains(r#"tests="2""#) && xml.contains(r#"failures="1""#),
            "{xml}"
        );
        assert!(xml.contains(r#"<failure message="boom""#), "{xml}");
    }
}
