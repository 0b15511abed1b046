//! An ARM PL011 UART, the console standard arm64 kernels and test guests
//! expect at the DTB's `stdout-path`. Transmit only: bytes written to DR go
//! to the VMM's output; the receive FIFO is always empty.

use std::io::Write;

const DR: u64 = 0x000;
const FR: u64 = 0x018;
const IBRD: u64 = 0x024;
const FBRD: u64 = 0x028;
const LCR_H: u64 = 0x02c;
const CR: u64 = 0x030;
const IFLS: u64 = 0x034;
const IMSC: u64 = 0x038;
const RIS: u64 = 0x03c;
const MIS: u64 = 0x040;
const ICR: u64 = 0x044;

/// FR: receive FIFO empty.
const FR_RXFE: u32 = 1 << 4;
/// FR: transmit FIFO empty.
const FR_TXFE: u32 = 1 << 7;

/// PrimeCell identification registers (0xfe0..0xffc), one byte each: the
/// AMBA bus probe reads them to bind the pl011 driver.
const ID_REGS: [(u64, u32); 8] = [
    (0xfe0, 0x11),
    (0xfe4, 0x10),
    (0xfe8, 0x14),
    (0xfec, 0x00),
    (0xff0, 0x0d),
    (0xff4, 0xf0),
    (0xff8, 0x05),
    (0xffc, 0xb1),
];

/// The UART's state and where its output goes.
#[derive(Debug)]
pub struct Pl011<W: Write> {
    out: W,
    ibrd: u32,
    fbrd: u32,
    lcr_h: u32,
    cr: u32,
    ifls: u32,
    imsc: u32,
}

impl<W: Write> Pl011<W> {
    /// A UART writing its output to `out`.
    pub fn new(out: W) -> Self {
        Pl011 {
            out,
            ibrd: 0,
            fbrd: 0,
            lcr_h: 0,
            cr: 0x300,
            ifls: 0x12,
            imsc: 0,
        }
    }

    /// A guest read of `data.len()` bytes at `offset` in the register window.
    /// Unknown offsets read as zero, as a real PL011's reserved space does.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DR | RIS | MIS => 0,
            FR => FR_TXFE | FR_RXFE,
            IBRD => self.ibrd,
            FBRD => self.fbrd,
            LCR_H => self.lcr_h,
            CR => self.cr,
            IFLS => self.ifls,
            IMSC => self.imsc,
            _ => ID_REGS
                .iter()
                .find(|(o, _)| *o == offset)
                .map_or(0, |(_, v)| *v),
        };
        let bytes = value.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0);
        }
    }

    /// A guest write of `data` at `offset`. A failed write to the output is
    /// dropped: a guest must not stop because the host's console did.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let mut word = [0u8; 4];
        for (w, b) in word.iter_mut().zip(data) {
            *w = *b;
        }
        let value = u32::from_le_bytes(word);
        match offset {
            DR => {
                let _ = self.out.write_all(&word[..1]);
                let _ = self.out.flush();
            }
            IBRD => self.ibrd = value,
            FBRD => self.fbrd = value,
            LCR_H => self.lcr_h = value,
            CR => self.cr = value,
            IFLS => self.ifls = value,
            IMSC => self.imsc = value,
            ICR => {}
            _ => {}
        }
    }

    /// The output sink (tests).
    pub fn output(&self) -> &W {
        &self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read32(uart: &mut Pl011<Vec<u8>>, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        uart.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    #[test]
    fn bytes_written_to_dr_reach_the_output() {
        let mut uart = Pl011::new(Vec::new());
        for b in b"ok 1\n" {
            uart.write(DR, &[*b, 0, 0, 0]);
        }
        assert_eq!(uart.output().as_slice(), b"ok 1\n");
    }

    #[test]
    fn flags_say_tx_empty_and_rx_empty() {
        let mut uart = Pl011::new(Vec::new());
        assert_eq!(read32(&mut uart, FR), FR_TXFE | FR_RXFE);
    }

    #[test]
    fn primecell_ids_identify_a_pl011() {
        let mut uart = Pl011::new(Vec::new());
        let periph: u32 = (0..4)
            .map(|i| (read32(&mut uart, 0xfe0 + 4 * i) & 0xff) << (8 * i))
            .sum();
        let cell: u32 = (0..4)
            .map(|i| (read32(&mut uart, 0xff0 + 4 * i) & 0xff) << (8 * i))
            .sum();
        assert_eq!(
            periph & 0x000f_ffff,
            0x0004_1011,
            "PL011 part number and designer"
        );
        assert_eq!(cell, 0xb105_f00d);
    }

    #[test]
    fn control_registers_keep_what_the_guest_wrote() {
        let mut uart = Pl011::new(Vec::new());
        uart.write(CR, &0x301u32.to_le_bytes());
        uart.write(LCR_H, &[0x70]);
        assert_eq!(read32(&mut uart, CR), 0x301);
        assert_eq!(read32(&mut uart, LCR_H), 0x70);
        assert_eq!(read32(&mut uart, 0x500), 0, "reserved space reads zero");
    }
}
