//! What the host stage-2 maps at boot besides the RAM bank the page
//! database manages: the other RAM banks and the device memory, worked out
//! from the DTB before anything is mapped (so the page-table pool can be
//! sized first).
//!
//! # The rule
//!
//! | range | host stage-2 | in the page database |
//! |-------|--------------|----------------------|
//! | the managed bank (the `/memory` bank holding the hyp) | normal RWX, page by page as the database says | yes: every ownership transition is about these frames |
//! | every other `/memory` bank, and `/reserved-memory` outside every bank | normal RWX, identity, for good | no: host-only; any hypercall naming it gets `OUT_OF_RANGE` |
//! | the MMIO [`fdt::for_each_device_range`] reports, page-aligned outwards, minus every RAM and reserved page | device nGnRE RW, never executable, identity | no |
//! | anything else | unmapped: a host access is a stage-2 fault (an abort injected back into the host) | no |
//!
//! RAM banks are rounded *inwards* to whole pages; reserved memory and
//! device ranges *outwards* (a 256-byte firmware mailbox still needs its
//! page), each minus every page a RAM bank or reserved range touches, so a
//! page is never mapped two ways; a partial page at the edge of a
//! misaligned bank is not mapped. Reserved memory outside RAM is there
//! because firmware shares it with the OS: on RK3588 the SCMI mailbox at
//! `0x10f000` sits below the first bank U-Boot reports (`0x200000`).
//! Ranges at or past the stage-2 IPA limit cannot be mapped and are
//! dropped (counted in [`HostMap::dropped_pages`]); a RAM bank that does
//! not fit is an error, because the host would use it and fault.
//!
//! # Cost
//!
//! Stage-2 leaves are 4 KiB pages, so every 2 MiB window a mapping touches
//! costs one level-3 table page and every 1 GiB window one level-2 table
//! page. [`HostMap::table_pages`] counts them; the boot code sizes the pool
//! with it. A PCI host bridge's 1 GiB window costs 513 table pages (about
//! 2 MiB).

use core::fmt;

use crate::addr::{Pfn, PfnRange, PAGE_SHIFT};
use crate::fdt::{self, FdtError, MemRegion, MAX_RAM_REGIONS};
use crate::stage2::{IPA_LIMIT, LAST_LEVEL, START_LEVEL};

/// Most disjoint device ranges a [`HostMap`] holds (the ROCK 5B's DTB
/// needs 68).
pub const MAX_DEVICE_RANGES: usize = 128;
/// Most `/reserved-memory` ranges outside RAM a [`HostMap`] holds.
pub const MAX_RESERVED_RANGES: usize = 16;
/// Most disjoint RAM ranges outside the managed bank (each bank minus the
/// managed one leaves at most two pieces; plus reserved memory).
pub const MAX_OTHER_RAM_RANGES: usize = 2 * MAX_RAM_REGIONS + MAX_RESERVED_RANGES;
/// Capacity for every RAM and reserved-memory range.
const MEMORY_RANGES: usize = MAX_RAM_REGIONS + MAX_RESERVED_RANGES;

/// Frames per level-3 table (2 MiB).
const L3_SPAN_SHIFT: u32 = 9;
/// Frames per level-2 table (1 GiB).
const L2_SPAN_SHIFT: u32 = 18;
// The counts above are for the stage-2 layout in `stage2`: a level-1 root
// over 4 KiB pages.
const _: () = assert!(START_LEVEL == 1 && LAST_LEVEL == 3 && PAGE_SHIFT == 12);
/// First frame past the IPA space.
const IPA_LIMIT_PFN: u64 = IPA_LIMIT >> PAGE_SHIFT;
const PAGE: u64 = 1 << PAGE_SHIFT;

