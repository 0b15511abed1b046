//! Reading and editing the flattened device tree (DTB) the hypervisor gets in
//! `x0`.
//!
//! Three jobs, no heap:
//!
//! - [`host_platform`] reads what the hyp needs to start: RAM, the console
//!   UART (PL011 or 16550), the PSCI conduit, the CPUs (MPIDRs) and any
//!   initrd the bootloader already placed.
//! - [`for_each_device_range`] and [`for_each_reserved_range`] list the
//!   MMIO and the reserved memory the DTB describes, for the host stage-2
//!   (see [`crate::host_map`]).
//! - [`rewrite`] copies the tree into a new buffer while (a) adding `no-map`
//!   children `cloister-hyp@<addr>` under `/reserved-memory` (creating that
//!   node if needed) and (b) setting `linux,initrd-start`, `linux,initrd-end`
//!   and optionally `bootargs` in `/chosen` (creating it if needed). The
//!   host kernel then boots from the copy.
//!
//! The DTB is hostile input: a bootloader or a user supplied it. The header
//! and every token are checked before use (the internal `Fdt` constructor
//! walks the whole structure block once); all offsets use checked
//! arithmetic; slices are read with `get`, nothing unwraps and nothing
//! recurses, so a damaged tree gives an [`FdtError`], never a panic or a
//! stack overflow.
//!
//! Format reference: Devicetree Specification v0.4, chapter 5 (header,
//! memory reservation block, structure block tokens, strings block).

use core::fmt;

use crate::addr::PhysAddr;
use crate::uart::{ConsoleProblem, Uart, UartKind};

/// `magic` of every DTB.
pub const FDT_MAGIC: u32 = 0xd00d_feed;
/// Size of the DTB header (version 17).
pub const HEADER_SIZE: usize = 40;
/// Most RAM regions [`host_platform`] records.
pub const MAX_RAM_REGIONS: usize = 8;
/// Most CPUs [`host_platform`] records.
pub const MAX_CPUS: usize = 8;
/// Deepest node path [`host_platform`] resolves (root counts as one level).
pub const MAX_DEPTH: usize = 16;

const TOK_BEGIN_NODE: u32 = 1;
const TOK_END_NODE: u32 = 2;
const TOK_PROP: u32 = 3;
const TOK_NOP: u32 = 4;
const TOK_END: u32 = 9;

/// Version written by [`rewrite`].
const OUT_VERSION: u32 = 17;
/// Oldest version a reader of [`rewrite`]'s output must understand.
const OUT_LAST_COMP_VERSION: u32 = 16;

/// Name prefix of the reserved-memory children [`rewrite`] adds.
pub const RESERVED_NODE_PREFIX: &str = "cloister-hyp@";

// ---------------------------------------------------------------------------
// Errors

/// A short copy of a path or name from the DTB, for error messages (the
/// error type cannot borrow the DTB).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Snippet {
    bytes: [u8; 48],
    len: u8,
}

impl Snippet {
    fn new(src: &[u8]) -> Self {
        let mut bytes = [0u8; 48];
        let len = src.len().min(bytes.len());
        if let (Some(dst), Some(src)) = (bytes.get_mut(..len), src.get(..len)) {
            dst.copy_from_slice(src);
        }
        Self {
            bytes,
            len: u8::try_from(len).unwrap_or(0),
        }
    }

    /// The captured bytes (at most 48).
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or_default()
    }
}

impl fmt::Display for Snippet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.as_bytes() {
            if b.is_ascii_graphic() || b == b' ' {
                write!(f, "{}", char::from(b))?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Snippet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// A block of the DTB named in [`FdtError::BadBlock`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Block {
    /// The memory reservation block.
    MemReserve,
    /// The structure block.
    Struct,
    /// The strings block.
    Strings,
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MemReserve => "memory reservation block",
            Self::Struct => "structure block",
            Self::Strings => "strings block",
        })
    }
}

/// What is wrong inside the structure block.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Malformed {
    /// A token value that is not one of the five defined ones.
    BadToken {
        /// The value found.
        token: u32,
    },
    /// The block ends inside a token (or before `FDT_END`).
    TruncatedToken,
    /// A node name runs off the end of the block.
    UnterminatedName,
    /// A property name offset is outside the strings block, or its string
    /// is not NUL-terminated.
    BadStringOffset {
        /// The offset found.
        nameoff: u32,
    },
    /// `FDT_END_NODE` without a matching `FDT_BEGIN_NODE`, or `FDT_END`
    /// inside a node.
    Unbalanced,
    /// No root node before `FDT_END`.
    NoRoot,
    /// A second top-level node after the root.
    SecondRoot,
    /// A property outside every node.
    PropOutsideNode,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadToken { token } => write!(f, "unknown token {token:#x}"),
            Self::TruncatedToken => f.write_str("block ends inside a token"),
            Self::UnterminatedName => f.write_str("node name is not NUL-terminated"),
            Self::BadStringOffset { nameoff } => {
                write!(f, "property name offset {nameoff:#x} is not a string")
            }
            Self::Unbalanced => f.write_str("node begin/end tokens do not nest"),
            Self::NoRoot => f.write_str("no root node"),
            Self::SecondRoot => f.write_str("more than one root node"),
            Self::PropOutsideNode => f.write_str("property outside any node"),
        }
    }
}

/// Why a DTB was rejected, or could not be read or edited as asked.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FdtError {
    /// The slice is shorter than the header or than `totalsize`.
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// The header does not start with [`FDT_MAGIC`].
    BadMagic {
        /// The value found.
        found: u32,
    },
    /// Not a version-17-compatible tree.
    UnsupportedVersion {
        /// `version` from the header.
        version: u32,
        /// `last_comp_version` from the header.
        last_comp_version: u32,
    },
    /// A block lies (partly) outside `totalsize`, overlaps the header, or is
    /// misaligned.
    BadBlock {
        /// Which block.
        block: Block,
        /// Its offset from the header.
        offset: u32,
        /// Its size (for the reservation block: bytes up to and including the
        /// terminating entry that were found before giving up).
        size: u32,
        /// `totalsize` from the header.
        totalsize: u32,
    },
    /// The structure block is not a well-formed token stream.
    Malformed {
        /// Offset of the offending token inside the structure block.
        offset: usize,
        /// What is wrong.
        problem: Malformed,
    },
    /// A node the hyp needs is absent.
    MissingNode {
        /// Its path.
        path: &'static str,
    },
    /// A property the hyp needs is absent.
    MissingProperty {
        /// The node (path, or a description).
        node: &'static str,
        /// The property name.
        prop: &'static str,
    },
    /// A property has the wrong length or an unusable value.
    BadProperty {
        /// The node (path, or a description).
        node: &'static str,
        /// The property name.
        prop: &'static str,
        /// Length of the value found.
        len: usize,
    },
    /// `#address-cells` / `#size-cells` values this code cannot use (more
    /// than 2 cells, or no address cells).
    UnsupportedCells {
        /// The node whose children use them.
        node: &'static str,
        /// `#address-cells`.
        address_cells: u32,
        /// `#size-cells`.
        size_cells: u32,
    },
    /// `/chosen/stdout-path` names no node (directly or through `/aliases`).
    StdoutUnresolved {
        /// The path or alias, options stripped.
        path: Snippet,
    },
    /// The console node is not a UART the hyp can drive.
    Console {
        /// The console node's path.
        path: Snippet,
        /// What is wrong with it.
        problem: ConsoleProblem,
    },
    /// The console's `reg` cannot be translated to a CPU physical address
    /// (a parent bus has no `ranges`, or no range covers it).
    Untranslatable {
        /// The bus address that could not be translated.
        addr: u64,
    },
    /// `/psci` `method` is neither `"smc"` nor `"hvc"`.
    UnknownPsciMethod {
        /// The value found.
        found: Snippet,
    },
    /// More items than the fixed-size result can hold.
    TooMany {
        /// What was being counted.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// A node path is deeper than [`MAX_DEPTH`].
    TooDeep,
    /// A memory region wraps around the address space.
    RegionOverflow {
        /// Region base.
        base: u64,
        /// Region size.
        size: u64,
    },
    /// [`rewrite`]: `dst` is too small for the new tree.
    NoSpace {
        /// Bytes the new tree needs.
        needed: usize,
        /// Bytes in `dst`.
        available: usize,
    },
    /// [`rewrite`]: the new tree would exceed the 4 GiB a DTB header can
    /// describe.
    TooLarge {
        /// Bytes the new tree needs.
        needed: usize,
    },
    /// [`rewrite`]: a reservation is empty or wraps.
    BadReservation {
        /// Its base.
        base: PhysAddr,
        /// Its size.
        size: u64,
    },
    /// [`rewrite`]: two reservations (or a reservation and an existing
    /// `/reserved-memory` child) would get the same node name.
    DuplicateReservation {
        /// The base address in the name.
        base: PhysAddr,
    },
    /// [`rewrite`]: a value does not fit the `#address-cells` /
    /// `#size-cells` of `/reserved-memory`.
    ValueTooWide {
        /// The value.
        value: u64,
        /// Cells available.
        cells: u32,
    },
    /// [`rewrite`]: `linux,initrd-start` would be past `linux,initrd-end`.
    BadInitrd {
        /// Start.
        start: PhysAddr,
        /// End.
        end: PhysAddr,
    },
    /// [`rewrite`]: `bootargs` contains a NUL byte.
    BadBootargs,
}

