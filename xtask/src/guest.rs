//! The unmodified Linux guest: its stock kernel (the pinned tarball with no
//! patches, the stack's `[guest]` fragments on tinyconfig), its initramfs
//! (the guest agent as /init and busybox), and a boot of the two on plain
//! QEMU with no hypervisor: configuration (c) of the guest benchmark, "a
//! normal guest on plain QEMU virtio-blk, TCG, no hyp".
//!
//! The guest agent's result lines are read back with its own library
//! (`cloister_guest_agent::report`), and its disk pattern and checksum are
//! recomputed with the same code, so the host checks the disk file the
//! guest left against what the guest says it wrote.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use cloister_guest_agent::cmdline::{BLK_MIB_KEY, SEED_KEY, TEST_KEY};
use cloister_guest_agent::pattern::{self, Checksum, Phase};
use cloister_guest_agent::report::{Report, PROTOCOL};

use crate::build::{build_rust_binary, copy_if_changed, MUSL};
use crate::cache::{self, short, KeyBuilder, Stamp};
use crate::e2e::{self, BootEnd, Expectations, Expected, Verdict};
use crate::initramfs;
use crate::kernel::{self, KernelBuild};
use crate::stack::GuestSection;
use crate::stage::{run_stage, Outcome};

/// How many guest kernel build directories the cache keeps.
const KEEP_GUEST_BUILDS: usize = 2;

/// What the guest stages built, in the stack's output directory.
#[derive(Debug, Clone)]
pub struct GuestBuild {
    pub kernel: KernelBuild,
    /// The Image copied out of the build tree (`guest-Image`).
    pub image: PathBuf,
    pub initramfs: PathBuf,
    pub agent: PathBuf,
}

/// Everything the guest stages read.
#[derive(Debug)]
pub struct GuestInputs<'a> {
    pub root: &'a Path,
    pub logs: &'a Path,
    pub cache_dir: &'a Path,
    pub out: &'a Path,
    pub stamps: &'a Path,
    pub shared_stamps: &'a Path,
    pub tarball: &'a Path,
    pub tarball_sha256: &'a str,
    pub fragments: &'a [PathBuf],
    pub busybox: &'a Path,
}

/// Builds the guest kernel and initramfs: stages `guest-source` (the
/// unpatched tree, a second cached tree next to the host's), `guest-kernel`
/// (its own build directory, keyed by tree and fragments), `guest-agent`
/// and `guest-initramfs`.
pub fn build(i: &GuestInputs<'_>) -> Result<GuestBuild> {
    let tree = run_stage(i.logs, "guest-source", |stage| {
        kernel::prepare_source(stage, i.cache_dir, i.tarball, i.tarball_sha256, &[])
    })?;
    let mut dir_key = KeyBuilder::new("guest-kernel-dir");
    dir_key.add_str("tree", &tree.key);
    for f in i.fragments {
        dir_key.add_str(
            "fragment",
            &f.file_name().unwrap_or_default().to_string_lossy(),
        );
    }
    let builds = i.cache_dir.join("guest-kernel");
    let build_dir = builds.join(short(&dir_key.finish()));
    let kernel_build = run_stage(i.logs, "guest-kernel", |stage| {
        for gone in cache::keep_recent(&builds, &build_dir, KEEP_GUEST_BUILDS)? {
            stage.log(&format!(
                "removed stale guest kernel build {}",
                gone.display()
            ));
        }
        kernel::build(stage, &tree, &build_dir, i.fragments, &build_dir)
    })?;
    let image = i.out.join("guest-Image");
    copy_if_changed(&kernel_build.image, &image)?;

    let agent = run_stage(i.logs, "guest-agent", |stage| {
        build_rust_binary(stage, i.root, "cloister-guest-agent", MUSL, i.shared_stamps)
    })?;
    let initramfs = i.out.join("guest-initramfs.cpio");
    run_stage(i.logs, "guest-initramfs", |stage| {
        let mut key = KeyBuilder::new("guest-initramfs");
        key.add_file("busybox", i.busybox)?
            .add_file("guest-agent", &agent)?;
        let key = key.finish();
        let stamp = Stamp::new(i.stamps, "guest-initramfs");
        if stamp.is_fresh(&key, &[&initramfs]) {
            return Ok(((), Outcome::Cached(format!("key {}", short(&key)))));
        }
        stage.status("writing newc cpio");
        let entries = initramfs::guest_entries(std::fs::read(i.busybox)?, std::fs::read(&agent)?);
        let summary = initramfs::write_image(&entries, &initramfs)?;
        stamp.record(&key)?;
        Ok(((), Outcome::Built(summary)))
    })?;
    Ok(GuestBuild {
        kernel: kernel_build,
        image,
        initramfs,
        agent,
    })
}

