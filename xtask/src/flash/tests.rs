use std::io::Cursor;
use std::process::Command;

use super::*;

const MIB: u64 = 1 << 20;
const MIB_BYTES: usize = 1 << 20;

/// A removable 64 MiB USB stick at /dev/sdx, unmounted: every check passes.
fn good() -> Target {
    Target {
        given: "/dev/sdx".into(),
        path: "/dev/sdx".into(),
        kind: NodeKind::Block {
            major: 8,
            minor: 16,
        },
        name: Some("sdx".into()),
        sysfs_dir: Some("/sys/devices/usb1/block/sdx".into()),
        partition_of: None,
        removable: Some(true),
        sd_card: false,
        size: Some(64 * MIB),
        mounts: Vec::new(),
        swaps: Vec::new(),
        holders: Vec::new(),
        model: Some("Cloister Stick".into()),
    }
}

fn refusal(target: &Target, image: u64) -> String {
    check(target, image).unwrap_err().to_string()
}

#[test]
fn a_removable_unmounted_large_enough_device_passes() {
    let v = check(&good(), 64 * MIB).unwrap();
    assert_eq!(v.path, Path::new("/dev/sdx"));
    assert_eq!(v.name, "sdx");
    assert_eq!(v.description, "Cloister Stick, 64.0 MiB, removable");
    assert!(v.is_block);
}

#[test]
fn missing_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("sdz");
    let t = System::real().inspect(&gone).unwrap();
    assert_eq!(t.kind, NodeKind::Missing);
    let msg = refusal(&t, MIB);
    assert_eq!(
        msg,
        format!("refusing to flash {}: no such device", gone.display())
    );
}

#[test]
fn regular_file_directory_and_char_device_are_not_block_devices() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("card.img");
    std::fs::write(&file, vec![0u8; 4096]).unwrap();
    for (path, what) in [
        (file.as_path(), "a regular file"),
        (dir.path(), "a directory"),
        (Path::new("/dev/null"), "a character device"),
    ] {
        let t = System::real().inspect(path).unwrap();
        let msg = refusal(&t, 1);
        assert!(
            msg.starts_with(&format!("refusing to flash {}", path.display())),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("it is {what}, not a block device")),
            "{msg}"
        );
    }
}

#[test]
fn a_symlinked_path_names_both_forms() {
    let t = Target {
        given: "/dev/disk/by-id/usb-stick".into(),
        kind: NodeKind::Other("a regular file"),
        ..good()
    };
    let msg = refusal(&t, 1);
    assert!(
        msg.starts_with("refusing to flash /dev/disk/by-id/usb-stick (/dev/sdx):"),
        "{msg}"
    );
}

#[test]
fn a_partition_is_refused_naming_the_whole_disk() {
    let t = Target {
        given: "/dev/sdx1".into(),
        path: "/dev/sdx1".into(),
        partition_of: Some("sdx".into()),
        ..good()
    };
    assert_eq!(
        refusal(&t, MIB),
        "refusing to flash /dev/sdx1: it is a partition of /dev/sdx; the image holds its own \
         partition table, flash the whole disk /dev/sdx"
    );
}

#[test]
fn a_non_removable_device_is_refused_naming_the_sysfs_file() {
    let t = Target {
        removable: Some(false),
        ..good()
    };
    assert_eq!(
        refusal(&t, MIB),
        "refusing to flash /dev/sdx: it is not a removable device \
         (/sys/devices/usb1/block/sdx/removable = 0); cargo xtask flash only writes SD cards and USB disks"
    );
    let unknown = Target {
        removable: None,
        ..good()
    };
    assert!(
        refusal(&unknown, MIB).contains("cannot tell whether it is removable"),
        "{}",
        refusal(&unknown, MIB)
    );
}

#[test]
fn an_sd_card_in_a_built_in_reader_is_accepted() {
    // Built-in readers report removable = 0 for the card; sysfs device/type
    // says SD.
    let t = Target {
        given: "/dev/mmcblk0".into(),
        path: "/dev/mmcblk0".into(),
        name: Some("mmcblk0".into()),
        removable: Some(false),
        sd_card: true,
        model: None,
        ..good()
    };
    let v = check(&t, MIB).unwrap();
    assert_eq!(v.description, "64.0 MiB, SD card");
}

#[test]
fn a_mounted_device_or_partition_is_refused_with_the_umount_line() {
    let t = Target {
        mounts: vec![
            Mount {
                source: "/dev/sdx1".into(),
                mount_point: "/media/me/BOOT".into(),
            },
            Mount {
                source: "/dev/sdx2".into(),
                mount_point: "/media/me/root fs".into(),
            },
        ],
        ..good()
    };
    assert_eq!(
        refusal(&t, MIB),
        "refusing to flash /dev/sdx: it is mounted (/dev/sdx1 on /media/me/BOOT, /dev/sdx2 on \
         /media/me/root fs); unmount first: umount /media/me/BOOT /media/me/root fs"
    );
}

