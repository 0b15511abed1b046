//! Unit tests: every row of the module's table, the MMIO syndrome decode,
//! completion and retry, memory faults settled both ways, and exception
//! entry for each guest mode.

use super::*;
use crate::guest_abi::{kvm, psci};
use crate::hal::FakeHal;
use crate::test_utils::{self as tu, pfn, HOST_FIRST};
use crate::vm::{VmKind, VmTable};

const RAM: u64 = 0x8000_0000;
const MMIO: u64 = 0x0900_0000;
const VBAR: u64 = 0x8000_8000;
const PC: u64 = 0x8000_1000;

/// `ESR_EL2` for a data abort from a lower EL: valid syndrome, `size`
/// bytes, register `srt`, 64-bit register, load or store.
fn dabt(size: u64, srt: u64, write: bool) -> u64 {
    let sas = u64::from(size.trailing_zeros());
    let wnr = if write { ISS_WNR } else { 0 };
    ec::DABT_LOW << ESR_EC_SHIFT
        | ESR_IL
        | ISS_ISV
        | sas << ISS_SAS_SHIFT
        | srt << 16
        | ISS_SF
        | wnr
        | 0x07
}

fn sync(esr: u64, ipa: u64) -> GuestTrap {
    GuestTrap {
        vector: VECTOR_LOWER_SYNC,
        esr,
        far: 0xffff_0000_dead_b000 | (ipa & 0xfff),
        ipa,
        now: 0,
    }
}

struct Rig<'m> {
    mp: MemProtect<'m>,
    vms: VmTable,
    p: VmHandle,
    n: VmHandle,
}

fn rig<'m>(metas: &'m mut [crate::mem_protect::PageMeta], hal: &mut FakeHal<'_>) -> Rig<'m> {
    let mut mp = tu::mem_protect(metas, hal);
    let mut vms = VmTable::new();
    let (Ok(p), Ok(n)) = (
        vms.create_vm(VmKind::Protected, hal),
        vms.create_vm(VmKind::Normal, hal),
    ) else {
        panic!("create")
    };
    for h in [p, n] {
        assert_eq!(vms.create_vcpu(h, 0, 0), Ok(0));
    }
    let ram = Ipa::new(RAM);
    assert_eq!(vms.donate(&mut mp, p, pfn(HOST_FIRST), ram, 2, hal), Ok(()));
    assert_eq!(
        vms.map_shared(&mut mp, n, pfn(HOST_FIRST + 2), ram, 2, hal),
        Ok(())
    );
    for h in [p, n] {
        assert_eq!(vms.vcpu_load(h, 0).map(|_| ()), Ok(()));
        let ctx = vms.loaded_context(h, 0).expect("loaded");
        ctx.pc = PC;
        ctx.sys.vbar_el1 = VBAR;
    }
    Rig { mp, vms, p, n }
}

impl Rig<'_> {
    fn exit(&mut self, h: VmHandle, trap: GuestTrap, hal: &mut FakeHal<'_>) -> ExitAction {
        handle_guest_exit(&mut self.vms, h, 0, trap, &mut self.mp, hal)
    }

    fn ctx(&mut self, h: VmHandle) -> &mut VcpuContext {
        self.vms.loaded_context(h, 0).expect("loaded")
    }

    fn pending(&self, h: VmHandle) -> Option<PendingExit> {
        self.vms
            .get(h)
            .and_then(|vm| vm.vcpu(0))
            .and_then(|v| v.pending())
    }

    /// Puts the vCPU, settles with `run` (checked), loads it again.
    fn rerun(&mut self, h: VmHandle, run: RunRequest, hal: &FakeHal<'_>) -> Result<(), VmError> {
        assert_eq!(self.vms.vcpu_put(h, 0), Ok(()));
        self.vms.settle_pending(h, 0, run, hal)?;
        self.vms.vcpu_load(h, 0).map(|_| ())
    }
}

use crate::vm::VmError;

const COMPLETE: u64 = run_flag::MMIO_COMPLETE;

