use alloc::string::{String, ToString};
use alloc::vec::Vec;

use proptest::prelude::*;

use super::*;

const QEMU2: &[u8] = include_bytes!("../../tests/data/qemu-virt-smp2-1g.dtb");
const QEMU4: &[u8] = include_bytes!("../../tests/data/qemu-virt-smp4-2g.dtb");
const BOARD: &[u8] = include_bytes!("../../tests/data/board-rmem.dtb");
const MINIMAL: &[u8] = include_bytes!("../../tests/data/no-chosen.dtb");
const ROCK5B: &[u8] = include_bytes!("../../tests/data/rk3588-rock-5b-8g.dtb");

const GIB: u64 = 1 << 30;

fn region(base: u64, size: u64) -> MemRegion {
    MemRegion {
        base: PhysAddr::new(base),
        size,
    }
}

fn pl011(base: u64, size: u64) -> Uart {
    Uart {
        base: PhysAddr::new(base),
        size,
        kind: UartKind::Pl011,
    }
}

fn initrd(start: u64, end: u64) -> InitrdRange {
    InitrdRange {
        start: PhysAddr::new(start),
        end: PhysAddr::new(end),
    }
}

/// (path, [(property, value)]) for every node, in order, by this module's
/// reader.
type Dump = Vec<(String, Vec<(String, Vec<u8>)>)>;

fn dump(dtb: &[u8]) -> Dump {
    let fdt = Fdt::new(dtb).unwrap();
    let mut out: Dump = Vec::new();
    let mut stack: Vec<String> = Vec::new();
    let mut pos = 0;
    loop {
        let (token, next) = fdt.token(pos).unwrap();
        match token {
            Token::BeginNode { name } => {
                let name = String::from_utf8(name.to_vec()).unwrap();
                let path = match stack.last() {
                    None => "/".to_string(),
                    Some(p) if p == "/" => alloc::format!("/{name}"),
                    Some(p) => alloc::format!("{p}/{name}"),
                };
                out.push((path.clone(), Vec::new()));
                stack.push(path);
            }
            Token::EndNode => {
                stack.pop();
            }
            Token::Prop { name, value } => {
                let path = stack.last().unwrap();
                let node = out.iter_mut().rev().find(|(p, _)| p == path).unwrap();
                node.1
                    .push((String::from_utf8(name.to_vec()).unwrap(), value.to_vec()));
            }
            Token::Nop => {}
            Token::End => break,
        }
        pos = next;
    }
    out
}

/// The same, by the independent `fdt` crate (nodes in pre-order).
fn dump_ext(dtb: &[u8]) -> Dump {
    fn walk(node: ::fdt::node::FdtNode<'_, '_>, path: String, out: &mut Dump) {
        let props = node
            .properties()
            .map(|p| (p.name.to_string(), p.value.to_vec()))
            .collect();
        out.push((path.clone(), props));
        for child in node.children() {
            let p = if path == "/" {
                alloc::format!("/{}", child.name)
            } else {
                alloc::format!("{path}/{}", child.name)
            };
            walk(child, p, out);
        }
    }
    let fdt = ::fdt::Fdt::new(dtb).unwrap();
    let mut out = Vec::new();
    walk(fdt.find_node("/").unwrap(), "/".to_string(), &mut out);
    out
}

fn node<'d>(d: &'d Dump, path: &str) -> &'d [(String, Vec<u8>)] {
    &d.iter()
        .find(|(p, _)| p == path)
        .unwrap_or_else(|| panic!("no node {path}"))
        .1
}

fn prop<'d>(d: &'d Dump, path: &str, name: &str) -> Option<&'d [u8]> {
    node(d, path)
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| &v[..])
}

fn paths(d: &Dump) -> Vec<&str> {
    d.iter().map(|(p, _)| p.as_str()).collect()
}

/// Runs `rewrite` into a generous buffer and returns the new tree.
fn rewritten(src: &[u8], edits: &Edits<'_>) -> Vec<u8> {
    let mut dst = alloc::vec![0xa5u8; src.len() + 4096];
    let len = rewrite(src, &mut dst, edits).unwrap();
    dst.truncate(len);
    dst
}

