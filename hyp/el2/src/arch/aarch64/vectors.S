/*
 * EL2 exception vectors. Every entry saves the interrupted context as a
 * TrapFrame on this CPU's EL2 stack and calls rust_trap(frame, kind); the
 * frame (possibly changed by Rust) is restored and ERET resumes the host.
 * Layout must match arch::TrapFrame: x0..x30, elr, spsr, pad (272 bytes).
 */

.equ FRAME_SIZE, 272

.macro vector kind
    .balign 128
    sub     sp, sp, #FRAME_SIZE
    stp     x0, x1, [sp, #0]
    mov     x1, #\kind
    b       trap_common
.endm

.section .text.vectors, "ax"
.balign 2048
.global hyp_vectors
hyp_vectors:
    vector 0    /* current EL, SP0: sync */
    vector 1    /* current EL, SP0: irq */
    vector 2    /* current EL, SP0: fiq */
    vector 3    /* current EL, SP0: serror */
    vector 4    /* current EL, SPx: sync */
    vector 5    /* current EL, SPx: irq */
    vector 6    /* current EL, SPx: fiq */
    vector 7    /* current EL, SPx: serror */
    vector 8    /* lower EL, AArch64: sync (HVC, SMC, aborts, traps) */
    vector 9    /* lower EL, AArch64: irq */
    vector 10   /* lower EL, AArch64: fiq */
    vector 11   /* lower EL, AArch64: serror */
    vector 12   /* lower EL, AArch32: sync */
    vector 13   /* lower EL, AArch32: irq */
    vector 14   /* lower EL, AArch32: fiq */
    vector 15   /* lower EL, AArch32: serror */

trap_common:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    mrs     x2, elr_el2
    stp     x30, x2, [sp, #240]
    mrs     x2, spsr_el2
    str     x2, [sp, #256]
    /* A trap while a guest runs on this CPU is a guest exit. */
    mrs     x2, tpidr_el2
    ldr     x3, [x2]
    cbnz    x3, guest_exit
    /* x0 was saved at [sp]; x1 holds the vector kind. */
    mov     x0, sp
    bl      rust_trap

    ldp     x30, x2, [sp, #240]
    msr     elr_el2, x2
    ldr     x2, [sp, #256]
    msr     spsr_el2, x2
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    add     sp, sp, #FRAME_SIZE
    eret