/// Why a [`HostMap`] cannot be built.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HostMapError {
    /// More disjoint device ranges than [`MAX_DEVICE_RANGES`].
    TooManyDeviceRanges {
        /// The limit.
        max: usize,
    },
    /// More disjoint RAM pieces than [`MAX_OTHER_RAM_RANGES`].
    TooManyRamRanges {
        /// The limit.
        max: usize,
    },
    /// A RAM bank reaches past the stage-2 IPA space, so the host could not
    /// be given it.
    RamBeyondIpa {
        /// Bank base.
        base: u64,
        /// Bank size.
        size: u64,
    },
    /// The DTB was rejected as a whole.
    Fdt(FdtError),
}

impl From<FdtError> for HostMapError {
    fn from(e: FdtError) -> Self {
        Self::Fdt(e)
    }
}

impl fmt::Display for HostMapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TooManyDeviceRanges { max } => {
                write!(
                    f,
                    "the DTB describes more than {max} disjoint device ranges"
                )
            }
            Self::TooManyRamRanges { max } => {
                write!(f, "RAM splits into more than {max} ranges")
            }
            Self::RamBeyondIpa { base, size } => write!(
                f,
                "RAM {base:#x} + {size:#x} reaches past the {:#x} IPA limit",
                IPA_LIMIT
            ),
            Self::Fdt(e) => write!(f, "{e}"),
        }
    }
}

/// [`RunList::insert`] needed a new run in a full list.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RunListFull;

/// A sorted list of disjoint, non-adjacent frame runs `[start, end)`, with
/// room for `N`; inserting merges.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RunList<const N: usize> {
    runs: [(u64, u64); N],
    len: usize,
}

impl<const N: usize> RunList<N> {
    /// An empty list.
    pub const fn new() -> Self {
        Self {
            runs: [(0, 0); N],
            len: 0,
        }
    }

    /// The runs, sorted, as `(start, end)` frame numbers.
    pub fn as_slice(&self) -> &[(u64, u64)] {
        self.runs.get(..self.len).unwrap_or_default()
    }

    /// The runs as [`PfnRange`]s, in order.
    pub fn iter(&self) -> impl Iterator<Item = PfnRange> + '_ {
        self.as_slice()
            .iter()
            .filter_map(|&(s, e)| PfnRange::new(Pfn::new(s), e - s))
    }

    /// Number of runs.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Total frames in all runs.
    pub fn pages(&self) -> u64 {
        self.as_slice().iter().map(|&(s, e)| e - s).sum()
    }

    /// Adds the frames `[start, end)`, merging with every run it overlaps
    /// or touches. An empty run is ignored.
    ///
    /// # Errors
    /// [`RunListFull`] when the run touches no existing run and the list
    /// is full; the list is then unchanged.
    pub fn insert(&mut self, start: u64, end: u64) -> Result<(), RunListFull> {
        if start >= end {
            return Ok(());
        }
        let runs = self.as_slice();
        // runs[lo..hi] overlap or touch [start, end).
        let lo = runs.partition_point(|&(_, e)| e < start);
        let hi = runs.partition_point(|&(s, _)| s <= end);
        if lo >= hi {
            if self.len >= N {
                return Err(RunListFull);
            }
            let len = self.len;
            if let Some(tail) = self.runs.get_mut(lo..=len) {
                tail.rotate_right(1);
                if let Some(slot) = tail.first_mut() {
                    *slot = (start, end);
                }
            }
            self.len += 1;
            return Ok(());
        }
        let first = runs.get(lo).map_or(start, |r| r.0);
        let last = runs.get(hi - 1).map_or(end, |r| r.1);
        let merged = (start.min(first), end.max(last));
        let len = self.len;
        if let Some(tail) = self.runs.get_mut(lo..len) {
            if let Some(slot) = tail.first_mut() {
                *slot = merged;
            }
            // Drop runs lo+1..hi: move the rest down over them.
            tail.copy_within(hi - lo.., 1);
        }
        self.len -= hi - lo - 1;
        Ok(())
    }
}

