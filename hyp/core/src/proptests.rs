//! Property tests: random sequences of table operations, transitions and
//! hostile hypercalls keep the system invariants.
//!
//! (a) no page is writable by two components unless both hold it shared;
//! (b) the host stage-2 agrees with the database for every frame;
//! (c) after teardown the FakeHal has no table page left allocated;
//! (d) a failing operation leaves the database, every table and the
//!     allocator byte-for-byte unchanged.
//!
//! Case counts are moderate so the whole suite stays fast on two cores.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use crate::abi::{self, hc, ret, smccc};
use crate::addr::{Ipa, Pfn, PhysAddr, PAGE_SIZE};
use crate::hal::{FakeHal, PageWords, WORDS_PER_PAGE};
use crate::hypercall::handle_host_hvc;
use crate::mem_protect::{
    GuestMem, MemProtect, MemProtectError, Owner, PageMeta, PageState, VmHandle,
};
use crate::stage2::{Attrs, Leaf, MemType, Perms, Stage2, Stage2Error, Vmid, IPA_LIMIT};
use crate::test_utils::{self as tu, snapshot};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------- stage-2

/// IPA bases chosen to cross 2 MiB, 1 GiB and the IPA-space boundaries.
const S2_SLOTS: [u64; 6] = [
    0,
    0x1f_e000,
    0x3fff_f000,
    0x8000_0000,
    IPA_LIMIT - 0x3000,
    0x1234,
];

#[derive(Clone, Debug)]
enum S2Op {
    Map {
        slot: usize,
        off: u64,
        pages: u64,
        pa_page: u64,
        attrs: Attrs,
        state: PageState,
    },
    Unmap {
        slot: usize,
        off: u64,
        pages: u64,
    },
}

fn attrs_strategy() -> impl Strategy<Value = Attrs> {
    (0u8..8, any::<bool>()).prop_map(|(p, dev)| Attrs {
        perms: [
            Perms::NONE,
            Perms::R,
            Perms::W,
            Perms::RW,
            Perms::X,
            Perms::R | Perms::X,
            Perms::W | Perms::X,
            Perms::RWX,
        ][usize::from(p)],
        mem: if dev {
            MemType::Device
        } else {
            MemType::Normal
        },
    })
}

fn state_strategy() -> impl Strategy<Value = PageState> {
    prop_oneof![
        4 => Just(PageState::Owned),
        2 => Just(PageState::SharedOwned),
        2 => Just(PageState::SharedBorrowed),
        1 => Just(PageState::NoPage),
    ]
}

fn s2_op() -> impl Strategy<Value = S2Op> {
    let slot = 0..S2_SLOTS.len();
    prop_oneof![
        3 => (slot.clone(), 0u64..4, 0u64..6, 0u64..(1 << 28), attrs_strategy(), state_strategy())
            .prop_map(|(slot, off, pages, pa_page, attrs, state)| S2Op::Map {
                slot, off, pages, pa_page, attrs, state
            }),
        1 => (slot, 0u64..4, 0u64..6).prop_map(|(slot, off, pages)| S2Op::Unmap { slot, off, pages }),
    ]
}