impl fmt::Display for FdtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Truncated { needed, available } => {
                write!(
                    f,
                    "DTB truncated: {needed} bytes needed, {available} present"
                )
            }
            Self::BadMagic { found } => {
                write!(
                    f,
                    "not a DTB: magic {found:#010x}, expected {FDT_MAGIC:#010x}"
                )
            }
            Self::UnsupportedVersion {
                version,
                last_comp_version,
            } => write!(
                f,
                "DTB version {version} (compatible back to {last_comp_version}) is not supported; \
                 need a version-17 reader"
            ),
            Self::BadBlock {
                block,
                offset,
                size,
                totalsize,
            } => write!(
                f,
                "DTB {block} at {offset:#x} (+{size:#x}) is outside totalsize {totalsize:#x}, \
                 overlaps the header or is misaligned"
            ),
            Self::Malformed { offset, problem } => {
                write!(f, "DTB structure block malformed at {offset:#x}: {problem}")
            }
            Self::MissingNode { path } => write!(f, "DTB has no {path} node"),
            Self::MissingProperty { node, prop } => {
                write!(f, "DTB node {node} has no {prop} property")
            }
            Self::BadProperty { node, prop, len } => {
                write!(f, "DTB property {node} {prop} is malformed ({len} bytes)")
            }
            Self::UnsupportedCells {
                node,
                address_cells,
                size_cells,
            } => write!(
                f,
                "DTB node {node} has #address-cells = {address_cells}, #size-cells = {size_cells}; \
                 only 1 or 2 (0 for sizes) are supported"
            ),
            Self::StdoutUnresolved { path } => {
                write!(f, "DTB /chosen stdout-path \"{path}\" names no node")
            }
            Self::Console { path, problem } => write!(f, "DTB console {path} {problem}"),
            Self::Untranslatable { addr } => {
                write!(
                    f,
                    "DTB console bus address {addr:#x} has no CPU physical address"
                )
            }
            Self::UnknownPsciMethod { found } => {
                write!(f, "DTB /psci method \"{found}\" is neither smc nor hvc")
            }
            Self::TooMany { what, max } => write!(f, "DTB has more than {max} {what}"),
            Self::TooDeep => write!(f, "DTB node path deeper than {MAX_DEPTH} levels"),
            Self::RegionOverflow { base, size } => {
                write!(f, "DTB memory region {base:#x} + {size:#x} wraps around")
            }
            Self::NoSpace { needed, available } => {
                write!(
                    f,
                    "DTB rewrite needs {needed} bytes, buffer has {available}"
                )
            }
            Self::TooLarge { needed } => write!(f, "DTB rewrite would be {needed} bytes (> 4 GiB)"),
            Self::BadReservation { base, size } => {
                write!(f, "reservation {base} + {size:#x} is empty or wraps")
            }
            Self::DuplicateReservation { base } => write!(
                f,
                "/reserved-memory already has (or is given twice) {RESERVED_NODE_PREFIX}{:x}",
                base
            ),
            Self::ValueTooWide { value, cells } => {
                write!(
                    f,
                    "{value:#x} does not fit in {cells} cell(s) of /reserved-memory"
                )
            }
            Self::BadInitrd { start, end } => {
                write!(f, "initrd start {start} is past its end {end}")
            }
            Self::BadBootargs => f.write_str("bootargs contains a NUL byte"),
        }
    }
}

// ---------------------------------------------------------------------------
// Results of `host_platform`

/// A fixed-capacity list (no heap).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ArrayList<T: Copy + Default, const N: usize> {
    items: [T; N],
    len: usize,
}

impl<T: Copy + Default, const N: usize> ArrayList<T, N> {
    /// An empty list.
    pub fn new() -> Self {
        Self {
            items: [T::default(); N],
            len: 0,
        }
    }

    /// Appends `item`, or gives it back if the list is full.
    pub fn push(&mut self, item: T) -> Result<(), T> {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = item;
                self.len += 1;
                Ok(())
            }
            None => Err(item),
        }
    }

    /// The items pushed so far.
    pub fn as_slice(&self) -> &[T] {
        self.items.get(..self.len).unwrap_or_default()
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T: Copy + Default, const N: usize> Default for ArrayList<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + Default + fmt::Debug, const N: usize> fmt::Debug for ArrayList<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// A physical address range.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct MemRegion {
    /// First byte.
    pub base: PhysAddr,
    /// Length in bytes (non-zero).
    pub size: u64,
}

/// How PSCI calls reach firmware.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PsciConduit {
    /// `SMC #0` (QEMU `virt` with `virtualization=on`).
    Smc,
    /// `HVC #0`.
    Hvc,
}

/// An initrd range as `/chosen` gives it: `[start, end)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct InitrdRange {
    /// `linux,initrd-start`.
    pub start: PhysAddr,
    /// `linux,initrd-end` (exclusive).
    pub end: PhysAddr,
}

/// What the hyp learns from the DTB it was booted with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Platform {
    /// RAM, from every `/memory*` node's `reg`, in DTB order.
    pub ram: ArrayList<MemRegion, MAX_RAM_REGIONS>,
    /// The UART that `/chosen/stdout-path` names (CPU physical address)
    /// and the driver it needs.
    pub uart: Uart,
    /// `/psci` `method`.
    pub psci: PsciConduit,
    /// Each CPU's `reg` (its MPIDR affinity bits), in DTB order.
    pub cpus: ArrayList<u64, MAX_CPUS>,
    /// The initrd the bootloader already placed, if `/chosen` names one.
    pub initrd: Option<InitrdRange>,
}

// ---------------------------------------------------------------------------
// Low-level reading

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    let end = at.checked_add(4)?;
    let word: [u8; 4] = bytes.get(at..end)?.try_into().ok()?;
    Some(u32::from_be_bytes(word))
}

fn be64(bytes: &[u8], at: usize) -> Option<u64> {
    let end = at.checked_add(8)?;
    let word: [u8; 8] = bytes.get(at..end)?.try_into().ok()?;
    Some(u64::from_be_bytes(word))
}

fn to_usize(v: u32) -> usize {
    // u32 always fits in usize on the targets this crate builds for.
    usize::try_from(v).unwrap_or(usize::MAX)
}

fn align4(v: usize) -> Option<usize> {
    v.checked_next_multiple_of(4)
}

/// Bytes of `s` up to (not including) the first NUL, or all of it.
fn until_nul(s: &[u8]) -> &[u8] {
    match s.iter().position(|&b| b == 0) {
        Some(n) => s.get(..n).unwrap_or(s),
        None => s,
    }
}

/// A `n`-cell big-endian number at cell index `cell` of `v` (n = 0, 1, 2).
fn read_cells(v: &[u8], cell: usize, n: u32) -> Option<u64> {
    let at = cell.checked_mul(4)?;
    match n {
        0 => Some(0),
        1 => be32(v, at).map(u64::from),
        2 => be64(v, at),
        _ => None,
    }
}

/// One token of the structure block.
#[derive(Clone, Copy, Debug)]
enum Token<'a> {
    BeginNode { name: &'a [u8] },
    EndNode,
    Prop { name: &'a [u8], value: &'a [u8] },
    Nop,
    End,
}

