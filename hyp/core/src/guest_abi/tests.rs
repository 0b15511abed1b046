//! Unit tests: every call of the table in the module docs, decoded and
//! handled, for both kinds of VM; the MMIO rule and the abort classifier.

use super::*;
use crate::hal::FakeHal;
use crate::mem_protect::{MemProtect, PageState, VmHandle};
use crate::test_utils::{self as tu, pfn, snapshot, HOST_FIRST};
use crate::vm::{VmTable, HANDLE_OFFSET};

const RAM: u64 = 0x8000_0000;
const MMIO: u64 = 0x0900_0000;
const INVALID_PARAMETER: [u64; 4] = [ret::INVALID_PARAMETER, 0, 0, 0];

fn regs(x0: u32, args: &[u64]) -> [u64; 8] {
    let mut r = [0; 8];
    r[0] = u64::from(x0);
    r[1..=args.len()].copy_from_slice(args);
    r
}

fn decode(x0: u32, args: &[u64], kind: VmKind) -> Result<GuestCall, GuestCallError> {
    decode_guest_call(&regs(x0, args), kind)
}

#[test]
fn ids_are_linux_6_12s() {
    // include/linux/arm-smccc.h, include/uapi/linux/psci.h.
    assert_eq!(
        [
            kvm::FEATURES,
            kvm::PTP,
            kvm::HYP_MEMINFO,
            kvm::MEM_SHARE,
            kvm::MEM_UNSHARE,
            kvm::MMIO_GUARD
        ],
        [
            0x8600_0000,
            0x8600_0001,
            0xc600_0002,
            0xc600_0003,
            0xc600_0004,
            0xc600_0007
        ]
    );
    assert_eq!(
        [
            smccc::VERSION,
            smccc::ARCH_FEATURES,
            smccc::VENDOR_HYP_CALL_UID
        ],
        [0x8000_0000, 0x8000_0001, 0x8600_ff01]
    );
    assert_eq!(
        [
            psci::CPU_ON,
            psci::CPU_ON_64,
            psci::FEATURES,
            psci::SYSTEM_RESET2_64
        ],
        [0x8400_0003, 0xc400_0003, 0x8400_000a, 0xc400_0012]
    );
    assert_eq!(PROTECTED_VM_FEATURES, 0b1001_1101);
    assert_eq!(NORMAL_VM_FEATURES, 1);
    assert_eq!(HYP_MEMINFO_GRANULE, 4096);
    assert_eq!(
        abi::KVM_UID,
        [0xb66f_b428, 0xe911_c52e, 0x564b_caa9, 0x743a_004d]
    );
}

