//! Arm64 stage-2 translation tables: 4 KiB granule, page-granular leaves.
//!
//! # Layout (and why)
//!
//! | parameter        | value                         | VTCR_EL2 field        |
//! |------------------|-------------------------------|-----------------------|
//! | granule          | 4 KiB                         | TG0 = 0b00            |
//! | IPA size         | 39 bits (512 GiB)             | T0SZ = 25             |
//! | start level      | 1, one 4 KiB root table       | SL0 = 0b01            |
//! | walk             | levels 1 → 2 → 3 (3 lookups)  |                       |
//! | output PA size   | 40 bits (1 TiB)               | PS = 0b010            |
//! | table walks      | inner-shareable, WBWA         | SH0 = 0b11, IRGN0 = ORGN0 = 0b01 |
//! | VMID             | 8 bits                        | VS = 0                |
//!
//! One root page at level 1 resolves IPA bits 38..30, so the IPA space is
//! 39 bits. A 40-bit IPA (T0SZ = 24, what KVM uses) starting at level 1
//! needs *two concatenated* level-1 tables (an 8 KiB, 8 KiB-aligned root;
//! see the comment above `VTCR_EL2_T0SZ` in Linux's `kvm_arm.h`), or a
//! fourth, level-0 lookup. We keep a single 4 KiB root and three lookups:
//! 512 GiB covers QEMU `virt`'s RAM (from 1 GiB, at most 255 GiB) and all its
//! low MMIO, which is all the host's identity map and the guests need. The
//! walker is written in terms of [`START_LEVEL`], so moving to a level-0 root
//! (40..48 bits) later changes constants, not code.
//!
//! Leaves are always level-3 pages (no block mappings yet), which keeps
//! splitting, merging and break-before-make on blocks out of the picture.
//! Table pages are only freed by [`Stage2::destroy`]: an unmap never frees a
//! table, so an unmap can never fail and a reservation made by
//! [`Stage2::prepare_map`] can never fall short before its commit.
//!
//! # Leaf descriptor (level 3, stage 2)
//!
//! | bits   | field      | Cloister's use                                    |
//! |--------|------------|---------------------------------------------------|
//! | 1:0    | type       | 0b11 (page)                                       |
//! | 5:2    | MemAttr    | 0b1111 normal WB (inner + outer), 0b0001 device nGnRE |
//! | 7:6    | S2AP       | bit 6 read, bit 7 write                           |
//! | 9:8    | SH         | 0b11 inner shareable                              |
//! | 10     | AF         | 1 (no access-flag faults)                         |
//! | 39:12  | output PA  | page address (40-bit PA)                          |
//! | 54:53  | XN         | 0b10 when not executable, else 0b00               |
//! | 58:55  | software   | page state (as pKVM keeps it): 0 owned, 1 shared-owned, 2 shared-borrowed |
//!
//! Table descriptors (levels 1 and 2) are `next-level table PA | 0b11`.

use core::fmt;

use crate::addr::{Ipa, PhysAddr, PAGE_SHIFT};
use crate::hal::{Hal, PageAllocator, WORDS_PER_PAGE};
use crate::mem_protect::PageState;

/// Number of IPA bits translated.
pub const IPA_BITS: u32 = 39;
/// First IPA past the translated space.
pub const IPA_LIMIT: u64 = 1 << IPA_BITS;
/// Number of output (physical) address bits, VTCR_EL2.PS.
pub const PA_BITS: u32 = 40;
/// First physical address a leaf cannot point to.
pub const PA_LIMIT: u64 = 1 << PA_BITS;
/// Level of the root table.
pub const START_LEVEL: u8 = 1;
/// Level of the leaf (page) descriptors.
pub const LAST_LEVEL: u8 = 3;

// The `as` casts in these constants widen (u32/u8 to u64): `From` is not
// usable in a const.
/// VTCR_EL2.T0SZ: the IPA space is `2^(64 - T0SZ)` bytes.
pub const VTCR_T0SZ: u64 = 64 - IPA_BITS as u64;
/// VTCR_EL2.SL0 for the 4 KiB granule: `2 - start level`.
pub const VTCR_SL0: u64 = 2 - START_LEVEL as u64;
/// VTCR_EL2.IRGN0 / ORGN0: normal, write-back read/write-allocate cacheable.
pub const VTCR_RGN_WBWA: u64 = 0b01;
/// VTCR_EL2.SH0: inner shareable.
pub const VTCR_SH_INNER: u64 = 0b11;
/// VTCR_EL2.TG0: 4 KiB granule.
pub const VTCR_TG0_4K: u64 = 0b00;
/// VTCR_EL2.PS: 40-bit physical addresses.
pub const VTCR_PS_40: u64 = 0b010;
/// VTCR_EL2 bit 31 is RES1.
pub const VTCR_RES1: u64 = 1 << 31;

/// The VTCR_EL2 value for every Cloister stage-2 (host and guests).
///
/// The arch glue must check `ID_AA64MMFR0_EL1.PARange >= 0b0010` (40 bits)
/// before using it.
pub const fn vtcr_el2() -> u64 {
    VTCR_T0SZ
        | (VTCR_SL0 << 6)
        | (VTCR_RGN_WBWA << 8)
        | (VTCR_RGN_WBWA << 10)
        | (VTCR_SH_INNER << 12)
        | (VTCR_TG0_4K << 14)
        | (VTCR_PS_40 << 16)
        | VTCR_RES1
}

