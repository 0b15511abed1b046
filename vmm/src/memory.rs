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

    /// The default: guest_memfd for a protected VM when the device offers
    /// it (`KVM_CAP_GUEST_MEMFD`), else anonymous memory.
    pub fn default_for(protected: bool, guest_memfd_supported: bool) -> Self {
        if protected && guest_memfd_supported {
            Self::GuestMemfd
        } else {
            Self::Anon
        }
    }
}

/// `GUEST_MEMFD_FLAG_MMAP` (later mainline; 6.12's header lacks it): the
/// guest_memfd may be mmap()ed for in-place sharing.
pub const GUEST_MEMFD_FLAG_MMAP: u64 = 1 << 0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_memfd_is_the_default_for_protected_vms_where_offered() {
        assert_eq!(
            MemoryModel::default_for(true, true),
            MemoryModel::GuestMemfd
        );
        assert_eq!(MemoryModel::default_for(true, false), MemoryModel::Anon);
        assert_eq!(MemoryModel::default_for(false, true), MemoryModel::Anon);
        assert_eq!(GUEST_MEMFD_FLAG_MMAP, 1);
        assert_eq!(MemoryModel::GuestMemfd.name(), "guest-memfd");
    }
}
