//! virtio-console with one port (no `MULTIPORT`): the transmit queue's
//! bytes go to a host writer (stdout or a file), and input the VMM gets
//! (its stdin, read by a thread) goes into the receive queue's buffers.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;
use virtio_queue::Queue;

use super::{
    add_used, pop_chain, read_guest, write_guest, DeviceError, VirtioDevice, BASE_FEATURES,
    BOUNCE_CHUNK,
};
use crate::guest_mem::GuestRam;
use vm_memory::GuestAddress;

/// Port 0's receive queue.
pub const RX_QUEUE: usize = 0;
/// Port 0's transmit queue.
pub const TX_QUEUE: usize = 1;
const QUEUE_SIZE: u16 = 64;
/// Input kept while the guest has no receive buffers; more is dropped.
pub const MAX_PENDING_INPUT: usize = 64 * 1024;

/// Input waiting for the guest: the reader thread pushes, the device
/// drains into receive buffers.
#[derive(Debug, Clone, Default)]
pub struct ConsoleInput(Arc<Mutex<VecDeque<u8>>>);

impl ConsoleInput {
    /// Queues `bytes`; returns how many fit (the rest is dropped).
    pub fn push(&self, bytes: &[u8]) -> usize {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = MAX_PENDING_INPUT.saturating_sub(q.len());
        let n = bytes.len().min(room);
        q.extend(&bytes[..n]);
        n
    }

    /// Whether no input is waiting.
    pub fn is_empty(&self) -> bool {
        self.0.lock().map_or(true, |q| q.is_empty())
    }
}

/// The console.
pub struct Console {
    out: Box<dyn Write + Send>,
    input: ConsoleInput,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").finish_non_exhaustive()
    }
}

impl Console {
    /// A console writing to `out` and reading from `input`.
    pub fn new(out: Box<dyn Write + Send>, input: ConsoleInput) -> Self {
        Self { out, input }
    }

    fn transmit(&mut self, queue: &mut Queue, mem: &GuestRam) -> Result<u32, DeviceError> {
        let mut used = 0;
        while let Some((head, descs)) = pop_chain(queue, mem) {
            for d in descs.iter().filter(|d| !d.is_write_only()) {
                let len = d.len() as usize;
                let mut done = 0;
                while done < len {
                    let mut buf = vec![0u8; (len - done).min(BOUNCE_CHUNK)];
                    let at = d.addr().0.saturating_add(done as u64);
                    read_guest(mem, GuestAddress(at), &mut buf)?;
                    // The host's console failing must not stop the guest.
                    let _ = self.out.write_all(&buf);
                    done += buf.len();
                }
            }
            let _ = self.out.flush();
            add_used(queue, TX_QUEUE, mem, head, 0)?;
            used += 1;
        }
        Ok(used)
    }

    fn receive(&mut self, queue: &mut Queue, mem: &GuestRam) -> Result<u32, DeviceError> {
        let mut used = 0;
        while !self.input.is_empty() {
            let Some((head, descs)) = pop_chain(queue, mem) else {
                break;
            };
            let mut written = 0u32;
            let mut pending = self.input.0.lock().unwrap_or_else(|e| e.into_inner());
            for d in descs.iter().filter(|d| d.is_write_only()) {
                let n = (d.len() as usize).min(pending.len());
                if n == 0 {
                    break;
                }
                let bytes: Vec<u8> = pending.iter().take(n).copied().collect();
                write_guest(mem, d.addr(), &bytes)?;
                pending.drain(..n);
                written = written.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
            }
            drop(pending);
            add_used(queue, RX_QUEUE, mem, head, written)?;
            used += 1;
        }
        Ok(used)
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn features(&self) -> u64 {
        BASE_FEATURES
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    /// `struct virtio_console_config` (cols, rows, max_nr_ports,
    /// emerg_wr): none of its features are offered, so all zero.
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestRam,
    ) -> Result<u32, DeviceError> {
        match index {
            RX_QUEUE => self.receive(queue, mem),
            TX_QUEUE => self.transmit(queue, mem),
            _ => Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::super::testing::{page, Driver, WRITE};
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn setup() -> (Driver, Sink, ConsoleInput) {
        let sink = Sink::default();
        let input = ConsoleInput::default();
        let console = Console::new(Box::new(sink.clone()), input.clone());
        let mut d = Driver::new(Box::new(console), true);
        assert_eq!(d.rd(0x008), 3, "console");
        assert!(d.negotiate(BASE_FEATURES));
        d.setup_queues(2, true);
        for p in 8..10 {
            d.ram.shared().share(page(p));
        }
        (d, sink, input)
    }

    #[test]
    fn transmitted_bytes_reach_the_host_writer() {
        let (mut d, sink, _) = setup();
        d.ram
            .backend()
            .write_slice(b"hello, ", GuestAddress(page(8)))
            .unwrap();
        d.ram
            .backend()
            .write_slice(b"world\n", GuestAddress(page(9)))
            .unwrap();
        d.add_chain(TX_QUEUE, &[(page(8), 7, 0), (page(9), 6, 0)]);
        d.notify(1);
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"hello, world\n");
        assert_eq!(d.used(TX_QUEUE).len(), 1);
        assert_eq!(d.irq_count(), 1);
    }

    #[test]
    fn a_private_tx_buffer_is_not_read() {
        let (mut d, sink, _) = setup();
        d.ram
            .backend()
            .write_slice(b"secret", GuestAddress(page(12)))
            .unwrap();
        d.add_chain(TX_QUEUE, &[(page(12), 6, 0)]);
        d.notify(1);
        assert!(sink.0.lock().unwrap().is_empty());
        assert_ne!(d.rd(0x070) & 0x40, 0, "DEVICE_NEEDS_RESET");
    }

    #[test]
    fn input_fills_receive_buffers_as_they_come() {
        let (mut d, _, input) = setup();
        // Input before any buffer: kept.
        assert_eq!(input.push(b"ls -l\n"), 6);
        d.t.process(RX_QUEUE);
        assert!(d.used(RX_QUEUE).is_empty());
        // The driver posts two 4-byte buffers and notifies.
        d.add_chain(RX_QUEUE, &[(page(8), 4, WRITE)]);
        d.add_chain(RX_QUEUE, &[(page(9), 4, WRITE)]);
        d.notify(0);
        assert_eq!(
            d.used(RX_QUEUE).iter().map(|u| u.1).collect::<Vec<_>>(),
            [4, 2]
        );
        let mut got = [0u8; 4];
        d.ram
            .backend()
            .read_slice(&mut got, GuestAddress(page(8)))
            .unwrap();
        assert_eq!(&got, b"ls -");
        d.ram
            .backend()
            .read_slice(&mut got[..2], GuestAddress(page(9)))
            .unwrap();
        assert_eq!(&got[..2], b"l\n");
        assert_eq!(d.irq_count(), 1);
        // Flooding input is bounded.
        assert_eq!(
            input.push(&vec![b'x'; MAX_PENDING_INPUT + 10]),
            MAX_PENDING_INPUT
        );
    }
}
