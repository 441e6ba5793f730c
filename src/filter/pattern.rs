//! One EventBridge event pattern: compiled from JSON, matched against a JSON value.
//!
//! Semantics (from the EventBridge "Event patterns" and "Content filtering" documentation):
//! - A pattern is an object. Every key must match (AND); a key's value is either a nested object
//!   or an array of matchers of which one must match (OR). `$or` lists alternative objects.
//! - A key in the pattern must be present in the event, except with `{"exists": false}`.
//! - When the event holds an array, the pattern matches if any element does (arrays nest).
//! - Exact values match by JSON type and value: `"5"` is not `5`; exact matching is
//!   case-sensitive. Numbers compare by numeric value (`5` matches `5.0`).
//! - Operators: `prefix`, `suffix` (each also with `equals-ignore-case`), `equals-ignore-case`,
//!   `wildcard` (`*`, escape `\*` and `\\`), `anything-but` (a value, a list of strings or of
//!   numbers, `prefix`, `suffix`, `wildcard`, `equals-ignore-case`, each of the four with a
//!   string or a list of them), `numeric` (`=`, `<`, `<=`, `>`, `>=`, a range of a lower and an
//!   upper bound), `exists`, `cidr` (IPv4 and IPv6).
//! - `anything-but` matches a present value that is not one it names: `null`, numbers and
//!   booleans are not strings, so they match every string form of it (`prefix`, `suffix`,
//!   `wildcard`, `equals-ignore-case`) as they match a list of strings. A missing field does not.
//! - Keys join with dots, as EventBridge flattens events and patterns: `{"a.b": [..]}` names the
//!   same field as `{"a": {"b": [..]}}`, in the pattern and in the event alike (the event's side
//!   is in `super::join_dotted`).
//! - Refused as EventBridge refuses them: an empty `prefix`/`suffix` inside `anything-but`, an
//!   `anything-but` list mixing strings and numbers, a field whose wildcards are too complex
//!   ([`super::complexity`]).
//! - `exists` applies to leaves: `{"exists": true}` matches a present non-object value (`null`
//!   included, an empty array not), `{"exists": false}` a missing key.

use std::fmt;
use std::net::IpAddr;

use serde_json::{Map, Value};

use super::complexity::{self, Token};

/// Deepest nesting of objects a pattern may have.
const MAX_DEPTH: usize = 64;

/// An invalid pattern: where in it, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    /// Dotted path of the key in the pattern, or `(pattern)` for the whole.
    pub path: String,
    pub reason: String,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

impl std::error::Error for PatternError {}

/// A compiled pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    root: Node,
}

/// An object level of the pattern: all fields, and one alternative of each `$or`.
#[derive(Debug, Clone)]
struct Node {
    fields: Vec<(String, Field)>,
    ors: Vec<Vec<Node>>,
}

#[derive(Debug, Clone)]
enum Field {
    Nested(Node),
    Leaf(Vec<Matcher>),
}

#[derive(Debug, Clone)]
enum Matcher {
    String(String),
    Number(f64),
    Bool(bool),
    Null,
    Prefix(String),
    /// Lowercased prefix.
    PrefixIgnoreCase(String),
    Suffix(String),
    SuffixIgnoreCase(String),
    EqualsIgnoreCase(String),
    Wildcard(Wildcard),
    AnythingBut(AnythingBut),
    Numeric(Range),
    Exists(bool),
    Cidr(Cidr),
}

#[derive(Debug, Clone)]
enum AnythingBut {
    /// None of these exact values.
    Values(Vec<Matcher>),
    /// A string starting with none of these; any value that is not a string.
    Prefixes(Vec<String>),
    Suffixes(Vec<String>),
    Wildcards(Vec<Wildcard>),
    /// Lowercased.
    EqualsIgnoreCase(Vec<String>),
}

#[derive(Debug, Clone, Copy)]
struct Range {
    lower: Option<(f64, bool)>, // (bound, inclusive)
    upper: Option<(f64, bool)>,
}

