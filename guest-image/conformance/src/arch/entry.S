/*
 * Entry points of the conformance guest. Kept to what cannot be Rust:
 * self-relocation (before any absolute address is used), zeroing .bss, the
 * stack, FP/SIMD access, the vector table, and the second vCPU's whole life
 * (it needs no stack: it stores its context ID and turns itself off).
 *
 * Both vCPUs run at EL1 with the MMU off, so every data access is
 * Device-nGnRnE: nothing here (or in Rust, built with +strict-align) makes
 * an unaligned or exclusive access.
 */

.equ R_AARCH64_RELATIVE, 1027
.equ BOOT_STACK_SIZE, 0x8000
.equ SECONDARY_STACK_SIZE, 0x1000
.equ CPACR_FPEN, (3 << 20)
.equ PSCI_CPU_OFF, 0x84000002

.section .text.head, "ax"
.global _start
_start:
    msr     daifset, #0xf
    mov     x19, x0                     /* x0 = DTB address (boot protocol) */
    adrp    x20, _start                 /* load address (linked at 0) */
    add     x20, x20, :lo12:_start

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
    /* Zero .bss (it is in the file, but a loader may reuse a dirty buffer). */
    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
3:  cmp     x1, x2
    b.hs    4f
    str     xzr, [x1], #8
    b       3b
4:
    adrp    x1, boot_stack_top
    add     x1, x1, :lo12:boot_stack_top
    mov     sp, x1
    bl      el1_setup
    mov     x0, x19
    bl      rust_main
    b       .Lhang

/* FP/SIMD on (the compiler uses NEON registers), vectors installed. */
el1_setup:
    mov     x1, #CPACR_FPEN
    msr     cpacr_el1, x1
    adrp    x1, el1_vectors
    add     x1, x1, :lo12:el1_vectors
    msr     vbar_el1, x1
    isb
    ret

/*
 * The second vCPU, started by PSCI CPU_ON with x0 = the context ID: store
 * it where the first vCPU polls, then CPU_OFF, which does not return.
 */
.global secondary_entry
secondary_entry:
    msr     daifset, #0xf
    mov     x19, x0
    adrp    x1, secondary_stack_top
    add     x1, x1, :lo12:secondary_stack_top
    mov     sp, x1
    bl      el1_setup
    adrp    x1, SECONDARY_FLAG
    add     x1, x1, :lo12:SECONDARY_FLAG
    str     x19, [x1]
    dsb     sy
    movz    x0, #(PSCI_CPU_OFF & 0xffff)
    movk    x0, #(PSCI_CPU_OFF >> 16), lsl #16
    mov     x1, xzr
    mov     x2, xzr
    mov     x3, xzr
    hvc     #0
.Lhang:
    wfi
    b       .Lhang

.section .bss.stacks, "aw", %nobits
.balign 16
boot_stack:
    .space  BOOT_STACK_SIZE
boot_stack_top:
secondary_stack:
    .space  SECONDARY_STACK_SIZE
secondary_stack_top:
