//! `cargo xtask flash --stack S --device /dev/sdX`: writes a stack's disk
//! image to an SD card or USB disk, then reads it back and compares.
//!
//! Overwriting the wrong disk is the one mistake this command must make
//! impossible, so every decision is a pure function of a [`Target`] (what
//! the kernel says about the device: block device or not, partition or
//! whole disk, removable, mounted, in use, size) and the image size. The
//! real system fills a `Target` from `/sys` and `/proc/self/mountinfo`
//! ([`System::inspect`]); the unit tests fill it by hand or from a fake
//! sysfs tree, so each refusal is tested without hardware. Only a
//! [`Validated`] target can be written, and only [`check`] makes one.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, IsTerminal, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::manifest::Manifest;

/// The manifest output that holds a stack's flashable disk image.
pub const DISK_IMAGE_OUTPUT: &str = crate::qemu::DISK_OUTPUT;

/// Bytes per write and per read-back chunk.
const CHUNK: usize = 4 << 20;

/// `cargo xtask flash --stack S --device /dev/sdX [--yes] [--image PATH]`
#[derive(Debug, clap::Args)]
pub struct Flash {
    /// Stack whose disk image is written (the `disk-image` output of its
    /// manifest.json; build it first with `cargo xtask build-image`).
    #[arg(long, value_name = "STACK")]
    stack: Option<String>,
    /// The whole-disk block device to overwrite, e.g. /dev/sdb or
    /// /dev/mmcblk0 (never a partition).
    #[arg(long, value_name = "DEVICE")]
    device: PathBuf,
    /// Do not ask for confirmation (needed without a terminal).
    #[arg(long)]
    yes: bool,
    /// Write this image instead of the stack's disk image.
    #[arg(long, value_name = "PATH")]
    image: Option<PathBuf>,
}

impl Flash {
    pub fn run(self) -> Result<()> {
        let image = self.image_path()?;
        let image_len = std::fs::metadata(&image)
            .with_context(|| format!("reading the disk image {}", image.display()))?
            .len();
        if image_len == 0 {
            bail!("the disk image {} is empty", image.display());
        }
        let target = System::real().inspect(&self.device)?;
        let validated = check(&target, image_len)?;
        let stdin = std::io::stdin();
        confirm(
            &validated,
            &image,
            image_len,
            self.yes,
            stdin.is_terminal(),
            &mut stdin.lock(),
            &mut std::io::stderr(),
        )?;
        let report = write_and_verify(&image, &validated, true)?;
        println!(
            "wrote {} to {} in {:.1}s and read it back: sha256 {} matches",
            human_bytes(report.bytes),
            validated.path.display(),
            report.seconds,
            report.sha256
        );
        if let Err(e) = reread_partitions(&validated) {
            println!(
                "note: the kernel did not re-read the new partition table ({e}); \
                 re-insert the card to see its boot partition"
            );
        }
        Ok(())
    }

    /// `--image` if given, else the stack manifest's disk image.
    fn image_path(&self) -> Result<PathBuf> {
        if let Some(image) = &self.image {
            return Ok(image.clone());
        }
        let Some(stack) = &self.stack else {
            bail!("nothing to flash: pass --stack STACK (its built disk image) or --image PATH");
        };
        let manifest_path = crate::cloister_dir().join(stack).join("manifest.json");
        let manifest = Manifest::load(&manifest_path)?;
        image_from_manifest(&manifest)
    }
}

/// The disk image a manifest lists, or why there is none.
pub fn image_from_manifest(manifest: &Manifest) -> Result<PathBuf> {
    match manifest.output(DISK_IMAGE_OUTPUT) {
        Ok(path) => Ok(path.to_path_buf()),
        Err(_) => bail!(
            "stack {} has no disk image (its manifest lists no output {DISK_IMAGE_OUTPUT:?}); \
             flash a board stack that builds one, or pass --image PATH",
            manifest.stack
        ),
    }
}

/// What a device path turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// Nothing at that path.
    Missing,
    /// A block device with its device number.
    Block { major: u32, minor: u32 },
    /// Anything else: "a regular file", "a directory", "a character device".
    Other(&'static str),
}

