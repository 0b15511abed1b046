//! `cloister-vmm`: placeholder until guests run on the hypervisor.
//!
//! The VMM (kvm-ioctls against `/dev/cloister`, virtio devices, FDT
//! generation) arrives with the guests milestone; build-image does not ship
//! this binary yet.

fn main() {
    eprintln!("cloister-vmm: no VMM yet; guests arrive with the guests-on-the-hyp milestone");
    std::process::exit(2);
}
