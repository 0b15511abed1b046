//! Stack descriptions: one TOML file per stack in `stacks/`.
//!
//! A stack says which kernel fragments and patch series make the host kernel,
//! which QEMU machine boots it and what the e2e tests must observe. Parsing is
//! strict (`deny_unknown_fields`) and every error names the file, the key and
//! what was expected, because a typo in a stack silently changing a build is
//! the worst kind of bug in a reference image.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The contents of `stacks/<name>.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StackFile {
    /// One line for humans.
    pub description: String,
    pub kernel: KernelSection,
    #[serde(default)]
    pub hyp: HypSection,
    pub qemu: QemuSection,
    /// The partitioned disk image for U-Boot (boards, `qemu.boot = "disk"`).
    #[serde(default)]
    pub disk: DiskSection,
    /// A real board the disk image is for (absent on QEMU-only stacks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board: Option<BoardSection>,
    /// Defaults of the VMs the host image runs.
    #[serde(default)]
    pub vm: VmSection,
    /// The Linux guest the host image carries (absent: no guest is built).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<GuestSection>,
    pub expect: ExpectSection,
}

/// The unmodified Linux guest: a stock kernel from the pinned tarball (no
/// patches) with its own fragments, and its initramfs (the guest agent and
/// busybox). `build-image` puts both into the host image under
/// `/lib/cloister/guest/`, with these values in `guest.conf` for the VMM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GuestSection {
    /// Config fragments in `kernel-config/fragments/`, applied in order on top
    /// of `tinyconfig`.
    pub fragments: Vec<String>,
    /// The guest kernel's command line (the agent's `cloister.*` keys are
    /// added per run).
    pub cmdline: String,
    /// Guest RAM in MiB: 64..=4096.
    pub memory_mib: u32,
    /// Guest vCPUs: 1..=8.
    pub cpus: u32,
    /// Size of the guest's virtio-blk disk in MiB: 1..=4096.
    pub disk_mib: u32,
}

impl GuestSection {
    /// The `guest.conf` the host image carries next to the guest.
    pub fn guest_conf(&self) -> String {
        format!(
            "# Written by cargo xtask build-image from the stack's [guest] table.\n\
             cmdline={}\nmemory_mib={}\ncpus={}\ndisk_mib={}\n",
            self.cmdline, self.memory_mib, self.cpus, self.disk_mib
        )
    }
}

/// Defaults for the VMs `cloister-vmm` runs in this image (written into
/// the host initramfs as `/lib/cloister/vmm.conf`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VmSection {
    /// Where a protected VM's RAM comes from when `--memory` is not given.
    #[serde(default)]
    pub memory: VmMemory,
}

/// The protected-memory models (`cloister-vmm --memory`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum VmMemory {
    /// A guest_memfd the host cannot map while a page is private.
    #[default]
    GuestMemfd,
    /// pKVM's model: the VMM's anonymous memory, pinned and donated.
    Anon,
}

impl VmSection {
    /// The `vmm.conf` the host image carries.
    pub fn vmm_conf(&self) -> String {
        let memory = match self.memory {
            VmMemory::GuestMemfd => "guest-memfd",
            VmMemory::Anon => "anon",
        };
        format!(
            "# Written by cargo xtask build-image from the stack's [vm] table.\nmemory={memory}\n"
        )
    }
}

/// How the host kernel is made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KernelSection {
    /// Config fragments in `kernel-config/fragments/`, applied in order on top
    /// of `tinyconfig`.
    pub fragments: Vec<String>,
    /// Patch series directory in `kernel-config/patches/` (holds `series`).
    pub patches: String,
    /// Kernel command line for the host.
    pub cmdline: String,
}

/// The EL2 hypervisor.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HypSection {
    /// Whether the hyp sits in front of the host kernel.
    pub enabled: bool,
}

/// The QEMU machine the stack boots on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct QemuSection {
    /// `-M` value.
    pub machine: String,
    /// `-cpu` value.
    pub cpu: String,
    /// `-smp` value: 1..=8.
    pub smp: u32,
    /// `-m` value in MiB: 128..=16384.
    pub memory_mib: u32,
    /// Extra arguments appended to every QEMU command line.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// What QEMU boots: `-kernel` (the default) or the disk image through
    /// the firmware.
    #[serde(default)]
    pub boot: BootMethod,
    /// `-bios` value: absolute path of the firmware (only with `boot = "disk"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<PathBuf>,
}

/// How QEMU starts the stack.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BootMethod {
    /// `-kernel cloister.img` (or the host Image and `-initrd`), `-append`.
    #[default]
    Kernel,
    /// `-bios <firmware>` and the disk image on virtio-blk: the firmware
    /// (U-Boot) finds the boot partition and boots what it holds.
    Disk,
}