/// `dtc -I dtb -O dts` of `dtb`, when dtc is installed.
fn dtc_decompile(dtb: &[u8]) -> Option<String> {
    use std::io::Write;
    let dir = std::env::temp_dir().join(alloc::format!(
        "cloister-fdt-test-{}-{:x}",
        std::process::id(),
        crate::payload::crc32(dtb)
    ));
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join("t.dtb");
    std::fs::File::create(&path).ok()?.write_all(dtb).ok()?;
    let out = std::process::Command::new("dtc")
        .args(["-I", "dtb", "-O", "dts"])
        .arg(&path)
        .output()
        .ok()?;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "dtc rejected the tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

// ---- host_platform ----

#[test]
fn qemu_virt_2cpu_1g() {
    let p = host_platform(QEMU2).unwrap();
    assert_eq!(p.ram.as_slice(), &[region(0x4000_0000, GIB)]);
    assert_eq!(p.uart, pl011(0x0900_0000, 0x1000));
    assert_eq!(p.psci, PsciConduit::Smc);
    assert_eq!(p.cpus.as_slice(), &[0, 1]);
    assert_eq!(p.initrd, None);
}

#[test]
fn qemu_virt_4cpu_2g() {
    let p = host_platform(QEMU4).unwrap();
    assert_eq!(p.ram.as_slice(), &[region(0x4000_0000, 2 * GIB)]);
    assert_eq!(p.uart, pl011(0x0900_0000, 0x1000));
    assert_eq!(p.psci, PsciConduit::Smc);
    assert_eq!(p.cpus.as_slice(), &[0, 1, 2, 3]);
}

#[test]
fn board_tree() {
    let p = host_platform(BOARD).unwrap();
    assert_eq!(
        p.ram.as_slice(),
        &[
            region(0x4000_0000, 0x2000_0000),
            region(0x8000_0000, 0x1000_0000),
            region(0x1_0000_0000, GIB),
        ]
    );
    // Alias with options, translated through /soc's ranges.
    assert_eq!(p.uart, pl011(0x1c00_1000, 0x1000));
    assert_eq!(p.psci, PsciConduit::Hvc);
    // Two-cell reg; the disabled CPU is skipped.
    assert_eq!(p.cpus.as_slice(), &[0, 0x100]);
    // 32-bit values.
    assert_eq!(p.initrd, Some(initrd(0x4810_0000, 0x4820_0000)));
}

#[test]
fn header_total_size() {
    assert_eq!(total_size(QEMU2), Ok(QEMU2.len()));
    assert_eq!(total_size(&QEMU2[..8]), Ok(QEMU2.len()));
    assert_eq!(
        total_size(&QEMU2[..7]),
        Err(FdtError::Truncated {
            needed: 8,
            available: 7
        })
    );
    assert_eq!(total_size(&[0; 8]), Err(FdtError::BadMagic { found: 0 }));
}

/// Overwrites the first occurrence of `from` (same length as `to`).
fn patched(dtb: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut v = dtb.to_vec();
    let at = v.windows(from.len()).position(|w| w == from).unwrap();
    v[at..at + to.len()].copy_from_slice(to);
    v
}

#[test]
fn platform_errors() {
    assert_eq!(
        host_platform(MINIMAL),
        Err(FdtError::MissingNode { path: "/chosen" })
    );
    let e = host_platform(&patched(BOARD, b"serial0:1152", b"xerial0:1152")).unwrap_err();
    assert_eq!(
        e,
        FdtError::StdoutUnresolved {
            path: Snippet::new(b"xerial0")
        }
    );
    assert_eq!(
        alloc::format!("{e}"),
        "DTB /chosen stdout-path \"xerial0\" names no node"
    );
    // The alias now points at the 16550 (`ns16550a`, no reg-shift or
    // reg-io-width: registers a byte apart, 8-bit accesses).
    let p = host_platform(&patched(
        BOARD,
        b"1c000000/serial@1000",
        b"1c000000/serial@2000",
    ))
    .unwrap();
    assert_eq!(
        p.uart,
        Uart {
            base: PhysAddr::new(0x1c00_2000),
            size: 0x100,
            kind: UartKind::Ns16550 {
                reg_shift: 0,
                width: crate::uart::IoWidth::U8,
                reg_offset: 0,
            },
        }
    );
    // A console no driver takes.
    // (Renaming serial@2000's compatible alone changes nothing: serial@1000
    // is still the console.)
    let p = host_platform(&patched(BOARD, b"ns16550a\0", b"ns16550x\0")).unwrap();
    assert_eq!(p.uart.kind, UartKind::Pl011);
    let e = host_platform(&patched(
        &patched(BOARD, b"1c000000/serial@1000", b"1c000000/serial@2000"),
        b"ns16550a\0",
        b"ns16550x\0",
    ))
    .unwrap_err();
    assert_eq!(
        e,
        FdtError::Console {
            path: Snippet::new(b"/soc@1c000000/serial@2000"),
            problem: ConsoleProblem::NotCompatible,
        }
    );
    assert_eq!(
        alloc::format!("{e}"),
        "DTB console /soc@1c000000/serial@2000 is not compatible with arm,pl011, \
         snps,dw-apb-uart, ns16550a or ns16550"
    );
    assert_eq!(
        host_platform(&patched(BOARD, b"hvc\0", b"svc\0")),
        Err(FdtError::UnknownPsciMethod {
            found: Snippet::new(b"svc")
        })
    );
    assert_eq!(
        host_platform(&patched(QEMU2, b"/pl011@9000000", b"/pl011@9000001")),
        Err(FdtError::StdoutUnresolved {
            path: Snippet::new(b"/pl011@9000001")
        })
    );
    // A stdout path without the unit address still resolves.
    let short = patched(QEMU2, b"/pl011@9000000\0", b"/pl011\0\0\0\0\0\0\0\0\0");
    assert_eq!(
        host_platform(&short).unwrap().uart.base,
        PhysAddr::new(0x0900_0000)
    );
    // device_type "memory" renamed: no RAM left.
    assert_eq!(
        host_platform(&patched(QEMU2, b"memory\0", b"memorx\0")),
        Err(FdtError::MissingNode { path: "/memory" })
    );
}

// ---- hostile headers and structure blocks ----

fn put_be32(v: &mut [u8], at: usize, x: u32) {
    v[at..at + 4].copy_from_slice(&x.to_be_bytes());
}

#[test]
fn hostile_headers() {
    let len = QEMU2.len();
    assert_eq!(
        host_platform(&QEMU2[..39]),
        Err(FdtError::Truncated {
            needed: 40,
            available: 39
        })
    );
    assert_eq!(
        host_platform(&QEMU2[..len - 1]),
        Err(FdtError::Truncated {
            needed: len,
            available: len - 1
        })
    );
    let mut v = QEMU2.to_vec();
    v[0] ^= 1;
    assert_eq!(
        host_platform(&v),
        Err(FdtError::BadMagic { found: 0xd10d_feed })
    );

    let mut v = QEMU2.to_vec();
    put_be32(&mut v, H_VERSION, 16);
    assert_eq!(
        host_platform(&v),
        Err(FdtError::UnsupportedVersion {
            version: 16,
            last_comp_version: 16
        })
    );
    let mut v = QEMU2.to_vec();
    put_be32(&mut v, H_LAST_COMP, 18);
    assert!(matches!(
        host_platform(&v),
        Err(FdtError::UnsupportedVersion { .. })
    ));

    let total = u32::try_from(len).unwrap();
    for (field, block) in [
        (H_SIZE_STRUCT, Block::Struct),
        (H_SIZE_STRINGS, Block::Strings),
    ] {
        let mut v = QEMU2.to_vec();
        put_be32(&mut v, field, total);
        assert!(
            matches!(host_platform(&v), Err(FdtError::BadBlock { block: b, .. }) if b == block),
            "{block:?}"
        );
        let mut v = QEMU2.to_vec();
        put_be32(&mut v, field, u32::MAX);
        assert!(matches!(host_platform(&v), Err(FdtError::BadBlock { .. })));
    }
    // Structure block overlapping the header, or misaligned.
    for off in [0u32, 0x3a] {
        let mut v = QEMU2.to_vec();
        put_be32(&mut v, H_OFF_STRUCT, off);
        assert!(matches!(
            host_platform(&v),
            Err(FdtError::BadBlock {
                block: Block::Struct,
                ..
            })
        ));
    }
    // Reservation block with no terminator before totalsize.
    let mut v = QEMU2.to_vec();
    put_be32(&mut v, H_OFF_RSVMAP, total - 8);
    assert!(matches!(
        host_platform(&v),
        Err(FdtError::BadBlock {
            block: Block::MemReserve,
            ..
        })
    ));
}

/// Offset of the structure block and the whole blob, for token surgery.
fn struct_off(dtb: &[u8]) -> usize {
    usize::try_from(be32(dtb, H_OFF_STRUCT).unwrap()).unwrap()
}

#[test]
fn hostile_structure_blocks() {
    let s = struct_off(MINIMAL);
    // First token is the root FDT_BEGIN_NODE.
    assert_eq!(be32(MINIMAL, s), Some(TOK_BEGIN_NODE));

    let mut v = MINIMAL.to_vec();
    put_be32(&mut v, s, 7);
    assert_eq!(
        host_platform(&v),
        Err(FdtError::Malformed {
            offset: 0,
            problem: Malformed::BadToken { token: 7 }
        })
    );
    let mut v = MINIMAL.to_vec();
    put_be32(&mut v, s, TOK_END_NODE);
    assert_eq!(
        host_platform(&v),
        Err(FdtError::Malformed {
            offset: 0,
            problem: Malformed::Unbalanced
        })
    );
    let mut v = MINIMAL.to_vec();
    put_be32(&mut v, s, TOK_END);
    assert_eq!(
        host_platform(&v),
        Err(FdtError::Malformed {
            offset: 0,
            problem: Malformed::NoRoot
        })
    );
    // Root prop `#address-cells` right after the root's 8-byte begin token:
    // point its name offset past the strings block.
    let mut v = MINIMAL.to_vec();
    assert_eq!(be32(&v, s + 8), Some(TOK_PROP));
    put_be32(&mut v, s + 16, 0x10_0000);
    assert_eq!(
        host_platform(&v),
        Err(FdtError::Malformed {
            offset: 8,
            problem: Malformed::BadStringOffset { nameoff: 0x10_0000 }
        })
    );
    // A property length that runs off the block.
    let mut v = MINIMAL.to_vec();
    put_be32(&mut v, s + 12, u32::MAX);
    assert_eq!(
        host_platform(&v),
        Err(FdtError::Malformed {
            offset: 8,
            problem: Malformed::TruncatedToken
        })
    );
    // The final FDT_END turned into FDT_END_NODE: more ends than begins.
    let size = usize::try_from(be32(MINIMAL, H_SIZE_STRUCT).unwrap()).unwrap();
    let mut v = MINIMAL.to_vec();
    put_be32(&mut v, s + size - 4, TOK_END_NODE);
    assert_eq!(
        host_platform(&v),
        Err(FdtError::Malformed {
            offset: size - 4,
            problem: Malformed::Unbalanced
        })
    );
    // ... into FDT_NOP: the block ends without FDT_END.
    let mut v = MINIMAL.to_vec();
    put_be32(&mut v, s + size - 4, TOK_NOP);
    assert_eq!(
        host_platform(&v),
        Err(FdtError::Malformed {
            offset: size,
            problem: Malformed::TruncatedToken
        })
    );
    // ... into FDT_BEGIN_NODE: a name that runs off the block.
    let mut v = MINIMAL.to_vec();
    put_be32(&mut v, s + size - 4, TOK_BEGIN_NODE);
    assert_eq!(
        host_platform(&v),
        Err(FdtError::Malformed {
            offset: size - 4,
            problem: Malformed::UnterminatedName
        })
    );
    // The root's first token made a property (with an empty value): it is
    // outside any node.
    let mut v = MINIMAL.to_vec();
    let name_prop = [TOK_PROP, 0, 0, TOK_BEGIN_NODE]
        .iter()
        .flat_map(|t| t.to_be_bytes())
        .collect::<Vec<_>>();
    v[s..s + 16].copy_from_slice(&name_prop);
    assert_eq!(
        host_platform(&v),
        Err(FdtError::Malformed {
            offset: 0,
            problem: Malformed::PropOutsideNode
        })
    );
}

// ---- rewrite ----

const HYP: Reservation = Reservation {
    base: PhysAddr::new(0x7fe0_0000),
    size: 0x20_0000,
};

#[test]
fn rewrite_qemu_creates_reserved_memory_and_adds_chosen_props() {
    let edits = Edits {
        reserve: &[HYP],
        initrd: Some(initrd(0x4800_0000, 0x4880_0000)),
        bootargs: Some("console=ttyAMA0 rdinit=/sbin/init"),
    };
    let out = rewritten(QEMU2, &edits);
    assert_eq!(total_size(&out), Ok(out.len()));
    assert_eq!(be32(&out, H_VERSION), Some(17));
    assert_eq!(be32(&out, H_LAST_COMP), Some(16));
    assert_eq!(be32(&out, H_BOOT_CPUID), be32(QEMU2, H_BOOT_CPUID));

    for after in [dump(&out), dump_ext(&out)] {
        let rm = "/reserved-memory";
        let child = "/reserved-memory/cloister-hyp@7fe00000";
        assert_eq!(
            prop(&after, rm, "#address-cells"),
            Some(&2u32.to_be_bytes()[..])
        );
        assert_eq!(
            prop(&after, rm, "#size-cells"),
            Some(&2u32.to_be_bytes()[..])
        );
        assert_eq!(prop(&after, rm, "ranges"), Some(&[][..]));
        let reg: Vec<u8> = [0x7fe0_0000u64, 0x20_0000]
            .iter()
            .flat_map(|x| x.to_be_bytes())
            .collect();
        assert_eq!(prop(&after, child, "reg"), Some(&reg[..]));
        assert_eq!(prop(&after, child, "no-map"), Some(&[][..]));
        assert_eq!(node(&after, child).len(), 2);
        assert_eq!(
            prop(&after, "/chosen", "linux,initrd-start"),
            Some(&0x4800_0000u64.to_be_bytes()[..])
        );
        assert_eq!(
            prop(&after, "/chosen", "linux,initrd-end"),
            Some(&0x4880_0000u64.to_be_bytes()[..])
        );
        assert_eq!(
            prop(&after, "/chosen", "bootargs"),
            Some(&b"console=ttyAMA0 rdinit=/sbin/init\0"[..])
        );
        assert_eq!(
            prop(&after, "/chosen", "stdout-path"),
            prop(&dump(QEMU2), "/chosen", "stdout-path")
        );

        // Everything else is unchanged: drop what was added and compare.
        let mut trimmed = after.clone();
        trimmed.retain(|(p, _)| !p.starts_with("/reserved-memory"));
        for (p, props) in &mut trimmed {
            if p == "/chosen" {
                props.retain(|(n, _)| {
                    !["linux,initrd-start", "linux,initrd-end", "bootargs"].contains(&n.as_str())
                });
            }
        }
        assert_eq!(trimmed, dump(QEMU2));
    }
    // The two readers agree on the whole tree.
    assert_eq!(dump(&out), dump_ext(&out));

    // The result still reads as the same platform, with the new initrd.
    let p = host_platform(&out).unwrap();
    assert_eq!(p.initrd, Some(initrd(0x4800_0000, 0x4880_0000)));
    assert_eq!(p.ram, host_platform(QEMU2).unwrap().ram);

    if let Some(dts) = dtc_decompile(&out) {
        assert!(dts.contains("cloister-hyp@7fe00000 {"), "{dts}");
        assert!(dts.contains("no-map;"), "{dts}");
        assert!(
            dts.contains("reg = <0x00 0x7fe00000 0x00 0x200000>;"),
            "{dts}"
        );
        assert!(
            dts.contains("linux,initrd-start = <0x00 0x48000000>;"),
            "{dts}"
        );
    }
}

#[test]
fn rewrite_board_extends_reserved_memory_and_replaces_chosen_props() {
    let edits = Edits {
        reserve: &[
            HYP,
            Reservation {
                base: PhysAddr::new(0x1_2000_0000),
                size: 0x1000,
            },
        ],
        initrd: Some(initrd(0x1_4000_0000, 0x1_4100_0000)),
        bootargs: Some("console=ttyAMA0 new"),
    };
    let before = dump(BOARD);
    let out = rewritten(BOARD, &edits);
    let after = dump(&out);
    assert_eq!(after, dump_ext(&out));

    // The new children come after the existing one, in the existing node.
    let before_paths = paths(&before);
    let after_paths = paths(&after);
    let at = after_paths
        .iter()
        .position(|p| *p == "/reserved-memory/secure@4e000000")
        .unwrap();
    assert_eq!(
        after_paths[at + 1],
        "/reserved-memory/cloister-hyp@7fe00000"
    );
    assert_eq!(
        after_paths[at + 2],
        "/reserved-memory/cloister-hyp@120000000"
    );
    assert_eq!(after_paths.len(), before_paths.len() + 2);
    assert_eq!(
        prop(&after, "/reserved-memory/cloister-hyp@120000000", "reg"),
        Some(&[0, 0, 0, 1, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0][..])
    );

    // /chosen: values replaced in place (now 8 bytes), order kept, subnode kept.
    let chosen: Vec<&str> = node(&after, "/chosen")
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    let chosen_before: Vec<&str> = node(&before, "/chosen")
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(chosen, chosen_before);
    assert_eq!(
        prop(&after, "/chosen", "linux,initrd-start"),
        Some(&0x1_4000_0000u64.to_be_bytes()[..])
    );
    assert_eq!(
        prop(&after, "/chosen", "bootargs"),
        Some(&b"console=ttyAMA0 new\0"[..])
    );
    assert!(after_paths.contains(&"/chosen/framebuffer"));
    assert_eq!(
        host_platform(&out).unwrap().initrd,
        Some(initrd(0x1_4000_0000, 0x1_4100_0000))
    );

    // Everything else unchanged.
    let mut trimmed = after.clone();
    trimmed.retain(|(p, _)| !p.starts_with("/reserved-memory/cloister-hyp@"));
    for (p, props) in &mut trimmed {
        if p == "/chosen" {
            for (n, v) in props.iter_mut() {
                if let Some(old) = prop(&before, "/chosen", n) {
                    if ["linux,initrd-start", "linux,initrd-end", "bootargs"].contains(&n.as_str())
                    {
                        *v = old.to_vec();
                    }
                }
            }
        }
    }
    assert_eq!(trimmed, before);

    // The memory reservation block is copied unchanged.
    let ext = ::fdt::Fdt::new(&out).unwrap();
    let rsv: Vec<(usize, usize)> = ext
        .memory_reservations()
        .map(|r| (r.address() as usize, r.size()))
        .collect();
    assert_eq!(rsv, [(0x4800_0000, 0x1000)]);
    if let Some(dts) = dtc_decompile(&out) {
        assert!(
            dts.contains("/memreserve/\t0x0000000048000000 0x0000000000001000;"),
            "{dts}"
        );
    }
}

#[test]
fn rewrite_creates_chosen_and_uses_root_cells() {
    let edits = Edits {
        reserve: &[Reservation {
            base: PhysAddr::new(0x8f00_0000),
            size: 0x10_0000,
        }],
        initrd: Some(initrd(0x8800_0000, 0x8900_0000)),
        bootargs: None,
    };
    let out = rewritten(MINIMAL, &edits);
    let after = dump(&out);
    assert_eq!(after, dump_ext(&out));
    assert_eq!(
        prop(&after, "/reserved-memory", "#address-cells"),
        Some(&1u32.to_be_bytes()[..])
    );
    assert_eq!(
        prop(&after, "/reserved-memory/cloister-hyp@8f000000", "reg"),
        Some(&[0x8f, 0, 0, 0, 0, 0x10, 0, 0][..])
    );
    assert_eq!(
        node(&after, "/chosen"),
        &[
            (
                "linux,initrd-start".to_string(),
                0x8800_0000u64.to_be_bytes().to_vec()
            ),
            (
                "linux,initrd-end".to_string(),
                0x8900_0000u64.to_be_bytes().to_vec()
            ),
        ]
    );
    let mut trimmed = after.clone();
    trimmed.retain(|(p, _)| !p.starts_with("/reserved-memory") && p != "/chosen");
    assert_eq!(trimmed, dump(MINIMAL));
    dtc_decompile(&out);

    // A base that does not fit one cell.
    let wide = Edits {
        reserve: &[Reservation {
            base: PhysAddr::new(0x1_0000_0000),
            size: 0x1000,
        }],
        ..Edits::default()
    };
    let mut dst = [0u8; 1024];
    assert_eq!(
        rewrite(MINIMAL, &mut dst, &wide),
        Err(FdtError::ValueTooWide {
            value: 0x1_0000_0000,
            cells: 1
        })
    );
}

#[test]
fn rewrite_without_edits_keeps_the_tree() {
    for src in [QEMU2, QEMU4, BOARD, MINIMAL] {
        let out = rewritten(src, &Edits::default());
        assert_eq!(dump(&out), dump(src));
        assert_eq!(dump_ext(&out), dump_ext(src));
        // dtc's layout is the same as ours, so the bytes match too.
        assert_eq!(out, src);
    }
}

#[test]
fn rewrite_only_appends_missing_strings() {
    // QEMU's tree has "reg", "ranges", the cells names and "bootargs"? No
    // bootargs, no no-map, no initrd names: exactly those are appended.
    let edits = Edits {
        reserve: &[HYP],
        initrd: Some(initrd(1, 2)),
        bootargs: Some(""),
    };
    let out = rewritten(QEMU2, &edits);
    let old = usize::try_from(be32(QEMU2, H_SIZE_STRINGS).unwrap()).unwrap();
    let new = usize::try_from(be32(&out, H_SIZE_STRINGS).unwrap()).unwrap();
    let off = usize::try_from(be32(&out, H_OFF_STRINGS).unwrap()).unwrap();
    let old_off = usize::try_from(be32(QEMU2, H_OFF_STRINGS).unwrap()).unwrap();
    assert_eq!(&out[off..off + old], &QEMU2[old_off..old_off + old]);
    assert_eq!(
        &out[off + old..off + new],
        b"no-map\0linux,initrd-start\0linux,initrd-end\0bootargs\0"
    );
    assert_eq!(prop(&dump(&out), "/chosen", "bootargs"), Some(&b"\0"[..]));
    // Rewriting the result again adds no string.
    let edits2 = Edits {
        reserve: &[Reservation {
            base: PhysAddr::new(0x7000_0000),
            size: 0x1000,
        }],
        ..edits
    };
    let out2 = rewritten(&out, &edits2);
    assert_eq!(be32(&out2, H_SIZE_STRINGS), be32(&out, H_SIZE_STRINGS));
}

#[test]
fn rewrite_no_space_reports_exact_size() {
    let edits = Edits {
        reserve: &[HYP],
        initrd: Some(initrd(0x4800_0000, 0x4880_0000)),
        bootargs: Some("console=ttyAMA0"),
    };
    let full = rewritten(QEMU2, &edits);
    let mut dst = alloc::vec![0u8; full.len() - 1];
    assert_eq!(
        rewrite(QEMU2, &mut dst, &edits),
        Err(FdtError::NoSpace {
            needed: full.len(),
            available: full.len() - 1
        })
    );
    assert_eq!(
        rewrite(QEMU2, &mut [], &edits),
        Err(FdtError::NoSpace {
            needed: full.len(),
            available: 0
        })
    );
    let mut dst = alloc::vec![0u8; full.len()];
    assert_eq!(rewrite(QEMU2, &mut dst, &edits), Ok(full.len()));
    assert_eq!(dst, full);
}

#[test]
fn rewrite_edit_errors() {
    let mut dst = alloc::vec![0u8; 16384];
    let twice = Edits {
        reserve: &[HYP, HYP],
        ..Edits::default()
    };
    assert_eq!(
        rewrite(QEMU2, &mut dst, &twice),
        Err(FdtError::DuplicateReservation { base: HYP.base })
    );
    // Applying the same reservation to a tree that already has it.
    let once = Edits {
        reserve: &[HYP],
        ..Edits::default()
    };
    let out = rewritten(QEMU2, &once);
    assert_eq!(
        rewrite(&out, &mut dst, &once),
        Err(FdtError::DuplicateReservation { base: HYP.base })
    );
    for (base, size) in [(0x1000, 0), (u64::MAX - 10, 0x1000)] {
        let bad = Edits {
            reserve: &[Reservation {
                base: PhysAddr::new(base),
                size,
            }],
            ..Edits::default()
        };
        assert_eq!(
            rewrite(QEMU2, &mut dst, &bad),
            Err(FdtError::BadReservation {
                base: PhysAddr::new(base),
                size
            })
        );
    }
    let backwards = Edits {
        initrd: Some(initrd(2, 1)),
        ..Edits::default()
    };
    assert_eq!(
        rewrite(QEMU2, &mut dst, &backwards),
        Err(FdtError::BadInitrd {
            start: PhysAddr::new(2),
            end: PhysAddr::new(1)
        })
    );
    let nul = Edits {
        bootargs: Some("a\0b"),
        ..Edits::default()
    };
    assert_eq!(rewrite(QEMU2, &mut dst, &nul), Err(FdtError::BadBootargs));
    // A hostile source is rejected before anything is written.
    assert_eq!(
        rewrite(&QEMU2[..100], &mut dst, &once),
        Err(FdtError::Truncated {
            needed: QEMU2.len(),
            available: 100
        })
    );
}

#[test]
fn node_names() {
    assert_eq!(
        NodeName::new(PhysAddr::new(0)).as_bytes(),
        b"cloister-hyp@0"
    );
    assert_eq!(
        NodeName::new(PhysAddr::new(0x4000_0000)).as_bytes(),
        b"cloister-hyp@40000000"
    );
    assert_eq!(
        NodeName::new(PhysAddr::new(u64::MAX)).as_bytes(),
        b"cloister-hyp@ffffffffffffffff"
    );
}

#[test]
fn every_error_displays() {
    let pa = PhysAddr::new(0x1000);
    let all = [
        FdtError::Truncated {
            needed: 1,
            available: 0,
        },
        FdtError::BadMagic { found: 1 },
        FdtError::UnsupportedVersion {
            version: 1,
            last_comp_version: 1,
        },
        FdtError::BadBlock {
            block: Block::MemReserve,
            offset: 0,
            size: 0,
            totalsize: 0,
        },
        FdtError::Malformed {
            offset: 4,
            problem: Malformed::BadStringOffset { nameoff: 9 },
        },
        FdtError::MissingNode { path: "/psci" },
        FdtError::MissingProperty {
            node: "/psci",
            prop: "method",
        },
        FdtError::BadProperty {
            node: "/memory",
            prop: "reg",
            len: 3,
        },
        FdtError::UnsupportedCells {
            node: "/",
            address_cells: 3,
            size_cells: 2,
        },
        FdtError::StdoutUnresolved {
            path: Snippet::new(b"serial\x01"),
        },
        FdtError::Console {
            path: Snippet::new(&[b'x'; 100]),
            problem: ConsoleProblem::RegShift(9),
        },
        FdtError::Untranslatable { addr: 1 },
        FdtError::UnknownPsciMethod {
            found: Snippet::new(b""),
        },
        FdtError::TooMany {
            what: "CPUs",
            max: 8,
        },
        FdtError::TooDeep,
        FdtError::RegionOverflow { base: 1, size: 2 },
        FdtError::NoSpace {
            needed: 2,
            available: 1,
        },
        FdtError::TooLarge { needed: 1 },
        FdtError::BadReservation { base: pa, size: 0 },
        FdtError::DuplicateReservation { base: pa },
        FdtError::ValueTooWide { value: 1, cells: 1 },
        FdtError::BadInitrd { start: pa, end: pa },
        FdtError::BadBootargs,
    ];
    for e in all {
        let s = alloc::format!("{e}");
        assert!(!s.is_empty() && !s.ends_with('.'), "{s}");
    }
    assert_eq!(
        alloc::format!(
            "{}",
            FdtError::StdoutUnresolved {
                path: Snippet::new(b"serial\x01")
            }
        ),
        "DTB /chosen stdout-path \"serial\\x01\" names no node"
    );
    assert_eq!(
        alloc::format!("{}", FdtError::DuplicateReservation { base: pa }),
        "/reserved-memory already has (or is given twice) cloister-hyp@1000"
    );
}

/// A tiny DTB writer for trees the fixtures do not cover (test-only; the
/// hyp never builds trees from scratch).
#[derive(Default)]
struct Tree {
    structs: Vec<u8>,
    strings: Vec<u8>,
}

impl Tree {
    fn word(&mut self, w: u32) -> &mut Self {
        self.structs.extend_from_slice(&w.to_be_bytes());
        self
    }

    fn pad(&mut self) {
        while !self.structs.len().is_multiple_of(4) {
            self.structs.push(0);
        }
    }

    fn begin(&mut self, name: &str) -> &mut Self {
        self.word(TOK_BEGIN_NODE);
        self.structs.extend_from_slice(name.as_bytes());
        self.structs.push(0);
        self.pad();
        self
    }

    fn end(&mut self) -> &mut Self {
        self.word(TOK_END_NODE)
    }

    fn prop(&mut self, name: &str, value: &[u8]) -> &mut Self {
        let off = match find_string(&self.strings, name.as_bytes()) {
            Some(off) => off,
            None => {
                let off = self.strings.len();
                self.strings.extend_from_slice(name.as_bytes());
                self.strings.push(0);
                off
            }
        };
        self.word(TOK_PROP);
        self.word(u32::try_from(value.len()).unwrap());
        self.word(u32::try_from(off).unwrap());
        self.structs.extend_from_slice(value);
        self.pad();
        self
    }

    fn u32s(&mut self, name: &str, cells: &[u32]) -> &mut Self {
        let v: Vec<u8> = cells.iter().flat_map(|c| c.to_be_bytes()).collect();
        self.prop(name, &v)
    }

    fn str(&mut self, name: &str, value: &str) -> &mut Self {
        let mut v = value.as_bytes().to_vec();
        v.push(0);
        self.prop(name, &v)
    }

    fn finish(&mut self) -> Vec<u8> {
        self.word(TOK_END);
        let off_rsv = 40;
        let off_struct = off_rsv + 16;
        let off_strings = off_struct + self.structs.len();
        let total = off_strings + self.strings.len();
        let mut out = Vec::new();
        for w in [
            FDT_MAGIC,
            u32::try_from(total).unwrap(),
            u32::try_from(off_struct).unwrap(),
            u32::try_from(off_strings).unwrap(),
            40,
            17,
            16,
            0,
            u32::try_from(self.strings.len()).unwrap(),
            u32::try_from(self.structs.len()).unwrap(),
        ] {
            out.extend_from_slice(&w.to_be_bytes());
        }
        out.extend_from_slice(&[0; 16]);
        out.extend_from_slice(&self.structs);
        out.extend_from_slice(&self.strings);
        out
    }

    /// A valid platform: 2/2 root, one memory node, a PL011 console, PSCI
    /// smc, `n_cpus` CPUs; `extra` adds root-level content before `}`.
    fn platform(n_cpus: u32, extra: impl FnOnce(&mut Tree)) -> Vec<u8> {
        let mut t = Tree::default();
        t.begin("")
            .u32s("#address-cells", &[2])
            .u32s("#size-cells", &[2]);
        t.begin("memory@40000000")
            .str("device_type", "memory")
            .u32s("reg", &[0, 0x4000_0000, 0, 0x1000_0000])
            .end();
        t.begin("uart@9000000")
            .str("compatible", "arm,pl011")
            .u32s("reg", &[0, 0x0900_0000, 0, 0x1000])
            .end();
        t.begin("psci").str("method", "smc").end();
        t.begin("cpus")
            .u32s("#address-cells", &[1])
            .u32s("#size-cells", &[0]);
        for i in 0..n_cpus {
            t.begin(&alloc::format!("cpu@{i}"))
                .str("device_type", "cpu")
                .u32s("reg", &[i])
                .end();
        }
        t.end();
        t.begin("chosen").str("stdout-path", "/uart@9000000").end();
        extra(&mut t);
        t.end();
        t.finish()
    }
}

#[test]
fn tree_builder_matches_the_reader() {
    let dtb = Tree::platform(2, |_| {});
    let p = host_platform(&dtb).unwrap();
    assert_eq!(p.ram.as_slice(), &[region(0x4000_0000, 0x1000_0000)]);
    assert_eq!(p.cpus.as_slice(), &[0, 1]);
    assert_eq!(dump(&dtb), dump_ext(&dtb));
}

#[test]
fn platform_limits() {
    assert_eq!(
        host_platform(&Tree::platform(8, |_| {}))
            .unwrap()
            .cpus
            .len(),
        8
    );
    assert_eq!(
        host_platform(&Tree::platform(9, |_| {})),
        Err(FdtError::TooMany {
            what: "CPUs",
            max: MAX_CPUS
        })
    );
    assert_eq!(
        host_platform(&Tree::platform(0, |_| {})),
        Err(FdtError::MissingNode {
            path: "/cpus/cpu@*"
        })
    );
    // Eight regions fit, nine do not (one node already has one).
    let ram = |n: u32| {
        Tree::platform(1, |t| {
            let mut reg = Vec::new();
            for i in 0..n {
                reg.extend_from_slice(&[1, i * 0x1000_0000, 0, 0x1000]);
            }
            t.begin("memory@100000000")
                .str("device_type", "memory")
                .u32s("reg", &reg)
                .end();
        })
    };
    assert_eq!(host_platform(&ram(7)).unwrap().ram.len(), 8);
    assert_eq!(
        host_platform(&ram(8)),
        Err(FdtError::TooMany {
            what: "RAM regions",
            max: MAX_RAM_REGIONS
        })
    );
}

#[test]
fn platform_bad_values() {
    let with = |f: fn(&mut Tree)| host_platform(&Tree::platform(1, f));
    assert_eq!(
        with(|t| {
            t.begin("memory@0")
                .str("device_type", "memory")
                .u32s("reg", &[0, 0, 0])
                .end();
        }),
        Err(FdtError::BadProperty {
            node: "/memory",
            prop: "reg",
            len: 12
        })
    );
    assert_eq!(
        with(|t| {
            t.begin("memory@0")
                .str("device_type", "memory")
                .u32s("reg", &[0xffff_ffff, 0xffff_f000, 0, 0x2000])
                .end();
        }),
        Err(FdtError::RegionOverflow {
            base: 0xffff_ffff_ffff_f000,
            size: 0x2000
        })
    );
    // A second /chosen is ignored: lookups take the first.
    assert!(with(|t| {
        t.begin("chosen")
            .u32s("linux,initrd-start", &[1, 2, 3])
            .end();
    })
    .is_ok_and(|p| p.initrd.is_none()));

    // Root cells the reader cannot use.
    let mut t = Tree::default();
    t.begin("").u32s("#address-cells", &[3]).end();
    assert_eq!(
        host_platform(&t.finish()),
        Err(FdtError::UnsupportedCells {
            node: "/",
            address_cells: 3,
            size_cells: 1
        })
    );
    let mut t = Tree::default();
    t.begin("").prop("#size-cells", &[0, 1]).end();
    assert_eq!(
        host_platform(&t.finish()),
        Err(FdtError::BadProperty {
            node: "/",
            prop: "#size-cells",
            len: 2
        })
    );
}

/// The QEMU tree with /chosen holding `initrd` properties of these lengths.
fn chosen_initrd(start: &[u8], end: &[u8]) -> Result<Platform, FdtError> {
    let mut t = Tree::default();
    t.begin("")
        .u32s("#address-cells", &[2])
        .u32s("#size-cells", &[2]);
    t.begin("memory")
        .str("device_type", "memory")
        .u32s("reg", &[0, 0x4000_0000, 0, 0x1000])
        .end();
    t.begin("pl011@9000000")
        .str("compatible", "arm,pl011")
        .u32s("reg", &[0, 0x0900_0000, 0, 0x1000])
        .end();
    t.begin("psci").str("method", "hvc").end();
    t.begin("cpus")
        .u32s("#address-cells", &[2])
        .u32s("#size-cells", &[0]);
    t.begin("cpu@80000000").u32s("reg", &[0, 0x8000_0000]).end();
    t.end();
    t.begin("chosen").str("stdout-path", "/pl011");
    if !start.is_empty() {
        t.prop("linux,initrd-start", start);
    }
    if !end.is_empty() {
        t.prop("linux,initrd-end", end);
    }
    t.end().end();
    host_platform(&t.finish())
}

#[test]
fn initrd_property_sizes() {
    let p = chosen_initrd(&[0, 0, 0, 1, 0, 0, 0, 2], &[0, 0, 0, 3]).unwrap();
    assert_eq!(p.initrd, Some(initrd(0x1_0000_0002, 3)));
    // Named `cpu@…` without device_type still counts; two-cell MPIDR.
    assert_eq!(p.cpus.as_slice(), &[0x8000_0000]);
    assert_eq!(p.psci, PsciConduit::Hvc);
    // Only one of the pair: no initrd.
    assert_eq!(chosen_initrd(&[0, 0, 0, 1], &[]).unwrap().initrd, None);
    assert_eq!(
        chosen_initrd(&[0, 0, 1], &[0, 0, 0, 3]),
        Err(FdtError::BadProperty {
            node: "/chosen",
            prop: "linux,initrd-start",
            len: 3
        })
    );
}

#[test]
fn console_translation() {
    // The console at bus address 0x100 behind one `ranges` per level
    // (`None`: no `ranges` property), named through an alias with options.
    fn behind(levels: &[Option<&[u32]>]) -> Vec<u8> {
        let dtb = Tree::platform(1, |t| {
            let mut path = String::new();
            for (i, ranges) in levels.iter().enumerate() {
                let name = alloc::format!("bus{i}");
                path.push('/');
                path.push_str(&name);
                t.begin(&name)
                    .u32s("#address-cells", &[1])
                    .u32s("#size-cells", &[1]);
                if let Some(r) = ranges {
                    t.u32s("ranges", r);
                }
            }
            t.begin("serial@100")
                .str("compatible", "arm,pl011")
                .u32s("reg", &[0x100, 0x20])
                .end();
            for _ in levels {
                t.end();
            }
            t.begin("aliases")
                .str("serial9", &alloc::format!("{path}/serial@100"))
                .end();
        });
        // Point the fixture's stdout-path at the alias (same length).
        patched(&dtb, b"/uart@9000000\0", b"serial9:9600\0\0")
    }
    let identity: Option<&[u32]> = Some(&[]);

    // bus0 (1-cell children, under the 2-cell root) maps 0.. to
    // 0x1000_0000..; bus1 maps 0.. to bus0's 0x2000..
    let outer: &[u32] = &[0, 0, 0x1000_0000, 0x1_0000];
    let inner: &[u32] = &[0, 0x2000, 0x1000];
    let p = host_platform(&behind(&[Some(outer), Some(inner)])).unwrap();
    assert_eq!(p.uart, pl011(0x1000_2100, 0x20));
    // Two ranges entries; the second one matches.
    let two: &[u32] = &[0x8000, 0x9000, 0x100, 0x0, 0x5000, 0x1000];
    let p = host_platform(&behind(&[identity, Some(two)])).unwrap();
    assert_eq!(p.uart.base, PhysAddr::new(0x5100));
    // Identity all the way.
    assert_eq!(
        host_platform(&behind(&[identity])).unwrap().uart,
        pl011(0x100, 0x20)
    );

    // No ranges, or no range covering the address: not translatable.
    assert_eq!(
        host_platform(&behind(&[None])),
        Err(FdtError::Untranslatable { addr: 0x100 })
    );
    let miss: &[u32] = &[0x1000, 0x1000, 0x100];
    assert_eq!(
        host_platform(&behind(&[identity, Some(miss)])),
        Err(FdtError::Untranslatable { addr: 0x100 })
    );
    // A ranges value that is not whole entries.
    let ragged: &[u32] = &[0, 0, 0x1000_0000];
    assert_eq!(
        host_platform(&behind(&[Some(ragged)])),
        Err(FdtError::BadProperty {
            node: "console bus",
            prop: "ranges",
            len: 12
        })
    );

    // Root + MAX_DEPTH - 2 buses + the console fill the chain; one more
    // level is too deep.
    let deep = [identity; MAX_DEPTH - 2];
    assert_eq!(
        host_platform(&behind(&deep)).unwrap().uart.base,
        PhysAddr::new(0x100)
    );
    let deeper = [identity; MAX_DEPTH - 1];
    assert_eq!(host_platform(&behind(&deeper)), Err(FdtError::TooDeep));
}

#[test]
fn rewrite_handles_odd_chosen_layouts() {
    // /chosen with a subnode before a property (not allowed, seen anyway),
    // a duplicated initrd property and NOP tokens.
    let mut t = Tree::default();
    t.begin("")
        .u32s("#address-cells", &[2])
        .u32s("#size-cells", &[2]);
    t.word(TOK_NOP);
    t.begin("chosen").str("bootargs", "old");
    t.begin("sub").end();
    t.u32s("linux,initrd-start", &[5])
        .u32s("linux,initrd-start", &[6]);
    t.end();
    t.end();
    let src = t.finish();
    let edits = Edits {
        reserve: &[],
        initrd: Some(initrd(0x10, 0x20)),
        bootargs: None,
    };
    let out = rewritten(&src, &edits);
    let d = dump(&out);
    assert_eq!(d, dump_ext(&out));
    let names: Vec<&str> = node(&d, "/chosen")
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    // New properties before the subnode; the late duplicates are dropped.
    assert_eq!(
        names,
        ["bootargs", "linux,initrd-start", "linux,initrd-end"]
    );
    assert_eq!(paths(&d), ["/", "/chosen", "/chosen/sub"]);
    // NOPs are dropped.
    assert_eq!(
        out.len(),
        src.len() - 4 - 2 * 16 + 2 * 20 + b"linux,initrd-end\0".len()
    );
}

#[test]
fn second_root_is_rejected() {
    let mut t = Tree::default();
    t.begin("").end().begin("").end();
    assert_eq!(
        host_platform(&t.finish()),
        Err(FdtError::Malformed {
            offset: 12,
            problem: Malformed::SecondRoot
        })
    );
}

fn fixture() -> impl Strategy<Value = &'static [u8]> {
    prop_oneof![Just(QEMU2), Just(BOARD), Just(MINIMAL), Just(ROCK5B)]
}