#[test]
fn decodes_mmio_syndromes_and_load_results() {
    let a = MmioAccess::decode(dabt(4, 3, false), Ipa::new(MMIO + 0x18)).expect("isv");
    assert_eq!((a.size, a.srt, a.write, a.il32), (4, 3, false, true));
    assert_eq!(
        MmioAccess::decode(dabt(4, 3, false) & !ISS_ISV, Ipa::new(MMIO)),
        None
    );
    // Sizes, sign extension (LDRSB/LDRSH/LDRSW) and W registers.
    let mut b = MmioAccess {
        size: 1,
        sign_extend: true,
        ..a
    };
    b.sixty_four = true;
    assert_eq!(b.read_result(0x1_80), 0xffff_ffff_ffff_ff80);
    b.sixty_four = false;
    assert_eq!(b.read_result(0x80), 0xffff_ff80);
    let h = MmioAccess {
        size: 2,
        sign_extend: false,
        sixty_four: true,
        ..a
    };
    assert_eq!(h.read_result(0xdead_8001), 0x8001);
    let d = MmioAccess {
        size: 8,
        sixty_four: true,
        ..a
    };
    assert_eq!(d.read_result(u64::MAX), u64::MAX);
    // A store of XZR writes 0; of W3, its low bytes.
    let mut ctx = VcpuContext::ZERO;
    ctx.x[3] = 0x1122_3344_5566_7788;
    assert_eq!(a.write_value(&ctx), 0x5566_7788);
    let z = MmioAccess { srt: 31, ..a };
    assert_eq!(z.write_value(&ctx), 0);
}

#[test]
fn guarded_mmio_exits_and_completes_a_read() {
    let (mut mem, mut metas) = (tu::memory(), tu::metas());
    let mut hal = tu::hal(&mut mem);
    let mut r = rig(&mut metas, &mut hal);
    let p = r.p;
    // Unguarded: a memory fault, not MMIO.
    let trap = sync(dabt(4, 5, false), MMIO + 0x18);
    assert_eq!(
        r.exit(p, trap, &mut hal),
        ExitAction::Exit([ret::SUCCESS, exit::MEM_FAULT, MMIO + 0x18, 0])
    );
    assert_eq!(r.rerun(p, RunRequest::default(), &hal), Ok(()));
    // Guarded (the guest's MMIO_GUARD): an MMIO exit.
    {
        let vm = r.vms.get_mut(p).expect("vm");
        assert_eq!(vm.mmio_guard.insert(Ipa::new(MMIO)), Ok(()));
    }
    r.ctx(p).pc = PC;
    assert_eq!(
        r.exit(p, trap, &mut hal),
        ExitAction::Exit([
            ret::SUCCESS,
            exit::MMIO | 4 << exit::MMIO_SIZE_SHIFT,
            MMIO + 0x18,
            0
        ])
    );
    assert!(matches!(r.pending(p), Some(PendingExit::Mmio(_))));
    // Data for a read only with MMIO_COMPLETE; unknown completions refused.
    let bad = RunRequest {
        flags: 0,
        data: 7,
        pending: 0,
    };
    assert_eq!(
        r.rerun(p, bad, &hal),
        Err(VmError::NoPendingMmio { vcpu: 0 })
    );
    assert_eq!(
        r.rerun(
            p,
            RunRequest {
                flags: COMPLETE,
                data: 0x1_2345_6789,
                pending: 0,
            },
            &hal
        ),
        Ok(())
    );
    assert_eq!(r.ctx(p).x[5], 0x2345_6789);
    assert_eq!(r.ctx(p).pc, PC + 4);
    assert_eq!(r.pending(p), None);
    // Nothing pending now: completing is refused.
    assert_eq!(
        r.rerun(
            p,
            RunRequest {
                flags: COMPLETE,
                data: 0,
                pending: 0,
            },
            &hal
        ),
        Err(VmError::NoPendingMmio { vcpu: 0 })
    );
}

