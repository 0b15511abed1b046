//! The hyp console's UART: which driver a DTB console node needs, where its
//! registers are, and the polled transmit loop.
//!
//! Two kinds of UART, both driven the same way (wait until the transmitter
//! has room, write one byte; no interrupts, no FIFO setup, no baud rate: the
//! firmware left the UART configured, and the host reprograms it later):
//!
//! | kind | `compatible` | data register | status register | ready when |
//! |------|--------------|---------------|-----------------|-----------|
//! | PL011 | `arm,pl011` | DR, offset 0x00, 32-bit | FR, offset 0x18, 32-bit | FR.TXFF (bit 5) clear |
//! | 8250/16550 | `snps,dw-apb-uart`, `ns16550a`, `ns16550` | THR, offset 0 | LSR, offset `5 << reg-shift` | LSR.THRE (bit 5) set |
//!
//! A 16550's registers are `1 << reg-shift` bytes apart (DTB `reg-shift`,
//! default 0) and accessed `reg-io-width` bytes wide (1, the default, 2 or
//! 4: the DesignWare APB UART on RK3588 has `reg-shift = <2>` and
//! `reg-io-width = <4>` and ignores narrower accesses); `reg-offset`, when
//! present, moves the whole register block.
//!
//! Everything here is portable: the EL2 glue implements [`UartIo`] with one
//! volatile load and one volatile store per access width, and the tests
//! implement it over a fake register block.

use core::fmt;

use crate::addr::PhysAddr;

/// Width of a register access.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IoWidth {
    /// 8-bit loads and stores.
    U8,
    /// 16-bit loads and stores.
    U16,
    /// 32-bit loads and stores.
    U32,
}

impl IoWidth {
    /// Bytes per access.
    pub const fn bytes(self) -> u64 {
        match self {
            Self::U8 => 1,
            Self::U16 => 2,
            Self::U32 => 4,
        }
    }
}

/// One UART register: its offset from the UART's base and access width.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Reg {
    /// Byte offset from the UART's base address.
    pub offset: u64,
    /// Access width.
    pub width: IoWidth,
}

/// Most `reg-shift` accepted (registers 16 bytes apart).
pub const MAX_REG_SHIFT: u32 = 4;

const PL011_DR: u64 = 0x00;
const PL011_FR: u64 = 0x18;
const PL011_FR_TXFF: u32 = 1 << 5;
const NS16550_THR: u64 = 0;
const NS16550_LSR: u64 = 5;
const NS16550_LSR_THRE: u32 = 1 << 5;

/// Which driver a console needs, with its register layout.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum UartKind {
    /// Arm PL011.
    Pl011,
    /// 8250/16550-compatible (including the Synopsys DesignWare APB UART).
    Ns16550 {
        /// `reg-shift`: register `n` is at `n << reg_shift`.
        reg_shift: u8,
        /// `reg-io-width`.
        width: IoWidth,
        /// `reg-offset`: added to every register offset.
        reg_offset: u32,
    },
}

/// Why a console node cannot be driven.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConsoleProblem {
    /// No `compatible` string names a driver the hyp has.
    NotCompatible,
    /// `reg-shift` above [`MAX_REG_SHIFT`].
    RegShift(u32),
    /// `reg-io-width` other than 1, 2 or 4.
    RegIoWidth(u32),
    /// The registers the driver uses do not fit in the node's `reg`.
    RegTooSmall {
        /// Size from `reg`.
        size: u64,
        /// Bytes from the base the driver touches.
        needed: u64,
    },
    /// A register the driver uses is not aligned to its access width (a
    /// misaligned device access faults).
    Misaligned {
        /// The register's address.
        addr: u64,
        /// Its access width in bytes.
        width: u64,
    },
}

impl fmt::Display for ConsoleProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotCompatible => f.write_str(
                "is not compatible with arm,pl011, snps,dw-apb-uart, ns16550a or ns16550",
            ),
            Self::RegShift(v) => {
                write!(f, "has reg-shift {v}; at most {MAX_REG_SHIFT} is supported")
            }
            Self::RegIoWidth(v) => {
                write!(f, "has reg-io-width {v}; 1, 2 or 4 is supported")
            }
            Self::RegTooSmall { size, needed } => write!(
                f,
                "has a reg of {size:#x} bytes, but its registers need {needed:#x}"
            ),
            Self::Misaligned { addr, width } => write!(
                f,
                "has a register at {addr:#x} that is not {width}-byte aligned"
            ),
        }
    }
}

