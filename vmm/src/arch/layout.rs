//! The guest's physical memory map (a subset of QEMU `virt`'s, so standard
//! arm64 test kernels find their console where they expect it).

/// The GICv3 distributor (64 KiB).
pub const GICD_BASE: u64 = 0x0800_0000;
/// The GICv3 redistributors: 128 KiB (RD_base + SGI_base) per vCPU, up to
/// 8 vCPUs (ends at `0x081a_0000`, below the PL011).
pub const GICR_BASE: u64 = 0x080a_0000;
/// The first virtio-mmio window; device `n` is at `+ n * VIRTIO_MMIO_SIZE`.
pub const VIRTIO_MMIO_BASE: u64 = 0x0a00_0000;
const _: () = assert!(
    GICR_BASE + 8 * 0x2_0000 <= UART_BASE,
    "8 redistributors fit"
);

/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x200;
/// At most this many virtio-mmio devices (their windows end below the
/// test device).
pub const MAX_VIRTIO_DEVICES: u32 = 32;
/// Device `n`'s SPI is INTID `VIRTIO_FIRST_SPI + n` (edge-triggered).
pub const VIRTIO_FIRST_SPI: u32 = 32;
/// The default size of the restricted DMA pool (MiB).
pub const DEFAULT_DMA_POOL_MIB: u64 = 8;
/// The pool's alignment (a 2 MiB block).
const DMA_POOL_ALIGN: u64 = 0x20_0000;

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

/// Virtio-mmio device `n`'s window and INTID.
pub fn virtio_slot(n: u32) -> (u64, u32) {
    (
        VIRTIO_MMIO_BASE + u64::from(n) * VIRTIO_MMIO_SIZE,
        VIRTIO_FIRST_SPI + n,
    )
}

/// Where the restricted DMA pool (the only memory a protected guest shares
/// with its virtio devices) goes: just below the DTB, 2 MiB-aligned, so
/// the kernel and initramfs keep the bottom of RAM. `None` if it does not
/// fit above the first quarter of RAM.
pub fn dma_pool(mem_size: u64, pool_size: u64) -> Option<(u64, u64)> {
    let size = pool_size.div_ceil(0x1000) * 0x1000;
    let top = fdt_addr(mem_size);
    let base = top.checked_sub(size)? / DMA_POOL_ALIGN * DMA_POOL_ALIGN;
    (size > 0 && base >= RAM_BASE + mem_size / 4).then_some((base, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_sits_below_the_dtb_and_leaves_room_for_the_kernel() {
        let (base, size) = dma_pool(256 << 20, 8 << 20).unwrap();
        assert_eq!(size, 8 << 20);
        assert!(base + size <= fdt_addr(256 << 20));
        assert_eq!(base % DMA_POOL_ALIGN, 0);
        assert_eq!(base, RAM_BASE + (256 << 20) - (10 << 20));
        assert_eq!(
            dma_pool(16 << 20, 8 << 20),
            Some((RAM_BASE + (6 << 20), 8 << 20))
        );
        assert_eq!(dma_pool(16 << 20, 12 << 20), None, "too big for 16 MiB");
        assert_eq!(dma_pool(256 << 20, 0), None);
        assert_eq!(virtio_slot(1), (0x0a00_0200, 33));
        let (last, _) = virtio_slot(MAX_VIRTIO_DEVICES - 1);
        assert!(last + VIRTIO_MMIO_SIZE <= TEST_DEV_BASE);
    }
}
