//! The `cloister.img` payload table: the one definition of how the host
//! kernel and initramfs ride behind the hypervisor in a single boot file.
//!
//! xtask calls [`build`] (with the `alloc` feature) to assemble the file; the
//! hypervisor calls [`parse`] on the bytes that follow its own binary. Both
//! sides use the constants below, so the format cannot drift.
//!
//! # File layout
//!
//! ```text
//! offset 0            hyp flat binary, starting with an arm64 Linux Image header
//!                     (image_size @16 patched to the file length rounded up to 4 KiB)
//! table_offset(len)   payload table: header + entries, zero-padded to 4 KiB
//! table + entry.off   each blob, 4 KiB-aligned, zero padding between blobs
//! table + total_size  end of the payload (end of the last blob; no padding after it)
//! ```
//!
//! # Table layout (all fields little-endian)
//!
//! Header, [`HEADER_SIZE`] = 40 bytes:
//!
//! | off | size | field         | value                                                   |
//! |-----|------|---------------|---------------------------------------------------------|
//! | 0   | 8    | `magic`       | `"CLSTRPAY"`                                            |
//! | 8   | 4    | `version`     | 1                                                       |
//! | 12  | 4    | `header_size` | 40 (entries start here)                                 |
//! | 16  | 4    | `entry_count` | 1..=8                                                   |
//! | 20  | 4    | `flags`       | 0                                                       |
//! | 24  | 8    | `total_size`  | table + blobs, counted from the table start             |
//! | 32  | 4    | `table_crc32` | CRC-32 (zlib) of header + entries with this field zero  |
//! | 36  | 4    | `reserved`    | 0                                                       |
//!
//! Entry, [`ENTRY_SIZE`] = 32 bytes, `entry_count` of them right after the
//! header:
//!
//! | off | size | field      | value                                                |
//! |-----|------|------------|------------------------------------------------------|
//! | 0   | 4    | `kind`     | [`PayloadKind`]: 1 = host kernel Image, 2 = initramfs |
//! | 4   | 4    | `flags`    | 0                                                    |
//! | 8   | 8    | `offset`   | from the table start, multiple of 4096, past the table |
//! | 16  | 8    | `size`     | bytes, non-zero                                      |
//! | 24  | 4    | `crc32`    | CRC-32 (zlib) of the blob                            |
//! | 28  | 4    | `reserved` | 0                                                    |
//!
//! A kernel entry is required, an initramfs entry is optional, and each kind
//! appears at most once. Blobs lie inside `total_size`, do not overlap each
//! other or the table, and `total_size` bytes must be present.
//!
//! Everything in the table is treated as hostile: [`parse`] checks every
//! field and every sum, and reports what it found in a [`PayloadError`] that
//! prints as a one-line console message.

use core::fmt;

/// Alignment of the table and of every blob (and of the file's `image_size`).
pub const TABLE_ALIGN: usize = 4096;
/// `TABLE_ALIGN` as a `u64`, for offsets read from the table.
const ALIGN64: u64 = 4096;
/// First eight bytes of the table.
pub const MAGIC: [u8; 8] = *b"CLSTRPAY";
/// The only table version this code reads and writes.
pub const VERSION: u32 = 1;
/// Size of the table header in bytes (also the value of `header_size`).
pub const HEADER_SIZE: usize = 40;
/// Size of one table entry in bytes.
pub const ENTRY_SIZE: usize = 32;
/// Most entries a table may hold.
pub const MAX_ENTRIES: usize = 8;

/// Offset of the `image_size` field in the arm64 Linux Image header.
pub const IMAGE_SIZE_OFFSET: usize = 16;
/// Offset of the `magic` field in the arm64 Linux Image header.
pub const IMAGE_MAGIC_OFFSET: usize = 56;
/// The arm64 Linux Image header magic, `"ARM\x64"`.
pub const IMAGE_MAGIC: [u8; 4] = *b"ARM\x64";
/// Size of the arm64 Linux Image header.
pub const IMAGE_HEADER_SIZE: usize = 64;

