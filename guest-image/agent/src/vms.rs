//! Scenarios that run guests through `/dev/cloister`: the conformance
//! guest under `cloister-vmm`, a protected guest's secret probed from every
//! host path (this process acting as the VMM, through the VMM library),
//! teardown after exit and SIGKILL with a scan of host RAM, the host
//! requests the hyp must refuse, pkvm.rst's promises to VMMs, and a VMM
//! sending garbage.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use cloister_agent::parse::tap_summary;
use cloister_agent::protocol::Report;
use cloister_agent::secret;
use cloister_hyp_core::abi::{self, hc, ret, vm_type};
use cloister_vmm::arch::layout::{RAM_BASE, TEST_DEV_BASE};
use cloister_vmm::devices::test_dev::{event, TestDevice};
use cloister_vmm::devices::Bus;
pub use cloister_vmm::vstate::MemoryModel;
use cloister_vmm::vstate::{ExitCounts, GuestEnd, Machine, VmConfig};
use kvm_bindings::{kvm_userspace_memory_region, kvm_vcpu_init, KVM_MEM_READONLY};
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::direct_io;
use crate::probe::{self, Probe};
use crate::{
    call_line, check, fact, host_alive, hypercall_ok, hypercall_regs, map_devmem, read_kernel_log,
};

const DEVICE: &str = "/dev/cloister";
const VMM: &str = "/bin/cloister-vmm";
const CONFORMANCE: &str = "/lib/cloister/conformance.bin";

/// A seed no two runs share (the secret must not be a constant that could
/// sit in some binary in host RAM).
pub(crate) fn fresh_seed() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    let mixed =
        t.tv_sec.cast_unsigned().wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ t.tv_nsec.cast_unsigned();
    mixed | 1
}

pub(crate) fn errno_name(e: i32) -> String {
    match e {
        0 => "ok".into(),
        libc::EPERM => "EPERM".into(),
        libc::ENOENT => "ENOENT".into(),
        libc::EINTR => "EINTR".into(),
        libc::ENOEXEC => "ENOEXEC".into(),
        libc::EFAULT => "EFAULT".into(),
        libc::EIO => "EIO".into(),
        libc::EBUSY => "EBUSY".into(),
        libc::EEXIST => "EEXIST".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::ENOTTY => "ENOTTY".into(),
        libc::ENODEV => "ENODEV".into(),
        other => format!("errno {other}"),
    }
}

fn kvm_errno<T>(r: Result<T, kvm_ioctls::Error>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => errno_name(e.errno()),
    }
}

/// Kernel log lines that mean the host kernel broke.
fn kernel_complaints() -> Vec<String> {
    read_kernel_log()
        .unwrap_or_default()
        .into_iter()
        .filter(|l| {
            ["Oops", "BUG:", "WARNING:", "Internal error", "Call trace"]
                .iter()
                .any(|m| l.contains(m))
        })
        .collect()
}

pub(crate) fn kernel_clean() -> Report {
    let bad = kernel_complaints();
    check("kernel_log_clean", bad.is_empty(), bad.join(" | "))
}

/// `conformance-protected` / `conformance-normal`: the bare-metal guest's
/// TAP, run by the real VMM.
pub fn conformance(protected: bool, memory: Option<&str>) -> Vec<Report> {
    let kind = if protected { "protected" } else { "normal" };
    let mut cmd = Command::new(VMM);
    cmd.args(["--kernel", CONFORMANCE, "--cpus", "2", "--mem", "64"])
        .args(["--cmdline", &format!("expect={kind}")]);
    if protected {
        cmd.arg("--protected");
    }
    if let Some(memory) = memory {
        cmd.args(["--memory", memory]);
    }
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => return vec![check("vmm_runs", false, format!("running {VMM}: {e}"))],
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tap = tap_summary(&stdout);
    let verdict = if tap.planned > 0 && tap.passed == tap.planned && tap.failed.is_empty() {
        "pass"
    } else {
        "fail"
    };
    let mut detail = format!(
        "{} of {} passed; failed: [{}]",
        tap.passed,
        tap.planned,
        tap.failed.join("; ")
    );
    if verdict == "fail" {
        let tail: Vec<&str> = stdout.lines().rev().take(15).collect();
        detail.push_str(&format!(
            "; console tail: {:?}; vmm stderr: {:?}",
            tail.into_iter().rev().collect::<Vec<_>>(),
            stderr.trim()
        ));
    }
    vec![
        fact(
            "conformance_memory",
            cloister_agent::parse::vmm_memory_model(&stderr)
                .unwrap_or("unknown")
                .to_owned(),
        ),
        fact(
            "conformance_kind",
            tap.kind.unwrap_or_else(|| "none".into()),
        ),
        check("conformance_tap", verdict == "pass", detail),
        fact("conformance", verdict.into()),
        fact(
            "vmm_exit",
            out.status
                .code()
                .map_or_else(|| "signal".into(), |c| c.to_string()),
        ),
        host_alive(),
        kernel_clean(),
    ]
}

/// What a host read at `va` saw, in the terms the facts use.
fn seen(p: Probe, seed: u64) -> String {
    match p {
        Probe::Value(v) if v == secret::next(seed) => "secret".into(),
        Probe::Value(0) => "zero".into(),
        Probe::Value(_) => "other".into(),
        Probe::Signal(_) => p.describe(),
    }
}

/// The frame behind `va` in this process, from /proc/self/pagemap.
fn pfn_of(va: u64) -> Result<u64, String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs::File::open("/proc/self/pagemap").map_err(|e| format!("pagemap: {e}"))?;
    let mut entry = [0u8; 8];
    f.seek(SeekFrom::Start(va / 4096 * 8))
        .and_then(|_| f.read_exact(&mut entry))
        .map_err(|e| format!("reading pagemap: {e}"))?;
    let entry = u64::from_le_bytes(entry);
    if entry & (1 << 63) == 0 {
        return Err(format!("{va:#x} not present"));
    }
    Ok(entry & ((1 << 55) - 1))
}

/// write(2) of `len` bytes at `va` into a pipe: only the kernel's uaccess
/// reads them. Returns the errno name.
fn uaccess_write(va: u64, len: usize) -> String {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two fds into the array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return "pipe failed".into();
    }
    // SAFETY: the kernel checks the source range; a fault is an errno.
    let n = unsafe { libc::write(fds[1], va as *const libc::c_void, len) };
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    // SAFETY: closing the pipe we made.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    if n < 0 {
        errno_name(errno)
    } else {
        "ok".into()
    }
}

