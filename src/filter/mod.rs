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

mod complexity;
mod pattern;
mod project;

use serde_json::Value;

use project::project;

pub use pattern::{Pattern, PatternError};

/// A pipeline's compiled patterns.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    patterns: Vec<Pattern>,
    /// The parts of a record any pattern looks at: the only ones [`Filter::matches_json`] builds.
    projection: Projection,
}

impl Filter {
    /// `sqs-poller test-pattern`: a verdict per line of `input` (Lambda SQS records, one JSON
    /// object per line) to `out` — `match`, `no-match` or `error` —, why a line is an error to
    /// `errors`; the number of such lines. Blank lines are skipped; a closed `out` ends it.
    pub fn verdicts(
        &self,
        input: impl std::io::BufRead,
        out: &mut impl std::io::Write,
        errors: &mut impl std::io::Write,
    ) -> usize {
        let mut bad_lines = 0;
        for (n, line) in input.lines().enumerate() {
            let Ok(line) = line else { break };
            if line.trim().is_empty() {
                continue;
            }
            let verdict = match serde_json::from_str::<Value>(&line) {
                // the service's own path: only what the patterns name is built
                Ok(Value::Object(_)) if self.matches_json(&line).unwrap_or(false) => "match",
                Ok(Value::Object(_)) => "no-match",
                Ok(_) => {
                    let _ = writeln!(errors, "line {}: not a JSON object (expected a Lambda SQS record)", n + 1);
                    bad_lines += 1;
                    "error"
                }
                Err(e) => {
                    let _ = writeln!(errors, "line {}: not valid JSON: {e}", n + 1);
                    bad_lines += 1;
                    "error"
                }
            };
            if writeln!(out, "{verdict}").is_err() {
                break;
            }
        }
        bad_lines
    }

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
        let mut projection = Projection::default();
        for p in &patterns {
            p.project_into(&mut projection);
        }
        Ok(Filter { patterns, projection })
    }

    /// Whether a serialized record passes. Builds only the parts the patterns look at — the
    /// rest of the record, and of a JSON body, is checked and skipped, not built — with `body`
    /// parsed when it holds a JSON object or array, as [`match_value`] does: the same answer as
    /// `matches(&match_value(record_json)?)` (the pattern tests hold the two together).
    ///
    /// # Errors
    /// When `record_json` is not JSON.
    pub fn matches_json(&self, record_json: &str) -> Result<bool, serde_json::Error> {
        let mut record = project(record_json, &self.projection)?;
        parse_body_projected(&mut record, self.projection.fields.get("body").and_then(Option::as_ref));
        Ok(self.matches(&record))
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

/// Rewrites every key holding dots as the nested objects it names — `{"a.b": 1}` as
/// `{"a": {"b": 1}}` — as EventBridge flattens an event into dotted paths, where the two are one
/// field. Where both spell the same field, its values are kept together as an array's are
/// (`{"a": {"b": 1}, "a.b": 2}`: `a.b` holds 1 and 2); a dotted key under a key whose value is
/// not an object is dropped (`{"a": 1, "a.b": 2}` keeps `a`).
pub fn join_dotted(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.keys().any(|k| has_dot(k)) {
                let entries = std::mem::take(map);
                for (key, v) in entries {
                    insert_dotted(map, &key, v);
                }
            }
            map.values_mut().for_each(join_dotted);
        }
        Value::Array(items) => items.iter_mut().for_each(join_dotted),
        _ => {}
    }
}

/// Whether `key` holds a dot (a plain loop: field names are short).
fn has_dot(key: &str) -> bool {
    key.bytes().any(|b| b == b'.')
}

/// Puts `value` at the dotted path `key` of `map`, merging with what is there.
fn insert_dotted(map: &mut serde_json::Map<String, Value>, key: &str, value: Value) {
    match key.split_once('.') {
        None => merge_field(map, key, value),
        Some((first, rest)) => {
            let mut below = serde_json::Map::new();
            insert_dotted(&mut below, rest, value);
            merge_field(map, first, Value::Object(below));
        }
    }
}

