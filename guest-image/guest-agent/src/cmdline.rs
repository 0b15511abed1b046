//! The agent's keys on the kernel command line (`/proc/cmdline`).

use std::fmt;

/// Tests to run, comma-separated.
pub const TEST_KEY: &str = "cloister.test";
/// MiB the `blk` test writes and reads.
pub const BLK_MIB_KEY: &str = "cloister.blk_mib";
/// Seed of the `blk` pattern.
pub const SEED_KEY: &str = "cloister.seed";
/// The disk the `blk` test overwrites.
pub const BLK_DEV_KEY: &str = "cloister.blk_dev";
/// The `secret` test's seed.
pub const SECRET_SEED_KEY: &str = "cloister.secret_seed";
/// Requests of each kind the `randio` test makes.
pub const RAND_OPS_KEY: &str = "cloister.rand_ops";
/// Default of [`RAND_OPS_KEY`].
pub const DEFAULT_RAND_OPS: u64 = 2000;

/// What `cargo xtask bench io` runs in every configuration (on Cloister
/// through the host agent's `bench-io`, on plain QEMU from xtask): MiB of
/// sequential IO and 4 KiB random requests of each kind.
pub const BENCH_IO_MIB: u32 = 32;
/// See [`BENCH_IO_MIB`].
pub const BENCH_IO_RAND_OPS: u32 = 1000;

/// `cloister.blk_mib` when absent.
pub const DEFAULT_BLK_MIB: u64 = 64;
/// `cloister.seed` when absent.
pub const DEFAULT_SEED: u64 = 1;
/// `cloister.blk_dev` when absent: the first virtio-blk disk.
pub const DEFAULT_BLK_DEV: &str = "/dev/vda";
/// The largest `cloister.blk_mib` accepted (64 GiB).
pub const MAX_BLK_MIB: u64 = 65_536;

/// A guest-side test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Test {
    /// Boot facts: CPUs, block devices, pKVM guest services, DMA pool.
    Boot,
    /// Write, read back and check the disk, `O_DIRECT` and buffered.
    Blk,
    /// 4 KiB random `O_DIRECT` writes, then reads, over the first
    /// `blk_mib` MiB (`cloister.rand_ops` of each).
    Randio,
    /// Keep a page of [`crate::secret`] words from `cloister.secret_seed`
    /// in private memory until the run ends; report its guest-physical
    /// address (`secret_ipa`).
    Secret,
    /// Report `waiting=host` and wait for a line on hvc0: the host looks
    /// at the VM while it is still up, then lets it end.
    Wait,
    /// Power the VM off (the default end; naming it reports it).
    Poweroff,
    /// Reboot the VM instead of powering it off.
    Reboot,
}

impl Test {
    /// Every test with its command-line name.
    pub const ALL: [(Test, &'static str); 7] = [
        (Test::Boot, "boot"),
        (Test::Blk, "blk"),
        (Test::Randio, "randio"),
        (Test::Secret, "secret"),
        (Test::Wait, "wait"),
        (Test::Poweroff, "poweroff"),
        (Test::Reboot, "reboot"),
    ];

    /// The test's name on the command line.
    pub fn name(self) -> &'static str {
        Test::ALL
            .iter()
            .find(|(t, _)| *t == self)
            .map_or("?", |(_, n)| n)
    }

    /// The test called `name`.
    pub fn from_name(name: &str) -> Option<Test> {
        Test::ALL.iter().find(|(_, n)| *n == name).map(|(t, _)| *t)
    }

    /// Whether the test ends the run (it must be the last one).
    pub fn ends_run(self) -> bool {
        matches!(self, Test::Poweroff | Test::Reboot)
    }
}

/// What the command line asks the agent to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Tests in order; empty: start the shell.
    pub tests: Vec<Test>,
    pub blk_mib: u64,
    pub seed: u64,
    pub blk_dev: String,
    /// The `secret` test's seed.
    pub secret_seed: u64,
    /// Requests of each kind the `randio` test makes.
    pub rand_ops: u64,
}

/// A command line the agent cannot follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdlineError {
    /// `cloister.test` names a test this agent does not have.
    UnknownTest(String),
    /// `poweroff` or `reboot` is not the last test.
    EndNotLast(&'static str),
    /// A numeric key holds something else or is out of range.
    BadNumber {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
}

impl fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CmdlineError::UnknownTest(name) => {
                let known: Vec<&str> = Test::ALL.iter().map(|(_, n)| *n).collect();
                write!(
                    f,
                    "{TEST_KEY}: unknown test {name:?}; known tests: {}",
                    known.join(", ")
                )
            }
            CmdlineError::EndNotLast(name) => {
                write!(f, "{TEST_KEY}: {name} ends the run, so it must come last")
            }
            CmdlineError::BadNumber {
                key,
                value,
                expected,
            } => write!(f, "{key}: expected {expected}, found {value:?}"),
        }
    }
}

impl std::error::Error for CmdlineError {}