/// A mount of the device or of one of its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `/dev/sdb1` (or `7:0` when the source names no device node).
    pub source: String,
    pub mount_point: String,
}

/// Everything the checks need to know about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The path as the user gave it.
    pub given: PathBuf,
    /// The path with symlinks resolved (`/dev/disk/by-id/...` -> `/dev/sdb`).
    pub path: PathBuf,
    pub kind: NodeKind,
    /// The kernel's name for it (`sdb`), from sysfs.
    pub name: Option<String>,
    /// The sysfs directory the facts below were read from.
    pub sysfs_dir: Option<PathBuf>,
    /// `Some(parent)` when the path is a partition of disk `parent`.
    pub partition_of: Option<String>,
    /// sysfs `removable`; None when sysfs does not say.
    pub removable: Option<bool>,
    /// An SD card (sysfs `device/type` = SD): card readers built into
    /// laptops report their cards as not removable.
    pub sd_card: bool,
    /// Size in bytes; None when neither the ioctl nor sysfs gave one.
    pub size: Option<u64>,
    /// Mounts of the device or any of its partitions.
    pub mounts: Vec<Mount>,
    /// Swap areas on the device or its partitions.
    pub swaps: Vec<String>,
    /// Devices stacked on it (device-mapper, RAID): sysfs `holders/`.
    pub holders: Vec<String>,
    /// Vendor and model, for the confirmation prompt.
    pub model: Option<String>,
}

/// Why a device is not flashed. Each message names the device and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Missing {
        device: String,
    },
    NotBlockDevice {
        device: String,
        what: &'static str,
    },
    Partition {
        device: String,
        disk: String,
    },
    UnknownRemovable {
        device: String,
        looked_at: String,
    },
    NotRemovable {
        device: String,
        looked_at: String,
    },
    Mounted {
        device: String,
        mounts: Vec<Mount>,
    },
    Swap {
        device: String,
        swaps: Vec<String>,
    },
    Held {
        device: String,
        holders: Vec<String>,
    },
    UnknownSize {
        device: String,
    },
    TooSmall {
        device: String,
        device_size: u64,
        image_size: u64,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Missing { device } => {
                write!(f, "refusing to flash {device}: no such device")
            }
            Refusal::NotBlockDevice { device, what } => write!(
                f,
                "refusing to flash {device}: it is {what}, not a block device \
                 (give the card's device node, e.g. /dev/sdb or /dev/mmcblk0)"
            ),
            Refusal::Partition { device, disk } => write!(
                f,
                "refusing to flash {device}: it is a partition of /dev/{disk}; \
                 the image holds its own partition table, flash the whole disk /dev/{disk}"
            ),
            Refusal::UnknownRemovable { device, looked_at } => write!(
                f,
                "refusing to flash {device}: cannot tell whether it is removable \
                 ({looked_at} is missing)"
            ),
            Refusal::NotRemovable { device, looked_at } => write!(
                f,
                "refusing to flash {device}: it is not a removable device \
                 ({looked_at} = 0); cargo xtask flash only writes SD cards and USB disks"
            ),
            Refusal::Mounted { device, mounts } => {
                let list: Vec<String> = mounts
                    .iter()
                    .map(|m| format!("{} on {}", m.source, m.mount_point))
                    .collect();
                let umount: Vec<&str> = mounts.iter().map(|m| m.mount_point.as_str()).collect();
                write!(
                    f,
                    "refusing to flash {device}: it is mounted ({}); unmount first: umount {}",
                    list.join(", "),
                    umount.join(" ")
                )
            }
            Refusal::Swap { device, swaps } => write!(
                f,
                "refusing to flash {device}: it is in use as swap ({}); swapoff first",
                swaps.join(", ")
            ),
            Refusal::Held { device, holders } => write!(
                f,
                "refusing to flash {device}: it is in use by {} (device-mapper, LVM or RAID)",
                holders.join(", ")
            ),
            Refusal::UnknownSize { device } => write!(
                f,
                "refusing to flash {device}: cannot read its size (BLKGETSIZE64 and sysfs `size` both failed)"
            ),
            Refusal::TooSmall {
                device,
                device_size,
                image_size,
            } => write!(
                f,
                "refusing to flash {device}: it holds {device_size} bytes ({}) and the image needs \
                 {image_size} bytes ({})",
                human_bytes(*device_size),
                human_bytes(*image_size)
            ),
        }
    }
}