/// read(2) from a pipe into `va`: the kernel's uaccess writes the page.
/// Returns the errno name.
fn uaccess_read_into(va: u64, len: usize) -> String {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two fds into the array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return "pipe failed".into();
    }
    let data = [0x5au8; 64];
    let n = len.min(data.len());
    // SAFETY: writes our own buffer into the pipe, then the kernel copies
    // it to `va`, checking the destination; a fault is an errno.
    let r = unsafe {
        libc::write(fds[1], data.as_ptr().cast(), n);
        libc::read(fds[0], va as *mut libc::c_void, n)
    };
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    // SAFETY: closing the pipe we made.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    if r < 0 {
        errno_name(errno)
    } else {
        "ok".into()
    }
}

/// process_vm_readv(2) of 64 bytes at `va` from this very process: the
/// seed's strace case (the kernel reads the page on the reader's behalf).
fn process_vm_read(va: u64) -> String {
    let mut buf = [0u8; 64];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: va as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: reads into our own buffer; the kernel checks the remote range.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if n < 0 {
        errno_name(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        format!("read {n} bytes")
    }
}

/// pread(2) of /proc/self/mem at `va` (the kernel's access_remote_vm).
fn proc_mem_read(va: u64) -> String {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 64];
    match fs::File::open("/proc/self/mem").and_then(|f| f.read_at(&mut buf, va)) {
        Ok(n) => format!("read {n} bytes"),
        Err(e) => errno_name(e.raw_os_error().unwrap_or(0)),
    }
}

fn secret_cfg(mode: &str, seed: u64) -> VmConfig {
    VmConfig {
        device: PathBuf::from(DEVICE),
        kernel: PathBuf::from(CONFORMANCE),
        initrd: None,
        cmdline: format!("mode={mode} seed={seed:#x}"),
        mem_mib: 64,
        vcpus: 1,
        protected: true,
        memory: None,
        configured_memory: None,
        devices: Default::default(),
        dma_pool_mib: cloister_vmm::arch::layout::DEFAULT_DMA_POOL_MIB,
    }
}

/// The host driver's page list (`gfn pfn donated|shared` lines, debugfs)
/// of the VM whose VMM is process `pid`.
pub(crate) fn vm_pages_of(pid: u32) -> Result<String, String> {
    vm_debugfs_of(pid, "pages")
}

/// The VM handle (as the driver prints it, `0x..`) of VMM process `pid`,
/// and the driver's debugfs file `vm-<handle>-<what>`.
pub(crate) fn vm_debugfs_of(pid: u32, what: &str) -> Result<String, String> {
    let (_, text) = vm_handle_and_file(pid, what)?;
    Ok(text)
}

/// The handle of VMM `pid`'s VM and the text of its `vm-<handle>-<what>`.
pub(crate) fn vm_handle_and_file(pid: u32, what: &str) -> Result<(String, String), String> {
    let dir = "/sys/kernel/debug/cloister";
    if !std::path::Path::new(dir).exists() {
        let _ = fs::create_dir_all("/sys/kernel/debug");
        crate::mount("debugfs", "/sys/kernel/debug");
    }
    let vms = fs::read_to_string(format!("{dir}/vms")).map_err(|e| format!("{dir}/vms: {e}"))?;
    let pid = format!("pid={pid}");
    let handle = vms
        .lines()
        .find(|l| l.split_whitespace().any(|w| w == pid))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("handle=")))
        .ok_or_else(|| format!("no VM of {pid} in {dir}/vms: {vms:?}"))?
        .to_owned();
    let text = fs::read_to_string(format!("{dir}/vm-{handle}-{what}"))
        .map_err(|e| format!("{dir}/vm-{handle}-{what}: {e}"))?;
    Ok((handle, text))
}

/// The frame the host driver gave this process's VM at `ipa`.
fn driver_pfn(ipa: u64) -> Result<u64, String> {
    let pages = vm_pages_of(std::process::id())?;
    cloister_agent::parse::driver_page_pfn(&pages, ipa >> 12)
        .ok_or_else(|| format!("gfn {:#x} not in this VM's page list", ipa >> 12))
}

/// `pvm-secret` (anonymous memory) and `gmem-secret` (guest_memfd): this
/// process is the VMM of a protected guest that keeps a secret, shares it,
/// unshares it and powers off; at each step it reads the page through its
/// own mapping, and while private also through /dev/mem at the page's
/// frame, the kernel (write(2) from the mapping, read(2) into it),
/// process_vm_readv, /proc/self/mem and an O_DIRECT write from and read into
/// the page; once shared, the O_DIRECT write again. Facts are named `<prefix>_<stage>_<path>`.
pub fn pvm_secret(prefix: &'static str, memory: MemoryModel) -> Vec<Report> {
    let seed = fresh_seed();
    let cfg = VmConfig {
        memory: Some(memory),
        ..secret_cfg("secret", seed)
    };
    let mut machine = match Machine::create(&cfg) {
        Ok(m) => m,
        Err(e) => return vec![check("create_vm", false, e.to_string())],
    };
    let mem = machine.memory().clone();
    let reports = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&reports);
    let handler = move |ev: u64, ipa: u64| -> u64 {
        let Ok(va) = mem.get_host_address(GuestAddress(ipa)) else {
            return 1;
        };
        let va = va as u64;
        let mut out = Vec::new();
        let stage = match ev {
            event::SECRET_READY => "private",
            event::SHARED => "shared",
            event::UNSHARED => "unshared",
            _ => return 0,
        };
        out.push(fact(
            &format!("{prefix}_{stage}_vmm"),
            seen(probe::read_u64(va as *const u64), seed),
        ));
        if ev == event::SECRET_READY {
            match driver_pfn(ipa).and_then(|pfn| map_devmem(pfn << 12)) {
                Ok(ptr) => out.push(fact(
                    &format!("{prefix}_private_devmem"),
                    seen(probe::read_u64(ptr), seed),
                )),
                Err(e) => out.push(check(&format!("{prefix}_private_devmem"), false, e)),
            }
            out.push(fact(
                &format!("{prefix}_private_uaccess"),
                uaccess_write(va, 64),
            ));
            out.push(fact(
                &format!("{prefix}_private_uaccess_in"),
                uaccess_read_into(va, 64),
            ));
            out.push(fact(
                &format!("{prefix}_private_process_vm_readv"),
                process_vm_read(va),
            ));
            out.push(fact(
                &format!("{prefix}_private_proc_mem"),
                proc_mem_read(va),
            ));
            out.push(fact(
                &format!("{prefix}_private_odirect_write"),
                direct_io::write_from(va, |p| seen(p, seed)),
            ));
            out.push(fact(
                &format!("{prefix}_private_odirect_read"),
                direct_io::read_into(va, |p| seen(p, seed)),
            ));
        }
        if ev == event::SHARED {
            // Shared pages stay out of GUP's reach (docs/dev-cloister.md).
            out.push(fact(
                &format!("{prefix}_shared_odirect_write"),
                direct_io::write_from(va, |p| seen(p, seed)),
            ));
            // The control: the same probe from a guest page the guest never
            // touched, so never donated, holding a pattern the VMM wrote.
            out.push(fact(
                &format!("{prefix}_untouched_odirect_write"),
                untouched_odirect_write(&mem),
            ));
        }
        if let Ok(mut r) = log.lock() {
            r.extend(out);
        }
        0
    };
    let bus = Bus::new(Vec::new(), TestDevice::new(Box::new(handler)));
    let counts = ExitCounts::default();
    let end = machine.run(&bus, &counts);
    let mem = machine.memory().clone();
    drop(machine);
    let mut out = match reports.lock() {
        Ok(r) => r.clone(),
        Err(_) => Vec::new(),
    };
    out.push(fact(
        &format!("{prefix}_end"),
        match end {
            Ok(end) => format!("{end:?}"),
            Err(e) => format!("error: {e}"),
        },
    ));
    if memory == MemoryModel::Anon {
        // The VMM's own pages, zeroed by the hyp before they came back. (A
        // guest_memfd's mapping is the driver's: pvm-teardown's RAM scan
        // covers it.)
        out.push(fact(
            &format!("{prefix}_after_teardown"),
            copies_left(&mem, seed),
        ));
    }
    out.push(host_alive());
    out.push(kernel_clean());
    out
}

