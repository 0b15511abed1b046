//! VCPU_RUN: runs a loaded vCPU until something needs the host.
//!
//! Guest hypercalls are answered by the portable core
//! (`guest_abi::handle_guest_hvc`) under the state lock; the guest itself
//! runs with no lock held. A physical interrupt while the guest runs comes
//! back to the host as exit 0 ("run again"), so the host services it.

use cloister_hyp_core::abi::{self, ret};
use cloister_hyp_core::guest_abi::{self, GuestOutcome};
use cloister_hyp_core::mem_protect::VmHandle;
use cloister_hyp_core::vm::VcpuContext;

use crate::arch;
use crate::boot::with_vms;

const VECTOR_LOWER_SYNC: u64 = 8;
const VECTOR_LOWER_IRQ: u64 = 9;
const VECTOR_LOWER_FIQ: u64 = 10;
const EC_WFX: u64 = 0x01;
const EC_HVC64: u64 = 0x16;
const EC_SMC64: u64 = 0x17;

/// Runs vCPU `index` of `handle`; returns VCPU_RUN's x0..x3.
pub fn run_vcpu(handle: VmHandle, index: usize) -> [u64; 4] {
    let loaded = with_vms(|_, vms, _| {
        let vm = vms.get(handle)?;
        let vttbr = vm.vttbr_el2()?;
        let vmpidr = vm.vcpu(index)?.vmpidr_el2();
        let ctx: *mut VcpuContext = vms.vcpu_load(handle, index as u64).ok()?;
        Some((ctx, vttbr, vmpidr))
    });
    let Ok(Some((ctx, vttbr, vmpidr))) = loaded else {
        return [ret::INVALID_PARAMETER, abi::err::INTERNAL, 0, 0];
    };
    let result = loop {
        // SAFETY: the vCPU is loaded (the table refuses to touch or load it
        // again until vcpu_put), its context lives in the static VM table,
        // and no lock is held while the guest runs.
        let exit = unsafe { arch::run_guest(ctx, vttbr, vmpidr) };
        match exit.vector {
            VECTOR_LOWER_SYNC => {}
            VECTOR_LOWER_IRQ | VECTOR_LOWER_FIQ => {
                break [ret::SUCCESS, abi::exit::INTERRUPTED, 0, 0]
            }
            _ => {
                break [
                    ret::INVALID_PARAMETER,
                    abi::err::INTERNAL,
                    exit.vector,
                    exit.esr,
                ]
            }
        }
        match exit.esr >> 26 {
            ec @ (EC_HVC64 | EC_SMC64) => {
                // SAFETY: as above: the loaded context is ours.
                let regs = unsafe {
                    let c = &mut *ctx;
                    if ec == EC_SMC64 {
                        // A trapped SMC returns to the SMC itself.
                        c.pc += 4;
                    }
                    let mut r = [0u64; 8];
                    r.copy_from_slice(&c.x[..8]);
                    r
                };
                let outcome = with_vms(|mem, vms, hal| {
                    let vm = vms.get_mut(handle)?;
                    Some(guest_abi::handle_guest_hvc(&regs, index, mem, vm, hal))
                });
                let Ok(Some(outcome)) = outcome else {
                    break [ret::INVALID_PARAMETER, abi::err::INTERNAL, 0, 0];
                };
                // SAFETY: as above.
                unsafe { (&mut *ctx).x[..4].copy_from_slice(&outcome.regs()) };
                match outcome {
                    GuestOutcome::Return(_) => continue,
                    GuestOutcome::Halt(_) => break [ret::SUCCESS, abi::exit::HALT, 0, 0],
                    GuestOutcome::ExitToHost { exit, .. } => {
                        let [code, a, b] = exit.to_regs();
                        break [ret::SUCCESS, code, a, b];
                    }
                }
            }
            EC_WFX => {
                // SAFETY: as above.
                unsafe { (*ctx).pc += 4 };
                break [ret::SUCCESS, abi::exit::HALT, 0, 0];
            }
            _ => {
                break [
                    ret::INVALID_PARAMETER,
                    abi::err::INTERNAL,
                    exit.esr,
                    exit.ipa,
                ]
            }
        }
    };
    let _ = with_vms(|_, vms, _| vms.vcpu_put(handle, index as u64).ok());
    result
}
