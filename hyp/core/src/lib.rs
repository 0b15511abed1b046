//! Portable core of the Cloister EL2 hypervisor (filled in by the hypervisor milestone).
#![cfg_attr(not(test), no_std)]
