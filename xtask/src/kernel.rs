//! Linux: unpack the pinned source, apply a patch series, configure from
//! tinyconfig plus fragments, verify the result, cross-build an arm64 Image.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cache::{short, KeyBuilder, Stamp};
use crate::stage::{Outcome, Stage};

pub const ARCH: &str = "arm64";
pub const CROSS_COMPILE: &str = "aarch64-linux-gnu-";

/// An unpacked (and patched) Linux tree.
#[derive(Debug, Clone)]
pub struct LinuxTree {
    pub dir: PathBuf,
    pub key: String,
}

/// The patches of a series directory, in `series` order.
pub fn read_series(patch_dir: &Path) -> Result<Vec<PathBuf>> {
    let series = patch_dir.join("series");
    let text = std::fs::read_to_string(&series)
        .with_context(|| format!("reading {}", series.display()))?;
    let mut patches = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let name = line.trim();
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        let path = patch_dir.join(name);
        if !path.is_file() {
            bail!(
                "{}:{}: patch {name} does not exist",
                series.display(),
                i + 1
            );
        }
        patches.push(path);
    }
    Ok(patches)
}

/// How many unpacked Linux trees (1.7 GB each) the cache keeps.
const KEEP_TREES: usize = 2;

/// How many kernel build directories the cache keeps: one per distinct
/// fragment list in use (QEMU stacks, board stacks); the guest kernel
/// keeps its own, in `cache/guest-kernel/` (see `guest.rs`).
pub const KEEP_BUILDS: usize = 4;

/// Unpacks `tarball` and applies `patches` into a cache directory keyed by
/// their contents, so trees are reused across stacks and builds.
pub fn prepare_source(
    stage: &mut Stage,
    cache_dir: &Path,
    tarball: &Path,
    tarball_sha256: &str,
    patches: &[PathBuf],
) -> Result<(LinuxTree, Outcome)> {
    let mut key = KeyBuilder::new("linux-source");
    key.add_str("tarball", tarball_sha256);
    for patch in patches {
        key.add_file("patch", patch)?;
    }
    let key = key.finish();
    let root = cache_dir.join("linux").join(short(&key));
    let stamp = Stamp::new(&root, "tree");
    let tree = LinuxTree {
        dir: root.join("src"),
        key: key.clone(),
    };
    // Host and guest kernels use different trees; older ones go. Marked
    // once the tree is there: an unpack starts by emptying `root`.
    let keep = |stage: &mut Stage| -> Result<()> {
        for gone in crate::cache::keep_recent(&cache_dir.join("linux"), &root, KEEP_TREES)? {
            stage.log(&format!("removed stale Linux tree {}", gone.display()));
        }
        Ok(())
    };
    if stamp.is_fresh(&key, &[&tree.dir.join("Makefile")]) {
        keep(stage)?;
        return Ok((
            tree,
            Outcome::Cached(format!("tree {} ({} patches)", short(&key), patches.len())),
        ));
    }
    let _ = std::fs::remove_dir_all(&root);
    let unpack = root.join("unpack");
    std::fs::create_dir_all(&unpack)?;
    stage.status(&format!("unpacking {}", tarball.display()));
    stage.run(
        Command::new("tar")
            .arg("-xJf")
            .arg(tarball)
            .arg("-C")
            .arg(&unpack),
    )?;
    // Debian's tarball holds one top-level directory (linux-source-6.12).
    let top = std::fs::read_dir(&unpack)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("Makefile").is_file())
        .with_context(|| format!("{} holds no Linux tree", tarball.display()))?;
    for patch in patches {
        stage.status(&format!("applying {}", patch.display()));
        apply_patch(stage, &top, patch)?;
    }
    std::fs::rename(&top, &tree.dir)?;
    let _ = std::fs::remove_dir_all(&unpack);
    stamp.record(&key)?;
    keep(stage)?;
    Ok((
        tree,
        Outcome::Built(format!("unpacked, {} patches applied", patches.len())),
    ))
}