/// `map[key]` with `value` joined in: objects merge field by field, other values collect into an
/// array (a field with two values); an object under a key holding a plain value is dropped.
fn merge_field(map: &mut serde_json::Map<String, Value>, key: &str, value: Value) {
    let Some(existing) = map.get_mut(key) else {
        map.insert(key.to_string(), value);
        return;
    };
    match (existing, value) {
        (Value::Object(have), Value::Object(add)) => {
            for (k, v) in add {
                merge_field(have, &k, v);
            }
        }
        (Value::Array(items), add) => items.push(add),
        (_, Value::Object(_)) => {}
        (have, add) => {
            let first = std::mem::take(have);
            *have = Value::Array(vec![first, add]);
        }
    }
}

/// The parts of an event patterns look at: at each object level, the fields named, each either
/// whole (`None`: a leaf matcher looks at it) or with the parts below it. Arrays are looked into
/// element by element with the same projection, as patterns match arrays.
#[derive(Debug, Clone, Default)]
pub struct Projection {
    fields: std::collections::BTreeMap<String, Option<Projection>>,
    /// The first bytes of the field names, as a set: a key starting with none of them cannot be
    /// a dotted path into a field (`a.b`), so most keys a message has and no pattern names are
    /// skipped without looking for a dot (which cost 4 % of the filter, `cargo bench --bench filter`).
    first_bytes: [u64; 4],
}

impl Projection {
    /// `name` is needed whole.
    fn whole(&mut self, name: &str) {
        self.note_first_byte(name);
        self.fields.insert(name.to_string(), None);
    }

    /// The projection below `name`; `None` when `name` is needed whole already (which keeps
    /// everything below it).
    fn below(&mut self, name: &str) -> Option<&mut Projection> {
        self.note_first_byte(name);
        self.fields.entry(name.to_string()).or_insert_with(|| Some(Projection::default())).as_mut()
    }

    fn note_first_byte(&mut self, name: &str) {
        if let Some(&b) = name.as_bytes().first() {
            self.first_bytes[usize::from(b >> 6)] |= 1 << (b & 63);
        }
    }

    /// Whether `key` may be a dotted path into one of the fields (`a.b` for a field `a`).
    fn may_be_dotted_path(&self, key: &str) -> bool {
        key.as_bytes().first().is_some_and(|&b| self.first_bytes[usize::from(b >> 6)] & (1 << (b & 63)) != 0)
            && has_dot(key)
    }
}

/// Replaces a string `body` that holds a JSON object or array with the parsed JSON, and joins
/// dotted keys ([`join_dotted`]) in the record and the body.
pub fn parse_body(record: &mut Value) {
    join_dotted(record);
    parse_body_projected(record, None);
}

/// [`parse_body`], building only what `projection` names of the body (all of it for `None`).
fn parse_body_projected(record: &mut Value, projection: Option<&Projection>) {
    if let Some(body) = record.get_mut("body") {
        if let Value::String(text) = body {
            let t = text.trim_start();
            if t.starts_with('{') || t.starts_with('[') {
                let parsed = match projection {
                    Some(p) => project(text, p),
                    None => serde_json::from_str::<Value>(text).map(|mut v| {
                        join_dotted(&mut v);
                        v
                    }),
                };
                if let Ok(parsed) = parsed {
                    *body = parsed;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `test-pattern`'s loop: a verdict per non-blank line, the reason for each error on the
    /// error stream, their count returned.
    #[test]
    fn verdicts_name_each_line() {
        let filter = Filter::compile(&[r#"{"body": {"kind": ["order"]}}"#]).unwrap();
        let input = concat!(
            r#"{"body": "{\"kind\": \"order\"}"}"#,
            "\n\n",
            r#"{"body": "{\"kind\": \"refund\"}"}"#,
            "\n[1]\nnot json\n"
        );
        let (mut out, mut errors) = (Vec::new(), Vec::new());
        assert_eq!(filter.verdicts(input.as_bytes(), &mut out, &mut errors), 2);
        assert_eq!(String::from_utf8(out).unwrap(), "match\nno-match\nerror\nerror\n");
        let errors = String::from_utf8(errors).unwrap();
        assert!(
            errors.starts_with("line 4: not a JSON object") && errors.contains("line 5: not valid JSON"),
            "{errors}"
        );
    }
}