/// A DTB whose header and structure block have been checked.
#[derive(Clone, Copy, Debug)]
struct Fdt<'a> {
    structs: &'a [u8],
    strings: &'a [u8],
    rsvmap: &'a [u8],
    boot_cpuid_phys: u32,
    /// Offset of the root node's first inner token.
    root: usize,
}

/// Header fields, in order.
const H_MAGIC: usize = 0;
const H_TOTALSIZE: usize = 4;
const H_OFF_STRUCT: usize = 8;
const H_OFF_STRINGS: usize = 12;
const H_OFF_RSVMAP: usize = 16;
const H_VERSION: usize = 20;
const H_LAST_COMP: usize = 24;
const H_BOOT_CPUID: usize = 28;
const H_SIZE_STRINGS: usize = 32;
const H_SIZE_STRUCT: usize = 36;

/// `totalsize` from a DTB header, checking the magic: how many bytes to map
/// or copy before calling [`host_platform`] or [`rewrite`]. Needs the first
/// 8 bytes only.
pub fn total_size(header: &[u8]) -> Result<usize, FdtError> {
    let magic = be32(header, H_MAGIC).ok_or(FdtError::Truncated {
        needed: 8,
        available: header.len(),
    })?;
    if magic != FDT_MAGIC {
        return Err(FdtError::BadMagic { found: magic });
    }
    let total = be32(header, H_TOTALSIZE).ok_or(FdtError::Truncated {
        needed: 8,
        available: header.len(),
    })?;
    Ok(to_usize(total))
}

impl<'a> Fdt<'a> {
    /// Checks the header, the three blocks and the whole token stream.
    fn new(dtb: &'a [u8]) -> Result<Self, FdtError> {
        let truncated = FdtError::Truncated {
            needed: HEADER_SIZE,
            available: dtb.len(),
        };
        let header = dtb.get(..HEADER_SIZE).ok_or(truncated)?;
        let field = |at| be32(header, at).ok_or(truncated);
        let magic = field(H_MAGIC)?;
        if magic != FDT_MAGIC {
            return Err(FdtError::BadMagic { found: magic });
        }
        let totalsize32 = field(H_TOTALSIZE)?;
        let totalsize = to_usize(totalsize32);
        let blob = dtb.get(..totalsize).ok_or(FdtError::Truncated {
            needed: totalsize,
            available: dtb.len(),
        })?;
        let version = field(H_VERSION)?;
        let last_comp_version = field(H_LAST_COMP)?;
        if version < OUT_VERSION || last_comp_version > OUT_VERSION {
            return Err(FdtError::UnsupportedVersion {
                version,
                last_comp_version,
            });
        }

        let block = |block, off: u32, size: u32, align: usize| {
            let bad = FdtError::BadBlock {
                block,
                offset: off,
                size,
                totalsize: totalsize32,
            };
            let start = to_usize(off);
            let end = start.checked_add(to_usize(size)).ok_or(bad)?;
            if start < HEADER_SIZE || !start.is_multiple_of(align) {
                return Err(bad);
            }
            blob.get(start..end).ok_or(bad)
        };
        let structs = block(
            Block::Struct,
            field(H_OFF_STRUCT)?,
            field(H_SIZE_STRUCT)?,
            4,
        )?;
        let strings = block(
            Block::Strings,
            field(H_OFF_STRINGS)?,
            field(H_SIZE_STRINGS)?,
            1,
        )?;

        // The reservation block has no size field: entries run to a (0, 0)
        // terminator, which must lie inside totalsize.
        let off_rsv = field(H_OFF_RSVMAP)?;
        let rsv_from = block(Block::MemReserve, off_rsv, 0, 8)?;
        let rsv_all = blob.get(to_usize(off_rsv)..).unwrap_or(rsv_from);
        let mut rsv_len = 0usize;
        loop {
            let entry_end = rsv_len.checked_add(16);
            let entry = entry_end.and_then(|end| rsv_all.get(rsv_len..end));
            let (Some(entry), Some(end)) = (entry, entry_end) else {
                return Err(FdtError::BadBlock {
                    block: Block::MemReserve,
                    offset: off_rsv,
                    size: u32::try_from(rsv_len).unwrap_or(u32::MAX),
                    totalsize: totalsize32,
                });
            };
            rsv_len = end;
            if entry.iter().all(|&b| b == 0) {
                break;
            }
        }
        let rsvmap = rsv_all.get(..rsv_len).unwrap_or_default();

        let mut fdt = Self {
            structs,
            strings,
            rsvmap,
            boot_cpuid_phys: field(H_BOOT_CPUID)?,
            root: 0,
        };
        fdt.root = fdt.validate()?;
        Ok(fdt)
    }

    fn malformed(offset: usize, problem: Malformed) -> FdtError {
        FdtError::Malformed { offset, problem }
    }

    /// The token at `pos` and the offset of the next one.
    fn token(&self, pos: usize) -> Result<(Token<'a>, usize), FdtError> {
        let truncated = Self::malformed(pos, Malformed::TruncatedToken);
        let tag = be32(self.structs, pos).ok_or(truncated)?;
        let body = pos.checked_add(4).ok_or(truncated)?;
        let (token, next) = match tag {
            TOK_BEGIN_NODE => {
                let rest = self.structs.get(body..).ok_or(truncated)?;
                let len = rest
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or(Self::malformed(pos, Malformed::UnterminatedName))?;
                let name = rest.get(..len).ok_or(truncated)?;
                let end = body.checked_add(len).and_then(|e| e.checked_add(1));
                (Token::BeginNode { name }, end.ok_or(truncated)?)
            }
            TOK_END_NODE => (Token::EndNode, body),
            TOK_NOP => (Token::Nop, body),
            TOK_END => (Token::End, body),
            TOK_PROP => {
                let len = to_usize(be32(self.structs, body).ok_or(truncated)?);
                let nameoff =
                    be32(self.structs, body.checked_add(4).ok_or(truncated)?).ok_or(truncated)?;
                let start = body.checked_add(8).ok_or(truncated)?;
                let end = start.checked_add(len).ok_or(truncated)?;
                let value = self.structs.get(start..end).ok_or(truncated)?;
                let name = self
                    .strings
                    .get(to_usize(nameoff)..)
                    .filter(|s| s.contains(&0))
                    .map(until_nul)
                    .ok_or(Self::malformed(pos, Malformed::BadStringOffset { nameoff }))?;
                (Token::Prop { name, value }, end)
            }
            token => return Err(Self::malformed(pos, Malformed::BadToken { token })),
        };
        let next = align4(next).ok_or(truncated)?;
        if next > self.structs.len() {
            return Err(truncated);
        }
        Ok((token, next))
    }

    /// Walks every token once; returns the offset of the root's first
    /// inner token.
    fn validate(&self) -> Result<usize, FdtError> {
        let mut pos = 0;
        let mut depth = 0usize;
        let mut root = None;
        loop {
            let (token, next) = self.token(pos)?;
            match token {
                Token::BeginNode { .. } => {
                    if depth == 0 {
                        if root.is_some() {
                            return Err(Self::malformed(pos, Malformed::SecondRoot));
                        }
                        root = Some(next);
                    }
                    depth = depth.saturating_add(1);
                }
                Token::EndNode => {
                    depth = depth
                        .checked_sub(1)
                        .ok_or(Self::malformed(pos, Malformed::Unbalanced))?;
                }
                Token::Prop { .. } if depth == 0 => {
                    return Err(Self::malformed(pos, Malformed::PropOutsideNode));
                }
                Token::Prop { .. } | Token::Nop => {}
                Token::End => {
                    if depth != 0 {
                        return Err(Self::malformed(pos, Malformed::Unbalanced));
                    }
                    return root.ok_or(Self::malformed(pos, Malformed::NoRoot));
                }
            }
            pos = next;
        }
    }

