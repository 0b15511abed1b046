//! A minimal reader for the flattened device tree the guest gets in `x0`:
//! just what the suite needs, with no heap.
//!
//! - `/chosen/bootargs` (the VMM's `--cmdline`) and `/chosen/stdout-path`
//!   (`:options` stripped; an absolute path, resolved to that node's first
//!   `reg` address; aliases are not followed);
//! - the first `reg` entry of the first memory node (`device_type =
//!   "memory"`, or named `memory` / `memory@...`);
//! - each CPU's `reg` (its MPIDR affinity): children of `/cpus` with
//!   `device_type = "cpu"` or named `cpu@...`.
//!
//! Every offset is checked, nothing recurses and nothing panics: a damaged
//! tree is a [`DtbError`]. Byte slices are read a byte at a time (the guest
//! runs with the MMU off, where unaligned loads fault). Format: Devicetree
//! Specification v0.4, chapter 5.

/// `magic` of every DTB.
pub const FDT_MAGIC: u32 = 0xd00d_feed;
/// Size of a version 17 header.
pub const HEADER_SIZE: usize = 40;
/// The largest DTB accepted (the VMM's window is 2 MiB).
pub const MAX_SIZE: usize = 2 << 20;
/// Most CPUs recorded.
pub const MAX_CPUS: usize = 8;
/// Deepest node path followed (the root is level 1).
pub const MAX_DEPTH: usize = 16;

const TOK_BEGIN_NODE: u32 = 1;
const TOK_END_NODE: u32 = 2;
const TOK_PROP: u32 = 3;
const TOK_NOP: u32 = 4;
const TOK_END: u32 = 9;

/// Why a DTB could not be read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DtbError {
    /// The address the guest was given is 0 or not 8-byte aligned (the
    /// arm64 boot protocol's requirement), so it was not read.
    BadAddress,
    /// The first word is not [`FDT_MAGIC`].
    BadMagic(u32),
    /// The header or a block runs past the end of the data, or the tree is
    /// larger than [`MAX_SIZE`].
    Truncated,
    /// A version older than 17 (no `size_dt_struct`).
    OldVersion(u32),
    /// A bad token, an unterminated name, unbalanced nodes or a tree deeper
    /// than [`MAX_DEPTH`], at this offset of the structure block.
    BadStructure(usize),
}

impl core::fmt::Display for DtbError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadAddress => f.write_str("not a DTB address: 0 or misaligned"),
            Self::BadMagic(m) => write!(f, "bad magic {m:#x}"),
            Self::Truncated => f.write_str("truncated or too large"),
            Self::OldVersion(v) => write!(f, "version {v} is older than 17"),
            Self::BadStructure(at) => write!(f, "bad structure block at offset {at:#x}"),
        }
    }
}

/// The CPUs' MPIDRs, in DTB order (at most [`MAX_CPUS`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct CpuList {
    mpidrs: [u64; MAX_CPUS],
    len: usize,
}

impl CpuList {
    /// A list of `mpidrs` (those past [`MAX_CPUS`] are dropped).
    pub fn from_slice(mpidrs: &[u64]) -> Self {
        let mut list = Self::default();
        for &m in mpidrs {
            list.push(m);
        }
        list
    }

    fn push(&mut self, mpidr: u64) {
        if let Some(slot) = self.mpidrs.get_mut(self.len) {
            *slot = mpidr;
            self.len += 1;
        }
    }

    /// The MPIDRs.
    pub fn as_slice(&self) -> &[u64] {
        self.mpidrs.get(..self.len).unwrap_or(&[])
    }
}

/// What the suite reads from the DTB.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct DtbInfo<'a> {
    /// `/chosen/bootargs`.
    pub bootargs: Option<&'a str>,
    /// `/chosen/stdout-path` as written.
    pub stdout_path: Option<&'a str>,
    /// The first `reg` address of the node `stdout-path` names.
    pub stdout_base: Option<u64>,
    /// Base and size of the first memory node's first `reg` entry.
    pub ram: Option<(u64, u64)>,
    /// Every CPU's `reg`.
    pub cpus: CpuList,
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(b.iter().fold(0u32, |acc, &x| acc << 8 | u32::from(x)))
}

