//! Board profiles (`[board]` and `disk.kernel-dtb` in a stack): the board's
//! DTB, built from the pinned kernel tree with the stack's kernel, and what
//! the hyp's own DTB reader (`cloister_hyp_core::fdt::host_platform`, the
//! code the hyp runs first on every boot) makes of it.
//!
//! The check runs at build time because nothing here can boot the board:
//! it is the closest this machine gets to "would the hyp start on it". A
//! refusal is a warning, not an error: the image is still what a board
//! owner flashes to see the failure for themselves.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use cloister_hyp_core::addr::{Pfn, PfnRange};
use cloister_hyp_core::fdt::{self, FdtError, Platform, PsciConduit};
use cloister_hyp_core::host_map::HostMap;

use crate::cache::{short, KeyBuilder, Stamp};
use crate::kernel::{LinuxTree, ARCH, CROSS_COMPILE};
use crate::stack::Stack;
use crate::stage::{Outcome, Stage};

/// The board DTB a stack's build produced, and the hyp's verdict on it.
#[derive(Debug, Clone)]
pub struct BoardDtb {
    /// `target/cloister/<stack>/<name>.dtb`.
    pub path: PathBuf,
    /// What the hyp's DTB reader says; `Err` is its refusal, in its words.
    pub hyp_check: std::result::Result<String, String>,
}

/// The `board-dtb` build stage: `make <disk.kernel-dtb>` in the stack's
/// kernel build directory, the result copied to `out`, then the hyp check.
pub fn dtb_stage(
    stage: &mut Stage,
    stack: &Stack,
    tree: &LinuxTree,
    kernel_dir: &Path,
    out: &Path,
    stamps: &Path,
) -> Result<(BoardDtb, Outcome)> {
    let (Some(target), Some(source)) = (
        stack.file.disk.kernel_dtb.as_deref(),
        stack.kernel_dtb_source(&tree.dir),
    ) else {
        bail!("stack {} sets no `disk.kernel-dtb`", stack.name);
    };
    if !source.is_file() {
        bail!(
            "{}: key `disk.kernel-dtb`: expected {target} to be built from {}, which the \
             pinned kernel tree does not have",
            stack.path.display(),
            source.display()
        );
    }
    let name = Path::new(target)
        .file_name()
        .context("disk.kernel-dtb has no file name")?;
    let built = kernel_dir.join("arch/arm64/boot/dts").join(target);
    let dst = out.join(name);
    let mut key = KeyBuilder::new("board-dtb");
    key.add_str("tree", &tree.key).add_str("target", target);
    let key = key.finish();
    let stamp = Stamp::new(stamps, "board-dtb");
    let cached = stamp.is_fresh(&key, &[&built, &dst]);
    if !cached {
        stage.status(&format!("make {target}"));
        stage.run(
            Command::new("make")
                .arg("-C")
                .arg(&tree.dir)
                .arg(format!("O={}", kernel_dir.display()))
                .arg(format!("ARCH={ARCH}"))
                .arg(format!("CROSS_COMPILE={CROSS_COMPILE}"))
                .arg(target),
        )?;
        std::fs::copy(&built, &dst)
            .with_context(|| format!("copying {} to {}", built.display(), dst.display()))?;
        stamp.record(&key)?;
    }
    stage.status("the hyp's boot checks on it");
    let dtc = kernel_dir.join("scripts/dtc/dtc");
    let hyp_check = hyp_check(&dtc, &dst)?;
    stage.log(&format!("hyp check: {hyp_check:?}"));
    let size = std::fs::metadata(&dst)?.len();
    let verdict = match &hyp_check {
        Ok(_) => "the hyp accepts it".to_owned(),
        Err(_) => "the hyp REFUSES it (see the warning)".to_owned(),
    };
    let what = format!(
        "{} ({} KiB) from the tree's {}; {verdict}",
        dst.file_name().unwrap_or_default().to_string_lossy(),
        size.div_ceil(1024),
        source.strip_prefix(&tree.dir).unwrap_or(&source).display()
    );
    let board = BoardDtb {
        path: dst,
        hyp_check,
    };
    Ok((
        board,
        if cached {
            Outcome::Cached(format!("key {}: {what}", short(&key)))
        } else {
            Outcome::Built(what)
        },
    ))
}

/// Runs what the hyp runs first on `dtb`: its DTB reader
/// (`fdt::host_platform`: RAM, console, PSCI, CPUs) and the host stage-2
/// plan (`HostMap::from_dtb`: other RAM, reserved memory, device ranges),
/// as if the hyp were loaded into the first RAM region. A DTB without RAM
/// (board DTBs leave `/memory` to U-Boot, which adds it at `booti`) is read
/// again with a stand-in `/memory` node, made with the kernel's own `dtc`,
/// so the checks after RAM still run.
pub fn hyp_check(dtc: &Path, dtb: &Path) -> Result<std::result::Result<String, String>> {
    let bytes = std::fs::read(dtb).with_context(|| format!("reading {}", dtb.display()))?;
    match fdt::host_platform(&bytes) {
        Ok(p) => Ok(describe(&bytes, &p, false)),
        Err(FdtError::MissingNode { path: "/memory" }) => {
            let dts = run_dtc(dtc, &["-I", "dtb", "-O", "dts"], &bytes)
                .with_context(|| format!("decompiling {}", dtb.display()))?;
            let dts = with_stand_in_memory(&String::from_utf8_lossy(&dts))?;
            let patched = run_dtc(dtc, &["-I", "dts", "-O", "dtb"], dts.as_bytes())
                .with_context(|| format!("{} with a stand-in /memory node", dtb.display()))?;
            Ok(match fdt::host_platform(&patched) {
                Ok(p) => describe(&patched, &p, true),
                Err(e) => Err(format!("{e} (read with a stand-in /memory node)")),
            })
        }
        Err(e) => Ok(Err(e.to_string())),
    }
}

