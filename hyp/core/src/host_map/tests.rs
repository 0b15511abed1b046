use alloc::vec::Vec;
use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;
use crate::addr::{PhysAddr, PAGE_SIZE};
use crate::hal::{FakeHal, PageWords, WORDS_PER_PAGE};
use crate::mem_protect::{MemProtect, MemProtectError, PageMeta};
use crate::stage2::{Attrs, MemType, Stage2, Vmid};

const QEMU2: &[u8] = include_bytes!("../../tests/data/qemu-virt-smp2-1g.dtb");
const BOARD: &[u8] = include_bytes!("../../tests/data/board-rmem.dtb");
const ROCK5B: &[u8] = include_bytes!("../../tests/data/rk3588-rock-5b-8g.dtb");

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn region(base: u64, size: u64) -> MemRegion {
    MemRegion {
        base: PhysAddr::new(base),
        size,
    }
}

/// Frames of `[base, base + size)` (both page-aligned).
fn frames(base: u64, size: u64) -> PfnRange {
    PfnRange::new(Pfn::new(base / PAGE_SIZE), size / PAGE_SIZE).unwrap()
}

/// `(start address, end address)` of every run.
fn spans<const N: usize>(l: &RunList<N>) -> Vec<(u64, u64)> {
    l.as_slice()
        .iter()
        .map(|&(s, e)| (s * PAGE_SIZE, e * PAGE_SIZE))
        .collect()
}

/// What the hyp computes for `dtb` when it is loaded into RAM bank `bank`.
fn map_for(dtb: &[u8], bank: usize) -> HostMap {
    let p = fdt::host_platform(dtb).unwrap();
    let r = p.ram.as_slice()[bank];
    HostMap::from_dtb(dtb, p.ram.as_slice(), frames(r.base.raw(), r.size)).unwrap()
}

// ---- RunList ----

#[test]
fn run_list_merges_overlapping_and_touching_runs() {
    let mut l = RunList::<4>::new();
    assert!(l.is_empty());
    l.insert(10, 20).unwrap();
    l.insert(30, 40).unwrap();
    l.insert(0, 5).unwrap();
    assert_eq!(l.as_slice(), &[(0, 5), (10, 20), (30, 40)]);
    // Empty runs change nothing.
    l.insert(7, 7).unwrap();
    l.insert(9, 3).unwrap();
    assert_eq!(l.len(), 3);
    // Touching on the left and right.
    l.insert(20, 22).unwrap();
    l.insert(28, 30).unwrap();
    assert_eq!(l.as_slice(), &[(0, 5), (10, 22), (28, 40)]);
    // Bridging two runs.
    l.insert(22, 28).unwrap();
    assert_eq!(l.as_slice(), &[(0, 5), (10, 40)]);
    // Swallowing everything.
    l.insert(0, 100).unwrap();
    assert_eq!(l.as_slice(), &[(0, 100)]);
    assert_eq!(l.pages(), 100);
    assert_eq!(
        l.iter().collect::<Vec<_>>(),
        [PfnRange::new(Pfn::new(0), 100).unwrap()]
    );
}

