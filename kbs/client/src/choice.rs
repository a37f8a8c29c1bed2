//! The attester choice as flags and config files spell it (`auto`, `snp`, `tdx`,
//! `az-snp-vtpm`, `az-tdx-vtpm`, `cca`, `sample`): one set of names for every binary, with `clap::ValueEnum` behind the
//! `clap` feature so a flag parses straight into [`AttesterKind`] (the type that
//! `make_attester` takes) instead of each binary keeping its own copy of the enum.

use std::fmt;
use std::str::FromStr;

use crate::attester::AttesterKind;
use crate::error::AttesterError;

impl AttesterKind {
    /// Every kind, in the order help texts list them.
    pub const ALL: [AttesterKind; 7] = [
        AttesterKind::Auto,
        AttesterKind::Snp,
        AttesterKind::Tdx,
        AttesterKind::AzSnpVtpm,
        AttesterKind::AzTdxVtpm,
        AttesterKind::Cca,
        AttesterKind::Sample,
    ];

    /// The name a flag or config file uses (what `FromStr` accepts).
    pub fn name(self) -> &'static str {
        match self {
            AttesterKind::Auto => "auto",
            AttesterKind::Snp => "snp",
            AttesterKind::Tdx => "tdx",
            AttesterKind::AzSnpVtpm => "az-snp-vtpm",
            AttesterKind::AzTdxVtpm => "az-tdx-vtpm",
            AttesterKind::Cca => "cca",
            AttesterKind::Sample => "sample",
        }
    }

    /// Every name for a message: `auto, snp, tdx, az-snp-vtpm, az-tdx-vtpm, cca or sample`.
    pub(crate) fn names_in_prose() -> String {
        let names: Vec<&str> = Self::ALL.iter().map(|k| k.name()).collect();
        match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => names.concat(),
        }
    }
}

impl crate::attester::AttesterOptions {
    /// The default places, with sample evidence allowed exactly when `kind` names
    /// it: naming `sample` is the explicit opt-in, and `auto` never picks it.
    pub fn for_kind(kind: AttesterKind) -> Self {
        Self { allow_sample: kind == AttesterKind::Sample, ..Default::default() }
    }
}

impl FromStr for AttesterKind {
    type Err = AttesterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| AttesterError::UnknownKind(s.to_owned()))
    }
}

impl fmt::Display for AttesterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `--attester KIND`: the values and help text clap shows are exactly the names
/// above (no per-value help, so help keeps the one-line `[possible values: ...]`).
#[cfg(feature = "clap")]
impl clap::ValueEnum for AttesterKind {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_from_str() {
        for kind in AttesterKind::ALL {
            assert_eq!(kind.name().parse::<AttesterKind>().unwrap(), kind);
            assert_eq!(kind.to_string(), kind.name());
        }
        let e = "bogus".parse::<AttesterKind>().unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"unknown attester "bogus" (expected auto, snp, tdx, az-snp-vtpm, az-tdx-vtpm, cca or sample)"#
        );
    }

    #[cfg(feature = "clap")]
    #[test]
    fn clap_accepts_exactly_the_names() {
        use clap::ValueEnum;
        for kind in AttesterKind::ALL {
            assert_eq!(<AttesterKind as ValueEnum>::from_str(kind.name(), false).unwrap(), kind);
        }
        assert!(<AttesterKind as ValueEnum>::from_str("SNP", false).is_err());
        assert!(<AttesterKind as ValueEnum>::from_str("none", false).is_err());
    }
}
