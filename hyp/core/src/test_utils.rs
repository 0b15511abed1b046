//! Shared fixtures for the unit and property tests.
//!
//! The fake physical window starts at 1 GiB (QEMU `virt`'s RAM base) and
//! holds `RAM_PAGES` pages, all managed by the page database. Its first
//! `POOL` pages are the FakeHal allocator pool and are hyp-owned, as the
//! hypervisor's table pool is on hardware.

use std::collections::HashMap;

use crate::addr::{Ipa, Pfn, PfnRange, PhysAddr, PAGE_SIZE};
use crate::hal::{FakeHal, PageAllocator, PageWords, WORDS_PER_PAGE};
use crate::mem_protect::{GuestMem, MemProtect, Owner, PageMeta, PageState};

pub const BASE: u64 = 0x4000_0000;
pub const POOL: usize = 48;
pub const RAM_PAGES: usize = 128;

pub fn memory() -> Vec<PageWords> {
    vec![[0; WORDS_PER_PAGE]; RAM_PAGES]
}

pub fn metas() -> Vec<PageMeta> {
    vec![PageMeta::HOST_OWNED; RAM_PAGES]
}

pub fn base_pfn() -> Pfn {
    PhysAddr::new(BASE).pfn()
}

/// Frame `i` of the window.
pub fn pfn(i: u64) -> Pfn {
    Pfn::new(base_pfn().raw() + i)
}

/// First host-owned frame index.
pub const HOST_FIRST: u64 = POOL as u64;

pub fn pool_range() -> PfnRange {
    match PfnRange::new(base_pfn(), POOL as u64) {
        Some(r) => r,
        None => panic!("pool range"),
    }
}

pub fn hal(mem: &mut [PageWords]) -> FakeHal<'_> {
    FakeHal::new(PhysAddr::new(BASE), mem, POOL)
}

pub fn mem_protect<'m>(meta: &'m mut [PageMeta], hal: &mut FakeHal<'_>) -> MemProtect<'m> {
    match MemProtect::new(base_pfn(), meta, &[pool_range()], hal) {
        Ok(mp) => mp,
        Err(e) => panic!("MemProtect::new: {e}"),
    }
}

/// Everything a failed operation must leave untouched.
#[derive(PartialEq, Eq, Debug)]
pub struct Snapshot {
    rows: Vec<PageMeta>,
    memory: Vec<PageWords>,
    bitmap: Vec<u64>,
    live: u64,
}

pub fn snapshot(mp: &MemProtect<'_>, hal: &FakeHal<'_>) -> Snapshot {
    Snapshot {
        rows: mp.db().as_slice().to_vec(),
        memory: hal.memory().to_vec(),
        bitmap: hal.allocation_bitmap().to_vec(),
        live: hal.live_pages(),
    }
}

/// Every leaf of a guest: IPA → leaf.
pub fn guest_leaves<H: PageAllocator>(g: &GuestMem, hal: &H) -> Vec<(Ipa, crate::stage2::Leaf)> {
    let mut out = Vec::new();
    let mut from = Ipa::new(0);
    while let Some((ipa, leaf)) = g.stage2().next_leaf(from, hal) {
        out.push((ipa, leaf));
        match ipa.checked_add(PAGE_SIZE) {
            Some(next) => from = next,
            None => break,
        }
    }
    out
}

/// The whole-system invariants of the property tests:
/// (a) no page is writable by two components unless both hold it shared;
/// (b) the host stage-2 agrees with the database (`check_invariants`);
/// plus: each guest maps exactly the pages the database gives it, once, in a
/// state that matches the host's, and page-table pages are hyp-owned.
pub fn check_system(
    mp: &MemProtect<'_>,
    guests: &[&GuestMem],
    hal: &FakeHal<'_>,
) -> Result<(), String> {
    mp.check_invariants(hal).map_err(|v| format!("{v:?}"))?;
    let db = mp.db();
    // pfn -> [(component, state)] of components that may write it.
    let mut writers: HashMap<Pfn, Vec<(Owner, PageState)>> = HashMap::new();
    let mut guest_mapped: HashMap<Pfn, (Owner, Ipa)> = HashMap::new();
    for pfn in db.range().iter() {
        let Some(m) = db.get(pfn) else {
            return Err(format!("{pfn} has no row"));
        };
        let Some(pa) = pfn.phys() else {
            return Err(format!("{pfn} has no PA"));
        };
        if let Some(leaf) = mp.host_stage2().walk(pa.to_identity_ipa(), hal) {
            if leaf.attrs.perms.contains(crate::stage2::Perms::W) {
                writers
                    .entry(pfn)
                    .or_default()
                    .push((Owner::Host, leaf.state));
            }
        }
        if m.hyp_state() != PageState::NoPage {
            writers
                .entry(pfn)
                .or_default()
                .push((Owner::Hyp, m.hyp_state()));
        }
        if pool_range().contains(pfn) && hal.is_allocated(pa) && m.owner() != Owner::Hyp {
            return Err(format!("table page {pfn} is not hyp-owned"));
        }
    }
    for g in guests {
        let me = Owner::Guest(g.handle());
        for (ipa, leaf) in guest_leaves(g, hal) {
            let pfn = leaf.pa.pfn();
            let Some(m) = db.get(pfn) else {
                return Err(format!("{me:?} maps {pfn} outside RAM at {ipa}"));
            };
            if let Some(prev) = guest_mapped.insert(pfn, (me, ipa)) {
                return Err(format!("{pfn} mapped twice: {prev:?} and {ipa}"));
            }
            if leaf.state == PageState::SharedBorrowed {
                // A host page lent to this guest.
                let lent = (Owner::Host, PageState::SharedOwned, PageState::NoPage);
                if (m.owner(), m.host_state(), m.hyp_state()) != lent {
                    return Err(format!("{me:?} borrows {pfn} at {ipa}, row {m:?}"));
                }
                if leaf.attrs.perms.contains(crate::stage2::Perms::W) {
                    writers.entry(pfn).or_default().push((me, leaf.state));
                }
                continue;
            }
            if m.owner() != me {
                return Err(format!("{me:?} maps {pfn} owned by {:?}", m.owner()));
            }
            let expected_host = match leaf.state {
                PageState::Owned => PageState::NoPage,
                PageState::SharedOwned => PageState::SharedBorrowed,
                s => return Err(format!("{me:?} leaf {ipa} in state {s:?}")),
            };
            if m.host_state() != expected_host {
                return Err(format!(
                    "{pfn}: guest {:?} vs host {:?}",
                    leaf.state,
                    m.host_state()
                ));
            }
            if leaf.attrs.perms.contains(crate::stage2::Perms::W) {
                writers.entry(pfn).or_default().push((me, leaf.state));
            }
        }
    }
    for pfn in db.range().iter() {
        let Some(m) = db.get(pfn) else { continue };
        if let Owner::Guest(h) = m.owner() {
            if !guest_mapped.contains_key(&pfn) {
                return Err(format!("{pfn} owned by guest {h:?} but mapped nowhere"));
            }
        }
        let lent = m.owner() == Owner::Host
            && m.host_state() == PageState::SharedOwned
            && m.hyp_state() == PageState::NoPage;
        if lent && !guest_mapped.contains_key(&pfn) {
            return Err(format!("{pfn} lent to a guest but mapped by none"));
        }
    }
    for (pfn, w) in writers {
        if w.len() > 1 && !w.iter().all(|(_, s)| s.is_shared()) {
            return Err(format!("{pfn} writable by {w:?}"));
        }
    }
    Ok(())
}
