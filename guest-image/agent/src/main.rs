//! `cloister-agent [SCENARIO]`: run one e2e scenario and report it.
//!
//! As PID 1 (the e2e runner boots with `rdinit=/sbin/cloister-agent`) it
//! mounts the pseudo filesystems, takes the scenario from the kernel command
//! line, writes its report to the results port and powers the machine off.
//! From a shell it takes the scenario as its argument and prints the report
//! to stdout, which is handy when poking at a demo boot.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[cfg(target_arch = "aarch64")]
mod direct_io;
#[cfg(target_arch = "aarch64")]
mod linux_guest;
#[cfg(target_arch = "aarch64")]
mod probe;
#[cfg(target_arch = "aarch64")]
mod vms;

use cloister_agent::parse;
use cloister_agent::protocol::{Report, PROTOCOL_VERSION, RESULT_PORT_NAME, SCENARIO_CMDLINE_KEY};
use cloister_hyp_core::abi::{self, exit, hc, vcpu_feature, vcpu_reg, vm_type};

/// Scenarios this agent knows, with what each reports.
const SCENARIOS: &[(&str, &str)] = &[
    ("boot", "reaches the agent and reports nothing else"),
    ("kernel-version", "reports `kernel_release` from uname(2)"),
    ("entry-el", "reports `entry_el` from the kernel log"),
    ("cpus", "reports `cpus_online` from sysfs"),
    (
        "hyp-info",
        "reports `hyp_version` and `hyp_abi` from /sys/hypervisor/cloister",
    ),
    (
        "devmem-user",
        "a child reads the hyp carve-out through /dev/mem; reports the signal that ended it",
    ),
    (
        "uaccess-efault",
        "write(2) from a /dev/mem mapping of the carve-out; reports the errno",
    ),
    (
        "bad-hypercall",
        "sends malformed hypercalls through debugfs; reports x0 x1 of each",
    ),
    (
        "guest-run",
        "runs a five-instruction normal VM through the hyp's VM calls; reports its exit",
    ),
    (
        "pvm-isolation",
        "a protected VM's private page is unreadable by the host until the guest shares it, and after it unshares it",
    ),
    (
        "vmm-no-device",
        "runs cloister-vmm against a missing device; reports its exit code",
    ),
    (
        "conformance-protected",
        "the bare-metal conformance guest as a protected VM under cloister-vmm; reports its TAP verdict",
    ),
    (
        "conformance-protected-anon",
        "the conformance guest as a protected VM on pinned anonymous memory (pKVM's model)",
    ),
    (
        "conformance-normal",
        "the conformance guest as a normal VM; reports its TAP verdict",
    ),
    (
        "pvm-secret",
        "a protected guest's secret read through the VMM mapping, /dev/mem and uaccess: private, shared, unshared, after teardown",
    ),
    (
        "pvm-teardown",
        "VMM exit and SIGKILL mid-run: every page back with the host, the secret nowhere in host RAM",
    ),
    (
        "hyp-refusals",
        "donating or sharing MMIO, unmapped, hyp and another guest's pages: each refused, ownership unchanged",
    ),
    (
        "pkvm-promises",
        "pkvm.rst: a protected VM's register ioctls and memslot changes after the first run get EPERM",
    ),
    (
        "gmem-secret",
        "pvm-secret with the guest's RAM in a guest_memfd (SIGBUS from the host kernel, in-place sharing)",
    ),
    (
        "gmem-teardown",
        "pvm-teardown with guest_memfd memory",
    ),
    (
        "gmem-punch",
        "a hole punched in a private guest_memfd page while the guest runs: zeroed, the host's, the guest's next access -EFAULT",
    ),
    (
        "gmem-bad-input",
        "guest_memfd arguments mainline rejects get mainline's errors",
    ),
    (
        "bench-memory",
        "cargo xtask bench memory's measurements: a 256 MiB protected guest on each memory model",
    ),
    (
        "vmm-garbage",
        "bad ioctls, regions and a vCPU run twice at once: mainline's errors, no oops",
    ),
    (
        "linux-boot-protected",
        "the stock Linux guest boots to its agent as a protected VM; reports CPUs, pKVM services, DMA pool",
    ),
    (
        "linux-boot-normal",
        "the stock Linux guest as a normal VM",
    ),
    (
        "linux-blk",
        "the Linux guest's virtio-blk IO (guest_memfd): data checked, the secret unreadable during IO, only the DMA pool shared",
    ),
    (
        "linux-blk-anon",
        "linux-blk on pinned anonymous memory",
    ),
    (
        "bench-io",
        "cargo xtask bench io's measurements: the Linux guest's disk throughput and transitions per request, protected and normal",
    ),
    (
        "linux-teardown",
        "the Linux guest ends by poweroff, reboot and SIGKILL mid-IO: every page back, no secret in host RAM",
    ),
];

