//! `cargo xtask build-image [STACK]`: everything a stack boots, built from
//! source into `target/cloister/<stack>/`, one cached stage at a time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::cache::{self, short, KeyBuilder, Stamp};
use crate::manifest::{self, Item, Manifest};
use crate::stack::{self, Stack};
use crate::stage::{run_stage, Outcome};
use crate::{board, deps, disk, guest, initramfs, kernel, pins, qemu};

/// `cargo xtask build-image [STACK | --stack STACK] [--clean]`
#[derive(Debug, clap::Args)]
pub struct BuildImage {
    /// Stack name (a file in stacks/ without .toml; default qemu-virt).
    #[arg(value_name = "STACK", conflicts_with = "stack_flag")]
    stack: Option<String>,
    /// The stack as a flag, as `test`, `lava` and `flash` take it.
    #[arg(long = "stack", value_name = "STACK")]
    stack_flag: Option<String>,
    /// Throw away this stack's outputs and the shared caches, then build.
    #[arg(long)]
    clean: bool,
}

impl BuildImage {
    pub fn run(self) -> Result<()> {
        build_image(&self.stack_name(), self.clean).map(|_| ())
    }

    fn stack_name(&self) -> String {
        self.stack
            .clone()
            .or_else(|| self.stack_flag.clone())
            .unwrap_or_else(|| crate::DEFAULT_STACK.to_owned())
    }
}

/// Output directory of a stack.
pub fn stack_dir(stack: &str) -> PathBuf {
    crate::cloister_dir().join(stack)
}

/// Manifest output name of a board DTB built from the kernel tree.
pub const BOARD_DTB_OUTPUT: &str = "board-dtb";

/// Path of a stack's manifest.
pub fn manifest_path(stack: &str) -> PathBuf {
    stack_dir(stack).join("manifest.json")
}

