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
            match reference(&rest[2..close], env).and_then(|(name, value)| placed(name, &value, quote)) {
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

/// The variable's name and value of one `${NAME}` or `${NAME:-default}` (`inner` is what the
/// braces hold), or why there is none.
fn reference<'a>(inner: &'a str, env: &dyn Fn(&str) -> Option<String>) -> Result<(&'a str, String), String> {
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
        (Some(v), _) => Ok((name, v)),
        (None, Some(d)) => Ok((name, d.to_string())),
        (None, None) => {
            Err(format!("environment variable {name} is not set (write ${{{name}:-default}} to give a default)"))
        }
    }
}

/// `value` as TOML text for where it lands, so that the parsed string holds every one of its
/// bytes: escaped in a basic string (`"..."`, `"""..."""`); as it is in a literal string
/// (`'...'`, `'''...'''`), which has no escapes, and refused when that string cannot hold it;
/// outside quotes only a number, a boolean or a date (anything else would be pasted in as TOML).
/// The value never appears in the reason: it may be a secret.
fn placed(name: &str, value: &str, quote: Option<&str>) -> Result<String, String> {
    let control = |c: char| c.is_control() && c != '\t';
    match quote {
        Some("\"" | "\"\"\"") => Ok(escape_basic(value)),
        Some("'") if value.contains('\'') || value.chars().any(control) => Err(format!(
            "${{{name}}} holds a ' or a control character (a line break, ...), which a literal string '...' cannot hold; write it in a basic string \"${{{name}}}\", which keeps every character"
        )),
        Some("'''") if value.contains("'''") || value.chars().any(|c| control(c) && c != '\n' && c != '\r') => {
            Err(format!(
                "${{{name}}} holds ''' or a control character, which a multi-line literal string cannot hold; write it in a basic string \"${{{name}}}\", which keeps every character"
            ))
        }
        Some(_) => Ok(value.to_string()),
        None if !value.is_empty() && value.chars().all(|c| c.is_ascii_alphanumeric() || "+-_.:".contains(c)) => {
            Ok(value.to_string())
        }
        None => Err(format!(
            "${{{name}}} is outside quotes, where only a number, a boolean or a date may go; quote it (\"${{{name}}}\") for text"
        )),
    }
}

/// A basic string's escapes (TOML 1.0): backslash, double quote, and every control character.
fn escape_basic(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}
