//! Unit tests: each transition's before → after table, and each error.

use super::*;
use crate::hal::FakeHal;
use crate::stage2::{Leaf, MemType, Perms};
use crate::test_utils::{self as tu, pfn, snapshot, HOST_FIRST};

const H: u64 = HOST_FIRST; // first host-owned frame index
const G1: VmHandle = VmHandle::new(1);
const G2: VmHandle = VmHandle::new(2);

fn row(mp: &MemProtect<'_>, i: u64) -> PageMeta {
    match mp.db().get(pfn(i)) {
        Some(m) => m,
        None => panic!("no row for frame {i}"),
    }
}

fn host_leaf(mp: &MemProtect<'_>, hal: &FakeHal<'_>, i: u64) -> Option<Leaf> {
    let pa = pa_of(pfn(i));
    mp.host_stage2().walk(pa.to_identity_ipa(), hal)
}

fn guest(handle: VmHandle, hal: &mut FakeHal<'_>) -> GuestMem {
    match GuestMem::new(handle, Vmid(handle.raw().try_into().unwrap_or(0)), hal) {
        Ok(g) => g,
        Err(e) => panic!("GuestMem::new: {e}"),
    }
}

fn ok(r: Result<()>) {
    assert_eq!(r, Ok(()));
}

fn meta(owner: Owner, host: PageState, hyp: PageState) -> PageMeta {
    PageMeta {
        owner,
        host_state: host,
        hyp_state: hyp,
        host_donation: false,
    }
}

fn check(mp: &MemProtect<'_>, guests: &[&GuestMem], hal: &FakeHal<'_>) {
    if let Err(e) = tu::check_system(mp, guests, hal) {
        panic!("invariant violated: {e}");
    }
}

#[test]
fn new_splits_hyp_and_host_and_maps_the_host() {
    let mut mem = tu::memory();
    let mut metas = tu::metas();
    let mut hal = tu::hal(&mut mem);
    let mp = tu::mem_protect(&mut metas, &mut hal);
    assert_eq!(mp.db().range().count(), 128);
    assert_eq!(row(&mp, 0), PageMeta::HYP_OWNED);
    assert_eq!(row(&mp, H - 1), PageMeta::HYP_OWNED);
    assert_eq!(row(&mp, H), PageMeta::HOST_OWNED);
    assert_eq!(host_leaf(&mp, &hal, 0), None);
    assert_eq!(
        host_leaf(&mp, &hal, H),
        Some(Leaf {
            pa: pa_of(pfn(H)),
            attrs: Attrs::RAM_RWX,
            state: PageState::Owned
        })
    );
    // root + one level-2 + one level-3 table cover the 512 KiB window.
    assert_eq!(mp.host_stage2().table_pages(), 3);
    assert_eq!(mp.host_stage2().vmid(), Vmid::HOST);
    check(&mp, &[], &hal);
    mp.destroy(&mut hal);
    assert_eq!(hal.live_pages(), 0);
}

#[test]
fn new_rejects_bad_ranges_and_survives_oom() {
    let mut mem = tu::memory();
    let mut hal = tu::hal(&mut mem);
    let mut empty: [PageMeta; 0] = [];
    let r = MemProtect::new(tu::base_pfn(), &mut empty, &[], &mut hal);
    assert_eq!(r.err(), Some(MemProtectError::ZeroCount));
    let mut metas = tu::metas();
    let past_ipa = Pfn::new((IPA_LIMIT >> PAGE_SHIFT) - 1);
    let r = MemProtect::new(past_ipa, &mut metas, &[], &mut hal);
    assert_eq!(
        r.err(),
        Some(MemProtectError::OutOfRange {
            pfn: past_ipa,
            count: 128
        })
    );
    for budget in 0..3 {
        hal.fail_after(budget);
        let r = MemProtect::new(tu::base_pfn(), &mut metas, &[tu::pool_range()], &mut hal);
        assert_eq!(r.err(), Some(MemProtectError::NoMemory));
        assert_eq!(hal.live_pages(), 0, "budget {budget}");
    }
    hal.set_oom(false);
    // Hyp ranges are clipped to the managed range.
    let Some(straddling) = PfnRange::new(Pfn::new(tu::base_pfn().raw() - 4), 6) else {
        panic!("range")
    };
    let Some(outside) = PfnRange::new(Pfn::new(1), 1) else {
        panic!("range")
    };
    let r = MemProtect::new(tu::base_pfn(), &mut metas, &[straddling, outside], &mut hal);
    let Ok(mp) = r else { panic!("new: {r:?}") };
    assert_eq!(row(&mp, 1).owner(), Owner::Hyp);
    assert_eq!(row(&mp, 2).owner(), Owner::Host);
    mp.destroy(&mut hal);
}