/// Every range both walkers report for `dtb` (ignoring errors).
fn visit_all(dtb: &[u8]) -> usize {
    let mut n = 0;
    let _ = for_each_device_range(dtb, |_| n += 1);
    let _ = for_each_reserved_range(dtb, |_| n += 1);
    n
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random byte mutations of real trees: no panic, and whatever
    /// `rewrite` accepts comes out as a valid tree.
    #[test]
    fn mutated_trees_never_panic(
        src in fixture(),
        muts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut v = src.to_vec();
        for (at, byte) in &muts {
            let i = at.index(v.len());
            v[i] = *byte;
        }
        if truncate {
            v.truncate(cut.index(v.len()));
        }
        let _ = host_platform(&v);
        visit_all(&v);
        let edits = Edits {
            reserve: &[HYP],
            initrd: Some(initrd(0x4800_0000, 0x4880_0000)),
            bootargs: Some("console=ttyAMA0"),
        };
        let mut dst = alloc::vec![0u8; v.len() + 4096];
        if let Ok(len) = rewrite(&v, &mut dst, &edits) {
            let out = &dst[..len];
            prop_assert!(Fdt::new(out).is_ok());
            let _ = host_platform(out);
        }
        let mut small = [0u8; 64];
        let _ = rewrite(&v, &mut small, &Edits::default());
    }

    /// Mutations aimed at the header and token words (aligned 32-bit
    /// values), which random bytes rarely hit in a useful way.
    #[test]
    fn mutated_words_never_panic(
        src in fixture(),
        word in any::<prop::sample::Index>(),
        value in prop_oneof![Just(0u32), Just(1), Just(2), Just(3), Just(4), Just(9), Just(u32::MAX), any::<u32>()],
    ) {
        let mut v = src.to_vec();
        let i = word.index(v.len() / 4) * 4;
        v[i..i + 4].copy_from_slice(&value.to_be_bytes());
        let _ = host_platform(&v);
        visit_all(&v);
        let mut dst = alloc::vec![0u8; v.len() + 4096];
        let edits = Edits { reserve: &[HYP], initrd: Some(initrd(1, 2)), bootargs: None };
        if let Ok(len) = rewrite(&v, &mut dst, &edits) {
            prop_assert!(Fdt::new(&dst[..len]).is_ok());
        }
    }

    #[test]
    fn random_bytes_never_panic(mut data in proptest::collection::vec(any::<u8>(), 0..256)) {
        if data.len() >= 8 {
            data[..4].copy_from_slice(&FDT_MAGIC.to_be_bytes());
            let len = u32::try_from(data.len()).unwrap();
            data[4..8].copy_from_slice(&len.to_be_bytes());
        }
        let _ = host_platform(&data);
        visit_all(&data);
        let mut dst = [0u8; 512];
        let _ = rewrite(&data, &mut dst, &Edits::default());
    }
}

