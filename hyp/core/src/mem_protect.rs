//! Page ownership: the database and every transition between owners.
//!
//! This is the only module that changes who may touch a page. It follows the
//! shape of pKVM's `mem_protect.c` after v6.14: one explicit function per
//! (initiator, completer) pair, each of which
//!
//! 1. **checks** both sides (database state, stage-2 state, argument ranges)
//!    and reserves every page-table page it will need — changing nothing, so
//!    any error leaves the database and all tables byte-for-byte as they were;
//! 2. **commits** both sides, which cannot fail once the checks passed
//!    (a failing commit step is a bug and trips a `debug_assert`).
//!
//! # States
//!
//! Every managed page has one [`Owner`] and a [`PageState`] per component:
//! `Owned` (exclusive), `SharedOwned` (owner, lent out), `SharedBorrowed`
//! (borrower), `NoPage` (no access). The database ([`PageDb`]) keeps the
//! owner, the host's state and the hyp's state per frame; a guest's state is
//! kept in the software bits of its stage-2 leaves (as pKVM does), and the
//! host's is mirrored in its stage-2 leaves too.
//!
//! A host page lent to a guest ([`MemProtect::host_share_guest`], the memory
//! of a normal VM) is the one row whose borrower the database does not name:
//! its hyp column says `NoPage`, and exactly one guest maps it
//! `SharedBorrowed` (the host cannot lend a page that is not `Owned`, so
//! there is never a second borrower).
//!
//! The host stage-2 is an identity map kept in step with the database:
//! host `Owned`/`SharedOwned` pages are mapped normal RWX, host
//! `SharedBorrowed` pages (a guest's shared pages) normal RW, everything else
//! is unmapped. A host access to an unmapped page faults to the hyp.
//!
//! Consistent rows (anything else is a bug, see [`MemProtect::check_invariants`]):
//!
//! | owner    | host state       | hyp state        | guest state (its stage-2) |
//! |----------|------------------|------------------|---------------------------|
//! | Host     | `Owned`          | `NoPage`         | —                         |
//! | Host     | `SharedOwned`    | `SharedBorrowed` | —                         |
//! | Host     | `SharedOwned`    | `NoPage`         | `SharedBorrowed` (one guest) |
//! | Hyp      | `NoPage`         | `Owned`          | —                         |
//! | Guest(h) | `NoPage`         | `NoPage`         | `Owned`                   |
//! | Guest(h) | `SharedBorrowed` | `NoPage`         | `SharedOwned`             |
//!
//! # Locking
//!
//! There are no locks in this crate; exclusive access is expressed with
//! `&mut`. The arch glue wraps [`MemProtect`] (the database and the host
//! stage-2: the host component) and each [`GuestMem`] in locks and takes them
//! in the order of the arguments: **host, then hyp, then guest** (pKVM's
//! `enum pkvm_component_id` order). The hyp's column lives in the database,
//! under the host lock, until the hyp gets a stage-1 of its own.

use core::fmt;
use core::ops::Range;

use crate::abi;
use crate::addr::{Ipa, Pfn, PfnRange, PhysAddr, PAGE_SHIFT};
use crate::hal::{Hal, PageAllocator, WORDS_PER_PAGE};
use crate::stage2::{Attrs, Stage2, Stage2Error, Vmid, IPA_LIMIT};

/// A component's view of a page (pKVM's `PKVM_PAGE_*` / `PKVM_NOPAGE`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum PageState {
    /// Owned and not shared: only the owner may access it.
    Owned,
    /// Owned, and lent to another component that holds it `SharedBorrowed`.
    SharedOwned,
    /// Borrowed from the owner, who holds it `SharedOwned`.
    SharedBorrowed,
    /// No access.
    NoPage,
}

impl PageState {
    /// Whether the state is one side of a share.
    pub const fn is_shared(self) -> bool {
        matches!(self, Self::SharedOwned | Self::SharedBorrowed)
    }

    /// The ABI code ([`abi::state`]).
    pub const fn abi_code(self) -> u64 {
        match self {
            Self::Owned => abi::state::OWNED,
            Self::SharedOwned => abi::state::SHARED_OWNED,
            Self::SharedBorrowed => abi::state::SHARED_BORROWED,
            Self::NoPage => abi::state::NOPAGE,
        }
    }
}

/// Handle of a guest VM, as the host names it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct VmHandle(u16);

impl VmHandle {
    /// Wraps a raw handle.
    pub const fn new(raw: u16) -> Self {
        Self(raw)
    }

    /// The raw handle.
    pub const fn raw(self) -> u16 {
        self.0
    }
}

/// A component that can own pages. The variant order is the lock order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Owner {
    /// The host kernel (EL1) and its userspace.
    Host,
    /// The hypervisor (EL2).
    Hyp,
    /// A guest VM.
    Guest(VmHandle),
}

impl Owner {
    /// The ABI code ([`abi::owner`]).
    pub const fn abi_code(self) -> u64 {
        match self {
            Self::Host => abi::owner::HOST,
            Self::Hyp => abi::owner::HYP,
            Self::Guest(_) => abi::owner::GUEST,
        }
    }
}

/// One frame's row in the page database.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PageMeta {
    owner: Owner,
    host_state: PageState,
    hyp_state: PageState,
    host_donation: bool,
}

impl PageMeta {
    /// A host-owned page: the value to fill storage with before
    /// [`MemProtect::new`] (which overwrites every row anyway).
    pub const HOST_OWNED: PageMeta = PageMeta {
        owner: Owner::Host,
        host_state: PageState::Owned,
        hyp_state: PageState::NoPage,
        host_donation: false,
    };

    const HYP_OWNED: PageMeta = PageMeta {
        owner: Owner::Hyp,
        host_state: PageState::NoPage,
        hyp_state: PageState::Owned,
        host_donation: false,
    };

    /// Who owns the page.
    pub const fn owner(&self) -> Owner {
        self.owner
    }

    /// The host's state.
    pub const fn host_state(&self) -> PageState {
        self.host_state
    }

    /// The hypervisor's state.
    pub const fn hyp_state(&self) -> PageState {
        self.hyp_state
    }

    /// Whether this is a hyp page that the host donated and the hyp has not
    /// put to use, so the host may take it back with
    /// [`MemProtect::hyp_donate_host`].
    pub const fn is_host_donation(&self) -> bool {
        self.host_donation
    }

    /// Whether the row is one of the consistent rows of the module table.
    pub const fn is_consistent(&self) -> bool {
        use PageState::{NoPage, Owned, SharedBorrowed, SharedOwned};
        match self.owner {
            Owner::Host => {
                !self.host_donation
                    && matches!(
                        (self.host_state, self.hyp_state),
                        (Owned, NoPage) | (SharedOwned, SharedBorrowed) | (SharedOwned, NoPage)
                    )
            }
            Owner::Hyp => matches!((self.host_state, self.hyp_state), (NoPage, Owned)),
            Owner::Guest(_) => {
                !self.host_donation
                    && matches!(self.hyp_state, NoPage)
                    && matches!(self.host_state, NoPage | SharedBorrowed)
            }
        }
    }
}

/// Why a transition was refused. Nothing changed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MemProtectError {
    /// A page count of zero.
    ZeroCount,
    /// Frames outside the managed range (or a range that wraps).
    OutOfRange {
        /// First frame asked for.
        pfn: Pfn,
        /// Number of frames asked for.
        count: u64,
    },
    /// An address that must be page-aligned is not.
    Unaligned {
        /// The address.
        addr: u64,
    },
    /// An IPA range outside the stage-2 IPA space.
    IpaOutOfRange {
        /// First IPA.
        ipa: Ipa,
        /// Number of pages.
        pages: u64,
    },
    /// The initiator does not own the page.
    NotOwned {
        /// The frame.
        pfn: Pfn,
        /// Its actual owner.
        owner: Owner,
    },
    /// One side is not in the state the transition needs.
    BadState {
        /// The frame.
        pfn: Pfn,
        /// The side whose state is wrong.
        component: Owner,
        /// Its state.
        state: PageState,
    },
    /// A hyp page the host did not donate, or that the hyp uses.
    NotDonated {
        /// The frame.
        pfn: Pfn,
    },
    /// The guest IPA is already mapped.
    IpaMapped {
        /// The IPA.
        ipa: Ipa,
    },
    /// Nothing is mapped at the guest IPA.
    IpaNotMapped {
        /// The IPA.
        ipa: Ipa,
    },
    /// An MMIO range overlaps managed RAM.
    OverlapsRam {
        /// First overlapping frame.
        pfn: Pfn,
    },
    /// The HAL cannot reach the page's contents (to zero it).
    NoAccess {
        /// The frame.
        pfn: Pfn,
    },
    /// Out of page-table pages.
    NoMemory,
    /// The table code refused an internal request (a bug).
    Internal(Stage2Error),
}

impl MemProtectError {
    /// The SMCCC status for `x0` ([`abi::ret`]).
    pub const fn ret_code(&self) -> u64 {
        match self {
            Self::ZeroCount
            | Self::OutOfRange { .. }
            | Self::Unaligned { .. }
            | Self::IpaOutOfRange { .. }
            | Self::OverlapsRam { .. } => abi::ret::INVALID_PARAMETER,
            Self::NotOwned { .. }
            | Self::BadState { .. }
            | Self::NotDonated { .. }
            | Self::IpaMapped { .. }
            | Self::IpaNotMapped { .. }
            | Self::NoAccess { .. }
            | Self::Internal(_) => abi::ret::DENIED,
            Self::NoMemory => abi::ret::NO_MEMORY,
        }
    }

    /// The ABI result registers `x0..x3`: status, detail ([`abi::err`]),
    /// the frame or address concerned, and extra detail.
    pub const fn to_regs(&self) -> [u64; 4] {
        let (detail, where_, extra) = match *self {
            Self::ZeroCount => (abi::err::ZERO_COUNT, 0, 0),
            Self::OutOfRange { pfn, count } => (abi::err::OUT_OF_RANGE, pfn.raw(), count),
            Self::Unaligned { addr } => (abi::err::UNALIGNED, addr, 0),
            Self::IpaOutOfRange { ipa, pages } => (abi::err::IPA_OUT_OF_RANGE, ipa.raw(), pages),
            Self::NotOwned { pfn, owner } => (abi::err::NOT_OWNED, pfn.raw(), owner.abi_code()),
            Self::BadState {
                pfn,
                component,
                state,
            } => (
                abi::err::BAD_STATE,
                pfn.raw(),
                component.abi_code() << 8 | state.abi_code(),
            ),
            Self::NotDonated { pfn } => (abi::err::NOT_DONATED, pfn.raw(), 0),
            Self::IpaMapped { ipa } => (abi::err::IPA_MAPPED, ipa.raw(), 0),
            Self::IpaNotMapped { ipa } => (abi::err::IPA_NOT_MAPPED, ipa.raw(), 0),
            Self::OverlapsRam { pfn } => (abi::err::OVERLAPS_RAM, pfn.raw(), 0),
            Self::NoAccess { pfn } => (abi::err::NO_ACCESS, pfn.raw(), 0),
            Self::NoMemory => (abi::err::NO_MEMORY, 0, 0),
            Self::Internal(_) => (abi::err::INTERNAL, 0, 0),
        };
        [self.ret_code(), detail, where_, extra]
    }
}