#[test]
fn host_share_and_unshare_hyp() {
    let mut mem = tu::memory();
    let mut metas = tu::metas();
    let mut hal = tu::hal(&mut mem);
    let mut mp = tu::mem_protect(&mut metas, &mut hal);
    let p = H + 3;

    ok(mp.host_share_hyp(pfn(p), &mut hal));
    assert_eq!(
        row(&mp, p),
        meta(
            Owner::Host,
            PageState::SharedOwned,
            PageState::SharedBorrowed
        )
    );
    assert_eq!(
        host_leaf(&mp, &hal, p),
        Some(Leaf {
            pa: pa_of(pfn(p)),
            attrs: Attrs::RAM_RWX,
            state: PageState::SharedOwned
        })
    );
    assert_eq!(hal.tlbi_range_calls(), 0, "state-only change");
    check(&mp, &[], &hal);

    ok(mp.host_unshare_hyp(pfn(p), &mut hal));
    assert_eq!(row(&mp, p), PageMeta::HOST_OWNED);
    assert_eq!(
        host_leaf(&mp, &hal, p).map(|l| l.state),
        Some(PageState::Owned)
    );
    check(&mp, &[], &hal);
    mp.destroy(&mut hal);
}

#[test]
fn host_share_and_unshare_hyp_errors() {
    let mut mem = tu::memory();
    let mut metas = tu::metas();
    let mut hal = tu::hal(&mut mem);
    let mut mp = tu::mem_protect(&mut metas, &mut hal);
    let p = H + 3;
    ok(mp.host_share_hyp(pfn(p), &mut hal));
    let before = snapshot(&mp, &hal);
    let shared = MemProtectError::BadState {
        pfn: pfn(p),
        component: Owner::Host,
        state: PageState::SharedOwned,
    };
    assert_eq!(mp.host_share_hyp(pfn(p), &mut hal), Err(shared));
    assert_eq!(
        mp.host_share_hyp(pfn(0), &mut hal),
        Err(MemProtectError::NotOwned {
            pfn: pfn(0),
            owner: Owner::Hyp
        })
    );
    assert_eq!(
        mp.host_unshare_hyp(pfn(H), &mut hal),
        Err(MemProtectError::BadState {
            pfn: pfn(H),
            component: Owner::Host,
            state: PageState::Owned
        })
    );
    assert_eq!(
        mp.host_unshare_hyp(pfn(0), &mut hal),
        Err(MemProtectError::NotOwned {
            pfn: pfn(0),
            owner: Owner::Hyp
        })
    );
    for bad in [Pfn::new(0), pfn(128), Pfn::new(u64::MAX)] {
        let e = MemProtectError::OutOfRange { pfn: bad, count: 1 };
        assert_eq!(mp.host_share_hyp(bad, &mut hal), Err(e));
        assert_eq!(mp.host_unshare_hyp(bad, &mut hal), Err(e));
    }
    assert_eq!(snapshot(&mp, &hal), before);
    mp.destroy(&mut hal);
}

#[test]
fn host_donate_hyp_and_back() {
    let mut mem = tu::memory();
    let mut metas = tu::metas();
    let mut hal = tu::hal(&mut mem);
    let mut mp = tu::mem_protect(&mut metas, &mut hal);
    let p = H + 10;

    ok(mp.host_donate_hyp(pfn(p), 4, &mut hal));
    for i in p..p + 4 {
        let m = row(&mp, i);
        assert_eq!(
            (m.owner(), m.host_state(), m.hyp_state()),
            (Owner::Hyp, PageState::NoPage, PageState::Owned)
        );
        assert!(m.is_host_donation());
        assert_eq!(host_leaf(&mp, &hal, i), None);
    }
    assert_eq!(
        (hal.tlbi_range_calls(), hal.tlbi_pages()),
        (1, 4),
        "one ranged TLBI"
    );
    assert_eq!(row(&mp, p + 4), PageMeta::HOST_OWNED);
    check(&mp, &[], &hal);

    ok(mp.hyp_donate_host(pfn(p), 2, &mut hal));
    for i in p..p + 2 {
        assert_eq!(row(&mp, i), PageMeta::HOST_OWNED);
        assert_eq!(
            host_leaf(&mp, &hal, i).map(|l| l.attrs),
            Some(Attrs::RAM_RWX)
        );
    }
    check(&mp, &[], &hal);

    // Once the hyp claims a donation the host cannot take it back.
    ok(mp.hyp_claim_donation(pfn(p + 2), 1));
    assert_eq!(row(&mp, p + 2), PageMeta::HYP_OWNED);
    assert_eq!(
        mp.hyp_donate_host(pfn(p + 2), 2, &mut hal),
        Err(MemProtectError::NotDonated { pfn: pfn(p + 2) })
    );
    assert_eq!(
        mp.hyp_claim_donation(pfn(p + 2), 1),
        Err(MemProtectError::NotDonated { pfn: pfn(p + 2) })
    );
    ok(mp.hyp_donate_host(pfn(p + 3), 1, &mut hal));
    check(&mp, &[], &hal);
    mp.destroy(&mut hal);
}

