//! `${VAR}` and `${VAR:-default}` interpolation, before the TOML is parsed.

use super::Problem;

/// Replaces `${VAR}` and `${VAR:-default}` outside comments; `$${` stands for a literal `${`.
///
/// Comments are skipped so that a documented example such as `# queue_url = "${URL}"` does not
/// demand the variable. The scanner tracks TOML strings only far enough to know where a `#`
/// starts a comment.
pub(super) fn interpolate(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, Vec<Problem>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut line = 1;
    // The quote that opened the string we are in, if any ("\"", "'", "\"\"\"" or "'''").
    let mut quote: Option<&'static str> = None;
    while i < bytes.len() {
        let rest = &text[i..];
        let c = bytes[i];
        if c == b'\n' {
            line += 1;
            if matches!(quote, Some("\"") | Some("'")) {
                quote = None; // an unterminated one-line string: let the TOML parser say so
            }
        }
        match quote {
            None if c == b'#' => {
                let end = rest.find('\n').map_or(text.len(), |n| i + n);
                out.push_str(&text[i..end]);
                i = end;
                continue;
            }
            None => {
                for q in ["\"\"\"", "'''", "\"", "'"] {
                    if rest.starts_with(q) {
                        quote = Some(q);
                        out.push_str(q);
                        i += q.len();
                        break;
                    }
                }
                if quote.is_some() {
                    continue;
                }
            }
            Some(q) => {
                if c == b'\\' && !q.starts_with('\'') && i + 1 < bytes.len() {
                    // an escape in a basic string: copy both characters (a `\"` does not close it)
                    let next = rest[1..].chars().next().map_or(1, char::len_utf8);
                    out.push_str(&rest[..1 + next]);
                    i += 1 + next;
                    continue;
                }
                if rest.starts_with(q) {
                    quote = None;
                    out.push_str(q);
                    i += q.len();
                    continue;
                }
            }
        }
        if rest.starts_with("$${") {
            out.push_str("${");
            i += 3;
            continue;
        }
        if rest.starts_with("${") {
            let Some(close) = rest.find('}') else {
                problems
                    .push(Problem { path: format!("line {line}"), reason: "`${` without a closing `}`".to_string() });
                break;
            };
            let inner = &rest[2..close];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            let valid_name = !name.is_empty()
                && name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
                && !name.starts_with(|ch: char| ch.is_ascii_digit());
            if !valid_name {
                problems.push(Problem {
                    path: format!("line {line}"),
                    reason: format!(
                        "`${{{inner}}}` is not a valid variable reference (use ${{NAME}} or ${{NAME:-default}})"
                    ),
                });
            } else {
                match (env(name), default) {
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => problems.push(Problem {
                        path: format!("line {line}"),
                        reason: format!(
                            "environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
                        ),
                    }),
                }
            }
            i += close + 1;
            continue;
        }
        let ch_len = rest.chars().next().map_or(1, char::len_utf8);
        out.push_str(&rest[..ch_len]);
        i += ch_len;
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}