/// The O_DIRECT write probe on the last page of guest RAM, which the
/// secret guest never touches: `pattern` when the file got the page.
fn untouched_odirect_write(mem: &vm_memory::GuestMemoryMmap) -> String {
    const PATTERN: u64 = 0xc1a1_57e2_0d12_ec70;
    let last = GuestAddress(mem.last_addr().0 & !0xfff);
    if let Err(e) = mem.write_obj(PATTERN, last) {
        return format!("writing the pattern at {:#x}: {e}", last.0);
    }
    let Ok(va) = mem.get_host_address(last) else {
        return format!("{:#x} is not in guest memory", last.0);
    };
    direct_io::write_from(va as u64, |p| match p {
        Probe::Value(PATTERN) => "pattern".into(),
        other => seen(other, 0),
    })
}

/// Copies of the secret left in guest RAM (as this process maps it) after
/// teardown: for anonymous memory the pages come back zeroed; a
/// guest_memfd's mapping reads back whatever the fd holds.
fn copies_left(m: &vm_memory::GuestMemoryMmap, seed: u64) -> String {
    let mut bytes = vec![0u8; 1 << 20];
    let mut words = vec![0u64; (1 << 20) / 8];
    let mut copies = 0;
    for mib in 0..64u64 {
        let at = GuestAddress(RAM_BASE + (mib << 20));
        if m.read_slice(&mut bytes, at).is_err() {
            return "unreadable".to_string();
        }
        for (w, c) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            *w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        }
        copies += secret::find(&words, seed).len();
    }
    format!("{copies} copies")
}

/// `gmem-punch`: a guest_memfd page the guest holds is punched out while
/// the guest runs: the hyp takes it from the guest and zeroes it, the
/// host gets it back, and the guest's next access ends `KVM_RUN` with
/// -EFAULT (pkvm.rst), not with a fresh page.
pub fn gmem_punch() -> Vec<Report> {
    let seed = fresh_seed();
    let cfg = VmConfig {
        memory: Some(MemoryModel::GuestMemfd),
        ..secret_cfg("touch", seed)
    };
    let mut machine = match Machine::create(&cfg) {
        Ok(m) => m,
        Err(e) => return vec![check("create_vm", false, e.to_string())],
    };
    let Some(gmem_fd) = machine
        .memory()
        .iter()
        .next()
        .and_then(|r| r.file_offset().map(|f| f.file().as_raw_fd()))
    else {
        return vec![check("gmem_fd", false, "guest memory has no fd".into())];
    };
    let reports = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&reports);
    let punched = Arc::new(Mutex::new(None::<u64>));
    let punched_log = Arc::clone(&punched);
    let handler = move |ev: u64, ipa: u64| -> u64 {
        let mut out = Vec::new();
        match ev {
            event::SECRET_READY => {
                if let Ok(mut p) = punched_log.lock() {
                    *p = Some(ipa);
                }
                let pfn = driver_pfn(ipa);
                let offset = libc::off_t::try_from(ipa - RAM_BASE).unwrap_or(0);
                // SAFETY: fallocate on our own guest_memfd.
                let r = unsafe {
                    libc::fallocate(
                        gmem_fd,
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        offset,
                        4096,
                    )
                };
                out.push(fact("gmem_punch", errno_of(r)));
                match pfn.and_then(|pfn| {
                    hypercall_regs(&call_line(hc::PAGE_OWNER, &[pfn << 12])).map(|r| (pfn, r))
                }) {
                    Ok((pfn, r)) => {
                        let owner = if r[1] == abi::owner::HOST {
                            "host"
                        } else {
                            "not host"
                        };
                        out.push(fact("gmem_punched_owner", owner.into()));
                        let zero = map_devmem(pfn << 12)
                            .map(|p| seen(probe::read_u64(p), seed))
                            .unwrap_or_else(|e| e);
                        out.push(fact("gmem_punched_page", zero));
                    }
                    Err(e) => out.push(check("gmem_punched_owner", false, e)),
                }
            }
            event::TOUCHED => out.push(fact("gmem_touched", "yes".into())),
            _ => {}
        }
        if let Ok(mut r) = log.lock() {
            r.extend(out);
        }
        0
    };
    let bus = Bus::new(Vec::new(), TestDevice::new(Box::new(handler)));
    let end = machine.run(&bus, &ExitCounts::default());
    drop(machine);
    let mut out = match reports.lock() {
        Ok(r) => r.clone(),
        Err(_) => Vec::new(),
    };
    let punched = punched.lock().ok().and_then(|p| *p);
    out.push(fact(
        "gmem_punch_end",
        match end {
            Ok(end) => format!("{end:?}"),
            Err(cloister_vmm::vstate::VmmError::MemoryFault { gpa, .. })
                if Some(gpa & !0xfff) == punched =>
            {
                "memory fault at the punched page".into()
            }
            Err(e) => format!("error: {e}"),
        },
    ));
    out.push(host_alive());
    out.push(kernel_clean());
    out
}

