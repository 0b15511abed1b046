//! Unit tests: the VM table's life cycle, the vCPU register rules, the
//! context layout.

use super::*;
use crate::hal::FakeHal;
use crate::mem_protect::{Owner, PageState};
use crate::test_utils::{self as tu, pfn, HOST_FIRST};

fn create(vms: &mut VmTable, kind: VmKind, hal: &mut FakeHal<'_>) -> VmHandle {
    match vms.create_vm(kind, hal) {
        Ok(h) => h,
        Err(e) => panic!("create_vm: {e}"),
    }
}

fn vcpu(vms: &VmTable, h: VmHandle, i: usize) -> Vcpu {
    match vms.get(h).and_then(|vm| vm.vcpu(i)) {
        Some(v) => v.clone(),
        None => panic!("no vCPU {i}"),
    }
}

#[test]
fn kvm_vm_types() {
    assert_eq!(VmKind::from_kvm_type(0), Ok(VmKind::Normal));
    assert_eq!(VmKind::from_kvm_type(1 << 31), Ok(VmKind::Protected));
    for t in [1, 40, 0xff, (1 << 31) | 40] {
        assert_eq!(
            VmKind::from_kvm_type(t),
            Err(VmError::IpaSizeUnsupported { kvm_type: t })
        );
    }
    for t in [1 << 8, 1 << 30, 1 << 32, !0xff] {
        assert_eq!(
            VmKind::from_kvm_type(t),
            Err(VmError::UnknownTypeBits { kvm_type: t })
        );
    }
    for kind in [VmKind::Normal, VmKind::Protected] {
        assert_eq!(VmKind::from_kvm_type(kind.kvm_type()), Ok(kind));
    }
    let msg = format!("{}", VmError::IpaSizeUnsupported { kvm_type: 40 });
    assert!(msg.contains("39 bits"), "{msg}");
}

#[test]
fn context_layout_and_reset_values() {
    let c = VcpuContext::RESET;
    assert_eq!(c.pstate, 0x3c5, "EL1h, DAIF masked");
    assert_eq!(c.sys.sctlr_el1, 0x00c5_0078);
    assert_eq!(c.pc, 0);
    assert_eq!(c.x, [0; 31]);
    assert_eq!(c.fp, FpState::default());
    assert_eq!(size_of::<VcpuContext>(), 1168);
    // KVM's reset_mpidr.
    assert_eq!(mpidr_for_index(0), 0);
    assert_eq!(mpidr_for_index(7), 7);
    assert_eq!(mpidr_for_index(16), 0x100);
    assert_eq!(mpidr_for_index(0x1234), 0x01_2304);
    for n in 0..=40 {
        let reg = VcpuReg::from_abi(n);
        assert_eq!(reg.map(VcpuReg::abi), (n <= 36).then_some(n), "{n}");
    }
}

#[test]
fn handles_are_offset_and_a_failed_create_leaves_nothing() {
    let mut mem = tu::memory();
    let mut hal = tu::hal(&mut mem);
    let mut vms = VmTable::new();
    hal.set_oom(true);
    assert_eq!(
        vms.create_vm(VmKind::Protected, &mut hal),
        Err(VmError::Mem(MemProtectError::NoMemory))
    );
    assert_eq!(vms.iter().count(), 0);
    assert_eq!(hal.live_pages(), 0);
    hal.set_oom(false);
    let h = create(&mut vms, VmKind::Protected, &mut hal);
    assert_eq!(
        h.raw(),
        HANDLE_OFFSET,
        "the failed create gave its slot back"
    );
    let Some(vm) = vms.get(h) else {
        panic!("published VM not found")
    };
    assert_eq!(vm.kind(), VmKind::Protected);
    assert_eq!(vm.state(), VmState::Live);
    assert_eq!(vm.guest_mem().map(|g| g.stage2().vmid()), Some(Vmid(1)));
    assert_eq!(vm.vttbr_el2().map(|v| v >> 48), Some(1));
    assert_eq!(vms.resolve(u64::from(HANDLE_OFFSET)), Ok(h));
    for bad in [
        0,
        1,
        u64::from(HANDLE_OFFSET) + 1,
        u64::from(HANDLE_OFFSET) - 1,
        u64::MAX,
    ] {
        assert_eq!(vms.resolve(bad), Err(VmError::NoSuchVm { handle: bad }));
    }
    assert!(vms.get(VmHandle::new(0)).is_none());
    let h2 = create(&mut vms, VmKind::Normal, &mut hal);
    assert_eq!(h2.raw(), HANDLE_OFFSET + 1);
    assert_eq!(hal.live_pages(), 2, "one stage-2 root each");
}

