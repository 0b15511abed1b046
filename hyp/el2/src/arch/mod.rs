//! The arch façade: everything the rest of the hyp needs from the CPU.
//! Only aarch64 exists; the module split keeps asm and system registers out
//! of the boot and trap logic.

mod aarch64;
pub use aarch64::*;