// Header field offsets.
const H_MAGIC: usize = 0;
const H_VERSION: usize = 8;
const H_HEADER_SIZE: usize = 12;
const H_ENTRY_COUNT: usize = 16;
const H_FLAGS: usize = 20;
const H_TOTAL_SIZE: usize = 24;
const H_TABLE_CRC: usize = 32;
const H_RESERVED: usize = 36;

// Entry field offsets.
const E_KIND: usize = 0;
const E_FLAGS: usize = 4;
const E_OFFSET: usize = 8;
const E_SIZE: usize = 16;
const E_CRC: usize = 24;
const E_RESERVED: usize = 28;

// The layout above, checked at compile time.
const _: () = assert!(H_RESERVED + 4 == HEADER_SIZE);
const _: () = assert!(E_RESERVED + 4 == ENTRY_SIZE);
const _: () = assert!(HEADER_SIZE + MAX_ENTRIES * ENTRY_SIZE <= TABLE_ALIGN);
const _: () = assert!(IMAGE_MAGIC_OFFSET + 4 <= IMAGE_HEADER_SIZE);
const _: () = assert!(TABLE_ALIGN.is_power_of_two());

/// What a blob is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub enum PayloadKind {
    /// The host kernel, an arm64 Linux `Image`.
    Kernel = 1,
    /// The host initramfs (a cpio archive, possibly compressed).
    Initramfs = 2,
}

impl PayloadKind {
    /// The kind with this on-disk code, if there is one.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::Kernel),
            2 => Some(Self::Initramfs),
            _ => None,
        }
    }

    /// The on-disk code.
    pub const fn raw(self) -> u32 {
        self as u32
    }
}

impl fmt::Display for PayloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Kernel => "host kernel Image",
            Self::Initramfs => "host initramfs",
        })
    }
}

/// A field that must be zero.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReservedField {
    /// The header's `flags`.
    HeaderFlags,
    /// The header's `reserved`.
    HeaderReserved,
    /// The `flags` of entry `index`.
    EntryFlags {
        /// Entry index, from 0.
        index: u32,
    },
    /// The `reserved` word of entry `index`.
    EntryReserved {
        /// Entry index, from 0.
        index: u32,
    },
}

impl fmt::Display for ReservedField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HeaderFlags => f.write_str("header flags"),
            Self::HeaderReserved => f.write_str("header reserved word"),
            Self::EntryFlags { index } => write!(f, "entry {index} flags"),
            Self::EntryReserved { index } => write!(f, "entry {index} reserved word"),
        }
    }
}