const PTE_VALID: u64 = 1 << 0;
const PTE_TYPE_TABLE_OR_PAGE: u64 = 1 << 1;
const PTE_ADDR_MASK: u64 = ((1 << 48) - 1) & !((1 << PAGE_SHIFT) - 1);
const PTE_MEMATTR_SHIFT: u32 = 2;
const PTE_MEMATTR_MASK: u64 = 0xf << PTE_MEMATTR_SHIFT;
/// Stage-2 MemAttr for normal memory, inner and outer write-back.
pub const MEMATTR_NORMAL_WB: u64 = 0b1111;
/// Stage-2 MemAttr for device nGnRE.
pub const MEMATTR_DEVICE_NGNRE: u64 = 0b0001;
const PTE_S2AP_R: u64 = 1 << 6;
const PTE_S2AP_W: u64 = 1 << 7;
const PTE_SH_INNER: u64 = 0b11 << 8;
const PTE_AF: u64 = 1 << 10;
const PTE_XN: u64 = 1 << 54;
/// First software bit of a leaf descriptor (bits 58..55 are for software).
pub const PTE_SW_SHIFT: u32 = 55;
const PTE_SW_MASK: u64 = 0xf << PTE_SW_SHIFT;

/// A stage-2 VMID (8 bits: VTCR_EL2.VS = 0).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Vmid(pub u8);

impl Vmid {
    /// The host's VMID.
    pub const HOST: Vmid = Vmid(0);
}

/// Stage-2 access permissions for a mapping.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Perms(u8);

impl Perms {
    /// No access (a valid entry that faults on every access).
    pub const NONE: Perms = Perms(0);
    /// Read.
    pub const R: Perms = Perms(1);
    /// Write.
    pub const W: Perms = Perms(2);
    /// Execute (at EL1 and EL0).
    pub const X: Perms = Perms(4);
    /// Read + write.
    pub const RW: Perms = Perms(3);
    /// Read + write + execute.
    pub const RWX: Perms = Perms(7);

    /// Whether every permission in `other` is in `self`.
    pub const fn contains(self, other: Perms) -> bool {
        self.0 & other.0 == other.0
    }

    /// Union of two permission sets.
    pub const fn union(self, other: Perms) -> Perms {
        Perms(self.0 | other.0)
    }
}

impl core::ops::BitOr for Perms {
    type Output = Perms;
    fn bitor(self, rhs: Perms) -> Perms {
        self.union(rhs)
    }
}

impl fmt::Debug for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = |p: Perms, c: char| if self.contains(p) { c } else { '-' };
        write!(
            f,
            "{}{}{}",
            flag(Perms::R, 'r'),
            flag(Perms::W, 'w'),
            flag(Perms::X, 'x')
        )
    }
}

/// Memory type of a mapping (the stage-2 MemAttr field).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum MemType {
    /// Normal memory, inner and outer write-back cacheable.
    Normal,
    /// Device-nGnRE (MMIO).
    Device,
}

/// Permissions and memory type of a mapping.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Attrs {
    /// Access permissions.
    pub perms: Perms,
    /// Memory type.
    pub mem: MemType,
}

impl Attrs {
    /// Normal memory, read/write/execute.
    pub const RAM_RWX: Attrs = Attrs {
        perms: Perms::RWX,
        mem: MemType::Normal,
    };
    /// Normal memory, read/write, never executable.
    pub const RAM_RW: Attrs = Attrs {
        perms: Perms::RW,
        mem: MemType::Normal,
    };
    /// Device memory, read/write, never executable.
    pub const DEVICE_RW: Attrs = Attrs {
        perms: Perms::RW,
        mem: MemType::Device,
    };
}

/// A valid level-3 entry, as [`Stage2::walk`] reports it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Leaf {
    /// Output address: the page's address plus the offset of the walked IPA
    /// in its page.
    pub pa: PhysAddr,
    /// Permissions and memory type.
    pub attrs: Attrs,
    /// Page state kept in the software bits.
    pub state: PageState,
}

/// Why a stage-2 operation was refused. Nothing changed in the tables.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Stage2Error {
    /// An IPA or PA argument is not page-aligned.
    Unaligned {
        /// The offending address.
        addr: u64,
    },
    /// The IPA range leaves the 39-bit IPA space (or wraps).
    IpaOutOfRange {
        /// First IPA of the range.
        ipa: Ipa,
        /// Length in pages.
        pages: u64,
    },
    /// The PA range leaves the 40-bit output space (or wraps).
    PaOutOfRange {
        /// First PA of the range.
        pa: PhysAddr,
        /// Length in pages.
        pages: u64,
    },
    /// [`PageState::NoPage`] describes an absent mapping; it cannot be mapped.
    NoPageState,
    /// The page allocator ran dry while reserving table pages.
    NoMemory,
}

impl fmt::Display for Stage2Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unaligned { addr } => write!(f, "address {addr:#x} is not page-aligned"),
            Self::IpaOutOfRange { ipa, pages } => {
                write!(
                    f,
                    "{pages} pages from {ipa:?} leave the {IPA_BITS}-bit IPA space"
                )
            }
            Self::PaOutOfRange { pa, pages } => {
                write!(
                    f,
                    "{pages} pages from {pa:?} leave the {PA_BITS}-bit PA space"
                )
            }
            Self::NoPageState => write!(f, "cannot map a page in the NOPAGE state"),
            Self::NoMemory => write!(f, "out of page-table pages"),
        }
    }
}

/// Encoding of a [`PageState`] in the leaf software bits.
const fn state_to_sw(state: PageState) -> u64 {
    let code = match state {
        PageState::Owned => 0,
        PageState::SharedOwned => 1,
        PageState::SharedBorrowed => 2,
        // Never written: map refuses NoPage. Kept total for the decoder.
        PageState::NoPage => 3,
    };
    code << PTE_SW_SHIFT
}

