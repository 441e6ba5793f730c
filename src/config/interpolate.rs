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
        // comments, string delimiters and escapes are copied as they are
        if let Some(len) = syntax_at(rest, &mut quote) {
            out.push_str(&rest[..len]);
            i += len;
            continue;
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
            match reference(&rest[2..close], env) {
                Ok(value) => out.push_str(&value),
                Err(reason) => problems.push(Problem { path: format!("line {line}"), reason }),
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

/// The TOML syntax at the start of `rest` that interpolation copies unchanged, and its length:
/// a comment (to the end of its line) outside strings, a string's opening or closing quote, an
/// escape inside a basic string (a `\"` does not close it). `quote` is the string we are in.
fn syntax_at(rest: &str, quote: &mut Option<&'static str>) -> Option<usize> {
    match *quote {
        None if rest.starts_with('#') => Some(rest.find('\n').unwrap_or(rest.len())),
        None => {
            let q = ["\"\"\"", "'''", "\"", "'"].into_iter().find(|q| rest.starts_with(q))?;
            *quote = Some(q);
            Some(q.len())
        }
        Some(q) if rest.starts_with('\\') && !q.starts_with('\'') && rest.len() > 1 => {
            Some(1 + rest[1..].chars().next().map_or(1, char::len_utf8))
        }
        Some(q) if rest.starts_with(q) => {
            *quote = None;
            Some(q.len())
        }
        Some(_) => None,
    }
}

/// The value of one `${NAME}` or `${NAME:-default}` (`inner` is what the braces hold), or why
/// there is none.
fn reference(inner: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let (name, default) = match inner.split_once(":-") {
        Some((n, d)) => (n, Some(d)),
        None => (inner, None),
    };
    let valid_name = !name.is_empty()
        && name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        && !name.starts_with(|ch: char| ch.is_ascii_digit());
    if !valid_name {
        return Err(format!("`${{{inner}}}` is not a valid variable reference (use ${{NAME}} or ${{NAME:-default}})"));
    }
    match (env(name), default) {
        (Some(v), _) => Ok(v),
        (None, Some(d)) => Ok(d.to_string()),
        (None, None) => {
            Err(format!("environment variable {name} is not set (write ${{{name}:-default}} to give a default)"))
        }
    }
}