#[test]
fn decodes_the_smccc_and_kvm_calls() {
    for kind in [VmKind::Normal, VmKind::Protected] {
        let junk = [u64::MAX; 7];
        assert_eq!(
            decode(smccc::VERSION, &junk, kind),
            Ok(GuestCall::SmcccVersion)
        );
        assert_eq!(
            decode(smccc::VENDOR_HYP_CALL_UID, &junk, kind),
            Ok(GuestCall::VendorHypCallUid)
        );
        assert_eq!(
            decode(kvm::FEATURES, &junk, kind),
            Ok(GuestCall::KvmFeatures)
        );
        assert_eq!(
            decode(smccc::ARCH_FEATURES, &[0xffff_ffff_8000_8000], kind),
            Ok(GuestCall::SmcccArchFeatures {
                fid: SMCCC_ARCH_WORKAROUND_1
            })
        );
        for fid in [
            kvm::PTP,
            0x8600_0002,
            0xc600_0005,
            0xc600_007f,
            0x8400_000e,
            0xc600_0080,
        ] {
            assert_eq!(
                decode(fid, &[], kind),
                Err(GuestCallError::NotSupported { fid })
            );
        }
        // 6.12 KVM does not strip the SMCCC 1.3 SVE hint: unknown function.
        let hinted = smccc::VERSION | abi::SMCCC_SVE_HINT;
        assert_eq!(
            decode(hinted, &[], kind),
            Err(GuestCallError::NotSupported { fid: hinted })
        );
    }
    // The pKVM calls exist for protected VMs only.
    let p = VmKind::Protected;
    for fid in [
        kvm::HYP_MEMINFO,
        kvm::MEM_SHARE,
        kvm::MEM_UNSHARE,
        kvm::MMIO_GUARD,
    ] {
        assert_eq!(
            decode(fid, &[RAM], VmKind::Normal),
            Err(GuestCallError::NotSupported { fid })
        );
    }
    assert_eq!(decode(kvm::HYP_MEMINFO, &[], p), Ok(GuestCall::HypMeminfo));
    for reg in 1..=3u8 {
        let mut args = [0; 3];
        args[usize::from(reg) - 1] = 1;
        assert_eq!(
            decode(kvm::HYP_MEMINFO, &args, p),
            Err(GuestCallError::ReservedArgNonZero {
                fid: kvm::HYP_MEMINFO,
                reg
            })
        );
    }
    let ipa = Ipa::new(RAM + 0x1000);
    assert_eq!(
        decode(kvm::MEM_SHARE, &[ipa.raw()], p),
        Ok(GuestCall::MemShare { ipa })
    );
    assert_eq!(
        decode(kvm::MEM_UNSHARE, &[ipa.raw()], p),
        Ok(GuestCall::MemUnshare { ipa })
    );
    assert_eq!(
        decode(kvm::MMIO_GUARD, &[ipa.raw()], p),
        Ok(GuestCall::MmioGuard { ipa })
    );
    for fid in [kvm::MEM_SHARE, kvm::MEM_UNSHARE, kvm::MMIO_GUARD] {
        for (reg, args) in [(2, [RAM, 1, 0]), (3, [RAM, 0, 1])] {
            assert_eq!(
                decode(fid, &args, p),
                Err(GuestCallError::ReservedArgNonZero { fid, reg })
            );
        }
        // x4..x7 and the upper half of x0 are not looked at.
        let mut r = regs(fid, &[RAM, 0, 0, 9, 9, 9, 9]);
        r[0] |= 0xffff_ffff << 32;
        assert_eq!(decode_guest_call(&r, p), decode(fid, &[RAM], p), "{fid:#x}");
    }
    assert_eq!(
        GuestCallError::ReservedArgNonZero { fid: 0, reg: 2 }.to_regs(),
        INVALID_PARAMETER
    );
    assert_eq!(
        GuestCallError::NotSupported { fid: 0 }.to_regs(),
        [ret::NOT_SUPPORTED, 0, 0, 0]
    );
}

#[test]
fn decodes_psci_with_32_bit_narrowing_and_range_checks() {
    let k = VmKind::Normal;
    let invalid = |fid| Err(GuestCallError::PsciInvalidParams { fid });
    assert_eq!(decode(psci::VERSION, &[], k), Ok(GuestCall::PsciVersion));
    assert_eq!(
        decode(psci::FEATURES, &[1 << 40 | u64::from(psci::CPU_ON)], k),
        Ok(GuestCall::PsciFeatures { fid: psci::CPU_ON })
    );
    assert_eq!(
        decode(psci::CPU_SUSPEND_64, &[1, 2, 3], k),
        Ok(GuestCall::CpuSuspend)
    );
    assert_eq!(decode(psci::CPU_OFF, &[], k), Ok(GuestCall::CpuOff));
    let high = 1u64 << 40;
    assert_eq!(
        decode(psci::CPU_ON, &[high | 1, high | 0x8000, high | 7], k),
        Ok(GuestCall::CpuOn {
            target: 1,
            entry: 0x8000,
            context_id: 7
        })
    );
    assert_eq!(
        decode(psci::CPU_ON_64, &[high | 1, 0, 0], k),
        invalid(psci::CPU_ON_64)
    );
    assert_eq!(
        decode(psci::CPU_ON_64, &[0xff_0000_0001, high, high], k),
        Ok(GuestCall::CpuOn {
            target: 0xff_0000_0001,
            entry: high,
            context_id: high
        }),
        "Aff3 is an affinity field"
    );
    assert_eq!(
        decode(psci::AFFINITY_INFO, &[high | 2, high | 1], k),
        Ok(GuestCall::AffinityInfo {
            target: 2,
            lowest_level: 1
        })
    );
    assert_eq!(
        decode(psci::AFFINITY_INFO_64, &[2, 4], k),
        invalid(psci::AFFINITY_INFO_64)
    );
    assert_eq!(
        decode(psci::AFFINITY_INFO_64, &[1 << 31, 0], k),
        invalid(psci::AFFINITY_INFO_64)
    );
    assert_eq!(
        decode(psci::MIGRATE_INFO_TYPE, &[], k),
        Ok(GuestCall::MigrateInfoType)
    );
    assert_eq!(decode(psci::SYSTEM_OFF, &[], k), Ok(GuestCall::SystemOff));
    assert_eq!(
        decode(psci::SYSTEM_RESET, &[], k),
        Ok(GuestCall::SystemReset)
    );
    for reset_type in [0, 0x8000_0000, 0xffff_ffff] {
        assert_eq!(
            decode(
                psci::SYSTEM_RESET2_64,
                &[high | u64::from(reset_type), high],
                k
            ),
            Ok(GuestCall::SystemReset2 {
                reset_type,
                cookie: high
            })
        );
    }
    assert_eq!(
        decode(psci::SYSTEM_RESET2, &[0, high | 5], k),
        Ok(GuestCall::SystemReset2 {
            reset_type: 0,
            cookie: 5
        })
    );
    for bad in [1, 0x7fff_ffff] {
        assert_eq!(
            decode(psci::SYSTEM_RESET2, &[bad], k),
            invalid(psci::SYSTEM_RESET2)
        );
    }
    assert_eq!(
        GuestCallError::PsciInvalidParams { fid: 0 }.to_regs(),
        [psci::RET_INVALID_PARAMS, 0, 0, 0]
    );
}

