//! The result lines the agent prints on hvc0, and their parser.
//!
//! Every line starts with [`PREFIX`]; see the crate docs for the format.

use std::fmt;

/// What starts every result line.
pub const PREFIX: &str = "cloister-guest: ";

/// The format version, printed first as `protocol=<n>`.
pub const PROTOCOL: u32 = 1;

/// One result line, without its prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// `<key>=<value>`.
    Fact { key: String, value: String },
    /// `ok <n> - <name>` or `not ok <n> - <name> # <detail>`.
    Check {
        number: u32,
        ok: bool,
        name: String,
        detail: String,
    },
    /// `result=pass` / `result=fail`: the last line of a run.
    Result { pass: bool },
}

impl Line {
    /// A fact line. Newlines in `value` become spaces: a line is a line.
    pub fn fact(key: &str, value: impl fmt::Display) -> Line {
        Line::Fact {
            key: key.to_owned(),
            value: value.to_string().replace(['\n', '\r'], " "),
        }
    }

    /// The line as printed, with its prefix, without a newline.
    pub fn to_line(&self) -> String {
        match self {
            Line::Fact { key, value } => format!("{PREFIX}{key}={value}"),
            Line::Check {
                number,
                ok: true,
                name,
                ..
            } => format!("{PREFIX}ok {number} - {name}"),
            Line::Check {
                number,
                ok: false,
                name,
                detail,
            } => format!(
                "{PREFIX}not ok {number} - {name} # {}",
                detail.replace(['\n', '\r'], " ")
            ),
            Line::Result { pass } => {
                format!("{PREFIX}result={}", if *pass { "pass" } else { "fail" })
            }
        }
    }

    /// Parses what follows the prefix.
    pub fn parse(text: &str) -> Result<Line, String> {
        let text = text.trim_end_matches(['\r', '\n']);
        if let Some(rest) = text.strip_prefix("ok ") {
            return parse_check(rest, true);
        }
        if let Some(rest) = text.strip_prefix("not ok ") {
            return parse_check(rest, false);
        }
        let Some((key, value)) = text.split_once('=') else {
            return Err(format!("expected `key=value` or a check, found {text:?}"));
        };
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(format!("bad key {key:?} (expected [a-z0-9_]+)"));
        }
        if key == "result" {
            return match value {
                "pass" => Ok(Line::Result { pass: true }),
                "fail" => Ok(Line::Result { pass: false }),
                _ => Err(format!("result={value:?}: expected pass or fail")),
            };
        }
        Ok(Line::Fact {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }
}

fn parse_check(rest: &str, ok: bool) -> Result<Line, String> {
    let bad = || format!("expected `<n> - <name>` after ok / not ok, found {rest:?}");
    let (number, rest) = rest.split_once(" - ").ok_or_else(bad)?;
    let number = number.parse().map_err(|_| bad())?;
    let (name, detail) = match rest.split_once(" # ") {
        Some((n, d)) => (n, d),
        None => (rest, ""),
    };
    Ok(Line::Check {
        number,
        ok,
        name: name.to_owned(),
        detail: detail.to_owned(),
    })
}

/// A check as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub number: u32,
    pub ok: bool,
    pub name: String,
    pub detail: String,
}

/// Everything a run printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Facts in the order printed.
    pub facts: Vec<(String, String)>,
    pub checks: Vec<Check>,
    /// `None` when the run never printed `result=` (crashed, hung, cut off).
    pub result: Option<bool>,
}

impl Report {
    /// Reads the result lines out of a console log: lines holding
    /// [`PREFIX`] (anything before it on the line is ignored, in case a
    /// kernel message got there first); every other line is skipped.
    /// Malformed result lines, a fact given twice and anything after
    /// `result=` are errors.
    pub fn parse(console: &str) -> Result<Report, String> {
        let mut report = Report::default();
        for (i, raw) in console.lines().enumerate() {
            let Some(at) = raw.find(PREFIX) else {
                continue;
            };
            let line = Line::parse(&raw[at + PREFIX.len()..])
                .map_err(|e| format!("line {}: {e}", i + 1))?;
            report
                .push(line)
                .map_err(|e| format!("line {}: {e}: {raw:?}", i + 1))?;
        }
        Ok(report)
    }

