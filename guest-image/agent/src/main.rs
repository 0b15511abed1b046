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
use std::path::PathBuf;

use cloister_agent::parse;
use cloister_agent::protocol::{Report, PROTOCOL_VERSION, RESULT_PORT_NAME, SCENARIO_CMDLINE_KEY};

/// Scenarios this agent knows, with what each reports.
const SCENARIOS: &[(&str, &str)] = &[
    ("boot", "reaches the agent and reports nothing else"),
    ("kernel-version", "reports `kernel_release` from uname(2)"),
    ("entry-el", "reports `entry_el` from the kernel log"),
];

fn main() {
    let as_init = std::process::id() == 1;
    if as_init {
        mount_pseudo_filesystems();
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

fn mount_pseudo_filesystems() {
    for (fstype, target) in [("proc", "/proc"), ("sysfs", "/sys"), ("devtmpfs", "/dev")] {
        let _ = fs::create_dir_all(target);
        let c_type = std::ffi::CString::new(fstype).unwrap_or_default();
        let c_target = std::ffi::CString::new(target).unwrap_or_default();
        // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c_type.as_ptr(),
                c_target.as_ptr(),
                c_type.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            eprintln!(
                "cloister-agent: mount {fstype} on {target}: {}",
                io::Error::last_os_error()
            );
        }
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