fn be_cells(bytes: &[u8], cell: usize, count: u32) -> Option<u64> {
    if count > 2 {
        return None;
    }
    (0..count).try_fold(0u64, |acc, i| {
        let at = cell.checked_add(usize::try_from(i).ok()?)?.checked_mul(4)?;
        Some(acc << 32 | u64::from(be32(bytes, at)?))
    })
}

fn until_nul(s: &[u8]) -> &[u8] {
    match s.iter().position(|&b| b == 0) {
        Some(n) => s.get(..n).unwrap_or(s),
        None => s,
    }
}

fn as_str(value: &[u8]) -> Option<&str> {
    core::str::from_utf8(until_nul(value)).ok()
}

/// `totalsize` from a header whose magic is right: how many bytes to look
/// at. Needs the first 8 bytes.
///
/// # Errors
/// [`DtbError::BadMagic`], or [`DtbError::Truncated`] for fewer than 8
/// bytes or a size over [`MAX_SIZE`].
pub fn total_size(header: &[u8]) -> Result<usize, DtbError> {
    let magic = be32(header, 0).ok_or(DtbError::Truncated)?;
    if magic != FDT_MAGIC {
        return Err(DtbError::BadMagic(magic));
    }
    let size = be32(header, 4).ok_or(DtbError::Truncated)?;
    let size = usize::try_from(size).map_err(|_| DtbError::Truncated)?;
    if !(HEADER_SIZE..=MAX_SIZE).contains(&size) {
        return Err(DtbError::Truncated);
    }
    Ok(size)
}

/// One token of the structure block.
#[derive(Clone, Copy, Debug)]
enum Token<'a> {
    Begin(&'a [u8]),
    End,
    Prop(&'a [u8], &'a [u8]),
}

/// A header-checked DTB.
#[derive(Clone, Copy, Debug)]
struct Fdt<'a> {
    structs: &'a [u8],
    strings: &'a [u8],
}

impl<'a> Fdt<'a> {
    fn new(dtb: &'a [u8]) -> Result<Self, DtbError> {
        let total = total_size(dtb)?;
        let dtb = dtb.get(..total).ok_or(DtbError::Truncated)?;
        let word = |at| {
            be32(dtb, at)
                .and_then(|v| usize::try_from(v).ok())
                .ok_or(DtbError::Truncated)
        };
        let version = be32(dtb, 20).ok_or(DtbError::Truncated)?;
        if version < 17 {
            return Err(DtbError::OldVersion(version));
        }
        let block = |off: usize, size: usize| {
            dtb.get(off..off.checked_add(size).ok_or(DtbError::Truncated)?)
                .ok_or(DtbError::Truncated)
        };
        Ok(Self {
            structs: block(word(8)?, word(36)?)?,
            strings: block(word(12)?, word(32)?)?,
        })
    }

    /// The token at `at` and the offset of the next one; `None` at
    /// `FDT_END`.
    fn token(&self, at: usize) -> Result<Option<(Token<'a>, usize)>, DtbError> {
        let bad = DtbError::BadStructure(at);
        let mut at = at;
        loop {
            let tag = be32(self.structs, at).ok_or(bad)?;
            let body = at + 4;
            match tag {
                TOK_NOP => at = body,
                TOK_END => return Ok(None),
                TOK_END_NODE => return Ok(Some((Token::End, body))),
                TOK_BEGIN_NODE => {
                    let rest = self.structs.get(body..).ok_or(bad)?;
                    let len = rest.iter().position(|&b| b == 0).ok_or(bad)?;
                    let name = rest.get(..len).ok_or(bad)?;
                    let next = (body + len + 1).next_multiple_of(4);
                    return Ok(Some((Token::Begin(name), next)));
                }
                TOK_PROP => {
                    let len = be32(self.structs, body).ok_or(bad)?;
                    let len = usize::try_from(len).map_err(|_| bad)?;
                    let name_off = be32(self.structs, body + 4).ok_or(bad)?;
                    let name_off = usize::try_from(name_off).map_err(|_| bad)?;
                    let value_at = body + 8;
                    let value_end = value_at.checked_add(len).ok_or(bad)?;
                    let value = self.structs.get(value_at..value_end).ok_or(bad)?;
                    let name = until_nul(self.strings.get(name_off..).ok_or(bad)?);
                    return Ok(Some((
                        Token::Prop(name, value),
                        value_end.next_multiple_of(4),
                    )));
                }
                _ => return Err(bad),
            }
        }
    }