#[test]
fn swap_and_holders_are_refused() {
    let t = Target {
        swaps: vec!["/dev/sdx2".into()],
        ..good()
    };
    assert_eq!(
        refusal(&t, MIB),
        "refusing to flash /dev/sdx: it is in use as swap (/dev/sdx2); swapoff first"
    );
    let t = Target {
        holders: vec!["dm-0".into()],
        ..good()
    };
    assert_eq!(
        refusal(&t, MIB),
        "refusing to flash /dev/sdx: it is in use by dm-0 (device-mapper, LVM or RAID)"
    );
}

#[test]
fn a_device_smaller_than_the_image_is_refused_with_both_sizes() {
    assert_eq!(
        refusal(&good(), 64 * MIB + 1),
        "refusing to flash /dev/sdx: it holds 67108864 bytes (64.0 MiB) and the image needs \
         67108865 bytes (64.0 MiB)"
    );
    let t = Target {
        size: None,
        ..good()
    };
    assert!(refusal(&t, 1).contains("cannot read its size"));
}

#[test]
fn mountinfo_matches_by_source_and_by_major_minor() {
    let nodes = vec![
        ("sdx".to_owned(), "8:16".to_owned()),
        ("sdx1".to_owned(), "8:17".to_owned()),
        ("sdx2".to_owned(), "8:18".to_owned()),
    ];
    let mountinfo = "\
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
40 22 8:17 / /media/me/BOOT rw,nosuid shared:30 - vfat /dev/sdx1 rw
41 22 8:18 / /media/me/root\\040fs rw - ext4 /dev/disk/by-label/root rw
42 22 0:45 / /tmp rw - tmpfs tmpfs rw
43 22 0:46 / /mnt/x rw - ext4 /dev/sdx rw
";
    let found = mounts_of(mountinfo, &nodes);
    assert_eq!(
        found,
        vec![
            Mount {
                source: "/dev/sdx1".into(),
                mount_point: "/media/me/BOOT".into()
            },
            Mount {
                source: "/dev/sdx2".into(),
                mount_point: "/media/me/root fs".into()
            },
            Mount {
                source: "/dev/sdx".into(),
                mount_point: "/mnt/x".into()
            },
        ]
    );
    let swaps =
        "Filename Type Size Used Priority\n/dev/sdx2 partition 1024 0 -2\n/swapfile file 1 0 -3\n";
    assert_eq!(swaps_of(swaps, &nodes), ["/dev/sdx2"]);
}

#[test]
fn confirmation_needs_the_device_name_on_a_terminal_or_yes() {
    let v = check(&good(), MIB).unwrap();
    let image = Path::new("cloister-board.img");
    let mut out = Vec::new();
    confirm(&v, image, MIB, true, false, &mut Cursor::new(""), &mut out).unwrap();
    assert!(out.is_empty(), "--yes asks nothing");

    let err = confirm(&v, image, MIB, false, false, &mut Cursor::new(""), &mut out)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "refusing to flash /dev/sdx without confirmation: standard input is not a terminal; \
         pass --yes to confirm non-interactively"
    );

    confirm(
        &v,
        image,
        MIB,
        false,
        true,
        &mut Cursor::new("sdx\n"),
        &mut out,
    )
    .unwrap();
    let prompt = String::from_utf8(out.clone()).unwrap();
    assert!(
        prompt.contains("About to overwrite /dev/sdx (Cloister Stick, 64.0 MiB, removable)"),
        "{prompt}"
    );
    assert!(prompt.contains("Type the device name (sdx)"), "{prompt}");
    confirm(
        &v,
        image,
        MIB,
        false,
        true,
        &mut Cursor::new("/dev/sdx\n"),
        &mut out,
    )
    .unwrap();
    let err = confirm(
        &v,
        image,
        MIB,
        false,
        true,
        &mut Cursor::new("y\n"),
        &mut out,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not flashing /dev/sdx"), "{err}");
}

