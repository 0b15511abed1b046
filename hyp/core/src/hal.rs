//! The hardware abstraction the core needs: page-table pages and TLB
//! maintenance.
//!
//! The hypervisor has no heap. Page-table pages come from a pool the arch
//! code owns, and the core reaches page contents only through
//! [`PageAllocator::page`] / [`PageAllocator::page_mut`], so the table code
//! never turns a physical address into a pointer itself: the one place that
//! does (the hyp's linear map) lives in the arch crate, next to its `unsafe`.
//!
//! `FakeHal` (tests and the `fake-hal` feature) implements both traits over a caller-provided array of pages,
//! so stage-2 tables and ownership transitions run as ordinary host tests
//! (the axaddrspace test-HAL pattern, with OOM injection).

use crate::addr::{Ipa, PhysAddr};
use crate::stage2::Vmid;

/// Number of 64-bit words (descriptors) in a page.
pub const WORDS_PER_PAGE: usize = 512;

/// A page seen as 512 64-bit words: a translation table, or any page the
/// hypervisor must read or write (to zero it, say).
pub type PageWords = [u64; WORDS_PER_PAGE];

/// Source of zeroed pages for translation tables, and access to page
/// contents by physical address.
///
/// Contract for implementations (the arch glue):
/// - every page handed out by [`alloc_zeroed_page`](Self::alloc_zeroed_page)
///   is page-aligned, zero-filled, owned by the hypervisor (never mapped in
///   the host's or a guest's stage-2), and reachable through `page` /
///   `page_mut` until it is freed;
/// - `page` / `page_mut` also reach every page of the RAM the page database
///   manages (needed to zero a reclaimed page), and return `None` for any
///   other or unaligned address;
/// - a write through `page_mut` to a live table page is a plain store: making
///   it visible to the table walker (`dsb ishst`) is part of
///   [`TlbMaintenance`] and of the exception return.
pub trait PageAllocator {
    /// A zero-filled page, or `None` when the pool is empty.
    fn alloc_zeroed_page(&mut self) -> Option<PhysAddr>;

    /// Returns a page obtained from [`alloc_zeroed_page`](Self::alloc_zeroed_page).
    fn free_page(&mut self, pa: PhysAddr);

    /// Read access to the page at `pa`.
    fn page(&self, pa: PhysAddr) -> Option<&PageWords>;

    /// Write access to the page at `pa`.
    fn page_mut(&mut self, pa: PhysAddr) -> Option<&mut PageWords>;
}

/// Stage-2 TLB maintenance, called by the table code after it removes or
/// downgrades a valid entry and before the change is relied upon.
///
/// Implementations issue `dsb ishst`, the TLBI, `dsb ish` and `isb`, and
/// return only when the invalidation is complete on every CPU (inner
/// shareable): a page is handed to its new owner right after this returns.
pub trait TlbMaintenance {
    /// Invalidate stage-2 (and combined stage-1+2) entries for `pages` pages
    /// from `ipa` in the VMID `vmid`.
    fn invalidate_ipa_range(&mut self, vmid: Vmid, ipa: Ipa, pages: u64);

    /// Invalidate every entry of `vmid` (before its tables are freed).
    fn invalidate_vmid(&mut self, vmid: Vmid);
}

/// Everything the core asks of the platform.
pub trait Hal: PageAllocator + TlbMaintenance {}

impl<T: PageAllocator + TlbMaintenance + ?Sized> Hal for T {}

#[cfg(any(test, feature = "fake-hal"))]
pub use fake::{FakeHal, FAKE_POOL_MAX};

#[cfg(any(test, feature = "fake-hal"))]
mod fake {
    use super::{PageAllocator, PageWords, TlbMaintenance};
    use crate::addr::{Ipa, PhysAddr, PAGE_SHIFT, PAGE_SIZE};
    use crate::stage2::Vmid;

    /// Largest pool a [`FakeHal`] tracks (pages).
    pub const FAKE_POOL_MAX: usize = 4096;

