//! Scenarios with the stock Linux guest (`guest-image/guest-agent` as its
//! init) under `cloister-vmm`: it boots on two vCPUs as a protected and as a
//! normal VM, does virtio-blk IO through its restricted DMA pool while the
//! host fails to read its secret, shares nothing but that pool, and leaves
//! nothing behind after poweroff, reboot or a SIGKILLed VMM.
//!
//! This process starts the VMM with the guest's console on a pipe and reads
//! the guest agent's result lines (`cloister-guest: ...`) from it as they
//! come, so it can act while the guest runs: probe the secret during IO,
//! count shared pages while the guest waits, kill the VMM mid-IO.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use cloister_agent::protocol::Report;
use cloister_guest_agent::pattern::{format_checksum, Checksum};
use cloister_guest_agent::report::{self, Line};

use crate::probe::{self, Probe};
use crate::vms::{digest, fresh_seed, kernel_clean, vm_pages_of};
use crate::{check, fact, host_alive, map_devmem};

const VMM: &str = "/bin/cloister-vmm";
const GUEST_KERNEL: &str = "/lib/cloister/guest/Image";
const GUEST_INITRD: &str = "/lib/cloister/guest/initramfs.cpio";
const GUEST_CONF: &str = "/lib/cloister/guest/guest.conf";
/// How long a guest run may take before the scenario gives up on it.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);
/// How often the secret is probed while the guest does IO.
const PROBE_EVERY: Duration = Duration::from_millis(50);

/// The stack's guest settings (`[guest]` in the stack TOML, written to
/// [`GUEST_CONF`] by `build-image`).
#[derive(Debug, Clone)]
struct GuestConf {
    cmdline: String,
    memory_mib: u64,
    cpus: u64,
    disk_mib: u64,
}

fn guest_conf() -> Result<GuestConf, String> {
    let text = fs::read_to_string(GUEST_CONF).map_err(|e| format!("{GUEST_CONF}: {e}"))?;
    let mut conf = GuestConf {
        cmdline: "console=hvc0".into(),
        memory_mib: 256,
        cpus: 2,
        disk_mib: 64,
    };
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let number = || {
            value
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("{GUEST_CONF}: {key}={value:?} is not a number"))
        };
        match key.trim() {
            "cmdline" => value.trim().clone_into(&mut conf.cmdline),
            "memory_mib" => conf.memory_mib = number()?,
            "cpus" => conf.cpus = number()?,
            "disk_mib" => conf.disk_mib = number()?,
            _ => {}
        }
    }
    Ok(conf)
}

/// One guest run to start.
struct GuestSpec<'a> {
    protected: bool,
    /// `--memory` for a protected VM (`None`: the VMM's default).
    memory: Option<&'a str>,
    /// Extra kernel command line: the guest agent's `cloister.*` keys.
    args: String,
    disk: Option<&'a Path>,
}

/// A running VMM with the guest's console lines coming in.
struct RunningGuest {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    console: String,
    report: report::Report,
    /// The VMM's stderr, collected by a thread (its exit counts, errors).
    stderr: std::thread::JoinHandle<String>,
}

/// How a guest run ended.
struct GuestEnd {
    report: report::Report,
    status: ExitStatus,
    console: String,
    stderr: String,
}

