//! The virtio-mmio transport, version 2 (virtio 1.2, 4.2.2): one register
//! window per device, device status and feature negotiation, split
//! virtqueues, and the interrupt (an SPI raised through the GIC).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::{Queue, QueueT};

use super::{DeviceError, VirtioDevice, F_ACCESS_PLATFORM, F_VERSION_1};
use crate::devices::ratelimit::RateLimited;
use crate::guest_mem::GuestRam;

/// Size of one device's register window.
pub const MMIO_SIZE: u64 = 0x200;

const MAGIC_VALUE: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const VENDOR_ID: u64 = 0x00c;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const SHM_SEL: u64 = 0x0ac;
const SHM_LEN_LOW: u64 = 0x0b0;
const SHM_BASE_HIGH: u64 = 0x0bc;
const CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG: u64 = 0x100;

/// "virt".
const MAGIC: u32 = 0x7472_6976;
/// "CLST".
const VENDOR: u32 = 0x5453_4c43;

/// What raises the device's interrupt (its SPI, an edge).
pub type IrqTrigger = Box<dyn Fn() + Send + Sync>;

/// Counters for benchmarks (exits per request).
#[derive(Debug, Default)]
pub struct TransportStats {
    /// `QueueNotify` writes (each one an exit to the VMM).
    pub notifies: AtomicU64,
    /// Interrupts raised.
    pub interrupts: AtomicU64,
    /// Times the device stopped with `DEVICE_NEEDS_RESET`.
    pub errors: AtomicU64,
}

/// A virtio device behind its MMIO window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: Arc<GuestRam>,
    irq: IrqTrigger,
    queues: Vec<Queue>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    interrupt_status: u32,
    config_generation: u32,
    require_access_platform: bool,
    stats: Arc<TransportStats>,
    log: RateLimited,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("driver_features", &self.driver_features)
            .finish_non_exhaustive()
    }
}

