//! `cargo xtask`: Cloister's only front door.
//!
//! One subcommand per module, each a clap struct with a `run` method; this
//! file only dispatches. Every path is relative to the project root, which is
//! found from this crate's manifest directory, so xtask works from any cwd.

mod bench;
mod board;
mod build;
mod cache;
mod codegen;
mod deps;
mod disk;
mod e2e;
mod flash;
mod guest;
mod initramfs;
mod kernel;
mod lava;
mod manifest;
mod pins;
mod qemu;
mod run;
mod stack;
mod stage;
mod test;
mod tidy;

use std::path::{Path, PathBuf};

use clap::Parser;

/// Cloister: a patched Linux host, a Rust EL2 hypervisor, a Rust VMM and a
/// Linux guest, built and booted as one stack.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version)]
enum Xtask {
    /// Build every artifact of a stack into target/cloister/<stack>/.
    BuildImage(build::BuildImage),
    /// Boot a stack in QEMU with an interactive console (builds first).
    Run(run::Run),
    /// Run the gates (fmt, clippy, unit tests) and the e2e scenarios.
    Test(test::Test),
    /// Print a stack's fully resolved description.
    Inspect(stack::Inspect),
    /// Measure what the stack costs (`bench boot`).
    Bench(bench::Bench),
    /// Regenerate files derived from the Rust ABI definitions (`--check` to verify).
    Codegen(codegen::Codegen),
    /// Write a stack's disk image to an SD card or USB disk, then verify it.
    Flash(flash::Flash),
    /// Write LAVA job definitions that run the e2e scenarios (`--run` runs them).
    Lava(lava::Lava),
}

fn main() {
    let result = match Xtask::parse() {
        Xtask::BuildImage(cmd) => cmd.run(),
        Xtask::Run(cmd) => cmd.run(),
        Xtask::Test(cmd) => cmd.run(),
        Xtask::Inspect(cmd) => cmd.run(),
        Xtask::Bench(cmd) => cmd.run(),
        Xtask::Codegen(cmd) => cmd.run(),
        Xtask::Flash(cmd) => cmd.run(),
        Xtask::Lava(cmd) => cmd.run(),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

/// The repository root (the directory holding the workspace Cargo.toml).
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Where every build output lives: `target/cloister/`.
fn cloister_dir() -> PathBuf {
    project_root().join("target").join("cloister")
}

/// The name of the stack used when none is given.
const DEFAULT_STACK: &str = "qemu-virt";
