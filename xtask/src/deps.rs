//! Host dependencies: Debian packages, the arm64 busybox, rustup targets.
//!
//! A fresh Debian machine as root gets what is missing installed; anyone else
//! gets the exact command to run, because a build that half-works on a
//! machine missing `bison` wastes more time than a clear stop.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::stage::{Outcome, Stage};

/// Debian packages the build and the tests need, with why.
pub const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-arm", "qemu-system-aarch64 boots every stack"),
    ("gcc-aarch64-linux-gnu", "cross-compiles the arm64 kernels"),
    ("linux-source-6.12", "the pinned Linux source tarball"),
    ("make", "drives the kernel build"),
    ("bc", "kernel build"),
    ("bison", "kernel build (kconfig)"),
    ("flex", "kernel build (kconfig)"),
    ("libssl-dev", "kernel build (sign-file, certs)"),
    ("libelf-dev", "kernel build (objtool)"),
    ("patch", "applies kernel-config/patches"),
    ("xz-utils", "unpacks the kernel tarball"),
    (
        "dpkg-dev",
        "apt-get download / dpkg-deb for the arm64 busybox",
    ),
    (
        "u-boot-tools",
        "mkimage wraps the disk image's U-Boot boot script",
    ),
    (
        "u-boot-qemu",
        "U-Boot for qemu_arm64: the firmware of the qemu-uboot stack",
    ),
    (
        "lava-common",
        "LAVA's job schema: the xtask unit tests validate the generated LAVA jobs",
    ),
];

/// The arm64 busybox the initramfs is made of.
pub const BUSYBOX_PACKAGE: &str = "busybox-static:arm64";

/// Returns the packages from `wanted` that dpkg does not list as installed.
pub fn missing_packages(wanted: &[&str]) -> Result<Vec<String>> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${db:Status-Abbrev}\n"])
        .args(wanted)
        .output()
        .context("running dpkg-query (is this a Debian machine?)")?;
    let listing = String::from_utf8_lossy(&out.stdout);
    Ok(wanted
        .iter()
        .filter(|pkg| {
            let name = pkg.split(':').next().unwrap_or(pkg);
            !listing
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [name, "ii"])
        })
        .map(|p| (*p).to_owned())
        .collect())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The command that installs `packages`, as printed for a non-root user.
pub fn install_hint(packages: &[String]) -> String {
    format!(
        "apt-get update && apt-get install -y --no-install-recommends {}",
        packages.join(" ")
    )
}

