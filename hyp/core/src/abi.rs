//! The host ↔ hyp ABI, defined once. Everything else (the decoder in
//! [`crate::hypercall`], the host kernel's C header, the VMM) derives from
//! the constants and tables in this file.
//!
//! # Calling convention
//!
//! The host calls the hypervisor with `HVC #0` following SMCCC 1.1: function
//! ID in `w0`, arguments in `x1..x7`, results in `x0..x3`.
//!
//! Cloister's own calls are **fast calls, SMC64, owner 6 (vendor-specific
//! hypervisor service), function numbers `0x80..=0xBF`**, i.e. IDs
//! `0xC600_0080..=0xC600_00BF`. Owner 6 is the hypervisor's own service
//! space, so no firmware call can collide. Inside it, KVM's guest services use
//! numbers 0..=127 (`ARM_SMCCC_KVM_FUNC_*`, up to `FEATURES_2` = 127, at
//! `0x8600_00xx`/`0xC600_00xx`) and pKVM's host hypercalls use small numbers
//! from `0xC600_0000` (`KVM_HOST_SMCCC_ID(n)`); `0xFF00..` is SMCCC's query
//! range. `0x80..=0xBF` is clear of all three. `0xB0..=0xBF` holds debug and
//! test calls.
//!
//! - Every argument register a call does not use (up to `x7`) must be zero,
//!   or the call fails with [`ret::INVALID_PARAMETER`]: a later ABI minor
//!   version can then give them meaning without ambiguity. The standard
//!   SMCCC queries (`SMCCC_VERSION`, `SMCCC_ARCH_FEATURES`, the vendor-hyp
//!   UID and revision) are exempt, as in SMCCC: Linux's callers leave their
//!   unused registers undefined.
//! - `x0` must hold the ID with bits 63..32 clear; the SMCCC 1.3 SVE hint
//!   (bit 16) is ignored. Anything else is an unknown function.
//! - Results: `x0` is a status ([`ret`]); on success `x1..x3` carry results,
//!   on failure `x1` is an [`err`] detail code, `x2` the offending frame or
//!   address (or argument register number), `x3` extra detail. Registers a
//!   call does not define are returned as zero.
//!
//! # VMs (ABI 0.2)
//!
//! The host driver runs guests through ten calls, `0xC600_0085..=0xC600_008E`
//! (see [`hc`]): `VM_CREATE` → handle; `VCPU_CREATE`; memory with
//! `VM_DONATE` (protected VMs: the pages become the guest's) or
//! `VM_MAP_SHARED` / `VM_UNMAP_SHARED` (normal VMs: the pages stay the
//! host's); `VCPU_SET_REG` / `VCPU_GET_REG`; `VCPU_RUN`, which returns an
//! [`exit`] code; and two-phase teardown, `VM_TEARDOWN` (no vCPU runs
//! again) then `VM_RECLAIM` (every page back to the host, donated ones
//! zeroed, handle released). VM handles start at `0x1000`: 0 is never a
//! handle. The VM and vCPU table is `crate::vm`; the guest side of the ABI
//! (pKVM's, exactly) is `crate::guest_abi`.
//!
//! # Identification
//!
//! `VENDOR_HYP_CALL_UID` (`0x8600_ff01`) from the host answers
//! [`CLOISTER_UID`]; `VENDOR_HYP_REVISION` (`0x8600_ff03`) answers
//! [`ABI_VERSION`] (major in `x0`, minor in `x1`). Guests get KVM's UID
//! ([`KVM_UID`]) instead: the guest ABI is pKVM's, exactly.

use core::fmt;

/// SMCCC function ID bit 31: fast call.
pub const SMCCC_FAST_CALL: u32 = 1 << 31;
/// SMCCC function ID bit 30: SMC64/HVC64 calling convention.
pub const SMCCC_64: u32 = 1 << 30;
/// Shift of the 6-bit owning-entity number in a function ID.
pub const SMCCC_OWNER_SHIFT: u32 = 24;
/// Owning entity: Arm architecture calls.
pub const SMCCC_OWNER_ARCH: u32 = 0;
/// Owning entity: vendor-specific hypervisor service.
pub const SMCCC_OWNER_VENDOR_HYP: u32 = 6;
/// SMCCC 1.3 hint bit ("no live SVE state"), masked off before decoding.
pub const SMCCC_SVE_HINT: u32 = 1 << 16;
/// SMCCC version the hypervisor implements (1.1), as `SMCCC_VERSION` returns it.
pub const SMCCC_VERSION_1_1: u64 = 0x1_0001;

/// A fast-call function ID: owner and number, SMC32 or SMC64. (The `as`
/// casts in const fns here widen u16 to u32: `From` is not const.)
pub const fn fast_call_id(smc64: bool, owner: u32, number: u16) -> u32 {
    let conv = if smc64 { SMCCC_64 } else { 0 };
    SMCCC_FAST_CALL | conv | ((owner & 0x3f) << SMCCC_OWNER_SHIFT) | number as u32
}

/// Standard SMCCC function IDs the hypervisor answers for the host.
pub mod smccc {
    use super::{fast_call_id, SMCCC_OWNER_ARCH, SMCCC_OWNER_VENDOR_HYP};

    /// `SMCCC_VERSION`: returns the implemented SMCCC version in `x0`.
    pub const VERSION: u32 = fast_call_id(false, SMCCC_OWNER_ARCH, 0);
    /// `SMCCC_ARCH_FEATURES(fid)`: 0 if `fid` is implemented, else NOT_SUPPORTED.
    pub const ARCH_FEATURES: u32 = fast_call_id(false, SMCCC_OWNER_ARCH, 1);
    /// Vendor-hyp service `Call UID` query: the UID in `x0..x3`.
    pub const VENDOR_HYP_CALL_UID: u32 = fast_call_id(false, SMCCC_OWNER_VENDOR_HYP, 0xff01);
    /// Vendor-hyp service `Revision` query: major in `x0`, minor in `x1`.
    pub const VENDOR_HYP_REVISION: u32 = fast_call_id(false, SMCCC_OWNER_VENDOR_HYP, 0xff03);
}

/// First function number of Cloister's range.
pub const FUNC_NUM_FIRST: u16 = 0x80;
/// Last function number of Cloister's range.
pub const FUNC_NUM_LAST: u16 = 0xbf;
/// First function number reserved for debug and test calls.
pub const FUNC_NUM_DEBUG_FIRST: u16 = 0xb0;