/// Where the guest's virtio console (hvc0) goes on plain QEMU.
#[derive(Debug, Clone)]
pub enum GuestConsole {
    /// Into a file (the tests read the agent's lines from it).
    File(PathBuf),
    /// On this terminal, multiplexed with QEMU's monitor (Ctrl-A X quits).
    Interactive,
}

/// A boot of the guest on plain QEMU.
#[derive(Debug, Clone)]
pub struct PlainBoot {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// A raw disk image on virtio-blk (`/dev/vda`), written by the guest.
    pub disk: PathBuf,
    pub console: GuestConsole,
    /// The PL011 (earlycon and anything before virtio-console is up).
    pub serial: PathBuf,
    /// Appended to `guest.cmdline`.
    pub extra_cmdline: Vec<String>,
}

/// QEMU arguments (without the binary) for `boot`: QEMU virt with GICv3,
/// TCG `-cpu max`, no EL2, the guest's CPUs and RAM, hvc0 on a
/// virtio-console and the disk on virtio-blk, both virtio-mmio.
pub fn plain_qemu_args(guest: &GuestSection, boot: &PlainBoot) -> Vec<String> {
    let mut cmdline = vec![guest.cmdline.clone()];
    cmdline.extend(boot.extra_cmdline.iter().cloned());
    let escape = |p: &Path| p.display().to_string().replace(',', ",,");
    let mut a: Vec<String> = [
        "-M",
        "virt,gic-version=3",
        "-cpu",
        "max",
        "-smp",
        &guest.cpus.to_string(),
        "-m",
        &format!("{}M", guest.memory_mib),
        "-kernel",
        &boot.kernel.display().to_string(),
        "-initrd",
        &boot.initramfs.display().to_string(),
        "-append",
        cmdline.join(" ").trim(),
        // PSCI SYSTEM_RESET ends QEMU like SYSTEM_OFF.
        "-no-reboot",
        "-display",
        "none",
        "-serial",
        &format!("file:{}", boot.serial.display()),
        "-device",
        "virtio-serial-device",
    ]
    .map(String::from)
    .to_vec();
    match &boot.console {
        GuestConsole::File(path) => a.extend([
            "-monitor".into(),
            "none".into(),
            "-chardev".into(),
            format!("file,id=hvc0,path={}", escape(path)),
        ]),
        GuestConsole::Interactive => a.extend(
            [
                "-chardev",
                "stdio,id=hvc0,mux=on,signal=off",
                "-mon",
                "chardev=hvc0,mode=readline",
            ]
            .map(String::from),
        ),
    }
    a.extend([
        "-device".into(),
        "virtconsole,chardev=hvc0".into(),
        "-drive".into(),
        format!("if=none,file={},format=raw,id=disk", escape(&boot.disk)),
        "-device".into(),
        "virtio-blk-device,drive=disk".into(),
    ]);
    a
}

/// Creates (or truncates) a sparse raw disk of `mib` MiB.
pub fn create_disk(path: &Path, mib: u32) -> Result<()> {
    let file = std::fs::File::create(path)
        .with_context(|| format!("creating the guest disk {}", path.display()))?;
    file.set_len(u64::from(mib) << 20)
        .with_context(|| format!("sizing the guest disk {}", path.display()))
}

