//! Initramfs images: a newc cpio written here, in Rust, from a list of
//! entries, so the image is byte-for-byte reproducible (fixed inode numbers,
//! mtime 0, uid/gid 0) and needs no host `cpio`, `find` or root.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use cpio::newc::{trailer, Builder};

/// One entry of the archive. Paths are absolute inside the image ("/bin/sh").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    Symlink {
        path: String,
        target: String,
    },
    CharDev {
        path: String,
        mode: u32,
        major: u32,
        minor: u32,
    },
}

impl Entry {
    fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. }
            | Entry::File { path, .. }
            | Entry::Symlink { path, .. }
            | Entry::CharDev { path, .. } => path,
        }
    }
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Writes `entries` as a newc archive. Parent directories must come before
/// their children (the kernel's unpacker does not create them).
pub fn write_newc(entries: &[Entry], mut out: impl Write) -> Result<()> {
    let mut seen_dirs = std::collections::BTreeSet::from([String::new()]);
    for (ino, entry) in (1u32..).zip(entries) {
        let path = entry.path();
        let Some(rel) = path
            .strip_prefix('/')
            .filter(|r| !r.is_empty() && !r.ends_with('/'))
        else {
            bail!("initramfs entry {path:?}: expected an absolute path like /bin/sh");
        };
        let parent = rel.rsplit_once('/').map_or("", |(p, _)| p);
        if !seen_dirs.contains(parent) {
            bail!("initramfs entry {path:?}: parent directory /{parent} must be listed before it");
        }
        let builder = Builder::new(rel).ino(ino).uid(0).gid(0).mtime(0);
        let (builder, data): (Builder, &[u8]) = match entry {
            Entry::Dir { mode, .. } => {
                seen_dirs.insert(rel.to_owned());
                (builder.mode(S_IFDIR | mode).nlink(2), &[])
            }
            Entry::File { mode, data, .. } => (builder.mode(S_IFREG | mode).nlink(1), data),
            Entry::Symlink { target, .. } => {
                (builder.mode(S_IFLNK | 0o777).nlink(1), target.as_bytes())
            }
            Entry::CharDev {
                mode, major, minor, ..
            } => (
                builder
                    .mode(S_IFCHR | mode)
                    .nlink(1)
                    .rdev_major(*major)
                    .rdev_minor(*minor),
                &[],
            ),
        };
        let size =
            u32::try_from(data.len()).with_context(|| format!("{path}: larger than 4 GiB"))?;
        let mut writer = builder.write(out, size);
        writer.write_all(data)?;
        out = writer.finish()?;
    }
    trailer(out)?;
    Ok(())
}

/// Writes `entries` as a newc cpio to `path`; returns "N entries, K KiB".
pub fn write_image(entries: &[Entry], path: &Path) -> Result<String> {
    let mut bytes = Vec::new();
    write_newc(entries, &mut bytes)?;
    std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(format!(
        "{} entries, {} KiB",
        entries.len(),
        bytes.len() / 1024
    ))
}

/// Adds every file and directory under `overlay` (sorted, so the archive is
/// reproducible), keeping the executable bit.
pub fn overlay_entries(overlay: &Path) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    walk(overlay, overlay, &mut entries)?;
    Ok(entries)
}

fn walk(root: &Path, dir: &Path, entries: &mut Vec<Entry>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut children: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    children.sort();
    for path in children {
        let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
        let image_path = format!("/{rel}");
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            entries.push(Entry::Dir {
                path: image_path,
                mode: 0o755,
            });
            walk(root, &path, entries)?;
        } else if meta.is_file() {
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            let data =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            entries.push(Entry::File {
                path: image_path,
                mode,
                data,
            });
        } else {
            bail!(
                "{}: only files and directories may be in a rootfs overlay",
                path.display()
            );
        }
    }
    Ok(())
}

/// Where the host image keeps the conformance guest (a raw aarch64 binary
/// for `cloister-vmm`).
pub const CONFORMANCE_GUEST_PATH: &str = "/lib/cloister/conformance.bin";

/// Where the VMM's defaults from the stack's `[vm]` table go.
pub const VMM_CONF_PATH: &str = "/lib/cloister/vmm.conf";

/// Where the host image keeps the Linux guest (the stack's `[guest]`).
pub const GUEST_DIR: &str = "/lib/cloister/guest";
/// The guest kernel: an arm64 `Image` for `cloister-vmm`.
pub const GUEST_KERNEL_PATH: &str = "/lib/cloister/guest/Image";
/// The guest initramfs (newc cpio, uncompressed).
pub const GUEST_INITRAMFS_PATH: &str = "/lib/cloister/guest/initramfs.cpio";
/// The `[guest]` table as `key=value` lines (cmdline, memory_mib, cpus,
/// disk_mib).
pub const GUEST_CONF_PATH: &str = "/lib/cloister/guest/guest.conf";

/// Where the guest agent sits in the guest image (`/init` links to it).
pub const GUEST_AGENT_PATH: &str = "/sbin/cloister-guest-agent";