const fn hc(number: u16) -> u32 {
    fast_call_id(true, SMCCC_OWNER_VENDOR_HYP, number)
}

/// Cloister host hypercall IDs.
pub mod hc {
    use super::hc;

    /// `GET_VERSION()` → `x1` = ABI major, `x2` = ABI minor, `x3` = the
    /// hypervisor's own version, [`HYP_VERSION`] packed by [`pack_version`].
    pub const GET_VERSION: u32 = hc(0x80);
    /// `HOST_SHARE_HYP(pfn)`: share one host page with the hypervisor.
    pub const HOST_SHARE_HYP: u32 = hc(0x81);
    /// `HOST_UNSHARE_HYP(pfn)`: end a `HOST_SHARE_HYP`.
    pub const HOST_UNSHARE_HYP: u32 = hc(0x82);
    /// `HOST_DONATE_HYP(pfn, count)`: give `count` pages to the hypervisor.
    pub const HOST_DONATE_HYP: u32 = hc(0x83);
    /// `HYP_DONATE_HOST(pfn, count)`: take back pages given with
    /// `HOST_DONATE_HYP` that the hypervisor has not put to use.
    pub const HYP_DONATE_HOST: u32 = hc(0x84);
    /// `VM_CREATE(kvm_type)` → `x1` = VM handle. `kvm_type` is
    /// `KVM_CREATE_VM`'s: 0 for a normal VM, [`super::vm_type::PROTECTED`]
    /// for a protected one; any other bit (an IPA-size field included) is
    /// `BAD_VM_TYPE`.
    pub const VM_CREATE: u32 = hc(0x85);
    /// `VCPU_CREATE(handle, vcpu, features)` → `x1` = the vCPU's MPIDR
    /// (affinity fields, as the guest's device tree must name it).
    /// `features` is `kvm_vcpu_init.features[0]`: only
    /// [`super::vcpu_feature::POWER_OFF`] and
    /// [`super::vcpu_feature::PSCI_0_2`] are accepted.
    pub const VCPU_CREATE: u32 = hc(0x86);
    /// `VM_DONATE(handle, pfn, ipa, count)`: give `count` host pages to a
    /// protected VM at `ipa..` (contents kept; the host loses access).
    pub const VM_DONATE: u32 = hc(0x87);
    /// `VM_MAP_SHARED(handle, pfn, ipa, count)`: lend `count` host pages
    /// to a normal VM at `ipa..` (the host keeps access; the memory stays
    /// the host's).
    pub const VM_MAP_SHARED: u32 = hc(0x88);
    /// `VM_UNMAP_SHARED(handle, ipa)`: take back one page lent with
    /// `VM_MAP_SHARED`.
    pub const VM_UNMAP_SHARED: u32 = hc(0x89);
    /// `VCPU_SET_REG(handle, vcpu, reg, value)`, `reg` from [`super::vcpu_reg`].
    /// Protected VMs: only `PC` and `X0`, and only before the vCPU first ran.
    pub const VCPU_SET_REG: u32 = hc(0x8a);
    /// `VCPU_GET_REG(handle, vcpu, reg)` → `x1` = value. Normal VMs only.
    pub const VCPU_GET_REG: u32 = hc(0x8b);
    /// `VCPU_RUN(handle, vcpu, flags, data, pending_lo, pending_hi)` →
    /// `x1` = why the vCPU stopped ([`super::exit`]), `x2`, `x3` =
    /// details. `flags` is [`super::run_flag`]s:
    /// [`super::run_flag::MMIO_COMPLETE`] finishes the MMIO access of the
    /// last exit (`data` = the value read, for a read); without it a
    /// pending MMIO access is executed again. `data` must be 0 unless a
    /// read is completed. `pending_lo` (`x5`) and `pending_hi` (`x6`) are
    /// masks of virtual INTIDs 0–63 and 64–127 to make pending (edge) on
    /// the vCPU first ([`super::vgic`], docs/interrupts.md).
    pub const VCPU_RUN: u32 = hc(0x8c);
    /// `VM_TEARDOWN(handle)`: first phase of teardown: no vCPU runs again.
    pub const VM_TEARDOWN: u32 = hc(0x8d);
    /// `VM_RECLAIM(handle)` → `x1` = pages returned: second phase: every
    /// page goes back to the host (donated pages zeroed), the VM's tables
    /// are freed and its handle is released.
    pub const VM_RECLAIM: u32 = hc(0x8e);
    /// `VM_RECLAIM_PAGE(handle, ipa)` → `x1` = the frame returned: takes
    /// one page back from a live protected VM (the host truncated the
    /// memory behind it). The guest loses the mapping and the TLBs are
    /// invalidated before the page is zeroed and given to the host; the
    /// guest's next access to the IPA is a memory fault.
    pub const VM_RECLAIM_PAGE: u32 = hc(0x8f);
    /// Debug: `PAGE_OWNER(pa)` → `x1` = owner, `x2` = VM handle,
    /// `x3` = host state | hyp state << 8.
    pub const PAGE_OWNER: u32 = hc(0xb0);
    /// Debug: `OWNERSHIP_DIGEST()` → `x1` = a 64-bit FNV-1a digest of the
    /// whole page database (owner, VM handle, host and hyp state of every
    /// page, in frame order), `x2` = pages not exclusively the host's,
    /// `x3` = live VMs. Equal digests before and after a refused call show
    /// it changed nothing.
    pub const OWNERSHIP_DIGEST: u32 = hc(0xb1);
    /// Debug: `VM_STATS(handle)` → `x1` = traps from the VM's vCPUs into
    /// the hyp, `x2` = how many of them ended `VCPU_RUN` (exits to the
    /// host), `x3` = the VM's pages shared with the host now (the page
    /// database's count). For `cargo xtask bench io`'s transitions per
    /// request and the e2e check that a guest shared only its DMA pools.
    pub const VM_STATS: u32 = hc(0xb2);
}

/// The hypervisor's release version (major, minor, patch): the crate
/// version, which the whole hyp shares.
pub const HYP_VERSION: (u16, u16, u16) = (
    parse_u16(env!("CARGO_PKG_VERSION_MAJOR")),
    parse_u16(env!("CARGO_PKG_VERSION_MINOR")),
    parse_u16(env!("CARGO_PKG_VERSION_PATCH")),
);

