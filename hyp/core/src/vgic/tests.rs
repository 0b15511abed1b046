use proptest::prelude::*;

use super::*;

fn intids_in(lrs: &[u64]) -> Vec<u32> {
    lrs.iter()
        .filter(|v| lr_state(**v) != lr::INVALID)
        .map(|v| lr_intid(*v))
        .collect()
}

#[test]
fn fill_loads_lowest_first_and_keeps_what_does_not_fit() {
    let mut lrs = [0u64; 4];
    let mut pending: u128 = 1 << 27 | 1 << 1 | 1 << 40 | 1 << 33 | 1 << 100;
    fill(&mut lrs, &mut pending);
    assert_eq!(intids_in(&lrs), [1, 27, 33, 40]);
    assert_eq!(pending, 1 << 100, "the fifth waits");
    for v in lrs {
        assert_eq!(lr_state(v), lr::PENDING);
        assert_eq!(v & lr::GROUP1, lr::GROUP1);
        assert_eq!(v >> lr::PRIORITY_SHIFT & 0xff, u64::from(LR_PRIORITY));
    }
    // The guest took two (EOI: invalid): the waiting one gets a register.
    lrs[0] = 0;
    lrs[2] = 0;
    fill(&mut lrs, &mut pending);
    assert_eq!(pending, 0);
    assert_eq!(intids_in(&lrs), [100, 27, 40]);
}

#[test]
fn fill_merges_into_a_register_that_holds_the_intid() {
    let mut lrs = [0u64; 4];
    lrs[1] = make_lr(33) & !(3 << lr::STATE_SHIFT) | lr::ACTIVE << lr::STATE_SHIFT;
    lrs[2] = make_lr(34);
    let mut pending: u128 = 1 << 33 | 1 << 34;
    fill(&mut lrs, &mut pending);
    assert_eq!(pending, 0);
    assert_eq!(lr_state(lrs[1]), lr::PENDING_ACTIVE, "active re-triggered");
    assert_eq!(lr_state(lrs[2]), lr::PENDING, "pending merged");
    assert_eq!(intids_in(&lrs), [33, 34], "no second register");
}

#[test]
fn timer_fires_only_enabled_unmasked_and_due() {
    let t = |ctl, cval| VtimerState {
        cntv_ctl_el0: ctl,
        cntv_cval_el0: cval,
    };
    assert!(timer_fires(&t(cntv_ctl::ENABLE, 100), 100));
    assert!(!timer_fires(&t(cntv_ctl::ENABLE, 101), 100));
    assert!(!timer_fires(&t(cntv_ctl::ENABLE | cntv_ctl::IMASK, 0), 100));
    assert!(!timer_fires(&t(0, 0), 100));
    assert_eq!(timer_deadline(&t(cntv_ctl::ENABLE, 555)), 555);
    assert_eq!(
        timer_deadline(&t(cntv_ctl::ENABLE | cntv_ctl::IMASK, 5)),
        NO_DEADLINE
    );
    assert_eq!(timer_deadline(&t(0, 5)), NO_DEADLINE);
}

#[test]
fn a_due_timer_is_injected_once_and_masked() {
    let mut gic = GicCpuState::RESET;
    let mut timer = VtimerState {
        cntv_ctl_el0: cntv_ctl::ENABLE,
        cntv_cval_el0: 10,
    };
    let mut pending = 0;
    prepare_entry(&mut gic, &mut timer, &mut pending, 5, 4);
    assert_eq!(intids_in(&gic.lr), [] as [u32; 0], "not due yet");
    prepare_entry(&mut gic, &mut timer, &mut pending, 10, 4);
    assert_eq!(intids_in(&gic.lr), [VTIMER_INTID]);
    assert_eq!(timer.cntv_ctl_el0, cntv_ctl::ENABLE | cntv_ctl::IMASK);
    // Masked now: no second injection until the guest re-arms.
    prepare_entry(&mut gic, &mut timer, &mut pending, 20, 4);
    assert_eq!(intids_in(&gic.lr), [VTIMER_INTID]);
    assert!(!should_wake(&GicCpuState::RESET, &timer, 0, 1000));
    assert!(should_wake(&gic, &timer, 0, 0));
}

#[test]
fn nr_lrs_limits_the_registers_used() {
    let mut gic = GicCpuState::RESET;
    let mut timer = VtimerState::default();
    let mut pending: u128 = 0xff;
    prepare_entry(&mut gic, &mut timer, &mut pending, 0, 2);
    assert_eq!(intids_in(&gic.lr), [0, 1]);
    assert_eq!(pending, 0xfc);
    // A bogus count from the glue cannot overrun the array.
    prepare_entry(&mut gic, &mut timer, &mut pending, 0, 99);
    assert_eq!(pending, 0);
}

#[test]
fn sgi1r_targets() {
    // INTID 3 to Aff0 0 and 2 in cluster Aff1 = 0.
    let r = SgiRequest::decode(3 << 24 | 0b101);
    assert_eq!(r.intid, 3);
    assert!(r.targets(0, 1) && r.targets(2, 1) && !r.targets(1, 0));
    // Another cluster, or another range: no.
    assert!(!r.targets(1 << 8, 0));
    let r = SgiRequest::decode(1 << 44 | 1);
    assert!(r.targets(16, 0) && !r.targets(0, 1));
    // IRM: everyone but the sender.
    let r = SgiRequest::decode(1 << 40 | 7 << 24);
    assert!(r.targets(0, 1) && !r.targets(1, 1));
    assert_eq!(r.intid, 7);
    // Aff3/Aff2/Aff1 land where MPIDR has them.
    let r = SgiRequest::decode(0x12 << 48 | 0x34 << 32 | 0x56 << 16 | 1);
    assert!(r.targets(0x12_0034_5600, 0));
}

proptest! {
    /// Whatever the list registers hold and whatever is pending: no INTID
    /// is lost, none appears in two registers, none is invented, and a
    /// register's INTID never changes while it is in use.
    #[test]
    fn fill_never_loses_duplicates_or_invents(
        raw in proptest::collection::vec((0u64..4, 0u32..128), 0..16),
        pending in any::<u128>(),
        n in 0usize..=16,
    ) {
        let mut lrs = [0u64; MAX_LRS];
        let mut seen = 0u128;
        for (i, (state, intid)) in raw.iter().enumerate().take(n) {
            // Valid starting points only: one register per INTID.
            if *state != lr::INVALID && seen & 1 << intid == 0 {
                seen |= 1 << intid;
                lrs[i] = make_lr(*intid) & !(3 << lr::STATE_SHIFT) | state << lr::STATE_SHIFT;
            }
        }
        let before = lrs;
        let mut left = pending;
        fill(&mut lrs[..n], &mut left);
        let mut held = 0u128;
        for (i, v) in lrs.iter().enumerate() {
            if lr_state(*v) == lr::INVALID {
                continue;
            }
            let bit = 1u128 << lr_intid(*v);
            prop_assert!(held & bit == 0, "INTID {} twice", lr_intid(*v));
            held |= bit;
            prop_assert!(i < n, "register {} beyond the {} implemented", i, n);
            if lr_state(before[i]) != lr::INVALID {
                prop_assert_eq!(lr_intid(before[i]), lr_intid(*v));
            }
        }
        // Every INTID pending before is now in a register or still pending.
        prop_assert_eq!(pending & !(held | left), 0);
        // Nothing is pending that was not asked for.
        prop_assert_eq!(left & !pending, 0);
        prop_assert_eq!(held & !(pending | seen), 0);
    }
}
