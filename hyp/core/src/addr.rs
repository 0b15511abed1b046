//! Typed addresses: physical addresses, intermediate physical addresses and
//! page frame numbers.
//!
//! A host physical address, a guest IPA and a frame number are all `u64` on
//! the wire, and mixing them up is the classic stage-2 bug (mapping an IPA as
//! if it were a PA works on an identity map and nowhere else). Each gets its
//! own type, and conversions that can overflow are `checked_*` and return
//! `Option`: every value that crosses the host ↔ hyp boundary is hostile.

use core::fmt;

/// log2 of the translation granule. Cloister uses 4 KiB pages everywhere.
pub const PAGE_SHIFT: u32 = 12;
/// Size of a page (the 4 KiB translation granule) in bytes.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Mask of the offset-in-page bits of an address.
pub const PAGE_OFFSET_MASK: u64 = PAGE_SIZE - 1;

/// Defines an address newtype with the common page helpers.
macro_rules! def_addr {
    ($(#[$doc:meta])* $name:ident, $tag:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(u64);

        impl $name {
            /// Wraps a raw address. Any value is allowed; alignment and range
            /// are checked where they matter.
            pub const fn new(raw: u64) -> Self {
                Self(raw)
            }

            /// The raw address.
            pub const fn raw(self) -> u64 {
                self.0
            }

            /// Whether the address is a multiple of [`PAGE_SIZE`].
            pub const fn is_page_aligned(self) -> bool {
                self.0 & PAGE_OFFSET_MASK == 0
            }

            /// The address rounded down to its page.
            pub const fn page_align_down(self) -> Self {
                Self(self.0 & !PAGE_OFFSET_MASK)
            }

            /// Offset of the address inside its page.
            pub const fn page_offset(self) -> u64 {
                self.0 & PAGE_OFFSET_MASK
            }

            /// `self + bytes`, or `None` on overflow.
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// `self + pages * PAGE_SIZE`, or `None` on overflow.
            pub const fn checked_add_pages(self, pages: u64) -> Option<Self> {
                match pages.checked_mul(PAGE_SIZE) {
                    Some(bytes) => self.checked_add(bytes),
                    None => None,
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($tag, ":{:#x}"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self, f)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

def_addr!(
    /// A host (output) physical address, as stage-2 translation produces it.
    PhysAddr,
    "PA"
);

def_addr!(
    /// An intermediate physical address: what a guest (or the host, through
    /// its identity-mapped stage-2) believes is physical.
    Ipa,
    "IPA"
);

impl PhysAddr {
    /// The frame that contains this address.
    pub const fn pfn(self) -> Pfn {
        Pfn(self.0 >> PAGE_SHIFT)
    }

    /// The same number seen as an IPA, for the host's identity map.
    pub const fn to_identity_ipa(self) -> Ipa {
        Ipa(self.0)
    }
}

impl Ipa {
    /// The guest frame number of the page containing this IPA.
    pub const fn gfn(self) -> u64 {
        self.0 >> PAGE_SHIFT
    }
}

/// A physical page frame number (`PhysAddr >> PAGE_SHIFT`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Pfn(u64);

impl Pfn {
    /// Wraps a raw frame number. Any value is allowed (a host may pass
    /// anything); [`Pfn::phys`] is checked.
    pub const fn new(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw frame number.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The physical address of the frame, or `None` if it does not fit in
    /// 64 bits (a hostile frame number).
    pub const fn phys(self) -> Option<PhysAddr> {
        if self.0 > (u64::MAX >> PAGE_SHIFT) {
            None
        } else {
            Some(PhysAddr(self.0 << PAGE_SHIFT))
        }
    }

    /// `self + count`, or `None` on overflow.
    pub const fn checked_add(self, count: u64) -> Option<Self> {
        match self.0.checked_add(count) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// Number of frames from `earlier` up to `self`, or `None` if `earlier`
    /// is after `self`.
    pub const fn checked_offset_from(self, earlier: Pfn) -> Option<u64> {
        self.0.checked_sub(earlier.0)
    }
}

impl fmt::Debug for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PFN:{:#x}", self.0)
    }
}

impl fmt::Display for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A non-empty, non-wrapping run of frames `[start, start + count)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PfnRange {
    start: Pfn,
    count: u64,
}

impl PfnRange {
    /// The run `[start, start + count)`; `None` if `count` is zero or the end
    /// (or its physical address) overflows.
    pub const fn new(start: Pfn, count: u64) -> Option<Self> {
        if count == 0 {
            return None;
        }
        match start.checked_add(count) {
            Some(end) if end.phys().is_some() => Some(Self { start, count }),
            _ => None,
        }
    }

    /// First frame.
    pub const fn start(self) -> Pfn {
        self.start
    }

    /// Number of frames (never zero).
    pub const fn count(self) -> u64 {
        self.count
    }

    /// One past the last frame (cannot overflow: checked in [`PfnRange::new`]).
    pub const fn end(self) -> Pfn {
        Pfn(self.start.0 + self.count)
    }

    /// Whether `pfn` is in the run.
    pub const fn contains(self, pfn: Pfn) -> bool {
        pfn.0 >= self.start.0 && pfn.0 < self.start.0 + self.count
    }

    /// Whether every frame of `other` is in this run.
    pub const fn contains_range(self, other: PfnRange) -> bool {
        other.start.0 >= self.start.0 && other.end().0 <= self.end().0
    }

    /// Whether the two runs share a frame.
    pub const fn overlaps(self, other: PfnRange) -> bool {
        self.start.0 < other.end().0 && other.start.0 < self.end().0
    }

    /// The frames of the run, in order.
    pub fn iter(self) -> impl Iterator<Item = Pfn> {
        (self.start.0..self.end().0).map(Pfn)
    }
}

impl fmt::Debug for PfnRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PFN:[{:#x}..{:#x})", self.start.0, self.end().0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_formats_are_tagged() {
        assert_eq!(format!("{:?}", PhysAddr::new(0x4000_0000)), "PA:0x40000000");
        assert_eq!(format!("{:?}", Ipa::new(0x1000)), "IPA:0x1000");
        assert_eq!(format!("{}", Pfn::new(0x40000)), "PFN:0x40000");
        assert_eq!(
            format!("{:?}", PfnRange::new(Pfn::new(1), 2)),
            "Some(PFN:[0x1..0x3))"
        );
    }

    #[test]
    fn page_helpers() {
        let pa = PhysAddr::new(0x4000_1234);
        assert!(!pa.is_page_aligned());
        assert_eq!(pa.page_align_down(), PhysAddr::new(0x4000_1000));
        assert_eq!(pa.page_offset(), 0x234);
        assert_eq!(pa.pfn(), Pfn::new(0x40001));
        assert_eq!(pa.pfn().phys(), Some(PhysAddr::new(0x4000_1000)));
        assert!(PhysAddr::new(0x4000_0000).is_page_aligned());
        assert_eq!(Ipa::new(0x3000).gfn(), 3);
    }

    #[test]
    fn checked_arithmetic_overflows_to_none() {
        assert_eq!(PhysAddr::new(u64::MAX).checked_add(1), None);
        assert_eq!(PhysAddr::new(0).checked_add_pages(u64::MAX), None);
        assert_eq!(
            Ipa::new(0x1000).checked_add_pages(2),
            Some(Ipa::new(0x3000))
        );
        assert_eq!(Pfn::new(u64::MAX).checked_add(1), None);
        assert_eq!(Pfn::new(u64::MAX).phys(), None);
        assert_eq!(
            Pfn::new(u64::MAX >> PAGE_SHIFT).phys(),
            Some(PhysAddr::new(!PAGE_OFFSET_MASK))
        );
        assert_eq!(Pfn::new(5).checked_offset_from(Pfn::new(3)), Some(2));
        assert_eq!(Pfn::new(3).checked_offset_from(Pfn::new(5)), None);
    }

    #[test]
    fn pfn_ranges() {
        assert!(PfnRange::new(Pfn::new(1), 0).is_none());
        assert!(PfnRange::new(Pfn::new(u64::MAX), 1).is_none());
        assert!(PfnRange::new(Pfn::new(u64::MAX >> PAGE_SHIFT), 1).is_none());
        let Some(r) = PfnRange::new(Pfn::new(10), 5) else {
            panic!("valid range rejected");
        };
        assert_eq!(r.end(), Pfn::new(15));
        assert!(r.contains(Pfn::new(10)) && r.contains(Pfn::new(14)));
        assert!(!r.contains(Pfn::new(15)) && !r.contains(Pfn::new(9)));
        let inner = PfnRange::new(Pfn::new(11), 4);
        let across = PfnRange::new(Pfn::new(14), 4);
        let after = PfnRange::new(Pfn::new(15), 4);
        assert!(inner.is_some_and(|i| r.contains_range(i) && r.overlaps(i)));
        assert!(across.is_some_and(|a| !r.contains_range(a) && r.overlaps(a)));
        assert!(after.is_some_and(|a| !r.overlaps(a)));
        assert_eq!(r.iter().count(), 5);
    }
}