/// `major << 32 | minor << 16 | patch`, as `GET_VERSION` returns it in `x3`.
pub const fn pack_version(v: (u16, u16, u16)) -> u64 {
    (v.0 as u64) << 32 | (v.1 as u64) << 16 | v.2 as u64
}

const fn parse_u16(s: &str) -> u16 {
    let bytes = s.as_bytes();
    let mut value: u16 = 0;
    let mut i = 0;
    while i < bytes.len() {
        value = value * 10 + (bytes[i] - b'0') as u16;
        i += 1;
    }
    value
}

/// An ABI version: a major bump breaks callers, a minor bump adds calls.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AbiVersion {
    /// Incompatible changes.
    pub major: u16,
    /// Compatible additions.
    pub minor: u16,
}

/// The ABI this hypervisor implements.
pub const ABI_VERSION: AbiVersion = AbiVersion { major: 0, minor: 5 };

/// Cloister's vendor-hyp service UUID (random, version 4, generated once for
/// this project; never change it).
pub const CLOISTER_UUID: &str = "f5037967-45e8-43dd-99ea-18a3563694f7";

/// [`CLOISTER_UUID`] as `VENDOR_HYP_CALL_UID` returns it in `w0..w3`: each
/// register holds four UUID bytes, little-endian (the SMCCC convention, the
/// same way KVM's UID `28b46fb6-2ec5-11e9-...` becomes `0xb66fb428, ...`).
pub const CLOISTER_UID: [u32; 4] = [0x6779_03f5, 0xdd43_e845, 0xa318_ea99, 0xf794_3656];

/// KVM's vendor-hyp UID, which guests get (pKVM guest ABI), never the host.
pub const KVM_UID: [u32; 4] = [0xb66f_b428, 0xe911_c52e, 0x564b_caa9, 0x743a_004d];

/// Status codes returned in `x0`, as 64-bit two's complement.
pub mod ret {
    /// The call succeeded.
    pub const SUCCESS: u64 = 0;
    /// Unknown or unimplemented function (SMCCC).
    pub const NOT_SUPPORTED: u64 = (-1i64).cast_unsigned();
    /// The call is not needed (SMCCC).
    pub const NOT_REQUIRED: u64 = (-2i64).cast_unsigned();
    /// A malformed argument: out of range, unaligned, zero count, or a
    /// non-zero reserved register (SMCCC).
    pub const INVALID_PARAMETER: u64 = (-3i64).cast_unsigned();
    /// Cloister: the pages are not in the state the call needs (not owned by
    /// the caller, already shared, not donated...).
    pub const DENIED: u64 = (-4i64).cast_unsigned();
    /// Cloister: the hypervisor ran out of page-table memory; nothing changed.
    pub const NO_MEMORY: u64 = (-5i64).cast_unsigned();
}

/// Detail codes returned in `x1` next to a failure status.
pub mod err {
    /// A page count of zero.
    pub const ZERO_COUNT: u64 = 1;
    /// A frame (range) outside the memory the hypervisor manages.
    pub const OUT_OF_RANGE: u64 = 2;
    /// An address that must be page-aligned is not.
    pub const UNALIGNED: u64 = 3;
    /// An IPA range outside the stage-2 IPA space.
    pub const IPA_OUT_OF_RANGE: u64 = 4;
    /// The caller does not own the page (`x3` = its owner code).
    pub const NOT_OWNED: u64 = 5;
    /// A side is in the wrong state (`x3` = component << 8 | state).
    pub const BAD_STATE: u64 = 6;
    /// The hypervisor page was not donated by the host, or is in use.
    pub const NOT_DONATED: u64 = 7;
    /// The target IPA is already mapped.
    pub const IPA_MAPPED: u64 = 8;
    /// Nothing is mapped at the IPA.
    pub const IPA_NOT_MAPPED: u64 = 9;
    /// An MMIO range overlaps managed RAM.
    pub const OVERLAPS_RAM: u64 = 10;
    /// The hypervisor cannot reach the page's contents.
    pub const NO_ACCESS: u64 = 11;
    /// Out of page-table memory.
    pub const NO_MEMORY: u64 = 12;
    /// Internal misuse of the table code.
    pub const INTERNAL: u64 = 13;
    /// Unknown function ID.
    pub const UNKNOWN_FUNCTION: u64 = 14;
    /// A reserved argument register is non-zero (`x2` = its number).
    pub const RESERVED_ARG: u64 = 15;
    /// `VM_CREATE` with a type other than 0 or `vm_type::PROTECTED`
    /// (`x2` = the type).
    pub const BAD_VM_TYPE: u64 = 16;
    /// Every VM slot is in use.
    pub const VM_TABLE_FULL: u64 = 17;
    /// No VM has this handle (`x2` = the handle).
    pub const NO_SUCH_VM: u64 = 18;
    /// No vCPU with this index (`x2` = the index).
    pub const NO_SUCH_VCPU: u64 = 19;
    /// The vCPU already exists (`x2` = the index).
    pub const VCPU_EXISTS: u64 = 20;
    /// Unsupported vCPU feature bits (`x2` = the features).
    pub const BAD_VCPU_FEATURES: u64 = 21;
    /// The VM is being torn down (`x2` = the handle).
    pub const VM_DYING: u64 = 22;
    /// `VM_RECLAIM` before `VM_TEARDOWN` (`x2` = the handle).
    pub const VM_NOT_DYING: u64 = 23;
    /// The vCPU is running (`x2` = the index).
    pub const VCPU_BUSY: u64 = 24;
    /// The vCPU is powered off; it runs again after a PSCI CPU_ON
    /// (`x2` = the index).
    pub const VCPU_OFF: u64 = 25;
    /// Not for this kind of VM (`x2` = the VM's kind, [`super::vm_kind`]).
    pub const WRONG_VM_KIND: u64 = 26;
    /// The guest made the IPA an MMIO page (`x2` = the IPA).
    pub const IPA_GUARDED: u64 = 27;
    /// The host may not access this register now (`x2` = the register).
    pub const REG_DENIED: u64 = 28;
    /// No such register (`x2` = the register).
    pub const UNKNOWN_REG: u64 = 29;
    /// A value the register cannot hold (`x2` = the register, `x3` = the
    /// value).
    pub const BAD_REG_VALUE: u64 = 30;
    /// `VCPU_RUN` with `MMIO_COMPLETE` but no MMIO access pending, or with
    /// data for a write (`x2` = the vCPU).
    pub const NO_PENDING_MMIO: u64 = 31;
}

