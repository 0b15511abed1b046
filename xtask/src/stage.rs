//! Long-running work shown as stages: a spinner per stage, the full output of
//! every command in a log file, and on failure the log's last lines and path.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

/// How many lines of a failed stage's log are printed.
pub const TAIL_LINES: usize = 40;

/// What a stage did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Work was done; the string says what, e.g. "make Image".
    Built(String),
    /// Inputs unchanged; the string says why it was skipped.
    Cached(String),
}

/// A stage in progress: its log file and its spinner.
#[derive(Debug)]
pub struct Stage {
    name: String,
    log_path: PathBuf,
    bar: ProgressBar,
}

/// Runs `body` as stage `name`, logging to `logs_dir/<name>.log`.
///
/// Prints one line when the stage ends (built / cached / failed with the
/// log's tail), so the output stays readable without a terminal.
pub fn run_stage<T>(
    logs_dir: &Path,
    name: &str,
    body: impl FnOnce(&mut Stage) -> Result<(T, Outcome)>,
) -> Result<T> {
    let started = Instant::now();
    let mut stage = Stage::begin(logs_dir, name)?;
    let result = body(&mut stage);
    stage.finish();
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok((value, Outcome::Built(what))) => {
            println!("  built   {:14} {what} ({secs:.1}s)", stage.name);
            Ok(value)
        }
        Ok((value, Outcome::Cached(why))) => {
            println!("  cached  {:14} {why}", stage.name);
            Ok(value)
        }
        Err(err) => {
            println!("  FAILED  {:14} after {secs:.1}s", stage.name);
            print_tail(&stage.log_path);
            Err(err.context(format!(
                "stage {} failed (full log: {})",
                stage.name,
                stage.log_path.display()
            )))
        }
    }
}

impl Stage {
    /// Starts a stage: truncates `logs_dir/<name>.log` and shows a spinner.
    pub fn begin(logs_dir: &Path, name: &str) -> Result<Stage> {
        std::fs::create_dir_all(logs_dir)
            .with_context(|| format!("creating log directory {}", logs_dir.display()))?;
        let log_path = logs_dir.join(format!("{name}.log"));
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:14} {elapsed:>4} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(name.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        Ok(Stage {
            name: name.to_owned(),
            log_path,
            bar,
        })
    }

    /// Removes the spinner.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// Appends a line to the stage's log.
    pub fn log(&self, line: &str) {
        use std::io::Write;
        if let Ok(mut f) = OpenOptions::new().append(true).open(&self.log_path) {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Shows `msg` next to the spinner.
    pub fn status(&self, msg: &str) {
        self.bar.set_message(msg.to_owned());
        self.log(&format!("== {msg}"));
    }

    /// Runs `cmd` with stdout and stderr appended to the stage log, showing
    /// the log's latest line next to the spinner. Fails with the exit status.
    pub fn run(&self, cmd: &mut Command) -> Result<()> {
        let shown = display_command(cmd);
        self.log(&format!("$ {shown}"));
        let log = OpenOptions::new()
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting `{shown}`"))?;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if let Some(line) = last_line(&self.log_path) {
                self.bar.set_message(line);
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        if !status.success() {
            bail!("`{shown}` failed with {status}");
        }
        Ok(())
    }

    /// Runs `cmd` and returns its stdout (stderr goes to the log).
    pub fn output(&self, cmd: &mut Command) -> Result<String> {
        let shown = display_command(cmd);
        self.log(&format!("$ {shown}"));
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("starting `{shown}`"))?;
        self.log(&String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            bail!("`{shown}` failed with {}", out.status);
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
}

/// A command as a shell would show it (for logs and error messages).
pub fn display_command(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| shell_quote(&a.to_string_lossy())));
    parts.join(" ")
}

/// Quotes `s` for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The last `n` lines of a file (lossy UTF-8), reading at most 64 KiB.
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let Ok(mut f) = File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| (*l).to_owned())
        .collect()
}

fn last_line(path: &Path) -> Option<String> {
    tail(path, 1).pop().filter(|l| !l.trim().is_empty())
}

/// Prints the last [`TAIL_LINES`] lines of a log and its path.
pub fn print_tail(path: &Path) {
    println!("---- last {TAIL_LINES} lines of {} ----", path.display());
    for line in tail(path, TAIL_LINES) {
        println!("{line}");
    }
    println!("---- end of {} ----", path.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_stage_reports_log_path_and_keeps_output() {
        let dir = tempfile::tempdir().unwrap();
        let err = run_stage(dir.path(), "demo", |stage| {
            stage.run(Command::new("sh").args(["-c", "echo first; echo boom >&2; exit 3"]))?;
            Ok(((), Outcome::Built("never".into())))
        })
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("stage demo failed"), "{msg}");
        assert!(msg.contains("demo.log"), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
        let log = std::fs::read_to_string(dir.path().join("demo.log")).unwrap();
        assert!(log.contains("first") && log.contains("boom"), "{log}");
    }

    #[test]
    fn tail_returns_the_last_lines_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let text: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let lines = tail(&path, 3);
        assert_eq!(lines, ["line 98", "line 99", "line 100"]);
    }

    #[test]
    fn shell_quote_quotes_only_when_needed() {
        assert_eq!(shell_quote("-M"), "-M");
        assert_eq!(
            shell_quote("console=ttyAMA0 earlycon"),
            "'console=ttyAMA0 earlycon'"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
