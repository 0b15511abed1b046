//! The guest's flattened device tree, generated with `vm-fdt`.

use vm_fdt::{FdtWriter, FdtWriterResult};

use super::layout::{
    GICD_BASE, GICR_BASE, RAM_BASE, UART_BASE, UART_SIZE, VIRTIO_FIRST_SPI, VIRTIO_MMIO_SIZE,
};
use crate::devices::gic::{GICD_SIZE, GICR_STRIDE};

/// What the device tree describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdtConfig {
    /// Number of vCPUs (MPIDR affinity 0 = index).
    pub vcpus: u32,
    /// Guest RAM size in bytes, from [`RAM_BASE`].
    pub mem_size: u64,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest-physical range of the initramfs, if any.
    pub initrd: Option<(u64, u64)>,
    /// The restricted DMA pool `(base, size)` the virtio devices use.
    pub dma_pool: Option<(u64, u64)>,
    /// virtio-mmio devices: window base and INTID (an SPI).
    pub virtio: Vec<(u64, u32)>,
}

const CLOCK_PHANDLE: u32 = 1;
const GIC_PHANDLE: u32 = 2;
const DMA_POOL_PHANDLE: u32 = 3;

/// `interrupts` cell 0: an SPI.
const GIC_SPI: u32 = 0;
/// `interrupts` cell 0: a PPI.
const GIC_PPI: u32 = 1;
/// `IRQ_TYPE_EDGE_RISING`.
const IRQ_EDGE_RISING: u32 = 1;
/// `IRQ_TYPE_LEVEL_HIGH`.
const IRQ_LEVEL_HIGH: u32 = 4;
/// The architected timer's PPIs (secure phys, non-secure phys, virt,
/// hyp phys), in the order the binding lists them.
const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];
/// The fixed clock the PL011 driver needs (`uartclk` and `apb_pclk`).
const CLOCK_HZ: u32 = 24_000_000;

/// Builds the DTB: memory, CPUs with PSCI over HVC (the hyp answers the
/// guest's PSCI calls), the GICv3 and the architected timer, the PL011
/// console, `/chosen`, and, with virtio devices, the restricted DMA pool
/// they all use (`memory-region`) and their virtio-mmio nodes.
///
/// # Errors
/// Those of `vm-fdt` (a property or node it cannot encode).
pub fn create_fdt(cfg: &FdtConfig) -> FdtWriterResult<Vec<u8>> {
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", GIC_PHANDLE)?;

    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", &cfg.cmdline)?;
    fdt.property_string("stdout-path", &format!("/pl011@{UART_BASE:x}"))?;
    if let Some((start, end)) = cfg.initrd {
        fdt.property_u64("linux,initrd-start", start)?;
        fdt.property_u64("linux,initrd-end", end)?;
    }
    fdt.end_node(chosen)?;

    let memory = fdt.begin_node(&format!("memory@{RAM_BASE:x}"))?;
    fdt.property_string("device_type", "memory")?;
    fdt.property_array_u64("reg", &[RAM_BASE, cfg.mem_size])?;
    fdt.end_node(memory)?;

    let cpus = fdt.begin_node("cpus")?;
    fdt.property_u32("#address-cells", 1)?;
    fdt.property_u32("#size-cells", 0)?;
    for i in 0..cfg.vcpus {
        let cpu = fdt.begin_node(&format!("cpu@{i}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,arm-v8")?;
        if cfg.vcpus > 1 {
            fdt.property_string("enable-method", "psci")?;
        }
        fdt.property_u32("reg", i)?;
        fdt.end_node(cpu)?;
    }
    fdt.end_node(cpus)?;

    let psci = fdt.begin_node("psci")?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,psci-1.0".into(), "arm,psci-0.2".into()],
    )?;
    fdt.property_string("method", "hvc")?;
    fdt.end_node(psci)?;

    gic_and_timer(&mut fdt, cfg.vcpus)?;
    if let Some((base, size)) = cfg.dma_pool {
        let reserved = fdt.begin_node("reserved-memory")?;
        fdt.property_u32("#address-cells", 2)?;
        fdt.property_u32("#size-cells", 2)?;
        fdt.property_null("ranges")?;
        // Not `no-map`: swiotlb bounces through the linear map.
        let pool = fdt.begin_node(&format!("restricted-dma-pool@{base:x}"))?;
        fdt.property_string("compatible", "restricted-dma-pool")?;
        fdt.property_array_u64("reg", &[base, size])?;
        fdt.property_phandle(DMA_POOL_PHANDLE)?;
        fdt.end_node(pool)?;
        fdt.end_node(reserved)?;
    }
    for &(base, intid) in &cfg.virtio {
        let node = fdt.begin_node(&format!("virtio_mmio@{base:x}"))?;
        fdt.property_string("compatible", "virtio,mmio")?;
        fdt.property_array_u64("reg", &[base, VIRTIO_MMIO_SIZE])?;
        let spi = intid.saturating_sub(VIRTIO_FIRST_SPI);
        fdt.property_array_u32("interrupts", &[GIC_SPI, spi, IRQ_EDGE_RISING])?;
        fdt.property_null("dma-coherent")?;
        if cfg.dma_pool.is_some() {
            fdt.property_u32("memory-region", DMA_POOL_PHANDLE)?;
        }
        fdt.end_node(node)?;
    }

    let clock = fdt.begin_node("apb-pclk")?;
    fdt.property_string("compatible", "fixed-clock")?;
    fdt.property_u32("#clock-cells", 0)?;
    fdt.property_u32("clock-frequency", CLOCK_HZ)?;
    fdt.property_string("clock-output-names", "clk24mhz")?;
    fdt.property_phandle(CLOCK_PHANDLE)?;
    fdt.end_node(clock)?;

    let uart = fdt.begin_node(&format!("pl011@{UART_BASE:x}"))?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,pl011".into(), "arm,primecell".into()],
    )?;
    fdt.property_array_u64("reg", &[UART_BASE, UART_SIZE])?;
    fdt.property_array_u32("clocks", &[CLOCK_PHANDLE, CLOCK_PHANDLE])?;
    fdt.property_string_list("clock-names", vec!["uartclk".into(), "apb_pclk".into()])?;
    fdt.end_node(uart)?;

    fdt.end_node(root)?;
    fdt.finish()
}

