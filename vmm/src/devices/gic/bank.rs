//! The per-interrupt registers the distributor and the redistributors'
//! SGI frames share, at the same offsets (`IGROUPR` .. `ICFGR`): one
//! decoder and one set of accessors over a slice of [`Irq`] indexed by
//! INTID. INTIDs outside a block's range read as zero and ignore writes.

use std::ops::Range;

/// One interrupt's state as the guest programs it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Irq {
    /// Group 1 (`IGROUPR`); Linux puts everything in group 1.
    pub group1: bool,
    /// Forwarding enabled (`ISENABLER`).
    pub enabled: bool,
    /// Pending and not yet handed to the hypervisor (`ISPENDR`).
    pub pending: bool,
    /// Active (`ISACTIVER`), as the guest last wrote it.
    pub active: bool,
    /// Edge-triggered (`ICFGR` bit 2n+1).
    pub edge: bool,
    /// Priority (`IPRIORITYR`).
    pub priority: u8,
}

/// `GICD_IGROUPR<n>` / `GICR_IGROUPR0`.
pub const IGROUPR: u64 = 0x0080;
/// `ISENABLER`.
pub const ISENABLER: u64 = 0x0100;
/// `ICENABLER`.
pub const ICENABLER: u64 = 0x0180;
/// `ISPENDR`.
pub const ISPENDR: u64 = 0x0200;
/// `ICPENDR`.
pub const ICPENDR: u64 = 0x0280;
/// `ISACTIVER`.
pub const ISACTIVER: u64 = 0x0300;
/// `ICACTIVER`.
pub const ICACTIVER: u64 = 0x0380;
/// `IPRIORITYR` (byte-accessible).
pub const IPRIORITYR: u64 = 0x0400;
/// `ICFGR`.
pub const ICFGR: u64 = 0x0c00;
/// The block's end: 1020 priority bytes, 64 config words.
const IPRIORITYR_END: u64 = IPRIORITYR + 1020;
const ICFGR_END: u64 = ICFGR + 64 * 4;

/// A one-bit-per-INTID register kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitReg {
    /// `IGROUPR`.
    Group,
    /// `ISENABLER`.
    SetEnable,
    /// `ICENABLER`.
    ClearEnable,
    /// `ISPENDR`.
    SetPending,
    /// `ICPENDR`.
    ClearPending,
    /// `ISACTIVER`.
    SetActive,
    /// `ICACTIVER`.
    ClearActive,
}

/// Each bit register's base offset.
const BIT_REGS: [(u64, BitReg); 7] = [
    (IGROUPR, BitReg::Group),
    (ISENABLER, BitReg::SetEnable),
    (ICENABLER, BitReg::ClearEnable),
    (ISPENDR, BitReg::SetPending),
    (ICPENDR, BitReg::ClearPending),
    (ISACTIVER, BitReg::SetActive),
    (ICACTIVER, BitReg::ClearActive),
];

/// A decoded offset in the shared block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reg {
    /// A 32-bit register covering INTIDs `first .. first + 32`.
    Bits(BitReg, u32),
    /// Priority bytes starting at this INTID.
    Priority(u32),
    /// A 32-bit config register covering INTIDs `first .. first + 16`.
    Config(u32),
}

/// Decodes `offset` (of an access of `len` bytes): `None` if it is not in
/// the block, or not an access the architecture defines there (bit and
/// config registers: 32-bit aligned; priorities: any aligned 1, 2 or 4
/// bytes).
pub fn decode(offset: u64, len: usize) -> Option<Reg> {
    let first = |base: u64, per_word: u64| u32::try_from((offset - base) / 4 * per_word).ok();
    match offset {
        IPRIORITYR..IPRIORITYR_END => {
            let aligned = matches!(len, 1 | 2 | 4) && offset.is_multiple_of(len as u64);
            let id = u32::try_from(offset - IPRIORITYR).ok()?;
            aligned.then_some(Reg::Priority(id))
        }
        _ if len != 4 || !offset.is_multiple_of(4) => None,
        ICFGR..ICFGR_END => Some(Reg::Config(first(ICFGR, 16)?)),
        IGROUPR..IPRIORITYR => {
            let base = IGROUPR + (offset - IGROUPR) / 0x80 * 0x80;
            let kind = BIT_REGS.iter().find(|(b, _)| *b == base)?.1;
            Some(Reg::Bits(kind, first(base, 32)?))
        }
        _ => None,
    }
}

/// A block of interrupts: `irqs[intid]`, of which `valid` exist here and
/// `config_writable` may change trigger mode.
#[derive(Debug)]
pub struct Block<'a> {
    /// The state, indexed by INTID.
    pub irqs: &'a mut [Irq],
    /// INTIDs this block implements.
    pub valid: Range<u32>,
    /// INTIDs whose `ICFGR` bit the guest may change.
    pub config_writable: Range<u32>,
}