    /// Adds one result line, as it comes. A fact given twice and anything
    /// after `result=` are errors (and leave the report as it was).
    pub fn push(&mut self, line: Line) -> Result<(), String> {
        if self.result.is_some() {
            return Err("result line after result=".into());
        }
        match line {
            Line::Fact { key, value } => {
                if self.fact(&key).is_some() {
                    return Err(format!("fact {key} given twice"));
                }
                self.facts.push((key, value));
            }
            Line::Check {
                number,
                ok,
                name,
                detail,
            } => self.checks.push(Check {
                number,
                ok,
                name,
                detail,
            }),
            Line::Result { pass } => self.result = Some(pass),
        }
        Ok(())
    }

    /// The value of fact `key`.
    pub fn fact(&self, key: &str) -> Option<&str> {
        self.facts
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The checks that failed.
    pub fn failed(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let lines = [
            Line::fact("cpus_online", "0-1"),
            Line::fact("restricted_dma_pool", "0x8c000000 16 MiB"),
            Line::fact("empty", ""),
            Line::Check {
                number: 1,
                ok: true,
                name: "boot: facts read".into(),
                detail: String::new(),
            },
            Line::Check {
                number: 2,
                ok: false,
                name: "blk: direct read-back".into(),
                detail: "byte 4096: expected 0x1f, read 0x00".into(),
            },
            Line::Result { pass: false },
        ];
        for line in lines {
            let text = line.to_line();
            let rest = text.strip_prefix(PREFIX).unwrap();
            assert_eq!(Line::parse(rest), Ok(line), "{text}");
        }
        assert_eq!(Line::fact("k", "a\nb").to_line(), "cloister-guest: k=a b");
    }

    #[test]
    fn a_console_log_parses_around_kernel_output() {
        let console = "\
[    0.000000] Booting Linux on physical CPU 0x0000000000 [0x000f0510]\r\n\
cloister-guest: protocol=1\r\n\
cloister-guest: cpus_online=0-1\n\
[    1.2] random: crng init done cloister-guest: block_devices=vda\n\
cloister-guest: ok 1 - boot: facts read\n\
cloister-guest: not ok 2 - blk: direct # short read\n\
cloister-guest: result=fail\n\
[    2.0] reboot: Power down\n";
        let r = Report::parse(console).unwrap();
        assert_eq!(r.fact("protocol"), Some("1"));
        assert_eq!(r.fact("cpus_online"), Some("0-1"));
        assert_eq!(r.fact("block_devices"), Some("vda"));
        assert_eq!(r.checks.len(), 2);
        assert_eq!(
            r.failed().map(|c| c.detail.as_str()).collect::<Vec<_>>(),
            ["short read"]
        );
        assert_eq!(r.result, Some(false));
    }

    #[test]
    fn malformed_duplicate_and_trailing_lines_are_errors() {
        for (console, want) in [
            ("cloister-guest: nonsense\n", "line 1: expected `key=value`"),
            ("cloister-guest: Bad=1\n", "bad key"),
            ("cloister-guest: ok x - y\n", "expected `<n> - <name>`"),
            ("cloister-guest: result=maybe\n", "expected pass or fail"),
            (
                "cloister-guest: a=1\ncloister-guest: a=2\n",
                "line 2: fact a given twice",
            ),
            (
                "cloister-guest: result=pass\ncloister-guest: a=1\n",
                "after result=",
            ),
        ] {
            let err = Report::parse(console).unwrap_err();
            assert!(err.contains(want), "{console:?}: {err}");
        }
        let cut = Report::parse("cloister-guest: a=1\n").unwrap();
        assert_eq!(cut.result, None);
    }
}