/// `VCPU_RUN` flag bits (`x3`).
pub mod run_flag {
    /// The host emulated the MMIO access of the last [`super::exit::MMIO`]
    /// exit: the hyp writes `data` (`x4`) to the register of a read and
    /// moves the vCPU past the instruction.
    pub const MMIO_COMPLETE: u64 = 1 << 0;
    /// Every flag bit defined in this ABI version.
    pub const ALL: u64 = MMIO_COMPLETE;
}

/// The guest's interrupt controller as the hyp sees it (docs/interrupts.md).
pub mod vgic {
    /// Interrupt IDs a guest has: SGIs 0–15, PPIs 16–31, SPIs 32–127.
    pub const NR_INTIDS: u32 = 128;
    /// The first SPI.
    pub const FIRST_SPI: u32 = 32;
    /// The virtual timer's PPI (PPI 11) as an INTID.
    pub const VTIMER_INTID: u32 = 27;
    /// The priority the hyp gives every interrupt it loads into a list
    /// register (Linux's `GICD_INT_DEF_PRI`).
    pub const LR_PRIORITY: u8 = 0xa0;
    /// [`super::exit::HALT`]'s `x2` when the guest's timer cannot fire.
    pub const NO_DEADLINE: u64 = u64::MAX;
}

/// `KVM_CREATE_VM` type values `VM_CREATE` accepts.
pub mod vm_type {
    /// A normal VM: the host keeps access to its memory.
    pub const NORMAL: u64 = 0;
    /// `KVM_VM_TYPE_ARM_PROTECTED` (bit 31): a protected VM.
    pub const PROTECTED: u64 = 1 << 31;
}

/// VM kind codes (`WRONG_VM_KIND` `x2`).
pub mod vm_kind {
    /// A normal VM.
    pub const NORMAL: u64 = 0;
    /// A protected VM.
    pub const PROTECTED: u64 = 1;
}

/// `VCPU_CREATE` feature bits: KVM's `KVM_ARM_VCPU_*` feature numbers as
/// bit masks of `kvm_vcpu_init.features[0]`.
pub mod vcpu_feature {
    /// `KVM_ARM_VCPU_POWER_OFF` (0): the vCPU starts powered off and waits
    /// for a PSCI CPU_ON.
    pub const POWER_OFF: u64 = 1 << 0;
    /// `KVM_ARM_VCPU_PSCI_0_2` (2): PSCI 0.2 or later (always provided).
    pub const PSCI_0_2: u64 = 1 << 2;
}

/// `VCPU_SET_REG` / `VCPU_GET_REG` register numbers.
pub mod vcpu_reg {
    /// `X0`; `Xn` is `X0 + n` for n in 0..=30.
    pub const X0: u64 = 0;
    /// `X30`, the last general register.
    pub const X30: u64 = 30;
    /// `SP_EL0` (KVM's `regs.sp`).
    pub const SP_EL0: u64 = 31;
    /// The PC the vCPU resumes at.
    pub const PC: u64 = 32;
    /// PSTATE (the SPSR the vCPU resumes with); mode EL0t, EL1t or EL1h.
    pub const PSTATE: u64 = 33;
    /// `SP_EL1`.
    pub const SP_EL1: u64 = 34;
    /// `ELR_EL1`.
    pub const ELR_EL1: u64 = 35;
    /// `SPSR_EL1`.
    pub const SPSR_EL1: u64 = 36;
}

/// Why `VCPU_RUN` returned (`x1`), with `x2`, `x3`.
pub mod exit {
    /// Nothing to report: an interrupt for the host arrived while the guest
    /// ran. Service it and run the vCPU again.
    pub const INTERRUPTED: u64 = 0;
    /// The guest shared a page with the host (pKVM MEM_SHARE): `x2` = IPA.
    /// The host turns it into `KVM_EXIT_HYPERCALL` (nr `0xc6000003`).
    pub const MEM_SHARE: u64 = 1;
    /// The guest unshared a page (pKVM MEM_UNSHARE): `x2` = IPA.
    /// `KVM_EXIT_HYPERCALL` (nr `0xc6000004`).
    pub const MEM_UNSHARE: u64 = 2;
    /// PSCI SYSTEM_OFF / SYSTEM_RESET / SYSTEM_RESET2:
    /// `KVM_EXIT_SYSTEM_EVENT` with `x2` = type (`KVM_SYSTEM_EVENT_*`),
    /// `x3` = flags (`data[0]`).
    pub const SYSTEM_EVENT: u64 = 3;
    /// PSCI CPU_ON succeeded: wake vCPU `x2` (MPIDR `x3`). The entry point
    /// and context ID stay in the hyp.
    pub const CPU_ON: u64 = 4;
    /// PSCI CPU_OFF: the vCPU is off until another vCPU turns it on.
    pub const CPU_OFF: u64 = 5;
    /// The vCPU waits for an interrupt (WFI, PSCI CPU_SUSPEND) and has
    /// none pending: run it again once one is (a kick) or when the virtual
    /// counter reaches `x2`, the guest timer's deadline ([`super::vgic::NO_DEADLINE`]
    /// if its timer cannot fire).
    pub const HALT: u64 = 6;
    /// The guest accessed a device the host emulates (`KVM_EXIT_MMIO`):
    /// `x1` = `MMIO | size << MMIO_SIZE_SHIFT | MMIO_WRITE if a write`
    /// (size in bytes: 1, 2, 4 or 8), `x2` = the IPA, `x3` = the value
    /// written (0 for a read). The next `VCPU_RUN` completes it
    /// ([`super::run_flag::MMIO_COMPLETE`]) or executes it again. A
    /// protected VM exits here only for pages it guarded (MMIO_GUARD).
    pub const MMIO: u64 = 7;
    /// The guest touched an IPA its stage-2 does not map and that is not
    /// MMIO it may show the host: `x2` = the IPA, `x3` =
    /// [`super::mem_fault`] flags. The host maps or donates memory there
    /// and runs the vCPU again; if it runs it without doing so, the guest
    /// gets a synchronous external abort (KVM's answer to an access outside
    /// every memslot).
    pub const MEM_FAULT: u64 = 8;
    /// SGIs the guest sent (`ICC_SGI1R_EL1`) are pending on other vCPUs of
    /// the VM: `x2` = mask of their indices. The host wakes each (or
    /// interrupts it if it is in the guest) and runs this vCPU again.
    pub const KICK: u64 = 9;
    /// The exit code is `x1 & CODE_MASK`; the bits above are its flags.
    pub const CODE_MASK: u64 = 0xff;
    /// Shift of the access size in bytes in an [`MMIO`] exit's `x1`.
    pub const MMIO_SIZE_SHIFT: u32 = 8;
    /// An [`MMIO`] exit for a write.
    pub const MMIO_WRITE: u64 = 1 << 16;
}

