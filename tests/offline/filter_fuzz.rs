//! Property test: no pattern and no message makes the compiler or the matcher panic, and a
//! pattern that compiles behaves the same on equal inputs. Random patterns are built from the
//! operator grammar (valid and broken), random events from small JSON trees; both are seeded, so
//! a failure prints the seed that reproduces it (`FILTER_FUZZ_SEED=…`).

use serde_json::{json, Value};
use sqs_poller::filter::{match_value, Filter, Pattern};

struct Gen(fastrand::Rng);

impl Gen {
    fn key(&mut self) -> String {
        ["a", "b", "body", "n", "x", "$or", "ip", "", "é"][self.0.usize(0..9)].to_string()
    }

    fn string(&mut self) -> String {
        let pieces = ["a", "b", "*", "\\", "\\*", "10.0.0.1", "", "É", "😀", ".png", "{", "\""];
        (0..self.0.usize(0..4)).map(|_| pieces[self.0.usize(0..pieces.len())]).collect()
    }

    fn scalar(&mut self) -> Value {
        match self.0.u8(0..6) {
            0 => Value::Null,
            1 => json!(self.0.bool()),
            2 => json!(self.0.i64(-1000..1000)),
            3 => json!(self.0.f64() * 1e6 - 5e5),
            _ => json!(self.string()),
        }
    }

    fn event(&mut self, depth: u32) -> Value {
        if depth == 0 {
            return self.scalar();
        }
        match self.0.u8(0..4) {
            0 => self.scalar(),
            1 => Value::Array((0..self.0.usize(0..4)).map(|_| self.event(depth - 1)).collect()),
            _ => Value::Object((0..self.0.usize(0..4)).map(|_| (self.key(), self.event(depth - 1))).collect()),
        }
    }

    fn operator(&mut self) -> Value {
        let s = self.string();
        let n = self.0.i64(-10..10);
        match self.0.u8(0..16) {
            0 => json!({"prefix": s}),
            1 => json!({"suffix": {"equals-ignore-case": s}}),
            2 => json!({"equals-ignore-case": s}),
            3 => json!({"wildcard": s}),
            4 => json!({"anything-but": [s, n]}),
            5 => json!({"anything-but": {"wildcard": [s]}}),
            6 => json!({"anything-but": {"prefix": s}}),
            7 => json!({"numeric": [">", n, "<=", n + self.0.i64(-2..5)]}),
            8 => json!({"numeric": ["=", n]}),
            9 => json!({"exists": self.0.bool()}),
            10 => {
                json!({"cidr": format!("{}/{}", ["10.0.0.0", "::", "2001:db8::", "x"][self.0.usize(0..4)], self.0.u8(0..140))})
            }
            11 => json!({"numeric": [s]}),
            12 => json!({"bogus": s}),
            13 => json!({}),
            _ => self.scalar(),
        }
    }

    fn pattern(&mut self, depth: u32) -> Value {
        let mut map = serde_json::Map::new();
        for _ in 0..self.0.usize(0..4) {
            let key = self.key();
            let v = if key == "$or" {
                Value::Array((0..self.0.usize(0..4)).map(|_| self.pattern(depth.saturating_sub(1))).collect())
            } else if depth > 0 && self.0.bool() {
                self.pattern(depth - 1)
            } else if self.0.u8(0..10) == 0 {
                self.scalar()
            } else {
                Value::Array((0..self.0.usize(0..4)).map(|_| self.operator()).collect())
            };
            map.insert(key, v);
        }
        Value::Object(map)
    }
}

#[test]
fn no_pattern_and_no_event_makes_it_panic() {
    let seed = std::env::var("FILTER_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    let mut g = Gen(fastrand::Rng::with_seed(seed));
    let (mut compiled, mut matched) = (0, 0);
    for _ in 0..20_000 {
        let pattern = g.pattern(4).to_string();
        let outcome = std::panic::catch_unwind(|| Pattern::compile(&pattern));
        let Ok(result) = outcome else { panic!("compile panicked on {pattern} (FILTER_FUZZ_SEED={seed})") };
        let Ok(p) = result else { continue };
        compiled += 1;
        let filter = Filter::compile(&[&pattern]).unwrap();
        for _ in 0..5 {
            let event = g.event(4);
            let first = std::panic::catch_unwind(|| p.matches(&event))
                .unwrap_or_else(|_| panic!("match panicked: {pattern} on {event} (FILTER_FUZZ_SEED={seed})"));
            assert_eq!(first, p.matches(&event.clone()), "not deterministic: {pattern} on {event}");
            matched += usize::from(first);
            // the service's path (only the named parts built) answers as the whole record does
            if event.is_object() {
                let text = event.to_string();
                assert_eq!(
                    filter.matches_json(&text).unwrap(),
                    p.matches(&match_value(&text).unwrap()),
                    "matches_json differs: {pattern} on {text} (FILTER_FUZZ_SEED={seed})"
                );
            }
        }
    }
    println!("fuzz: {compiled} patterns compiled, {matched} matches (FILTER_FUZZ_SEED={seed})");
    // the generator must reach the interesting part: valid patterns, some of which match
    assert!(compiled > 1_000, "only {compiled} patterns compiled (FILTER_FUZZ_SEED={seed})");
    assert!(matched > 100, "only {matched} matches (FILTER_FUZZ_SEED={seed})");
}

#[test]
fn arbitrary_text_never_panics_the_compiler() {
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    let alphabet: Vec<char> = r#"{}[]":,\ 0123456789.-+eEtrufalsn*$orprefixwildcardnumeric<>="#.chars().collect();
    for _ in 0..20_000 {
        let text: String = (0..rng.usize(0..40)).map(|_| alphabet[rng.usize(0..alphabet.len())]).collect();
        let r = std::panic::catch_unwind(|| Pattern::compile(&text).is_ok());
        assert!(r.is_ok(), "compile panicked on {text:?} (seed {seed})");
    }
}

#[test]
fn deep_and_wide_inputs_are_handled() {
    // a pattern nested beyond the limit is an error, not a stack overflow
    let deep = (0..100).fold(r#"["x"]"#.to_string(), |acc, _| format!(r#"{{"a": {acc}}}"#));
    assert!(Pattern::compile(&deep).unwrap_err().to_string().contains("nested deeper than"));
    // a wide event with a long array and long strings
    let p = Filter::compile(&[r#"{"items": {"sku": [{"wildcard": "*a*b*c*d*e*z"}]}}"#]).unwrap();
    let items: Vec<Value> = (0..2_000).map(|i| json!({"sku": "ab".repeat(i % 50 + 1)})).collect();
    assert!(!p.matches(&json!({ "items": items })));
    // a wildcard against a long adversarial string (linear, no backtracking blow-up); eight
    // repeated `*a` are more than EventBridge takes (17 prefixes at once), four are not
    let refused = Pattern::compile(r#"{"s": [{"wildcard": "*a*a*a*a*a*a*a*a*b"}]}"#).unwrap_err();
    assert!(refused.to_string().contains("the rule is too complex"), "{refused}");
    let w = Pattern::compile(r#"{"s": [{"wildcard": "*a*a*a*a*b"}]}"#).unwrap();
    assert!(!w.matches(&json!({"s": "a".repeat(200_000)})));
    assert!(w.matches(&json!({"s": format!("{}b", "a".repeat(200_000))})));
}
