//! virtio-blk on a host file: `IN`, `OUT`, `FLUSH`, `GET_ID`, 512-byte
//! sectors, capacity from the file's size. Data moves with `pread` /
//! `pwrite` through a bounce buffer (never `O_DIRECT` into guest memory:
//! guest_memfd mappings refuse GUP). A request whose buffers are not in
//! shared memory, or out of range, completes with `VIRTIO_BLK_S_IOERR`;
//! one without a usable header or status byte stops the device.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::Queue;
use vm_memory::GuestAddress;

use super::{
    add_used, pop_chain, read_guest, write_guest, DeviceError, VirtioDevice, BASE_FEATURES,
    BOUNCE_CHUNK,
};
use crate::guest_mem::GuestRam;

/// Sector size.
pub const SECTOR_SIZE: u64 = 512;
/// The request queue's size.
const QUEUE_SIZE: u16 = 256;
/// Data segments per request (`seg_max`): with the header and status
/// descriptors, two requests fit in the queue (no indirect descriptors).
const SEG_MAX: u32 = 126;
/// `seg_max`'s offset in `struct virtio_blk_config`.
const CONFIG_SEG_MAX: usize = 12;
const _: () = assert!(SEG_MAX + 2 <= QUEUE_SIZE as u32, "a request fits the queue");
/// `struct virtio_blk_outhdr`: type, reserved, sector.
const HEADER_LEN: usize = 16;

/// What the device stores to (a host file, or memory in tests).
pub trait DiskBackend: Send {
    /// Reads exactly `buf.len()` bytes at `offset`.
    ///
    /// # Errors
    /// The host's I/O error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    ///
    /// # Errors
    /// The host's I/O error.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes written data durable.
    ///
    /// # Errors
    /// The host's I/O error.
    fn flush(&mut self) -> io::Result<()>;
}

impl DiskBackend for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_all_at(buf, offset)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

/// The disk.
pub struct Block {
    disk: Box<dyn DiskBackend>,
    /// Size in bytes (a whole number of sectors).
    size: u64,
    read_only: bool,
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("size", &self.size)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

/// Why a request failed (reported to the guest as a status).
enum Failure {
    IoErr,
    Unsupported,
}

impl Block {
    /// A disk of `size` bytes (rounded down to whole sectors) on `disk`,
    /// identified to the guest as `id` (truncated to 20 bytes).
    pub fn new(disk: Box<dyn DiskBackend>, size: u64, read_only: bool, id: &str) -> Self {
        let mut serial = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        for (d, s) in serial.iter_mut().zip(id.bytes()) {
            *d = s;
        }
        Self {
            disk,
            size: size / SECTOR_SIZE * SECTOR_SIZE,
            read_only,
            id: serial,
        }
    }

    /// Capacity in sectors.
    pub fn capacity(&self) -> u64 {
        self.size / SECTOR_SIZE
    }

    /// Runs one request: `descs` = header, data buffers, status byte.
    /// Returns the bytes written into the guest's buffers (status included).
    fn request(&mut self, mem: &GuestRam, descs: &[Descriptor]) -> Result<u32, String> {
        let (Some(header), Some(status)) = (descs.first(), descs.last()) else {
            return Err("empty chain".into());
        };
        if descs.len() < 2 || header.is_write_only() || (header.len() as usize) < HEADER_LEN {
            return Err("no readable 16-byte header".into());
        }
        if !status.is_write_only() || status.len() < 1 {
            return Err("no writable status byte".into());
        }
        let mut hdr = [0u8; HEADER_LEN];
        read_guest(mem, header.addr(), &mut hdr).map_err(|e| e.to_string())?;
        let kind = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let sector = u64::from_le_bytes([
            hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15],
        ]);
        let data = &descs[1..descs.len() - 1];
        let (status_byte, written) = match self.execute(mem, kind, sector, data) {
            Ok(n) => (VIRTIO_BLK_S_OK, n),
            Err(Failure::IoErr) => (VIRTIO_BLK_S_IOERR, 0),
            Err(Failure::Unsupported) => (VIRTIO_BLK_S_UNSUPP, 0),
        };
        let byte = u8::try_from(status_byte).unwrap_or(u8::MAX);
        write_guest(mem, status.addr(), &[byte]).map_err(|e| e.to_string())?;
        Ok(written.saturating_add(1))
    }