/// [`exit::MEM_FAULT`] flags (`x3`).
pub mod mem_fault {
    /// The access was a write.
    pub const WRITE: u64 = 1 << 0;
    /// The access was an instruction fetch.
    pub const EXEC: u64 = 1 << 1;
    /// The fault hit the guest's stage-1 table walk.
    pub const S1PTW: u64 = 1 << 2;
}

/// Owner codes (`PAGE_OWNER` `x1`, `NOT_OWNED` `x3`).
pub mod owner {
    /// The host kernel.
    pub const HOST: u64 = 1;
    /// The hypervisor.
    pub const HYP: u64 = 2;
    /// A guest; its handle is reported beside.
    pub const GUEST: u64 = 3;
}

/// Page-state codes (`PAGE_OWNER` `x3`, `BAD_STATE` `x3`).
pub mod state {
    /// Owned, not shared.
    pub const OWNED: u64 = 0;
    /// Owned and shared with another component.
    pub const SHARED_OWNED: u64 = 1;
    /// Borrowed from the owner.
    pub const SHARED_BORROWED: u64 = 2;
    /// No access.
    pub const NOPAGE: u64 = 3;
}

/// One row of the call table.
#[derive(Clone, Copy, Debug)]
pub struct CallDesc {
    /// Name; the C macro is `CLOISTER_HC_<name>`.
    pub name: &'static str,
    /// Function ID.
    pub id: u32,
    /// Argument registers `x1..`, in order.
    pub args: &'static [&'static str],
    /// Result registers `x1..` on success, in order.
    pub results: &'static [&'static str],
}

/// Every Cloister host hypercall. The decoder, `ARCH_FEATURES` and the C
/// header all come from this table.
pub const HOST_CALLS: &[CallDesc] = &[
    CallDesc {
        name: "GET_VERSION",
        id: hc::GET_VERSION,
        args: &[],
        results: &["abi_major", "abi_minor", "hyp_version"],
    },
    CallDesc {
        name: "HOST_SHARE_HYP",
        id: hc::HOST_SHARE_HYP,
        args: &["pfn"],
        results: &[],
    },
    CallDesc {
        name: "HOST_UNSHARE_HYP",
        id: hc::HOST_UNSHARE_HYP,
        args: &["pfn"],
        results: &[],
    },
    CallDesc {
        name: "HOST_DONATE_HYP",
        id: hc::HOST_DONATE_HYP,
        args: &["pfn", "count"],
        results: &[],
    },
    CallDesc {
        name: "HYP_DONATE_HOST",
        id: hc::HYP_DONATE_HOST,
        args: &["pfn", "count"],
        results: &[],
    },
    CallDesc {
        name: "VM_CREATE",
        id: hc::VM_CREATE,
        args: &["kvm_type"],
        results: &["handle"],
    },
    CallDesc {
        name: "VCPU_CREATE",
        id: hc::VCPU_CREATE,
        args: &["handle", "vcpu", "features"],
        results: &["mpidr"],
    },
    CallDesc {
        name: "VM_DONATE",
        id: hc::VM_DONATE,
        args: &["handle", "pfn", "ipa", "count"],
        results: &[],
    },
    CallDesc {
        name: "VM_MAP_SHARED",
        id: hc::VM_MAP_SHARED,
        args: &["handle", "pfn", "ipa", "count"],
        results: &[],
    },
    CallDesc {
        name: "VM_UNMAP_SHARED",
        id: hc::VM_UNMAP_SHARED,
        args: &["handle", "ipa"],
        results: &[],
    },
    CallDesc {
        name: "VCPU_SET_REG",
        id: hc::VCPU_SET_REG,
        args: &["handle", "vcpu", "reg", "value"],
        results: &[],
    },
    CallDesc {
        name: "VCPU_GET_REG",
        id: hc::VCPU_GET_REG,
        args: &["handle", "vcpu", "reg"],
        results: &["value"],
    },
    CallDesc {
        name: "VCPU_RUN",
        id: hc::VCPU_RUN,
        args: &[
            "handle",
            "vcpu",
            "flags",
            "data",
            "pending_lo",
            "pending_hi",
        ],
        results: &["exit", "info0", "info1"],
    },
    CallDesc {
        name: "VM_TEARDOWN",
        id: hc::VM_TEARDOWN,
        args: &["handle"],
        results: &[],
    },
    CallDesc {
        name: "VM_RECLAIM",
        id: hc::VM_RECLAIM,
        args: &["handle"],
        results: &["pages"],
    },
    CallDesc {
        name: "VM_RECLAIM_PAGE",
        id: hc::VM_RECLAIM_PAGE,
        args: &["handle", "ipa"],
        results: &["pfn"],
    },
    CallDesc {
        name: "PAGE_OWNER",
        id: hc::PAGE_OWNER,
        args: &["pa"],
        results: &["owner", "vm_handle", "host_state | hyp_state << 8"],
    },
    CallDesc {
        name: "OWNERSHIP_DIGEST",
        id: hc::OWNERSHIP_DIGEST,
        args: &[],
        results: &["digest", "pages_not_host", "live_vms"],
    },
    CallDesc {
        name: "VM_STATS",
        id: hc::VM_STATS,
        args: &["handle"],
        results: &["guest_traps", "host_exits", "shared_pages"],
    },
];