/// A page database, a protected VM (3 vCPUs, 8 donated pages at `RAM`) and
/// a normal VM (2 vCPUs, 4 lent pages at `RAM`).
struct World<'m> {
    mp: MemProtect<'m>,
    vms: VmTable,
    p: VmHandle,
    n: VmHandle,
}

fn world<'m>(metas: &'m mut [crate::mem_protect::PageMeta], hal: &mut FakeHal<'_>) -> World<'m> {
    let mut mp = tu::mem_protect(metas, hal);
    let mut vms = VmTable::new();
    let (Ok(p), Ok(n)) = (
        vms.create_vm(VmKind::Protected, hal),
        vms.create_vm(VmKind::Normal, hal),
    ) else {
        panic!("create")
    };
    let off = abi::vcpu_feature::POWER_OFF;
    for (h, i, f) in [(p, 0, 0), (p, 1, off), (p, 2, off), (n, 0, 0), (n, 1, off)] {
        assert_eq!(vms.create_vcpu(h, i, f), Ok(i));
    }
    let ram = Ipa::new(RAM);
    assert_eq!(vms.donate(&mut mp, p, pfn(HOST_FIRST), ram, 8, hal), Ok(()));
    assert_eq!(
        vms.map_shared(&mut mp, n, pfn(HOST_FIRST + 8), ram, 4, hal),
        Ok(())
    );
    World { mp, vms, p, n }
}

impl World<'_> {
    fn call(
        &mut self,
        h: VmHandle,
        caller: usize,
        x0: u32,
        args: &[u64],
        hal: &mut FakeHal<'_>,
    ) -> GuestOutcome {
        let Some(vm) = self.vms.get_mut(h) else {
            panic!("no VM")
        };
        handle_guest_hvc(&regs(x0, args), caller, &mut self.mp, vm, hal)
    }

    fn power(&self, h: VmHandle, i: usize) -> Option<PowerState> {
        self.vms.get(h)?.vcpu(i).map(|v| v.power())
    }

    fn finish(mut self, hal: &mut FakeHal<'_>) {
        for h in [self.p, self.n] {
            assert_eq!(self.vms.start_teardown(h), Ok(()));
            assert_eq!(
                self.vms.finalize_teardown(&mut self.mp, h, hal).map(|_| ()),
                Ok(())
            );
        }
        self.mp.destroy(hal);
        assert_eq!(hal.live_pages(), 0);
    }
}

