//! End-to-end scenarios: each boots a fresh QEMU, headless, and is judged by
//! what the in-VM agent reports on its result port (never by sleeping and
//! grepping the console). QEMU is killed when a scenario ends, times out or
//! the user hits Ctrl-C.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cloister_agent::protocol::{Report, PROTOCOL_VERSION};

/// Set by the Ctrl-C handler; every wait loop polls it.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// A fact the agent reports and the stack expectation it must equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// `kernel_release` = the release build-image recorded.
    KernelRelease,
    /// `entry_el` = the stack's `expect.entry-el`.
    EntryEl,
}

impl Expected {
    fn key(self) -> &'static str {
        match self {
            Expected::KernelRelease => "kernel_release",
            Expected::EntryEl => "entry_el",
        }
    }

    fn value(self, exp: &Expectations) -> String {
        match self {
            Expected::KernelRelease => exp.kernel_release.clone(),
            Expected::EntryEl => exp.entry_el.to_string(),
        }
    }
}

/// What a scenario does.
#[derive(Debug, Clone)]
pub enum Kind {
    /// Boot with the agent as PID 1 running `agent_scenario`; pass when the
    /// report is complete, every check passed and every fact matches.
    Agent {
        agent_scenario: &'static str,
        facts: &'static [Expected],
    },
    /// Boot the demo initramfs, wait for the busybox prompt on the serial
    /// console, type `poweroff`, expect QEMU to exit with status 0.
    DemoShell,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub what: &'static str,
    pub kind: Kind,
    pub timeout: Duration,
}

/// Every scenario, in the order they run.
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "boot",
            what: "the host kernel boots to the test agent",
            kind: Kind::Agent {
                agent_scenario: "boot",
                facts: &[],
            },
            timeout: Duration::from_secs(120),
        },
        Scenario {
            name: "kernel-version",
            what: "uname -r equals the release build-image built",
            kind: Kind::Agent {
                agent_scenario: "kernel-version",
                facts: &[Expected::KernelRelease],
            },
            timeout: Duration::from_secs(120),
        },
        Scenario {
            name: "entry-el",
            what: "the kernel was entered at the stack's expected exception level",
            kind: Kind::Agent {
                agent_scenario: "entry-el",
                facts: &[Expected::EntryEl],
            },
            timeout: Duration::from_secs(120),
        },
        Scenario {
            name: "demo-shell",
            what: "the demo boots to a busybox prompt and `poweroff` exits QEMU with status 0",
            kind: Kind::DemoShell,
            timeout: Duration::from_secs(120),
        },
    ]
}

/// The stack-specific values scenarios compare against.
#[derive(Debug, Clone)]
pub struct Expectations {
    pub entry_el: u8,
    pub kernel_release: String,
}

/// A scenario's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(String),
}

/// Judges an agent scenario from the text of its result port.
pub fn evaluate(
    agent_scenario: &str,
    facts: &[Expected],
    results: &str,
    exp: &Expectations,
) -> Verdict {
    let mut reports = Vec::new();
    for line in results.lines().filter(|l| !l.trim().is_empty()) {
        match Report::from_line(line) {
            Ok(r) => reports.push(r),
            Err(e) => return Verdict::Fail(format!("result port: {e}")),
        }
    }
    match reports.first() {
        Some(Report::Hello {
            protocol, scenario, ..
        }) => {
            if *protocol != PROTOCOL_VERSION {
                return Verdict::Fail(format!(
                    "agent speaks protocol {protocol}, runner expects {PROTOCOL_VERSION}; rebuild the image"
                ));
            }
            if scenario != agent_scenario {
                return Verdict::Fail(format!(
                    "agent ran scenario {scenario:?}, expected {agent_scenario:?}"
                ));
            }
        }
        Some(other) => return Verdict::Fail(format!("first report is {other:?}, expected hello")),
        None => return Verdict::Fail("the agent reported nothing".into()),
    }
    if !matches!(reports.last(), Some(Report::Done { .. })) {
        return Verdict::Fail(
            "the agent's report ends before `done` (agent crashed or was cut off)".into(),
        );
    }
    let failed: Vec<String> = reports
        .iter()
        .filter_map(|r| match r {
            Report::Check {
                name,
                ok: false,
                detail,
            } => Some(format!("check {name} failed: {detail}")),
            _ => None,
        })
        .collect();
    if !failed.is_empty() {
        return Verdict::Fail(failed.join("; "));
    }
    let mut mismatches = Vec::new();
    for fact in facts {
        let want = fact.value(exp);
        let got = reports.iter().find_map(|r| match r {
            Report::Fact { key, value } if key == fact.key() => Some(value.as_str()),
            _ => None,
        });
        match got {
            Some(v) if v == want => {}
            Some(v) => mismatches.push(format!(
                "{}: expected {want:?}, agent reported {v:?}",
                fact.key()
            )),
            None => mismatches.push(format!(
                "{}: expected {want:?}, agent reported nothing",
                fact.key()
            )),
        }
    }
    if !mismatches.is_empty() {
        return Verdict::Fail(mismatches.join("; "));
    }
    if let Some(Report::Done { ok: false }) = reports.last() {
        return Verdict::Fail("the agent finished with ok=false".into());
    }
    Verdict::Pass
}