/// A pseudo-random image whose length is not a multiple of the chunk size.
fn make_image(dir: &Path, len: usize) -> PathBuf {
    let mut x: u32 = 0x1234_5678;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect();
    let path = dir.join("cloister-test.img");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

#[test]
fn write_and_verify_copies_the_image_over_a_loopback_file() {
    let dir = tempfile::tempdir().unwrap();
    let len = 2 * CHUNK + 12_345;
    let image = make_image(dir.path(), len);
    // The "device": larger than the image and full of old data.
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, vec![0xa5u8; 3 * CHUNK]).unwrap();

    let report = write_and_verify(&image, &Validated::assume_for_test(&disk), false).unwrap();
    let want = std::fs::read(&image).unwrap();
    let got = std::fs::read(&disk).unwrap();
    assert_eq!(report.bytes, len as u64);
    assert_eq!(report.sha256, sha256_hex(&want));
    assert_eq!(got.len(), 3 * CHUNK, "the rest of the device is left alone");
    assert!(got[..len] == want[..], "image bytes differ on the device");
    assert!(got[len..].iter().all(|&b| b == 0xa5));
}

#[test]
fn verify_names_the_first_differing_offset_and_a_short_device() {
    let image: Vec<u8> = (0..=255u8).cycle().take(CHUNK + 100).collect();
    let mut bad = image.clone();
    bad[CHUNK + 7] ^= 0xff;
    let dev = Path::new("/dev/sdx");
    let bar = ProgressBar::hidden();
    let len = image.len() as u64;
    let ok = verify(
        &mut Cursor::new(&image),
        Cursor::new(&image),
        len,
        dev,
        &bar,
    )
    .unwrap();
    assert_eq!(ok, sha256_hex(&image));
    let err = verify(&mut Cursor::new(&image), Cursor::new(&bad), len, dev, &bar)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "verification of /dev/sdx failed: byte offset {} reads {:#04x}, the image has {:#04x}",
            CHUNK + 7,
            bad[CHUNK + 7],
            image[CHUNK + 7]
        )
    );
    let err = verify(
        &mut Cursor::new(&image),
        Cursor::new(&image[..1000]),
        len,
        dev,
        &bar,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("it ended at byte 1000"), "{err}");
}

#[test]
fn a_write_error_names_the_device_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let image = make_image(dir.path(), 4096);
    // /dev/full fails every write with ENOSPC.
    let err = write_and_verify(
        &image,
        &Validated::assume_for_test(Path::new("/dev/full")),
        false,
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("writing /dev/full at byte offset 0"), "{msg}");
}

#[test]
fn the_image_comes_from_the_manifest_disk_image_output() {
    use crate::manifest::{GitInfo, Item, Manifest, FORMAT};
    let mut m = Manifest {
        format: FORMAT,
        stack: "qemu-virt".into(),
        git: GitInfo {
            revision: "x".into(),
            dirty: false,
        },
        tools: Vec::new(),
        inputs: Vec::new(),
        outputs: Vec::new(),
        kernel_release: "6.12".into(),
    };
    let err = image_from_manifest(&m).unwrap_err().to_string();
    assert_eq!(
        err,
        "stack qemu-virt has no disk image (its manifest lists no output \"disk-image\"); flash \
         a board stack that builds one, or pass --image PATH"
    );
    m.outputs.push(Item {
        name: DISK_IMAGE_OUTPUT.into(),
        path: Some("/t/cloister-qemu-uboot.img".into()),
        version: None,
        sha256: None,
        size: None,
    });
    assert_eq!(
        image_from_manifest(&m).unwrap(),
        Path::new("/t/cloister-qemu-uboot.img")
    );
}

#[test]
fn human_bytes_uses_binary_units() {
    assert_eq!(human_bytes(512), "512 bytes");
    assert_eq!(human_bytes(1536), "1.5 KiB");
    assert_eq!(human_bytes(64 * MIB), "64.0 MiB");
    assert_eq!(human_bytes(31_914_983_424), "29.7 GiB");
}

/// A loop device attached for one test, detached on drop.
struct Loop {
    dev: PathBuf,
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A mount made for one test, unmounted on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Why a loop device cannot be used here, if it cannot.
fn losetup_unavailable() -> Option<String> {
    if !crate::deps::is_root() {
        return Some("not root: losetup needs CAP_SYS_ADMIN".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("/dev/loop-control does not exist (no loop driver)".into());
    }
    match Command::new("losetup").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("`losetup --version` failed with {}", o.status)),
        Err(e) => Some(format!("losetup not runnable: {e}")),
    }
}

