//! The board disk image `cloister-<stack>.img`: a partitioned disk with one
//! FAT boot partition that U-Boot's distro boot finds and boots.
//!
//! Layout, in 512-byte sectors:
//!
//! ```text
//! LBA 0              MBR: protective (GPT) or the DOS table (MBR)
//! LBA 1..=33         GPT header and partition entries (GPT only)
//! LBA 2048           partition 1, `disk.boot-size-mib` MiB, FAT (label CLOISTER),
//!                    bootable (GPT legacy-BIOS-bootable attribute / MBR active flag)
//! last 1 MiB         GPT backup entries and header (zeros with MBR)
//! ```
//!
//! The boot partition holds `cloister.img`, `boot.scr` (the U-Boot script
//! `boot.cmd` wrapped by `mkimage`), `boot.cmd` itself for humans, `uEnv.txt`
//! (`bootargs=<kernel command line>`, imported by the script) and the board
//! DTB when the stack names one. Everything is written in Rust through the
//! `gpt` and `fatfs` crates: no loop devices, no mounts, no root. GUIDs, the
//! volume id and FAT timestamps (1980-01-01) are fixed, so the same inputs
//! give the same bytes.
//!
//! The kernel command line lives in `uEnv.txt` so that a boot with other
//! bootargs (an e2e scenario, `run --append`) only rewrites that small file
//! in a sparse copy of the disk ([`per_boot_copy`]), and so that a board owner
//! can change it from any OS by editing a text file on the SD card.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};

use crate::cache::{short, KeyBuilder, Stamp};
use crate::stack::{PartitionTable, Stack};
use crate::stage::{Outcome, Stage};

/// Logical sector size of the disk image.
pub const SECTOR: u64 = 512;
/// First sector of the boot partition (1 MiB: the usual alignment).
pub const BOOT_START_LBA: u64 = 2048;
/// Space after the boot partition (holds the GPT backup).
const TAIL_BYTES: u64 = 1 << 20;
/// FAT cluster size: every small file (script, uEnv.txt) fits one cluster.
const CLUSTER_BYTES: u32 = 4096;
/// FAT volume label.
pub const VOLUME_LABEL: &[u8; 11] = b"CLOISTER   ";
/// FAT volume id (serial number), fixed for reproducible images.
const VOLUME_ID: u32 = 0x434c_5354;

/// The hyp image with the host kernel and initramfs.
pub const BOOT_IMAGE: &str = "cloister.img";
/// The U-Boot script distro boot runs (`boot.cmd` through mkimage).
pub const BOOT_SCRIPT: &str = "boot.scr";
/// The boot script's source, for humans.
pub const BOOT_SCRIPT_SOURCE: &str = "boot.cmd";
/// `bootargs=<kernel command line>`, imported by the boot script.
pub const BOOT_ENV: &str = "uEnv.txt";

/// A file to put into the boot partition.
#[derive(Debug, Clone)]
pub struct BootFile {
    /// Path inside the FAT, `/`-separated, no leading slash.
    pub name: String,
    pub data: Vec<u8>,
}

impl BootFile {
    pub fn new(name: &str, data: impl Into<Vec<u8>>) -> Self {
        BootFile {
            name: name.to_owned(),
            data: data.into(),
        }
    }
}

/// How to lay out a disk image.
#[derive(Debug, Clone)]
pub struct Layout {
    pub table: PartitionTable,
    pub boot_size_mib: u32,
    /// Seed for the disk and partition GUIDs (the stack name).
    pub id: String,
}

impl Layout {
    fn boot_bytes(&self) -> u64 {
        u64::from(self.boot_size_mib) << 20
    }

    /// Size of the whole image in bytes.
    pub fn total_bytes(&self) -> u64 {
        BOOT_START_LBA * SECTOR + self.boot_bytes() + TAIL_BYTES
    }
}

/// Where the boot partition is, in bytes from the start of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootPartition {
    pub table: PartitionTable,
    pub start: u64,
    pub len: u64,
}

/// What [`write`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub fat_type: String,
    pub total_bytes: u64,
    pub boot: BootPartition,
}

/// The time stamped on every file: 1980-01-01 00:00, the first valid DOS
/// date (fatfs without a clock would write date 0, which has month 0).
#[derive(Debug)]
struct FixedTime;