/// The GICv3 node (distributor, one redistributor region) and the
/// architected timer's PPIs.
fn gic_and_timer(fdt: &mut FdtWriter, vcpus: u32) -> FdtWriterResult<()> {
    let gic = fdt.begin_node(&format!("intc@{GICD_BASE:x}"))?;
    fdt.property_string("compatible", "arm,gic-v3")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    fdt.property_null("interrupt-controller")?;
    // As QEMU's virt: room for an ITS child node (dtc wants the cells on
    // an interrupt provider).
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_null("ranges")?;
    fdt.property_u32("#redistributor-regions", 1)?;
    let gicr_size = u64::from(vcpus) * GICR_STRIDE;
    fdt.property_array_u64("reg", &[GICD_BASE, GICD_SIZE, GICR_BASE, gicr_size])?;
    fdt.property_phandle(GIC_PHANDLE)?;
    fdt.end_node(gic)?;

    let timer = fdt.begin_node("timer")?;
    fdt.property_string("compatible", "arm,armv8-timer")?;
    let cells: Vec<u32> = TIMER_PPIS
        .iter()
        .flat_map(|&ppi| [GIC_PPI, ppi, IRQ_LEVEL_HIGH])
        .collect();
    fdt.property_array_u32("interrupts", &cells)?;
    fdt.end_node(timer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloister_hyp_core::fdt::{host_platform, PsciConduit};

    fn cfg(vcpus: u32) -> FdtConfig {
        FdtConfig {
            vcpus,
            mem_size: 256 << 20,
            cmdline: "console=ttyAMA0".into(),
            initrd: None,
            dma_pool: None,
            virtio: Vec::new(),
        }
    }

    /// The DTB is read back with the hypervisor's own DT reader: memory,
    /// console, PSCI conduit and CPUs must be what the VMM meant.
    #[test]
    fn dtb_reads_back_with_memory_console_psci_and_cpus() {
        let dtb = create_fdt(&cfg(2)).unwrap();
        let p = host_platform(&dtb).unwrap();
        let ram = p.ram.as_slice();
        assert_eq!(ram.len(), 1);
        assert_eq!((ram[0].base.raw(), ram[0].size), (RAM_BASE, 256 << 20));
        assert_eq!(p.uart.base.raw(), UART_BASE);
        assert_eq!(p.psci, PsciConduit::Hvc);
        assert_eq!(p.cpus.as_slice(), &[0, 1]);
        assert_eq!(p.initrd, None);
    }

    #[test]
    fn initrd_range_is_in_chosen() {
        let dtb = create_fdt(&FdtConfig {
            initrd: Some((RAM_BASE + 0x100_0000, RAM_BASE + 0x180_0000)),
            ..cfg(1)
        })
        .unwrap();
        let p = host_platform(&dtb).unwrap();
        let initrd = p.initrd.unwrap();
        assert_eq!(
            (initrd.start.raw(), initrd.end.raw()),
            (RAM_BASE + 0x100_0000, RAM_BASE + 0x180_0000)
        );
        assert_eq!(p.cpus.len(), 1);
    }

    fn u32s(node: fdt::node::FdtNode<'_, '_>, name: &str) -> Vec<u32> {
        node.property(name)
            .unwrap_or_else(|| panic!("{} has no {name}", node.name))
            .value
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn regs(node: fdt::node::FdtNode<'_, '_>) -> Vec<(usize, usize)> {
        node.reg()
            .unwrap()
            .map(|r| (r.starting_address as usize, r.size.unwrap()))
            .collect()
    }

    /// A Linux guest's DTB: GIC, timer, pool and virtio nodes as the
    /// drivers (and of_reserved_mem) look them up.
    #[test]
    fn linux_guest_nodes_parse_with_their_phandles() {
        let pool = (RAM_BASE + (246 << 20), 8 << 20);
        let dtb = create_fdt(&FdtConfig {
            dma_pool: Some(pool),
            virtio: vec![(0x0a00_0000, 32), (0x0a00_0200, 33)],
            ..cfg(2)
        })
        .unwrap();
        let fdt = fdt::Fdt::new(&dtb).unwrap();

        let gic = fdt.find_compatible(&["arm,gic-v3"]).unwrap();
        assert!(gic.property("interrupt-controller").is_some());
        assert_eq!(gic.interrupt_cells(), Some(3));
        assert_eq!(u32s(gic, "#redistributor-regions"), [1]);
        assert_eq!(
            regs(gic),
            [(0x0800_0000, 0x1_0000), (0x080a_0000, 2 * 0x2_0000)]
        );
        let root = fdt.find_node("/").unwrap();
        assert_eq!(u32s(root, "interrupt-parent"), u32s(gic, "phandle"));

        let timer = fdt.find_compatible(&["arm,armv8-timer"]).unwrap();
        assert_eq!(
            u32s(timer, "interrupts"),
            [1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]
        );

        let pool_node = fdt.find_compatible(&["restricted-dma-pool"]).unwrap();
        let us = |v: u64| usize::try_from(v).unwrap();
        assert_eq!(regs(pool_node), [(us(pool.0), us(pool.1))]);
        assert!(pool_node.property("no-map").is_none(), "swiotlb maps it");
        let reserved = fdt.find_node("/reserved-memory").unwrap();
        assert!(reserved.property("ranges").is_some());
        let pool_phandle = u32s(pool_node, "phandle");

        let virtio: Vec<_> = fdt
            .all_nodes()
            .filter(|n| {
                n.compatible()
                    .is_some_and(|c| c.all().any(|c| c == "virtio,mmio"))
            })
            .collect();
        assert_eq!(virtio.len(), 2);
        for (i, node) in (0u32..).zip(virtio.iter()) {
            let base = 0x0a00_0000 + 0x200 * us(u64::from(i));
            assert_eq!(regs(*node), [(base, 0x200)]);
            assert_eq!(u32s(*node, "interrupts"), [0, i, 1], "SPI, edge");
            assert_eq!(u32s(*node, "memory-region"), pool_phandle);
            assert!(node.property("dma-coherent").is_some());
            let phandle = u32s(*node, "memory-region")[0];
            assert_eq!(fdt.find_phandle(phandle).unwrap().name, pool_node.name);
        }
        // The CPUs use PSCI; the hypervisor's reader still agrees.
        assert!(fdt
            .cpus()
            .all(|c| c.property("enable-method").and_then(|p| p.as_str()) == Some("psci")));
        let p = host_platform(&dtb).unwrap();
        assert_eq!(p.cpus.as_slice(), &[0, 1]);
    }

    /// dtc (if installed) decompiles the full DTB without a warning.
    #[test]
    fn dtc_finds_nothing_to_warn_about() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let dtb = create_fdt(&FdtConfig {
            dma_pool: Some((RAM_BASE + (246 << 20), 8 << 20)),
            virtio: vec![(0x0a00_0000, 32)],
            initrd: Some((RAM_BASE + 0x100_0000, RAM_BASE + 0x180_0000)),
            ..cfg(2)
        })
        .unwrap();
        let child = Command::new("dtc")
            .args(["-I", "dtb", "-O", "dts", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("dtc not installed: skipped");
            return;
        };
        child.stdin.take().unwrap().write_all(&dtb).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.is_empty(), "dtc: {stderr}");
        let dts = String::from_utf8_lossy(&out.stdout);
        assert!(dts.contains("memory-region = <0x03>"), "{dts}");
    }
}