    /// Iterator over the properties and children of the node whose first
    /// inner token is at `node`.
    fn walk(&self, node: usize) -> NodeWalk<'a> {
        NodeWalk {
            fdt: *self,
            pos: node,
            depth: 0,
            done: false,
        }
    }

    /// The value of property `name` of `node`.
    fn prop(&self, node: usize, name: &[u8]) -> Result<Option<&'a [u8]>, FdtError> {
        let mut walk = self.walk(node);
        while let Some(item) = walk.next_item()? {
            if let Item::Prop { name: n, value } = item {
                if n == name {
                    return Ok(Some(value));
                }
            }
        }
        Ok(None)
    }

    /// A `u32` property (exactly 4 bytes), if present.
    fn prop_u32(
        &self,
        node: usize,
        name: &'static str,
        desc: &'static str,
    ) -> Result<Option<u32>, FdtError> {
        match self.prop(node, name.as_bytes())? {
            None => Ok(None),
            Some(v) => match (v.len(), be32(v, 0)) {
                (4, Some(x)) => Ok(Some(x)),
                _ => Err(FdtError::BadProperty {
                    node: desc,
                    prop: name,
                    len: v.len(),
                }),
            },
        }
    }

    /// `#address-cells` and `#size-cells` of `node` (spec defaults 2 and 1).
    fn raw_cells(&self, node: usize, desc: &'static str) -> Result<(u32, u32), FdtError> {
        let ac = self.prop_u32(node, "#address-cells", desc)?.unwrap_or(2);
        let sc = self.prop_u32(node, "#size-cells", desc)?.unwrap_or(1);
        Ok((ac, sc))
    }

    /// Like [`Self::raw_cells`], limited to what [`read_cells`] reads.
    fn cells(&self, node: usize, desc: &'static str) -> Result<(u32, u32), FdtError> {
        let (ac, sc) = self.raw_cells(node, desc)?;
        if !(1..=2).contains(&ac) || sc > 2 {
            return Err(FdtError::UnsupportedCells {
                node: desc,
                address_cells: ac,
                size_cells: sc,
            });
        }
        Ok((ac, sc))
    }

    /// Whether `status` is absent, `"okay"` or `"ok"`.
    fn available(&self, node: usize) -> Result<bool, FdtError> {
        Ok(match self.prop(node, b"status")? {
            None => true,
            Some(v) => matches!(until_nul(v), b"okay" | b"ok"),
        })
    }

    /// The child of `node` that path component `comp` names: an exact name
    /// match, or else the first child whose name without `@unit` equals a
    /// component given without a unit address.
    fn child(&self, node: usize, comp: &[u8]) -> Result<Option<usize>, FdtError> {
        let mut walk = self.walk(node);
        let mut fallback = None;
        while let Some(item) = walk.next_item()? {
            if let Item::Child { name, inner } = item {
                if name == comp {
                    return Ok(Some(inner));
                }
                let base = name.split(|&b| b == b'@').next().unwrap_or(name);
                if fallback.is_none() && !comp.contains(&b'@') && base == comp {
                    fallback = Some(inner);
                }
            }
        }
        Ok(fallback)
    }

    /// Resolves an absolute `path`; returns the chain root..=node.
    fn lookup(&self, path: &[u8]) -> Result<Option<Chain>, FdtError> {
        let mut chain = Chain {
            nodes: [0; MAX_DEPTH],
            len: 1,
        };
        let mut node = self.root;
        if let Some(first) = chain.nodes.first_mut() {
            *first = node;
        }
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            match self.child(node, comp)? {
                None => return Ok(None),
                Some(next) => {
                    let slot = chain.nodes.get_mut(chain.len).ok_or(FdtError::TooDeep)?;
                    *slot = next;
                    chain.len += 1;
                    node = next;
                }
            }
        }
        Ok(Some(chain))
    }

    /// First `reg` entry of the last node of `chain`, translated through
    /// every ancestor bus's `ranges` to a CPU physical address.
    fn translated_reg(&self, chain: &Chain, desc: &'static str) -> Result<(u64, u64), FdtError> {
        let nodes = chain.nodes.get(..chain.len).unwrap_or_default();
        let (&node, ancestors) = nodes.split_last().ok_or(FdtError::MissingProperty {
            node: desc,
            prop: "reg",
        })?;
        let Some((&parent, _)) = ancestors.split_last() else {
            // The root has no reg.
            return Err(FdtError::MissingProperty {
                node: desc,
                prop: "reg",
            });
        };
        let (ac, sc) = self.cells(parent, "console parent")?;
        let reg = self.prop(node, b"reg")?.ok_or(FdtError::MissingProperty {
            node: desc,
            prop: "reg",
        })?;
        let bad = FdtError::BadProperty {
            node: desc,
            prop: "reg",
            len: reg.len(),
        };
        let addr = read_cells(reg, 0, ac).ok_or(bad)?;
        let size = read_cells(reg, to_usize(ac), sc).ok_or(bad)?;
        Ok((self.translate(ancestors, addr)?, size))
    }

    /// Translates `addr`, an address in the children's space of the last
    /// of `ancestors` (root first), to a CPU physical address through every
    /// bus's `ranges`.
    fn translate(&self, ancestors: &[usize], mut addr: u64) -> Result<u64, FdtError> {
        // Walk up: ancestors[i] is a bus whose `ranges` maps its children's
        // addresses into ancestors[i - 1]'s address space.
        let mut level = ancestors.len();
        while level > 1 {
            level -= 1;
            let bus = *ancestors.get(level).ok_or(FdtError::TooDeep)?;
            let up = *ancestors.get(level - 1).ok_or(FdtError::TooDeep)?;
            let (child_ac, child_sc) = self.cells(bus, "console bus")?;
            let (parent_ac, _) = self.cells(up, "console bus parent")?;
            let ranges = self
                .prop(bus, b"ranges")?
                .ok_or(FdtError::Untranslatable { addr })?;
            if ranges.is_empty() {
                continue; // identity
            }
            let per = to_usize(child_ac + parent_ac + child_sc);
            let bad = FdtError::BadProperty {
                node: "console bus",
                prop: "ranges",
                len: ranges.len(),
            };
            if !ranges.len().is_multiple_of(per * 4) {
                return Err(bad);
            }
            let mut mapped = None;
            for i in 0..ranges.len() / (per * 4) {
                let base = i * per;
                let child = read_cells(ranges, base, child_ac).ok_or(bad)?;
                let parent_addr =
                    read_cells(ranges, base + to_usize(child_ac), parent_ac).ok_or(bad)?;
                let len = read_cells(ranges, base + to_usize(child_ac + parent_ac), child_sc)
                    .ok_or(bad)?;
                if let Some(off) = addr.checked_sub(child) {
                    if off < len {
                        mapped = parent_addr.checked_add(off);
                        break;
                    }
                }
            }
            addr = mapped.ok_or(FdtError::Untranslatable { addr })?;
        }
        Ok(addr)
    }
}

/// Nodes from the root down to a looked-up node (struct-block offsets of
/// each node's first inner token).
#[derive(Clone, Copy, Debug)]
struct Chain {
    nodes: [usize; MAX_DEPTH],
    len: usize,
}

impl Chain {
    fn node(&self) -> usize {
        self.len
            .checked_sub(1)
            .and_then(|i| self.nodes.get(i))
            .copied()
            .unwrap_or(0)
    }
}

/// Something directly inside a node.
#[derive(Clone, Copy, Debug)]
enum Item<'a> {
    Prop { name: &'a [u8], value: &'a [u8] },
    Child { name: &'a [u8], inner: usize },
}

/// Walks one node's direct properties and children, skipping grandchildren.
#[derive(Clone, Copy, Debug)]
struct NodeWalk<'a> {
    fdt: Fdt<'a>,
    pos: usize,
    depth: usize,
    done: bool,
}

impl<'a> NodeWalk<'a> {
    fn next_item(&mut self) -> Result<Option<Item<'a>>, FdtError> {
        while !self.done {
            let (token, next) = self.fdt.token(self.pos)?;
            self.pos = next;
            match token {
                Token::BeginNode { name } => {
                    self.depth += 1;
                    if self.depth == 1 {
                        return Ok(Some(Item::Child { name, inner: next }));
                    }
                }
                Token::EndNode => match self.depth.checked_sub(1) {
                    Some(d) => self.depth = d,
                    None => self.done = true,
                },
                Token::Prop { name, value } if self.depth == 0 => {
                    return Ok(Some(Item::Prop { name, value }));
                }
                Token::Prop { .. } | Token::Nop => {}
                Token::End => self.done = true,
            }
        }
        Ok(None)
    }
}

// ---------------------------------------------------------------------------
// host_platform

/// Reads RAM, console, PSCI conduit, CPUs and any existing initrd from
/// `dtb` (which may be longer than its `totalsize`).
///
/// - RAM: every top-level node with `device_type = "memory"` (or, lacking
///   `device_type`, named `memory` / `memory@…`) that is not disabled; each
///   `reg` entry in the root's `#address-cells` / `#size-cells`; empty
///   entries are skipped; at most [`MAX_RAM_REGIONS`].
/// - Console: `/chosen/stdout-path` (or `linux,stdout-path`), `:options`
///   stripped, resolved through `/aliases` when it does not start with `/`;
///   the node must be a UART [`UartKind::from_dt`] knows (PL011, or
///   8250/16550 with its `reg-shift`, `reg-io-width` and `reg-offset`); its
///   first `reg` entry is translated through the parent buses' `ranges`
///   and must hold every register the driver uses, each aligned to its
///   access width ([`UartKind::check`]).
/// - PSCI: `/psci` `method`.
/// - CPUs: children of `/cpus` with `device_type = "cpu"` (or named `cpu` /
///   `cpu@…`) that are not disabled; `reg` in `/cpus`' `#address-cells`; at
///   most [`MAX_CPUS`].
/// - initrd: `/chosen` `linux,initrd-start` and `linux,initrd-end` (4 or 8
///   bytes each) when both are present.
pub fn host_platform(dtb: &[u8]) -> Result<Platform, FdtError> {
    let fdt = Fdt::new(dtb)?;
    let root = fdt.root;

    // RAM.
    let (ac, sc) = fdt.cells(root, "/")?;
    let mut ram = ArrayList::new();
    let mut walk = fdt.walk(root);
    while let Some(item) = walk.next_item()? {
        let Item::Child { name, inner } = item else {
            continue;
        };
        let is_memory = match fdt.prop(inner, b"device_type")? {
            Some(t) => until_nul(t) == b"memory",
            None => name == b"memory" || name.starts_with(b"memory@"),
        };
        if !is_memory || !fdt.available(inner)? {
            continue;
        }
        let Some(reg) = fdt.prop(inner, b"reg")? else {
            continue;
        };
        let entry = to_usize(ac + sc) * 4;
        let bad = FdtError::BadProperty {
            node: "/memory",
            prop: "reg",
            len: reg.len(),
        };
        if sc == 0 || !reg.len().is_multiple_of(entry) {
            return Err(bad);
        }
        for i in 0..reg.len() / entry {
            let cell = i * to_usize(ac + sc);
            let base = read_cells(reg, cell, ac).ok_or(bad)?;
            let size = read_cells(reg, cell + to_usize(ac), sc).ok_or(bad)?;
            if size == 0 {
                continue;
            }
            if base.checked_add(size).is_none() {
                return Err(FdtError::RegionOverflow { base, size });
            }
            ram.push(MemRegion {
                base: PhysAddr::new(base),
                size,
            })
            .map_err(|_| FdtError::TooMany {
                what: "RAM regions",
                max: MAX_RAM_REGIONS,
            })?;
        }
    }
    if ram.is_empty() {
        return Err(FdtError::MissingNode { path: "/memory" });
    }

    // Console.
    let chosen = fdt
        .lookup(b"/chosen")?
        .ok_or(FdtError::MissingNode { path: "/chosen" })?
        .node();
    let stdout = match fdt.prop(chosen, b"stdout-path")? {
        Some(v) => v,
        None => fdt
            .prop(chosen, b"linux,stdout-path")?
            .ok_or(FdtError::MissingProperty {
                node: "/chosen",
                prop: "stdout-path",
            })?,
    };
    let stdout = until_nul(stdout);
    let stdout = stdout.split(|&b| b == b':').next().unwrap_or(stdout);
    let unresolved = FdtError::StdoutUnresolved {
        path: Snippet::new(stdout),
    };
    let path = if stdout.starts_with(b"/") {
        stdout
    } else {
        let aliases = fdt.lookup(b"/aliases")?.ok_or(unresolved)?.node();
        let target = fdt.prop(aliases, stdout)?.ok_or(unresolved)?;
        let target = until_nul(target);
        if !target.starts_with(b"/") {
            return Err(unresolved);
        }
        target
    };
    let uart_chain = fdt.lookup(path)?.ok_or(unresolved)?;
    let uart_node = uart_chain.node();
    let console_error = |problem| FdtError::Console {
        path: Snippet::new(path),
        problem,
    };
    let kind = UartKind::from_dt(
        fdt.prop(uart_node, b"compatible")?.unwrap_or_default(),
        fdt.prop_u32(uart_node, "reg-shift", "console")?,
        fdt.prop_u32(uart_node, "reg-io-width", "console")?,
        fdt.prop_u32(uart_node, "reg-offset", "console")?,
    )
    .map_err(console_error)?;
    let (uart_base, uart_size) = fdt.translated_reg(&uart_chain, "console")?;
    kind.check(uart_base, uart_size).map_err(console_error)?;
    let uart = Uart {
        base: PhysAddr::new(uart_base),
        size: uart_size,
        kind,
    };

    // PSCI.
    let psci = fdt
        .lookup(b"/psci")?
        .ok_or(FdtError::MissingNode { path: "/psci" })?
        .node();
    let method = fdt
        .prop(psci, b"method")?
        .ok_or(FdtError::MissingProperty {
            node: "/psci",
            prop: "method",
        })?;
    let psci = match until_nul(method) {
        b"smc" => PsciConduit::Smc,
        b"hvc" => PsciConduit::Hvc,
        other => {
            return Err(FdtError::UnknownPsciMethod {
                found: Snippet::new(other),
            })
        }
    };

    // CPUs.
    let cpus_node = fdt
        .lookup(b"/cpus")?
        .ok_or(FdtError::MissingNode { path: "/cpus" })?
        .node();
    let (cpu_ac, _) = fdt.cells(cpus_node, "/cpus")?;
    let mut cpus = ArrayList::new();
    let mut walk = fdt.walk(cpus_node);
    while let Some(item) = walk.next_item()? {
        let Item::Child { name, inner } = item else {
            continue;
        };
        let is_cpu = match fdt.prop(inner, b"device_type")? {
            Some(t) => until_nul(t) == b"cpu",
            None => name == b"cpu" || name.starts_with(b"cpu@"),
        };
        if !is_cpu || !fdt.available(inner)? {
            continue;
        }
        let reg = fdt.prop(inner, b"reg")?.ok_or(FdtError::MissingProperty {
            node: "/cpus/cpu",
            prop: "reg",
        })?;
        let mpidr = read_cells(reg, 0, cpu_ac).ok_or(FdtError::BadProperty {
            node: "/cpus/cpu",
            prop: "reg",
            len: reg.len(),
        })?;
        cpus.push(mpidr).map_err(|_| FdtError::TooMany {
            what: "CPUs",
            max: MAX_CPUS,
        })?;
    }
    if cpus.is_empty() {
        return Err(FdtError::MissingNode {
            path: "/cpus/cpu@*",
        });
    }

    // Existing initrd.
    let number = |name: &'static str| -> Result<Option<u64>, FdtError> {
        match fdt.prop(chosen, name.as_bytes())? {
            None => Ok(None),
            Some(v) => match v.len() {
                4 => Ok(be32(v, 0).map(u64::from)),
                8 => Ok(be64(v, 0)),
                len => Err(FdtError::BadProperty {
                    node: "/chosen",
                    prop: name,
                    len,
                }),
            },
        }
    };
    let initrd = match (number("linux,initrd-start")?, number("linux,initrd-end")?) {
        (Some(start), Some(end)) => Some(InitrdRange {
            start: PhysAddr::new(start),
            end: PhysAddr::new(end),
        }),
        _ => None,
    };

    Ok(Platform {
        ram,
        uart,
        psci,
        cpus,
        initrd,
    })
}

// ---------------------------------------------------------------------------
// for_each_device_range