proptest! {
    #![proptest_config(config(48))]

    /// Random map/unmap (with OOM injection) agrees with a model, fails
    /// atomically, and leaks nothing.
    #[test]
    fn stage2_matches_model(
        ops in prop::collection::vec((s2_op(), prop::option::weighted(0.25, 0u64..4)), 1..24)
    ) {
        let mut mem: Vec<PageWords> = vec![[0; WORDS_PER_PAGE]; 64];
        let mut hal = FakeHal::new(PhysAddr::new(0x100_0000), &mut mem, 64);
        let Ok(mut s2) = Stage2::new(Vmid(1), &mut hal) else {
            return Err(TestCaseError::fail("root"));
        };
        let mut model: BTreeMap<u64, Leaf> = BTreeMap::new();
        let mut touched: BTreeSet<u64> = BTreeSet::new();
        for (op, budget) in ops {
            let before = (hal.memory().to_vec(), hal.allocation_bitmap().to_vec(), s2.table_pages());
            if let Some(b) = budget {
                hal.fail_after(b);
            }
            let (ipa, pages) = match op {
                S2Op::Map { slot, off, pages, .. } | S2Op::Unmap { slot, off, pages } => {
                    (S2_SLOTS[slot] + off * PAGE_SIZE, pages)
                }
            };
            let result = match op {
                S2Op::Map { pa_page, attrs, state, .. } => {
                    let pa = PhysAddr::new(pa_page * PAGE_SIZE);
                    let r = s2.map(Ipa::new(ipa), pa, pages, attrs, state, &mut hal);
                    if r.is_ok() {
                        for i in 0..pages {
                            let leaf = Leaf { pa: PhysAddr::new(pa.raw() + i * PAGE_SIZE), attrs, state };
                            model.insert(ipa + i * PAGE_SIZE, leaf);
                        }
                    }
                    r
                }
                S2Op::Unmap { .. } => {
                    let r = s2.unmap(Ipa::new(ipa), pages, &mut hal);
                    if r.is_ok() {
                        for i in 0..pages {
                            model.remove(&(ipa + i * PAGE_SIZE));
                        }
                    }
                    r
                }
            };
            hal.set_oom(false);
            match result {
                Ok(()) => {}
                Err(e) => {
                    let after = (hal.memory().to_vec(), hal.allocation_bitmap().to_vec(), s2.table_pages());
                    prop_assert!(after == before, "{e:?} changed the tables");
                    let expected_kind = matches!(
                        e,
                        Stage2Error::NoMemory
                            | Stage2Error::NoPageState
                            | Stage2Error::Unaligned { .. }
                            | Stage2Error::IpaOutOfRange { .. }
                            | Stage2Error::PaOutOfRange { .. }
                    );
                    prop_assert!(expected_kind);
                }
            }
            for i in 0..pages.max(1) {
                if let Some(a) = ipa.checked_add(i * PAGE_SIZE) {
                    touched.insert(a & !(PAGE_SIZE - 1));
                }
            }
            for &a in &touched {
                prop_assert_eq!(s2.walk(Ipa::new(a), &hal), model.get(&a).copied(), "IPA {:#x}", a);
            }
            let mut listed = Vec::new();
            let mut from = Ipa::new(0);
            while let Some((a, _)) = s2.next_leaf(from, &hal) {
                listed.push(a.raw());
                from = Ipa::new(a.raw() + PAGE_SIZE);
            }
            prop_assert_eq!(listed, model.keys().copied().collect::<Vec<_>>());
            prop_assert_eq!(hal.live_pages(), s2.table_pages());
        }
        s2.destroy(&mut hal);
        prop_assert_eq!(hal.live_pages(), 0);
    }
}

// ------------------------------------------------------- ownership model

/// Guest IPA bases: two in one 1 GiB region (different 2 MiB blocks), one
/// in a fresh 1 GiB region; then, rarely, the top of the IPA space and an
/// unaligned one.
const GUEST_SLOTS: [u64; 5] = [
    0x8000_0000,
    0x8020_0000,
    0x1_0000_0000,
    IPA_LIMIT - 0x2000,
    0x8000_0800,
];

fn slot() -> impl Strategy<Value = usize> + Clone {
    prop_oneof![8 => 0usize..2, 2 => Just(2usize), 1 => 3usize..5]
}

/// A frame argument: a raw index into the window (anything, to reach the
/// error paths), or "the k-th frame that fits this operation" (to reach the
/// success paths often, whatever came before).
#[derive(Clone, Copy, Debug)]
enum Frame {
    Raw(u64),
    Fit(usize),
}

/// A guest IPA argument: a slot and page offset, or "the k-th page this
/// guest maps in the state the operation needs".
#[derive(Clone, Copy, Debug)]
enum Target {
    Slot(usize, u64),
    Fit(usize),
}

