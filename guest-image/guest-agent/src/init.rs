//! What an init process (this agent in the guest, the host's test agent
//! as PID 1) does first: mount the pseudo file systems.

use std::io;

/// Mounts `fstype` on `target` (no source device, no options).
///
/// # Errors
/// The `mount(2)` error.
pub fn mount(fstype: &str, target: &str) -> io::Result<()> {
    let c_type = std::ffi::CString::new(fstype).map_err(io::Error::other)?;
    let c_target = std::ffi::CString::new(target).map_err(io::Error::other)?;
    // SAFETY: valid NUL-terminated strings that outlive the call; no data.
    let rc = unsafe {
        libc::mount(
            c_type.as_ptr(),
            c_target.as_ptr(),
            c_type.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Mounts proc, sysfs, devtmpfs and a tmpfs on /tmp, creating the mount
/// points; failures are printed with `who` and skipped (devtmpfs may be
/// mounted already: `DEVTMPFS_MOUNT` on a disk root).
pub fn mount_pseudo_filesystems(who: &str) {
    for (fstype, target) in [
        ("proc", "/proc"),
        ("sysfs", "/sys"),
        ("devtmpfs", "/dev"),
        ("tmpfs", "/tmp"),
    ] {
        let _ = std::fs::create_dir_all(target);
        match mount(fstype, target) {
            Err(e) if e.raw_os_error() != Some(libc::EBUSY) => {
                eprintln!("{who}: mount {fstype} on {target}: {e}");
            }
            _ => {}
        }
    }
}