/// Calls `f` with every MMIO range the DTB describes, as CPU physical
/// addresses, in DTB order (not page-aligned, not merged, possibly
/// overlapping one another or RAM): what the host's drivers may touch, so
/// what the host stage-2 maps as device memory.
///
/// - Every `reg` entry of every available node (`status` absent, `"okay"`
///   or `"ok"`, and the same for all its ancestors), translated through its
///   ancestors' `ranges`. An entry that has no CPU physical address is not
///   memory-mapped and is skipped: a node under a bus without `ranges`
///   (`/cpus`, I2C and SPI devices, ...), a parent with `#size-cells = <0>`
///   or more than 2 address or size cells, an address no `ranges` entry
///   covers, an empty or wrapping entry.
/// - The windows of every available PCI host bridge (`device_type =
///   "pci"`): the parent side of each of its `ranges` entries. The devices
///   behind them are found by enumeration, not in the DTB.
/// - Not: RAM (the top-level nodes [`host_platform`] reads as RAM, enabled
///   or not), `/reserved-memory`, or anything under them; nor nodes nested
///   deeper than [`MAX_DEPTH`].
///
/// # Errors
/// Only a DTB the reader rejects as a whole (header or structure block): a
/// node this function cannot use is skipped, never a reason to fail.
pub fn for_each_device_range(dtb: &[u8], mut f: impl FnMut(MemRegion)) -> Result<(), FdtError> {
    let fdt = Fdt::new(dtb)?;
    // stack[d]: first inner token of the open node at depth d (root: 0).
    let mut stack = [0usize; MAX_DEPTH];
    let mut open = 0usize;
    // Depth (open count) at which a skipped subtree starts.
    let mut skipping: Option<usize> = None;
    let mut pos = 0;
    loop {
        let (token, next) = fdt.token(pos)?;
        match token {
            Token::BeginNode { name } => {
                let depth = open;
                open += 1;
                if skipping.is_some() {
                    // Inside a skipped subtree.
                } else if let Some(slot) = stack.get_mut(depth) {
                    *slot = next;
                    if depth > 0 {
                        let ancestors = stack.get(..depth).unwrap_or_default();
                        if fdt.wanted_for_devices(next, name, depth)? {
                            fdt.device_ranges(next, ancestors, &mut f)?;
                        } else {
                            skipping = Some(open);
                        }
                    }
                } else {
                    skipping = Some(open);
                }
            }
            Token::EndNode => {
                if skipping == Some(open) {
                    skipping = None;
                }
                open = open.saturating_sub(1);
            }
            Token::Prop { .. } | Token::Nop => {}
            Token::End => return Ok(()),
        }
        pos = next;
    }
}

/// Calls `f` with the `reg` entries of every available child of
/// `/reserved-memory` (CPU physical addresses, in DTB order), translated
/// through `/reserved-memory`'s `ranges`. Children without `reg` (sized
/// only, placed by the kernel inside RAM) and entries that cannot be
/// translated are skipped.
///
/// # Errors
/// Only a DTB the reader rejects as a whole.
pub fn for_each_reserved_range(dtb: &[u8], mut f: impl FnMut(MemRegion)) -> Result<(), FdtError> {
    let fdt = Fdt::new(dtb)?;
    let Some(rmem) = fdt.child(fdt.root, b"reserved-memory")? else {
        return Ok(());
    };
    if !fdt.available(rmem)? {
        return Ok(());
    }
    let ancestors = [fdt.root, rmem];
    let mut walk = fdt.walk(rmem);
    while let Some(item) = walk.next_item()? {
        if let Item::Child { inner, .. } = item {
            if fdt.available(inner)? {
                fdt.report_reg(inner, &ancestors, &mut f)?;
            }
        }
    }
    Ok(())
}

impl Fdt<'_> {
    /// Whether [`for_each_device_range`] looks at the node (and its
    /// subtree) whose first inner token is `node`, named `name`, at `depth`
    /// (root's children: 1).
    fn wanted_for_devices(&self, node: usize, name: &[u8], depth: usize) -> Result<bool, FdtError> {
        if depth == 1 {
            let is_memory = match self.prop(node, b"device_type")? {
                Some(t) => until_nul(t) == b"memory",
                None => name == b"memory" || name.starts_with(b"memory@"),
            };
            if is_memory || name == b"reserved-memory" {
                return Ok(false);
            }
        }
        self.available(node)
    }

    /// Reports the `reg` entries of `node` and, for a PCI host bridge, its
    /// windows; `ancestors` runs from the root to `node`'s parent.
    fn device_ranges(
        &self,
        node: usize,
        ancestors: &[usize],
        f: &mut impl FnMut(MemRegion),
    ) -> Result<(), FdtError> {
        self.report_reg(node, ancestors, f)?;
        let is_pci = self
            .prop(node, b"device_type")?
            .is_some_and(|t| until_nul(t) == b"pci");
        if !is_pci {
            return Ok(());
        }
        let (Some(&parent), Some(ranges)) = (ancestors.last(), self.prop(node, b"ranges")?) else {
            return Ok(());
        };
        // ranges = <child address (3 cells for PCI), parent address, size>.
        let (Ok((ac, _)), Ok((child_ac, child_sc))) = (
            self.raw_cells(parent, "device parent"),
            self.raw_cells(node, "PCI host bridge"),
        ) else {
            return Ok(());
        };
        if !(1..=3).contains(&child_ac) || !usable_cells(ac, child_sc) {
            return Ok(());
        }
        let per = to_usize(child_ac + ac + child_sc);
        for i in 0..ranges.len() / (per * 4) {
            let cell = i * per + to_usize(child_ac);
            if let (Some(addr), Some(size)) = (
                read_cells(ranges, cell, ac),
                read_cells(ranges, cell + to_usize(ac), child_sc),
            ) {
                self.report(ancestors, addr, size, f);
            }
        }
        Ok(())
    }

    /// Reports every `reg` entry of `node`, in the address space of the
    /// last of `ancestors` (root first), that has a CPU physical address.
    fn report_reg(
        &self,
        node: usize,
        ancestors: &[usize],
        f: &mut impl FnMut(MemRegion),
    ) -> Result<(), FdtError> {
        let (Some(&parent), Some(reg)) = (ancestors.last(), self.prop(node, b"reg")?) else {
            return Ok(());
        };
        // Malformed cells make the node's addresses unreadable: skip it.
        let Ok((ac, sc)) = self.raw_cells(parent, "device parent") else {
            return Ok(());
        };
        if !usable_cells(ac, sc) {
            return Ok(());
        }
        let per = to_usize(ac + sc);
        for i in 0..reg.len() / (per * 4) {
            let cell = i * per;
            if let (Some(addr), Some(size)) = (
                read_cells(reg, cell, ac),
                read_cells(reg, cell + to_usize(ac), sc),
            ) {
                self.report(ancestors, addr, size, f);
            }
        }
        Ok(())
    }

    /// Translates `[addr, addr + size)` and hands it to `f`, unless it is
    /// empty, wraps, or has no CPU physical address.
    fn report(&self, ancestors: &[usize], addr: u64, size: u64, f: &mut impl FnMut(MemRegion)) {
        if size == 0 || addr.checked_add(size).is_none() {
            return;
        }
        if let Ok(base) = self.translate(ancestors, addr) {
            if base.checked_add(size).is_some() {
                f(MemRegion {
                    base: PhysAddr::new(base),
                    size,
                });
            }
        }
    }
}

/// Whether `reg` values in these cells are CPU-addressable ranges this
/// reader can hold: 1 or 2 address cells and 1 or 2 size cells.
fn usable_cells(address_cells: u32, size_cells: u32) -> bool {
    (1..=2).contains(&address_cells) && (1..=2).contains(&size_cells)
}

// ---------------------------------------------------------------------------
// rewrite

/// A range the host must never map: becomes `/reserved-memory/
/// cloister-hyp@<base>` with `reg = <base size>` and `no-map`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Reservation {
    /// First byte.
    pub base: PhysAddr,
    /// Length in bytes (non-zero).
    pub size: u64,
}

/// What [`rewrite`] changes.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Edits<'a> {
    /// `no-map` reservations to add under `/reserved-memory`.
    pub reserve: &'a [Reservation],
    /// New `linux,initrd-start` / `linux,initrd-end` in `/chosen` (written
    /// as 8-byte big-endian values, replacing any existing ones).
    pub initrd: Option<InitrdRange>,
    /// New `/chosen` `bootargs` (replacing any existing one).
    pub bootargs: Option<&'a str>,
}

/// Property and node names [`rewrite`] may need in the strings block.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Name {
    Reg,
    NoMap,
    AddressCells,
    SizeCells,
    Ranges,
    InitrdStart,
    InitrdEnd,
    Bootargs,
}

