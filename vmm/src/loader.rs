//! Loading the guest kernel into guest memory: an arm64 Linux `Image` (its
//! header's `text_offset` and `image_size` honoured, per
//! Documentation/arch/arm64/booting.rst) or a raw binary placed at the
//! start of RAM.
//!
//! The 64-byte Image header is read here rather than with linux-loader,
//! whose arm64 loader only builds for aarch64 hosts: this way the loader is
//! unit-tested on the build machine.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::layout::RAM_BASE;

/// Offset and value of the arm64 Image magic ("ARM\x64").
const IMAGE_MAGIC_OFFSET: usize = 56;
const IMAGE_MAGIC: [u8; 4] = *b"ARM\x64";
/// Size of the arm64 Image header.
const IMAGE_HEADER_SIZE: usize = 64;
/// `text_offset` to assume when `image_size` is zero (pre-3.17 kernels).
const LEGACY_TEXT_OFFSET: u64 = 0x8_0000;

/// Why a guest kernel could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be opened or read.
    #[error("reading guest kernel {path}: {source}")]
    Read {
        /// The kernel path given on the command line.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The kernel (from its load offset, with its .bss) does not fit in RAM.
    #[error("guest kernel {path} needs {size} bytes from RAM offset {offset:#x}, more than guest RAM ({ram} bytes)")]
    TooLarge {
        /// The kernel path.
        path: String,
        /// Bytes it needs (file size, or the Image's `image_size`).
        size: u64,
        /// Where in RAM it would start.
        offset: u64,
        /// Guest RAM size.
        ram: u64,
    },
    /// Writing into guest memory failed.
    #[error("writing guest kernel {path} into guest memory: {reason}")]
    Memory {
        /// The kernel path.
        path: String,
        /// vm-memory's reason.
        reason: String,
    },
}

/// Where the kernel landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// The guest address the boot vCPU starts at.
    pub entry: u64,
    /// First guest address after the kernel (and its .bss, for an Image).
    pub end: u64,
}

/// Loads `path` into `mem` (RAM from [`RAM_BASE`], `ram_size` bytes).
///
/// # Errors
/// [`LoadError`] naming the file and what is wrong with it.
pub fn load_kernel(mem: &GuestMemoryMmap, ram_size: u64, path: &Path) -> Result<Loaded, LoadError> {
    let shown = path.display().to_string();
    let read_err = |source| LoadError::Read {
        path: shown.clone(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let mut data = Vec::new();
    file.read_to_end(&mut data).map_err(read_err)?;
    let size = data.len() as u64;
    let header = data.get(..IMAGE_HEADER_SIZE);
    let is_image = header.and_then(|h| h.get(IMAGE_MAGIC_OFFSET..IMAGE_MAGIC_OFFSET + 4))
        == Some(&IMAGE_MAGIC[..]);
    let (offset, needed) = match header.filter(|_| is_image) {
        Some(h) => {
            let field = |at: usize| {
                h.get(at..at + 8)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u64::from_le_bytes)
            };
            let (text_offset, image_size) = (field(8), field(16));
            if image_size == 0 {
                (LEGACY_TEXT_OFFSET, size)
            } else {
                (text_offset, image_size.max(size))
            }
        }
        None => (0, size),
    };
    if offset.checked_add(needed).is_none_or(|end| end > ram_size) {
        return Err(LoadError::TooLarge {
            path: shown,
            size: needed,
            offset,
            ram: ram_size,
        });
    }
    let entry = RAM_BASE + offset;
    mem.write_slice(&data, GuestAddress(entry))
        .map_err(|e| LoadError::Memory {
            path: shown,
            reason: e.to_string(),
        })?;
    Ok(Loaded {
        entry,
        end: entry + needed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), usize::try_from(size).unwrap())])
            .unwrap()
    }

    fn write(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    #[test]
    fn raw_binary_lands_at_the_start_of_ram() {
        let dir = std::env::temp_dir().join(format!("cloister-vmm-raw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = write(&dir, "raw.bin", b"\x1f\x20\x03\xd5guest");
        let mem = memory(16 << 20);
        let loaded = load_kernel(&mem, 16 << 20, &path).unwrap();
        assert_eq!(
            loaded,
            Loaded {
                entry: RAM_BASE,
                end: RAM_BASE + 9
            }
        );
        let mut back = [0u8; 9];
        mem.read_slice(&mut back, GuestAddress(RAM_BASE)).unwrap();
        assert_eq!(&back, b"\x1f\x20\x03\xd5guest");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn arm64_image_honours_text_offset() {
        let dir = std::env::temp_dir().join(format!("cloister-vmm-img-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut image = vec![0u8; 4096];
        image[8..16].copy_from_slice(&0x8_0000u64.to_le_bytes()); // text_offset
        image[16..24].copy_from_slice(&0x2000u64.to_le_bytes()); // image_size
        image[56..60].copy_from_slice(b"ARM\x64");
        image[100] = 0xab;
        let path = write(&dir, "Image", &image);
        let mem = memory(16 << 20);
        let loaded = load_kernel(&mem, 16 << 20, &path).unwrap();
        assert_eq!(
            loaded,
            Loaded {
                entry: RAM_BASE + 0x8_0000,
                end: RAM_BASE + 0x8_0000 + 0x2000
            }
        );
        let mut byte = [0u8; 1];
        mem.read_slice(&mut byte, GuestAddress(RAM_BASE + 0x8_0000 + 100))
            .unwrap();
        assert_eq!(byte, [0xab]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn errors_name_the_file() {
        let mem = memory(16 << 20);
        let err = load_kernel(&mem, 16 << 20, Path::new("/nonexistent/Image")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/Image"), "{err}");
        let dir = std::env::temp_dir().join(format!("cloister-vmm-big-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = write(&dir, "big.bin", &vec![0u8; 5000]);
        let small = memory(4096);
        let err = load_kernel(&small, 4096, &path).unwrap_err();
        assert!(
            matches!(
                err,
                LoadError::TooLarge {
                    size: 5000,
                    ram: 4096,
                    ..
                }
            ),
            "{err}"
        );
        // An Image whose text_offset + image_size passes the end of RAM.
        let mut image = vec![0u8; 64];
        image[8..16].copy_from_slice(&0x8_0000u64.to_le_bytes());
        image[16..24].copy_from_slice(&0x100_0000u64.to_le_bytes());
        image[56..60].copy_from_slice(b"ARM\x64");
        let path = write(&dir, "Image", &image);
        let err = load_kernel(&memory(16 << 20), 16 << 20, &path).unwrap_err();
        assert!(
            matches!(
                err,
                LoadError::TooLarge {
                    offset: 0x8_0000,
                    ..
                }
            ),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