// ---- the ROCK 5B's tree ----

#[test]
fn rock5b_platform() {
    // The pinned kernel's rk3588-rock-5b.dtb with a /memory node as U-Boot
    // writes it on an 8 GiB board (tests/data/README.md).
    let p = host_platform(ROCK5B).unwrap();
    assert_eq!(
        p.uart,
        Uart {
            base: PhysAddr::new(0xfeb5_0000),
            size: 0x100,
            kind: UartKind::Ns16550 {
                reg_shift: 2,
                width: crate::uart::IoWidth::U32,
                reg_offset: 0,
            },
        }
    );
    assert_eq!(
        p.ram.as_slice(),
        &[
            region(0x20_0000, 0xefe0_0000),
            region(0x1_0000_0000, 4 * GIB)
        ]
    );
    assert_eq!(p.psci, PsciConduit::Smc);
    assert_eq!(
        p.cpus.as_slice(),
        &[0, 0x100, 0x200, 0x300, 0x400, 0x500, 0x600, 0x700]
    );
    assert_eq!(p.initrd, None);
}

fn device_ranges(dtb: &[u8]) -> Vec<(u64, u64)> {
    let mut v = Vec::new();
    for_each_device_range(dtb, |r| v.push((r.base.raw(), r.size))).unwrap();
    v
}

