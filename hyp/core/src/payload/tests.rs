use alloc::vec::Vec;

use proptest::prelude::*;

use super::*;

/// A fake hyp binary: an arm64 Image header (magic, text_offset, image_size
/// 0) followed by `body_len` bytes of "code".
fn fake_hyp(body_len: usize) -> Vec<u8> {
    let mut hyp = alloc::vec![0u8; IMAGE_HEADER_SIZE + body_len];
    hyp[0..4].copy_from_slice(&0x1400_0010u32.to_le_bytes()); // b +0x40
    hyp[8..16].copy_from_slice(&0u64.to_le_bytes());
    hyp[IMAGE_MAGIC_OFFSET..IMAGE_MAGIC_OFFSET + 4].copy_from_slice(&IMAGE_MAGIC);
    for (i, b) in hyp.iter_mut().enumerate().skip(IMAGE_HEADER_SIZE) {
        *b = u8::try_from(i % 251).unwrap();
    }
    hyp
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            u8::try_from(i & 0xff)
                .unwrap()
                .wrapping_mul(31)
                .wrapping_add(seed)
        })
        .collect()
}

/// A built image and where its table starts.
struct Img {
    bytes: Vec<u8>,
    table: usize,
}

impl Img {
    fn new(hyp_body: usize, kernel: usize, initramfs: usize) -> Self {
        let hyp = fake_hyp(hyp_body);
        let bytes = build(&hyp, &pattern(kernel, 1), &pattern(initramfs, 2)).unwrap();
        Self {
            bytes,
            table: table_offset(hyp.len()),
        }
    }

    fn standard() -> Self {
        // Kernel spans two pages so hand-made overlaps are real overlaps.
        Self::new(5000, 6000, 3000)
    }

    fn tail(&self) -> &[u8] {
        &self.bytes[self.table..]
    }

    fn parse(&self) -> Result<PayloadTable<'_>, PayloadError> {
        parse(self.tail())
    }

    fn put32(&mut self, at: usize, v: u32) {
        let at = self.table + at;
        self.bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn put64(&mut self, at: usize, v: u64) {
        let at = self.table + at;
        self.bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    fn get64(&self, at: usize) -> u64 {
        read_u64(self.tail(), at).unwrap()
    }

    fn entry(i: usize, field: usize) -> usize {
        HEADER_SIZE + i * ENTRY_SIZE + field
    }

    /// Recomputes the table CRC after a hand edit, so the edit reaches the
    /// checks behind the CRC.
    fn reseal(&mut self) {
        let count = read_u32(self.tail(), H_ENTRY_COUNT).unwrap() as usize;
        let table = &self.tail()[..HEADER_SIZE + count * ENTRY_SIZE];
        let crc = table_crc(table);
        self.put32(H_TABLE_CRC, crc);
    }
}

#[test]
fn crc32_vectors() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32(b""), 0);
    assert_eq!(crc32(b"a"), 0xE8B7_BE43);
    assert_eq!(
        crc32(b"The quick brown fox jumps over the lazy dog"),
        0x414F_A339
    );
    assert_eq!(crc32(&[0u8; 32]), 0x190A_55AD);
}