const NAMES: [Name; 8] = [
    Name::Reg,
    Name::NoMap,
    Name::AddressCells,
    Name::SizeCells,
    Name::Ranges,
    Name::InitrdStart,
    Name::InitrdEnd,
    Name::Bootargs,
];

impl Name {
    const fn text(self) -> &'static [u8] {
        match self {
            Self::Reg => b"reg",
            Self::NoMap => b"no-map",
            Self::AddressCells => b"#address-cells",
            Self::SizeCells => b"#size-cells",
            Self::Ranges => b"ranges",
            Self::InitrdStart => b"linux,initrd-start",
            Self::InitrdEnd => b"linux,initrd-end",
            Self::Bootargs => b"bootargs",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// Offsets of [`Name`]s in the output strings block: found in the source
/// block, or appended after it.
#[derive(Clone, Copy, Debug)]
struct StringTable {
    offsets: [Option<u32>; NAMES.len()],
    /// Names to append, in order.
    appended: [Option<Name>; NAMES.len()],
    appended_len: usize,
}

impl StringTable {
    fn new(src: &[u8], wanted: &[Name]) -> Result<Self, FdtError> {
        let mut table = Self {
            offsets: [None; NAMES.len()],
            appended: [None; NAMES.len()],
            appended_len: 0,
        };
        let mut next = src.len();
        let mut count = 0;
        for &name in wanted {
            if table.offset(name).is_some() {
                continue;
            }
            let found = find_string(src, name.text());
            let offset = match found {
                Some(at) => at,
                None => {
                    let at = next;
                    next = next
                        .checked_add(name.text().len() + 1)
                        .ok_or(FdtError::TooLarge { needed: usize::MAX })?;
                    if let Some(slot) = table.appended.get_mut(count) {
                        *slot = Some(name);
                        count += 1;
                    }
                    at
                }
            };
            let offset =
                u32::try_from(offset).map_err(|_| FdtError::TooLarge { needed: offset })?;
            if let Some(slot) = table.offsets.get_mut(name.index()) {
                *slot = Some(offset);
            }
        }
        table.appended_len = next - src.len();
        Ok(table)
    }

    fn offset(&self, name: Name) -> Option<u32> {
        self.offsets.get(name.index()).copied().flatten()
    }
}

/// Offset of some `needle\0` in the strings block (any position: property
/// name offsets may point into the middle of a longer string).
fn find_string(strings: &[u8], needle: &[u8]) -> Option<usize> {
    let len = needle.len() + 1;
    strings.windows(len).position(|w| {
        w.split_last()
            .is_some_and(|(&last, head)| last == 0 && head == needle)
    })
}

/// Output cursor that keeps counting past the end of `buf`, so a too-small
/// buffer still learns the size it needs.
#[derive(Debug)]
struct Out<'d> {
    buf: &'d mut [u8],
    len: usize,
}

impl Out<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let end = self.len.saturating_add(bytes.len());
        if let Some(dst) = self.buf.get_mut(self.len..end) {
            dst.copy_from_slice(bytes);
        }
        self.len = end;
    }

    fn put_u32(&mut self, v: u32) {
        self.put(&v.to_be_bytes());
    }

    fn pad4(&mut self) {
        let pad = self.len.next_multiple_of(4).saturating_sub(self.len);
        self.put(&[0; 3][..pad.min(3)]);
    }

    fn patch_u32(&mut self, at: usize, v: u32) {
        if let Some(dst) = self.buf.get_mut(at..at.saturating_add(4)) {
            dst.copy_from_slice(&v.to_be_bytes());
        }
    }

    /// An `FDT_PROP` whose value is the concatenation of `parts`.
    fn prop(&mut self, nameoff: u32, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.put_u32(TOK_PROP);
        self.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
        self.put_u32(nameoff);
        for part in parts {
            self.put(part);
        }
        self.pad4();
    }

    fn begin_node(&mut self, name: &[u8]) {
        self.put_u32(TOK_BEGIN_NODE);
        self.put(name);
        self.put(&[0]);
        self.pad4();
    }
}

/// A number encoded in 1 or 2 cells.
#[derive(Clone, Copy, Debug)]
struct Cells {
    bytes: [u8; 8],
    len: usize,
}