fn start(conf: &GuestConf, spec: &GuestSpec<'_>) -> Result<RunningGuest, String> {
    let mut cmd = Command::new(VMM);
    cmd.args(["--kernel", GUEST_KERNEL, "--initrd", GUEST_INITRD])
        .args(["--mem", &conf.memory_mib.to_string()])
        .args(["--cpus", &conf.cpus.to_string()])
        .args(["--console", "-"])
        .args(["--cmdline", &format!("{} {}", conf.cmdline, spec.args)])
        .arg(if spec.protected {
            "--protected"
        } else {
            "--normal"
        });
    if let Some(memory) = spec.memory {
        cmd.args(["--memory", memory]);
    }
    if let Some(disk) = spec.disk {
        cmd.arg("--disk").arg(disk);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {VMM}: {e}"))?;
    let stdout = child.stdout.take().ok_or("no VMM stdout")?;
    let stderr = child.stderr.take().ok_or("no VMM stderr")?;
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    Ok(RunningGuest {
        stdin: child.stdin.take(),
        child,
        lines,
        console: String::new(),
        report: report::Report::default(),
        stderr,
    })
}

impl RunningGuest {
    /// The next result line, waiting at most `wait`; `Ok(None)` on a
    /// timeout, `Err` once the console closed.
    fn next_line(&mut self, wait: Duration) -> Result<Option<Line>, ()> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(raw) => {
                    self.console.push_str(&raw);
                    self.console.push('\n');
                    let Some(at) = raw.find(report::PREFIX) else {
                        continue;
                    };
                    let Ok(line) = Line::parse(&raw[at + report::PREFIX.len()..]) else {
                        continue;
                    };
                    // A malformed run (a fact twice) keeps its first value;
                    // the checks on the facts fail on what was kept.
                    let _ = self.report.push(line.clone());
                    return Ok(Some(line));
                }
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Err(RecvTimeoutError::Disconnected) => return Err(()),
            }
        }
    }

    /// Lets the guest agent's `wait` test go on.
    fn answer(&mut self) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("VMM stdin closed")?;
        stdin
            .write_all(b"\n")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("writing to the guest console: {e}"))
    }

    /// Waits for the VMM to exit (killing it after [`RUN_TIMEOUT`]).
    fn finish(mut self, started: Instant) -> Result<GuestEnd, String> {
        while self.next_line(Duration::from_millis(200)).is_ok() {
            if started.elapsed() > RUN_TIMEOUT {
                let _ = self.child.kill();
                break;
            }
        }
        drop(self.stdin.take());
        let status = self
            .child
            .wait()
            .map_err(|e| format!("waiting for the VMM: {e}"))?;
        Ok(GuestEnd {
            report: self.report,
            status,
            console: self.console,
            stderr: self.stderr.join().unwrap_or_default(),
        })
    }
}

impl GuestEnd {
    fn exit(&self) -> String {
        self.status.code().map_or_else(
            || match std::os::unix::process::ExitStatusExt::signal(&self.status) {
                Some(s) => format!("signal {s}"),
                None => "unknown".into(),
            },
            |c| c.to_string(),
        )
    }

    /// A check that the guest agent's run passed, with the failed checks,
    /// the VMM's complaint and the console's tail when it did not.
    fn verdict(&self, name: &str) -> Report {
        let ok = self.report.result == Some(true);
        let detail = if ok {
            format!("{} checks passed", self.report.checks.len())
        } else {
            let failed: Vec<String> = self
                .report
                .failed()
                .map(|c| format!("{}: {}", c.name, c.detail))
                .collect();
            let tail: Vec<&str> = self.console.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!(
                "result {:?}; failed: {failed:?}; VMM exit {}; VMM stderr: {}; console tail:\n{}",
                self.report.result,
                self.exit(),
                self.stderr.trim(),
                tail.join("\n")
            )
        };
        check(name, ok, detail)
    }
}