impl<const N: usize> Default for RunList<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Debug for RunList<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Level-2 plus level-3 table pages a fresh stage-2 needs to map `runs`,
/// root not included: exact when the runs are sorted and disjoint, an
/// upper bound in any order (a window is taken as already counted only
/// when the previous run ended in it).
pub fn stage2_tables(runs: impl Iterator<Item = PfnRange>) -> u64 {
    let mut count = 0;
    // Per level: the window the previous run ended in.
    let mut last: [Option<u64>; 2] = [None; 2];
    for r in runs {
        for (shift, last) in [L3_SPAN_SHIFT, L2_SPAN_SHIFT].into_iter().zip(&mut last) {
            let first = r.start().raw() >> shift;
            let end = (r.end().raw() - 1) >> shift;
            let from = if *last == Some(first) {
                first + 1
            } else {
                first
            };
            count += (end + 1).saturating_sub(from);
            *last = Some(end);
        }
    }
    count
}

/// The host stage-2's boot-time map outside the managed bank (see the
/// module documentation for the rule). About 3 KiB: not `Copy`.
#[derive(Clone, Debug)]
pub struct HostMap {
    managed: PfnRange,
    /// Every RAM and reserved-memory page, rounded outwards: what device
    /// ranges avoid.
    memory_outer: RunList<MEMORY_RANGES>,
    other_ram: RunList<MAX_OTHER_RAM_RANGES>,
    devices: RunList<MAX_DEVICE_RANGES>,
    dropped: u64,
}

impl HostMap {
    /// Works out the map for `dtb`: `ram` is every `/memory` bank (as
    /// [`fdt::host_platform`] read them), `managed` the frames the page
    /// database covers (inside one of them). Reads the DTB's reserved
    /// memory and MMIO ([`fdt::for_each_reserved_range`],
    /// [`fdt::for_each_device_range`]).
    ///
    /// # Errors
    /// [`HostMapError::RamBeyondIpa`], a list overflowing
    /// ([`HostMapError::TooManyRamRanges`],
    /// [`HostMapError::TooManyDeviceRanges`]), or the DTB rejected as a
    /// whole ([`HostMapError::Fdt`]).
    pub fn from_dtb(
        dtb: &[u8],
        ram: &[MemRegion],
        managed: PfnRange,
    ) -> Result<Self, HostMapError> {
        let mut map = Self::new(ram, managed)?;
        let mut result = Ok(());
        fdt::for_each_reserved_range(dtb, |r| {
            if result.is_ok() {
                result = map.add_reserved(r);
            }
        })?;
        result?;
        fdt::for_each_device_range(dtb, |r| {
            if result.is_ok() {
                result = map.add_device(r);
            }
        })?;
        result?;
        Ok(map)
    }

    /// The RAM part of the map.
    fn new(ram: &[MemRegion], managed: PfnRange) -> Result<Self, HostMapError> {
        let mut map = Self {
            managed,
            memory_outer: RunList::new(),
            other_ram: RunList::new(),
            devices: RunList::new(),
            dropped: 0,
        };
        let too_many = HostMapError::TooManyRamRanges {
            max: MAX_OTHER_RAM_RANGES,
        };
        for r in ram {
            let base = r.base.raw();
            let end = base
                .checked_add(r.size)
                .filter(|&e| e <= IPA_LIMIT)
                .ok_or(HostMapError::RamBeyondIpa { base, size: r.size })?;
            map.memory_outer
                .insert(base >> PAGE_SHIFT, end.div_ceil(PAGE))
                .map_err(|RunListFull| too_many)?;
            let (start, end) = (base.div_ceil(PAGE), end >> PAGE_SHIFT);
            // Minus the managed bank: at most two pieces.
            let (ms, me) = (managed.start().raw(), managed.end().raw());
            for (s, e) in [(start, end.min(ms)), (start.max(me), end)] {
                map.other_ram.insert(s, e).map_err(|RunListFull| too_many)?;
            }
        }
        Ok(map)
    }