/// Decoding of the leaf software bits. Codes 3..=15 are never written; they
/// decode as `NoPage`, which no invariant accepts on a valid leaf, so a
/// corrupted entry shows up in checks instead of being trusted.
const fn sw_to_state(pte: u64) -> PageState {
    match (pte & PTE_SW_MASK) >> PTE_SW_SHIFT {
        0 => PageState::Owned,
        1 => PageState::SharedOwned,
        2 => PageState::SharedBorrowed,
        _ => PageState::NoPage,
    }
}

const fn leaf_pte(pa: PhysAddr, attrs: Attrs, state: PageState) -> u64 {
    let mut pte = (pa.raw() & PTE_ADDR_MASK) | PTE_VALID | PTE_TYPE_TABLE_OR_PAGE | PTE_AF;
    pte |= PTE_SH_INNER;
    pte |= match attrs.mem {
        MemType::Normal => MEMATTR_NORMAL_WB << PTE_MEMATTR_SHIFT,
        MemType::Device => MEMATTR_DEVICE_NGNRE << PTE_MEMATTR_SHIFT,
    };
    if attrs.perms.contains(Perms::R) {
        pte |= PTE_S2AP_R;
    }
    if attrs.perms.contains(Perms::W) {
        pte |= PTE_S2AP_W;
    }
    if !attrs.perms.contains(Perms::X) {
        pte |= PTE_XN;
    }
    pte | state_to_sw(state)
}

const fn decode_leaf(pte: u64) -> Leaf {
    let mut perms = Perms::NONE;
    if pte & PTE_S2AP_R != 0 {
        perms = perms.union(Perms::R);
    }
    if pte & PTE_S2AP_W != 0 {
        perms = perms.union(Perms::W);
    }
    if pte & PTE_XN == 0 {
        perms = perms.union(Perms::X);
    }
    let mem = if (pte & PTE_MEMATTR_MASK) >> PTE_MEMATTR_SHIFT == MEMATTR_DEVICE_NGNRE {
        MemType::Device
    } else {
        MemType::Normal
    };
    Leaf {
        pa: PhysAddr::new(pte & PTE_ADDR_MASK),
        attrs: Attrs { perms, mem },
        state: sw_to_state(pte),
    }
}

const fn table_pte(table: PhysAddr) -> u64 {
    (table.raw() & PTE_ADDR_MASK) | PTE_VALID | PTE_TYPE_TABLE_OR_PAGE
}

const fn is_table(pte: u64) -> bool {
    pte & (PTE_VALID | PTE_TYPE_TABLE_OR_PAGE) == PTE_VALID | PTE_TYPE_TABLE_OR_PAGE
}

const fn pte_addr(pte: u64) -> PhysAddr {
    PhysAddr::new(pte & PTE_ADDR_MASK)
}

/// Changing the output address or memory type of a live entry needs
/// break-before-make; changing permissions or software bits does not.
const fn needs_bbm(old: u64, new: u64) -> bool {
    (old ^ new) & (PTE_ADDR_MASK | PTE_MEMATTR_MASK) != 0
}

/// Whether replacing `old` by `new` can leave a stale, more permissive TLB
/// entry behind (anything but a software-bits-only change).
const fn needs_tlbi(old: u64, new: u64) -> bool {
    (old ^ new) & !PTE_SW_MASK != 0
}

/// log2 of the size mapped by one entry at `level`.
fn level_shift(level: u8) -> u32 {
    PAGE_SHIFT + 9 * u32::from(LAST_LEVEL.saturating_sub(level))
}

/// Index of the entry for `addr` in a table at `level`.
fn pte_index(addr: u64, level: u8) -> usize {
    let index = (addr >> level_shift(level)) & 0x1ff;
    // `index < 512`, so the conversion cannot fail on any target.
    usize::try_from(index).unwrap_or(WORDS_PER_PAGE - 1)
}

/// End of the entry containing `addr` at `level`, clamped to `end`.
fn entry_end(addr: u64, level: u8, end: u64) -> u64 {
    let size = 1u64 << level_shift(level);
    (addr | (size - 1)).saturating_add(1).min(end)
}

/// Number of distinct `level` entries that `[start, end)` touches.
fn entries_spanned(start: u64, end: u64, level: u8) -> u64 {
    let shift = level_shift(level);
    ((end - 1) >> shift) - (start >> shift) + 1
}

/// Tables needed to map `[start, end)` below a missing entry at `level - 1`,
/// including the table for that entry: one table per touched entry at each
/// level from `level - 1` down to 2.
fn fresh_tables(start: u64, end: u64, level: u8) -> u64 {
    (level - 1..LAST_LEVEL)
        .map(|l| entries_spanned(start, end, l))
        .sum()
}

fn read_pte<H: PageAllocator + ?Sized>(hal: &H, table: PhysAddr, index: usize) -> u64 {
    hal.page(table)
        .and_then(|p| p.get(index))
        .copied()
        .unwrap_or(0)
}

fn write_pte<H: PageAllocator + ?Sized>(hal: &mut H, table: PhysAddr, index: usize, pte: u64) {
    let slot = hal.page_mut(table).and_then(|p| p.get_mut(index));
    debug_assert!(slot.is_some(), "HAL lost table page {table:?}");
    if let Some(slot) = slot {
        *slot = pte;
    }
}

/// Validated `[ipa, ipa + pages)`, with `pages > 0`.
fn check_ipa_range(ipa: Ipa, pages: u64) -> Result<(u64, u64), Stage2Error> {
    if !ipa.is_page_aligned() {
        return Err(Stage2Error::Unaligned { addr: ipa.raw() });
    }
    match ipa.checked_add_pages(pages) {
        Some(end) if end.raw() <= IPA_LIMIT => Ok((ipa.raw(), end.raw())),
        _ => Err(Stage2Error::IpaOutOfRange { ipa, pages }),
    }
}