#[derive(Clone, Debug)]
enum Op {
    ShareHyp(Frame),
    UnshareHyp(Frame),
    DonateHyp(Frame, u64),
    HypDonateHost(Frame, u64),
    ClaimDonation(Frame, u64),
    DonateGuest {
        g: usize,
        frame: Frame,
        count: u64,
        slot: usize,
        off: u64,
    },
    GuestShare {
        g: usize,
        at: Target,
    },
    GuestUnshare {
        g: usize,
        at: Target,
    },
    Reclaim {
        g: usize,
        at: Target,
    },
}

fn frame() -> impl Strategy<Value = Frame> {
    // Host frames, hyp/pool frames, frames past the window, junk; or a fit.
    let host = tu::HOST_FIRST;
    prop_oneof![
        3 => (host..(tu::RAM_PAGES as u64)).prop_map(Frame::Raw),
        1 => (0..host).prop_map(Frame::Raw),
        1 => ((tu::RAM_PAGES as u64)..(tu::RAM_PAGES as u64 + 8)).prop_map(Frame::Raw),
        1 => any::<u64>().prop_map(Frame::Raw),
        6 => (0usize..64).prop_map(Frame::Fit),
    ]
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        1 => (slot(), 0u64..2).prop_map(|(s, o)| Target::Slot(s, o)),
        2 => (0usize..16).prop_map(Target::Fit),
    ]
}

fn count() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 1u64..5, 1 => Just(0u64), 1 => any::<u64>()]
}

fn op() -> impl Strategy<Value = Op> {
    let g = 0usize..2;
    prop_oneof![
        2 => frame().prop_map(Op::ShareHyp),
        2 => frame().prop_map(Op::UnshareHyp),
        2 => (frame(), count()).prop_map(|(f, n)| Op::DonateHyp(f, n)),
        2 => (frame(), count()).prop_map(|(f, n)| Op::HypDonateHost(f, n)),
        1 => (frame(), count()).prop_map(|(f, n)| Op::ClaimDonation(f, n)),
        4 => (g.clone(), frame(), count(), slot(), 0u64..3)
            .prop_map(|(g, frame, count, slot, off)| Op::DonateGuest { g, frame, count, slot, off }),
        3 => (g.clone(), target()).prop_map(|(g, at)| Op::GuestShare { g, at }),
        3 => (g.clone(), target()).prop_map(|(g, at)| Op::GuestUnshare { g, at }),
        2 => (g, target()).prop_map(|(g, at)| Op::Reclaim { g, at }),
    ]
}

/// Resolves a frame argument; a fit picks among rows accepted by `fits`.
fn pick_frame(f: Frame, mp: &MemProtect<'_>, fits: impl Fn(&PageMeta) -> bool) -> Pfn {
    match f {
        Frame::Raw(i) if i < tu::RAM_PAGES as u64 + 8 => tu::pfn(i),
        Frame::Raw(raw) => Pfn::new(raw),
        Frame::Fit(k) => {
            let db = mp.db();
            let fitting: Vec<Pfn> = db
                .range()
                .iter()
                .filter(|&p| db.get(p).is_some_and(|m| fits(&m)))
                .collect();
            if fitting.is_empty() {
                tu::pfn(tu::HOST_FIRST)
            } else {
                fitting[k % fitting.len()]
            }
        }
    }
}

/// Resolves a guest IPA argument; a fit picks among the guest's pages in
/// `state` (any state if `None`).
fn pick_ipa(t: Target, g: &GuestMem, state: Option<PageState>, hal: &FakeHal<'_>) -> Ipa {
    match t {
        Target::Slot(slot, off) => Ipa::new(GUEST_SLOTS[slot] + off * PAGE_SIZE),
        Target::Fit(k) => {
            let fitting: Vec<Ipa> = tu::guest_leaves(g, hal)
                .into_iter()
                .filter(|(_, leaf)| state.is_none_or(|s| leaf.state == s))
                .map(|(ipa, _)| ipa)
                .collect();
            if fitting.is_empty() {
                Ipa::new(GUEST_SLOTS[0])
            } else {
                fitting[k % fitting.len()]
            }
        }
    }
}

