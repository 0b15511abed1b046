//! End-to-end scenarios: each boots a fresh QEMU, headless, and is judged by
//! what the in-VM agent reports on its result port (never by sleeping and
//! grepping the console). QEMU is killed when a scenario ends, times out or
//! the user hits Ctrl-C.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cloister_agent::protocol::{Report, PROTOCOL_VERSION};

use crate::stack::PartitionTable;

/// Set by the Ctrl-C handler; every wait loop polls it.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// A fact the agent reports and the value it must have on this stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// `kernel_release` = the release build-image recorded.
    KernelRelease,
    /// `entry_el` = the stack's `expect.entry-el`.
    EntryEl,
    /// `cpus_online` = `0-<smp-1>`: every CPU QEMU was given came up.
    CpusOnline,
    /// `hyp_version` = the hypervisor crate's version.
    HypVersion,
    /// `hyp_abi` = the host ABI version in `hyp/core/src/abi.rs`.
    HypAbi,
    /// `child_signal` = SIGSEGV: a user access to hyp memory is a signal.
    ChildSignal,
    /// `write_errno` = EFAULT: a kernel uaccess to hyp memory fails cleanly.
    WriteErrno,
    /// `hc_unknown_function`: an unassigned ID in Cloister's range.
    HcUnknownFunction,
    /// `hc_reserved_arg`: GET_VERSION with x1 != 0.
    HcReservedArg,
    /// `hc_out_of_range`: HOST_SHARE_HYP of a frame past RAM.
    HcOutOfRange,
    /// `hc_donate_hyp_page`: HOST_DONATE_HYP of the hyp's own frame.
    HcDonateHypPage,
    /// `hyp_page_owner`: PAGE_OWNER of the hyp's frame after all of that.
    HypPageOwner,
    /// `vmm_exit` = 1: the VMM fails cleanly without its device.
    VmmExit,
    /// `guest_exit`: VCPU_RUN came back with a shutdown system event.
    GuestExit,
    /// `guest_x5`: the guest's own instruction ran (x5 = 0x1234).
    GuestX5,
    /// `guest_pages_reclaimed` = 1: teardown gave the page back.
    GuestPagesReclaimed,
    /// `read_private` = SIGSEGV: the host cannot read a protected page.
    ReadPrivate,
    /// `read_shared` = secret: the same page once the guest shared it.
    ReadShared,
    /// `read_unshared` = SIGSEGV: and not after it unshared it.
    ReadUnshared,
    /// `pvm_exits`: share, unshare, system event, in that order.
    PvmExits,
    /// `pvm_pages_reclaimed` = 2.
    PvmPagesReclaimed,
    /// `after_reclaim` = zeroed: the secret is gone when the page returns.
    AfterReclaim,
    /// A fact with a fixed expected value: key, value.
    Is(&'static str, &'static str),
    /// A refused host call: key, and the hyp core's encoding of the error;
    /// the agent reports `x0 x1` and whether the ownership digest stayed
    /// the same.
    Refused(&'static str, Refusal),
}

/// What `pvm-teardown` and `gmem-teardown` must see, on either memory
/// model: the VMM's clean exit, three kills mid-run, every page back with
/// the host, no VM left, and no copy of a secret anywhere in host RAM.
const TEARDOWN_FACTS: &[Expected] = &[
    Expected::Is("teardown_vmm_exit", "0"),
    Expected::Is("teardown_kills", "3"),
    Expected::Is("teardown_pages_not_host_delta", "0"),
    Expected::Is("teardown_live_vms_delta", "0"),
    Expected::Is("teardown_secret_copies", "0"),
];

/// What the guest's `boot` and `blk` tests report on plain QEMU: every
/// vCPU up, its disk, and no hypervisor services, so no pKVM guest driver,
/// no MMIO guard and no restricted DMA pool (there is no pKVM to ask).
const GUEST_PLAIN_QEMU_FACTS: &[Expected] = &[
    Expected::Is("tests", "boot,blk"),
    Expected::KernelRelease,
    Expected::CpusOnline,
    Expected::Is("block_devices", "vda"),
    Expected::Is("kvm_hyp_services", "none"),
    Expected::Is("pkvm_guest", "inactive"),
    Expected::Is("mmio_guard", "no"),
    Expected::Is("restricted_dma_pool", "none"),
    Expected::Is("restricted_dma_devices", "none"),
    Expected::Is("blk_device", "/dev/vda"),
    Expected::Is("end", "poweroff"),
];

/// The errors of the `hyp-refusals` scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The frame is outside the memory the hyp manages (MMIO, holes).
    OutOfRange,
    /// The hyp owns the frame.
    HypOwned,
    /// A guest owns the frame.
    GuestOwned,
}

impl Refusal {
    /// The hyp core's encoding of the error.
    fn regs(self) -> [u64; 4] {
        use cloister_hyp_core::addr::Pfn;
        use cloister_hyp_core::mem_protect::{MemProtectError, Owner, VmHandle};
        let pfn = Pfn::new(0);
        match self {
            Refusal::OutOfRange => MemProtectError::OutOfRange { pfn, count: 1 }.to_regs(),
            Refusal::HypOwned => MemProtectError::NotOwned {
                pfn,
                owner: Owner::Hyp,
            }
            .to_regs(),
            Refusal::GuestOwned => MemProtectError::NotOwned {
                pfn,
                owner: Owner::Guest(VmHandle::new(0)),
            }
            .to_regs(),
        }
    }
}