/// Page-table pages reserved by [`Stage2::prepare_map`] for one validated
/// mapping; [`Stage2::commit_map`] consumes it and cannot fail.
///
/// The reserved pages form a chain through their first word. Dropping a
/// reservation leaks its pages: hand it to `commit_map` or
/// [`MapReservation::release`].
#[must_use = "commit it with Stage2::commit_map or give its pages back with release()"]
#[derive(Debug)]
pub struct MapReservation {
    root: PhysAddr,
    ipa: u64,
    pa: u64,
    pages: u64,
    pte_template: (Attrs, PageState),
    head: PhysAddr,
    reserved: u64,
}

impl MapReservation {
    /// Number of table pages held.
    pub fn reserved_pages(&self) -> u64 {
        self.reserved
    }

    fn push<H: PageAllocator + ?Sized>(&mut self, page: PhysAddr, hal: &mut H) {
        write_pte(hal, page, 0, self.head.raw());
        self.head = page;
        self.reserved += 1;
    }

    fn pop<H: PageAllocator + ?Sized>(&mut self, hal: &mut H) -> Option<PhysAddr> {
        if self.reserved == 0 {
            return None;
        }
        let page = self.head;
        self.head = PhysAddr::new(read_pte(hal, page, 0));
        write_pte(hal, page, 0, 0);
        self.reserved -= 1;
        Some(page)
    }

    /// Gives every reserved page back to the allocator, zeroed as it came.
    pub fn release<H: PageAllocator + ?Sized>(mut self, hal: &mut H) {
        while let Some(page) = self.pop(hal) {
            hal.free_page(page);
        }
    }
}

/// One stage-2 address space: a root table and the tables below it.
///
/// The tables live in pages from the HAL; this struct only holds the root.
/// It is deliberately not `Clone`: exactly one owner may free the tables.
#[derive(Debug)]
pub struct Stage2 {
    root: PhysAddr,
    vmid: Vmid,
    table_pages: u64,
}

impl Stage2 {
    /// An empty address space with a freshly allocated root table.
    ///
    /// # Errors
    /// [`Stage2Error::NoMemory`] if the allocator has no page.
    pub fn new<H: PageAllocator + ?Sized>(vmid: Vmid, hal: &mut H) -> Result<Self, Stage2Error> {
        let root = hal.alloc_zeroed_page().ok_or(Stage2Error::NoMemory)?;
        Ok(Self {
            root,
            vmid,
            table_pages: 1,
        })
    }

    /// Physical address of the root table (VTTBR_EL2.BADDR).
    pub fn root_pa(&self) -> PhysAddr {
        self.root
    }

    /// The VMID this address space is tagged with in the TLBs.
    pub fn vmid(&self) -> Vmid {
        self.vmid
    }

    /// The VTTBR_EL2 value: root table address and VMID (bits 55..48), CnP 0.
    pub fn vttbr_el2(&self) -> u64 {
        self.root.raw() | (u64::from(self.vmid.0) << 48)
    }

    /// Number of table pages currently held, root included.
    pub fn table_pages(&self) -> u64 {
        self.table_pages
    }

    /// Validates a mapping of `pages` pages from `ipa` to `pa` and reserves
    /// every table page it will need. Changes nothing in the tables.
    ///
    /// # Errors
    /// Alignment and range errors, [`Stage2Error::NoPageState`], and
    /// [`Stage2Error::NoMemory`] (after giving back what was reserved).
    pub fn prepare_map<H: PageAllocator + ?Sized>(
        &self,
        ipa: Ipa,
        pa: PhysAddr,
        pages: u64,
        attrs: Attrs,
        state: PageState,
        hal: &mut H,
    ) -> Result<MapReservation, Stage2Error> {
        if state == PageState::NoPage {
            return Err(Stage2Error::NoPageState);
        }
        if !pa.is_page_aligned() {
            return Err(Stage2Error::Unaligned { addr: pa.raw() });
        }
        let (start, end) = check_ipa_range(ipa, pages)?;
        match pa.checked_add_pages(pages) {
            Some(pa_end) if pa_end.raw() <= PA_LIMIT => {}
            _ => return Err(Stage2Error::PaOutOfRange { pa, pages }),
        }
        let mut res = MapReservation {
            root: self.root,
            ipa: start,
            pa: pa.raw(),
            pages,
            pte_template: (attrs, state),
            head: PhysAddr::new(0),
            reserved: 0,
        };
        if start == end {
            return Ok(res);
        }
        let needed = self.missing_tables(self.root, START_LEVEL, start, end, hal);
        for _ in 0..needed {
            match hal.alloc_zeroed_page() {
                Some(page) => res.push(page, hal),
                None => {
                    res.release(hal);
                    return Err(Stage2Error::NoMemory);
                }
            }
        }
        Ok(res)
    }

    /// Performs a mapping prepared by [`prepare_map`](Self::prepare_map).
    /// Cannot fail: every table page it needs is in the reservation (tables
    /// are never freed before [`destroy`](Self::destroy)); unused pages go
    /// back to the allocator.
    ///
    /// Existing leaves in the range are replaced: break-before-make when the
    /// output address or memory type changes, a TLB invalidation when
    /// permissions change, nothing when only the page state changes.
    pub fn commit_map<H: Hal + ?Sized>(&mut self, mut res: MapReservation, hal: &mut H) {
        debug_assert_eq!(res.root, self.root, "reservation made for another stage-2");
        if res.root != self.root {
            res.release(hal);
            return;
        }
        let (attrs, state) = res.pte_template;
        let mut flush = false;
        for i in 0..res.pages {
            let offset = i << PAGE_SHIFT;
            let ipa = res.ipa + offset;
            let pa = PhysAddr::new(res.pa + offset);
            let Some(table) = self.leaf_table_for_map(ipa, &mut res, hal) else {
                continue;
            };
            let index = pte_index(ipa, LAST_LEVEL);
            let old = read_pte(hal, table, index);
            let new = leaf_pte(pa, attrs, state);
            if old & PTE_VALID != 0 && needs_bbm(old, new) {
                write_pte(hal, table, index, 0);
                hal.invalidate_ipa_range(self.vmid, Ipa::new(ipa), 1);
            } else if old & PTE_VALID != 0 && needs_tlbi(old, new) {
                flush = true;
            }
            write_pte(hal, table, index, new);
        }
        if flush {
            hal.invalidate_ipa_range(self.vmid, Ipa::new(res.ipa), res.pages);
        }
        res.release(hal);
    }

