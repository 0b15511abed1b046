//! The distributor's and a redistributor's register files.

use super::bank::{self, Irq};
use super::{block, FIRST_SPI};

/// INTIDs the GIC implements: SGIs, PPIs and SPIs up to 127.
pub const NR_IRQS: u32 = 128;
/// The distributor's window.
pub const GICD_SIZE: u64 = 0x1_0000;
/// One redistributor: its RD_base and SGI_base frames (no VLPI frames).
pub const GICR_STRIDE: u64 = 0x2_0000;
/// The SGI_base frame's offset in a redistributor.
const SGI_BASE: u64 = 0x1_0000;

const GICD_CTLR: u64 = 0x0000;
const GICD_TYPER: u64 = 0x0004;
const GICD_IIDR: u64 = 0x0008;
const GICD_TYPER2: u64 = 0x000c;
const GICD_STATUSR: u64 = 0x0010;
const GICD_IROUTER: u64 = 0x6000;
const GICD_IGRPMODR: u64 = 0x0d00;
const GICD_NSACR: u64 = 0x0e00;

const GICR_CTLR: u64 = 0x0000;
const GICR_IIDR: u64 = 0x0004;
const GICR_TYPER: u64 = 0x0008;
const GICR_STATUSR: u64 = 0x0010;
const GICR_WAKER: u64 = 0x0014;
const GICR_PROPBASER: u64 = 0x0070;
const GICR_PENDBASER: u64 = 0x0078;
const GICR_IGRPMODR0: u64 = SGI_BASE + 0x0d00;
const GICR_NSACR: u64 = SGI_BASE + 0x0e00;

/// `GICD_CTLR.EnableGrp0` (with DS = 1).
const CTLR_ENABLE_G0: u32 = 1 << 0;
/// `GICD_CTLR.EnableGrp1`.
pub const CTLR_ENABLE_G1: u32 = 1 << 1;
/// `GICD_CTLR.ARE`: RAO/WI, affinity routing is the only mode.
const CTLR_ARE: u32 = 1 << 4;
/// `GICD_CTLR.DS`: RAO/WI, one security state.
const CTLR_DS: u32 = 1 << 6;

/// `GICD_TYPER`: ITLinesNumber 3 (128 INTIDs), IDbits 9 (10-bit INTIDs),
/// no security extension, no LPIs, no MBIS, no extended SPIs, RSS 0;
/// CPUNumber is added per VM.
const TYPER_BASE: u32 = 3 | (9 << 19);

/// `IROUTER.Interrupt_Routing_Mode`: any PE (delivered to vCPU 0).
const IROUTER_IRM: u64 = 1 << 31;
/// IROUTER's writable bits: Aff3, IRM, Aff2..Aff0.
const IROUTER_MASK: u64 = 0xff_0000_0000 | IROUTER_IRM | 0xff_ffff;

/// `GICR_WAKER.ProcessorSleep`.
const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
/// `GICR_WAKER.ChildrenAsleep`.
const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;

/// `GICR_TYPER.Last`.
const GICR_TYPER_LAST: u64 = 1 << 4;

/// Product 0x43 ('C', Cloister), revision 0, implementer Arm (0x43b): no
/// quirk in Linux matches it.
const IIDR: u32 = 0x4300_043b;

/// The CoreSight ID registers at 0xffd0..0xfffc (PIDR4..7, PIDR0..3,
/// CIDR0..3): PIDR2 says GICv3 (ArchRev 3 in bits 7:4), which both the
/// distributor and the redistributor probes check.
fn id_reg(offset: u64) -> Option<u32> {
    Some(match offset {
        0xffd0 => 0x04,
        0xffd4..=0xffdc => 0,
        0xffe0 => 0x92,
        0xffe4 => 0xb4,
        0xffe8 => 0x3b,
        0xffec => 0,
        0xfff0 => 0x0d,
        0xfff4 => 0xf0,
        0xfff8 => 0x05,
        0xfffc => 0xb1,
        _ => return None,
    })
}

/// An access's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access<T> {
    /// Handled: the value read, or whether delivery must be rechecked.
    Done(T),
    /// Not a register of this model (RAZ/WI, logged by the caller).
    Unknown,
}

/// Reads of 64-bit registers: the whole register or either 32-bit half.
fn read64(reg: u64, offset_in_reg: u64, len: usize) -> Option<u64> {
    match (offset_in_reg, len) {
        (0, 8) => Some(reg),
        (0, 4) => Some(reg & 0xffff_ffff),
        (4, 4) => Some(reg >> 32),
        _ => None,
    }
}

/// A write to a 64-bit register (whole or half) merged into `old`.
fn write64(old: u64, offset_in_reg: u64, len: usize, value: u64) -> Option<u64> {
    match (offset_in_reg, len) {
        (0, 8) => Some(value),
        (0, 4) => Some((old & !0xffff_ffff) | (value & 0xffff_ffff)),
        (4, 4) => Some((old & 0xffff_ffff) | (value << 32)),
        _ => None,
    }
}