#[test]
fn run_list_full_refuses_only_new_runs() {
    let mut l = RunList::<2>::new();
    l.insert(10, 20).unwrap();
    l.insert(30, 40).unwrap();
    let before = l;
    assert_eq!(l.insert(50, 60), Err(RunListFull));
    assert_eq!(l.insert(0, 5), Err(RunListFull));
    assert_eq!(l.insert(22, 28), Err(RunListFull));
    assert_eq!(l, before);
    // Merging needs no room.
    l.insert(15, 35).unwrap();
    assert_eq!(l.as_slice(), &[(10, 40)]);
    l.insert(50, 60).unwrap();
    assert_eq!(
        alloc::format!("{l:?}"),
        "[PFN:[0xa..0x28), PFN:[0x32..0x3c)]"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random inserts agree with a set of frames; the list stays sorted,
    /// disjoint and non-adjacent; a refused insert changes nothing.
    #[test]
    fn run_list_matches_a_frame_set(ops in prop::collection::vec((0u64..120, 0u64..12), 1..40)) {
        let mut l = RunList::<6>::new();
        let mut model = BTreeSet::new();
        for (start, len) in ops {
            let before = l;
            match l.insert(start, start + len) {
                Ok(()) => model.extend(start..start + len),
                Err(RunListFull) => {
                    prop_assert_eq!(l, before);
                    prop_assert_eq!(l.len(), 6);
                    prop_assert!((start..start + len).all(|f| !model.contains(&f)));
                }
            }
            let listed: BTreeSet<u64> = l.as_slice().iter().flat_map(|&(s, e)| s..e).collect();
            prop_assert_eq!(&listed, &model);
            for w in l.as_slice().windows(2) {
                prop_assert!(w[0].0 < w[0].1 && w[0].1 < w[1].0, "{:?}", l);
            }
        }
    }
}

// ---- table count ----

#[test]
fn stage2_table_counts() {
    let one = |base, size| stage2_tables(core::iter::once(frames(base, size)));
    // One page: a level-2 and a level-3 table.
    assert_eq!(one(0x900_0000, PAGE_SIZE), 2);
    // 1 GiB at 1 GiB: 1 level-2 + 512 level-3 tables.
    assert_eq!(one(GIB, GIB), 513);
    // Two pages straddling a 1 GiB boundary: two of each.
    assert_eq!(one(GIB - PAGE_SIZE, 2 * PAGE_SIZE), 4);
    // Two runs in one 2 MiB window share its tables; sorted runs in the
    // same 1 GiB share the level-2 table.
    let runs = [
        frames(0, PAGE_SIZE),
        frames(0x10_0000, PAGE_SIZE),
        frames(4 * MIB, PAGE_SIZE),
    ];
    assert_eq!(stage2_tables(runs.into_iter()), 3);
    assert_eq!(stage2_tables(core::iter::empty()), 0);
}

/// Sorted disjoint runs near 1 GiB and 2 MiB boundaries.
fn runs_strategy() -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec((0u64..6, 0u64..600, 1u64..700), 1..6).prop_map(|v| {
        let bases = [0, 0x3ff00, 0x40000, 0x7fe00, 0x1_0000, 0x200];
        let mut l = RunList::<8>::new();
        for (b, off, len) in v {
            let start = bases[usize::try_from(b).unwrap()] + off;
            l.insert(start, start + len).unwrap();
        }
        l.as_slice().to_vec()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The count is exactly what a real stage-2 allocates for sorted runs,
    /// and never less for the same runs in any order.
    #[test]
    fn stage2_table_count_matches_the_tables(runs in runs_strategy(), rotate in 0usize..6) {
        let mut mem: Vec<PageWords> = vec![[0; WORDS_PER_PAGE]; 256];
        let mut hal = FakeHal::new(PhysAddr::new(0x1000_0000), &mut mem, 256);
        let mut s2 = Stage2::new(Vmid(1), &mut hal).unwrap();
        let ranges: Vec<PfnRange> = runs
            .iter()
            .map(|&(s, e)| PfnRange::new(Pfn::new(s), e - s).unwrap())
            .collect();
        for r in &ranges {
            let pa = r.start().phys().unwrap();
            s2.map(pa.to_identity_ipa(), pa, r.count(), Attrs::DEVICE_RW, crate::mem_protect::PageState::Owned, &mut hal).unwrap();
        }
        prop_assert_eq!(s2.table_pages(), 1 + stage2_tables(ranges.iter().copied()));
        let mut shuffled = ranges.clone();
        shuffled.rotate_left(rotate % ranges.len());
        prop_assert!(stage2_tables(shuffled.iter().copied()) >= stage2_tables(ranges.iter().copied()));
        s2.destroy(&mut hal);
    }
}

// ---- HostMap on real trees ----

#[test]
fn qemu_virt_devices_come_from_the_dtb() {
    let m = map_for(QEMU2, 0);
    assert!(m.other_ram().is_empty());
    assert_eq!(m.managed(), frames(GIB, GIB));
    assert_eq!(
        spans(m.devices()),
        [
            // Flash (two banks), GIC distributor.
            (0, 0x801_0000),
            // GIC ITS and redistributors, PL011.
            (0x808_0000, 0x900_1000),
            (0x901_0000, 0x901_1000), // PL031
            (0x902_0000, 0x902_1000), // fw-cfg
            (0x903_0000, 0x903_1000), // PL061
            (0xa00_0000, 0xa00_4000), // 32 virtio-mmio
            // The PCIe host bridge's I/O and 32-bit memory windows.
            (0x1000_0000, 0x3f00_0000),
            // Its ECAM.
            (0x40_1000_0000, 0x40_2000_0000),
        ]
    );
    // The 512 GiB 64-bit PCI window starts at the IPA limit.
    assert_eq!(m.dropped_pages(), 512 * GIB / PAGE_SIZE);
    // Every device range lies below RAM except the ECAM, as before this
    // map existed (the hyp then mapped all of [0, RAM)).
    assert!(m
        .devices()
        .iter()
        .all(|r| r.end().raw() <= GIB / PAGE_SIZE || r.start().raw() >= 2 * GIB / PAGE_SIZE));
    // Root, RAM (1 + 512), devices below 1 GiB (1 level-2 table; level-3
    // tables: 65 for the flash and GICD, 8 more up to the PL061, 1 for
    // virtio-mmio, 376 for the PCI windows) and the ECAM (1 + 128).
    assert_eq!(m.table_pages(), 1 + 513 + 451 + 129);
}

#[test]
fn rock5b_devices_banks_and_firmware_mailbox() {
    // Loaded into the first bank, as U-Boot's booti at 0x02000000 does.
    let m = map_for(ROCK5B, 0);
    assert_eq!(m.managed(), frames(0x20_0000, 0xefe0_0000));
    // The second bank, then the SCMI mailbox below the first bank
    // (reserved-memory shmem@10f000).
    assert_eq!(
        spans(m.other_ram()),
        [(0x10_f000, 0x11_0000), (0x1_0000_0000, 0x2_0000_0000)]
    );
    let dev = spans(m.devices());
    assert_eq!(dev.len(), 68);
    let covered = |addr: u64| dev.iter().any(|&(s, e)| s <= addr && addr < e);
    // uart2 (the console), GICD, GICR, the CRU, the PCIe 3x4 window, ECAM
    // and DBI.
    for addr in [
        0xfeb5_0000,
        0xfe60_0000,
        0xfe68_0000,
        0xfd7c_0000,
        0x9_0000_0000,
        0xf000_0000,
        0xa_4000_0000,
    ] {
        assert!(covered(addr), "{addr:#x} not mapped");
    }
    // Nothing between the first bank's end and the peripherals' start, and
    // no device page is RAM.
    assert_eq!(dev[0].0, 0xf000_0000);
    for &(s, e) in &dev {
        assert!(e <= 0x1_0000_0000 || s >= 0x2_0000_0000, "{s:#x}..{e:#x}");
    }
    // A disabled PCIe controller's window (pcie3x2 at 0x9_4000_0000) is
    // not mapped.
    assert!(!covered(0x9_4000_0000));
    assert_eq!(m.dropped_pages(), 0);
    // Pool: root, bank 0 (4 + 1919), bank 1 and the mailbox (4 + 2048,
    // 1 + 1), devices (5 + 1587: the three 1 GiB PCIe windows are 1536).
    assert_eq!(m.table_pages(), 1 + 1923 + 2054 + 1592);
}

#[test]
fn board_tree_splits_banks_around_the_managed_one() {
    // RAM 0x4000_0000 + 512M, 0x8000_0000 + 256M, 0x1_0000_0000 + 1G; the
    // hyp in the second.
    let m = map_for(BOARD, 1);
    assert_eq!(m.managed(), frames(0x8000_0000, 0x1000_0000));
    assert_eq!(
        spans(m.other_ram()),
        [(0x4000_0000, 0x6000_0000), (0x1_0000_0000, 0x1_4000_0000)]
    );
    // The reserved region lies in the first bank: RAM already. The soc bus
    // is translated (two UARTs).
    assert_eq!(spans(m.devices()), [(0x1c00_1000, 0x1c00_3000)]);
}

// ---- HostMap edge cases ----

#[test]
fn device_ranges_never_cover_ram_or_reserved_memory() {
    let ram = [
        region(0x4000_0000, 0x100_0000),
        region(0x5000_0000, 0x10_0800),
    ];
    let mut m = HostMap::new(&ram, frames(0x4000_0000, 0x100_0000)).unwrap();
    // The second bank ends inside a page: that page is not mapped as RAM.
    assert_eq!(spans(m.other_ram()), [(0x5000_0000, 0x5010_0000)]);
    m.add_reserved(region(0x3000_0100, 0x100)).unwrap();
    m.add_reserved(region(0x4000_0000, 0x1000)).unwrap(); // inside RAM
    assert_eq!(
        spans(m.other_ram()),
        [(0x3000_0000, 0x3000_1000), (0x5000_0000, 0x5010_0000)]
    );
    // One device range across everything.
    m.add_device(region(0x2fff_f800, 0x2100_0000)).unwrap();
    assert_eq!(
        spans(m.devices()),
        [
            (0x2fff_f000, 0x3000_0000),
            (0x3000_1000, 0x4000_0000),
            (0x4100_0000, 0x5000_0000),
            (0x5010_1000, 0x5100_0000),
        ]
    );
    // Past the IPA space: clipped, the rest counted.
    m.add_device(region(IPA_LIMIT - PAGE_SIZE, 3 * PAGE_SIZE))
        .unwrap();
    m.add_device(region(IPA_LIMIT + GIB, PAGE_SIZE)).unwrap();
    assert_eq!(m.dropped_pages(), 3);
    assert_eq!(
        m.devices().as_slice().last(),
        Some(&((IPA_LIMIT - PAGE_SIZE) / PAGE_SIZE, IPA_LIMIT / PAGE_SIZE))
    );
    // A wrapping range is ignored.
    m.add_device(region(u64::MAX - 10, 100)).unwrap();
    assert_eq!(m.dropped_pages(), 3);
}

#[test]
fn host_map_errors() {
    let managed = frames(0x4000_0000, 0x100_0000);
    assert_eq!(
        HostMap::new(&[region(IPA_LIMIT - GIB, 2 * GIB)], managed).unwrap_err(),
        HostMapError::RamBeyondIpa {
            base: IPA_LIMIT - GIB,
            size: 2 * GIB
        }
    );
    let mut m = HostMap::new(&[region(0x4000_0000, 0x100_0000)], managed).unwrap();
    for i in 0..u64::try_from(MAX_DEVICE_RANGES).unwrap() {
        m.add_device(region(i * 2 * PAGE_SIZE, 1)).unwrap();
    }
    let e = m.add_device(region(0x3000_0000, 1)).unwrap_err();
    assert_eq!(e, HostMapError::TooManyDeviceRanges { max: 128 });
    let mut m = HostMap::new(&[region(0x4000_0000, 0x100_0000)], managed).unwrap();
    let mut e = Ok(());
    for i in 0..=u64::try_from(MAX_OTHER_RAM_RANGES).unwrap() {
        e = e.and(m.add_reserved(region(0x1000_0000 + i * 2 * PAGE_SIZE, 1)));
    }
    assert_eq!(e, Err(HostMapError::TooManyRamRanges { max: 32 }));
    assert_eq!(
        HostMap::from_dtb(b"nope", &[], managed).unwrap_err(),
        HostMapError::Fdt(FdtError::Truncated {
            needed: 40,
            available: 4
        })
    );
    for (e, text) in [
        (
            HostMapError::TooManyDeviceRanges { max: 128 },
            "the DTB describes more than 128 disjoint device ranges",
        ),
        (
            HostMapError::TooManyRamRanges { max: 32 },
            "RAM splits into more than 32 ranges",
        ),
        (
            HostMapError::RamBeyondIpa { base: 1, size: 2 },
            "RAM 0x1 + 0x2 reaches past the 0x8000000000 IPA limit",
        ),
        (
            HostMapError::Fdt(FdtError::TooDeep),
            "DTB node path deeper than 16 levels",
        ),
    ] {
        assert_eq!(alloc::format!("{e}"), text);
    }
}

/// Maps everything a [`HostMap`] lists into a [`MemProtect`] whose database
/// covers `m.managed()` (which must be the FakeHal's window after its
/// pool), as the boot code does; returns it with its table-page count.
fn map_all<'m>(
    m: &HostMap,
    meta: &'m mut [PageMeta],
    hyp: PfnRange,
    hal: &mut FakeHal<'_>,
) -> MemProtect<'m> {
    let mut mp = MemProtect::new(m.managed().start(), meta, &[hyp], hal).unwrap();
    for r in m.devices().iter() {
        mp.map_host_mmio(r.start().phys().unwrap(), r.count(), hal)
            .unwrap();
    }
    for r in m.other_ram().iter() {
        mp.map_host_unmanaged_ram(r.start().phys().unwrap(), r.count(), hal)
            .unwrap();
    }
    mp
}