/// `gmem-bad-input`: guest_memfd arguments mainline rejects, each with
/// mainline's error.
pub fn gmem_bad_input() -> Vec<Report> {
    use kvm_bindings::{kvm_create_guest_memfd, kvm_userspace_memory_region2, KVM_MEM_GUEST_MEMFD};
    const MMAP: u64 = cloister_vmm::memory::GUEST_MEMFD_FLAG_MMAP;
    let run = || -> Result<Vec<Report>, String> {
        let mut out = Vec::new();
        let kvm = Kvm::new_with_path(c"/dev/cloister").map_err(|e| format!("open: {e}"))?;
        let pvm = kvm
            .create_vm_with_type(vm_type::PROTECTED)
            .map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
        let other = kvm
            .create_vm_with_type(vm_type::PROTECTED)
            .map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
        let nvm = kvm
            .create_vm_with_type(0)
            .map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
        let gmem = |vm: &kvm_ioctls::VmFd, size: u64, flags: u64| {
            vm.create_guest_memfd(kvm_create_guest_memfd {
                size,
                flags,
                ..Default::default()
            })
        };
        out.push(fact("gmem_size_zero", kvm_errno(gmem(&pvm, 0, MMAP))));
        out.push(fact(
            "gmem_size_unaligned",
            kvm_errno(gmem(&pvm, 4097, MMAP)),
        ));
        out.push(fact(
            "gmem_unknown_flags",
            kvm_errno(gmem(&pvm, 0x10000, 1 << 7)),
        ));
        let fd = gmem(&pvm, 0x10000, MMAP).map_err(|e| format!("KVM_CREATE_GUEST_MEMFD: {e}"))?;
        let plain = gmem(&pvm, 0x10000, 0).map_err(|e| format!("KVM_CREATE_GUEST_MEMFD: {e}"))?;
        let theirs =
            gmem(&other, 0x10000, MMAP).map_err(|e| format!("KVM_CREATE_GUEST_MEMFD: {e}"))?;
        let map = |fd: i32, flags: i32| {
            // SAFETY: a fresh mapping request of the fd; unmapped below.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    0x10000,
                    libc::PROT_READ | libc::PROT_WRITE,
                    flags,
                    fd,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                errno_name(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
            } else {
                // SAFETY: unmapping what we just mapped.
                unsafe { libc::munmap(p, 0x10000) };
                "mapped".into()
            }
        };
        out.push(fact("gmem_mmap_without_flag", map(plain, libc::MAP_SHARED)));
        out.push(fact("gmem_mmap_private", map(fd, libc::MAP_PRIVATE)));
        let host =
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(RAM_BASE), 0x20000)])
                .map_err(|e| e.to_string())?;
        let hva = host
            .get_host_address(GuestAddress(RAM_BASE))
            .map_err(|e| e.to_string())? as u64;
        let region = |vm: &kvm_ioctls::VmFd, fd: i32, size: u64, offset: u64| {
            let r = kvm_userspace_memory_region2 {
                slot: 0,
                flags: KVM_MEM_GUEST_MEMFD,
                guest_phys_addr: RAM_BASE,
                memory_size: size,
                userspace_addr: hva,
                guest_memfd_offset: offset,
                guest_memfd: u32::try_from(fd).unwrap_or(u32::MAX),
                ..Default::default()
            };
            // SAFETY: `host` outlives the VMs; bad regions map nothing.
            kvm_errno(unsafe { vm.set_user_memory_region2(r) })
        };
        out.push(fact("gmem_region_past_end", region(&pvm, fd, 0x20000, 0)));
        out.push(fact(
            "gmem_region_other_vm",
            region(&pvm, theirs, 0x10000, 0),
        ));
        out.push(fact(
            "gmem_region_not_gmem",
            region(&pvm, kvm.as_raw_fd(), 0x10000, 0),
        ));
        out.push(fact("gmem_region_normal_vm", region(&nvm, fd, 0x10000, 0)));
        out.push(fact("gmem_region_ok", region(&pvm, fd, 0x10000, 0)));
        for f in [fd, plain, theirs] {
            // SAFETY: closing fds we created.
            unsafe { libc::close(f) };
        }
        out.push(host_alive());
        out.push(kernel_clean());
        Ok(out)
    };
    run().unwrap_or_else(|e| vec![check("gmem_bad_input", false, e)])
}