/// The partitioned disk image `build-image` writes for boards.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct DiskSection {
    /// Whether `build-image` writes `cloister-<stack>.img`.
    pub enabled: bool,
    /// `gpt` or `mbr`: whichever the board's boot ROM and U-Boot read.
    pub partition_table: PartitionTable,
    /// Size of the FAT boot partition in MiB: 8..=4096.
    pub boot_size_mib: u32,
    /// A board DTB (path relative to the repository root) copied into the
    /// boot partition and passed to the hyp instead of the firmware's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dtb: Option<String>,
    /// A DTB built from the pinned kernel tree with the stack's kernel
    /// (`make <dir>/<name>.dtb` from `arch/arm64/boot/dts/<dir>/<name>.dts`),
    /// copied into the boot partition like `dtb`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_dtb: Option<String>,
}

impl Default for DiskSection {
    fn default() -> Self {
        DiskSection {
            enabled: false,
            partition_table: PartitionTable::Gpt,
            boot_size_mib: 64,
            dtb: None,
            kernel_dtb: None,
        }
    }
}

/// A real board: what the disk image is flashed for and how a LAVA lab
/// names it. `run` and `test` boot such a stack's `[qemu]` stand-in, never
/// the board.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BoardSection {
    /// The board's name, for humans.
    pub name: String,
    /// LAVA's device type for the board (a template in lava-server's
    /// `device-types/`), used by `cargo xtask lava`.
    pub lava_device_type: String,
    /// CPUs the board's DTB lists: what the `cpus` scenario expects online
    /// on the board (`qemu.smp` is the stand-in's): 1..=8, the hyp's limit.
    pub cpus: u32,
}

/// The disk image's partition table.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionTable {
    /// GUID partition table (protective MBR, primary and backup headers).
    #[default]
    Gpt,
    /// DOS partition table: one primary partition marked active.
    Mbr,
}

/// What the e2e scenarios must observe on this stack.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExpectSection {
    /// Exception level the host kernel was entered at: 2 direct, 1 under the hyp.
    pub entry_el: u8,
}

/// A loaded and validated stack.
#[derive(Debug, Clone)]
pub struct Stack {
    pub name: String,
    pub path: PathBuf,
    pub file: StackFile,
    /// Absolute paths of the kernel fragments, in order.
    pub fragment_paths: Vec<PathBuf>,
    /// Absolute path of the patch series directory.
    pub patch_dir: PathBuf,
    /// Absolute path of `disk.dtb`, if the stack names one.
    pub dtb_path: Option<PathBuf>,
    /// Absolute paths of the guest kernel's fragments, in order (empty
    /// without `[guest]`).
    pub guest_fragment_paths: Vec<PathBuf>,
}

impl Stack {
    /// The `disk.kernel-dtb` source in a kernel tree:
    /// `arch/arm64/boot/dts/<dir>/<name>.dts`.
    pub fn kernel_dtb_source(&self, tree: &Path) -> Option<PathBuf> {
        let target = self.file.disk.kernel_dtb.as_deref()?;
        let dts = target.strip_suffix(".dtb").unwrap_or(target);
        Some(tree.join("arch/arm64/boot/dts").join(format!("{dts}.dts")))
    }
}

