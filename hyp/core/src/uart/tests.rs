use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use super::*;

const RK3588: &[u8] = b"rockchip,rk3588-uart\0snps,dw-apb-uart\0";

fn ns(reg_shift: u8, width: IoWidth) -> UartKind {
    UartKind::Ns16550 {
        reg_shift,
        width,
        reg_offset: 0,
    }
}

#[test]
fn compatible_strings_pick_the_driver() {
    assert_eq!(
        UartKind::from_dt(b"arm,pl011\0arm,primecell\0", None, None, None),
        Ok(UartKind::Pl011)
    );
    // PL011 ignores the 8250 properties.
    assert_eq!(
        UartKind::from_dt(b"arm,pl011\0", Some(9), Some(3), None),
        Ok(UartKind::Pl011)
    );
    assert_eq!(
        UartKind::from_dt(RK3588, Some(2), Some(4), None),
        Ok(ns(2, IoWidth::U32))
    );
    for c in [&b"ns16550a\0"[..], b"ns16550\0", b"snps,dw-apb-uart"] {
        assert_eq!(
            UartKind::from_dt(c, None, None, None),
            Ok(ns(0, IoWidth::U8))
        );
    }
    assert_eq!(
        UartKind::from_dt(b"ns16550a\0", Some(1), Some(2), Some(0x40)),
        Ok(UartKind::Ns16550 {
            reg_shift: 1,
            width: IoWidth::U16,
            reg_offset: 0x40
        })
    );
    // The first string the hyp knows decides.
    assert_eq!(
        UartKind::from_dt(b"ns16550a\0arm,pl011\0", None, None, None),
        Ok(ns(0, IoWidth::U8))
    );
    // Neither a prefix nor a suffix of a known string matches.
    for c in [
        &b""[..],
        b"\0",
        b"arm,pl01\0",
        b"ns16550ab\0",
        b"snps,dw-apb-uart2\0",
        b"xns16550a\0",
        b"rockchip,rk3588-uart\0",
        b"ns8250\0",
    ] {
        assert_eq!(
            UartKind::from_dt(c, None, None, None),
            Err(ConsoleProblem::NotCompatible),
            "{c:?}"
        );
    }
}

#[test]
fn bad_8250_properties_are_refused() {
    assert_eq!(
        UartKind::from_dt(RK3588, Some(5), Some(4), None),
        Err(ConsoleProblem::RegShift(5))
    );
    assert_eq!(
        UartKind::from_dt(RK3588, Some(u32::MAX), None, None),
        Err(ConsoleProblem::RegShift(u32::MAX))
    );
    assert_eq!(
        UartKind::from_dt(RK3588, Some(4), None, None),
        Ok(ns(4, IoWidth::U8))
    );
    for w in [0, 3, 8, u32::MAX] {
        assert_eq!(
            UartKind::from_dt(RK3588, Some(2), Some(w), None),
            Err(ConsoleProblem::RegIoWidth(w))
        );
    }
}

#[test]
fn register_layouts() {
    let pl011 = UartKind::Pl011;
    assert_eq!(
        pl011.data_reg(),
        Reg {
            offset: 0,
            width: IoWidth::U32
        }
    );
    assert_eq!(
        pl011.status_reg(),
        Reg {
            offset: 0x18,
            width: IoWidth::U32
        }
    );
    assert_eq!(pl011.span(), 0x1c);

    // RK3588 uart2: THR at 0, LSR at 5 << 2 = 0x14, 32-bit.
    let dw = ns(2, IoWidth::U32);
    assert_eq!(
        dw.data_reg(),
        Reg {
            offset: 0,
            width: IoWidth::U32
        }
    );
    assert_eq!(
        dw.status_reg(),
        Reg {
            offset: 0x14,
            width: IoWidth::U32
        }
    );
    assert_eq!(dw.span(), 0x18);

    let plain = ns(0, IoWidth::U8);
    assert_eq!(plain.status_reg().offset, 5);
    assert_eq!(plain.span(), 6);
    let shifted = UartKind::Ns16550 {
        reg_shift: 4,
        width: IoWidth::U16,
        reg_offset: 0x100,
    };
    assert_eq!(shifted.data_reg().offset, 0x100);
    assert_eq!(shifted.status_reg().offset, 0x150);
    assert_eq!(shifted.span(), 0x152);
    // The largest offsets the reader accepts cannot overflow.
    let max = UartKind::Ns16550 {
        reg_shift: 4,
        width: IoWidth::U32,
        reg_offset: u32::MAX,
    };
    assert_eq!(max.span(), u64::from(u32::MAX) + 0x54);
}