#[test]
fn unmanaged_ram_is_normal_memory_outside_the_database() {
    let mut mem: Vec<PageWords> = vec![[0; WORDS_PER_PAGE]; 64];
    let base = 0x4000_0000;
    let mut hal = FakeHal::new(PhysAddr::new(base), &mut mem, 32);
    let mut meta = vec![PageMeta::HOST_OWNED; 64];
    let managed = frames(base, 64 * PAGE_SIZE);
    let ram = [
        region(base, 64 * PAGE_SIZE),
        region(0x8000_0000, 4 * PAGE_SIZE),
    ];
    let mut m = HostMap::new(&ram, managed).unwrap();
    m.add_device(region(0x900_0000, 0x1000)).unwrap();
    let pool = frames(base, 32 * PAGE_SIZE);
    let mut mp = map_all(&m, &mut meta, pool, &mut hal);
    let walk = |mp: &MemProtect<'_>, hal: &FakeHal<'_>, a: u64| {
        mp.host_stage2()
            .walk(PhysAddr::new(a).to_identity_ipa(), hal)
            .map(|l| (l.pa.raw(), l.attrs))
    };
    assert_eq!(
        walk(&mp, &hal, 0x8000_3008),
        Some((0x8000_3008, Attrs::RAM_RWX))
    );
    assert_eq!(walk(&mp, &hal, 0x8000_4000), None);
    assert_eq!(
        walk(&mp, &hal, 0x900_0010),
        Some((0x900_0010, Attrs::DEVICE_RW))
    );
    mp.check_invariants(&hal).unwrap();
    // No transition can name the other bank: every one checks the database
    // range first.
    let other = PhysAddr::new(0x8000_0000).pfn();
    let out = MemProtectError::OutOfRange {
        pfn: other,
        count: 1,
    };
    assert_eq!(mp.host_share_hyp(other, &mut hal), Err(out));
    assert_eq!(mp.host_donate_hyp(other, 1, &mut hal), Err(out));
    // And unmanaged RAM cannot be mapped over the managed bank.
    assert_eq!(
        mp.map_host_unmanaged_ram(PhysAddr::new(base + 63 * PAGE_SIZE), 2, &mut hal),
        Err(MemProtectError::OverlapsRam {
            pfn: PhysAddr::new(base + 63 * PAGE_SIZE).pfn()
        })
    );
    assert_eq!(
        walk(&mp, &hal, 0x8000_0000).map(|(_, a)| a.mem),
        Some(MemType::Normal)
    );
    mp.destroy(&mut hal);
    assert_eq!(hal.live_pages(), 0);
}