#[test]
fn mmio_write_carries_the_value_and_retry_reexecutes() {
    let (mut mem, mut metas) = (tu::memory(), tu::metas());
    let mut hal = tu::hal(&mut mem);
    let mut r = rig(&mut metas, &mut hal);
    let n = r.n;
    r.ctx(n).x[2] = 0xaabb_ccdd_0000_0041;
    // A normal VM may exit on any unmapped IPA with a valid syndrome.
    let trap = sync(dabt(1, 2, true), MMIO);
    let want = exit::MMIO | 1 << exit::MMIO_SIZE_SHIFT | exit::MMIO_WRITE;
    assert_eq!(
        r.exit(n, trap, &mut hal),
        ExitAction::Exit([ret::SUCCESS, want, MMIO, 0x41])
    );
    // A write completes without data; data is refused.
    assert_eq!(
        r.rerun(
            n,
            RunRequest {
                flags: COMPLETE,
                data: 1,
                pending: 0,
            },
            &hal
        ),
        Err(VmError::NoPendingMmio { vcpu: 0 })
    );
    // Not completed: the access runs again (PC unchanged, registers too).
    assert_eq!(r.rerun(n, RunRequest::default(), &hal), Ok(()));
    assert_eq!(r.ctx(n).pc, PC);
    assert_eq!(r.ctx(n).x[2], 0xaabb_ccdd_0000_0041);
    assert_eq!(
        r.exit(n, trap, &mut hal),
        ExitAction::Exit([ret::SUCCESS, want, MMIO, 0x41])
    );
    assert_eq!(
        r.rerun(
            n,
            RunRequest {
                flags: COMPLETE,
                data: 0,
                pending: 0,
            },
            &hal
        ),
        Ok(())
    );
    assert_eq!(r.ctx(n).pc, PC + 4);
}

#[test]
fn memory_fault_injects_an_abort_only_if_still_unmapped() {
    let (mut mem, mut metas) = (tu::memory(), tu::metas());
    let mut hal = tu::hal(&mut mem);
    let mut r = rig(&mut metas, &mut hal);
    let p = r.p;
    let hole = RAM + 0x10_0000;
    // A fetch from an unmapped IPA, guest at EL1h.
    let iabt = ec::IABT_LOW << ESR_EC_SHIFT | ESR_IL | 0x07;
    let trap = sync(iabt, hole);
    assert_eq!(
        r.exit(p, trap, &mut hal),
        ExitAction::Exit([ret::SUCCESS, exit::MEM_FAULT, hole, mem_fault::EXEC])
    );
    // The host donates a page there: the access runs again, no abort.
    assert_eq!(
        r.vms.donate(
            &mut r.mp,
            p,
            pfn(HOST_FIRST + 4),
            Ipa::new(hole),
            1,
            &mut hal
        ),
        Ok(())
    );
    assert_eq!(r.rerun(p, RunRequest::default(), &hal), Ok(()));
    assert_eq!((r.ctx(p).pc, r.ctx(p).sys.esr_el1), (PC, 0));
    // A store to a hole the host does not fill: external abort at EL1.
    let other = RAM + 0x20_0000;
    let store = sync(dabt(8, 1, true), other);
    assert_eq!(
        r.exit(p, store, &mut hal),
        ExitAction::Exit([ret::SUCCESS, exit::MEM_FAULT, other, mem_fault::WRITE])
    );
    let pstate = r.ctx(p).pstate;
    assert_eq!(r.rerun(p, RunRequest::default(), &hal), Ok(()));
    let c = *r.ctx(p);
    assert_eq!(c.pc, VBAR + VBAR_CURRENT_SPX);
    assert_eq!(
        c.sys.esr_el1,
        ec::DABT_CUR << ESR_EC_SHIFT | ESR_IL | FSC_EXTABT
    );
    assert_eq!(c.sys.far_el1, store.far);
    assert_eq!(
        (c.elr_el1, c.spsr_el1, c.pstate),
        (PC, pstate, RESET_PSTATE)
    );
    // Retry of a mapped IPA: just resume.
    assert_eq!(
        r.exit(p, sync(dabt(4, 0, false), RAM), &mut hal),
        ExitAction::Resume
    );
}

#[test]
fn stage1_walk_faults_go_to_the_host_even_when_guarded() {
    let (mut mem, mut metas) = (tu::memory(), tu::metas());
    let mut hal = tu::hal(&mut mem);
    let mut r = rig(&mut metas, &mut hal);
    let n = r.n;
    let walk = sync(dabt(8, 0, false) | ISS_S1PTW, RAM + 0x40_0000);
    assert_eq!(
        r.exit(n, walk, &mut hal),
        ExitAction::Exit([
            ret::SUCCESS,
            exit::MEM_FAULT,
            RAM + 0x40_0000,
            mem_fault::S1PTW
        ])
    );
}