    /// Calls `f(path, parent_cells, token)` for every token in order:
    /// `path` holds the node names from the root (`""`) to the node the
    /// token belongs to (for `End`, the node closing); `parent_cells` is
    /// that node's parent's (`#address-cells`, `#size-cells`), the cells
    /// its `reg` is written in.
    fn walk(&self, mut f: impl FnMut(&[&'a [u8]], (u32, u32), Token<'a>)) -> Result<(), DtbError> {
        let mut path: [&[u8]; MAX_DEPTH] = [&[]; MAX_DEPTH];
        // Per level: that node's own cells (the spec's defaults: 2 and 1).
        let mut cells = [(2u32, 1u32); MAX_DEPTH];
        let mut depth = 0usize;
        let mut at = 0usize;
        while let Some((token, next)) = self.token(at)? {
            let bad = DtbError::BadStructure(at);
            match token {
                Token::Begin(name) => {
                    *path.get_mut(depth).ok_or(bad)? = name;
                    *cells.get_mut(depth).ok_or(bad)? = (2, 1);
                    depth += 1;
                }
                Token::Prop(name, value) => {
                    let own = cells.get_mut(depth.checked_sub(1).ok_or(bad)?).ok_or(bad)?;
                    match name {
                        b"#address-cells" => own.0 = be32(value, 0).ok_or(bad)?,
                        b"#size-cells" => own.1 = be32(value, 0).ok_or(bad)?,
                        _ => {}
                    }
                }
                Token::End => {
                    if depth == 0 {
                        return Err(bad);
                    }
                }
            }
            let parent = depth
                .checked_sub(2)
                .and_then(|p| cells.get(p).copied())
                .unwrap_or((2, 1));
            f(path.get(..depth).ok_or(bad)?, parent, token);
            if let Token::End = token {
                depth -= 1;
                if depth == 0 {
                    // The root closed: FDT_END must follow.
                    return match self.token(next)? {
                        None => Ok(()),
                        Some(_) => Err(DtbError::BadStructure(next)),
                    };
                }
            }
            at = next;
        }
        Err(DtbError::BadStructure(at))
    }
}

/// Whether `path` (root first) names the node at `abs` ("/a/b@1").
fn path_is(path: &[&[u8]], abs: &str) -> bool {
    let Some(rest) = abs.strip_prefix('/') else {
        return false;
    };
    let mut wanted = rest.split('/').filter(|c| !c.is_empty());
    let mut have = path.iter().skip(1);
    loop {
        match (wanted.next(), have.next()) {
            (None, None) => return true,
            (Some(w), Some(h)) if w.as_bytes() == *h => {}
            _ => return false,
        }
    }
}

fn named(name: &[u8], base: &[u8]) -> bool {
    name == base
        || name
            .strip_prefix(base)
            .is_some_and(|rest| rest.first() == Some(&b'@'))
}

/// Reads [`DtbInfo`] from `dtb` (which may be longer than its
/// `totalsize`).
///
/// # Errors
/// A [`DtbError`] for a bad header or structure block; missing nodes and
/// properties are `None` / empty instead.
pub fn parse(dtb: &[u8]) -> Result<DtbInfo<'_>, DtbError> {
    let fdt = Fdt::new(dtb)?;
    let mut info = DtbInfo::default();
    // The top-level node being read (a memory node?) and the /cpus child
    // being read (a CPU?), each with its first reg entry.
    let mut top = (false, None::<(u64, u64)>);
    let mut cpu = (false, None::<(u64, u64)>);
    fdt.walk(|path, (ac, sc), token| {
        let top_level = path.len() == 2;
        let in_chosen = top_level && path.get(1) == Some(&&b"chosen"[..]);
        let cpu_level = path.len() == 3 && path.get(1) == Some(&&b"cpus"[..]);
        match token {
            Token::Begin(name) if top_level => top = (named(name, b"memory"), None),
            Token::Begin(name) if cpu_level => cpu = (named(name, b"cpu"), None),
            Token::Begin(_) => {}
            Token::Prop(name, value) => match name {
                b"bootargs" if in_chosen => info.bootargs = as_str(value),
                b"stdout-path" | b"linux,stdout-path" if in_chosen => {
                    info.stdout_path = info.stdout_path.or(as_str(value));
                }
                b"device_type" if top_level && until_nul(value) == b"memory" => top.0 = true,
                b"device_type" if cpu_level && until_nul(value) == b"cpu" => cpu.0 = true,
                b"reg" if top_level || cpu_level => {
                    let size_at = usize::try_from(ac).unwrap_or(usize::MAX);
                    let entry = be_cells(value, 0, ac).zip(be_cells(value, size_at, sc));
                    if top_level {
                        top.1 = entry;
                    } else {
                        cpu.1 = entry;
                    }
                }
                _ => {}
            },
            Token::End if top_level => {
                if let (true, Some((base, size))) = top {
                    if info.ram.is_none() && size != 0 {
                        info.ram = Some((base, size));
                    }
                }
            }
            Token::End if cpu_level => {
                if let (true, Some((mpidr, _))) = cpu {
                    info.cpus.push(mpidr);
                }
            }
            Token::End => {}
        }
    })?;
    if let Some(stdout) = info.stdout_path {
        let node = stdout.split(':').next().unwrap_or(stdout);
        let mut base = None;
        fdt.walk(|path, (ac, _), token| {
            if let Token::Prop(b"reg", value) = token {
                if base.is_none() && path_is(path, node) {
                    base = be_cells(value, 0, ac);
                }
            }
        })?;
        info.stdout_base = base;
    }
    Ok(info)
}