/// A `/proc` field in KiB (`MemAvailable:` in /proc/meminfo, `VmRSS:` in
/// /proc/self/status).
fn proc_kib(file: &str, field: &str) -> u64 {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The driver's page count for this process's VM (debugfs `vms`).
fn driver_pages() -> u64 {
    let pid = format!("pid={}", std::process::id());
    fs::read_to_string("/sys/kernel/debug/cloister/vms")
        .unwrap_or_default()
        .lines()
        .find(|l| l.split_whitespace().any(|w| w == pid))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("pages=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `bench-memory` (for `cargo xtask bench memory`): a 256 MiB protected
/// guest on each memory model, in one run: time from creating the VM to
/// the guest's first report, a share + unshare round as the guest times
/// it, VMM exits per share, a first touch per page, and the memory the
/// host spends once the guest touched all its RAM.
pub fn bench_memory() -> Vec<Report> {
    let mut out = Vec::new();
    let _ = driver_pfn(0); // mounts debugfs
    for (name, model) in [
        ("anon", MemoryModel::Anon),
        ("gmem", MemoryModel::GuestMemfd),
    ] {
        let before_kib = proc_kib("/proc/meminfo", "MemAvailable:");
        let started = std::time::Instant::now();
        let cfg = VmConfig {
            mem_mib: 256,
            memory: Some(model),
            ..secret_cfg("bench", fresh_seed())
        };
        let mut machine = match Machine::create(&cfg) {
            Ok(m) => m,
            Err(e) => {
                out.push(check(&format!("{name}_create"), false, e.to_string()));
                continue;
            }
        };
        let seen: Arc<Mutex<Vec<(u64, u64, u128)>>> = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let sample: Arc<Mutex<(u64, u64, u64)>> = Arc::new(Mutex::new((0, 0, 0)));
        let sample_log = Arc::clone(&sample);
        let handler = move |ev: u64, value: u64| -> u64 {
            if ev == event::BENCH_TOUCH_PAGES {
                // Touched everything: what does the host spend now?
                if let Ok(mut s) = sample_log.lock() {
                    *s = (
                        proc_kib("/proc/meminfo", "MemAvailable:"),
                        proc_kib("/proc/self/status", "VmRSS:"),
                        driver_pages(),
                    );
                }
            }
            if let Ok(mut l) = log.lock() {
                l.push((ev, value, started.elapsed().as_micros()));
            }
            0
        };
        let bus = Bus::new(Vec::new(), TestDevice::new(Box::new(handler)));
        let counts = ExitCounts::default();
        let end = machine.run(&bus, &counts);
        drop(machine);
        let events = seen.lock().map(|e| e.clone()).unwrap_or_default();
        let value = |code: u64| events.iter().find(|e| e.0 == code).map(|e| (e.1, e.2));
        let (
            Some((freq, ready_us)),
            Some((share_ticks, _)),
            Some((pages, _)),
            Some((touch_ticks, _)),
        ) = (value(6), value(7), value(9), value(8))
        else {
            out.push(check(
                &format!("{name}_events"),
                false,
                format!("guest events {events:?}, end {end:?}"),
            ));
            continue;
        };
        let us = |ticks: u64| ticks as f64 * 1e6 / freq.max(1) as f64;
        let (avail_kib, rss_kib, driver) = sample.lock().map(|s| *s).unwrap_or_default();
        let shares = counts.shares.load(std::sync::atomic::Ordering::Relaxed);
        out.push(fact(
            &format!("{name}_first_report_ms"),
            format!("{:.1}", ready_us as f64 / 1000.0),
        ));
        out.push(fact(
            &format!("{name}_share_unshare_us"),
            format!("{:.1}", us(share_ticks) / 64.0),
        ));
        out.push(fact(
            &format!("{name}_vmm_exits_per_share"),
            format!("{:.2}", shares as f64 / 64.0),
        ));
        out.push(fact(
            &format!("{name}_touch_us_per_page"),
            format!("{:.2}", us(touch_ticks) / pages.max(1) as f64),
        ));
        out.push(fact(&format!("{name}_pages_touched"), pages.to_string()));
        out.push(fact(
            &format!("{name}_host_mem_mib"),
            format!(
                "{:.1}",
                before_kib.saturating_sub(avail_kib) as f64 / 1024.0
            ),
        ));
        out.push(fact(
            &format!("{name}_vmm_rss_mib"),
            format!("{:.1}", rss_kib as f64 / 1024.0),
        ));
        out.push(fact(&format!("{name}_driver_pages"), driver.to_string()));
        out.push(check(
            &format!("{name}_end"),
            matches!(end, Ok(GuestEnd::PowerOff)),
            format!("{end:?}"),
        ));
    }
    out.push(host_alive());
    out.push(kernel_clean());
    out
}

/// The hyp's ownership digest: (digest, pages not the host's, live VMs).
pub(crate) fn digest() -> Result<(u64, u64, u64), String> {
    let r = hypercall_regs(&call_line(hc::OWNERSHIP_DIGEST, &[]))?;
    if r[0] != ret::SUCCESS {
        return Err(format!("OWNERSHIP_DIGEST failed: {:#x} {:#x}", r[0], r[1]));
    }
    Ok((r[1], r[2], r[3]))
}

/// System RAM ranges from /proc/iomem (top-level entries).
fn system_ram() -> Result<Vec<(u64, u64)>, String> {
    let iomem = fs::read_to_string("/proc/iomem").map_err(|e| format!("/proc/iomem: {e}"))?;
    Ok(cloister_agent::parse::system_ram_ranges(&iomem))
}

/// Reads all of System RAM through /dev/mem and counts places where the
/// secret of any of `seeds` starts.
pub(crate) fn scan_ram(seeds: &[u64]) -> Result<usize, String> {
    use std::os::unix::fs::FileExt;
    let mem = fs::File::open("/dev/mem").map_err(|e| format!("/dev/mem: {e}"))?;
    let mut hits = 0;
    let mut buf = vec![0u8; 1 << 20];
    let mut words = vec![0u64; (1 << 20) / 8 + secret::MATCH_WORDS];
    for (start, end) in system_ram()? {
        let mut pa = start;
        while pa <= end {
            let len = usize::try_from((end + 1 - pa).min(1 << 20)).unwrap_or(0);
            let chunk = &mut buf[..len];
            mem.read_exact_at(chunk, pa)
                .map_err(|e| format!("reading /dev/mem at {pa:#x}: {e}"))?;
            let n = len / 8;
            for (w, c) in words.iter_mut().zip(chunk.chunks_exact(8)) {
                *w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            }
            for &seed in seeds {
                hits += secret::find(&words[..n], seed).len();
            }
            pa += len as u64;
        }
    }
    // Leave no copy of the last chunk's words behind either.
    words.fill(0);
    Ok(hits)
}

/// After guests ended: how the pages away from the host and the live VMs
/// changed since `base` (from [`digest`]), and, if every page is back, how
/// many copies of the `seeds`' secrets a scan of host RAM finds.
pub(crate) fn teardown_facts(
    base: (u64, u64),
    seeds: &[u64],
    out: &mut Vec<Report>,
) -> Result<(), String> {
    let (base_not_host, base_vms) = base;
    let (_, not_host, vms) = digest()?;
    out.push(fact(
        "teardown_pages_not_host_delta",
        (i128::from(not_host) - i128::from(base_not_host)).to_string(),
    ));
    out.push(fact(
        "teardown_live_vms_delta",
        (i128::from(vms) - i128::from(base_vms)).to_string(),
    ));
    if not_host != base_not_host {
        // Reading a page the hyp still gives a guest would fault the
        // kernel's /dev/mem read; skip the scan.
        out.push(check(
            "teardown_scan",
            false,
            "pages still away from the host; RAM scan skipped".into(),
        ));
        return Ok(());
    }
    out.push(fact("teardown_secret_copies", scan_ram(seeds)?.to_string()));
    Ok(())
}

/// `pvm-teardown`: a protected guest's secret after its VMM exits, and
/// after its VMM is SIGKILLed while the guest runs (three times): every
/// page back with the host and the secret nowhere in host RAM.
pub fn pvm_teardown(memory: &str) -> Vec<Report> {
    let run = || -> Result<Vec<Report>, String> {
        let mut out = Vec::new();
        let (_, base_not_host, base_vms) = digest()?;
        let mut seeds = Vec::new();
        // 1. The VMM runs the guest to its end and exits.
        let seed = fresh_seed();
        seeds.push(seed);
        let status = Command::new(VMM)
            .args(["--kernel", CONFORMANCE, "--protected", "--mem", "64"])
            .args(["--memory", memory])
            .args(["--cmdline", &format!("mode=secret seed={seed:#x}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("running {VMM}: {e}"))?;
        out.push(fact(
            "teardown_vmm_exit",
            status
                .code()
                .map_or_else(|| "signal".into(), |c| c.to_string()),
        ));
        // 2. SIGKILL while the guest spins with its secret.
        let mut kills = 0;
        for _ in 0..3 {
            let seed = fresh_seed() ^ (kills << 40);
            seeds.push(seed);
            let mut child = Command::new(VMM)
                .args(["--kernel", CONFORMANCE, "--protected", "--mem", "64"])
                .args(["--memory", memory])
                .args(["--cmdline", &format!("mode=hold seed={seed:#x}")])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("running {VMM}: {e}"))?;
            let stderr = child.stderr.take().ok_or("no stderr")?;
            let mut holding = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("guest event holding") {
                    holding = true;
                    break;
                }
            }
            child.kill().map_err(|e| format!("kill: {e}"))?;
            let status = child.wait().map_err(|e| format!("wait: {e}"))?;
            if holding && std::os::unix::process::ExitStatusExt::signal(&status) == Some(9) {
                kills += 1;
            }
        }
        out.push(fact("teardown_kills", kills.to_string()));
        teardown_facts((base_not_host, base_vms), &seeds, &mut out)?;
        out.push(host_alive());
        out.push(kernel_clean());
        Ok(out)
    };
    run().unwrap_or_else(|e| vec![check("pvm_teardown", false, e)])
}

/// A host page this process owns, touched and locked, and its frame.
fn host_page() -> Result<u64, String> {
    // SAFETY: a fresh private anonymous page.
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
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    pfn_of(ptr as u64)
}

/// `hyp-refusals`: requests a compromised host could make (the class of
/// pKVM's CVE-2023-21264: giving a guest or the hyp memory that is not the
/// host's to give). Each must fail with its error and leave the ownership
/// database exactly as it was.
pub fn hyp_refusals() -> Vec<Report> {
    let run = || -> Result<Vec<Report>, String> {
        let mut out = Vec::new();
        let hyp_pa = crate::hyp_carveout()?;
        let page = host_page()?;
        // Far past any RAM or device of the machine (64 GiB): a frame no
        // one owns.
        let unmapped_pfn = (64u64 << 30) >> 12;
        // Two protected VMs and a normal one; A owns `page`.
        let a = hypercall_ok(&call_line(hc::VM_CREATE, &[vm_type::PROTECTED]))?;
        let b = hypercall_ok(&call_line(hc::VM_CREATE, &[vm_type::PROTECTED]))?;
        let n = hypercall_ok(&call_line(hc::VM_CREATE, &[vm_type::NORMAL]))?;
        hypercall_ok(&call_line(hc::VM_DONATE, &[a, page, RAM_BASE, 1]))?;
        let before = digest()?;
        let uart_pfn = 0x0900_0000u64 >> 12;
        let ipa = RAM_BASE + 0x1000;
        let cases: [(&str, String); 10] = [
            (
                "refuse_donate_mmio",
                call_line(hc::VM_DONATE, &[b, uart_pfn, ipa, 1]),
            ),
            (
                "refuse_lend_mmio",
                call_line(hc::VM_MAP_SHARED, &[n, uart_pfn, ipa, 1]),
            ),
            (
                "refuse_share_mmio_hyp",
                call_line(hc::HOST_SHARE_HYP, &[uart_pfn]),
            ),
            (
                "refuse_donate_unmapped",
                call_line(hc::VM_DONATE, &[b, unmapped_pfn, ipa, 1]),
            ),
            (
                "refuse_donate_hyp_page",
                call_line(hc::VM_DONATE, &[b, hyp_pa >> 12, ipa, 1]),
            ),
            (
                "refuse_lend_hyp_page",
                call_line(hc::VM_MAP_SHARED, &[n, hyp_pa >> 12, ipa, 1]),
            ),
            (
                "refuse_donate_other_guest_page",
                call_line(hc::VM_DONATE, &[b, page, ipa, 1]),
            ),
            (
                "refuse_lend_other_guest_page",
                call_line(hc::VM_MAP_SHARED, &[n, page, ipa, 1]),
            ),
            (
                "refuse_hyp_take_guest_page",
                call_line(hc::HOST_DONATE_HYP, &[page, 1]),
            ),
            (
                "refuse_share_guest_page_hyp",
                call_line(hc::HOST_SHARE_HYP, &[page]),
            ),
        ];
        for (key, line) in cases {
            let r = hypercall_regs(&line)?;
            let after = digest()?;
            let unchanged = if after == before {
                "unchanged"
            } else {
                "CHANGED"
            };
            out.push(fact(key, format!("{:#x} {:#x} {unchanged}", r[0], r[1])));
        }
        for h in [a, b, n] {
            hypercall_ok(&call_line(hc::VM_TEARDOWN, &[h]))?;
            hypercall_ok(&call_line(hc::VM_RECLAIM, &[h]))?;
        }
        let owner = hypercall_regs(&call_line(hc::PAGE_OWNER, &[page << 12]))?;
        out.push(fact(
            "refusals_page_back",
            if owner[1] == abi::owner::HOST {
                "host"
            } else {
                "not host"
            }
            .into(),
        ));
        out.push(host_alive());
        Ok(out)
    };
    run().unwrap_or_else(|e| vec![check("hyp_refusals", false, e)])
}

/// The guest for the ioctl scenarios: MMIO_GUARD the test device (a normal
/// VM gets NOT_SUPPORTED and goes on), store to it (an MMIO exit), then
/// PSCI SYSTEM_OFF.
const PROMISE_GUEST: [u32; 10] = [
    0xd280_00e0, // movz x0, #0x7
    0xf2b8_c000, // movk x0, #0xc600, lsl #16   (MMIO_GUARD)
    0xd2a1_6001, // movz x1, #0x0b00, lsl #16   (x1 = TEST_DEV_BASE)
    0xd400_0002, // hvc #0                      (x0..x3 = the answer)
    0xd2a1_6001, // movz x1, #0x0b00, lsl #16   (again: the hvc cleared x1)
    0xf900_0020, // str x0, [x1]
    0xd280_0100, // movz x0, #0x8
    0xf2b0_8000, // movk x0, #0x8400, lsl #16   (SYSTEM_OFF)
    0xd400_0002, // hvc #0
    0x1400_0000, // b .
];
const _: () = assert!(TEST_DEV_BASE == 0x0b00_0000);

const KVM_REG_ARM64_CORE_U64: u64 = 0x6030_0000_0010_0000;
/// `regs.pc` (31 general registers and sp before it, in 32-bit units).
const REG_PC: u64 = KVM_REG_ARM64_CORE_U64 | (32 * 2);

struct PromiseVm {
    _kvm: Kvm,
    vm: kvm_ioctls::VmFd,
    vcpu: kvm_ioctls::VcpuFd,
    mem: vm_memory::GuestMemoryMmap,
    region: kvm_userspace_memory_region,
}

fn promise_vm(protected: bool) -> Result<PromiseVm, String> {
    let kvm = Kvm::new_with_path(c"/dev/cloister").map_err(|e| format!("open: {e}"))?;
    let ty = if protected { vm_type::PROTECTED } else { 0 };
    let vm = kvm
        .create_vm_with_type(ty)
        .map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    let mem = vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), 0x10000)])
        .map_err(|e| e.to_string())?;
    let host = mem
        .get_host_address(GuestAddress(RAM_BASE))
        .map_err(|e| e.to_string())?;
    let code: Vec<u8> = PROMISE_GUEST.iter().flat_map(|w| w.to_le_bytes()).collect();
    mem.write_slice(&code, GuestAddress(RAM_BASE))
        .map_err(|e| e.to_string())?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: RAM_BASE,
        memory_size: 0x10000,
        userspace_addr: host as u64,
    };
    // SAFETY: `mem` outlives the VM (both live in PromiseVm).
    unsafe { vm.set_user_memory_region(region) }
        .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
    let vcpu = vm
        .create_vcpu(0)
        .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
    let mut init = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut init)
        .map_err(|e| format!("KVM_ARM_PREFERRED_TARGET: {e}"))?;
    init.features[0] |= 1 << kvm_bindings::KVM_ARM_VCPU_PSCI_0_2;
    vcpu.vcpu_init(&init)
        .map_err(|e| format!("KVM_ARM_VCPU_INIT: {e}"))?;
    vcpu.set_one_reg(REG_PC, &RAM_BASE.to_le_bytes())
        .map_err(|e| format!("KVM_SET_ONE_REG(pc): {e}"))?;
    Ok(PromiseVm {
        _kvm: kvm,
        vm,
        vcpu,
        mem,
        region,
    })
}

