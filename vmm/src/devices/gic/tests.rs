//! The GIC model against what Linux 6.12's `drivers/irqchip/irq-gic-v3.c`
//! (and `irq-gic-common.c`) does at probe, CPU bring-up and runtime.

use std::sync::{Arc, Mutex};

use super::*;

type Log = Arc<Mutex<Vec<(u32, u32)>>>;

fn gic(vcpus: u32) -> (Gic, Log) {
    let log: Log = Arc::default();
    let sink = Arc::clone(&log);
    let injector = move |vcpu, intid| {
        sink.lock().unwrap().push((vcpu, intid));
        Ok(())
    };
    (Gic::new(vcpus, Box::new(injector)).unwrap(), log)
}

fn rd32(g: &Gic, dist: bool, off: u64) -> u32 {
    let mut b = [0u8; 4];
    if dist {
        g.gicd_read(off, &mut b);
    } else {
        g.gicr_read(off, &mut b);
    }
    u32::from_le_bytes(b)
}

fn wr32(g: &Gic, dist: bool, off: u64, v: u32) {
    if dist {
        g.gicd_write(off, &v.to_le_bytes());
    } else {
        g.gicr_write(off, &v.to_le_bytes());
    }
}

fn rd64(g: &Gic, dist: bool, off: u64) -> u64 {
    let mut b = [0u8; 8];
    if dist {
        g.gicd_read(off, &mut b);
    } else {
        g.gicr_read(off, &mut b);
    }
    u64::from_le_bytes(b)
}

const D: bool = true;
const R: bool = false;
const SGI: u64 = 0x1_0000;
const GICD_INT_DEF_PRI_X4: u32 = 0xa0a0_a0a0;

/// `gic_iterate_rdists`: from the region's start, GICR_TYPER (64-bit) and
/// a 128 KiB step until `Last`; returns each redistributor's offset and
/// affinity.
fn iterate_rdists(g: &Gic) -> Vec<(u64, u64)> {
    assert_eq!(rd32(g, R, 0xffe8) & 0xf0, 0x30, "GICR_PIDR2: GICv3");
    let mut found = Vec::new();
    let mut ptr = 0;
    loop {
        let typer = rd64(g, R, ptr + 0x8);
        assert_eq!(typer & 0b11, 0, "no PLPIS, no VLPIS");
        found.push((ptr, typer >> 32));
        let _ctlr = rd32(g, R, ptr);
        ptr += 0x2_0000;
        if typer & (1 << 4) != 0 {
            break;
        }
        assert!(found.len() <= 8, "no Last bit");
    }
    found
}

/// `gic_cpu_init` on the CPU with affinity `aff`.
fn cpu_init(g: &Gic, aff: u64) {
    let (rd, _) = *iterate_rdists(g)
        .iter()
        .find(|(_, a)| *a == aff)
        .expect("CPU has a redistributor");
    // gic_enable_redist(true)
    let waker = rd32(g, R, rd + 0x14);
    assert_ne!(waker & 0b110, 0, "asleep at reset");
    wr32(g, R, rd + 0x14, waker & !0b10);
    assert_eq!(rd32(g, R, rd + 0x14) & 0b100, 0, "ChildrenAsleep clears");
    // SGIs and PPIs: group 1, deactivated, disabled, default priority.
    wr32(g, R, rd + SGI + 0x80, !0);
    wr32(g, R, rd + SGI + 0x380, !0);
    wr32(g, R, rd + SGI + 0x180, !0);
    for i in (0..32).step_by(4) {
        wr32(g, R, rd + SGI + 0x400 + i, GICD_INT_DEF_PRI_X4);
    }
    assert_eq!(rd32(g, R, rd) & (1 << 3), 0, "GICR_CTLR.RWP");
}