#[test]
fn exception_entry_follows_the_guest_mode() {
    // EL0t -> lower-EL vector, EC stays "lower"; EL1t -> SP0 vector.
    for (mode, offset, class) in [
        (0b0_0000, VBAR_LOWER_A64, ec::DABT_LOW),
        (0b0_0100, VBAR_CURRENT_SP0, ec::DABT_CUR),
        (0b0_0101, VBAR_CURRENT_SPX, ec::DABT_CUR),
    ] {
        let mut ctx = VcpuContext::ZERO;
        ctx.pc = PC;
        ctx.pstate = mode;
        ctx.sys.vbar_el1 = VBAR;
        inject_external_abort(&mut ctx, false, 0x1234, true);
        assert_eq!(ctx.pc, VBAR + offset, "mode {mode:#b}");
        assert_eq!(ctx.sys.esr_el1 >> ESR_EC_SHIFT, class);
        assert_eq!((ctx.elr_el1, ctx.spsr_el1), (PC, mode));
    }
    let mut ctx = VcpuContext::ZERO;
    ctx.pstate = 0b0_0101;
    ctx.sys.far_el1 = 77;
    inject_undef(&mut ctx, true);
    assert_eq!(ctx.sys.esr_el1, ESR_IL);
    assert_eq!(ctx.sys.far_el1, 77, "an undef leaves FAR alone");
}

#[test]
fn hvc_wfx_interrupts_and_the_rest() {
    let (mut mem, mut metas) = (tu::memory(), tu::metas());
    let mut hal = tu::hal(&mut mem);
    let mut r = rig(&mut metas, &mut hal);
    let p = r.p;
    // HVC: the pKVM guest ABI answers in x0..x3.
    r.ctx(p).x[0] = u64::from(psci::VERSION);
    r.ctx(p).x[4] = 99;
    let hvc = sync(ec::HVC64 << ESR_EC_SHIFT | ESR_IL, 0);
    assert_eq!(r.exit(p, hvc, &mut hal), ExitAction::Resume);
    assert_eq!(r.ctx(p).x[..5], [psci::VERSION_1_1, 0, 0, 0, 99]);
    assert_eq!(r.ctx(p).pc, PC, "ELR_EL2 of an HVC is past it already");
    // SMC: the same ABI, stepped over.
    r.ctx(p).x[0] = u64::from(kvm::HYP_MEMINFO);
    let smc = sync(ec::SMC64 << ESR_EC_SHIFT | ESR_IL, 0);
    assert_eq!(r.exit(p, smc, &mut hal), ExitAction::Resume);
    assert_eq!((r.ctx(p).x[0], r.ctx(p).pc), (4096, PC + 4));
    // WFI halts (no timer: no deadline), WFE does not; both step over.
    let wfi = sync(ec::WFX << ESR_EC_SHIFT | ESR_IL, 0);
    assert_eq!(
        r.exit(p, wfi, &mut hal),
        ExitAction::Exit([ret::SUCCESS, exit::HALT, abi::vgic::NO_DEADLINE, 0])
    );
    assert_eq!(r.ctx(p).pc, PC + 8);
    let wfe = sync(ec::WFX << ESR_EC_SHIFT | ESR_IL | ISS_WFX_TI_WFE, 0);
    assert_eq!(r.exit(p, wfe, &mut hal), ExitAction::Resume);
    assert_eq!(r.ctx(p).pc, PC + 12);
    // A trapped system register (EC 0x18) other than the SGI registers:
    // undef injected, guest resumes.
    let before = r.ctx(p).pc;
    let sysreg = sync(0x18 << ESR_EC_SHIFT | ESR_IL | 0x30_0000, 0);
    assert_eq!(r.exit(p, sysreg, &mut hal), ExitAction::Resume);
    assert_eq!(r.ctx(p).elr_el1, before);
    assert_eq!(r.ctx(p).pc, VBAR + VBAR_CURRENT_SPX);
    assert_eq!(r.ctx(p).sys.esr_el1, ESR_IL);
    // Host interrupts and anything but the three vectors.
    let irq = GuestTrap {
        vector: VECTOR_LOWER_IRQ,
        ..hvc
    };
    assert_eq!(
        r.exit(p, irq, &mut hal),
        ExitAction::Exit([ret::SUCCESS, exit::INTERRUPTED, 0, 0])
    );
    let serror = GuestTrap { vector: 11, ..hvc };
    assert!(
        matches!(r.exit(p, serror, &mut hal), ExitAction::Exit([x0, ..]) if x0 == ret::INVALID_PARAMETER)
    );
}

