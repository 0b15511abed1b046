//! The `blk` test's data: a seeded pseudo-random pattern and a 64-bit
//! checksum, both defined here once so the host can recompute what the guest
//! wrote and check the disk file it left behind.

/// Which write of the `blk` test a pattern is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The `O_DIRECT` write.
    Direct,
    /// The buffered write + fsync; what the disk holds at the end.
    Buffered,
}

/// The pattern seed of `phase` for a run with `seed`: each phase writes
/// different data, so reading back the second write cannot pass on what the
/// first one left.
pub fn phase_seed(seed: u64, phase: Phase) -> u64 {
    match phase {
        Phase::Direct => seed,
        Phase::Buffered => seed ^ 0x9e37_79b9_7f4a_7c15,
    }
}

/// xorshift64 (Marsaglia 2003, shifts 13, 7, 17) whose state starts at
/// splitmix64(seed), so neighbouring seeds give unrelated streams and seed 0
/// works. The pattern is the stream's words, little-endian, in order.
#[derive(Debug, Clone)]
pub struct Pattern {
    state: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // xorshift's one fixed point.
        Pattern {
            state: if z == 0 { 1 } else { z },
        }
    }

    /// The next 64-bit word.
    pub fn next_word(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    /// Fills `buf` with the next `buf.len() / 8` words. `buf.len()` must be a
    /// multiple of 8 (the test uses 1 MiB blocks); a tail is left as it is.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_exact_mut(8) {
            chunk.copy_from_slice(&self.next_word().to_le_bytes());
        }
    }

    /// Compares `buf` with the next `buf.len() / 8` words; on a mismatch
    /// returns the offset of the first differing byte, what the pattern has
    /// there and what `buf` has. The stream advances past `buf` either way.
    pub fn check(&mut self, buf: &[u8]) -> Result<(), Mismatch> {
        let mut first = None;
        for (i, chunk) in buf.chunks_exact(8).enumerate() {
            let want = self.next_word().to_le_bytes();
            if first.is_none() && chunk != want {
                let at = (0..8).find(|&b| chunk[b] != want[b]).unwrap_or(0);
                first = Some(Mismatch {
                    offset: i * 8 + at,
                    expected: want[at],
                    found: chunk[at],
                });
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Where a read-back differs from the pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// Byte offset in the buffer checked.
    pub offset: usize,
    pub expected: u8,
    pub found: u8,
}

/// FNV-1a (64-bit offset basis and prime) over the data read as
/// little-endian u64 words, a final partial word zero-padded, then the byte
/// length folded in the same way. Word-wise, so hashing a 64 MiB disk takes
/// 8 Mi steps; streaming, so the data may come in pieces of any size.
#[derive(Debug, Clone)]
pub struct Checksum {
    hash: u64,
    pending: [u8; 8],
    pending_len: usize,
    total: u64,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Default for Checksum {
    fn default() -> Self {
        Checksum::new()
    }
}

impl Checksum {
    pub fn new() -> Checksum {
        Checksum {
            hash: FNV_OFFSET,
            pending: [0; 8],
            pending_len: 0,
            total: 0,
        }
    }

    fn word(&mut self, w: u64) {
        self.hash = (self.hash ^ w).wrapping_mul(FNV_PRIME);
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.total = self.total.wrapping_add(data.len() as u64);
        if self.pending_len > 0 {
            let take = (8 - self.pending_len).min(data.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&data[..take]);
            self.pending_len += take;
            data = &data[take..];
            if self.pending_len < 8 {
                return;
            }
            self.word(u64::from_le_bytes(self.pending));
            self.pending_len = 0;
        }
        let mut words = data.chunks_exact(8);
        for chunk in &mut words {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            self.word(u64::from_le_bytes(w));
        }
        let tail = words.remainder();
        self.pending[..tail.len()].copy_from_slice(tail);
        self.pending_len = tail.len();
    }

    pub fn finish(&self) -> u64 {
        let mut end = self.clone();
        if end.pending_len > 0 {
            end.pending[end.pending_len..].fill(0);
            end.word(u64::from_le_bytes(end.pending));
        }
        end.word(end.total);
        end.hash
    }
}

/// The checksum as the agent prints it: 16 lowercase hex digits.
pub fn format_checksum(sum: u64) -> String {
    format!("{sum:016x}")
}

/// The checksum of the first `bytes` bytes of the pattern of `seed`: what a
/// disk holds after a `blk` run with that phase seed and size.
pub fn pattern_checksum(seed: u64, bytes: u64) -> u64 {
    let mut pattern = Pattern::new(seed);
    let mut sum = Checksum::new();
    let mut left = bytes;
    while left >= 8 {
        sum.update(&pattern.next_word().to_le_bytes());
        left -= 8;
    }
    if left > 0 {
        let word = pattern.next_word().to_le_bytes();
        sum.update(&word[..usize::try_from(left).unwrap_or(8)]);
    }
    sum.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_is_fixed_by_its_seed() {
        // Pinned (recomputed independently): the host and an older guest
        // must agree on the bytes.
        let mut p = Pattern::new(1);
        let words: Vec<u64> = (0..3).map(|_| p.next_word()).collect();
        assert_eq!(
            words,
            [
                0x7274_658b_cb6f_4838,
                0xd287_4a86_df7c_98a8,
                0x4737_03a9_09c3_4b99
            ]
        );
        let mut again = Pattern::new(1);
        assert_eq!(words, (0..3).map(|_| again.next_word()).collect::<Vec<_>>());
        let mut other = Pattern::new(2);
        assert_ne!(words[0], other.next_word());
        let mut zero = Pattern::new(0);
        assert_ne!(zero.next_word(), 0, "seed 0 must work");
        assert_ne!(phase_seed(7, Phase::Direct), phase_seed(7, Phase::Buffered));
    }

    #[test]
    fn fill_and_check_agree_and_find_the_first_bad_byte() {
        let mut buf = vec![0u8; 4096];
        Pattern::new(99).fill(&mut buf);
        assert_eq!(Pattern::new(99).check(&buf), Ok(()));
        let good = buf[1000];
        buf[1000] ^= 0xff;
        buf[3000] ^= 0xff;
        assert_eq!(
            Pattern::new(99).check(&buf),
            Err(Mismatch {
                offset: 1000,
                expected: good,
                found: good ^ 0xff
            })
        );
        // Two halves filled in turn are the same stream as one fill.
        let mut halves = vec![0u8; 4096];
        let mut p = Pattern::new(99);
        let (a, b) = halves.split_at_mut(2048);
        p.fill(a);
        p.fill(b);
        buf[1000] ^= 0xff;
        buf[3000] ^= 0xff;
        assert_eq!(halves, buf);
    }

    #[test]
    fn checksum_streams_in_any_pieces_and_sees_every_byte() {
        let data: Vec<u8> = (0u32..1000).map(|i| (i * 7 % 251) as u8).collect();
        let mut whole = Checksum::new();
        whole.update(&data);
        for split in [1, 3, 8, 13, 999] {
            let mut parts = Checksum::new();
            for piece in data.chunks(split) {
                parts.update(piece);
            }
            assert_eq!(parts.finish(), whole.finish(), "pieces of {split}");
        }
        let mut flipped = data.clone();
        flipped[555] ^= 1;
        let mut other = Checksum::new();
        other.update(&flipped);
        assert_ne!(other.finish(), whole.finish());
        // Zero padding does not hide the length.
        let mut short = Checksum::new();
        short.update(b"abc");
        let mut padded = Checksum::new();
        padded.update(b"abc\0");
        assert_ne!(short.finish(), padded.finish());
        assert_eq!(format_checksum(0xab), "00000000000000ab");
    }

    #[test]
    fn pattern_checksum_is_the_checksum_of_the_filled_pattern() {
        for bytes in [0u64, 8, 1 << 20, (1 << 20) + 5] {
            let len = usize::try_from(bytes).unwrap();
            let mut buf = vec![0u8; len.div_ceil(8) * 8];
            Pattern::new(5).fill(&mut buf);
            let mut sum = Checksum::new();
            sum.update(&buf[..len]);
            assert_eq!(pattern_checksum(5, bytes), sum.finish(), "{bytes} bytes");
        }
    }
}
