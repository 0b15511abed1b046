//! A minimal virtio driver for tests: drives an [`MmioTransport`] through
//! its registers, as Linux's virtio_mmio does, and lays out split queues
//! in guest RAM through the unrestricted mapping (the guest's side).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::mmio::{IrqTrigger, MmioTransport};
use super::{VirtioDevice, BASE_FEATURES};
use crate::guest_mem::{GuestRam, SharedPages, PAGE_SIZE};

/// Guest RAM base in tests.
pub const BASE: u64 = 0x8000_0000;
/// Pages of guest RAM in tests.
pub const PAGES: u64 = 64;
/// Each queue's size in tests.
pub const QSIZE: u16 = 16;
/// `VRING_DESC_F_NEXT`.
const NEXT: u16 = 1;
/// `VRING_DESC_F_WRITE`.
pub const WRITE: u16 = 2;

/// Guest RAM with nothing shared.
pub fn ram() -> Arc<GuestRam> {
    let size = usize::try_from(PAGES * PAGE_SIZE).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(BASE), size)]).unwrap();
    Arc::new(GuestRam::new(
        mem,
        SharedPages::none(BASE, PAGES * PAGE_SIZE),
    ))
}

/// The guest address of page `n`.
pub fn page(n: u64) -> u64 {
    BASE + n * PAGE_SIZE
}

/// One queue as the driver set it up: desc table, avail and used rings in
/// one page.
#[derive(Debug, Clone, Copy)]
pub struct DriverQueue {
    base: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl DriverQueue {
    fn desc(&self) -> u64 {
        self.base
    }
    fn avail(&self) -> u64 {
        self.base + 16 * u64::from(QSIZE)
    }
    fn used(&self) -> u64 {
        self.base + 0x800
    }
}

/// The driver.
pub struct Driver {
    pub t: MmioTransport,
    pub ram: Arc<GuestRam>,
    pub irqs: Arc<AtomicU32>,
    pub queues: Vec<DriverQueue>,
}

impl Driver {
    /// `device` behind a transport on fresh RAM; nothing negotiated yet.
    pub fn new(device: Box<dyn VirtioDevice>, require_access_platform: bool) -> Self {
        let ram = ram();
        let irqs = Arc::new(AtomicU32::new(0));
        let count = Arc::clone(&irqs);
        let irq: IrqTrigger = Box::new(move || {
            count.fetch_add(1, Ordering::SeqCst);
        });
        let t = MmioTransport::new(device, Arc::clone(&ram), irq, require_access_platform);
        Self {
            t,
            ram,
            irqs,
            queues: Vec::new(),
        }
    }

    pub fn rd(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn wr(&mut self, off: u64, v: u32) {
        self.t.write(off, &v.to_le_bytes());
    }

    /// Feature negotiation with `features` acked; returns whether the
    /// device kept FEATURES_OK.
    pub fn negotiate(&mut self, features: u64) -> bool {
        assert_eq!(self.rd(0x000), 0x7472_6976, "magic");
        assert_eq!(self.rd(0x004), 2, "version");
        self.wr(0x070, 0);
        self.wr(0x070, 1 | 2);
        self.wr(0x014, 1);
        let high = self.rd(0x010);
        self.wr(0x014, 0);
        let low = self.rd(0x010);
        let offered = (u64::from(high) << 32) | u64::from(low);
        assert_eq!(
            offered & BASE_FEATURES,
            BASE_FEATURES,
            "VERSION_1 and ACCESS_PLATFORM"
        );
        self.wr(0x024, 0);
        self.wr(0x020, u32::try_from(features & 0xffff_ffff).unwrap());
        self.wr(0x024, 1);
        self.wr(0x020, u32::try_from(features >> 32).unwrap());
        self.wr(0x070, 1 | 2 | 8);
        self.rd(0x070) & 8 != 0
    }

    /// Sets up `n` queues, queue `i` in page `1 + i` (shared first if
    /// `share`), then DRIVER_OK.
    pub fn setup_queues(&mut self, n: u32, share: bool) {
        for i in 0..n {
            let base = page(1 + u64::from(i));
            if share {
                self.ram.shared().share(base);
            }
            self.wr(0x030, i);
            assert!(self.rd(0x034) >= u32::from(QSIZE), "QueueNumMax");
            self.wr(0x038, u32::from(QSIZE));
            let q = DriverQueue {
                base,
                next_desc: 0,
                avail_idx: 0,
                used_seen: 0,
            };
            for (lo, addr) in [(0x080, q.desc()), (0x090, q.avail()), (0x0a0, q.used())] {
                self.wr(lo, u32::try_from(addr & 0xffff_ffff).unwrap());
                self.wr(lo + 4, u32::try_from(addr >> 32).unwrap());
            }
            self.wr(0x044, 1);
            assert_eq!(self.rd(0x044), 1);
            self.queues.push(q);
        }
        let s = self.rd(0x070);
        self.wr(0x070, s | 4);
    }

    /// Puts a chain of `(addr, len, flags)` on queue `qi` (no notify).
    pub fn add_chain(&mut self, qi: usize, descs: &[(u64, u32, u16)]) -> u16 {
        let mem = self.ram.backend();
        let q = &mut self.queues[qi];
        let head = q.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = q.next_desc;
            let last = i + 1 == descs.len();
            let next = if last { 0 } else { (idx + 1) % QSIZE };
            let flags = if last { flags } else { flags | NEXT };
            let at = GuestAddress(q.desc() + 16 * u64::from(idx));
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..].copy_from_slice(&next.to_le_bytes());
            mem.write_slice(&raw, at).unwrap();
            q.next_desc = (idx + 1) % QSIZE;
        }
        let slot = q.avail() + 4 + 2 * u64::from(q.avail_idx % QSIZE);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        q.avail_idx = q.avail_idx.wrapping_add(1);
        mem.write_obj(q.avail_idx, GuestAddress(q.avail() + 2))
            .unwrap();
        head
    }

    /// Writes the queue index to QueueNotify.
    pub fn notify(&mut self, qi: u32) {
        self.wr(0x050, qi);
    }

    /// New used-ring entries `(id, len)` of queue `qi`.
    pub fn used(&mut self, qi: usize) -> Vec<(u32, u32)> {
        let mem = self.ram.backend();
        let q = &mut self.queues[qi];
        let idx: u16 = mem.read_obj(GuestAddress(q.used() + 2)).unwrap();
        let mut out = Vec::new();
        while q.used_seen != idx {
            let at = q.used() + 4 + 8 * u64::from(q.used_seen % QSIZE);
            let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id, len));
            q.used_seen = q.used_seen.wrapping_add(1);
        }
        out
    }

    /// The interrupts raised so far.
    pub fn irq_count(&self) -> u32 {
        self.irqs.load(Ordering::SeqCst)
    }
}
