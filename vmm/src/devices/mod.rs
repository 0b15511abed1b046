//! Emulated devices.

pub mod gic;
pub mod pl011;
pub mod ratelimit;
pub mod test_dev;
pub mod virtio;

use std::io::Write;
use std::sync::Mutex;

use crate::arch::layout::{TEST_DEV_BASE, TEST_DEV_SIZE, UART_BASE, UART_SIZE};
use pl011::Pl011;
use test_dev::TestDevice;

/// The guest's MMIO devices, shared by the vCPU threads.
#[derive(Debug)]
pub struct Bus<W: Write> {
    uart: Mutex<Pl011<W>>,
    test: Mutex<TestDevice>,
}

fn within(addr: u64, base: u64, size: u64) -> Option<u64> {
    (base..base + size).contains(&addr).then(|| addr - base)
}

impl<W: Write> Bus<W> {
    /// The PL011 writing to `console` and the test device calling
    /// `test`'s handler.
    pub fn new(console: W, test: TestDevice) -> Self {
        Self {
            uart: Mutex::new(Pl011::new(console)),
            test: Mutex::new(test),
        }
    }

    /// A guest load at `addr`; unknown addresses read as zero (what the
    /// conformance guest expects of an unclaimed MMIO page). Returns
    /// whether a device claimed it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        if let Some(off) = within(addr, UART_BASE, UART_SIZE) {
            if let Ok(mut uart) = self.uart.lock() {
                uart.read(off, data);
            }
            return true;
        }
        if let Some(off) = within(addr, TEST_DEV_BASE, TEST_DEV_SIZE) {
            if let Ok(test) = self.test.lock() {
                test.read(off, data);
            }
            return true;
        }
        data.fill(0);
        false
    }

    /// A guest store at `addr`; stores to unknown addresses are dropped.
    /// Returns whether a device claimed it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        if let Some(off) = within(addr, UART_BASE, UART_SIZE) {
            if let Ok(mut uart) = self.uart.lock() {
                uart.write(off, data);
            }
            return true;
        }
        if let Some(off) = within(addr, TEST_DEV_BASE, TEST_DEV_SIZE) {
            if let Ok(mut test) = self.test.lock() {
                test.write(off, data);
            }
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_routes_by_address() {
        let bus = Bus::new(Vec::new(), TestDevice::new(Box::new(|e, v| e + v)));
        assert!(bus.write(UART_BASE, b"A"));
        assert!(bus.write(TEST_DEV_BASE + test_dev::VALUE, &5u64.to_le_bytes()));
        assert!(bus.write(TEST_DEV_BASE + test_dev::EVENT, &1u64.to_le_bytes()));
        let mut reply = [0u8; 8];
        assert!(bus.read(TEST_DEV_BASE + test_dev::REPLY, &mut reply));
        assert_eq!(u64::from_le_bytes(reply), 6);
        let mut junk = [0xffu8; 4];
        assert!(!bus.read(0x0a00_0000, &mut junk));
        assert_eq!(junk, [0; 4]);
        assert!(!bus.write(0x0a00_0000, &[1]));
        let out = bus.uart.into_inner().unwrap();
        assert_eq!(out.output().as_slice(), b"A");
    }
}
