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

#[cfg(test)]
mod tests {
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
