//! `cloister-guest-agent`: `/init` of the Cloister guest (see the crate
//! docs for the command line and the result lines).
//!
//! As PID 1 it runs the tests `cloister.test=` names, prints their results
//! on hvc0 and powers off (or reboots), or starts a shell on hvc0 when no
//! test is named. Started from that shell, `cloister-guest-agent boot,blk`
//! runs the tests and prints to stdout, and the VM stays up.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use cloister_guest_agent::bootlog;
use cloister_guest_agent::cmdline::{self, Options, Test, TEST_KEY};
use cloister_guest_agent::pattern::{self, Checksum, Pattern, Phase};
use cloister_guest_agent::report::{Line, PROTOCOL};

/// The first virtio console: where results go, and the demo shell.
const HVC: &str = "/dev/hvc0";

/// How long PID 1 waits for hvc0 to appear.
const HVC_WAIT: Duration = Duration::from_secs(10);

/// Size of one `blk` request.
const CHUNK: usize = 1 << 20;

fn main() {
    let pid1 = std::process::id() == 1;
    if pid1 {
        cloister_guest_agent::init::mount_pseudo_filesystems("cloister-guest-agent");
        // virtio-console adds its ports from a workqueue, so init can start
        // before hvc0 exists (the kernel then found no console to give init
        // as stdio, and std reopened fds 0-2 on /dev/null).
        wait_for(HVC, HVC_WAIT);
    }
    let mut text = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    // From a shell: the tests are the argument, the rest from the command line.
    if let Some(tests) = std::env::args().nth(1).filter(|_| !pid1) {
        text.push_str(&format!(" {TEST_KEY}={tests}"));
    }
    let parsed = cmdline::parse(&text);
    if pid1 && matches!(&parsed, Ok(o) if o.tests.is_empty()) {
        shell();
    }
    if pid1 {
        // Kernel messages on the console would split result lines; they
        // stay in the log (`boot` reads them from there).
        // SAFETY: SYSLOG_ACTION_CONSOLE_LEVEL takes no buffer; the level is
        // the third argument.
        unsafe { libc::klogctl(8, std::ptr::null_mut(), 1) };
    }
    let mut out = Output::open(pid1);
    out.line(&Line::fact("protocol", PROTOCOL));
    out.line(&Line::fact("agent", env!("CARGO_PKG_VERSION")));
    let end = match parsed {
        Err(e) => {
            out.check("command line", Err(e.to_string()));
            End::PowerOff
        }
        Ok(opts) => run(&mut out, &opts),
    };
    out.line(&Line::fact(
        "end",
        match end {
            End::PowerOff => "poweroff",
            End::Reboot => "reboot",
        },
    ));
    let pass = out.all_ok;
    out.line(&Line::Result { pass });
    out.drain();
    if pid1 {
        finish(end);
    }
    std::process::exit(if pass { 0 } else { 1 });
}

/// How a run ends.
#[derive(Debug, Clone, Copy)]
enum End {
    PowerOff,
    Reboot,
}

fn run(out: &mut Output, opts: &Options) -> End {
    let names: Vec<&str> = opts.tests.iter().map(|t| t.name()).collect();
    out.line(&Line::fact("tests", names.join(",")));
    let mut end = End::PowerOff;
    for test in &opts.tests {
        match test {
            Test::Boot => test_boot(out),
            Test::Blk => test_blk(out, opts),
            Test::Randio => test_randio(out, opts),
            Test::Secret => test_secret(out, opts),
            Test::Wait => test_wait(out),
            Test::Poweroff => out.check("poweroff: requested", Ok(())),
            Test::Reboot => {
                out.check("reboot: requested", Ok(()));
                end = End::Reboot;
            }
        }
    }
    end
}

/// Where result lines go, numbering the checks.
#[derive(Debug)]
struct Output {
    file: Option<File>,
    checks: u32,
    all_ok: bool,
}

impl Output {
    /// hvc0 as PID 1 (stdout if it cannot be opened), stdout otherwise.
    fn open(pid1: bool) -> Output {
        let file = pid1
            .then(|| OpenOptions::new().write(true).open(HVC).ok())
            .flatten();
        Output {
            file,
            checks: 0,
            all_ok: true,
        }
    }

    fn line(&mut self, line: &Line) {
        let text = format!("{}\n", line.to_line());
        let written = match &mut self.file {
            Some(f) => f.write_all(text.as_bytes()),
            None => io::stdout().write_all(text.as_bytes()),
        };
        if written.is_err() {
            // Nowhere else to say it; the host sees a cut-off report.
            self.all_ok = false;
        }
    }