/// A wildcard split at its `*`s: the first piece is a prefix, the last a suffix, the middle
/// ones appear in order. Leftmost matching of each middle piece is enough (no backtracking), so
/// matching is linear in the value's length for each piece.
#[derive(Debug, Clone)]
struct Wildcard {
    pieces: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

fn err(path: &str, reason: impl Into<String>) -> PatternError {
    PatternError {
        path: if path.is_empty() { "(pattern)".to_string() } else { path.to_string() },
        reason: reason.into(),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl Pattern {
    /// Parses and checks a pattern.
    ///
    /// # Errors
    /// [`PatternError`] naming the key and the problem.
    pub fn compile(text: &str) -> Result<Self, PatternError> {
        let value: Value = serde_json::from_str(text).map_err(|e| err("", format!("not valid JSON: {e}")))?;
        let Value::Object(map) = &value else {
            return Err(err("", "a pattern must be a JSON object such as {\"body\": {\"type\": [\"order\"]}}"));
        };
        if map.is_empty() {
            return Err(err("", "a pattern must name at least one field"));
        }
        let root = compile_node(map, "", 0)?;
        check_wildcard_complexity(&root)?;
        Ok(Pattern { root })
    }

    /// Whether `event` matches.
    pub fn matches(&self, event: &Value) -> bool {
        match_node(&self.root, event)
    }

    /// Adds the parts of an event this pattern looks at to `into`: the match depends on
    /// nothing else.
    pub fn project_into(&self, into: &mut super::Projection) {
        project_node(&self.root, into);
    }
}

fn project_node(node: &Node, into: &mut super::Projection) {
    for (name, field) in &node.fields {
        match field {
            Field::Leaf(_) => into.whole(name),
            Field::Nested(child) => {
                if let Some(below) = into.below(name) {
                    project_node(child, below);
                }
            }
        }
    }
    // `$or` alternatives are matched against the same object
    for alternative in node.ors.iter().flatten() {
        project_node(alternative, into);
    }
}

fn compile_node(map: &Map<String, Value>, path: &str, depth: usize) -> Result<Node, PatternError> {
    if depth > MAX_DEPTH {
        return Err(err(path, format!("nested deeper than {MAX_DEPTH} levels")));
    }
    let mut node = Node { fields: Vec::new(), ors: Vec::new() };
    for (key, value) in map {
        let here = join(path, key);
        if key == "$or" {
            let Value::Array(alternatives) = value else {
                return Err(err(&here, "$or takes an array of at least two patterns"));
            };
            if alternatives.len() < 2 {
                return Err(err(&here, "$or takes an array of at least two patterns"));
            }
            let mut compiled = Vec::new();
            for (i, alt) in alternatives.iter().enumerate() {
                let at = format!("{here}[{i}]");
                match alt {
                    Value::Object(m) if !m.is_empty() => compiled.push(compile_node(m, &at, depth + 1)?),
                    _ => return Err(err(&at, "each $or alternative must be a non-empty object")),
                }
            }
            node.ors.push(compiled);
            continue;
        }
        let field = match value {
            Value::Object(m) if m.is_empty() => {
                return Err(err(&here, "an empty object matches nothing; name a field or use an array of values"))
            }
            Value::Object(m) => Field::Nested(compile_node(m, &here, depth + 1)?),
            Value::Array(items) if items.is_empty() => {
                return Err(err(&here, "an empty array matches nothing; list at least one value"))
            }
            Value::Array(items) => {
                let mut matchers = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    matchers.push(compile_matcher(item, &format!("{here}[{i}]"))?);
                }
                Field::Leaf(matchers)
            }
            other => {
                return Err(err(&here, format!("values must be in an array: write [{other}] instead of {other}")));
            }
        };
        node.fields.push(dotted_field(key, field));
    }
    Ok(node)
}

/// `("a.b.c", f)` as `("a", {"b": {"c": f}})`: EventBridge joins keys with dots, so the two
/// name one field.
fn dotted_field(key: &str, field: Field) -> (String, Field) {
    let mut segments = key.rsplit('.');
    let mut name = segments.next().expect("split yields one piece").to_string();
    let mut field = field;
    for parent in segments {
        field = Field::Nested(Node { fields: vec![(name, field)], ors: Vec::new() });
        name = parent.to_string();
    }
    (name, field)
}

/// Refuses a pattern any of whose fields has wildcards EventBridge would find too complex
/// (fields joined by name across `$or` alternatives, as one field of the event).
fn check_wildcard_complexity(root: &Node) -> Result<(), PatternError> {
    use std::collections::BTreeMap;
    fn collect(node: &Node, path: &str, into: &mut BTreeMap<String, Vec<Vec<Token>>>) {
        for (name, field) in &node.fields {
            let here = join(path, name);
            match field {
                Field::Nested(child) => collect(child, &here, into),
                Field::Leaf(matchers) => {
                    for m in matchers {
                        let wildcards: &[Wildcard] = match m {
                            Matcher::Wildcard(w) => std::slice::from_ref(w),
                            Matcher::AnythingBut(AnythingBut::Wildcards(ws)) => ws,
                            _ => &[],
                        };
                        let list = into.entry(here.clone()).or_default();
                        for w in wildcards {
                            let tokens = w.tokens();
                            if !list.contains(&tokens) {
                                list.push(tokens);
                            }
                        }
                    }
                }
            }
        }
        for alternative in node.ors.iter().flatten() {
            collect(alternative, path, into);
        }
    }
    let mut fields = BTreeMap::new();
    collect(root, "", &mut fields);
    for (path, wildcards) in fields {
        if !wildcards.is_empty() && complexity::measure(&wildcards).is_none() {
            return Err(err(
                &path,
                format!(
                    "the rule is too complex: EventBridge refuses it (more than {} wildcard prefixes can match one value) - use fewer wildcard characters or fewer repeating character sequences after a wildcard character",
                    complexity::MAX_COMPLEXITY
                ),
            ));
        }
    }
    Ok(())
}

fn literal(v: &Value, path: &str) -> Result<Matcher, PatternError> {
    Ok(match v {
        Value::String(s) => Matcher::String(s.clone()),
        Value::Number(n) => Matcher::Number(number(n, path)?),
        Value::Bool(b) => Matcher::Bool(*b),
        Value::Null => Matcher::Null,
        _ => return Err(err(path, "expected a string, number, boolean or null")),
    })
}

fn number(n: &serde_json::Number, path: &str) -> Result<f64, PatternError> {
    n.as_f64().filter(|f| f.is_finite()).ok_or_else(|| err(path, format!("{n} is not a usable number")))
}

fn string<'a>(v: &'a Value, path: &str, op: &str) -> Result<&'a str, PatternError> {
    v.as_str().ok_or_else(|| err(path, format!("{op} takes a string, got {v}")))
}