/// How a boot ended.
#[derive(Debug)]
pub enum BootEnd {
    Exited(ExitStatus),
    TimedOut,
    Interrupted,
}

/// Kills QEMU (or whatever it is) when dropped, so no path leaves it running.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        terminate(&mut self.0);
    }
}

/// Asks a child to stop (SIGTERM lets QEMU restore the terminal), then kills
/// it if it has not gone within two seconds, and reaps it.
pub fn terminate(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on our own child's pid; the child is not yet reaped,
        // so the pid cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs `cmd` (stdin closed, stdout/stderr to `qemu_log`) until it exits,
/// `timeout` passes or Ctrl-C.
pub fn run_boot(cmd: &mut Command, qemu_log: &Path, timeout: Duration) -> Result<BootEnd> {
    let log = std::fs::File::create(qemu_log)
        .with_context(|| format!("creating {}", qemu_log.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", crate::stage::display_command(cmd)))?;
    let mut guard = ChildGuard(child);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = guard.0.try_wait()? {
            return Ok(BootEnd::Exited(status));
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            return Ok(BootEnd::Interrupted);
        }
        if Instant::now() >= deadline {
            return Ok(BootEnd::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Files one scenario run writes.
#[derive(Debug, Clone)]
pub struct ScenarioFiles {
    pub console: PathBuf,
    pub results: PathBuf,
    pub qemu_log: PathBuf,
}

impl ScenarioFiles {
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let files = ScenarioFiles {
            console: dir.join("console.log"),
            results: dir.join("results.jsonl"),
            qemu_log: dir.join("qemu.log"),
        };
        for f in [&files.console, &files.results, &files.qemu_log] {
            let _ = std::fs::remove_file(f);
        }
        Ok(files)
    }
}

/// Console lines shown with a failure.
const CONSOLE_TAIL: usize = 25;

/// Appends the console's tail and the log paths to a failure message.
fn with_console(msg: String, files: &ScenarioFiles) -> String {
    let mut out = msg;
    out.push_str(&format!(
        "\n--- console tail ({}) ---\n",
        files.console.display()
    ));
    for line in crate::stage::tail(&files.console, CONSOLE_TAIL) {
        out.push_str(&line);
        out.push('\n');
    }
    let qemu = crate::stage::tail(&files.qemu_log, 5);
    if !qemu.is_empty() {
        out.push_str(&format!(
            "--- qemu output ({}) ---\n",
            files.qemu_log.display()
        ));
        for line in qemu {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out.push_str(&format!("--- console log: {} ---", files.console.display()));
    out
}

/// Runs an agent scenario with `cmd` as the (already wired) QEMU command.
pub fn run_agent_scenario(
    scenario: &Scenario,
    agent_scenario: &str,
    facts: &[Expected],
    mut cmd: Command,
    files: &ScenarioFiles,
    exp: &Expectations,
) -> Result<Verdict> {
    let end = run_boot(&mut cmd, &files.qemu_log, scenario.timeout)?;
    let results = std::fs::read_to_string(&files.results).unwrap_or_default();
    let verdict = match end {
        BootEnd::Interrupted => {
            Verdict::Fail(format!("scenario {} interrupted (Ctrl-C)", scenario.name))
        }
        BootEnd::TimedOut => Verdict::Fail(with_console(
            format!(
                "scenario {} timed out after {}s",
                scenario.name,
                scenario.timeout.as_secs()
            ),
            files,
        )),
        BootEnd::Exited(status) => match evaluate(agent_scenario, facts, &results, exp) {
            Verdict::Fail(why) => Verdict::Fail(with_console(
                format!(
                    "scenario {} failed (QEMU exited with {status}): {why}",
                    scenario.name
                ),
                files,
            )),
            other => other,
        },
    };
    Ok(verdict)
}

/// The prompt /etc/profile sets in the host shell.
pub const HOST_PROMPT: &str = "cloister-host:";

/// Runs the demo-shell scenario with `cmd` as the QEMU command wired with the
/// serial console on stdio.
pub fn run_demo_shell(
    scenario: &Scenario,
    mut cmd: Command,
    files: &ScenarioFiles,
) -> Result<Verdict> {
    let qemu_log = std::fs::File::create(&files.qemu_log)?;
    let child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(qemu_log)
        .spawn()
        .with_context(|| format!("starting {}", crate::stage::display_command(&cmd)))?;
    let mut guard = ChildGuard(child);
    let mut stdout = guard.0.stdout.take().context("QEMU stdout")?;
    let mut stdin = guard.0.stdin.take().context("QEMU stdin")?;
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let console_path = files.console.clone();
    std::thread::spawn(move || {
        let mut console = std::fs::File::create(console_path).ok();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Some(c) = console.as_mut() {
                let _ = c.write_all(&buf[..n]);
            }
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + scenario.timeout;
    let mut seen = Vec::new();
    let mut sent_poweroff = false;
    loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return Ok(Verdict::Fail(format!(
                "scenario {} interrupted (Ctrl-C)",
                scenario.name
            )));
        }
        if Instant::now() >= deadline {
            let stage = if sent_poweroff {
                "after `poweroff`"
            } else {
                "waiting for the shell prompt"
            };
            return Ok(Verdict::Fail(with_console(
                format!(
                    "scenario {} timed out after {}s {stage}",
                    scenario.name,
                    scenario.timeout.as_secs()
                ),
                files,
            )));
        }
        while let Ok(chunk) = rx.try_recv() {
            seen.extend_from_slice(&chunk);
        }
        if !sent_poweroff && String::from_utf8_lossy(&seen).contains(HOST_PROMPT) {
            stdin.write_all(b"poweroff\n")?;
            stdin.flush()?;
            sent_poweroff = true;
        }
        if let Some(status) = guard.0.try_wait()? {
            return Ok(match (sent_poweroff, status.success()) {
                (true, true) => Verdict::Pass,
                (true, false) => Verdict::Fail(with_console(
                    format!(
                        "scenario {}: QEMU exited with {status} after `poweroff`, expected 0",
                        scenario.name
                    ),
                    files,
                )),
                (false, _) => Verdict::Fail(with_console(
                    format!(
                        "scenario {}: QEMU exited with {status} before the shell prompt",
                        scenario.name
                    ),
                    files,
                )),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp() -> Expectations {
        Expectations {
            entry_el: 2,
            kernel_release: "6.12.117".into(),
        }
    }

    fn report(scenario: &str, middle: &[Report], done: bool) -> String {
        let mut lines = vec![Report::Hello {
            protocol: PROTOCOL_VERSION,
            agent_version: "t".into(),
            scenario: scenario.into(),
        }];
        lines.extend_from_slice(middle);
        if done {
            lines.push(Report::Done { ok: true });
        }
        lines.iter().map(|r| r.to_line() + "\n").collect()
    }

    fn fact(k: &str, v: &str) -> Report {
        Report::Fact {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn matching_fact_passes() {
        let text = report("entry-el", &[fact("entry_el", "2")], true);
        assert_eq!(
            evaluate("entry-el", &[Expected::EntryEl], &text, &exp()),
            Verdict::Pass
        );
    }

    /// The runner must be able to fail: the same report against a stack that
    /// expects EL1 (as the hyp stacks will) is a failure naming both values.
    #[test]
    fn wrong_expectation_fails_naming_expected_and_reported() {
        let text = report("entry-el", &[fact("entry_el", "2")], true);
        let el1 = Expectations {
            entry_el: 1,
            ..exp()
        };
        match evaluate("entry-el", &[Expected::EntryEl], &text, &el1) {
            Verdict::Fail(why) => assert_eq!(why, "entry_el: expected \"1\", agent reported \"2\""),
            other => panic!("wrong expectation must fail, got {other:?}"),
        }
        let text = report("kernel-version", &[fact("kernel_release", "6.1.0")], true);
        assert!(matches!(
            evaluate("kernel-version", &[Expected::KernelRelease], &text, &exp()),
            Verdict::Fail(w) if w.contains("6.12.117") && w.contains("6.1.0")
        ));
    }

    #[test]
    fn incomplete_or_garbled_reports_fail() {
        let cut = report("boot", &[], false);
        assert!(
            matches!(evaluate("boot", &[], &cut, &exp()), Verdict::Fail(w) if w.contains("before `done`"))
        );
        assert!(
            matches!(evaluate("boot", &[], "", &exp()), Verdict::Fail(w) if w.contains("reported nothing"))
        );
        let garbled = format!("{}Booting Linux\n", report("boot", &[], true));
        assert!(
            matches!(evaluate("boot", &[], &garbled, &exp()), Verdict::Fail(w) if w.contains("malformed"))
        );
        let other = report("entry-el", &[], true);
        assert!(
            matches!(evaluate("boot", &[], &other, &exp()), Verdict::Fail(w) if w.contains("expected \"boot\""))
        );
        let missing = report("entry-el", &[], true);
        assert!(matches!(
            evaluate("entry-el", &[Expected::EntryEl], &missing, &exp()),
            Verdict::Fail(w) if w.contains("reported nothing")
        ));
        let failed = report(
            "boot",
            &[Report::Check {
                name: "x".into(),
                ok: false,
                detail: "bad".into(),
            }],
            true,
        );
        assert!(
            matches!(evaluate("boot", &[], &failed, &exp()), Verdict::Fail(w) if w.contains("check x failed: bad"))
        );
    }

    #[test]
    fn hung_boot_times_out_naming_scenario_console_tail_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let files = ScenarioFiles::new(dir.path()).unwrap();
        let scenario = Scenario {
            name: "hangs",
            what: "test",
            kind: Kind::Agent {
                agent_scenario: "boot",
                facts: &[],
            },
            timeout: Duration::from_millis(700),
        };
        // Stands in for a QEMU whose guest prints a little and then hangs.
        let mut fake_qemu = Command::new("sh");
        fake_qemu.arg("-c").arg(format!(
            "echo 'Booting Linux on physical CPU 0x0' > {}; echo 'stuck in init' >> {0}; exec sleep 60",
            files.console.display()
        ));
        let started = Instant::now();
        let verdict =
            run_agent_scenario(&scenario, "boot", &[], fake_qemu, &files, &exp()).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "timeout not enforced"
        );
        match verdict {
            Verdict::Fail(msg) => {
                assert!(msg.contains("scenario hangs timed out after 0s"), "{msg}");
                assert!(msg.contains("stuck in init"), "{msg}");
                assert!(msg.contains(&files.console.display().to_string()), "{msg}");
            }
            other => panic!("expected a timeout failure, got {other:?}"),
        }
    }

    #[test]
    fn child_guard_kills_on_drop() {
        let child = Command::new("sh")
            .arg("-c")
            .arg("exec sleep 60")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        drop(ChildGuard(child));
        // SAFETY: signal 0 only checks whether the pid exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "child {pid} survived its guard");
    }

    #[test]
    fn scenario_names_are_unique() {
        let names: std::collections::BTreeSet<&str> = scenarios().iter().map(|s| s.name).collect();
        assert_eq!(names.len(), scenarios().len());
    }
}