fn apply(
    op: &Op,
    mp: &mut MemProtect<'_>,
    guests: &mut [GuestMem; 2],
    hal: &mut FakeHal<'_>,
) -> Result<(), MemProtectError> {
    let host_owned = |m: &PageMeta| m.owner() == Owner::Host && m.host_state() == PageState::Owned;
    let host_shared = |m: &PageMeta| m.host_state() == PageState::SharedOwned;
    let donated = |m: &PageMeta| m.is_host_donation();
    match *op {
        Op::ShareHyp(f) => mp.host_share_hyp(pick_frame(f, mp, host_owned), hal),
        Op::UnshareHyp(f) => mp.host_unshare_hyp(pick_frame(f, mp, host_shared), hal),
        Op::DonateHyp(f, n) => mp.host_donate_hyp(pick_frame(f, mp, host_owned), n, hal),
        Op::HypDonateHost(f, n) => mp.hyp_donate_host(pick_frame(f, mp, donated), n, hal),
        Op::ClaimDonation(f, n) => mp.hyp_claim_donation(pick_frame(f, mp, donated), n),
        Op::DonateGuest {
            g,
            frame,
            count,
            slot,
            off,
        } => {
            let pfn = pick_frame(frame, mp, host_owned);
            let ipa = Ipa::new(GUEST_SLOTS[slot] + off * PAGE_SIZE);
            mp.host_donate_guest(pfn, count, &mut guests[g], ipa, hal)
        }
        Op::GuestShare { g, at } => {
            let ipa = pick_ipa(at, &guests[g], Some(PageState::Owned), hal);
            mp.guest_share_host(&mut guests[g], ipa, hal)
        }
        Op::GuestUnshare { g, at } => {
            let ipa = pick_ipa(at, &guests[g], Some(PageState::SharedOwned), hal);
            mp.guest_unshare_host(&mut guests[g], ipa, hal)
        }
        Op::Reclaim { g, at } => {
            let ipa = pick_ipa(at, &guests[g], None, hal);
            mp.reclaim_guest_page(&mut guests[g], ipa, hal)
        }
    }
}

proptest! {
    #![proptest_config(config(128))]

    /// Random transitions (with OOM injection) keep invariants (a), (b),
    /// fail atomically (d), and teardown leaks nothing (c).
    #[test]
    fn transitions_keep_invariants(
        ops in prop::collection::vec((op(), prop::option::weighted(0.2, 0u64..3)), 1..48)
    ) {
        let mut mem = tu::memory();
        let mut metas = tu::metas();
        let mut hal = tu::hal(&mut mem);
        let mut mp = tu::mem_protect(&mut metas, &mut hal);
        let new_guest = |h: u16, hal: &mut FakeHal<'_>| {
            GuestMem::new(VmHandle::new(h), Vmid(u8::try_from(h).unwrap_or(0)), hal)
        };
        let (Ok(g1), Ok(g2)) = (new_guest(1, &mut hal), new_guest(2, &mut hal)) else {
            return Err(TestCaseError::fail("guest roots"));
        };
        let mut guests = [g1, g2];
        for (op, budget) in &ops {
            let before = snapshot(&mp, &hal);
            if let Some(b) = budget {
                hal.fail_after(*b);
            }
            let r = apply(op, &mut mp, &mut guests, &mut hal);
            hal.set_oom(false);
            match r {
                Ok(()) => {}
                Err(e) => prop_assert!(snapshot(&mp, &hal) == before, "{op:?} failed with {e} but changed state"),
            }
            let [a, b] = &guests;
            if let Err(msg) = tu::check_system(&mp, &[a, b], &hal) {
                return Err(TestCaseError::fail(format!("after {op:?} -> {r:?}: {msg}")));
            }
        }
        for g in &mut guests {
            prop_assert!(mp.reclaim_guest(g, &mut hal).is_ok());
        }
        for g in guests {
            prop_assert!(g.destroy(&mut hal).is_ok());
        }
        for row in mp.db().as_slice() {
            prop_assert!(!matches!(row.owner(), Owner::Guest(_)));
        }
        mp.check_invariants(&hal).map_err(|v| TestCaseError::fail(format!("{v:?}")))?;
        mp.destroy(&mut hal);
        prop_assert_eq!(hal.live_pages(), 0);
    }
}