fn main() {
    let as_init = std::process::id() == 1;
    if as_init {
        cloister_guest_agent::init::mount_pseudo_filesystems("cloister-agent");
    }
    let scenario = match std::env::args().nth(1) {
        Some(arg) if arg == "--list" => {
            for (name, what) in SCENARIOS {
                println!("{name:16} {what}");
            }
            return;
        }
        Some(arg) => arg,
        None => fs::read_to_string("/proc/cmdline")
            .ok()
            .and_then(|c| parse::cmdline_value(&c, SCENARIO_CMDLINE_KEY).map(str::to_owned))
            .unwrap_or_default(),
    };

    let mut out: Box<dyn Write> = if as_init {
        match open_result_port() {
            Ok(port) => Box::new(port),
            Err(e) => {
                // Without the port the runner will time out; say why on the
                // console so its tail names the cause.
                eprintln!("cloister-agent: cannot open result port {RESULT_PORT_NAME}: {e}");
                Box::new(io::stdout())
            }
        }
    } else {
        Box::new(io::stdout())
    };

    let reports = run_scenario(&scenario);
    let mut send = |r: &Report| {
        // A failed write cannot be reported on the same channel; the runner
        // sees a missing Done line and fails the scenario.
        if let Err(e) = writeln!(out, "{}", r.to_line()).and_then(|()| out.flush()) {
            eprintln!("cloister-agent: writing results: {e}");
        }
    };
    send(&Report::Hello {
        protocol: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        scenario: scenario.clone(),
    });
    let ok = reports
        .iter()
        .all(|r| !matches!(r, Report::Check { ok: false, .. }));
    for report in &reports {
        send(report);
    }
    send(&Report::Done { ok });
    drop(out);

    if as_init {
        eprintln!("cloister-agent: scenario {scenario:?} done, powering off");
        power_off();
    }
    std::process::exit(if ok { 0 } else { 1 });
}

