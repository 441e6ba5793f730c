//! The wildcard complexity EventBridge refuses a pattern over ("Rule is too complex").
//!
//! EventBridge matches with aws/event-ruler, whose `MachineComplexityEvaluator` measures, for one
//! field, the most wildcard-pattern prefixes a single value can match at once, summed over the
//! field's distinct wildcard patterns: `a*b` read as far as `ab` is matched by its prefixes `a*`
//! and `a*b` (2); `*a*a*a*a*a*a*a*a*` read as far as `aaaaaaaa` by all 17. Each of them is a
//! state the matcher carries along the value, so the number bounds the work per character.
//!
//! This module computes the same measure on its own automaton: the states of a pattern are its
//! token prefixes, a value's characters move them (a `*` state keeps every character), and the
//! measure is the largest set of live states, over every value, explored by the sets' transitions
//! on each character the patterns name and on one character they do not. The cases of
//! event-ruler's `MachineComplexityEvaluatorTest` hold it to the library (`tests` below).
//!
//! EventBridge does not publish its limit. It refuses `*:*:*:*:*:event-bus/*` (10 here) and
//! accepts the wildcard patterns of LocalStack's AWS-validated templates (7 at most), so its
//! limit is between 7 and 9 by this measure; the one kept is the most permissive of those, so
//! nothing EventBridge is known to accept is refused: more than [`MAX_COMPLEXITY`] is.

use std::collections::{BTreeSet, HashSet};

/// The largest complexity a field's wildcards may have.
pub const MAX_COMPLEXITY: usize = 9;

/// Sets of live states explored before the answer is "too complex" regardless: bounds the
/// check's own cost on a hostile pattern.
const MAX_EXPLORED: usize = 20_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    Char(char),
    Star,
}

/// One live state: which pattern, and how many of its tokens are matched.
type State = (u32, u32);