static FIXED_TIME: FixedTime = FixedTime;

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        fatfs::Date {
            year: 1980,
            month: 1,
            day: 1,
        }
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime {
            date: self.get_current_date(),
            time: fatfs::Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

/// FAT options for every file system this module opens.
fn fs_options() -> fatfs::FsOptions {
    fatfs::FsOptions::new().time_provider(&FIXED_TIME)
}

/// Writes a disk image holding `files` to `out` (through a temporary file,
/// so an interrupted build never leaves a half-written image behind).
pub fn write(out: &Path, layout: &Layout, files: &[BootFile]) -> Result<Summary> {
    let tmp = out.with_extension("img.partial");
    let summary = write_to(&tmp, layout, files)
        .with_context(|| format!("writing disk image {}", out.display()));
    if summary.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    let summary = summary?;
    std::fs::rename(&tmp, out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
    Ok(summary)
}

fn write_to(path: &Path, layout: &Layout, files: &[BootFile]) -> Result<Summary> {
    let total = layout.total_bytes();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    // A sparse file of the final size: only what is written takes space.
    file.set_len(total)?;
    let boot = BootPartition {
        table: layout.table,
        start: BOOT_START_LBA * SECTOR,
        len: layout.boot_bytes(),
    };
    match layout.table {
        PartitionTable::Gpt => write_gpt(&file, layout, total)?,
        PartitionTable::Mbr => write_mbr(&file, layout)?,
    }
    let mut part = PartitionIo::new(file.try_clone()?, boot.start, boot.len);
    fatfs::format_volume(
        &mut part,
        fatfs::FormatVolumeOptions::new()
            .bytes_per_cluster(CLUSTER_BYTES)
            .volume_label(*VOLUME_LABEL)
            .volume_id(VOLUME_ID),
    )
    .context("formatting the boot partition (FAT)")?;
    set_hidden_sectors(&mut part, BOOT_START_LBA)?;
    part.seek(SeekFrom::Start(0))?;
    let fs =
        fatfs::FileSystem::new(part, fs_options()).context("opening the new FAT boot partition")?;
    let fat_type = format!("{:?}", fs.fat_type());
    let stats = fs.stats()?;
    let cluster = u64::from(stats.cluster_size());
    let needed: u64 = files
        .iter()
        .map(|f| (f.data.len() as u64).div_ceil(cluster).max(1) + 1)
        .sum();
    let free = u64::from(stats.free_clusters());
    if needed > free {
        let listing: Vec<String> = files
            .iter()
            .map(|f| format!("{} ({} KiB)", f.name, f.data.len() / 1024))
            .collect();
        bail!(
            "the {} MiB boot partition has room for {} KiB, its files need {} KiB ({}); \
             raise `disk.boot-size-mib`",
            layout.boot_size_mib,
            free * cluster / 1024,
            needed * cluster / 1024,
            listing.join(", ")
        );
    }
    put_files(&fs, files)?;
    fs.unmount().context("flushing the FAT boot partition")?;
    file.sync_all()?;
    Ok(Summary {
        fat_type,
        total_bytes: total,
        boot,
    })
}

/// Sets the BPB's "hidden sectors" (the partition's first LBA), which
/// fatfs leaves at 0, in the boot sector and (FAT32) in its backup copy.
fn set_hidden_sectors<T: Read + Write + Seek>(part: &mut T, lba: u64) -> Result<()> {
    let mut boot = [0u8; 512];
    part.seek(SeekFrom::Start(0))?;
    part.read_exact(&mut boot)?;
    let bytes_per_sector = u64::from(u16::from_le_bytes([boot[11], boot[12]]));
    let is_fat32 = boot[22..24] == [0, 0];
    let backup = u64::from(u16::from_le_bytes([boot[50], boot[51]]));
    let mut copies = vec![0];
    if is_fat32 && backup != 0 {
        copies.push(backup * bytes_per_sector);
    }
    let hidden = u32::try_from(lba)?.to_le_bytes();
    for at in copies {
        part.seek(SeekFrom::Start(at + 28))?;
        part.write_all(&hidden)?;
    }
    Ok(())
}

/// A GUID from the stack name and a purpose, RFC 4122 version-4 shaped.
fn stable_guid(id: &str, what: &str) -> uuid::Uuid {
    let hash = Sha256::digest(format!("cloister-disk\0{id}\0{what}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

fn write_gpt(file: &File, layout: &Layout, total: u64) -> Result<()> {
    let sectors = total / SECTOR;
    let mut device = file.try_clone()?;
    gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(sectors - 1).unwrap_or(u32::MAX))
        .overwrite_lba0(&mut device)
        .context("writing the protective MBR")?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(device, Some(stable_guid(&layout.id, "disk")))
        .context("creating the GPT")?;
    let partition = gpt::partition::Partition {
        part_type_guid: gpt::partition_types::BASIC,
        part_guid: stable_guid(&layout.id, "boot"),
        first_lba: BOOT_START_LBA,
        last_lba: BOOT_START_LBA + layout.boot_bytes() / SECTOR - 1,
        flags: gpt::partition::PartitionAttributes::BOOTABLE.bits(),
        name: "boot".into(),
    };
    disk.update_partitions(std::iter::once((1, partition)).collect())
        .context("adding the boot partition to the GPT")?;
    disk.write().context("writing the GPT")?;
    Ok(())
}

/// DOS partition type of a FAT partition addressed by LBA (`0x0c`: FAT32
/// LBA). U-Boot and Linux read any FAT type behind it; boot ROMs that look
/// at the type at all want this one.
const MBR_FAT_LBA: u8 = 0x0c;

fn write_mbr(file: &File, layout: &Layout) -> Result<()> {
    let sectors = layout.boot_bytes() / SECTOR;
    let end = BOOT_START_LBA + sectors - 1;
    let (start_head, start_sector, start_track) = chs(BOOT_START_LBA);
    let (end_head, end_sector, end_track) = chs(end);
    let record = gpt::mbr::PartRecord {
        boot_indicator: 0x80,
        start_head,
        start_sector,
        start_track,
        os_type: MBR_FAT_LBA,
        end_head,
        end_sector,
        end_track,
        lb_start: u32::try_from(BOOT_START_LBA)?,
        lb_size: u32::try_from(sectors).context("boot partition too large for an MBR")?,
    };
    // gpt's MBR type writes any four records; slot 0 starts out protective.
    let mut mbr = gpt::mbr::ProtectiveMBR::new();
    mbr.set_partition(0, record);
    let sig = Sha256::digest(format!("cloister-disk\0{}\0mbr", layout.id).as_bytes());
    mbr.set_disk_signature([sig[0], sig[1], sig[2], sig[3]]);
    let mut device = file.try_clone()?;
    mbr.overwrite_lba0(&mut device).context("writing the MBR")?;
    Ok(())
}

/// CHS address (head, sector | cylinder high bits, cylinder low bits) of an
/// LBA with the usual 255 heads and 63 sectors per track; past cylinder
/// 1023 the conventional "use LBA" value 1023/254/63.
fn chs(lba: u64) -> (u8, u8, u8) {
    const HEADS: u64 = 255;
    const SECTORS: u64 = 63;
    let cylinder = lba / (HEADS * SECTORS);
    if cylinder > 1023 {
        return (254, 0xff, 0xff);
    }
    let head = (lba / SECTORS) % HEADS;
    let sector = lba % SECTORS + 1;
    let [cyl_lo, cyl_hi, ..] = cylinder.to_le_bytes();
    let [head, ..] = head.to_le_bytes();
    let [sector, ..] = sector.to_le_bytes();
    (head, sector | (cyl_hi << 6), cyl_lo)
}

/// Reads the partition table of `disk` and returns its boot partition
/// (GPT partition 1, or the active / first MBR partition).
pub fn boot_partition(disk: &Path) -> Result<BootPartition> {
    let mut file = File::open(disk).with_context(|| format!("opening {}", disk.display()))?;
    let len = file.metadata()?.len();
    let mut lba0 = [0u8; 512];
    file.read_exact(&mut lba0)
        .with_context(|| format!("{}: shorter than one sector", disk.display()))?;
    let mbr = gpt::mbr::ProtectiveMBR::from_bytes(&lba0, gpt::disk::LogicalBlockSize::Lb512)
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: expected an MBR (0x55aa at byte 510): {e}",
                disk.display()
            )
        })?;
    let records: Vec<gpt::mbr::PartRecord> = (0..4).filter_map(|i| mbr.partition(i)).collect();
    let found = if records.iter().any(|r| r.os_type == 0xee) {
        let gpt = gpt::GptConfig::new()
            .writable(false)
            .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
            .open_from_device(file)
            .map_err(|e| anyhow::anyhow!("{}: reading the GPT: {e}", disk.display()))?;
        let part = gpt
            .partitions()
            .get(&1)
            .filter(|p| p.is_used())
            .with_context(|| format!("{}: the GPT has no partition 1", disk.display()))?;
        BootPartition {
            table: PartitionTable::Gpt,
            start: part.first_lba * SECTOR,
            len: (part.last_lba + 1 - part.first_lba) * SECTOR,
        }
    } else {
        let record = records
            .iter()
            .find(|r| r.boot_indicator == 0x80 && r.os_type != 0)
            .or_else(|| records.iter().find(|r| r.os_type != 0))
            .with_context(|| format!("{}: the MBR lists no partition", disk.display()))?;
        BootPartition {
            table: PartitionTable::Mbr,
            start: u64::from(record.lb_start) * SECTOR,
            len: u64::from(record.lb_size) * SECTOR,
        }
    };
    ensure!(
        found.start + found.len <= len,
        "{}: the boot partition ends at byte {}, past the end of the {len}-byte image",
        disk.display(),
        found.start + found.len
    );
    Ok(found)
}

/// Opens the FAT in `disk`'s boot partition.
fn open_fat(disk: &Path, writable: bool) -> Result<fatfs::FileSystem<PartitionIo>> {
    let boot = boot_partition(disk)?;
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .open(disk)
        .with_context(|| format!("opening {}", disk.display()))?;
    fatfs::FileSystem::new(PartitionIo::new(file, boot.start, boot.len), fs_options()).with_context(
        || {
            format!(
                "{}: the boot partition at byte {} holds no FAT file system",
                disk.display(),
                boot.start
            )
        },
    )
}

/// Creates (or overwrites) `files` in an open FAT, making directories.
fn put_files<T: fatfs::ReadWriteSeek>(fs: &fatfs::FileSystem<T>, files: &[BootFile]) -> Result<()> {
    for f in files {
        let mut dir = fs.root_dir();
        let mut parts: Vec<&str> = f.name.split('/').collect();
        let leaf = parts.pop().unwrap_or_default();
        ensure!(
            !leaf.is_empty() && parts.iter().all(|p| !p.is_empty()),
            "boot partition file name {:?}: expected a relative path like `a/b.dtb`",
            f.name
        );
        for part in parts {
            dir = dir
                .create_dir(part)
                .with_context(|| format!("creating directory {part} for {}", f.name))?;
        }
        let mut out = dir
            .create_file(leaf)
            .with_context(|| format!("creating {} in the boot partition", f.name))?;
        out.truncate()?;
        out.write_all(&f.data)
            .with_context(|| format!("writing {} into the boot partition", f.name))?;
        out.flush()?;
    }
    Ok(())
}

/// Overwrites (or adds) `files` in the boot partition of an existing image.
pub fn replace_boot_files(disk: &Path, files: &[BootFile]) -> Result<()> {
    let fs = open_fat(disk, true)?;
    put_files(&fs, files).with_context(|| format!("updating {}", disk.display()))?;
    fs.unmount()
        .with_context(|| format!("flushing the boot partition of {}", disk.display()))?;
    Ok(())
}

/// Reads one file from the boot partition.
pub fn read_boot_file(disk: &Path, name: &str) -> Result<Vec<u8>> {
    let fs = open_fat(disk, false)?;
    let mut file = fs
        .root_dir()
        .open_file(name)
        .with_context(|| format!("{}: no {name} in the boot partition", disk.display()))?;
    let mut data = Vec::new();
    file.read_to_end(&mut data)
        .with_context(|| format!("{}: reading {name}", disk.display()))?;
    Ok(data)
}

/// Names and sizes of the files in the boot partition's root, sorted.
pub fn list_boot_files(disk: &Path) -> Result<Vec<(String, u64)>> {
    let fs = open_fat(disk, false)?;
    let mut out = Vec::new();
    for entry in fs.root_dir().iter() {
        let entry =
            entry.with_context(|| format!("{}: reading the root directory", disk.display()))?;
        let name = entry.file_name();
        if name != "." && name != ".." {
            out.push((name, entry.len()));
        }
    }
    out.sort();
    Ok(out)
}

/// The contents of `uEnv.txt` for a kernel command line.
pub fn uenv(bootargs: &str) -> Result<String> {
    ensure!(
        !bootargs.contains(['\n', '\r', '\0']),
        "kernel command line {bootargs:?}: expected one line for {BOOT_ENV} \
         (no newline or NUL)"
    );
    Ok(format!("bootargs={bootargs}\n"))
}

/// The U-Boot boot script (`boot.cmd`). U-Boot's distro boot sets `devtype`,
/// `devnum`, `distro_bootpart` and `prefix` before it runs the script.
/// `dtb` is the board DTB's name in the boot partition; without one the
/// script passes U-Boot's own device tree (`fdtcontroladdr`) through.
pub fn boot_script(dtb: Option<&str>) -> String {
    let part = "${devtype} ${devnum}:${distro_bootpart}";
    let mut s = String::new();
    s.push_str(
        "# Cloister boot script for U-Boot's distro boot, written by\n\
         # `cargo xtask build-image`; boot.scr is this file wrapped by mkimage.\n\
         # The kernel command line is `bootargs=` in uEnv.txt beside it.\n",
    );
    // Distro boot's scripts and current bootstd set `distro_bootpart`;
    // older bootstd (U-Boot's script bootmeth before it learnt to) sets only
    // devtype, devnum and prefix. The boot partition is partition 1.
    s.push_str("test -n \"${distro_bootpart}\" || setenv distro_bootpart 1\n");
    s.push_str(&format!(
        "echo \"cloister: boot script on {part}\"\n\
         if load {part} ${{ramdisk_addr_r}} ${{prefix}}{BOOT_ENV}; then\n\
         \x20 env import -t ${{ramdisk_addr_r}} ${{filesize}} bootargs\n\
         else\n\
         \x20 echo \"cloister: no ${{prefix}}{BOOT_ENV} on {part}, keeping bootargs\"\n\
         fi\n\
         echo \"cloister: bootargs=${{bootargs}}\"\n"
    ));
    let boot = format!(
        "if load {part} ${{kernel_addr_r}} ${{prefix}}{BOOT_IMAGE}; then\n\
         \x20 booti ${{kernel_addr_r}} - ${{cloister_fdt}}\n\
         \x20 echo \"cloister: booti refused ${{prefix}}{BOOT_IMAGE}\"\n\
         else\n\
         \x20 echo \"cloister: cannot read ${{prefix}}{BOOT_IMAGE} from {part}\"\n\
         fi\n"
    );
    match dtb {
        None => {
            s.push_str("setenv cloister_fdt ${fdtcontroladdr}\n");
            s.push_str(&boot);
        }
        Some(dtb) => {
            s.push_str(&format!(
                "if load {part} ${{fdt_addr_r}} ${{prefix}}{dtb}; then\n\
                 \x20 setenv cloister_fdt ${{fdt_addr_r}}\n"
            ));
            for line in boot.lines() {
                s.push_str("  ");
                s.push_str(line);
                s.push('\n');
            }
            s.push_str(&format!(
                "else\n\
                 \x20 echo \"cloister: cannot read ${{prefix}}{dtb} from {part}\"\n\
                 fi\n"
            ));
        }
    }
    s
}

/// `IH_MAGIC` of U-Boot's legacy image header.
const UIMAGE_MAGIC: u32 = 0x2705_1956;
/// `IH_TYPE_SCRIPT`.
const UIMAGE_TYPE_SCRIPT: u8 = 6;
/// `IH_ARCH_ARM64`.
const UIMAGE_ARCH_ARM64: u8 = 22;
/// Size of the legacy image header.
const UIMAGE_HEADER: usize = 64;

/// Runs mkimage to wrap `source` into a U-Boot script image at `out`, with
/// a fixed timestamp, and checks what it wrote.
pub fn mkimage_script(stage: &Stage, source: &Path, out: &Path) -> Result<()> {
    stage.run(
        std::process::Command::new("mkimage")
            .args(["-A", "arm64", "-O", "linux", "-T", "script", "-C", "none"])
            .args(["-n", "cloister boot script", "-d"])
            .arg(source)
            .arg(out)
            // mkimage stamps the header with this instead of the time.
            .env("SOURCE_DATE_EPOCH", "0"),
    )?;
    let script = std::fs::read_to_string(source)?;
    let image = std::fs::read(out)?;
    check_script_image(&image, &script).with_context(|| format!("mkimage wrote {}", out.display()))
}

/// Checks that `image` is a U-Boot legacy script image for arm64 whose one
/// part is `script`.
pub fn check_script_image(image: &[u8], script: &str) -> Result<()> {
    let be32 = |at: usize| -> Result<u32> {
        let b = image.get(at..at + 4).with_context(|| {
            format!("script image: {} bytes, cut before byte {at}", image.len())
        })?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let magic = be32(0)?;
    ensure!(
        magic == UIMAGE_MAGIC,
        "script image: expected magic {UIMAGE_MAGIC:#x}, found {magic:#x}"
    );
    let size = usize::try_from(be32(12)?)?;
    let (arch, kind) = (image.get(29).copied(), image.get(30).copied());
    ensure!(
        arch == Some(UIMAGE_ARCH_ARM64) && kind == Some(UIMAGE_TYPE_SCRIPT),
        "script image: expected arch {UIMAGE_ARCH_ARM64} (arm64) and type \
         {UIMAGE_TYPE_SCRIPT} (script), found {arch:?} and {kind:?}"
    );
    ensure!(
        image.len() == UIMAGE_HEADER + size,
        "script image: header says {size} data bytes, file has {}",
        image.len().saturating_sub(UIMAGE_HEADER)
    );
    // Script data: a zero-terminated list of part lengths, then the parts.
    let first = usize::try_from(be32(UIMAGE_HEADER)?)?;
    let end = be32(UIMAGE_HEADER + 4)?;
    let body = image.get(UIMAGE_HEADER + 8..).unwrap_or_default();
    ensure!(
        end == 0 && first == script.len() && body.get(..first) == Some(script.as_bytes()),
        "script image: expected one part holding the {}-byte script, found a {first}-byte part",
        script.len()
    );
    Ok(())
}

/// Copies `from` to `to` keeping holes (the disk image is mostly zeros):
/// only the data extents are read and written.
pub fn copy_sparse(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::io::AsRawFd;
    let mut src = File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let len = src.metadata()?.len();
    let mut dst = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(to)
        .with_context(|| format!("creating {}", to.display()))?;
    dst.set_len(len)?;
    let fd = src.as_raw_fd();
    let seek = |offset: u64, whence: i32| -> Option<u64> {
        let offset = libc::off_t::try_from(offset).ok()?;
        // SAFETY: lseek on a descriptor this function owns; no memory is touched.
        let r = unsafe { libc::lseek(fd, offset, whence) };
        u64::try_from(r).ok()
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < len {
        // No SEEK_DATA support (or no more data): copy the rest plainly.
        let data = match seek(pos, libc::SEEK_DATA) {
            Some(d) => d,
            None if io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) => break,
            None => pos,
        };
        let hole = seek(data, libc::SEEK_HOLE).unwrap_or(len).min(len);
        src.seek(SeekFrom::Start(data))?;
        dst.seek(SeekFrom::Start(data))?;
        let mut left = hole - data;
        while left > 0 {
            let n = usize::try_from(left.min(buf.len() as u64))?;
            src.read_exact(&mut buf[..n])
                .with_context(|| format!("reading {}", from.display()))?;
            dst.write_all(&buf[..n])
                .with_context(|| format!("writing {}", to.display()))?;
            left -= n as u64;
        }
        pos = hole;
    }
    dst.flush()?;
    Ok(())
}

/// Writes `out`: a sparse copy of `base` whose `uEnv.txt` carries `bootargs`
/// (when given) and whose boot partition also gets `files`.
pub fn per_boot_copy(
    base: &Path,
    out: &Path,
    bootargs: Option<&str>,
    files: &[BootFile],
) -> Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    copy_sparse(base, out)?;
    let mut all = files.to_vec();
    if let Some(args) = bootargs {
        all.push(BootFile::new(BOOT_ENV, uenv(args)?));
    }
    if !all.is_empty() {
        replace_boot_files(out, &all)?;
    }
    Ok(())
}

/// Zeroes every copy of the FAT (the allocation table) in the boot
/// partition: the directory still lists the files, but any file longer than
/// one cluster can no longer be followed.
pub fn zero_fats(disk: &Path) -> Result<()> {
    let boot = boot_partition(disk)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .with_context(|| format!("opening {}", disk.display()))?;
    let mut bpb = [0u8; 512];
    file.seek(SeekFrom::Start(boot.start))?;
    file.read_exact(&mut bpb)?;
    let le16 = |at: usize| u64::from(u16::from_le_bytes([bpb[at], bpb[at + 1]]));
    let bytes_per_sector = le16(11);
    let reserved = le16(14);
    let fats = u64::from(bpb[16]);
    let per_fat = match le16(22) {
        0 => u64::from(u32::from_le_bytes([bpb[36], bpb[37], bpb[38], bpb[39]])),
        n => n,
    };
    ensure!(
        bpb[510..] == [0x55, 0xaa] && bytes_per_sector >= 512 && fats > 0 && per_fat > 0,
        "{}: the boot partition does not start with a FAT boot sector",
        disk.display()
    );
    file.seek(SeekFrom::Start(boot.start + reserved * bytes_per_sector))?;
    let zeros = vec![0u8; usize::try_from(fats * per_fat * bytes_per_sector)?];
    file.write_all(&zeros)?;
    file.sync_all()?;
    Ok(())
}

/// Cuts `disk` `into` bytes after the start of its boot partition.
pub fn truncate_in_boot_partition(disk: &Path, into: u64) -> Result<()> {
    let boot = boot_partition(disk)?;
    ensure!(
        into < boot.len,
        "{}: cannot cut {into} bytes into a {}-byte boot partition",
        disk.display(),
        boot.len
    );
    let file = OpenOptions::new()
        .write(true)
        .open(disk)
        .with_context(|| format!("opening {}", disk.display()))?;
    file.set_len(boot.start + into)?;
    Ok(())
}

/// Bumped when the layout or the writer changes, so cached images are redone.
const FORMAT_VERSION: &str = "3";

/// The `disk-image` build stage: writes `boot.cmd`, `boot.scr` (mkimage) and
/// `cloister-<stack>.img` into `out`; returns the image's and boot.scr's
/// paths. `dtb` is the board DTB for the boot partition (the stack's
/// `disk.dtb`, or the one built for `disk.kernel-dtb`). Cached on
/// everything that goes into the image.
pub fn build_stage(
    stage: &mut Stage,
    stack: &Stack,
    dtb: Option<&Path>,
    out: &Path,
    cloister_img: &Path,
    stamps: &Path,
) -> Result<((PathBuf, PathBuf), Outcome)> {
    let section = &stack.file.disk;
    let image = image_path(out, &stack.name);
    let script_src = out.join(BOOT_SCRIPT_SOURCE);
    let script_img = out.join(BOOT_SCRIPT);
    let dtb_name = dtb
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .map(str::to_owned);
    let script = boot_script(dtb_name.as_deref());
    let env = uenv(&crate::qemu::cmdline(stack, &[]))
        .with_context(|| format!("{}: key `kernel.cmdline`", stack.path.display()))?;
    let layout = Layout {
        table: section.partition_table,
        boot_size_mib: section.boot_size_mib,
        id: stack.name.clone(),
    };
    let mkimage = crate::manifest::tool_version("mkimage");
    let mut key = KeyBuilder::new("disk-image");
    key.add_str("format", FORMAT_VERSION)
        .add_str("table", &format!("{:?}", layout.table))
        .add_str("boot-size-mib", &layout.boot_size_mib.to_string())
        .add_str("id", &layout.id)
        .add_str("script", &script)
        .add_str("uenv", &env)
        .add_str("mkimage", &mkimage)
        .add_file("cloister-img", cloister_img)?;
    if let Some(dtb) = dtb {
        key.add_file("dtb", dtb)?;
    }
    let key = key.finish();
    let stamp = Stamp::new(stamps, "disk-image");
    if stamp.is_fresh(&key, &[&image, &script_img]) {
        return Ok((
            (image, script_img),
            Outcome::Cached(format!("key {}", short(&key))),
        ));
    }
    stage.status(&format!("{BOOT_SCRIPT} ({mkimage})"));
    std::fs::write(&script_src, &script)
        .with_context(|| format!("writing {}", script_src.display()))?;
    mkimage_script(stage, &script_src, &script_img)?;
    let mut files = vec![
        BootFile::new(BOOT_SCRIPT, std::fs::read(&script_img)?),
        BootFile::new(BOOT_SCRIPT_SOURCE, script),
        BootFile::new(BOOT_ENV, env),
    ];
    if let (Some(dtb), Some(name)) = (dtb, &dtb_name) {
        let data = std::fs::read(dtb).with_context(|| format!("reading {}", dtb.display()))?;
        files.push(BootFile::new(name, data));
    }
    // Last, so it is one contiguous run of clusters after the small files.
    let payload = std::fs::read(cloister_img)
        .with_context(|| format!("reading {}", cloister_img.display()))?;
    files.push(BootFile::new(BOOT_IMAGE, payload));
    stage.status(&format!("writing {}", image.display()));
    let summary = write(&image, &layout, &files)?;
    // Read it back the way a bootloader would: through the partition table.
    let payload = files.last().map(|f| f.data.as_slice()).unwrap_or_default();
    ensure!(
        read_boot_file(&image, BOOT_IMAGE)? == payload,
        "{}: {BOOT_IMAGE} reads back different from {}",
        image.display(),
        cloister_img.display()
    );
    let listing: Vec<String> = list_boot_files(&image)?
        .into_iter()
        .map(|(name, len)| format!("{name} {} KiB", len.div_ceil(1024)))
        .collect();
    stamp.record(&key)?;
    Ok((
        (image, script_img),
        Outcome::Built(format!(
            "{}, {} boot partition of {} MiB ({}); {} MiB image",
            match summary.boot.table {
                PartitionTable::Gpt => "GPT",
                PartitionTable::Mbr => "MBR",
            },
            summary.fat_type,
            layout.boot_size_mib,
            listing.join(", "),
            summary.total_bytes >> 20
        )),
    ))
}

/// The stack's disk image path: `target/cloister/<stack>/cloister-<stack>.img`.
pub fn image_path(stack_dir: &Path, stack: &str) -> PathBuf {
    stack_dir.join(format!("cloister-{stack}.img"))
}

/// Read, write and seek within one partition of a disk image file.
#[derive(Debug)]
pub struct PartitionIo {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl PartitionIo {
    pub fn new(file: File, start: u64, len: u64) -> Self {
        PartitionIo {
            file,
            start,
            len,
            pos: 0,
        }
    }

    /// How many of `want` bytes fit before the partition's end.
    fn room(&self, want: usize) -> usize {
        let left = self.len.saturating_sub(self.pos);
        usize::try_from(left).map_or(want, |l| l.min(want))
    }
}

impl Read for PartitionIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.room(buf.len());
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let got = self.file.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for PartitionIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.room(buf.len());
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let put = self.file.write(&buf[..n])?;
        self.pos += put as u64;
        Ok(put)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for PartitionIo {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(p) if p <= self.len => {
                self.pos = p;
                Ok(p)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the partition",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(table: PartitionTable, mib: u32) -> Layout {
        Layout {
            table,
            boot_size_mib: mib,
            id: "test-stack".into(),
        }
    }

    /// A cloister.img stand-in that spans many clusters, with varied bytes.
    fn big(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| ((i * 7 + i / 4096) % 256).to_le_bytes()[0])
            .collect()
    }

    fn files() -> Vec<BootFile> {
        vec![
            BootFile::new(BOOT_SCRIPT_SOURCE, boot_script(None)),
            BootFile::new(BOOT_ENV, uenv("console=ttyAMA0 earlycon").unwrap()),
            BootFile::new(BOOT_IMAGE, big(3 << 20)),
        ]
    }

    #[test]
    fn gpt_image_has_one_bootable_fat_partition_holding_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.img");
        let summary = write(&img, &layout(PartitionTable::Gpt, 16), &files()).unwrap();
        assert_eq!(summary.total_bytes, (1 + 16 + 1) << 20);
        assert_eq!(std::fs::metadata(&img).unwrap().len(), summary.total_bytes);
        assert_eq!(summary.fat_type, "Fat16");
        assert!(!dir.path().join("d.img.partial").exists());

        // Both GPT headers are valid and describe one partition.
        let disk = gpt::GptConfig::new()
            .only_valid_headers(true)
            .open(&img)
            .unwrap();
        let parts = disk.partitions();
        assert_eq!(parts.keys().copied().collect::<Vec<_>>(), [1]);
        let p = &parts[&1];
        assert_eq!(p.first_lba, 2048);
        assert_eq!(p.last_lba, 2048 + 16 * 2048 - 1);
        assert_eq!(p.part_type_guid, gpt::partition_types::BASIC);
        assert_eq!(
            p.flags,
            1 << 2,
            "legacy BIOS bootable: U-Boot's `part list -bootable`"
        );
        assert_eq!(p.name, "boot");
        assert_eq!(*disk.guid(), stable_guid("test-stack", "disk"));
        // LBA 0 is a protective MBR.
        let raw = std::fs::read(&img).unwrap();
        assert_eq!(raw[446 + 4], 0xee);
        assert_eq!(raw[510..512], [0x55, 0xaa]);

        assert_eq!(
            boot_partition(&img).unwrap(),
            BootPartition {
                table: PartitionTable::Gpt,
                start: 1 << 20,
                len: 16 << 20
            }
        );
        let listed = list_boot_files(&img).unwrap();
        assert_eq!(
            listed,
            [
                ("boot.cmd".to_owned(), boot_script(None).len() as u64),
                ("cloister.img".to_owned(), 3 << 20),
                ("uEnv.txt".to_owned(), 34),
            ]
        );
        assert_eq!(read_boot_file(&img, BOOT_IMAGE).unwrap(), big(3 << 20));
        assert_eq!(
            read_boot_file(&img, BOOT_ENV).unwrap(),
            b"bootargs=console=ttyAMA0 earlycon\n"
        );
        let fs = open_fat(&img, false).unwrap();
        for entry in fs.root_dir().iter() {
            let entry = entry.unwrap();
            let date = entry.modified().date;
            assert_eq!((date.year, date.month, date.day), (1980, 1, 1));
        }
        assert_eq!(fs.volume_label(), "CLOISTER");
        // BPB hidden sectors = the partition's first LBA.
        assert_eq!(raw[(1 << 20) + 28..(1 << 20) + 32], 2048u32.to_le_bytes());
        assert_eq!(fs.volume_id(), VOLUME_ID);
        assert_eq!(fs.cluster_size(), CLUSTER_BYTES);
    }

    #[test]
    fn mbr_image_has_one_active_fat_partition() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.img");
        let summary = write(&img, &layout(PartitionTable::Mbr, 64), &files()).unwrap();
        assert_eq!(summary.fat_type, "Fat16");
        let raw = std::fs::read(&img).unwrap();
        assert_eq!(raw[510..512], [0x55, 0xaa]);
        let rec = &raw[446..462];
        assert_eq!(rec[0], 0x80, "active");
        assert_eq!(
            rec[1..4],
            [32, 33, 0],
            "CHS of LBA 2048 with 255 heads, 63 sectors"
        );
        assert_eq!(rec[4], MBR_FAT_LBA);
        assert_eq!(u32::from_le_bytes(rec[8..12].try_into().unwrap()), 2048);
        assert_eq!(
            u32::from_le_bytes(rec[12..16].try_into().unwrap()),
            64 * 2048
        );
        assert!(raw[462..510].iter().all(|&b| b == 0), "one partition only");
        assert_eq!(
            boot_partition(&img).unwrap(),
            BootPartition {
                table: PartitionTable::Mbr,
                start: 1 << 20,
                len: 64 << 20
            }
        );
        assert_eq!(read_boot_file(&img, BOOT_IMAGE).unwrap(), big(3 << 20));
    }

    #[test]
    fn a_large_boot_partition_is_fat32_with_both_boot_sectors_fixed_up() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.img");
        let summary = write(&img, &layout(PartitionTable::Gpt, 512), &files()).unwrap();
        assert_eq!(summary.fat_type, "Fat32");
        let mut f = File::open(&img).unwrap();
        let mut boot = [0u8; 512];
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.read_exact(&mut boot).unwrap();
        let backup = u64::from(u16::from_le_bytes([boot[50], boot[51]]));
        assert_eq!(boot[28..32], 2048u32.to_le_bytes());
        f.seek(SeekFrom::Start((1 << 20) + backup * 512)).unwrap();
        let mut copy = [0u8; 512];
        f.read_exact(&mut copy).unwrap();
        assert_eq!(copy, boot, "the backup boot sector matches");
        assert_eq!(read_boot_file(&img, BOOT_IMAGE).unwrap(), big(3 << 20));
    }

    #[test]
    fn the_same_inputs_give_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let hash = |name: &str, id: &str| {
            let img = dir.path().join(name);
            let l = Layout {
                id: id.into(),
                ..layout(PartitionTable::Gpt, 16)
            };
            write(&img, &l, &files()).unwrap();
            crate::cache::sha256_file(&img).unwrap()
        };
        assert_eq!(hash("a.img", "s"), hash("b.img", "s"));
        assert_ne!(hash("a.img", "s"), hash("c.img", "other"));
    }

    #[test]
    fn a_partition_too_small_names_its_files_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.img");
        let files = [BootFile::new(BOOT_IMAGE, vec![1u8; 9 << 20])];
        let err = format!(
            "{:#}",
            write(&img, &layout(PartitionTable::Gpt, 8), &files).unwrap_err()
        );
        assert!(
            err.contains("the 8 MiB boot partition has room for"),
            "{err}"
        );
        assert!(err.contains("cloister.img (9216 KiB)"), "{err}");
        assert!(err.contains("raise `disk.boot-size-mib`"), "{err}");
        assert!(!img.exists() && !dir.path().join("d.img.partial").exists());
    }

    #[test]
    fn nested_names_make_directories_and_bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.img");
        let files = [BootFile::new("dtbs/rockchip/board.dtb", b"dtb".to_vec())];
        write(&img, &layout(PartitionTable::Gpt, 8), &files).unwrap();
        assert_eq!(
            read_boot_file(&img, "dtbs/rockchip/board.dtb").unwrap(),
            b"dtb"
        );
        let err = replace_boot_files(&img, &[BootFile::new("a//b", vec![])]).unwrap_err();
        assert!(
            format!("{err:#}").contains("\"a//b\": expected a relative path"),
            "{err:#}"
        );
    }

    #[test]
    fn per_boot_copy_is_sparse_and_changes_only_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.img");
        write(&base, &layout(PartitionTable::Gpt, 64), &files()).unwrap();
        let before = crate::cache::sha256_file(&base).unwrap();
        let copy = dir.path().join("boot/disk.img");
        per_boot_copy(
            &base,
            &copy,
            Some("console=ttyAMA0 cloister.scenario=boot"),
            &[BootFile::new(BOOT_IMAGE, b"damaged".to_vec())],
        )
        .unwrap();
        assert_eq!(crate::cache::sha256_file(&base).unwrap(), before);
        assert_eq!(
            read_boot_file(&copy, BOOT_ENV).unwrap(),
            b"bootargs=console=ttyAMA0 cloister.scenario=boot\n"
        );
        assert_eq!(read_boot_file(&copy, BOOT_IMAGE).unwrap(), b"damaged");
        assert_eq!(
            read_boot_file(&copy, BOOT_SCRIPT_SOURCE).unwrap(),
            boot_script(None).as_bytes()
        );
        // The copy keeps the holes: 66 MiB long, a few MiB on disk.
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&copy).unwrap();
        assert_eq!(meta.len(), 66 << 20);
        assert!(
            meta.blocks() * 512 < 16 << 20,
            "{} bytes allocated",
            meta.blocks() * 512
        );

        // Without bootargs or files the copy is byte-identical.
        let plain = dir.path().join("plain.img");
        per_boot_copy(&base, &plain, None, &[]).unwrap();
        assert_eq!(crate::cache::sha256_file(&plain).unwrap(), before);
    }

    #[test]
    fn copy_sparse_keeps_data_after_holes() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        let mut f = File::create(&from).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(SeekFrom::Start(5 << 20)).unwrap();
        f.write_all(b"middle").unwrap();
        f.set_len(12 << 20).unwrap();
        drop(f);
        let to = dir.path().join("to");
        std::fs::write(&to, vec![0xffu8; 20 << 20]).unwrap();
        copy_sparse(&from, &to).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), std::fs::read(&from).unwrap());
    }

    #[test]
    fn uenv_is_one_bootargs_line() {
        assert_eq!(uenv("a b=c").unwrap(), "bootargs=a b=c\n");
        let err = uenv("a\nsetenv x").unwrap_err().to_string();
        assert!(err.contains("expected one line for uEnv.txt"), "{err}");
    }

    #[test]
    fn boot_script_imports_bootargs_and_boots_cloister_img_at_el2() {
        let s = boot_script(None);
        let part = "${devtype} ${devnum}:${distro_bootpart}";
        assert!(
            s.contains(&format!(
                "if load {part} ${{ramdisk_addr_r}} ${{prefix}}uEnv.txt; then"
            )),
            "{s}"
        );
        assert!(
            s.contains("  env import -t ${ramdisk_addr_r} ${filesize} bootargs\n"),
            "{s}"
        );
        assert!(s.contains("setenv cloister_fdt ${fdtcontroladdr}\n"), "{s}");
        assert!(
            s.contains(&format!(
                "if load {part} ${{kernel_addr_r}} ${{prefix}}cloister.img; then"
            )),
            "{s}"
        );
        assert!(
            s.contains("  booti ${kernel_addr_r} - ${cloister_fdt}\n"),
            "{s}"
        );
        assert!(
            s.contains("cloister: cannot read ${prefix}cloister.img from"),
            "{s}"
        );
        let ifs = s
            .lines()
            .filter(|l| l.trim_start().starts_with("if "))
            .count();
        let fis = s.lines().filter(|l| l.trim() == "fi").count();
        assert_eq!((ifs, fis), (2, 2), "{s}");

        // A U-Boot that does not set distro_bootpart reads partition 1.
        let first = s.lines().find(|l| !l.starts_with('#')).unwrap_or_default();
        assert_eq!(
            first, "test -n \"${distro_bootpart}\" || setenv distro_bootpart 1",
            "{s}"
        );

        let d = boot_script(Some("rk3588-rock-5b.dtb"));
        assert!(
            d.contains(&format!("if load {part} ${{fdt_addr_r}} ${{prefix}}rk3588-rock-5b.dtb; then\n  setenv cloister_fdt ${{fdt_addr_r}}\n")),
            "{d}"
        );
        assert!(
            d.contains("    booti ${kernel_addr_r} - ${cloister_fdt}\n"),
            "{d}"
        );
        assert!(
            d.contains("cloister: cannot read ${prefix}rk3588-rock-5b.dtb"),
            "{d}"
        );
        assert!(!d.contains("fdtcontroladdr"), "{d}");
        let ifs = d
            .lines()
            .filter(|l| l.trim_start().starts_with("if "))
            .count();
        let fis = d.lines().filter(|l| l.trim() == "fi").count();
        assert_eq!((ifs, fis), (3, 3), "{d}");
    }

    /// `SOURCE_DATE_EPOCH=0 mkimage -A arm64 -O linux -T script -C none
    /// -n "cloister boot script" -d t.cmd t.scr` with t.cmd = "echo hi\n"
    /// (u-boot-tools 2023.01).
    const MKIMAGE_ECHO_HI: &str = "27051956a5504f1200000000000000100000000000000000d934016205160600\
        636c6f697374657220626f6f742073637269707400000000000000000000000000000008000000006563686f2068690a";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn script_images_from_mkimage_are_checked() {
        let image = unhex(MKIMAGE_ECHO_HI);
        check_script_image(&image, "echo hi\n").unwrap();
        let err = check_script_image(&image, "echo ho\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("one part holding the 8-byte script"), "{err}");
        let mut bad = image.clone();
        bad[0] = 0;
        let err = check_script_image(&bad, "echo hi\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected magic 0x27051956"), "{err}");
        let err = check_script_image(&image[..70], "echo hi\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("header says 16 data bytes, file has 6"),
            "{err}"
        );
        let err = check_script_image(&image[..10], "echo hi\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("10 bytes, cut before byte 12"), "{err}");
        let mut arm32 = image;
        arm32[29] = 2;
        let err = check_script_image(&arm32, "echo hi\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected arch 22 (arm64)"), "{err}");
    }

    #[test]
    fn zeroed_fats_break_multi_cluster_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.img");
        write(&img, &layout(PartitionTable::Gpt, 16), &files()).unwrap();
        zero_fats(&img).unwrap();
        // The directory survives; a one-cluster file is still readable...
        assert_eq!(list_boot_files(&img).unwrap().len(), 3);
        assert_eq!(
            read_boot_file(&img, BOOT_ENV).unwrap(),
            b"bootargs=console=ttyAMA0 earlycon\n"
        );
        // ...but the chain of cloister.img is gone.
        let read = read_boot_file(&img, BOOT_IMAGE);
        assert!(read.as_ref().map_or(true, |d| *d != big(3 << 20)));
    }

    #[test]
    fn a_disk_cut_inside_its_boot_partition_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.img");
        write(&img, &layout(PartitionTable::Mbr, 16), &files()).unwrap();
        let err = truncate_in_boot_partition(&img, 16 << 20)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot cut 16777216 bytes into a 16777216-byte"),
            "{err}"
        );
        truncate_in_boot_partition(&img, 1 << 20).unwrap();
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 2 << 20);
        let err = boot_partition(&img).unwrap_err().to_string();
        assert!(
            err.contains("past the end of the 2097152-byte image"),
            "{err}"
        );
    }

    #[test]
    fn a_file_that_is_no_disk_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("not-a-disk");
        std::fs::write(&img, vec![0u8; 4096]).unwrap();
        let err = boot_partition(&img).unwrap_err().to_string();
        assert!(err.contains("not-a-disk: expected an MBR"), "{err}");
        std::fs::write(&img, b"tiny").unwrap();
        let err = boot_partition(&img).unwrap_err().to_string();
        assert!(err.contains("shorter than one sector"), "{err}");
    }

    #[test]
    fn partition_io_stays_inside_its_partition() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![0u8; 100]).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut io = PartitionIo::new(file, 10, 20);
        assert_eq!(io.seek(SeekFrom::End(-2)).unwrap(), 18);
        assert_eq!(io.write(b"abcd").unwrap(), 2);
        assert_eq!(
            io.write(b"cd").unwrap_err().kind(),
            io::ErrorKind::WriteZero
        );
        io.seek(SeekFrom::Start(21)).unwrap_err();
        io.seek(SeekFrom::Current(-30)).unwrap_err();
        io.seek(SeekFrom::Start(17)).unwrap();
        let mut buf = [9u8; 8];
        assert_eq!(io.read(&mut buf).unwrap(), 3);
        assert_eq!(buf[..3], [0, b'a', b'b']);
        let raw = std::fs::read(&path).unwrap();
        assert_eq!(raw[28..30], *b"ab");
        assert!(raw[30..].iter().all(|&b| b == 0));
    }

    #[test]
    fn chs_follows_the_255_63_geometry() {
        assert_eq!(chs(0), (0, 1, 0));
        assert_eq!(chs(2048), (32, 33, 0));
        // Cylinder 300: high bits go into the sector byte.
        assert_eq!(chs(300 * 255 * 63), (0, 1 | (1 << 6), 44));
        assert_eq!(chs(1024 * 255 * 63), (254, 0xff, 0xff));
    }
}