/// Forks a child that exits at once; how it ended.
fn fork_and_reap() -> String {
    // SAFETY: the child only calls _exit.
    match unsafe { libc::fork() } {
        -1 => format!("fork failed: {}", std::io::Error::last_os_error()),
        0 => {
            // SAFETY: leaving the child without running any handler.
            unsafe { libc::_exit(0) }
        }
        child => {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(child, &mut status, 0) };
            if libc::WIFEXITED(status) {
                format!("child exited {}", libc::WEXITSTATUS(status))
            } else {
                format!("child killed by signal {}", libc::WTERMSIG(status))
            }
        }
    }
}

/// Runs until the first exit that reaches userspace; names it.
fn run_to_exit(vcpu: &mut kvm_ioctls::VcpuFd) -> String {
    loop {
        match vcpu.run() {
            Ok(VcpuExit::MmioWrite(addr, _)) => return format!("mmio-write {addr:#x}"),
            Ok(VcpuExit::MmioRead(addr, data)) => {
                data.fill(0);
                return format!("mmio-read {addr:#x}");
            }
            Ok(VcpuExit::SystemEvent(t, _)) => return format!("system-event {t}"),
            Ok(VcpuExit::Hypercall(h)) => return format!("hypercall {:#x}", h.nr),
            Ok(other) => return format!("{other:?}"),
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return format!("error {}", errno_name(e.errno())),
        }
    }
}

