//! `cargo xtask bench boot`: what the hypervisor costs at boot.
//! `cargo xtask bench memory`: the two protected-memory models side by
//! side (measured by the agent's `bench-memory` scenario in one boot).
//!
//! Boots the same host kernel and initramfs N times directly and N times
//! under the hyp, interleaved so machine noise hits both alike, and measures
//! wall time from starting QEMU to the agent's first line on the result
//! port. Prints both medians and their ratio, all from this one run.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::e2e::ChildGuard;
use crate::qemu::{self, ArtifactPaths, BootOptions, Console};
use crate::{build, stack};

/// `cargo xtask bench boot [-n N]`
#[derive(Debug, clap::Args)]
pub struct Bench {
    #[command(subcommand)]
    what: BenchKind,
}

#[derive(Debug, clap::Subcommand)]
enum BenchKind {
    /// Boot time to the agent, direct vs. under the hyp.
    Boot {
        /// Boots per stack.
        #[arg(short = 'n', long, default_value_t = 10)]
        runs: usize,
        /// Stack that boots the host kernel directly.
        #[arg(long, default_value = DIRECT_STACK)]
        direct: String,
        /// Stack that boots the same kernel under the hyp.
        #[arg(long, default_value = HYP_STACK)]
        hyp: String,
    },
    /// A 256 MiB protected guest on each memory model (pinned anonymous
    /// memory vs. guest_memfd), measured in one boot of the host.
    Memory {
        /// Stack to boot (needs the hyp).
        #[arg(long, default_value = HYP_STACK)]
        stack: String,
    },
    /// The Linux guest's disk IO: (a) protected and (b) normal on Cloister,
    /// (c) a normal guest on plain QEMU (TCG, no hyp), with the ratios and
    /// the transitions per request.
    Io {
        /// Stack to boot (needs the hyp and a `[guest]`).
        #[arg(long, default_value = HYP_STACK)]
        stack: String,
    },
}

/// The IO bench's rows: agent fact suffix, label, the plain-QEMU guest's
/// fact for it.
const IO_ROWS: &[(&str, &str, &str)] = &[
    (
        "seq_write_mbps",
        "sequential write, O_DIRECT 1 MiB (MB/s)",
        "blk_direct_write_mbps",
    ),
    (
        "seq_read_mbps",
        "sequential read, O_DIRECT 1 MiB (MB/s)",
        "blk_direct_read_mbps",
    ),
    (
        "buffered_write_mbps",
        "buffered write + fsync (MB/s)",
        "blk_buffered_write_mbps",
    ),
    (
        "buffered_read_mbps",
        "buffered read (MB/s)",
        "blk_buffered_read_mbps",
    ),
    (
        "rand_write_iops",
        "4 KiB random write, O_DIRECT (IOPS)",
        "rand_write_iops",
    ),
    (
        "rand_read_iops",
        "4 KiB random read, O_DIRECT (IOPS)",
        "rand_read_iops",
    ),
];

/// The IO bench's transition rows: agent fact suffix, label.
const IO_TRANSITIONS: &[(&str, &str)] = &[
    ("guest_hyp_per_req", "guest -> hyp"),
    ("hyp_host_per_req", "hyp -> host"),
    ("host_vmm_per_req", "host -> VMM"),
];

/// Longest the memory bench's boot may take.
const MEMORY_BENCH_TIMEOUT: Duration = Duration::from_secs(600);

/// The rows `bench memory` prints: agent fact suffix, label.
const MEMORY_ROWS: &[(&str, &str)] = &[
    (
        "first_report_ms",
        "VM creation to the guest's first report (ms)",
    ),
    (
        "share_unshare_us",
        "share + unshare round, guest's view (us)",
    ),
    ("vmm_exits_per_share", "exits to the VMM per share"),
    (
        "touch_us_per_page",
        "first touch of a page, guest's view (us)",
    ),
    ("pages_touched", "pages the guest touched"),
    ("host_mem_mib", "host memory spent once all touched (MiB)"),
    ("vmm_rss_mib", "VMM resident set (MiB)"),
    ("driver_pages", "pages the driver gave the guest"),
];

/// The baseline: the host kernel booted directly at EL2.
pub const DIRECT_STACK: &str = "qemu-virt-direct";
/// The same kernel under the hyp (the default stack).
pub const HYP_STACK: &str = crate::DEFAULT_STACK;

/// Longest a single boot may take before the bench gives up.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

impl Bench {
    pub fn run(self) -> Result<()> {
        match self.what {
            BenchKind::Boot { runs, direct, hyp } => bench_boot(runs, &direct, &hyp),
            BenchKind::Memory { stack } => bench_memory(&stack),
            BenchKind::Io { stack } => bench_io(&stack),
        }
    }
}

