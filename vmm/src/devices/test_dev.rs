//! The test device: how a test guest tells the host side of a test where
//! it is ("my secret is in the page at this IPA", "I shared it"), and waits
//! for the host to look before it goes on.
//!
//! One page of MMIO at [`crate::arch::layout::TEST_DEV_BASE`], not in the
//! DTB (only Cloister's test guests use it). 64-bit registers:
//!
//! | offset | name | access |
//! |--------|------|--------|
//! | `0x00` | `EVENT` | write: an [`event`] code; the host's handler runs with `VALUE` before the guest's store completes |
//! | `0x08` | `VALUE` | write: the event's argument (an IPA) |
//! | `0x10` | `REPLY` | read: what the handler answered for the last event |
//!
//! A protected guest must MMIO_GUARD the page first; the access then exits
//! to the VMM like any MMIO, so the vCPU waits while the handler runs.

/// `EVENT`'s offset.
pub const EVENT: u64 = 0x00;
/// `VALUE`'s offset.
pub const VALUE: u64 = 0x08;
/// `REPLY`'s offset.
pub const REPLY: u64 = 0x10;

/// Event codes.
pub mod event {
    /// The guest wrote its secret into the private page at `VALUE` (IPA).
    pub const SECRET_READY: u64 = 1;
    /// The guest shared the page at `VALUE` with the host (MEM_SHARE).
    pub const SHARED: u64 = 2;
    /// The guest unshared the page at `VALUE` (MEM_UNSHARE).
    pub const UNSHARED: u64 = 3;
    /// The guest will now spin until it is killed (`VALUE` = the secret's
    /// IPA): for teardown-under-SIGKILL tests.
    pub const HOLDING: u64 = 4;
    /// The guest read the secret page again (`VALUE` = its IPA).
    pub const TOUCHED: u64 = 5;
    /// Bench: the guest runs (`VALUE` = its counter frequency).
    pub const BENCH_READY: u64 = 6;
    /// Bench: counter ticks for 64 share + unshare rounds.
    pub const BENCH_SHARE_TICKS: u64 = 7;
    /// Bench: counter ticks to first-touch the pages of `BENCH_TOUCH_PAGES`.
    pub const BENCH_TOUCH_TICKS: u64 = 8;
    /// Bench: pages first-touched.
    pub const BENCH_TOUCH_PAGES: u64 = 9;

    /// A name for logs.
    pub fn name(code: u64) -> &'static str {
        match code {
            SECRET_READY => "secret-ready",
            SHARED => "shared",
            UNSHARED => "unshared",
            HOLDING => "holding",
            TOUCHED => "touched",
            BENCH_READY => "bench-ready",
            BENCH_SHARE_TICKS => "bench-share-ticks",
            BENCH_TOUCH_TICKS => "bench-touch-ticks",
            BENCH_TOUCH_PAGES => "bench-touch-pages",
            _ => "unknown",
        }
    }
}

/// What the host does with an event: gets `(event, value)`, returns the
/// reply the guest reads back.
pub type Handler = dyn Fn(u64, u64) -> u64 + Send + Sync;

/// The device's state.
pub struct TestDevice {
    value: u64,
    reply: u64,
    handler: Box<Handler>,
}

impl std::fmt::Debug for TestDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDevice")
            .field("value", &self.value)
            .field("reply", &self.reply)
            .finish_non_exhaustive()
    }
}

fn le_u64(data: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = data.len().min(8);
    bytes[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(bytes)
}

impl TestDevice {
    /// A device that calls `handler` for each event.
    pub fn new(handler: Box<Handler>) -> Self {
        Self {
            value: 0,
            reply: 0,
            handler,
        }
    }

    /// A guest load at `offset`.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let v = if offset == REPLY { self.reply } else { 0 };
        let bytes = v.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    /// A guest store at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            VALUE => self.value = le_u64(data),
            EVENT => self.reply = (self.handler)(le_u64(data), self.value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn events_reach_the_handler_with_their_value() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let mut dev = TestDevice::new(Box::new(move |e, v| {
            log.lock().unwrap().push((e, v));
            e * 10
        }));
        dev.write(VALUE, &0x8010_0000u64.to_le_bytes());
        dev.write(EVENT, &event::SECRET_READY.to_le_bytes());
        dev.write(0x18, &[1]);
        let mut reply = [0u8; 8];
        dev.read(REPLY, &mut reply);
        assert_eq!(u64::from_le_bytes(reply), 10);
        let mut other = [0xffu8; 4];
        dev.read(EVENT, &mut other);
        assert_eq!(other, [0; 4]);
        assert_eq!(*seen.lock().unwrap(), [(event::SECRET_READY, 0x8010_0000)]);
        assert_eq!(event::name(event::HOLDING), "holding");
    }
}
