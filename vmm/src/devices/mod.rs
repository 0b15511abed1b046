//! Emulated devices.

pub mod gic;
pub mod pl011;
pub mod ratelimit;
pub mod setup;
pub mod test_dev;
pub mod virtio;

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::arch::layout::{
    virtio_slot, GICD_BASE, GICR_BASE, TEST_DEV_BASE, TEST_DEV_SIZE, UART_BASE, UART_SIZE,
    VIRTIO_MMIO_SIZE,
};
use gic::{Gic, GICD_SIZE};
use pl011::Pl011;
use test_dev::TestDevice;
use virtio::MmioTransport;

/// Which device took an MMIO access (for exit counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The PL011.
    Uart,
    /// The test device.
    TestDev,
    /// The GIC's distributor or redistributors.
    Gic,
    /// A virtio-mmio register other than `QueueNotify`.
    Virtio,
    /// A virtio-mmio `QueueNotify` (a request for the device).
    VirtioNotify,
    /// Nothing: reads give zero, writes are dropped.
    Unclaimed,
}

/// `QueueNotify`'s offset in a virtio-mmio window.
const VIRTIO_QUEUE_NOTIFY: u64 = 0x050;

/// The guest's MMIO devices, shared by the vCPU threads.
#[derive(Debug)]
pub struct Bus<W: Write> {
    uart: Mutex<Pl011<W>>,
    test: Mutex<TestDevice>,
    gic: Option<Arc<Gic>>,
    virtio: Vec<Arc<Mutex<MmioTransport>>>,
}

