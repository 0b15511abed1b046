//! The sequence: what the guest does at boot, then every case of
//! [`spec::CASES`] against a [`Platform`], reported as TAP.

use core::fmt::{self, Write};

use cloister_hyp_core::guest_abi::{kvm, psci};

use crate::dtb::{CpuList, DtbError, DtbInfo, Wanted};
use crate::spec::{self, Action, Arg, Exception, Observed, Place, Verdict, VmKind, CASES};
use crate::tap::{Summary, Tap};

/// The console's address when the DTB names none (QEMU virt's and the
/// VMM's PL011).
pub const FALLBACK_CONSOLE: u64 = 0x0900_0000;

/// How long the first vCPU waits for the second one, each time.
pub const SECONDARY_TIMEOUT_MS: u64 = 5000;

/// MPIDR affinity fields (Aff3, Aff2, Aff1, Aff0).
const MPIDR_AFFINITY: u64 = 0xff_00ff_ffff;

/// Page size of the places the suite names.
const PAGE: u64 = spec::GRANULE;

/// What the suite needs from the machine: the aarch64 glue implements it
/// on the real thing, the tests with a model.
pub trait Platform {
    /// `HVC #0` with `x0..x3` = `regs` (and `x4..` zero): `x0..x3` after
    /// it, or the synchronous exception the guest took instead (which was
    /// stepped over).
    ///
    /// # Errors
    /// The exception.
    fn hvc(&mut self, regs: [u64; 4]) -> Result<[u64; 4], Exception>;

    /// A 32-bit load from `addr` (one `LDR` with a valid syndrome, so it
    /// can be emulated): the value, or the exception taken instead.
    ///
    /// # Errors
    /// The exception.
    fn load32(&mut self, addr: u64) -> Result<u64, Exception>;

    /// This vCPU's `MPIDR_EL1`.
    fn mpidr(&self) -> u64;

    /// The address the second vCPU starts at: it stores its `x0` where
    /// [`Self::secondary_stored`] reads, then calls CPU_OFF.
    fn secondary_entry(&self) -> u64;

    /// What the second vCPU stored (0 until it runs).
    fn secondary_stored(&mut self) -> u64;

    /// A clock in milliseconds, for bounded waits.
    fn millis(&mut self) -> u64;

    /// Two distinct, page-aligned pages of the guest's own RAM that nothing
    /// else uses, each already written by the guest.
    fn own_pages(&mut self) -> [u64; 2];
}

/// What the suite knows about the machine before it starts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Config<'a> {
    /// Where the DTB was (`x0` at entry).
    pub dtb_addr: u64,
    /// The DTB as read, or why it could not be.
    pub dtb: Result<DtbInfo<'a>, DtbError>,
    /// The console's base address.
    pub console: u64,
    /// The page the MMIO cases probe (page-aligned).
    pub probe: u64,
}

impl<'a> Config<'a> {
    /// The configuration from a DTB read (or not) at `dtb_addr`: the
    /// console is `stdout-path`'s node, or [`FALLBACK_CONSOLE`]; the probe
    /// page is `probe=` from the bootargs (rounded down to a page), or
    /// [`spec::PROBE_IPA`].
    pub fn new(dtb_addr: u64, dtb: Result<DtbInfo<'a>, DtbError>) -> Self {
        let info = dtb.unwrap_or_default();
        let console = info.stdout_base.unwrap_or(FALLBACK_CONSOLE);
        let probe = info
            .bootargs
            .and_then(crate::dtb::probe_addr)
            .and_then(Result::ok)
            .map_or(spec::PROBE_IPA, page_of);
        Self {
            dtb_addr,
            dtb,
            console,
            probe,
        }
    }

    fn info(&self) -> DtbInfo<'a> {
        self.dtb.unwrap_or_default()
    }

    fn cpus(&self) -> CpuList {
        self.info().cpus
    }

    fn wanted(&self) -> Option<Wanted<'a>> {
        self.info().bootargs.and_then(crate::dtb::wanted_kind)
    }
}

/// What the guest did before its first print.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Boot {
    /// KVM FEATURES' result.
    pub features: Result<[u64; 4], Exception>,
    /// The kind detected from it.
    pub kind: VmKind,
    /// MMIO_GUARD of the console's page.
    pub console_guard: Result<[u64; 4], Exception>,
}