#[test]
fn protected_vcpu_registers_are_the_hosts_only_before_the_first_run() {
    let mut mem = tu::memory();
    let mut hal = tu::hal(&mut mem);
    let mut vms = VmTable::new();
    let h = create(&mut vms, VmKind::Protected, &mut hal);
    assert_eq!(vms.create_vcpu(h, 0, 0), Ok(0));
    let pc = abi::vcpu_reg::PC;
    assert_eq!(vms.set_vcpu_reg(h, 0, pc, 0x8008_0000), Ok(()));
    assert_eq!(vms.set_vcpu_reg(h, 0, 0, 0x4800_0000), Ok(()));
    for reg in [1, 30, abi::vcpu_reg::PSTATE, abi::vcpu_reg::SP_EL1] {
        let Some(r) = VcpuReg::from_abi(reg) else {
            panic!("reg {reg}")
        };
        assert_eq!(
            vms.set_vcpu_reg(h, 0, reg, 1),
            Err(VmError::Vcpu(VcpuError::Denied { reg: r }))
        );
    }
    assert_eq!(
        vms.get_vcpu_reg(h, 0, pc),
        Err(VmError::Vcpu(VcpuError::Denied { reg: VcpuReg::Pc }))
    );
    let ctx = vcpu(&vms, h, 0).ctx;
    assert_eq!((ctx.pc, ctx.x[0], ctx.x[1]), (0x8008_0000, 0x4800_0000, 0));
    assert_eq!(vms.vcpu_load(h, 0).map(|_| ()), Ok(()));
    assert_eq!(
        vms.set_vcpu_reg(h, 0, pc, 0),
        Err(VmError::Busy { vcpu: 0 })
    );
    assert!(matches!(
        vms.vcpu_load(h, 0),
        Err(VmError::Busy { vcpu: 0 })
    ));
    assert_eq!(vms.vcpu_put(h, 0), Ok(()));
    assert_eq!(
        vms.set_vcpu_reg(h, 0, pc, 0),
        Err(VmError::Vcpu(VcpuError::Denied { reg: VcpuReg::Pc }))
    );
    assert_eq!(
        vms.set_vcpu_reg(h, 0, 0, 0),
        Err(VmError::Vcpu(VcpuError::Denied { reg: VcpuReg::X(0) }))
    );
    assert!(vcpu(&vms, h, 0).has_run());
}

#[test]
fn normal_vcpu_registers_are_the_hosts_while_not_running() {
    let mut mem = tu::memory();
    let mut hal = tu::hal(&mut mem);
    let mut vms = VmTable::new();
    let h = create(&mut vms, VmKind::Normal, &mut hal);
    assert_eq!(vms.create_vcpu(h, 3, 0), Ok(3));
    for (reg, value) in [
        (0, 1),
        (30, 2),
        (abi::vcpu_reg::SP_EL0, 3),
        (abi::vcpu_reg::PC, 4),
        (abi::vcpu_reg::PSTATE, 0x3c4),
        (abi::vcpu_reg::SP_EL1, 6),
        (abi::vcpu_reg::ELR_EL1, 7),
        (abi::vcpu_reg::SPSR_EL1, 8),
    ] {
        assert_eq!(vms.set_vcpu_reg(h, 3, reg, value), Ok(()), "reg {reg}");
        assert_eq!(vms.get_vcpu_reg(h, 3, reg), Ok(value), "reg {reg}");
    }
    let ctx = vcpu(&vms, h, 3).ctx;
    assert_eq!(ctx.sys.sp_el0, 3);
    assert_eq!(ctx.x[30], 2);
    for mode in [0x10, 0x01, 0x09, 0x0d, 0x1f] {
        assert_eq!(
            vms.set_vcpu_reg(h, 3, abi::vcpu_reg::PSTATE, mode),
            Err(VmError::Vcpu(VcpuError::BadValue {
                reg: VcpuReg::Pstate,
                value: mode
            }))
        );
    }
    assert_eq!(
        vms.set_vcpu_reg(h, 3, 37, 0),
        Err(VmError::Vcpu(VcpuError::UnknownReg { reg: 37 }))
    );
    assert_eq!(
        vms.set_vcpu_reg(h, 2, 0, 0),
        Err(VmError::NoSuchVcpu { vcpu: 2 })
    );
    assert_eq!(vms.vcpu_load(h, 3).map(|_| ()), Ok(()));
    assert_eq!(vms.get_vcpu_reg(h, 3, 0), Err(VmError::Busy { vcpu: 3 }));
    assert_eq!(vms.vcpu_put(h, 3), Ok(()));
    assert_eq!(
        vms.set_vcpu_reg(h, 3, 0, 9),
        Ok(()),
        "after the first run too"
    );
}