    /// An in-memory HAL for host tests.
    ///
    /// It models a window of "physical memory" starting at `base`, backed by
    /// a slice of pages the test owns. The first `pool_pages` pages form the
    /// allocator pool; the rest are plain memory (say, the RAM that a page
    /// database manages) that `page` / `page_mut` can reach but that is never
    /// allocated. Counters let tests check for leaks, and
    /// [`set_oom`](Self::set_oom) / [`fail_after`](Self::fail_after) inject
    /// allocation failures.
    ///
    /// Misuse (double free, freeing a foreign page) panics: this type only
    /// exists in tests.
    #[derive(Debug)]
    pub struct FakeHal<'m> {
        base: PhysAddr,
        mem: &'m mut [PageWords],
        pool_pages: usize,
        used: [u64; FAKE_POOL_MAX / 64],
        next: usize,
        live: u64,
        allocs: u64,
        frees: u64,
        fail_after: Option<u64>,
        tlbi_ranges: u64,
        tlbi_pages: u64,
        tlbi_vmids: u64,
        last_tlbi: Option<(Vmid, Ipa, u64)>,
    }

    impl<'m> FakeHal<'m> {
        /// A HAL over `mem`, whose first page is at `base`; its first
        /// `pool_pages` pages are the allocator pool.
        ///
        /// # Panics
        /// If `base` is not page-aligned, `pool_pages` exceeds `mem.len()` or
        /// [`FAKE_POOL_MAX`], or the window overflows the address space.
        pub fn new(base: PhysAddr, mem: &'m mut [PageWords], pool_pages: usize) -> Self {
            assert!(base.is_page_aligned(), "FakeHal base must be page-aligned");
            assert!(pool_pages <= mem.len() && pool_pages <= FAKE_POOL_MAX);
            let len = u64::try_from(mem.len()).unwrap_or(u64::MAX);
            assert!(base.checked_add_pages(len).is_some());
            Self {
                base,
                mem,
                pool_pages,
                used: [0; FAKE_POOL_MAX / 64],
                next: 0,
                live: 0,
                allocs: 0,
                frees: 0,
                fail_after: None,
                tlbi_ranges: 0,
                tlbi_pages: 0,
                tlbi_vmids: 0,
                last_tlbi: None,
            }
        }

        /// Make every allocation fail (`true`) or succeed while pages remain.
        pub fn set_oom(&mut self, oom: bool) {
            self.fail_after = if oom { Some(0) } else { None };
        }

        /// Let `n` more allocations succeed, then fail all later ones.
        pub fn fail_after(&mut self, n: u64) {
            self.fail_after = Some(n);
        }

        /// Pages currently allocated (allocations minus frees).
        pub fn live_pages(&self) -> u64 {
            self.live
        }

        /// Successful allocations so far.
        pub fn alloc_count(&self) -> u64 {
            self.allocs
        }

        /// Frees so far.
        pub fn free_count(&self) -> u64 {
            self.frees
        }

        /// Number of `invalidate_ipa_range` calls so far.
        pub fn tlbi_range_calls(&self) -> u64 {
            self.tlbi_ranges
        }

        /// Total pages passed to `invalidate_ipa_range` so far.
        pub fn tlbi_pages(&self) -> u64 {
            self.tlbi_pages
        }

        /// Arguments of the latest `invalidate_ipa_range` call.
        pub fn last_tlbi(&self) -> Option<(Vmid, Ipa, u64)> {
            self.last_tlbi
        }

        /// Number of `invalidate_vmid` calls so far.
        pub fn tlbi_vmid_calls(&self) -> u64 {
            self.tlbi_vmids
        }

        /// First address of the window.
        pub fn base(&self) -> PhysAddr {
            self.base
        }

        /// The whole window, for byte-for-byte snapshots in tests.
        pub fn memory(&self) -> &[PageWords] {
            self.mem
        }

        /// Which pool pages are allocated, for snapshots in tests.
        pub fn allocation_bitmap(&self) -> &[u64] {
            &self.used
        }

        /// Whether `pa` is a currently allocated pool page.
        pub fn is_allocated(&self, pa: PhysAddr) -> bool {
            self.pool_index(pa).is_some_and(|i| self.bit(i))
        }

        fn index(&self, pa: PhysAddr) -> Option<usize> {
            if !pa.is_page_aligned() {
                return None;
            }
            let off = pa.raw().checked_sub(self.base.raw())? >> PAGE_SHIFT;
            let i = usize::try_from(off).ok()?;
            (i < self.mem.len()).then_some(i)
        }

        fn pool_index(&self, pa: PhysAddr) -> Option<usize> {
            self.index(pa).filter(|&i| i < self.pool_pages)
        }

        fn bit(&self, i: usize) -> bool {
            self.used[i / 64] & (1 << (i % 64)) != 0
        }

        fn set_bit(&mut self, i: usize, v: bool) {
            if v {
                self.used[i / 64] |= 1 << (i % 64);
            } else {
                self.used[i / 64] &= !(1 << (i % 64));
            }
        }
    }

    impl PageAllocator for FakeHal<'_> {
        fn alloc_zeroed_page(&mut self) -> Option<PhysAddr> {
            match self.fail_after {
                Some(0) => return None,
                Some(n) => self.fail_after = Some(n - 1),
                None => {}
            }
            let i = (0..self.pool_pages)
                .map(|k| (self.next + k) % self.pool_pages)
                .find(|&i| !self.bit(i))?;
            self.set_bit(i, true);
            self.next = (i + 1) % self.pool_pages;
            self.mem[i] = [0; super::WORDS_PER_PAGE];
            self.live += 1;
            self.allocs += 1;
            let off = u64::try_from(i).ok()?.checked_mul(PAGE_SIZE)?;
            self.base.checked_add(off)
        }

        fn free_page(&mut self, pa: PhysAddr) {
            let Some(i) = self.pool_index(pa) else {
                panic!("FakeHal: free of {pa:?}, not a pool page");
            };
            assert!(self.bit(i), "FakeHal: double free of {pa:?}");
            self.set_bit(i, false);
            self.live -= 1;
            self.frees += 1;
        }

        fn page(&self, pa: PhysAddr) -> Option<&PageWords> {
            let i = self.index(pa)?;
            self.mem.get(i)
        }

        fn page_mut(&mut self, pa: PhysAddr) -> Option<&mut PageWords> {
            let i = self.index(pa)?;
            self.mem.get_mut(i)
        }
    }

    impl TlbMaintenance for FakeHal<'_> {
        fn invalidate_ipa_range(&mut self, vmid: Vmid, ipa: Ipa, pages: u64) {
            self.last_tlbi = Some((vmid, ipa, pages));
            self.tlbi_ranges += 1;
            self.tlbi_pages += pages;
        }

        fn invalidate_vmid(&mut self, _vmid: Vmid) {
            self.tlbi_vmids += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_hal_allocates_zeroed_pages_and_counts() {
        let mut mem = vec![[0xa5a5_a5a5_a5a5_a5a5_u64; WORDS_PER_PAGE]; 4];
        let mut hal = FakeHal::new(PhysAddr::new(0x10_0000), &mut mem, 2);
        let Some(a) = hal.alloc_zeroed_page() else {
            panic!("pool of 2 gave nothing")
        };
        let Some(b) = hal.alloc_zeroed_page() else {
            panic!("pool of 2 gave one")
        };
        assert_ne!(a, b);
        assert!(a.is_page_aligned() && b.is_page_aligned());
        assert_eq!(hal.alloc_zeroed_page(), None, "pool exhausted");
        assert!(hal.page(a).is_some_and(|p| p.iter().all(|&w| w == 0)));
        assert_eq!(hal.live_pages(), 2);
        hal.free_page(a);
        assert_eq!(
            (hal.live_pages(), hal.alloc_count(), hal.free_count()),
            (1, 2, 1)
        );
        assert!(!hal.is_allocated(a) && hal.is_allocated(b));
    }

    #[test]
    fn fake_hal_reaches_non_pool_memory_but_never_allocates_it() {
        let mut mem = vec![[0; WORDS_PER_PAGE]; 3];
        let mut hal = FakeHal::new(PhysAddr::new(0), &mut mem, 1);
        let ram = PhysAddr::new(2 * crate::addr::PAGE_SIZE);
        if let Some(p) = hal.page_mut(ram) {
            p[7] = 42;
        }
        assert_eq!(hal.page(ram).map(|p| p[7]), Some(42));
        assert!(hal
            .page(PhysAddr::new(3 * crate::addr::PAGE_SIZE))
            .is_none());
        assert!(hal.page(PhysAddr::new(8)).is_none(), "unaligned");
        assert_eq!(hal.alloc_zeroed_page(), Some(PhysAddr::new(0)));
        assert_eq!(hal.alloc_zeroed_page(), None);
    }

    #[test]
    fn fake_hal_oom_injection() {
        let mut mem = vec![[0; WORDS_PER_PAGE]; 8];
        let mut hal = FakeHal::new(PhysAddr::new(0), &mut mem, 8);
        hal.set_oom(true);
        assert_eq!(hal.alloc_zeroed_page(), None);
        hal.set_oom(false);
        assert!(hal.alloc_zeroed_page().is_some());
        hal.fail_after(2);
        assert!(hal.alloc_zeroed_page().is_some());
        assert!(hal.alloc_zeroed_page().is_some());
        assert_eq!(hal.alloc_zeroed_page(), None);
        assert_eq!(hal.live_pages(), 3);
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn fake_hal_catches_double_free() {
        let mut mem = vec![[0; WORDS_PER_PAGE]; 1];
        let mut hal = FakeHal::new(PhysAddr::new(0), &mut mem, 1);
        let pa = hal.alloc_zeroed_page().unwrap_or_default();
        hal.free_page(pa);
        hal.free_page(pa);
    }
}