#[test]
fn wfi_wakes_on_pending_interrupts_and_halts_until_the_timer() {
    use crate::vgic::{cntv_ctl, make_lr};
    let (mut mem, mut metas) = (tu::memory(), tu::metas());
    let mut hal = tu::hal(&mut mem);
    let mut r = rig(&mut metas, &mut hal);
    let p = r.p;
    let wfi = |now| GuestTrap {
        now,
        ..sync(ec::WFX << ESR_EC_SHIFT | ESR_IL, 0)
    };
    // An armed timer: halt until its deadline; once due, run on.
    r.ctx(p).timer.cntv_ctl_el0 = cntv_ctl::ENABLE;
    r.ctx(p).timer.cntv_cval_el0 = 5000;
    assert_eq!(
        r.exit(p, wfi(10), &mut hal),
        ExitAction::Exit([ret::SUCCESS, exit::HALT, 5000, 0])
    );
    assert_eq!(r.exit(p, wfi(5000), &mut hal), ExitAction::Resume);
    // Masked: no deadline.
    r.ctx(p).timer.cntv_ctl_el0 |= cntv_ctl::IMASK;
    assert!(matches!(
        r.exit(p, wfi(10), &mut hal),
        ExitAction::Exit([_, exit::HALT, abi::vgic::NO_DEADLINE, _])
    ));
    // A pending list register or a waiting INTID: run on.
    r.ctx(p).gic.lr[2] = make_lr(40);
    assert_eq!(r.exit(p, wfi(10), &mut hal), ExitAction::Resume);
    r.ctx(p).gic.lr[2] = 0;
    let vcpu = r.vms.get_mut(p).and_then(|vm| vm.vcpu_mut(0));
    vcpu.expect("vcpu 0").irq_pending = 1 << 33;
    assert_eq!(r.exit(p, wfi(10), &mut hal), ExitAction::Resume);
}