fn reserved_ranges(dtb: &[u8]) -> Vec<(u64, u64)> {
    let mut v = Vec::new();
    for_each_reserved_range(dtb, |r| v.push((r.base.raw(), r.size))).unwrap();
    v
}

#[test]
fn qemu_device_ranges() {
    let v = device_ranges(QEMU2);
    // Every device; not the memory node, not the CPUs (reg = MPIDR under a
    // bus without ranges).
    for want in [
        (0, 0x400_0000), // flash, two reg entries
        (0x400_0000, 0x400_0000),
        (0x900_0000, 0x1000),             // PL011
        (0x800_0000, 0x1_0000),           // GICD
        (0x80a_0000, 0xf6_0000),          // GICR
        (0x808_0000, 0x2_0000),           // ITS, a child of the GIC (identity ranges)
        (0xa00_3e00, 0x200),              // the last virtio-mmio
        (0x40_1000_0000, 0x1000_0000),    // PCIe ECAM
        (0x3eff_0000, 0x1_0000),          // PCIe I/O window
        (0x1000_0000, 0x2eff_0000),       // PCIe 32-bit window
        (0x80_0000_0000, 0x80_0000_0000), // PCIe 64-bit window
    ] {
        assert!(v.contains(&want), "{want:x?} missing from {v:x?}");
    }
    assert!(
        !v.iter().any(|&(b, _)| b == 0x4000_0000),
        "RAM is not a device"
    );
    assert_eq!(v.len(), 45);
    assert_eq!(reserved_ranges(QEMU2), []);
}