/// Why a payload table (or the image being built) was rejected.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PayloadError {
    /// Fewer bytes are present than the table says (or than a header needs).
    Truncated {
        /// Bytes needed, from the start of the table (or of the hyp binary,
        /// for [`build`]).
        needed: u64,
        /// Bytes present.
        available: u64,
    },
    /// The table does not start with [`MAGIC`].
    BadMagic {
        /// The first eight bytes found.
        found: [u8; 8],
    },
    /// The table version is not [`VERSION`].
    UnsupportedVersion {
        /// The version found.
        found: u32,
    },
    /// `header_size` is not [`HEADER_SIZE`].
    BadHeaderSize {
        /// The value found.
        found: u32,
    },
    /// `entry_count` is 0 or more than [`MAX_ENTRIES`].
    BadEntryCount {
        /// The value found.
        found: u32,
    },
    /// A field that must be zero is not.
    NonZeroReserved {
        /// Which field.
        field: ReservedField,
        /// Its value.
        value: u32,
    },
    /// The CRC of header + entries does not match `table_crc32`.
    TableChecksum {
        /// CRC stored in the header.
        stored: u32,
        /// CRC computed over the table.
        computed: u32,
    },
    /// `total_size` is smaller than the table itself.
    BadTotalSize {
        /// `total_size` from the header.
        total_size: u64,
        /// Bytes taken by header + entries.
        table_size: u64,
    },
    /// An entry has a kind this hypervisor does not know.
    UnknownKind {
        /// Entry index, from 0.
        index: u32,
        /// The kind code found.
        found: u32,
    },
    /// Two entries have the same kind.
    DuplicateEntry {
        /// The repeated kind.
        kind: PayloadKind,
    },
    /// An entry has size 0.
    EmptyBlob {
        /// Kind of the entry.
        kind: PayloadKind,
    },
    /// A blob offset is not a multiple of [`TABLE_ALIGN`].
    Misaligned {
        /// Kind of the entry.
        kind: PayloadKind,
        /// The offset found.
        offset: u64,
    },
    /// A blob starts inside the table's header + entries.
    OverlapsTable {
        /// Kind of the entry.
        kind: PayloadKind,
        /// The offset found.
        offset: u64,
        /// Bytes taken by header + entries.
        table_size: u64,
    },
    /// A blob ends past `total_size` (or its end overflows).
    OutOfBounds {
        /// Kind of the entry.
        kind: PayloadKind,
        /// Blob offset.
        offset: u64,
        /// Blob size.
        size: u64,
        /// `total_size` from the header.
        total_size: u64,
    },
    /// Two blobs share bytes.
    Overlap {
        /// The blob that starts first (or the earlier entry, on a tie).
        first: PayloadKind,
        /// The other blob.
        second: PayloadKind,
    },
    /// A blob's CRC does not match its entry.
    EntryChecksum {
        /// Kind of the entry.
        kind: PayloadKind,
        /// CRC stored in the entry.
        stored: u32,
        /// CRC computed over the blob.
        computed: u32,
    },
    /// A required entry is absent.
    MissingEntry {
        /// The missing kind.
        kind: PayloadKind,
    },
    /// [`build`]: the hyp binary does not carry an arm64 Image header magic.
    NotArm64Image {
        /// The four bytes found at offset 56.
        found: [u8; 4],
    },
    /// [`build`]: the hyp's Image header claims more memory (`image_size`,
    /// e.g. for its .bss) than its file holds, so zeroing it would wipe the
    /// payload table that follows the file.
    HypImageSizeTooLarge {
        /// `image_size` in the hyp's header.
        image_size: u64,
        /// Where the table would start.
        table_offset: u64,
    },
    /// [`build`]: the image would not fit in the address space.
    ImageTooLarge,
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Truncated { needed, available } => write!(
                f,
                "payload truncated: {needed} bytes needed, {available} present"
            ),
            Self::BadMagic { found } => {
                write!(
                    f,
                    "no payload table: magic is {found:02x?}, expected \"CLSTRPAY\""
                )
            }
            Self::UnsupportedVersion { found } => {
                write!(
                    f,
                    "payload table version {found} is not supported (expected {VERSION})"
                )
            }
            Self::BadHeaderSize { found } => {
                write!(
                    f,
                    "payload table header_size is {found}, expected {HEADER_SIZE}"
                )
            }
            Self::BadEntryCount { found } => {
                write!(
                    f,
                    "payload table has {found} entries (1..={MAX_ENTRIES} allowed)"
                )
            }
            Self::NonZeroReserved { field, value } => {
                write!(f, "payload table {field} is {value:#x}, must be 0")
            }
            Self::TableChecksum { stored, computed } => write!(
                f,
                "payload table checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ),
            Self::BadTotalSize {
                total_size,
                table_size,
            } => write!(
                f,
                "payload total_size {total_size} is smaller than the table ({table_size} bytes)"
            ),
            Self::UnknownKind { index, found } => {
                write!(f, "payload entry {index} has unknown kind {found}")
            }
            Self::DuplicateEntry { kind } => write!(f, "payload has two {kind} entries"),
            Self::EmptyBlob { kind } => write!(f, "payload {kind} is empty"),
            Self::Misaligned { kind, offset } => write!(
                f,
                "payload {kind} offset {offset:#x} is not {TABLE_ALIGN}-byte aligned"
            ),
            Self::OverlapsTable {
                kind,
                offset,
                table_size,
            } => write!(
                f,
                "payload {kind} at {offset:#x} overlaps the table ({table_size} bytes)"
            ),
            Self::OutOfBounds {
                kind,
                offset,
                size,
                total_size,
            } => write!(
                f,
                "payload {kind} ({size} bytes at {offset:#x}) ends past total_size {total_size}"
            ),
            Self::Overlap { first, second } => write!(f, "payload {first} overlaps {second}"),
            Self::EntryChecksum {
                kind,
                stored,
                computed,
            } => write!(
                f,
                "payload {kind} checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ),
            Self::MissingEntry { kind } => write!(f, "payload has no {kind}"),
            Self::NotArm64Image { found } => write!(
                f,
                "hyp binary has no arm64 Image header: magic is {found:02x?}, expected \"ARM\\x64\""
            ),
            Self::HypImageSizeTooLarge {
                image_size,
                table_offset,
            } => write!(
                f,
                "hyp Image header image_size {image_size:#x} reaches past its file end \
                 ({table_offset:#x}); its .bss would overwrite the payload table"
            ),
            Self::ImageTooLarge => f.write_str("image too large for the address space"),
        }
    }
}

