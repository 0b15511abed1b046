//! Guest RAM as the devices may see it: only the pages the guest shared.
//!
//! A protected guest's pages are its own until it shares them
//! (`MEM_SHARE`); the VMM touching a private page dies of `SIGSEGV` (anonymous
//! memory: the hypervisor refuses) or `SIGBUS` (guest_memfd: no mapping).
//! So devices never get the raw mapping: they get a [`GuestRam`], whose
//! [`GuestMemory`] implementation refuses any range that is not entirely
//! shared, before anything is read or written. The vCPU threads keep the
//! [`SharedPages`] set up to date from the share and unshare exits.
//!
//! A normal VM's memory is all shared ([`SharedPages::all`]).

use std::sync::atomic::{AtomicU64, Ordering};

use vm_memory::bitmap::BS;
use vm_memory::guest_memory::GuestMemorySliceIterator;
use vm_memory::{
    GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap,
    GuestMemoryRegion, GuestRegionMmap, Permissions,
};

/// The guest's page size as the hypervisor tracks sharing.
pub const PAGE_SIZE: u64 = 4096;

/// Which pages of guest RAM (`base .. base + size`) the guest shared with
/// the host: a bitmap of atomic words, shared by vCPU and device threads.
#[derive(Debug)]
pub struct SharedPages {
    base: u64,
    pages: u64,
    /// Every page counts as shared, whatever the guest says (normal VMs).
    all: bool,
    bits: Vec<AtomicU64>,
}

impl SharedPages {
    /// Nothing shared yet (a protected VM at boot).
    pub fn none(base: u64, size: u64) -> Self {
        let pages = size / PAGE_SIZE;
        let words = usize::try_from(pages.div_ceil(64)).unwrap_or(0);
        Self {
            base,
            pages,
            all: false,
            bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Everything shared, always (a normal VM).
    pub fn all(base: u64, size: u64) -> Self {
        Self {
            base,
            pages: size / PAGE_SIZE,
            all: true,
            bits: Vec::new(),
        }
    }

    fn page_of(&self, addr: u64) -> Option<u64> {
        let page = addr.checked_sub(self.base)? / PAGE_SIZE;
        (page < self.pages).then_some(page)
    }

    fn word_bit(&self, page: u64) -> Option<(&AtomicU64, u64)> {
        let word = self.bits.get(usize::try_from(page / 64).ok()?)?;
        Some((word, 1 << (page % 64)))
    }

    /// The guest shared the page holding `ipa` (a `MEM_SHARE` notice).
    /// Returns false for an IPA outside guest RAM (ignored).
    pub fn share(&self, ipa: u64) -> bool {
        self.set(ipa, true)
    }

    /// The guest unshared the page holding `ipa` (`MEM_UNSHARE`).
    /// Returns false for an IPA outside guest RAM (ignored).
    pub fn unshare(&self, ipa: u64) -> bool {
        self.set(ipa, false)
    }

    fn set(&self, ipa: u64, shared: bool) -> bool {
        let Some(page) = self.page_of(ipa) else {
            return false;
        };
        if self.all {
            return true;
        }
        let Some((word, bit)) = self.word_bit(page) else {
            return false;
        };
        if shared {
            word.fetch_or(bit, Ordering::SeqCst);
        } else {
            word.fetch_and(!bit, Ordering::SeqCst);
        }
        true
    }

    /// Whether every page of `addr .. addr + len` is guest RAM and shared.
    /// An empty range is shared if `addr` is in guest RAM or just past it.
    pub fn is_shared(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        let Some(ram_end) = self.base.checked_add(self.pages * PAGE_SIZE) else {
            return false;
        };
        if addr < self.base || end > ram_end {
            return false;
        }
        if self.all || len == 0 {
            return true;
        }
        let first = (addr - self.base) / PAGE_SIZE;
        let last = (end - 1 - self.base) / PAGE_SIZE;
        (first..=last).all(|page| {
            self.word_bit(page)
                .is_some_and(|(word, bit)| word.load(Ordering::SeqCst) & bit != 0)
        })
    }

    /// How many pages are shared now.
    pub fn count(&self) -> u64 {
        if self.all {
            return self.pages;
        }
        self.bits
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }
}

/// Guest RAM plus the set of pages the guest shared: the only view of
/// guest memory devices get. Every access through [`GuestMemory`] (hence
/// through `Bytes`, and through `virtio-queue`) is checked first.
#[derive(Debug)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
    shared: SharedPages,
}

impl GuestRam {
    /// `mem` restricted to the pages `shared` says the guest shared.
    pub fn new(mem: GuestMemoryMmap, shared: SharedPages) -> Self {
        Self { mem, shared }
    }