impl fmt::Display for MemProtectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroCount => write!(f, "page count is zero"),
            Self::OutOfRange { pfn, count } => {
                write!(f, "{count} frames from {pfn} are not all managed RAM")
            }
            Self::Unaligned { addr } => write!(f, "address {addr:#x} is not page-aligned"),
            Self::IpaOutOfRange { ipa, pages } => {
                write!(f, "{pages} pages from {ipa} leave the IPA space")
            }
            Self::NotOwned { pfn, owner } => write!(f, "{pfn} is owned by {owner:?}"),
            Self::BadState {
                pfn,
                component,
                state,
            } => {
                write!(f, "{pfn} is {state:?} for {component:?}")
            }
            Self::NotDonated { pfn } => write!(f, "{pfn} is not an unused host donation"),
            Self::IpaMapped { ipa } => write!(f, "{ipa} is already mapped"),
            Self::IpaNotMapped { ipa } => write!(f, "nothing is mapped at {ipa}"),
            Self::OverlapsRam { pfn } => write!(f, "MMIO range overlaps managed RAM at {pfn}"),
            Self::NoAccess { pfn } => write!(f, "the HAL cannot reach {pfn}"),
            Self::NoMemory => write!(f, "out of page-table pages"),
            Self::Internal(e) => write!(f, "internal stage-2 error: {e}"),
        }
    }
}

impl From<Stage2Error> for MemProtectError {
    fn from(e: Stage2Error) -> Self {
        match e {
            Stage2Error::Unaligned { addr } => Self::Unaligned { addr },
            Stage2Error::IpaOutOfRange { ipa, pages } => Self::IpaOutOfRange { ipa, pages },
            Stage2Error::PaOutOfRange { pa, pages } => Self::OutOfRange {
                pfn: pa.pfn(),
                count: pages,
            },
            Stage2Error::NoMemory => Self::NoMemory,
            Stage2Error::NoPageState => Self::Internal(e),
        }
    }
}

/// Result of a transition.
pub type Result<T> = core::result::Result<T, MemProtectError>;

/// Records that a commit step, which cannot fail once its checks passed, did
/// not fail (pKVM's `WARN_ON` around `__do_*`).
fn committed(r: core::result::Result<(), Stage2Error>) {
    debug_assert_eq!(r, Ok(()), "commit step failed after its checks passed");
}

/// The per-frame database over the managed RAM, in caller-provided storage.
#[derive(Debug)]
pub struct PageDb<'m> {
    range: PfnRange,
    meta: &'m mut [PageMeta],
}

impl<'m> PageDb<'m> {
    fn new(base: Pfn, meta: &'m mut [PageMeta]) -> Result<Self> {
        let count = u64::try_from(meta.len()).unwrap_or(u64::MAX);
        let out_of_range = MemProtectError::OutOfRange { pfn: base, count };
        let range = PfnRange::new(base, count).ok_or(if count == 0 {
            MemProtectError::ZeroCount
        } else {
            out_of_range
        })?;
        // The host stage-2 identity-maps the range: it must fit the IPA space.
        match range.end().phys() {
            Some(end) if end.raw() <= IPA_LIMIT => Ok(Self { range, meta }),
            _ => Err(out_of_range),
        }
    }

    /// The managed frames.
    pub fn range(&self) -> PfnRange {
        self.range
    }

    /// The row of `pfn`, or `None` outside the managed range.
    pub fn get(&self, pfn: Pfn) -> Option<PageMeta> {
        let i = self.index(pfn).ok()?;
        self.meta.get(i).copied()
    }

    /// Every row, in frame order (for snapshots and audits).
    pub fn as_slice(&self) -> &[PageMeta] {
        self.meta
    }

    /// How many of VM `vm`'s pages the host may read: the guest owns them
    /// and the host holds them `SharedBorrowed` (`VM_STATS`).
    pub fn shared_with_host(&self, vm: VmHandle) -> u64 {
        let n = self
            .as_slice()
            .iter()
            .filter(|m| {
                m.owner() == Owner::Guest(vm) && m.host_state() == PageState::SharedBorrowed
            })
            .count();
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    /// A 64-bit FNV-1a digest of every row (owner, VM handle, host state,
    /// hyp state, donation mark), in frame order, and the number of pages
    /// that are not exclusively the host's: two equal digests mean no page
    /// changed hands (`OWNERSHIP_DIGEST`).
    pub fn digest(&self) -> (u64, u64) {
        const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut hash = FNV_OFFSET;
        let mut not_host = 0;
        for meta in self.meta.iter() {
            let handle = match meta.owner {
                Owner::Guest(h) => h.raw(),
                Owner::Host | Owner::Hyp => 0,
            };
            let row = [
                meta.owner.abi_code(),
                u64::from(handle),
                meta.host_state.abi_code(),
                meta.hyp_state.abi_code(),
                u64::from(meta.host_donation),
            ];
            for byte in row.iter().flat_map(|v| v.to_le_bytes()) {
                hash = (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
            }
            if *meta != PageMeta::HOST_OWNED {
                not_host += 1;
            }
        }
        (hash, not_host)
    }

    fn index(&self, pfn: Pfn) -> Result<usize> {
        self.indices(pfn, 1).map(|r| r.start)
    }

    /// Row indices of `[pfn, pfn + count)`, all inside the managed range.
    fn indices(&self, pfn: Pfn, count: u64) -> Result<Range<usize>> {
        if count == 0 {
            return Err(MemProtectError::ZeroCount);
        }
        let out_of_range = MemProtectError::OutOfRange { pfn, count };
        let req = PfnRange::new(pfn, count).ok_or(out_of_range)?;
        if !self.range.contains_range(req) {
            return Err(out_of_range);
        }
        let start = pfn
            .checked_offset_from(self.range.start())
            .ok_or(out_of_range)?;
        let start = usize::try_from(start).map_err(|_| out_of_range)?;
        let len = usize::try_from(count).map_err(|_| out_of_range)?;
        Ok(start..start + len)
    }

    fn pfn_at(&self, index: usize) -> Pfn {
        let offset = u64::try_from(index).unwrap_or(u64::MAX);
        self.range
            .start()
            .checked_add(offset)
            .unwrap_or(self.range.end())
    }

    fn rows(&self, r: Range<usize>) -> impl Iterator<Item = (Pfn, PageMeta)> + '_ {
        let first = self.pfn_at(r.start);
        self.meta
            .get(r)
            .unwrap_or(&[])
            .iter()
            .zip(first.raw()..)
            .map(|(m, pfn)| (Pfn::new(pfn), *m))
    }

    fn set(&mut self, r: Range<usize>, row: PageMeta) {
        for m in self.meta.get_mut(r).unwrap_or(&mut []) {
            *m = row;
        }
    }
}

/// Physical address of a frame inside the managed range (which fits in the
/// IPA space, checked by [`PageDb::new`], so the shift loses nothing).
const fn pa_of(pfn: Pfn) -> PhysAddr {
    PhysAddr::new(pfn.raw() << PAGE_SHIFT)
}

/// Host stage-2 attributes for a host state (`None`: unmapped).
pub const fn host_attrs(state: PageState) -> Option<Attrs> {
    match state {
        PageState::Owned | PageState::SharedOwned => Some(Attrs::RAM_RWX),
        PageState::SharedBorrowed => Some(Attrs::RAM_RW),
        PageState::NoPage => None,
    }
}

/// Stage-2 attributes of guest RAM.
pub const GUEST_RAM_ATTRS: Attrs = Attrs::RAM_RWX;

/// A guest's memory: its handle and its stage-2 (the guest component).
#[derive(Debug)]
pub struct GuestMem {
    handle: VmHandle,
    s2: Stage2,
}

impl GuestMem {
    /// An empty guest address space.
    ///
    /// # Errors
    /// [`MemProtectError::NoMemory`] if no root table page is available.
    pub fn new<H: PageAllocator + ?Sized>(
        handle: VmHandle,
        vmid: Vmid,
        hal: &mut H,
    ) -> Result<Self> {
        Ok(Self {
            handle,
            s2: Stage2::new(vmid, hal)?,
        })
    }