/// Reads the agent's keys from a kernel command line; other words are
/// ignored, a key given twice takes its last value (as the kernel does).
pub fn parse(cmdline: &str) -> Result<Options, CmdlineError> {
    let mut opts = Options {
        tests: Vec::new(),
        blk_mib: DEFAULT_BLK_MIB,
        seed: DEFAULT_SEED,
        blk_dev: DEFAULT_BLK_DEV.to_owned(),
        secret_seed: DEFAULT_SEED,
        rand_ops: DEFAULT_RAND_OPS,
    };
    for word in cmdline.split_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        match key {
            TEST_KEY => {
                opts.tests = value
                    .split(',')
                    .filter(|t| !t.is_empty())
                    .map(|t| Test::from_name(t).ok_or_else(|| CmdlineError::UnknownTest(t.into())))
                    .collect::<Result<_, _>>()?;
            }
            BLK_MIB_KEY => {
                opts.blk_mib = parse_number(value)
                    .filter(|n| (1..=MAX_BLK_MIB).contains(n))
                    .ok_or_else(|| CmdlineError::BadNumber {
                        key: BLK_MIB_KEY,
                        value: value.into(),
                        expected: "a size in MiB, 1..=65536",
                    })?;
            }
            SEED_KEY => {
                opts.seed = parse_number(value).ok_or_else(|| CmdlineError::BadNumber {
                    key: SEED_KEY,
                    value: value.into(),
                    expected: "a 64-bit number (decimal or 0x hex)",
                })?;
            }
            BLK_DEV_KEY => value.clone_into(&mut opts.blk_dev),
            RAND_OPS_KEY => {
                opts.rand_ops = parse_number(value)
                    .filter(|n| (1..=1_000_000).contains(n))
                    .ok_or_else(|| CmdlineError::BadNumber {
                        key: RAND_OPS_KEY,
                        value: value.into(),
                        expected: "a count, 1..=1000000",
                    })?;
            }
            SECRET_SEED_KEY => {
                opts.secret_seed = parse_number(value).ok_or_else(|| CmdlineError::BadNumber {
                    key: SECRET_SEED_KEY,
                    value: value.into(),
                    expected: "a 64-bit number (decimal or 0x hex)",
                })?;
            }
            _ => {}
        }
    }
    if let Some((i, t)) = opts.tests.iter().enumerate().find(|(_, t)| t.ends_run()) {
        if i + 1 != opts.tests.len() {
            return Err(CmdlineError::EndNotLast(t.name()));
        }
    }
    Ok(opts)
}

/// A decimal or `0x`-prefixed hexadecimal u64.
pub fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_keys_means_the_shell_and_the_defaults() {
        let opts = parse("console=hvc0 earlycon panic=-1").unwrap();
        assert_eq!(
            opts,
            Options {
                tests: vec![],
                blk_mib: 64,
                seed: 1,
                blk_dev: "/dev/vda".into(),
                secret_seed: 1,
                rand_ops: DEFAULT_RAND_OPS,
            }
        );
    }

    #[test]
    fn secret_and_wait_tests_and_their_seed() {
        let opts = parse("cloister.test=secret,boot,blk,wait,poweroff cloister.secret_seed=0x5eed")
            .unwrap();
        assert_eq!(
            opts.tests,
            [
                Test::Secret,
                Test::Boot,
                Test::Blk,
                Test::Wait,
                Test::Poweroff
            ]
        );
        assert_eq!(opts.secret_seed, 0x5eed);
        let bad = parse("cloister.secret_seed=soon").unwrap_err();
        assert_eq!(
            bad.to_string(),
            "cloister.secret_seed: expected a 64-bit number (decimal or 0x hex), found \"soon\""
        );
    }

    #[test]
    fn keys_are_read_in_order_and_the_last_value_wins() {
        let opts = parse(
            "console=hvc0 cloister.test=boot cloister.test=boot,blk,poweroff \
             cloister.blk_mib=16 cloister.seed=0xC0FFEE cloister.blk_dev=/dev/vdb",
        )
        .unwrap();
        assert_eq!(opts.tests, [Test::Boot, Test::Blk, Test::Poweroff]);
        assert_eq!(
            (opts.blk_mib, opts.seed, opts.blk_dev.as_str()),
            (16, 0xc0ffee, "/dev/vdb")
        );
        assert_eq!(parse("cloister.seed=42").unwrap().seed, 42);
    }

    #[test]
    fn bad_values_are_errors_naming_the_key() {
        let err = parse("cloister.test=boot,disk").unwrap_err();
        assert_eq!(err, CmdlineError::UnknownTest("disk".into()));
        assert!(err
            .to_string()
            .contains("known tests: boot, blk, randio, secret, wait, poweroff, reboot"));
        for bad in [
            "cloister.blk_mib=0",
            "cloister.blk_mib=x",
            "cloister.blk_mib=65537",
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(
                err.starts_with("cloister.blk_mib: expected a size"),
                "{err}"
            );
        }
        let err = parse("cloister.seed=0xZZ").unwrap_err().to_string();
        assert!(err.starts_with("cloister.seed:"), "{err}");
        let err = parse("cloister.test=reboot,boot").unwrap_err();
        assert_eq!(err, CmdlineError::EndNotLast("reboot"));
    }

    #[test]
    fn test_names_round_trip() {
        for (test, name) in Test::ALL {
            assert_eq!(test.name(), name);
            assert_eq!(Test::from_name(name), Some(test));
        }
        assert_eq!(Test::from_name("Boot"), None);
    }
}