    fn check(&mut self, name: &str, result: Result<(), String>) {
        self.checks += 1;
        let ok = result.is_ok();
        self.all_ok &= ok;
        self.line(&Line::Check {
            number: self.checks,
            ok,
            name: name.to_owned(),
            detail: result.err().unwrap_or_default(),
        });
    }

    /// Waits until the console took every byte (before powering off).
    fn drain(&mut self) {
        match &self.file {
            // SAFETY: tcdrain on an open descriptor we own.
            Some(f) => unsafe {
                libc::tcdrain(f.as_raw_fd());
            },
            None => {
                let _ = io::stdout().flush();
            }
        }
    }
}

// ---- boot ----

/// `secret`: one page of secret words in this process's private memory,
/// locked, kept until the VM ends; reports its guest-physical address.
fn test_secret(out: &mut Output, opts: &Options) {
    use cloister_guest_agent::secret::{next, PAGE_WORDS};
    /// One page, page-aligned: the secret fills exactly one frame.
    #[repr(C, align(4096))]
    struct Page([u64; PAGE_WORDS]);
    let page: &'static mut Page = Box::leak(Box::new(Page([0; PAGE_WORDS])));
    let mut state = opts.secret_seed;
    for word in &mut page.0 {
        state = next(state);
        *word = state;
    }
    let va = page.0.as_ptr() as usize;
    // SAFETY: locks our own page in memory (no swap in the guest anyway).
    let locked = unsafe { libc::mlock(va as *const libc::c_void, 4096) } == 0;
    match guest_physical(va) {
        Ok(ipa) => {
            out.line(&Line::fact("secret_ipa", format!("{ipa:#x}")));
            out.check(
                "secret: page held",
                if locked {
                    Ok(())
                } else {
                    Err("mlock failed".into())
                },
            );
        }
        Err(e) => out.check("secret: page held", Err(e)),
    }
}

/// The guest-physical address behind `va` in this process.
fn guest_physical(va: usize) -> Result<u64, String> {
    let pagemap = File::open("/proc/self/pagemap").map_err(|e| format!("pagemap: {e}"))?;
    let mut entry = [0u8; 8];
    pagemap
        .read_exact_at(&mut entry, (va / 4096 * 8) as u64)
        .map_err(|e| format!("reading pagemap: {e}"))?;
    let entry = u64::from_le_bytes(entry);
    if entry & 1 << 63 == 0 {
        return Err(format!("{va:#x} is not present"));
    }
    Ok((entry & ((1 << 55) - 1)) << 12 | (va as u64 & 0xfff))
}

/// `wait`: tells the host it is waiting and reads one line from hvc0.
fn test_wait(out: &mut Output) {
    use std::io::BufRead;
    out.line(&Line::fact("waiting", "host"));
    out.drain();
    let mut line = String::new();
    let read = File::open(HVC).and_then(|f| io::BufReader::new(f).read_line(&mut line));
    out.check(
        "wait: the host answered",
        read.map(|_| ()).map_err(|e| format!("reading {HVC}: {e}")),
    );
}

fn test_boot(out: &mut Output) {
    out.line(&Line::fact("kernel_release", kernel_release()));
    let cpus = fs::read_to_string("/sys/devices/system/cpu/online");
    if let Ok(cpus) = &cpus {
        out.line(&Line::fact("cpus_online", cpus.trim()));
    }
    let mut disks: Vec<String> = fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    disks.sort();
    out.line(&Line::fact("block_devices", none_if_empty(&disks)));
    let log = kernel_log();
    if let Ok(log) = &log {
        let services = bootlog::hyp_services(log);
        out.line(&Line::fact(
            "kvm_hyp_services",
            services.map_or_else(|| "none".to_owned(), |s| s.to_fact()),
        ));
        let pkvm = services.is_some_and(|s| s.pkvm_guest());
        out.line(&Line::fact(
            "pkvm_guest",
            if pkvm { "active" } else { "inactive" },
        ));
        let guard = services.is_some_and(|s| s.has(bootlog::kvm_func::MMIO_GUARD));
        out.line(&Line::fact("mmio_guard", if guard { "yes" } else { "no" }));
        out.line(&Line::fact(
            "restricted_dma_pool",
            bootlog::restricted_pool(log).unwrap_or_else(|| "none".into()),
        ));
        out.line(&Line::fact(
            "restricted_dma_devices",
            none_if_empty(&bootlog::pool_devices(log)),
        ));
        out.line(&Line::fact(
            "dma_atomic_pools_kib",
            bootlog::atomic_pools_kib(log),
        ));
    }
    let result = match (&cpus, &log) {
        (Err(e), _) => Err(format!("/sys/devices/system/cpu/online: {e}")),
        (_, Err(e)) => Err(format!("reading the kernel log: {e}")),
        _ => Ok(()),
    };
    out.check("boot: facts read", result);
}

