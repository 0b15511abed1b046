//! Emulated devices.

pub mod pl011;