/// Applies one patch with `patch -p1`; on failure names the patch, the file
/// and every failed hunk.
pub fn apply_patch(stage: &Stage, tree: &Path, patch: &Path) -> Result<()> {
    let out = Command::new("patch")
        .args([
            "-p1",
            "--forward",
            "--batch",
            "--no-backup-if-mismatch",
            "-r",
            "-",
            "-i",
        ])
        .arg(patch)
        .current_dir(tree)
        .output()
        .context("running patch")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    stage.log(&text);
    if out.status.success() {
        return Ok(());
    }
    let name = patch.file_name().map_or_else(
        || patch.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    bail!(
        "patch {name} does not apply:\n{}",
        summarize_patch_failure(&text)
    )
}

/// Turns `patch` output into "file: Hunk #n FAILED at l" lines.
pub fn summarize_patch_failure(output: &str) -> String {
    let mut file = String::new();
    let mut lines = Vec::new();
    for line in output.lines() {
        if let Some(f) = line.strip_prefix("patching file ") {
            file = f.trim().to_owned();
        } else if line.starts_with("Hunk #") && line.contains("FAILED") {
            lines.push(format!("  {file}: {}", line.trim()));
        } else if line.contains("can't find file")
            || line.contains("Reversed (or previously applied)")
            || line.contains("malformed patch")
            || line.contains("Only garbage")
        {
            lines.push(format!("  {}", line.trim()));
        }
    }
    if lines.is_empty() {
        output
            .lines()
            .take(10)
            .map(|l| format!("  {l}\n"))
            .collect()
    } else {
        lines.join("\n")
    }
}

/// One line of a config fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigOption {
    /// Symbol without the CONFIG_ prefix.
    pub symbol: String,
    /// `None` for `=n` / `# CONFIG_X is not set`.
    pub value: Option<String>,
    /// Where it was asked for, `file:line`.
    pub origin: String,
}

impl ConfigOption {
    fn wanted(&self) -> String {
        match &self.value {
            Some(v) => format!("CONFIG_{}={v}", self.symbol),
            None => format!("CONFIG_{} unset", self.symbol),
        }
    }
}

/// Parses a fragment: `CONFIG_X=v`, `CONFIG_X=n`, `# CONFIG_X is not set`,
/// blank lines and `#` comments; anything else is an error naming file:line.
pub fn parse_fragment(path: &Path) -> Result<Vec<ConfigOption>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut options = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let origin = format!("{name}:{}", i + 1);
        let line = raw.trim();
        if let Some(rest) = line
            .strip_prefix("# CONFIG_")
            .and_then(|r| r.strip_suffix(" is not set"))
        {
            options.push(ConfigOption {
                symbol: rest.to_owned(),
                value: None,
                origin,
            });
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed = line.strip_prefix("CONFIG_").and_then(|r| r.split_once('='));
        let Some((symbol, value)) = parsed.filter(|(s, v)| {
            !s.is_empty()
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !v.is_empty()
        }) else {
            bail!(
                "{}:{}: expected `CONFIG_NAME=value` or `# CONFIG_NAME is not set`, found {raw:?}",
                path.display(),
                i + 1
            );
        };
        let value = (value != "n").then(|| value.to_owned());
        options.push(ConfigOption {
            symbol: symbol.to_owned(),
            value,
            origin,
        });
    }
    Ok(options)
}

/// Every symbol declared by a `config` or `menuconfig` line in the tree's
/// Kconfig files.
pub fn kconfig_symbols(tree: &Path) -> Result<BTreeSet<String>> {
    let mut symbols = BTreeSet::new();
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .flatten()
        {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if entry.file_name() != ".git" {
                    stack.push(path);
                }
            } else if entry.file_name().to_string_lossy().starts_with("Kconfig") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                for line in text.lines() {
                    let mut words = line.split_whitespace();
                    if let (Some("config" | "menuconfig"), Some(sym)) = (words.next(), words.next())
                    {
                        symbols.insert(sym.to_owned());
                    }
                }
            }
        }
    }
    Ok(symbols)
}

/// Fragment options whose symbol no Kconfig declares.
pub fn unknown_symbols<'a>(
    options: &'a [ConfigOption],
    known: &BTreeSet<String>,
) -> Vec<&'a ConfigOption> {
    options
        .iter()
        .filter(|o| !known.contains(&o.symbol))
        .collect()
}

/// Fragment options that the final .config does not hold with the value
/// asked for, with what it holds instead. Later fragments win over earlier
/// ones, as they do when appended.
pub fn dropped_options(options: &[ConfigOption], dotconfig: &str) -> Vec<(ConfigOption, String)> {
    let mut actual: HashMap<&str, Option<&str>> = HashMap::new();
    for line in dotconfig.lines() {
        if let Some(rest) = line
            .strip_prefix("# CONFIG_")
            .and_then(|r| r.strip_suffix(" is not set"))
        {
            actual.insert(rest, None);
        } else if let Some((sym, val)) =
            line.strip_prefix("CONFIG_").and_then(|r| r.split_once('='))
        {
            actual.insert(sym, Some(val));
        }
    }
    let mut last: HashMap<&str, &ConfigOption> = HashMap::new();
    for option in options {
        last.insert(&option.symbol, option);
    }
    let mut dropped: Vec<(ConfigOption, String)> = options
        .iter()
        .filter(|o| {
            last.get(o.symbol.as_str())
                .is_some_and(|l| std::ptr::eq(*l, *o))
        })
        .filter_map(|o| {
            let got = actual.get(o.symbol.as_str()).copied().flatten();
            if got == o.value.as_deref() {
                None
            } else {
                Some((
                    o.clone(),
                    got.map_or_else(|| "not set".to_owned(), |v| format!("={v}")),
                ))
            }
        })
        .collect();
    dropped.sort_by(|a, b| a.0.origin.cmp(&b.0.origin));
    dropped
}

