//! The secret a test guest keeps in private memory, and how the host side
//! looks for it without ever holding it.
//!
//! The guest fills one page with words `s1..s512` of the xorshift64
//! (13, 7, 17) sequence from a seed the test chooses (`seed=` on the
//! conformance guest's command line, which mirrors [`next`] and checks the
//! same test vector; `cloister.secret_seed=` for the Linux guest agent's
//! `secret` test). A scan looks for [`MATCH_WORDS`] consecutive words of the
//! sequence, regenerating each word as it compares, so the scanner's own
//! memory never holds a run of them: a hit is a real leak.

/// Words compared before a match counts.
pub const MATCH_WORDS: usize = 16;
/// Words the guest writes: one page.
pub const PAGE_WORDS: usize = 512;

/// The next state (and output) of xorshift64 (13, 7, 17).
pub const fn next(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// Whether `words` starts with [`MATCH_WORDS`] words of the sequence from
/// `seed`, at any offset the guest could have written them: the scan only
/// needs the first word's position.
pub fn starts_with_secret(words: &[u64], seed: u64) -> bool {
    let mut state = seed;
    for i in 0..MATCH_WORDS {
        state = next(state);
        if words.get(i) != Some(&state) {
            return false;
        }
    }
    true
}

/// Offsets (in words) in `words` where the secret from `seed` starts.
pub fn find(words: &[u64], seed: u64) -> Vec<usize> {
    let first = next(seed);
    (0..words.len())
        .filter(|&i| words[i] == first && starts_with_secret(&words[i..], seed))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_matches_the_guests_test_vector() {
        // The conformance guest checks the same three words.
        assert_eq!(next(1), 0x4082_2041);
        assert_eq!(next(next(1)), 0x1000_4106_0c01_1441);
        assert_eq!(next(next(next(1))), 0x9b1e_842f_6e86_2629);
        let mut page = vec![0u64; 1024];
        let mut s = 0x5eed;
        for w in page.iter_mut().skip(100).take(PAGE_WORDS) {
            s = next(s);
            *w = s;
        }
        assert_eq!(find(&page, 0x5eed), vec![100]);
        assert_eq!(find(&page, 0x5eee), Vec::<usize>::new());
        page[110] ^= 1;
        assert_eq!(find(&page, 0x5eed), Vec::<usize>::new());
    }
}
