//! Which virtio devices a VM gets and how they are wired: host files
//! opened up front (so a bad `--disk` or `--console` is reported before a
//! VM exists), slots in the memory map, SPIs raised through the GIC, and
//! the console's input thread.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::gic::Gic;
use super::ratelimit::RateLimited;
use super::virtio::block::Block;
use super::virtio::console::{Console, ConsoleInput, RX_QUEUE};
use super::virtio::mmio::IrqTrigger;
use super::virtio::MmioTransport;
use crate::arch::layout::{virtio_slot, MAX_VIRTIO_DEVICES};
use crate::guest_mem::GuestRam;

/// Where the virtio console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleTarget {
    /// The VMM's stdout, with input from its stdin (`--console -`).
    Stdio,
    /// A file (created or truncated); no input.
    File(PathBuf),
}

impl ConsoleTarget {
    /// `-` is stdio, anything else a path.
    pub fn parse(arg: &str) -> Self {
        if arg == "-" {
            Self::Stdio
        } else {
            Self::File(arg.into())
        }
    }
}

/// The virtio devices asked for.
#[derive(Debug, Clone, Default)]
pub struct DeviceOptions {
    /// A virtio console, if any.
    pub console: Option<ConsoleTarget>,
    /// A virtio-blk disk backed by this file, if any.
    pub disk: Option<PathBuf>,
}

/// Why the devices could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The disk image could not be opened or measured.
    #[error("--disk {path}: {source}")]
    Disk {
        /// The path given.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// The disk image is smaller than one sector.
    #[error("--disk {0}: smaller than one 512-byte sector")]
    DiskTooSmall(String),
    /// The console file could not be created.
    #[error("--console {path}: {source}")]
    Console {
        /// The path given.
        path: String,
        /// The error.
        source: io::Error,
    },
}

/// An opened disk image.
#[derive(Debug)]
struct Disk {
    file: File,
    size: u64,
    read_only: bool,
    id: String,
}

/// The devices, their host files opened, not yet attached to a VM.
pub struct DevicePlan {
    console: Option<(Box<dyn Write + Send>, bool)>,
    disk: Option<Disk>,
}

impl std::fmt::Debug for DevicePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevicePlan")
            .field("console", &self.console.as_ref().map(|c| c.1))
            .field("disk", &self.disk)
            .finish()
    }
}

fn open_disk(path: &Path) -> Result<Disk, SetupError> {
    let shown = path.display().to_string();
    let err = |source| SetupError::Disk {
        path: shown.clone(),
        source,
    };
    // Read-write if allowed, else read-only (the guest is told: F_RO).
    let (file, read_only) = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => (f, false),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            (File::open(path).map_err(err)?, true)
        }
        Err(e) => return Err(err(e)),
    };
    let size = file.metadata().map_err(err)?.len();
    if size < 512 {
        return Err(SetupError::DiskTooSmall(shown));
    }
    let id = path
        .file_name()
        .map_or_else(|| "disk".into(), |n| n.to_string_lossy().into_owned());
    Ok(Disk {
        file,
        size,
        read_only,
        id,
    })
}

impl DevicePlan {
    /// Opens the files `opts` names.
    ///
    /// # Errors
    /// [`SetupError`] naming the option and path.
    pub fn open(opts: &DeviceOptions) -> Result<Self, SetupError> {
        let console: Option<(Box<dyn Write + Send>, bool)> = match &opts.console {
            None => None,
            Some(ConsoleTarget::Stdio) => Some((Box::new(io::stdout()), true)),
            Some(ConsoleTarget::File(path)) => {
                let f = File::create(path).map_err(|source| SetupError::Console {
                    path: path.display().to_string(),
                    source,
                })?;
                Some((Box::new(f), false))
            }
        };
        let disk = opts.disk.as_deref().map(open_disk).transpose()?;
        Ok(Self { console, disk })
    }

    /// The devices' windows and INTIDs, in slot order (console, disk).
    pub fn slots(&self) -> Vec<(u64, u32)> {
        let n = u32::from(self.console.is_some()) + u32::from(self.disk.is_some());
        (0..n.min(MAX_VIRTIO_DEVICES)).map(virtio_slot).collect()
    }

    /// Whether the console reads the VMM's stdin.
    pub fn console_reads_stdin(&self) -> bool {
        self.console.as_ref().is_some_and(|c| c.1)
    }