/// `linux-boot-protected` / `linux-boot-normal`: the stock guest boots to
/// its agent on the stack's vCPUs and reports what it runs on.
pub fn boot(protected: bool) -> Vec<Report> {
    let run = || -> Result<Vec<Report>, String> {
        let conf = guest_conf()?;
        let spec = GuestSpec {
            protected,
            memory: None,
            args: "cloister.test=boot".into(),
            disk: None,
        };
        let started = Instant::now();
        let end = start(&conf, &spec)?.finish(started)?;
        let mut out = vec![end.verdict("guest_run")];
        for key in [
            "cpus_online",
            "pkvm_guest",
            "mmio_guard",
            "restricted_dma_devices",
        ] {
            out.push(fact(
                &format!("guest_{key}"),
                end.report.fact(key).unwrap_or("missing").to_owned(),
            ));
        }
        // "<base> <n> MiB": the size is the fact; the base moves with --mem.
        let pool = end.report.fact("restricted_dma_pool").unwrap_or("missing");
        out.push(fact(
            "guest_restricted_dma_pool",
            pool.split_once(' ')
                .map_or(pool, |(_, size)| size)
                .to_owned(),
        ));
        out.push(fact("vmm_exit", end.exit()));
        out.push(fact(
            "guest_boot_s",
            format!("{:.1}", started.elapsed().as_secs_f64()),
        ));
        Ok(out)
    };
    let mut out = run().unwrap_or_else(|e| vec![check("guest_run", false, e)]);
    out.push(host_alive());
    out.push(kernel_clean());
    out
}

/// A sparse disk file of `mib` MiB under /tmp.
fn disk_file(name: &str, mib: u64) -> Result<PathBuf, String> {
    let path = PathBuf::from(format!("/tmp/{name}.img"));
    let file = fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    file.set_len(mib << 20)
        .map_err(|e| format!("sizing {}: {e}", path.display()))?;
    Ok(path)
}

/// The guest agent's checksum of the first `mib` MiB of `path`.
fn disk_checksum(path: &Path, mib: u64) -> Result<String, String> {
    use std::io::Read;
    let mut file = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut sum = Checksum::new();
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        file.read_exact(&mut buf)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        sum.update(&buf);
    }
    Ok(format_checksum(sum.finish()))
}

/// The frame behind the guest's `ipa` in the VM of VMM `pid`.
fn host_frame(pid: u32, ipa: u64) -> Result<u64, String> {
    let pages = vm_pages_of(pid)?;
    cloister_agent::parse::driver_page_pfn(&pages, ipa >> 12)
        .ok_or_else(|| format!("gfn {:#x} not in the VM's page list", ipa >> 12))
}

/// `VM_STATS` of the VM of VMM `pid`, and the driver's `vm-<h>-exits`.
fn vm_stats(pid: u32) -> Result<([u64; 4], String), String> {
    let (handle, exits) = crate::vms::vm_handle_and_file(pid, "exits")?;
    let raw = cloister_guest_agent::cmdline::parse_number(&handle)
        .ok_or_else(|| format!("VM handle {handle:?}"))?;
    let r = crate::hypercall_regs(&crate::call_line(
        cloister_hyp_core::abi::hc::VM_STATS,
        &[raw],
    ))?;
    if r[0] != cloister_hyp_core::abi::ret::SUCCESS {
        return Err(format!("VM_STATS({handle}): {:#x} {:#x}", r[0], r[1]));
    }
    Ok((r, exits))
}

/// Pages the VM of VMM `pid` shares with the host now, as the hyp's page
/// database counts them (`VM_STATS`): both memory models alike.
fn shared_pages(pid: u32) -> Result<u64, String> {
    Ok(vm_stats(pid)?.0[3])
}

/// What probing the guest's secret page through /dev/mem saw, many times.
#[derive(Default)]
struct SecretProbes {
    frame: Option<*const u64>,
    refused: u64,
    read: Vec<String>,
}

impl SecretProbes {
    fn probe(&mut self) {
        if let Some(ptr) = self.frame {
            match probe::read_u64(ptr) {
                Probe::Signal(_) => self.refused += 1,
                p @ Probe::Value(_) => self.read.push(p.describe()),
            }
        }
    }

    fn summary(&self) -> String {
        match (self.refused, self.read.len()) {
            (0, 0) => "never probed".into(),
            (n, 0) => format!("refused {}", if n >= 10 { "10+" } else { "<10" }),
            (_, r) => format!("READ {r} times: {:?}", &self.read[..r.min(3)]),
        }
    }
}