/// One blob of a parsed table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Blob<'a> {
    /// What it is.
    pub kind: PayloadKind,
    /// Offset of the blob from the table start (multiple of [`TABLE_ALIGN`]).
    pub offset: u64,
    /// The blob's bytes, borrowed from the image.
    pub bytes: &'a [u8],
}

/// A validated payload table: every check in [`parse`] has passed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PayloadTable<'a> {
    kernel: Blob<'a>,
    initramfs: Option<Blob<'a>>,
    total_size: u64,
}

impl<'a> PayloadTable<'a> {
    /// The host kernel Image.
    pub fn kernel(&self) -> &'a [u8] {
        self.kernel.bytes
    }

    /// The host initramfs, if the image carries one.
    pub fn initramfs(&self) -> Option<&'a [u8]> {
        self.initramfs.map(|b| b.bytes)
    }

    /// The blob of `kind`, with its offset from the table start.
    pub fn blob(&self, kind: PayloadKind) -> Option<Blob<'a>> {
        match kind {
            PayloadKind::Kernel => Some(self.kernel),
            PayloadKind::Initramfs => self.initramfs,
        }
    }

    /// Bytes from the table start to the end of the payload.
    pub fn total_size(&self) -> u64 {
        self.total_size
    }
}

/// Where the table starts in `cloister.img`: the hyp binary's length rounded
/// up to [`TABLE_ALIGN`].
///
/// A slice length is at most `isize::MAX`, so the rounding cannot overflow
/// for a real binary; a length within 4095 of `usize::MAX` saturates to the
/// last aligned value instead of panicking.
pub fn table_offset(hyp_binary_len: usize) -> usize {
    hyp_binary_len
        .checked_next_multiple_of(TABLE_ALIGN)
        .unwrap_or(usize::MAX & !(TABLE_ALIGN - 1))
}

/// A `usize` as a `u64` (lossless on every target this crate supports).
fn len64(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let end = at.checked_add(4)?;
    let word: [u8; 4] = bytes.get(at..end)?.try_into().ok()?;
    Some(u32::from_le_bytes(word))
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let end = at.checked_add(8)?;
    let word: [u8; 8] = bytes.get(at..end)?.try_into().ok()?;
    Some(u64::from_le_bytes(word))
}

/// One raw entry after the per-entry checks.
#[derive(Clone, Copy)]
struct Checked {
    kind: PayloadKind,
    offset: u64,
    size: u64,
    crc: u32,
}

