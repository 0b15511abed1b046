//! TAP (Test Anything Protocol, version 12) lines: the plan, one line per
//! case, diagnostics.

use core::fmt::{self, Write};

use crate::spec::{Expect, Got, Observed, Verdict};

/// Counts of each outcome.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Summary {
    /// Cases that passed.
    pub passed: u32,
    /// Cases that failed.
    pub failed: u32,
    /// Cases skipped.
    pub skipped: u32,
}

/// Writes TAP to `out`, numbering cases from 1.
#[derive(Debug)]
pub struct Tap<W: Write> {
    out: W,
    next: u32,
    summary: Summary,
}

impl<W: Write> Tap<W> {
    /// A writer to `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            next: 1,
            summary: Summary::default(),
        }
    }

    /// `1..count`.
    ///
    /// # Errors
    /// Those of `out`.
    pub fn plan(&mut self, count: usize) -> fmt::Result {
        writeln!(self.out, "1..{count}")
    }

    /// `# text` (a diagnostic; `text` must be one line).
    ///
    /// # Errors
    /// Those of `out`.
    pub fn diag(&mut self, text: fmt::Arguments<'_>) -> fmt::Result {
        writeln!(self.out, "# {text}")
    }

    /// The next case's line: `ok N - name`, `ok N - name # SKIP reason`,
    /// or `not ok N - name # got X expected Y`.
    ///
    /// # Errors
    /// Those of `out`.
    pub fn case(
        &mut self,
        name: &str,
        verdict: Verdict,
        expect: &Expect,
        observed: &Observed<'_>,
    ) -> fmt::Result {
        let n = self.next;
        self.next += 1;
        match verdict {
            Verdict::Pass => {
                self.summary.passed += 1;
                writeln!(self.out, "ok {n} - {name}")
            }
            Verdict::Skip(why) => {
                self.summary.skipped += 1;
                writeln!(self.out, "ok {n} - {name} # SKIP {why}")
            }
            Verdict::Fail => {
                self.summary.failed += 1;
                writeln!(
                    self.out,
                    "not ok {n} - {name} # got {} expected {expect}",
                    Got { expect, observed }
                )
            }
        }
    }

    /// What was written so far.
    pub fn summary(&self) -> Summary {
        self.summary
    }

    /// The number the next case gets.
    pub fn next_number(&self) -> u32 {
        self.next
    }

    /// The writer.
    pub fn out(&mut self) -> &mut W {
        &mut self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_tap() {
        let mut tap = Tap::new(String::new());
        tap.diag(format_args!("cloister-conformance: normal"))
            .unwrap();
        tap.plan(3).unwrap();
        let call = Observed::Call(Ok([0, 0, 0, 0]));
        tap.case("first", Verdict::Pass, &Expect::X0(0), &call)
            .unwrap();
        tap.case(
            "second",
            Verdict::Fail,
            &Expect::X0((-3i64).cast_unsigned()),
            &call,
        )
        .unwrap();
        tap.case("third", Verdict::Skip("one vCPU"), &Expect::X0(0), &call)
            .unwrap();
        assert_eq!(
            tap.out().as_str(),
            "# cloister-conformance: normal\n\
             1..3\n\
             ok 1 - first\n\
             not ok 2 - second # got 0x0 expected -3\n\
             ok 3 - third # SKIP one vCPU\n"
        );
        assert_eq!(
            tap.summary(),
            Summary {
                passed: 1,
                failed: 1,
                skipped: 1
            }
        );
        assert_eq!(tap.next_number(), 4);
    }
}