    /// Adds a `/reserved-memory` range: its pages (rounded outwards) that
    /// are not RAM become host-only normal memory, like another bank. Before
    /// any device range.
    fn add_reserved(&mut self, r: MemRegion) -> Result<(), HostMapError> {
        debug_assert!(self.devices.is_empty(), "reserved memory after devices");
        let Some((start, end)) = self.outer_in_ipa(r) else {
            return Ok(());
        };
        let too_many = HostMapError::TooManyRamRanges {
            max: MAX_OTHER_RAM_RANGES,
        };
        for (s, e) in gaps(self.memory_outer.as_slice(), start, end) {
            self.other_ram
                .insert(s, e)
                .map_err(|RunListFull| too_many)?;
        }
        self.memory_outer
            .insert(start, end)
            .map_err(|RunListFull| too_many)
    }

    /// Adds one MMIO range: its pages (rounded outwards) that are neither
    /// RAM nor reserved memory become device memory.
    fn add_device(&mut self, r: MemRegion) -> Result<(), HostMapError> {
        let Some((start, end)) = self.outer_in_ipa(r) else {
            return Ok(());
        };
        let too_many = HostMapError::TooManyDeviceRanges {
            max: MAX_DEVICE_RANGES,
        };
        for (s, e) in gaps(self.memory_outer.as_slice(), start, end) {
            self.devices.insert(s, e).map_err(|RunListFull| too_many)?;
        }
        Ok(())
    }

    /// `r`'s frames rounded outwards and clipped to the IPA space (the rest
    /// counted as dropped); `None` if nothing is left.
    fn outer_in_ipa(&mut self, r: MemRegion) -> Option<(u64, u64)> {
        let base = r.base.raw();
        let end = base.checked_add(r.size)?;
        let (start, end) = (base >> PAGE_SHIFT, end.div_ceil(PAGE));
        let clipped = end.min(IPA_LIMIT_PFN);
        self.dropped += end - start.max(clipped);
        (start < clipped).then_some((start, clipped))
    }

    /// The frames the page database covers.
    pub fn managed(&self) -> PfnRange {
        self.managed
    }

    /// RAM outside the managed bank (other banks, reserved memory outside
    /// every bank): to map normal, host-only.
    pub fn other_ram(&self) -> &RunList<MAX_OTHER_RAM_RANGES> {
        &self.other_ram
    }

    /// Device memory to map for the host.
    pub fn devices(&self) -> &RunList<MAX_DEVICE_RANGES> {
        &self.devices
    }

    /// Pages of device or reserved ranges left out because they lie at or
    /// past the IPA limit.
    pub fn dropped_pages(&self) -> u64 {
        self.dropped
    }

    /// Table pages the host stage-2 needs for the whole map, root included:
    /// exact for each of the managed bank, the other RAM and the devices,
    /// summed (a window two of them share is counted twice).
    pub fn table_pages(&self) -> u64 {
        1 + stage2_tables(core::iter::once(self.managed))
            + stage2_tables(self.other_ram.iter())
            + stage2_tables(self.devices.iter())
    }
}

/// The parts of `[start, end)` outside every run of `runs` (sorted,
/// disjoint).
fn gaps(runs: &[(u64, u64)], start: u64, end: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
    let mut at = start;
    let mut rest = runs.iter();
    let mut done = false;
    core::iter::from_fn(move || {
        while !done {
            match rest.next() {
                Some(&(_, re)) if re <= at => {}
                Some(&(rs, re)) if rs < end => {
                    let gap = (at, rs.min(end));
                    at = at.max(re);
                    if gap.0 < gap.1 {
                        return Some(gap);
                    }
                }
                _ => {
                    done = true;
                    if at < end {
                        return Some((at, end));
                    }
                }
            }
        }
        None
    })
}

#[cfg(test)]
mod tests;