// ------------------------------------------------------- hostile hypercalls

const KNOWN_IDS: [u32; 11] = [
    smccc::VERSION,
    smccc::ARCH_FEATURES,
    smccc::VENDOR_HYP_CALL_UID,
    smccc::VENDOR_HYP_REVISION,
    hc::GET_VERSION,
    hc::HOST_SHARE_HYP,
    hc::HOST_UNSHARE_HYP,
    hc::HOST_DONATE_HYP,
    hc::HYP_DONATE_HOST,
    hc::PAGE_OWNER,
    0xc600_00bf,
];

fn x0() -> impl Strategy<Value = u64> {
    let known = prop::sample::select(&KNOWN_IDS[..]).prop_map(u64::from);
    prop_oneof![
        8 => known.clone(),
        1 => known.clone().prop_map(|id| id | u64::from(abi::SMCCC_SVE_HINT)),
        1 => (known, 1u64..=u64::from(u32::MAX)).prop_map(|(id, hi)| id | hi << 32),
        1 => any::<u64>(),
    ]
}

fn x1() -> impl Strategy<Value = u64> {
    let base = tu::base_pfn().raw();
    let host = base + tu::HOST_FIRST;
    prop_oneof![
        6 => host..host + 4,
        2 => (0..tu::RAM_PAGES as u64 + 4).prop_map(move |i| base + i),
        2 => (0..(tu::RAM_PAGES as u64 * PAGE_SIZE)).prop_map(|o| tu::BASE + o),
        1 => any::<u64>(),
    ]
}

/// Number of argument registers a call takes (7 for the SMCCC queries,
/// whose unused registers are ignored, and for unknown IDs).
fn arg_count(x0: u64) -> usize {
    let id = u32::try_from(x0).map(|id| id & !abi::SMCCC_SVE_HINT).ok();
    abi::HOST_CALLS
        .iter()
        .find(|c| Some(c.id) == id)
        .map_or(7, |c| c.args.len())
}

/// Registers for a call: its arguments (frame numbers, addresses in and
/// around the window, small counts, junk), and unused registers that are
/// mostly zero and sometimes not.
fn regs() -> impl Strategy<Value = [u64; 8]> {
    let arg = prop_oneof![3 => x1(), 2 => 0u64..5, 1 => any::<u64>()];
    let unused = prop_oneof![20 => Just(0u64), 1 => any::<u64>()];
    let x2 = prop_oneof![6 => 1u64..3, 1 => Just(0u64), 1 => any::<u64>()];
    (
        x0(),
        x1(),
        x2,
        prop::array::uniform5(arg),
        prop::array::uniform7(unused),
    )
        .prop_map(|(x0, x1, x2, more, unused)| {
            let n = arg_count(x0);
            let mut regs = [x0, x1, x2, more[0], more[1], more[2], more[3], more[4]];
            for (i, r) in regs.iter_mut().enumerate().skip(1) {
                if i > n {
                    *r = unused[i - 1];
                }
            }
            regs
        })
}

proptest! {
    #![proptest_config(config(128))]

    /// No register values make the hypervisor panic, and whenever `x0` comes
    /// back as anything but SUCCESS the database and tables are unchanged.
    #[test]
    fn hostile_hypercalls_never_panic_or_half_apply(calls in prop::collection::vec(regs(), 1..48)) {
        let mut mem = tu::memory();
        let mut metas = tu::metas();
        let mut hal = tu::hal(&mut mem);
        let mut mp = tu::mem_protect(&mut metas, &mut hal);
        for regs in &calls {
            let before = snapshot(&mp, &hal);
            let out = handle_host_hvc(regs, &mut mp, &mut hal);
            if out[0] != ret::SUCCESS {
                prop_assert!(snapshot(&mp, &hal) == before, "{regs:x?} -> {out:x?} changed state");
            }
            if let Err(v) = mp.check_invariants(&hal) {
                return Err(TestCaseError::fail(format!("{regs:x?}: {v:?}")));
            }
        }
        mp.destroy(&mut hal);
        prop_assert_eq!(hal.live_pages(), 0);
    }
}
