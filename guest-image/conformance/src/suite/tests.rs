//! The whole sequence against a model of a pKVM hypervisor written from
//! the spec (not from the hyp's code), for both kinds of VM, then against
//! models that get one thing wrong: the TAP must say so, on the right line.

use std::collections::BTreeSet;

use cloister_hyp_core::abi::{self, ret, smccc};
use cloister_hyp_core::guest_abi::{kvm, psci};

use super::*;
use crate::dtb::DtbInfo;

const RAM: (u64, u64) = (0x8000_0000, 64 << 20);
const PAGES: [u64; 2] = [0x8010_0000, 0x8010_1000];
const ENTRY: u64 = 0x8000_0800;
const NOT_SUPPORTED: u64 = ret::NOT_SUPPORTED;
const INVALID: u64 = ret::INVALID_PARAMETER;

/// A pKVM-like hypervisor and a two-vCPU guest.
struct Model {
    kind: VmKind,
    shared: BTreeSet<u64>,
    guarded: BTreeSet<u64>,
    /// The second vCPU: on, and how many AFFINITY_INFO polls until it has
    /// turned itself off.
    secondary_on: bool,
    off_after_polls: u32,
    stored: u64,
    clock: u64,
    calls: Vec<[u64; 4]>,
    /// Deliberate deviations, for the failure tests.
    bug: Option<Bug>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Bug {
    DoubleShareSucceeds,
    UnguardedLoadCompletes,
    SecondaryNeverStarts,
    SystemOffReturns,
}

impl Model {
    fn new(kind: VmKind) -> Self {
        Self {
            kind,
            shared: BTreeSet::new(),
            guarded: BTreeSet::new(),
            secondary_on: false,
            off_after_polls: 0,
            stored: 0,
            clock: 0,
            calls: Vec::new(),
            bug: None,
        }
    }

    fn is_ram(ipa: u64) -> bool {
        (RAM.0..RAM.0 + RAM.1).contains(&ipa)
    }

    fn pkvm(&mut self, regs: [u64; 4]) -> u64 {
        let [fid, ipa, x2, x3] = regs;
        let fid = u32::try_from(fid).unwrap();
        if self.kind == VmKind::Normal {
            return NOT_SUPPORTED;
        }
        if fid == kvm::HYP_MEMINFO {
            return if ipa | x2 | x3 != 0 { INVALID } else { 4096 };
        }
        if x2 | x3 != 0 || ipa % 4096 != 0 {
            return INVALID;
        }
        match fid {
            kvm::MEM_SHARE if Self::is_ram(ipa) => {
                if self.shared.insert(ipa) || self.bug == Some(Bug::DoubleShareSucceeds) {
                    0
                } else {
                    INVALID
                }
            }
            kvm::MEM_UNSHARE if Self::is_ram(ipa) => {
                if self.shared.remove(&ipa) {
                    0
                } else {
                    INVALID
                }
            }
            kvm::MMIO_GUARD if !Self::is_ram(ipa) => {
                self.guarded.insert(ipa);
                0
            }
            _ => INVALID,
        }
    }