fn compile_matcher(item: &Value, path: &str) -> Result<Matcher, PatternError> {
    let Value::Object(op) = item else {
        return literal(item, path);
    };
    if op.len() != 1 {
        let keys: Vec<&str> = op.keys().map(String::as_str).collect();
        return Err(err(path, format!("a matcher object holds exactly one operator, got {keys:?}")));
    }
    let (name, arg) = op.iter().next().expect("one entry");
    match name.as_str() {
        "prefix" | "suffix" => {
            let (text, ignore_case) = match arg {
                Value::String(s) => (s.as_str(), false),
                Value::Object(o) if o.len() == 1 && o.contains_key("equals-ignore-case") => {
                    (string(&o["equals-ignore-case"], path, &format!("{name} equals-ignore-case"))?, true)
                }
                _ => return Err(err(path, format!("{name} takes a string or {{\"equals-ignore-case\": string}}, got {arg}"))),
            };
            Ok(match (name.as_str(), ignore_case) {
                ("prefix", false) => Matcher::Prefix(text.to_string()),
                ("prefix", true) => Matcher::PrefixIgnoreCase(lower(text)),
                ("suffix", false) => Matcher::Suffix(text.to_string()),
                _ => Matcher::SuffixIgnoreCase(lower(text)),
            })
        }
        "equals-ignore-case" => Ok(Matcher::EqualsIgnoreCase(lower(string(arg, path, name)?))),
        "wildcard" => Ok(Matcher::Wildcard(Wildcard::compile(string(arg, path, name)?, path)?)),
        "anything-but" => compile_anything_but(arg, path).map(Matcher::AnythingBut),
        "numeric" => compile_numeric(arg, path).map(Matcher::Numeric),
        "exists" => match arg {
            Value::Bool(b) => Ok(Matcher::Exists(*b)),
            _ => Err(err(path, format!("exists takes true or false, got {arg}"))),
        },
        "cidr" => Cidr::compile(string(arg, path, name)?, path).map(Matcher::Cidr),
        other => Err(err(
            path,
            format!(
                "unknown operator `{other}` (expected prefix, suffix, equals-ignore-case, wildcard, anything-but, numeric, exists or cidr)"
            ),
        )),
    }
}

