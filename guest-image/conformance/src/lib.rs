//! The portable part of Cloister's conformance guest: a bare-metal guest
//! that checks, from inside a VM, that the hypervisor answers the pKVM
//! guest ABI the way pKVM does (the answers a mainline Linux 6.12 guest
//! relies on), and reports TAP on its console.
//!
//! The binary (`src/main.rs`, aarch64 only) is the glue: entry code,
//! exception vectors, `HVC`, MMIO loads, the PL011. Everything that decides
//! something lives here and is unit-tested on the build machine:
//!
//! | module | what |
//! |--------|------|
//! | [`dtb`] | the few things read from the DTB: console, RAM, CPUs, bootargs |
//! | [`spec`] | the cases, in order, each with the value pKVM returns to a protected and to a normal VM, and the verdict on what was observed |
//! | [`tap`] | TAP lines |
//! | [`suite`] | the sequence: boot-time probing, every case against a [`suite::Platform`] |
//!
//! # Console output
//!
//! ```text
//! # cloister-conformance: protected          (or normal: what was detected)
//! # console 0x9000000 (/chosen/stdout-path)  (more diagnostics)
//! 1..N
//! ok 1 - vm kind matches expect
//! not ok 5 - kvm features bitmap # got 0x1 expected 0x9d in mask 0x9d
//! ok 27 - ... # SKIP needs a second vCPU in the DTB
//! # N passed, N failed, N skipped
//! # system off
//! ```
//!
//! After the plan's last case the guest calls PSCI `SYSTEM_OFF`, which must
//! not return: the VMM has to report a shutdown. It is not a TAP case (a
//! case that passes by never printing cannot be reported); if it returns,
//! the guest prints `Bail out! SYSTEM_OFF returned ...` and stops.
//!
//! # Running it
//!
//! The image is a static PIE flattened to a raw binary (`cargo xtask
//! build-image` writes `conformance.bin` and puts it in the host image at
//! `/lib/cloister/conformance.bin`); it runs wherever it is loaded, at EL1
//! with the MMU off, and takes the DTB address in `x0`:
//!
//! ```text
//! cloister-vmm --kernel /lib/cloister/conformance.bin --cpus 2 --protected --cmdline expect=protected
//! cloister-vmm --kernel /lib/cloister/conformance.bin --cpus 2 --cmdline expect=normal
//! qemu-system-aarch64 -M virt -cpu max -smp 2 -m 256 -nographic -kernel conformance.bin -append expect=normal
//! ```
//!
//! With one vCPU the second-CPU cases are skipped. Under plain QEMU (no
//! hypervisor) the SMCCC, UID and FEATURES cases fail: QEMU's firmware-less
//! PSCI answers them `NOT_SUPPORTED`. `probe=<hex>` in the bootargs moves
//! the page the MMIO cases load from (default [`spec::PROBE_IPA`]).
//!
//! # VM kind
//!
//! KVM `FEATURES` bit 3 (`MEM_SHARE`) set means a protected VM; anything
//! else (clear, or the call trapping) a normal one, which must then get a
//! normal VM's answers. `expect=protected` or `expect=normal` in
//! `/chosen/bootargs` (the VMM's `--cmdline`) makes case 1 fail when the
//! detection disagrees.
#![cfg_attr(not(test), no_std)]

pub mod dtb;
pub mod secret;
pub mod spec;
pub mod suite;
pub mod tap;
