//! How cloak shows an error, the same in every binary and service.
//!
//! The convention (README, "Errors"): an error's `Display` says only its own step
//! ("reading the policy file /etc/x.json"); what caused it is reached through
//! `source()`, never written into the text again. The printer here walks the chain
//! once and joins the steps with `": "`, so a user reads each clause once:
//!
//! ```text
//! opening oci:/nonexistent:tag: /nonexistent is not an OCI image layout: cannot read oci-layout: No such file or directory (os error 2)
//! ```
//!
//! Machine-readable outputs (`--json`, JSON logs, HTTP/ttRPC answers that carry a
//! list) take [`json`]: the same line plus the chain as a list.
//!
//! [`repeated_source`] and [`repeated_clause`] are the checks: tests of every crate
//! use them to find an error whose text repeats its cause.

use std::error::Error;
use std::fmt;

#[cfg(feature = "tls")]
pub mod tls;

/// The steps of an error, outermost first: each error's own `Display`.
///
/// An empty step (an error whose `Display` is empty) is left out.
pub fn chain(e: &(dyn Error + 'static)) -> Vec<String> {
    let mut out = Vec::new();
    let mut next: Option<&(dyn Error + 'static)> = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !text.is_empty() {
            out.push(text);
        }
        next = err.source();
    }
    out
}

/// An error shown on one line: its steps joined by `": "`.
///
/// `format!("{}", Line(&e))`, or in a tracing field: `error = %report::Line(&e)`.
pub struct Line<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut next: Option<&(dyn Error + 'static)> = Some(self.0);
        let mut first = true;
        while let Some(err) = next {
            let text = err.to_string();
            if !text.is_empty() {
                if !first {
                    f.write_str(": ")?;
                }
                f.write_str(&text)?;
                first = false;
            }
            next = err.source();
        }
        Ok(())
    }
}

/// [`Line`] as a `String`.
pub fn line(e: &(dyn Error + 'static)) -> String {
    Line(e).to_string()
}

/// The chain as JSON: `{"error": "<line>", "chain": ["<step>", ...]}`.
pub fn json(e: &(dyn Error + 'static)) -> serde_json::Value {
    serde_json::json!({ "error": line(e), "chain": chain(e) })
}

/// The chain as a JSON array in a string, for a log field next to `error`
/// (tracing's JSON formatter writes field values as strings).
pub struct ChainJson<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for ChainJson<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&serde_json::Value::from(chain(self.0)).to_string())
    }
}

/// The first error in the chain whose text contains its own cause's text: a
/// `Display` that breaks the convention. `None` when every step says only itself.
///
/// Returns `(outer, inner)`.
pub fn repeated_source(e: &(dyn Error + 'static)) -> Option<(String, String)> {
    let mut outer = e;
    while let Some(inner) = outer.source() {
        let (o, i) = (outer.to_string(), inner.to_string());
        if !i.is_empty() && o.contains(&i) {
            return Some((o, i));
        }
        outer = inner;
    }
    None
}

/// The shortest clause a user would notice reading twice. Shorter pieces ("layer 0",
/// "sha256") legitimately recur in one message.
const MIN_CLAUSE: usize = 12;

/// A clause that a printed message says twice, if any.
///
/// The message is cut at `": "` and `"; "`; a clause of at least a dozen
/// characters that appears twice is returned. This is what a test asserts about a
/// binary's stderr, whatever produced the text.
pub fn repeated_clause(message: &str) -> Option<String> {
    let clauses: Vec<&str> = message
        .split(": ")
        .flat_map(|c| c.split("; "))
        .map(|c| c.trim().trim_end_matches('.'))
        .filter(|c| c.len() >= MIN_CLAUSE)
        .collect();
    for (i, c) in clauses.iter().enumerate() {
        if clauses[i + 1..].contains(c) {
            return Some((*c).to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug)]
    struct Step(&'static str, Option<Box<Step>>);

    impl fmt::Display for Step {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Step {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|s| s as &(dyn Error + 'static))
        }
    }

    fn three() -> Step {
        Step(
            "opening oci:x",
            Some(Box::new(Step("not a layout", Some(Box::new(Step("no such file", None)))))),
        )
    }

    #[test]
    fn line_joins_each_step_once() {
        assert_eq!(line(&three()), "opening oci:x: not a layout: no such file");
        assert_eq!(chain(&three()), ["opening oci:x", "not a layout", "no such file"]);
        assert_eq!(
            json(&three()),
            serde_json::json!({"error": "opening oci:x: not a layout: no such file",
                "chain": ["opening oci:x", "not a layout", "no such file"]})
        );
        assert_eq!(ChainJson(&three()).to_string(), r#"["opening oci:x","not a layout","no such file"]"#);
    }

    #[test]
    fn empty_steps_leave_no_stray_separator() {
        let e = Step("", Some(Box::new(Step("inner", None))));
        assert_eq!(line(&e), "inner");
    }

    #[test]
    fn anyhow_context_is_a_step() {
        // The binaries' `main` holds anyhow errors; their chain includes every context.
        let e = std::io::Error::other("disk full");
        let outer = std::io::Error::other(Step("writing x", None));
        assert_eq!(line(&outer), "writing x");
        assert_eq!(line(&e), "disk full");
    }

    #[test]
    fn a_display_that_embeds_its_source_is_found() {
        let e = Step("reading key: bad pem", Some(Box::new(Step("bad pem", None))));
        assert_eq!(repeated_source(&e), Some(("reading key: bad pem".into(), "bad pem".into())));
        assert_eq!(repeated_source(&three()), None);
    }

    #[test]
    fn a_clause_said_twice_is_found_short_ones_are_not() {
        let twice = "layer 0: could not unwrap the layer key: no usable key: could not unwrap the layer key";
        assert_eq!(repeated_clause(twice).as_deref(), Some("could not unwrap the layer key"));
        assert_eq!(repeated_clause("layer 0: x: layer 0: y"), None);
        assert_eq!(repeated_clause(&line(&three())), None);
        assert_eq!(repeated_clause("bad input: b: bad input"), None, "under the minimum length");
        assert_eq!(
            repeated_clause("cannot read oci-layout (os error 2): x: cannot read oci-layout (os error 2)")
                .as_deref(),
            Some("cannot read oci-layout (os error 2)")
        );
    }
}