#[test]
fn vcpu_creation_rules_and_power_states() {
    let mut mem = tu::memory();
    let mut hal = tu::hal(&mut mem);
    let mut vms = VmTable::new();
    let h = create(&mut vms, VmKind::Protected, &mut hal);
    let off = abi::vcpu_feature::POWER_OFF;
    assert_eq!(vms.create_vcpu(h, 0, abi::vcpu_feature::PSCI_0_2), Ok(0));
    assert_eq!(vms.create_vcpu(h, 1, off), Ok(1));
    assert_eq!(
        vms.create_vcpu(h, 1, 0),
        Err(VmError::VcpuExists { vcpu: 1 })
    );
    assert_eq!(
        vms.create_vcpu(h, MAX_VCPUS as u64, 0),
        Err(VmError::NoSuchVcpu { vcpu: 8 })
    );
    assert_eq!(
        vms.create_vcpu(h, u64::MAX, 0),
        Err(VmError::NoSuchVcpu { vcpu: u64::MAX })
    );
    assert_eq!(
        vms.create_vcpu(h, 2, 1 << 1),
        Err(VmError::BadVcpuFeatures { features: 2 })
    );
    assert_eq!(vcpu(&vms, h, 0).power(), PowerState::On);
    assert_eq!(vcpu(&vms, h, 1).power(), PowerState::Off);
    assert_eq!(vcpu(&vms, h, 1).vmpidr_el2(), 0x8000_0001);
    assert_eq!(vms.check_runnable(h, 1), Err(VmError::VcpuOff { vcpu: 1 }));
    assert!(matches!(
        vms.vcpu_load(h, 1),
        Err(VmError::VcpuOff { vcpu: 1 })
    ));
    // A guest's CPU_ON leaves it pending; the next load resets it there.
    let Some(v) = vms.get_mut(h).and_then(|vm| vm.vcpu_mut(1)) else {
        panic!("vCPU 1")
    };
    v.ctx.x[5] = 55;
    v.set_power(PowerState::OnPending {
        entry: 0x8010_0000,
        context_id: 0x77,
    });
    assert_eq!(vms.check_runnable(h, 1), Ok(1));
    let ctx = match vms.vcpu_load(h, 1) {
        Ok(ctx) => *ctx,
        Err(e) => panic!("load: {e}"),
    };
    assert_eq!((ctx.pc, ctx.x[0], ctx.x[5]), (0x8010_0000, 0x77, 0));
    assert_eq!(ctx.pstate, RESET_PSTATE);
    assert_eq!(vcpu(&vms, h, 1).power(), PowerState::On);
    assert_eq!(vms.vcpu_put(h, 1), Ok(()));
}