/// Builds `stack_name` and returns its manifest.
pub fn build_image(stack_name: &str, clean: bool) -> Result<Manifest> {
    let started = Instant::now();
    let root = crate::project_root();
    let stack = stack::load(&root, stack_name)?;
    let out = stack_dir(stack_name);
    let cache_dir = crate::cloister_dir().join("cache");
    if clean {
        for dir in [&out, &cache_dir] {
            if dir.exists() {
                std::fs::remove_dir_all(dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
            }
        }
    }
    let logs = out.join("logs");
    let stamps = out.join("stamps");
    // The Rust binaries are the same for every stack (one cargo target
    // dir), so their "changed since last build" stamps are shared too.
    let shared_stamps = cache_dir.join("stamps");
    println!("build-image {} -> {}", stack.name, out.display());

    run_stage(&logs, "host-deps", deps::ensure_host)?;

    let pin = pins::load(&root)?;
    let patches = kernel::read_series(&stack.patch_dir)?;
    let mut warning = None;
    let (tree, tarball_sha, package_version) = run_stage(&logs, "linux-source", |stage| {
        let version = pins::installed_version(&pin.package)?;
        stage.status(&format!("sha256 {}", pin.tarball.display()));
        let sha = cache::sha256_file_memo(&cache_dir.join("sha256-memo.json"), &pin.tarball)?;
        if let pins::SourceCheck::OtherPointRelease { warning: w } =
            pins::check(&pin, &version, &sha)?
        {
            stage.log(&w);
            warning = Some(w);
        }
        let (tree, outcome) =
            kernel::prepare_source(stage, &cache_dir, &pin.tarball, &sha, &patches)?;
        Ok(((tree, sha, version), outcome))
    })?;
    if let Some(w) = warning {
        println!("{w}");
    }

    // Stacks with the same source tree and fragment list share one
    // out-of-tree build directory (and its stamp); a changed fragment
    // rebuilds incrementally in place.
    let mut build_key = KeyBuilder::new("host-kernel-dir");
    build_key.add_str("tree", &tree.key);
    for f in &stack.file.kernel.fragments {
        build_key.add_str("fragment", f);
    }
    let kernel_dir = cache_dir
        .join("host-kernel")
        .join(short(&build_key.finish()));
    let kernel_build = run_stage(&logs, "host-kernel", |stage| {
        for gone in cache::keep_recent(
            &cache_dir.join("host-kernel"),
            &kernel_dir,
            kernel::KEEP_BUILDS,
        )? {
            stage.log(&format!("removed stale kernel build {}", gone.display()));
        }
        kernel::build(
            stage,
            &tree,
            &kernel_dir,
            &stack.fragment_paths,
            &kernel_dir,
        )
    })?;

    // A board DTB from the same kernel tree and build directory
    // (`disk.kernel-dtb`), checked with the hyp's own DTB reader.
    let board_dtb = match stack.file.disk.kernel_dtb {
        Some(_) => Some(run_stage(&logs, "board-dtb", |stage| {
            board::dtb_stage(stage, &stack, &tree, &kernel_dir, &out, &stamps)
        })?),
        None => None,
    };
    match &board_dtb {
        Some(board::BoardDtb {
            path,
            hyp_check: Err(why),
        }) => println!(
            "warning: the Cloister hyp cannot boot this board: its boot checks refuse {}: \
             {why} (see docs/boards.md)",
            path.display()
        ),
        Some(board::BoardDtb {
            path,
            hyp_check: Ok(what),
        }) => println!(
            "note: the Cloister hyp's boot checks accept {}: {what}; untested on the board \
             itself (see docs/boards.md)",
            path.display()
        ),
        None => {}
    }

    let (busybox, busybox_deb) =
        run_stage(&logs, "busybox", |stage| deps::busybox(stage, &cache_dir))?;

    let agent = run_stage(&logs, "agent", |stage| {
        build_rust_binary(stage, &root, "cloister-agent", MUSL, &shared_stamps)
    })?;
    let vmm = run_stage(&logs, "vmm", |stage| {
        build_rust_binary(stage, &root, "cloister-vmm", MUSL, &shared_stamps)
    })?;
    // The conformance guest: a bare-metal image the VMM loads as a raw
    // binary, so the ELF is flattened like the hyp's.
    let conformance = out.join("conformance.bin");
    run_stage(&logs, "conformance", |stage| {
        let (elf, outcome) = build_rust_binary(
            stage,
            &root,
            "cloister-conformance",
            BARE_METAL,
            &shared_stamps,
        )?;
        stage.run(
            Command::new("aarch64-linux-gnu-objcopy")
                .args(["-O", "binary"])
                .arg(&elf)
                .arg(&conformance),
        )?;
        Ok(((), outcome))
    })?;

    // The Linux guest (`[guest]`): a stock kernel from the same tarball with
    // no patches, and its initramfs; both go into the host image.
    let guest_build = match &stack.file.guest {
        Some(_) => Some(guest::build(&guest::GuestInputs {
            root: &root,
            logs: &logs,
            cache_dir: &cache_dir,
            out: &out,
            stamps: &stamps,
            shared_stamps: &shared_stamps,
            tarball: &pin.tarball,
            tarball_sha256: &tarball_sha,
            fragments: &stack.guest_fragment_paths,
            busybox: &busybox,
        })?),
        None => None,
    };
    let guest_conf = stack.file.guest.as_ref().map(|g| g.guest_conf());

    let overlay = root.join("stacks/rootfs/host");
    let initrd = out.join("host-initramfs.cpio");
    let vmm_conf = stack.file.vm.vmm_conf();
    run_stage(&logs, "initramfs", |stage| {
        let mut key = KeyBuilder::new("host-initramfs");
        key.add_str("vmm-conf", &vmm_conf);
        key.add_file("busybox", &busybox)?
            .add_file("agent", &agent)?
            .add_file("vmm", &vmm)?
            .add_file("conformance", &conformance)?;
        if let (Some(g), Some(conf)) = (&guest_build, &guest_conf) {
            key.add_file("guest-kernel", &g.image)?
                .add_file("guest-initramfs", &g.initramfs)?
                .add_str("guest-conf", conf);
        }
        for entry in initramfs::overlay_entries(&overlay)? {
            key.add_str("overlay", &format!("{entry:?}"));
        }
        let key = key.finish();
        let stamp = Stamp::new(&stamps, "initramfs");
        if stamp.is_fresh(&key, &[&initrd]) {
            return Ok(((), Outcome::Cached(format!("key {}", short(&key)))));
        }
        stage.status("writing newc cpio");
        let entries = initramfs::host_entries(
            std::fs::read(&busybox)?,
            std::fs::read(&agent)?,
            std::fs::read(&vmm)?,
            std::fs::read(&conformance)?,
            &vmm_conf,
            match (&guest_build, &guest_conf) {
                (Some(g), Some(conf)) => Some(initramfs::HostGuest {
                    kernel: std::fs::read(&g.image)?,
                    initramfs: std::fs::read(&g.initramfs)?,
                    conf: conf.clone(),
                }),
                _ => None,
            },
            &overlay,
        )?;
        let summary = initramfs::write_image(&entries, &initrd)?;
        stamp.record(&key)?;
        Ok(((), Outcome::Built(summary)))
    })?;

    // Copy the kernel out of its build tree so the stack directory holds
    // exactly what boots.
    let image = out.join("host-Image");
    copy_if_changed(&kernel_build.image, &image)?;

    let cloister_img = out.join("cloister.img");
    let hyp_outputs = if stack.file.hyp.enabled {
        let hyp_elf = run_stage(&logs, "hyp", |stage| {
            build_rust_binary(stage, &root, "cloister-hyp", BARE_METAL, &shared_stamps)
        })?;
        run_stage(&logs, "cloister-img", |stage| {
            stage.status("flat binary + payload table");
            let hyp_bin = out.join("cloister-hyp.bin");
            stage.run(
                Command::new("aarch64-linux-gnu-objcopy")
                    .args(["-O", "binary"])
                    .arg(&hyp_elf)
                    .arg(&hyp_bin),
            )?;
            let hyp_bytes = std::fs::read(&hyp_bin)?;
            let img = cloister_hyp_core::payload::build(
                &hyp_bytes,
                &std::fs::read(&image)?,
                &std::fs::read(&initrd)?,
            )
            .map_err(|e| anyhow::anyhow!("assembling cloister.img: {e}"))?;
            std::fs::write(&cloister_img, &img)?;
            Ok((
                (),
                Outcome::Built(format!(
                    "hyp {} KiB (goal <= 2048 KiB) + payload = {} KiB",
                    hyp_bytes.len() / 1024,
                    img.len() / 1024
                )),
            ))
        })?;
        vec![
            Item::file("cloister-img", &cloister_img, None)?,
            Item::file("hyp-elf", &hyp_elf, None)?,
        ]
    } else {
        Vec::new()
    };

    // The board disk image: cloister.img, its boot script and uEnv.txt in a
    // FAT boot partition (disk.enabled needs the hyp, checked by stack::load).
    let dtb = board_dtb
        .as_ref()
        .map(|b| b.path.as_path())
        .or(stack.dtb_path.as_deref());
    let disk_outputs = if stack.file.disk.enabled {
        let (disk_img, boot_scr) = run_stage(&logs, "disk-image", |stage| {
            disk::build_stage(stage, &stack, dtb, &out, &cloister_img, &stamps)
        })?;
        let mut items = vec![
            Item::file(qemu::DISK_OUTPUT, &disk_img, None)?,
            Item::file("boot-script", &boot_scr, None)?,
        ];
        if let Some(b) = &board_dtb {
            items.push(Item::file(BOARD_DTB_OUTPUT, &b.path, None)?);
        }
        items
    } else {
        Vec::new()
    };

    let guest_outputs = match &guest_build {
        Some(g) => vec![
            Item::file(
                manifest::GUEST_KERNEL,
                &g.image,
                Some(g.kernel.release.clone()),
            )?,
            Item::file(
                "guest-vmlinux",
                &g.kernel.vmlinux,
                Some(g.kernel.release.clone()),
            )?,
            Item::file("guest-kernel-config", &g.kernel.dotconfig, None)?,
            Item::file(manifest::GUEST_INITRAMFS, &g.initramfs, None)?,
            Item::file("cloister-guest-agent", &g.agent, None)?,
        ],
        None => Vec::new(),
    };

    let busybox_version = deb_version(&busybox_deb);
    let mut inputs = vec![
        Item::file_with_hash(
            "linux-source",
            &pin.tarball,
            Some(package_version),
            tarball_sha,
        ),
        Item::file("stack", &stack.path, None)?,
        Item::file("busybox-static-arm64", &busybox_deb, busybox_version)?,
    ];
    inputs.extend(qemu::firmware_input(&stack)?);
    if let Some(dtb) = &stack.dtb_path {
        inputs.push(Item::file("board-dtb", dtb, None)?);
    }
    for f in &stack.fragment_paths {
        inputs.push(Item::file("kernel-fragment", f, None)?);
    }
    for f in &stack.guest_fragment_paths {
        inputs.push(Item::file("guest-kernel-fragment", f, None)?);
    }
    for p in &patches {
        inputs.push(Item::file("kernel-patch", p, None)?);
    }
    for entry in initramfs::overlay_entries(&overlay)? {
        if let initramfs::Entry::File { path, .. } = entry {
            inputs.push(Item::file(
                "rootfs-overlay",
                &overlay.join(path.trim_start_matches('/')),
                None,
            )?);
        }
    }
    let manifest = Manifest {
        format: manifest::FORMAT,
        stack: stack.name.clone(),
        git: manifest::git_info(&root),
        tools: vec![
            Item::tool("rustc", manifest::tool_version("rustc")),
            Item::tool(
                "aarch64-linux-gnu-gcc",
                manifest::tool_version("aarch64-linux-gnu-gcc"),
            ),
            Item::tool(
                "qemu-system-aarch64",
                manifest::tool_version("qemu-system-aarch64"),
            ),
        ]
        .into_iter()
        .chain(
            stack
                .file
                .disk
                .enabled
                .then(|| Item::tool("mkimage", manifest::tool_version("mkimage"))),
        )
        .collect(),
        inputs,
        outputs: vec![
            Item::file("host-kernel", &image, Some(kernel_build.release.clone()))?,
            Item::file(
                "host-vmlinux",
                &kernel_build.vmlinux,
                Some(kernel_build.release.clone()),
            )?,
            Item::file("host-kernel-config", &kernel_build.dotconfig, None)?,
            Item::file("host-initramfs", &initrd, None)?,
            Item::file("cloister-agent", &agent, None)?,
            Item::file("cloister-vmm", &vmm, None)?,
            Item::file(manifest::CONFORMANCE_GUEST, &conformance, None)?,
        ]
        .into_iter()
        .chain(guest_outputs)
        .chain(hyp_outputs)
        .chain(disk_outputs)
        .collect(),
        kernel_release: kernel_build.release.clone(),
    };
    std::fs::write(
        out.join("stack.resolved.toml"),
        stack::render_resolved(&stack)?,
    )?;
    let manifest_file = manifest_path(stack_name);
    std::fs::write(&manifest_file, serde_json::to_string_pretty(&manifest)?)?;
    print_summary(&stack, &manifest, &manifest_file, started);
    Ok(manifest)
}

fn print_summary(stack: &Stack, manifest: &Manifest, manifest_file: &Path, started: Instant) {
    println!(
        "stack {} ready in {:.1}s:",
        stack.name,
        started.elapsed().as_secs_f64()
    );
    for item in &manifest.outputs {
        let size = item.size.unwrap_or(0);
        let path = item.path.as_deref().map(Path::display);
        println!(
            "  {:20} {:>9} KiB  {}",
            item.name,
            size / 1024,
            path.map_or(String::new(), |p| p.to_string())
        );
    }
    println!(
        "  manifest             {} (git {}{})",
        manifest_file.display(),
        short(&manifest.git.revision),
        if manifest.git.dirty { ", dirty" } else { "" }
    );
}

/// Where the host and guest initramfs binaries are built for.
pub const MUSL: &str = "aarch64-unknown-linux-musl";
/// Where the EL2 hypervisor is built for (a static PIE, see .cargo/config.toml).
const BARE_METAL: &str = "aarch64-unknown-none";

/// Builds workspace binary `package` for `target` in release mode.
/// cargo does its own change tracking; the stage only reports whether the
/// binary changed since the last build (a stamp shared by every stack).
pub fn build_rust_binary(
    stage: &mut crate::stage::Stage,
    root: &Path,
    package: &str,
    target: &str,
    stamps: &Path,
) -> Result<(PathBuf, Outcome)> {
    stage.status(&format!(
        "cargo build --release --target {target} -p {package}"
    ));
    stage.run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--target", target, "-p", package])
            .current_dir(root),
    )?;
    let binary = root
        .join("target")
        .join(target)
        .join("release")
        .join(package);
    let hash = cache::sha256_file(&binary)?;
    let stamp = Stamp::new(stamps, package);
    if stamp.is_fresh(&hash, &[&binary]) {
        return Ok((
            binary,
            Outcome::Cached(format!("cargo: {package} unchanged")),
        ));
    }
    stamp.record(&hash)?;
    Ok((
        binary,
        Outcome::Built(format!("{package} {}", short(&hash))),
    ))
}