/// A fake sysfs in which block device `major:minor` is `name`, removable.
fn fake_sysfs(root: &Path, name: &str, major: u32, minor: u32, size_bytes: u64) {
    let dev_dir = root.join("devices/virtual/block").join(name);
    std::fs::create_dir_all(dev_dir.join("holders")).unwrap();
    std::fs::write(
        dev_dir.join("uevent"),
        format!("MAJOR={major}\nMINOR={minor}\nDEVNAME={name}\nDEVTYPE=disk\n"),
    )
    .unwrap();
    std::fs::write(dev_dir.join("removable"), "1\n").unwrap();
    std::fs::write(dev_dir.join("size"), format!("{}\n", size_bytes / 512)).unwrap();
    std::fs::create_dir_all(root.join("dev/block")).unwrap();
    std::os::unix::fs::symlink(
        format!("../../devices/virtual/block/{name}"),
        root.join(format!("dev/block/{major}:{minor}")),
    )
    .unwrap();
}

/// The whole path on a real block device: the real sysfs refuses a loop
/// device as not removable; with only `removable` faked, the checks pass,
/// a too-large image is refused from the real BLKGETSIZE64 size, the image
/// is written and read back through the device, a real mount is refused,
/// and the kernel's O_EXCL refuses the mounted device even when the checks
/// are bypassed.
#[test]
fn flash_a_real_loop_device() {
    if let Some(why) = losetup_unavailable() {
        println!("SKIPPED flash_a_real_loop_device: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing.raw");
    std::fs::write(&backing, vec![0x5au8; 16 * MIB_BYTES]).unwrap();
    let out = Command::new("losetup")
        .args(["--find", "--show", "--partscan"])
        .arg(&backing)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "losetup --find --show: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev = Loop {
        dev: PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()),
    };

    // 1. The real system: a loop device is not removable.
    let real = System::real().inspect(&dev.dev).unwrap();
    let NodeKind::Block { major, minor } = real.kind else {
        panic!("{} is not a block device: {real:?}", dev.dev.display());
    };
    assert_eq!(real.size, Some(16 * MIB), "BLKGETSIZE64");
    assert_eq!(real.removable, Some(false));
    let msg = refusal(&real, MIB);
    assert!(
        msg.starts_with(&format!(
            "refusing to flash {}: it is not a removable device",
            dev.dev.display()
        )),
        "{msg}"
    );

    // 2. Same device, sysfs says removable: the checks pass, size is real.
    let sys_root = dir.path().join("sys");
    let name = dev.dev.file_name().unwrap().to_string_lossy().into_owned();
    // sysfs size deliberately wrong: the ioctl's answer must win.
    fake_sysfs(&sys_root, &name, major, minor, 1024 * MIB);
    let sys = System {
        sysfs: sys_root.clone(),
        ..System::real()
    };
    let target = sys.inspect(&dev.dev).unwrap();
    assert_eq!(target.removable, Some(true));
    assert_eq!(target.name.as_deref(), Some(name.as_str()));
    assert!(refusal(&target, 16 * MIB + 1).contains("it holds 16777216 bytes (16.0 MiB)"));
    let image = make_image(dir.path(), 5 * MIB_BYTES + 4321);
    let validated = check(&target, 5 * MIB + 4321).unwrap();
    let report = write_and_verify(&image, &validated, false).unwrap();
    let want = std::fs::read(&image).unwrap();
    assert_eq!(report.sha256, sha256_hex(&want));
    // What reached the backing file through the loop device.
    let got = std::fs::read(&backing).unwrap();
    assert!(got[..want.len()] == want[..], "loop device content differs");
    assert!(got[want.len()..].iter().all(|&b| b == 0x5a));
    // The kernel accepts the request to re-read the partition table (this
    // machine's kernel creates no loop partition devices even with
    // --partscan, so the new partition itself cannot be checked here).
    reread_partitions(&validated).unwrap();

    // 3. Mounted: refused by the checks, and by O_EXCL when they are bypassed.
    let mkfs = Command::new("mke2fs")
        .args(["-q", "-F"])
        .arg(&dev.dev)
        .status()
        .unwrap();
    assert!(mkfs.success(), "mke2fs failed");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .arg(&dev.dev)
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount failed");
    let _unmount = Mounted(mnt.clone());
    let target = sys.inspect(&dev.dev).unwrap();
    let msg = refusal(&target, MIB);
    assert!(
        msg.contains(&format!(
            "it is mounted ({} on {})",
            dev.dev.display(),
            mnt.display()
        )),
        "{msg}"
    );
    let no_mounts = dir.path().join("empty-mountinfo");
    std::fs::write(&no_mounts, "").unwrap();
    let blind = System {
        mountinfo: no_mounts,
        ..sys.clone()
    };
    let validated = check(&blind.inspect(&dev.dev).unwrap(), MIB).unwrap();
    let err = format!(
        "{:#}",
        write_and_verify(&image, &validated, false).unwrap_err()
    );
    assert!(
        err.contains("opening") && err.contains("Device or resource busy"),
        "{err}"
    );
}