#[test]
fn rock5b_device_and_reserved_ranges() {
    let v = device_ranges(ROCK5B);
    for want in [
        (0xfeb5_0000, 0x100),         // uart2
        (0xfe60_0000, 0x1_0000),      // GICD
        (0xfe68_0000, 0x10_0000),     // GICR
        (0x9_0000_0000, 0x4000_0000), // pcie3x4 64-bit window
        (0xf020_0000, 0xe0_0000),     // pcie3x4 32-bit window
        (0xa_4000_0000, 0x40_0000),   // pcie3x4 DBI
    ] {
        assert!(v.contains(&want), "{want:x?} missing");
    }
    // Disabled nodes (pcie3x2 at 0xfe160000, its window 0x9_4000_0000) and
    // I2C devices (no CPU address) are not reported.
    assert!(!v
        .iter()
        .any(|&(b, _)| b == 0xfe16_0000 || b == 0x9_4000_0000));
    assert!(v.iter().all(|&(b, _)| b >= 0xf000_0000), "{v:x?}");
    assert_eq!(v.len(), 143);
    // The SCMI mailbox, below the RAM U-Boot reports.
    assert_eq!(reserved_ranges(ROCK5B), [(0x10_f000, 0x100)]);
}

#[test]
fn device_range_rules() {
    let dtb = Tree::platform(1, |t| {
        // A simple bus translating 0.. to 0x2000_0000, with a device, a
        // disabled device, a disabled sub-bus and a nested bus without
        // ranges (I2C-like).
        t.begin("soc")
            .u32s("#address-cells", &[1])
            .u32s("#size-cells", &[1])
            .u32s("ranges", &[0, 0, 0x2000_0000, 0x100_0000]);
        t.begin("dev@1000")
            .u32s("reg", &[0x1000, 0x100, 0x3000, 0x10])
            .end();
        t.begin("off@2000")
            .u32s("reg", &[0x2000, 0x100])
            .str("status", "disabled")
            .end();
        t.begin("bus@5000")
            .u32s("#address-cells", &[1])
            .u32s("#size-cells", &[1])
            .u32s("ranges", &[])
            .str("status", "fail");
        t.begin("dev@5000").u32s("reg", &[0x5000, 0x10]).end();
        t.end();
        t.begin("i2c@4000")
            .u32s("reg", &[0x4000, 0x100])
            .u32s("#address-cells", &[1])
            .u32s("#size-cells", &[0]);
        t.begin("pmic@20").u32s("reg", &[0x20]).end();
        t.end();
        // Outside every ranges window: skipped.
        t.begin("far@2000000")
            .u32s("reg", &[0x200_0000, 0x10])
            .end();
        // Empty and wrapping entries: skipped.
        t.begin("odd@0")
            .u32s("reg", &[0x10, 0, 0xffff_fff0, 0x20])
            .end();
        t.end();
        // A root-level device with a ragged reg: whole entries only.
        t.begin("ragged@30000000")
            .u32s("reg", &[0, 0x3000_0000, 0, 0x1000, 0, 0x3100_0000])
            .end();
        // A PCI host bridge: reg (ECAM) plus its windows.
        t.begin("pcie@40000000")
            .str("device_type", "pci")
            .u32s("#address-cells", &[3])
            .u32s("#size-cells", &[2])
            .u32s("reg", &[0x40, 0, 0, 0x1000_0000])
            .u32s(
                "ranges",
                &[
                    0x0100_0000,
                    0,
                    0,
                    0,
                    0x3eff_0000,
                    0,
                    0x1_0000, //
                    0x0200_0000,
                    0,
                    0x1000_0000,
                    0,
                    0x1000_0000,
                    0,
                    0x2000_0000,
                ],
            );
        t.begin("dev@0,0").u32s("reg", &[0, 0, 0, 0, 0]).end();
        t.end();
        // A disabled PCI bridge reports nothing.
        t.begin("pcie@50000000")
            .str("device_type", "pci")
            .str("status", "disabled")
            .u32s("#address-cells", &[3])
            .u32s("#size-cells", &[2])
            .u32s(
                "ranges",
                &[0x0200_0000, 0, 0x5000_0000, 0, 0x5000_0000, 0, 0x1000],
            );
        t.end();
        // A malformed #address-cells makes a node's addresses unreadable.
        t.begin("weird")
            .prop("#address-cells", &[1])
            .u32s("#size-cells", &[1])
            .u32s("ranges", &[]);
        t.begin("dev@0").u32s("reg", &[0x6000_0000, 0x10]).end();
        t.end();
        // Reserved memory: one region, one disabled, one sized only.
        t.begin("reserved-memory")
            .u32s("#address-cells", &[2])
            .u32s("#size-cells", &[2])
            .u32s("ranges", &[]);
        t.begin("fw@10f000")
            .u32s("reg", &[0, 0x10_f000, 0, 0x100])
            .end();
        t.begin("off@0")
            .u32s("reg", &[0, 0, 0, 0x1000])
            .str("status", "disabled")
            .end();
        t.begin("pool").u32s("size", &[0, 0x10_0000]).end();
        t.end();
    });
    assert_eq!(
        device_ranges(&dtb),
        [
            (0x900_0000, 0x1000), // the platform's console
            (0x2000_1000, 0x100),
            (0x2000_3000, 0x10),
            (0x2000_4000, 0x100), // the I2C controller itself
            (0x3000_0000, 0x1000),
            (0x40_0000_0000, 0x1000_0000),
            (0x3eff_0000, 0x1_0000),
            (0x1000_0000, 0x2000_0000),
        ]
    );
    assert_eq!(reserved_ranges(&dtb), [(0x10_f000, 0x100)]);
    // No /reserved-memory, or a disabled one: nothing.
    assert_eq!(reserved_ranges(QEMU2), []);
    let off = Tree::platform(1, |t| {
        t.begin("reserved-memory")
            .str("status", "disabled")
            .u32s("#address-cells", &[2])
            .u32s("#size-cells", &[2])
            .u32s("ranges", &[]);
        t.begin("fw@0").u32s("reg", &[0, 0x1000, 0, 0x100]).end();
        t.end();
    });
    assert_eq!(reserved_ranges(&off), []);
    // A broken tree is an error, not a partial list.
    assert!(for_each_device_range(&QEMU2[..100], |_| {}).is_err());
    assert!(for_each_reserved_range(b"xx", |_| {}).is_err());
}