impl UartKind {
    /// The driver for a node with this `compatible` list (NUL-separated, as
    /// in the DTB), `reg-shift`, `reg-io-width` and `reg-offset` (`None`:
    /// absent). The first string the hyp knows decides, so a node listing
    /// a specific model before a generic one gets the generic driver.
    ///
    /// # Errors
    /// [`ConsoleProblem::NotCompatible`], [`ConsoleProblem::RegShift`],
    /// [`ConsoleProblem::RegIoWidth`].
    pub fn from_dt(
        compatible: &[u8],
        reg_shift: Option<u32>,
        reg_io_width: Option<u32>,
        reg_offset: Option<u32>,
    ) -> Result<Self, ConsoleProblem> {
        let known = compatible.split(|&b| b == 0).find_map(|c| match c {
            b"arm,pl011" => Some(false),
            b"snps,dw-apb-uart" | b"ns16550a" | b"ns16550" => Some(true),
            _ => None,
        });
        match known {
            None => Err(ConsoleProblem::NotCompatible),
            Some(false) => Ok(Self::Pl011),
            Some(true) => {
                let shift = reg_shift.unwrap_or(0);
                let reg_shift = u8::try_from(shift)
                    .ok()
                    .filter(|&s| u32::from(s) <= MAX_REG_SHIFT)
                    .ok_or(ConsoleProblem::RegShift(shift))?;
                let width = match reg_io_width.unwrap_or(1) {
                    1 => IoWidth::U8,
                    2 => IoWidth::U16,
                    4 => IoWidth::U32,
                    other => return Err(ConsoleProblem::RegIoWidth(other)),
                };
                Ok(Self::Ns16550 {
                    reg_shift,
                    width,
                    reg_offset: reg_offset.unwrap_or(0),
                })
            }
        }
    }

    /// The register a byte to send is written to.
    pub const fn data_reg(self) -> Reg {
        self.reg(PL011_DR, NS16550_THR)
    }

    /// The register polled before each byte.
    pub const fn status_reg(self) -> Reg {
        self.reg(PL011_FR, NS16550_LSR)
    }

    /// PL011 register `pl011` (a byte offset), or 16550 register `ns16550`
    /// (an index, scaled by `reg_shift`), as this UART lays them out.
    const fn reg(self, pl011: u64, ns16550: u64) -> Reg {
        match self {
            Self::Pl011 => Reg {
                offset: pl011,
                width: IoWidth::U32,
            },
            Self::Ns16550 {
                reg_shift,
                width,
                reg_offset,
            } => Reg {
                offset: reg_offset as u64 + (ns16550 << reg_shift),
                width,
            },
        }
    }

    /// Whether a status register value says the transmitter takes a byte.
    pub const fn ready(self, status: u32) -> bool {
        match self {
            Self::Pl011 => status & PL011_FR_TXFF == 0,
            Self::Ns16550 { .. } => status & NS16550_LSR_THRE != 0,
        }
    }

    /// Bytes from the UART's base that the driver touches (the end of the
    /// furthest register it uses).
    pub const fn span(self) -> u64 {
        let data = self.data_reg();
        let status = self.status_reg();
        let a = data.offset + data.width.bytes();
        let b = status.offset + status.width.bytes();
        if a > b {
            a
        } else {
            b
        }
    }

    /// Checks that the registers fit in a `reg` of `size` bytes at `base`
    /// and that each is aligned to its access width, so every access the
    /// driver makes stays inside the UART and is a single aligned one.
    ///
    /// # Errors
    /// [`ConsoleProblem::RegTooSmall`], [`ConsoleProblem::Misaligned`].
    pub const fn check(self, base: u64, size: u64) -> Result<(), ConsoleProblem> {
        let needed = self.span();
        if needed > size {
            return Err(ConsoleProblem::RegTooSmall { size, needed });
        }
        let regs = [self.data_reg(), self.status_reg()];
        let mut i = 0;
        while i < regs.len() {
            let width = regs[i].width.bytes();
            let addr = base.wrapping_add(regs[i].offset);
            if !addr.is_multiple_of(width) {
                return Err(ConsoleProblem::Misaligned { addr, width });
            }
            i += 1;
        }
        Ok(())
    }
}

/// [`UartKind::encode`] tags.
const TAG_PL011: u64 = 1;
const TAG_NS16550: u64 = 2;

impl UartKind {
    /// The kind as one non-zero word (for an atomic the console reads on
    /// every CPU): bits 0..8 the driver, 8..16 `reg_shift`, 16..24 the
    /// access width in bytes, 32..64 `reg_offset`.
    pub const fn encode(self) -> u64 {
        match self {
            Self::Pl011 => TAG_PL011,
            Self::Ns16550 {
                reg_shift,
                width,
                reg_offset,
            } => {
                TAG_NS16550
                    | (reg_shift as u64) << 8
                    | width.bytes() << 16
                    | (reg_offset as u64) << 32
            }
        }
    }

    /// The kind [`encode`](Self::encode) made `word` from; `None` for any
    /// other word (0: no console yet).
    pub fn decode(word: u64) -> Option<Self> {
        let field = |shift: u32| (word >> shift) & 0xff;
        match field(0) {
            TAG_PL011 if word == TAG_PL011 => Some(Self::Pl011),
            TAG_NS16550 if field(24) == 0 => {
                let width = match field(16) {
                    1 => IoWidth::U8,
                    2 => IoWidth::U16,
                    4 => IoWidth::U32,
                    _ => return None,
                };
                let reg_shift = u8::try_from(field(8))
                    .ok()
                    .filter(|&s| u32::from(s) <= MAX_REG_SHIFT)?;
                let reg_offset = u32::try_from(word >> 32).ok()?;
                Some(Self::Ns16550 {
                    reg_shift,
                    width,
                    reg_offset,
                })
            }
            _ => None,
        }
    }
}

impl fmt::Display for UartKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Pl011 => f.write_str("PL011"),
            Self::Ns16550 {
                reg_shift,
                width,
                reg_offset,
            } => {
                write!(
                    f,
                    "16550 (reg-shift {reg_shift}, {}-bit access",
                    width.bytes() * 8
                )?;
                if reg_offset != 0 {
                    write!(f, ", reg-offset {reg_offset:#x}")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// A console UART as the DTB describes it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Uart {
    /// Its first register (CPU physical address of the node's `reg`).
    pub base: PhysAddr,
    /// Size from the node's `reg`.
    pub size: u64,
    /// The driver and register layout.
    pub kind: UartKind,
}

/// Register accesses for a [`Console`]: the only part that touches
/// hardware (EL2: volatile MMIO at the UART's base plus `reg.offset`).
pub trait UartIo {
    /// Reads `reg` (zero-extended to 32 bits).
    fn read(&mut self, reg: Reg) -> u32;
    /// Writes `value` (truncated to the register's width) to `reg`.
    fn write(&mut self, reg: Reg, value: u32);
}

/// A polled, transmit-only console over a [`UartIo`]; `\n` goes out as
/// `\r\n`.
#[derive(Debug)]
pub struct Console<I> {
    kind: UartKind,
    io: I,
}

impl<I: UartIo> Console<I> {
    /// A console driving `io` as a `kind` UART.
    pub const fn new(kind: UartKind, io: I) -> Self {
        Self { kind, io }
    }

    /// Waits until the transmitter has room, then sends `byte`.
    pub fn put(&mut self, byte: u8) {
        let status = self.kind.status_reg();
        while !self.kind.ready(self.io.read(status)) {
            core::hint::spin_loop();
        }
        self.io.write(self.kind.data_reg(), u32::from(byte));
    }

    /// The register accessor (tests look at what was written).
    pub fn io(&self) -> &I {
        &self.io
    }
}

impl<I: UartIo> fmt::Write for Console<I> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