/// RAM banks, reserved ranges and device ranges around a 160-page managed
/// bank at 1 GiB (the FakeHal window).
#[derive(Clone, Debug)]
struct Layout {
    banks: Vec<(u64, u64)>,
    reserved: Vec<(u64, u64)>,
    devices: Vec<(u64, u64)>,
}

fn byte_range() -> impl Strategy<Value = (u64, u64)> {
    // Bases near the managed bank (1 GiB), near 2 GiB, low MMIO, and the
    // top of the IPA space; sizes from a byte to ~100 pages; unaligned.
    (
        prop_oneof![
            Just(GIB - 0x8_0000),
            Just(GIB + 0x3_0000),
            Just(2 * GIB - 0x1_0000),
            Just(0x900_0000),
            Just(IPA_LIMIT - 0x1_0000),
        ],
        0u64..0x10_0000,
        1u64..0x6_0000,
    )
        .prop_map(|(b, off, size)| (b + off, size))
}

fn layout() -> impl Strategy<Value = Layout> {
    (
        prop::collection::vec(byte_range(), 0..3),
        prop::collection::vec(byte_range(), 0..3),
        prop::collection::vec(byte_range(), 0..8),
    )
        .prop_map(|(banks, reserved, devices)| Layout {
            // Banks must fit the IPA space.
            banks: banks
                .into_iter()
                .filter(|&(b, s)| b + s <= IPA_LIMIT)
                .collect(),
            reserved,
            devices,
        })
}