fn le32(data: &[u8]) -> u32 {
    let mut bytes = [0u8; 4];
    let n = data.len().min(4);
    bytes[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(bytes)
}

impl MmioTransport {
    /// `device` on `mem`, raising `irq`. With `require_access_platform`
    /// (protected VMs) a driver that does not accept
    /// `VIRTIO_F_ACCESS_PLATFORM` cannot get `FEATURES_OK`: it would put
    /// its buffers in private memory.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: Arc<GuestRam>,
        irq: IrqTrigger,
        require_access_platform: bool,
    ) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .filter_map(|&max| Queue::new(max).ok())
            .collect();
        Self {
            device,
            mem,
            irq,
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            interrupt_status: 0,
            config_generation: 0,
            require_access_platform,
            stats: Arc::default(),
            log: RateLimited::new("virtio-mmio", 16),
        }
    }

    /// The counters (shared: readable after the VM is gone).
    pub fn stats(&self) -> Arc<TransportStats> {
        Arc::clone(&self.stats)
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        let sel = usize::try_from(self.queue_sel).ok()?;
        self.queues.get_mut(sel)
    }

    /// A guest load at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG {
            self.device.read_config(offset - CONFIG, data);
            return;
        }
        let value = if data.len() != 4 || !offset.is_multiple_of(4) {
            self.log
                .log(format_args!("read of {} bytes at {offset:#x}", data.len()));
            0
        } else {
            self.read_reg(offset)
        };
        data.fill(0);
        for (b, v) in data.iter_mut().zip(value.to_le_bytes()) {
            *b = v;
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            MAGIC_VALUE => MAGIC,
            VERSION => 2,
            DEVICE_ID => self.device.device_type(),
            VENDOR_ID => VENDOR,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => u32::try_from(self.device.features() & 0xffff_ffff).unwrap_or(0),
                1 => u32::try_from(self.device.features() >> 32).unwrap_or(0),
                _ => 0,
            },
            QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            INTERRUPT_STATUS => self.interrupt_status,
            STATUS => self.status,
            CONFIG_GENERATION => self.config_generation,
            // No shared memory regions: length "all ones" means absent.
            SHM_LEN_LOW..=SHM_BASE_HIGH => u32::MAX,
            _ => 0,
        }
    }

    /// A guest store at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG {
            self.device.write_config(offset - CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            self.log
                .log(format_args!("write of {} bytes at {offset:#x}", data.len()));
            return;
        }
        let v = le32(data);
        let setup_allowed = self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0;
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = v,
            DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            DRIVER_FEATURES if self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0 => {
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            QUEUE_SEL => self.queue_sel = v,
            QUEUE_NUM | QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH
            | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH
                if setup_allowed =>
            {
                if let Some(q) = self.selected_queue() {
                    if !q.ready() {
                        set_queue_field(q, offset, v);
                    }
                }
            }
            QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            QUEUE_NOTIFY => {
                self.stats.notifies.fetch_add(1, Ordering::Relaxed);
                if let Ok(index) = usize::try_from(v) {
                    self.process(index);
                }
            }
            INTERRUPT_ACK => self.interrupt_status &= !v,
            STATUS => self.set_status(v),
            SHM_SEL => {}
            _ => {
                self.log.log(format_args!(
                    "write of {v:#x} at {offset:#x} ignored (status {:#x})",
                    self.status
                ));
            }
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let mut v = v;
        if v & VIRTIO_CONFIG_S_FEATURES_OK != 0 && self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            let offered = self.device.features();
            let acked = self.driver_features;
            let ok = acked & !offered == 0
                && acked & F_VERSION_1 != 0
                && (!self.require_access_platform || acked & F_ACCESS_PLATFORM != 0);
            if !ok {
                self.log.log(format_args!(
                    "device {}: features {acked:#x} refused (offered {offered:#x})",
                    self.device.device_type()
                ));
                v &= !VIRTIO_CONFIG_S_FEATURES_OK;
            }
        }
        // The driver may not clear bits but by a reset; keep NEEDS_RESET.
        self.status = v | (self.status & VIRTIO_CONFIG_S_NEEDS_RESET);
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt_status = 0;
    }

    fn live(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
            && self.status & (VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED) == 0
    }

    /// Processes queue `index` if the driver runs the device: after a
    /// notify, or when the device has something new (console input).
    pub fn process(&mut self, index: usize) {
        if !self.live() {
            return;
        }
        let Some(queue) = self.queues.get_mut(index) else {
            return;
        };
        if !queue.ready() {
            return;
        }
        let result = if queue.is_valid(&*self.mem) {
            self.device.process_queue(index, queue, &self.mem)
        } else {
            Err(DeviceError::BadRings(index))
        };
        match result {
            Ok(0) => {}
            Ok(_) => {
                let notify = queue.needs_notification(&*self.mem).unwrap_or(true);
                if notify {
                    self.interrupt(VIRTIO_MMIO_INT_VRING);
                }
            }
            Err(e) => self.fail(&e),
        }
    }

    /// Stops the device: `DEVICE_NEEDS_RESET` and a config interrupt.
    fn fail(&mut self, e: &DeviceError) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        self.log.log(format_args!(
            "device {}: {e}; needs reset",
            self.device.device_type()
        ));
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        self.config_generation = self.config_generation.wrapping_add(1);
        self.interrupt(VIRTIO_MMIO_INT_CONFIG);
    }

    fn interrupt(&mut self, why: u32) {
        self.interrupt_status |= why;
        self.stats.interrupts.fetch_add(1, Ordering::Relaxed);
        (self.irq)();
    }
}

