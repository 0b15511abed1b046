/*
 * Cloister EL2 entry points. Kept to what cannot be Rust: the arm64 Image
 * header, self-relocation (before any absolute address may be used), the
 * per-CPU stack switch and the jump into Rust.
 */

.equ STACK_SIZE, 0x4000          /* must match arch::STACK_SIZE */
.equ PERCPU_SIZE, 0x400          /* must match size_of::<arch::PerCpu>() */
.equ R_AARCH64_RELATIVE, 1027

.section .text.head, "ax"
.global _start
_start:
    /* arm64 Linux Image header (Documentation/arch/arm64/booting.rst). */
    b       primary_entry               /* code0 */
    .long   0                           /* code1 */
    .quad   0                           /* text_offset */
    .quad   __hyp_end - _start          /* image_size: xtask rewrites it to cover the payload */
    .quad   0xa                         /* flags: LE, 4 KiB pages, placement anywhere */
    .quad   0, 0, 0                     /* res2..res4 */
    .ascii  "ARM\x64"                   /* magic */
    .long   0                           /* res5 */

.section .text.boot, "ax"
primary_entry:
    mov     x19, x0                     /* x0 = DTB physical address */
    adrp    x20, _start                 /* load address (linked at 0) */
    add     x20, x20, :lo12:_start

    mrs     x1, CurrentEL
    cmp     x1, #(2 << 2)
    b.ne    .Lhang                      /* not entered at EL2: nothing sane to do */

    /* Apply R_AARCH64_RELATIVE relocations: *(base + offset) = base + addend. */
    adrp    x1, __rela_start
    add     x1, x1, :lo12:__rela_start
    adrp    x2, __rela_end
    add     x2, x2, :lo12:__rela_end
1:  cmp     x1, x2
    b.hs    2f
    ldp     x3, x4, [x1], #16           /* r_offset, r_info */
    ldr     x5, [x1], #8                /* r_addend */
    cmp     w4, #R_AARCH64_RELATIVE
    b.ne    .Lhang                      /* a static PIE has no other kind */
    add     x5, x5, x20
    str     x5, [x20, x3]
    b       1b
2:
    /* Zero .bss (it lives in the file, but may hold junk from a loader). */
    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
3:  cmp     x1, x2
    b.hs    4f
    str     xzr, [x1], #8
    b       3b
4:
    /* CPU 0's stack: top of HYP_STACKS[0]. */
    adrp    x1, HYP_STACKS
    add     x1, x1, :lo12:HYP_STACKS
    add     x1, x1, #STACK_SIZE
    mov     sp, x1
    /* CPU 0's per-CPU data (the vectors read it on every trap). */
    adrp    x1, HYP_PERCPU
    add     x1, x1, :lo12:HYP_PERCPU
    msr     tpidr_el2, x1

    adrp    x1, hyp_vectors
    add     x1, x1, :lo12:hyp_vectors
    msr     vbar_el2, x1
    isb

    mov     x0, x19
    mov     x1, x20
    bl      rust_primary_entry
    b       .Lhang

/*
 * Secondary CPUs arrive here from PSCI CPU_ON (issued by the hyp on behalf of
 * the host) at EL2 with the MMU off; x0 = the CPU's index.
 */
.global secondary_entry
secondary_entry:
    mov     x19, x0
    cmp     x19, #8                     /* must match arch::MAX_CPUS */
    b.hs    .Lhang
    adrp    x1, HYP_STACKS
    add     x1, x1, :lo12:HYP_STACKS
    add     x2, x19, #1
    mov     x3, #STACK_SIZE
    madd    x1, x2, x3, x1
    mov     sp, x1
    adrp    x1, HYP_PERCPU
    add     x1, x1, :lo12:HYP_PERCPU
    mov     x3, #PERCPU_SIZE
    madd    x1, x19, x3, x1
    msr     tpidr_el2, x1
    adrp    x1, hyp_vectors
    add     x1, x1, :lo12:hyp_vectors
    msr     vbar_el2, x1
    isb
    mov     x0, x19
    bl      rust_secondary_entry
.Lhang:
    wfe
    b       .Lhang

/*
 * Enter the host at EL1: x0 = entry, x1 = x0 for the host, x2 = SPSR.
 * Clears every other general register so no hyp value leaks to the host.
 */
.global enter_host
enter_host:
    msr     elr_el2, x0
    msr     spsr_el2, x2
    mov     x0, x1
    mov     x1, xzr
    mov     x2, xzr
    mov     x3, xzr
    mov     x4, xzr
    mov     x5, xzr
    mov     x6, xzr
    mov     x7, xzr
    mov     x8, xzr
    mov     x9, xzr
    mov     x10, xzr
    mov     x11, xzr
    mov     x12, xzr
    mov     x13, xzr
    mov     x14, xzr
    mov     x15, xzr
    mov     x16, xzr
    mov     x17, xzr
    mov     x18, xzr
    mov     x19, xzr
    mov     x20, xzr
    mov     x21, xzr
    mov     x22, xzr
    mov     x23, xzr
    mov     x24, xzr
    mov     x25, xzr
    mov     x26, xzr
    mov     x27, xzr
    mov     x28, xzr
    mov     x29, xzr
    mov     x30, xzr
    eret
