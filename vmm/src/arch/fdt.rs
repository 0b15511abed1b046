//! The guest's flattened device tree, generated with `vm-fdt`.

use vm_fdt::{FdtWriter, FdtWriterResult};

use super::layout::{RAM_BASE, UART_BASE, UART_SIZE};

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
}

const CLOCK_PHANDLE: u32 = 1;
/// The fixed clock the PL011 driver needs (`uartclk` and `apb_pclk`).
const CLOCK_HZ: u32 = 24_000_000;

/// Builds the DTB: memory, CPUs with PSCI over HVC (the hyp answers the
/// guest's PSCI calls), the PL011 console and `/chosen`.
///
/// # Errors
/// Those of `vm-fdt` (a property or node it cannot encode).
pub fn create_fdt(cfg: &FdtConfig) -> FdtWriterResult<Vec<u8>> {
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;

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
}