/// `apt-get update` then installs `packages` (root only), logged to `stage`.
pub fn apt_install(stage: &Stage, packages: &[String]) -> Result<()> {
    stage.status(&format!("apt-get install {}", packages.join(" ")));
    stage.run(Command::new("apt-get").arg("update"))?;
    stage.run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Makes sure every Debian package and rustup target is there.
pub fn ensure_host(stage: &mut Stage) -> Result<((), Outcome)> {
    let names: Vec<&str> = DEBIAN_PACKAGES.iter().map(|(n, _)| *n).collect();
    let missing = missing_packages(&names)?;
    let mut did = Vec::new();
    if !missing.is_empty() {
        if !is_root() {
            bail!(
                "missing Debian packages: {}\nrun as root:\n  {}",
                missing.join(", "),
                install_hint(&missing)
            );
        }
        apt_install(stage, &missing)?;
        did.push(format!("installed {}", missing.join(" ")));
    }
    let targets = ensure_rust_targets(stage)?;
    if !targets.is_empty() {
        did.push(format!("added rust targets {}", targets.join(" ")));
    }
    Ok((
        (),
        if did.is_empty() {
            Outcome::Cached(format!(
                "{} Debian packages and rust targets present",
                names.len()
            ))
        } else {
            Outcome::Built(did.join("; "))
        },
    ))
}

/// Adds the targets rust-toolchain.toml lists if rustup lacks them (older
/// rustup versions do not install them on first use).
fn ensure_rust_targets(stage: &Stage) -> Result<Vec<String>> {
    let wanted = ["aarch64-unknown-none", "aarch64-unknown-linux-musl"];
    let root = crate::project_root();
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(&root)
        .output();
    let Ok(installed) = installed else {
        // No rustup: cargo came from elsewhere; the aarch64 build will say
        // what is missing.
        return Ok(Vec::new());
    };
    let installed = String::from_utf8_lossy(&installed.stdout).into_owned();
    let missing: Vec<String> = wanted
        .iter()
        .filter(|t| !installed.lines().any(|l| l.trim() == **t))
        .map(|t| (*t).to_owned())
        .collect();
    if !missing.is_empty() {
        stage.status(&format!("rustup target add {}", missing.join(" ")));
        stage.run(
            Command::new("rustup")
                .arg("target")
                .arg("add")
                .args(&missing)
                .current_dir(&root),
        )?;
    }
    Ok(missing)
}

/// Downloads (once) and unpacks the arm64 busybox; returns the binary's path
/// and the .deb's path.
pub fn busybox(stage: &mut Stage, cache_dir: &Path) -> Result<((PathBuf, PathBuf), Outcome)> {
    let debs = cache_dir.join("debs");
    std::fs::create_dir_all(&debs)?;
    let find_deb = || -> Option<PathBuf> {
        std::fs::read_dir(&debs)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("busybox-static_") && n.ends_with("_arm64.deb"))
            })
    };
    let mut outcome = Outcome::Cached("busybox-static:arm64 already downloaded".into());
    let deb = match find_deb() {
        Some(deb) => deb,
        None => {
            let foreign =
                stage.output(Command::new("dpkg").arg("--print-foreign-architectures"))?;
            if !foreign.lines().any(|l| l.trim() == "arm64") {
                if !is_root() {
                    bail!(
                        "the arm64 busybox needs Debian's arm64 package lists; run as root:\n  \
                         dpkg --add-architecture arm64 && apt-get update"
                    );
                }
                stage.status("dpkg --add-architecture arm64");
                stage.run(Command::new("dpkg").args(["--add-architecture", "arm64"]))?;
                stage.run(Command::new("apt-get").arg("update"))?;
            }
            stage.status(&format!("apt-get download {BUSYBOX_PACKAGE}"));
            // Download to a fresh temp dir and move, so a half download never
            // looks like a cached one.
            let tmp = debs.join("tmp");
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp)?;
            let mut download = Command::new("apt-get");
            download
                .args(["download", BUSYBOX_PACKAGE])
                .current_dir(&tmp);
            if stage.run(&mut download).is_err() {
                if !is_root() {
                    bail!(
                        "apt-get download {BUSYBOX_PACKAGE} failed; as root run:\n  \
                         apt-get update\nthen build again"
                    );
                }
                stage.run(Command::new("apt-get").arg("update"))?;
                stage.run(&mut download)?;
            }
            for entry in std::fs::read_dir(&tmp)?.flatten() {
                std::fs::rename(entry.path(), debs.join(entry.file_name()))?;
            }
            let _ = std::fs::remove_dir_all(&tmp);
            outcome = Outcome::Built(format!("downloaded {BUSYBOX_PACKAGE}"));
            find_deb().context("apt-get download left no busybox-static_*_arm64.deb")?
        }
    };
    let unpacked = cache_dir.join("busybox-root");
    let binary = unpacked.join("bin/busybox");
    if !binary.is_file() {
        let _ = std::fs::remove_dir_all(&unpacked);
        stage.run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        if !binary.is_file() {
            bail!("{} holds no bin/busybox", deb.display());
        }
    }
    Ok(((binary, deb), outcome))
}

/// The Debian package that installed `path` and its version
/// (`dpkg-query -S`, then `-W`); None for files dpkg does not know.
pub fn owning_package(path: &Path) -> Option<(String, String)> {
    let out = Command::new("dpkg-query")
        .arg("-S")
        .arg(path)
        .output()
        .ok()?;
    let listing = String::from_utf8_lossy(&out.stdout);
    // `u-boot-qemu: /usr/lib/u-boot/qemu_arm64/u-boot.bin`
    let package = listing
        .lines()
        .next()?
        .split_once(": ")?
        .0
        .split(", ")
        .next()?
        .to_owned();
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}"])
        .arg(&package)
        .output()
        .ok()?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !version.is_empty()).then_some((package, version))
}

/// Finds `program` on `path_var` (a PATH-style list).
pub fn find_on_path(program: &str, path_var: &str) -> Option<PathBuf> {
    std::env::split_paths(path_var)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_packages_reports_absent_ones() {
        // dpkg itself is always installed on Debian; the made-up name is not.
        let missing = missing_packages(&["dpkg", "cloister-no-such-package"]).unwrap();
        assert_eq!(missing, ["cloister-no-such-package"]);
    }

    #[test]
    fn install_hint_is_a_complete_command() {
        let hint = install_hint(&["bison".into(), "flex".into()]);
        assert_eq!(
            hint,
            "apt-get update && apt-get install -y --no-install-recommends bison flex"
        );
    }

    #[test]
    fn owning_package_names_the_package_and_its_version() {
        // dpkg ships dpkg-query on every Debian machine.
        let (package, version) = owning_package(Path::new("/usr/bin/dpkg-query")).unwrap();
        assert_eq!(package, "dpkg");
        assert!(
            version.chars().next().is_some_and(|c| c.is_ascii_digit()),
            "{version}"
        );
        assert_eq!(
            owning_package(Path::new("/nonexistent/cloister-file")),
            None
        );
    }

    #[test]
    fn find_on_path_searches_each_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tool"), "").unwrap();
        let path = format!("/nonexistent:{}", dir.path().display());
        assert_eq!(find_on_path("tool", &path), Some(dir.path().join("tool")));
        assert_eq!(find_on_path("other", &path), None);
    }
}