impl std::error::Error for Refusal {}

/// A target that passed every check: the only thing [`write_and_verify`]
/// accepts.
#[derive(Debug, Clone)]
pub struct Validated {
    path: PathBuf,
    /// For the prompt: `sdb`.
    name: String,
    /// For the prompt: "SanDisk Ultra, 29.7 GiB, removable".
    description: String,
    is_block: bool,
}

impl Validated {
    /// A regular file standing in for a device, for tests of the write and
    /// verify path: an explicit override of every check.
    #[cfg(test)]
    pub fn assume_for_test(path: &Path) -> Validated {
        Validated {
            path: path.to_path_buf(),
            name: path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            description: "test file".into(),
            is_block: false,
        }
    }
}

/// Decides whether `target` may receive an image of `image_size` bytes.
pub fn check(target: &Target, image_size: u64) -> Result<Validated, Refusal> {
    let device = target.given.display().to_string();
    let device = if target.path != target.given {
        format!("{device} ({})", target.path.display())
    } else {
        device
    };
    match target.kind {
        NodeKind::Missing => return Err(Refusal::Missing { device }),
        NodeKind::Other(what) => return Err(Refusal::NotBlockDevice { device, what }),
        NodeKind::Block { .. } => {}
    }
    if let Some(disk) = &target.partition_of {
        return Err(Refusal::Partition {
            device,
            disk: disk.clone(),
        });
    }
    let looked_at = target.sysfs_dir.as_ref().map_or_else(
        || "/sys/dev/block/<major>:<minor>/removable".to_owned(),
        |d| d.join("removable").display().to_string(),
    );
    match target.removable {
        None if !target.sd_card => return Err(Refusal::UnknownRemovable { device, looked_at }),
        Some(false) if !target.sd_card => return Err(Refusal::NotRemovable { device, looked_at }),
        _ => {}
    }
    if !target.mounts.is_empty() {
        return Err(Refusal::Mounted {
            device,
            mounts: target.mounts.clone(),
        });
    }
    if !target.swaps.is_empty() {
        return Err(Refusal::Swap {
            device,
            swaps: target.swaps.clone(),
        });
    }
    if !target.holders.is_empty() {
        return Err(Refusal::Held {
            device,
            holders: target.holders.clone(),
        });
    }
    let Some(size) = target.size else {
        return Err(Refusal::UnknownSize { device });
    };
    if size < image_size {
        return Err(Refusal::TooSmall {
            device,
            device_size: size,
            image_size,
        });
    }
    let name = target.name.clone().unwrap_or_else(|| {
        target
            .path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    });
    let mut description = Vec::new();
    if let Some(model) = &target.model {
        description.push(model.clone());
    }
    description.push(human_bytes(size));
    description.push(if target.sd_card && target.removable != Some(true) {
        "SD card".to_owned()
    } else {
        "removable".to_owned()
    });
    Ok(Validated {
        path: target.path.clone(),
        name,
        description: description.join(", "),
        is_block: true,
    })
}

/// Where device facts come from: the running system, or a fake tree.
#[derive(Debug, Clone)]
pub struct System {
    /// `/sys`.
    pub sysfs: PathBuf,
    /// `/proc/self/mountinfo`: every mount with its source and, unlike
    /// `/proc/self/mounts`, its major:minor (which catches mounts through
    /// `/dev/disk/by-*` or device-mapper names).
    pub mountinfo: PathBuf,
    /// `/proc/swaps`.
    pub swaps: PathBuf,
}