    /// The guest's handle.
    pub fn handle(&self) -> VmHandle {
        self.handle
    }

    /// The guest's stage-2 (read-only: only transitions change it).
    pub fn stage2(&self) -> &Stage2 {
        &self.s2
    }

    /// Frees the guest's tables. Refused (the guest is handed back) while
    /// any page is still mapped: reclaim them first with
    /// [`MemProtect::reclaim_guest`], or the database would keep naming a
    /// dead guest as their owner.
    ///
    /// # Errors
    /// The guest itself, untouched, if it still maps a page.
    pub fn destroy<H: Hal + ?Sized>(self, hal: &mut H) -> core::result::Result<(), Self> {
        if self.s2.next_leaf(Ipa::new(0), hal).is_some() {
            return Err(self);
        }
        self.s2.destroy(hal);
        Ok(())
    }
}

/// What [`MemProtect::check_invariants`] found wrong.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct InvariantViolation {
    /// The frame.
    pub pfn: Pfn,
    /// What is wrong.
    pub what: &'static str,
}

/// The page database and the host stage-2: the state every transition
/// changes, owned by the host lock.
#[derive(Debug)]
pub struct MemProtect<'m> {
    db: PageDb<'m>,
    host: Stage2,
}

impl<'m> MemProtect<'m> {
    /// Builds the database over `meta.len()` frames from `ram_base`, marks
    /// `hyp_owned` (clipped to the range) as the hyp's, gives the rest to the
    /// host, and identity-maps the host's pages in a new host stage-2.
    ///
    /// The hyp's own memory (its image, stacks, the page-table pool, `meta`
    /// itself) must be inside `hyp_owned` or outside the range.
    ///
    /// # Errors
    /// `ZeroCount` / `OutOfRange` for an empty range or one past the IPA
    /// space; `NoMemory` if the host stage-2 cannot be built (everything
    /// allocated so far is freed).
    pub fn new<H: Hal + ?Sized>(
        ram_base: Pfn,
        meta: &'m mut [PageMeta],
        hyp_owned: &[PfnRange],
        hal: &mut H,
    ) -> Result<Self> {
        let mut db = PageDb::new(ram_base, meta)?;
        db.meta.fill(PageMeta::HOST_OWNED);
        for r in hyp_owned {
            let start = r.start().max(db.range.start());
            let end = r.end().min(db.range.end());
            if let Some(count) = end.checked_offset_from(start).filter(|&c| c > 0) {
                let rows = db.indices(start, count)?;
                db.set(rows, PageMeta::HYP_OWNED);
            }
        }
        let mut host = Stage2::new(Vmid::HOST, hal)?;
        let mut i = 0;
        while i < db.meta.len() {
            let run = db.meta[i..]
                .iter()
                .take_while(|m| m.owner == Owner::Host)
                .count();
            if run > 0 {
                let pfn = db.pfn_at(i);
                let pages = u64::try_from(run).unwrap_or(0);
                let r = host.map(
                    Ipa::new(pa_of(pfn).raw()),
                    pa_of(pfn),
                    pages,
                    Attrs::RAM_RWX,
                    PageState::Owned,
                    hal,
                );
                if let Err(e) = r {
                    host.destroy(hal);
                    return Err(e.into());
                }
                i += run;
            } else {
                i += 1;
            }
        }
        Ok(Self { db, host })
    }