/// Parses and validates the payload table at the start of `image_tail`
/// (the bytes of `cloister.img` from [`table_offset`] on).
///
/// Checks, in order: length of the header, magic, version, header size,
/// entry count, length of the entries, the table CRC, the reserved fields,
/// `total_size` (at least the table, at most `image_tail.len()`), then per
/// entry kind, duplicates, size, alignment, position past the table and
/// bounds; then pairwise overlap, each blob's CRC, and that a kernel is
/// present. Nothing is trusted before it is checked, and no arithmetic can
/// overflow or panic.
pub fn parse(image_tail: &[u8]) -> Result<PayloadTable<'_>, PayloadError> {
    let available = len64(image_tail.len());
    let truncated = |needed: usize| PayloadError::Truncated {
        needed: len64(needed),
        available,
    };

    let header = image_tail
        .get(..HEADER_SIZE)
        .ok_or(truncated(HEADER_SIZE))?;
    let field32 = |at| read_u32(header, at).ok_or(truncated(HEADER_SIZE));

    let magic: [u8; 8] = header
        .get(H_MAGIC..H_MAGIC + 8)
        .and_then(|m| m.try_into().ok())
        .ok_or(truncated(HEADER_SIZE))?;
    if magic != MAGIC {
        return Err(PayloadError::BadMagic { found: magic });
    }
    let version = field32(H_VERSION)?;
    if version != VERSION {
        return Err(PayloadError::UnsupportedVersion { found: version });
    }
    let header_size = field32(H_HEADER_SIZE)?;
    if usize::try_from(header_size).ok() != Some(HEADER_SIZE) {
        return Err(PayloadError::BadHeaderSize { found: header_size });
    }
    let entry_count = field32(H_ENTRY_COUNT)?;
    let count = usize::try_from(entry_count)
        .ok()
        .filter(|n| (1..=MAX_ENTRIES).contains(n))
        .ok_or(PayloadError::BadEntryCount { found: entry_count })?;
    // count <= MAX_ENTRIES, so this cannot overflow (checked at compile time
    // against TABLE_ALIGN above).
    let table_size = HEADER_SIZE + count * ENTRY_SIZE;
    let table = image_tail.get(..table_size).ok_or(truncated(table_size))?;

    let stored_crc = field32(H_TABLE_CRC)?;
    let computed_crc = table_crc(table);
    if stored_crc != computed_crc {
        return Err(PayloadError::TableChecksum {
            stored: stored_crc,
            computed: computed_crc,
        });
    }

    for (field, at) in [
        (ReservedField::HeaderFlags, H_FLAGS),
        (ReservedField::HeaderReserved, H_RESERVED),
    ] {
        let value = field32(at)?;
        if value != 0 {
            return Err(PayloadError::NonZeroReserved { field, value });
        }
    }

    let total_size = read_u64(header, H_TOTAL_SIZE).ok_or(truncated(HEADER_SIZE))?;
    let table_size64 = len64(table_size);
    if total_size < table_size64 {
        return Err(PayloadError::BadTotalSize {
            total_size,
            table_size: table_size64,
        });
    }
    if total_size > available {
        return Err(PayloadError::Truncated {
            needed: total_size,
            available,
        });
    }

    let mut entries: [Option<Checked>; MAX_ENTRIES] = [None; MAX_ENTRIES];
    for (i, slot) in entries.iter_mut().enumerate().take(count) {
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        let base = HEADER_SIZE + i * ENTRY_SIZE;
        let e32 = |off: usize| read_u32(table, base + off).ok_or(truncated(table_size));
        let e64 = |off: usize| read_u64(table, base + off).ok_or(truncated(table_size));

        let raw_kind = e32(E_KIND)?;
        let kind = PayloadKind::from_raw(raw_kind).ok_or(PayloadError::UnknownKind {
            index,
            found: raw_kind,
        })?;
        for (field, off) in [
            (ReservedField::EntryFlags { index }, E_FLAGS),
            (ReservedField::EntryReserved { index }, E_RESERVED),
        ] {
            let value = e32(off)?;
            if value != 0 {
                return Err(PayloadError::NonZeroReserved { field, value });
            }
        }
        let offset = e64(E_OFFSET)?;
        let size = e64(E_SIZE)?;
        let crc = e32(E_CRC)?;
        *slot = Some(Checked {
            kind,
            offset,
            size,
            crc,
        });
    }

    let mut kernel = None;
    let mut initramfs = None;
    for (i, e) in entries.iter().enumerate() {
        let Some(e) = *e else { continue };
        if entries
            .iter()
            .take(i)
            .flatten()
            .any(|prev| prev.kind == e.kind)
        {
            return Err(PayloadError::DuplicateEntry { kind: e.kind });
        }
        if e.size == 0 {
            return Err(PayloadError::EmptyBlob { kind: e.kind });
        }
        if !e.offset.is_multiple_of(ALIGN64) {
            return Err(PayloadError::Misaligned {
                kind: e.kind,
                offset: e.offset,
            });
        }
        if e.offset < table_size64 {
            return Err(PayloadError::OverlapsTable {
                kind: e.kind,
                offset: e.offset,
                table_size: table_size64,
            });
        }
        let out_of_bounds = PayloadError::OutOfBounds {
            kind: e.kind,
            offset: e.offset,
            size: e.size,
            total_size,
        };
        let end = e.offset.checked_add(e.size).ok_or(out_of_bounds)?;
        if end > total_size {
            return Err(out_of_bounds);
        }
        for prev in entries.iter().take(i).flatten() {
            // Both ends are checked against total_size above, so no overflow.
            let prev_end = prev.offset.saturating_add(prev.size);
            if e.offset < prev_end && prev.offset < end {
                let (first, second) = if prev.offset <= e.offset {
                    (prev.kind, e.kind)
                } else {
                    (e.kind, prev.kind)
                };
                return Err(PayloadError::Overlap { first, second });
            }
        }
        // end <= total_size <= image_tail.len(), so both convert and fit.
        let start = usize::try_from(e.offset).map_err(|_| out_of_bounds)?;
        let stop = usize::try_from(end).map_err(|_| out_of_bounds)?;
        let bytes = image_tail.get(start..stop).ok_or(out_of_bounds)?;
        let blob = Blob {
            kind: e.kind,
            offset: e.offset,
            bytes,
        };
        match e.kind {
            PayloadKind::Kernel => kernel = Some(blob),
            PayloadKind::Initramfs => initramfs = Some(blob),
        }
    }

    // CRCs last: they are the expensive part (megabytes at EL2), and every
    // cheap structural check has passed by now.
    for blob in [kernel, initramfs].into_iter().flatten() {
        let stored = entries
            .iter()
            .flatten()
            .find(|e| e.kind == blob.kind)
            .map_or(0, |e| e.crc);
        let computed = crc32(blob.bytes);
        if stored != computed {
            return Err(PayloadError::EntryChecksum {
                kind: blob.kind,
                stored,
                computed,
            });
        }
    }

    let kernel = kernel.ok_or(PayloadError::MissingEntry {
        kind: PayloadKind::Kernel,
    })?;
    Ok(PayloadTable {
        kernel,
        initramfs,
        total_size,
    })
}

