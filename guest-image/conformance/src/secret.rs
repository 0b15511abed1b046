//! Secret mode: instead of the suite, the guest keeps a secret in one
//! private page and walks it through share and unshare, telling the host
//! side of the test each step through the VMM's test device
//! (`vmm/src/devices/test_dev.rs`), so the host can probe the page between
//! steps.
//!
//! `mode=secret seed=<hex>`: write the secret, `SECRET_READY`; MEM_SHARE,
//! `SHARED`; MEM_UNSHARE, `UNSHARED`; power off. `mode=hold seed=<hex>`:
//! write the secret, `SECRET_READY`, `HOLDING`, then wait forever (for
//! tests that kill the VMM mid-run). `mode=touch seed=<hex>`: write the
//! secret, `SECRET_READY`, read the page again, `TOUCHED`, power off (for
//! tests that take the page away while the guest runs).
//!
//! The secret is words `s1..s512` of xorshift64 (13, 7, 17) from the seed,
//! the same sequence the agent's scanner regenerates
//! (`guest-image/agent/src/secret.rs`; both check the same test vector).

use crate::dtb::bootarg;

/// The test device's page (`TEST_DEV_BASE`).
pub const TEST_DEV: u64 = 0x0b00_0000;
/// `EVENT` register offset.
pub const EVENT: u64 = 0x00;
/// `VALUE` register offset.
pub const VALUE: u64 = 0x08;
/// Event: the secret is in the page at `VALUE`.
pub const SECRET_READY: u32 = 1;
/// Event: the page at `VALUE` is shared.
pub const SHARED: u32 = 2;
/// Event: the page at `VALUE` is private again.
pub const UNSHARED: u32 = 3;
/// Event: the guest now waits forever.
pub const HOLDING: u32 = 4;
/// Event (`mode=bench`): the guest runs; `VALUE` = CNTFRQ_EL0.
pub const BENCH_READY: u32 = 6;
/// Event: `VALUE` = counter ticks for [`BENCH_ROUNDS`] share + unshare
/// rounds of one page.
pub const BENCH_SHARE_TICKS: u32 = 7;
/// Event: `VALUE` = counter ticks to write one word in every page of RAM
/// from the end of the image to the DTB (each a first touch).
pub const BENCH_TOUCH_TICKS: u32 = 8;
/// Event: `VALUE` = pages touched.
pub const BENCH_TOUCH_PAGES: u32 = 9;
/// Share + unshare rounds `mode=bench` times.
pub const BENCH_ROUNDS: u64 = 64;
/// Event: the guest read the first word of the secret page again
/// (`mode=touch`; `VALUE` = the IPA).
pub const TOUCHED: u32 = 5;

/// Which secret mode, if any.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// Share, unshare, power off.
    Walk {
        /// The secret's seed.
        seed: u64,
    },
    /// Wait forever after the secret is ready.
    Hold {
        /// The secret's seed.
        seed: u64,
    },
    /// After the secret is ready, read the page again (the host may have
    /// taken it meanwhile), report it, power off.
    Touch {
        /// The secret's seed.
        seed: u64,
    },
    /// Measure share/unshare and first-touch costs (`bench memory`).
    Bench {
        /// Unused beyond the secret page's contents.
        seed: u64,
    },
}

impl Mode {
    /// The secret's seed.
    pub fn seed(self) -> u64 {
        match self {
            Mode::Walk { seed }
            | Mode::Hold { seed }
            | Mode::Touch { seed }
            | Mode::Bench { seed } => seed,
        }
    }
}

/// `mode=` and `seed=` from the bootargs: `None` for the suite (no
/// `mode=`), `Some(Err(why))` for a mode without a usable seed.
pub fn mode(bootargs: &str) -> Option<Result<Mode, &'static str>> {
    let mode = bootarg(bootargs, "mode")?;
    let seed = bootarg(bootargs, "seed").and_then(|v| {
        u64::from_str_radix(v.strip_prefix("0x").unwrap_or(v), 16)
            .ok()
            .filter(|&s| s != 0)
    });
    Some(match (mode, seed) {
        (_, None) => Err("mode= needs seed=<non-zero hex>"),
        ("secret", Some(seed)) => Ok(Mode::Walk { seed }),
        ("hold", Some(seed)) => Ok(Mode::Hold { seed }),
        ("touch", Some(seed)) => Ok(Mode::Touch { seed }),
        ("bench", Some(seed)) => Ok(Mode::Bench { seed }),
        _ => Err("mode= is secret, hold, touch or bench"),
    })
}

/// The next word of the secret (xorshift64, 13, 7, 17).
pub const fn next(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// Fills `page` with the secret from `seed`.
pub fn fill(page: &mut [u64], seed: u64) {
    let mut s = seed;
    for w in page {
        s = next(s);
        *w = s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_the_shared_test_vector() {
        assert_eq!(
            mode("expect=protected mode=secret seed=0x5eed"),
            Some(Ok(Mode::Walk { seed: 0x5eed }))
        );
        assert_eq!(
            mode("mode=hold seed=ff"),
            Some(Ok(Mode::Hold { seed: 0xff }))
        );
        assert_eq!(mode("expect=normal"), None);
        assert!(matches!(mode("mode=secret"), Some(Err(_))));
        assert!(matches!(mode("mode=secret seed=0"), Some(Err(_))));
        assert!(matches!(mode("mode=dance seed=1"), Some(Err(_))));
        // The agent's scanner checks the same three words.
        let mut page = [0u64; 3];
        fill(&mut page, 1);
        assert_eq!(
            page,
            [0x4082_2041, 0x1000_4106_0c01_1441, 0x9b1e_842f_6e86_2629]
        );
    }
}
