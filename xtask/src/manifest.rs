//! `manifest.json`: every input and output of a build with its version and
//! sha256, the git revision and whether the tree was dirty. `run` and `test`
//! find the artifacts through it, so they use exactly what was built.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::cache::sha256_file;

pub const FORMAT: u32 = 1;

/// Output name of the conformance guest (the raw binary the host image
/// also carries at `initramfs::CONFORMANCE_GUEST_PATH`).
pub const CONFORMANCE_GUEST: &str = "conformance-guest";

/// Output name of the guest kernel Image (version: its `uname -r`); the
/// host image also carries it at `initramfs::GUEST_KERNEL_PATH`.
pub const GUEST_KERNEL: &str = "guest-kernel";
/// Output name of the guest initramfs (`initramfs::GUEST_INITRAMFS_PATH`
/// in the host image).
pub const GUEST_INITRAMFS: &str = "guest-initramfs";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub stack: String,
    pub git: GitInfo,
    /// Tool versions that shape the outputs.
    pub tools: Vec<Item>,
    pub inputs: Vec<Item>,
    pub outputs: Vec<Item>,
    /// `uname -r` the host kernel must report.
    pub kernel_release: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GitInfo {
    pub revision: String,
    pub dirty: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Item {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub path: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub size: Option<u64>,
}

impl Item {
    /// A file with its hash and size.
    pub fn file(name: &str, path: &Path, version: Option<String>) -> Result<Item> {
        let size = std::fs::metadata(path)
            .with_context(|| format!("{}", path.display()))?
            .len();
        Ok(Item {
            name: name.to_owned(),
            path: Some(path.to_path_buf()),
            version,
            sha256: Some(sha256_file(path)?),
            size: Some(size),
        })
    }

    /// A file whose hash is already known (large inputs hashed once).
    pub fn file_with_hash(
        name: &str,
        path: &Path,
        version: Option<String>,
        sha256: String,
    ) -> Item {
        Item {
            name: name.to_owned(),
            path: Some(path.to_path_buf()),
            version,
            sha256: Some(sha256),
            size: std::fs::metadata(path).ok().map(|m| m.len()),
        }
    }

    /// A tool and its version string.
    pub fn tool(name: &str, version: String) -> Item {
        Item {
            name: name.to_owned(),
            path: None,
            version: Some(version),
            sha256: None,
            size: None,
        }
    }
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "reading {} (run `cargo xtask build-image` first)",
                path.display()
            )
        })?;
        let manifest: Manifest =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        anyhow::ensure!(
            manifest.format == FORMAT,
            "{} has format {}, this xtask writes {FORMAT}; rebuild with `cargo xtask build-image`",
            path.display(),
            manifest.format
        );
        Ok(manifest)
    }

    /// Path of the output called `name`.
    pub fn output(&self, name: &str) -> Result<&Path> {
        self.output_item(name)?
            .path
            .as_deref()
            .with_context(|| format!("manifest of stack {} lists no output {name:?}", self.stack))
    }

    /// The output called `name`.
    pub fn output_item(&self, name: &str) -> Result<&Item> {
        self.outputs
            .iter()
            .find(|i| i.name == name)
            .with_context(|| format!("manifest of stack {} lists no output {name:?}", self.stack))
    }
}

/// The current git revision and whether the work tree differs from it.
pub fn git_info(root: &Path) -> GitInfo {
    let revision = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        );
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=normal"])
        .current_dir(root)
        .output()
        .map(|o| !o.status.success() || !o.stdout.is_empty())
        .unwrap_or(true);
    GitInfo { revision, dirty }
}

/// First line of `program --version`, or "missing".
pub fn tool_version(program: &str) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "missing".to_owned())
}
