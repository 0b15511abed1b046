//! The pinned Linux source (`kernel-config/pins.toml`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinsFile {
    linux: LinuxPin,
}

/// Which Linux source tarball Cloister builds from.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LinuxPin {
    /// Debian package that ships the tarball.
    pub package: String,
    /// Where the package puts it.
    pub tarball: PathBuf,
    /// Kernel series every accepted version must belong to, e.g. "6.12".
    pub series: String,
    /// Debian package version the sha256 below belongs to.
    pub package_version: String,
    /// sha256 of the tarball of that exact version.
    pub sha256: String,
}

/// How the installed source relates to the pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceCheck {
    /// Exactly the pinned version and hash.
    Pinned,
    /// Another version of the same series; the build goes on with this warning.
    OtherPointRelease { warning: String },
}

pub fn load(root: &Path) -> Result<LinuxPin> {
    let path = root.join("kernel-config/pins.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let pins: PinsFile =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(pins.linux)
}

/// The Debian version of `package` that dpkg has installed.
pub fn installed_version(package: &str) -> Result<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", package])
        .output()
        .context("running dpkg-query")?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || version.is_empty() {
        bail!("Debian package {package} is not installed (apt-get install -y {package})");
    }
    Ok(version)
}

/// Decides whether the installed tarball may be used.
///
/// Same version: the hash must match (a different hash for the same version
/// means the file was tampered with or damaged). Another point release of
/// the same series: accepted with a warning carrying the new version and
/// hash. Another series: refused.
pub fn check(pin: &LinuxPin, installed_version: &str, actual_sha256: &str) -> Result<SourceCheck> {
    let upstream = installed_version
        .split(['-', '+', '~'])
        .next()
        .unwrap_or("");
    let in_series = upstream == pin.series || upstream.starts_with(&format!("{}.", pin.series));
    if !in_series {
        bail!(
            "{} {installed_version} is Linux {upstream}, not the pinned {} series; \
             Cloister's patches are written for {} (see kernel-config/pins.toml)",
            pin.package,
            pin.series,
            pin.series
        );
    }
    if installed_version == pin.package_version {
        if actual_sha256 != pin.sha256 {
            bail!(
                "sha256 mismatch for {} {installed_version} ({}): expected {} (kernel-config/pins.toml), \
                 found {actual_sha256}; the tarball is damaged or not Debian's",
                pin.package,
                pin.tarball.display(),
                pin.sha256
            );
        }
        return Ok(SourceCheck::Pinned);
    }
    Ok(SourceCheck::OtherPointRelease {
        warning: format!(
            "warning: {} is {installed_version}, pinned is {}; building it anyway. \
             To pin it, set in kernel-config/pins.toml:\n  package-version = \"{installed_version}\"\n  sha256 = \"{actual_sha256}\"",
            pin.package, pin.package_version
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin() -> LinuxPin {
        LinuxPin {
            package: "linux-source-6.12".into(),
            tarball: "/usr/src/linux-source-6.12.tar.xz".into(),
            series: "6.12".into(),
            package_version: "6.12.117-1~deb12u1".into(),
            sha256: "aa".repeat(32),
        }
    }

    #[test]
    fn pinned_version_with_its_hash_is_accepted() {
        assert_eq!(
            check(&pin(), "6.12.117-1~deb12u1", &"aa".repeat(32)).unwrap(),
            SourceCheck::Pinned
        );
    }

    #[test]
    fn sha256_mismatch_for_the_pinned_version_is_refused() {
        let err = check(&pin(), "6.12.117-1~deb12u1", &"bb".repeat(32))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sha256 mismatch"), "{err}");
        assert!(
            err.contains(&"aa".repeat(32)) && err.contains(&"bb".repeat(32)),
            "{err}"
        );
    }

    #[test]
    fn other_point_release_warns_with_the_new_hash() {
        match check(&pin(), "6.12.120-1~deb12u1", &"cc".repeat(32)).unwrap() {
            SourceCheck::OtherPointRelease { warning } => {
                assert!(warning.contains("6.12.120-1~deb12u1"), "{warning}");
                assert!(warning.contains(&"cc".repeat(32)), "{warning}");
            }
            other => panic!("expected a warning, got {other:?}"),
        }
    }

    #[test]
    fn other_series_is_refused() {
        let err = check(&pin(), "6.13.2-1", &"aa".repeat(32))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not the pinned 6.12 series"), "{err}");
        // 6.120 is not 6.12.
        check(&pin(), "6.120.1-1", &"aa".repeat(32)).unwrap_err();
    }

    #[test]
    fn repository_pins_parse() {
        let pin = load(&crate::project_root()).unwrap();
        assert_eq!(pin.series, "6.12");
        assert_eq!(pin.sha256.len(), 64);
    }
}