/// The Linux guest as the host image carries it.
#[derive(Debug, Clone)]
pub struct HostGuest {
    pub kernel: Vec<u8>,
    pub initramfs: Vec<u8>,
    pub conf: String,
}

/// What both images start with: the usual directories, /dev/console (the
/// kernel opens it for init's stdio before anything mounts devtmpfs),
/// /dev/null (a Rust init whose stdio the kernel could not open, because no
/// console had registered yet, reopens it there or aborts) and busybox
/// with /bin/sh.
fn skeleton(busybox: Vec<u8>) -> Vec<Entry> {
    let mut entries: Vec<Entry> = [
        "/bin",
        "/sbin",
        "/usr",
        "/usr/bin",
        "/usr/sbin",
        "/dev",
        "/proc",
        "/sys",
        "/tmp",
        "/root",
    ]
    .into_iter()
    .map(|p| Entry::Dir {
        path: p.to_owned(),
        mode: 0o755,
    })
    .collect();
    entries.extend([
        Entry::CharDev {
            path: "/dev/console".into(),
            mode: 0o600,
            major: 5,
            minor: 1,
        },
        Entry::CharDev {
            path: "/dev/null".into(),
            mode: 0o666,
            major: 1,
            minor: 3,
        },
        Entry::File {
            path: "/bin/busybox".into(),
            mode: 0o755,
            data: busybox,
        },
        Entry::Symlink {
            path: "/bin/sh".into(),
            target: "busybox".into(),
        },
    ]);
    entries
}

/// The host initramfs: busybox for the demo shell (busybox init as /init,
/// configured by the overlay's /etc/inittab), the VMM, the test agent,
/// which the e2e runner starts instead with `rdinit=/sbin/cloister-agent`,
/// the conformance guest at [`CONFORMANCE_GUEST_PATH`] and, when the stack
/// has one, the Linux guest under [`GUEST_DIR`].
pub fn host_entries(
    busybox: Vec<u8>,
    agent: Vec<u8>,
    vmm: Vec<u8>,
    conformance: Vec<u8>,
    vmm_conf: &str,
    guest: Option<HostGuest>,
    overlay: &Path,
) -> Result<Vec<Entry>> {
    let mut entries = skeleton(busybox);
    entries.extend([
        Entry::Dir {
            path: "/lib".into(),
            mode: 0o755,
        },
        Entry::Dir {
            path: "/lib/cloister".into(),
            mode: 0o755,
        },
        Entry::Symlink {
            path: "/init".into(),
            target: "bin/busybox".into(),
        },
        Entry::File {
            path: "/sbin/cloister-agent".into(),
            mode: 0o755,
            data: agent,
        },
        Entry::Symlink {
            path: "/bin/cloister-agent".into(),
            target: "../sbin/cloister-agent".into(),
        },
        Entry::File {
            path: VMM_CONF_PATH.into(),
            mode: 0o644,
            data: vmm_conf.as_bytes().to_vec(),
        },
        Entry::File {
            path: "/bin/cloister-vmm".into(),
            mode: 0o755,
            data: vmm,
        },
        Entry::File {
            path: CONFORMANCE_GUEST_PATH.into(),
            mode: 0o644,
            data: conformance,
        },
    ]);
    if let Some(guest) = guest {
        entries.extend([
            Entry::Dir {
                path: GUEST_DIR.into(),
                mode: 0o755,
            },
            Entry::File {
                path: GUEST_KERNEL_PATH.into(),
                mode: 0o644,
                data: guest.kernel,
            },
            Entry::File {
                path: GUEST_INITRAMFS_PATH.into(),
                mode: 0o644,
                data: guest.initramfs,
            },
            Entry::File {
                path: GUEST_CONF_PATH.into(),
                mode: 0o644,
                data: guest.conf.into_bytes(),
            },
        ]);
    }
    entries.extend(overlay_entries(overlay)?);
    Ok(entries)
}