impl Expected {
    pub fn key(self) -> &'static str {
        match self {
            Expected::KernelRelease => "kernel_release",
            Expected::EntryEl => "entry_el",
            Expected::CpusOnline => "cpus_online",
            Expected::HypVersion => "hyp_version",
            Expected::HypAbi => "hyp_abi",
            Expected::ChildSignal => "child_signal",
            Expected::WriteErrno => "write_errno",
            Expected::HcUnknownFunction => "hc_unknown_function",
            Expected::HcReservedArg => "hc_reserved_arg",
            Expected::HcOutOfRange => "hc_out_of_range",
            Expected::HcDonateHypPage => "hc_donate_hyp_page",
            Expected::HypPageOwner => "hyp_page_owner",
            Expected::VmmExit => "vmm_exit",
            Expected::GuestExit => "guest_exit",
            Expected::GuestX5 => "guest_x5",
            Expected::GuestPagesReclaimed => "guest_pages_reclaimed",
            Expected::ReadPrivate => "read_private",
            Expected::ReadShared => "read_shared",
            Expected::ReadUnshared => "read_unshared",
            Expected::PvmExits => "pvm_exits",
            Expected::PvmPagesReclaimed => "pvm_pages_reclaimed",
            Expected::AfterReclaim => "after_reclaim",
            Expected::Is(key, _) | Expected::Refused(key, _) => key,
        }
    }

    /// The expected value. Hypercall results come from the hyp core's own
    /// error encoders, so the test and the hyp share one definition.
    pub fn value(self, exp: &Expectations) -> String {
        use cloister_hyp_core::abi::{self, ret};
        use cloister_hyp_core::addr::Pfn;
        use cloister_hyp_core::hypercall::DecodeError;
        use cloister_hyp_core::mem_protect::{MemProtectError, Owner};
        let x0_x1 = |r: [u64; 4]| format!("{:#x} {:#x}", r[0], r[1]);
        match self {
            Expected::KernelRelease => exp.kernel_release.clone(),
            Expected::EntryEl => exp.entry_el.to_string(),
            Expected::CpusOnline => match exp.smp {
                1 => "0".to_owned(),
                n => format!("0-{}", n - 1),
            },
            Expected::HypVersion => {
                let (major, minor, patch) = abi::HYP_VERSION;
                format!("{major}.{minor}.{patch}")
            }
            Expected::HypAbi => format!("{}.{}", abi::ABI_VERSION.major, abi::ABI_VERSION.minor),
            Expected::ChildSignal => "SIGSEGV".to_owned(),
            Expected::WriteErrno => "EFAULT".to_owned(),
            Expected::HcUnknownFunction => x0_x1(
                DecodeError::UnknownFunction {
                    x0: u64::from(abi::hc::GET_VERSION),
                }
                .to_regs(),
            ),
            Expected::HcReservedArg => x0_x1(DecodeError::ReservedArgNonZero { reg: 1 }.to_regs()),
            Expected::HcOutOfRange => x0_x1(
                MemProtectError::OutOfRange {
                    pfn: Pfn::new(0),
                    count: 1,
                }
                .to_regs(),
            ),
            Expected::HcDonateHypPage => x0_x1(
                MemProtectError::NotOwned {
                    pfn: Pfn::new(0),
                    owner: Owner::Hyp,
                }
                .to_regs(),
            ),
            Expected::HypPageOwner => x0_x1([ret::SUCCESS, abi::owner::HYP, 0, 0]),
            Expected::VmmExit => "1".to_owned(),
            Expected::GuestExit => format!(
                "{:#x} {:#x} {:#x}",
                ret::SUCCESS,
                abi::exit::SYSTEM_EVENT,
                cloister_hyp_core::guest_abi::kvm_uapi::SYSTEM_EVENT_SHUTDOWN
            ),
            Expected::GuestX5 => "0x1234".to_owned(),
            Expected::GuestPagesReclaimed => "1".to_owned(),
            Expected::ReadPrivate | Expected::ReadUnshared => "SIGSEGV".to_owned(),
            Expected::ReadShared => "secret".to_owned(),
            Expected::PvmExits => {
                format!(
                    "{},{},{}",
                    abi::exit::MEM_SHARE,
                    abi::exit::MEM_UNSHARE,
                    abi::exit::SYSTEM_EVENT
                )
            }
            Expected::PvmPagesReclaimed => "2".to_owned(),
            Expected::AfterReclaim => "zeroed".to_owned(),
            Expected::Is(_, value) => value.to_owned(),
            Expected::Refused(_, refusal) => format!("{} unchanged", x0_x1(refusal.regs())),
        }
    }
}

/// What a scenario does.
#[derive(Debug, Clone)]
pub enum Kind {
    /// Boot with the agent as PID 1 running `agent_scenario`; pass when the
    /// report is complete, every check passed and every fact matches.
    Agent {
        agent_scenario: &'static str,
        facts: &'static [Expected],
    },
    /// Boot the demo initramfs, wait for the busybox prompt on the serial
    /// console, type `poweroff`, expect QEMU to exit with status 0.
    DemoShell,
    /// Boot a deliberately damaged `cloister.img`: the hyp must refuse it
    /// with a console message naming what is wrong and power off.
    DamagedImage(Damage),
    /// Boot a damaged disk image through the firmware (`qemu.boot = "disk"`
    /// stacks only): U-Boot must say why it cannot boot, boot no kernel and
    /// stop at its prompt.
    BrokenDisk(DiskDamage),
    /// Boot the stack's Linux guest on plain QEMU (no hypervisor, TCG) with
    /// the guest agent running `tests` (`cloister.test=`); pass when its
    /// report on hvc0 is complete, every check passed, every fact matches
    /// (`Expected::CpusOnline` against `guest.cpus`, `KernelRelease`
    /// against the guest kernel's) and, with `blk`, the disk file holds
    /// what the guest reported writing. Stacks without `[guest]` skip it.
    GuestPlainQemu {
        tests: &'static str,
        facts: &'static [Expected],
    },
}

/// How the broken-disk scenarios damage the disk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskDamage {
    /// Every copy of the FAT in the boot partition zeroed: the files are
    /// listed, but cloister.img's cluster chain is gone.
    ZeroedFat,
    /// The disk cut 1 MiB into its boot partition (inside cloister.img).
    Truncated,
}

impl DiskDamage {
    /// Damages the disk image at `disk` in place.
    pub fn apply(self, disk: &Path) -> Result<()> {
        match self {
            DiskDamage::ZeroedFat => crate::disk::zero_fats(disk),
            DiskDamage::Truncated => crate::disk::truncate_in_boot_partition(disk, 1 << 20),
        }
    }

    /// Console lines U-Boot (or the boot script) prints about the damage,
    /// as U-Boot 2023.01 (Debian's u-boot-qemu) words them.
    pub fn expected_messages(self, table: PartitionTable) -> &'static [&'static str] {
        match (self, table) {
            // The boot script and uEnv.txt fit one cluster each and load;
            // following cloister.img's chain fails.
            (DiskDamage::ZeroedFat, _) => &[
                "Invalid FAT entry",
                "** Unable to read file /cloister.img **",
                "cloister: cannot read /cloister.img from virtio 0:1",
            ],
            // The GPT's partition 1 now ends past the disk: U-Boot drops it.
            (DiskDamage::Truncated, PartitionTable::Gpt) => &[
                "** Invalid partition 1 **",
                "Couldn't find partition virtio 0:1",
            ],
            // An MBR is not checked against the disk size: the FAT reads run
            // off the end of the disk.
            (DiskDamage::Truncated, PartitionTable::Mbr) => &[
                "Error reading cluster",
                "** Unable to read file /cloister.img **",
                "cloister: cannot read /cloister.img from virtio 0:1",
            ],
        }
    }
}

/// How the damaged-image scenarios break `cloister.img`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// Payload table magic overwritten.
    BadMagic,
    /// One byte of the kernel blob flipped (its CRC no longer matches).
    BadChecksum,
    /// File cut in the middle of the kernel blob.
    Truncated,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub what: &'static str,
    pub kind: Kind,
    pub timeout: Duration,
    /// Only meaningful with the hypervisor in front of the host.
    pub needs_hyp: bool,
    /// Boot with this many CPUs instead of the stack's `qemu.smp`.
    pub smp: Option<u32>,
}