#[test]
fn discovery_answers_as_mainline() {
    let mut mem = tu::memory();
    let mut metas = tu::metas();
    let mut hal = tu::hal(&mut mem);
    let mut w = world(&mut metas, &mut hal);
    let (p, n) = (w.p, w.n);
    for h in [p, n] {
        assert_eq!(
            w.call(h, 0, smccc::VERSION, &[], &mut hal),
            GuestOutcome::Return([0x1_0001, 0, 0, 0])
        );
        assert_eq!(
            w.call(h, 0, smccc::VENDOR_HYP_CALL_UID, &[], &mut hal),
            GuestOutcome::Return([0xb66f_b428, 0xe911_c52e, 0x564b_caa9, 0x743a_004d])
        );
        for fid in [SMCCC_ARCH_WORKAROUND_1, smccc::VERSION, 0x8000_7fff] {
            assert_eq!(
                w.call(h, 0, smccc::ARCH_FEATURES, &[u64::from(fid)], &mut hal),
                GuestOutcome::Return([ret::NOT_SUPPORTED, 0, 0, 0])
            );
        }
        assert_eq!(
            w.call(h, 0, psci::VERSION, &[], &mut hal),
            GuestOutcome::Return([0x1_0001, 0, 0, 0])
        );
        assert_eq!(
            w.call(h, 0, psci::MIGRATE_INFO_TYPE, &[], &mut hal),
            GuestOutcome::Return([2, 0, 0, 0])
        );
        for (fid, supported) in [
            (smccc::VERSION, true),
            (psci::CPU_ON_64, true),
            (psci::SYSTEM_RESET2, true),
            (psci::CPU_SUSPEND, true),
            (psci::FEATURES, true),
            (0x8400_000e, false), // SYSTEM_SUSPEND
            (0x8400_0005, false), // MIGRATE
            (kvm::MEM_SHARE, false),
        ] {
            let x0 = if supported {
                0
            } else {
                psci::RET_NOT_SUPPORTED
            };
            assert_eq!(
                w.call(h, 0, psci::FEATURES, &[u64::from(fid)], &mut hal),
                GuestOutcome::Return([x0, 0, 0, 0]),
                "{fid:#x}"
            );
        }
    }
    assert_eq!(
        w.call(p, 0, kvm::FEATURES, &[], &mut hal),
        GuestOutcome::Return([0x9d, 0, 0, 0])
    );
    assert_eq!(
        w.call(n, 0, kvm::FEATURES, &[], &mut hal),
        GuestOutcome::Return([1, 0, 0, 0])
    );
    assert_eq!(
        w.call(p, 0, kvm::HYP_MEMINFO, &[], &mut hal),
        GuestOutcome::Return([4096, 0, 0, 0])
    );
    assert_eq!(
        w.call(p, 0, kvm::HYP_MEMINFO, &[0, 0, 1], &mut hal),
        GuestOutcome::Return(INVALID_PARAMETER)
    );
    assert_eq!(
        w.call(n, 0, kvm::HYP_MEMINFO, &[], &mut hal),
        GuestOutcome::Return([ret::NOT_SUPPORTED, 0, 0, 0])
    );
    w.finish(&mut hal);
}

#[test]
fn mem_share_and_unshare_go_through_mem_protect_and_tell_the_host() {
    let mut mem = tu::memory();
    let mut metas = tu::metas();
    let mut hal = tu::hal(&mut mem);
    let mut w = world(&mut metas, &mut hal);
    let p = w.p;
    let ipa = Ipa::new(RAM + 0x2000);
    assert_eq!(
        w.call(p, 1, kvm::MEM_SHARE, &[ipa.raw()], &mut hal),
        GuestOutcome::ExitToHost {
            regs: [ret::SUCCESS, 0, 0, 0],
            exit: HostExit::MemShare { ipa }
        }
    );
    let row = w.mp.db().get(pfn(HOST_FIRST + 2));
    assert_eq!(row.map(|m| m.host_state()), Some(PageState::SharedBorrowed));
    assert_eq!(w.mp.db().shared_with_host(p), 1, "VM_STATS's count");
    // Every failure is INVALID_PARAMETER and changes nothing.
    let before = snapshot(&w.mp, &hal);
    // Memory the guest never touched: the host must fault it in first.
    assert_eq!(
        w.call(p, 0, kvm::MEM_SHARE, &[RAM + 0x10_0000], &mut hal),
        GuestOutcome::FaultIn {
            ipa: Ipa::new(RAM + 0x10_0000)
        }
    );
    assert_eq!(snapshot(&w.mp, &hal), before);
    for (x0, args) in [
        (kvm::MEM_SHARE, [ipa.raw(), 0, 0]),     // already shared
        (kvm::MEM_SHARE, [ipa.raw() + 8, 0, 0]), // unaligned
        (kvm::MEM_SHARE, [IPA_LIMIT, 0, 0]),     // outside the IPA space
        (kvm::MEM_SHARE, [RAM, 1, 0]),           // range form: not offered
        (kvm::MEM_UNSHARE, [RAM, 0, 0]),         // not shared
        (kvm::MEM_UNSHARE, [ipa.raw(), 0, 1]),   // reserved x3
    ] {
        assert_eq!(
            w.call(p, 0, x0, &args, &mut hal),
            GuestOutcome::Return(INVALID_PARAMETER),
            "{x0:#x} {args:x?}"
        );
        assert_eq!(snapshot(&w.mp, &hal), before);
    }
    assert_eq!(
        w.call(p, 0, kvm::MEM_UNSHARE, &[ipa.raw()], &mut hal),
        GuestOutcome::ExitToHost {
            regs: [ret::SUCCESS, 0, 0, 0],
            exit: HostExit::MemUnshare { ipa }
        }
    );
    let row = w.mp.db().get(pfn(HOST_FIRST + 2));
    assert_eq!(row.map(|m| m.host_state()), Some(PageState::NoPage));
    // A normal VM has nothing to share: its memory is the host's.
    assert_eq!(
        w.call(w.n, 0, kvm::MEM_SHARE, &[RAM], &mut hal),
        GuestOutcome::Return([ret::NOT_SUPPORTED, 0, 0, 0])
    );
    w.finish(&mut hal);
}