    /// The unrestricted mapping: for loading the guest before it runs and
    /// for registering memslots, never for device emulation.
    pub fn backend(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The shared-pages set (updated by the vCPU threads).
    pub fn shared(&self) -> &SharedPages {
        &self.shared
    }
}

impl GuestMemory for GuestRam {
    type PhysicalMemory = GuestMemoryMmap;
    type Bitmap = <GuestRegionMmap as GuestMemoryRegion>::B;

    fn check_range(&self, addr: GuestAddress, count: usize, _access: Permissions) -> bool {
        let Ok(len) = u64::try_from(count) else {
            return false;
        };
        self.shared.is_shared(addr.0, len)
            && GuestMemoryBackend::check_range(&self.mem, addr, count)
    }

    fn get_slices<'a>(
        &'a self,
        addr: GuestAddress,
        count: usize,
        access: Permissions,
    ) -> Result<impl GuestMemorySliceIterator<'a, BS<'a, Self::Bitmap>>, GuestMemoryError> {
        if !self.check_range(addr, count, access) {
            return Err(GuestMemoryError::InvalidGuestAddress(addr));
        }
        Ok(GuestMemoryBackend::get_slices(&self.mem, addr, count))
    }

    // No `physical_memory()`: callers would bypass the check.
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    const BASE: u64 = 0x8000_0000;

    fn ram(pages: u64) -> GuestRam {
        let size = usize::try_from(pages * PAGE_SIZE).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(BASE), size)]).unwrap();
        GuestRam::new(mem, SharedPages::none(BASE, pages * PAGE_SIZE))
    }

    #[test]
    fn share_and_unshare_track_pages() {
        let s = SharedPages::none(BASE, 16 * PAGE_SIZE);
        assert!(!s.is_shared(BASE, 1));
        assert!(s.share(BASE + 0x1234));
        assert!(s.is_shared(BASE + 0x1000, 0x1000));
        assert!(!s.is_shared(BASE + 0x1000, 0x1001), "spills into page 2");
        assert!(s.share(BASE + 0x2000));
        assert!(s.is_shared(BASE + 0x1ffc, 8), "straddles two shared pages");
        assert_eq!(s.count(), 2);
        assert!(s.unshare(BASE + 0x1fff));
        assert!(!s.is_shared(BASE + 0x1ffc, 8));
        assert!(!s.share(BASE - 1), "below RAM");
        assert!(!s.share(BASE + 16 * PAGE_SIZE), "above RAM");
        assert!(!s.is_shared(u64::MAX, 2), "wraps");
    }

    #[test]
    fn everything_is_shared_in_a_normal_vm_but_only_ram() {
        let s = SharedPages::all(BASE, 4 * PAGE_SIZE);
        assert!(s.is_shared(BASE, 4 * PAGE_SIZE));
        assert!(s.unshare(BASE));
        assert!(s.is_shared(BASE, 1), "normal VMs ignore unshare");
        assert!(!s.is_shared(BASE + 3 * PAGE_SIZE, PAGE_SIZE + 1));
        assert_eq!(s.count(), 4);
    }

    #[test]
    fn private_pages_are_refused_before_any_access() {
        let ram = ram(4);
        // The loader writes through the backend (as before the guest runs).
        ram.backend()
            .write_slice(b"secret", GuestAddress(BASE + 0x1000))
            .unwrap();
        let mut buf = [0u8; 6];
        assert!(ram
            .read_slice(&mut buf, GuestAddress(BASE + 0x1000))
            .is_err());
        assert_eq!(buf, [0; 6], "nothing was read");
        assert!(ram.write_slice(b"x", GuestAddress(BASE + 0x1000)).is_err());
        ram.shared().share(BASE + 0x1000);
        ram.read_slice(&mut buf, GuestAddress(BASE + 0x1000))
            .unwrap();
        assert_eq!(&buf, b"secret");
        // A read that runs into the next (private) page reads nothing.
        let mut long = [0u8; 8];
        assert!(ram
            .read_slice(&mut long, GuestAddress(BASE + 0x1ffc))
            .is_err());
        assert_eq!(long, [0; 8]);
        assert!(!GuestMemory::check_range(
            &ram,
            GuestAddress(BASE + 0x1ffc),
            8,
            Permissions::Read
        ));
    }
}