#[test]
fn sgis_reach_their_targets_and_name_the_ones_to_kick() {
    let (mut mem, mut metas) = (tu::memory(), tu::metas());
    let mut hal = tu::hal(&mut mem);
    let mut r = rig(&mut metas, &mut hal);
    let n = r.n;
    for i in 1..3 {
        assert_eq!(r.vms.create_vcpu(n, i, 0), Ok(i));
    }
    let pending = |r: &Rig<'_>, i: usize| {
        r.vms
            .get(n)
            .and_then(|vm| vm.vcpu(i))
            .map(|v| v.irq_pending)
    };
    // MSR ICC_SGI1R_EL1, x5: Op0 3, Op1 0, CRn 12, CRm 11, Op2 5, Rt 5.
    let msr = |rt: u64| {
        sync(
            ec::SYSREG << ESR_EC_SHIFT | ESR_IL | ICC_SGI1R_EL1 | rt << ISS_SYSREG_RT_SHIFT,
            0,
        )
    };
    let pc = r.ctx(n).pc;
    // SGI 6 to vCPUs 1 and 2 (Aff0 1, 2): both pending, both kicked.
    r.ctx(n).x[5] = 6 << 24 | 0b110;
    assert_eq!(
        handle_guest_exit(&mut r.vms, n, 0, msr(5), &mut r.mp, &mut hal),
        ExitAction::Exit([ret::SUCCESS, exit::KICK, 0b110, 0])
    );
    assert_eq!(r.ctx(n).pc, pc + 4, "stepped over");
    assert_eq!(
        (pending(&r, 1), pending(&r, 2)),
        (Some(1 << 6), Some(1 << 6))
    );
    assert_eq!(pending(&r, 0), Some(0));
    // To itself only: pending, nobody to kick.
    r.ctx(n).x[5] = 2 << 24 | 0b1;
    assert_eq!(
        handle_guest_exit(&mut r.vms, n, 0, msr(5), &mut r.mp, &mut hal),
        ExitAction::Resume
    );
    assert_eq!(pending(&r, 0), Some(1 << 2));
    // IRM: all but the sender.
    r.ctx(n).x[7] = 1 << 40 | 9 << 24;
    assert_eq!(
        handle_guest_exit(&mut r.vms, n, 0, msr(7), &mut r.mp, &mut hal),
        ExitAction::Exit([ret::SUCCESS, exit::KICK, 0b110, 0])
    );
    assert_eq!(pending(&r, 1), Some(1 << 6 | 1 << 9));
    // Nobody there (Aff1 = 1): nothing changes.
    r.ctx(n).x[5] = 1 << 16 | 3 << 24 | 0xffff;
    assert_eq!(
        handle_guest_exit(&mut r.vms, n, 0, msr(5), &mut r.mp, &mut hal),
        ExitAction::Resume
    );
    assert_eq!(pending(&r, 2), Some(1 << 6 | 1 << 9));
    // Reading the write-only register, or another GIC register: undef.
    let vbar = r.ctx(n).sys.vbar_el1;
    let read = sync(
        ec::SYSREG << ESR_EC_SHIFT | ESR_IL | ICC_SGI1R_EL1 | ISS_SYSREG_READ,
        0,
    );
    assert_eq!(
        handle_guest_exit(&mut r.vms, n, 0, read, &mut r.mp, &mut hal),
        ExitAction::Resume
    );
    assert_eq!(r.ctx(n).pc, vbar + VBAR_CURRENT_SPX);
    // Group 0 / other security state SGIs are ignored.
    r.ctx(n).pc = pc;
    r.ctx(n).x[5] = 4 << 24 | 0b10;
    for iss in [ICC_ASGI1R_EL1, ICC_SGI0R_EL1] {
        let t = sync(
            ec::SYSREG << ESR_EC_SHIFT | ESR_IL | iss | 5 << ISS_SYSREG_RT_SHIFT,
            0,
        );
        assert_eq!(
            handle_guest_exit(&mut r.vms, n, 0, t, &mut r.mp, &mut hal),
            ExitAction::Resume
        );
    }
    assert_eq!(pending(&r, 1), Some(1 << 6 | 1 << 9));
    // VM_STATS: seven traps, two of them exits to the host.
    assert_eq!(
        r.vms.stats(n),
        Ok(crate::vm::VmStats {
            guest_traps: 7,
            host_exits: 2,
        })
    );
}

