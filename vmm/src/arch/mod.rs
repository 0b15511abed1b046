//! The guest machine: memory map and device tree.

pub mod fdt;
pub mod layout;