/// What a kernel build produced.
#[derive(Debug, Clone)]
pub struct KernelBuild {
    pub image: PathBuf,
    pub vmlinux: PathBuf,
    pub dotconfig: PathBuf,
    /// `make kernelrelease`, e.g. "6.12.117": what uname -r must say.
    pub release: String,
}

/// Configures and builds an arm64 `Image` out of tree in `build_dir`.
pub fn build(
    stage: &mut Stage,
    tree: &LinuxTree,
    build_dir: &Path,
    fragments: &[PathBuf],
    stamps_dir: &Path,
) -> Result<(KernelBuild, Outcome)> {
    let gcc_version = Command::new(format!("{CROSS_COMPILE}gcc"))
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .with_context(|| {
            format!("{CROSS_COMPILE}gcc not found (apt-get install -y gcc-aarch64-linux-gnu)")
        })?;
    let mut key = KeyBuilder::new("linux-build");
    key.add_str("tree", &tree.key)
        .add_str("gcc", &gcc_version)
        .add_str("target", "Image");
    for f in fragments {
        key.add_file("fragment", f)?;
    }
    let key = key.finish();
    let out = KernelBuild {
        image: build_dir.join("arch/arm64/boot/Image"),
        vmlinux: build_dir.join("vmlinux"),
        dotconfig: build_dir.join(".config"),
        release: String::new(),
    };
    let stamp = Stamp::new(stamps_dir, "kernel");
    let release_file = build_dir.join("cloister-kernelrelease");
    if stamp.is_fresh(&key, &[&out.image, &release_file]) {
        let release = std::fs::read_to_string(&release_file)?.trim().to_owned();
        let why = format!("Linux {release}, key {}", short(&key));
        return Ok((KernelBuild { release, ..out }, Outcome::Cached(why)));
    }
    stamp.clear();

    let mut options = Vec::new();
    for f in fragments {
        options.extend(parse_fragment(f)?);
    }
    stage.status("checking fragment symbols against Kconfig");
    let known = kconfig_symbols(&tree.dir)?;
    let unknown = unknown_symbols(&options, &known);
    if !unknown.is_empty() {
        let mut msg = String::from(
            "kernel config fragments name options that do not exist in this kernel's Kconfig:\n",
        );
        for o in unknown {
            let _ = writeln!(msg, "  {}: CONFIG_{}", o.origin, o.symbol);
        }
        bail!(msg.trim_end().to_owned());
    }

    std::fs::create_dir_all(build_dir)?;
    let make = |target: &str| -> Command {
        let mut cmd = Command::new("make");
        cmd.arg("-C")
            .arg(&tree.dir)
            .arg(format!("O={}", build_dir.display()))
            .arg(format!("ARCH={ARCH}"))
            .arg(format!("CROSS_COMPILE={CROSS_COMPILE}"))
            .arg(target);
        cmd
    };
    stage.status("make tinyconfig");
    stage.run(&mut make("tinyconfig"))?;
    let mut config = std::fs::read_to_string(&out.dotconfig)?;
    for f in fragments {
        let _ = writeln!(config, "\n# ---- {} ----", f.display());
        config.push_str(&std::fs::read_to_string(f)?);
    }
    std::fs::write(&out.dotconfig, config)?;
    stage.status("make olddefconfig");
    stage.run(&mut make("olddefconfig"))?;
    let dropped = dropped_options(&options, &std::fs::read_to_string(&out.dotconfig)?);
    if !dropped.is_empty() {
        let mut msg = format!(
            "{} option(s) asked for by fragments are not in the final .config (unmet dependencies?):\n",
            dropped.len()
        );
        for (o, got) in &dropped {
            let _ = writeln!(msg, "  {}: wanted {}, got {got}", o.origin, o.wanted());
        }
        bail!(msg.trim_end().to_owned());
    }
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    stage.status(&format!("make -j{jobs} Image"));
    stage.run(make("Image").arg(format!("-j{jobs}")))?;
    let release = stage
        .output(make("kernelrelease").arg("-s"))?
        .trim()
        .to_owned();
    std::fs::write(&release_file, &release)?;
    stamp.record(&key)?;
    Ok((
        KernelBuild {
            release: release.clone(),
            ..out
        },
        Outcome::Built(format!("Linux {release} Image")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn fragment_parsing_handles_all_forms_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "a.config",
            "# c\n\nCONFIG_A=y\nCONFIG_B=n\n# CONFIG_C is not set\nCONFIG_D=\"x y\"\n",
        );
        let opts = parse_fragment(&f).unwrap();
        let summary: Vec<(String, Option<String>, String)> = opts
            .into_iter()
            .map(|o| (o.symbol, o.value, o.origin))
            .collect();
        assert_eq!(
            summary,
            [
                ("A".into(), Some("y".into()), "a.config:3".into()),
                ("B".into(), None, "a.config:4".into()),
                ("C".into(), None, "a.config:5".into()),
                ("D".into(), Some("\"x y\"".into()), "a.config:6".into()),
            ]
        );
        let bad = write(dir.path(), "b.config", "CONFIG_A=y\nFOO=y\n");
        let err = parse_fragment(&bad).unwrap_err().to_string();
        assert!(err.contains("b.config:2"), "{err}");
    }

    #[test]
    fn option_that_does_not_exist_in_kconfig_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("drivers/x")).unwrap();
        write(
            dir.path(),
            "Kconfig",
            "config REAL\n\tbool \"real\"\nmenuconfig MENU\n\tbool\n",
        );
        write(
            &dir.path().join("drivers/x"),
            "Kconfig.debug",
            "config DEEP\n\tbool\n",
        );
        let known = kconfig_symbols(dir.path()).unwrap();
        assert_eq!(
            known.iter().cloned().collect::<Vec<_>>(),
            ["DEEP", "MENU", "REAL"]
        );
        let f = write(
            dir.path(),
            "frag.config",
            "CONFIG_REAL=y\nCONFIG_TYPO=y\nCONFIG_DEEP=y\n",
        );
        let opts = parse_fragment(&f).unwrap();
        let unknown = unknown_symbols(&opts, &known);
        assert_eq!(unknown.len(), 1);
        assert_eq!(
            (unknown[0].symbol.as_str(), unknown[0].origin.as_str()),
            ("TYPO", "frag.config:2")
        );
    }

    #[test]
    fn dropped_options_lists_each_mismatch_with_what_was_found() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "f.config",
            "CONFIG_KEPT=y\nCONFIG_GONE=y\nCONFIG_OFF=n\nCONFIG_NUM=8\nCONFIG_LATER=y\nCONFIG_LATER=n\n",
        );
        let opts = parse_fragment(&f).unwrap();
        let dotconfig = "CONFIG_KEPT=y\n# CONFIG_GONE is not set\nCONFIG_OFF=y\nCONFIG_NUM=4\n# CONFIG_LATER is not set\n";
        let dropped: Vec<(String, String)> = dropped_options(&opts, dotconfig)
            .into_iter()
            .map(|(o, got)| (o.origin, got))
            .collect();
        assert_eq!(
            dropped,
            [
                ("f.config:2".to_owned(), "not set".to_owned()),
                ("f.config:3".to_owned(), "=y".to_owned()),
                ("f.config:4".to_owned(), "=4".to_owned()),
            ]
        );
    }

    #[test]
    fn patch_that_does_not_apply_names_patch_file_and_hunk() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("lib")).unwrap();
        std::fs::write(tree.join("lib/a.c"), "one\ntwo\nthree\n").unwrap();
        let good = write(
            dir.path(),
            "0001-good.patch",
            "--- a/lib/a.c\n+++ b/lib/a.c\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n",
        );
        let bad = write(
            dir.path(),
            "0002-bad.patch",
            "--- a/lib/a.c\n+++ b/lib/a.c\n@@ -1,3 +1,3 @@\n one\n-zwei\n+ZWEI\n three\n",
        );
        let logs = dir.path().join("logs");
        crate::stage::run_stage(&logs, "patch-test", |stage| {
            apply_patch(stage, &tree, &good).unwrap();
            let err = apply_patch(stage, &tree, &bad).unwrap_err().to_string();
            assert!(err.contains("patch 0002-bad.patch does not apply"), "{err}");
            assert!(err.contains("lib/a.c: Hunk #1 FAILED at 1"), "{err}");
            Ok(((), Outcome::Built(String::new())))
        })
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(tree.join("lib/a.c")).unwrap(),
            "one\nTWO\nthree\n"
        );
    }

    #[test]
    fn series_names_missing_patches_by_line() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "0001-a.patch", "");
        write(
            dir.path(),
            "series",
            "# comment\n0001-a.patch\n\n0002-missing.patch\n",
        );
        let err = read_series(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("series:4: patch 0002-missing.patch does not exist"),
            "{err}"
        );
        write(dir.path(), "series", "0001-a.patch\n");
        assert_eq!(
            read_series(dir.path()).unwrap(),
            [dir.path().join("0001-a.patch")]
        );
    }
}