fn set_queue_field(q: &mut Queue, offset: u64, v: u32) {
    match offset {
        QUEUE_NUM => q.set_size(u16::try_from(v).unwrap_or(0)),
        QUEUE_DESC_LOW => q.set_desc_table_address(Some(v), None),
        QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(v)),
        QUEUE_DRIVER_LOW => q.set_avail_ring_address(Some(v), None),
        QUEUE_DRIVER_HIGH => q.set_avail_ring_address(None, Some(v)),
        QUEUE_DEVICE_LOW => q.set_used_ring_address(Some(v), None),
        QUEUE_DEVICE_HIGH => q.set_used_ring_address(None, Some(v)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::block::{Block, DiskBackend};
    use super::super::testing::{page, Driver};
    use super::super::BASE_FEATURES;
    use super::*;

    struct NoDisk;
    impl DiskBackend for NoDisk {
        fn read_at(&self, buf: &mut [u8], _: u64) -> std::io::Result<()> {
            buf.fill(0);
            Ok(())
        }
        fn write_at(&mut self, _: &[u8], _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn driver(require_access_platform: bool) -> Driver {
        let blk = Block::new(Box::new(NoDisk), 1 << 20, false, "t");
        Driver::new(Box::new(blk), require_access_platform)
    }

    #[test]
    fn features_need_version_1_and_access_platform_when_protected() {
        let mut d = driver(true);
        assert_eq!(d.rd(0x008), 2, "block device");
        assert!(!d.negotiate(0), "legacy driver refused");
        assert!(
            !d.negotiate(F_VERSION_1),
            "protected: ACCESS_PLATFORM required"
        );
        assert!(
            !d.negotiate(BASE_FEATURES | 1 << 40),
            "a feature not offered"
        );
        assert!(d.negotiate(BASE_FEATURES));
        let mut n = driver(false);
        assert!(
            n.negotiate(F_VERSION_1),
            "a normal VM may skip ACCESS_PLATFORM"
        );
    }

    #[test]
    fn rings_in_private_memory_stop_the_device_not_the_vmm() {
        let mut d = driver(true);
        assert!(d.negotiate(BASE_FEATURES));
        d.setup_queues(1, false);
        d.add_chain(0, &[(page(8), 16, 0), (page(9), 1, 2)]);
        d.notify(0);
        assert_ne!(d.rd(0x070) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert_eq!(d.rd(0x060), VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(d.irq_count(), 1);
        assert_eq!(d.t.stats().errors.load(Ordering::Relaxed), 1);
        // Stopped: more notifies do nothing, until a reset.
        d.notify(0);
        assert_eq!(d.irq_count(), 1);
        d.wr(0x064, VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(d.rd(0x060), 0, "acked");
        d.wr(0x070, 0);
        assert_eq!(d.rd(0x070), 0, "reset clears NEEDS_RESET");
        d.wr(0x030, 0);
        assert_eq!(d.rd(0x044), 0, "queues reset");
    }

    #[test]
    fn queue_setup_is_frozen_once_running_and_odd_accesses_are_ignored() {
        let mut d = driver(false);
        assert!(d.negotiate(BASE_FEATURES));
        d.setup_queues(1, true);
        d.wr(0x030, 0);
        d.wr(0x038, 2);
        d.wr(0x080, 0x1234);
        d.wr(0x030, 7);
        assert_eq!(d.rd(0x034), 0, "no queue 7");
        d.wr(0x044, 1);
        d.notify(7);
        d.notify(u32::MAX);
        let mut b = [0xffu8; 8];
        d.t.read(0x000, &mut b);
        assert_eq!(b, [0; 8], "64-bit read of a 32-bit register");
        d.t.write(0x070, &[0]);
        d.t.read(0x0b0, &mut b[..4]);
        assert_eq!(b[..4], [0xff; 4], "no shared memory region");
        for off in (0..0x200).step_by(2) {
            for len in [1usize, 2, 4, 8] {
                let mut r = [0u8; 8];
                d.t.read(off, &mut r[..len]);
                if ![0x070, 0x050, 0x044].contains(&off) {
                    d.t.write(off, &[0xa5; 8][..len]);
                }
            }
        }
    }
}