#[test]
fn device_walk_skips_nodes_deeper_than_max_depth() {
    let dtb = Tree::platform(1, |t| {
        for i in 0..MAX_DEPTH + 2 {
            t.begin(&alloc::format!("bus{i}"))
                .u32s("#address-cells", &[1])
                .u32s("#size-cells", &[1])
                .u32s("ranges", &[])
                .u32s("reg", &[0x1000 * u32::try_from(i).unwrap(), 0x10]);
        }
        for _ in 0..MAX_DEPTH + 2 {
            t.end();
        }
        t.begin("after")
            .u32s("reg", &[0, 0x7000_0000, 0, 0x10])
            .end();
    });
    let v = device_ranges(&dtb);
    // The root is depth 0; bus0 (depth 1) .. bus14 (depth 15) fit the
    // walker's stack; deeper ones are skipped, and the walk goes on.
    // bus0's reg is in the root's 2-cell space: unreadable as 1-cell pairs.
    let buses: Vec<u64> = (1..u64::try_from(MAX_DEPTH).unwrap() - 1)
        .map(|i| 0x1000 * i)
        .collect();
    let got: Vec<u64> = v
        .iter()
        .map(|&(b, _)| b)
        .filter(|&b| b < 0x10_0000)
        .collect();
    assert_eq!(got, buses);
    assert_eq!(v.last(), Some(&(0x7000_0000, 0x10)));
}