#[test]
fn registers_must_fit_the_reg_and_be_aligned() {
    let dw = ns(2, IoWidth::U32);
    assert_eq!(dw.check(0xfeb5_0000, 0x100), Ok(()));
    assert_eq!(dw.check(0xfeb5_0000, 0x18), Ok(()));
    assert_eq!(
        dw.check(0xfeb5_0000, 0x17),
        Err(ConsoleProblem::RegTooSmall {
            size: 0x17,
            needed: 0x18
        })
    );
    assert_eq!(UartKind::Pl011.check(0x900_0000, 0x1000), Ok(()));
    assert_eq!(
        UartKind::Pl011.check(0x900_0000, 0x18),
        Err(ConsoleProblem::RegTooSmall {
            size: 0x18,
            needed: 0x1c
        })
    );
    // Byte registers may sit anywhere.
    assert_eq!(ns(0, IoWidth::U8).check(0x1003, 8), Ok(()));
    // 32-bit accesses to registers a byte apart: LSR at base + 5.
    assert_eq!(
        ns(0, IoWidth::U32).check(0x1000, 0x100),
        Err(ConsoleProblem::Misaligned {
            addr: 0x1005,
            width: 4
        })
    );
    assert_eq!(ns(1, IoWidth::U16).check(0x1000, 0x100), Ok(()));
    // A misaligned base.
    assert_eq!(
        dw.check(0xfeb5_0002, 0x100),
        Err(ConsoleProblem::Misaligned {
            addr: 0xfeb5_0002,
            width: 4
        })
    );
    assert_eq!(
        UartKind::Pl011.check(0x900_0001, 0x1000),
        Err(ConsoleProblem::Misaligned {
            addr: 0x900_0001,
            width: 4
        })
    );
}

#[test]
fn kinds_and_problems_display() {
    assert_eq!(alloc::format!("{}", UartKind::Pl011), "PL011");
    assert_eq!(
        alloc::format!("{}", ns(2, IoWidth::U32)),
        "16550 (reg-shift 2, 32-bit access)"
    );
    assert_eq!(
        alloc::format!(
            "{}",
            UartKind::Ns16550 {
                reg_shift: 0,
                width: IoWidth::U8,
                reg_offset: 0x40
            }
        ),
        "16550 (reg-shift 0, 8-bit access, reg-offset 0x40)"
    );
    for (p, text) in [
        (
            ConsoleProblem::NotCompatible,
            "is not compatible with arm,pl011, snps,dw-apb-uart, ns16550a or ns16550",
        ),
        (
            ConsoleProblem::RegShift(7),
            "has reg-shift 7; at most 4 is supported",
        ),
        (
            ConsoleProblem::RegIoWidth(8),
            "has reg-io-width 8; 1, 2 or 4 is supported",
        ),
        (
            ConsoleProblem::RegTooSmall {
                size: 0x10,
                needed: 0x18,
            },
            "has a reg of 0x10 bytes, but its registers need 0x18",
        ),
        (
            ConsoleProblem::Misaligned {
                addr: 0x1005,
                width: 4,
            },
            "has a register at 0x1005 that is not 4-byte aligned",
        ),
    ] {
        assert_eq!(alloc::format!("{p}"), text);
    }
}

/// One register access the console made.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Access {
    Read(Reg),
    Write(Reg, u32),
}

/// A fake register block: the status register reports "busy" for the next
/// `busy` reads of it, then "ready"; data written is collected as bytes.
struct FakeUart {
    kind: UartKind,
    busy: usize,
    busy_after_each_byte: usize,
    log: Vec<Access>,
    sent: Vec<u8>,
}

impl FakeUart {
    fn new(kind: UartKind, busy: usize, busy_after_each_byte: usize) -> Self {
        Self {
            kind,
            busy,
            busy_after_each_byte,
            log: Vec::new(),
            sent: Vec::new(),
        }
    }

    fn status(&self, ready: bool) -> u32 {
        // Bits the driver must ignore are set in both states.
        match (self.kind, ready) {
            (UartKind::Pl011, true) => 0x90,           // TXFE | RXFE
            (UartKind::Pl011, false) => 0x28,          // TXFF | BUSY
            (UartKind::Ns16550 { .. }, true) => 0x60,  // THRE | TEMT
            (UartKind::Ns16550 { .. }, false) => 0x01, // DR only
        }
    }
}