fn bench_boot(runs: usize, direct: &str, hyp: &str) -> Result<()> {
    if runs == 0 {
        bail!("-n must be at least 1");
    }
    let root = crate::project_root();
    let stacks = [stack::load(&root, direct)?, stack::load(&root, hyp)?];
    if stacks[0].file.hyp.enabled || !stacks[1].file.hyp.enabled {
        bail!("--direct must name a stack without the hyp and --hyp one with it");
    }
    let manifests = [
        build::build_image(direct, false)?,
        build::build_image(hyp, false)?,
    ];
    if manifests[0]
        .output("host-kernel-config")
        .ok()
        .map(crate::cache::sha256_file)
        .transpose()?
        != manifests[1]
            .output("host-kernel-config")
            .ok()
            .map(crate::cache::sha256_file)
            .transpose()?
    {
        bail!("{direct} and {hyp} build different kernels; the comparison would be meaningless");
    }
    let qemu_path = qemu::binary()?;
    let work = crate::cloister_dir().join("bench");
    std::fs::create_dir_all(&work)?;

    let bar = ProgressBar::new(u64::try_from(2 * runs)?);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} boots {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for i in 0..runs {
        for (k, (stack, manifest)) in stacks.iter().zip(&manifests).enumerate() {
            bar.set_message(format!("{} #{}", stack.name, i + 1));
            let paths = ArtifactPaths::from_manifest(manifest)?;
            let t = time_to_agent(&qemu_path, stack, &paths, &work)
                .with_context(|| format!("boot {} of {}", i + 1, stack.name))?;
            times[k].push(t);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let medians = [median(&mut times[0]), median(&mut times[1])];
    let ratio = medians[1].as_secs_f64() / medians[0].as_secs_f64();
    println!("boot to the agent's first line, {runs} boots each (median):");
    println!(
        "  {:16} {:>8.3}s   (host kernel entered at EL2)",
        direct,
        medians[0].as_secs_f64()
    );
    println!(
        "  {:16} {:>8.3}s   (hyp, then host at EL1)",
        hyp,
        medians[1].as_secs_f64()
    );
    println!("  ratio hyp/direct {ratio:.3} (goal <= 1.5)");
    let report = serde_json::json!({
        "runs": runs,
        "direct": { "stack": direct, "median_s": medians[0].as_secs_f64(), "all_s": secs(&times[0]) },
        "hyp": { "stack": hyp, "median_s": medians[1].as_secs_f64(), "all_s": secs(&times[1]) },
        "ratio": ratio,
    });
    let out = work.join("boot.json");
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("  raw times: {}", out.display());
    Ok(())
}

fn bench_memory(stack_name: &str) -> Result<()> {
    let root = crate::project_root();
    let stack = stack::load(&root, stack_name)?;
    if !stack.file.hyp.enabled {
        bail!("--stack {stack_name} has no hypervisor; the memory bench needs one");
    }
    let work = crate::cloister_dir().join("bench").join("memory");
    let manifest = build::build_image(stack_name, false)?;
    let facts = agent_facts(
        &stack,
        &manifest,
        "bench-memory",
        &work,
        MEMORY_BENCH_TIMEOUT,
    )?;
    println!("256 MiB protected guest, one boot of {stack_name}:");
    println!(
        "  {:46} {:>10} {:>12} {:>10}",
        "", "anon", "guest-memfd", "gmem/anon"
    );
    let mut json = serde_json::Map::new();
    for (suffix, label) in MEMORY_ROWS {
        let get = |model: &str| {
            facts
                .get(&format!("{model}_{suffix}"))
                .cloned()
                .unwrap_or_default()
        };
        let (a, g) = (get("anon"), get("gmem"));
        let ratio = match (a.parse::<f64>(), g.parse::<f64>()) {
            (Ok(a), Ok(g)) if a > 0.0 => format!("{:.2}", g / a),
            _ => "-".into(),
        };
        println!("  {label:46} {a:>10} {g:>12} {ratio:>10}");
        json.insert(
            (*suffix).into(),
            serde_json::json!({ "anon": a, "guest_memfd": g, "ratio": ratio }),
        );
    }
    let out = work.join("memory.json");
    std::fs::write(&out, serde_json::to_string_pretty(&json)?)?;
    println!("  raw: {}", out.display());
    Ok(())
}

/// Boots `stack_name` with the agent running `scenario` and returns its
/// facts; fails with the console's tail if a check failed or nothing came.
fn agent_facts(
    stack: &stack::Stack,
    manifest: &crate::manifest::Manifest,
    scenario: &str,
    work: &Path,
    timeout: Duration,
) -> Result<std::collections::BTreeMap<String, String>> {
    use cloister_agent::protocol::Report;
    let stack_name = &stack.name;
    let paths = ArtifactPaths::from_manifest(manifest)?;
    let files = crate::e2e::ScenarioFiles::new(work)?;
    let opts = BootOptions {
        extra_cmdline: qemu::agent_cmdline(scenario),
        results: Some(files.results.clone()),
        ..BootOptions::new(Console::File(files.console.clone()))
    };
    let paths = qemu::prepare_boot(stack, &paths, &opts, work)?;
    let mut cmd = Command::new(qemu::binary()?);
    cmd.args(qemu::args(stack, &paths, &opts));
    let spinner = ProgressBar::new_spinner();
    spinner.set_message(format!(
        "{scenario} on {stack_name} (console: {})",
        files.console.display()
    ));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let end = crate::e2e::run_boot(&mut cmd, &files.qemu_log, timeout)?;
    spinner.finish_and_clear();
    let results = std::fs::read_to_string(&files.results).unwrap_or_default();
    let mut facts = std::collections::BTreeMap::new();
    let mut failed = Vec::new();
    for line in results.lines().filter(|l| !l.trim().is_empty()) {
        match Report::from_line(line) {
            Ok(Report::Fact { key, value }) => {
                facts.insert(key, value);
            }
            Ok(Report::Check {
                name,
                ok: false,
                detail,
            }) => failed.push(format!("{name}: {detail}")),
            Ok(_) => {}
            Err(e) => bail!("{}: {e}", files.results.display()),
        }
    }
    if !failed.is_empty() || facts.is_empty() {
        let tail = crate::stage::tail(&files.console, 25).join("\n");
        bail!(
            "{scenario} failed ({end:?}): {}\n--- console tail ---\n{tail}\n--- console log: {} ---",
            if failed.is_empty() { "no measurements".to_string() } else { failed.join("; ") },
            files.console.display()
        );
    }
    Ok(facts)
}

/// Runs the guest with `boot,blk,randio` on plain QEMU (configuration (c))
/// and returns its report.
fn plain_qemu_io(
    manifest: &crate::manifest::Manifest,
    guest: &crate::stack::GuestSection,
    dir: &Path,
) -> Result<cloister_guest_agent::report::Report> {
    let files = crate::e2e::ScenarioFiles::new(dir)?;
    let disk = dir.join("disk.img");
    crate::guest::create_disk(&disk, guest.disk_mib.max(IO_BENCH_MIB))?;
    let mut extra = crate::guest::test_cmdline("boot,blk,randio", IO_BENCH_MIB, 0x5eed);
    extra.push(format!("cloister.rand_ops={IO_BENCH_RAND_OPS}"));
    let boot = crate::guest::PlainBoot {
        kernel: manifest
            .output(crate::manifest::GUEST_KERNEL)?
            .to_path_buf(),
        initramfs: manifest
            .output(crate::manifest::GUEST_INITRAMFS)?
            .to_path_buf(),
        disk,
        console: crate::guest::GuestConsole::File(files.console.clone()),
        serial: dir.join("serial.log"),
        extra_cmdline: extra,
    };
    let mut cmd = Command::new(qemu::binary()?);
    cmd.args(crate::guest::plain_qemu_args(guest, &boot));
    let spinner = ProgressBar::new_spinner();
    spinner.set_message(format!(
        "the guest on plain QEMU (console: {})",
        files.console.display()
    ));
    spinner.enable_steady_tick(Duration::from_millis(120));
    let end = crate::e2e::run_boot(&mut cmd, &files.qemu_log, Duration::from_secs(600))?;
    spinner.finish_and_clear();
    let console = std::fs::read_to_string(&files.console).unwrap_or_default();
    let report = cloister_guest_agent::report::Report::parse(&console)
        .map_err(|e| anyhow::anyhow!("{}: {e}", files.console.display()))?;
    if report.result != Some(true) {
        let tail = crate::stage::tail(&files.console, 25).join("\n");
        bail!(
            "the plain-QEMU guest run failed ({end:?}):\n{tail}\n--- console log: {} ---",
            files.console.display()
        );
    }
    Ok(report)
}

use cloister_guest_agent::cmdline::{
    BENCH_IO_MIB as IO_BENCH_MIB, BENCH_IO_RAND_OPS as IO_BENCH_RAND_OPS,
};

fn bench_io(stack_name: &str) -> Result<()> {
    let root = crate::project_root();
    let stack = stack::load(&root, stack_name)?;
    if !stack.file.hyp.enabled {
        bail!("--stack {stack_name} has no hypervisor; the IO bench needs one");
    }
    let Some(guest) = stack.file.guest.clone() else {
        bail!("--stack {stack_name} has no [guest] table; the IO bench boots its Linux guest");
    };
    let work = crate::cloister_dir().join("bench").join("io");
    // One build serves the boot on Cloister and the plain-QEMU run.
    let manifest = build::build_image(stack_name, false)?;
    let facts = agent_facts(
        &stack,
        &manifest,
        "bench-io",
        &work.join("cloister"),
        Duration::from_secs(900),
    )?;
    let plain = plain_qemu_io(&manifest, &guest, &work.join("plain-qemu"))?;

    println!(
        "Linux guest disk IO on {stack_name} ({IO_BENCH_MIB} MiB sequential, \
         {IO_BENCH_RAND_OPS} x 4 KiB random; everything under TCG):"
    );
    println!(
        "  {:42} {:>10} {:>10} {:>10} {:>6} {:>6}",
        "", "(a) pvm", "(b) normal", "(c) QEMU", "a/b", "a/c"
    );
    let num = |v: Option<&str>| v.and_then(|v| v.parse::<f64>().ok());
    let ratio = |x: Option<&str>, y: Option<&str>| match (num(x), num(y)) {
        (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
        _ => "-".into(),
    };
    let mut json = serde_json::Map::new();
    for (suffix, label, plain_key) in IO_ROWS {
        let a = facts
            .get(&format!("protected_{suffix}"))
            .map(String::as_str);
        let b = facts.get(&format!("normal_{suffix}")).map(String::as_str);
        let c = plain.fact(plain_key);
        let (ab, ac) = (ratio(a, b), ratio(a, c));
        println!(
            "  {label:42} {:>10} {:>10} {:>10} {ab:>6} {ac:>6}",
            a.unwrap_or("-"),
            b.unwrap_or("-"),
            c.unwrap_or("-")
        );
        json.insert(
            (*suffix).into(),
            serde_json::json!({ "protected": a, "normal": b, "plain_qemu": c, "a_b": ab, "a_c": ac }),
        );
    }
    println!("  transitions per disk request, during the IO (seed's terms):");
    for (suffix, label) in IO_TRANSITIONS {
        let a = facts
            .get(&format!("protected_{suffix}"))
            .map_or("-", String::as_str);
        let b = facts
            .get(&format!("normal_{suffix}"))
            .map_or("-", String::as_str);
        println!("    {label:40} {a:>10} {b:>10}");
        json.insert(
            (*suffix).into(),
            serde_json::json!({ "protected": a, "normal": b }),
        );
    }
    for kind in ["protected", "normal"] {
        if let Some(n) = facts.get(&format!("{kind}_requests")) {
            println!("  ({kind}: {n} disk requests)");
        }
    }
    let out = work.join("io.json");
    std::fs::write(&out, serde_json::to_string_pretty(&json)?)?;
    println!("  raw: {}", out.display());
    Ok(())
}

fn secs(times: &[Duration]) -> Vec<f64> {
    times.iter().map(Duration::as_secs_f64).collect()
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

/// Boots once and returns the time until the result port has a line.
fn time_to_agent(
    qemu_path: &Path,
    stack: &stack::Stack,
    paths: &ArtifactPaths,
    work: &Path,
) -> Result<Duration> {
    let results = work.join(format!("{}-results.jsonl", stack.name));
    let console = work.join(format!("{}-console.log", stack.name));
    let _ = std::fs::remove_file(&results);
    let opts = BootOptions {
        extra_cmdline: qemu::agent_cmdline("boot"),
        results: Some(results.clone()),
        ..BootOptions::new(Console::File(console.clone()))
    };
    // A disk-booted stack gets the agent's command line in a copy of its
    // disk image, written before the clock starts.
    let paths = qemu::prepare_boot(stack, paths, &opts, work)?;
    let mut cmd = Command::new(qemu_path);
    cmd.args(qemu::args(stack, &paths, &opts))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let started = Instant::now();
    let mut guard = ChildGuard(cmd.spawn().context("starting QEMU")?);
    loop {
        if std::fs::metadata(&results).is_ok_and(|m| m.len() > 0) {
            let elapsed = started.elapsed();
            let _ = guard.0.wait();
            return Ok(elapsed);
        }
        if let Some(status) = guard.0.try_wait()? {
            bail!(
                "QEMU exited ({status}) before the agent reported; console: {}",
                console.display()
            );
        }
        if started.elapsed() > BOOT_TIMEOUT {
            bail!(
                "no agent line after {}s; console: {}",
                BOOT_TIMEOUT.as_secs(),
                console.display()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_picks_the_middle_of_sorted_times() {
        let ms = |v: u64| Duration::from_millis(v);
        assert_eq!(median(&mut [ms(30), ms(10), ms(20)]), ms(20));
        assert_eq!(median(&mut [ms(40), ms(10), ms(30), ms(20)]), ms(30));
    }
}