/// Every scenario, in the order they run.
pub fn scenarios() -> Vec<Scenario> {
    let agent = |name: &'static str,
                 what: &'static str,
                 facts: &'static [Expected],
                 needs_hyp: bool| Scenario {
        name,
        what,
        kind: Kind::Agent {
            agent_scenario: name,
            facts,
        },
        timeout: Duration::from_secs(120),
        needs_hyp,
        smp: None,
    };
    // The Linux guest under nested TCG: slower than the bare-metal guest.
    let linux = |name: &'static str, what: &'static str, facts: &'static [Expected]| Scenario {
        name,
        what,
        kind: Kind::Agent {
            agent_scenario: name,
            facts,
        },
        timeout: Duration::from_secs(600),
        needs_hyp: true,
        smp: None,
    };
    let damaged = |name: &'static str, what: &'static str, damage: Damage| Scenario {
        name,
        what,
        kind: Kind::DamagedImage(damage),
        timeout: Duration::from_secs(60),
        needs_hyp: true,
        smp: None,
    };
    // Only stacks that boot the disk image through U-Boot run these.
    let broken_disk = |name: &'static str, what: &'static str, damage: DiskDamage| Scenario {
        name,
        what,
        kind: Kind::BrokenDisk(damage),
        timeout: Duration::from_secs(60),
        needs_hyp: true,
        smp: None,
    };
    vec![
        agent(
            "boot",
            "the host kernel boots to the test agent",
            &[],
            false,
        ),
        agent(
            "kernel-version",
            "uname -r equals the release build-image built",
            &[Expected::KernelRelease],
            false,
        ),
        agent(
            "entry-el",
            "the kernel was entered at the stack's expected exception level",
            &[Expected::EntryEl],
            false,
        ),
        agent(
            "cpus",
            "every CPU of the stack is online",
            &[Expected::CpusOnline],
            false,
        ),
        Scenario {
            name: "cpus-smp4",
            smp: Some(4),
            ..agent(
                "cpus",
                "with -smp 4, all four CPUs come up (through the hyp's PSCI relay)",
                &[Expected::CpusOnline],
                false,
            )
        },
        agent(
            "hyp-info",
            "/sys/hypervisor/cloister/{version,abi} match the hyp that booted",
            &[Expected::HypVersion, Expected::HypAbi],
            true,
        ),
        agent(
            "devmem-user",
            "a user read of the hyp carve-out via /dev/mem gets SIGSEGV and the host lives on",
            &[Expected::ChildSignal],
            true,
        ),
        agent(
            "uaccess-efault",
            "a kernel uaccess read of the carve-out returns EFAULT and the host lives on",
            &[Expected::WriteErrno],
            true,
        ),
        agent(
            "bad-hypercall",
            "malformed and forbidden host hypercalls get their defined errors and change nothing",
            &[
                Expected::HcUnknownFunction,
                Expected::HcReservedArg,
                Expected::HcOutOfRange,
                Expected::HcDonateHypPage,
                Expected::HypPageOwner,
            ],
            true,
        ),
        agent(
            "guest-run",
            "a normal VM runs its own code through the hyp and powers off; teardown returns its page",
            &[Expected::GuestExit, Expected::GuestX5, Expected::GuestPagesReclaimed],
            true,
        ),
        agent(
            "pvm-isolation",
            "a protected VM's page: unreadable by the host, readable once shared, unreadable after unshare, zeroed on teardown",
            &[
                Expected::ReadPrivate,
                Expected::ReadShared,
                Expected::ReadUnshared,
                Expected::PvmExits,
                Expected::PvmPagesReclaimed,
                Expected::AfterReclaim,
            ],
            true,
        ),
        agent(
            "conformance-protected",
            "the bare-metal conformance guest passes the pKVM guest ABI suite as a protected VM \
             (guest_memfd memory, the default)",
            &[
                Expected::Is("conformance_memory", "guest-memfd"),
                Expected::Is("conformance", "pass"),
                Expected::Is("conformance_kind", "protected"),
                Expected::Is("vmm_exit", "0"),
            ],
            true,
        ),
        agent(
            "conformance-protected-anon",
            "the conformance guest passes as a protected VM on pinned anonymous memory \
             (pKVM's model; the default is guest_memfd)",
            &[
                Expected::Is("conformance_memory", "anon"),
                Expected::Is("conformance", "pass"),
                Expected::Is("conformance_kind", "protected"),
                Expected::Is("vmm_exit", "0"),
            ],
            true,
        ),
        agent(
            "conformance-normal",
            "the conformance guest gets a normal VM's answers as a normal VM",
            &[
                Expected::Is("conformance_memory", "anon"),
                Expected::Is("conformance", "pass"),
                Expected::Is("conformance_kind", "normal"),
                Expected::Is("vmm_exit", "0"),
            ],
            true,
        ),
        agent(
            "pvm-secret",
            "a protected guest's secret: the VMM mapping, /dev/mem, uaccess, GUP and O_DIRECT \
             cannot read it; readable once shared, not after unshare; gone after teardown",
            &[
                Expected::Is("pvm_private_vmm", "SIGSEGV"),
                Expected::Is("pvm_private_devmem", "SIGSEGV"),
                Expected::Is("pvm_private_uaccess", "EFAULT"),
                Expected::Is("pvm_private_uaccess_in", "EFAULT"),
                Expected::Is("pvm_private_process_vm_readv", "EFAULT"),
                Expected::Is("pvm_private_proc_mem", "EIO"),
                Expected::Is("pvm_private_odirect_write", "EFAULT"),
                Expected::Is("pvm_private_odirect_read", "EFAULT"),
                Expected::Is("pvm_shared_odirect_write", "EFAULT"),
                Expected::Is("pvm_untouched_odirect_write", "wrote 4096, file holds pattern"),
                Expected::Is("pvm_shared_vmm", "secret"),
                Expected::Is("pvm_unshared_vmm", "SIGSEGV"),
                Expected::Is("pvm_end", "PowerOff"),
                Expected::Is("pvm_after_teardown", "0 copies"),
            ],
            true,
        ),
        agent(
            "pvm-teardown",
            "after VMM exit and three SIGKILLs mid-run every page is back with the host \
             and a scan of host RAM finds no secret",
            TEARDOWN_FACTS,
            true,
        ),
        agent(
            "gmem-secret",
            "a protected guest's secret in a guest_memfd: the VMM mapping gets SIGBUS from the \
             host kernel, /dev/mem, uaccess, process_vm_readv, /proc/pid/mem and O_DIRECT fail; shared \
             in place, private again after unshare",
            &[
                Expected::Is("gmem_private_vmm", "SIGBUS"),
                Expected::Is("gmem_private_devmem", "SIGSEGV"),
                Expected::Is("gmem_private_uaccess", "EFAULT"),
                Expected::Is("gmem_private_uaccess_in", "EFAULT"),
                Expected::Is("gmem_private_process_vm_readv", "EFAULT"),
                Expected::Is("gmem_private_proc_mem", "EIO"),
                Expected::Is("gmem_private_odirect_write", "EFAULT"),
                Expected::Is("gmem_private_odirect_read", "EFAULT"),
                Expected::Is("gmem_shared_odirect_write", "EFAULT"),
                Expected::Is("gmem_untouched_odirect_write", "EFAULT"),
                Expected::Is("gmem_shared_vmm", "secret"),
                Expected::Is("gmem_unshared_vmm", "SIGBUS"),
                Expected::Is("gmem_end", "PowerOff"),
            ],
            true,
        ),
        agent(
            "gmem-teardown",
            "guest_memfd memory after VMM exit and three SIGKILLs: every page back with the \
             host, the secret nowhere in host RAM",
            TEARDOWN_FACTS,
            true,
        ),
        agent(
            "gmem-punch",
            "a hole punched in a private guest_memfd page while the guest runs: zeroed and the \
             host's; the guest's next access ends KVM_RUN with EFAULT / KVM_EXIT_MEMORY_FAULT",
            &[
                Expected::Is("gmem_punch", "ok"),
                Expected::Is("gmem_punched_owner", "host"),
                Expected::Is("gmem_punched_page", "zero"),
                Expected::Is("gmem_punch_end", "memory fault at the punched page"),
            ],
            true,
        ),
        agent(
            "gmem-bad-input",
            "guest_memfd arguments mainline rejects get mainline's errors",
            &[
                Expected::Is("gmem_size_zero", "EINVAL"),
                Expected::Is("gmem_size_unaligned", "EINVAL"),
                Expected::Is("gmem_unknown_flags", "EINVAL"),
                Expected::Is("gmem_mmap_without_flag", "ENODEV"),
                Expected::Is("gmem_mmap_private", "EINVAL"),
                Expected::Is("gmem_region_past_end", "EINVAL"),
                Expected::Is("gmem_region_other_vm", "EINVAL"),
                Expected::Is("gmem_region_not_gmem", "EINVAL"),
                Expected::Is("gmem_region_normal_vm", "EINVAL"),
                Expected::Is("gmem_region_ok", "ok"),
            ],
            true,
        ),
        agent(
            "hyp-refusals",
            "the hyp refuses MMIO, unmapped, hyp and another guest's pages (CVE-2023-21264 class) \
             and the ownership database does not change",
            &[
                Expected::Refused("refuse_donate_mmio", Refusal::OutOfRange),
                Expected::Refused("refuse_lend_mmio", Refusal::OutOfRange),
                Expected::Refused("refuse_share_mmio_hyp", Refusal::OutOfRange),
                Expected::Refused("refuse_donate_unmapped", Refusal::OutOfRange),
                Expected::Refused("refuse_donate_hyp_page", Refusal::HypOwned),
                Expected::Refused("refuse_lend_hyp_page", Refusal::HypOwned),
                Expected::Refused("refuse_donate_other_guest_page", Refusal::GuestOwned),
                Expected::Refused("refuse_lend_other_guest_page", Refusal::GuestOwned),
                Expected::Refused("refuse_hyp_take_guest_page", Refusal::GuestOwned),
                Expected::Refused("refuse_share_guest_page_hyp", Refusal::GuestOwned),
                Expected::Is("refusals_page_back", "host"),
            ],
            true,
        ),
        agent(
            "pkvm-promises",
            "pkvm.rst: after a protected VM's first run, register ioctls and memslot \
             moves and deletes get EPERM; a normal VM's work",
            &[
                Expected::Is("pvm_first_exit", "mmio-write 0xb000000"),
                Expected::Is("pvm_fork_after_run", "child exited 0"),
                Expected::Is("pvm_get_reg_after_run", "EPERM"),
                Expected::Is("pvm_set_reg_after_run", "EPERM"),
                Expected::Is("pvm_end", "system-event 1"),
                Expected::Is("pvm_move_slot_after_run", "EPERM"),
                Expected::Is("pvm_delete_slot_after_run", "EPERM"),
                Expected::Is("nvm_first_exit", "mmio-write 0xb000000"),
                Expected::Is("nvm_fork_after_run", "child exited 0"),
                Expected::Is("nvm_get_reg_after_run", "ok"),
                Expected::Is("nvm_set_reg_after_run", "ok"),
                Expected::Is("nvm_end", "system-event 1"),
                Expected::Is("nvm_move_slot_after_run", "ok"),
                Expected::Is("nvm_delete_slot_after_run", "ok"),
            ],
            true,
        ),
        agent(
            "vmm-garbage",
            "bad ioctls, bad memory regions, bad KVM_IRQ_LINE arguments and a vCPU run twice at \
             once get mainline's errors; no oops, no warning",
            &[
                Expected::Is("garbage_unknown_ioctl", "ENOTTY"),
                Expected::Is("garbage_vm_type", "EINVAL"),
                Expected::Is("garbage_region_ok", "ok"),
                Expected::Is("garbage_region_overlap", "EEXIST"),
                Expected::Is("garbage_region_unaligned", "EINVAL"),
                Expected::Is("garbage_region_beyond_ipa", "EINVAL"),
                Expected::Is("garbage_region_readonly", "EINVAL"),
                Expected::Is("garbage_region_bad_hva", "EINVAL"),
                Expected::Is("garbage_vcpu_id", "EINVAL"),
                Expected::Is("garbage_vcpu_twice", "EEXIST"),
                Expected::Is("garbage_irq_type_cpu", "EINVAL"),
                Expected::Is("garbage_irq_type_bad", "EINVAL"),
                Expected::Is("garbage_irq_spi_low", "EINVAL"),
                Expected::Is("garbage_irq_spi_high", "EINVAL"),
                Expected::Is("garbage_irq_ppi_sgi", "EINVAL"),
                Expected::Is("garbage_irq_ppi_high", "EINVAL"),
                Expected::Is("garbage_irq_vcpu_absent", "EINVAL"),
                Expected::Is("garbage_irq_vcpu_high", "EINVAL"),
                Expected::Is("garbage_irq_spi_ok", "ok"),
                Expected::Is("garbage_irq_ppi_ok", "ok"),
                Expected::Is("garbage_irq_level0", "ok"),
                Expected::Is("garbage_run_before_init", "ENOEXEC"),
                Expected::Is("garbage_init_features", "EINVAL"),
                Expected::Is("garbage_unknown_reg", "ENOENT"),
                Expected::Is("garbage_mmap_offset", "EINVAL"),
                Expected::Is("garbage_run_twice", "EBUSY"),
                Expected::Is(
                    "garbage_exits_keys",
                    "vcpu kvm_run interrupted mem_share mem_unshare system_event cpu_on \
                     cpu_off halt mmio mem_fault kick errors",
                ),
                Expected::Is("garbage_exits_kvm_run", "2"),
            ],
            true,
        ),
        agent(
            "vmm-no-device",
            "the host's cloister-vmm fails with an error naming a missing device",
            &[Expected::VmmExit],
            false,
        ),
        damaged(
            "damaged-magic",
            "the hyp refuses an image whose payload table magic is wrong",
            Damage::BadMagic,
        ),
        damaged(
            "damaged-checksum",
            "the hyp refuses an image with a corrupted kernel blob",
            Damage::BadChecksum,
        ),
        damaged(
            "damaged-truncated",
            "the hyp refuses an image cut short",
            Damage::Truncated,
        ),
        broken_disk(
            "disk-corrupt-fat",
            "U-Boot names the file it cannot read from a boot partition whose FAT is zeroed, \
             and boots nothing",
            DiskDamage::ZeroedFat,
        ),
        broken_disk(
            "disk-truncated",
            "U-Boot refuses a disk image cut inside its boot partition, says why, \
             and boots nothing",
            DiskDamage::Truncated,
        ),
        linux("linux-boot-protected",
            "the stock Linux guest boots to its agent as a protected VM on 2 vCPUs: pKVM guest \
             services, MMIO guard and the restricted DMA pool in use",
            &[
                Expected::Is("guest_cpus_online", "0-1"),
                Expected::Is("guest_pkvm_guest", "active"),
                Expected::Is("guest_mmio_guard", "yes"),
                Expected::Is("guest_restricted_dma_pool", "8 MiB"),
                Expected::Is("vmm_exit", "0"),
            ],
        ),
        linux("linux-boot-normal",
            "the stock Linux guest as a normal VM on 2 vCPUs (no pKVM services: it shares nothing)",
            &[
                Expected::Is("guest_cpus_online", "0-1"),
                Expected::Is("guest_pkvm_guest", "inactive"),
                Expected::Is("guest_mmio_guard", "no"),
                Expected::Is("guest_restricted_dma_pool", "8 MiB"),
                Expected::Is("vmm_exit", "0"),
            ],
        ),
        linux("linux-blk",
            "a protected Linux guest (guest_memfd) writes and reads back 64 MiB on virtio-blk \
             through its DMA pool: data checked in the guest and in the disk file; its secret \
             unreadable through /dev/mem during the IO; only the pool shared",
            LINUX_BLK_FACTS,
        ),
        linux("linux-blk-anon",
            "linux-blk on pinned anonymous memory (16 MiB)",
            LINUX_BLK_FACTS,
        ),
        linux("linux-teardown",
            "a protected Linux guest with a secret ends by poweroff, by reboot and twice by a \
             SIGKILLed VMM mid-IO: every page back with the host, no copy of a secret in host RAM",
            &[
                Expected::Is("teardown_poweroff_exit", "0"),
                Expected::Is("teardown_reboot_exit", "3"),
                Expected::Is("teardown_kills_mid_io", "2"),
                Expected::Is("teardown_pages_not_host_delta", "0"),
                Expected::Is("teardown_live_vms_delta", "0"),
                Expected::Is("teardown_secret_copies", "0"),
            ],
        ),
        Scenario {
            name: "guest-plain-qemu",
            what: "the stock Linux guest boots on plain QEMU (no hyp, TCG) to its agent, which \
                   writes and reads back its virtio-blk disk (O_DIRECT and buffered); the disk \
                   file holds what it reported",
            kind: Kind::GuestPlainQemu {
                tests: "boot,blk",
                facts: GUEST_PLAIN_QEMU_FACTS,
            },
            timeout: Duration::from_secs(240),
            needs_hyp: false,
            smp: None,
        },
        Scenario {
            name: "demo-shell",
            what: "the demo boots to the Linux guest's shell (stacks with a hyp and a [guest]), \
                   whose `poweroff` leads to the host's busybox prompt, whose `poweroff` exits \
                   QEMU with status 0",
            kind: Kind::DemoShell,
            timeout: Duration::from_secs(300),
            needs_hyp: false,
            smp: None,
        },
    ]
}