    fn execute(
        &mut self,
        mem: &GuestRam,
        kind: u32,
        sector: u64,
        data: &[Descriptor],
    ) -> Result<u32, Failure> {
        match kind {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
                let write = kind == VIRTIO_BLK_T_OUT;
                if write && self.read_only {
                    return Err(Failure::IoErr);
                }
                let total: u64 = data.iter().map(|d| u64::from(d.len())).sum();
                let start = sector.checked_mul(SECTOR_SIZE).ok_or(Failure::IoErr)?;
                let end = start.checked_add(total).ok_or(Failure::IoErr)?;
                if end > self.size || !total.is_multiple_of(SECTOR_SIZE) {
                    return Err(Failure::IoErr);
                }
                if data.iter().any(|d| d.is_write_only() == write) {
                    return Err(Failure::IoErr);
                }
                let mut offset = start;
                for d in data {
                    self.transfer(mem, d, offset, write)?;
                    offset += u64::from(d.len());
                }
                if write {
                    Ok(0)
                } else {
                    u32::try_from(total).map_err(|_| Failure::IoErr)
                }
            }
            VIRTIO_BLK_T_FLUSH => self.disk.flush().map(|()| 0).map_err(|_| Failure::IoErr),
            VIRTIO_BLK_T_GET_ID => {
                let d = data.first().filter(|d| d.is_write_only());
                let d = d.ok_or(Failure::IoErr)?;
                let n = self.id.len().min(d.len() as usize);
                write_guest(mem, d.addr(), &self.id[..n]).map_err(|_| Failure::IoErr)?;
                u32::try_from(n).map_err(|_| Failure::IoErr)
            }
            _ => Err(Failure::Unsupported),
        }
    }

    /// Moves one descriptor's bytes between the guest and the disk, in
    /// bounce-buffer-sized pieces.
    fn transfer(
        &mut self,
        mem: &GuestRam,
        d: &Descriptor,
        offset: u64,
        write: bool,
    ) -> Result<(), Failure> {
        let len = d.len() as usize;
        let mut bounce = vec![0u8; len.min(BOUNCE_CHUNK)];
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(BOUNCE_CHUNK);
            let buf = &mut bounce[..n];
            let at = GuestAddress(d.addr().0.checked_add(done as u64).ok_or(Failure::IoErr)?);
            let disk_at = offset + done as u64;
            if write {
                read_guest(mem, at, buf).map_err(|_| Failure::IoErr)?;
                self.disk
                    .write_at(buf, disk_at)
                    .map_err(|_| Failure::IoErr)?;
            } else {
                self.disk
                    .read_at(buf, disk_at)
                    .map_err(|_| Failure::IoErr)?;
                write_guest(mem, at, buf).map_err(|_| Failure::IoErr)?;
            }
            done += n;
        }
        Ok(())
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn features(&self) -> u64 {
        let ro = if self.read_only {
            1 << VIRTIO_BLK_F_RO
        } else {
            0
        };
        BASE_FEATURES | (1 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_BLK_F_SEG_MAX) | ro
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    /// `struct virtio_blk_config`: `capacity` (offset 0) and `seg_max`
    /// (12); the rest reads as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; CONFIG_SEG_MAX + 4];
        config[..8].copy_from_slice(&self.capacity().to_le_bytes());
        config[CONFIG_SEG_MAX..].copy_from_slice(&SEG_MAX.to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *b = at.and_then(|at| config.get(at)).copied().unwrap_or(0);
        }
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestRam,
    ) -> Result<u32, DeviceError> {
        let mut used = 0;
        while let Some((head, descs)) = pop_chain(queue, mem) {
            let len = self
                .request(mem, &descs)
                .map_err(|what| DeviceError::Chain {
                    queue: index,
                    head,
                    what,
                })?;
            add_used(queue, index, mem, head, len)?;
            used += 1;
        }
        Ok(used)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use vm_memory::Bytes;

    use super::super::testing::{page, Driver, WRITE};
    use super::*;

    /// A disk in memory, visible to the test after the device took it.
    #[derive(Clone, Default)]
    struct MemDisk {
        data: Arc<Mutex<Vec<u8>>>,
        flushes: Arc<Mutex<u32>>,
    }

    impl DiskBackend for MemDisk {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let data = self.data.lock().unwrap();
            let at = usize::try_from(offset).unwrap();
            buf.copy_from_slice(&data[at..at + buf.len()]);
            Ok(())
        }
        fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
            let mut data = self.data.lock().unwrap();
            let at = usize::try_from(offset).unwrap();
            data[at..at + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            *self.flushes.lock().unwrap() += 1;
            Ok(())
        }
    }

    const SECTORS: u64 = 64;
    // The status values, as the byte the guest reads (0, 1, 2).
    const S_OK: u8 = 0;
    const S_IOERR: u8 = 1;
    const S_UNSUPP: u8 = 2;

    #[test]
    fn status_bytes_are_the_specs() {
        assert_eq!(
            [VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP],
            [S_OK, S_IOERR, S_UNSUPP].map(u32::from)
        );
    }

    fn setup() -> (Driver, MemDisk) {
        let disk = MemDisk::default();
        disk.data
            .lock()
            .unwrap()
            .resize(usize::try_from(SECTORS * 512).unwrap() + 100, 0);
        let blk = Block::new(
            Box::new(disk.clone()),
            SECTORS * 512 + 100,
            false,
            "cloister-disk",
        );
        let mut d = Driver::new(Box::new(blk), true);
        assert!(d.negotiate(d_features()));
        d.setup_queues(1, true);
        // Buffers: header page 8, data pages 9-10, status page 11.
        for p in 8..12 {
            d.ram.shared().share(page(p));
        }
        (d, disk)
    }

    fn d_features() -> u64 {
        BASE_FEATURES | 1 << VIRTIO_BLK_F_FLUSH
    }

    fn header(d: &Driver, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        d.ram
            .backend()
            .write_slice(&h, GuestAddress(page(8)))
            .unwrap();
    }

    fn status(d: &Driver) -> u8 {
        d.ram.backend().read_obj(GuestAddress(page(11))).unwrap()
    }

    fn request(d: &mut Driver, kind: u32, sector: u64, data: &[(u64, u32, u16)]) -> (u32, u8) {
        header(d, kind, sector);
        d.ram
            .backend()
            .write_obj(0xffu8, GuestAddress(page(11)))
            .unwrap();
        let mut chain = vec![(page(8), 16, 0)];
        chain.extend_from_slice(data);
        chain.push((page(11), 1, WRITE));
        let head = d.add_chain(0, &chain);
        let irqs = d.irq_count();
        d.notify(0);
        let used = d.used(0);
        assert_eq!(used.len(), 1, "one request, one used entry");
        assert_eq!(used[0].0, u32::from(head));
        assert_eq!(d.irq_count(), irqs + 1, "used buffer, interrupt");
        (used[0].1, status(d))
    }

    #[test]
    fn capacity_is_whole_sectors_in_config_space() {
        let (mut d, _) = setup();
        let lo = d.rd(0x100);
        let hi = d.rd(0x104);
        assert_eq!(u64::from(hi) << 32 | u64::from(lo), SECTORS);
        assert_eq!(d.rd(0x10c), SEG_MAX, "seg_max");
        let mut b = [0xffu8; 2];
        d.t.read(0x100 + 0x1000, &mut b);
        assert_eq!(b, [0, 0], "past the config");
    }

    #[test]
    fn write_read_flush_and_get_id_round_trip() {
        let (mut d, disk) = setup();
        let pattern: Vec<u8> = (0..1024u32)
            .map(|i| u8::try_from(i * 7 % 251).unwrap())
            .collect();
        d.ram
            .backend()
            .write_slice(&pattern, GuestAddress(page(9)))
            .unwrap();
        let (len, st) = request(&mut d, VIRTIO_BLK_T_OUT, 3, &[(page(9), 1024, 0)]);
        assert_eq!((len, st), (1, S_OK));
        assert_eq!(&disk.data.lock().unwrap()[3 * 512..5 * 512], &pattern[..]);

        // Read it back in two buffers.
        d.ram
            .backend()
            .write_slice(&[0u8; 1024], GuestAddress(page(9)))
            .unwrap();
        let bufs = [(page(9), 512, WRITE), (page(10), 512, WRITE)];
        let (len, st) = request(&mut d, VIRTIO_BLK_T_IN, 3, &bufs);
        assert_eq!((len, st), (1025, S_OK));
        let mut back = vec![0u8; 512];
        d.ram
            .backend()
            .read_slice(&mut back, GuestAddress(page(10)))
            .unwrap();
        assert_eq!(back, pattern[512..]);

        let (_, st) = request(&mut d, VIRTIO_BLK_T_FLUSH, 0, &[]);
        assert_eq!(st, S_OK);
        assert_eq!(*disk.flushes.lock().unwrap(), 1);

        let (len, st) = request(&mut d, VIRTIO_BLK_T_GET_ID, 0, &[(page(9), 20, WRITE)]);
        assert_eq!((len, st), (21, S_OK));
        let mut id = [0u8; 13];
        d.ram
            .backend()
            .read_slice(&mut id, GuestAddress(page(9)))
            .unwrap();
        assert_eq!(&id, b"cloister-disk");
    }

    #[test]
    fn bad_requests_fail_with_a_status() {
        let (mut d, _) = setup();
        let one = [(page(9), 512, WRITE)];
        let (_, st) = request(&mut d, VIRTIO_BLK_T_IN, SECTORS, &one);
        assert_eq!(st, S_IOERR, "past the end");
        let (_, st) = request(&mut d, VIRTIO_BLK_T_IN, u64::MAX / 256, &one);
        assert_eq!(st, S_IOERR, "sector overflow");
        let (_, st) = request(&mut d, VIRTIO_BLK_T_IN, 0, &[(page(9), 100, WRITE)]);
        assert_eq!(st, S_IOERR, "not whole sectors");
        let (_, st) = request(&mut d, VIRTIO_BLK_T_OUT, 0, &one);
        assert_eq!(st, S_IOERR, "OUT into a write-only buffer");
        let (_, st) = request(&mut d, 11, 0, &[]);
        assert_eq!(st, S_UNSUPP, "DISCARD not offered");
        assert_eq!(d.rd(0x070) & 0x40, 0, "the device still runs");
    }

    #[test]
    fn a_buffer_in_a_private_page_is_an_io_error_and_is_not_touched() {
        let (mut d, disk) = setup();
        d.ram.shared().unshare(page(10));
        d.ram
            .backend()
            .write_slice(b"private!", GuestAddress(page(10)))
            .unwrap();
        // OUT from a private page: nothing read, nothing written to disk.
        let (len, st) = request(&mut d, VIRTIO_BLK_T_OUT, 0, &[(page(10), 512, 0)]);
        assert_eq!((len, st), (1, S_IOERR));
        assert!(disk.data.lock().unwrap()[..512].iter().all(|&b| b == 0));
        // IN into a buffer that runs from a shared page into a private one.
        disk.data.lock().unwrap()[..1024].fill(0x5a);
        let bufs = [(page(9) + 3584, 1024, WRITE)];
        let (_, st) = request(&mut d, VIRTIO_BLK_T_IN, 0, &bufs);
        assert_eq!(st, S_IOERR);
        let mut p = [0u8; 8];
        d.ram
            .backend()
            .read_slice(&mut p, GuestAddress(page(10)))
            .unwrap();
        assert_eq!(&p, b"private!", "private page untouched");
    }

    #[test]
    fn a_header_in_private_memory_stops_the_device() {
        let (mut d, _) = setup();
        d.ram.shared().unshare(page(8));
        header(&d, VIRTIO_BLK_T_IN, 0);
        d.add_chain(0, &[(page(8), 16, 0), (page(11), 1, WRITE)]);
        d.notify(0);
        assert!(d.used(0).is_empty());
        assert_ne!(d.rd(0x070) & 0x40, 0, "DEVICE_NEEDS_RESET");
    }

    #[test]
    fn a_read_only_disk_says_so_and_refuses_writes() {
        let disk = MemDisk::default();
        disk.data.lock().unwrap().resize(4096, 0);
        let blk = Block::new(Box::new(disk), 4096, true, "ro");
        assert_ne!(blk.features() & (1 << VIRTIO_BLK_F_RO), 0);
        let mut d = Driver::new(Box::new(blk), true);
        assert!(d.negotiate(BASE_FEATURES | 1 << VIRTIO_BLK_F_RO));
        d.setup_queues(1, true);
        for p in 8..12 {
            d.ram.shared().share(page(p));
        }
        let (_, st) = request(&mut d, VIRTIO_BLK_T_OUT, 0, &[(page(9), 512, 0)]);
        assert_eq!(st, S_IOERR);
    }
}
