//! The agent → runner result protocol.
//!
//! One JSON object per line on a virtio-serial port named [`RESULT_PORT_NAME`]
//! (QEMU: `-device virtserialport,name=org.cloister.results`). The port is not
//! a tty, so no line discipline rewrites the bytes, and writes block until
//! QEMU has taken them: nothing is lost when the agent powers off right after
//! its last line. The serial console stays free for humans and boot logs.
//!
//! A well-formed report is `Hello`, then any number of `Fact` and `Check`,
//! then exactly one `Done`.

use serde::{Deserialize, Serialize};

/// Bumped whenever a [`Report`] variant or field changes meaning.
pub const PROTOCOL_VERSION: u32 = 1;

/// Name of the virtio-serial port that carries results.
pub const RESULT_PORT_NAME: &str = "org.cloister.results";

/// Kernel command-line key that tells the agent which scenario to run
/// (`cloister.scenario=boot`).
pub const SCENARIO_CMDLINE_KEY: &str = "cloister.scenario";

/// One line of the result channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum Report {
    /// First line: who is talking and what it was asked to do.
    Hello {
        protocol: u32,
        agent_version: String,
        scenario: String,
    },
    /// Something the agent observed, to be compared with the stack's
    /// expectations by the runner (e.g. `entry_el` = `2`).
    Fact { key: String, value: String },
    /// A check the agent could decide by itself (e.g. data read back equals
    /// data written).
    Check {
        name: String,
        ok: bool,
        detail: String,
    },
    /// Last line: the agent finished; `ok` is false if any of its own checks
    /// failed or the scenario could not run.
    Done { ok: bool },
}

impl Report {
    /// Encodes the report as one line (without the trailing newline).
    pub fn to_line(&self) -> String {
        // Serialising these plain structs cannot fail: no maps with non-string
        // keys, no floats, no custom Serialize impls.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"event":"check","name":"encode","ok":false,"detail":"{e}"}}"#)
        })
    }

    /// Parses one line of the channel.
    pub fn from_line(line: &str) -> Result<Report, ProtocolError> {
        serde_json::from_str(line).map_err(|e| ProtocolError {
            line: line.to_owned(),
            reason: e.to_string(),
        })
    }
}

/// A line on the result channel that is not a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    /// The offending line, as received.
    pub line: String,
    /// Why it did not parse.
    pub reason: String,
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed result line {:?}: {}", self.line, self.reason)
    }
}

impl std::error::Error for ProtocolError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_round_trips_through_one_line() {
        let reports = [
            Report::Hello {
                protocol: PROTOCOL_VERSION,
                agent_version: "0.1.0".into(),
                scenario: "boot".into(),
            },
            Report::Fact {
                key: "entry_el".into(),
                value: "2".into(),
            },
            Report::Check {
                name: "readback".into(),
                ok: false,
                detail: "byte 7 differs\nsecond line".into(),
            },
            Report::Done { ok: true },
        ];
        for report in reports {
            let line = report.to_line();
            assert!(!line.contains('\n'), "{line}");
            assert_eq!(Report::from_line(&line), Ok(report));
        }
    }

    #[test]
    fn garbage_and_unknown_fields_are_protocol_errors() {
        let err = Report::from_line("Booting Linux").unwrap_err();
        assert_eq!(err.line, "Booting Linux");
        let err = Report::from_line(r#"{"event":"done","ok":true,"extra":1}"#).unwrap_err();
        assert!(err.reason.contains("extra"), "{}", err.reason);
        Report::from_line(r#"{"event":"reboot"}"#).unwrap_err();
    }
}
