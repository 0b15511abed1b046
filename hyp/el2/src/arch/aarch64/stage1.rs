//! The hyp's own EL2 stage-1 tables: an identity map with W^X for the hyp
//! image (text RX, rodata R, data RW-NX), RAM RW-NX and the console RW-NX
//! as device memory. 4 KiB granule, 39-bit VA (TCR_EL2.T0SZ = 25), walks
//! start at level 1; blocks are used wherever alignment allows.

use core::cell::UnsafeCell;

const POOL_PAGES: usize = 48;
const ENTRIES: usize = 512;

#[repr(C, align(4096))]
struct Pool(UnsafeCell<[[u64; ENTRIES]; POOL_PAGES]>);

// SAFETY: only the boot CPU touches the pool, once, before secondaries run.
unsafe impl Sync for Pool {}

static POOL: Pool = Pool(UnsafeCell::new([[0; ENTRIES]; POOL_PAGES]));

/// What a range is mapped as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S1Attr {
    Text,
    ReadOnly,
    ReadWrite,
    Device,
}

const VALID: u64 = 1;
const TABLE_OR_PAGE: u64 = 1 << 1;
const ATTR_DEVICE: u64 = 0 << 2;
const ATTR_NORMAL: u64 = 1 << 2;
const AP_RW: u64 = 1 << 6;
const AP_RO: u64 = 3 << 6;
const SH_INNER: u64 = 3 << 8;
const AF: u64 = 1 << 10;
const XN: u64 = 1 << 54;
const ADDR_MASK: u64 = 0x0000_ffff_ffff_f000;

impl S1Attr {
    fn bits(self) -> u64 {
        match self {
            S1Attr::Text => ATTR_NORMAL | AP_RO | SH_INNER | AF,
            S1Attr::ReadOnly => ATTR_NORMAL | AP_RO | SH_INNER | AF | XN,
            S1Attr::ReadWrite => ATTR_NORMAL | AP_RW | SH_INNER | AF | XN,
            S1Attr::Device => ATTR_DEVICE | AP_RW | AF | XN,
        }
    }
}

/// Builds the tables in the static pool (boot CPU only, MMU off).
#[derive(Debug)]
pub struct Stage1Builder {
    pool: &'static mut [[u64; ENTRIES]; POOL_PAGES],
    pool_pa: u64,
    used: usize,
}

/// Why a mapping could not be made.
#[derive(Debug, Clone, Copy)]
pub enum Stage1Error {
    OutOfTables,
    Unaligned { addr: u64 },
    Conflict { va: u64 },
}

impl core::fmt::Display for Stage1Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Stage1Error::OutOfTables => write!(f, "out of EL2 table pages ({POOL_PAGES})"),
            Stage1Error::Unaligned { addr } => write!(f, "{addr:#x} is not page aligned"),
            Stage1Error::Conflict { va } => write!(f, "{va:#x} is already mapped"),
        }
    }
}

impl Stage1Builder {
    /// Takes the pool. Call once.
    pub fn take() -> Self {
        // SAFETY: called once by the boot CPU before any other CPU runs and
        // before the MMU is on; nothing else references POOL.
        let pool = unsafe { &mut *POOL.0.get() };
        let pool_pa = pool.as_ptr() as u64;
        Stage1Builder {
            pool,
            pool_pa,
            used: 1,
        }
    }

    pub fn root_pa(&self) -> u64 {
        self.pool_pa
    }

    fn alloc(&mut self) -> Result<usize, Stage1Error> {
        if self.used >= POOL_PAGES {
            return Err(Stage1Error::OutOfTables);
        }
        self.used += 1;
        Ok(self.used - 1)
    }

    fn index_of(&self, pa: u64) -> usize {
        usize::try_from((pa - self.pool_pa) / 4096).unwrap_or(usize::MAX)
    }

    /// Identity-maps `[start, end)` (4 KiB aligned).
    pub fn map(&mut self, start: u64, end: u64, attr: S1Attr) -> Result<(), Stage1Error> {
        if !start.is_multiple_of(4096) || !end.is_multiple_of(4096) {
            return Err(Stage1Error::Unaligned {
                addr: if !start.is_multiple_of(4096) {
                    start
                } else {
                    end
                },
            });
        }
        let mut va = start;
        while va < end {
            va = self.map_one(va, end, attr)?;
        }
        Ok(())
    }

    /// Maps the largest block that fits at `va`; returns the next address.
    fn map_one(&mut self, va: u64, end: u64, attr: S1Attr) -> Result<u64, Stage1Error> {
        let mut table = 0usize;
        for level in 1..=3u32 {
            let shift = 12 + 9 * (3 - level);
            let size = 1u64 << shift;
            let idx = usize::try_from((va >> shift) & 511).unwrap_or(0);
            let entry = self.pool[table][idx];
            let block_ok = level >= 2 && va.is_multiple_of(size) && end - va >= size;
            if level == 3 || block_ok {
                if entry & VALID != 0 {
                    return Err(Stage1Error::Conflict { va });
                }
                let kind = if level == 3 { TABLE_OR_PAGE } else { 0 };
                self.pool[table][idx] = (va & ADDR_MASK) | attr.bits() | kind | VALID;
                return Ok(va + size);
            }
            if entry & VALID == 0 {
                let next = self.alloc()?;
                self.pool[table][idx] = (self.pool_pa + 4096 * next as u64) | TABLE_OR_PAGE | VALID;
                table = next;
            } else if entry & TABLE_OR_PAGE != 0 {
                table = self.index_of(entry & ADDR_MASK);
            } else {
                return Err(Stage1Error::Conflict { va });
            }
        }
        Err(Stage1Error::Conflict { va })
    }

    pub fn tables_used(&self) -> usize {
        self.used
    }
}

/// Installs the tables and turns the EL2 MMU and caches on (this CPU).
pub fn enable_mmu(root_pa: u64) {
    // MAIR: attr0 = Device-nGnRE, attr1 = Normal WB RA WA.
    super::write_sysreg!("mair_el2", 0x04 | (0xff << 8));
    let parange = super::read_sysreg!("id_aa64mmfr0_el1") & 0xf;
    let ps = parange.min(0b010); // at most 40-bit PA, enough for these boards
                                 // TCR_EL2: T0SZ=25, IRGN0/ORGN0 = WB WA, SH0 inner, TG0 4K, PS, RES1 bits 23 and 31.
    let tcr = 25 | (1 << 8) | (1 << 10) | (3 << 12) | (ps << 16) | (1 << 23) | (1 << 31);
    super::write_sysreg!("tcr_el2", tcr);
    super::write_sysreg!("ttbr0_el2", root_pa);
    super::dsb_ish();
    // SAFETY: drop any stale EL2 translations before turning the MMU on.
    unsafe {
        core::arch::asm!(
            "tlbi alle2",
            "dsb ish",
            "isb",
            options(nostack, preserves_flags)
        )
    };
    const SCTLR_RES1: u64 = 0x30c5_0830;
    const M: u64 = 1;
    const C: u64 = 1 << 2;
    const SA: u64 = 1 << 3;
    const I: u64 = 1 << 12;
    const WXN: u64 = 1 << 19;
    super::write_sysreg!("sctlr_el2", SCTLR_RES1 | M | C | SA | I | WXN);
    super::isb();
}