impl System {
    pub fn real() -> System {
        System {
            sysfs: "/sys".into(),
            mountinfo: "/proc/self/mountinfo".into(),
            swaps: "/proc/swaps".into(),
        }
    }

    /// Gathers what the checks need about `given`.
    pub fn inspect(&self, given: &Path) -> Result<Target> {
        let mut target = Target {
            given: given.to_path_buf(),
            path: given.to_path_buf(),
            kind: NodeKind::Missing,
            name: None,
            sysfs_dir: None,
            partition_of: None,
            removable: None,
            sd_card: false,
            size: None,
            mounts: Vec::new(),
            swaps: Vec::new(),
            holders: Vec::new(),
            model: None,
        };
        let Ok(path) = std::fs::canonicalize(given) else {
            return Ok(target);
        };
        target.path = path;
        let meta = std::fs::metadata(&target.path)
            .with_context(|| format!("reading {}", target.path.display()))?;
        let ft = meta.file_type();
        if !ft.is_block_device() {
            target.kind = NodeKind::Other(if ft.is_file() {
                "a regular file"
            } else if ft.is_dir() {
                "a directory"
            } else if ft.is_char_device() {
                "a character device"
            } else {
                "not a device node"
            });
            return Ok(target);
        }
        let (major, minor) = dev_numbers(meta.rdev());
        target.kind = NodeKind::Block { major, minor };

        let link = self.sysfs.join(format!("dev/block/{major}:{minor}"));
        let dir = std::fs::canonicalize(&link).unwrap_or(link);
        let name = read_trimmed(&dir.join("uevent"))
            .and_then(|u| {
                u.lines()
                    .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_owned))
            })
            .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()));
        if dir.join("partition").is_file() {
            target.partition_of = dir
                .parent()
                .and_then(Path::file_name)
                .map(|n| n.to_string_lossy().into_owned());
        }
        target.removable = read_trimmed(&dir.join("removable")).map(|v| v != "0");
        target.sd_card = read_trimmed(&dir.join("device/type")).as_deref() == Some("SD");
        target.model = [
            read_trimmed(&dir.join("device/vendor")),
            read_trimmed(&dir.join("device/model")),
        ]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .reduce(|a, b| format!("{a} {b}"));
        target.size = blkgetsize64(&target.path).or_else(|| {
            read_trimmed(&dir.join("size"))
                .and_then(|s| s.parse::<u64>().ok())
                .map(|sectors| sectors * 512)
        });

        // The device and its partitions: name and major:minor of each.
        let mut nodes = vec![(name.clone().unwrap_or_default(), format!("{major}:{minor}"))];
        let mut holders = list_dir(&dir.join("holders"));
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let part = entry.path();
            if part.join("partition").is_file() {
                if let Some(dev) = read_trimmed(&part.join("dev")) {
                    nodes.push((entry.file_name().to_string_lossy().into_owned(), dev));
                }
                holders.extend(list_dir(&part.join("holders")));
            }
        }
        target.holders = holders;
        let mountinfo = std::fs::read_to_string(&self.mountinfo)
            .with_context(|| format!("reading {}", self.mountinfo.display()))?;
        target.mounts = mounts_of(&mountinfo, &nodes);
        let swaps = std::fs::read_to_string(&self.swaps).unwrap_or_default();
        target.swaps = swaps_of(&swaps, &nodes);
        target.name = name;
        target.sysfs_dir = Some(dir);
        Ok(target)
    }
}

/// Splits a `st_rdev` into major and minor (glibc's encoding).
fn dev_numbers(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0x0000_0fff);
    let minor = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0x0000_00ff);
    (
        u32::try_from(major).unwrap_or(u32::MAX),
        u32::try_from(minor).unwrap_or(u32::MAX),
    )
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Mounts in a `/proc/self/mountinfo` text whose major:minor or source
/// matches one of `nodes` (kernel name, "major:minor").
pub fn mounts_of(mountinfo: &str, nodes: &[(String, String)]) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        // id parent major:minor root mount-point options [optional...] - fstype source super-options
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(dev), Some(mount_point)) = (fields.get(2), fields.get(4)) else {
            continue;
        };
        let source = fields
            .iter()
            .position(|f| *f == "-")
            .and_then(|i| fields.get(i + 2))
            .copied()
            .unwrap_or("");
        let by_number = nodes.iter().find(|(_, d)| d == dev);
        let by_source = nodes
            .iter()
            .find(|(n, _)| !n.is_empty() && source == format!("/dev/{n}"));
        if let Some((name, _)) = by_source.or(by_number) {
            out.push(Mount {
                source: if name.is_empty() {
                    (*dev).to_owned()
                } else {
                    format!("/dev/{name}")
                },
                mount_point: unescape_mount(mount_point),
            });
        }
    }
    out
}

/// Swap areas in a `/proc/swaps` text on one of `nodes`.
pub fn swaps_of(swaps: &str, nodes: &[(String, String)]) -> Vec<String> {
    swaps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|file| {
            nodes
                .iter()
                .any(|(n, _)| !n.is_empty() && *file == format!("/dev/{n}"))
        })
        .map(str::to_owned)
        .collect()
}

/// Mount points escape space, tab, newline and backslash as `\ooo`.
fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The size of a block device from the BLKGETSIZE64 ioctl.
fn blkgetsize64(path: &Path) -> Option<u64> {
    // _IOR(0x12, 114, size_t): the same value on every 64-bit Linux.
    const BLKGETSIZE64: libc::Ioctl = 0x8008_1272;
    let file = File::open(path).ok()?;
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points
    // at a live, writable u64; the fd is open for the whole call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    (rc == 0).then_some(size)
}

/// Asks on the terminal before anything is written.
pub fn confirm(
    target: &Validated,
    image: &Path,
    image_len: u64,
    yes: bool,
    interactive: bool,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !interactive {
        bail!(
            "refusing to flash {} without confirmation: standard input is not a terminal; \
             pass --yes to confirm non-interactively",
            target.path.display()
        );
    }
    writeln!(
        out,
        "About to overwrite {} ({}) with {} ({}).\n\
         Everything on {} is lost. Type the device name ({}) to continue:",
        target.path.display(),
        target.description,
        image.display(),
        human_bytes(image_len),
        target.name,
        target.name
    )?;
    out.flush()?;
    let mut answer = String::new();
    input.read_line(&mut answer)?;
    let answer = answer.trim();
    if answer == target.name || Path::new(answer) == target.path {
        Ok(())
    } else {
        bail!(
            "not flashing {}: the answer {answer:?} is not {:?}",
            target.path.display(),
            target.name
        )
    }
}

/// What a flash did.
#[derive(Debug, Clone, PartialEq)]
pub struct FlashReport {
    pub bytes: u64,
    /// Of the image, which the read-back matched.
    pub sha256: String,
    pub seconds: f64,
}