/// What `linux-blk` and `linux-blk-anon` must report.
const LINUX_BLK_FACTS: &[Expected] = &[
    Expected::Is("io_secret_devmem", "refused 10+"),
    Expected::Is("shared_minus_dma_pools_pages", "0"),
    Expected::Is("disk_checksum", "matches the guest's"),
    Expected::Is("vmm_exit", "0"),
    Expected::Is("pages_not_host_delta", "0"),
];

/// The stack-specific values scenarios compare against.
#[derive(Debug, Clone)]
pub struct Expectations {
    pub entry_el: u8,
    pub kernel_release: String,
    /// CPUs QEMU boots with.
    pub smp: u32,
}

/// A scenario's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(String),
    /// Not applicable to this stack; the reason is printed.
    Skip(String),
}

/// Judges an agent scenario from the text of its result port.
pub fn evaluate(
    agent_scenario: &str,
    facts: &[Expected],
    results: &str,
    exp: &Expectations,
) -> Verdict {
    let mut reports = Vec::new();
    for line in results.lines().filter(|l| !l.trim().is_empty()) {
        match Report::from_line(line) {
            Ok(r) => reports.push(r),
            Err(e) => return Verdict::Fail(format!("result port: {e}")),
        }
    }
    match reports.first() {
        Some(Report::Hello {
            protocol, scenario, ..
        }) => {
            if *protocol != PROTOCOL_VERSION {
                return Verdict::Fail(format!(
                    "agent speaks protocol {protocol}, runner expects {PROTOCOL_VERSION}; rebuild the image"
                ));
            }
            if scenario != agent_scenario {
                return Verdict::Fail(format!(
                    "agent ran scenario {scenario:?}, expected {agent_scenario:?}"
                ));
            }
        }
        Some(other) => return Verdict::Fail(format!("first report is {other:?}, expected hello")),
        None => return Verdict::Fail("the agent reported nothing".into()),
    }
    if !matches!(reports.last(), Some(Report::Done { .. })) {
        return Verdict::Fail(
            "the agent's report ends before `done` (agent crashed or was cut off)".into(),
        );
    }
    let failed: Vec<String> = reports
        .iter()
        .filter_map(|r| match r {
            Report::Check {
                name,
                ok: false,
                detail,
            } => Some(format!("check {name} failed: {detail}")),
            _ => None,
        })
        .collect();
    if !failed.is_empty() {
        return Verdict::Fail(failed.join("; "));
    }
    let mut mismatches = Vec::new();
    for fact in facts {
        let want = fact.value(exp);
        let got = reports.iter().find_map(|r| match r {
            Report::Fact { key, value } if key == fact.key() => Some(value.as_str()),
            _ => None,
        });
        match got {
            Some(v) if v == want => {}
            Some(v) => mismatches.push(format!(
                "{}: expected {want:?}, agent reported {v:?}",
                fact.key()
            )),
            None => mismatches.push(format!(
                "{}: expected {want:?}, agent reported nothing",
                fact.key()
            )),
        }
    }
    if !mismatches.is_empty() {
        return Verdict::Fail(mismatches.join("; "));
    }
    if let Some(Report::Done { ok: false }) = reports.last() {
        return Verdict::Fail("the agent finished with ok=false".into());
    }
    Verdict::Pass
}