fn within(addr: u64, base: u64, size: u64) -> Option<u64> {
    (base..base.saturating_add(size))
        .contains(&addr)
        .then(|| addr - base)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Device state stays usable if a thread panicked holding it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<W: Write> Bus<W> {
    /// The PL011 writing to `console` and the test device calling
    /// `test`'s handler.
    pub fn new(console: W, test: TestDevice) -> Self {
        Self {
            uart: Mutex::new(Pl011::new(console)),
            test: Mutex::new(test),
            gic: None,
            virtio: Vec::new(),
        }
    }

    /// Adds the GIC at its [`GICD_BASE`] / [`GICR_BASE`] windows.
    pub fn with_gic(mut self, gic: Arc<Gic>) -> Self {
        self.gic = Some(gic);
        self
    }

    /// Adds virtio-mmio devices, device `n` in slot `n` ([`virtio_slot`]).
    pub fn with_virtio(mut self, devices: Vec<Arc<Mutex<MmioTransport>>>) -> Self {
        self.virtio = devices;
        self
    }

    fn virtio_at(&self, addr: u64) -> Option<(&Mutex<MmioTransport>, u64)> {
        self.virtio.iter().zip(0u32..).find_map(|(dev, n)| {
            let off = within(addr, virtio_slot(n).0, VIRTIO_MMIO_SIZE)?;
            Some((dev.as_ref(), off))
        })
    }

    /// A guest load at `addr`; unknown addresses read as zero (what the
    /// conformance guest expects of an unclaimed MMIO page).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Claim {
        if let Some(off) = within(addr, UART_BASE, UART_SIZE) {
            lock(&self.uart).read(off, data);
            return Claim::Uart;
        }
        if let Some(off) = within(addr, TEST_DEV_BASE, TEST_DEV_SIZE) {
            lock(&self.test).read(off, data);
            return Claim::TestDev;
        }
        if let Some(gic) = &self.gic {
            if let Some(off) = within(addr, GICD_BASE, GICD_SIZE) {
                gic.gicd_read(off, data);
                return Claim::Gic;
            }
            if let Some(off) = within(addr, GICR_BASE, gic.gicr_size()) {
                gic.gicr_read(off, data);
                return Claim::Gic;
            }
        }
        if let Some((dev, off)) = self.virtio_at(addr) {
            lock(dev).read(off, data);
            return Claim::Virtio;
        }
        data.fill(0);
        Claim::Unclaimed
    }

    /// A guest store at `addr`; stores to unknown addresses are dropped.
    pub fn write(&self, addr: u64, data: &[u8]) -> Claim {
        if let Some(off) = within(addr, UART_BASE, UART_SIZE) {
            lock(&self.uart).write(off, data);
            return Claim::Uart;
        }
        if let Some(off) = within(addr, TEST_DEV_BASE, TEST_DEV_SIZE) {
            lock(&self.test).write(off, data);
            return Claim::TestDev;
        }
        if let Some(gic) = &self.gic {
            if let Some(off) = within(addr, GICD_BASE, GICD_SIZE) {
                gic.gicd_write(off, data);
                return Claim::Gic;
            }
            if let Some(off) = within(addr, GICR_BASE, gic.gicr_size()) {
                gic.gicr_write(off, data);
                return Claim::Gic;
            }
        }
        if let Some((dev, off)) = self.virtio_at(addr) {
            lock(dev).write(off, data);
            return if off == VIRTIO_QUEUE_NOTIFY {
                Claim::VirtioNotify
            } else {
                Claim::Virtio
            };
        }
        Claim::Unclaimed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_routes_by_address() {
        let bus = Bus::new(Vec::new(), TestDevice::new(Box::new(|e, v| e + v)));
        assert_eq!(bus.write(UART_BASE, b"A"), Claim::Uart);
        let value = 5u64.to_le_bytes();
        assert_eq!(
            bus.write(TEST_DEV_BASE + test_dev::VALUE, &value),
            Claim::TestDev
        );
        let event = 1u64.to_le_bytes();
        assert_eq!(
            bus.write(TEST_DEV_BASE + test_dev::EVENT, &event),
            Claim::TestDev
        );
        let mut reply = [0u8; 8];
        assert_eq!(
            bus.read(TEST_DEV_BASE + test_dev::REPLY, &mut reply),
            Claim::TestDev
        );
        assert_eq!(u64::from_le_bytes(reply), 6);
        // No GIC, no virtio: the conformance guest's probe page reads 0.
        let mut junk = [0xffu8; 4];
        assert_eq!(bus.read(0x0a00_0000, &mut junk), Claim::Unclaimed);
        assert_eq!(junk, [0; 4]);
        assert_eq!(bus.write(0x0a00_0000, &[1]), Claim::Unclaimed);
        assert_eq!(bus.read(GICD_BASE, &mut junk), Claim::Unclaimed);
        let out = bus.uart.into_inner().unwrap();
        assert_eq!(out.output().as_slice(), b"A");
    }

    #[test]
    fn gic_and_virtio_windows_are_routed() {
        use crate::guest_mem::{GuestRam, SharedPages};
        use virtio::block::Block;

        let gic = Arc::new(Gic::new(2, Box::new(|_, _| Ok(()))).unwrap());
        let mem = vm_memory::GuestMemoryMmap::from_ranges(&[(
            vm_memory::GuestAddress(0x8000_0000),
            0x10_0000,
        )])
        .unwrap();
        let ram = Arc::new(GuestRam::new(mem, SharedPages::all(0x8000_0000, 0x10_0000)));
        let disk = tempfile_disk();
        let blk = Block::new(Box::new(disk), 4096, false, "d");
        let t = MmioTransport::new(Box::new(blk), ram, Box::new(|| {}), false);
        let bus = Bus::new(Vec::new(), TestDevice::new(Box::new(|_, _| 0)))
            .with_gic(Arc::clone(&gic))
            .with_virtio(vec![Arc::new(Mutex::new(t))]);
        let mut v = [0u8; 4];
        assert_eq!(bus.read(GICD_BASE + 0xffe8, &mut v), Claim::Gic);
        assert_eq!(v[0] & 0xf0, 0x30);
        assert_eq!(bus.read(GICR_BASE + 0x2_0000 + 0xc, &mut v), Claim::Gic);
        assert_eq!(u32::from_le_bytes(v), 1, "second redistributor");
        assert_eq!(bus.read(GICR_BASE + 0x4_0000, &mut v), Claim::Unclaimed);
        assert_eq!(bus.read(0x0a00_0000, &mut v), Claim::Virtio);
        assert_eq!(u32::from_le_bytes(v), 0x7472_6976);
        assert_eq!(bus.read(0x0a00_0008, &mut v), Claim::Virtio);
        assert_eq!(u32::from_le_bytes(v), 2, "block");
        assert_eq!(
            bus.write(0x0a00_0050, &0u32.to_le_bytes()),
            Claim::VirtioNotify
        );
        assert_eq!(
            bus.read(0x0a00_0200, &mut v),
            Claim::Unclaimed,
            "slot 1 empty"
        );
    }

    fn tempfile_disk() -> std::fs::File {
        let path = std::env::temp_dir().join(format!("cloister-bus-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let _ = std::fs::remove_file(&path);
        f.set_len(4096).unwrap();
        f
    }
}