/// `linux-blk` (guest_memfd) and `linux-blk-anon`: the guest keeps a
/// secret, writes and reads back `blk_mib` MiB with and without O_DIRECT
/// while this process probes the secret's frame through /dev/mem, then
/// waits while the shared pages are counted (the DMA pool and nothing
/// else); after poweroff the disk file must hold what the guest wrote.
pub fn blk(memory: &'static str, blk_mib: u64) -> Vec<Report> {
    let run = || -> Result<Vec<Report>, String> {
        let conf = guest_conf()?;
        let (_, base_not_host, _) = digest()?;
        let disk = disk_file("linux-blk", blk_mib.max(conf.disk_mib))?;
        let seed = fresh_seed();
        let spec = GuestSpec {
            protected: true,
            memory: Some(memory),
            args: format!(
                "cloister.test=secret,boot,blk,wait,poweroff cloister.blk_mib={blk_mib} \
                 cloister.seed={seed:#x} cloister.secret_seed={:#x}",
                seed.rotate_left(17)
            ),
            disk: Some(&disk),
        };
        let started = Instant::now();
        let mut guest = start(&conf, &spec)?;
        let pid = guest.child.id();
        let mut out = Vec::new();
        let mut probes = SecretProbes::default();
        let mut io_done = false;
        loop {
            if started.elapsed() > RUN_TIMEOUT {
                out.push(check("guest_timeout", false, "guest run timed out".into()));
                break;
            }
            let line = match guest.next_line(PROBE_EVERY) {
                Err(()) => break,
                Ok(None) => {
                    if !io_done {
                        probes.probe();
                    }
                    continue;
                }
                Ok(Some(line)) => line,
            };
            match &line {
                Line::Fact { key, value } if key == "secret_ipa" => {
                    let ipa = cloister_guest_agent::cmdline::parse_number(value)
                        .ok_or_else(|| format!("secret_ipa={value:?}"))?;
                    let frame = host_frame(pid, ipa).and_then(|pfn| map_devmem(pfn << 12))?;
                    probes.frame = Some(frame);
                    probes.probe();
                }
                Line::Fact { key, .. } if key == "waiting" => {
                    io_done = true;
                    // The restricted pool (virtio's bounce buffers) and the
                    // kernel's DMA atomic pools: the guest shares both.
                    let pool_mib = guest
                        .report
                        .fact("restricted_dma_pool")
                        .and_then(|p| p.split_whitespace().nth(1))
                        .and_then(|n| n.parse::<u64>().ok());
                    let atomic_kib = guest
                        .report
                        .fact("dma_atomic_pools_kib")
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0);
                    match (shared_pages(pid), pool_mib) {
                        (Ok(shared), Some(mib)) => {
                            out.push(fact("shared_pages", shared.to_string()));
                            let pools = mib * 256 + atomic_kib / 4;
                            out.push(fact(
                                "shared_minus_dma_pools_pages",
                                (i128::from(shared) - i128::from(pools)).to_string(),
                            ));
                        }
                        (Err(e), _) => out.push(check("shared_pages", false, e)),
                        (_, None) => out.push(check(
                            "shared_pages",
                            false,
                            "the guest reported no restricted DMA pool".into(),
                        )),
                    }
                    guest.answer()?;
                }
                _ => {
                    if !io_done {
                        probes.probe();
                    }
                }
            }
        }
        let end = guest.finish(started)?;
        out.insert(0, end.verdict("guest_run"));
        out.push(fact("io_secret_devmem", probes.summary()));
        out.push(fact("vmm_exit", end.exit()));
        for key in [
            "blk_direct_write_mbps",
            "blk_direct_read_mbps",
            "blk_buffered_write_mbps",
            "blk_buffered_read_mbps",
        ] {
            if let Some(v) = end.report.fact(key) {
                out.push(fact(key, v.to_owned()));
            }
        }
        let guest_sum = end.report.fact("blk_checksum").unwrap_or("missing");
        out.push(fact(
            "disk_checksum",
            match disk_checksum(&disk, blk_mib) {
                Ok(sum) if sum == guest_sum => "matches the guest's".into(),
                Ok(sum) => format!("disk {sum}, guest reported {guest_sum}"),
                Err(e) => e,
            },
        ));
        let _ = fs::remove_file(&disk);
        let (_, not_host, _) = digest()?;
        out.push(fact(
            "pages_not_host_delta",
            (i128::from(not_host) - i128::from(base_not_host)).to_string(),
        ));
        Ok(out)
    };
    let mut out = run().unwrap_or_else(|e| vec![check("guest_run", false, e)]);
    out.push(host_alive());
    out.push(kernel_clean());
    out
}