fn compile_anything_but(arg: &Value, path: &str) -> Result<AnythingBut, PatternError> {
    match arg {
        Value::Array(items) if items.is_empty() => Err(err(path, "anything-but takes a non-empty list")),
        Value::Array(items) => anything_but_values(items, arg, path),
        Value::String(_) | Value::Number(_) => Ok(AnythingBut::Values(vec![literal(arg, path)?])),
        Value::Object(o) if o.len() == 1 => {
            let (name, v) = o.iter().next().expect("one entry");
            anything_but_operator(name, v, path)
        }
        _ => Err(err(
            path,
            format!(
                "anything-but takes a value, a list, or one of prefix/suffix/wildcard/equals-ignore-case, got {arg}"
            ),
        )),
    }
}

/// `{"anything-but": [v, ...]}`: strings or numbers, not both.
fn anything_but_values(items: &[Value], arg: &Value, path: &str) -> Result<AnythingBut, PatternError> {
    let values = items
        .iter()
        .map(|v| match v {
            Value::String(_) | Value::Number(_) => literal(v, path),
            _ => Err(err(path, format!("anything-but lists strings or numbers, got {v}"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let strings = values.iter().filter(|m| matches!(m, Matcher::String(_))).count();
    if strings != 0 && strings != values.len() {
        return Err(err(
            path,
            format!("anything-but lists strings or numbers, not both (EventBridge refuses the mix), got {arg}"),
        ));
    }
    Ok(AnythingBut::Values(values))
}

/// `{"anything-but": {"prefix" | "suffix" | "wildcard" | "equals-ignore-case": ...}}`.
fn anything_but_operator(name: &str, v: &Value, path: &str) -> Result<AnythingBut, PatternError> {
    let strings = |v: &Value| -> Result<Vec<String>, PatternError> {
        match v {
            Value::String(s) => Ok(vec![s.clone()]),
            Value::Array(a) if !a.is_empty() => {
                a.iter().map(|x| string(x, path, &format!("anything-but {name}")).map(str::to_string)).collect()
            }
            _ => Err(err(path, format!("anything-but {name} takes a string or a non-empty list of strings, got {v}"))),
        }
    };
    // EventBridge refuses an empty prefix or suffix here: it would exclude every string
    let not_empty = |list: Vec<String>| -> Result<Vec<String>, PatternError> {
        if list.iter().any(String::is_empty) {
            return Err(err(
                path,
                format!("anything-but {name} must not be empty (it would exclude every string), got {v}"),
            ));
        }
        Ok(list)
    };
    match name {
        "prefix" => Ok(AnythingBut::Prefixes(not_empty(strings(v)?)?)),
        "suffix" => Ok(AnythingBut::Suffixes(not_empty(strings(v)?)?)),
        "wildcard" => {
            strings(v)?.iter().map(|w| Wildcard::compile(w, path)).collect::<Result<_, _>>().map(AnythingBut::Wildcards)
        }
        "equals-ignore-case" => Ok(AnythingBut::EqualsIgnoreCase(strings(v)?.iter().map(|s| lower(s)).collect())),
        other => Err(err(
            path,
            format!("anything-but does not take `{other}` (expected prefix, suffix, wildcard or equals-ignore-case)"),
        )),
    }
}

fn compile_numeric(arg: &Value, path: &str) -> Result<Range, PatternError> {
    let Value::Array(items) = arg else {
        return Err(err(path, "numeric takes a list such as [\">\", 0, \"<=\", 5]"));
    };
    let pair = |i: usize| -> Result<(&str, f64), PatternError> {
        let op = items[i]
            .as_str()
            .ok_or_else(|| err(path, format!("numeric: expected an operator at position {i}, got {}", items[i])))?;
        let n = items
            .get(i + 1)
            .and_then(Value::as_number)
            .ok_or_else(|| err(path, format!("numeric: `{op}` needs a number after it")))?;
        Ok((op, number(n, path)?))
    };
    let bound = |op: &str, n: f64| -> Result<Range, PatternError> {
        Ok(match op {
            "=" => Range { lower: Some((n, true)), upper: Some((n, true)) },
            ">" => Range { lower: Some((n, false)), upper: None },
            ">=" => Range { lower: Some((n, true)), upper: None },
            "<" => Range { lower: None, upper: Some((n, false)) },
            "<=" => Range { lower: None, upper: Some((n, true)) },
            other => return Err(err(path, format!("numeric: unknown operator `{other}` (expected =, <, <=, >, >=)"))),
        })
    };
    match items.len() {
        2 => {
            let (op, n) = pair(0)?;
            bound(op, n)
        }
        4 => {
            let (op1, a) = pair(0)?;
            let (op2, b) = pair(2)?;
            let lo = bound(op1, a)?;
            let hi = bound(op2, b)?;
            if !matches!(op1, ">" | ">=") || !matches!(op2, "<" | "<=") {
                return Err(err(
                    path,
                    "numeric: a range is a lower bound (> or >=) followed by an upper bound (< or <=)",
                ));
            }
            if a >= b {
                return Err(err(path, format!("numeric: the range is empty ({a} is not below {b})")));
            }
            Ok(Range { lower: lo.lower, upper: hi.upper })
        }
        _ => Err(err(path, "numeric takes one comparison [op, n] or a range [op, n, op, n]")),
    }
}

fn lower(s: &str) -> String {
    s.chars().flat_map(char::to_lowercase).collect()
}

/// Lowercased characters of `s`, as the pattern side was lowercased.
fn lower_chars(s: &str) -> impl Iterator<Item = char> + '_ {
    s.chars().flat_map(char::to_lowercase)
}

fn starts_with_ignore_case(s: &str, lowered_prefix: &str) -> bool {
    let mut it = lower_chars(s);
    lowered_prefix.chars().all(|p| it.next() == Some(p))
}

fn ends_with_ignore_case(s: &str, lowered_suffix: &str) -> bool {
    // the reverse of `lower(s)`: characters from the end, each one's lowercase reversed
    let mut it = s.chars().rev().flat_map(|c| c.to_lowercase().rev());
    lowered_suffix.chars().rev().all(|w| it.next() == Some(w))
}

fn equals_ignore_case(s: &str, lowered: &str) -> bool {
    lower_chars(s).eq(lowered.chars())
}

impl Wildcard {
    fn compile(text: &str, path: &str) -> Result<Self, PatternError> {
        let mut pieces = vec![String::new()];
        let mut chars = text.chars().peekable();
        let mut last_star = false;
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(e @ ('*' | '\\')) => {
                        pieces.last_mut().expect("never empty").push(e);
                        last_star = false;
                    }
                    _ => return Err(err(path, format!("wildcard `{text}`: only \\* and \\\\ are escapes"))),
                },
                '*' => {
                    if last_star {
                        return Err(err(path, format!("wildcard `{text}`: consecutive * are not allowed")));
                    }
                    pieces.push(String::new());
                    last_star = true;
                }
                other => {
                    pieces.last_mut().expect("never empty").push(other);
                    last_star = false;
                }
            }
        }
        Ok(Wildcard { pieces })
    }

    /// The pattern as characters and stars, for [`complexity::measure`].
    fn tokens(&self) -> Vec<Token> {
        let mut tokens = Vec::new();
        for (i, piece) in self.pieces.iter().enumerate() {
            if i > 0 {
                tokens.push(Token::Star);
            }
            tokens.extend(piece.chars().map(Token::Char));
        }
        tokens
    }

    fn matches(&self, s: &str) -> bool {
        let n = self.pieces.len();
        if n == 1 {
            return s == self.pieces[0];
        }
        let (first, last) = (&self.pieces[0], &self.pieces[n - 1]);
        if s.len() < first.len() + last.len() || !s.starts_with(first.as_str()) || !s.ends_with(last.as_str()) {
            return false;
        }
        let mut rest = &s[first.len()..s.len() - last.len()];
        for piece in &self.pieces[1..n - 1] {
            match rest.find(piece.as_str()) {
                Some(at) => rest = &rest[at + piece.len()..],
                None => return false,
            }
        }
        true
    }
}

impl Cidr {
    fn compile(text: &str, path: &str) -> Result<Self, PatternError> {
        let bad =
            || err(path, format!("cidr `{text}` is not an IPv4 or IPv6 network such as 10.0.0.0/24 or 2001:db8::/32"));
        let (addr, len) = text.split_once('/').ok_or_else(bad)?;
        let network: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix_len: u8 = len.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(bad());
        }
        Ok(Cidr { network, prefix_len })
    }

    fn contains(&self, text: &str) -> bool {
        let Ok(ip) = text.parse::<IpAddr>() else { return false };
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                prefix_eq(u128::from(u32::from(n)), u128::from(u32::from(a)), 32, self.prefix_len)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(u128::from(n), u128::from(a), 128, self.prefix_len),
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, bits: u32, len: u8) -> bool {
    let shift = bits - u32::from(len);
    if shift >= 128 {
        return true;
    }
    (a >> shift) == (b >> shift)
}

// ---------------------------------------------------------------------------------------------
// Matching

static EMPTY: std::sync::LazyLock<Value> = std::sync::LazyLock::new(|| Value::Object(Map::new()));

fn match_node(node: &Node, event: &Value) -> bool {
    match event {
        Value::Object(map) => {
            node.fields.iter().all(|(key, field)| match_field(field, map.get(key)))
                && node.ors.iter().all(|alts| alts.iter().any(|alt| match_node(alt, event)))
        }
        Value::Array(items) => items.iter().any(|item| match_node(node, item)),
        _ => false,
    }
}

fn match_field(field: &Field, value: Option<&Value>) -> bool {
    match field {
        // a missing parent behaves as an empty object: only `exists: false` below it matches
        Field::Nested(node) => match_node(node, value.unwrap_or(&EMPTY)),
        Field::Leaf(matchers) => matchers.iter().any(|m| match_leaf(m, value)),
    }
}

fn match_leaf(m: &Matcher, value: Option<&Value>) -> bool {
    match (m, value) {
        (Matcher::Exists(want), v) => *want == exists(v),
        (_, None) => false,
        (_, Some(Value::Array(items))) => items.iter().any(|item| match_leaf(m, Some(item))),
        (_, Some(Value::Object(_))) => false,
        (m, Some(v)) => match_scalar(m, v),
    }
}

fn exists(v: Option<&Value>) -> bool {
    match v {
        None => false,
        Some(Value::Object(_)) => false,
        Some(Value::Array(items)) => items.iter().any(|i| exists(Some(i))),
        Some(_) => true,
    }
}

fn match_scalar(m: &Matcher, v: &Value) -> bool {
    match m {
        Matcher::String(s) => v.as_str() == Some(s),
        Matcher::Number(n) => v.as_f64() == Some(*n) && v.is_number(),
        Matcher::Bool(b) => v.as_bool() == Some(*b),
        Matcher::Null => v.is_null(),
        Matcher::Prefix(p) => v.as_str().is_some_and(|s| s.starts_with(p.as_str())),
        Matcher::PrefixIgnoreCase(p) => v.as_str().is_some_and(|s| starts_with_ignore_case(s, p)),
        Matcher::Suffix(p) => v.as_str().is_some_and(|s| s.ends_with(p.as_str())),
        Matcher::SuffixIgnoreCase(p) => v.as_str().is_some_and(|s| ends_with_ignore_case(s, p)),
        Matcher::EqualsIgnoreCase(p) => v.as_str().is_some_and(|s| equals_ignore_case(s, p)),
        Matcher::Wildcard(w) => v.as_str().is_some_and(|s| w.matches(s)),
        Matcher::AnythingBut(a) => anything_but(a, v),
        Matcher::Numeric(r) => v.as_f64().filter(|_| v.is_number()).is_some_and(|n| r.contains(n)),
        Matcher::Exists(_) => unreachable!("handled in match_leaf"),
        Matcher::Cidr(c) => v.as_str().is_some_and(|s| c.contains(s)),
    }
}

/// Whether `v` (a present scalar) is none of what `a` names. A value that is not a string
/// (null, a number, a boolean) is none of the strings a string form names.
fn anything_but(a: &AnythingBut, v: &Value) -> bool {
    if let AnythingBut::Values(values) = a {
        return !values.iter().any(|m| match_scalar(m, v));
    }
    let Some(s) = v.as_str() else { return true };
    match a {
        AnythingBut::Values(_) => unreachable!("handled above"),
        AnythingBut::Prefixes(list) => !list.iter().any(|p| s.starts_with(p.as_str())),
        AnythingBut::Suffixes(list) => !list.iter().any(|p| s.ends_with(p.as_str())),
        AnythingBut::Wildcards(ws) => !ws.iter().any(|w| w.matches(s)),
        AnythingBut::EqualsIgnoreCase(list) => !list.iter().any(|p| equals_ignore_case(s, p)),
    }
}

impl Range {
    fn contains(&self, n: f64) -> bool {
        let lo = self.lower.is_none_or(|(b, inclusive)| if inclusive { n >= b } else { n > b });
        let hi = self.upper.is_none_or(|(b, inclusive)| if inclusive { n <= b } else { n < b });
        lo && hi
    }
}
