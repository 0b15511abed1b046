//! virtio devices over virtio-mmio (version 2), on `virtio-queue`.
//!
//! Every device offers `VIRTIO_F_VERSION_1` and `VIRTIO_F_ACCESS_PLATFORM`:
//! with the latter the guest goes through its DMA API, so a protected
//! guest's buffers and rings are in its restricted DMA pool, which it
//! shares with the host. Devices reach guest memory only through
//! [`GuestRam`], which refuses anything not shared: a ring or buffer in
//! private memory is a device error (the request fails, or the device
//! asks for a reset), never a fault in the VMM.

pub mod block;
pub mod console;
pub mod mmio;
#[cfg(test)]
mod testing;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::guest_mem::GuestRam;

pub use mmio::MmioTransport;

/// `VIRTIO_F_VERSION_1`.
pub const F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// `VIRTIO_F_ACCESS_PLATFORM`.
pub const F_ACCESS_PLATFORM: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_ACCESS_PLATFORM;
/// The features every device offers.
pub const BASE_FEATURES: u64 = F_VERSION_1 | F_ACCESS_PLATFORM;

/// Largest copy the VMM makes at once between guest memory and a host
/// file or stream: a descriptor may claim up to 4 GiB.
pub const BOUNCE_CHUNK: usize = 64 * 1024;

/// Why a device stopped: the driver broke the protocol, or pointed the
/// device at memory it may not touch.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A queue's rings are not (all) in shared memory, or badly placed.
    #[error("queue {0}: rings outside shared guest memory or misaligned")]
    BadRings(usize),
    /// The ring could not be read or written.
    #[error("queue {queue}: {source}")]
    Queue {
        /// Which queue.
        queue: usize,
        /// The ring error.
        source: virtio_queue::Error,
    },
    /// A descriptor chain the device cannot use.
    #[error("queue {queue}, chain {head}: {what}")]
    Chain {
        /// Which queue.
        queue: usize,
        /// The chain's head index.
        head: u16,
        /// What is wrong.
        what: String,
    },
    /// A buffer in memory the device may not touch.
    #[error("guest memory {addr:#x}+{len:#x} is not shared with the host")]
    Memory {
        /// Guest-physical address.
        addr: u64,
        /// Length.
        len: u64,
    },
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID.
    fn device_type(&self) -> u32;
    /// The features offered ([`BASE_FEATURES`] and the device's own).
    fn features(&self) -> u64;
    /// Each queue's maximum size.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads device configuration space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device configuration space (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Takes what it can from queue `index` (the driver notified it, or
    /// the device has new input); returns how many chains it used.
    ///
    /// # Errors
    /// A [`DeviceError`]: the transport then stops the device
    /// (`DEVICE_NEEDS_RESET`).
    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestRam,
    ) -> Result<u32, DeviceError>;
    /// The driver reset the device.
    fn reset(&mut self) {}
}

/// Reads a readable buffer, checked against the shared pages first.
///
/// # Errors
/// [`DeviceError::Memory`] if any of it is not shared.
pub fn read_guest(mem: &GuestRam, addr: GuestAddress, buf: &mut [u8]) -> Result<(), DeviceError> {
    mem.read_slice(buf, addr).map_err(|_| DeviceError::Memory {
        addr: addr.0,
        len: buf.len() as u64,
    })
}

/// Writes into a writable buffer, checked against the shared pages first.
///
/// # Errors
/// [`DeviceError::Memory`] if any of it is not shared.
pub fn write_guest(mem: &GuestRam, addr: GuestAddress, buf: &[u8]) -> Result<(), DeviceError> {
    mem.write_slice(buf, addr).map_err(|_| DeviceError::Memory {
        addr: addr.0,
        len: buf.len() as u64,
    })
}

/// The next available chain of `queue`: its head and descriptors. Rings
/// were checked shared before processing; a descriptor table entry that
/// cannot be read ends the chain early.
pub fn pop_chain(queue: &mut Queue, mem: &GuestRam) -> Option<(u16, Vec<Descriptor>)> {
    let chain = queue.pop_descriptor_chain(mem)?;
    let head = chain.head_index();
    Some((head, chain.collect()))
}

/// Puts `head` in the used ring with `len` bytes written.
///
/// # Errors
/// [`DeviceError::Queue`] if the used ring cannot be written.
pub fn add_used(
    queue: &mut Queue,
    index: usize,
    mem: &GuestRam,
    head: u16,
    len: u32,
) -> Result<(), DeviceError> {
    queue
        .add_used(mem, head, len)
        .map_err(|source| DeviceError::Queue {
            queue: index,
            source,
        })
}