/// CRC of header + entries with the `table_crc32` field taken as zero.
fn table_crc(table: &[u8]) -> u32 {
    let mut crc = Crc32::new();
    crc.update(table.get(..H_TABLE_CRC).unwrap_or_default());
    crc.update(&[0; 4]);
    crc.update(table.get(H_TABLE_CRC + 4..).unwrap_or_default());
    crc.finish()
}

/// Builds `cloister.img`: `hyp_binary`, zero padding to [`TABLE_ALIGN`], the
/// payload table, then `kernel` and (if not empty) `initramfs`, each
/// 4 KiB-aligned. The hyp's Image header `image_size` (offset 16) is set to
/// the file length rounded up to 4 KiB, so a bootloader that honours it
/// (U-Boot `booti`) keeps the payload clear of the DTB and initrd it places.
///
/// Fails if the hyp binary has no arm64 Image header, if its `image_size`
/// already claims memory past its file (a .bss there would wipe the table),
/// or if `kernel` is empty.
#[cfg(any(test, feature = "alloc"))]
pub fn build(
    hyp_binary: &[u8],
    kernel: &[u8],
    initramfs: &[u8],
) -> Result<alloc::vec::Vec<u8>, PayloadError> {
    let header = hyp_binary
        .get(..IMAGE_HEADER_SIZE)
        .ok_or(PayloadError::Truncated {
            needed: len64(IMAGE_HEADER_SIZE),
            available: len64(hyp_binary.len()),
        })?;
    let found: [u8; 4] = header
        .get(IMAGE_MAGIC_OFFSET..IMAGE_MAGIC_OFFSET + 4)
        .and_then(|m| m.try_into().ok())
        .unwrap_or_default();
    if found != IMAGE_MAGIC {
        return Err(PayloadError::NotArm64Image { found });
    }
    let table_off = table_offset(hyp_binary.len());
    let hyp_image_size = read_u64(header, IMAGE_SIZE_OFFSET).unwrap_or(0);
    if hyp_image_size > len64(table_off) {
        return Err(PayloadError::HypImageSizeTooLarge {
            image_size: hyp_image_size,
            table_offset: len64(table_off),
        });
    }
    if kernel.is_empty() {
        return Err(PayloadError::EmptyBlob {
            kind: PayloadKind::Kernel,
        });
    }

    let blobs = [
        (PayloadKind::Kernel, kernel),
        (PayloadKind::Initramfs, initramfs),
    ];
    let blobs = blobs.iter().filter(|(_, b)| !b.is_empty());
    let count = blobs.clone().count();
    let table_size = HEADER_SIZE + count * ENTRY_SIZE;

    // Lay out the blobs: (kind, bytes, offset from table start).
    let mut placed: [(PayloadKind, &[u8], usize); 2] = [(PayloadKind::Kernel, &[], 0); 2];
    let mut cursor = table_size
        .checked_next_multiple_of(TABLE_ALIGN)
        .ok_or(PayloadError::ImageTooLarge)?;
    let mut total = cursor;
    for (slot, (kind, bytes)) in placed.iter_mut().zip(blobs) {
        *slot = (*kind, *bytes, cursor);
        total = cursor
            .checked_add(bytes.len())
            .ok_or(PayloadError::ImageTooLarge)?;
        cursor = total
            .checked_next_multiple_of(TABLE_ALIGN)
            .ok_or(PayloadError::ImageTooLarge)?;
    }
    let file_len = table_off
        .checked_add(total)
        .ok_or(PayloadError::ImageTooLarge)?;
    let image_size = file_len
        .checked_next_multiple_of(TABLE_ALIGN)
        .ok_or(PayloadError::ImageTooLarge)?;

    let mut out = alloc::vec![0u8; file_len];
    let put = |out: &mut [u8], at: usize, bytes: &[u8]| -> Result<(), PayloadError> {
        let end = at
            .checked_add(bytes.len())
            .ok_or(PayloadError::ImageTooLarge)?;
        out.get_mut(at..end)
            .ok_or(PayloadError::ImageTooLarge)?
            .copy_from_slice(bytes);
        Ok(())
    };

    put(&mut out, 0, hyp_binary)?;
    put(
        &mut out,
        IMAGE_SIZE_OFFSET,
        &len64(image_size).to_le_bytes(),
    )?;

    let mut table = [0u8; HEADER_SIZE + MAX_ENTRIES * ENTRY_SIZE];
    put(&mut table, H_MAGIC, &MAGIC)?;
    put(&mut table, H_VERSION, &VERSION.to_le_bytes())?;
    let header_size = u32::try_from(HEADER_SIZE).map_err(|_| PayloadError::ImageTooLarge)?;
    put(&mut table, H_HEADER_SIZE, &header_size.to_le_bytes())?;
    let entry_count = u32::try_from(count).map_err(|_| PayloadError::ImageTooLarge)?;
    put(&mut table, H_ENTRY_COUNT, &entry_count.to_le_bytes())?;
    put(&mut table, H_TOTAL_SIZE, &len64(total).to_le_bytes())?;
    for (i, (kind, bytes, offset)) in placed.iter().take(count).enumerate() {
        let base = HEADER_SIZE + i * ENTRY_SIZE;
        put(&mut table, base + E_KIND, &kind.raw().to_le_bytes())?;
        put(&mut table, base + E_OFFSET, &len64(*offset).to_le_bytes())?;
        put(&mut table, base + E_SIZE, &len64(bytes.len()).to_le_bytes())?;
        put(&mut table, base + E_CRC, &crc32(bytes).to_le_bytes())?;
        let blob_at = table_off
            .checked_add(*offset)
            .ok_or(PayloadError::ImageTooLarge)?;
        put(&mut out, blob_at, bytes)?;
    }
    let table = table.get(..table_size).ok_or(PayloadError::ImageTooLarge)?;
    let crc = table_crc(table);
    put(&mut out, table_off, table)?;
    put(&mut out, table_off + H_TABLE_CRC, &crc.to_le_bytes())?;
    Ok(out)
}