/// `x0` status codes, for the C header.
pub const RETURN_CODES: &[(&str, u64)] = &[
    ("SUCCESS", ret::SUCCESS),
    ("NOT_SUPPORTED", ret::NOT_SUPPORTED),
    ("NOT_REQUIRED", ret::NOT_REQUIRED),
    ("INVALID_PARAMETER", ret::INVALID_PARAMETER),
    ("DENIED", ret::DENIED),
    ("NO_MEMORY", ret::NO_MEMORY),
];

/// `x1` detail codes, for the C header.
pub const ERROR_DETAILS: &[(&str, u64)] = &[
    ("ZERO_COUNT", err::ZERO_COUNT),
    ("OUT_OF_RANGE", err::OUT_OF_RANGE),
    ("UNALIGNED", err::UNALIGNED),
    ("IPA_OUT_OF_RANGE", err::IPA_OUT_OF_RANGE),
    ("NOT_OWNED", err::NOT_OWNED),
    ("BAD_STATE", err::BAD_STATE),
    ("NOT_DONATED", err::NOT_DONATED),
    ("IPA_MAPPED", err::IPA_MAPPED),
    ("IPA_NOT_MAPPED", err::IPA_NOT_MAPPED),
    ("OVERLAPS_RAM", err::OVERLAPS_RAM),
    ("NO_ACCESS", err::NO_ACCESS),
    ("NO_MEMORY", err::NO_MEMORY),
    ("INTERNAL", err::INTERNAL),
    ("UNKNOWN_FUNCTION", err::UNKNOWN_FUNCTION),
    ("RESERVED_ARG", err::RESERVED_ARG),
    ("BAD_VM_TYPE", err::BAD_VM_TYPE),
    ("VM_TABLE_FULL", err::VM_TABLE_FULL),
    ("NO_SUCH_VM", err::NO_SUCH_VM),
    ("NO_SUCH_VCPU", err::NO_SUCH_VCPU),
    ("VCPU_EXISTS", err::VCPU_EXISTS),
    ("BAD_VCPU_FEATURES", err::BAD_VCPU_FEATURES),
    ("VM_DYING", err::VM_DYING),
    ("VM_NOT_DYING", err::VM_NOT_DYING),
    ("VCPU_BUSY", err::VCPU_BUSY),
    ("VCPU_OFF", err::VCPU_OFF),
    ("WRONG_VM_KIND", err::WRONG_VM_KIND),
    ("IPA_GUARDED", err::IPA_GUARDED),
    ("REG_DENIED", err::REG_DENIED),
    ("UNKNOWN_REG", err::UNKNOWN_REG),
    ("BAD_REG_VALUE", err::BAD_REG_VALUE),
    ("NO_PENDING_MMIO", err::NO_PENDING_MMIO),
];

/// Owner and state codes, for the C header.
pub const OWNER_AND_STATE_CODES: &[(&str, u64)] = &[
    ("OWNER_HOST", owner::HOST),
    ("OWNER_HYP", owner::HYP),
    ("OWNER_GUEST", owner::GUEST),
    ("STATE_OWNED", state::OWNED),
    ("STATE_SHARED_OWNED", state::SHARED_OWNED),
    ("STATE_SHARED_BORROWED", state::SHARED_BORROWED),
    ("STATE_NOPAGE", state::NOPAGE),
];

/// VM types, kinds and vCPU features, for the C header.
pub const VM_CODES: &[(&str, u64)] = &[
    ("VM_TYPE_NORMAL", vm_type::NORMAL),
    ("VM_TYPE_PROTECTED", vm_type::PROTECTED),
    ("VM_KIND_NORMAL", vm_kind::NORMAL),
    ("VM_KIND_PROTECTED", vm_kind::PROTECTED),
    ("VCPU_FEATURE_POWER_OFF", vcpu_feature::POWER_OFF),
    ("VCPU_FEATURE_PSCI_0_2", vcpu_feature::PSCI_0_2),
    ("RUN_MMIO_COMPLETE", run_flag::MMIO_COMPLETE),
    ("VGIC_NR_INTIDS", vgic::NR_INTIDS as u64),
    ("VGIC_FIRST_SPI", vgic::FIRST_SPI as u64),
    ("VGIC_VTIMER_INTID", vgic::VTIMER_INTID as u64),
    ("VGIC_NO_DEADLINE", vgic::NO_DEADLINE),
];

/// `VCPU_SET_REG` / `VCPU_GET_REG` register numbers, for the C header.
pub const VCPU_REG_CODES: &[(&str, u64)] = &[
    ("X0", vcpu_reg::X0),
    ("X30", vcpu_reg::X30),
    ("SP_EL0", vcpu_reg::SP_EL0),
    ("PC", vcpu_reg::PC),
    ("PSTATE", vcpu_reg::PSTATE),
    ("SP_EL1", vcpu_reg::SP_EL1),
    ("ELR_EL1", vcpu_reg::ELR_EL1),
    ("SPSR_EL1", vcpu_reg::SPSR_EL1),
];

/// `VCPU_RUN` exit codes, for the C header.
pub const EXIT_CODES: &[(&str, u64)] = &[
    ("INTERRUPTED", exit::INTERRUPTED),
    ("MEM_SHARE", exit::MEM_SHARE),
    ("MEM_UNSHARE", exit::MEM_UNSHARE),
    ("SYSTEM_EVENT", exit::SYSTEM_EVENT),
    ("CPU_ON", exit::CPU_ON),
    ("CPU_OFF", exit::CPU_OFF),
    ("HALT", exit::HALT),
    ("MMIO", exit::MMIO),
    ("MEM_FAULT", exit::MEM_FAULT),
    ("KICK", exit::KICK),
    ("CODE_MASK", exit::CODE_MASK),
    ("MMIO_SIZE_SHIFT", exit::MMIO_SIZE_SHIFT as u64),
    ("MMIO_WRITE", exit::MMIO_WRITE),
    ("MEM_FAULT_WRITE", mem_fault::WRITE),
    ("MEM_FAULT_EXEC", mem_fault::EXEC),
    ("MEM_FAULT_S1PTW", mem_fault::S1PTW),
];

/// Whether `id` is a well-formed Cloister host call: fast, SMC64, vendor hyp,
/// bits 23..16 clear, number in `0x80..=0xBF`.
pub const fn is_cloister_call_id(id: u32) -> bool {
    let number = id & 0xffff;
    id & SMCCC_FAST_CALL != 0
        && id & SMCCC_64 != 0
        && (id >> SMCCC_OWNER_SHIFT) & 0x3f == SMCCC_OWNER_VENDOR_HYP
        && (id >> 16) & 0xff == 0
        && number >= FUNC_NUM_FIRST as u32
        && number <= FUNC_NUM_LAST as u32
}