/// Pages `[base, base + size)` touches.
fn touched(base: u64, size: u64) -> core::ops::Range<u64> {
    base / PAGE_SIZE..(base + size).div_ceil(PAGE_SIZE)
}

fn set<const N: usize>(l: &RunList<N>) -> BTreeSet<u64> {
    l.as_slice().iter().flat_map(|&(s, e)| s..e).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// The map follows its rule page by page, mapping it all through
    /// `MemProtect` never fails, the database invariants hold, and the
    /// table pages used never exceed the estimate.
    #[test]
    fn host_map_follows_the_rule(l in layout()) {
        let managed = frames(GIB, 160 * PAGE_SIZE);
        let mut ram = vec![region(GIB, 160 * PAGE_SIZE)];
        ram.extend(l.banks.iter().map(|&(b, s)| region(b, s)));
        let mut m = HostMap::new(&ram, managed).unwrap();
        for &(b, s) in &l.reserved {
            m.add_reserved(region(b, s)).unwrap();
        }
        for &(b, s) in &l.devices {
            m.add_device(region(b, s)).unwrap();
        }

        // The model, page by page.
        let limit = IPA_LIMIT / PAGE_SIZE;
        let managed_set: BTreeSet<u64> = (managed.start().raw()..managed.end().raw()).collect();
        let ram_outer: BTreeSet<u64> = ram.iter().flat_map(|r| touched(r.base.raw(), r.size)).collect();
        let ram_inner: BTreeSet<u64> = ram
            .iter()
            .flat_map(|r| r.base.raw().div_ceil(PAGE_SIZE)..(r.base.raw() + r.size) / PAGE_SIZE)
            .collect();
        let reserved: BTreeSet<u64> = l.reserved.iter().flat_map(|&(b, s)| touched(b, s)).filter(|&p| p < limit).collect();
        let memory: BTreeSet<u64> = ram_outer.union(&reserved).copied().collect();
        let mut other: BTreeSet<u64> = ram_inner.difference(&managed_set).copied().collect();
        other.extend(reserved.difference(&ram_outer));
        let devices: BTreeSet<u64> = l
            .devices
            .iter()
            .flat_map(|&(b, s)| touched(b, s))
            .filter(|p| *p < limit && !memory.contains(p))
            .collect();
        prop_assert_eq!(&set(m.other_ram()), &other);
        prop_assert_eq!(&set(m.devices()), &devices);
        prop_assert!(devices.is_disjoint(&other) && devices.is_disjoint(&managed_set));
        prop_assert!(other.is_disjoint(&managed_set));
        let dropped: u64 = l
            .reserved
            .iter()
            .chain(&l.devices)
            .map(|&(b, s)| touched(b, s).filter(|&p| p >= limit).count() as u64)
            .sum();
        prop_assert_eq!(m.dropped_pages(), dropped);

        // Through MemProtect, as at boot.
        let mut mem: Vec<PageWords> = vec![[0; WORDS_PER_PAGE]; 160];
        let mut meta = vec![PageMeta::HOST_OWNED; 160];
        let mut hal = FakeHal::new(PhysAddr::new(GIB), &mut mem, 96);
        let hyp = frames(GIB, 96 * PAGE_SIZE);
        let mp = map_all(&m, &mut meta, hyp, &mut hal);
        prop_assert!(mp.check_invariants(&hal).is_ok());
        prop_assert!(mp.host_stage2().table_pages() <= m.table_pages());
        prop_assert_eq!(hal.live_pages(), mp.host_stage2().table_pages());
        for &p in devices.iter().chain(&other) {
            let leaf = mp.host_stage2().walk(PhysAddr::new(p * PAGE_SIZE).to_identity_ipa(), &hal);
            let want = if devices.contains(&p) { Attrs::DEVICE_RW } else { Attrs::RAM_RWX };
            prop_assert_eq!(leaf.map(|l| l.attrs), Some(want), "page {:#x}", p);
        }
        mp.destroy(&mut hal);
        prop_assert_eq!(hal.live_pages(), 0);
    }
}