/// Writes `image` to the start of `target` in chunks, fsyncs, drops the
/// cached pages and reads the bytes back, comparing chunk by chunk and by
/// sha256.
pub fn write_and_verify(image: &Path, target: &Validated, progress: bool) -> Result<FlashReport> {
    let started = Instant::now();
    let mut src = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let len = src.metadata()?.len();
    let dst_path = &target.path;
    let mut options = OpenOptions::new();
    options.write(true);
    if target.is_block {
        // On a block device O_EXCL fails with EBUSY if anything holds it
        // (a mount, a partition in use): the kernel's own last check.
        options.custom_flags(libc::O_EXCL);
    }
    let mut dst = options
        .open(dst_path)
        .with_context(|| format!("opening {} for writing", dst_path.display()))?;

    let bar = bytes_bar(len, "write", progress);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut written: u64 = 0;
    loop {
        let n = read_full(&mut src, &mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])
            .with_context(|| format!("writing {} at byte offset {written}", dst_path.display()))?;
        written += n as u64;
        bar.set_position(written);
    }
    if written != len {
        bail!(
            "{} changed while it was written ({written} of {len} bytes)",
            image.display()
        );
    }
    bar.set_message("fsync");
    dst.sync_all()
        .with_context(|| format!("fsync of {}", dst_path.display()))?;
    bar.finish_and_clear();
    drop_cache(&dst, target.is_block);
    drop(dst);
    let sha256 = hex(&hasher.finalize());

    // Read back what the device holds now and compare it with the image.
    let bar = bytes_bar(len, "verify", progress);
    src.seek(SeekFrom::Start(0))?;
    let back = File::open(dst_path)
        .with_context(|| format!("opening {} to read it back", dst_path.display()))?;
    let back_sha = verify(&mut src, back, len, dst_path, &bar)?;
    bar.finish_and_clear();
    if back_sha != sha256 {
        bail!(
            "verification of {} failed: read back sha256 {back_sha}, wrote {sha256}",
            dst_path.display()
        );
    }
    Ok(FlashReport {
        bytes: len,
        sha256,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Reads `len` bytes from `image` and from `back`, comparing chunk by chunk
/// (to name the first differing offset); returns the sha256 of `back`.
pub fn verify(
    image: &mut impl Read,
    mut back: impl Read,
    len: u64,
    device: &Path,
    bar: &ProgressBar,
) -> Result<String> {
    let mut want_buf = vec![0u8; CHUNK];
    let mut got_buf = vec![0u8; CHUNK];
    let mut hasher = Sha256::new();
    let mut offset: u64 = 0;
    while offset < len {
        let want = usize::try_from((len - offset).min(CHUNK as u64))?;
        if read_full(image, &mut want_buf[..want])? < want {
            bail!("the image ended early while reading it back for comparison");
        }
        let got = read_full(&mut back, &mut got_buf[..want])?;
        if got < want {
            bail!(
                "verification of {} failed: it ended at byte {} of {len}",
                device.display(),
                offset + got as u64
            );
        }
        if let Some(i) = want_buf[..want]
            .iter()
            .zip(&got_buf[..want])
            .position(|(a, b)| a != b)
        {
            bail!(
                "verification of {} failed: byte offset {} reads {:#04x}, the image has {:#04x}",
                device.display(),
                offset + i as u64,
                got_buf[i],
                want_buf[i]
            );
        }
        hasher.update(&got_buf[..want]);
        offset += want as u64;
        bar.set_position(offset);
    }
    Ok(hex(&hasher.finalize()))
}

/// Asks the kernel to re-read the partition table just written
/// (BLKRRPART), so the image's boot partition shows up without
/// re-inserting the card.
pub fn reread_partitions(target: &Validated) -> std::io::Result<()> {
    if !target.is_block {
        return Ok(());
    }
    // BLKRRPART = _IO(0x12, 95).
    const BLKRRPART: libc::Ioctl = 0x125f;
    let file = File::open(&target.path)?;
    // SAFETY: BLKRRPART takes no argument; the fd is open for the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKRRPART, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Asks the kernel to forget the cached pages, so the read-back comes from
/// the medium rather than from memory (best effort).
fn drop_cache(file: &File, is_block: bool) {
    let fd = file.as_raw_fd();
    if is_block {
        // BLKFLSBUF = _IO(0x12, 97): flush and invalidate the buffer cache.
        const BLKFLSBUF: libc::Ioctl = 0x1261;
        // SAFETY: BLKFLSBUF takes no argument; the fd is open.
        let _ = unsafe { libc::ioctl(fd, BLKFLSBUF, 0) };
    }
    // SAFETY: advisory call on an open fd; offsets 0/0 mean the whole file.
    let _ = unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// Reads until `buf` is full or end of file; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(n)
}

fn bytes_bar(len: u64, what: &str, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:7} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(what.to_owned());
    bar
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `1073741824` -> "1.0 GiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024 * 1024 && unit < UNITS.len() - 2 {
        value /= 1024;
        unit += 1;
    }
    if unit == 0 && n < 1024 {
        return format!("{n} bytes");
    }
    // One decimal from integer arithmetic (no float casts).
    let tenths = value * 10 / 1024;
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit + 1])
}

#[cfg(test)]
mod tests;