    fn psci(&mut self, [fid, a1, a2, a3]: [u64; 4]) -> u64 {
        let this = 0;
        let other = 1;
        match u32::try_from(fid).unwrap() {
            psci::VERSION => psci::VERSION_1_1,
            psci::FEATURES => {
                let known = [psci::VERSION, psci::CPU_ON_64, psci::AFFINITY_INFO_64];
                if known.contains(&u32::try_from(a1).unwrap()) {
                    0
                } else {
                    psci::RET_NOT_SUPPORTED
                }
            }
            psci::AFFINITY_INFO_64 => match a1 {
                _ if a1 == this => psci::AFFINITY_LEVEL_ON,
                _ if a1 == other => {
                    if self.secondary_on && self.off_after_polls > 0 {
                        self.off_after_polls -= 1;
                        if self.off_after_polls == 0 {
                            self.secondary_on = false;
                        }
                    }
                    if self.secondary_on {
                        psci::AFFINITY_LEVEL_ON
                    } else {
                        psci::AFFINITY_LEVEL_OFF
                    }
                }
                _ => psci::RET_INVALID_PARAMS,
            },
            psci::CPU_ON_64 => {
                if a1 == this || (a1 == other && self.secondary_on) {
                    psci::RET_ALREADY_ON
                } else if a1 == other {
                    assert_eq!(a2, ENTRY, "the second vCPU must start at its entry");
                    if self.bug != Some(Bug::SecondaryNeverStarts) {
                        self.secondary_on = true;
                        self.off_after_polls = 3;
                        self.stored = a3;
                    }
                    0
                } else {
                    psci::RET_INVALID_PARAMS
                }
            }
            _ => psci::RET_NOT_SUPPORTED,
        }
    }
}

impl Platform for Model {
    fn hvc(&mut self, regs: [u64; 4]) -> Result<[u64; 4], Exception> {
        self.calls.push(regs);
        let fid = u32::try_from(regs[0]).unwrap();
        let x0 = match fid {
            smccc::VERSION => abi::SMCCC_VERSION_1_1,
            smccc::VENDOR_HYP_CALL_UID => return Ok(abi::KVM_UID.map(u64::from)),
            kvm::FEATURES => match self.kind {
                VmKind::Protected => 0x9d,
                VmKind::Normal => 0x3,
            },
            kvm::HYP_MEMINFO | kvm::MEM_SHARE | kvm::MEM_UNSHARE | kvm::MMIO_GUARD => {
                self.pkvm(regs)
            }
            psci::SYSTEM_OFF if self.bug == Some(Bug::SystemOffReturns) => {
                psci::RET_INTERNAL_FAILURE
            }
            psci::SYSTEM_OFF => panic!("SYSTEM_OFF does not return"),
            _ if fid & 0xffff_ffe0 == 0x8400_0000 || fid & 0xffff_ffe0 == 0xc400_0000 => {
                self.psci(regs)
            }
            _ => NOT_SUPPORTED,
        };
        Ok([x0, 0, 0, 0])
    }

    fn load32(&mut self, addr: u64) -> Result<u64, Exception> {
        let page = addr & !0xfff;
        if self.kind == VmKind::Protected
            && !Model::is_ram(addr)
            && !self.guarded.contains(&page)
            && self.bug != Some(Bug::UnguardedLoadCompletes)
        {
            return Err(Exception {
                esr: 0x25 << 26 | 1 << 25 | 0x10,
                far: addr,
            });
        }
        Ok(0)
    }

    fn mpidr(&self) -> u64 {
        0x8000_0000
    }

    fn secondary_entry(&self) -> u64 {
        ENTRY
    }

    fn secondary_stored(&mut self) -> u64 {
        self.stored
    }

    fn millis(&mut self) -> u64 {
        self.clock += 7;
        self.clock
    }

    fn own_pages(&mut self) -> [u64; 2] {
        PAGES
    }
}

fn info<'a>(bootargs: Option<&'a str>, cpus: &[u64]) -> DtbInfo<'a> {
    DtbInfo {
        bootargs,
        stdout_path: Some("/pl011@9000000"),
        stdout_base: Some(0x0900_0000),
        ram: Some(RAM),
        cpus: CpuList::from_slice(cpus),
    }
}

/// Boots and runs `model` with `dtb`; returns the console text.
fn run_model(model: &mut Model, dtb: Result<DtbInfo<'_>, DtbError>) -> (String, Summary) {
    let cfg = Config::new(0x83e0_0000, dtb);
    let boot = boot(model, &cfg);
    let mut tap = Tap::new(String::new());
    let summary = run(model, &cfg, &boot, &mut tap).unwrap();
    (tap.out().clone(), summary)
}

fn case_lines(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| l.starts_with("ok ") || l.starts_with("not ok "))
        .collect()
}