    /// Builds the transports on `ram`, raising their SPIs on `gic`. With
    /// `protected`, drivers must accept `VIRTIO_F_ACCESS_PLATFORM`.
    pub fn build(self, ram: &Arc<GuestRam>, gic: &Arc<Gic>, protected: bool) -> Devices {
        let slots = self.slots();
        let mut slots = slots.iter();
        let mut transports = Vec::new();
        let mut console_input = None;
        let mut attach = |dev: Box<dyn super::virtio::VirtioDevice>| {
            let &(_, intid) = slots.next()?;
            let t = MmioTransport::new(dev, Arc::clone(ram), irq(gic, intid), protected);
            let t = Arc::new(Mutex::new(t));
            transports.push(Arc::clone(&t));
            Some(t)
        };
        if let Some((out, _)) = self.console {
            let input = ConsoleInput::default();
            let t = attach(Box::new(Console::new(out, input.clone())));
            console_input = t.map(|t| (input, t));
        }
        if let Some(d) = self.disk {
            let blk = Block::new(Box::new(d.file), d.size, d.read_only, &d.id);
            attach(Box::new(blk));
        }
        Devices {
            transports,
            console_input,
        }
    }
}

/// The built devices.
#[derive(Debug, Default)]
pub struct Devices {
    /// The transports, in slot order (for the bus).
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// The console's input queue and transport, for the input thread.
    pub console_input: Option<(ConsoleInput, Arc<Mutex<MmioTransport>>)>,
}

static IRQ_LOG: RateLimited = RateLimited::new("virtio interrupt", 8);

/// A device's interrupt: raise `intid` on the GIC (failures logged).
fn irq(gic: &Arc<Gic>, intid: u32) -> IrqTrigger {
    let gic = Arc::clone(gic);
    Box::new(move || {
        if let Err(e) = gic.raise_spi(intid) {
            IRQ_LOG.log(format_args!("{e}"));
        }
    })
}