    /// Maps `pages` pages from `ipa` to `pa` (prepare, then commit). On any
    /// error, including running out of table pages, nothing changes.
    ///
    /// # Errors
    /// As [`prepare_map`](Self::prepare_map).
    pub fn map<H: Hal + ?Sized>(
        &mut self,
        ipa: Ipa,
        pa: PhysAddr,
        pages: u64,
        attrs: Attrs,
        state: PageState,
        hal: &mut H,
    ) -> Result<(), Stage2Error> {
        let res = self.prepare_map(ipa, pa, pages, attrs, state, hal)?;
        self.commit_map(res, hal);
        Ok(())
    }

    /// Removes every leaf in `[ipa, ipa + pages)` (absent ones are skipped),
    /// then invalidates the range in the TLBs if anything was removed. Never
    /// allocates and never frees tables.
    ///
    /// # Errors
    /// Alignment and range errors only; then nothing changes.
    pub fn unmap<H: Hal + ?Sized>(
        &mut self,
        ipa: Ipa,
        pages: u64,
        hal: &mut H,
    ) -> Result<(), Stage2Error> {
        let (start, end) = check_ipa_range(ipa, pages)?;
        if start < end && self.clear_range(self.root, START_LEVEL, start, end, hal) {
            hal.invalidate_ipa_range(self.vmid, ipa, pages);
        }
        Ok(())
    }

    /// The leaf that translates `ipa`, if any.
    pub fn walk<H: PageAllocator + ?Sized>(&self, ipa: Ipa, hal: &H) -> Option<Leaf> {
        if ipa.raw() >= IPA_LIMIT {
            return None;
        }
        let mut table = self.root;
        for level in START_LEVEL..LAST_LEVEL {
            let pte = read_pte(hal, table, pte_index(ipa.raw(), level));
            if !is_table(pte) {
                return None;
            }
            table = pte_addr(pte);
        }
        let pte = read_pte(hal, table, pte_index(ipa.raw(), LAST_LEVEL));
        (pte & PTE_VALID != 0).then(|| {
            let leaf = decode_leaf(pte);
            Leaf {
                pa: leaf.pa.checked_add(ipa.page_offset()).unwrap_or(leaf.pa),
                ..leaf
            }
        })
    }

    /// The first mapped page at or after `from`, with its leaf. Skips empty
    /// subtrees, so a sweep over a sparse space stays cheap.
    pub fn next_leaf<H: PageAllocator + ?Sized>(&self, from: Ipa, hal: &H) -> Option<(Ipa, Leaf)> {
        let start = from.page_align_down().raw();
        if start >= IPA_LIMIT {
            return None;
        }
        let ipa = Ipa::new(Self::find_leaf(
            self.root,
            START_LEVEL,
            start,
            IPA_LIMIT,
            hal,
        )?);
        Some((ipa, self.walk(ipa, hal)?))
    }

    /// Frees every table page, root included, after invalidating the VMID.
    /// The caller must have made sure no CPU still runs with this VTTBR.
    pub fn destroy<H: Hal + ?Sized>(self, hal: &mut H) {
        hal.invalidate_vmid(self.vmid);
        Self::free_tree(self.root, START_LEVEL, hal);
    }

    fn missing_tables<H: PageAllocator + ?Sized>(
        &self,
        table: PhysAddr,
        level: u8,
        start: u64,
        end: u64,
        hal: &H,
    ) -> u64 {
        if level >= LAST_LEVEL {
            return 0;
        }
        let mut needed = 0;
        let mut addr = start;
        while addr < end {
            let next = entry_end(addr, level, end);
            let pte = read_pte(hal, table, pte_index(addr, level));
            needed += if is_table(pte) {
                self.missing_tables(pte_addr(pte), level + 1, addr, next, hal)
            } else {
                fresh_tables(addr, next, level + 1)
            };
            addr = next;
        }
        needed
    }

    /// The level-3 table for `ipa`, installing missing tables from `res`.
    fn leaf_table_for_map<H: PageAllocator + ?Sized>(
        &mut self,
        ipa: u64,
        res: &mut MapReservation,
        hal: &mut H,
    ) -> Option<PhysAddr> {
        let mut table = self.root;
        for level in START_LEVEL..LAST_LEVEL {
            let index = pte_index(ipa, level);
            let pte = read_pte(hal, table, index);
            if is_table(pte) {
                table = pte_addr(pte);
                continue;
            }
            // Unreachable while the reservation matches the tables (see
            // `commit_map`); the fallback keeps a broken caller from panicking.
            let page = res.pop(hal).or_else(|| hal.alloc_zeroed_page());
            debug_assert!(page.is_some(), "stage-2 reservation fell short");
            let page = page?;
            write_pte(hal, table, index, table_pte(page));
            self.table_pages += 1;
            table = page;
        }
        Some(table)
    }

    fn clear_range<H: PageAllocator + ?Sized>(
        &self,
        table: PhysAddr,
        level: u8,
        start: u64,
        end: u64,
        hal: &mut H,
    ) -> bool {
        let mut changed = false;
        let mut addr = start;
        while addr < end {
            let next = entry_end(addr, level, end);
            let index = pte_index(addr, level);
            let pte = read_pte(hal, table, index);
            if level == LAST_LEVEL {
                if pte & PTE_VALID != 0 {
                    write_pte(hal, table, index, 0);
                    changed = true;
                }
            } else if is_table(pte) {
                changed |= self.clear_range(pte_addr(pte), level + 1, addr, next, hal);
            }
            addr = next;
        }
        changed
    }