/// The probe sequence of `gic_of_init` + `gic_init_bases` + `gic_dist_init`
/// + `gic_cpu_init` on CPU 0.
fn linux_probe(g: &Gic) {
    assert_eq!(rd32(g, D, 0xffe8) & 0xf0, 0x30, "GICD_PIDR2: GICv3");
    let typer = rd32(g, D, 0x4);
    let lines = 32 * ((typer & 0x1f) + 1);
    assert_eq!(lines, 128);
    assert_eq!((typer >> 19) & 0x1f, 9, "IDbits");
    assert_eq!(typer & (1 << 17), 0, "no LPIs");
    assert_eq!(typer & (1 << 16), 0, "no MBIS");
    assert_eq!(typer & (1 << 8), 0, "no extended SPIs");
    assert_eq!(typer & (1 << 10), 0, "no security extension");
    let _iidr = rd32(g, D, 0x8);
    assert_eq!(rd32(g, D, 0xc), 0, "GICD_TYPER2: no nASSGIcap");
    assert!(!iterate_rdists(g).is_empty());
    assert_ne!(rd32(g, D, 0x0) & (1 << 6), 0, "GICD_CTLR.DS");
    // gic_dist_init
    wr32(g, D, 0x0, 0);
    assert_eq!(rd32(g, D, 0x0) >> 31, 0, "RWP");
    for i in (32..lines).step_by(32) {
        wr32(g, D, 0x80 + u64::from(i / 8), !0);
    }
    for i in (32..lines).step_by(16) {
        wr32(g, D, 0xc00 + u64::from(i / 4), 0);
    }
    for i in (32..lines).step_by(4) {
        wr32(g, D, 0x400 + u64::from(i), GICD_INT_DEF_PRI_X4);
    }
    for i in (32..lines).step_by(32) {
        wr32(g, D, 0x380 + u64::from(i / 8), !0);
        wr32(g, D, 0x180 + u64::from(i / 8), !0);
    }
    wr32(g, D, 0x0, (1 << 4) | (1 << 1) | 1);
    assert_eq!(rd32(g, D, 0x0) >> 31, 0, "RWP");
    for i in 32..u64::from(lines) {
        g.gicd_write(0x6000 + i * 8, &0u64.to_le_bytes());
    }
    cpu_init(g, 0);
}

/// `gic_set_type(EDGE_RISING)` + `gic_set_affinity` + `gic_unmask_irq`
/// for an SPI, as `request_irq` does.
fn request_edge_spi(g: &Gic, intid: u32, cpu: u64) {
    let off = 0xc00 + u64::from(intid / 16) * 4;
    let bit = 2 << ((intid % 16) * 2);
    let old = rd32(g, D, off);
    wr32(g, D, off, old | bit);
    assert_eq!(
        rd32(g, D, off),
        old | bit,
        "the config sticks (else -EINVAL)"
    );
    g.gicd_write(0x6000 + u64::from(intid) * 8, &cpu.to_le_bytes());
    wr32(g, D, 0x100 + u64::from(intid / 32) * 4, 1 << (intid % 32));
}

#[test]
fn linux_probe_finds_a_gicv3_with_two_redistributors() {
    let (g, log) = gic(2);
    linux_probe(&g);
    assert_eq!(iterate_rdists(&g), [(0, 0), (0x2_0000, 1)]);
    cpu_init(&g, 1);
    assert_eq!(
        rd32(&g, D, 0x0),
        (1 << 6) | (1 << 4) | (1 << 1) | 1,
        "DS, ARE, both groups"
    );
    // Everything is programmed the way the driver left it.
    assert_eq!(rd32(&g, D, 0x84), !0, "SPIs 32..63 in group 1");
    assert_eq!(rd32(&g, D, 0x104), 0, "all disabled");
    assert_eq!(rd32(&g, D, 0x420), GICD_INT_DEF_PRI_X4);
    assert_eq!(rd32(&g, R, 0x2_0000 + SGI + 0x400), GICD_INT_DEF_PRI_X4);
    assert_eq!(rd32(&g, R, SGI + 0xc00), 0xaaaa_aaaa, "SGIs are edge");
    assert_eq!(g.stats().unknown_accesses.load(Ordering::Relaxed), 0);
    assert!(log.lock().unwrap().is_empty());
}