#[test]
fn rock5b_device_map_fits_the_counted_tables() {
    // The board's 68 device ranges (3 GiB, mostly PCIe windows) mapped into
    // a real stage-2: exactly the table pages the pool is sized for.
    let m = map_for(ROCK5B, 0);
    let tables = 1 + stage2_tables(m.devices().iter());
    let pool = usize::try_from(tables).unwrap();
    let mut mem: Vec<PageWords> = vec![[0; WORDS_PER_PAGE]; pool];
    let mut hal = FakeHal::new(PhysAddr::new(0x10_0000_0000), &mut mem, pool);
    let mut s2 = Stage2::new(Vmid::HOST, &mut hal).unwrap();
    for r in m.devices().iter() {
        let pa = r.start().phys().unwrap();
        s2.map(
            pa.to_identity_ipa(),
            pa,
            r.count(),
            Attrs::DEVICE_RW,
            crate::mem_protect::PageState::Owned,
            &mut hal,
        )
        .unwrap();
    }
    assert_eq!(s2.table_pages(), tables);
    assert_eq!(tables, 1 + 1592);
    let uart = PhysAddr::new(0xfeb5_0014);
    let leaf = s2.walk(uart.to_identity_ipa(), &hal).unwrap();
    assert_eq!((leaf.pa, leaf.attrs), (uart, Attrs::DEVICE_RW));
    // RAM is not there.
    assert_eq!(
        s2.walk(PhysAddr::new(0x200_0000).to_identity_ipa(), &hal),
        None
    );
    s2.destroy(&mut hal);
}