#[test]
fn mmio_guard_records_only_non_memory_pages() {
    let mut mem = tu::memory();
    let mut metas = tu::metas();
    let mut hal = tu::hal(&mut mem);
    let mut w = world(&mut metas, &mut hal);
    let p = w.p;
    let ok = GuestOutcome::Return([ret::SUCCESS, 0, 0, 0]);
    for bad in [RAM, RAM + 0x7000, MMIO + 4, IPA_LIMIT, !0xfff] {
        assert_eq!(
            w.call(p, 0, kvm::MMIO_GUARD, &[bad], &mut hal),
            GuestOutcome::Return(INVALID_PARAMETER),
            "{bad:#x}"
        );
    }
    let vm = w.vms.get(p);
    assert_eq!(vm.map(|vm| vm.mmio_guard().pages()), Some(0));
    assert_eq!(w.call(p, 0, kvm::MMIO_GUARD, &[MMIO], &mut hal), ok);
    assert_eq!(
        w.call(p, 1, kvm::MMIO_GUARD, &[MMIO], &mut hal),
        ok,
        "idempotent"
    );
    assert_eq!(
        w.call(p, 0, kvm::MMIO_GUARD, &[MMIO + 0x1000], &mut hal),
        ok
    );
    assert_eq!(
        w.call(p, 0, kvm::MMIO_GUARD, &[RAM + 0x8000], &mut hal),
        ok,
        "past RAM"
    );
    let Some(vm) = w.vms.get(p) else { panic!("vm") };
    assert_eq!(
        vm.mmio_guard().runs().collect::<Vec<_>>(),
        [(Ipa::new(MMIO), 2), (Ipa::new(RAM + 0x8000), 1)]
    );
    assert!(vm.mmio_exit_allowed(Ipa::new(MMIO + 0x1ff8)));
    assert!(!vm.mmio_exit_allowed(Ipa::new(MMIO + 0x2000)));
    // The host cannot put memory where the guest expects a device.
    assert_eq!(
        w.vms.donate(
            &mut w.mp,
            p,
            pfn(HOST_FIRST + 20),
            Ipa::new(RAM + 0x8000),
            1,
            &mut hal
        ),
        Err(crate::vm::VmError::IpaGuarded {
            ipa: Ipa::new(RAM + 0x8000)
        })
    );
    // A normal VM may exit anywhere it has no memory, without guarding.
    let Some(nvm) = w.vms.get(w.n) else {
        panic!("vm")
    };
    assert!(nvm.mmio_exit_allowed(Ipa::new(MMIO + 0x2000)));
    assert!(!nvm.mmio_exit_allowed(Ipa::new(IPA_LIMIT)));
    w.finish(&mut hal);
}