/// `pkvm-promises`: Documentation/virt/kvm/arm/pkvm.rst's rules for a
/// protected VM once a vCPU ran (register ioctls and memslot changes get
/// -EPERM), next to a normal VM where the same ioctls work.
pub fn pkvm_promises() -> Vec<Report> {
    let mut out = Vec::new();
    for protected in [true, false] {
        let kind = if protected { "pvm" } else { "nvm" };
        let mut v = match promise_vm(protected) {
            Ok(v) => v,
            Err(e) => {
                out.push(check(&format!("{kind}_setup"), false, e));
                continue;
            }
        };
        out.push(fact(
            &format!("{kind}_first_exit"),
            run_to_exit(&mut v.vcpu),
        ));
        // A VMM that forks with guest pages pinned (this mapping is not
        // MADV_DONTFORK): the kernel must not copy a page the guest owns.
        out.push(fact(&format!("{kind}_fork_after_run"), fork_and_reap()));
        let mut pc = [0u8; 8];
        out.push(fact(
            &format!("{kind}_get_reg_after_run"),
            kvm_errno(v.vcpu.get_one_reg(REG_PC, &mut pc)),
        ));
        out.push(fact(
            &format!("{kind}_set_reg_after_run"),
            kvm_errno(v.vcpu.set_one_reg(REG_PC, &pc)),
        ));
        out.push(fact(&format!("{kind}_end"), run_to_exit(&mut v.vcpu)));
        let moved = kvm_userspace_memory_region {
            guest_phys_addr: RAM_BASE + 0x100_0000,
            ..v.region
        };
        // SAFETY: the mapping stays alive in `v`.
        let r = unsafe { v.vm.set_user_memory_region(moved) };
        out.push(fact(&format!("{kind}_move_slot_after_run"), kvm_errno(r)));
        let region = if r.is_ok() { moved } else { v.region };
        let deleted = kvm_userspace_memory_region {
            memory_size: 0,
            ..region
        };
        // SAFETY: as above; deleting only unmaps.
        let r = unsafe { v.vm.set_user_memory_region(deleted) };
        out.push(fact(&format!("{kind}_delete_slot_after_run"), kvm_errno(r)));
        let _ = &v.mem;
    }
    out.push(host_alive());
    out.push(kernel_clean());
    out
}