/// Bit-at-a-time reference CRC.
fn crc32_bitwise(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                0xEDB8_8320 ^ (crc >> 1)
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn table_offset_rounds_up() {
    assert_eq!(table_offset(0), 0);
    assert_eq!(table_offset(1), 4096);
    assert_eq!(table_offset(4096), 4096);
    assert_eq!(table_offset(4097), 8192);
    assert_eq!(table_offset(usize::MAX), usize::MAX & !4095);
}

#[test]
fn built_image_layout() {
    let img = Img::standard();
    let hyp = fake_hyp(5000);
    assert_eq!(img.table, 8192);
    assert_eq!(&img.bytes[..16], &hyp[..16]);
    assert_eq!(&img.bytes[24..hyp.len()], &hyp[24..]);
    assert!(img.bytes[hyp.len()..img.table].iter().all(|&b| b == 0));
    // image_size = file length rounded up to 4 KiB.
    let image_size = read_u64(&img.bytes, IMAGE_SIZE_OFFSET).unwrap();
    assert_eq!(image_size, img.bytes.len().next_multiple_of(4096) as u64);
    // Table, then kernel at +4096 (two pages), initramfs at +12288.
    let t = img.tail();
    assert_eq!(&t[..8], b"CLSTRPAY");
    assert_eq!(read_u32(t, H_VERSION), Some(1));
    assert_eq!(read_u32(t, H_HEADER_SIZE), Some(40));
    assert_eq!(read_u32(t, H_ENTRY_COUNT), Some(2));
    assert_eq!(read_u64(t, H_TOTAL_SIZE), Some(12288 + 3000));
    assert_eq!(t.len(), 12288 + 3000);
    assert_eq!(read_u32(t, Img::entry(0, E_KIND)), Some(1));
    assert_eq!(read_u64(t, Img::entry(0, E_OFFSET)), Some(4096));
    assert_eq!(read_u64(t, Img::entry(0, E_SIZE)), Some(6000));
    assert_eq!(read_u32(t, Img::entry(1, E_KIND)), Some(2));
    assert_eq!(read_u64(t, Img::entry(1, E_OFFSET)), Some(12288));
    assert!(t[Img::entry(2, 0)..4096].iter().all(|&b| b == 0));

    let parsed = img.parse().unwrap();
    assert_eq!(parsed.kernel(), &pattern(6000, 1)[..]);
    assert_eq!(parsed.initramfs(), Some(&pattern(3000, 2)[..]));
    assert_eq!(parsed.blob(PayloadKind::Initramfs).unwrap().offset, 12288);
    assert_eq!(parsed.total_size(), 12288 + 3000);
}

#[test]
fn initramfs_is_optional() {
    let img = Img::new(100, 10, 0);
    assert_eq!(img.table, 4096);
    let parsed = img.parse().unwrap();
    assert_eq!(parsed.kernel(), &pattern(10, 1)[..]);
    assert_eq!(parsed.initramfs(), None);
    assert_eq!(parsed.blob(PayloadKind::Initramfs), None);
    assert_eq!(read_u32(img.tail(), H_ENTRY_COUNT), Some(1));
}

#[test]
fn extra_bytes_after_payload_are_ignored() {
    let mut img = Img::standard();
    img.bytes.extend_from_slice(&[0xaa; 5000]);
    let parsed = img.parse().unwrap();
    assert_eq!(parsed.initramfs(), Some(&pattern(3000, 2)[..]));
}

// ---- every error variant, from a damaged built image ----

#[test]
fn err_truncated() {
    let img = Img::standard();
    let t = img.tail();
    assert_eq!(
        parse(&t[..39]),
        Err(PayloadError::Truncated {
            needed: 40,
            available: 39
        })
    );
    assert_eq!(
        parse(&t[..40 + 32 + 5]),
        Err(PayloadError::Truncated {
            needed: 104,
            available: 77
        })
    );
    let total = t.len() as u64;
    assert_eq!(
        parse(&t[..t.len() - 1]),
        Err(PayloadError::Truncated {
            needed: total,
            available: total - 1
        })
    );
    assert_eq!(
        parse(&[]),
        Err(PayloadError::Truncated {
            needed: 40,
            available: 0
        })
    );
}

#[test]
fn err_bad_magic() {
    let mut img = Img::standard();
    img.bytes[img.table] = b'X';
    assert_eq!(
        img.parse(),
        Err(PayloadError::BadMagic {
            found: *b"XLSTRPAY"
        })
    );
    // A table offset that is off by a page finds blob or padding bytes.
    assert!(matches!(
        parse(&img.bytes[img.table - 4096..]),
        Err(PayloadError::BadMagic { .. })
    ));
}

#[test]
fn err_unsupported_version() {
    let mut img = Img::standard();
    img.put32(H_VERSION, 2);
    assert_eq!(
        img.parse(),
        Err(PayloadError::UnsupportedVersion { found: 2 })
    );
}

#[test]
fn err_bad_header_size() {
    let mut img = Img::standard();
    img.put32(H_HEADER_SIZE, 48);
    assert_eq!(img.parse(), Err(PayloadError::BadHeaderSize { found: 48 }));
}

#[test]
fn err_bad_entry_count() {
    for n in [0, 9, u32::MAX] {
        let mut img = Img::standard();
        img.put32(H_ENTRY_COUNT, n);
        assert_eq!(img.parse(), Err(PayloadError::BadEntryCount { found: n }));
    }
}

#[test]
fn err_table_checksum() {
    let mut img = Img::standard();
    let stored = read_u32(img.tail(), H_TABLE_CRC).unwrap();
    img.put64(Img::entry(1, E_SIZE), 2999);
    let Err(PayloadError::TableChecksum {
        stored: s,
        computed,
    }) = img.parse()
    else {
        panic!("expected TableChecksum, got {:?}", img.parse());
    };
    assert_eq!(s, stored);
    assert_ne!(computed, stored);
    // The stored CRC itself damaged.
    let mut img = Img::standard();
    img.put32(H_TABLE_CRC, stored ^ 1);
    assert_eq!(
        img.parse(),
        Err(PayloadError::TableChecksum {
            stored: stored ^ 1,
            computed: stored
        })
    );
}

#[test]
fn err_non_zero_reserved() {
    let cases = [
        (H_FLAGS, ReservedField::HeaderFlags),
        (H_RESERVED, ReservedField::HeaderReserved),
        (
            Img::entry(0, E_FLAGS),
            ReservedField::EntryFlags { index: 0 },
        ),
        (
            Img::entry(1, E_RESERVED),
            ReservedField::EntryReserved { index: 1 },
        ),
    ];
    for (at, field) in cases {
        let mut img = Img::standard();
        img.put32(at, 0x10);
        img.reseal();
        assert_eq!(
            img.parse(),
            Err(PayloadError::NonZeroReserved { field, value: 0x10 })
        );
    }
}

#[test]
fn err_bad_total_size() {
    let mut img = Img::standard();
    img.put64(H_TOTAL_SIZE, 50);
    img.reseal();
    assert_eq!(
        img.parse(),
        Err(PayloadError::BadTotalSize {
            total_size: 50,
            table_size: 104
        })
    );
}

#[test]
fn err_total_size_past_slice_is_truncated() {
    let mut img = Img::standard();
    img.put64(H_TOTAL_SIZE, u64::MAX);
    img.reseal();
    assert_eq!(
        img.parse(),
        Err(PayloadError::Truncated {
            needed: u64::MAX,
            available: img.tail().len() as u64
        })
    );
}

#[test]
fn err_unknown_kind() {
    for kind in [0, 3, u32::MAX] {
        let mut img = Img::standard();
        img.put32(Img::entry(1, E_KIND), kind);
        img.reseal();
        assert_eq!(
            img.parse(),
            Err(PayloadError::UnknownKind {
                index: 1,
                found: kind
            })
        );
    }
}

#[test]
fn err_duplicate_entry() {
    let mut img = Img::standard();
    img.put32(Img::entry(1, E_KIND), 1);
    img.reseal();
    assert_eq!(
        img.parse(),
        Err(PayloadError::DuplicateEntry {
            kind: PayloadKind::Kernel
        })
    );
}

#[test]
fn err_empty_blob() {
    let mut img = Img::standard();
    img.put64(Img::entry(1, E_SIZE), 0);
    img.reseal();
    assert_eq!(
        img.parse(),
        Err(PayloadError::EmptyBlob {
            kind: PayloadKind::Initramfs
        })
    );
}

#[test]
fn err_misaligned() {
    let mut img = Img::standard();
    img.put64(Img::entry(1, E_OFFSET), 12288 + 8);
    img.reseal();
    assert_eq!(
        img.parse(),
        Err(PayloadError::Misaligned {
            kind: PayloadKind::Initramfs,
            offset: 12296
        })
    );
}

#[test]
fn err_overlaps_table() {
    let mut img = Img::standard();
    img.put64(Img::entry(0, E_OFFSET), 0);
    img.reseal();
    assert_eq!(
        img.parse(),
        Err(PayloadError::OverlapsTable {
            kind: PayloadKind::Kernel,
            offset: 0,
            table_size: 104
        })
    );
}

#[test]
fn err_out_of_bounds() {
    // Past total_size.
    let mut img = Img::standard();
    let total = img.get64(H_TOTAL_SIZE);
    img.put64(Img::entry(1, E_SIZE), 3001);
    img.reseal();
    assert_eq!(
        img.parse(),
        Err(PayloadError::OutOfBounds {
            kind: PayloadKind::Initramfs,
            offset: 12288,
            size: 3001,
            total_size: total
        })
    );
    // offset + size wraps around u64.
    let mut img = Img::standard();
    img.put64(Img::entry(0, E_SIZE), u64::MAX - 100);
    img.reseal();
    assert_eq!(
        img.parse(),
        Err(PayloadError::OutOfBounds {
            kind: PayloadKind::Kernel,
            offset: 4096,
            size: u64::MAX - 100,
            total_size: total
        })
    );
    // Offset far out, aligned.
    let mut img = Img::standard();
    img.put64(Img::entry(1, E_OFFSET), 1 << 40);
    img.reseal();
    assert!(matches!(
        img.parse(),
        Err(PayloadError::OutOfBounds {
            kind: PayloadKind::Initramfs,
            ..
        })
    ));
}

#[test]
fn err_overlap() {
    // Initramfs moved into the kernel's second page.
    let mut img = Img::standard();
    img.put64(Img::entry(1, E_OFFSET), 8192);
    img.reseal();
    assert_eq!(
        img.parse(),
        Err(PayloadError::Overlap {
            first: PayloadKind::Kernel,
            second: PayloadKind::Initramfs
        })
    );
    // Kernel moved onto the initramfs: the later entry starts first.
    let mut img = Img::standard();
    img.put64(Img::entry(0, E_OFFSET), 12288);
    img.put64(Img::entry(0, E_SIZE), 100);
    img.reseal();
    assert_eq!(
        img.parse(),
        Err(PayloadError::Overlap {
            first: PayloadKind::Kernel,
            second: PayloadKind::Initramfs
        })
    );
}

#[test]
fn err_overlap_hand_made_table() {
    // A table written byte by byte, not by `build`: two blobs at the same
    // offset, with correct CRCs everywhere.
    let blob = [0x5au8; 100];
    let mut t = alloc::vec![0u8; 4096 + 100];
    t[0..8].copy_from_slice(b"CLSTRPAY");
    t[8..12].copy_from_slice(&1u32.to_le_bytes());
    t[12..16].copy_from_slice(&40u32.to_le_bytes());
    t[16..20].copy_from_slice(&2u32.to_le_bytes());
    t[24..32].copy_from_slice(&(4096u64 + 100).to_le_bytes());
    for (i, kind) in [(0usize, 1u32), (1, 2)] {
        let e = 40 + 32 * i;
        t[e..e + 4].copy_from_slice(&kind.to_le_bytes());
        t[e + 8..e + 16].copy_from_slice(&4096u64.to_le_bytes());
        t[e + 16..e + 24].copy_from_slice(&100u64.to_le_bytes());
        t[e + 24..e + 28].copy_from_slice(&crc32(&blob).to_le_bytes());
    }
    t[4096..].copy_from_slice(&blob);
    let crc = crc32(&t[..104]); // CRC field is still zero here.
    t[32..36].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(
        parse(&t),
        Err(PayloadError::Overlap {
            first: PayloadKind::Kernel,
            second: PayloadKind::Initramfs
        })
    );
    // The same table with the second blob moved one page on parses.
    t[40 + 32 + 8..40 + 32 + 16].copy_from_slice(&8192u64.to_le_bytes());
    t[24..32].copy_from_slice(&(8192u64 + 100).to_le_bytes());
    t.resize(8192 + 100, 0);
    t[8192..].copy_from_slice(&blob);
    t[32..36].fill(0);
    let crc = crc32(&t[..104]);
    t[32..36].copy_from_slice(&crc.to_le_bytes());
    let parsed = parse(&t).unwrap();
    assert_eq!(parsed.kernel(), &blob[..]);
    assert_eq!(parsed.initramfs(), Some(&blob[..]));
}

#[test]
fn err_entry_checksum() {
    let img = Img::standard();
    let kernel_at = img.table + 4096 + 1234;
    let initrd_at = img.table + 12288 + 2999;
    for (at, kind) in [
        (kernel_at, PayloadKind::Kernel),
        (initrd_at, PayloadKind::Initramfs),
    ] {
        let mut img = Img::standard();
        let (len, seed) = match kind {
            PayloadKind::Kernel => (6000, 1),
            PayloadKind::Initramfs => (3000, 2),
        };
        let stored = crc32(&pattern(len, seed));
        img.bytes[at] ^= 0x80;
        let Err(PayloadError::EntryChecksum {
            kind: k,
            stored: s,
            computed,
        }) = img.parse()
        else {
            panic!("expected EntryChecksum, got {:?}", img.parse());
        };
        assert_eq!((k, s), (kind, stored));
        assert_ne!(computed, stored);
    }
}

#[test]
fn err_missing_entry() {
    let mut img = Img::new(100, 10, 0);
    img.put32(Img::entry(0, E_KIND), PayloadKind::Initramfs.raw());
    img.put32(Img::entry(0, E_CRC), crc32(&pattern(10, 1)));
    img.reseal();
    assert_eq!(
        img.parse(),
        Err(PayloadError::MissingEntry {
            kind: PayloadKind::Kernel
        })
    );
}

#[test]
fn build_errors() {
    let hyp = fake_hyp(10);
    assert_eq!(
        build(&hyp[..63], b"k", b""),
        Err(PayloadError::Truncated {
            needed: 64,
            available: 63
        })
    );
    let mut bad = hyp.clone();
    bad[57] = b'X';
    assert_eq!(
        build(&bad, b"k", b""),
        Err(PayloadError::NotArm64Image { found: *b"AXM\x64" })
    );
    assert_eq!(
        build(&hyp, b"", b"i"),
        Err(PayloadError::EmptyBlob {
            kind: PayloadKind::Kernel
        })
    );
    // A hyp whose image_size (code + .bss) reaches past its file.
    let mut big = hyp.clone();
    big[16..24].copy_from_slice(&0x2000u64.to_le_bytes());
    assert_eq!(
        build(&big, b"k", b""),
        Err(PayloadError::HypImageSizeTooLarge {
            image_size: 0x2000,
            table_offset: 0x1000
        })
    );
    // image_size inside the file's last page is fine.
    big[16..24].copy_from_slice(&0x1000u64.to_le_bytes());
    build(&big, b"k", b"").unwrap();
}

#[test]
fn every_error_displays() {
    let k = PayloadKind::Kernel;
    let all = [
        PayloadError::Truncated {
            needed: 1,
            available: 0,
        },
        PayloadError::BadMagic {
            found: *b"CLSTRPAX",
        },
        PayloadError::UnsupportedVersion { found: 2 },
        PayloadError::BadHeaderSize { found: 3 },
        PayloadError::BadEntryCount { found: 0 },
        PayloadError::NonZeroReserved {
            field: ReservedField::EntryFlags { index: 1 },
            value: 1,
        },
        PayloadError::TableChecksum {
            stored: 1,
            computed: 2,
        },
        PayloadError::BadTotalSize {
            total_size: 1,
            table_size: 72,
        },
        PayloadError::UnknownKind { index: 0, found: 7 },
        PayloadError::DuplicateEntry { kind: k },
        PayloadError::EmptyBlob { kind: k },
        PayloadError::Misaligned { kind: k, offset: 1 },
        PayloadError::OverlapsTable {
            kind: k,
            offset: 0,
            table_size: 72,
        },
        PayloadError::OutOfBounds {
            kind: k,
            offset: 0,
            size: 1,
            total_size: 0,
        },
        PayloadError::Overlap {
            first: k,
            second: PayloadKind::Initramfs,
        },
        PayloadError::EntryChecksum {
            kind: k,
            stored: 1,
            computed: 2,
        },
        PayloadError::MissingEntry { kind: k },
        PayloadError::NotArm64Image { found: [0; 4] },
        PayloadError::HypImageSizeTooLarge {
            image_size: 1,
            table_offset: 0,
        },
        PayloadError::ImageTooLarge,
    ];
    for e in all {
        let s = alloc::format!("{e}");
        assert!(!s.is_empty() && !s.ends_with('.'), "{s}");
    }
    assert_eq!(
        alloc::format!(
            "{}",
            PayloadError::EntryChecksum {
                kind: k,
                stored: 1,
                computed: 2
            }
        ),
        "payload host kernel Image checksum mismatch: stored 0x00000001, computed 0x00000002"
    );
}

proptest! {
    #[test]
    fn crc32_matches_bitwise(data in proptest::collection::vec(any::<u8>(), 0..300), split in 0usize..300) {
        prop_assert_eq!(crc32(&data), crc32_bitwise(&data));
        let split = split.min(data.len());
        let mut c = Crc32::new();
        c.update(&data[..split]);
        c.update(&data[split..]);
        prop_assert_eq!(c.finish(), crc32_bitwise(&data));
    }

    #[test]
    fn build_parse_round_trip(
        hyp_body in 0usize..9000,
        kernel in proptest::collection::vec(any::<u8>(), 1..10_000),
        initramfs in proptest::collection::vec(any::<u8>(), 0..10_000),
    ) {
        let hyp = fake_hyp(hyp_body);
        let img = build(&hyp, &kernel, &initramfs).unwrap();
        let table = table_offset(hyp.len());
        prop_assert_eq!(table % 4096, 0);
        prop_assert_eq!(&img[..16], &hyp[..16]);
        prop_assert_eq!(&img[24..hyp.len()], &hyp[24..]);
        let image_size = read_u64(&img, IMAGE_SIZE_OFFSET).unwrap();
        prop_assert_eq!(image_size % 4096, 0);
        prop_assert!(image_size >= img.len() as u64 && image_size < img.len() as u64 + 4096);

        let parsed = parse(&img[table..]).unwrap();
        prop_assert_eq!(parsed.kernel(), &kernel[..]);
        prop_assert_eq!(parsed.initramfs(), (!initramfs.is_empty()).then_some(&initramfs[..]));
        prop_assert_eq!(parsed.total_size(), (img.len() - table) as u64);
        for kind in [PayloadKind::Kernel, PayloadKind::Initramfs] {
            if let Some(b) = parsed.blob(kind) {
                prop_assert_eq!(b.offset % 4096, 0);
                prop_assert!(b.offset >= 4096);
            }
        }
    }

    /// Any single damaged byte in the table or a blob is caught; none panics.
    #[test]
    fn any_flipped_byte_is_caught(at in 0usize..20_000, bit in 0u8..8) {
        let img = Img::standard();
        let mut bytes = img.tail().to_vec();
        let at = at % bytes.len();
        bytes[at] ^= 1 << bit;
        let in_table = at < HEADER_SIZE + 2 * ENTRY_SIZE;
        let in_blob = (4096..4096 + 6000).contains(&at) || (12288..12288 + 3000).contains(&at);
        let r = parse(&bytes);
        if in_table || in_blob {
            prop_assert!(r.is_err(), "flip at {} accepted", at);
        }
    }

    /// Random tables never panic the parser.
    #[test]
    fn random_bytes_never_panic(mut data in proptest::collection::vec(any::<u8>(), 0..512), magic in any::<bool>()) {
        if magic && data.len() >= 16 {
            data[..8].copy_from_slice(&MAGIC);
            data[8..12].copy_from_slice(&1u32.to_le_bytes());
            data[12..16].copy_from_slice(&40u32.to_le_bytes());
        }
        let _ = parse(&data);
    }
}