/// Runs one scenario and returns its facts and checks (without Hello/Done).
fn run_scenario(scenario: &str) -> Vec<Report> {
    match scenario {
        "boot" => Vec::new(),
        "kernel-version" => match uname_release() {
            Ok(release) => vec![fact("kernel_release", release)],
            Err(e) => vec![check("uname", false, format!("uname(2) failed: {e}"))],
        },
        "entry-el" => match read_kernel_log() {
            Ok(log) => match parse::entry_el(log.iter().map(String::as_str)) {
                Some(el) => vec![fact("entry_el", el.to_string())],
                None => vec![check(
                    "entry_el",
                    false,
                    "no \"CPU: All CPU(s) started at EL<n>\" line in the kernel log".into(),
                )],
            },
            Err(e) => vec![check("kmsg", false, format!("reading /dev/kmsg: {e}"))],
        },
        "cpus" => match fs::read_to_string("/sys/devices/system/cpu/online") {
            Ok(online) => vec![fact("cpus_online", online.trim().to_owned())],
            Err(e) => vec![check("cpus", false, format!("reading cpu/online: {e}"))],
        },
        "hyp-info" => {
            let read = |f: &str| {
                fs::read_to_string(format!("/sys/hypervisor/cloister/{f}"))
                    .map(|v| v.trim().to_owned())
                    .unwrap_or_else(|e| format!("unreadable: {e}"))
            };
            vec![
                fact("hyp_version", read("version")),
                fact("hyp_abi", read("abi")),
            ]
        }
        "devmem-user" => with_carveout(|pa| {
            let mut out = vec![fact("child_signal", devmem_child_signal(pa))];
            out.push(host_alive());
            out
        }),
        "uaccess-efault" => with_carveout(|pa| {
            let mut out = vec![fact("write_errno", uaccess_write_errno(pa))];
            out.push(host_alive());
            out
        }),
        "bad-hypercall" => with_carveout(bad_hypercalls),
        "vmm-no-device" => vmm_without_device(),
        "guest-run" => guest_run(),
        "pvm-isolation" => pvm_isolation(),
        #[cfg(target_arch = "aarch64")]
        "conformance-protected" => vms::conformance(true, None),
        #[cfg(target_arch = "aarch64")]
        "conformance-protected-anon" => vms::conformance(true, Some("anon")),
        #[cfg(target_arch = "aarch64")]
        "conformance-normal" => vms::conformance(false, None),
        #[cfg(target_arch = "aarch64")]
        "pvm-secret" => vms::pvm_secret("pvm", vms::MemoryModel::Anon),
        #[cfg(target_arch = "aarch64")]
        "pvm-teardown" => vms::pvm_teardown("anon"),
        #[cfg(target_arch = "aarch64")]
        "gmem-secret" => vms::pvm_secret("gmem", vms::MemoryModel::GuestMemfd),
        #[cfg(target_arch = "aarch64")]
        "gmem-teardown" => vms::pvm_teardown("guest-memfd"),
        #[cfg(target_arch = "aarch64")]
        "gmem-punch" => vms::gmem_punch(),
        #[cfg(target_arch = "aarch64")]
        "bench-memory" => vms::bench_memory(),
        #[cfg(target_arch = "aarch64")]
        "gmem-bad-input" => vms::gmem_bad_input(),
        #[cfg(target_arch = "aarch64")]
        "hyp-refusals" => vms::hyp_refusals(),
        #[cfg(target_arch = "aarch64")]
        "pkvm-promises" => vms::pkvm_promises(),
        #[cfg(target_arch = "aarch64")]
        "vmm-garbage" => vms::vmm_garbage(),
        #[cfg(target_arch = "aarch64")]
        "linux-boot-protected" => linux_guest::boot(true),
        #[cfg(target_arch = "aarch64")]
        "linux-boot-normal" => linux_guest::boot(false),
        #[cfg(target_arch = "aarch64")]
        "linux-blk" => linux_guest::blk("guest-memfd", 64),
        #[cfg(target_arch = "aarch64")]
        "linux-blk-anon" => linux_guest::blk("anon", 16),
        #[cfg(target_arch = "aarch64")]
        "linux-teardown" => linux_guest::teardown(),
        #[cfg(target_arch = "aarch64")]
        "bench-io" => linux_guest::bench_io(),
        other => {
            let known: Vec<&str> = SCENARIOS.iter().map(|(n, _)| *n).collect();
            vec![check(
                "scenario",
                false,
                format!("unknown scenario {other:?}; known: {}", known.join(", ")),
            )]
        }
    }
}

fn fact(key: &str, value: String) -> Report {
    Report::Fact {
        key: key.to_owned(),
        value,
    }
}

fn check(name: &str, ok: bool, detail: String) -> Report {
    Report::Check {
        name: name.to_owned(),
        ok,
        detail,
    }
}

/// Runs `f` with the physical address of the hyp's own image: the lowest
/// `/reserved-memory/cloister-hyp@...` region in the host's device tree.
fn with_carveout(f: impl FnOnce(u64) -> Vec<Report>) -> Vec<Report> {
    match hyp_carveout() {
        Ok(pa) => {
            let mut out = vec![fact("carveout", format!("{pa:#x}"))];
            out.extend(f(pa));
            out
        }
        Err(e) => vec![check("carveout", false, e)],
    }
}