#[test]
fn debug_pmu_and_physical_timer_registers_read_as_zero_and_ignore_writes() {
    let (mut mem, mut metas) = (tu::memory(), tu::metas());
    let mut hal = tu::hal(&mut mem);
    let mut r = rig(&mut metas, &mut hal);
    let p = r.p;
    let access = |op0, op1, crn, crm, op2, rt: u64, read: bool| {
        let dir = if read { ISS_SYSREG_READ } else { 0 };
        sync(
            ec::SYSREG << ESR_EC_SHIFT
                | ESR_IL
                | sysreg_iss(op0, op1, crn, crm, op2)
                | rt << ISS_SYSREG_RT_SHIFT
                | dir,
            0,
        )
    };
    for (name, op0, op1, crn, crm, op2) in [
        ("MDSCR_EL1", 2, 0, 0, 2, 2),
        ("OSLAR_EL1", 2, 0, 1, 0, 4),
        ("OSDLR_EL1", 2, 0, 1, 3, 4),
        ("DBGBCR0_EL1", 2, 0, 0, 0, 5),
        ("PMCR_EL0", 3, 3, 9, 12, 0),
        ("PMUSERENR_EL0", 3, 3, 9, 14, 0),
        ("PMINTENSET_EL1", 3, 0, 9, 14, 1),
        ("PMEVCNTR3_EL0", 3, 3, 14, 8, 3),
        ("CNTP_CTL_EL0", 3, 3, 14, 2, 1),
    ] {
        let iss = sysreg_iss(op0, op1, crn, crm, op2);
        assert_eq!(classify_sysreg(iss), SysregTrap::RazWi, "{name}");
        let pc = r.ctx(p).pc;
        r.ctx(p).x[3] = 0xdead;
        let read = access(op0, op1, crn, crm, op2, 3, true);
        assert_eq!(r.exit(p, read, &mut hal), ExitAction::Resume, "{name}");
        assert_eq!((r.ctx(p).x[3], r.ctx(p).pc), (0, pc + 4), "{name} reads 0");
        r.ctx(p).x[3] = 0xbeef;
        let write = access(op0, op1, crn, crm, op2, 3, false);
        assert_eq!(r.exit(p, write, &mut hal), ExitAction::Resume, "{name}");
        assert_eq!(
            (r.ctx(p).x[3], r.ctx(p).pc),
            (0xbeef, pc + 8),
            "{name} write"
        );
    }
    // An IMPDEF register (TIDCP) or the virtual timer's neighbours: undef.
    for (op0, op1, crn, crm, op2) in [(3, 0, 15, 0, 0), (3, 3, 14, 0, 1), (3, 0, 1, 0, 1)] {
        let iss = sysreg_iss(op0, op1, crn, crm, op2);
        assert_eq!(classify_sysreg(iss), SysregTrap::Undef, "{iss:#x}");
    }
}

#[test]
fn sharing_a_page_never_touched_faults_it_in_then_runs_the_call_again() {
    let (mut mem, mut metas) = (tu::memory(), tu::metas());
    let mut hal = tu::hal(&mut mem);
    let mut r = rig(&mut metas, &mut hal);
    let p = r.p;
    // RAM + 2 pages was never donated: MEM_SHARE of it exits MEM_FAULT with
    // the PC back on the HVC and x0..x3 as the guest left them.
    let untouched = RAM + 2 * 4096;
    let hvc = sync(ec::HVC64 << ESR_EC_SHIFT | ESR_IL, 0);
    let share = |r: &mut Rig<'_>| {
        r.ctx(p).x[0] = u64::from(kvm::MEM_SHARE);
        r.ctx(p).x[1] = untouched;
        r.ctx(p).pc = PC + 4; // ELR_EL2 of an HVC: past it
    };
    share(&mut r);
    assert_eq!(
        r.exit(p, hvc, &mut hal),
        ExitAction::Exit([ret::SUCCESS, exit::MEM_FAULT, untouched, mem_fault::WRITE])
    );
    assert_eq!((r.ctx(p).pc, r.ctx(p).x[1]), (PC, untouched));
    // The host runs it again without giving the page: the call fails.
    assert_eq!(r.rerun(p, RunRequest::default(), &hal), Ok(()));
    assert_eq!(
        (r.ctx(p).x[0], r.ctx(p).pc),
        (ret::INVALID_PARAMETER, PC + 4)
    );
    // Again, and this time the host donates the page first: the HVC runs
    // again and the share reaches the host.
    share(&mut r);
    assert!(matches!(
        r.exit(p, hvc, &mut hal),
        ExitAction::Exit([_, exit::MEM_FAULT, ..])
    ));
    assert_eq!(r.vms.vcpu_put(p, 0), Ok(()));
    let ram = Ipa::new(untouched);
    assert_eq!(
        r.vms
            .donate(&mut r.mp, p, pfn(HOST_FIRST + 8), ram, 1, &mut hal),
        Ok(())
    );
    assert_eq!(
        r.vms.settle_pending(p, 0, RunRequest::default(), &hal),
        Ok(())
    );
    assert_eq!(r.vms.vcpu_load(p, 0).map(|_| ()), Ok(()));
    assert_eq!(r.ctx(p).pc, PC, "on the HVC, to run it again");
    r.ctx(p).pc = PC + 4;
    assert_eq!(
        r.exit(p, hvc, &mut hal),
        ExitAction::Exit([ret::SUCCESS, exit::MEM_SHARE, untouched, 0])
    );
    assert_eq!(r.ctx(p).x[0], ret::SUCCESS);
}
