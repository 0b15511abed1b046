/*
 * EL1 exception vectors. Every entry saves the caller-saved registers, ELR
 * and SPSR as an ExceptionFrame (layout: arch::ExceptionFrame) and calls
 * rust_exception(kind, frame); the frame, possibly changed by Rust (ELR
 * moved past a faulting instruction), is restored and ERET resumes.
 */

.equ FRAME_SIZE, 192                    /* x0..x18, x29, x30, elr, spsr, pad */

.macro vector kind
    .balign 128
    sub     sp, sp, #FRAME_SIZE
    stp     x0, x1, [sp, #0]
    mov     x0, #\kind
    b       exception_common
.endm

.section .text.vectors, "ax"
.balign 2048
.global el1_vectors
el1_vectors:
    vector 0    /* current EL, SP0: sync */
    vector 1    /* current EL, SP0: irq */
    vector 2    /* current EL, SP0: fiq */
    vector 3    /* current EL, SP0: serror */
    vector 4    /* current EL, SPx: sync (our HVCs, loads, aborts) */
    vector 5    /* current EL, SPx: irq */
    vector 6    /* current EL, SPx: fiq */
    vector 7    /* current EL, SPx: serror */
    vector 8    /* lower EL, AArch64: sync (never: nothing runs at EL0) */
    vector 9
    vector 10
    vector 11
    vector 12   /* lower EL, AArch32 */
    vector 13
    vector 14
    vector 15

exception_common:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x29, [sp, #144]
    mrs     x2, elr_el1
    stp     x30, x2, [sp, #160]
    mrs     x2, spsr_el1
    str     x2, [sp, #176]
    mov     x1, sp
    bl      rust_exception
    ldp     x30, x2, [sp, #160]
    msr     elr_el1, x2
    ldr     x2, [sp, #176]
    msr     spsr_el1, x2
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x29, [sp, #144]
    add     sp, sp, #FRAME_SIZE
    eret