#[test]
fn donation_errors_change_nothing() {
    let mut mem = tu::memory();
    let mut metas = tu::metas();
    let mut hal = tu::hal(&mut mem);
    let mut mp = tu::mem_protect(&mut metas, &mut hal);
    ok(mp.host_share_hyp(pfn(H + 2), &mut hal));
    let before = snapshot(&mp, &hal);
    let cases = [
        (pfn(H), 0, MemProtectError::ZeroCount),
        (
            pfn(120),
            9,
            MemProtectError::OutOfRange {
                pfn: pfn(120),
                count: 9,
            },
        ),
        (
            Pfn::new(u64::MAX),
            2,
            MemProtectError::OutOfRange {
                pfn: Pfn::new(u64::MAX),
                count: 2,
            },
        ),
        (
            pfn(H),
            u64::MAX,
            MemProtectError::OutOfRange {
                pfn: pfn(H),
                count: u64::MAX,
            },
        ),
        // The hyp's own memory: the first frame of the range decides.
        (
            pfn(H - 1),
            2,
            MemProtectError::NotOwned {
                pfn: pfn(H - 1),
                owner: Owner::Hyp,
            },
        ),
        // A shared frame in the middle of the range.
        (
            pfn(H),
            4,
            MemProtectError::BadState {
                pfn: pfn(H + 2),
                component: Owner::Host,
                state: PageState::SharedOwned,
            },
        ),
    ];
    for (p, n, e) in cases {
        assert_eq!(mp.host_donate_hyp(p, n, &mut hal), Err(e), "{p} x {n}");
    }
    // Boot-time hyp memory is never handed to the host.
    assert_eq!(
        mp.hyp_donate_host(pfn(0), 1, &mut hal),
        Err(MemProtectError::NotDonated { pfn: pfn(0) })
    );
    assert_eq!(
        mp.hyp_donate_host(pfn(H), 1, &mut hal),
        Err(MemProtectError::NotOwned {
            pfn: pfn(H),
            owner: Owner::Host
        })
    );
    assert_eq!(
        mp.hyp_donate_host(pfn(0), 0, &mut hal),
        Err(MemProtectError::ZeroCount)
    );
    assert_eq!(snapshot(&mp, &hal), before);
    assert_eq!(hal.tlbi_range_calls(), 0);
    mp.destroy(&mut hal);
}

#[test]
fn hyp_donate_host_out_of_memory_changes_nothing() {
    let mut mem = tu::memory();
    let mut metas = tu::metas();
    let mut hal = tu::hal(&mut mem);
    // Host RAM only in the second half of a fresh level-3 table: make the
    // database start at the window, but give the hyp everything at first.
    let Some(all) = PfnRange::new(tu::base_pfn(), 128) else {
        panic!("range")
    };
    let r = MemProtect::new(tu::base_pfn(), &mut metas, &[all], &mut hal);
    let Ok(mut mp) = r else { panic!("{r:?}") };
    assert_eq!(mp.host_stage2().table_pages(), 1, "nothing mapped yet");
    // Pretend the host donated these (boot pages are never returnable).
    for m in &mut mp.db.meta[100..104] {
        m.host_donation = true;
    }
    let before = snapshot(&mp, &hal);
    hal.fail_after(1); // the map needs a level-2 and a level-3 table
    assert_eq!(
        mp.hyp_donate_host(pfn(100), 4, &mut hal),
        Err(MemProtectError::NoMemory)
    );
    assert_eq!(snapshot(&mp, &hal), before);
    hal.set_oom(false);
    ok(mp.hyp_donate_host(pfn(100), 4, &mut hal));
    assert_eq!(mp.host_stage2().table_pages(), 3);
    check(&mp, &[], &hal);
    mp.destroy(&mut hal);
    assert_eq!(hal.live_pages(), 0);
}

#[test]
fn guest_lifecycle_donate_share_unshare_reclaim() {
    let mut mem = tu::memory();
    let mut metas = tu::metas();
    let mut hal = tu::hal(&mut mem);
    let mut mp = tu::mem_protect(&mut metas, &mut hal);
    let mut g = guest(G1, &mut hal);
    let ipa = Ipa::new(0x8000_0000);
    let p = H + 20;
    // The VMM loaded something there: donation keeps contents.
    if let Some(page) = hal.page_mut(pa_of(pfn(p))) {
        page[0] = 0xfeed;
    }

    ok(mp.host_donate_guest(pfn(p), 3, &mut g, ipa, &mut hal));
    for i in 0..3 {
        assert_eq!(
            row(&mp, p + i),
            meta(Owner::Guest(G1), PageState::NoPage, PageState::NoPage)
        );
        assert_eq!(host_leaf(&mp, &hal, p + i), None);
        let leaf = g.stage2().walk(Ipa::new(ipa.raw() + i * 4096), &hal);
        assert_eq!(
            leaf,
            Some(Leaf {
                pa: pa_of(pfn(p + i)),
                attrs: GUEST_RAM_ATTRS,
                state: PageState::Owned
            })
        );
    }
    assert_eq!(hal.page(pa_of(pfn(p))).map(|pg| pg[0]), Some(0xfeed));
    check(&mp, &[&g], &hal);

    let shared_ipa = Ipa::new(ipa.raw() + 4096);
    ok(mp.guest_share_host(&mut g, shared_ipa, &mut hal));
    assert_eq!(
        row(&mp, p + 1),
        meta(
            Owner::Guest(G1),
            PageState::SharedBorrowed,
            PageState::NoPage
        )
    );
    let host = host_leaf(&mp, &hal, p + 1);
    assert_eq!(
        host.map(|l| (l.attrs, l.state)),
        Some((Attrs::RAM_RW, PageState::SharedBorrowed))
    );
    assert_eq!(host.map(|l| l.attrs.perms.contains(Perms::X)), Some(false));
    assert_eq!(
        g.stage2().walk(shared_ipa, &hal).map(|l| l.state),
        Some(PageState::SharedOwned)
    );
    check(&mp, &[&g], &hal);

    ok(mp.guest_unshare_host(&mut g, shared_ipa, &mut hal));
    assert_eq!(
        row(&mp, p + 1),
        meta(Owner::Guest(G1), PageState::NoPage, PageState::NoPage)
    );
    assert_eq!(host_leaf(&mp, &hal, p + 1), None);
    assert_eq!(
        g.stage2().walk(shared_ipa, &hal).map(|l| l.state),
        Some(PageState::Owned)
    );
    check(&mp, &[&g], &hal);

    // Reclaim one page while shared, then the rest by sweeping.
    ok(mp.guest_share_host(&mut g, shared_ipa, &mut hal));
    if let Some(page) = hal.page_mut(pa_of(pfn(p + 1))) {
        page[5] = 0x5ec7e7;
    }
    ok(mp.reclaim_guest_page(&mut g, shared_ipa, &mut hal));
    assert_eq!(row(&mp, p + 1), PageMeta::HOST_OWNED);
    assert_eq!(
        host_leaf(&mp, &hal, p + 1).map(|l| l.attrs),
        Some(Attrs::RAM_RWX)
    );
    assert!(hal
        .page(pa_of(pfn(p + 1)))
        .is_some_and(|pg| pg.iter().all(|&w| w == 0)));
    assert_eq!(g.stage2().walk(shared_ipa, &hal), None);
    check(&mp, &[&g], &hal);

    let g = match g.destroy(&mut hal) {
        Err(g) => g,
        Ok(()) => panic!("destroyed a guest that still maps pages"),
    };
    let mut g = g;
    assert_eq!(mp.reclaim_guest(&mut g, &mut hal), Ok(2));
    assert!(
        hal.page(pa_of(pfn(p))).is_some_and(|pg| pg[0] == 0),
        "wiped"
    );
    for i in 0..3 {
        assert_eq!(row(&mp, p + i), PageMeta::HOST_OWNED);
    }
    check(&mp, &[&g], &hal);
    assert_eq!(g.destroy(&mut hal).err().map(|g| g.handle()), None);
    mp.destroy(&mut hal);
    assert_eq!(hal.live_pages(), 0);
}

#[test]
fn guest_transition_errors_change_nothing() {
    let mut mem = tu::memory();
    let mut metas = tu::metas();
    let mut hal = tu::hal(&mut mem);
    let mut mp = tu::mem_protect(&mut metas, &mut hal);
    let mut g1 = guest(G1, &mut hal);
    let mut g2 = guest(G2, &mut hal);
    let ipa = Ipa::new(0x8000_0000);
    let next = Ipa::new(0x8000_1000);
    ok(mp.host_donate_guest(pfn(H), 2, &mut g1, ipa, &mut hal));
    ok(mp.guest_share_host(&mut g1, next, &mut hal));
    ok(mp.host_share_hyp(pfn(H + 5), &mut hal));
    let before = snapshot(&mp, &hal);
    let g1_owned = |pfn, state| MemProtectError::BadState {
        pfn,
        component: Owner::Guest(G1),
        state,
    };

    // host_donate_guest
    assert_eq!(
        mp.host_donate_guest(pfn(H), 1, &mut g2, Ipa::new(0), &mut hal),
        Err(MemProtectError::NotOwned {
            pfn: pfn(H),
            owner: Owner::Guest(G1)
        })
    );
    assert_eq!(
        mp.host_donate_guest(pfn(H + 5), 1, &mut g2, Ipa::new(0), &mut hal),
        Err(MemProtectError::BadState {
            pfn: pfn(H + 5),
            component: Owner::Host,
            state: PageState::SharedOwned
        })
    );
    assert_eq!(
        mp.host_donate_guest(pfn(H + 8), 2, &mut g1, next, &mut hal),
        Err(MemProtectError::IpaMapped { ipa: next })
    );
    assert_eq!(
        mp.host_donate_guest(pfn(H + 8), 1, &mut g1, Ipa::new(0x123), &mut hal),
        Err(MemProtectError::Unaligned { addr: 0x123 })
    );
    let top = Ipa::new(IPA_LIMIT - 4096);
    assert_eq!(
        mp.host_donate_guest(pfn(H + 8), 2, &mut g1, top, &mut hal),
        Err(MemProtectError::IpaOutOfRange { ipa: top, pages: 2 })
    );
    assert_eq!(
        mp.host_donate_guest(pfn(H + 8), 0, &mut g1, top, &mut hal),
        Err(MemProtectError::ZeroCount)
    );
    // Out of memory for the guest's tables (root exists; needs 2 more).
    hal.fail_after(1);
    assert_eq!(
        mp.host_donate_guest(pfn(H + 8), 1, &mut g2, Ipa::new(0x4000_0000), &mut hal),
        Err(MemProtectError::NoMemory)
    );
    hal.set_oom(false);

    // guest_share_host / guest_unshare_host / reclaim_guest_page
    assert_eq!(
        mp.guest_share_host(&mut g1, next, &mut hal),
        Err(g1_owned(pfn(H + 1), PageState::SharedOwned))
    );
    assert_eq!(
        mp.guest_unshare_host(&mut g1, ipa, &mut hal),
        Err(g1_owned(pfn(H), PageState::Owned))
    );
    for op in 0..3 {
        let run =
            |mp: &mut MemProtect<'_>, g: &mut GuestMem, a: Ipa, hal: &mut FakeHal<'_>| match op {
                0 => mp.guest_share_host(g, a, hal),
                1 => mp.guest_unshare_host(g, a, hal),
                _ => mp.reclaim_guest_page(g, a, hal),
            };
        let unmapped = Ipa::new(0x9000_0000);
        assert_eq!(
            run(&mut mp, &mut g1, unmapped, &mut hal),
            Err(MemProtectError::IpaNotMapped { ipa: unmapped })
        );
        assert_eq!(
            run(&mut mp, &mut g2, ipa, &mut hal),
            Err(MemProtectError::IpaNotMapped { ipa })
        );
        assert_eq!(
            run(&mut mp, &mut g1, Ipa::new(0x8000_0010), &mut hal),
            Err(MemProtectError::Unaligned { addr: 0x8000_0010 })
        );
        let far = Ipa::new(IPA_LIMIT);
        assert_eq!(
            run(&mut mp, &mut g1, far, &mut hal),
            Err(MemProtectError::IpaOutOfRange { ipa: far, pages: 1 })
        );
    }
    assert_eq!(snapshot(&mp, &hal), before);
    check(&mp, &[&g1, &g2], &hal);

    assert_eq!(mp.reclaim_guest(&mut g1, &mut hal), Ok(2));
    assert_eq!(mp.reclaim_guest(&mut g2, &mut hal), Ok(0));
    for g in [g1, g2] {
        assert_eq!(g.destroy(&mut hal).err().map(|g| g.handle()), None);
    }
    mp.destroy(&mut hal);
    assert_eq!(hal.live_pages(), 0);
}