#[test]
fn timer_ppi_setup_is_plain_state() {
    let (g, log) = gic(1);
    linux_probe(&g);
    // arch_timer: PPI 27 level (ICFGR1 bit 23 clear), then enabled.
    let old = rd32(&g, R, SGI + 0xc04);
    wr32(&g, R, SGI + 0xc04, old & !(2 << 22));
    assert_eq!(rd32(&g, R, SGI + 0xc04) & (2 << 22), 0);
    wr32(&g, R, SGI + 0x100, 1 << 27);
    assert_eq!(rd32(&g, R, SGI + 0x100), 1 << 27);
    wr32(&g, R, SGI + 0xc00, 0);
    assert_eq!(rd32(&g, R, SGI + 0xc00), 0xaaaa_aaaa, "SGI config is RO");
    assert!(
        log.lock().unwrap().is_empty(),
        "PPIs never reach the injector"
    );
}

#[test]
fn an_enabled_spi_goes_to_its_routed_vcpu() {
    let (g, log) = gic(2);
    linux_probe(&g);
    cpu_init(&g, 1);
    request_edge_spi(&g, 33, 0);
    request_edge_spi(&g, 34, 1);
    g.raise_spi(33).unwrap();
    g.raise_spi(34).unwrap();
    // IRM (1-of-N): vCPU 0.
    request_edge_spi(&g, 35, 1 << 31);
    g.raise_spi(35).unwrap();
    assert_eq!(*log.lock().unwrap(), [(0, 33), (1, 34), (0, 35)]);
    assert_eq!(rd32(&g, D, 0x204), 0, "handed over, not pending here");
    assert_eq!(g.stats().injected.load(Ordering::Relaxed), 3);
    assert_eq!(kvm_irq_line_spi(1, 34), 0x0101_0022);
}

#[test]
fn pending_spis_wait_for_enable_and_for_the_distributor() {
    let (g, log) = gic(2);
    linux_probe(&g);
    // Not yet enabled: held.
    g.raise_spi(40).unwrap();
    assert_eq!(rd32(&g, D, 0x204) & (1 << 8), 1 << 8, "pending");
    assert!(log.lock().unwrap().is_empty());
    request_edge_spi(&g, 40, 1);
    assert_eq!(*log.lock().unwrap(), [(1, 40)], "delivered when enabled");
    // Distributor off: held until it is on again.
    wr32(&g, D, 0x0, 0);
    g.raise_spi(40).unwrap();
    g.raise_spi(40).unwrap();
    assert_eq!(log.lock().unwrap().len(), 1);
    wr32(&g, D, 0x0, (1 << 4) | (1 << 1) | 1);
    assert_eq!(*log.lock().unwrap(), [(1, 40), (1, 40)], "edges merge");
    // Routed to a vCPU that does not exist: held until re-routed.
    g.gicd_write(0x6000 + 40 * 8, &7u64.to_le_bytes());
    g.raise_spi(40).unwrap();
    assert_eq!(log.lock().unwrap().len(), 2);
    g.gicd_write(0x6000 + 40 * 8, &0u32.to_le_bytes());
    assert_eq!(log.lock().unwrap().last(), Some(&(0, 40)));
    // ICPENDR drops a held one; ISPENDR (retrigger) sends one.
    wr32(&g, D, 0x184, 1 << 8);
    g.raise_spi(40).unwrap();
    wr32(&g, D, 0x284, 1 << 8);
    wr32(&g, D, 0x104, 1 << 8);
    assert_eq!(log.lock().unwrap().len(), 3);
    wr32(&g, D, 0x204, 1 << 8);
    assert_eq!(log.lock().unwrap().len(), 4);
}

