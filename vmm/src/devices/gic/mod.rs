//! The guest's GICv3 distributor and redistributors (docs/interrupts.md).
//!
//! The VMM emulates only the memory-mapped part of the GIC; the CPU
//! interface is the hardware's virtual one and the hypervisor owns the list
//! registers, SGIs and the virtual timer. So SGI and PPI registers here are
//! plain state the guest reads back, and the only interrupts the VMM
//! delivers are SPIs its own devices raise ([`Gic::raise_spi`]): if the
//! distributor forwards group 1 and the SPI is enabled, the VMM picks the
//! target vCPU from `GICD_IROUTER` and hands the INTID to the host driver
//! through an [`SpiInjector`] (`KVM_IRQ_LINE`). A pending SPI that cannot
//! be delivered yet (disabled, distributor off) stays pending here and goes
//! out as soon as a guest write makes it deliverable.
//!
//! Once handed over, an SPI's pending and active state live in the
//! hypervisor's list registers: `ISPENDR`/`ISACTIVER` here show only what
//! the VMM still holds and what the guest wrote.
//!
//! The GIC: 128 INTIDs (`GICD_TYPER.ITLinesNumber` = 3), one security
//! state (`GICD_CTLR.DS` = 1), affinity routing always on (`ARE` RAO/WI),
//! no LPIs, no message-based SPIs, no extended ranges.

mod bank;
mod regs;
#[cfg(test)]
mod tests;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bank::{Block, Irq};
use regs::{Access, Dist, Redist};

use super::ratelimit::RateLimited;

pub use regs::{GICD_SIZE, GICR_STRIDE, NR_IRQS};

/// The first SPI.
pub const FIRST_SPI: u32 = 32;
/// The most vCPUs the GIC model takes (Aff0 only, the hypervisor's limit).
pub const MAX_VCPUS: u32 = 8;

/// What hands a deliverable SPI to the host driver.
pub trait SpiInjector: Send + Sync {
    /// Makes `intid` pending on vCPU `vcpu` (edge).
    ///
    /// # Errors
    /// The host's refusal (e.g. `KVM_IRQ_LINE` failing).
    fn inject(&self, vcpu: u32, intid: u32) -> io::Result<()>;
}

impl<F: Fn(u32, u32) -> io::Result<()> + Send + Sync> SpiInjector for F {
    fn inject(&self, vcpu: u32, intid: u32) -> io::Result<()> {
        self(vcpu, intid)
    }
}

/// `KVM_IRQ_LINE`'s `irq` for an SPI on Cloister: `KVM_ARM_IRQ_TYPE_SPI`
/// (1) in bits 31:24, the target vCPU in 23:16 (Cloister's deviation: it
/// names the SPI's target), the INTID in 15:0.
pub fn kvm_irq_line_spi(vcpu: u32, intid: u32) -> u32 {
    (1 << 24) | ((vcpu & 0xff) << 16) | (intid & 0xffff)
}

/// Why the GIC could not be built or an SPI not raised.
#[derive(Debug, thiserror::Error)]
pub enum GicError {
    /// The vCPU count is outside what the model supports.
    #[error("the GIC supports 1 to {MAX_VCPUS} vCPUs, not {0}")]
    VcpuCount(u32),
    /// A device raised something that is not an implemented SPI.
    #[error("INTID {0} is not an SPI ({FIRST_SPI}..{NR_IRQS})")]
    NotAnSpi(u32),
    /// The host refused the injection.
    #[error("injecting INTID {intid} on vCPU {vcpu}: {source}")]
    Inject {
        /// The SPI.
        intid: u32,
        /// Its target.
        vcpu: u32,
        /// The host's error.
        source: io::Error,
    },
}

/// Counters for benchmarks and logs.
#[derive(Debug, Default)]
pub struct GicStats {
    /// SPIs handed to the host driver.
    pub injected: AtomicU64,
    /// SPIs raised while not deliverable (delivered later, or never).
    pub held: AtomicU64,
    /// Accesses to registers the model does not implement.
    pub unknown_accesses: AtomicU64,
}

#[derive(Debug)]
struct State {
    dist: Dist,
    redists: Vec<Redist>,
}

/// The distributor and the redistributors of `vcpus` vCPUs.
pub struct Gic {
    vcpus: u32,
    state: Mutex<State>,
    injector: Box<dyn SpiInjector>,
    stats: GicStats,
    log: RateLimited,
}

