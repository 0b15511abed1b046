//! VCPU_RUN: runs a loaded vCPU until something needs the host.
//!
//! What every trap means is the portable core's decision
//! (`exits::handle_guest_exit`, under the state lock); this loop only
//! settles the last exit, loads the vCPU, enters the guest with no lock
//! held, and puts the vCPU back when the core says "exit to the host".

use cloister_hyp_core::abi::{self, ret};
use cloister_hyp_core::exits::{self, ExitAction, RunRequest};
use cloister_hyp_core::mem_protect::VmHandle;
use cloister_hyp_core::vm::VcpuContext;

use crate::arch;
use crate::boot::with_vms;

const INTERNAL: [u64; 4] = [ret::INVALID_PARAMETER, abi::err::INTERNAL, 0, 0];

/// Runs vCPU `index` of `handle` (checked by the decoder, with `run`);
/// returns VCPU_RUN's x0..x3.
pub fn run_vcpu(handle: VmHandle, index: usize, run: RunRequest) -> [u64; 4] {
    let index_abi = index as u64;
    let loaded = with_vms(|_, vms, hal| {
        if let Err(e) = vms.settle_pending(handle, index_abi, run, hal) {
            return Err(e.to_regs());
        }
        let vm = vms.get(handle).ok_or(INTERNAL)?;
        let vttbr = vm.vttbr_el2().ok_or(INTERNAL)?;
        let vmpidr = vm.vcpu(index).ok_or(INTERNAL)?.vmpidr_el2();
        vms.vcpu_load(handle, index_abi).map_err(|e| e.to_regs())?;
        Ok((vttbr, vmpidr))
    });
    let (vttbr, vmpidr) = match loaded {
        Ok(Ok(v)) => v,
        Ok(Err(regs)) => return regs,
        Err(_) => return INTERNAL,
    };
    let result = loop {
        // A fresh pointer each time round: the table is only reached
        // through the lock, and nothing holds a reference into it now.
        let ctx = with_vms(|_, vms, _| {
            vms.prepare_entry(handle, index, arch::counter_now(), arch::nr_lrs());
            vms.loaded_context(handle, index)
                .map(|c| c as *mut VcpuContext)
        });
        let Ok(Some(ctx)) = ctx else {
            break INTERNAL;
        };
        // SAFETY: the vCPU is loaded (the table refuses to touch or load it
        // again until vcpu_put), its context lives in the static VM table,
        // and no lock is held while the guest runs.
        let trap = unsafe { arch::run_guest(ctx, vttbr, vmpidr) };
        let action =
            with_vms(|mem, vms, hal| exits::handle_guest_exit(vms, handle, index, trap, mem, hal));
        match action {
            Ok(ExitAction::Resume) => continue,
            Ok(ExitAction::Exit(regs)) => break regs,
            Err(_) => break INTERNAL,
        }
    };
    let _ = with_vms(|_, vms, _| vms.vcpu_put(handle, index_abi).ok());
    result
}