    fn find_leaf<H: PageAllocator + ?Sized>(
        table: PhysAddr,
        level: u8,
        start: u64,
        end: u64,
        hal: &H,
    ) -> Option<u64> {
        let mut addr = start;
        while addr < end {
            let next = entry_end(addr, level, end);
            let pte = read_pte(hal, table, pte_index(addr, level));
            if level == LAST_LEVEL {
                if pte & PTE_VALID != 0 {
                    return Some(addr);
                }
            } else if is_table(pte) {
                if let Some(found) = Self::find_leaf(pte_addr(pte), level + 1, addr, next, hal) {
                    return Some(found);
                }
            }
            addr = next;
        }
        None
    }

    fn free_tree<H: PageAllocator + ?Sized>(table: PhysAddr, level: u8, hal: &mut H) {
        if level < LAST_LEVEL {
            for index in 0..WORDS_PER_PAGE {
                let pte = read_pte(hal, table, index);
                if is_table(pte) {
                    Self::free_tree(pte_addr(pte), level + 1, hal);
                }
            }
        }
        hal.free_page(table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::PAGE_SIZE;
    use crate::hal::{FakeHal, PageWords};

    const POOL: usize = 64;

    fn mem() -> Vec<PageWords> {
        vec![[0; WORDS_PER_PAGE]; POOL]
    }

    fn new_s2(hal: &mut FakeHal<'_>) -> Stage2 {
        match Stage2::new(Vmid(3), hal) {
            Ok(s2) => s2,
            Err(e) => panic!("root allocation failed: {e}"),
        }
    }

    #[test]
    fn vtcr_value_matches_documented_fields() {
        let v = vtcr_el2();
        assert_eq!(v & 0x3f, 25, "T0SZ");
        assert_eq!((v >> 6) & 3, 1, "SL0: start at level 1");
        assert_eq!((v >> 8) & 3, 1, "IRGN0");
        assert_eq!((v >> 10) & 3, 1, "ORGN0");
        assert_eq!((v >> 12) & 3, 3, "SH0");
        assert_eq!((v >> 14) & 3, 0, "TG0 4K");
        assert_eq!((v >> 16) & 7, 2, "PS 40 bits");
        assert_eq!((v >> 19) & 1, 0, "VS: 8-bit VMID");
        assert_eq!(v >> 31, 1, "RES1, nothing above");
        assert_eq!(v, 0x8002_3559);
        assert_eq!(1u64 << (64 - VTCR_T0SZ), IPA_LIMIT);
    }

    #[test]
    fn leaf_encoding_round_trips() {
        let pa = PhysAddr::new(0xab_cdef_f000);
        for perms in (0..8).map(Perms) {
            for mem in [MemType::Normal, MemType::Device] {
                for state in [
                    PageState::Owned,
                    PageState::SharedOwned,
                    PageState::SharedBorrowed,
                ] {
                    let attrs = Attrs { perms, mem };
                    let pte = leaf_pte(pa, attrs, state);
                    assert_eq!(pte & 3, 3);
                    assert_ne!(pte & PTE_AF, 0);
                    assert_eq!(decode_leaf(pte), Leaf { pa, attrs, state });
                }
            }
        }
        let pte = leaf_pte(pa, Attrs::DEVICE_RW, PageState::SharedOwned);
        assert_eq!((pte >> 2) & 0xf, MEMATTR_DEVICE_NGNRE);
        assert_eq!((pte >> 54) & 1, 1, "XN");
        assert_eq!((pte >> 55) & 0xf, 1, "software bits hold the state");
        let pte = leaf_pte(pa, Attrs::RAM_RWX, PageState::Owned);
        assert_eq!((pte >> 2) & 0xf, MEMATTR_NORMAL_WB);
        assert_eq!(pte & (3 << 6), 3 << 6, "S2AP RW");
        assert_eq!(pte & PTE_XN, 0);
        assert_eq!(format!("{:?}", Perms::R | Perms::X), "r-x");
    }

    #[test]
    fn map_walk_unmap_destroy() {
        let mut m = mem();
        let mut hal = FakeHal::new(PhysAddr::new(0x8000_0000), &mut m, POOL);
        let mut s2 = new_s2(&mut hal);
        assert_eq!(s2.vttbr_el2(), s2.root_pa().raw() | (3 << 48));
        let ipa = Ipa::new(0x4000_0000 - 2 * PAGE_SIZE); // straddles a 1 GiB boundary
        let pa = PhysAddr::new(0x1_2345_6000);
        let r = s2.map(ipa, pa, 4, Attrs::RAM_RW, PageState::SharedOwned, &mut hal);
        assert_eq!(r, Ok(()));
        // root + 2 level-2 tables + 2 level-3 tables
        assert_eq!(s2.table_pages(), 5);
        assert_eq!(hal.live_pages(), 5);
        for i in 0..4 {
            let leaf = s2.walk(Ipa::new(ipa.raw() + i * PAGE_SIZE + 0x10), &hal);
            assert_eq!(
                leaf,
                Some(Leaf {
                    pa: PhysAddr::new(pa.raw() + i * PAGE_SIZE + 0x10),
                    attrs: Attrs::RAM_RW,
                    state: PageState::SharedOwned
                })
            );
        }
        assert_eq!(s2.walk(Ipa::new(ipa.raw() + 4 * PAGE_SIZE), &hal), None);
        assert_eq!(s2.walk(Ipa::new(ipa.raw() - PAGE_SIZE), &hal), None);
        assert_eq!(s2.walk(Ipa::new(IPA_LIMIT), &hal), None);
        assert_eq!(s2.next_leaf(Ipa::new(0), &hal).map(|(i, _)| i), Some(ipa));
        assert_eq!(
            s2.next_leaf(Ipa::new(ipa.raw() + 3 * PAGE_SIZE), &hal)
                .map(|(i, _)| i),
            Some(Ipa::new(ipa.raw() + 3 * PAGE_SIZE))
        );

        let before = hal.tlbi_range_calls();
        assert_eq!(
            s2.unmap(Ipa::new(ipa.raw() + PAGE_SIZE), 2, &mut hal),
            Ok(())
        );
        assert_eq!(hal.tlbi_range_calls(), before + 1);
        assert!(s2.walk(ipa, &hal).is_some());
        assert!(s2.walk(Ipa::new(ipa.raw() + PAGE_SIZE), &hal).is_none());
        assert!(s2.walk(Ipa::new(ipa.raw() + 2 * PAGE_SIZE), &hal).is_none());
        assert!(s2.walk(Ipa::new(ipa.raw() + 3 * PAGE_SIZE), &hal).is_some());
        // Unmapping nothing needs no TLB maintenance.
        assert_eq!(s2.unmap(Ipa::new(0x100_0000), 8, &mut hal), Ok(()));
        assert_eq!(hal.tlbi_range_calls(), before + 1);
        assert_eq!(s2.table_pages(), 5, "unmap keeps tables");

        s2.destroy(&mut hal);
        assert_eq!(hal.live_pages(), 0);
        assert_eq!(hal.tlbi_vmid_calls(), 1);
    }

    #[test]
    fn argument_errors_change_nothing() {
        let mut m = mem();
        let mut hal = FakeHal::new(PhysAddr::new(0), &mut m, POOL);
        let mut s2 = new_s2(&mut hal);
        let a = Attrs::RAM_RWX;
        let o = PageState::Owned;
        let cases = [
            (
                Ipa::new(0x1001),
                PhysAddr::new(0),
                1,
                o,
                Stage2Error::Unaligned { addr: 0x1001 },
            ),
            (
                Ipa::new(0),
                PhysAddr::new(0x10),
                1,
                o,
                Stage2Error::Unaligned { addr: 0x10 },
            ),
            (
                Ipa::new(IPA_LIMIT - PAGE_SIZE),
                PhysAddr::new(0),
                2,
                o,
                Stage2Error::IpaOutOfRange {
                    ipa: Ipa::new(IPA_LIMIT - PAGE_SIZE),
                    pages: 2,
                },
            ),
            (
                Ipa::new(0),
                PhysAddr::new(0),
                u64::MAX,
                o,
                Stage2Error::IpaOutOfRange {
                    ipa: Ipa::new(0),
                    pages: u64::MAX,
                },
            ),
            (
                Ipa::new(0),
                PhysAddr::new(PA_LIMIT),
                1,
                o,
                Stage2Error::PaOutOfRange {
                    pa: PhysAddr::new(PA_LIMIT),
                    pages: 1,
                },
            ),
            (
                Ipa::new(0),
                PhysAddr::new(0),
                1,
                PageState::NoPage,
                Stage2Error::NoPageState,
            ),
        ];
        let snapshot = hal.memory().to_vec();
        for (ipa, pa, pages, state, err) in cases {
            assert_eq!(s2.map(ipa, pa, pages, a, state, &mut hal), Err(err));
        }
        assert_eq!(
            s2.unmap(Ipa::new(IPA_LIMIT), 1, &mut hal),
            Err(Stage2Error::IpaOutOfRange {
                ipa: Ipa::new(IPA_LIMIT),
                pages: 1
            })
        );
        assert_eq!(hal.memory(), &snapshot[..]);
        assert_eq!(hal.live_pages(), 1);
        // Zero pages is a valid no-op.
        assert_eq!(
            s2.map(Ipa::new(0), PhysAddr::new(0), 0, a, o, &mut hal),
            Ok(())
        );
        assert_eq!(s2.unmap(Ipa::new(0), 0, &mut hal), Ok(()));
        s2.destroy(&mut hal);
        assert_eq!(hal.live_pages(), 0);
    }

    #[test]
    fn oom_during_prepare_changes_nothing_and_leaks_nothing() {
        let mut m = mem();
        let mut hal = FakeHal::new(PhysAddr::new(0), &mut m, POOL);
        let mut s2 = new_s2(&mut hal);
        // Two 2 MiB regions in two 1 GiB regions: 2 level-2 + 2 level-3 tables.
        let ipa = Ipa::new(0x4000_0000 - PAGE_SIZE);
        for budget in 0..4 {
            let snapshot = hal.memory().to_vec();
            let bitmap = hal.allocation_bitmap().to_vec();
            hal.fail_after(budget);
            let r = s2.map(
                ipa,
                PhysAddr::new(0),
                2,
                Attrs::RAM_RWX,
                PageState::Owned,
                &mut hal,
            );
            assert_eq!(r, Err(Stage2Error::NoMemory));
            assert_eq!(hal.memory(), &snapshot[..], "budget {budget}");
            assert_eq!(hal.allocation_bitmap(), &bitmap[..]);
            assert_eq!(s2.table_pages(), 1);
        }
        hal.fail_after(4);
        let r = s2.map(
            ipa,
            PhysAddr::new(0),
            2,
            Attrs::RAM_RWX,
            PageState::Owned,
            &mut hal,
        );
        assert_eq!(r, Ok(()));
        assert_eq!(s2.table_pages(), 5);
        // Re-mapping the same range needs no new table even when OOM.
        hal.set_oom(true);
        let r = s2.map(
            ipa,
            PhysAddr::new(0),
            2,
            Attrs::RAM_RW,
            PageState::Owned,
            &mut hal,
        );
        assert_eq!(r, Ok(()));
        hal.set_oom(false);
        s2.destroy(&mut hal);
        assert_eq!(hal.live_pages(), 0);
    }

    #[test]
    fn remap_uses_bbm_or_tlbi_only_when_needed() {
        let mut m = mem();
        let mut hal = FakeHal::new(PhysAddr::new(0), &mut m, POOL);
        let mut s2 = new_s2(&mut hal);
        let ipa = Ipa::new(0x20_0000);
        let pa = PhysAddr::new(0x4000_0000);
        let mut map = |hal: &mut FakeHal<'_>, pa, attrs, state| {
            let r = s2.map(ipa, pa, 1, attrs, state, hal);
            assert_eq!(r, Ok(()));
        };
        map(&mut hal, pa, Attrs::RAM_RWX, PageState::Owned);
        assert_eq!(hal.tlbi_range_calls(), 0, "invalid -> valid needs no TLBI");
        map(&mut hal, pa, Attrs::RAM_RWX, PageState::SharedOwned);
        assert_eq!(hal.tlbi_range_calls(), 0, "state-only change needs no TLBI");
        map(&mut hal, pa, Attrs::RAM_RW, PageState::SharedOwned);
        assert_eq!(hal.tlbi_range_calls(), 1, "permission change");
        map(
            &mut hal,
            PhysAddr::new(0x5000_0000),
            Attrs::RAM_RW,
            PageState::SharedOwned,
        );
        assert_eq!(
            hal.tlbi_range_calls(),
            2,
            "new output address: break-before-make"
        );
        map(
            &mut hal,
            PhysAddr::new(0x5000_0000),
            Attrs::DEVICE_RW,
            PageState::SharedOwned,
        );
        assert_eq!(
            hal.tlbi_range_calls(),
            3,
            "new memory type: break-before-make"
        );
        // Two pages, only the second moves: one single-page invalidation
        // (the break), no range flush.
        let two = |pa2: u64, hal: &mut FakeHal<'_>, s2: &mut Stage2| {
            let a = Attrs::RAM_RW;
            let r1 = s2.map(
                Ipa::new(0x40_0000),
                PhysAddr::new(0x7000_0000),
                1,
                a,
                PageState::Owned,
                hal,
            );
            let r2 = s2.map(
                Ipa::new(0x40_1000),
                PhysAddr::new(pa2),
                1,
                a,
                PageState::Owned,
                hal,
            );
            assert_eq!((r1, r2), (Ok(()), Ok(())));
        };
        two(0x7000_1000, &mut hal, &mut s2);
        let r = s2.map(
            Ipa::new(0x40_0000),
            PhysAddr::new(0x7000_0000),
            2,
            Attrs::RAM_RW,
            PageState::Owned,
            &mut hal,
        );
        assert_eq!(r, Ok(()));
        assert_eq!(hal.tlbi_range_calls(), 3, "identical remap");
        two(0x7000_8000, &mut hal, &mut s2);
        assert_eq!(hal.tlbi_range_calls(), 4);
        assert_eq!(hal.last_tlbi(), Some((Vmid(3), Ipa::new(0x40_1000), 1)));
        let r = s2.map(
            Ipa::new(0x40_0000),
            PhysAddr::new(0x7000_0000),
            2,
            Attrs::RAM_RW,
            PageState::Owned,
            &mut hal,
        );
        assert_eq!(r, Ok(()));
        assert_eq!(hal.tlbi_range_calls(), 5);
        assert_eq!(
            hal.last_tlbi(),
            Some((Vmid(3), Ipa::new(0x40_1000), 1)),
            "break, not a range flush"
        );
        s2.destroy(&mut hal);
        assert_eq!(hal.live_pages(), 0);
    }