impl std::fmt::Debug for Gic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gic")
            .field("vcpus", &self.vcpus)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Gic {
    /// A GIC at reset for `vcpus` vCPUs, delivering SPIs through
    /// `injector`.
    ///
    /// # Errors
    /// [`GicError::VcpuCount`] outside 1..=[`MAX_VCPUS`].
    pub fn new(vcpus: u32, injector: Box<dyn SpiInjector>) -> Result<Self, GicError> {
        if !(1..=MAX_VCPUS).contains(&vcpus) {
            return Err(GicError::VcpuCount(vcpus));
        }
        Ok(Self {
            vcpus,
            state: Mutex::new(State {
                dist: Dist::new(),
                redists: (0..vcpus).map(|i| Redist::new(i, i + 1 == vcpus)).collect(),
            }),
            injector,
            stats: GicStats::default(),
            log: RateLimited::new("gic", 32),
        })
    }

    /// The redistributors' total size (one [`GICR_STRIDE`] per vCPU).
    pub fn gicr_size(&self) -> u64 {
        u64::from(self.vcpus) * GICR_STRIDE
    }

    /// The counters.
    pub fn stats(&self) -> &GicStats {
        &self.stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain register
        // state, still consistent enough to go on with.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn unknown(&self, what: &str, offset: u64, len: usize, write: Option<u64>) {
        self.stats.unknown_accesses.fetch_add(1, Ordering::Relaxed);
        match write {
            Some(v) => self.log.log(format_args!(
                "{what}: write of {len} bytes ({v:#x}) at {offset:#x} ignored"
            )),
            None => self.log.log(format_args!(
                "{what}: read of {len} bytes at {offset:#x} as zero"
            )),
        };
    }

    /// A guest load at `offset` in the distributor's window.
    pub fn gicd_read(&self, offset: u64, data: &mut [u8]) {
        let value = self.lock().dist.read(offset, data.len(), self.vcpus);
        match value {
            Access::Done(v) => fill(data, v),
            Access::Unknown => {
                fill(data, 0);
                self.unknown("GICD", offset, data.len(), None);
            }
        }
    }

    /// A guest store at `offset` in the distributor's window.
    pub fn gicd_write(&self, offset: u64, data: &[u8]) {
        let value = le(data);
        let outcome = self.lock().dist.write(offset, data.len(), value);
        match outcome {
            Access::Done(true) => self.deliver_pending(),
            Access::Done(false) => {}
            Access::Unknown => self.unknown("GICD", offset, data.len(), Some(value)),
        }
    }

    /// A guest load at `offset` in the redistributors' window.
    pub fn gicr_read(&self, offset: u64, data: &mut [u8]) {
        let (index, off) = (offset / GICR_STRIDE, offset % GICR_STRIDE);
        let value = {
            let mut state = self.lock();
            let rd = usize::try_from(index)
                .ok()
                .and_then(|i| state.redists.get_mut(i));
            rd.map_or(Access::Unknown, |rd| rd.read(off, data.len()))
        };
        match value {
            Access::Done(v) => fill(data, v),
            Access::Unknown => {
                fill(data, 0);
                self.unknown("GICR", offset, data.len(), None);
            }
        }
    }

    /// A guest store at `offset` in the redistributors' window.
    pub fn gicr_write(&self, offset: u64, data: &[u8]) {
        let (index, off) = (offset / GICR_STRIDE, offset % GICR_STRIDE);
        let value = le(data);
        let done = {
            let mut state = self.lock();
            let rd = usize::try_from(index)
                .ok()
                .and_then(|i| state.redists.get_mut(i));
            rd.is_some_and(|rd| rd.write(off, data.len(), value))
        };
        if !done {
            self.unknown("GICR", offset, data.len(), Some(value));
        }
    }

    /// A device's SPI fired (an edge): make it pending, and deliver it now
    /// if the distributor forwards it.
    ///
    /// # Errors
    /// [`GicError::NotAnSpi`], or the injector's failure (the SPI is then
    /// dropped: the hypervisor would not take it later either).
    pub fn raise_spi(&self, intid: u32) -> Result<(), GicError> {
        if !(FIRST_SPI..NR_IRQS).contains(&intid) {
            return Err(GicError::NotAnSpi(intid));
        }
        let target = {
            let mut state = self.lock();
            let dist = &mut state.dist;
            dist.irq_mut(intid).pending = true;
            let target = dist.deliverable(intid, self.vcpus);
            if target.is_some() {
                dist.irq_mut(intid).pending = false;
            }
            target
        };
        match target {
            Some(vcpu) => self.inject(vcpu, intid),
            None => {
                self.stats.held.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    fn inject(&self, vcpu: u32, intid: u32) -> Result<(), GicError> {
        self.injector
            .inject(vcpu, intid)
            .map_err(|source| GicError::Inject {
                intid,
                vcpu,
                source,
            })?;
        self.stats.injected.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Hands every pending SPI that became deliverable to the host.
    fn deliver_pending(&self) {
        let ready: Vec<(u32, u32)> = {
            let mut state = self.lock();
            let dist = &mut state.dist;
            (FIRST_SPI..NR_IRQS)
                .filter_map(|intid| {
                    let vcpu = dist.deliverable(intid, self.vcpus)?;
                    dist.irq_mut(intid).pending = false;
                    Some((vcpu, intid))
                })
                .collect()
        };
        for (vcpu, intid) in ready {
            if let Err(e) = self.inject(vcpu, intid) {
                self.log.log(format_args!("{e}"));
            }
        }
    }
}

/// A little-endian value of up to 8 bytes.
fn le(data: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = data.len().min(8);
    bytes[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(bytes)
}

/// Fills `data` with the low bytes of `value`, little-endian.
fn fill(data: &mut [u8], value: u64) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = value.to_le_bytes().get(i).copied().unwrap_or(0);
    }
}

/// The block view of a set of interrupts.
fn block<'a>(
    irqs: &'a mut [Irq],
    valid: std::ops::Range<u32>,
    cfg: std::ops::Range<u32>,
) -> Block<'a> {
    Block {
        irqs,
        valid,
        config_writable: cfg,
    }
}