/// `linux-teardown`: the guest holds a secret and ends by poweroff, by
/// reboot, and twice by a SIGKILLed VMM in the middle of its disk IO;
/// afterwards every page is the host's again and a scan of host RAM finds
/// none of the secrets.
pub fn teardown() -> Vec<Report> {
    let run = || -> Result<Vec<Report>, String> {
        let conf = guest_conf()?;
        let (_, base_not_host, base_vms) = digest()?;
        let disk = disk_file("linux-teardown", conf.disk_mib)?;
        let mut out = Vec::new();
        let mut seeds = Vec::new();
        for (name, tests) in [
            ("poweroff", "secret,boot,poweroff"),
            ("reboot", "secret,boot,reboot"),
        ] {
            let seed = fresh_seed();
            seeds.push(seed);
            let spec = GuestSpec {
                protected: true,
                memory: None,
                args: format!("cloister.test={tests} cloister.secret_seed={seed:#x}"),
                disk: Some(&disk),
            };
            let end = start(&conf, &spec)?.finish(Instant::now())?;
            out.push(end.verdict(&format!("teardown_{name}_run")));
            out.push(fact(&format!("teardown_{name}_exit"), end.exit()));
        }
        let mut kills = 0;
        for round in 0..2u64 {
            let seed = fresh_seed() ^ round << 40;
            seeds.push(seed);
            let spec = GuestSpec {
                protected: true,
                memory: None,
                args: format!(
                    "cloister.test=secret,blk cloister.blk_mib={} cloister.secret_seed={seed:#x}",
                    conf.disk_mib
                ),
                disk: Some(&disk),
            };
            let started = Instant::now();
            let mut guest = start(&conf, &spec)?;
            // Kill once the IO has started (the blk test's first fact).
            let mut in_io = false;
            while started.elapsed() < RUN_TIMEOUT {
                match guest.next_line(Duration::from_millis(200)) {
                    Ok(Some(Line::Fact { key, .. })) if key == "blk_device" => {
                        in_io = true;
                        break;
                    }
                    Err(()) => break,
                    _ => {}
                }
            }
            // `blk_device` comes just before the first write: give the IO a
            // moment to be in flight (requests queued, buffers in the pool)
            // so the kill lands mid-IO rather than at its door.
            std::thread::sleep(Duration::from_millis(300));
            let _ = guest.child.kill();
            let end = guest.finish(started)?;
            if in_io && std::os::unix::process::ExitStatusExt::signal(&end.status) == Some(9) {
                kills += 1;
            }
        }
        let _ = fs::remove_file(&disk);
        out.push(fact("teardown_kills_mid_io", kills.to_string()));
        crate::vms::teardown_facts((base_not_host, base_vms), &seeds, &mut out)?;
        Ok(out)
    };
    let mut out = run().unwrap_or_else(|e| vec![check("teardown_run", false, e)]);
    out.push(host_alive());
    out.push(kernel_clean());
    out
}

/// Transition counters of a running VM, summed over its vCPUs.
#[derive(Debug, Clone, Copy, Default)]
struct Transitions {
    /// Traps from the guest into the hyp (`VM_STATS`).
    guest_hyp: u64,
    /// `VCPU_RUN` returns: exits from the hyp to the host (`VM_STATS`).
    hyp_host: u64,
    /// `KVM_RUN` returns: exits from the host kernel to the VMM (driver).
    host_vmm: u64,
}