/// Slice-by-8 lookup tables for the reflected CRC-32 polynomial 0xEDB88320,
/// built at compile time (8 KiB of rodata).
const CRC_TABLES: [[u32; 256]; 8] = crc_tables();

const fn crc_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0usize;
    let mut byte: u32 = 0;
    while i < 256 {
        let mut c = byte;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            bit += 1;
        }
        t[0][i] = c;
        i += 1;
        byte += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        k += 1;
    }
    t
}

/// Table lookup; the mask keeps the index below 256, so it cannot panic.
#[inline(always)]
fn lut(table: usize, value: u32) -> u32 {
    CRC_TABLES[table & 7][(value & 0xff) as usize]
}

/// Incremental CRC-32/ISO-HDLC (the zlib / PNG / Ethernet CRC).
#[derive(Clone, Copy, Debug)]
pub struct Crc32(u32);

impl Crc32 {
    /// A fresh CRC.
    pub const fn new() -> Self {
        Self(!0)
    }

    /// Feeds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        let mut crc = self.0;
        let (words, rest) = bytes.as_chunks::<8>();
        for w in words {
            let lo = u32::from_le_bytes([w[0], w[1], w[2], w[3]]) ^ crc;
            let hi = u32::from_le_bytes([w[4], w[5], w[6], w[7]]);
            crc = lut(7, lo)
                ^ lut(6, lo >> 8)
                ^ lut(5, lo >> 16)
                ^ lut(4, lo >> 24)
                ^ lut(3, hi)
                ^ lut(2, hi >> 8)
                ^ lut(1, hi >> 16)
                ^ lut(0, hi >> 24);
        }
        for &b in rest {
            crc = (crc >> 8) ^ lut(0, crc ^ u32::from(b));
        }
        self.0 = crc;
    }

    /// The CRC of everything fed so far.
    pub const fn finish(self) -> u32 {
        !self.0
    }
}

impl Default for Crc32 {
    fn default() -> Self {
        Self::new()
    }
}

/// CRC-32/ISO-HDLC of `bytes` (zlib's `crc32`): `crc32(b"123456789") ==
/// 0xCBF4_3926`. Slice-by-8, about one table lookup per byte.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = Crc32::new();
    crc.update(bytes);
    crc.finish()
}

#[cfg(test)]
mod tests;