#[test]
fn console_kinds_and_problems() {
    let console = |props: &dyn Fn(&mut Tree)| {
        let dtb = Tree::platform(1, |t| {
            t.begin("ser@1000000")
                .u32s("reg", &[0, 0x100_0000, 0, 0x100]);
            props(t);
            t.end();
        });
        host_platform(&patched(&dtb, b"/uart@9000000\0", b"/ser@1000000\0\0"))
    };
    let p = console(&|t| {
        t.str("compatible", "snps,dw-apb-uart")
            .u32s("reg-shift", &[2])
            .u32s("reg-io-width", &[4]);
    })
    .unwrap();
    assert_eq!(p.uart.base, PhysAddr::new(0x100_0000));
    assert_eq!(
        alloc::format!("{}", p.uart.kind),
        "16550 (reg-shift 2, 32-bit access)"
    );
    let path = Snippet::new(b"/ser@1000000");
    assert_eq!(
        console(&|t| {
            t.str("compatible", "ns16550a").u32s("reg-shift", &[5]);
        }),
        Err(FdtError::Console {
            path,
            problem: ConsoleProblem::RegShift(5)
        })
    );
    assert_eq!(
        console(&|t| {
            t.str("compatible", "ns16550").u32s("reg-io-width", &[8]);
        }),
        Err(FdtError::Console {
            path,
            problem: ConsoleProblem::RegIoWidth(8)
        })
    );
    // reg-offset past the 0x100-byte reg.
    let e = console(&|t| {
        t.str("compatible", "ns16550").u32s("reg-offset", &[0xfb]);
    })
    .unwrap_err();
    assert_eq!(
        e,
        FdtError::Console {
            path,
            problem: ConsoleProblem::RegTooSmall {
                size: 0x100,
                needed: 0x101
            }
        }
    );
    assert_eq!(
        e.to_string(),
        "DTB console /ser@1000000 has a reg of 0x100 bytes, but its registers need 0x101"
    );
    // A malformed property is a malformed property.
    assert_eq!(
        console(&|t| {
            t.str("compatible", "ns16550").prop("reg-shift", &[2]);
        }),
        Err(FdtError::BadProperty {
            node: "console",
            prop: "reg-shift",
            len: 1
        })
    );
    assert_eq!(
        console(&|t| {
            t.str("compatible", "xlnx,xps-uartlite-1.00.a");
        }),
        Err(FdtError::Console {
            path,
            problem: ConsoleProblem::NotCompatible
        })
    );
}
