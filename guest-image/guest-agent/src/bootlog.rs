//! `boot` facts read from the kernel log, by the messages Linux 6.12 prints:
//!
//! * `drivers/firmware/smccc/kvm_guest.c`: `smccc: KVM: hypervisor services
//!   detected (0x<a3> 0x<a2> 0x<a1> 0x<a0>)` when a hypervisor answered the
//!   KVM vendor UID over HVC; the words are the KVM_FEATURES bitmap.
//!   `drivers/virt/coco/pkvm-guest` prints nothing: it registers its
//!   memory-encryption hooks when HYP_MEMINFO, MEM_SHARE and MEM_UNSHARE are
//!   in that bitmap, and its ioremap hook when MMIO_GUARD is.
//! * `kernel/dma/swiotlb.c` (`rmem_swiotlb_setup`): `Reserved memory:
//!   created restricted DMA pool at <base>, size <n> MiB`.
//! * `drivers/of/of_reserved_mem.c`: `<driver> <device>: assigned reserved
//!   memory node <node>` for each device given a pool.

/// Function numbers in the KVM_FEATURES bitmap (`include/linux/arm-smccc.h`).
pub mod kvm_func {
    pub const HYP_MEMINFO: u32 = 2;
    pub const MEM_SHARE: u32 = 3;
    pub const MEM_UNSHARE: u32 = 4;
    pub const MMIO_GUARD: u32 = 7;
}

const SERVICES: &str = "smccc: KVM: hypervisor services detected (";
const POOL: &str = "Reserved memory: created restricted DMA pool at ";
const ASSIGNED: &str = ": assigned reserved memory node ";

/// The KVM vendor hypervisor services the guest found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HypServices {
    /// The bitmap words as printed: a3, a2, a1, a0.
    pub words: [u32; 4],
}

impl HypServices {
    /// Whether function `func` (< 128) is offered.
    pub fn has(self, func: u32) -> bool {
        let Some(word) = usize::try_from(func / 32).ok().filter(|&w| w < 4) else {
            return false;
        };
        // a0 (printed last) holds functions 0..=31.
        (self.words[3 - word] >> (func % 32)) & 1 == 1
    }

    /// Whether the pKVM guest driver enables its memory-sharing hooks.
    pub fn pkvm_guest(self) -> bool {
        [
            kvm_func::HYP_MEMINFO,
            kvm_func::MEM_SHARE,
            kvm_func::MEM_UNSHARE,
        ]
        .into_iter()
        .all(|f| self.has(f))
    }

    /// As the `kvm_hyp_services` fact prints them.
    pub fn to_fact(self) -> String {
        self.words
            .iter()
            .map(|w| format!("{w:#010x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The services line, if the log has one.
pub fn hyp_services(log: &str) -> Option<HypServices> {
    log.lines().find_map(|line| {
        let rest = &line[line.find(SERVICES)? + SERVICES.len()..];
        let inner = rest.split(')').next()?;
        let mut words = [0u32; 4];
        let mut parts = inner.split_whitespace();
        for w in &mut words {
            let text = parts.next()?;
            *w = u32::from_str_radix(text.trim_start_matches("0x"), 16).ok()?;
        }
        Some(HypServices { words })
    })
}

/// `<base> <size> MiB` of the restricted DMA pool, if one was created.
pub fn restricted_pool(log: &str) -> Option<String> {
    log.lines().find_map(|line| {
        let rest = &line[line.find(POOL)? + POOL.len()..];
        let (base, size) = rest.split_once(", size ")?;
        Some(format!("{} {}", base.trim(), size.trim()))
    })
}

/// KiB of the DMA atomic pools `kernel/dma/pool.c` preallocated ("DMA:
/// preallocated 128 KiB GFP_KERNEL pool for atomic allocations"), summed:
/// the kernel makes them decrypted, which a pKVM guest does by sharing them.
pub fn atomic_pools_kib(log: &str) -> u64 {
    log.lines()
        .filter_map(|line| {
            let rest = &line[line.find("DMA: preallocated ")? + "DMA: preallocated ".len()..];
            let (kib, tail) = rest.split_once(" KiB ")?;
            tail.contains("pool for atomic allocations")
                .then(|| kib.trim().parse::<u64>().ok())
                .flatten()
        })
        .sum()
}

/// The devices a reserved-memory node was assigned to, in log order.
pub fn pool_devices(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|line| {
            let before = &line[..line.find(ASSIGNED)?];
            before.split_whitespace().last().map(str::to_owned)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_pools_are_summed_and_failures_ignored() {
        let log = "[    0.18] DMA: preallocated 128 KiB GFP_KERNEL pool for atomic allocations\n\
                   [    0.19] DMA: preallocated 256 KiB GFP_KERNEL|GFP_DMA32 pool for atomic allocations\n\
                   [    0.20] DMA: failed to allocate 128 KiB GFP_KERNEL pool for atomic allocation\n";
        assert_eq!(atomic_pools_kib(log), 384);
        assert_eq!(atomic_pools_kib("nothing"), 0);
    }

    const PKVM_LOG: &str = "\
<6>[    0.000000] Booting Linux on physical CPU 0x0000000000 [0x000f0510]
<6>[    0.000000] Reserved memory: created restricted DMA pool at 0x000000008f000000, size 16 MiB
<6>[    0.000000] OF: reserved mem: initialized node restricted-dma@8f000000, compatible id restricted-dma-pool
<6>[    0.000000] smccc: KVM: hypervisor services detected (0x00000000 0x00000000 0x00000000 0x000000bd)
<6>[    0.412000] virtio-mmio a000000.virtio_mmio: assigned reserved memory node restricted-dma@8f000000
<6>[    0.413000] virtio-mmio a000200.virtio_mmio: assigned reserved memory node restricted-dma@8f000000
";

    #[test]
    fn a_pkvm_guest_log_shows_services_pool_and_devices() {
        let services = hyp_services(PKVM_LOG).unwrap();
        assert_eq!(services.words, [0, 0, 0, 0xbd]);
        // 0xbd: FEATURES, MEMINFO, SHARE, UNSHARE, RESV_5, MMIO_GUARD.
        assert!(services.pkvm_guest());
        assert!(services.has(kvm_func::MMIO_GUARD));
        assert!(!services.has(1) && !services.has(100) && !services.has(200));
        assert_eq!(
            services.to_fact(),
            "0x00000000 0x00000000 0x00000000 0x000000bd"
        );
        assert_eq!(
            restricted_pool(PKVM_LOG).as_deref(),
            Some("0x000000008f000000 16 MiB")
        );
        assert_eq!(
            pool_devices(PKVM_LOG),
            ["a000000.virtio_mmio", "a000200.virtio_mmio"]
        );
    }

    #[test]
    fn a_plain_qemu_log_has_none_of_them() {
        let log = "<6>[    0.000000] psci: probing for conduit method from DT.\n\
                   <6>[    0.1] virtio_blk virtio1: [vda] 131072 512-byte logical blocks\n";
        assert_eq!(hyp_services(log), None);
        assert_eq!(restricted_pool(log), None);
        assert!(pool_devices(log).is_empty());
        // KVM without pKVM (only PTP): not a pKVM guest.
        let kvm = "smccc: KVM: hypervisor services detected (0x00000000 0x00000000 0x00000000 0x00000003)";
        let services = hyp_services(kvm).unwrap();
        assert!(!services.pkvm_guest() && !services.has(kvm_func::MMIO_GUARD));
    }
}