/// `vmm-garbage`: ioctls a broken or hostile VMM might send; each gets
/// mainline's error and the host stays up with a clean log.
pub fn vmm_garbage() -> Vec<Report> {
    let run = || -> Result<Vec<Report>, String> {
        let mut out = Vec::new();
        let kvm = Kvm::new_with_path(c"/dev/cloister").map_err(|e| format!("open: {e}"))?;
        // SAFETY: an ioctl number no driver defines, no argument.
        let r = unsafe { libc::ioctl(kvm.as_raw_fd(), (0xae << 8 | 0xff) as libc::Ioctl, 0) };
        out.push(fact("garbage_unknown_ioctl", errno_of(r)));
        out.push(fact(
            "garbage_vm_type",
            kvm_errno(kvm.create_vm_with_type(5)),
        ));
        let vm = kvm
            .create_vm_with_type(0)
            .map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
        let mem: vm_memory::GuestMemoryMmap =
            vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), 0x20000)])
                .map_err(|e| e.to_string())?;
        let host = mem
            .get_host_address(GuestAddress(RAM_BASE))
            .map_err(|e| e.to_string())? as u64;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: RAM_BASE,
            memory_size: 0x10000,
            userspace_addr: host,
        };
        let set = |r: kvm_userspace_memory_region| {
            // SAFETY: `mem` outlives the VM within this closure's caller;
            // bad regions are refused before anything is mapped.
            kvm_errno(unsafe { vm.set_user_memory_region(r) })
        };
        out.push(fact("garbage_region_ok", set(region)));
        out.push(fact(
            "garbage_region_overlap",
            set(kvm_userspace_memory_region {
                slot: 1,
                guest_phys_addr: RAM_BASE + 0x8000,
                userspace_addr: host + 0x10000,
                ..region
            }),
        ));
        out.push(fact(
            "garbage_region_unaligned",
            set(kvm_userspace_memory_region {
                slot: 2,
                guest_phys_addr: RAM_BASE + 0x20_0001,
                ..region
            }),
        ));
        out.push(fact(
            "garbage_region_beyond_ipa",
            set(kvm_userspace_memory_region {
                slot: 3,
                guest_phys_addr: 1 << 40,
                ..region
            }),
        ));
        out.push(fact(
            "garbage_region_readonly",
            set(kvm_userspace_memory_region {
                slot: 4,
                flags: KVM_MEM_READONLY,
                guest_phys_addr: RAM_BASE + 0x40_0000,
                ..region
            }),
        ));
        out.push(fact(
            "garbage_region_bad_hva",
            set(kvm_userspace_memory_region {
                slot: 5,
                guest_phys_addr: RAM_BASE + 0x50_0000,
                userspace_addr: 0xffff_8000_0000_0000,
                ..region
            }),
        ));
        out.push(fact("garbage_vcpu_id", kvm_errno(vm.create_vcpu(99))));
        let mut vcpu = vm
            .create_vcpu(0)
            .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
        out.push(fact("garbage_vcpu_twice", kvm_errno(vm.create_vcpu(0))));
        // KVM_IRQ_LINE, KVM's arm64 encoding: type << 24 | vCPU << 16 |
        // INTID. Bad types, INTIDs out of the type's range and vCPUs that
        // do not exist are refused; a good SPI or PPI stays pending on
        // vCPU 0 (its guest never enables its GIC), level 0 does nothing.
        let irq = |ty: u32, vcpu: u32, intid: u32| ty << 24 | vcpu << 16 | intid;
        for (key, line, level) in [
            ("garbage_irq_type_cpu", irq(0, 0, 40), true),
            ("garbage_irq_type_bad", irq(3, 0, 40), true),
            ("garbage_irq_spi_low", irq(1, 0, 31), true),
            ("garbage_irq_spi_high", irq(1, 0, 128), true),
            ("garbage_irq_ppi_sgi", irq(2, 0, 15), true),
            ("garbage_irq_ppi_high", irq(2, 0, 32), true),
            ("garbage_irq_vcpu_absent", irq(1, 1, 40), true),
            ("garbage_irq_vcpu_high", irq(1, 8, 40), true),
            ("garbage_irq_spi_ok", irq(1, 0, 127), true),
            ("garbage_irq_ppi_ok", irq(2, 0, 16), true),
            ("garbage_irq_level0", irq(1, 0, 32), false),
        ] {
            out.push(fact(key, kvm_errno(vm.set_irq_line(line, level))));
        }
        out.push(fact("garbage_run_before_init", kvm_errno(vcpu.run())));
        let mut init = kvm_vcpu_init::default();
        vm.get_preferred_target(&mut init)
            .map_err(|e| format!("KVM_ARM_PREFERRED_TARGET: {e}"))?;
        let mut bad = init;
        bad.features[0] |= 1 << 5;
        out.push(fact(
            "garbage_init_features",
            kvm_errno(vcpu.vcpu_init(&bad)),
        ));
        vcpu.vcpu_init(&init)
            .map_err(|e| format!("KVM_ARM_VCPU_INIT: {e}"))?;
        let mut buf = [0u8; 8];
        out.push(fact(
            "garbage_unknown_reg",
            kvm_errno(vcpu.get_one_reg(0x6030_0000_0099_0000, &mut buf)),
        ));
        // mmap of the vCPU fd past the kvm_run page.
        // SAFETY: a fresh mapping request the driver should refuse.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                4096,
            )
        };
        out.push(fact(
            "garbage_mmap_offset",
            if p == libc::MAP_FAILED {
                errno_name(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
            } else {
                "mapped".into()
            },
        ));
        // Two KVM_RUNs on one vCPU at once: the guest spins at `b .`.
        mem.write_slice(&0x1400_0000u32.to_le_bytes(), GuestAddress(RAM_BASE))
            .map_err(|e| e.to_string())?;
        vcpu.set_one_reg(REG_PC, &RAM_BASE.to_le_bytes())
            .map_err(|e| format!("KVM_SET_ONE_REG(pc): {e}"))?;
        let fd = vcpu.as_raw_fd();
        let first_id: Mutex<Option<usize>> = Mutex::new(None);
        let second = std::thread::scope(|s| {
            let id = &first_id;
            let first = s.spawn(move || {
                if let Ok(mut id) = id.lock() {
                    // SAFETY: pthread_self has no preconditions.
                    *id = Some(unsafe { libc::pthread_self() } as usize);
                }
                // SAFETY: KVM_RUN on our vCPU fd; it returns on the kick.
                unsafe { libc::ioctl(fd, kvm_run_ioctl(), 0) }
            });
            std::thread::sleep(std::time::Duration::from_millis(300));
            // SAFETY: as above, from a second thread while the first runs.
            let r = unsafe { libc::ioctl(fd, kvm_run_ioctl(), 0) };
            let second = errno_of(r);
            kick_until_done(&first, id);
            let _ = first.join();
            second
        });
        out.push(fact("garbage_run_twice", second));
        // The driver's exit counters: one line for vCPU 0, its keys in
        // order, and two KVM_RUN returns (ENOEXEC before init, EINTR).
        let exits = vm_debugfs_of(std::process::id(), "exits")?;
        let line = exits.lines().next().unwrap_or_default();
        let keys: Vec<&str> = line
            .split_whitespace()
            .filter_map(|w| w.split_once('=').map(|(k, _)| k))
            .collect();
        out.push(fact("garbage_exits_keys", keys.join(" ")));
        out.push(fact(
            "garbage_exits_kvm_run",
            line.split_whitespace()
                .find_map(|w| w.strip_prefix("kvm_run="))
                .unwrap_or("none")
                .to_owned(),
        ));
        drop(vcpu);
        drop(vm);
        out.push(host_alive());
        out.push(kernel_clean());
        Ok(out)
    };
    run().unwrap_or_else(|e| vec![check("vmm_garbage", false, e)])
}

/// `KVM_RUN` = `_IO(KVMIO, 0x80)`.
fn kvm_run_ioctl() -> libc::Ioctl {
    (0xae << 8 | 0x80) as libc::Ioctl
}

fn errno_of(r: libc::c_int) -> String {
    if r < 0 {
        errno_name(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        "ok".into()
    }
}

extern "C" fn ignore(_: libc::c_int) {}

/// Signals the thread until it leaves KVM_RUN.
fn kick_until_done<T>(t: &std::thread::ScopedJoinHandle<'_, T>, id: &Mutex<Option<usize>>) {
    // SAFETY: a no-op handler without SA_RESTART, so KVM_RUN sees EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = ignore as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
    for _ in 0..400 {
        if t.is_finished() {
            return;
        }
        if let Some(id) = id.lock().ok().and_then(|id| *id) {
            // SAFETY: the thread is alive (not finished, scoped).
            unsafe { libc::pthread_kill(id as libc::pthread_t, libc::SIGUSR1) };
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