fn transitions(pid: u32) -> Result<Transitions, String> {
    let (r, exits) = vm_stats(pid)?;
    Ok(Transitions {
        guest_hyp: r[1],
        hyp_host: r[2],
        host_vmm: cloister_agent::parse::sum_key(&exits, "kvm_run"),
    })
}

/// `bench-io` (`cargo xtask bench io`): the same guest kernel and disk as
/// a protected and as a normal VM: sequential (1 MiB) and 4 KiB random
/// throughput, and transitions per disk request during the IO.
pub fn bench_io() -> Vec<Report> {
    let mut out = Vec::new();
    for (label, protected) in [("protected", true), ("normal", false)] {
        if let Err(e) = bench_one(label, protected, &mut out) {
            out.push(check(&format!("{label}_run"), false, e));
        }
    }
    out.push(host_alive());
    out.push(kernel_clean());
    out
}

fn bench_one(label: &str, protected: bool, out: &mut Vec<Report>) -> Result<(), String> {
    let conf = guest_conf()?;
    use cloister_guest_agent::cmdline::{BENCH_IO_MIB, BENCH_IO_RAND_OPS};
    let disk = disk_file("bench-io", u64::from(BENCH_IO_MIB).max(conf.disk_mib))?;
    let spec = GuestSpec {
        protected,
        memory: None,
        args: format!(
            "cloister.test=boot,blk,randio,wait,poweroff cloister.blk_mib={BENCH_IO_MIB} \
             cloister.seed={:#x} cloister.rand_ops={BENCH_IO_RAND_OPS}",
            fresh_seed()
        ),
        disk: Some(&disk),
    };
    let started = Instant::now();
    let mut guest = start(&conf, &spec)?;
    let pid = guest.child.id();
    let mut before = None;
    let mut after = None;
    while started.elapsed() < RUN_TIMEOUT {
        match guest.next_line(Duration::from_millis(200)) {
            Err(()) => break,
            Ok(Some(Line::Fact { key, .. })) if key == "blk_requests_before" => {
                before = Some(transitions(pid)?);
            }
            Ok(Some(Line::Fact { key, .. })) if key == "waiting" => {
                after = Some(transitions(pid)?);
                guest.answer()?;
            }
            Ok(_) => {}
        }
    }
    let end = guest.finish(started)?;
    let _ = fs::remove_file(&disk);
    out.push(end.verdict(&format!("{label}_run")));
    for (key, name) in [
        ("blk_direct_write_mbps", "seq_write_mbps"),
        ("blk_direct_read_mbps", "seq_read_mbps"),
        ("blk_buffered_write_mbps", "buffered_write_mbps"),
        ("blk_buffered_read_mbps", "buffered_read_mbps"),
        ("rand_write_iops", "rand_write_iops"),
        ("rand_read_iops", "rand_read_iops"),
    ] {
        if let Some(v) = end.report.fact(key) {
            out.push(fact(&format!("{label}_{name}"), v.to_owned()));
        }
    }
    let number = |key: &str| {
        end.report
            .fact(key)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| format!("the guest reported no {key}"))
    };
    let requests = number("randio_requests_after")?.saturating_sub(number("blk_requests_before")?);
    let (Some(b), Some(a)) = (before, after) else {
        return Err("no counters sampled around the IO".into());
    };
    out.push(fact(&format!("{label}_requests"), requests.to_string()));
    let per = |x: u64, y: u64| {
        format!(
            "{:.2}",
            (x.saturating_sub(y)) as f64 / requests.max(1) as f64
        )
    };
    out.push(fact(
        &format!("{label}_guest_hyp_per_req"),
        per(a.guest_hyp, b.guest_hyp),
    ));
    out.push(fact(
        &format!("{label}_hyp_host_per_req"),
        per(a.hyp_host, b.hyp_host),
    ));
    out.push(fact(
        &format!("{label}_host_vmm_per_req"),
        per(a.host_vmm, b.host_vmm),
    ));
    Ok(())
}