fn line_of<'a>(out: &'a str, name: &str) -> &'a str {
    case_lines(out)
        .into_iter()
        .find(|l| l.contains(&format!(" - {name}")))
        .unwrap_or_else(|| panic!("no line for {name} in\n{out}"))
}

#[test]
fn a_conforming_protected_vm_passes_every_case() {
    let mut model = Model::new(VmKind::Protected);
    let (out, summary) = run_model(&mut model, Ok(info(Some("expect=protected"), &[0, 1])));
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("# cloister-conformance: protected"));
    assert!(out.contains(&format!("\n1..{}\n", CASES.len())), "{out}");
    let cases = case_lines(&out);
    assert_eq!(cases.len(), CASES.len());
    for (i, line) in cases.iter().enumerate() {
        assert_eq!(*line, format!("ok {} - {}", i + 1, CASES[i].name), "{out}");
    }
    assert_eq!(
        summary,
        Summary {
            passed: u32::try_from(CASES.len()).unwrap(),
            failed: 0,
            skipped: 0
        }
    );
    // The first two calls, before any print: FEATURES, then the console's
    // guard.
    assert_eq!(model.calls[0], [u64::from(kvm::FEATURES), 0, 0, 0]);
    assert_eq!(
        model.calls[1],
        [u64::from(kvm::MMIO_GUARD), 0x0900_0000, 0, 0]
    );
    // Everything the suite shared it unshared again.
    assert!(model.shared.is_empty());
}

#[test]
fn a_conforming_normal_vm_passes_every_case() {
    let mut model = Model::new(VmKind::Normal);
    let (out, summary) = run_model(&mut model, Ok(info(Some("expect=normal"), &[0, 1])));
    assert!(out.starts_with("# cloister-conformance: normal\n"), "{out}");
    assert_eq!(summary.failed, 0, "{out}");
    assert_eq!(summary.skipped, 0, "{out}");
    assert_eq!(case_lines(&out).len(), CASES.len());
}

#[test]
fn detection_disagreeing_with_expect_fails_case_one_only() {
    let mut model = Model::new(VmKind::Normal);
    let (out, summary) = run_model(&mut model, Ok(info(Some("expect=protected"), &[0, 1])));
    assert_eq!(
        case_lines(&out)[0],
        "not ok 1 - vm kind matches expect # got normal (expect=protected) expected the same kind"
    );
    assert_eq!(summary.failed, 1, "{out}");
}

#[test]
fn each_deviation_fails_its_own_case() {
    for (bug, name, why) in [
        (
            Bug::DoubleShareSucceeds,
            "mem share of a page already shared",
            "got 0x0 expected -3",
        ),
        (
            Bug::UnguardedLoadCompletes,
            "mmio load from an unguarded page",
            "got no exception (load from 0xa000000 read 0x0) expected data abort EC 0x25 DFSC 0x10",
        ),
        (
            Bug::SecondaryNeverStarts,
            "second cpu ran with its context id",
            "got a timeout, last 0x0 stored expected 0xc1057e12c0de0001 stored",
        ),
    ] {
        let mut model = Model::new(VmKind::Protected);
        model.bug = Some(bug);
        let (out, summary) = run_model(&mut model, Ok(info(None, &[0, 1])));
        let line = line_of(&out, name);
        assert!(line.starts_with("not ok "), "{bug:?}: {line}");
        assert!(line.ends_with(&format!("# {why}")), "{bug:?}: {line}");
        assert_eq!(summary.failed, 1, "{bug:?}:\n{out}");
    }
}

