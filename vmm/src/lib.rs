//! Cloister's VMM: creates a VM on `/dev/cloister` through the KVM ioctl ABI
//! (`kvm-ioctls`, `Kvm::new_with_path`), loads a guest kernel, generates the
//! guest's device tree, runs its vCPUs and emulates its devices.
//!
//! Layout (Firecracker's): `arch` holds the guest memory map and the DTB,
//! `devices` the emulated devices, `loader` the kernel loading, and
//! `vstate` (aarch64 hosts only) the VM and vCPUs. Everything but `vstate`
//! is plain Rust and unit-tested on the build machine.
#![warn(missing_docs)]

pub mod arch;
pub mod devices;
pub mod guest_mem;
pub mod loader;
pub mod memory;
pub mod term;
#[cfg(target_arch = "aarch64")]
pub mod vstate;
