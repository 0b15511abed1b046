//! Pure parsing helpers the agent uses on what Linux shows it; kept apart from
//! the system calls so they unit-test on the build machine.

/// The value of `key=value` on a kernel command line, if present.
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|word| word.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// The exception level the kernel reports all CPUs started at, from the lines
/// of its log (`/dev/kmsg` records or plain `dmesg` lines).
///
/// arm64 Linux prints `CPU: All CPU(s) started at EL<n>` once SMP bring-up is
/// done (`hyp_mode_check()` in `arch/arm64/kernel/smp.c`). A mismatch between
/// CPUs prints a different message, which yields `None` here on purpose.
pub fn entry_el<'a>(log_lines: impl IntoIterator<Item = &'a str>) -> Option<u8> {
    const MARKER: &str = "CPU: All CPU(s) started at EL";
    log_lines.into_iter().find_map(|line| {
        // kmsg records look like "6,123,456789,-;message".
        let message = line.split_once(';').map_or(line, |(_, m)| m);
        let rest = message.strip_prefix(MARKER)?;
        rest.trim().parse().ok()
    })
}

/// What a TAP stream said.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TapSummary {
    /// N of the `1..N` plan (0 without a plan).
    pub planned: usize,
    /// `ok` lines.
    pub passed: usize,
    /// Each `not ok` line.
    pub failed: Vec<String>,
    /// The value of a `# cloister-conformance: <kind>` diagnostic.
    pub kind: Option<String>,
}

/// Reads a TAP stream (the conformance guest's console).
pub fn tap_summary(text: &str) -> TapSummary {
    let mut s = TapSummary::default();
    for line in text.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("1..") {
            s.planned = n.trim().parse().unwrap_or(0);
        } else if line.starts_with("not ok") {
            s.failed.push(line.to_owned());
        } else if line.starts_with("ok") {
            s.passed += 1;
        } else if let Some(kind) = line.strip_prefix("# cloister-conformance:") {
            s.kind = Some(kind.trim().to_owned());
        }
    }
    s
}

/// The frame for guest frame `gfn` in the host driver's debugfs page list
/// (`gfn pfn donated|shared`, hex).
pub fn driver_page_pfn(list: &str, gfn: u64) -> Option<u64> {
    let hex = |w: &str| u64::from_str_radix(w.trim_start_matches("0x"), 16).ok();
    list.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        let (g, p) = (hex(w.next()?)?, hex(w.next()?)?);
        (g == gfn).then_some(p)
    })
}

/// The memory model `cloister-vmm` reports on stderr (`... 64 MiB of
/// guest-memfd memory`).
pub fn vmm_memory_model(stderr: &str) -> Option<&str> {
    stderr
        .lines()
        .find_map(|l| l.split(" MiB of ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
}

/// The top-level `System RAM` ranges of `/proc/iomem`, inclusive.
pub fn system_ram_ranges(iomem: &str) -> Vec<(u64, u64)> {
    iomem
        .lines()
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| {
            let (range, name) = l.split_once(" : ")?;
            if name.trim() != "System RAM" {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some((
                u64::from_str_radix(a.trim(), 16).ok()?,
                u64::from_str_radix(b.trim(), 16).ok()?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn tap_and_iomem() {
        let t = super::tap_summary(
            "# cloister-conformance: protected\n1..3\nok 1 - a\nnot ok 2 - b # got 1\nok 3 - c\n",
        );
        assert_eq!((t.planned, t.passed), (3, 2));
        assert_eq!(t.failed, ["not ok 2 - b # got 1"]);
        assert_eq!(t.kind.as_deref(), Some("protected"));
        let iomem = "09000000-09000fff : pl011@9000000\n40000000-bfffffff : System RAM\n  40210000-41a3ffff : Kernel code\nc0000000-c0ffffff : reserved\n";
        assert_eq!(
            super::system_ram_ranges(iomem),
            [(0x4000_0000, 0xbfff_ffff)]
        );
    }

    use super::*;

    #[test]
    fn cmdline_value_finds_exact_key_only() {
        let cmdline = "console=ttyAMA0 cloister.scenario.x=no cloister.scenario=entry-el quiet";
        assert_eq!(
            cmdline_value(cmdline, "cloister.scenario"),
            Some("entry-el")
        );
        assert_eq!(cmdline_value(cmdline, "console"), Some("ttyAMA0"));
        assert_eq!(cmdline_value(cmdline, "quiet"), None);
        assert_eq!(cmdline_value("", "console"), None);
    }

    #[test]
    fn entry_el_reads_kmsg_records_and_plain_lines() {
        let kmsg = [
            "6,1,0,-;Booting Linux on physical CPU 0x0000000000 [0x000f0510]",
            "6,80,120000,-;CPU: All CPU(s) started at EL2",
        ];
        assert_eq!(entry_el(kmsg), Some(2));
        assert_eq!(entry_el(["CPU: All CPU(s) started at EL1"]), Some(1));
    }

    #[test]
    fn entry_el_is_none_when_cpus_disagree_or_message_missing() {
        assert_eq!(
            entry_el(["6,80,1,-;CPU: CPUs started in inconsistent modes"]),
            None
        );
        assert_eq!(entry_el(["6,1,0,-;Booting Linux"]), None);
    }
}

/// The sum of every `key=N` word in `text` (the driver's per-vCPU counter
/// lines, `vcpu=0 kvm_run=12 ...`); words that do not parse count 0.
pub fn sum_key(text: &str, key: &str) -> u64 {
    text.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter(|(k, _)| *k == key)
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod sum_key_tests {
    use super::sum_key;

    #[test]
    fn sums_one_key_over_every_vcpu_line() {
        let text =
            "vcpu=0 kvm_run=12 interrupted=3 errors=0\nvcpu=1 kvm_run=30 interrupted=1 errors=0\n";
        assert_eq!(sum_key(text, "kvm_run"), 42);
        assert_eq!(sum_key(text, "interrupted"), 4);
        assert_eq!(sum_key(text, "missing"), 0);
        assert_eq!(sum_key("kvm_run=x kvm_run=5", "kvm_run"), 5);
    }
}