fn run_dtc(dtc: &Path, args: &[&str], input: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new(dtc)
        .arg("-q")
        .args(args)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", dtc.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input)?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{} {} failed ({}): {}",
            dtc.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Base and size of the stand-in RAM: 2 GiB from 2 MiB. Only its presence
/// matters to the checks that follow RAM; U-Boot writes the real banks.
const STAND_IN_RAM: (u64, u64) = (0x20_0000, 0x8000_0000);

/// `dts` (dtc's decompiled source) with a `/memory` node appended, its
/// `reg` in the root's `#address-cells` / `#size-cells`.
pub fn with_stand_in_memory(dts: &str) -> Result<String> {
    let mut in_root = false;
    let mut cells = (None, None);
    for line in dts.lines().map(str::trim) {
        if line == "/ {" {
            in_root = true;
            continue;
        }
        if !in_root {
            continue;
        }
        if line.ends_with('{') {
            // The root's own properties come before its first child.
            break;
        }
        let value = |l: &str| -> Option<u32> {
            let v = l.split_once('=')?.1.trim().trim_end_matches(';').trim();
            let v = v.strip_prefix('<')?.strip_suffix('>')?.trim();
            match v.strip_prefix("0x") {
                Some(hex) => u32::from_str_radix(hex, 16).ok(),
                None => v.parse().ok(),
            }
        };
        if line.starts_with("#address-cells") {
            cells.0 = value(line);
        } else if line.starts_with("#size-cells") {
            cells.1 = value(line);
        }
    }
    let (Some(ac), Some(sc)) = cells else {
        bail!("the DTB's root node has no #address-cells and #size-cells");
    };
    let mut reg = String::new();
    for (value, n) in [(STAND_IN_RAM.0, ac), (STAND_IN_RAM.1, sc)] {
        match n {
            1 => {
                let v = u32::try_from(value)
                    .with_context(|| format!("{value:#x} does not fit one cell"))?;
                let _ = write!(reg, " {v:#x}");
            }
            2 => {
                let _ = write!(reg, " {:#x} {:#x}", value >> 32, value & 0xffff_ffff);
            }
            n => bail!("the DTB's root uses {n} cells; expected 1 or 2"),
        }
    }
    Ok(format!(
        "{dts}\n/ {{\n\tmemory@{:x} {{\n\t\tdevice_type = \"memory\";\n\t\treg = <{}>;\n\t}};\n}};\n",
        STAND_IN_RAM.0,
        reg.trim()
    ))
}

/// One line on what the hyp reads from the DTB and maps for the host, or
/// why it refuses (the host stage-2 plan failing, in its words).
fn describe(dtb: &[u8], p: &Platform, stand_in: bool) -> std::result::Result<String, String> {
    let stand_in = if stand_in {
        " (with a stand-in /memory node)"
    } else {
        ""
    };
    let first = p.ram.as_slice().first().copied();
    let managed = first
        .and_then(|r| PfnRange::new(Pfn::new(r.base.raw() >> 12), r.size >> 12))
        .ok_or_else(|| format!("the first RAM region is smaller than a page{stand_in}"))?;
    let map =
        HostMap::from_dtb(dtb, p.ram.as_slice(), managed).map_err(|e| format!("{e}{stand_in}"))?;
    let mib = |pages: u64| (pages * 4096).div_ceil(1 << 20);
    let mut line = format!(
        "console {} at {:#x}, {} CPU(s), PSCI via {}, {} RAM region(s){stand_in}; host stage-2: \
         {} device range(s) ({} MiB), {} RAM range(s) outside the page database ({} MiB), \
         {} table pages",
        p.uart.kind,
        p.uart.base.raw(),
        p.cpus.len(),
        match p.psci {
            PsciConduit::Smc => "SMC",
            PsciConduit::Hvc => "HVC",
        },
        p.ram.len(),
        map.devices().len(),
        mib(map.devices().pages()),
        map.other_ram().len(),
        mib(map.other_ram().pages()),
        map.table_pages(),
    );
    if map.dropped_pages() > 0 {
        let _ = write!(
            line,
            " ({} MiB of device ranges past the IPA space left unmapped)",
            mib(map.dropped_pages())
        );
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DTS: &str = "/dts-v1/;\n\n/ {\n\tcompatible = \"radxa,rock-5b\";\n\t#address-cells = <0x02>;\n\t#size-cells = <0x02>;\n\tmodel = \"x\";\n\n\tcpus {\n\t\t#address-cells = <0x01>;\n\t\t#size-cells = <0x00>;\n\t};\n};\n";

    #[test]
    fn stand_in_memory_uses_the_root_cells() {
        let out = with_stand_in_memory(DTS).unwrap();
        assert!(out.starts_with(DTS), "{out}");
        assert!(
            out.ends_with(
                "/ {\n\tmemory@200000 {\n\t\tdevice_type = \"memory\";\n\t\treg = <0x0 0x200000 0x0 0x80000000>;\n\t};\n};\n"
            ),
            "{out}"
        );

        let one = DTS.replace(
            "<0x02>;\n\t#size-cells = <0x02>",
            "<0x01>;\n\t#size-cells = <0x01>",
        );
        let out = with_stand_in_memory(&one).unwrap();
        assert!(out.contains("reg = <0x200000 0x80000000>;"), "{out}");
    }

    fn fixture(name: &str) -> PathBuf {
        crate::project_root().join("hyp/core/tests/data").join(name)
    }

    #[test]
    fn hyp_check_reports_console_devices_and_ram_of_the_rock5b() {
        // The board DTB with U-Boot's /memory for 8 GiB: no dtc needed.
        let dtb = fixture("rk3588-rock-5b-8g.dtb");
        let line = hyp_check(Path::new("/nonexistent/dtc"), &dtb).unwrap();
        assert_eq!(
            line.as_deref(),
            Ok(
                "console 16550 (reg-shift 2, 32-bit access) at 0xfeb50000, 8 CPU(s), PSCI via \
                SMC, 2 RAM region(s); host stage-2: 68 device range(s) (3148 MiB), 2 RAM \
                range(s) outside the page database (4097 MiB), 5570 table pages"
            )
        );
        let qemu = hyp_check(
            Path::new("/nonexistent/dtc"),
            &fixture("qemu-virt-smp2-1g.dtb"),
        )
        .unwrap()
        .unwrap();
        assert!(
            qemu.starts_with("console PL011 at 0x9000000, 2 CPU(s), PSCI via SMC, 1 RAM region(s); host stage-2: 8 device range(s)"),
            "{qemu}"
        );
        assert!(
            qemu.ends_with("(524288 MiB of device ranges past the IPA space left unmapped)"),
            "{qemu}"
        );
    }

    #[test]
    fn hyp_check_refusals_are_the_hyps_words() {
        let dir = std::env::temp_dir().join(format!("cloister-board-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dtb = std::fs::read(fixture("board-rmem.dtb")).unwrap();
        let at = dtb.windows(9).position(|w| w == b"arm,pl011").unwrap();
        let mut bad = dtb.clone();
        bad[at..at + 9].copy_from_slice(b"arm,pl012");
        let path = dir.join("bad.dtb");
        std::fs::write(&path, &bad).unwrap();
        let verdict = hyp_check(Path::new("/nonexistent/dtc"), &path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            verdict,
            Err(
                "DTB console /soc@1c000000/serial@1000 is not compatible with arm,pl011, \
                 snps,dw-apb-uart, ns16550a or ns16550"
                    .to_owned()
            )
        );
    }

    #[test]
    fn stand_in_memory_refuses_a_root_without_cells_or_with_three() {
        // The cpus node's cells are not the root's.
        let none = DTS
            .replace("\t#address-cells = <0x02>;\n", "")
            .replace("\t#size-cells = <0x02>;\n", "");
        let err = with_stand_in_memory(&none).unwrap_err().to_string();
        assert!(
            err.contains("root node has no #address-cells and #size-cells"),
            "{err}"
        );
        let three = DTS.replace("#size-cells = <0x02>", "#size-cells = <0x03>");
        let err = with_stand_in_memory(&three).unwrap_err().to_string();
        assert!(err.contains("uses 3 cells; expected 1 or 2"), "{err}");
    }
}