fn none_if_empty(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(" ")
    }
}

fn kernel_release() -> String {
    // SAFETY: utsname is plain old data; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uts is a valid, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "unknown".into();
    }
    // SAFETY: uname NUL-terminates release within the array.
    unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// The whole kernel log buffer (syslog(2) READ_ALL).
fn kernel_log() -> io::Result<String> {
    // SAFETY: SYSLOG_ACTION_SIZE_BUFFER takes no buffer.
    let size = unsafe { libc::klogctl(10, std::ptr::null_mut(), 0) };
    let size = usize::try_from(size).map_err(|_| io::Error::last_os_error())?;
    let mut buf = vec![0u8; size.max(4096)];
    let len = libc::c_int::try_from(buf.len()).unwrap_or(libc::c_int::MAX);
    // SAFETY: buf is writable for len bytes.
    let n = unsafe { libc::klogctl(3, buf.as_mut_ptr().cast(), len) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    buf.truncate(n);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

// ---- blk ----

/// Requests `dev` completed so far (reads + writes, /sys/block/<dev>/stat).
fn completed_requests(dev: &str) -> Option<u64> {
    let name = dev.rsplit('/').next()?;
    let stat = fs::read_to_string(format!("/sys/block/{name}/stat")).ok()?;
    let fields: Vec<u64> = stat
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    Some(fields.first()? + fields.get(4)?)
}

/// `randio`: `rand_ops` 4 KiB `O_DIRECT` writes at random 4 KiB-aligned
/// offsets of the first `blk_mib` MiB, then as many reads; reports IOPS.
fn test_randio(out: &mut Output, opts: &Options) {
    let dev = opts.blk_dev.as_str();
    if let Some(n) = completed_requests(dev) {
        out.line(&Line::fact("randio_requests_before", n));
    }
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
    {
        Ok(f) => f,
        Err(e) => return out.check("randio: open", Err(format!("{dev}: {e}"))),
    };
    let mut storage = vec![0u8; 2 * 4096];
    let start = storage.as_ptr().align_offset(4096);
    let buf = &mut storage[start..start + 4096];
    let blocks = opts.blk_mib * (CHUNK as u64 / 4096);
    let mut rng = Pattern::new(opts.seed ^ 0x5241_4e44);
    for (name, write) in [("write", true), ("read", false)] {
        let began = Instant::now();
        let mut result = Ok(());
        for _ in 0..opts.rand_ops {
            let at = rng.next_word() % blocks * 4096;
            let r = if write {
                rng.fill(buf);
                file.write_all_at(buf, at)
            } else {
                file.read_exact_at(buf, at)
            };
            if let Err(e) = r {
                result = Err(format!("4 KiB {name} at {at:#x}: {e}"));
                break;
            }
        }
        let secs = began.elapsed().as_secs_f64();
        if result.is_ok() && secs > 0.0 {
            out.line(&Line::fact(
                &format!("rand_{name}_iops"),
                format!("{:.0}", opts.rand_ops as f64 / secs),
            ));
        }
        out.check(&format!("randio: 4 KiB random {name}s"), result);
    }
    if let Some(n) = completed_requests(dev) {
        out.line(&Line::fact("randio_requests_after", n));
    }
}

fn test_blk(out: &mut Output, opts: &Options) {
    let dev = opts.blk_dev.as_str();
    if let Some(n) = completed_requests(dev) {
        out.line(&Line::fact("blk_requests_before", n));
    }
    out.line(&Line::fact("blk_device", dev));
    out.line(&Line::fact("blk_mib", opts.blk_mib));
    out.line(&Line::fact("blk_seed", format!("{:#x}", opts.seed)));
    let bytes = opts.blk_mib * CHUNK as u64;
    match disk_size(dev) {
        Ok(size) if size >= bytes => {}
        Ok(size) => {
            return out.check(
                "blk: disk large enough",
                Err(format!(
                    "{dev} holds {size} bytes, cloister.blk_mib={} needs {bytes}",
                    opts.blk_mib
                )),
            )
        }
        Err(e) => return out.check("blk: disk large enough", Err(format!("{dev}: {e}"))),
    }
    // O_DIRECT wants the buffer aligned to the logical block size; 4 KiB
    // covers every disk.
    let mut storage = vec![0u8; CHUNK + 4096];
    let start = storage.as_ptr().align_offset(4096);
    let buf = &mut storage[start..start + CHUNK];
    let direct_seed = pattern::phase_seed(opts.seed, Phase::Direct);
    let buffered_seed = pattern::phase_seed(opts.seed, Phase::Buffered);
    let mib = opts.blk_mib;

    let r = write_phase(dev, true, direct_seed, mib, buf);
    report_speed(
        out,
        "blk_direct_write_mbps",
        "blk: O_DIRECT write",
        r,
        bytes,
    );
    let r = read_phase(dev, true, direct_seed, mib, buf, None);
    report_speed(
        out,
        "blk_direct_read_mbps",
        "blk: O_DIRECT read-back",
        r,
        bytes,
    );

    let r = write_phase(dev, false, buffered_seed, mib, buf);
    report_speed(
        out,
        "blk_buffered_write_mbps",
        "blk: buffered write + fsync",
        r,
        bytes,
    );
    let r = flush_buffers(dev).and_then(|()| read_phase(dev, false, buffered_seed, mib, buf, None));
    report_speed(
        out,
        "blk_buffered_read_mbps",
        "blk: buffered read-back",
        r,
        bytes,
    );
    let mut sum = Checksum::new();
    match read_phase(dev, true, buffered_seed, mib, buf, Some(&mut sum)) {
        Ok(_) => {
            out.line(&Line::fact(
                "blk_checksum",
                pattern::format_checksum(sum.finish()),
            ));
            out.check("blk: O_DIRECT read of the buffered write", Ok(()));
        }
        Err(e) => out.check("blk: O_DIRECT read of the buffered write", Err(e)),
    }
    if let Some(n) = completed_requests(dev) {
        out.line(&Line::fact("blk_requests_after", n));
    }
}

fn report_speed(out: &mut Output, key: &str, check: &str, result: Result<f64, String>, bytes: u64) {
    match result {
        Ok(secs) => {
            #[allow(clippy::cast_precision_loss)]
            let mbps = bytes as f64 / secs.max(1e-9) / 1e6;
            out.line(&Line::fact(key, format!("{mbps:.1}")));
            out.check(check, Ok(()));
        }
        Err(e) => out.check(check, Err(e)),
    }
}

fn open_disk(dev: &str, write: bool, direct: bool) -> Result<File, String> {
    let mut o = OpenOptions::new();
    o.read(!write).write(write);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(dev).map_err(|e| {
        format!(
            "opening {dev}{}: {e}",
            if direct { " with O_DIRECT" } else { "" }
        )
    })
}

/// Writes `mib` MiB of the pattern of `seed`; returns the seconds taken,
/// including the fsync.
fn write_phase(
    dev: &str,
    direct: bool,
    seed: u64,
    mib: u64,
    buf: &mut [u8],
) -> Result<f64, String> {
    let file = open_disk(dev, true, direct)?;
    let mut pattern = Pattern::new(seed);
    let started = Instant::now();
    for i in 0..mib {
        pattern.fill(buf);
        file.write_all_at(buf, i * CHUNK as u64)
            .map_err(|e| format!("write at MiB {i}: {e}"))?;
    }
    file.sync_all().map_err(|e| format!("fsync: {e}"))?;
    Ok(started.elapsed().as_secs_f64())
}

/// Reads `mib` MiB back and checks them against the pattern of `seed`,
/// feeding `sum` if given; returns the seconds taken.
fn read_phase(
    dev: &str,
    direct: bool,
    seed: u64,
    mib: u64,
    buf: &mut [u8],
    mut sum: Option<&mut Checksum>,
) -> Result<f64, String> {
    let file = open_disk(dev, false, direct)?;
    let mut pattern = Pattern::new(seed);
    let started = Instant::now();
    for i in 0..mib {
        let at = i * CHUNK as u64;
        file.read_exact_at(buf, at)
            .map_err(|e| format!("read at MiB {i}: {e}"))?;
        if let Some(sum) = sum.as_deref_mut() {
            sum.update(buf);
        }
        pattern.check(buf).map_err(|m| {
            format!(
                "byte {}: expected {:#04x}, read {:#04x}",
                at + m.offset as u64,
                m.expected,
                m.found
            )
        })?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Drops the disk's pages from the page cache (BLKFLSBUF), so the buffered
/// read-back comes from the device.
fn flush_buffers(dev: &str) -> Result<(), String> {
    /// `_IO(0x12, 97)`, include/uapi/linux/fs.h.
    const BLKFLSBUF: libc::Ioctl = 0x1261;
    let file = open_disk(dev, false, false)?;
    // SAFETY: BLKFLSBUF takes no argument; fd is an open block device.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKFLSBUF, 0) };
    if rc != 0 {
        return Err(format!(
            "BLKFLSBUF on {dev}: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn disk_size(dev: &str) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    File::open(dev)?.seek(SeekFrom::End(0))
}

// ---- PID 1 ----

/// Waits up to `limit` for devtmpfs to show `path`.
fn wait_for(path: &str, limit: Duration) {
    let started = Instant::now();
    while !std::path::Path::new(path).exists() && started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The last signal busybox `poweroff` / `reboot` / `halt` sent PID 1.
static REQUEST: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_request(sig: libc::c_int) {
    REQUEST.store(sig, Ordering::SeqCst);
}

/// The interactive demo: a busybox shell on hvc0; the VM ends when the shell
/// exits or busybox `poweroff` / `reboot` signals PID 1.
fn shell() -> ! {
    let _ = std::process::Command::new("/bin/busybox")
        .args(["--install", "-s"])
        .status();
    for sig in [libc::SIGUSR1, libc::SIGUSR2, libc::SIGTERM] {
        // SAFETY: sigaction is zeroed plain data; the handler only stores to
        // an atomic. No SA_RESTART: waitpid must return EINTR.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_request as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
    // SAFETY: fork in a single-threaded process.
    let child = unsafe { libc::fork() };
    if child == 0 {
        exec_shell();
    }
    let end = loop {
        let mut status = 0;
        // SAFETY: status is a valid out pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        match REQUEST.load(Ordering::SeqCst) {
            libc::SIGTERM => break End::Reboot,
            libc::SIGUSR1 | libc::SIGUSR2 => break End::PowerOff,
            _ => {}
        }
        if pid == child
            || (pid < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD))
        {
            break End::PowerOff;
        }
    };
    finish(end)
}

/// In the forked child: a new session with hvc0 as its controlling
/// terminal, then a login shell.
fn exec_shell() -> ! {
    let tty = std::ffi::CString::new(HVC).unwrap_or_default();
    let sh = std::ffi::CString::new("/bin/sh").unwrap_or_default();
    let argv0 = std::ffi::CString::new("-sh").unwrap_or_default();
    let env: Vec<std::ffi::CString> = [
        "HOME=/root",
        "PATH=/sbin:/usr/sbin:/bin:/usr/bin",
        "TERM=vt100",
        "PS1=cloister-guest:\\w# ",
    ]
    .iter()
    .filter_map(|e| std::ffi::CString::new(*e).ok())
    .collect();
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let argv = [argv0.as_ptr(), std::ptr::null()];
    // SAFETY: every pointer is a live NUL-terminated string or NULL; on
    // success execve does not return, on failure the child exits.
    unsafe {
        libc::setsid();
        let fd = libc::open(tty.as_ptr(), libc::O_RDWR);
        if fd >= 0 {
            libc::ioctl(fd, libc::TIOCSCTTY, 0);
            for target in 0..3 {
                libc::dup2(fd, target);
            }
        }
        let banner = b"Cloister guest: busybox shell on hvc0; `poweroff` or `exit` ends the VM\n";
        libc::write(1, banner.as_ptr().cast(), banner.len());
        libc::execve(sh.as_ptr(), argv.as_ptr(), envp.as_ptr());
        libc::_exit(127)
    }
}

/// Syncs and powers off or reboots; PID 1 never returns.
fn finish(end: End) -> ! {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let how = match end {
        End::PowerOff => libc::RB_POWER_OFF,
        End::Reboot => libc::RB_AUTOBOOT,
    };
    // SAFETY: we are PID 1 and mean to end the VM (PSCI SYSTEM_OFF / RESET).
    unsafe { libc::reboot(how) };
    eprintln!(
        "cloister-guest-agent: reboot(2) failed: {}",
        io::Error::last_os_error()
    );
    // PID 1 must not exit (the kernel would panic); wait for the host's timeout.
    loop {
        std::thread::park();
    }
}