impl UartIo for FakeUart {
    fn read(&mut self, reg: Reg) -> u32 {
        self.log.push(Access::Read(reg));
        assert_eq!(
            reg,
            self.kind.status_reg(),
            "only the status register is read"
        );
        let ready = self.busy == 0;
        self.busy = self.busy.saturating_sub(1);
        self.status(ready)
    }

    fn write(&mut self, reg: Reg, value: u32) {
        self.log.push(Access::Write(reg, value));
        assert_eq!(
            reg,
            self.kind.data_reg(),
            "only the data register is written"
        );
        assert!(
            matches!(self.log.iter().rev().nth(1), Some(Access::Read(_))),
            "a write without a status read before it"
        );
        self.sent.push(u8::try_from(value).unwrap());
        self.busy = self.busy_after_each_byte;
    }
}

#[test]
fn console_polls_then_writes_each_byte_with_crlf() {
    for kind in [
        UartKind::Pl011,
        ns(2, IoWidth::U32),
        ns(0, IoWidth::U8),
        ns(1, IoWidth::U16),
    ] {
        let mut c = Console::new(kind, FakeUart::new(kind, 3, 2));
        write!(c, "hi\nyo {}\n", 7).unwrap();
        let io = c.io();
        assert_eq!(io.sent, b"hi\r\nyo 7\r\n", "{kind}");
        // 3 busy reads + 1 ready before the first byte, 2 + 1 before each
        // of the other nine.
        let reads = io
            .log
            .iter()
            .filter(|a| matches!(a, Access::Read(_)))
            .count();
        assert_eq!(reads, 4 + 9 * 3, "{kind}");
        // The first write comes only after the status said ready.
        let first_write = io
            .log
            .iter()
            .position(|a| matches!(a, Access::Write(..)))
            .unwrap();
        assert_eq!(first_write, 4);
        assert_eq!(
            io.log[first_write],
            Access::Write(kind.data_reg(), u32::from(b'h'))
        );
    }
}

#[test]
fn rk3588_uart2_accesses() {
    // What the hyp does on the ROCK 5B's console: 32-bit reads of LSR at
    // base + 0x14 until THRE, then a 32-bit write of the byte to THR at
    // base + 0.
    let kind = UartKind::from_dt(RK3588, Some(2), Some(4), None).unwrap();
    let mut c = Console::new(kind, FakeUart::new(kind, 1, 0));
    c.put(b'A');
    let lsr = Reg {
        offset: 0x14,
        width: IoWidth::U32,
    };
    let thr = Reg {
        offset: 0,
        width: IoWidth::U32,
    };
    assert_eq!(
        c.io().log,
        [
            Access::Read(lsr),
            Access::Read(lsr),
            Access::Write(thr, 0x41)
        ]
    );
    let mut s = String::new();
    write!(s, "{kind}").unwrap();
    assert_eq!(s, "16550 (reg-shift 2, 32-bit access)");
}

#[test]
fn kinds_encode_to_one_word_and_back() {
    let kinds = [
        UartKind::Pl011,
        ns(2, IoWidth::U32),
        ns(0, IoWidth::U8),
        UartKind::Ns16550 {
            reg_shift: 4,
            width: IoWidth::U16,
            reg_offset: u32::MAX,
        },
    ];
    for kind in kinds {
        let word = kind.encode();
        assert_ne!(word, 0);
        assert_eq!(UartKind::decode(word), Some(kind));
    }
    assert_eq!(UartKind::Pl011.encode(), 1);
    assert_eq!(ns(2, IoWidth::U32).encode(), 0x4_0202);
    // No console yet, unknown tags, bad widths and shifts, stray bits.
    for word in [0, 3, 0x100 | 1, 0x3_0002, 0x5_0102, 0x1_0502, 0x100_0102] {
        assert_eq!(UartKind::decode(word), None, "{word:#x}");
    }
}

proptest::proptest! {
    /// Any word decodes to nothing or to a kind that encodes back to it.
    #[test]
    fn decode_is_the_inverse_of_encode(word in proptest::prelude::any::<u64>()) {
        if let Some(kind) = UartKind::decode(word) {
            proptest::prop_assert_eq!(kind.encode(), word);
        }
    }
}
