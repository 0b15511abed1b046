//! The guest's physical memory map (a subset of QEMU `virt`'s, so standard
//! arm64 test kernels find their console where they expect it).

/// Guest RAM starts here (as on QEMU virt, crosvm and Firecracker: 2 GiB).
pub const RAM_BASE: u64 = 0x8000_0000;
/// The emulated PL011 (the DTB's `stdout-path`).
pub const UART_BASE: u64 = 0x0900_0000;
/// Size of the PL011's register window.
pub const UART_SIZE: u64 = 0x1000;
/// Cloister's test device ([`crate::devices::test_dev`]): not in the DTB.
pub const TEST_DEV_BASE: u64 = 0x0b00_0000;
/// Size of the test device's window.
pub const TEST_DEV_SIZE: u64 = 0x1000;
/// The DTB goes at the top of RAM in a window of this size (the arm64 boot
/// protocol wants it 8-byte aligned and within the first 512 GiB).
pub const FDT_MAX_SIZE: u64 = 0x20_0000;
/// Smallest guest RAM the VMM accepts (MiB).
pub const MIN_MEM_MIB: u64 = 16;
/// Largest guest RAM the VMM accepts (MiB).
pub const MAX_MEM_MIB: u64 = 64 * 1024;

/// Where the DTB is placed in a guest with `mem_size` bytes of RAM.
pub fn fdt_addr(mem_size: u64) -> u64 {
    RAM_BASE + mem_size - FDT_MAX_SIZE
}
