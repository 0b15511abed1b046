//! Cloister's conformance guest: a bare-metal aarch64 image that checks the
//! hypervisor's pKVM guest ABI from inside a VM and prints TAP on its
//! console (see the library's docs for what it checks and prints).
//!
//! Built for `aarch64-unknown-none` only; on any other target this is an
//! empty program, so workspace-wide `cargo clippy` and `cargo test` on the
//! build machine keep working (the logic is in the library, tested there).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod arch;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "cloister-conformance is a guest image: build it with \
         `cargo build -p cloister-conformance --target aarch64-unknown-none --release`"
    );
}
