//! What makes a secret guessable, and how the configuration speaks of secrets without showing
//! them.
//!
//! Token secrets, backend secrets, API keys and the webhook's secret are checked here. Two
//! rules, chosen by where the value is used:
//!
//! - [`check_anywhere`]: a *placeholder* (`replace-with-...`, `changeme`, `<secret>`,
//!   `${VAR}`) is refused on every address. Nobody sets one on purpose: it is a template
//!   copied without being filled in, and a loopback listener today is a public one after the
//!   next edit.
//! - [`check_exposed`]: where clients, backends or HTTP callers can reach the value's listener
//!   (any address but loopback, or a listener behind a PROXY-protocol balancer), a secret must
//!   also be at least [`MIN_LEN`] bytes, not a *well-known* value (the embedded development
//!   secrets, every example secret in this repository's documents, common words) and not
//!   made of fewer than [`MIN_DISTINCT`] different bytes (`aaaa...`, `12341234...`).
//!
//! Errors name a secret by its key and position (`auth.secrets[1]`), never by any part of its
//! value: a refused configuration is printed to a terminal or a journal.

use std::fmt;

/// Shortest secret accepted where it is exposed, in bytes (after trimming).
pub const MIN_LEN: usize = 16;

/// Fewest different bytes an exposed secret must hold. A random 16-byte hex string has
/// fewer than 5 different digits with odds of about 1 in 2.5 million; a made-up one often does.
pub const MIN_DISTINCT: usize = 5;

/// Values anyone can find: the embedded development secrets, the example secrets of this
/// repository's documents (which a reader may copy), and common words. Compared without
/// regard to case, after trimming.
pub(crate) const WELL_KNOWN: &[&str] = &[
    "tether-dev-secret-not-for-production",
    "tether-dev-backend-secret-not-for-production",
    "a-secret-of-16-bytes-or-more",
    "another-secret-for-backends",
    "secret",
    "changeme",
    "change-me",
    "password",
    "test",
    "dev",
    "default",
    "0123456789abcdef",
    "0123456789abcdef0123456789abcdef",
];

/// Pieces that mark a template value nobody filled in, compared without regard to case. Long
/// enough that a random secret does not contain one by chance.
const PLACEHOLDER_PARTS: &[&str] = &[
    "replace-with",
    "replace_with",
    "replacewith",
    "replace-me",
    "replace_me",
    "replaceme",
    "changeme",
    "change-me",
    "change_me",
    "change-this",
    "change_this",
    "your-secret",
    "your_secret",
    "yoursecret",
    "your-api-key",
    "your_api_key",
    "your-key-here",
    "placeholder",
];

/// Why a secret was refused. Its `Display` says what is wrong without showing the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weakness {
    /// Nothing but whitespace.
    Empty,
    /// Fewer than [`MIN_LEN`] bytes.
    Short,
    /// A template value (see [`PLACEHOLDER_PARTS`]).
    Placeholder,
    /// A value anyone can find (see [`WELL_KNOWN`]).
    WellKnown,
    /// Fewer than [`MIN_DISTINCT`] different bytes.
    Repetitive,
}

impl fmt::Display for Weakness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Weakness::Empty => "empty",
            Weakness::Short => "shorter than 16 bytes",
            Weakness::Placeholder => "a template placeholder (replace it with a random value, e.g. `openssl rand -hex 32`)",
            Weakness::WellKnown => "a well-known value (a development or documentation example, or a common word)",
            Weakness::Repetitive => "made of fewer than 5 different characters",
        })
    }
}

/// The rule for a secret wherever it is used: placeholders are refused.
pub fn check_anywhere(value: &str) -> Result<(), Weakness> {
    let v = value.trim().to_ascii_lowercase();
    let placeholder = PLACEHOLDER_PARTS.iter().any(|p| v.contains(p))
        || (v.starts_with('<') && v.ends_with('>'))
        || (v.starts_with("${") && v.ends_with('}'));
    if placeholder {
        return Err(Weakness::Placeholder);
    }
    Ok(())
}

/// The rule for a secret that protects a listener others can reach: also long enough, not
/// well known and not repetitive.
pub fn check_exposed(value: &str) -> Result<(), Weakness> {
    let v = value.trim();
    if v.is_empty() {
        return Err(Weakness::Empty);
    }
    check_anywhere(v)?;
    if WELL_KNOWN.iter().any(|w| w.eq_ignore_ascii_case(v)) {
        return Err(Weakness::WellKnown);
    }
    if v.len() < MIN_LEN {
        return Err(Weakness::Short);
    }
    let mut seen = [false; 256];
    let distinct = v
        .bytes()
        .filter(|b| !std::mem::replace(&mut seen[usize::from(*b)], true))
        .count();
    if distinct < MIN_DISTINCT {
        return Err(Weakness::Repetitive);
    }
    Ok(())
}

/// Checks every value of the list `key` with `rule`; the error names the key and position.
pub fn check_list<'a>(
    key: &str,
    values: impl IntoIterator<Item = &'a str>,
    rule: fn(&str) -> Result<(), Weakness>,
) -> Result<(), String> {
    for (i, v) in values.into_iter().enumerate() {
        rule(v).map_err(|w| format!("{key}[{i}] is {w}"))?;
    }
    Ok(())
}

/// `Debug` of a list of secrets: how many, never what.
pub struct Redacted<'a>(pub &'a [String]);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{} redacted]", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_refused_anywhere() {
        for v in [
            "replace-with-a-long-random-secret",
            "replace-with-a-long-random-api-key",
            "REPLACE_ME_0123456789abcdef",
            "changeme-please-0123456789",
            "<your secret here, 32 bytes>",
            "${TETHER_SECRET}",
            "your-secret-goes-here-0123",
        ] {
            assert_eq!(check_anywhere(v), Err(Weakness::Placeholder), "{v}");
            assert_eq!(check_exposed(v), Err(Weakness::Placeholder), "{v}");
        }
        check_anywhere("tether-dev-secret-not-for-production").unwrap();
        check_anywhere("").unwrap();
    }

    #[test]
    fn exposed_secrets_must_be_long_unknown_and_varied() {
        assert_eq!(check_exposed("  "), Err(Weakness::Empty));
        assert_eq!(check_exposed("k3v9-Qe81"), Err(Weakness::Short));
        assert_eq!(
            check_exposed(" Tether-Dev-Secret-Not-For-Production "),
            Err(Weakness::WellKnown)
        );
        assert_eq!(check_exposed("secret"), Err(Weakness::WellKnown));
        assert_eq!(
            check_exposed("aaaaaaaaaaaaaaaaaaaaaaaa"),
            Err(Weakness::Repetitive)
        );
        assert_eq!(
            check_exposed("12341234123412341234"),
            Err(Weakness::Repetitive)
        );
        check_exposed("k3v9-Qe81-zzP0-aa71-91bc").unwrap();
        check_exposed("9f2c4e1a7b3d8c0e5f6a1b2c3d4e5f60").unwrap();
    }

    #[test]
    fn errors_name_the_position_not_the_value() {
        let e = check_list(
            "auth.secrets",
            ["k3v9-Qe81-zzP0-aa71-91bc", "QZXJVWK"],
            check_exposed,
        )
        .unwrap_err();
        assert_eq!(e, "auth.secrets[1] is shorter than 16 bytes");
        let shown = format!("{:?}", Redacted(&["QZXJVWK".into()]));
        assert_eq!(shown, "[1 redacted]");
    }
}
