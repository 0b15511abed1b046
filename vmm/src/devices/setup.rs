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
}