/// The kernel command-line words that run `tests` with the `blk` test over
/// `blk_mib` MiB from `seed`.
pub fn test_cmdline(tests: &str, blk_mib: u32, seed: u64) -> Vec<String> {
    vec![
        format!("{TEST_KEY}={tests}"),
        format!("{BLK_MIB_KEY}={blk_mib}"),
        format!("{SEED_KEY}={seed:#x}"),
    ]
}

/// The checksum of the first `bytes` bytes of `disk`, as the agent computes
/// `blk_checksum`.
pub fn disk_checksum(disk: &Path, bytes: u64) -> Result<u64> {
    use std::io::Read;
    let file = std::fs::File::open(disk).with_context(|| format!("opening {}", disk.display()))?;
    let mut reader = file.take(bytes);
    let mut sum = Checksum::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("reading {}", disk.display()))?;
        if n == 0 {
            break;
        }
        sum.update(&buf[..n]);
        read += n as u64;
    }
    anyhow::ensure!(
        read == bytes,
        "{} holds {read} bytes, expected at least {bytes}",
        disk.display()
    );
    Ok(sum.finish())
}

/// What a `blk` run must have left on the disk.
#[derive(Debug, Clone, Copy)]
pub struct BlkExpectation {
    pub seed: u64,
    pub mib: u32,
}

/// Judges a guest run from its console log: a complete report in this
/// protocol, no failed check, every fact as expected and, with `blk`, the
/// disk file's checksum equal to the one the guest reported and to the
/// pattern it was asked to write.
pub fn evaluate(
    console: &str,
    facts: &[Expected],
    exp: &Expectations,
    blk: Option<(BlkExpectation, &Path)>,
) -> Verdict {
    let report = match Report::parse(console) {
        Ok(r) => r,
        Err(e) => return Verdict::Fail(format!("guest console: {e}")),
    };
    if report.facts.is_empty() {
        return Verdict::Fail("the guest agent printed no result line".into());
    }
    let protocol = PROTOCOL.to_string();
    if report.fact("protocol") != Some(protocol.as_str()) {
        return Verdict::Fail(format!(
            "the guest agent speaks protocol {:?}, this xtask reads {PROTOCOL}; rebuild the image",
            report.fact("protocol")
        ));
    }
    let Some(pass) = report.result else {
        return Verdict::Fail(
            "the guest's report ends before `result=` (the guest crashed or hung)".into(),
        );
    };
    let failed: Vec<String> = report
        .failed()
        .map(|c| format!("check {} failed: {}", c.name, c.detail))
        .collect();
    if !failed.is_empty() {
        return Verdict::Fail(failed.join("; "));
    }
    let mismatches: Vec<String> = facts
        .iter()
        .filter_map(|fact| {
            let want = fact.value(exp);
            match report.fact(fact.key()) {
                Some(v) if v == want => None,
                Some(v) => Some(format!(
                    "{}: expected {want:?}, the guest reported {v:?}",
                    fact.key()
                )),
                None => Some(format!(
                    "{}: expected {want:?}, the guest reported nothing",
                    fact.key()
                )),
            }
        })
        .collect();
    if !mismatches.is_empty() {
        return Verdict::Fail(mismatches.join("; "));
    }
    if !pass {
        return Verdict::Fail("the guest agent finished with result=fail".into());
    }
    if let Some((blk, disk)) = blk {
        let bytes = u64::from(blk.mib) << 20;
        let written = pattern::format_checksum(pattern::pattern_checksum(
            pattern::phase_seed(blk.seed, Phase::Buffered),
            bytes,
        ));
        let on_disk = match disk_checksum(disk, bytes) {
            Ok(sum) => pattern::format_checksum(sum),
            Err(e) => return Verdict::Fail(format!("{e:#}")),
        };
        let reported = report.fact("blk_checksum").unwrap_or("nothing");
        if reported != written || on_disk != written {
            return Verdict::Fail(format!(
                "blk_checksum: the pattern of seed {:#x} over {} MiB is {written}, the guest \
                 reported {reported}, the disk file {} holds {on_disk}",
                blk.seed,
                blk.mib,
                disk.display()
            ));
        }
    }
    Verdict::Pass
}

