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
    pub expect: ExpectSection,
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
    let config_dir = root.join("kernel-config");
    let mut fragment_paths = Vec::new();
    for (i, fragment) in file.kernel.fragments.iter().enumerate() {
        let p = config_dir.join("fragments").join(fragment);
        if !p.is_file() {
            bail!(
                "{display}: key `kernel.fragments[{i}]`: expected a file in kernel-config/fragments/, \
                 {} does not exist",
                p.display()
            );
        }
        fragment_paths.push(p);
    }
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
    })
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

    #[test]
    fn missing_section_is_named() {
        let dir = tree(&GOOD.replace("[expect]\nentry-el = 2\n", ""));
        let err = load(dir.path(), "s").unwrap_err().to_string();
        assert!(err.contains("missing field `expect`"), "{err}");
    }
}