/// How a boot ended.
#[derive(Debug)]
pub enum BootEnd {
    Exited(ExitStatus),
    TimedOut,
    Interrupted,
}

/// Kills QEMU (or whatever it is) when dropped, so no path leaves it running.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        terminate(&mut self.0);
    }
}

/// Asks a child to stop (SIGTERM lets QEMU restore the terminal), then kills
/// it if it has not gone within two seconds, and reaps it.
pub fn terminate(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on our own child's pid; the child is not yet reaped,
        // so the pid cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs `cmd` (stdin closed, stdout/stderr to `qemu_log`) until it exits,
/// `timeout` passes or Ctrl-C.
pub fn run_boot(cmd: &mut Command, qemu_log: &Path, timeout: Duration) -> Result<BootEnd> {
    let log = std::fs::File::create(qemu_log)
        .with_context(|| format!("creating {}", qemu_log.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", crate::stage::display_command(cmd)))?;
    let mut guard = ChildGuard(child);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = guard.0.try_wait()? {
            return Ok(BootEnd::Exited(status));
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            return Ok(BootEnd::Interrupted);
        }
        if Instant::now() >= deadline {
            return Ok(BootEnd::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Files one scenario run writes.
#[derive(Debug, Clone)]
pub struct ScenarioFiles {
    pub console: PathBuf,
    pub results: PathBuf,
    pub qemu_log: PathBuf,
}

impl ScenarioFiles {
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let files = ScenarioFiles {
            console: dir.join("console.log"),
            results: dir.join("results.jsonl"),
            qemu_log: dir.join("qemu.log"),
        };
        for f in [&files.console, &files.results, &files.qemu_log] {
            let _ = std::fs::remove_file(f);
        }
        Ok(files)
    }
}

/// Console lines shown with a failure.
const CONSOLE_TAIL: usize = 25;

/// Appends the console's tail and the log paths to a failure message.
pub fn with_console(msg: String, files: &ScenarioFiles) -> String {
    let mut out = msg;
    out.push_str(&format!(
        "\n--- console tail ({}) ---\n",
        files.console.display()
    ));
    for line in crate::stage::tail(&files.console, CONSOLE_TAIL) {
        out.push_str(&line);
        out.push('\n');
    }
    let qemu = crate::stage::tail(&files.qemu_log, 5);
    if !qemu.is_empty() {
        out.push_str(&format!(
            "--- qemu output ({}) ---\n",
            files.qemu_log.display()
        ));
        for line in qemu {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out.push_str(&format!("--- console log: {} ---", files.console.display()));
    out
}

/// Runs an agent scenario with `cmd` as the (already wired) QEMU command.
pub fn run_agent_scenario(
    scenario: &Scenario,
    agent_scenario: &str,
    facts: &[Expected],
    mut cmd: Command,
    files: &ScenarioFiles,
    exp: &Expectations,
) -> Result<Verdict> {
    let end = run_boot(&mut cmd, &files.qemu_log, scenario.timeout)?;
    let results = std::fs::read_to_string(&files.results).unwrap_or_default();
    let verdict = match end {
        BootEnd::Interrupted => {
            Verdict::Fail(format!("scenario {} interrupted (Ctrl-C)", scenario.name))
        }
        BootEnd::TimedOut => Verdict::Fail(with_console(
            format!(
                "scenario {} timed out after {}s",
                scenario.name,
                scenario.timeout.as_secs()
            ),
            files,
        )),
        BootEnd::Exited(status) => match evaluate(agent_scenario, facts, &results, exp) {
            Verdict::Fail(why) => Verdict::Fail(with_console(
                format!(
                    "scenario {} failed (QEMU exited with {status}): {why}",
                    scenario.name
                ),
                files,
            )),
            other => other,
        },
    };
    Ok(verdict)
}

/// Writes a damaged copy of `image` to `out` and returns the text the hyp
/// must print: the payload parser's own message for the damaged bytes (the
/// hyp runs the same parser, and QEMU's RAM past the file reads as zeros).
pub fn damage_image(image: &Path, out: &Path, damage: Damage) -> Result<String> {
    use cloister_hyp_core::payload;
    let mut bytes = std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    let table = (0..bytes.len())
        .step_by(payload::TABLE_ALIGN)
        .find(|&off| bytes.get(off..off + 8) == Some(&payload::MAGIC[..]))
        .with_context(|| format!("{} has no payload table", image.display()))?;
    let parsed =
        payload::parse(&bytes[table..]).map_err(|e| anyhow::anyhow!("{}: {e}", image.display()))?;
    let kernel = parsed
        .blob(payload::PayloadKind::Kernel)
        .context("no kernel blob")?;
    let kernel_at = table + usize::try_from(kernel.offset)?;
    let kernel_len = kernel.bytes.len();
    let total = usize::try_from(parsed.total_size())?;
    match damage {
        Damage::BadMagic => bytes[table..table + 8].copy_from_slice(b"CLSTRXXX"),
        Damage::BadChecksum => bytes[kernel_at + kernel_len / 3] ^= 0x5a,
        Damage::Truncated => bytes.truncate(kernel_at + kernel_len / 2),
    }
    std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    let mut seen = bytes[table..].to_vec();
    seen.resize(seen.len().max(total), 0);
    match payload::parse(&seen) {
        Ok(_) => anyhow::bail!("damage {damage:?} left a valid payload table"),
        Err(e) => Ok(format!("is invalid: {e}")),
    }
}

/// Boots a damaged image: passes when the hyp printed its refusal with the
/// expected reason, never started Linux, and powered the machine off.
pub fn run_damaged_image(
    scenario: &Scenario,
    mut cmd: Command,
    files: &ScenarioFiles,
    expected: &str,
) -> Result<Verdict> {
    let end = run_boot(&mut cmd, &files.qemu_log, scenario.timeout)?;
    let console = std::fs::read_to_string(&files.console).unwrap_or_default();
    let refused = console
        .lines()
        .any(|l| l.contains("refusing to boot the host") && l.contains(expected));
    let verdict = match end {
        BootEnd::Interrupted => {
            Verdict::Fail(format!("scenario {} interrupted (Ctrl-C)", scenario.name))
        }
        BootEnd::TimedOut => Verdict::Fail(with_console(
            format!(
                "scenario {}: QEMU still running after {}s (the hyp must power off)",
                scenario.name,
                scenario.timeout.as_secs()
            ),
            files,
        )),
        BootEnd::Exited(_) if console.contains("Booting Linux") => Verdict::Fail(with_console(
            format!(
                "scenario {}: the hyp booted the host from a damaged image",
                scenario.name
            ),
            files,
        )),
        BootEnd::Exited(_) if !refused => Verdict::Fail(with_console(
            format!(
                "scenario {}: no refusal mentioning {expected:?} on the console",
                scenario.name
            ),
            files,
        )),
        BootEnd::Exited(_) => Verdict::Pass,
    };
    Ok(verdict)
}

/// U-Boot's command prompt at the start of a line: distro boot gave up.
pub const UBOOT_PROMPT: &str = "\n=> ";

/// Boots a damaged disk image through U-Boot: passes when U-Boot printed
/// every `expected` line, started no kernel, and stopped at its prompt
/// (QEMU is then stopped; U-Boot would wait there for ever).
pub fn run_broken_disk(
    scenario: &Scenario,
    mut cmd: Command,
    files: &ScenarioFiles,
    expected: &[&str],
) -> Result<Verdict> {
    let log = std::fs::File::create(&files.qemu_log)
        .with_context(|| format!("creating {}", files.qemu_log.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", crate::stage::display_command(&cmd)))?;
    let mut guard = ChildGuard(child);
    let deadline = Instant::now() + scenario.timeout;
    let read_console = || {
        std::fs::read(&files.console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let ended = loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return Ok(Verdict::Fail(format!(
                "scenario {} interrupted (Ctrl-C)",
                scenario.name
            )));
        }
        if read_console().contains(UBOOT_PROMPT) {
            break "U-Boot stopped at its prompt".to_owned();
        }
        if let Some(status) = guard.0.try_wait()? {
            break format!("QEMU exited with {status}");
        }
        if Instant::now() >= deadline {
            return Ok(Verdict::Fail(with_console(
                format!(
                    "scenario {}: U-Boot did not reach its prompt within {}s",
                    scenario.name,
                    scenario.timeout.as_secs()
                ),
                files,
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(guard);
    let console = read_console();
    if console.contains("Starting kernel") {
        return Ok(Verdict::Fail(with_console(
            format!(
                "scenario {}: U-Boot started a kernel from a damaged disk ({ended})",
                scenario.name
            ),
            files,
        )));
    }
    let missing: Vec<&str> = expected
        .iter()
        .filter(|m| !console.contains(**m))
        .copied()
        .collect();
    if !missing.is_empty() {
        return Ok(Verdict::Fail(with_console(
            format!(
                "scenario {}: {ended}, but the console lacks {}",
                scenario.name,
                missing
                    .iter()
                    .map(|m| format!("{m:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            files,
        )));
    }
    if !console.contains(UBOOT_PROMPT) {
        return Ok(Verdict::Fail(with_console(
            format!(
                "scenario {}: {ended} before U-Boot gave up at its prompt",
                scenario.name
            ),
            files,
        )));
    }
    Ok(Verdict::Pass)
}

/// The prompt /etc/profile sets in the host shell.
pub const HOST_PROMPT: &str = "cloister-host:";
/// The Linux guest's shell prompt (`guest-image/guest-agent`'s PS1); its
/// result lines (`cloister-guest: `) have a space where this has `/`.
pub const GUEST_PROMPT: &str = "cloister-guest:/";

/// Runs the demo-shell scenario with `cmd` as the QEMU command wired with the
/// serial console on stdio.
pub fn run_demo_shell(
    scenario: &Scenario,
    mut cmd: Command,
    files: &ScenarioFiles,
    guest_first: bool,
) -> Result<Verdict> {
    let qemu_log = std::fs::File::create(&files.qemu_log)?;
    let child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(qemu_log)
        .spawn()
        .with_context(|| format!("starting {}", crate::stage::display_command(&cmd)))?;
    let mut guard = ChildGuard(child);
    let mut stdout = guard.0.stdout.take().context("QEMU stdout")?;
    let mut stdin = guard.0.stdin.take().context("QEMU stdin")?;
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let console_path = files.console.clone();
    std::thread::spawn(move || {
        let mut console = std::fs::File::create(console_path).ok();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Some(c) = console.as_mut() {
                let _ = c.write_all(&buf[..n]);
            }
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + scenario.timeout;
    let mut seen = Vec::new();
    // (prompt to wait for, what it is) in order; `poweroff` answers each.
    let mut steps: Vec<(&str, &str)> = Vec::new();
    if guest_first {
        steps.push((GUEST_PROMPT, "the Linux guest's shell prompt"));
    }
    steps.push((HOST_PROMPT, "the host shell prompt"));
    let mut step = 0;
    // Where in `seen` the current step's prompt may appear (after the last).
    let mut from = 0;
    let mut sent_poweroff = false;
    loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return Ok(Verdict::Fail(format!(
                "scenario {} interrupted (Ctrl-C)",
                scenario.name
            )));
        }
        if Instant::now() >= deadline {
            let stage = match steps.get(step) {
                Some((_, what)) => format!("waiting for {what}"),
                None => "after the last `poweroff`".to_string(),
            };
            return Ok(Verdict::Fail(with_console(
                format!(
                    "scenario {} timed out after {}s {stage}",
                    scenario.name,
                    scenario.timeout.as_secs()
                ),
                files,
            )));
        }
        while let Ok(chunk) = rx.try_recv() {
            seen.extend_from_slice(&chunk);
        }
        if let Some((prompt, _)) = steps.get(step) {
            let text = String::from_utf8_lossy(&seen[from..]).into_owned();
            if let Some(at) = text.find(prompt) {
                from += at + prompt.len();
                stdin.write_all(b"poweroff\n")?;
                stdin.flush()?;
                step += 1;
                sent_poweroff = step == steps.len();
            }
        }
        if let Some(status) = guard.0.try_wait()? {
            return Ok(match (sent_poweroff, status.success()) {
                (true, true) => Verdict::Pass,
                (true, false) => Verdict::Fail(with_console(
                    format!(
                        "scenario {}: QEMU exited with {status} after `poweroff`, expected 0",
                        scenario.name
                    ),
                    files,
                )),
                (false, _) => Verdict::Fail(with_console(
                    format!(
                        "scenario {}: QEMU exited with {status} waiting for {}",
                        scenario.name,
                        steps.get(step).map_or("the end", |(_, what)| what)
                    ),
                    files,
                )),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp() -> Expectations {
        Expectations {
            entry_el: 2,
            kernel_release: "6.12.117".into(),
            smp: 2,
        }
    }

    fn report(scenario: &str, middle: &[Report], done: bool) -> String {
        let mut lines = vec![Report::Hello {
            protocol: PROTOCOL_VERSION,
            agent_version: "t".into(),
            scenario: scenario.into(),
        }];
        lines.extend_from_slice(middle);
        if done {
            lines.push(Report::Done { ok: true });
        }
        lines.iter().map(|r| r.to_line() + "\n").collect()
    }

    fn fact(k: &str, v: &str) -> Report {
        Report::Fact {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn matching_fact_passes() {
        let text = report("entry-el", &[fact("entry_el", "2")], true);
        assert_eq!(
            evaluate("entry-el", &[Expected::EntryEl], &text, &exp()),
            Verdict::Pass
        );
    }

    /// The runner must be able to fail: the same report against a stack that
    /// expects EL1 (as the hyp stacks will) is a failure naming both values.
    #[test]
    fn wrong_expectation_fails_naming_expected_and_reported() {
        let text = report("entry-el", &[fact("entry_el", "2")], true);
        let el1 = Expectations {
            entry_el: 1,
            ..exp()
        };
        match evaluate("entry-el", &[Expected::EntryEl], &text, &el1) {
            Verdict::Fail(why) => assert_eq!(why, "entry_el: expected \"1\", agent reported \"2\""),
            other => panic!("wrong expectation must fail, got {other:?}"),
        }
        let text = report("kernel-version", &[fact("kernel_release", "6.1.0")], true);
        assert!(matches!(
            evaluate("kernel-version", &[Expected::KernelRelease], &text, &exp()),
            Verdict::Fail(w) if w.contains("6.12.117") && w.contains("6.1.0")
        ));
    }

    #[test]
    fn incomplete_or_garbled_reports_fail() {
        let cut = report("boot", &[], false);
        assert!(
            matches!(evaluate("boot", &[], &cut, &exp()), Verdict::Fail(w) if w.contains("before `done`"))
        );
        assert!(
            matches!(evaluate("boot", &[], "", &exp()), Verdict::Fail(w) if w.contains("reported nothing"))
        );
        let garbled = format!("{}Booting Linux\n", report("boot", &[], true));
        assert!(
            matches!(evaluate("boot", &[], &garbled, &exp()), Verdict::Fail(w) if w.contains("malformed"))
        );
        let other = report("entry-el", &[], true);
        assert!(
            matches!(evaluate("boot", &[], &other, &exp()), Verdict::Fail(w) if w.contains("expected \"boot\""))
        );
        let missing = report("entry-el", &[], true);
        assert!(matches!(
            evaluate("entry-el", &[Expected::EntryEl], &missing, &exp()),
            Verdict::Fail(w) if w.contains("reported nothing")
        ));
        let failed = report(
            "boot",
            &[Report::Check {
                name: "x".into(),
                ok: false,
                detail: "bad".into(),
            }],
            true,
        );
        assert!(
            matches!(evaluate("boot", &[], &failed, &exp()), Verdict::Fail(w) if w.contains("check x failed: bad"))
        );
    }

    #[test]
    fn hung_boot_times_out_naming_scenario_console_tail_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let files = ScenarioFiles::new(dir.path()).unwrap();
        let scenario = Scenario {
            name: "hangs",
            what: "test",
            kind: Kind::Agent {
                agent_scenario: "boot",
                facts: &[],
            },
            timeout: Duration::from_millis(700),
            needs_hyp: false,
            smp: None,
        };
        // Stands in for a QEMU whose guest prints a little and then hangs.
        let mut fake_qemu = Command::new("sh");
        fake_qemu.arg("-c").arg(format!(
            "echo 'Booting Linux on physical CPU 0x0' > {}; echo 'stuck in init' >> {0}; exec sleep 60",
            files.console.display()
        ));
        let started = Instant::now();
        let verdict =
            run_agent_scenario(&scenario, "boot", &[], fake_qemu, &files, &exp()).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "timeout not enforced"
        );
        match verdict {
            Verdict::Fail(msg) => {
                assert!(msg.contains("scenario hangs timed out after 0s"), "{msg}");
                assert!(msg.contains("stuck in init"), "{msg}");
                assert!(msg.contains(&files.console.display().to_string()), "{msg}");
            }
            other => panic!("expected a timeout failure, got {other:?}"),
        }
    }

    #[test]
    fn child_guard_kills_on_drop() {
        let child = Command::new("sh")
            .arg("-c")
            .arg("exec sleep 60")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        drop(ChildGuard(child));
        // SAFETY: signal 0 only checks whether the pid exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "child {pid} survived its guard");
    }

    #[test]
    fn hypercall_expectations_come_from_the_abi() {
        // NOT_SUPPORTED / UNKNOWN_FUNCTION, INVALID_PARAMETER / RESERVED_ARG.
        assert_eq!(
            Expected::HcUnknownFunction.value(&exp()),
            "0xffffffffffffffff 0xe"
        );
        assert_eq!(
            Expected::HcReservedArg.value(&exp()),
            "0xfffffffffffffffd 0xf"
        );
        assert_eq!(Expected::HypPageOwner.value(&exp()), "0x0 0x2");
        assert_eq!(
            Expected::CpusOnline.value(&Expectations { smp: 4, ..exp() }),
            "0-3"
        );
        assert_eq!(
            Expected::CpusOnline.value(&Expectations { smp: 1, ..exp() }),
            "0"
        );
    }

    #[test]
    fn scenario_names_are_unique() {
        let names: std::collections::BTreeSet<&str> = scenarios().iter().map(|s| s.name).collect();
        assert_eq!(names.len(), scenarios().len());
    }

    fn broken_disk_scenario(timeout: Duration) -> Scenario {
        Scenario {
            timeout,
            ..scenarios()
                .into_iter()
                .find(|s| s.name == "disk-truncated")
                .unwrap()
        }
    }

    /// A QEMU stand-in that prints `console` to the console file and hangs,
    /// as U-Boot does at its prompt.
    fn fake_uboot(files: &ScenarioFiles, console: &str) -> Command {
        let text = files.console.with_extension("src");
        std::fs::write(&text, console).unwrap();
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!(
            "cat {} > {}; exec sleep 60",
            text.display(),
            files.console.display()
        ));
        cmd
    }

    const GAVE_UP: &str = "Scanning virtio 0:1...\n** Invalid partition 1 **\n\
                           Couldn't find partition virtio 0:1\nNo ethernet found.\n=> ";

    #[test]
    fn broken_disk_passes_when_uboot_names_the_damage_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let files = ScenarioFiles::new(dir.path()).unwrap();
        let scenario = broken_disk_scenario(Duration::from_secs(20));
        let expected = DiskDamage::Truncated.expected_messages(PartitionTable::Gpt);
        let started = Instant::now();
        let verdict =
            run_broken_disk(&scenario, fake_uboot(&files, GAVE_UP), &files, expected).unwrap();
        assert_eq!(verdict, Verdict::Pass);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "U-Boot's prompt must end the scenario, not the timeout"
        );
    }

    #[test]
    fn broken_disk_fails_on_a_kernel_a_missing_message_or_no_prompt() {
        let dir = tempfile::tempdir().unwrap();
        // Fresh files per case, as the runner makes them per scenario.
        let files = |case: &str| ScenarioFiles::new(&dir.path().join(case)).unwrap();
        let scenario = broken_disk_scenario(Duration::from_secs(20));
        let expected = DiskDamage::Truncated.expected_messages(PartitionTable::Gpt);

        let booted = GAVE_UP.replace("No ethernet", "Starting kernel ...\nNo ethernet");
        let f = files("booted");
        match run_broken_disk(&scenario, fake_uboot(&f, &booted), &f, expected).unwrap() {
            Verdict::Fail(why) => {
                assert!(
                    why.contains("U-Boot started a kernel from a damaged disk"),
                    "{why}"
                );
            }
            other => panic!("a booted kernel must fail, got {other:?}"),
        }

        let silent = GAVE_UP.replace("** Invalid partition 1 **\n", "");
        let f = files("silent");
        match run_broken_disk(&scenario, fake_uboot(&f, &silent), &f, expected).unwrap() {
            Verdict::Fail(why) => {
                assert!(
                    why.contains("U-Boot stopped at its prompt, but the console lacks \"** Invalid partition 1 **\""),
                    "{why}"
                );
                assert!(why.contains("console tail"), "{why}");
            }
            other => panic!("a missing message must fail, got {other:?}"),
        }

        let hung = broken_disk_scenario(Duration::from_millis(600));
        let no_prompt = GAVE_UP.replace("=> ", "");
        let f = files("hung");
        match run_broken_disk(&hung, fake_uboot(&f, &no_prompt), &f, expected).unwrap() {
            Verdict::Fail(why) => {
                assert!(
                    why.contains("U-Boot did not reach its prompt within 0s"),
                    "{why}"
                );
            }
            other => panic!("no prompt must time out, got {other:?}"),
        }

        let f = files("exits");
        let mut exits = Command::new("sh");
        exits.arg("-c").arg(format!(
            "echo '** Invalid partition 1 **' > {}; exit 3",
            f.console.display()
        ));
        match run_broken_disk(&scenario, exits, &f, &expected[..1]).unwrap() {
            Verdict::Fail(why) => {
                assert!(
                    why.contains("QEMU exited with exit status: 3 before U-Boot gave up"),
                    "{why}"
                );
            }
            other => panic!("QEMU exiting early must fail, got {other:?}"),
        }
    }

    #[test]
    fn disk_damage_breaks_the_image_as_its_messages_say() {
        use crate::disk;
        let dir = tempfile::tempdir().unwrap();
        let layout = disk::Layout {
            table: PartitionTable::Gpt,
            boot_size_mib: 8,
            id: "t".into(),
        };
        let files = [
            disk::BootFile::new(disk::BOOT_ENV, disk::uenv("x").unwrap()),
            disk::BootFile::new(disk::BOOT_IMAGE, vec![7u8; 3 << 20]),
        ];
        let img = dir.path().join("fat.img");
        disk::write(&img, &layout, &files).unwrap();
        DiskDamage::ZeroedFat.apply(&img).unwrap();
        assert_eq!(
            disk::read_boot_file(&img, disk::BOOT_ENV).unwrap(),
            b"bootargs=x\n"
        );
        assert!(
            disk::read_boot_file(&img, disk::BOOT_IMAGE).map_or(true, |d| d != vec![7u8; 3 << 20])
        );

        let img = dir.path().join("cut.img");
        disk::write(&img, &layout, &files).unwrap();
        DiskDamage::Truncated.apply(&img).unwrap();
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 2 << 20);
        let err = disk::boot_partition(&img).unwrap_err().to_string();
        assert!(err.contains("past the end"), "{err}");

        // U-Boot checks a GPT against the disk size, not an MBR.
        let gpt = DiskDamage::Truncated.expected_messages(PartitionTable::Gpt);
        let mbr = DiskDamage::Truncated.expected_messages(PartitionTable::Mbr);
        assert!(gpt.contains(&"** Invalid partition 1 **"), "{gpt:?}");
        assert!(
            mbr.contains(&"** Unable to read file /cloister.img **"),
            "{mbr:?}"
        );
    }
}
