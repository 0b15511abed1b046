//! Where a VM's RAM comes from: the two memory models, portable so the
//! choice is unit-tested on the build machine.

/// Where a VM's RAM comes from (the two models users compare).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryModel {
    /// pKVM's: the VMM's anonymous mapping; the host driver pins each page
    /// and donates it as the guest first touches it.
    Anon,
    /// A guest_memfd (`KVM_CREATE_GUEST_MEMFD` with `GUEST_MEMFD_FLAG_MMAP`):
    /// the VMM maps the fd to load the guest; pages the guest owns are
    /// unmapped from the host and fault with SIGBUS; shared pages are the
    /// same pages, mapped again.
    GuestMemfd,
}

impl MemoryModel {
    /// The `--memory` spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Anon => "anon",
            Self::GuestMemfd => "guest-memfd",
        }
    }

    /// The default: a protected VM gets `configured` (the image's
    /// `vmm.conf`, else guest_memfd) if the device offers guest_memfd
    /// (`KVM_CAP_GUEST_MEMFD`), else anonymous memory; a normal VM always
    /// gets anonymous memory.
    pub fn default_for(
        protected: bool,
        guest_memfd_supported: bool,
        configured: Option<MemoryModel>,
    ) -> Self {
        match configured.unwrap_or(Self::GuestMemfd) {
            Self::GuestMemfd if protected && guest_memfd_supported => Self::GuestMemfd,
            _ => Self::Anon,
        }
    }
}

/// `GUEST_MEMFD_FLAG_MMAP` (later mainline; 6.12's header lacks it): the
/// guest_memfd may be mmap()ed for in-place sharing.
pub const GUEST_MEMFD_FLAG_MMAP: u64 = 1 << 0;

/// Where the host image keeps the VMM's defaults (the stack's `[vm]`
/// table, written by `cargo xtask build-image`).
pub const CONF_PATH: &str = "/lib/cloister/vmm.conf";

/// The `memory=` default in a `vmm.conf` text (`#` comments, `key=value`
/// lines): `Ok(None)` without one.
///
/// # Errors
/// A `memory=` value other than `anon` or `guest-memfd`, named.
pub fn from_conf(text: &str) -> Result<Option<MemoryModel>, String> {
    for line in text.lines().map(str::trim) {
        if let Some(value) = line.strip_prefix("memory=") {
            return match value.trim() {
                "anon" => Ok(Some(MemoryModel::Anon)),
                "guest-memfd" => Ok(Some(MemoryModel::GuestMemfd)),
                other => Err(format!(
                    "{CONF_PATH}: memory={other:?}: expected anon or guest-memfd"
                )),
            };
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_memfd_is_the_default_for_protected_vms_where_offered() {
        let d = MemoryModel::default_for;
        assert_eq!(d(true, true, None), MemoryModel::GuestMemfd);
        assert_eq!(d(true, false, None), MemoryModel::Anon);
        assert_eq!(d(false, true, None), MemoryModel::Anon);
        // The image's vmm.conf picks the model; guest_memfd still needs
        // the device, and normal VMs stay on anonymous memory.
        let anon = Some(MemoryModel::Anon);
        let gmem = Some(MemoryModel::GuestMemfd);
        assert_eq!(d(true, true, anon), MemoryModel::Anon);
        assert_eq!(d(true, true, gmem), MemoryModel::GuestMemfd);
        assert_eq!(d(true, false, gmem), MemoryModel::Anon);
        assert_eq!(d(false, true, gmem), MemoryModel::Anon);
        assert_eq!(GUEST_MEMFD_FLAG_MMAP, 1);
        assert_eq!(MemoryModel::GuestMemfd.name(), "guest-memfd");
    }

    #[test]
    fn conf_names_the_model_or_the_bad_value() {
        let conf = "# from the stack\nmemory=anon\n";
        assert_eq!(from_conf(conf), Ok(Some(MemoryModel::Anon)));
        assert_eq!(
            from_conf("memory=guest-memfd"),
            Ok(Some(MemoryModel::GuestMemfd))
        );
        assert_eq!(from_conf("# nothing\n"), Ok(None));
        let err = from_conf("memory=ram").unwrap_err();
        assert!(err.contains("ram") && err.contains(CONF_PATH), "{err}");
    }
}