#[test]
fn teardown_has_two_phases_and_returns_every_page() {
    let mut mem = tu::memory();
    let mut metas = tu::metas();
    let mut hal = tu::hal(&mut mem);
    let mut mp = tu::mem_protect(&mut metas, &mut hal);
    let base_pages = hal.live_pages();
    let mut vms = VmTable::new();
    let p = create(&mut vms, VmKind::Protected, &mut hal);
    let n = create(&mut vms, VmKind::Normal, &mut hal);
    let ipa = Ipa::new(0x8000_0000);
    assert_eq!(vms.create_vcpu(p, 0, 0), Ok(0));
    // Protected: donated; normal: lent. Not the other way round.
    assert_eq!(
        vms.donate(&mut mp, n, pfn(HOST_FIRST), ipa, 1, &mut hal),
        Err(VmError::WrongKind {
            kind: VmKind::Normal
        })
    );
    assert_eq!(
        vms.map_shared(&mut mp, p, pfn(HOST_FIRST), ipa, 1, &mut hal),
        Err(VmError::WrongKind {
            kind: VmKind::Protected
        })
    );
    assert_eq!(
        vms.donate(&mut mp, p, pfn(HOST_FIRST), ipa, 4, &mut hal),
        Ok(())
    );
    assert_eq!(
        vms.map_shared(&mut mp, n, pfn(HOST_FIRST + 4), ipa, 2, &mut hal),
        Ok(())
    );
    // Secrets in the donated pages, data in the lent ones.
    for i in 0..6 {
        if let Some(page) = pfn(HOST_FIRST + i).phys().and_then(|pa| hal.page_mut(pa)) {
            page[0] = 0xdead_0000 + i;
        }
    }
    // A guarded MMIO page takes no memory.
    let Some(vm) = vms.get_mut(p) else {
        panic!("vm")
    };
    assert_eq!(vm.mmio_guard.insert(Ipa::new(0x9000_0000)), Ok(()));
    assert_eq!(
        vms.donate(
            &mut mp,
            p,
            pfn(HOST_FIRST + 6),
            Ipa::new(0x8fff_f000),
            2,
            &mut hal
        ),
        Err(VmError::IpaGuarded {
            ipa: Ipa::new(0x8fff_f000)
        })
    );

    assert_eq!(
        vms.finalize_teardown(&mut mp, p, &mut hal),
        Err(VmError::NotDying {
            handle: u64::from(p.raw())
        })
    );
    assert_eq!(vms.vcpu_load(p, 0).map(|_| ()), Ok(()));
    assert_eq!(vms.start_teardown(p), Err(VmError::Busy { vcpu: 0 }));
    assert_eq!(vms.vcpu_put(p, 0), Ok(()));
    assert_eq!(vms.start_teardown(p), Ok(()));
    let dying = VmError::Dying {
        handle: u64::from(p.raw()),
    };
    assert_eq!(vms.start_teardown(p), Err(dying));
    assert!(matches!(vms.vcpu_load(p, 0), Err(e) if e == dying));
    assert_eq!(vms.create_vcpu(p, 1, 0), Err(dying));
    assert_eq!(vms.set_vcpu_reg(p, 0, 0, 0), Err(dying));
    assert_eq!(
        vms.donate(
            &mut mp,
            p,
            pfn(HOST_FIRST + 6),
            Ipa::new(0x8800_0000),
            1,
            &mut hal
        ),
        Err(dying)
    );
    assert_eq!(vms.get(p).map(Vm::state), Some(VmState::Dying));

    assert_eq!(vms.finalize_teardown(&mut mp, p, &mut hal), Ok(4));
    assert!(vms.get(p).is_none());
    assert_eq!(
        vms.finalize_teardown(&mut mp, p, &mut hal),
        Err(VmError::NoSuchVm {
            handle: u64::from(p.raw())
        })
    );
    assert_eq!(vms.start_teardown(n), Ok(()));
    assert_eq!(vms.finalize_teardown(&mut mp, n, &mut hal), Ok(2));
    for i in 0..6 {
        let row = mp.db().get(pfn(HOST_FIRST + i));
        assert_eq!(
            row.map(|m| (m.owner(), m.host_state())),
            Some((Owner::Host, PageState::Owned))
        );
        let first = pfn(HOST_FIRST + i)
            .phys()
            .and_then(|pa| hal.page(pa))
            .map(|page| page[0]);
        let expected = if i < 4 { 0 } else { 0xdead_0000 + i };
        assert_eq!(
            first,
            Some(expected),
            "donated pages are zeroed, lent ones kept"
        );
    }
    assert_eq!(hal.live_pages(), base_pages, "guest tables freed");
    assert_eq!(vms.iter().count(), 0);
    // The slot is reused, clean.
    let again = create(&mut vms, VmKind::Normal, &mut hal);
    assert_eq!(again, p);
    assert_eq!(vms.get(again).map(|vm| vm.vcpu_count()), Some(0));
    assert_eq!(vms.get(again).map(|vm| vm.mmio_guard().pages()), Some(0));
    assert_eq!(mp.check_invariants(&hal), Ok(()));
}