    #[test]
    fn reservation_release_and_foreign_commit() {
        let mut m = mem();
        let mut hal = FakeHal::new(PhysAddr::new(0), &mut m, POOL);
        let s2 = new_s2(&mut hal);
        let snapshot = hal.memory().to_vec();
        let res = s2.prepare_map(
            Ipa::new(0),
            PhysAddr::new(0),
            1,
            Attrs::RAM_RW,
            PageState::Owned,
            &mut hal,
        );
        let Ok(res) = res else {
            panic!("prepare failed: {res:?}")
        };
        assert_eq!(res.reserved_pages(), 2);
        assert_eq!(hal.live_pages(), 3);
        res.release(&mut hal);
        assert_eq!(hal.live_pages(), 1);
        assert_eq!(hal.memory(), &snapshot[..], "released pages are zero again");
        s2.destroy(&mut hal);
    }

    #[test]
    fn large_sparse_ranges_are_cheap_to_scan() {
        let mut m = mem();
        let mut hal = FakeHal::new(PhysAddr::new(0), &mut m, POOL);
        let mut s2 = new_s2(&mut hal);
        let far = Ipa::new(IPA_LIMIT - PAGE_SIZE);
        assert_eq!(
            s2.map(
                far,
                PhysAddr::new(0),
                1,
                Attrs::RAM_RW,
                PageState::Owned,
                &mut hal
            ),
            Ok(())
        );
        assert_eq!(s2.next_leaf(Ipa::new(0), &hal).map(|(i, _)| i), Some(far));
        // Unmapping the whole space walks only the tables that exist.
        assert_eq!(
            s2.unmap(Ipa::new(0), IPA_LIMIT / PAGE_SIZE, &mut hal),
            Ok(())
        );
        assert_eq!(s2.next_leaf(Ipa::new(0), &hal), None);
        s2.destroy(&mut hal);
        assert_eq!(hal.live_pages(), 0);
    }
}