impl Cells {
    fn new(value: u64, cells: u32) -> Result<Self, FdtError> {
        let too_wide = FdtError::ValueTooWide { value, cells };
        match cells {
            1 => {
                let v = u32::try_from(value).map_err(|_| too_wide)?;
                let mut bytes = [0; 8];
                if let Some(dst) = bytes.get_mut(..4) {
                    dst.copy_from_slice(&v.to_be_bytes());
                }
                Ok(Self { bytes, len: 4 })
            }
            2 => Ok(Self {
                bytes: value.to_be_bytes(),
                len: 8,
            }),
            _ => Err(too_wide),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

/// `cloister-hyp@<lowercase hex base>` in a fixed buffer.
#[derive(Clone, Copy, Debug)]
struct NodeName {
    bytes: [u8; 32],
    len: usize,
}

impl NodeName {
    fn new(base: PhysAddr) -> Self {
        let prefix = RESERVED_NODE_PREFIX.as_bytes();
        let mut bytes = [0u8; 32];
        let mut len = 0;
        for &b in prefix {
            if let Some(slot) = bytes.get_mut(len) {
                *slot = b;
                len += 1;
            }
        }
        let raw = base.raw();
        let digits = if raw == 0 {
            1
        } else {
            16 - usize::try_from(raw.leading_zeros() / 4).unwrap_or(0)
        };
        for i in (0..digits).rev() {
            let nibble = (raw >> (i * 4)) & 0xf;
            let c = b"0123456789abcdef"
                .get(usize::try_from(nibble).unwrap_or(0))
                .copied()
                .unwrap_or(b'0');
            if let Some(slot) = bytes.get_mut(len) {
                *slot = c;
                len += 1;
            }
        }
        Self { bytes, len }
    }

    fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

/// Where the walk is, relative to the nodes being edited.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ctx {
    Other,
    Chosen,
    ReservedMemory,
}

/// The `/chosen` properties to set, with their output state.
#[derive(Clone, Copy, Debug)]
struct ChosenProp<'e> {
    name: Name,
    nameoff: u32,
    value: [&'e [u8]; 2],
    written: bool,
}

impl<'e> ChosenProp<'e> {
    fn new(name: Name, nameoff: u32, value: [&'e [u8]; 2]) -> Self {
        Self {
            name,
            nameoff,
            value,
            written: false,
        }
    }
}

/// Copies the DTB `src` into `dst` with `edits` applied and returns the new
/// `totalsize` (the bytes of `dst` used).
///
/// The output is laid out header, memory reservation block (copied
/// unchanged), structure block, strings block (the source's, then any new
/// names); header offsets and sizes are recomputed, `version` is 17,
/// `last_comp_version` 16 and `boot_cpuid_phys` is copied. `FDT_NOP` tokens
/// are dropped; every other node and property is copied unchanged except:
///
/// - `/reserved-memory` gets a child `cloister-hyp@<base>` per
///   reservation, with `reg` in that node's cells and an empty `no-map`;
///   when the node does not exist it is created at the end of `/` with
///   `#address-cells` and `#size-cells` copied from the root (Linux rejects
///   a `/reserved-memory` whose cells differ from the root's; both are 2 on
///   QEMU `virt`) and an empty `ranges`;
/// - `/chosen` `linux,initrd-start` / `linux,initrd-end` (8-byte big-endian)
///   and `bootargs` are replaced where they are and added before the first
///   subnode otherwise; `/chosen` is created when absent.
///
/// Fails with [`FdtError::NoSpace`] (carrying the exact size needed) when
/// `dst` is too small; `dst` is then partly written and must not be used.
pub fn rewrite(src: &[u8], dst: &mut [u8], edits: &Edits<'_>) -> Result<usize, FdtError> {
    let fdt = Fdt::new(src)?;
    let root = fdt.root;

    // Check the edits before writing anything.
    if let Some(InitrdRange { start, end }) = edits.initrd {
        if start > end {
            return Err(FdtError::BadInitrd { start, end });
        }
    }
    if edits.bootargs.is_some_and(|b| b.as_bytes().contains(&0)) {
        return Err(FdtError::BadBootargs);
    }
    for (i, r) in edits.reserve.iter().enumerate() {
        if r.size == 0 || r.base.checked_add(r.size).is_none() {
            return Err(FdtError::BadReservation {
                base: r.base,
                size: r.size,
            });
        }
        if edits.reserve.iter().take(i).any(|p| p.base == r.base) {
            return Err(FdtError::DuplicateReservation { base: r.base });
        }
    }

    // The nodes being edited.
    let chosen = fdt.child(root, b"chosen")?;
    let rmem = fdt.child(root, b"reserved-memory")?;
    let (root_ac, root_sc) = fdt.raw_cells(root, "/")?;
    let (rmem_ac, rmem_sc) = match rmem {
        Some(node) => {
            let ac = fdt.prop_u32(node, "#address-cells", "/reserved-memory")?;
            let sc = fdt.prop_u32(node, "#size-cells", "/reserved-memory")?;
            (ac.unwrap_or(root_ac), sc.unwrap_or(root_sc))
        }
        None => (root_ac, root_sc),
    };
    if let Some(node) = rmem {
        let mut walk = fdt.walk(node);
        while let Some(item) = walk.next_item()? {
            if let Item::Child { name, .. } = item {
                if let Some(r) = edits
                    .reserve
                    .iter()
                    .find(|r| NodeName::new(r.base).as_bytes() == name)
                {
                    return Err(FdtError::DuplicateReservation { base: r.base });
                }
            }
        }
    }
    // Encode every reg up front so a value too wide fails before output.
    for r in edits.reserve {
        Cells::new(r.base.raw(), rmem_ac)?;
        Cells::new(r.size, rmem_sc)?;
    }

    // Names needed in the strings block.
    let mut wanted = [Name::Reg; NAMES.len()];
    let mut n_wanted = 0;
    let mut want = |name: Name| {
        if let Some(slot) = wanted.get_mut(n_wanted) {
            *slot = name;
            n_wanted += 1;
        }
    };
    if !edits.reserve.is_empty() {
        want(Name::Reg);
        want(Name::NoMap);
        if rmem.is_none() {
            want(Name::AddressCells);
            want(Name::SizeCells);
            want(Name::Ranges);
        }
    }
    if edits.initrd.is_some() {
        want(Name::InitrdStart);
        want(Name::InitrdEnd);
    }
    if edits.bootargs.is_some() {
        want(Name::Bootargs);
    }
    let strings = StringTable::new(fdt.strings, wanted.get(..n_wanted).unwrap_or_default())?;
    let off = |name: Name| strings.offset(name).unwrap_or(0);

    // /chosen properties to set.
    let initrd_start = edits.initrd.map(|r| r.start.raw().to_be_bytes());
    let initrd_end = edits.initrd.map(|r| r.end.raw().to_be_bytes());
    let empty: &[u8] = &[];
    let chosen_prop = |name: Name, value| ChosenProp::new(name, off(name), value);
    let mut chosen_props: [Option<ChosenProp<'_>>; 3] = [
        initrd_start
            .as_ref()
            .map(|v| chosen_prop(Name::InitrdStart, [v, empty])),
        initrd_end
            .as_ref()
            .map(|v| chosen_prop(Name::InitrdEnd, [v, empty])),
        edits
            .bootargs
            .map(|args| chosen_prop(Name::Bootargs, [args.as_bytes(), &[0]])),
    ];
    let chosen_edits = chosen_props.iter().any(Option::is_some);

    let available = dst.len();
    let mut out = Out { buf: dst, len: 0 };

    // Header placeholder, then the reservation block.
    out.put(&[0; HEADER_SIZE]);
    let off_rsvmap = out.len;
    out.put(fdt.rsvmap);
    let off_struct = out.len;

    let flush_chosen = |out: &mut Out<'_>, props: &mut [Option<ChosenProp<'_>>; 3]| {
        for p in props.iter_mut().flatten() {
            if !p.written {
                out.prop(p.nameoff, &p.value);
                p.written = true;
            }
        }
    };
    let write_reservations = |out: &mut Out<'_>| -> Result<(), FdtError> {
        for r in edits.reserve {
            let base = Cells::new(r.base.raw(), rmem_ac)?;
            let size = Cells::new(r.size, rmem_sc)?;
            out.begin_node(NodeName::new(r.base).as_bytes());
            out.prop(off(Name::Reg), &[base.as_bytes(), size.as_bytes()]);
            out.prop(off(Name::NoMap), &[]);
            out.put_u32(TOK_END_NODE);
        }
        Ok(())
    };

    // The structure block, one token at a time.
    let mut pos = 0;
    let mut depth = 0usize;
    let mut ctx = Ctx::Other;
    loop {
        let (token, next) = fdt.token(pos)?;
        let raw = fdt.structs.get(pos..next).unwrap_or_default();
        match token {
            Token::BeginNode { .. } => {
                if ctx == Ctx::Chosen && depth == 2 {
                    flush_chosen(&mut out, &mut chosen_props);
                }
                depth += 1;
                if depth == 2 {
                    ctx = if Some(next) == chosen {
                        Ctx::Chosen
                    } else if Some(next) == rmem {
                        Ctx::ReservedMemory
                    } else {
                        Ctx::Other
                    };
                }
                out.put(raw);
            }
            Token::EndNode => {
                match (depth, ctx) {
                    (2, Ctx::Chosen) => flush_chosen(&mut out, &mut chosen_props),
                    (2, Ctx::ReservedMemory) => write_reservations(&mut out)?,
                    (1, _) => {
                        if rmem.is_none() && !edits.reserve.is_empty() {
                            out.begin_node(b"reserved-memory");
                            out.prop(off(Name::AddressCells), &[&rmem_ac.to_be_bytes()]);
                            out.prop(off(Name::SizeCells), &[&rmem_sc.to_be_bytes()]);
                            out.prop(off(Name::Ranges), &[]);
                            write_reservations(&mut out)?;
                            out.put_u32(TOK_END_NODE);
                        }
                        if chosen.is_none() && chosen_edits {
                            out.begin_node(b"chosen");
                            flush_chosen(&mut out, &mut chosen_props);
                            out.put_u32(TOK_END_NODE);
                        }
                    }
                    _ => {}
                }
                if depth == 2 {
                    ctx = Ctx::Other;
                }
                depth = depth.saturating_sub(1);
                out.put(raw);
            }
            Token::Prop { name, .. } => {
                let replaced = if ctx == Ctx::Chosen && depth == 2 {
                    chosen_props
                        .iter_mut()
                        .flatten()
                        .find(|p| p.name.text() == name)
                } else {
                    None
                };
                match replaced {
                    // Replace in place the first time, drop repeats.
                    Some(p) => {
                        if !p.written {
                            out.prop(p.nameoff, &p.value);
                            p.written = true;
                        }
                    }
                    None => out.put(raw),
                }
            }
            Token::Nop => {}
            Token::End => {
                out.put(raw);
                break;
            }
        }
        pos = next;
    }

    let size_struct = out.len - off_struct;
    let off_strings = out.len;
    out.put(fdt.strings);
    for name in strings.appended.iter().flatten() {
        out.put(name.text());
        out.put(&[0]);
    }
    let size_strings = out.len - off_strings;
    let total = out.len;

    if total > available {
        return Err(FdtError::NoSpace {
            needed: total,
            available,
        });
    }
    let as_u32 = |v: usize| u32::try_from(v).map_err(|_| FdtError::TooLarge { needed: total });
    for (at, v) in [
        (H_MAGIC, FDT_MAGIC),
        (H_TOTALSIZE, as_u32(total)?),
        (H_OFF_STRUCT, as_u32(off_struct)?),
        (H_OFF_STRINGS, as_u32(off_strings)?),
        (H_OFF_RSVMAP, as_u32(off_rsvmap)?),
        (H_VERSION, OUT_VERSION),
        (H_LAST_COMP, OUT_LAST_COMP_VERSION),
        (H_BOOT_CPUID, fdt.boot_cpuid_phys),
        (H_SIZE_STRINGS, as_u32(size_strings)?),
        (H_SIZE_STRUCT, as_u32(size_struct)?),
    ] {
        out.patch_u32(at, v);
    }
    Ok(total)
}

#[cfg(test)]
mod tests;