/// Compile-time check of [`HOST_CALLS`]: well-formed, unique IDs; at most
/// seven arguments (`x1..x7`) and three results (`x1..x3`).
const fn host_calls_are_well_formed(calls: &[CallDesc]) -> bool {
    let mut i = 0;
    while i < calls.len() {
        let c = &calls[i];
        if !is_cloister_call_id(c.id) || c.args.len() > 7 || c.results.len() > 3 {
            return false;
        }
        let mut j = i + 1;
        while j < calls.len() {
            if calls[j].id == c.id {
                return false;
            }
            j += 1;
        }
        i += 1;
    }
    true
}

const _: () = assert!(host_calls_are_well_formed(HOST_CALLS));
const _: () = assert!(hc::GET_VERSION == 0xc600_0080);
const _: () = assert!(hc::PAGE_OWNER == 0xc600_00b0);
const _: () = assert!(hc::VM_CREATE == 0xc600_0085);
const _: () = assert!(hc::VM_RECLAIM == 0xc600_008e);
const _: () = assert!(vm_type::PROTECTED == 0x8000_0000);
const _: () = assert!(smccc::VERSION == 0x8000_0000);
const _: () = assert!(smccc::ARCH_FEATURES == 0x8000_0001);
const _: () = assert!(smccc::VENDOR_HYP_CALL_UID == 0x8600_ff01);
const _: () = assert!(smccc::VENDOR_HYP_REVISION == 0x8600_ff03);
const _: () = assert!(ret::INVALID_PARAMETER == 0xffff_ffff_ffff_fffd);
const _: () = assert!(ret::NO_MEMORY == 0xffff_ffff_ffff_fffb);
const _: () = assert!(
    CLOISTER_UID[0] != KVM_UID[0]
        && CLOISTER_UID[1] != KVM_UID[1]
        && CLOISTER_UID[2] != KVM_UID[2]
        && CLOISTER_UID[3] != KVM_UID[3]
);

/// The UID registers for a UUID string (`8-4-4-4-12` hex digits), or `None`
/// if it is malformed.
pub fn uid_words(uuid: &str) -> Option<[u32; 4]> {
    let mut bytes = [0u8; 16];
    let mut n = 0;
    let mut pending: Option<u8> = None;
    for (i, c) in uuid.chars().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != '-' {
                return None;
            }
            continue;
        }
        let digit = u8::try_from(c.to_digit(16)?).ok()?;
        match pending.take() {
            None => pending = Some(digit),
            Some(high) => {
                *bytes.get_mut(n)? = high << 4 | digit;
                n += 1;
            }
        }
    }
    if n != 16 || pending.is_some() || uuid.len() != 36 {
        return None;
    }
    let mut words = [0u32; 4];
    for (w, chunk) in words.iter_mut().zip(bytes.chunks_exact(4)) {
        *w = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    Some(words)
}

fn write_define(w: &mut dyn fmt::Write, prefix: &str, name: &str, value: u64) -> fmt::Result {
    let signed = value.cast_signed();
    if signed < 0 {
        writeln!(w, "#define {prefix}{name} ({signed}L)")
    } else {
        writeln!(w, "#define {prefix}{name} {value:#x}")
    }
}

/// Writes the C header for the host kernel (`cloister_abi.h`).
///
/// # Errors
/// Only those of `w`.
pub fn write_c_header(w: &mut dyn fmt::Write) -> fmt::Result {
    writeln!(w, "/* SPDX-License-Identifier: MIT OR Apache-2.0 */")?;
    writeln!(w, "/*")?;
    writeln!(w, " * Cloister host <-> hypervisor ABI.")?;
    writeln!(
        w,
        " * Generated from hyp/core/src/abi.rs; do not edit by hand."
    )?;
    writeln!(w, " */")?;
    writeln!(w, "#ifndef CLOISTER_ABI_H")?;
    writeln!(w, "#define CLOISTER_ABI_H")?;
    writeln!(w)?;
    writeln!(
        w,
        "#define CLOISTER_ABI_VERSION_MAJOR {}",
        ABI_VERSION.major
    )?;
    writeln!(
        w,
        "#define CLOISTER_ABI_VERSION_MINOR {}",
        ABI_VERSION.minor
    )?;
    writeln!(w, "/* UUID {CLOISTER_UUID} */")?;
    for (i, word) in CLOISTER_UID.iter().enumerate() {
        writeln!(w, "#define CLOISTER_UID_REG_{i} {word:#010x}U")?;
    }
    writeln!(w)?;
    writeln!(
        w,
        "/* Function IDs: HVC #0, SMCCC 1.1; unused x1..x7 must be zero. */"
    )?;
    for call in HOST_CALLS {
        write!(w, "/* {}(", call.name)?;
        write_list(w, call.args)?;
        write!(w, ") -> ")?;
        write_list(w, call.results)?;
        writeln!(w, " */")?;
        writeln!(w, "#define CLOISTER_HC_{} {:#010x}U", call.name, call.id)?;
    }
    writeln!(w)?;
    writeln!(w, "/* x0: status */")?;
    for (name, value) in RETURN_CODES {
        write_define(w, "CLOISTER_RET_", name, *value)?;
    }
    writeln!(w)?;
    writeln!(w, "/* x1 after a failure: detail */")?;
    for (name, value) in ERROR_DETAILS {
        write_define(w, "CLOISTER_ERR_", name, *value)?;
    }
    writeln!(w)?;
    writeln!(w, "/* PAGE_OWNER and error details */")?;
    for (name, value) in OWNER_AND_STATE_CODES {
        write_define(w, "CLOISTER_", name, *value)?;
    }
    writeln!(w)?;
    writeln!(
        w,
        "/* VM_CREATE types, VM kinds, VCPU_CREATE features, VCPU_RUN flags */"
    )?;
    for (name, value) in VM_CODES {
        write_define(w, "CLOISTER_", name, *value)?;
    }
    writeln!(w)?;
    writeln!(
        w,
        "/* VCPU_SET_REG / VCPU_GET_REG registers (Xn = X0 + n) */"
    )?;
    for (name, value) in VCPU_REG_CODES {
        write_define(w, "CLOISTER_REG_", name, *value)?;
    }
    writeln!(w)?;
    writeln!(w, "/* VCPU_RUN: x1 = exit, x2/x3 = details */")?;
    for (name, value) in EXIT_CODES {
        write_define(w, "CLOISTER_EXIT_", name, *value)?;
    }
    writeln!(w)?;
    writeln!(w, "#endif /* CLOISTER_ABI_H */")
}