#[test]
fn psci_power_states() {
    let mut mem = tu::memory();
    let mut metas = tu::metas();
    let mut hal = tu::hal(&mut mem);
    let mut w = world(&mut metas, &mut hal);
    let p = w.p;
    let answer = |x0| GuestOutcome::Return([x0, 0, 0, 0]);
    // vCPU 0 on, 1 and 2 off.
    assert_eq!(
        w.call(p, 0, psci::AFFINITY_INFO, &[0, 0], &mut hal),
        answer(0)
    );
    assert_eq!(
        w.call(p, 0, psci::AFFINITY_INFO, &[1, 0], &mut hal),
        answer(1)
    );
    assert_eq!(
        w.call(p, 0, psci::AFFINITY_INFO, &[5, 0], &mut hal),
        answer(psci::RET_INVALID_PARAMS)
    );
    assert_eq!(
        w.call(p, 0, psci::AFFINITY_INFO_64, &[0x7, 1], &mut hal),
        answer(0),
        "level 1: all"
    );
    // CPU_ON: the guest's entry and context stay in the hyp; the host is
    // told which vCPU to wake.
    assert_eq!(
        w.call(p, 0, psci::CPU_ON_64, &[1, RAM + 0x100, 0xc0ffee], &mut hal),
        GuestOutcome::ExitToHost {
            regs: [0, 0, 0, 0],
            exit: HostExit::CpuOn {
                target: 1,
                mpidr: 1
            }
        }
    );
    assert_eq!(
        w.power(p, 1),
        Some(PowerState::OnPending {
            entry: RAM + 0x100,
            context_id: 0xc0ffee
        })
    );
    assert_eq!(
        w.call(p, 0, psci::AFFINITY_INFO, &[1, 0], &mut hal),
        answer(2)
    );
    assert_eq!(
        w.call(p, 2, psci::CPU_ON, &[1, 0, 0], &mut hal),
        answer(psci::RET_ON_PENDING)
    );
    assert_eq!(
        w.call(p, 1, psci::CPU_ON, &[0, 0, 0], &mut hal),
        answer(psci::RET_ALREADY_ON)
    );
    assert_eq!(
        w.call(p, 0, psci::CPU_ON, &[3, 0, 0], &mut hal),
        answer(psci::RET_INVALID_PARAMS),
        "no vCPU 3"
    );
    assert_eq!(
        w.call(p, 0, psci::CPU_ON_64, &[1 << 41, 0, 0], &mut hal),
        answer(psci::RET_INVALID_PARAMS)
    );
    let loaded = w.vms.vcpu_load(p, 1).map(|c| (c.pc, c.x[0]));
    assert_eq!(loaded, Ok((RAM + 0x100, 0xc0ffee)));
    assert_eq!(w.vms.vcpu_put(p, 1), Ok(()));
    assert_eq!(
        w.call(p, 0, psci::AFFINITY_INFO, &[1, 0], &mut hal),
        answer(0)
    );
    // CPU_OFF turns the caller off and tells the host.
    assert_eq!(
        w.call(p, 1, psci::CPU_OFF, &[], &mut hal),
        GuestOutcome::ExitToHost {
            regs: [0, 0, 0, 0],
            exit: HostExit::CpuOff
        }
    );
    assert_eq!(w.power(p, 1), Some(PowerState::Off));
    assert_eq!(
        w.call(p, 7, psci::CPU_OFF, &[], &mut hal),
        answer(psci::RET_INTERNAL_FAILURE),
        "a caller that does not exist"
    );
    // CPU_SUSPEND waits for an interrupt, then succeeds.
    assert_eq!(
        w.call(p, 0, psci::CPU_SUSPEND, &[0x1_0000, 0, 0], &mut hal),
        GuestOutcome::Halt([0, 0, 0, 0])
    );
    // System events go to the host; a resumed guest sees INTERNAL_FAILURE.
    let failure = [psci::RET_INTERNAL_FAILURE, 0, 0, 0];
    for (fid, args, event) in [
        (psci::SYSTEM_OFF, [0, 0], SystemEvent::Shutdown),
        (psci::SYSTEM_RESET, [0, 0], SystemEvent::Reset),
        (
            psci::SYSTEM_RESET2_64,
            [0x8000_0001, 5],
            SystemEvent::Reset2 {
                reset_type: 0x8000_0001,
            },
        ),
    ] {
        assert_eq!(
            w.call(w.n, 0, fid, &args, &mut hal),
            GuestOutcome::ExitToHost {
                regs: failure,
                exit: HostExit::SystemEvent(event)
            }
        );
    }
    w.finish(&mut hal);
}