/// Names of the stacks in `root/stacks/`, sorted.
pub fn known_stacks(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("stacks"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            (path.extension()? == "toml").then(|| path.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    names.sort();
    names
}

/// Loads `root/stacks/<name>.toml` and checks every path it names.
pub fn load(root: &Path, name: &str) -> Result<Stack> {
    let path = root.join("stacks").join(format!("{name}.toml"));
    if !path.is_file() {
        let known = known_stacks(root);
        bail!(
            "unknown stack {name:?}: {} does not exist; known stacks: {}",
            path.display(),
            if known.is_empty() {
                "(none)".to_owned()
            } else {
                known.join(", ")
            }
        );
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let file = parse(&text).map_err(|e| anyhow::anyhow!("{}:{e}", path.display()))?;

    let display = path.display();
    if !(1..=8).contains(&file.qemu.smp) {
        bail!(
            "{display}: key `qemu.smp`: expected 1..=8 CPUs, found {}",
            file.qemu.smp
        );
    }
    if !(128..=16384).contains(&file.qemu.memory_mib) {
        bail!(
            "{display}: key `qemu.memory-mib`: expected 128..=16384 MiB, found {}",
            file.qemu.memory_mib
        );
    }
    if !(1..=2).contains(&file.expect.entry_el) {
        bail!(
            "{display}: key `expect.entry-el`: expected 1 or 2, found {}",
            file.expect.entry_el
        );
    }
    let dtb_path = check_boot_keys(root, &file).map_err(|e| anyhow::anyhow!("{display}: {e}"))?;
    let config_dir = root.join("kernel-config");
    let fragment_paths = resolve_fragments(&config_dir, "kernel", &file.kernel.fragments)
        .map_err(|e| anyhow::anyhow!("{display}: {e}"))?;
    let guest_fragment_paths = match &file.guest {
        Some(guest) => {
            check_guest(guest).map_err(|e| anyhow::anyhow!("{display}: {e}"))?;
            resolve_fragments(&config_dir, "guest", &guest.fragments)
                .map_err(|e| anyhow::anyhow!("{display}: {e}"))?
        }
        None => Vec::new(),
    };
    let patch_dir = config_dir.join("patches").join(&file.kernel.patches);
    if !patch_dir.join("series").is_file() {
        bail!(
            "{display}: key `kernel.patches`: expected a directory in kernel-config/patches/ \
             holding a `series` file, {} does not exist",
            patch_dir.join("series").display()
        );
    }
    Ok(Stack {
        name: name.to_owned(),
        path,
        file,
        fragment_paths,
        patch_dir,
        dtb_path,
        guest_fragment_paths,
    })
}

/// Resolves `<section>.fragments` in `kernel-config/fragments/`.
fn resolve_fragments(config_dir: &Path, section: &str, names: &[String]) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for (i, fragment) in names.iter().enumerate() {
        let p = config_dir.join("fragments").join(fragment);
        if !p.is_file() {
            bail!(
                "key `{section}.fragments[{i}]`: expected a file in kernel-config/fragments/, \
                 {} does not exist",
                p.display()
            );
        }
        paths.push(p);
    }
    Ok(paths)
}

/// Range checks of the `[guest]` table.
fn check_guest(guest: &GuestSection) -> Result<()> {
    if guest.fragments.is_empty() {
        bail!("key `guest.fragments`: expected at least one fragment");
    }
    for (key, value, range) in [
        ("guest.memory-mib", guest.memory_mib, 64..=4096),
        ("guest.cpus", guest.cpus, 1..=8),
        ("guest.disk-mib", guest.disk_mib, 1..=4096),
    ] {
        if !range.contains(&value) {
            bail!(
                "key `{key}`: expected {}..={}, found {value}",
                range.start(),
                range.end()
            );
        }
    }
    if guest.cmdline.contains('\n') {
        bail!("key `guest.cmdline`: expected one line");
    }
    Ok(())
}

/// Checks the `[disk]` section and `qemu.boot` / `qemu.firmware` against each
/// other; returns the resolved `disk.dtb`. The firmware file itself is looked
/// for at build time, once the Debian packages are installed.
fn check_boot_keys(root: &Path, file: &StackFile) -> Result<Option<PathBuf>> {
    let disk = &file.disk;
    let q = &file.qemu;
    if !(8..=4096).contains(&disk.boot_size_mib) {
        bail!(
            "key `disk.boot-size-mib`: expected 8..=4096 MiB, found {}",
            disk.boot_size_mib
        );
    }
    if disk.enabled && !file.hyp.enabled {
        bail!(
            "key `disk.enabled`: the disk image boots cloister.img, which needs \
             `hyp.enabled = true`"
        );
    }
    let dtb_path = match &disk.dtb {
        None => None,
        Some(_) if !disk.enabled => {
            bail!("key `disk.dtb`: only used with `disk.enabled = true`")
        }
        Some(dtb) => {
            let path = root.join(dtb);
            let name = Path::new(dtb).file_name().and_then(|n| n.to_str());
            if !name.is_some_and(|n| n.ends_with(".dtb")) || !path.is_file() {
                bail!(
                    "key `disk.dtb`: expected a .dtb file relative to the repository root, \
                     {} is not one",
                    path.display()
                );
            }
            Some(path)
        }
    };
    if let Some(target) = &disk.kernel_dtb {
        if !disk.enabled {
            bail!("key `disk.kernel-dtb`: only used with `disk.enabled = true`");
        }
        if disk.dtb.is_some() {
            bail!(
                "key `disk.kernel-dtb`: the boot partition holds one DTB; set either \
                 `disk.dtb` or `disk.kernel-dtb`, not both"
            );
        }
        check_kernel_dtb(target).map_err(|why| {
            anyhow::anyhow!(
                "key `disk.kernel-dtb`: expected a DTB target under arch/arm64/boot/dts/ \
                 like \"rockchip/rk3588-rock-5b.dtb\", found {target:?}: {why}"
            )
        })?;
    }
    if let Some(board) = &file.board {
        if !disk.enabled {
            bail!("key `board`: a board boots the disk image, which needs `disk.enabled = true`");
        }
        for (key, value) in [
            ("board.name", &board.name),
            ("board.lava-device-type", &board.lava_device_type),
        ] {
            if value.trim().is_empty() {
                bail!("key `{key}`: expected a non-empty string");
            }
        }
        if !(1..=8).contains(&board.cpus) {
            bail!(
                "key `board.cpus`: expected 1..=8 CPUs (the hyp's limit), found {}",
                board.cpus
            );
        }
        if !board
            .lava_device_type
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            bail!(
                "key `board.lava-device-type`: expected a LAVA device-type name (letters, \
                 digits, `-`, `_`, `.`), found {:?}",
                board.lava_device_type
            );
        }
    }
    match (q.boot, &q.firmware) {
        (BootMethod::Disk, _) if !disk.enabled => bail!(
            "key `qemu.boot`: \"disk\" boots the disk image, which needs `disk.enabled = true`"
        ),
        (BootMethod::Disk, None) => bail!(
            "key `qemu.firmware`: `qemu.boot = \"disk\"` needs the firmware that reads the \
             disk, e.g. \"/usr/lib/u-boot/qemu_arm64/u-boot.bin\" (Debian's u-boot-qemu)"
        ),
        (BootMethod::Kernel, Some(_)) => bail!(
            "key `qemu.firmware`: only used with `qemu.boot = \"disk\"` (QEMU boots the \
             kernel itself otherwise)"
        ),
        (_, Some(fw)) if !fw.is_absolute() => bail!(
            "key `qemu.firmware`: expected an absolute path, found {}",
            fw.display()
        ),
        _ => {}
    }
    Ok(dtb_path)
}

/// Why `target` is not a usable `disk.kernel-dtb` (a relative `.dtb` path
/// of plain names).
fn check_kernel_dtb(target: &str) -> Result<(), &'static str> {
    let Some(stem) = target.strip_suffix(".dtb") else {
        return Err("it does not end in .dtb");
    };
    if stem.is_empty() || target.starts_with('/') {
        return Err("it must be relative to arch/arm64/boot/dts/");
    }
    let plain = |part: &str| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.,+".contains(c))
    };
    if !stem.split('/').all(plain) {
        return Err("each path part must be a plain file or directory name");
    }
    Ok(())
}

