//! `cloister-guest-agent`: the init of Cloister's Linux guest.
//!
//! The guest initramfs holds this agent as `/init` and a static busybox. As
//! PID 1 the agent mounts proc, sysfs, devtmpfs and a tmpfs on /tmp, reads
//! the kernel command line and then either runs the tests it names and
//! powers the VM off, or, with no test named, starts a busybox shell on
//! `hvc0` (the interactive demo; the VM powers off when the shell exits or
//! on busybox `poweroff` / `reboot`).
//!
//! # Kernel command line
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `cloister.test=<t>[,<t>...]` | none: a shell on hvc0 | tests to run, in order: `secret`, `boot`, `blk`, `randio`, `wait`, then optionally `poweroff` or `reboot` last |
//! | `cloister.blk_mib=<n>` | 64 | MiB the `blk` test writes and reads at the start of the disk |
//! | `cloister.seed=<n>` | 1 | seed of the `blk` pattern (decimal or `0x` hex) |
//! | `cloister.blk_dev=<path>` | `/dev/vda` | the disk the `blk` test overwrites |
//! | `cloister.secret_seed=<n>` | 1 | seed of the `secret` test's page ([`secret`]) |
//! | `cloister.rand_ops=<n>` | 2000 | 4 KiB requests of each kind (write, read) the `randio` test makes |
//!
//! After the tests the agent powers the VM off (PSCI SYSTEM_OFF through
//! `reboot(RB_POWER_OFF)`), or reboots it (`RB_AUTOBOOT`, PSCI SYSTEM_RESET)
//! when the last test is `reboot`.
//!
//! # Output
//!
//! Results go to `/dev/hvc0` (the first virtio console), one line each, every
//! line starting with [`report::PREFIX`] (`cloister-guest: `). The agent
//! first lowers the console log level so kernel messages do not interleave
//! with them. The lines are TAP-like:
//!
//! ```text
//! cloister-guest: protocol=1
//! cloister-guest: agent=0.1.0
//! cloister-guest: tests=boot,blk
//! cloister-guest: cpus_online=0-1
//! cloister-guest: ok 1 - boot: facts read
//! cloister-guest: blk_direct_write_mbps=85.3
//! cloister-guest: not ok 2 - blk: direct read-back # byte 4096: expected 0x1f, read 0x00
//! cloister-guest: result=fail
//! ```
//!
//! * `<key>=<value>`: a fact. Keys are `[a-z0-9_]`, the value runs to the end
//!   of the line. Each key appears once.
//! * `ok <n> - <name>` / `not ok <n> - <name> # <detail>`: a check.
//! * `result=pass` or `result=fail`: the last line; `pass` when every check
//!   passed. A report without it was cut off (the guest crashed or hung).
//!
//! [`report::Report::parse`] reads these lines back out of a console log
//! (other console output is skipped).
//!
//! ## `boot` facts
//!
//! | key | value |
//! | --- | --- |
//! | `kernel_release` | `uname -r` |
//! | `cpus_online` | `/sys/devices/system/cpu/online`, e.g. `0-1` |
//! | `block_devices` | the names in `/sys/block`, space-separated, or `none` |
//! | `kvm_hyp_services` | the four feature words of the boot log's `smccc: KVM: hypervisor services detected (a3 a2 a1 a0)` line, or `none` (no KVM-compatible hypervisor answered: plain QEMU) |
//! | `pkvm_guest` | `active` when those features offer HYP_MEMINFO, MEM_SHARE and MEM_UNSHARE, the services `drivers/virt/coco/pkvm-guest` needs before it registers its memory-encryption hooks (it prints nothing itself), else `inactive` |
//! | `mmio_guard` | `yes` when the features offer MMIO_GUARD (the driver then guards every device ioremap), else `no` |
//! | `restricted_dma_pool` | `<base> <size> MiB` from `kernel/dma/swiotlb.c`'s `Reserved memory: created restricted DMA pool at ...`, or `none` |
//! | `dma_atomic_pools_kib` | KiB of the kernel's DMA atomic pools (`kernel/dma/pool.c` makes them decrypted: a pKVM guest shares them too) |
//! | `restricted_dma_devices` | the devices `drivers/of` attached a reserved-memory pool to (`... <dev>: assigned reserved memory node ...`), space-separated, or `none` |
//!
//! ## `randio` facts
//!
//! `rand_write_iops`, `rand_read_iops`: 4 KiB `O_DIRECT` requests per second
//! at random 4 KiB-aligned offsets of the first `blk_mib` MiB (the writes'
//! data is the [`pattern`] of `seed ^ 0x52414e44`); `randio_requests_before`
//! and `randio_requests_after`, and `blk_requests_before` / `_after` around
//! `blk`: the disk's completed requests (reads + writes from
//! `/sys/block/<dev>/stat`), so the host can count transitions per request.
//!
//! ## `secret` and `wait`
//!
//! `secret` fills one page-aligned page of the agent's memory with the
//! [`secret`] words of `cloister.secret_seed`, locks it, keeps it until the
//! VM ends and reports `secret_ipa` (its guest-physical address, hex): the
//! host checks it cannot read it (and, after teardown, that no copy is
//! left). `wait` reports `waiting=host` and reads one line from hvc0, so the
//! host can look at the VM (its shared pages, say) before it ends.
//!
//! ## `blk` facts
//!
//! The test overwrites the first `blk_mib` MiB of the disk twice, in 1 MiB
//! requests. Phase `direct` writes the [`pattern`] of seed
//! `phase_seed(seed, Direct)` with `O_DIRECT`, then reads it back with
//! `O_DIRECT` and compares. Phase `buffered` writes the pattern of
//! `phase_seed(seed, Buffered)` through the page cache and `fsync`s, drops
//! the device's cached pages (`BLKFLSBUF`), reads it back through the page
//! cache, then once more with `O_DIRECT`, and compares both. The disk is left
//! holding the buffered pattern: `blk_checksum` is its [`pattern::Checksum`],
//! which the host compares with the disk file after poweroff.
//!
//! | key | value |
//! | --- | --- |
//! | `blk_device`, `blk_mib`, `blk_seed` | what was tested (seed in hex) |
//! | `blk_direct_write_mbps`, `blk_direct_read_mbps` | MB/s (10^6 bytes) of each `O_DIRECT` phase |
//! | `blk_buffered_write_mbps` | MB/s of the buffered writes including the `fsync` |
//! | `blk_buffered_read_mbps` | MB/s of the buffered read-back (after `BLKFLSBUF`) |
//! | `blk_checksum` | 16 hex digits: the checksum of the `blk_mib` MiB the disk holds at the end |

pub mod bootlog;
pub mod cmdline;
pub mod init;
pub mod pattern;
pub mod report;
pub mod secret;
