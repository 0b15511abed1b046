//! The host terminal while the guest owns it: with `--console -` on a
//! tty, line editing and echo are the guest's (its shell echoes), so the
//! VMM turns them off on its stdin and puts them back when it is done.
//! `ISIG` stays on: Ctrl-C still stops the VMM.

/// Restores the terminal's settings when dropped.
#[derive(Debug)]
pub struct RawGuard {
    fd: libc::c_int,
    saved: libc::termios,
}

impl RawGuard {
    /// Turns off `ICANON` and `ECHO` on `fd` if it is a terminal; `None`
    /// if it is not (or the settings cannot be read).
    pub fn new(fd: libc::c_int) -> Option<Self> {
        // SAFETY: isatty only inspects the fd.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        // SAFETY: a zeroed termios is a valid out-parameter for tcgetattr.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd is a terminal; `saved` is a valid termios to fill.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO);
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: `raw` is a complete termios derived from the current one.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(Self { fd, saved })
    }
}

impl Drop for RawGuard {
    fn drop(&mut self) {
        // SAFETY: restores the settings read from the same fd.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_a_terminal_is_left_alone() {
        let (r, _w) = std::io::pipe().unwrap();
        use std::os::fd::AsRawFd;
        assert!(RawGuard::new(r.as_raw_fd()).is_none());
    }
}