/// Parses a stack file. The error is `line:col: key `a.b`: reason`, ready to
/// be prefixed with the file name.
pub fn parse(text: &str) -> Result<StackFile, String> {
    let de = toml::de::Deserializer::parse(text).map_err(|e| located(text, &e, None))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        located(text, e.inner(), Some(&key))
    })
}

/// Formats a toml error as `line:col: [key `k`: ]message`.
fn located(text: &str, err: &toml::de::Error, key: Option<&str>) -> String {
    let (line, col) = err.span().map_or((1, 1), |span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        (line, col)
    });
    let mut out = format!("{line}:{col}: ");
    if let Some(key) = key.filter(|k| !k.is_empty() && *k != ".") {
        let _ = write!(out, "key `{key}`: ");
    }
    out.push_str(err.message().trim());
    out
}

/// `cargo xtask inspect [STACK]`
#[derive(Debug, clap::Args)]
pub struct Inspect {
    /// Stack name (a file in stacks/ without .toml).
    #[arg(default_value = crate::DEFAULT_STACK)]
    stack: String,
}

impl Inspect {
    pub fn run(self) -> Result<()> {
        let root = crate::project_root();
        let stack = load(&root, &self.stack)?;
        println!("{}", render_resolved(&stack)?);
        Ok(())
    }
}