fn hyp_carveout() -> Result<u64, String> {
    let dir = "/sys/firmware/devicetree/base/reserved-memory";
    let entries = fs::read_dir(dir).map_err(|e| format!("reading {dir}: {e}"))?;
    let mut lowest: Option<u64> = None;
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("cloister-hyp@")
        {
            continue;
        }
        let reg = fs::read(entry.path().join("reg")).map_err(|e| format!("reading reg: {e}"))?;
        // Two address cells (the hyp writes the root's cells; QEMU uses 2).
        let base = reg
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| format!("{}: reg is {} bytes", entry.path().display(), reg.len()))?;
        lowest = Some(lowest.map_or(base, |l: u64| l.min(base)));
    }
    lowest.ok_or_else(|| format!("no cloister-hyp@ node under {dir}"))
}

/// Maps one page of /dev/mem at `pa` (read-only).
fn map_devmem(pa: u64) -> Result<*const u64, String> {
    let mem = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_SYNC)
        .open("/dev/mem")
        .map_err(|e| format!("opening /dev/mem: {e}"))?;
    let offset = libc::off_t::try_from(pa).map_err(|_| format!("{pa:#x} too large"))?;
    // SAFETY: a fresh shared read-only mapping of one page; nothing aliases it
    // in this process, and the fd may be closed once mapped.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&mem),
            offset,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(format!(
            "mmap /dev/mem at {pa:#x}: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(ptr.cast::<u64>().cast_const())
}

/// How a forked child ended.
enum ChildEnd {
    Signal(i32),
    Exit(i32),
    ForkFailed(String),
}

/// Runs `body` in a forked child that exits with its return value.
fn in_child(body: impl FnOnce() -> i32) -> ChildEnd {
    // SAFETY: the agent is single-threaded, so the child holds no lock and
    // may run ordinary code until it `_exit`s.
    match unsafe { libc::fork() } {
        -1 => ChildEnd::ForkFailed(io::Error::last_os_error().to_string()),
        0 => {
            let code = body();
            // SAFETY: leaving the forked child without running atexit handlers.
            unsafe { libc::_exit(code) }
        }
        child => {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(child, &mut status, 0) };
            if libc::WIFSIGNALED(status) {
                ChildEnd::Signal(libc::WTERMSIG(status))
            } else {
                ChildEnd::Exit(libc::WEXITSTATUS(status))
            }
        }
    }
}

/// Forks a child that reads the carve-out; returns how the child ended.
fn devmem_child_signal(pa: u64) -> String {
    let end = in_child(|| match map_devmem(pa) {
        Ok(ptr) => {
            // SAFETY: reading the page mapped above; the hyp is expected to
            // make this fault, which is the point.
            let v = unsafe { std::ptr::read_volatile(ptr) };
            eprintln!("cloister-agent: read {v:#x} from the hyp carve-out");
            0
        }
        Err(e) => {
            eprintln!("cloister-agent: {e}");
            2
        }
    });
    match end {
        ChildEnd::Signal(sig) => signal_name(sig),
        ChildEnd::Exit(code) => format!("exited {code}"),
        ChildEnd::ForkFailed(e) => format!("fork failed: {e}"),
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGBUS => "SIGBUS".into(),
        libc::SIGKILL => "SIGKILL".into(),
        other => format!("signal {other}"),
    }
}

/// write(2)s the carve-out (mapped, never touched from user space) into a
/// pipe, so only the kernel's uaccess reads it; returns the errno.
fn uaccess_write_errno(pa: u64) -> String {
    let ptr = match map_devmem(pa) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let mut fds = [0i32; 2];
    // SAFETY: pipe writes two fds into the array we own.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return format!("pipe: {}", io::Error::last_os_error());
    }
    // SAFETY: the kernel reads from `ptr` with uaccess; a fault there must
    // come back as EFAULT, never touch our memory.
    let n = unsafe { libc::write(fds[1], ptr.cast(), 4096) };
    let errno = io::Error::last_os_error();
    // SAFETY: closing our own fds.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    if n >= 0 {
        format!("wrote {n} bytes")
    } else if errno.raw_os_error() == Some(libc::EFAULT) {
        "EFAULT".into()
    } else {
        format!("{errno}")
    }
}