pub fn copy_if_changed(from: &Path, to: &Path) -> Result<()> {
    let same = to.exists() && cache::sha256_file(from)? == cache::sha256_file(to)?;
    if !same {
        std::fs::copy(from, to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

/// The version in a Debian package file name (`name_version_arch.deb`).
fn deb_version(deb: &Path) -> Option<String> {
    let name = deb.file_name()?.to_str()?;
    let version = name.split('_').nth(1)?;
    Some(version.replace("%3a", ":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        build: BuildImage,
    }

    #[test]
    fn the_stack_is_positional_or_a_flag_and_defaults_to_qemu_virt() {
        use clap::Parser;
        let name = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("build-image").chain(args.iter().copied()))
                .map(|c| c.build.stack_name())
                .map_err(|e| e.to_string())
        };
        assert_eq!(name(&["rock5b"]).unwrap(), "rock5b");
        assert_eq!(name(&["--stack", "rock5b"]).unwrap(), "rock5b");
        assert_eq!(name(&[]).unwrap(), crate::DEFAULT_STACK);
        let err = name(&["qemu-virt", "--stack", "rock5b"]).unwrap_err();
        assert!(err.contains("cannot be used with"), "{err}");
    }

    #[test]
    fn deb_version_is_read_from_the_file_name() {
        let deb = Path::new("/x/busybox-static_1%3a1.35.0-4+deb12u1+b1_arm64.deb");
        assert_eq!(deb_version(deb).as_deref(), Some("1:1.35.0-4+deb12u1+b1"));
    }
}