/// The guest's first calls: KVM FEATURES (which tells the kind), then
/// MMIO_GUARD of the console's page, which a protected guest needs before
/// it may touch the console (Linux's pKVM guest driver guards every
/// `ioremap`ped device page the same way). In a normal VM the guard is
/// `NOT_SUPPORTED` and the console works anyway.
pub fn boot<P: Platform>(p: &mut P, cfg: &Config<'_>) -> Boot {
    let features = p.hvc([u64::from(kvm::FEATURES), 0, 0, 0]);
    let kind = VmKind::detect(&features);
    let console_guard = p.hvc([u64::from(kvm::MMIO_GUARD), page_of(cfg.console), 0, 0]);
    Boot {
        features,
        kind,
        console_guard,
    }
}

fn page_of(addr: u64) -> u64 {
    addr & !(PAGE - 1)
}

/// A case's arguments resolved, or why the case cannot run here.
fn resolve<P: Platform>(p: &mut P, cfg: &Config<'_>, arg: Arg) -> Result<u64, &'static str> {
    let this = p.mpidr() & MPIDR_AFFINITY;
    let cpus = cfg.cpus();
    Ok(match arg {
        Arg::Imm(v) => v,
        Arg::At(place, offset) => place_addr(p, cfg, place)? + offset,
        Arg::ThisCpu => this,
        Arg::OtherCpu => other_cpu(this, &cpus).ok_or("needs a second vCPU in the DTB")?,
        Arg::NoSuchCpu => (0..=0xffu64)
            .rev()
            .find(|m| *m != this && !cpus.as_slice().contains(m))
            .ok_or("every Aff0 value is a CPU")?,
        Arg::SecondaryEntry => p.secondary_entry(),
        Arg::ContextId => spec::CONTEXT_ID,
    })
}

fn other_cpu(this: u64, cpus: &CpuList) -> Option<u64> {
    cpus.as_slice()
        .iter()
        .map(|m| m & MPIDR_AFFINITY)
        .find(|&m| m != this)
}

fn place_addr<P: Platform>(p: &mut P, cfg: &Config<'_>, place: Place) -> Result<u64, &'static str> {
    let [shared, private] = p.own_pages();
    Ok(match place {
        Place::SharedPage => shared,
        Place::PrivatePage => private,
        Place::RamEnd => {
            let (base, size) = cfg.info().ram.ok_or("no memory node in the DTB")?;
            (base + size).next_multiple_of(PAGE)
        }
        Place::Console => page_of(cfg.console),
        Place::Probe => cfg.probe,
    })
}

/// Waits for the second vCPU's store: `(what it stored, timed out)`.
fn wait_secondary<P: Platform>(p: &mut P) -> (Observed<'static>, bool) {
    let start = p.millis();
    loop {
        let stored = p.secondary_stored();
        if stored != 0 {
            return (Observed::Stored(stored), false);
        }
        if p.millis().saturating_sub(start) > SECONDARY_TIMEOUT_MS {
            return (Observed::Stored(stored), true);
        }
        core::hint::spin_loop();
    }
}

/// Polls AFFINITY_INFO of `target` until OFF: `(last answer, timed out)`.
fn wait_off<P: Platform>(p: &mut P, target: u64) -> (Observed<'static>, bool) {
    let start = p.millis();
    loop {
        let r = p.hvc([u64::from(psci::AFFINITY_INFO_64), target, 0, 0]);
        let done = matches!(r, Ok([x0, ..]) if x0 == psci::AFFINITY_LEVEL_OFF) || r.is_err();
        if done {
            return (Observed::Call(r), false);
        }
        if p.millis().saturating_sub(start) > SECONDARY_TIMEOUT_MS {
            return (Observed::Call(r), true);
        }
        core::hint::spin_loop();
    }
}

/// Runs one action: what it produced and whether a wait ran out.
fn perform<'a, P: Platform>(
    p: &mut P,
    cfg: &Config<'a>,
    boot: &Boot,
    action: Action,
) -> Result<(Observed<'a>, bool), &'static str> {
    Ok(match action {
        Action::KindMatchesExpect => (
            Observed::Kind {
                detected: boot.kind,
                wanted: cfg.wanted(),
            },
            false,
        ),
        Action::ConsoleGuardAtBoot => (Observed::Call(boot.console_guard), false),
        Action::Hvc { fid, args } => {
            let mut regs = [u64::from(fid), 0, 0, 0];
            for (reg, arg) in regs.iter_mut().skip(1).zip(args) {
                *reg = resolve(p, cfg, arg)?;
            }
            (Observed::Call(p.hvc(regs)), false)
        }
        Action::Load(place) => {
            let addr = place_addr(p, cfg, place)?;
            (
                Observed::Load {
                    addr,
                    result: p.load32(addr),
                },
                false,
            )
        }
        Action::SecondaryStarted => {
            resolve(p, cfg, Arg::OtherCpu)?;
            wait_secondary(p)
        }
        Action::SecondaryOff => {
            let target = resolve(p, cfg, Arg::OtherCpu)?;
            wait_off(p, target)
        }
    })
}

/// Prints the header (`# cloister-conformance: <kind>` first, then what
/// the guest found), the plan, and one line per case.
///
/// # Errors
/// Those of `out`.
pub fn run<P: Platform, W: Write>(
    p: &mut P,
    cfg: &Config<'_>,
    boot: &Boot,
    tap: &mut Tap<W>,
) -> Result<Summary, fmt::Error> {
    tap.diag(format_args!("cloister-conformance: {}", boot.kind.name()))?;
    header(p, cfg, boot, tap)?;
    tap.plan(CASES.len())?;
    for case in CASES {
        let expect = case.expect(boot.kind);
        let skip_observed = Observed::Stored(0);
        match perform(p, cfg, boot, case.action) {
            Err(why) => tap.case(case.name, Verdict::Skip(why), &expect, &skip_observed)?,
            Ok((inner, timed_out)) => {
                let observed = if timed_out {
                    Observed::TimedOut(&inner)
                } else {
                    inner
                };
                tap.case(
                    case.name,
                    spec::judge(&expect, &observed),
                    &expect,
                    &observed,
                )?;
            }
        }
    }
    let s = tap.summary();
    tap.diag(format_args!(
        "{} passed, {} failed, {} skipped",
        s.passed, s.failed, s.skipped
    ))?;
    Ok(s)
}

fn header<P: Platform, W: Write>(
    p: &mut P,
    cfg: &Config<'_>,
    boot: &Boot,
    tap: &mut Tap<W>,
) -> fmt::Result {
    match &cfg.dtb {
        Ok(_) => tap.diag(format_args!("dtb at {:#x}", cfg.dtb_addr))?,
        Err(e) => tap.diag(format_args!(
            "no usable dtb at {:#x} ({e}): console, RAM and CPUs unknown",
            cfg.dtb_addr
        ))?,
    }
    let info = cfg.info();
    match (info.stdout_path, info.stdout_base) {
        (Some(path), Some(_)) => tap.diag(format_args!("console {:#x} ({path})", cfg.console))?,
        (Some(path), None) => tap.diag(format_args!(
            "console {:#x} (stdout-path {path} not found)",
            cfg.console
        ))?,
        (None, _) => tap.diag(format_args!("console {:#x} (no stdout-path)", cfg.console))?,
    }
    if let Some((base, size)) = info.ram {
        tap.diag(format_args!("ram {base:#x} size {size:#x}"))?;
    }
    tap.diag(format_args!(
        "this cpu {:#x}, dtb cpus {:x?}",
        p.mpidr() & MPIDR_AFFINITY,
        info.cpus.as_slice()
    ))?;
    match info.bootargs {
        Some(args) => tap.diag(format_args!("bootargs \"{args}\""))?,
        None => tap.diag(format_args!("no bootargs"))?,
    }
    if let Some(Err(bad)) = info.bootargs.and_then(crate::dtb::probe_addr) {
        tap.diag(format_args!("probe={bad} is not hex: ignored"))?;
    }
    tap.diag(format_args!("mmio probe page {:#x}", cfg.probe))?;
    match boot.features {
        Ok(r) => tap.diag(format_args!(
            "kvm features {:#x} {:#x} {:#x} {:#x}",
            r[0], r[1], r[2], r[3]
        )),
        Err(e) => tap.diag(format_args!("kvm features: {e}")),
    }
}

/// The last step: PSCI SYSTEM_OFF, which must not return. If it does,
/// `Bail out!` with what it returned.
///
/// # Errors
/// Those of `out`.
pub fn power_off<P: Platform, W: Write>(p: &mut P, tap: &mut Tap<W>) -> fmt::Result {
    tap.diag(format_args!("system off"))?;
    let r = p.hvc([u64::from(psci::SYSTEM_OFF), 0, 0, 0]);
    let expect = spec::Expect::Completes;
    let observed = Observed::Call(r);
    writeln!(
        tap.out(),
        "Bail out! SYSTEM_OFF returned {}",
        spec::Got {
            expect: &expect,
            observed: &observed
        }
    )
}

#[cfg(test)]
mod tests;