/// Writes `a, b, c`, or `-` for an empty list.
fn write_list(w: &mut dyn fmt::Write, items: &[&str]) -> fmt::Result {
    if items.is_empty() {
        return w.write_str("-");
    }
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            w.write_str(", ")?;
        }
        w.write_str(item)?;
    }
    Ok(())
}

/// The C header as a string (for build tools; needs the `alloc` feature).
#[cfg(any(test, feature = "alloc"))]
pub fn c_header() -> alloc::string::String {
    let mut out = alloc::string::String::new();
    // Writing to a String cannot fail.
    let _ = write_c_header(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_matches_uuid_and_is_not_kvm() {
        assert_eq!(uid_words(CLOISTER_UUID), Some(CLOISTER_UID));
        assert_eq!(
            uid_words("28b46fb6-2ec5-11e9-a9ca-4b564d003a74"),
            Some(KVM_UID)
        );
        assert_ne!(CLOISTER_UID, KVM_UID);
        // Version 4 (random), RFC 4122 variant.
        assert_eq!(CLOISTER_UUID.as_bytes()[14], b'4');
        assert!(matches!(
            CLOISTER_UUID.as_bytes()[19],
            b'8' | b'9' | b'a' | b'b'
        ));
        for bad in [
            "",
            "f5037967-45e8-43dd-99ea-18a3563694f",
            "f5037967x45e8-43dd-99ea-18a3563694f7",
        ] {
            assert_eq!(uid_words(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ids_layout() {
        for call in HOST_CALLS {
            assert!(is_cloister_call_id(call.id), "{}", call.name);
            assert_eq!(call.id & 0xffff_ff00, 0xc600_0000, "{}", call.name);
            let number = call.id & 0xff;
            let debug = number >= u32::from(FUNC_NUM_DEBUG_FIRST);
            assert_eq!(
                debug,
                matches!(call.name, "PAGE_OWNER" | "OWNERSHIP_DIGEST" | "VM_STATS"),
                "{}",
                call.name
            );
        }
        // Neither KVM's guest services (0..=127) nor pKVM's host calls.
        assert!(!is_cloister_call_id(0xc600_0003));
        assert!(!is_cloister_call_id(0xc600_007f));
        assert!(!is_cloister_call_id(0x8600_0080), "SMC32");
        assert!(!is_cloister_call_id(0x4600_0080), "yielding");
        assert!(!is_cloister_call_id(0xc601_0080), "bits 23..16");
        assert!(!is_cloister_call_id(0xc500_0080), "owner");
        assert!(!is_cloister_call_id(0xc600_00c0), "past the range");
        assert_eq!(SMCCC_SVE_HINT, 0x1_0000);
    }

    #[test]
    fn return_codes_are_twos_complement() {
        let signed: Vec<i64> = RETURN_CODES.iter().map(|(_, v)| v.cast_signed()).collect();
        assert_eq!(signed, [0, -1, -2, -3, -4, -5]);
        let mut details: Vec<u64> = ERROR_DETAILS.iter().map(|(_, v)| *v).collect();
        details.dedup();
        assert_eq!(details, (1..=31).collect::<Vec<_>>());
    }

    #[test]
    fn c_header_lists_every_constant() {
        let h = c_header();
        assert!(h.starts_with("/* SPDX-License-Identifier: MIT OR Apache-2.0 */\n"));
        assert!(h.ends_with("#endif /* CLOISTER_ABI_H */\n"));
        for call in HOST_CALLS {
            let line = format!("#define CLOISTER_HC_{} {:#010x}U\n", call.name, call.id);
            assert!(h.contains(&line), "missing {line}");
        }
        assert!(h.contains("#define CLOISTER_HC_HOST_DONATE_HYP 0xc6000083U\n"));
        assert!(h.contains("/* HOST_DONATE_HYP(pfn, count) -> - */\n"));
        assert!(h.contains("/* GET_VERSION(-) -> abi_major, abi_minor, hyp_version */\n"));
        assert!(h.contains("#define CLOISTER_RET_SUCCESS 0x0\n"));
        assert!(h.contains("#define CLOISTER_RET_INVALID_PARAMETER (-3L)\n"));
        assert!(h.contains("#define CLOISTER_ERR_RESERVED_ARG 0xf\n"));
        assert!(h.contains("#define CLOISTER_UID_REG_0 0x677903f5U\n"));
        assert!(h.contains("#define CLOISTER_ABI_VERSION_MAJOR 0\n"));
        assert!(h.contains("#define CLOISTER_STATE_NOPAGE 0x3\n"));
        assert!(h.contains("#define CLOISTER_ABI_VERSION_MINOR 5\n"));
        assert!(h.contains("#define CLOISTER_HC_VCPU_RUN 0xc600008cU\n"));
        assert!(h.contains("/* VM_DONATE(handle, pfn, ipa, count) -> - */\n"));
        assert!(h.contains("#define CLOISTER_VM_TYPE_PROTECTED 0x80000000\n"));
        assert!(h.contains("#define CLOISTER_REG_PC 0x20\n"));
        assert!(h.contains("#define CLOISTER_EXIT_MEM_SHARE 0x1\n"));
        assert!(h.contains("#define CLOISTER_ERR_BAD_REG_VALUE 0x1e\n"));
        let defines = h.lines().filter(|l| l.starts_with("#define ")).count();
        let expected = 1
            + 2
            + 4
            + HOST_CALLS.len()
            + RETURN_CODES.len()
            + ERROR_DETAILS.len()
            + OWNER_AND_STATE_CODES.len()
            + VM_CODES.len()
            + VCPU_REG_CODES.len()
            + EXIT_CODES.len();
        assert_eq!(defines, expected);
        // Every #define name is unique.
        let mut names: Vec<&str> = h
            .lines()
            .filter_map(|l| l.strip_prefix("#define "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n);
    }
}