/// The guest initramfs: the guest agent as /init (it mounts the pseudo
/// filesystems itself and runs the tests the command line names, or a
/// shell on hvc0) and the host's busybox for that shell.
pub fn guest_entries(busybox: Vec<u8>, guest_agent: Vec<u8>) -> Vec<Entry> {
    let mut entries = skeleton(busybox);
    entries.extend([
        Entry::File {
            path: GUEST_AGENT_PATH.into(),
            mode: 0o755,
            data: guest_agent,
        },
        Entry::Symlink {
            path: "/init".into(),
            target: GUEST_AGENT_PATH.trim_start_matches('/').into(),
        },
    ]);
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn read_back(archive: &[u8]) -> Vec<(String, u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = archive;
        loop {
            let mut reader = cpio::NewcReader::new(rest).unwrap();
            if reader.entry().is_trailer() {
                break;
            }
            let e = reader.entry();
            let (name, mode, rdev) = (e.name().to_owned(), e.mode(), e.rdev_minor());
            let mut data = Vec::new();
            reader.read_to_end(&mut data).unwrap();
            out.push((name, mode, rdev, data));
            rest = reader.finish().unwrap();
        }
        out
    }

    #[test]
    fn archive_reads_back_with_types_modes_and_contents() {
        let entries = vec![
            Entry::Dir {
                path: "/bin".into(),
                mode: 0o755,
            },
            Entry::File {
                path: "/bin/tool".into(),
                mode: 0o755,
                data: b"hello".to_vec(),
            },
            Entry::Symlink {
                path: "/init".into(),
                target: "bin/tool".into(),
            },
            Entry::Dir {
                path: "/dev".into(),
                mode: 0o755,
            },
            Entry::CharDev {
                path: "/dev/console".into(),
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        ];
        let mut archive = Vec::new();
        write_newc(&entries, &mut archive).unwrap();
        assert_eq!(&archive[..6], b"070701");
        let back = read_back(&archive);
        let summary: Vec<(&str, u32, u32, &[u8])> = back
            .iter()
            .map(|(n, m, r, d)| (n.as_str(), *m, *r, d.as_slice()))
            .collect();
        assert_eq!(
            summary,
            [
                ("bin", 0o040755, 0, &b""[..]),
                ("bin/tool", 0o100755, 0, b"hello"),
                ("init", 0o120777, 0, b"bin/tool"),
                ("dev", 0o040755, 0, b""),
                ("dev/console", 0o020600, 1, b""),
            ]
        );
        let mut again = Vec::new();
        write_newc(&entries, &mut again).unwrap();
        assert_eq!(archive, again, "archives must be reproducible");
    }

    #[test]
    fn entries_need_absolute_paths_and_listed_parents() {
        let err = write_newc(
            &[Entry::Dir {
                path: "bin".into(),
                mode: 0o755,
            }],
            Vec::new(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("expected an absolute path"),
            "{err}"
        );
        let orphan = Entry::File {
            path: "/usr/bin/x".into(),
            mode: 0o644,
            data: vec![],
        };
        let err = write_newc(&[orphan], Vec::new()).unwrap_err();
        assert!(
            err.to_string().contains("parent directory /usr/bin"),
            "{err}"
        );
    }

    #[test]
    fn host_image_has_init_agent_and_overlay() {
        let overlay = crate::project_root().join("stacks/rootfs/host");
        let entries = host_entries(
            b"bb".to_vec(),
            b"agent".to_vec(),
            b"vmm".to_vec(),
            b"guest".to_vec(),
            "memory=anon\n",
            Some(HostGuest {
                kernel: b"Image".to_vec(),
                initramfs: b"cpio".to_vec(),
                conf: "cpus=2\n".into(),
            }),
            &overlay,
        )
        .unwrap();
        let mut archive = Vec::new();
        write_newc(&entries, &mut archive).unwrap();
        let names: Vec<String> = read_back(&archive).into_iter().map(|e| e.0).collect();
        for wanted in [
            "init",
            "bin/busybox",
            "sbin/cloister-agent",
            "bin/cloister-vmm",
            "lib/cloister/conformance.bin",
            "lib/cloister/vmm.conf",
            "lib/cloister/guest/Image",
            "lib/cloister/guest/initramfs.cpio",
            "lib/cloister/guest/guest.conf",
            "dev/console",
            "etc/inittab",
            "etc/init.d/rcS",
        ] {
            assert!(
                names.iter().any(|n| n == wanted),
                "{wanted} missing from {names:?}"
            );
        }
        let rcs = read_back(&archive)
            .into_iter()
            .find(|e| e.0 == "etc/init.d/rcS")
            .unwrap();
        assert_eq!(rcs.1 & 0o111, 0o111, "rcS must stay executable");
        let guest = read_back(&archive)
            .into_iter()
            .find(|e| e.0 == CONFORMANCE_GUEST_PATH.trim_start_matches('/'))
            .unwrap();
        assert_eq!((guest.1, guest.3.as_slice()), (0o100644, &b"guest"[..]));
    }

    #[test]
    fn guest_image_has_the_agent_as_init_and_busybox() {
        let entries = guest_entries(b"bb".to_vec(), b"ga".to_vec());
        let mut archive = Vec::new();
        write_newc(&entries, &mut archive).unwrap();
        let back = read_back(&archive);
        let find = |name: &str| back.iter().find(|e| e.0 == name).cloned();
        assert_eq!(find("init").unwrap().3, b"sbin/cloister-guest-agent");
        let agent = find("sbin/cloister-guest-agent").unwrap();
        assert_eq!((agent.1, agent.3.as_slice()), (0o100755, &b"ga"[..]));
        assert_eq!(find("bin/sh").unwrap().3, b"busybox");
        for dir in [
            "proc",
            "sys",
            "dev",
            "tmp",
            "dev/console",
            "dev/null",
            "usr/sbin",
        ] {
            assert!(find(dir).is_some(), "{dir} missing");
        }
        // The host's own files stay out of the guest.
        assert!(find("lib/cloister/vmm.conf").is_none());
    }
}