/// The host still works after a fault: a file round-trips through tmpfs.
fn host_alive() -> Report {
    let path = "/tmp/cloister-alive";
    let ok = fs::write(path, b"alive")
        .and_then(|()| fs::read(path))
        .is_ok_and(|d| d == b"alive");
    check(
        "host_alive",
        ok,
        "tmpfs write and read back after the fault".into(),
    )
}

const DEBUGFS_HYPERCALL: &str = "/sys/kernel/debug/cloister/hypercall";

/// One raw hypercall through the host driver's debugfs hook; returns "x0 x1".
fn hypercall(line: &str) -> Result<String, String> {
    hypercall_regs(line).map(|r| format!("{:#x} {:#x}", r[0], r[1]))
}

/// Malformed host hypercalls and one the host may not make; each must get
/// its defined error and change nothing (the hyp page stays the hyp's).
fn bad_hypercalls(hyp_pa: u64) -> Vec<Report> {
    let hyp_pfn = hyp_pa >> 12;
    let cases = [
        (
            "hc_unknown_function",
            format!(
                "{:#x}",
                abi::fast_call_id(true, abi::SMCCC_OWNER_VENDOR_HYP, abi::FUNC_NUM_LAST)
            ),
        ),
        ("hc_reserved_arg", format!("{:#x} 1", hc::GET_VERSION)),
        (
            "hc_out_of_range",
            format!("{:#x} 0xfffffffff", hc::HOST_SHARE_HYP),
        ),
        (
            "hc_donate_hyp_page",
            format!("{:#x} {hyp_pfn:#x} 1", hc::HOST_DONATE_HYP),
        ),
    ];
    let mut out = Vec::new();
    for (key, line) in cases {
        match hypercall(&line) {
            Ok(v) => out.push(fact(key, v)),
            Err(e) => out.push(check(key, false, e)),
        }
    }
    match hypercall(&format!("{:#x} {hyp_pa:#x}", hc::PAGE_OWNER)) {
        Ok(v) => out.push(fact("hyp_page_owner", v)),
        Err(e) => out.push(check("hyp_page_owner", false, e)),
    }
    out
}

/// Raw hypercall through debugfs returning all four result registers.
fn hypercall_regs(line: &str) -> Result<[u64; 4], String> {
    if !Path::new(DEBUGFS_HYPERCALL).exists() {
        let _ = fs::create_dir_all("/sys/kernel/debug");
        mount("debugfs", "/sys/kernel/debug");
    }
    fs::write(DEBUGFS_HYPERCALL, line).map_err(|e| format!("writing {line:?}: {e}"))?;
    let out = fs::read_to_string(DEBUGFS_HYPERCALL).map_err(|e| format!("reading result: {e}"))?;
    let regs: Vec<u64> = out
        .split_whitespace()
        .filter_map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16).ok())
        .collect();
    regs.as_slice()
        .try_into()
        .map_err(|_| format!("unexpected result {out:?}"))
}

/// The debugfs line for Cloister call `fid` with `args`.
fn call_line(fid: u32, args: &[u64]) -> String {
    let mut line = format!("{fid:#x}");
    for a in args {
        line.push_str(&format!(" {a:#x}"));
    }
    line
}

/// A call that must succeed (x0 == 0); returns x1.
fn hypercall_ok(line: &str) -> Result<u64, String> {
    let r = hypercall_regs(line)?;
    if r[0] == 0 {
        Ok(r[1])
    } else {
        Err(format!(
            "{line:?} failed: {:#x} {:#x} {:#x} {:#x}",
            r[0], r[1], r[2], r[3]
        ))
    }
}

