//! Links the guest image with conformance.ld, and only for the bare-metal
//! target: on the build machine the binary is an empty program, so
//! workspace-wide `cargo clippy` and `cargo test` keep working.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    println!("cargo:rerun-if-changed=conformance.ld");
    println!("cargo:rerun-if-changed=src/arch/entry.S");
    println!("cargo:rerun-if-changed=src/arch/vectors.S");
    if target == "aarch64-unknown-none" {
        println!("cargo:rustc-link-arg-bins=-T{dir}/conformance.ld");
        // A static PIE, like the hyp: the VMM loads the raw binary at the
        // start of guest RAM (0x8000_0000), QEMU's -kernel at RAM + 512 KiB;
        // the entry code applies its own R_AARCH64_RELATIVE relocations.
        println!("cargo:rustc-link-arg-bins=--pie");
        println!("cargo:rustc-link-arg-bins=-znotext");
        println!("cargo:rustc-link-arg-bins=--no-dynamic-linker");
    }
}