/// What `expect=` in the bootargs asks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Wanted<'a> {
    /// `expect=protected`.
    Protected,
    /// `expect=normal`.
    Normal,
    /// Any other value: a typo, which fails the check rather than being
    /// ignored.
    Other(&'a str),
}

/// The value of the last `key=value` word of `bootargs` with this key.
pub fn bootarg<'a>(bootargs: &'a str, key: &str) -> Option<&'a str> {
    bootargs
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .next_back()
}

/// The last `expect=` word of `bootargs`, if any.
pub fn wanted_kind(bootargs: &str) -> Option<Wanted<'_>> {
    bootarg(bootargs, "expect").map(|v| match v {
        "protected" => Wanted::Protected,
        "normal" => Wanted::Normal,
        other => Wanted::Other(other),
    })
}

/// `probe=<hex>` (with or without `0x`) from `bootargs`: `None` if absent,
/// `Some(Err(text))` if it is not a hex number.
pub fn probe_addr(bootargs: &str) -> Option<Result<u64, &str>> {
    bootarg(bootargs, "probe").map(|v| {
        let digits = v.strip_prefix("0x").unwrap_or(v);
        u64::from_str_radix(digits, 16).map_err(|_| v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_fdt::FdtWriter;

    /// A tree shaped like the VMM's (`vmm/src/arch/fdt.rs`): 2-cell root,
    /// 1-cell `/cpus`, the console at the root.
    fn vmm_like(cmdline: &str, cpus: u32) -> Vec<u8> {
        let mut fdt = FdtWriter::new().unwrap();
        let root = fdt.begin_node("").unwrap();
        fdt.property_string("compatible", "linux,dummy-virt")
            .unwrap();
        fdt.property_u32("#address-cells", 2).unwrap();
        fdt.property_u32("#size-cells", 2).unwrap();
        let chosen = fdt.begin_node("chosen").unwrap();
        fdt.property_string("bootargs", cmdline).unwrap();
        fdt.property_string("stdout-path", "/pl011@9000000")
            .unwrap();
        fdt.end_node(chosen).unwrap();
        let memory = fdt.begin_node("memory@80000000").unwrap();
        fdt.property_string("device_type", "memory").unwrap();
        fdt.property_array_u64("reg", &[0x8000_0000, 64 << 20])
            .unwrap();
        fdt.end_node(memory).unwrap();
        let node = fdt.begin_node("cpus").unwrap();
        fdt.property_u32("#address-cells", 1).unwrap();
        fdt.property_u32("#size-cells", 0).unwrap();
        for i in 0..cpus {
            let cpu = fdt.begin_node(&format!("cpu@{i}")).unwrap();
            fdt.property_string("device_type", "cpu").unwrap();
            fdt.property_u32("reg", i).unwrap();
            fdt.end_node(cpu).unwrap();
        }
        fdt.end_node(node).unwrap();
        let psci = fdt.begin_node("psci").unwrap();
        fdt.property_string("method", "hvc").unwrap();
        fdt.end_node(psci).unwrap();
        let uart = fdt.begin_node("pl011@9000000").unwrap();
        fdt.property_string("compatible", "arm,pl011").unwrap();
        fdt.property_array_u64("reg", &[0x0900_0000, 0x1000])
            .unwrap();
        fdt.end_node(uart).unwrap();
        fdt.end_node(root).unwrap();
        fdt.finish().unwrap()
    }

    #[test]
    fn reads_a_vmm_style_tree() {
        let dtb = vmm_like("console=ttyAMA0 expect=protected", 2);
        let info = parse(&dtb).unwrap();
        assert_eq!(info.bootargs, Some("console=ttyAMA0 expect=protected"));
        assert_eq!(info.stdout_path, Some("/pl011@9000000"));
        assert_eq!(info.stdout_base, Some(0x0900_0000));
        assert_eq!(info.ram, Some((0x8000_0000, 64 << 20)));
        assert_eq!(info.cpus.as_slice(), &[0, 1]);
    }

    /// QEMU virt's shape: 2-cell CPU `reg`, a `cpu-map` node beside the
    /// CPUs, a memory node with no `device_type` after others, options on
    /// `stdout-path`, the console under a bus with its own cells, NOPs.
    #[test]
    fn reads_a_qemu_style_tree() {
        let mut fdt = FdtWriter::new().unwrap();
        let root = fdt.begin_node("").unwrap();
        fdt.property_u32("#address-cells", 2).unwrap();
        fdt.property_u32("#size-cells", 2).unwrap();
        let chosen = fdt.begin_node("chosen").unwrap();
        fdt.property_string("stdout-path", "/soc/uart@1c090000:115200n8")
            .unwrap();
        fdt.end_node(chosen).unwrap();
        let soc = fdt.begin_node("soc").unwrap();
        fdt.property_u32("#address-cells", 1).unwrap();
        fdt.property_u32("#size-cells", 1).unwrap();
        let uart = fdt.begin_node("uart@1c090000").unwrap();
        fdt.property_array_u32("reg", &[0x1c09_0000, 0x1000])
            .unwrap();
        fdt.end_node(uart).unwrap();
        fdt.end_node(soc).unwrap();
        let cpus = fdt.begin_node("cpus").unwrap();
        fdt.property_u32("#address-cells", 2).unwrap();
        fdt.property_u32("#size-cells", 0).unwrap();
        let map = fdt.begin_node("cpu-map").unwrap();
        let cluster = fdt.begin_node("cluster0").unwrap();
        fdt.end_node(cluster).unwrap();
        fdt.end_node(map).unwrap();
        for mpidr in [0x100u64, 0x1_0000_0101] {
            let cpu = fdt.begin_node(&format!("cpu@{mpidr:x}")).unwrap();
            fdt.property_u64("reg", mpidr).unwrap();
            fdt.end_node(cpu).unwrap();
        }
        fdt.end_node(cpus).unwrap();
        let memory = fdt.begin_node("memory@40000000").unwrap();
        fdt.property_array_u64("reg", &[0x4000_0000, 256 << 20])
            .unwrap();
        fdt.end_node(memory).unwrap();
        let second = fdt.begin_node("memory@c0000000").unwrap();
        fdt.property_array_u64("reg", &[0xc000_0000, 1 << 20])
            .unwrap();
        fdt.end_node(second).unwrap();
        fdt.end_node(root).unwrap();
        let dtb = with_leading_nop(&fdt.finish().unwrap());

        let info = parse(&dtb).unwrap();
        assert_eq!(info.bootargs, None);
        assert_eq!(info.stdout_base, Some(0x1c09_0000));
        assert_eq!(info.ram, Some((0x4000_0000, 256 << 20)));
        assert_eq!(info.cpus.as_slice(), &[0x100, 0x1_0000_0101]);
    }

    /// Inserts an FDT_NOP before the root node (and fixes the header).
    fn with_leading_nop(dtb: &[u8]) -> Vec<u8> {
        let word = |at: usize| u32::from_be_bytes(dtb[at..at + 4].try_into().unwrap());
        let put =
            |v: &mut Vec<u8>, at: usize, x: u32| v[at..at + 4].copy_from_slice(&x.to_be_bytes());
        let (off_struct, off_strings, size_struct) = (word(8), word(12), word(36));
        let mut out = dtb.to_vec();
        let at = off_struct as usize;
        out.splice(at..at, TOK_NOP.to_be_bytes());
        put(&mut out, 4, word(4) + 4);
        if off_strings > off_struct {
            put(&mut out, 12, off_strings + 4);
        }
        put(&mut out, 36, size_struct + 4);
        out
    }

    #[test]
    fn missing_things_are_none_not_errors() {
        let mut fdt = FdtWriter::new().unwrap();
        let root = fdt.begin_node("").unwrap();
        let chosen = fdt.begin_node("chosen").unwrap();
        fdt.property_string("stdout-path", "serial0").unwrap();
        fdt.end_node(chosen).unwrap();
        fdt.end_node(root).unwrap();
        let dtb = fdt.finish().unwrap();
        let info = parse(&dtb).unwrap();
        assert_eq!(info.stdout_path, Some("serial0"));
        assert_eq!(info.stdout_base, None, "aliases are not followed");
        assert_eq!(info.ram, None);
        assert!(info.cpus.as_slice().is_empty());
    }

    #[test]
    fn damaged_trees_are_errors_never_panics() {
        let good = vmm_like("x", 1);
        assert_eq!(parse(&[]), Err(DtbError::Truncated));
        assert_eq!(parse(&[0; 64]), Err(DtbError::BadMagic(0)));
        assert_eq!(parse(&good[..good.len() - 1]), Err(DtbError::Truncated));
        let mut old = good.clone();
        old[20..24].copy_from_slice(&16u32.to_be_bytes());
        assert_eq!(parse(&old), Err(DtbError::OldVersion(16)));
        // Every single-byte corruption and every truncation of the
        // structure block reads as an error or as a tree, never a panic.
        for i in HEADER_SIZE..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0xff;
            let _ = parse(&bad);
            let mut cut = good.clone();
            cut[36..40].copy_from_slice(&u32::try_from(i - HEADER_SIZE).unwrap().to_be_bytes());
            let _ = parse(&cut);
        }
        // An unknown token is reported where it is.
        let off_struct = u32::from_be_bytes(good[8..12].try_into().unwrap()) as usize;
        let mut bad = good.clone();
        bad[off_struct..off_struct + 4].copy_from_slice(&7u32.to_be_bytes());
        assert_eq!(parse(&bad), Err(DtbError::BadStructure(0)));
    }

    #[test]
    fn total_size_checks_magic_and_bounds() {
        let dtb = vmm_like("", 1);
        assert_eq!(total_size(&dtb), Ok(dtb.len()));
        assert_eq!(total_size(&dtb[..7]), Err(DtbError::Truncated));
        let mut huge = dtb.clone();
        huge[4..8].copy_from_slice(&(4u32 << 20).to_be_bytes());
        assert_eq!(total_size(&huge), Err(DtbError::Truncated));
    }

    #[test]
    fn expect_comes_from_the_last_expect_word() {
        assert_eq!(wanted_kind("console=ttyAMA0"), None);
        assert_eq!(wanted_kind("expect=protected"), Some(Wanted::Protected));
        assert_eq!(
            wanted_kind("expect=protected quiet expect=normal"),
            Some(Wanted::Normal)
        );
        assert_eq!(
            wanted_kind("a=b expect=protectd"),
            Some(Wanted::Other("protectd"))
        );
        assert_eq!(wanted_kind("noexpect=normal"), None);
        assert_eq!(wanted_kind("expected=normal"), None);
    }

    #[test]
    fn probe_is_hex() {
        assert_eq!(probe_addr("expect=normal"), None);
        assert_eq!(probe_addr("probe=0xc000000"), Some(Ok(0xc00_0000)));
        assert_eq!(probe_addr("probe=A000000 x"), Some(Ok(0xa00_0000)));
        assert_eq!(probe_addr("probe=zz"), Some(Err("zz")));
    }
}
