//! Filtering: EventBridge event patterns applied to the Lambda SQS record of each message.
//!
//! [`Pattern::compile`] parses and checks a pattern once (at configuration load); [`Filter`]
//! holds a pipeline's patterns and passes a message when ANY of them matches (Lambda's OR across
//! filters). Matching walks the record and the compiled pattern together, visiting each record
//! node at most once per pattern node, and allocates nothing.
//!
//! The record is the one the target receives, with `body` replaced by its parsed JSON when the
//! body is a JSON object or array ([`match_value`]); a plain-text body stays a string, so only a
//! plain-string pattern on `body` can match it, as in Lambda's table.

mod pattern;

use serde_json::Value;

pub use pattern::{Pattern, PatternError};

/// A pipeline's compiled patterns.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    patterns: Vec<Pattern>,
}

impl Filter {
    /// Compiles every pattern.
    ///
    /// # Errors
    /// The index of the first invalid pattern and what is wrong with it.
    pub fn compile<S: AsRef<str>>(patterns: &[S]) -> Result<Self, (usize, PatternError)> {
        let patterns = patterns
            .iter()
            .enumerate()
            .map(|(i, p)| Pattern::compile(p.as_ref()).map_err(|e| (i, e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Filter { patterns })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Whether a record (as built by [`match_value`]) passes: any pattern matches.
    pub fn matches(&self, record: &Value) -> bool {
        self.patterns.iter().any(|p| p.matches(record))
    }
}

/// The value patterns are matched against: a Lambda SQS record (a JSON object) with `body`
/// parsed when it holds a JSON object or array.
pub fn match_value(record_json: &str) -> Result<Value, serde_json::Error> {
    let mut record: Value = serde_json::from_str(record_json)?;
    parse_body(&mut record);
    Ok(record)
}

/// Replaces a string `body` that holds a JSON object or array with the parsed JSON.
pub fn parse_body(record: &mut Value) {
    if let Some(body) = record.get_mut("body") {
        if let Value::String(text) = body {
            let t = text.trim_start();
            if t.starts_with('{') || t.starts_with('[') {
                if let Ok(parsed) = serde_json::from_str::<Value>(text) {
                    *body = parsed;
                }
            }
        }
    }
}