/// The guest: x5 = 0x1234, then PSCI SYSTEM_OFF through HVC.
const GUEST_CODE: [u32; 5] = [
    0xd282_4685, // movz x5, #0x1234
    0xd280_0100, // movz x0, #0x8
    0xf2b0_8000, // movk x0, #0x8400, lsl #16   (x0 = 0x84000008)
    0xd400_0002, // hvc #0
    0x1400_0000, // b .
];
const GUEST_IPA: u64 = 0x8000_0000;

/// Creates a normal VM from one page of this process's memory, runs it,
/// and tears it down, all through the host ABI's VM calls.
fn guest_run() -> Vec<Report> {
    let page = match guest_page() {
        Ok(p) => p,
        Err(e) => return vec![check("guest_page", false, e)],
    };
    let run = || -> Result<Vec<Report>, String> {
        let handle = hypercall_ok(&call_line(hc::VM_CREATE, &[vm_type::NORMAL]))?;
        hypercall_ok(&call_line(
            hc::VCPU_CREATE,
            &[handle, 0, vcpu_feature::PSCI_0_2],
        ))?;
        hypercall_ok(&call_line(
            hc::VM_MAP_SHARED,
            &[handle, page.pfn, GUEST_IPA, 1],
        ))?;
        hypercall_ok(&call_line(
            hc::VCPU_SET_REG,
            &[handle, 0, vcpu_reg::PC, GUEST_IPA],
        ))?;
        let mut run_result = [0u64; 4];
        for _ in 0..100 {
            run_result = hypercall_regs(&call_line(hc::VCPU_RUN, &[handle, 0]))?;
            // An interrupt for the host came in: run again.
            if run_result[0] != 0 || run_result[1] != exit::INTERRUPTED {
                break;
            }
        }
        let x5 = hypercall_ok(&call_line(hc::VCPU_GET_REG, &[handle, 0, vcpu_reg::X0 + 5]))?;
        hypercall_ok(&call_line(hc::VM_TEARDOWN, &[handle]))?;
        let reclaimed = hypercall_ok(&call_line(hc::VM_RECLAIM, &[handle]))?;
        Ok(vec![
            fact(
                "guest_exit",
                format!(
                    "{:#x} {:#x} {:#x}",
                    run_result[0], run_result[1], run_result[2]
                ),
            ),
            fact("guest_x5", format!("{x5:#x}")),
            fact("guest_pages_reclaimed", reclaimed.to_string()),
        ])
    };
    match run() {
        Ok(r) => r,
        Err(e) => vec![check("guest_run", false, e)],
    }
}

/// One locked page of this process holding the guest code, and its frame.
struct GuestPage {
    pfn: u64,
    ptr: *mut u8,
}

/// The protected guest: MEM_SHARE its data page, MEM_UNSHARE it, power off.
const PVM_CODE: [u32; 13] = [
    0xd280_0060, // movz x0, #0x3
    0xf2b8_c000, // movk x0, #0xc600, lsl #16   (MEM_SHARE 0xc6000003)
    0xd282_0001, // movz x1, #0x1000
    0xf2b0_0001, // movk x1, #0x8000, lsl #16   (IPA 0x80001000)
    0xd400_0002, // hvc #0
    0xd280_0080, // movz x0, #0x4
    0xf2b8_c000, // movk x0, #0xc600, lsl #16   (MEM_UNSHARE 0xc6000004)
    0xd282_0001, // movz x1, #0x1000
    0xf2b0_0001, // movk x1, #0x8000, lsl #16
    0xd400_0002, // hvc #0
    0xd280_0100, // movz x0, #0x8
    0xf2b0_8000, // movk x0, #0x8400, lsl #16   (SYSTEM_OFF)
    0xd400_0002, // hvc #0
];
const PVM_SECRET: &[u8] = b"cloister-pvm-secret-5d1f";