    /// The page database.
    pub fn db(&self) -> &PageDb<'m> {
        &self.db
    }

    /// The host's stage-2 (VTTBR for the host: `host_stage2().vttbr_el2()`).
    pub fn host_stage2(&self) -> &Stage2 {
        &self.host
    }

    /// Identity-maps `pages` pages of device memory (RW, never executable)
    /// at `base` for the host. For boot: the host's MMIO is not in the
    /// database, so this is not an ownership transition.
    ///
    /// # Errors
    /// `Unaligned`, `IpaOutOfRange`, `OverlapsRam`, `NoMemory`.
    pub fn map_host_mmio<H: Hal + ?Sized>(
        &mut self,
        base: PhysAddr,
        pages: u64,
        hal: &mut H,
    ) -> Result<()> {
        self.map_host_outside_db(base, pages, Attrs::DEVICE_RW, hal)
    }

    /// Identity-maps `pages` pages of RAM outside the database (a `/memory`
    /// bank other than the managed one) as normal memory, RWX, for the
    /// host. For boot: that RAM is the host's alone, for good. No
    /// transition can involve it (each checks its frames against the
    /// database's range first: `OutOfRange`), so it is never shared with
    /// or given to the hyp or a guest.
    ///
    /// # Errors
    /// `Unaligned`, `IpaOutOfRange`, `OverlapsRam` (the managed range),
    /// `NoMemory`.
    pub fn map_host_unmanaged_ram<H: Hal + ?Sized>(
        &mut self,
        base: PhysAddr,
        pages: u64,
        hal: &mut H,
    ) -> Result<()> {
        self.map_host_outside_db(base, pages, Attrs::RAM_RWX, hal)
    }

    /// Identity-maps frames outside the database for the host (boot only).
    fn map_host_outside_db<H: Hal + ?Sized>(
        &mut self,
        base: PhysAddr,
        pages: u64,
        attrs: Attrs,
        hal: &mut H,
    ) -> Result<()> {
        if let Some(r) = PfnRange::new(base.pfn(), pages) {
            if r.overlaps(self.db.range) {
                let pfn = r.start().max(self.db.range.start());
                return Err(MemProtectError::OverlapsRam { pfn });
            }
        }
        let ipa = base.to_identity_ipa();
        let res = self
            .host
            .prepare_map(ipa, base, pages, attrs, PageState::Owned, hal)?;
        self.host.commit_map(res, hal);
        Ok(())
    }

    /// Frees the host stage-2 (tests and shutdown; the host must not run).
    pub fn destroy<H: Hal + ?Sized>(self, hal: &mut H) {
        self.host.destroy(hal);
    }

    /// Host shares one of its pages with the hyp.
    ///
    /// | side | before   | after            |
    /// |------|----------|------------------|
    /// | host | `Owned`  | `SharedOwned`    |
    /// | hyp  | `NoPage` | `SharedBorrowed` |
    ///
    /// The host keeps its RWX mapping (its software bits now say shared).
    ///
    /// # Errors
    /// `OutOfRange`, `NotOwned`, `BadState`, `NoMemory`.
    pub fn host_share_hyp<H: Hal + ?Sized>(&mut self, pfn: Pfn, hal: &mut H) -> Result<()> {
        // Check.
        let rows = self.db.indices(pfn, 1)?;
        self.check_rows(
            rows.clone(),
            Owner::Host,
            PageState::Owned,
            PageState::NoPage,
        )?;
        let pa = pa_of(pfn);
        let res = self.host.prepare_map(
            pa.to_identity_ipa(),
            pa,
            1,
            Attrs::RAM_RWX,
            PageState::SharedOwned,
            hal,
        )?;
        // Commit.
        self.host.commit_map(res, hal);
        self.db.set(
            rows,
            PageMeta {
                host_state: PageState::SharedOwned,
                hyp_state: PageState::SharedBorrowed,
                ..PageMeta::HOST_OWNED
            },
        );
        Ok(())
    }

    /// Host ends a [`host_share_hyp`](Self::host_share_hyp).
    ///
    /// | side | before           | after    |
    /// |------|------------------|----------|
    /// | host | `SharedOwned`    | `Owned`  |
    /// | hyp  | `SharedBorrowed` | `NoPage` |
    ///
    /// # Errors
    /// `OutOfRange`, `NotOwned`, `BadState`, `NoMemory`.
    pub fn host_unshare_hyp<H: Hal + ?Sized>(&mut self, pfn: Pfn, hal: &mut H) -> Result<()> {
        let rows = self.db.indices(pfn, 1)?;
        self.check_rows(
            rows.clone(),
            Owner::Host,
            PageState::SharedOwned,
            PageState::SharedBorrowed,
        )?;
        let pa = pa_of(pfn);
        let res = self.host.prepare_map(
            pa.to_identity_ipa(),
            pa,
            1,
            Attrs::RAM_RWX,
            PageState::Owned,
            hal,
        )?;
        self.host.commit_map(res, hal);
        self.db.set(rows, PageMeta::HOST_OWNED);
        Ok(())
    }

    /// Host gives `count` pages to the hyp; they leave the host stage-2 (and
    /// its TLBs) before the hyp may use them.
    ///
    /// | side  | before   | after                     |
    /// |-------|----------|---------------------------|
    /// | owner | host     | hyp                       |
    /// | host  | `Owned`  | `NoPage` (unmapped)       |
    /// | hyp   | `NoPage` | `Owned` (host donation)   |
    ///
    /// # Errors
    /// `ZeroCount`, `OutOfRange`, `NotOwned`, `BadState` (first bad frame).
    pub fn host_donate_hyp<H: Hal + ?Sized>(
        &mut self,
        pfn: Pfn,
        count: u64,
        hal: &mut H,
    ) -> Result<()> {
        let rows = self.db.indices(pfn, count)?;
        self.check_rows(
            rows.clone(),
            Owner::Host,
            PageState::Owned,
            PageState::NoPage,
        )?;
        committed(self.host.unmap(pa_of(pfn).to_identity_ipa(), count, hal));
        self.db.set(
            rows,
            PageMeta {
                host_donation: true,
                ..PageMeta::HYP_OWNED
            },
        );
        Ok(())
    }

    /// Hyp gives back `count` pages the host donated and the hyp has not put
    /// to use (never the hyp's own memory).
    ///
    /// | side  | before                  | after             |
    /// |-------|-------------------------|-------------------|
    /// | owner | hyp                     | host              |
    /// | hyp   | `Owned` (host donation) | `NoPage`          |
    /// | host  | `NoPage`                | `Owned` (RWX)     |
    ///
    /// # Errors
    /// `ZeroCount`, `OutOfRange`, `NotOwned`, `BadState`, `NotDonated`,
    /// `NoMemory`.
    pub fn hyp_donate_host<H: Hal + ?Sized>(
        &mut self,
        pfn: Pfn,
        count: u64,
        hal: &mut H,
    ) -> Result<()> {
        let rows = self.db.indices(pfn, count)?;
        self.check_rows(
            rows.clone(),
            Owner::Hyp,
            PageState::NoPage,
            PageState::Owned,
        )?;
        if let Some((pfn, _)) = self.db.rows(rows.clone()).find(|(_, m)| !m.host_donation) {
            return Err(MemProtectError::NotDonated { pfn });
        }
        let pa = pa_of(pfn);
        let res = self.host.prepare_map(
            pa.to_identity_ipa(),
            pa,
            count,
            Attrs::RAM_RWX,
            PageState::Owned,
            hal,
        )?;
        self.host.commit_map(res, hal);
        self.db.set(rows, PageMeta::HOST_OWNED);
        Ok(())
    }

    /// Hyp takes `count` donated pages for its own use: the host can no
    /// longer ask for them back. (Host-visible state does not change.)
    ///
    /// # Errors
    /// `ZeroCount`, `OutOfRange`, `NotOwned`, `BadState`, `NotDonated`.
    pub fn hyp_claim_donation(&mut self, pfn: Pfn, count: u64) -> Result<()> {
        let rows = self.db.indices(pfn, count)?;
        self.check_rows(
            rows.clone(),
            Owner::Hyp,
            PageState::NoPage,
            PageState::Owned,
        )?;
        if let Some((pfn, _)) = self.db.rows(rows.clone()).find(|(_, m)| !m.host_donation) {
            return Err(MemProtectError::NotDonated { pfn });
        }
        self.db.set(rows, PageMeta::HYP_OWNED);
        Ok(())
    }

    /// Host gives `count` pages to a guest, mapped at `ipa..` in the guest.
    /// The contents are kept (the VMM loads the guest image before donating).
    ///
    /// | side  | before             | after                      |
    /// |-------|--------------------|----------------------------|
    /// | owner | host               | guest                      |
    /// | host  | `Owned`            | `NoPage` (unmapped)        |
    /// | hyp   | `NoPage`           | `NoPage`                   |
    /// | guest | `NoPage` (no leaf) | `Owned` (RWX at `ipa`)     |
    ///
    /// # Errors
    /// `ZeroCount`, `OutOfRange`, `NotOwned`, `BadState`, `Unaligned`,
    /// `IpaOutOfRange`, `IpaMapped`, `NoMemory`.
    pub fn host_donate_guest<H: Hal + ?Sized>(
        &mut self,
        pfn: Pfn,
        count: u64,
        guest: &mut GuestMem,
        ipa: Ipa,
        hal: &mut H,
    ) -> Result<()> {
        let rows = self.db.indices(pfn, count)?;
        self.check_rows(
            rows.clone(),
            Owner::Host,
            PageState::Owned,
            PageState::NoPage,
        )?;
        check_guest_range_free(guest, ipa, count, hal)?;
        let pa = pa_of(pfn);
        let res = guest
            .s2
            .prepare_map(ipa, pa, count, GUEST_RAM_ATTRS, PageState::Owned, hal)?;
        // Host loses access (and its TLB entries) before the guest gains it.
        committed(self.host.unmap(pa.to_identity_ipa(), count, hal));
        guest.s2.commit_map(res, hal);
        let row = PageMeta {
            owner: Owner::Guest(guest.handle),
            host_state: PageState::NoPage,
            hyp_state: PageState::NoPage,
            host_donation: false,
        };
        self.db.set(rows, row);
        Ok(())
    }

    /// Host lends `count` of its pages to a guest, mapped at `ipa..` in the
    /// guest; the host keeps them (the memory of a normal VM, pKVM's
    /// `__pkvm_host_share_guest`). The host keeps its RWX mapping.
    ///
    /// | side  | before             | after                           |
    /// |-------|--------------------|---------------------------------|
    /// | owner | host               | host                            |
    /// | host  | `Owned`            | `SharedOwned` (RWX, identity)   |
    /// | hyp   | `NoPage`           | `NoPage`                        |
    /// | guest | `NoPage` (no leaf) | `SharedBorrowed` (RWX at `ipa`) |
    ///
    /// # Errors
    /// `ZeroCount`, `OutOfRange`, `NotOwned`, `BadState`, `Unaligned`,
    /// `IpaOutOfRange`, `IpaMapped`, `NoMemory`.
    pub fn host_share_guest<H: Hal + ?Sized>(
        &mut self,
        pfn: Pfn,
        count: u64,
        guest: &mut GuestMem,
        ipa: Ipa,
        hal: &mut H,
    ) -> Result<()> {
        let rows = self.db.indices(pfn, count)?;
        self.check_rows(
            rows.clone(),
            Owner::Host,
            PageState::Owned,
            PageState::NoPage,
        )?;
        check_guest_range_free(guest, ipa, count, hal)?;
        let pa = pa_of(pfn);
        let guest_res = guest.s2.prepare_map(
            ipa,
            pa,
            count,
            GUEST_RAM_ATTRS,
            PageState::SharedBorrowed,
            hal,
        )?;
        let host_res = match self.host.prepare_map(
            pa.to_identity_ipa(),
            pa,
            count,
            Attrs::RAM_RWX,
            PageState::SharedOwned,
            hal,
        ) {
            Ok(r) => r,
            Err(e) => {
                guest_res.release(hal);
                return Err(e.into());
            }
        };
        self.host.commit_map(host_res, hal);
        guest.s2.commit_map(guest_res, hal);
        self.db.set(
            rows,
            PageMeta {
                host_state: PageState::SharedOwned,
                ..PageMeta::HOST_OWNED
            },
        );
        Ok(())
    }

    /// Host takes back one page it lent to a guest with
    /// [`host_share_guest`](Self::host_share_guest). The guest mapping and
    /// its TLB entries go first; the contents stay (the page was the host's
    /// all along).
    ///
    /// | side  | before                  | after               |
    /// |-------|-------------------------|---------------------|
    /// | owner | host                    | host                |
    /// | host  | `SharedOwned`           | `Owned` (RWX)       |
    /// | guest | `SharedBorrowed` at ipa | `NoPage` (unmapped) |
    ///
    /// # Errors
    /// `Unaligned`, `IpaOutOfRange`, `IpaNotMapped`, `OutOfRange`,
    /// `NotOwned`, `BadState`, `NoMemory`.
    pub fn host_unshare_guest<H: Hal + ?Sized>(
        &mut self,
        guest: &mut GuestMem,
        ipa: Ipa,
        hal: &mut H,
    ) -> Result<()> {
        let (pfn, rows, leaf) = self.guest_page(guest, ipa, hal)?;
        self.check_guest_side(pfn, guest, leaf.state, PageState::SharedBorrowed)?;
        self.check_rows(
            rows.clone(),
            Owner::Host,
            PageState::SharedOwned,
            PageState::NoPage,
        )?;
        let pa = pa_of(pfn);
        let host_res = self.host.prepare_map(
            pa.to_identity_ipa(),
            pa,
            1,
            Attrs::RAM_RWX,
            PageState::Owned,
            hal,
        )?;
        committed(guest.s2.unmap(ipa, 1, hal));
        self.host.commit_map(host_res, hal);
        self.db.set(rows, PageMeta::HOST_OWNED);
        Ok(())
    }

    /// Guest shares the page at `ipa` with the host (pKVM's MEM_SHARE).
    ///
    /// | side  | before   | after                      |
    /// |-------|----------|----------------------------|
    /// | guest | `Owned`  | `SharedOwned`              |
    /// | host  | `NoPage` | `SharedBorrowed` (RW, identity) |
    ///
    /// # Errors
    /// `Unaligned`, `IpaNotMapped`, `OutOfRange`, `NotOwned`, `BadState`,
    /// `NoMemory`.
    pub fn guest_share_host<H: Hal + ?Sized>(
        &mut self,
        guest: &mut GuestMem,
        ipa: Ipa,
        hal: &mut H,
    ) -> Result<()> {
        let (pfn, rows, leaf) = self.guest_page(guest, ipa, hal)?;
        self.check_guest_side(pfn, guest, leaf.state, PageState::Owned)?;
        self.check_rows(
            rows.clone(),
            Owner::Guest(guest.handle),
            PageState::NoPage,
            PageState::NoPage,
        )?;
        let pa = pa_of(pfn);
        let host_res = self.host.prepare_map(
            pa.to_identity_ipa(),
            pa,
            1,
            Attrs::RAM_RW,
            PageState::SharedBorrowed,
            hal,
        )?;
        let guest_res =
            match guest
                .s2
                .prepare_map(ipa, pa, 1, leaf.attrs, PageState::SharedOwned, hal)
            {
                Ok(r) => r,
                Err(e) => {
                    host_res.release(hal);
                    return Err(e.into());
                }
            };
        guest.s2.commit_map(guest_res, hal);
        self.host.commit_map(host_res, hal);
        self.db.set(
            rows,
            PageMeta {
                host_state: PageState::SharedBorrowed,
                ..guest_row(guest)
            },
        );
        Ok(())
    }

    /// Guest ends a [`guest_share_host`](Self::guest_share_host) (pKVM's
    /// MEM_UNSHARE). The host mapping and its TLB entries go first.
    ///
    /// | side  | before           | after               |
    /// |-------|------------------|---------------------|
    /// | guest | `SharedOwned`    | `Owned`             |
    /// | host  | `SharedBorrowed` | `NoPage` (unmapped) |
    ///
    /// # Errors
    /// `Unaligned`, `IpaNotMapped`, `OutOfRange`, `NotOwned`, `BadState`,
    /// `NoMemory`.
    pub fn guest_unshare_host<H: Hal + ?Sized>(
        &mut self,
        guest: &mut GuestMem,
        ipa: Ipa,
        hal: &mut H,
    ) -> Result<()> {
        let (pfn, rows, leaf) = self.guest_page(guest, ipa, hal)?;
        self.check_guest_side(pfn, guest, leaf.state, PageState::SharedOwned)?;
        self.check_rows(
            rows.clone(),
            Owner::Guest(guest.handle),
            PageState::SharedBorrowed,
            PageState::NoPage,
        )?;
        let pa = pa_of(pfn);
        let guest_res = guest
            .s2
            .prepare_map(ipa, pa, 1, leaf.attrs, PageState::Owned, hal)?;
        committed(self.host.unmap(pa.to_identity_ipa(), 1, hal));
        guest.s2.commit_map(guest_res, hal);
        self.db.set(rows, guest_row(guest));
        Ok(())
    }

    /// Takes the page at `ipa` from a guest being torn down, zeroes it and
    /// gives it to the host. The caller (VM teardown) makes sure none of the
    /// guest's vCPUs runs. A page the host only lent to the guest
    /// ([`host_share_guest`](Self::host_share_guest)) goes back as
    /// [`host_unshare_guest`](Self::host_unshare_guest) does, not zeroed:
    /// it was the host's all along.
    ///
    /// | side  | before                                      | after                 |
    /// |-------|---------------------------------------------|-----------------------|
    /// | owner | guest / guest / host                        | host                  |
    /// | guest | `Owned` / `SharedOwned` / `SharedBorrowed`  | `NoPage` (unmapped)   |
    /// | host  | `NoPage` / `SharedBorrowed` / `SharedOwned` | `Owned` (RWX); zeroed unless lent |
    ///
    /// # Errors
    /// `Unaligned`, `IpaNotMapped`, `OutOfRange`, `NotOwned`, `BadState`,
    /// `NoAccess`, `NoMemory`.
    pub fn reclaim_guest_page<H: Hal + ?Sized>(
        &mut self,
        guest: &mut GuestMem,
        ipa: Ipa,
        hal: &mut H,
    ) -> Result<()> {
        let (pfn, rows, leaf) = self.guest_page(guest, ipa, hal)?;
        if leaf.state == PageState::SharedBorrowed {
            return self.host_unshare_guest(guest, ipa, hal);
        }
        let expected_host = match leaf.state {
            PageState::Owned => PageState::NoPage,
            PageState::SharedOwned => PageState::SharedBorrowed,
            state => {
                let component = Owner::Guest(guest.handle);
                return Err(MemProtectError::BadState {
                    pfn,
                    component,
                    state,
                });
            }
        };
        self.check_rows(
            rows.clone(),
            Owner::Guest(guest.handle),
            expected_host,
            PageState::NoPage,
        )?;
        let pa = pa_of(pfn);
        if hal.page(pa).is_none() {
            return Err(MemProtectError::NoAccess { pfn });
        }
        let host_res = self.host.prepare_map(
            pa.to_identity_ipa(),
            pa,
            1,
            Attrs::RAM_RWX,
            PageState::Owned,
            hal,
        )?;
        // Guest loses access before the page is wiped and handed over.
        committed(guest.s2.unmap(ipa, 1, hal));
        if let Some(page) = hal.page_mut(pa) {
            *page = [0; WORDS_PER_PAGE];
        }
        self.host.commit_map(host_res, hal);
        self.db.set(rows, PageMeta::HOST_OWNED);
        Ok(())
    }

    /// Reclaims every page the guest maps (see
    /// [`reclaim_guest_page`](Self::reclaim_guest_page)); afterwards
    /// [`GuestMem::destroy`] succeeds. Each page moves atomically; on an
    /// error the pages already reclaimed stay reclaimed. Returns how many
    /// pages moved.
    ///
    /// # Errors
    /// As `reclaim_guest_page`, for the first page that could not move.
    pub fn reclaim_guest<H: Hal + ?Sized>(
        &mut self,
        guest: &mut GuestMem,
        hal: &mut H,
    ) -> Result<u64> {
        let mut moved = 0;
        while let Some((ipa, _)) = guest.s2.next_leaf(Ipa::new(0), hal) {
            self.reclaim_guest_page(guest, ipa, hal)?;
            moved += 1;
        }
        Ok(moved)
    }

    /// Checks that every row is consistent and that the host stage-2 agrees
    /// with the database for every managed frame (mapping, permissions,
    /// software state). Costs one walk per frame: for tests and debug builds.
    ///
    /// # Errors
    /// The first violation found.
    pub fn check_invariants<H: PageAllocator + ?Sized>(
        &self,
        hal: &H,
    ) -> core::result::Result<(), InvariantViolation> {
        for (pfn, m) in self.db.rows(0..self.db.meta.len()) {
            let fail = |what| Err(InvariantViolation { pfn, what });
            if !m.is_consistent() {
                return fail("inconsistent database row");
            }
            let pa = pa_of(pfn);
            let leaf = self.host.walk(pa.to_identity_ipa(), hal);
            match (host_attrs(m.host_state), leaf) {
                (None, None) => {}
                (None, Some(_)) => return fail("host maps a page it has no access to"),
                (Some(_), None) => return fail("host page missing from the host stage-2"),
                (Some(attrs), Some(leaf)) => {
                    if leaf.pa != pa {
                        return fail("host stage-2 is not an identity map");
                    }
                    if leaf.attrs != attrs {
                        return fail("host stage-2 permissions disagree with the database");
                    }
                    if leaf.state != m.host_state {
                        return fail("host stage-2 software state disagrees with the database");
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks that every row in `rows` is owned by `owner` with the given
    /// host and hyp states; reports the first frame that is not.
    fn check_rows(
        &self,
        rows: Range<usize>,
        owner: Owner,
        host: PageState,
        hyp: PageState,
    ) -> Result<()> {
        for (pfn, m) in self.db.rows(rows) {
            if m.owner != owner {
                return Err(MemProtectError::NotOwned {
                    pfn,
                    owner: m.owner,
                });
            }
            if m.host_state != host {
                let (component, state) = (Owner::Host, m.host_state);
                return Err(MemProtectError::BadState {
                    pfn,
                    component,
                    state,
                });
            }
            if m.hyp_state != hyp {
                let (component, state) = (Owner::Hyp, m.hyp_state);
                return Err(MemProtectError::BadState {
                    pfn,
                    component,
                    state,
                });
            }
        }
        Ok(())
    }

    fn check_guest_side(
        &self,
        pfn: Pfn,
        guest: &GuestMem,
        state: PageState,
        expected: PageState,
    ) -> Result<()> {
        if state != expected {
            let component = Owner::Guest(guest.handle);
            return Err(MemProtectError::BadState {
                pfn,
                component,
                state,
            });
        }
        Ok(())
    }

    /// The guest's leaf at `ipa` and the database rows of its frame.
    fn guest_page<H: PageAllocator + ?Sized>(
        &self,
        guest: &GuestMem,
        ipa: Ipa,
        hal: &H,
    ) -> Result<(Pfn, Range<usize>, crate::stage2::Leaf)> {
        if !ipa.is_page_aligned() {
            return Err(MemProtectError::Unaligned { addr: ipa.raw() });
        }
        if ipa.raw() >= IPA_LIMIT {
            return Err(MemProtectError::IpaOutOfRange { ipa, pages: 1 });
        }
        let leaf = guest
            .s2
            .walk(ipa, hal)
            .ok_or(MemProtectError::IpaNotMapped { ipa })?;
        let pfn = leaf.pa.pfn();
        let rows = self.db.indices(pfn, 1)?;
        Ok((pfn, rows, leaf))
    }
}

/// Checks that `[ipa, ipa + count)` is page-aligned, inside the IPA space
/// and unmapped in the guest.
fn check_guest_range_free<H: PageAllocator + ?Sized>(
    guest: &GuestMem,
    ipa: Ipa,
    count: u64,
    hal: &H,
) -> Result<()> {
    if !ipa.is_page_aligned() {
        return Err(MemProtectError::Unaligned { addr: ipa.raw() });
    }
    let end = match ipa.checked_add_pages(count) {
        Some(end) if end.raw() <= IPA_LIMIT => end,
        _ => return Err(MemProtectError::IpaOutOfRange { ipa, pages: count }),
    };
    match guest.s2.next_leaf(ipa, hal).filter(|(a, _)| *a < end) {
        Some((mapped, _)) => Err(MemProtectError::IpaMapped { ipa: mapped }),
        None => Ok(()),
    }
}

/// The row of a page the guest owns exclusively.
const fn guest_row(guest: &GuestMem) -> PageMeta {
    PageMeta {
        owner: Owner::Guest(guest.handle),
        host_state: PageState::NoPage,
        hyp_state: PageState::NoPage,
        host_donation: false,
    }
}

#[cfg(test)]
mod tests;