#[test]
fn one_vcpu_skips_the_second_cpu_cases() {
    let mut model = Model::new(VmKind::Protected);
    let (out, summary) = run_model(&mut model, Ok(info(None, &[0])));
    let skipped: Vec<&str> = case_lines(&out)
        .into_iter()
        .filter(|l| l.contains("# SKIP"))
        .collect();
    assert_eq!(skipped.len(), 5, "{out}");
    assert!(skipped[0].ends_with("vm kind matches expect # SKIP no expect= in /chosen/bootargs"));
    for line in &skipped[1..] {
        assert!(line.contains("second cpu"), "{line}");
        assert!(
            line.ends_with("# SKIP needs a second vCPU in the DTB"),
            "{line}"
        );
    }
    assert_eq!(summary.failed, 0, "{out}");
}

#[test]
fn without_a_dtb_the_console_falls_back_and_ram_cases_skip() {
    let mut model = Model::new(VmKind::Protected);
    let (out, _) = run_model(&mut model, Err(DtbError::BadMagic(0)));
    assert!(
        out.contains("# no usable dtb at 0x83e00000 (bad magic 0x0)"),
        "{out}"
    );
    assert!(
        out.contains("# console 0x9000000 (no stdout-path)"),
        "{out}"
    );
    assert_eq!(
        model.calls[1],
        [u64::from(kvm::MMIO_GUARD), FALLBACK_CONSOLE, 0, 0]
    );
    assert!(line_of(&out, "mem share of an ipa outside guest memory")
        .ends_with("# SKIP no memory node in the DTB"));
}

#[test]
fn arguments_reach_the_registers() {
    let mut model = Model::new(VmKind::Protected);
    run_model(&mut model, Ok(info(None, &[0, 1])));
    let has = |regs: [u64; 4]| model.calls.contains(&regs);
    let fid = u64::from;
    assert!(has([fid(kvm::MEM_SHARE), PAGES[0], 0, 0]));
    assert!(has([fid(kvm::MEM_SHARE), PAGES[1] + 0x10, 0, 0]));
    assert!(has([fid(kvm::MEM_SHARE), PAGES[1], 0, 1]));
    assert!(has([fid(kvm::MEM_SHARE), RAM.0 + RAM.1, 0, 0]));
    assert!(has([fid(kvm::MEM_SHARE), 0x0900_0000, 0, 0]));
    assert!(has([fid(kvm::HYP_MEMINFO), 1, 0, 0]));
    assert!(has([fid(kvm::MMIO_GUARD), spec::PROBE_IPA, 0, 0]));
    assert!(has([fid(psci::CPU_ON_64), 1, ENTRY, spec::CONTEXT_ID]));
    assert!(has([fid(psci::CPU_ON_64), 0, ENTRY, spec::CONTEXT_ID]));
    assert!(has([fid(psci::CPU_ON_64), 0xff, ENTRY, spec::CONTEXT_ID]));
    assert!(has([
        fid(smccc::ARCH_FEATURES),
        fid(spec::UNKNOWN_FID),
        0,
        0
    ]));
}

#[test]
fn the_probe_page_comes_from_the_bootargs() {
    let mut model = Model::new(VmKind::Protected);
    let (out, summary) = run_model(&mut model, Ok(info(Some("probe=0xc000123"), &[0, 1])));
    assert!(out.contains("# mmio probe page 0xc000000\n"), "{out}");
    assert!(model
        .calls
        .contains(&[u64::from(kvm::MMIO_GUARD), 0xc00_0000, 0, 0]));
    assert_eq!(summary.failed, 0, "{out}");
    let (out, _) = run_model(
        &mut Model::new(VmKind::Normal),
        Ok(info(Some("probe=x"), &[0])),
    );
    assert!(
        out.contains("# probe=x is not hex: ignored\n# mmio probe page 0xa000000\n"),
        "{out}"
    );
}

#[test]
fn system_off_returning_bails_out() {
    let mut model = Model::new(VmKind::Normal);
    model.bug = Some(Bug::SystemOffReturns);
    let mut tap = Tap::new(String::new());
    power_off(&mut model, &mut tap).unwrap();
    assert_eq!(
        tap.out().as_str(),
        "# system off\nBail out! SYSTEM_OFF returned -6\n"
    );
}
