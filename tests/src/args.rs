//! Options of the lab binaries (`tandem-lab`, `bench-failover`): `--flag
//! value` pairs, with errors that say what is wrong and what is allowed.

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::str::FromStr;

use crate::{LabError, Result};

/// A walk over the arguments after the subcommand.
pub struct Args<'a> {
    it: std::slice::Iter<'a, String>,
    usage: &'a str,
}

impl<'a> Args<'a> {
    /// The arguments `args`; `usage` ends every error message.
    pub fn new(args: &'a [String], usage: &'a str) -> Args<'a> {
        Args {
            it: args.iter(),
            usage,
        }
    }

    /// The next option name, if any.
    pub fn next_flag(&mut self) -> Option<&'a str> {
        self.it.next().map(String::as_str)
    }

    /// The value that follows `flag`.
    pub fn value(&mut self, flag: &str) -> Result<&'a str> {
        self.it
            .next()
            .map(String::as_str)
            .ok_or_else(|| LabError::Other(format!("{flag} needs a value\n{}", self.usage)))
    }

    /// The value of `flag` as a number in `range`.
    pub fn number<T>(&mut self, flag: &str, range: RangeInclusive<T>) -> Result<T>
    where
        T: FromStr + PartialOrd + Display,
    {
        let v = self.value(flag)?;
        v.parse::<T>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                LabError::Other(format!(
                    "bad value {v:?} for {flag}: allowed {}..={}\n{}",
                    range.start(),
                    range.end(),
                    self.usage
                ))
            })
    }

    /// The value of `flag`, which must be one of `choices`.
    pub fn choice(&mut self, flag: &str, choices: &[&str]) -> Result<&'a str> {
        let v = self.value(flag)?;
        if choices.contains(&v) {
            Ok(v)
        } else {
            Err(self.bad(flag, v, &choices.join(", ")))
        }
    }

    /// The error for `value` of `flag`, allowed being `allowed`.
    pub fn bad(&self, flag: &str, value: &str, allowed: &str) -> LabError {
        LabError::Other(format!(
            "bad value {value:?} for {flag}: allowed {allowed}\n{}",
            self.usage
        ))
    }

    /// The error for an option nobody knows.
    pub fn unknown(&self, flag: &str) -> LabError {
        LabError::Other(format!("unknown option {flag}\n{}", self.usage))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn values_numbers_and_choices_are_checked() {
        let v = args(&["--rounds", "20", "--only", "linux", "--rounds", "0"]);
        let mut a = Args::new(&v, "usage");
        assert_eq!(a.next_flag(), Some("--rounds"));
        assert_eq!(a.number::<u32>("--rounds", 1..=200).unwrap(), 20);
        assert_eq!(a.next_flag(), Some("--only"));
        assert_eq!(a.choice("--only", &["tandem", "linux"]).unwrap(), "linux");
        assert_eq!(a.next_flag(), Some("--rounds"));
        let e = a
            .number::<u32>("--rounds", 1..=200)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad value \"0\" for --rounds: allowed 1..=200"),
            "{e}"
        );
        assert!(a
            .value("--out")
            .unwrap_err()
            .to_string()
            .contains("--out needs a value"));
        assert_eq!(a.next_flag(), None);
    }
}