#[test]
fn host_lends_pages_to_a_guest_and_takes_them_back() {
    let mut mem = tu::memory();
    let mut metas = tu::metas();
    let mut hal = tu::hal(&mut mem);
    let mut mp = tu::mem_protect(&mut metas, &mut hal);
    let mut g = guest(G1, &mut hal);
    let ipa = Ipa::new(0x8000_0000);
    if let Some(page) = hal.page_mut(pa_of(pfn(H + 1))) {
        page[7] = 0x1234;
    }
    ok(mp.host_share_guest(pfn(H), 3, &mut g, ipa, &mut hal));
    let lent = meta(Owner::Host, PageState::SharedOwned, PageState::NoPage);
    for i in 0..3 {
        assert_eq!(row(&mp, H + i), lent);
        assert_eq!(
            host_leaf(&mp, &hal, H + i),
            Some(Leaf {
                pa: pa_of(pfn(H + i)),
                attrs: Attrs::RAM_RWX,
                state: PageState::SharedOwned
            }),
            "the host keeps its mapping"
        );
    }
    let Some(gipa) = ipa.checked_add_pages(1) else {
        panic!("ipa")
    };
    assert_eq!(
        g.stage2().walk(gipa, &hal),
        Some(Leaf {
            pa: pa_of(pfn(H + 1)),
            attrs: GUEST_RAM_ATTRS,
            state: PageState::SharedBorrowed
        })
    );
    check(&mp, &[&g], &hal);

    // A lent page cannot be lent again, donated, shared with the hyp, or
    // shared back by the guest.
    let mut g2 = guest(G2, &mut hal);
    let before = snapshot(&mp, &hal);
    let bad_state = MemProtectError::BadState {
        pfn: pfn(H),
        component: Owner::Host,
        state: PageState::SharedOwned,
    };
    assert_eq!(
        mp.host_share_guest(pfn(H), 1, &mut g2, ipa, &mut hal),
        Err(bad_state)
    );
    assert_eq!(
        mp.host_donate_guest(pfn(H), 1, &mut g2, ipa, &mut hal),
        Err(bad_state)
    );
    assert_eq!(mp.host_share_hyp(pfn(H), &mut hal), Err(bad_state));
    assert_eq!(mp.host_donate_hyp(pfn(H), 1, &mut hal), Err(bad_state));
    assert_eq!(
        mp.host_unshare_hyp(pfn(H), &mut hal),
        Err(MemProtectError::BadState {
            pfn: pfn(H),
            component: Owner::Hyp,
            state: PageState::NoPage,
        })
    );
    assert_eq!(
        mp.guest_share_host(&mut g, ipa, &mut hal),
        Err(MemProtectError::BadState {
            pfn: pfn(H),
            component: Owner::Guest(G1),
            state: PageState::SharedBorrowed,
        })
    );
    assert_eq!(
        mp.host_share_guest(pfn(H + 3), 1, &mut g, ipa, &mut hal),
        Err(MemProtectError::IpaMapped { ipa })
    );
    assert_eq!(
        mp.host_share_guest(pfn(H + 3), 1, &mut g, Ipa::new(0x8000_0800), &mut hal),
        Err(MemProtectError::Unaligned { addr: 0x8000_0800 })
    );
    assert_eq!(
        mp.host_unshare_guest(&mut g, Ipa::new(0x9000_0000), &mut hal),
        Err(MemProtectError::IpaNotMapped {
            ipa: Ipa::new(0x9000_0000)
        })
    );
    assert_eq!(snapshot(&mp, &hal), before);

    // Unshare one; reclaim gives back the rest untouched (not zeroed).
    ok(mp.host_unshare_guest(&mut g, ipa, &mut hal));
    assert_eq!(row(&mp, H), PageMeta::HOST_OWNED);
    assert_eq!(g.stage2().walk(ipa, &hal), None);
    assert_eq!(
        host_leaf(&mp, &hal, H).map(|l| l.state),
        Some(PageState::Owned)
    );
    assert_eq!(
        mp.host_unshare_guest(&mut g, ipa, &mut hal),
        Err(MemProtectError::IpaNotMapped { ipa })
    );
    check(&mp, &[&g], &hal);
    assert_eq!(mp.reclaim_guest(&mut g, &mut hal), Ok(2));
    assert_eq!(row(&mp, H + 1), PageMeta::HOST_OWNED);
    assert_eq!(hal.page(pa_of(pfn(H + 1))).map(|p| p[7]), Some(0x1234));
    check(&mp, &[&g], &hal);
    assert!(matches!(g.destroy(&mut hal), Ok(())));
    assert!(matches!(g2.destroy(&mut hal), Ok(())));
    mp.destroy(&mut hal);
    assert_eq!(hal.live_pages(), 0);
}

#[test]
fn host_share_guest_out_of_memory_changes_nothing() {
    let mut mem = tu::memory();
    let mut metas = tu::metas();
    let mut hal = tu::hal(&mut mem);
    let mut mp = tu::mem_protect(&mut metas, &mut hal);
    let mut g = guest(G1, &mut hal);
    let ipa = Ipa::new(0x8000_0000);
    // The guest needs two table pages below its root for this IPA.
    for budget in 0..2 {
        let before = snapshot(&mp, &hal);
        hal.fail_after(budget);
        assert_eq!(
            mp.host_share_guest(pfn(H), 2, &mut g, ipa, &mut hal),
            Err(MemProtectError::NoMemory)
        );
        hal.set_oom(false);
        assert_eq!(snapshot(&mp, &hal), before, "budget {budget}");
    }
    ok(mp.host_share_guest(pfn(H), 2, &mut g, ipa, &mut hal));
    check(&mp, &[&g], &hal);
    assert_eq!(mp.reclaim_guest(&mut g, &mut hal), Ok(2));
    assert!(matches!(g.destroy(&mut hal), Ok(())));
    mp.destroy(&mut hal);
    assert_eq!(hal.live_pages(), 0);
}

#[test]
fn host_mmio_is_device_memory_outside_ram() {
    let mut mem = tu::memory();
    let mut metas = tu::metas();
    let mut hal = tu::hal(&mut mem);
    let mut mp = tu::mem_protect(&mut metas, &mut hal);
    let uart = PhysAddr::new(0x0900_0000);
    ok(mp.map_host_mmio(uart, 1, &mut hal));
    let leaf = mp.host_stage2().walk(uart.to_identity_ipa(), &hal);
    assert_eq!(
        leaf.map(|l| (l.pa, l.attrs.mem, l.attrs.perms)),
        Some((uart, MemType::Device, Perms::RW))
    );
    let before = snapshot(&mp, &hal);
    let ram_end = PhysAddr::new(tu::BASE + 127 * 4096);
    assert_eq!(
        mp.map_host_mmio(PhysAddr::new(tu::BASE - 4096), 2, &mut hal),
        Err(MemProtectError::OverlapsRam {
            pfn: tu::base_pfn()
        })
    );
    assert_eq!(
        mp.map_host_mmio(ram_end, 1, &mut hal),
        Err(MemProtectError::OverlapsRam { pfn: pfn(127) })
    );
    assert_eq!(
        mp.map_host_mmio(PhysAddr::new(0x0900_0100), 1, &mut hal),
        Err(MemProtectError::Unaligned { addr: 0x0900_0100 })
    );
    assert_eq!(
        mp.map_host_mmio(PhysAddr::new(IPA_LIMIT), 1, &mut hal),
        Err(MemProtectError::IpaOutOfRange {
            ipa: Ipa::new(IPA_LIMIT),
            pages: 1
        })
    );
    assert_eq!(snapshot(&mp, &hal), before);
    check(&mp, &[], &hal);
    mp.destroy(&mut hal);
    assert_eq!(hal.live_pages(), 0);
}

#[test]
fn errors_map_to_smccc_codes() {
    use crate::abi::{err, ret};
    let p = Pfn::new(0x40042);
    let cases = [
        (
            MemProtectError::ZeroCount,
            [ret::INVALID_PARAMETER, err::ZERO_COUNT, 0, 0],
        ),
        (
            MemProtectError::OutOfRange { pfn: p, count: 3 },
            [ret::INVALID_PARAMETER, err::OUT_OF_RANGE, 0x40042, 3],
        ),
        (
            MemProtectError::Unaligned { addr: 0x10 },
            [ret::INVALID_PARAMETER, err::UNALIGNED, 0x10, 0],
        ),
        (
            MemProtectError::IpaOutOfRange {
                ipa: Ipa::new(1 << 39),
                pages: 1,
            },
            [ret::INVALID_PARAMETER, err::IPA_OUT_OF_RANGE, 1 << 39, 1],
        ),
        (
            MemProtectError::NotOwned {
                pfn: p,
                owner: Owner::Hyp,
            },
            [ret::DENIED, err::NOT_OWNED, 0x40042, 2],
        ),
        (
            MemProtectError::BadState {
                pfn: p,
                component: Owner::Host,
                state: PageState::SharedOwned,
            },
            [ret::DENIED, err::BAD_STATE, 0x40042, 0x101],
        ),
        (
            MemProtectError::NotDonated { pfn: p },
            [ret::DENIED, err::NOT_DONATED, 0x40042, 0],
        ),
        (
            MemProtectError::IpaMapped {
                ipa: Ipa::new(0x1000),
            },
            [ret::DENIED, err::IPA_MAPPED, 0x1000, 0],
        ),
        (
            MemProtectError::IpaNotMapped {
                ipa: Ipa::new(0x1000),
            },
            [ret::DENIED, err::IPA_NOT_MAPPED, 0x1000, 0],
        ),
        (
            MemProtectError::OverlapsRam { pfn: p },
            [ret::INVALID_PARAMETER, err::OVERLAPS_RAM, 0x40042, 0],
        ),
        (
            MemProtectError::NoAccess { pfn: p },
            [ret::DENIED, err::NO_ACCESS, 0x40042, 0],
        ),
        (
            MemProtectError::NoMemory,
            [ret::NO_MEMORY, err::NO_MEMORY, 0, 0],
        ),
        (
            MemProtectError::Internal(Stage2Error::NoPageState),
            [ret::DENIED, err::INTERNAL, 0, 0],
        ),
    ];
    for (e, regs) in cases {
        assert_eq!(e.to_regs(), regs, "{e}");
        assert!(!format!("{e}").is_empty());
    }
    assert_eq!(
        MemProtectError::from(Stage2Error::NoMemory),
        MemProtectError::NoMemory
    );
    assert_eq!(
        MemProtectError::from(Stage2Error::PaOutOfRange {
            pa: PhysAddr::new(0x5000),
            pages: 2
        }),
        MemProtectError::OutOfRange {
            pfn: Pfn::new(5),
            count: 2
        }
    );
}

#[test]
fn consistent_rows_are_exactly_the_module_table() {
    use PageState::{NoPage, Owned, SharedBorrowed, SharedOwned};
    let states = [Owned, SharedOwned, SharedBorrowed, NoPage];
    let owners = [Owner::Host, Owner::Hyp, Owner::Guest(G1)];
    let mut consistent = Vec::new();
    for owner in owners {
        for host in states {
            for hyp in states {
                for donation in [false, true] {
                    let m = PageMeta {
                        owner,
                        host_state: host,
                        hyp_state: hyp,
                        host_donation: donation,
                    };
                    if m.is_consistent() {
                        consistent.push((owner, host, hyp, donation));
                    }
                }
            }
        }
    }
    assert_eq!(
        consistent,
        [
            (Owner::Host, Owned, NoPage, false),
            (Owner::Host, SharedOwned, SharedBorrowed, false),
            (Owner::Host, SharedOwned, NoPage, false),
            (Owner::Hyp, NoPage, Owned, false),
            (Owner::Hyp, NoPage, Owned, true),
            (Owner::Guest(G1), SharedBorrowed, NoPage, false),
            (Owner::Guest(G1), NoPage, NoPage, false),
        ]
    );
    assert!(
        Owner::Host < Owner::Hyp && Owner::Hyp < Owner::Guest(VmHandle::new(0)),
        "lock order"
    );
}

#[test]
fn reclaim_refuses_pages_the_hal_cannot_reach() {
    let mut mem = tu::memory();
    let mut hal = tu::hal(&mut mem);
    // The database covers 8 frames past the FakeHal window.
    let mut metas = vec![PageMeta::HOST_OWNED; tu::RAM_PAGES + 8];
    let r = MemProtect::new(tu::base_pfn(), &mut metas, &[tu::pool_range()], &mut hal);
    let Ok(mut mp) = r else { panic!("{r:?}") };
    hal.set_oom(true);
    assert_eq!(
        GuestMem::new(G1, Vmid(1), &mut hal).err(),
        Some(MemProtectError::NoMemory)
    );
    hal.set_oom(false);
    let mut g = guest(G1, &mut hal);
    let ipa = Ipa::new(0x8000_0000);
    ok(mp.host_donate_guest(pfn(130), 1, &mut g, ipa, &mut hal));
    let before = snapshot(&mp, &hal);
    assert_eq!(
        mp.reclaim_guest_page(&mut g, ipa, &mut hal),
        Err(MemProtectError::NoAccess { pfn: pfn(130) })
    );
    assert_eq!(
        mp.reclaim_guest(&mut g, &mut hal),
        Err(MemProtectError::NoAccess { pfn: pfn(130) })
    );
    assert_eq!(snapshot(&mp, &hal), before);
    check(&mp, &[&g], &hal);
    let g = match g.destroy(&mut hal) {
        Err(g) => g,
        Ok(()) => panic!("destroyed a guest that still maps a page"),
    };
    assert_eq!(g.stage2().table_pages(), 3);
    mp.destroy(&mut hal);
    assert_eq!(hal.live_pages(), 3, "the stuck guest's tables");
}
