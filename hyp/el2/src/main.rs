//! Cloister's EL2 hypervisor image.
//!
//! Built for `aarch64-unknown-none` only; on any other target this is an
//! empty program so workspace-wide `cargo clippy`/`cargo test` on the build
//! machine keep working. The policy (page ownership, stage-2 tables, the
//! hypercall ABI, the payload table, the device tree edits) lives in
//! `cloister-hyp-core`, which is unit-tested on the build machine; this crate
//! is the thin aarch64 glue: entry code, vectors, system registers, the
//! console and the boot sequence.
#![cfg_attr(target_os = "none", no_std, no_main)]
// This image only exists for aarch64, where usize is 64 bits: u64 <-> usize
// casts of physical addresses cannot truncate.
#![allow(clippy::cast_possible_truncation)]

#[cfg(target_os = "none")]
#[macro_use]
mod console;
#[cfg(target_os = "none")]
mod arch;
#[cfg(target_os = "none")]
mod boot;
#[cfg(target_os = "none")]
mod guest;
#[cfg(target_os = "none")]
mod traps;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("cloister-hyp runs at EL2: build it with `cargo xtask build-image`");
}