/// What a forked child saw reading `ptr`: the secret, other bytes, or the
/// signal that killed it.
fn child_reads(ptr: *const u8) -> String {
    let end = in_child(|| {
        let mut buf = [0u8; 24];
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: reading our own mapping; the hyp may refuse it, which
            // is what is being tested.
            *b = unsafe { ptr.add(i).read_volatile() };
        }
        i32::from(buf != PVM_SECRET[..24])
    });
    match end {
        ChildEnd::Signal(sig) => signal_name(sig),
        ChildEnd::Exit(0) => "secret".into(),
        ChildEnd::Exit(_) => "other bytes".into(),
        ChildEnd::ForkFailed(e) => format!("fork failed: {e}"),
    }
}

fn pvm_isolation() -> Vec<Report> {
    let (code, data) = match (guest_page_with(&PVM_CODE), guest_page_with(&[])) {
        (Ok(c), Ok(d)) => (c, d),
        (Err(e), _) | (_, Err(e)) => return vec![check("guest_page", false, e)],
    };
    for (i, b) in PVM_SECRET.iter().enumerate() {
        // SAFETY: within the data page, before it is donated.
        unsafe { data.ptr.add(i).write_volatile(*b) };
    }
    let run = || -> Result<Vec<Report>, String> {
        let mut out = Vec::new();
        let handle = hypercall_ok(&call_line(hc::VM_CREATE, &[vm_type::PROTECTED]))?;
        hypercall_ok(&call_line(
            hc::VCPU_CREATE,
            &[handle, 0, vcpu_feature::PSCI_0_2],
        ))?;
        hypercall_ok(&call_line(hc::VM_DONATE, &[handle, code.pfn, GUEST_IPA, 1]))?;
        hypercall_ok(&call_line(
            hc::VM_DONATE,
            &[handle, data.pfn, GUEST_IPA + 0x1000, 1],
        ))?;
        hypercall_ok(&call_line(
            hc::VCPU_SET_REG,
            &[handle, 0, vcpu_reg::PC, GUEST_IPA],
        ))?;
        out.push(fact("read_private", child_reads(data.ptr)));
        let mut exits = Vec::new();
        for _ in 0..100 {
            let e = hypercall_regs(&call_line(hc::VCPU_RUN, &[handle, 0]))?;
            if e[0] != 0 {
                return Err(format!(
                    "VCPU_RUN failed: {:#x} {:#x} {:#x} {:#x}",
                    e[0], e[1], e[2], e[3]
                ));
            }
            match e[1] {
                exit::INTERRUPTED => continue,
                exit::MEM_SHARE => out.push(fact("read_shared", child_reads(data.ptr))),
                exit::MEM_UNSHARE => out.push(fact("read_unshared", child_reads(data.ptr))),
                _ => {}
            }
            exits.push(e[1].to_string());
            if e[1] == exit::SYSTEM_EVENT {
                break;
            }
        }
        out.push(fact("pvm_exits", exits.join(",")));
        hypercall_ok(&call_line(hc::VM_TEARDOWN, &[handle]))?;
        let reclaimed = hypercall_ok(&call_line(hc::VM_RECLAIM, &[handle]))?;
        out.push(fact("pvm_pages_reclaimed", reclaimed.to_string()));
        let mut after = [0u8; 24];
        for (i, b) in after.iter_mut().enumerate() {
            // SAFETY: the page is the host's again after VM_RECLAIM.
            *b = unsafe { data.ptr.add(i).read_volatile() };
        }
        let verdict = if after == PVM_SECRET[..24] {
            "secret still there"
        } else if after == [0; 24] {
            "zeroed"
        } else {
            "other bytes"
        };
        out.push(fact("after_reclaim", verdict.into()));
        out.push(host_alive());
        Ok(out)
    };
    match run() {
        Ok(r) => r,
        Err(e) => vec![check("pvm_isolation", false, e)],
    }
}

fn guest_page() -> Result<GuestPage, String> {
    guest_page_with(&GUEST_CODE)
}