fn low32(value: u64) -> u32 {
    u32::try_from(value & 0xffff_ffff).unwrap_or(0)
}

/// The distributor.
#[derive(Debug)]
pub struct Dist {
    ctlr: u32,
    irqs: [Irq; NR_IRQS as usize],
    routes: [u64; NR_IRQS as usize],
}

impl Dist {
    /// At reset: disabled, every SPI group 0, level, disabled, routed to
    /// Aff 0.0.0.0.
    pub fn new() -> Self {
        Self {
            ctlr: 0,
            irqs: [Irq::default(); NR_IRQS as usize],
            routes: [0; NR_IRQS as usize],
        }
    }

    /// SPI `intid`'s state (callers check the range).
    pub fn irq_mut(&mut self, intid: u32) -> &mut Irq {
        let i = usize::try_from(intid).unwrap_or(0) % self.irqs.len();
        &mut self.irqs[i]
    }

    /// The vCPU that should get `intid` now, if it is pending and the
    /// distributor forwards it: group 1 enabled, the SPI enabled, routed
    /// to an existing vCPU (IRM: vCPU 0). Group-0 SPIs are never
    /// forwarded: the hypervisor injects everything as group 1.
    pub fn deliverable(&mut self, intid: u32, vcpus: u32) -> Option<u32> {
        let irq = *self.irq_mut(intid);
        let ok = irq.pending && irq.enabled && irq.group1 && self.ctlr & CTLR_ENABLE_G1 != 0;
        if !ok {
            return None;
        }
        let route = self
            .routes
            .get(usize::try_from(intid).ok()?)
            .copied()
            .unwrap_or(0);
        if route & IROUTER_IRM != 0 {
            return Some(0);
        }
        let aff0 = u32::try_from(route & 0xff).ok()?;
        (route & !0xff == 0 && aff0 < vcpus).then_some(aff0)
    }

    fn typer(vcpus: u32) -> u32 {
        TYPER_BASE | ((vcpus.saturating_sub(1) & 7) << 5)
    }

    /// A load of `len` bytes at `offset`.
    pub fn read(&mut self, offset: u64, len: usize, vcpus: u32) -> Access<u64> {
        if let Some(reg) = bank::decode(offset, len) {
            let mut b = block(&mut self.irqs, FIRST_SPI..NR_IRQS, FIRST_SPI..NR_IRQS);
            return Access::Done(u64::from(b.read(reg, len)));
        }
        if (GICD_IROUTER..GICD_IROUTER + 8 * 1024).contains(&offset) {
            let n = (offset - GICD_IROUTER) / 8;
            let route = usize::try_from(n)
                .ok()
                .filter(|&n| n >= FIRST_SPI as usize)
                .and_then(|n| self.routes.get(n).copied());
            // Unimplemented SPIs (and the SGI/PPI slots): RAZ.
            return match read64(route.unwrap_or(0), offset % 8, len) {
                Some(v) => Access::Done(v),
                None => Access::Unknown,
            };
        }
        if len != 4 || !offset.is_multiple_of(4) {
            return Access::Unknown;
        }
        Access::Done(u64::from(match offset {
            GICD_CTLR => self.ctlr | CTLR_ARE | CTLR_DS,
            GICD_TYPER => Self::typer(vcpus),
            GICD_IIDR => IIDR,
            GICD_TYPER2 | GICD_STATUSR => 0,
            // Single security state: IGRPMODR and NSACR are RAZ/WI;
            // ITARGETSR and SGIR mean nothing with affinity routing.
            GICD_IGRPMODR..0x0e00 | GICD_NSACR..0x0f00 | 0x0800..0x0c00 | 0x0f00..0x0f30 => 0,
            _ => match id_reg(offset) {
                Some(v) => v,
                None => return Access::Unknown,
            },
        }))
    }