impl Block<'_> {
    fn irq(&mut self, intid: u32) -> Option<&mut Irq> {
        if !self.valid.contains(&intid) {
            return None;
        }
        self.irqs.get_mut(usize::try_from(intid).ok()?)
    }

    /// A read of `len` bytes of `reg`.
    pub fn read(&mut self, reg: Reg, len: usize) -> u32 {
        match reg {
            Reg::Bits(kind, first) => (0..32u32).fold(0, |acc, i| {
                let bit = self.irq(first + i).is_some_and(|irq| match kind {
                    BitReg::Group => irq.group1,
                    BitReg::SetEnable | BitReg::ClearEnable => irq.enabled,
                    BitReg::SetPending | BitReg::ClearPending => irq.pending,
                    BitReg::SetActive | BitReg::ClearActive => irq.active,
                });
                acc | u32::from(bit) << i
            }),
            Reg::Config(first) => (0..16u32).fold(0, |acc, i| {
                let edge = self.irq(first + i).is_some_and(|irq| irq.edge);
                acc | u32::from(edge) << (2 * i + 1)
            }),
            Reg::Priority(first) => (0..len).rev().fold(0, |acc, i| {
                let id = first + u32::try_from(i).unwrap_or(u32::MAX);
                acc << 8 | u32::from(self.irq(id).map_or(0, |irq| irq.priority))
            }),
        }
    }

    /// A write of `value` (`len` bytes) to `reg`. Returns whether an
    /// interrupt may have become deliverable (enabled, made pending or
    /// regrouped).
    pub fn write(&mut self, reg: Reg, len: usize, value: u32) -> bool {
        let mut maybe_deliverable = false;
        match reg {
            Reg::Bits(kind, first) => {
                for i in 0..32u32 {
                    let set = value & (1 << i) != 0;
                    let Some(irq) = self.irq(first + i) else {
                        continue;
                    };
                    match (kind, set) {
                        (BitReg::Group, _) => {
                            maybe_deliverable |= set && !irq.group1;
                            irq.group1 = set;
                        }
                        (BitReg::SetEnable, true) => {
                            maybe_deliverable = true;
                            irq.enabled = true;
                        }
                        (BitReg::ClearEnable, true) => irq.enabled = false,
                        (BitReg::SetPending, true) => {
                            maybe_deliverable = true;
                            irq.pending = true;
                        }
                        (BitReg::ClearPending, true) => irq.pending = false,
                        (BitReg::SetActive, true) => irq.active = true,
                        (BitReg::ClearActive, true) => irq.active = false,
                        (_, false) => {}
                    }
                }
            }
            Reg::Config(first) => {
                for i in 0..16u32 {
                    let id = first + i;
                    if !self.config_writable.contains(&id) {
                        continue;
                    }
                    if let Some(irq) = self.irq(id) {
                        irq.edge = value & (2 << (2 * i)) != 0;
                    }
                }
            }
            Reg::Priority(first) => {
                for (i, byte) in value.to_le_bytes().iter().take(len).enumerate() {
                    let id = first + u32::try_from(i).unwrap_or(u32::MAX);
                    if let Some(irq) = self.irq(id) {
                        irq.priority = *byte;
                    }
                }
            }
        }
        maybe_deliverable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_decode_to_registers_and_intids() {
        assert_eq!(decode(0x80, 4), Some(Reg::Bits(BitReg::Group, 0)));
        assert_eq!(decode(0x84, 4), Some(Reg::Bits(BitReg::Group, 32)));
        assert_eq!(decode(0x104, 4), Some(Reg::Bits(BitReg::SetEnable, 32)));
        assert_eq!(decode(0x188, 4), Some(Reg::Bits(BitReg::ClearEnable, 64)));
        assert_eq!(decode(0x3fc, 4), Some(Reg::Bits(BitReg::ClearActive, 992)));
        assert_eq!(decode(0x420, 1), Some(Reg::Priority(32)));
        assert_eq!(decode(0x421, 1), Some(Reg::Priority(33)));
        assert_eq!(decode(0x422, 2), Some(Reg::Priority(34)));
        assert_eq!(decode(0xc08, 4), Some(Reg::Config(32)));
        assert_eq!(decode(0x102, 4), None, "misaligned");
        assert_eq!(decode(0x100, 8), None, "64-bit access to a 32-bit register");
        assert_eq!(decode(0x421, 2), None, "misaligned halfword");
        assert_eq!(decode(0x7fc, 4), None, "past IPRIORITYR255");
        assert_eq!(decode(0x40, 4), None);
    }

    #[test]
    fn bits_outside_the_block_are_raz_wi() {
        let mut irqs = [Irq::default(); 64];
        let mut b = Block {
            irqs: &mut irqs,
            valid: 32..64,
            config_writable: 32..64,
        };
        assert!(b.write(Reg::Bits(BitReg::SetEnable, 32), 4, u32::MAX));
        assert!(!b.write(Reg::Bits(BitReg::SetEnable, 0), 4, u32::MAX));
        assert_eq!(b.read(Reg::Bits(BitReg::SetEnable, 0), 4), 0);
        assert_eq!(b.read(Reg::Bits(BitReg::ClearEnable, 32), 4), u32::MAX);
        b.write(Reg::Bits(BitReg::ClearEnable, 32), 4, 0x0000_ffff);
        assert_eq!(b.read(Reg::Bits(BitReg::SetEnable, 32), 4), 0xffff_0000);
        assert_eq!(
            b.read(Reg::Bits(BitReg::SetEnable, 64), 4),
            0,
            "past the slice"
        );
        b.write(Reg::Priority(60), 4, 0xa0b0_c0d0);
        assert_eq!(b.read(Reg::Priority(60), 4), 0xa0b0_c0d0);
        assert_eq!(b.read(Reg::Priority(61), 1), 0xc0);
        assert_eq!(b.read(Reg::Priority(62), 2), 0xa0b0);
        b.write(Reg::Config(48), 4, 0xaaaa_aaaa);
        assert!(b.irqs[63].edge && b.irqs[48].edge && !b.irqs[47].edge);
        assert_eq!(b.read(Reg::Config(48), 4), 0xaaaa_aaaa);
    }
}