#[test]
fn raising_a_non_spi_or_failing_injection_is_an_error() {
    let injector = |_, _| Err(io::Error::from_raw_os_error(libc::ENOTTY));
    let g = Gic::new(1, Box::new(injector)).unwrap();
    assert!(matches!(g.raise_spi(27), Err(GicError::NotAnSpi(27))));
    assert!(matches!(g.raise_spi(128), Err(GicError::NotAnSpi(128))));
    linux_probe(&g);
    request_edge_spi(&g, 32, 0);
    let e = g.raise_spi(32).unwrap_err();
    assert!(e.to_string().contains("INTID 32"), "{e}");
    assert!(matches!(
        Gic::new(0, Box::new(|_, _| Ok(()))),
        Err(GicError::VcpuCount(0))
    ));
    assert!(matches!(
        Gic::new(9, Box::new(|_, _| Ok(()))),
        Err(GicError::VcpuCount(9))
    ));
}

#[test]
fn id_and_64bit_registers_read_whole_or_by_halves() {
    let (g, _) = gic(2);
    assert_eq!(
        rd32(&g, R, 0x2_0000 + 0xc),
        1,
        "GICR_TYPER high half: Aff0 = 1"
    );
    assert_eq!(
        rd32(&g, R, 0x2_0000 + 0x8),
        (1 << 8) | (1 << 4),
        "processor 1, Last"
    );
    g.gicd_write(0x6000 + 50 * 8, &0x1234_5678u32.to_le_bytes());
    g.gicd_write(0x6000 + 50 * 8 + 4, &0xffu32.to_le_bytes());
    assert_eq!(
        rd64(&g, D, 0x6000 + 50 * 8),
        0xff_0000_0000 | 0x34_5678,
        "reserved bits dropped"
    );
    assert_eq!(rd64(&g, D, 0x6000 + 5 * 8), 0, "no IROUTER for PPIs");
    assert_eq!(rd32(&g, D, 0x8), rd32(&g, R, 0x4), "IIDR");
}

#[test]
fn waker_goes_back_to_sleep_on_request() {
    let (g, _) = gic(1);
    wr32(&g, R, 0x14, 0);
    assert_eq!(rd32(&g, R, 0x14), 0);
    wr32(&g, R, 0x14, 0b10);
    assert_eq!(
        rd32(&g, R, 0x14),
        0b110,
        "ProcessorSleep writable, children follow"
    );
}

#[test]
fn any_access_anywhere_is_raz_wi_and_never_panics() {
    let (g, _) = gic(2);
    linux_probe(&g);
    let before = g.stats().unknown_accesses.load(Ordering::Relaxed);
    let mut b = [0xffu8; 8];
    g.gicd_read(0x40, &mut b[..4]);
    assert_eq!(b[..4], [0; 4], "SETSPI_NSR: no MBIS");
    g.gicd_read(0x0, &mut b);
    assert_eq!(b, [0; 8], "64-bit access to a 32-bit register");
    g.gicr_read(2 * GICR_STRIDE, &mut b[..4]);
    assert_eq!(b[..4], [0; 4], "no third redistributor");
    assert!(g.stats().unknown_accesses.load(Ordering::Relaxed) >= before + 3);
    let ctlr = rd32(&g, D, 0);
    for off in (0..GICD_SIZE).step_by(3).chain(0x6000..0x6200) {
        for len in [1, 2, 4, 8] {
            let v = 0xdead_beef_cafe_f00d_u64.to_le_bytes();
            let mut r = [0u8; 8];
            g.gicd_read(off, &mut r[..len]);
            if off != 0 {
                g.gicd_write(off, &v[..len]);
            }
            g.gicr_read(off, &mut r[..len]);
            g.gicr_write(off + 0x1_0000, &v[..len]);
            g.gicr_write(off, &v[..len]);
        }
    }
    assert_eq!(rd32(&g, D, 0), ctlr, "GICD_CTLR untouched");
    for intid in FIRST_SPI..NR_IRQS {
        let _ = g.raise_spi(intid);
    }
}
