//! Portable core of the Cloister EL2 hypervisor.
//!
//! Everything here is plain Rust with no inline assembly and no heap, so it
//! builds for `aarch64-unknown-none` and unit-tests on the build machine. The
//! aarch64 glue (vectors, system registers, TLB maintenance, the hyp's linear
//! map) lives beside it, stays thin, and reaches this crate through the
//! [`hal`] traits.
//!
//! # Module map
//!
//! | module          | what                                                         |
//! |-----------------|--------------------------------------------------------------|
//! | [`addr`]        | `PhysAddr`, `Ipa`, `Pfn`, `PfnRange`: typed addresses          |
//! | [`hal`]         | `PageAllocator` + `TlbMaintenance`: all the core asks of the platform; `FakeHal` for tests |
//! | [`stage2`]      | arm64 stage-2 tables (4 KiB, 39-bit IPA, 3 levels), prepare/commit mapping, VTCR/VTTBR values |
//! | [`mem_protect`] | the page database and every ownership transition (the only code that changes who may touch a page) |
//! | [`abi`]         | host ↔ hyp ABI: function IDs, UID, version, return codes; the source of the C header |
//! | [`hypercall`]   | decode `x0..x7` into a `HostCall`, dispatch it to `mem_protect` and `vm` |
//! | [`vm`]          | the VM and vCPU table: handles, kinds, vCPU register layout, power states, teardown |
//! | [`guest_abi`]   | the guest hypercall ABI (pKVM's, for an unmodified Linux 6.12 guest), the MMIO rule |
//! | [`fdt`]         | the boot DTB: RAM, console, PSCI, CPUs, MMIO and reserved memory; the host's copy with the hyp's carve-outs |
//! | [`host_map`]    | what the host stage-2 maps at boot besides the managed RAM bank: other banks (host-only), device memory; the table-page count |
//! | [`uart`]        | the console UART: PL011 or 8250/16550 from the DTB, register layout, the polled transmit loop over a register-access trait |
//! | [`payload`]     | the payload table appended to the hyp image (host kernel, initramfs) |
//!
//! # Invariants
//!
//! - Every page-ownership change goes through one function in
//!   [`mem_protect`], which checks both sides before changing either; a
//!   failed call leaves the database and every table byte-for-byte
//!   unchanged.
//! - Nothing a host or guest passes in can make this crate panic: hostile
//!   values become error codes.
//! - Table pages are allocated before a change starts (prepare) and freed
//!   only when an address space is destroyed, so commits cannot fail.
//!
//! # Lock order
//!
//! The crate has no locks; `&mut` arguments stand for them. The arch glue
//! holds one lock per component and always takes them in this order, which is
//! pKVM's (`enum pkvm_component_id`: "corresponds to page-table locking
//! order") and the order of [`mem_protect::Owner`]'s variants:
//!
//! 1. **host** — [`mem_protect::MemProtect`]: the page database and the host
//!    stage-2 (the hyp's column of the database is covered by it for now);
//! 2. **hyp** — the hyp's own stage-1, once it has one;
//! 3. **guest** — each [`mem_protect::GuestMem`] (inside its [`vm::Vm`]), in
//!    ascending VM handle order if two are ever needed.
//!
//! The VM table ([`vm::VmTable`], pKVM's `vm_table_lock`) is only needed to
//! find a VM; see [`vm`] for how the glue holds it.
//!
//! Transition functions take their components in this order as arguments,
//! so a call site reads in lock order.
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

#[cfg(any(test, feature = "alloc"))]
extern crate alloc;

pub mod abi;
pub mod addr;
pub mod exits;
pub mod fdt;
pub mod guest_abi;
pub mod hal;
pub mod host_map;
pub mod hypercall;
pub mod mem_protect;
pub mod payload;
pub mod stage2;
pub mod uart;
pub mod vgic;
pub mod vm;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod test_utils;