/// Starts a thread that feeds `reader` (the VMM's stdin) to the console:
/// each read goes into `input`, then the receive queue is processed. Ends
/// at end of file or on a read error.
///
/// # Errors
/// The thread could not be spawned.
pub fn spawn_input_reader<R: Read + Send + 'static>(
    mut reader: R,
    input: ConsoleInput,
    transport: Arc<Mutex<MmioTransport>>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            let mut buf = [0u8; 256];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                input.push(&buf[..n]);
                transport
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .process(RX_QUEUE);
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_mem::SharedPages;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    fn temp(name: &str, len: u64) -> PathBuf {
        let path = std::env::temp_dir().join(format!("cloister-{name}-{}", std::process::id()));
        let f = File::create(&path).unwrap();
        f.set_len(len).unwrap();
        path
    }

    #[test]
    fn bad_paths_are_named() {
        let missing = DeviceOptions {
            disk: Some("/nonexistent/disk.img".into()),
            ..Default::default()
        };
        let e = DevicePlan::open(&missing).unwrap_err().to_string();
        assert!(e.contains("--disk /nonexistent/disk.img"), "{e}");
        let tiny = temp("tiny", 100);
        let e = DevicePlan::open(&DeviceOptions {
            disk: Some(tiny.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(e, SetupError::DiskTooSmall(_)), "{e}");
        let _ = std::fs::remove_file(tiny);
        let e = DevicePlan::open(&DeviceOptions {
            console: Some(ConsoleTarget::parse("/nonexistent/dir/console.log")),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("--console /nonexistent/dir/console.log"),
            "{e}"
        );
    }

    #[test]
    fn console_then_disk_get_consecutive_slots_and_spis() {
        let disk = temp("disk", 1 << 20);
        let log = temp("console", 0);
        let plan = DevicePlan::open(&DeviceOptions {
            console: Some(ConsoleTarget::File(log.clone())),
            disk: Some(disk.clone()),
        })
        .unwrap();
        assert_eq!(plan.slots(), [(0x0a00_0000, 32), (0x0a00_0200, 33)]);
        assert!(!plan.console_reads_stdin());
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0x8000_0000), 0x1_0000)]).unwrap();
        let ram = Arc::new(GuestRam::new(mem, SharedPages::all(0x8000_0000, 0x1_0000)));
        let raised = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&raised);
        let gic = Arc::new(
            Gic::new(
                1,
                Box::new(move |v, i| {
                    sink.lock().unwrap().push((v, i));
                    Ok(())
                }),
            )
            .unwrap(),
        );
        let devices = plan.build(&ram, &gic, true);
        assert_eq!(devices.transports.len(), 2);
        let (input, t) = devices.console_input.unwrap();
        // Input before the driver is up is kept, not lost.
        let reader = spawn_input_reader(&b"hi"[..], input.clone(), t).unwrap();
        reader.join().unwrap();
        assert_eq!(input.push(&[]), 0);
        assert!(!input.is_empty());
        assert!(DevicePlan::open(&DeviceOptions::default())
            .unwrap()
            .slots()
            .is_empty());
        assert_eq!(ConsoleTarget::parse("-"), ConsoleTarget::Stdio);
        let _ = std::fs::remove_file(disk);
        let _ = std::fs::remove_file(log);
    }

    /// The whole path over the bus: the guest enables the disk's SPI at
    /// the distributor, sets up the device, sends a FLUSH; the completion
    /// reaches the injector as (vCPU 0, INTID 32).
    #[test]
    fn a_completed_request_raises_the_disks_spi_through_the_gic() {
        use crate::arch::layout::{GICD_BASE, GICR_BASE};
        use crate::devices::test_dev::TestDevice;
        use crate::devices::Bus;
        use crate::guest_mem::PAGE_SIZE;
        use vm_memory::Bytes;

        let disk = temp("irq-disk", 1 << 20);
        let plan = DevicePlan::open(&DeviceOptions {
            disk: Some(disk.clone()),
            ..Default::default()
        })
        .unwrap();
        let (base, intid) = plan.slots()[0];
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0x8000_0000), 0x10_0000)]).unwrap();
        let ram = Arc::new(GuestRam::new(
            mem,
            SharedPages::none(0x8000_0000, 0x10_0000),
        ));
        let raised = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&raised);
        let injector = move |v, i| {
            sink.lock().unwrap().push((v, i));
            Ok(())
        };
        let gic = Arc::new(Gic::new(2, Box::new(injector)).unwrap());
        let devices = plan.build(&ram, &gic, true);
        let bus = Bus::new(Vec::new(), TestDevice::new(Box::new(|_, _| 0)))
            .with_gic(Arc::clone(&gic))
            .with_virtio(devices.transports);
        let w = |addr: u64, v: u32| {
            bus.write(addr, &v.to_le_bytes());
        };
        // The distributor: on, SPI 32 group 1, edge, to vCPU 0, enabled.
        w(GICD_BASE, 0x13);
        w(GICD_BASE + 0x84, !0);
        w(GICD_BASE + 0xc08, 2);
        bus.write(
            GICD_BASE + 0x6000 + 8 * u64::from(intid),
            &0u64.to_le_bytes(),
        );
        w(GICD_BASE + 0x104, 1 << (intid - 32));
        let mut typer = [0u8; 8];
        bus.read(GICR_BASE + 0x8, &mut typer);
        assert_eq!(u64::from_le_bytes(typer) >> 32, 0);
        // The device, with its rings and buffers in the (shared) pool.
        let pool = 0x8008_0000u64;
        for p in 0..4 {
            ram.shared().share(pool + p * PAGE_SIZE);
        }
        w(base + 0x70, 0);
        w(base + 0x70, 3);
        w(base + 0x24, 1);
        w(base + 0x20, 3); // VERSION_1 | ACCESS_PLATFORM
        w(base + 0x70, 11);
        let mut status = [0u8; 4];
        bus.read(base + 0x70, &mut status);
        assert_eq!(status[0], 11, "FEATURES_OK kept");
        w(base + 0x30, 0);
        w(base + 0x38, 8);
        let (desc, avail, used) = (pool, pool + 0x100, pool + 0x200);
        for (reg, addr) in [(0x80, desc), (0x90, avail), (0xa0, used)] {
            w(base + reg, u32::try_from(addr & 0xffff_ffff).unwrap());
            w(base + reg + 4, u32::try_from(addr >> 32).unwrap());
        }
        w(base + 0x44, 1);
        w(base + 0x70, 15);
        // FLUSH: header at pool+0x1000, status at pool+0x2000.
        let m = ram.backend();
        m.write_slice(
            &[4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            GuestAddress(pool + 0x1000),
        )
        .unwrap();
        let d0 = [(pool + 0x1000, 16u32, 1u16, 1u16), (pool + 0x2000, 1, 2, 0)];
        for (i, (addr, len, flags, next)) in d0.iter().enumerate() {
            let at = desc + 16 * i as u64;
            m.write_obj(*addr, GuestAddress(at)).unwrap();
            m.write_obj(*len, GuestAddress(at + 8)).unwrap();
            m.write_obj(*flags, GuestAddress(at + 12)).unwrap();
            m.write_obj(*next, GuestAddress(at + 14)).unwrap();
        }
        m.write_obj(0u16, GuestAddress(avail + 4)).unwrap();
        m.write_obj(1u16, GuestAddress(avail + 2)).unwrap();
        m.write_obj(0xffu8, GuestAddress(pool + 0x2000)).unwrap();
        assert!(raised.lock().unwrap().is_empty());
        assert_eq!(
            bus.write(base + 0x50, &0u32.to_le_bytes()),
            crate::devices::Claim::VirtioNotify
        );
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(pool + 0x2000)).unwrap(),
            0,
            "S_OK"
        );
        assert_eq!(
            m.read_obj::<u16>(GuestAddress(used + 2)).unwrap(),
            1,
            "used"
        );
        assert_eq!(*raised.lock().unwrap(), [(0, intid)]);
        let mut isr = [0u8; 4];
        bus.read(base + 0x60, &mut isr);
        assert_eq!(isr[0], 1, "used-buffer interrupt");
        let _ = std::fs::remove_file(disk);
    }
}