fn guest_page_with(code: &[u32]) -> Result<GuestPage, String> {
    // SAFETY: a fresh private anonymous page; we only write our own bytes.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE | libc::MAP_LOCKED,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(format!("mmap: {}", io::Error::last_os_error()));
    }
    let words = ptr.cast::<u32>();
    for (i, w) in code.iter().enumerate() {
        // SAFETY: within the page mapped above.
        unsafe { words.add(i).write_volatile(*w) };
    }
    // The page's frame number from /proc/self/pagemap (root sees PFNs).
    let mut pagemap = File::open("/proc/self/pagemap").map_err(|e| format!("pagemap: {e}"))?;
    let index = ptr as u64 / 4096;
    let mut entry = [0u8; 8];
    use std::io::Seek;
    pagemap
        .seek(io::SeekFrom::Start(index * 8))
        .and_then(|_| pagemap.read_exact(&mut entry))
        .map_err(|e| format!("reading pagemap: {e}"))?;
    let entry = u64::from_le_bytes(entry);
    if entry & (1 << 63) == 0 {
        return Err("guest page not present".into());
    }
    Ok(GuestPage {
        pfn: entry & ((1 << 55) - 1),
        ptr: ptr.cast::<u8>(),
    })
}

/// The VMM in the host image starts and, given a device that does not
/// exist, fails with an error naming it (not a panic or a hang).
fn vmm_without_device() -> Vec<Report> {
    let device = "/dev/cloister-missing";
    let out = std::process::Command::new("/bin/cloister-vmm")
        .args(["--kernel", "/sbin/cloister-agent", "--device", device])
        .output();
    match out {
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let code = out
                .status
                .code()
                .map_or_else(|| "signal".to_owned(), |c| c.to_string());
            vec![
                fact("vmm_exit", code),
                check(
                    "vmm_names_device",
                    stderr.contains(&format!("opening {device}")),
                    stderr.trim().to_owned(),
                ),
            ]
        }
        Err(e) => vec![check(
            "vmm_runs",
            false,
            format!("running /bin/cloister-vmm: {e}"),
        )],
    }
}

/// Finds the virtio-serial port by name in sysfs and opens its device node.
fn open_result_port() -> io::Result<File> {
    for entry in fs::read_dir("/sys/class/virtio-ports")? {
        let entry = entry?;
        let name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() == RESULT_PORT_NAME {
            let dev = PathBuf::from("/dev").join(entry.file_name());
            return OpenOptions::new().write(true).open(dev);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "no virtio port with that name in /sys/class/virtio-ports",
    ))
}

/// Reads every record currently in the kernel log buffer.
fn read_kernel_log() -> io::Result<Vec<String>> {
    let mut kmsg = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")?;
    let mut lines = Vec::new();
    let mut record = vec![0u8; 8192];
    loop {
        // Each read returns exactly one record; EAGAIN marks the end.
        match kmsg.read(&mut record) {
            Ok(0) => break,
            Ok(n) => lines.push(String::from_utf8_lossy(&record[..n]).trim_end().to_owned()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // EPIPE: records were overwritten while reading; keep going.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(lines)
}

fn uname_release() -> io::Result<String> {
    // SAFETY: utsname is plain old data; all-zero is a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname writes only into the struct we own and pass by pointer.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c.to_ne_bytes()[0])
        .collect();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn mount(fstype: &str, target: &str) {
    if let Err(e) = cloister_guest_agent::init::mount(fstype, target) {
        eprintln!("cloister-agent: mount {fstype} on {target}: {e}");
    }
}

fn power_off() -> ! {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    // SAFETY: we are PID 1 and want the machine off; PSCI SYSTEM_OFF ends QEMU.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    eprintln!(
        "cloister-agent: reboot(RB_POWER_OFF) failed: {}",
        io::Error::last_os_error()
    );
    // PID 1 must not exit (the kernel would panic); wait for the runner's
    // timeout instead.
    loop {
        std::thread::park();
    }
}
