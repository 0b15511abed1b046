//! O_DIRECT probes of guest memory: a direct write from the VMM's mapping to
//! a file and a direct read from a file into it. Unlike write(2) to a pipe
//! (the kernel's uaccess), a direct request pins the user page with GUP-fast
//! and hands it to a block driver, which copies it through the linear map:
//! the path a real disk's DMA takes. The file lives on an ext2 file system
//! on the host kernel's RAM disk (brd), formatted here on first use.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::process::Command;

use crate::probe::{self, Probe};

const RAM_DISK: &str = "/dev/ram0";
const SCRATCH: &str = "/run/cloister-scratch";
const PAGE: usize = 4096;

/// A page-aligned buffer, as O_DIRECT requires.
#[repr(C, align(4096))]
struct AlignedPage([u8; PAGE]);

/// Mounts the scratch ext2 file system on the RAM disk, formatting it the
/// first time. Returns the mount point.
fn scratch_dir() -> Result<&'static str, String> {
    if Path::new(SCRATCH).join("lost+found").is_dir() {
        return Ok(SCRATCH);
    }
    fs::create_dir_all(SCRATCH).map_err(|e| format!("creating {SCRATCH}: {e}"))?;
    let out = Command::new("/bin/busybox")
        .args(["mke2fs", "-b", "4096", RAM_DISK])
        .output()
        .map_err(|e| format!("running busybox mke2fs: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mke2fs {RAM_DISK} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let (dev, dir, ty) = (c"/dev/ram0", c"/run/cloister-scratch", c"ext2");
    // SAFETY: NUL-terminated literals; no data argument.
    let rc = unsafe { libc::mount(dev.as_ptr(), dir.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(format!(
            "mount {RAM_DISK} on {SCRATCH} as ext2: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(SCRATCH)
}

fn open_direct(name: &str) -> Result<fs::File, String> {
    let path = Path::new(scratch_dir()?).join(name);
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .map_err(|e| format!("opening {} with O_DIRECT: {e}", path.display()))
}

fn errno_name(e: &std::io::Error) -> String {
    crate::vms::errno_name(e.raw_os_error().unwrap_or(0))
}

/// An O_DIRECT write of the page holding `va` to a scratch file. Returns
/// the errno name, or on success what the file then holds at `va`'s offset
/// in the page (`secret`, `zero`, `other`, judged by `judge`).
pub fn write_from(va: u64, judge: impl Fn(Probe) -> String) -> String {
    let page = va & !(PAGE as u64 - 1);
    let file = match open_direct("odirect-write") {
        Ok(f) => f,
        Err(e) => return e,
    };
    // SAFETY: the kernel checks the source range; a fault is an errno and
    // the page is never dereferenced here.
    let n = unsafe { libc::pwrite(file.as_raw_fd(), page as *const libc::c_void, PAGE, 0) };
    if n < 0 {
        return errno_name(&std::io::Error::last_os_error());
    }
    // Read back through the page cache (the direct write invalidated it).
    drop(file);
    let path = Path::new(SCRATCH).join("odirect-write");
    let mut back = [0u8; PAGE];
    match fs::File::open(&path).and_then(|f| f.read_exact_at(&mut back, 0)) {
        Ok(()) => {
            let at = usize::try_from(va - page).unwrap_or(0);
            let mut word = [0u8; 8];
            word.copy_from_slice(&back[at..at + 8]);
            format!(
                "wrote {n}, file holds {}",
                judge(Probe::Value(u64::from_le_bytes(word)))
            )
        }
        Err(e) => format!("wrote {n}, reading {} back: {e}", path.display()),
    }
}

/// An O_DIRECT read from a scratch file into the page holding `va`: the
/// block driver writes the page. Returns the errno name, or `ok` and what
/// a read of `va` then sees (judged by `judge`).
pub fn read_into(va: u64, judge: impl Fn(Probe) -> String) -> String {
    let page = va & !(PAGE as u64 - 1);
    let file = match open_direct("odirect-read") {
        Ok(f) => f,
        Err(e) => return e,
    };
    // Fill the file first: an O_DIRECT write needs an aligned source.
    let zeros = Box::new(AlignedPage([0; PAGE]));
    if let Err(e) = file.write_all_at(&zeros.0, 0) {
        return format!("filling the file: {e}");
    }
    // SAFETY: the kernel checks the destination range; a fault is an errno.
    let n = unsafe { libc::pread(file.as_raw_fd(), page as *mut libc::c_void, PAGE, 0) };
    if n < 0 {
        return errno_name(&std::io::Error::last_os_error());
    }
    format!(
        "read {n}, page holds {}",
        judge(probe::read_u64(va as *const u64))
    )
}