    /// A store of `value` (`len` bytes) at `offset`: `Done(true)` if a
    /// pending SPI may have become deliverable.
    pub fn write(&mut self, offset: u64, len: usize, value: u64) -> Access<bool> {
        if let Some(reg) = bank::decode(offset, len) {
            let mut b = block(&mut self.irqs, FIRST_SPI..NR_IRQS, FIRST_SPI..NR_IRQS);
            return Access::Done(b.write(reg, len, low32(value)));
        }
        if (GICD_IROUTER..GICD_IROUTER + 8 * 1024).contains(&offset) {
            let n = usize::try_from((offset - GICD_IROUTER) / 8).unwrap_or(usize::MAX);
            if !(FIRST_SPI as usize..NR_IRQS as usize).contains(&n) {
                return Access::Done(false);
            }
            let Some(old) = self.routes.get(n).copied() else {
                return Access::Done(false);
            };
            return match write64(old, offset % 8, len, value) {
                Some(new) => {
                    if let Some(slot) = self.routes.get_mut(n) {
                        *slot = new & IROUTER_MASK;
                    }
                    Access::Done(true)
                }
                None => Access::Unknown,
            };
        }
        if len != 4 || !offset.is_multiple_of(4) {
            return Access::Unknown;
        }
        match offset {
            GICD_CTLR => {
                let old = self.ctlr;
                // RWP is always 0: writes take effect at once.
                self.ctlr = low32(value) & (CTLR_ENABLE_G0 | CTLR_ENABLE_G1);
                Access::Done(self.ctlr & !old != 0)
            }
            GICD_TYPER | GICD_IIDR | GICD_TYPER2 | GICD_STATUSR => Access::Done(false),
            GICD_IGRPMODR..0x0e00 | GICD_NSACR..0x0f00 | 0x0800..0x0c00 | 0x0f00..0x0f30 => {
                Access::Done(false)
            }
            _ if id_reg(offset).is_some() => Access::Done(false),
            _ => Access::Unknown,
        }
    }
}

/// One vCPU's redistributor: its RD_base frame and its SGI_base frame's
/// SGI and PPI registers (plain state: the hypervisor delivers those).
#[derive(Debug)]
pub struct Redist {
    typer: u64,
    waker: u32,
    irqs: [Irq; 32],
}

impl Redist {
    /// vCPU `index`'s redistributor, `last` if it is the highest one.
    pub fn new(index: u32, last: bool) -> Self {
        let mut irqs = [Irq::default(); 32];
        for sgi in irqs.iter_mut().take(16) {
            sgi.edge = true;
        }
        Self {
            // Affinity in 63:32 (Aff0 = index), processor number in 23:8,
            // no PLPIS/VLPIS/DirectLPI, 16 PPIs.
            typer: (u64::from(index) << 32)
                | (u64::from(index) << 8)
                | if last { GICR_TYPER_LAST } else { 0 },
            waker: WAKER_PROCESSOR_SLEEP | WAKER_CHILDREN_ASLEEP,
            irqs,
        }
    }

    /// A load of `len` bytes at `offset` in this redistributor.
    pub fn read(&mut self, offset: u64, len: usize) -> Access<u64> {
        if offset >= SGI_BASE {
            if let Some(reg) = bank::decode(offset - SGI_BASE, len) {
                let mut b = block(&mut self.irqs, 0..32, 16..32);
                return Access::Done(u64::from(b.read(reg, len)));
            }
        }
        if (GICR_TYPER..GICR_TYPER + 8).contains(&offset) {
            return read64(self.typer, offset - GICR_TYPER, len)
                .map_or(Access::Unknown, Access::Done);
        }
        if (GICR_PROPBASER..GICR_PENDBASER + 8).contains(&offset) {
            // No LPIs: RAZ/WI.
            return read64(0, offset % 8, len).map_or(Access::Unknown, Access::Done);
        }
        if len != 4 || !offset.is_multiple_of(4) {
            return Access::Unknown;
        }
        Access::Done(u64::from(match offset {
            // No LPIs, RWP always 0.
            GICR_CTLR | GICR_STATUSR => 0,
            GICR_IIDR => IIDR,
            GICR_WAKER => self.waker,
            GICR_IGRPMODR0 | GICR_NSACR => 0,
            _ => match id_reg(offset) {
                Some(v) => v,
                None => return Access::Unknown,
            },
        }))
    }

    /// A store; false if the offset is not a register (RAZ/WI, logged).
    pub fn write(&mut self, offset: u64, len: usize, value: u64) -> bool {
        if offset >= SGI_BASE {
            if let Some(reg) = bank::decode(offset - SGI_BASE, len) {
                let mut b = block(&mut self.irqs, 0..32, 16..32);
                b.write(reg, len, low32(value));
                return true;
            }
        }
        if (GICR_PROPBASER..GICR_PENDBASER + 8).contains(&offset) {
            return matches!((offset % 8, len), (0, 8) | (0, 4) | (4, 4));
        }
        if len != 4 || !offset.is_multiple_of(4) {
            return (GICR_TYPER..GICR_TYPER + 8).contains(&offset);
        }
        match offset {
            GICR_WAKER => {
                // The redistributor wakes (or sleeps) at once: ChildrenAsleep
                // follows ProcessorSleep.
                self.waker = if low32(value) & WAKER_PROCESSOR_SLEEP != 0 {
                    WAKER_PROCESSOR_SLEEP | WAKER_CHILDREN_ASLEEP
                } else {
                    0
                };
                true
            }
            GICR_CTLR | GICR_IIDR | GICR_TYPER | 0x000c | GICR_STATUSR => true,
            GICR_IGRPMODR0 | GICR_NSACR => true,
            _ => id_reg(offset).is_some(),
        }
    }
}