/// Boots the guest on plain QEMU with `tests` and judges it: the e2e
/// scenario `guest-plain-qemu`. `dir` receives `console.log` (hvc0),
/// `serial.log` (PL011), `qemu.log` and the disk, `disk.img`.
#[allow(clippy::too_many_arguments)]
pub fn run_plain_scenario(
    qemu: &Path,
    guest: &GuestSection,
    kernel: &Path,
    initramfs: &Path,
    tests: &str,
    facts: &[Expected],
    exp: &Expectations,
    timeout: std::time::Duration,
    dir: &Path,
) -> Result<Verdict> {
    let files = e2e::ScenarioFiles::new(dir)?;
    let serial = dir.join("serial.log");
    let disk = dir.join(crate::qemu::PER_BOOT_DISK);
    create_disk(&disk, guest.disk_mib)?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs());
    let boot = PlainBoot {
        kernel: kernel.to_path_buf(),
        initramfs: initramfs.to_path_buf(),
        disk: disk.clone(),
        console: GuestConsole::File(files.console.clone()),
        serial: serial.clone(),
        extra_cmdline: test_cmdline(tests, guest.disk_mib, seed),
    };
    let mut cmd = Command::new(qemu);
    cmd.args(plain_qemu_args(guest, &boot));
    let end = e2e::run_boot(&mut cmd, &files.qemu_log, timeout)?;
    let console = std::fs::read_to_string(&files.console).unwrap_or_default();
    let blk = tests.split(',').any(|t| t == "blk").then_some((
        BlkExpectation {
            seed,
            mib: guest.disk_mib,
        },
        disk.as_path(),
    ));
    let context = |why: String| {
        e2e::with_console(
            format!("{why} (seed {seed:#x}; PL011 log: {})", serial.display()),
            &files,
        )
    };
    Ok(match end {
        BootEnd::Interrupted => Verdict::Fail("interrupted (Ctrl-C)".into()),
        BootEnd::TimedOut => Verdict::Fail(context(format!(
            "the guest did not power off within {}s",
            timeout.as_secs()
        ))),
        BootEnd::Exited(status) if !status.success() => {
            Verdict::Fail(context(format!("QEMU exited with {status}")))
        }
        BootEnd::Exited(_) => match evaluate(&console, facts, exp, blk) {
            Verdict::Fail(why) => Verdict::Fail(context(why)),
            other => other,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloister_guest_agent::report::Line;

    fn guest() -> GuestSection {
        crate::stack::load(&crate::project_root(), crate::DEFAULT_STACK)
            .unwrap()
            .file
            .guest
            .expect("the default stack has a [guest]")
    }

    #[test]
    fn plain_qemu_boots_the_guest_with_virtio_console_and_blk_and_no_el2() {
        let boot = PlainBoot {
            kernel: "/o/guest-Image".into(),
            initramfs: "/o/guest-initramfs.cpio".into(),
            disk: "/r/a,b/disk.img".into(),
            console: GuestConsole::File("/r/console.log".into()),
            serial: "/r/serial.log".into(),
            extra_cmdline: test_cmdline("boot,blk", 64, 0x2a),
        };
        let g = guest();
        let a = plain_qemu_args(&g, &boot).join(" ");
        assert!(
            a.starts_with("-M virt,gic-version=3 -cpu max -smp 2 -m 256M "),
            "{a}"
        );
        assert!(!a.contains("virtualization=on"), "{a}");
        assert!(
            a.contains("-kernel /o/guest-Image -initrd /o/guest-initramfs.cpio -append"),
            "{a}"
        );
        let append = plain_qemu_args(&g, &boot)
            .iter()
            .skip_while(|x| *x != "-append")
            .nth(1)
            .cloned()
            .unwrap();
        assert_eq!(
            append,
            format!(
                "{} cloister.test=boot,blk cloister.blk_mib=64 cloister.seed=0x2a",
                g.cmdline
            )
        );
        for want in [
            "-chardev file,id=hvc0,path=/r/console.log -device virtconsole,chardev=hvc0",
            "-drive if=none,file=/r/a,,b/disk.img,format=raw,id=disk -device virtio-blk-device,drive=disk",
            "-serial file:/r/serial.log",
            "-no-reboot",
        ] {
            assert!(a.contains(want), "{want} missing from {a}");
        }
        let interactive = PlainBoot {
            console: GuestConsole::Interactive,
            ..boot
        };
        let a = plain_qemu_args(&g, &interactive).join(" ");
        assert!(a.contains("-chardev stdio,id=hvc0,mux=on"), "{a}");
    }

    fn exp() -> Expectations {
        Expectations {
            entry_el: 1,
            kernel_release: "6.12.117".into(),
            smp: 2,
        }
    }

    /// A console log as the agent prints it after a `boot,blk` run over
    /// `mib` MiB that reported `checksum`.
    fn console(mib: u32, checksum: &str) -> String {
        let mut lines = vec![
            "[    0.000000] Booting Linux on physical CPU 0x0000000000".to_owned(),
            Line::fact("protocol", PROTOCOL).to_line(),
            Line::fact("cpus_online", "0-1").to_line(),
            Line::fact("kernel_release", "6.12.117").to_line(),
            Line::fact("pkvm_guest", "inactive").to_line(),
            Line::fact("blk_mib", mib).to_line(),
            Line::fact("blk_checksum", checksum).to_line(),
        ];
        lines.push(
            Line::Check {
                number: 1,
                ok: true,
                name: "blk".into(),
                detail: String::new(),
            }
            .to_line(),
        );
        lines.push(Line::Result { pass: true }.to_line());
        lines.join("\r\n") + "\r\n"
    }

    const FACTS: &[Expected] = &[
        Expected::CpusOnline,
        Expected::KernelRelease,
        Expected::Is("pkvm_guest", "inactive"),
    ];

    #[test]
    fn a_run_passes_only_when_report_facts_and_disk_agree() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        let (seed, mib) = (0x1234u64, 1u32);
        let mut data = vec![0u8; 1 << 20];
        pattern::Pattern::new(pattern::phase_seed(seed, Phase::Buffered)).fill(&mut data);
        // The disk is larger than what the guest wrote.
        data.extend_from_slice(&[0u8; 4096]);
        std::fs::write(&disk, &data).unwrap();
        let sum = pattern::format_checksum(disk_checksum(&disk, 1 << 20).unwrap());
        let blk = Some((BlkExpectation { seed, mib }, disk.as_path()));

        let good = console(mib, &sum);
        assert_eq!(evaluate(&good, FACTS, &exp(), blk), Verdict::Pass);

        // The guest reports one thing, the disk holds another.
        let lying = console(mib, "0000000000000000");
        assert!(matches!(
            evaluate(&lying, FACTS, &exp(), blk),
            Verdict::Fail(w) if w.contains("the guest reported 0000000000000000")
        ));
        data[4096] ^= 1;
        std::fs::write(&disk, &data).unwrap();
        assert!(matches!(
            evaluate(&good, FACTS, &exp(), blk),
            Verdict::Fail(w) if w.contains("the disk file")
        ));

        // Wrong facts, a failed check, a cut-off report.
        let four = Expectations { smp: 4, ..exp() };
        assert!(matches!(
            evaluate(&good, FACTS, &four, None),
            Verdict::Fail(w) if w == "cpus_online: expected \"0-3\", the guest reported \"0-1\""
        ));
        let failed = good.replace("ok 1 - blk", "not ok 1 - blk # short read");
        assert!(matches!(
            evaluate(&failed, FACTS, &exp(), None),
            Verdict::Fail(w) if w.contains("check blk failed: short read")
        ));
        let cut = good.replace("cloister-guest: result=pass", "");
        assert!(matches!(
            evaluate(&cut, FACTS, &exp(), None),
            Verdict::Fail(w) if w.contains("ends before `result=`")
        ));
        assert!(matches!(
            evaluate("Booting Linux\n", FACTS, &exp(), None),
            Verdict::Fail(w) if w.contains("no result line")
        ));
    }
}