#[test]
fn errors_map_to_host_abi_codes() {
    use abi::err;
    let cases = [
        (
            VmError::TableFull,
            [ret::NO_MEMORY, err::VM_TABLE_FULL, 0, 0],
        ),
        (
            VmError::NoSuchVm { handle: 5 },
            [ret::INVALID_PARAMETER, err::NO_SUCH_VM, 5, 0],
        ),
        (
            VmError::UnknownTypeBits { kvm_type: 4 << 8 },
            [ret::INVALID_PARAMETER, err::BAD_VM_TYPE, 4 << 8, 0],
        ),
        (
            VmError::IpaGuarded {
                ipa: Ipa::new(0x9000),
            },
            [ret::DENIED, err::IPA_GUARDED, 0x9000, 0],
        ),
        (
            VmError::Vcpu(VcpuError::BadValue {
                reg: VcpuReg::Pstate,
                value: 0x10,
            }),
            [ret::INVALID_PARAMETER, err::BAD_REG_VALUE, 33, 0x10],
        ),
        (
            VmError::Mem(MemProtectError::ZeroCount),
            [ret::INVALID_PARAMETER, err::ZERO_COUNT, 0, 0],
        ),
        (VmError::Internal, [ret::DENIED, err::INTERNAL, 0, 0]),
    ];
    for (e, regs) in cases {
        assert_eq!(e.to_regs(), regs, "{e}");
    }
}

#[test]
fn one_page_comes_back_from_a_live_protected_vm_zeroed() {
    let mut mem = tu::memory();
    let mut metas = tu::metas();
    let mut hal = tu::hal(&mut mem);
    let mut mp = tu::mem_protect(&mut metas, &mut hal);
    let mut vms = VmTable::new();
    let p = create(&mut vms, VmKind::Protected, &mut hal);
    let n = create(&mut vms, VmKind::Normal, &mut hal);
    let ipa = Ipa::new(0x8000_0000);
    let second = Ipa::new(0x8000_1000);
    assert_eq!(
        vms.donate(&mut mp, p, pfn(HOST_FIRST), ipa, 2, &mut hal),
        Ok(())
    );
    assert_eq!(
        vms.map_shared(&mut mp, n, pfn(HOST_FIRST + 2), ipa, 1, &mut hal),
        Ok(())
    );
    if let Some(page) = pfn(HOST_FIRST + 1).phys().and_then(|pa| hal.page_mut(pa)) {
        page[7] = 0x5ec7e7;
    }
    let before = tu::snapshot(&mp, &hal);
    // A normal VM's pages go back with VM_UNMAP_SHARED, not this.
    assert_eq!(
        vms.reclaim_page(&mut mp, n, ipa, &mut hal),
        Err(VmError::WrongKind {
            kind: VmKind::Normal
        })
    );
    // Nothing at the IPA, or not page-aligned: refused, nothing changes.
    for bad in [Ipa::new(0x8000_5000), Ipa::new(0x8000_0010)] {
        assert!(matches!(
            vms.reclaim_page(&mut mp, p, bad, &mut hal),
            Err(VmError::Mem(_))
        ));
    }
    assert!(tu::snapshot(&mp, &hal) == before);
    assert_eq!(
        vms.reclaim_page(&mut mp, p, second, &mut hal),
        Ok(pfn(HOST_FIRST + 1))
    );
    let row = mp.db().get(pfn(HOST_FIRST + 1)).expect("row");
    assert_eq!(
        (row.owner(), row.host_state()),
        (Owner::Host, PageState::Owned)
    );
    let page = pfn(HOST_FIRST + 1).phys().and_then(|pa| hal.page(pa));
    assert_eq!(page.map(|p| p[7]), Some(0), "zeroed before the host got it");
    let vm = vms.get(p).expect("vm");
    assert!(!vm.is_guest_memory(second, &hal));
    assert!(vm.is_guest_memory(ipa, &hal), "the other page stays");
    // Twice: nothing there any more.
    assert!(matches!(
        vms.reclaim_page(&mut mp, p, second, &mut hal),
        Err(VmError::Mem(_))
    ));
    let guests: Vec<&GuestMem> = vms.iter().filter_map(|vm| vm.guest_mem()).collect();
    if let Err(msg) = tu::check_system(&mp, &guests, &hal) {
        panic!("{msg}");
    }
}
