//! Links the EL2 image with hyp.ld, and only for the bare-metal target: on
//! the build machine the crate is an empty binary so workspace-wide
//! `cargo clippy` and `cargo test` keep working.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    println!("cargo:rerun-if-changed=hyp.ld");
    println!("cargo:rerun-if-changed=src/arch/aarch64/entry.S");
    println!("cargo:rerun-if-changed=src/arch/aarch64/vectors.S");
    if target == "aarch64-unknown-none" {
        println!("cargo:rustc-link-arg-bins=-T{dir}/hyp.ld");
        // Position independent: the hyp runs wherever the loader put it
        // (QEMU: RAM + 2 MiB; U-Boot booti: any 2 MiB boundary) and applies
        // its own R_AARCH64_RELATIVE relocations before touching memory.
        println!("cargo:rustc-link-arg-bins=--pie");
        println!("cargo:rustc-link-arg-bins=-znotext");
        println!("cargo:rustc-link-arg-bins=--no-dynamic-linker");
    }
}