/// The stack as TOML with every default filled in and every path resolved.
pub fn render_resolved(stack: &Stack) -> Result<String> {
    let mut out = String::new();
    writeln!(out, "# stack {} ({})", stack.name, stack.path.display())?;
    for p in &stack.fragment_paths {
        writeln!(out, "# fragment: {}", p.display())?;
    }
    for p in &stack.guest_fragment_paths {
        writeln!(out, "# guest fragment: {}", p.display())?;
    }
    writeln!(
        out,
        "# patch series: {}",
        stack.patch_dir.join("series").display()
    )?;
    out.push_str(&toml::to_string_pretty(&stack.file)?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
description = "test"
[kernel]
fragments = ["a.config"]
patches = "host"
cmdline = "console=ttyAMA0"
[qemu]
machine = "virt"
cpu = "max"
smp = 2
memory-mib = 512
[expect]
entry-el = 2
"#;

    fn tree(stack_text: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("stacks")).unwrap();
        std::fs::create_dir_all(root.join("kernel-config/fragments")).unwrap();
        std::fs::create_dir_all(root.join("kernel-config/patches/host")).unwrap();
        std::fs::write(
            root.join("kernel-config/fragments/a.config"),
            "CONFIG_X=y\n",
        )
        .unwrap();
        std::fs::write(root.join("kernel-config/patches/host/series"), "").unwrap();
        std::fs::write(root.join("stacks/s.toml"), stack_text).unwrap();
        std::fs::write(root.join("stacks/other.toml"), GOOD).unwrap();
        dir
    }

    #[test]
    fn good_stack_loads_with_defaults_and_resolved_paths() {
        let dir = tree(GOOD);
        let stack = load(dir.path(), "s").unwrap();
        assert_eq!(stack.file.qemu.smp, 2);
        assert!(!stack.file.hyp.enabled);
        assert!(stack.fragment_paths[0].ends_with("kernel-config/fragments/a.config"));
        let resolved = render_resolved(&stack).unwrap();
        assert!(resolved.contains("memory-mib = 512"), "{resolved}");
    }

    #[test]
    fn the_repository_stacks_all_load() {
        let root = crate::project_root();
        let names = known_stacks(&root);
        assert!(
            names.contains(&crate::DEFAULT_STACK.to_owned()),
            "{names:?}"
        );
        for name in names {
            load(&root, &name).unwrap();
        }
    }

    #[test]
    fn unknown_stack_lists_the_known_ones() {
        let dir = tree(GOOD);
        let err = load(dir.path(), "nope").unwrap_err().to_string();
        assert!(err.contains("unknown stack \"nope\""), "{err}");
        assert!(err.contains("known stacks: other, s"), "{err}");
    }

    #[test]
    fn malformed_toml_names_file_and_line() {
        let dir = tree("description = \"x\"\n[kernel\nfragments = []\n");
        let err = load(dir.path(), "s").unwrap_err().to_string();
        assert!(err.contains("stacks/s.toml:2:"), "{err}");
    }

    #[test]
    fn vm_memory_defaults_to_guest_memfd_and_names_bad_values() {
        let dir = tree(GOOD);
        let stack = load(dir.path(), "s").unwrap();
        assert_eq!(stack.file.vm.memory, VmMemory::GuestMemfd);
        assert!(stack.file.vm.vmm_conf().contains("\nmemory=guest-memfd\n"));
        let anon = GOOD.replace("[expect]", "[vm]\nmemory = \"anon\"\n[expect]");
        let dir = tree(&anon);
        let stack = load(dir.path(), "s").unwrap();
        assert_eq!(stack.file.vm.memory, VmMemory::Anon);
        assert!(stack.file.vm.vmm_conf().ends_with("memory=anon\n"));
        let bad = GOOD.replace("[expect]", "[vm]\nmemory = \"ram\"\n[expect]");
        let dir = tree(&bad);
        let err = load(dir.path(), "s").unwrap_err().to_string();
        assert!(err.contains("vm.memory"), "{err}");
        assert!(err.contains("guest-memfd") && err.contains("anon"), "{err}");
    }

    #[test]
    fn unknown_key_names_key_line_and_expected_keys() {
        let dir = tree(&GOOD.replace("smp = 2", "smp = 2\nsmpp = 3"));
        let err = load(dir.path(), "s").unwrap_err().to_string();
        assert!(err.contains("stacks/s.toml:11:"), "{err}");
        assert!(err.contains("unknown field `smpp`"), "{err}");
        assert!(err.contains("memory-mib"), "expected keys listed: {err}");
    }

    #[test]
    fn wrong_type_names_the_key_and_expected_type() {
        let dir = tree(&GOOD.replace("smp = 2", "smp = \"two\""));
        let err = load(dir.path(), "s").unwrap_err().to_string();
        assert!(err.contains("key `qemu.smp`"), "{err}");
        assert!(err.contains("expected u32"), "{err}");
        assert!(err.contains(":10:"), "{err}");
    }

    #[test]
    fn missing_fragment_and_patch_dir_are_named() {
        let dir = tree(&GOOD.replace("a.config", "missing.config"));
        let err = load(dir.path(), "s").unwrap_err().to_string();
        assert!(err.contains("key `kernel.fragments[0]`"), "{err}");
        assert!(err.contains("missing.config does not exist"), "{err}");

        let dir = tree(&GOOD.replace("patches = \"host\"", "patches = \"guest\""));
        let err = load(dir.path(), "s").unwrap_err().to_string();
        assert!(err.contains("key `kernel.patches`"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        let dir = tree(&GOOD.replace("smp = 2", "smp = 0"));
        let err = load(dir.path(), "s").unwrap_err().to_string();
        assert!(err.contains("`qemu.smp`: expected 1..=8"), "{err}");
        let dir = tree(&GOOD.replace("entry-el = 2", "entry-el = 3"));
        let err = load(dir.path(), "s").unwrap_err().to_string();
        assert!(err.contains("`expect.entry-el`"), "{err}");
    }

    /// GOOD turned into a U-Boot disk-boot stack, with `extra` in `[disk]`.
    fn disk_stack(extra: &str) -> String {
        GOOD.replace(
            "memory-mib = 512\n",
            "memory-mib = 512\nboot = \"disk\"\nfirmware = \"/usr/lib/u-boot/qemu_arm64/u-boot.bin\"\n",
        )
        .replace(
            "[expect]",
            &format!("[hyp]\nenabled = true\n[disk]\nenabled = true\n{extra}\n[expect]"),
        )
    }

    #[test]
    fn disk_section_defaults_and_a_disk_boot_stack_loads() {
        let stack = load(tree(GOOD).path(), "s").unwrap();
        assert_eq!(stack.file.disk, DiskSection::default());
        assert!(!stack.file.disk.enabled);
        assert_eq!(stack.file.disk.partition_table, PartitionTable::Gpt);
        assert_eq!(stack.file.disk.boot_size_mib, 64);
        assert_eq!(stack.file.qemu.boot, BootMethod::Kernel);
        assert_eq!(stack.file.qemu.firmware, None);

        let dir = tree(&disk_stack("partition-table = \"mbr\"\nboot-size-mib = 32"));
        let stack = load(dir.path(), "s").unwrap();
        assert_eq!(stack.file.qemu.boot, BootMethod::Disk);
        assert_eq!(
            stack.file.qemu.firmware.as_deref(),
            Some(Path::new("/usr/lib/u-boot/qemu_arm64/u-boot.bin"))
        );
        assert_eq!(stack.file.disk.partition_table, PartitionTable::Mbr);
        assert_eq!(stack.file.disk.boot_size_mib, 32);
        assert_eq!(stack.dtb_path, None);
        let resolved = render_resolved(&stack).unwrap();
        assert!(resolved.contains("boot = \"disk\""), "{resolved}");
        assert!(resolved.contains("partition-table = \"mbr\""), "{resolved}");
        // The resolved stack parses back to the same description.
        let body: String = resolved
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(parse(&body).unwrap(), stack.file);
    }

    #[test]
    fn bad_disk_values_name_the_key_and_what_was_expected() {
        let dir = tree(&disk_stack("partition-table = \"apm\""));
        let err = load(dir.path(), "s").unwrap_err().to_string();
        assert!(err.contains("key `disk.partition-table`"), "{err}");
        assert!(
            err.contains("unknown variant `apm`, expected `gpt` or `mbr`"),
            "{err}"
        );

        let dir = tree(&disk_stack("boot-size-mib = 4"));
        let err = load(dir.path(), "s").unwrap_err().to_string();
        assert!(
            err.contains("stacks/s.toml: key `disk.boot-size-mib`: expected 8..=4096 MiB, found 4"),
            "{err}"
        );

        let dir = tree(&disk_stack("boot-size-mib = \"big\""));
        let err = load(dir.path(), "s").unwrap_err().to_string();
        assert!(
            err.contains("key `disk.boot-size-mib`") && err.contains("expected u32"),
            "{err}"
        );

        let dir = tree(&disk_stack("size = 3"));
        let err = load(dir.path(), "s").unwrap_err().to_string();
        assert!(
            err.contains("unknown field `size`") && err.contains("boot-size-mib"),
            "{err}"
        );

        let dir = tree(&GOOD.replace("memory-mib = 512\n", "memory-mib = 512\nboot = \"pxe\"\n"));
        let err = load(dir.path(), "s").unwrap_err().to_string();
        assert!(err.contains("key `qemu.boot`"), "{err}");
        assert!(err.contains("expected `kernel` or `disk`"), "{err}");
    }

    #[test]
    fn inconsistent_boot_keys_are_refused() {
        let with = |from: &str, to: &str| {
            let dir = tree(&disk_stack("").replace(from, to));
            load(dir.path(), "s").unwrap_err().to_string()
        };
        let err = with("[disk]\nenabled = true", "[disk]\nenabled = false");
        assert!(
            err.contains(
                "key `qemu.boot`: \"disk\" boots the disk image, which needs `disk.enabled = true`"
            ),
            "{err}"
        );
        let err = with("firmware = \"/usr/lib/u-boot/qemu_arm64/u-boot.bin\"\n", "");
        assert!(
            err.contains("key `qemu.firmware`: `qemu.boot = \"disk\"` needs the firmware"),
            "{err}"
        );
        let err = with("boot = \"disk\"", "boot = \"kernel\"");
        assert!(
            err.contains("key `qemu.firmware`: only used with `qemu.boot = \"disk\"`"),
            "{err}"
        );
        let err = with("/usr/lib/u-boot/qemu_arm64/u-boot.bin", "u-boot.bin");
        assert!(
            err.contains("key `qemu.firmware`: expected an absolute path, found u-boot.bin"),
            "{err}"
        );
        let err = with("[hyp]\nenabled = true", "[hyp]\nenabled = false");
        assert!(
            err.contains("key `disk.enabled`: the disk image boots cloister.img"),
            "{err}"
        );
    }

    #[test]
    fn disk_dtb_must_be_a_dtb_file_in_the_repository() {
        let dir = tree(&disk_stack("dtb = \"boards/x.dtb\""));
        let err = load(dir.path(), "s").unwrap_err().to_string();
        assert!(
            err.contains("key `disk.dtb`: expected a .dtb file"),
            "{err}"
        );
        assert!(err.contains("boards/x.dtb is not one"), "{err}");

        std::fs::create_dir_all(dir.path().join("boards")).unwrap();
        std::fs::write(dir.path().join("boards/x.dtb"), [0xd0, 0x0d, 0xfe, 0xed]).unwrap();
        let stack = load(dir.path(), "s").unwrap();
        assert_eq!(stack.dtb_path, Some(dir.path().join("boards/x.dtb")));

        std::fs::write(dir.path().join("boards/x.dts"), "/dts-v1/;").unwrap();
        std::fs::write(
            dir.path().join("stacks/s.toml"),
            disk_stack("dtb = \"boards/x.dts\""),
        )
        .unwrap();
        let err = load(dir.path(), "s").unwrap_err().to_string();
        assert!(
            err.contains("key `disk.dtb`: expected a .dtb file"),
            "{err}"
        );

        let text = disk_stack("dtb = \"boards/x.dtb\"")
            .replace("[disk]\nenabled = true", "[disk]\nenabled = false");
        let text = text.replace(
            "boot = \"disk\"\nfirmware = \"/usr/lib/u-boot/qemu_arm64/u-boot.bin\"\n",
            "",
        );
        std::fs::write(dir.path().join("stacks/s.toml"), text).unwrap();
        let err = load(dir.path(), "s").unwrap_err().to_string();
        assert!(
            err.contains("key `disk.dtb`: only used with `disk.enabled = true`"),
            "{err}"
        );
    }

    #[test]
    fn kernel_dtb_is_a_plain_relative_dtb_path_used_alone_with_a_disk() {
        let load_with = |extra: &str| {
            let dir = tree(&disk_stack(extra));
            load(dir.path(), "s").map_err(|e| e.to_string())
        };
        let stack = load_with("kernel-dtb = \"rockchip/rk3588-rock-5b.dtb\"").unwrap();
        assert_eq!(
            stack.kernel_dtb_source(Path::new("/t")),
            Some(PathBuf::from(
                "/t/arch/arm64/boot/dts/rockchip/rk3588-rock-5b.dts"
            ))
        );
        assert_eq!(stack.dtb_path, None);
        for (bad, why) in [
            ("rockchip/rk3588-rock-5b.dts", "it does not end in .dtb"),
            (
                "/rockchip/x.dtb",
                "it must be relative to arch/arm64/boot/dts/",
            ),
            (".dtb", "it must be relative to arch/arm64/boot/dts/"),
            ("../../../x.dtb", "each path part must be a plain"),
            ("rockchip//x.dtb", "each path part must be a plain"),
            ("rock chip/x.dtb", "each path part must be a plain"),
        ] {
            let err = load_with(&format!("kernel-dtb = {bad:?}")).unwrap_err();
            assert!(
                err.contains(&format!(
                    "key `disk.kernel-dtb`: expected a DTB target under arch/arm64/boot/dts/ \
                     like \"rockchip/rk3588-rock-5b.dtb\", found {bad:?}: {why}"
                )),
                "{bad}: {err}"
            );
        }

        let dir = tree(&disk_stack(
            "kernel-dtb = \"a/b.dtb\"\ndtb = \"boards/x.dtb\"",
        ));
        std::fs::create_dir_all(dir.path().join("boards")).unwrap();
        std::fs::write(dir.path().join("boards/x.dtb"), [0xd0, 0x0d, 0xfe, 0xed]).unwrap();
        let err = load(dir.path(), "s").unwrap_err().to_string();
        assert!(
            err.contains("key `disk.kernel-dtb`: the boot partition holds one DTB"),
            "{err}"
        );

        let dir = tree(&GOOD.replace("[expect]", "[disk]\nkernel-dtb = \"a/b.dtb\"\n[expect]"));
        let err = load(dir.path(), "s").unwrap_err().to_string();
        assert!(
            err.contains("key `disk.kernel-dtb`: only used with `disk.enabled = true`"),
            "{err}"
        );
    }

    #[test]
    fn a_board_needs_a_disk_a_name_a_lava_device_type_and_its_cpus() {
        let board = |body: &str| {
            let text = disk_stack("").replace("[expect]", &format!("[board]\n{body}\n[expect]"));
            let dir = tree(&text);
            load(dir.path(), "s").map_err(|e| e.to_string())
        };
        let good = "name = \"Radxa ROCK 5B\"\nlava-device-type = \"rk3588-rock-5b\"\ncpus = 8";
        let stack = board(good).unwrap();
        assert_eq!(
            stack.file.board,
            Some(BoardSection {
                name: "Radxa ROCK 5B".into(),
                lava_device_type: "rk3588-rock-5b".into(),
                cpus: 8,
            })
        );
        let resolved = render_resolved(&stack).unwrap();
        assert!(
            resolved.contains("[board]\nname = \"Radxa ROCK 5B\""),
            "{resolved}"
        );

        for (body, want) in [
            (
                good.replace("cpus = 8", "cpus = 9"),
                "key `board.cpus`: expected 1..=8 CPUs (the hyp's limit), found 9",
            ),
            (
                good.replace("Radxa ROCK 5B", " "),
                "key `board.name`: expected a non-empty string",
            ),
            (
                good.replace("rk3588-rock-5b", "rock 5b"),
                "key `board.lava-device-type`: expected a LAVA device-type name",
            ),
            (good.replace("\ncpus = 8", ""), "missing field `cpus`"),
            (format!("{good}\nuart = 2"), "unknown field `uart`"),
        ] {
            let err = board(&body).unwrap_err();
            assert!(err.contains(want), "{body}: {err}");
        }

        let text = GOOD.replace("[expect]", &format!("[board]\n{good}\n[expect]"));
        let dir = tree(&text);
        let err = load(dir.path(), "s").unwrap_err().to_string();
        assert!(
            err.contains(
                "key `board`: a board boots the disk image, which needs `disk.enabled = true`"
            ),
            "{err}"
        );
    }

    /// The Radxa ROCK 5B profile: its fragments exist and ask for the
    /// board's console and clock drivers, its DTB is the pinned tree's
    /// rk3588-rock-5b.dts, and its board keys are what LAVA and the e2e
    /// expectations need.
    #[test]
    fn the_rock5b_board_stack_parses_and_its_dtb_and_fragments_resolve() {
        let root = crate::project_root();
        let stack = load(&root, "rock5b").unwrap();
        let board = stack.file.board.as_ref().expect("rock5b has [board]");
        assert_eq!(board.lava_device_type, "rk3588-rock-5b");
        assert_eq!(board.cpus, 8);
        assert!(stack.file.hyp.enabled && stack.file.disk.enabled);
        assert_eq!(stack.file.disk.partition_table, PartitionTable::Gpt);
        assert_eq!(
            stack.file.disk.kernel_dtb.as_deref(),
            Some("rockchip/rk3588-rock-5b.dtb")
        );
        assert_eq!(
            stack.kernel_dtb_source(Path::new("/linux")),
            Some(PathBuf::from(
                "/linux/arch/arm64/boot/dts/rockchip/rk3588-rock-5b.dts"
            ))
        );
        let names: Vec<&str> = stack
            .fragment_paths
            .iter()
            .filter_map(|p| p.file_name()?.to_str())
            .collect();
        assert_eq!(
            names,
            ["host-base.config", "host-cloister.config", "rock5b.config"]
        );
        let mut symbols = Vec::new();
        for path in &stack.fragment_paths {
            assert!(path.is_file(), "{}", path.display());
            for option in crate::kernel::parse_fragment(path).unwrap() {
                if option.value.as_deref() == Some("y") {
                    symbols.push(option.symbol);
                }
            }
        }
        for want in [
            "ARCH_ROCKCHIP",
            "SERIAL_8250",
            "SERIAL_8250_CONSOLE",
            "SERIAL_8250_DW",
            "CLK_RK3588",
            "PINCTRL_ROCKCHIP",
            "ARM_GIC_V3",
            "ARM_PSCI_FW",
        ] {
            assert!(symbols.iter().any(|s| s == want), "CONFIG_{want} missing");
        }
        // The console comes from the DTB's stdout-path (ttyS2 on the board,
        // the PL011 on the QEMU stand-in), so no console= may pin one.
        assert!(
            !stack.file.kernel.cmdline.contains("console="),
            "{}",
            stack.file.kernel.cmdline
        );
    }

    #[test]
    fn guest_table_is_optional_checked_and_resolved() {
        let dir = tree(GOOD);
        assert_eq!(load(dir.path(), "s").unwrap().file.guest, None);
        let guest = "[guest]\nfragments = [\"a.config\"]\ncmdline = \"console=hvc0\"\n\
                     memory-mib = 256\ncpus = 2\ndisk-mib = 64\n";
        let text = GOOD.replace("[expect]", &format!("{guest}[expect]"));
        let dir = tree(&text);
        let stack = load(dir.path(), "s").unwrap();
        let g = stack.file.guest.as_ref().unwrap();
        assert_eq!((g.memory_mib, g.cpus, g.disk_mib), (256, 2, 64));
        assert!(stack.guest_fragment_paths[0].ends_with("kernel-config/fragments/a.config"));
        assert!(g
            .guest_conf()
            .contains("\ncmdline=console=hvc0\nmemory_mib=256\ncpus=2\ndisk_mib=64\n"));
        assert!(render_resolved(&stack).unwrap().contains("[guest]"));
        for (bad, want) in [
            (
                "cpus = 2",
                "cpus = 9",
                "key `guest.cpus`: expected 1..=8, found 9",
            ),
            (
                "memory-mib = 256",
                "memory-mib = 16",
                "key `guest.memory-mib`: expected 64..=4096",
            ),
            (
                "disk-mib = 64",
                "disk-mib = 0",
                "key `guest.disk-mib`: expected 1..=4096",
            ),
            (
                "a.config\"]\ncmdline",
                "nope.config\"]\ncmdline",
                "key `guest.fragments[0]`",
            ),
            ("cpus = 2", "cpus = 2\nram = 1", "unknown field `ram`"),
        ]
        .map(|(from, to, want)| (text.replace(from, to), want))
        {
            let dir = tree(&bad);
            let err = load(dir.path(), "s").unwrap_err().to_string();
            assert!(err.contains(want), "{bad}: {err}");
        }
    }

    #[test]
    fn missing_section_is_named() {
        let dir = tree(&GOOD.replace("[expect]\nentry-el = 2\n", ""));
        let err = load(dir.path(), "s").unwrap_err().to_string();
        assert!(err.contains("missing field `expect`"), "{err}");
    }
}
