/*
 * The world switch between the host (which asked for VCPU_RUN) and a guest
 * vCPU, and the FP/SIMD register file moves. Layouts:
 *   PerCpu (arch::PerCpu): guest_ctx @0, host_sp @8, host x19..x30 @16
 *   VcpuContext (cloister_hyp_core::vm::ctx_offset): x0..x30 @0, pc @248,
 *   pstate @256 -- the same layout as the first 264 bytes of a TrapFrame,
 *   so a guest exit copies its trap frame straight into the context.
 */

.section .text, "ax"

/* u64 guest_enter(PerCpu *pcpu, VcpuContext *ctx): runs the guest until it
 * traps to EL2; returns the vector index it came in through. */
.global guest_enter
guest_enter:
    stp     x19, x20, [x0, #16]
    stp     x21, x22, [x0, #32]
    stp     x23, x24, [x0, #48]
    stp     x25, x26, [x0, #64]
    stp     x27, x28, [x0, #80]
    stp     x29, x30, [x0, #96]
    mov     x2, sp
    str     x2, [x0, #8]
    ldr     x2, [x1, #248]
    msr     elr_el2, x2
    ldr     x2, [x1, #256]
    msr     spsr_el2, x2
    /* From here on a trap is a guest exit (vectors.S checks guest_ctx). */
    str     x1, [x0, #0]
    ldp     x2, x3, [x1, #16]
    ldp     x4, x5, [x1, #32]
    ldp     x6, x7, [x1, #48]
    ldp     x8, x9, [x1, #64]
    ldp     x10, x11, [x1, #80]
    ldp     x12, x13, [x1, #96]
    ldp     x14, x15, [x1, #112]
    ldp     x16, x17, [x1, #128]
    ldp     x18, x19, [x1, #144]
    ldp     x20, x21, [x1, #160]
    ldp     x22, x23, [x1, #176]
    ldp     x24, x25, [x1, #192]
    ldp     x26, x27, [x1, #208]
    ldp     x28, x29, [x1, #224]
    ldr     x30, [x1, #240]
    ldp     x0, x1, [x1, #0]
    eret

/* Reached from trap_common with the guest's TrapFrame at sp, x1 = vector
 * index, x2 = PerCpu, x3 = the guest's VcpuContext. */
.global guest_exit
guest_exit:
    mov     x4, #0
1:  ldr     x5, [sp, x4]
    str     x5, [x3, x4]
    add     x4, x4, #8
    cmp     x4, #264
    b.lo    1b
    str     xzr, [x2, #0]
    mov     x0, x1
    ldr     x4, [x2, #8]
    mov     sp, x4
    ldp     x19, x20, [x2, #16]
    ldp     x21, x22, [x2, #32]
    ldp     x23, x24, [x2, #48]
    ldp     x25, x26, [x2, #64]
    ldp     x27, x28, [x2, #80]
    ldp     x29, x30, [x2, #96]
    ret

/* void fp_save(FpState *fp) / void fp_restore(const FpState *fp):
 * V0..V31 then FPSR, FPCR (cloister_hyp_core::vm::FpState). */
.global fp_save
fp_save:
    stp     q0, q1, [x0, #0]
    stp     q2, q3, [x0, #32]
    stp     q4, q5, [x0, #64]
    stp     q6, q7, [x0, #96]
    stp     q8, q9, [x0, #128]
    stp     q10, q11, [x0, #160]
    stp     q12, q13, [x0, #192]
    stp     q14, q15, [x0, #224]
    stp     q16, q17, [x0, #256]
    stp     q18, q19, [x0, #288]
    stp     q20, q21, [x0, #320]
    stp     q22, q23, [x0, #352]
    stp     q24, q25, [x0, #384]
    stp     q26, q27, [x0, #416]
    stp     q28, q29, [x0, #448]
    stp     q30, q31, [x0, #480]
    mrs     x1, fpsr
    mrs     x2, fpcr
    add     x3, x0, #512
    stp     x1, x2, [x3]
    ret

.global fp_restore
fp_restore:
    ldp     q0, q1, [x0, #0]
    ldp     q2, q3, [x0, #32]
    ldp     q4, q5, [x0, #64]
    ldp     q6, q7, [x0, #96]
    ldp     q8, q9, [x0, #128]
    ldp     q10, q11, [x0, #160]
    ldp     q12, q13, [x0, #192]
    ldp     q14, q15, [x0, #224]
    ldp     q16, q17, [x0, #256]
    ldp     q18, q19, [x0, #288]
    ldp     q20, q21, [x0, #320]
    ldp     q22, q23, [x0, #352]
    ldp     q24, q25, [x0, #384]
    ldp     q26, q27, [x0, #416]
    ldp     q28, q29, [x0, #448]
    ldp     q30, q31, [x0, #480]
    add     x3, x0, #512
    ldp     x1, x2, [x3]
    msr     fpsr, x1
    msr     fpcr, x2
    ret