#[test]
fn host_exits_encode_as_vcpu_run_results() {
    use crate::guest_abi::kvm_uapi as k;
    let ipa = Ipa::new(RAM);
    assert_eq!(
        HostExit::MemShare { ipa }.to_regs(),
        [abi::exit::MEM_SHARE, RAM, 0]
    );
    assert_eq!(
        HostExit::MemUnshare { ipa }.to_regs(),
        [abi::exit::MEM_UNSHARE, RAM, 0]
    );
    assert_eq!(
        HostExit::CpuOn {
            target: 3,
            mpidr: 3
        }
        .to_regs(),
        [abi::exit::CPU_ON, 3, 3]
    );
    assert_eq!(HostExit::CpuOff.to_regs(), [abi::exit::CPU_OFF, 0, 0]);
    assert_eq!(
        HostExit::SystemEvent(SystemEvent::Shutdown).to_regs(),
        [abi::exit::SYSTEM_EVENT, 1, 0]
    );
    assert_eq!(
        HostExit::SystemEvent(SystemEvent::Reset2 { reset_type: 0 }).to_regs(),
        [abi::exit::SYSTEM_EVENT, u64::from(k::SYSTEM_EVENT_RESET), 1]
    );
    assert_eq!(k::EXIT_SYSTEM_EVENT, 24);
    assert_eq!(k::EXIT_HYPERCALL, 3);
    assert_eq!(u64::from(HANDLE_OFFSET), 0x1000);
}

#[test]
fn guard_set_merges_runs_and_fills_up() {
    let page = |g: u64| Ipa::new(g << PAGE_SHIFT);
    let mut s = MmioGuardSet::new();
    for g in [10, 12, 11, 9, 13, 20, 8] {
        assert_eq!(s.insert(page(g)), Ok(()));
    }
    assert_eq!(s.runs().collect::<Vec<_>>(), [(page(8), 6), (page(20), 1)]);
    assert_eq!(s.pages(), 7);
    assert!(s.contains(Ipa::new((13 << PAGE_SHIFT) + 0xfff)));
    assert!(!s.contains(page(14)));
    assert!(s.overlaps(page(14), 7) && !s.overlaps(page(14), 6));
    assert!(!s.overlaps(page(0), 0));
    assert_eq!(s.insert(Ipa::new(0x1001)), Err(GuardError::Unaligned));
    assert_eq!(s.insert(Ipa::new(IPA_LIMIT)), Err(GuardError::OutOfRange));
    let mut full = MmioGuardSet::new();
    for i in 0..MMIO_GUARD_RUNS as u64 {
        assert_eq!(full.insert(page(2 * i)), Ok(()));
    }
    let before = full.clone();
    assert_eq!(full.insert(page(1000)), Err(GuardError::Full));
    assert_eq!(full, before);
    // Filling a hole merges two runs, so it fits.
    assert_eq!(full.insert(page(1)), Ok(()));
    assert_eq!(full.runs().count(), MMIO_GUARD_RUNS - 1);
    full.clear();
    assert_eq!(full, MmioGuardSet::default());
}

#[test]
fn abort_classification() {
    let mut guard = MmioGuardSet::new();
    assert_eq!(guard.insert(Ipa::new(MMIO)), Ok(()));
    let data = |ipa| GuestAbort {
        ipa: Ipa::new(ipa),
        fetch: false,
        s1ptw: false,
        isv: true,
    };
    let p = VmKind::Protected;
    let n = VmKind::Normal;
    let c = classify_guest_abort;
    assert_eq!(c(p, &guard, &data(RAM), true), AbortAction::Retry);
    assert_eq!(c(n, &guard, &data(RAM), true), AbortAction::Retry);
    assert_eq!(c(p, &guard, &data(MMIO + 0x10), false), AbortAction::Mmio);
    assert_eq!(
        c(p, &guard, &data(MMIO + 0x1000), false),
        AbortAction::MemFault
    );
    assert_eq!(c(n, &guard, &data(MMIO + 0x1000), false), AbortAction::Mmio);
    assert_eq!(c(n, &guard, &data(IPA_LIMIT), false), AbortAction::MemFault);
    for (fetch, s1ptw, isv) in [
        (true, false, true),
        (false, true, true),
        (false, false, false),
    ] {
        let a = GuestAbort {
            fetch,
            s1ptw,
            isv,
            ..data(MMIO)
        };
        assert_eq!(c(p, &guard, &a, false), AbortAction::MemFault);
        assert_eq!(c(n, &guard, &a, false), AbortAction::MemFault);
    }
    assert!(mmio_exit_allowed(n, &MmioGuardSet::new(), Ipa::new(0)));
    assert!(!mmio_exit_allowed(p, &MmioGuardSet::new(), Ipa::new(0)));
}