/// The complexity of one field's distinct wildcard patterns, each a token sequence; `None` when
/// it is over [`MAX_COMPLEXITY`] (or exploring it would cost more than the check may).
pub fn measure(patterns: &[Vec<Token>]) -> Option<usize> {
    let mut alphabet: Vec<Option<char>> = patterns
        .iter()
        .flatten()
        .filter_map(|t| match t {
            Token::Char(c) => Some(Some(*c)),
            Token::Star => None,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    alphabet.push(None); // a character no pattern names
    let start = closure(patterns, (0..patterns.len() as u32).map(|p| (p, 0)).collect());
    let mut most = live(&start);
    let mut seen: HashSet<Vec<State>> = HashSet::from([start.clone()]);
    let mut pending = vec![start];
    while let Some(states) = pending.pop() {
        for c in &alphabet {
            let next = step(patterns, &states, *c);
            if next.is_empty() || seen.contains(&next) {
                continue;
            }
            most = most.max(live(&next));
            if most > MAX_COMPLEXITY || seen.len() >= MAX_EXPLORED {
                return None;
            }
            seen.insert(next.clone());
            pending.push(next);
        }
    }
    Some(most)
}

/// Prefixes matched: every live state but a pattern's empty start.
fn live(states: &[State]) -> usize {
    states.iter().filter(|(_, k)| *k > 0).count()
}

/// The states after reading `c` (`None`: a character no pattern names).
fn step(patterns: &[Vec<Token>], states: &[State], c: Option<char>) -> Vec<State> {
    let mut next = Vec::new();
    for &(p, k) in states {
        let tokens = &patterns[p as usize];
        let k = k as usize;
        if k > 0 && tokens[k - 1] == Token::Star {
            next.push((p, k as u32)); // the star takes the character
        }
        if let (Some(Token::Char(want)), Some(c)) = (tokens.get(k), c) {
            if *want == c {
                next.push((p, k as u32 + 1));
            }
        }
    }
    closure(patterns, next)
}

/// `states` with every state a `*` can reach without a character, sorted and deduplicated.
fn closure(patterns: &[Vec<Token>], mut states: Vec<State>) -> Vec<State> {
    let mut i = 0;
    while i < states.len() {
        let (p, k) = states[i];
        if patterns[p as usize].get(k as usize) == Some(&Token::Star) {
            states.push((p, k + 1));
        }
        i += 1;
    }
    states.sort_unstable();
    states.dedup();
    states
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(pattern: &str) -> Vec<Token> {
        pattern.chars().map(|c| if c == '*' { Token::Star } else { Token::Char(c) }).collect()
    }

    fn complexity(patterns: &[&str]) -> Option<usize> {
        let mut distinct: Vec<Vec<Token>> = patterns.iter().map(|p| tokens(p)).collect();
        distinct.dedup();
        measure(&distinct)
    }

    /// aws/event-ruler, `src/test/.../MachineComplexityEvaluatorTest.java`: the expected counts
    /// of its single- and multi-pattern cases (exact-match patterns there add nothing, so they
    /// are left out here).
    #[test]
    fn event_rulers_own_cases() {
        let cases: &[(&[&str], usize)] = &[
            (&["*"], 1),
            (&["*", "ab*c"], 3),
            (&["abc"], 1),
            (&["*ab"], 2),
            (&["*aa"], 3),
            (&["a*b"], 2),
            (&["aa*"], 2),
            (&["a*bc"], 2),
            (&["a*bb"], 3),
            (&["a*bcb"], 3),
            (&["a*bbb"], 4),
            (&["*ab*ad"], 4),
            (&["*ab*d"], 3),
            (&["*aba*"], 4),
            (&["a*b*bb"], 5),
            (&["a*b*cb"], 4),
            (&["a*b*cd"], 3),
            (&["a*b*b"], 4),
            (&["a*bb*"], 4),
            (&["ab*b*"], 3),
            (&["ab*c", "x*xx"], 3),
            (&["*abc", "*abcde"], 4),
            (&["a*bcd", "ab*cd"], 4),
            (&["a*bc", "a*bcde"], 4),
            (&["a*aaa", "aa*aa"], 7),
            (&["a*bc", "abc*d"], 4),
            (&["a*aaa", "aaa*a"], 6),
            (&["a*aax", "aaa*x"], 5),
            (&["a*bc", "abc*"], 4),
            (&["a*aa", "aaa*"], 5),
            (&["abc*", "abcde*"], 3),
            (&["ab*cd", "ab*wx", "ab*yz"], 6),
            (&["*ab*b*b*"], 7),
            (&["ab*c", "ab*c"], 2),
            (&["*abc"], 2),
            (&["ab*c"], 2),
        ];
        for (patterns, want) in cases {
            // the library caps at 100; past our limit we only say "too complex"
            let got = complexity(patterns);
            let expected = (*want <= MAX_COMPLEXITY).then_some(*want);
            assert_eq!(got, expected, "{patterns:?}");
        }
        // 17 and 10 in the library: over the limit here
        assert_eq!(complexity(&["*a*a*a*a*a*a*a*a*"]), None);
        assert_eq!(complexity(&["F*eatureFeature", "Fe*atureFeature", "Fea*tureFeature"]), None);
    }

    /// EventBridge refuses this one (LocalStack's `content_wildcard_complex_EXC`, validated
    /// against AWS) and accepts the others (its `content_wildcard_*` templates).
    #[test]
    fn eventbridges_verdicts() {
        assert_eq!(complexity(&["*:*:*:*:*:event-bus/*"]), None);
        assert_eq!(complexity(&["/Users/*/dir/dir/dir/dir/dir/doc.txt"]), Some(7));
        assert!(complexity(&["/Users/*/doc.txt"]).is_some());
        assert!(complexity(&["arn:aws:events:us-east-1:*:event-bus/*"]).is_some());
        assert!(complexity(&["*:*:*:*:*"]).is_some(), "five stars: 9, at the limit");
    }

    #[test]
    fn a_hostile_pattern_is_refused_without_exploring_forever() {
        let long = "F*e*a*t*u*r*e*".repeat(10_000);
        assert_eq!(complexity(&[&long]), None);
        let many: Vec<String> = (0..200).map(|i| format!("{i}*x{i}*y")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(complexity(&refs), None);
    }
}
