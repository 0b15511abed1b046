//! Property tests: random sequences of table operations, transitions and
//! hostile hypercalls keep the system invariants.
//!
//! (a) no page is writable by two components unless both hold it shared;
//! (b) the host stage-2 agrees with the database for every frame;
//! (c) after teardown the FakeHal has no table page left allocated;
//! (d) a failing operation leaves the database, every table and the
//!     allocator byte-for-byte unchanged (and, for host and guest calls,
//!     the VM table: power states, registers, guard sets).
//!
//! Case counts are moderate so the whole suite stays fast on two cores.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use crate::abi::{self, hc, ret, smccc};
use crate::addr::{Ipa, Pfn, PhysAddr, PAGE_SHIFT, PAGE_SIZE};
use crate::guest_abi::{self, psci, GuardError, MmioGuardSet};
use crate::hal::{FakeHal, PageWords, WORDS_PER_PAGE};
use crate::hypercall::{handle_host_hvc, HostOutcome};
use crate::mem_protect::{
    GuestMem, MemProtect, MemProtectError, Owner, PageMeta, PageState, VmHandle,
};
use crate::stage2::{Attrs, Leaf, MemType, Perms, Stage2, Stage2Error, Vmid, IPA_LIMIT};
use crate::test_utils::{self as tu, snapshot};
use crate::vm::{self, VmKind, VmTable};

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
    ShareGuest {
        g: usize,
        frame: Frame,
        count: u64,
        slot: usize,
        off: u64,
    },
    UnshareGuest {
        g: usize,
        at: Target,
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
        2 => (g.clone(), frame(), count(), slot(), 0u64..3)
            .prop_map(|(g, frame, count, slot, off)| Op::ShareGuest { g, frame, count, slot, off }),
        2 => (g.clone(), target()).prop_map(|(g, at)| Op::UnshareGuest { g, at }),
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
        Op::ShareGuest {
            g,
            frame,
            count,
            slot,
            off,
        } => {
            let pfn = pick_frame(frame, mp, host_owned);
            let ipa = Ipa::new(GUEST_SLOTS[slot] + off * PAGE_SIZE);
            mp.host_share_guest(pfn, count, &mut guests[g], ipa, hal)
        }
        Op::UnshareGuest { g, at } => {
            let ipa = pick_ipa(at, &guests[g], Some(PageState::SharedBorrowed), hal);
            mp.host_unshare_guest(&mut guests[g], ipa, hal)
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

const KNOWN_IDS: [u32; 21] = [
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
    hc::VM_CREATE,
    hc::VCPU_CREATE,
    hc::VM_DONATE,
    hc::VM_MAP_SHARED,
    hc::VM_UNMAP_SHARED,
    hc::VCPU_SET_REG,
    hc::VCPU_GET_REG,
    hc::VCPU_RUN,
    hc::VM_TEARDOWN,
    hc::VM_RECLAIM,
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

/// A VM call with arguments that are often valid: live handles, host
/// frames, guest IPAs in a few pages, small counts and indices.
fn vm_call() -> impl Strategy<Value = [u64; 8]> {
    let handle = prop_oneof![
        8 => (0u64..3).prop_map(|i| u64::from(vm::HANDLE_OFFSET) + i),
        1 => any::<u64>(),
    ];
    let base = tu::base_pfn().raw();
    let pfn = prop_oneof![
        6 => (tu::HOST_FIRST..tu::RAM_PAGES as u64 + 2).prop_map(move |i| base + i),
        1 => any::<u64>(),
    ];
    let ipa = prop_oneof![
        8 => (0u64..8).prop_map(|k| 0x8000_0000 + k * PAGE_SIZE),
        1 => Just(0x8000_0800u64),
        1 => Just(IPA_LIMIT - PAGE_SIZE),
        1 => any::<u64>(),
    ];
    let count = prop_oneof![8 => 1u64..4, 1 => Just(0u64), 1 => any::<u64>()];
    let kvm_type = prop_oneof![
        4 => Just(0u64),
        4 => Just(abi::vm_type::PROTECTED),
        1 => any::<u64>(),
    ];
    let vcpu = prop_oneof![8 => 0u64..3, 1 => any::<u64>()];
    let features =
        prop_oneof![4 => Just(0u64), 4 => Just(abi::vcpu_feature::POWER_OFF), 1 => any::<u64>()];
    let reg = prop_oneof![8 => 0u64..38, 1 => any::<u64>()];
    let value = prop_oneof![4 => 0u64..0x400, 1 => any::<u64>()];
    let r = |x0: u32, args: &[u64]| {
        let mut regs = [0u64; 8];
        regs[0] = u64::from(x0);
        regs[1..=args.len()].copy_from_slice(args);
        regs
    };
    prop_oneof![
        2 => kvm_type.prop_map(move |t| r(hc::VM_CREATE, &[t])),
        2 => (handle.clone(), vcpu.clone(), features)
            .prop_map(move |(h, v, f)| r(hc::VCPU_CREATE, &[h, v, f])),
        3 => (handle.clone(), pfn.clone(), ipa.clone(), count.clone())
            .prop_map(move |(h, p, i, c)| r(hc::VM_DONATE, &[h, p, i, c])),
        3 => (handle.clone(), pfn, ipa.clone(), count)
            .prop_map(move |(h, p, i, c)| r(hc::VM_MAP_SHARED, &[h, p, i, c])),
        1 => (handle.clone(), ipa).prop_map(move |(h, i)| r(hc::VM_UNMAP_SHARED, &[h, i])),
        2 => (handle.clone(), vcpu.clone(), reg.clone(), value)
            .prop_map(move |(h, v, g, x)| r(hc::VCPU_SET_REG, &[h, v, g, x])),
        1 => (handle.clone(), vcpu.clone(), reg).prop_map(move |(h, v, g)| r(hc::VCPU_GET_REG, &[h, v, g])),
        2 => (handle.clone(), vcpu).prop_map(move |(h, v)| r(hc::VCPU_RUN, &[h, v])),
        1 => handle.clone().prop_map(move |h| r(hc::VM_TEARDOWN, &[h])),
        1 => handle.prop_map(move |h| r(hc::VM_RECLAIM, &[h])),
    ]
}

/// Everything a failed call must leave untouched, the VM table included.
fn full_snapshot(mp: &MemProtect<'_>, vms: &VmTable, hal: &FakeHal<'_>) -> (tu::Snapshot, String) {
    (snapshot(mp, hal), format!("{vms:?}"))
}

fn check_all(mp: &MemProtect<'_>, vms: &VmTable, hal: &FakeHal<'_>) -> Result<(), String> {
    let guests: Vec<&GuestMem> = vms.iter().filter_map(|vm| vm.guest_mem()).collect();
    tu::check_system(mp, &guests, hal)
}

/// Tears every VM down (both phases) and frees the host stage-2: nothing
/// may be left allocated.
fn teardown_all(
    mut mp: MemProtect<'_>,
    vms: &mut VmTable,
    hal: &mut FakeHal<'_>,
) -> Result<(), TestCaseError> {
    let handles: Vec<VmHandle> = vms.iter().map(|vm| vm.handle()).collect();
    for h in handles {
        if vms.get(h).map(|vm| vm.state()) == Some(vm::VmState::Live) {
            prop_assert_eq!(vms.start_teardown(h), Ok(()));
        }
        prop_assert!(vms.finalize_teardown(&mut mp, h, hal).is_ok());
    }
    for row in mp.db().as_slice() {
        prop_assert!(!matches!(row.owner(), Owner::Guest(_)));
    }
    mp.check_invariants(hal)
        .map_err(|v| TestCaseError::fail(format!("{v:?}")))?;
    mp.destroy(hal);
    prop_assert_eq!(hal.live_pages(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(config(128))]

    /// No register values make the hypervisor panic, and whenever `x0` comes
    /// back as anything but SUCCESS the database, the tables and the VM
    /// table are unchanged. VCPU_RUN is then run the way the glue does
    /// (load, put).
    #[test]
    fn hostile_hypercalls_never_panic_or_half_apply(
        calls in prop::collection::vec(prop_oneof![1 => regs(), 1 => vm_call()], 1..48)
    ) {
        let mut mem = tu::memory();
        let mut metas = tu::metas();
        let mut hal = tu::hal(&mut mem);
        let mut mp = tu::mem_protect(&mut metas, &mut hal);
        let mut vms = VmTable::new();
        for regs in &calls {
            let before = full_snapshot(&mp, &vms, &hal);
            match handle_host_hvc(regs, &mut mp, &mut vms, &mut hal) {
                HostOutcome::Return(out) => {
                    if out[0] != ret::SUCCESS {
                        prop_assert!(full_snapshot(&mp, &vms, &hal) == before, "{regs:x?} -> {out:x?} changed state");
                    }
                }
                HostOutcome::RunVcpu { handle, vcpu, .. } => {
                    prop_assert!(full_snapshot(&mp, &vms, &hal) == before, "VCPU_RUN changed state");
                    let index = u64::try_from(vcpu).unwrap_or(u64::MAX);
                    prop_assert!(vms.vcpu_load(handle, index).is_ok());
                    prop_assert_eq!(vms.vcpu_put(handle, index), Ok(()));
                }
            }
            if let Err(msg) = check_all(&mp, &vms, &hal) {
                return Err(TestCaseError::fail(format!("{regs:x?}: {msg}")));
            }
        }
        teardown_all(mp, &mut vms, &mut hal)?;
    }
}

// ------------------------------------------------------------- guest calls

const GUEST_IDS: [u32; 26] = [
    smccc::VERSION,
    smccc::ARCH_FEATURES,
    smccc::VENDOR_HYP_CALL_UID,
    guest_abi::kvm::FEATURES,
    guest_abi::kvm::PTP,
    guest_abi::kvm::HYP_MEMINFO,
    guest_abi::kvm::MEM_SHARE,
    guest_abi::kvm::MEM_UNSHARE,
    guest_abi::kvm::MMIO_GUARD,
    psci::VERSION,
    psci::FEATURES,
    psci::CPU_SUSPEND,
    psci::CPU_SUSPEND_64,
    psci::CPU_OFF,
    psci::CPU_ON,
    psci::CPU_ON_64,
    psci::AFFINITY_INFO,
    psci::AFFINITY_INFO_64,
    psci::MIGRATE_INFO_TYPE,
    psci::SYSTEM_OFF,
    psci::SYSTEM_RESET,
    psci::SYSTEM_RESET2,
    psci::SYSTEM_RESET2_64,
    0xc600_0005,
    0x8400_000e,
    0xc600_0080,
];

/// Guest IPA pages: P maps 0x8000_0000..+8 pages (donated), N
/// 0x8000_0000..+4 (lent); 0x9000_0000.. is MMIO.
fn guest_ipa() -> impl Strategy<Value = u64> {
    prop_oneof![
        10 => (0u64..2).prop_map(|k| 0x8000_0000 + k * PAGE_SIZE),
        4 => (2u64..10).prop_map(|k| 0x8000_0000 + k * PAGE_SIZE),
        3 => (0u64..4).prop_map(|k| 0x9000_0000 + k * PAGE_SIZE),
        1 => Just(0x8000_0010u64),
        1 => Just(IPA_LIMIT),
        1 => Just(IPA_LIMIT - PAGE_SIZE),
        1 => any::<u64>(),
    ]
}

fn guest_regs() -> impl Strategy<Value = [u64; 8]> {
    let known = prop::sample::select(&GUEST_IDS[..]).prop_map(u64::from);
    let memory = prop::sample::select(
        &[
            guest_abi::kvm::MEM_SHARE,
            guest_abi::kvm::MEM_UNSHARE,
            guest_abi::kvm::MEM_UNSHARE,
            guest_abi::kvm::MMIO_GUARD,
            psci::CPU_ON,
        ][..],
    )
    .prop_map(u64::from);
    let x0 = prop_oneof![
        8 => memory,
        8 => known.clone(),
        1 => (known, 1u64..=u64::from(u32::MAX)).prop_map(|(id, hi)| id | hi << 32),
        1 => any::<u32>().prop_map(u64::from),
        1 => any::<u64>(),
    ];
    let x1 = prop_oneof![
        6 => guest_ipa(),
        3 => 0u64..4,
        1 => prop::sample::select(&GUEST_IDS[..]).prop_map(u64::from),
        1 => any::<u64>(),
    ];
    let small = prop_oneof![24 => Just(0u64), 3 => 0u64..5, 1 => any::<u64>()];
    (
        x0,
        x1,
        small.clone(),
        small,
        prop::array::uniform4(any::<u64>()),
    )
        .prop_map(|(x0, x1, x2, x3, rest)| [x0, x1, x2, x3, rest[0], rest[1], rest[2], rest[3]])
}

proptest! {
    #![proptest_config(config(96))]

    /// Random guest calls from random vCPUs of a protected and a normal VM
    /// never panic; every call that returns an error (negative `x0`)
    /// leaves the database, the tables, the guard sets and the power states
    /// as they were; the system invariants hold throughout; guarded pages
    /// are never guest memory; and teardown leaks nothing.
    #[test]
    fn hostile_guest_calls_never_panic_or_half_apply(
        calls in prop::collection::vec((prop::bool::weighted(0.75), 0usize..4, guest_regs()), 1..40)
    ) {
        let mut mem = tu::memory();
        let mut metas = tu::metas();
        let mut hal = tu::hal(&mut mem);
        let mut mp = tu::mem_protect(&mut metas, &mut hal);
        let mut vms = VmTable::new();
        let (Ok(p), Ok(n)) = (
            vms.create_vm(VmKind::Protected, &mut hal),
            vms.create_vm(VmKind::Normal, &mut hal),
        ) else {
            return Err(TestCaseError::fail("create"));
        };
        let off = abi::vcpu_feature::POWER_OFF;
        for (h, v, f) in [(p, 0, 0), (p, 1, off), (p, 2, off), (n, 0, 0), (n, 1, off)] {
            prop_assert!(vms.create_vcpu(h, v, f).is_ok());
        }
        let ram = Ipa::new(0x8000_0000);
        let host = tu::pfn(tu::HOST_FIRST);
        prop_assert_eq!(vms.donate(&mut mp, p, host, ram, 8, &mut hal), Ok(()));
        let lent = tu::pfn(tu::HOST_FIRST + 8);
        prop_assert_eq!(vms.map_shared(&mut mp, n, lent, ram, 4, &mut hal), Ok(()));

        for (protected, caller, regs) in &calls {
            let h = if *protected { p } else { n };
            let before = full_snapshot(&mp, &vms, &hal);
            let Some(vm) = vms.get_mut(h) else {
                return Err(TestCaseError::fail("vm"));
            };
            let out = guest_abi::handle_guest_hvc(regs, *caller, &mut mp, vm, &mut hal);
            let x0 = out.regs()[0];
            if x0.cast_signed() < 0 {
                prop_assert!(full_snapshot(&mp, &vms, &hal) == before, "{regs:x?} -> {out:x?} changed state");
            }
            // The upper half of x0 and x4..x7 never matter.
            let kind = if *protected { VmKind::Protected } else { VmKind::Normal };
            let mut noisy = *regs;
            noisy[0] ^= 0xdead_beef << 32;
            noisy[4..].copy_from_slice(&[1, 2, 3, u64::MAX]);
            prop_assert_eq!(
                guest_abi::decode_guest_call(regs, kind),
                guest_abi::decode_guest_call(&noisy, kind)
            );
            let Some(vm) = vms.get(h) else {
                return Err(TestCaseError::fail("vm"));
            };
            if let Ok(guest_abi::GuestCall::MmioGuard { ipa }) = guest_abi::decode_guest_call(regs, kind) {
                if x0 == ret::SUCCESS {
                    prop_assert!(vm.mmio_exit_allowed(ipa));
                }
            }
            for (start, pages) in vm.mmio_guard().runs() {
                for k in 0..pages {
                    let ipa = Ipa::new(start.raw() + k * PAGE_SIZE);
                    prop_assert!(!vm.is_guest_memory(ipa, &hal), "{ipa} guarded and mapped");
                }
            }
            if let Err(msg) = check_all(&mp, &vms, &hal) {
                return Err(TestCaseError::fail(format!("{regs:x?}: {msg}")));
            }
        }
        teardown_all(mp, &mut vms, &mut hal)?;
    }

    /// Any trap a guest can cause (random vector, syndrome, addresses and
    /// registers), followed by any `VCPU_RUN` flags and data the host can
    /// send: the hyp never panics; a trap changes no page's owner (only
    /// guest calls do, and they have their own property); a request that
    /// does not fit what is pending is refused and changes nothing; the
    /// PC only moves to the next instruction or to the guest's vectors.
    #[test]
    fn hostile_guest_traps_and_run_requests_never_panic(
        steps in prop::collection::vec((
            prop::bool::ANY,
            prop_oneof![Just(8u64), Just(9), Just(11), any::<u64>()],
            prop_oneof![
                (0u64..0x40, any::<u32>()).prop_map(|(ec, iss)| ec << 26 | 1 << 25 | u64::from(iss & 0x1ff_ffff)),
                any::<u64>(),
            ],
            prop_oneof![0x8000_0000u64..0x8002_0000, 0x0900_0000u64..0x0900_2000, any::<u64>()],
            (0u64..4, any::<u64>()),
            any::<[u64; 8]>(),
        ), 1..40)
    ) {
        use crate::exits::{self, ExitAction, GuestTrap, RunRequest};
        let mut mem = tu::memory();
        let mut metas = tu::metas();
        let mut hal = tu::hal(&mut mem);
        let mut mp = tu::mem_protect(&mut metas, &mut hal);
        let mut vms = VmTable::new();
        let (Ok(p), Ok(n)) = (
            vms.create_vm(VmKind::Protected, &mut hal),
            vms.create_vm(VmKind::Normal, &mut hal),
        ) else {
            return Err(TestCaseError::fail("create"));
        };
        for h in [p, n] {
            prop_assert!(vms.create_vcpu(h, 0, 0).is_ok());
        }
        let ram = Ipa::new(0x8000_0000);
        prop_assert_eq!(vms.donate(&mut mp, p, tu::pfn(tu::HOST_FIRST), ram, 8, &mut hal), Ok(()));
        prop_assert_eq!(vms.map_shared(&mut mp, n, tu::pfn(tu::HOST_FIRST + 8), ram, 4, &mut hal), Ok(()));
        const VBAR: u64 = 0x8000_4000;
        for (protected, vector, esr, ipa, (flags, data), regs) in &steps {
            let h = if *protected { p } else { n };
            let run = RunRequest { flags: *flags & abi::run_flag::ALL, data: if flags & 2 != 0 { *data } else { 0 }, pending: u128::from(*data) << (flags & 64) };
            let before = full_snapshot(&mp, &vms, &hal);
            if vms.settle_pending(h, 0, run, &hal).is_err() {
                prop_assert!(full_snapshot(&mp, &vms, &hal) == before, "refused run changed state");
            }
            prop_assert!(vms.vcpu_load(h, 0).is_ok());
            let Some(ctx) = vms.loaded_context(h, 0) else {
                return Err(TestCaseError::fail("ctx"));
            };
            // Only HVCs reach the guest ABI; make most of them harmless so
            // the traps themselves are what varies.
            ctx.x[..8].copy_from_slice(regs);
            ctx.x[0] = u64::from(psci::VERSION);
            ctx.sys.vbar_el1 = VBAR;
            // Whatever the guest left in its timer: the hyp's entry work
            // (timer interrupt, list registers) must not care.
            ctx.timer.cntv_ctl_el0 = regs[6];
            ctx.timer.cntv_cval_el0 = regs[7];
            vms.prepare_entry(h, 0, *ipa, usize::try_from(*flags * 5).unwrap_or(0));
            let Some(ctx) = vms.loaded_context(h, 0) else {
                return Err(TestCaseError::fail("ctx"));
            };
            let pc = ctx.pc;
            let owners: Vec<_> = mp.db().as_slice().iter().map(|m| m.owner()).collect();
            let trap = GuestTrap { vector: *vector, esr: *esr, far: *ipa ^ 0xffff, ipa: *ipa, now: *ipa ^ *esr };
            let action = exits::handle_guest_exit(&mut vms, h, 0, trap, &mut mp, &mut hal);
            let after: Vec<_> = mp.db().as_slice().iter().map(|m| m.owner()).collect();
            prop_assert_eq!(owners, after);
            let Some(ctx) = vms.loaded_context(h, 0) else {
                return Err(TestCaseError::fail("ctx"));
            };
            let moved = ctx.pc.wrapping_sub(pc);
            prop_assert!(
                matches!(moved, 0 | 2 | 4) || ctx.pc & !0x600 == VBAR,
                "pc {pc:#x} -> {:#x} after {trap:x?} -> {action:x?}", ctx.pc
            );
            if let ExitAction::Exit(r) = action {
                prop_assert!(r[0] == ret::SUCCESS || r[0] == ret::INVALID_PARAMETER);
            }
            prop_assert_eq!(vms.vcpu_put(h, 0), Ok(()));
            if let Err(msg) = check_all(&mp, &vms, &hal) {
                return Err(TestCaseError::fail(format!("{trap:x?}: {msg}")));
            }
        }
        teardown_all(mp, &mut vms, &mut hal)?;
    }

    /// MEM_SHARE, MEM_UNSHARE and MMIO_GUARD from a protected guest agree
    /// with a model (a set of shared pages, a set of guarded pages) on
    /// pages around the end of its memory, and the host hears of exactly
    /// the successful shares and unshares.
    #[test]
    fn guest_memory_calls_match_model(
        ops in prop::collection::vec((0u8..3, 5u64..11, 0usize..3), 1..40)
    ) {
        let mut mem = tu::memory();
        let mut metas = tu::metas();
        let mut hal = tu::hal(&mut mem);
        let mut mp = tu::mem_protect(&mut metas, &mut hal);
        let mut vms = VmTable::new();
        let Ok(p) = vms.create_vm(VmKind::Protected, &mut hal) else {
            return Err(TestCaseError::fail("create"));
        };
        prop_assert!(vms.create_vcpu(p, 0, 0).is_ok());
        let ram_pages = 8;
        let ram = Ipa::new(0x8000_0000);
        prop_assert_eq!(vms.donate(&mut mp, p, tu::pfn(tu::HOST_FIRST), ram, ram_pages, &mut hal), Ok(()));
        let mut shared: BTreeSet<u64> = BTreeSet::new();
        let mut guarded: BTreeSet<u64> = BTreeSet::new();
        for &(op, page, caller) in &ops {
            let ipa = Ipa::new(ram.raw() + page * PAGE_SIZE);
            let fid = [guest_abi::kvm::MEM_SHARE, guest_abi::kvm::MEM_UNSHARE, guest_abi::kvm::MMIO_GUARD][usize::from(op)];
            let Some(vm) = vms.get_mut(p) else {
                return Err(TestCaseError::fail("vm"));
            };
            let regs = [u64::from(fid), ipa.raw(), 0, 0, 0, 0, 0, 0];
            let out = guest_abi::handle_guest_hvc(&regs, caller, &mut mp, vm, &mut hal);
            let in_ram = page < ram_pages;
            let ok = [ret::SUCCESS, 0, 0, 0];
            let expected = match op {
                0 if in_ram && shared.insert(page) => guest_abi::GuestOutcome::ExitToHost {
                    regs: ok, exit: guest_abi::HostExit::MemShare { ipa },
                },
                1 if in_ram && shared.remove(&page) => guest_abi::GuestOutcome::ExitToHost {
                    regs: ok, exit: guest_abi::HostExit::MemUnshare { ipa },
                },
                2 if !in_ram => {
                    guarded.insert(page);
                    guest_abi::GuestOutcome::Return(ok)
                }
                // Not memory yet: the host is asked to fault it in (a page
                // guarded as MMIO never will be).
                0 if !in_ram => guest_abi::GuestOutcome::FaultIn { ipa },
                _ => guest_abi::GuestOutcome::Return([ret::INVALID_PARAMETER, 0, 0, 0]),
            };
            prop_assert_eq!(out, expected);
            let Some(vm) = vms.get(p) else {
                return Err(TestCaseError::fail("vm"));
            };
            for k in 5..11 {
                let ipa = Ipa::new(ram.raw() + k * PAGE_SIZE);
                prop_assert_eq!(vm.mmio_exit_allowed(ipa), guarded.contains(&k));
                if k < ram_pages {
                    let host = mp.db().get(tu::pfn(tu::HOST_FIRST + k)).map(|m| m.host_state());
                    let want = if shared.contains(&k) { PageState::SharedBorrowed } else { PageState::NoPage };
                    prop_assert_eq!(host, Some(want));
                }
            }
            if let Err(msg) = check_all(&mp, &vms, &hal) {
                return Err(TestCaseError::fail(msg));
            }
        }
        teardown_all(mp, &mut vms, &mut hal)?;
    }

    /// The MMIO guard set agrees with a plain set of pages, keeps its runs
    /// sorted, disjoint and non-adjacent, and changes nothing when full.
    #[test]
    fn mmio_guard_set_matches_model(
        pages in prop::collection::vec(prop_oneof![
            8 => 0u64..160,
            1 => Just(IPA_LIMIT >> PAGE_SHIFT),
            1 => any::<u64>() ,
        ], 1..200),
        unaligned in any::<bool>(),
    ) {
        let mut set = MmioGuardSet::new();
        let mut model: BTreeSet<u64> = BTreeSet::new();
        for (i, &g) in pages.iter().enumerate() {
            let raw = g.wrapping_shl(PAGE_SHIFT) | u64::from(unaligned && i == 0);
            let ipa = Ipa::new(raw);
            let before = set.clone();
            match set.insert(ipa) {
                Ok(()) => {
                    model.insert(ipa.gfn());
                }
                Err(GuardError::Full) => {
                    prop_assert!(set == before);
                    let mut with = model.clone();
                    with.insert(ipa.gfn());
                    prop_assert!(runs_of(&with) > guest_abi::MMIO_GUARD_RUNS);
                }
                Err(_) => {
                    prop_assert!(set == before);
                    prop_assert!(!ipa.is_page_aligned() || raw >= IPA_LIMIT);
                }
            }
            prop_assert_eq!(set.pages(), u64::try_from(model.len()).unwrap_or(0));
            let runs: Vec<(Ipa, u64)> = set.runs().collect();
            prop_assert_eq!(runs.len(), runs_of(&model));
            for w in runs.windows(2) {
                prop_assert!(w[0].0.gfn() + w[0].1 < w[1].0.gfn(), "{runs:?}");
            }
        }
        for g in 0..170 {
            prop_assert_eq!(set.contains(Ipa::new(g << PAGE_SHIFT)), model.contains(&g));
            prop_assert_eq!(set.overlaps(Ipa::new(g << PAGE_SHIFT), 3),
                (g..g + 3).any(|x| model.contains(&x)));
        }
    }
}

/// Number of maximal runs of consecutive numbers in `set`.
fn runs_of(set: &BTreeSet<u64>) -> usize {
    let mut runs = 0;
    let mut prev: Option<u64> = None;
    for &g in set {
        if prev.is_none_or(|p| p + 1 != g) {
            runs += 1;
        }
        prev = Some(g);
    }
    runs
}
