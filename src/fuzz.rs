//! A small property-test harness for the parsers of untrusted bytes (issue 34): SQS's answers,
//! the worker's answers, the HTTP heads and bodies the lean client reads, extended-client
//! pointers, message bodies and attributes, the admin API's Host and Origin. Stable Rust, no
//! fuzzing engine: each case draws its input from a seeded generator, mostly by mutating a valid
//! sample (bytes flipped, cut, repeated, structural characters and huge numbers put in), so that
//! the inputs reach past the first check.
//!
//! A run tries `budget` seeds (`SQS_POLLER_FUZZ_CASES` multiplies it, for a longer run by hand);
//! a case that panics fails the test with its seed, and `SQS_POLLER_FUZZ_SEED=N` replays it.
//! Built for the crate's tests only (`test-util`).

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `case` once per seed; panics naming the first seed whose case panicked.
pub fn run(name: &str, budget: u64, case: impl Fn(&mut fastrand::Rng)) {
    let seeds: Vec<u64> = match std::env::var("SQS_POLLER_FUZZ_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => {
            let scale = std::env::var("SQS_POLLER_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(1u64);
            let start = fastrand::u64(..);
            (0..budget.saturating_mul(scale)).map(|i| start.wrapping_add(i)).collect()
        }
    };
    for seed in seeds {
        let mut rng = fastrand::Rng::with_seed(seed);
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| case(&mut rng))) {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            panic!("fuzz {name}: seed {seed} failed: {what}\n  replay: SQS_POLLER_FUZZ_SEED={seed} cargo test {name}");
        }
    }
}

/// Pieces that break parsers: structure, escapes, numbers past every integer type, control
/// characters, invalid UTF-8, multi-byte characters.
const PIECES: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"\r\n",
    b"\r\n\r\n",
    b"\0",
    b"\\u0000",
    b"\\ud800",
    b"99999999999999999999999999999",
    b"-1",
    b"1e400",
    b"null",
    b"\xff\xfe",
    b"\xe2\x82",
    "é€😀".as_bytes(),
    b"0\r\n\r\n",
    b"ffffffffffffffff\r\n",
    b"Content-Length: 18446744073709551616\r\n",
    b"Transfer-Encoding: chunked\r\n",
];

/// `sample` changed a few times over: bytes flipped, cut, doubled, or a breaking piece put in.
pub fn mutate(rng: &mut fastrand::Rng, sample: &[u8]) -> Vec<u8> {
    let mut out = sample.to_vec();
    for _ in 0..rng.usize(0..6) {
        let at = rng.usize(0..=out.len());
        match rng.u8(0..6) {
            0 if !out.is_empty() => {
                let i = rng.usize(0..out.len());
                out[i] = rng.u8(..);
            }
            1 => out.truncate(at),
            2 => {
                let piece = PIECES[rng.usize(0..PIECES.len())];
                out.splice(at..at, piece.iter().copied());
            }
            3 if at < out.len() => {
                let end = rng.usize(at..=out.len().min(at + 64));
                let copy = out[at..end].to_vec();
                out.splice(at..at, copy);
            }
            4 => out.splice(at..at, (0..rng.usize(0..16)).map(|_| rng.u8(..))).for_each(drop),
            _ => {}
        }
    }
    out
}

/// A string of `len` characters or so, from every range: ASCII, control characters, quotes and
/// backslashes, multi-byte characters.
pub fn text(rng: &mut fastrand::Rng, len: usize) -> String {
    (0..len)
        .map(|_| match rng.u8(0..8) {
            0 => char::from(rng.u8(0..32)),
            1 => ['"', '\\', '\'', '$', '{', '}', '<', '&'][rng.usize(0..8)],
            2 => ['é', '€', '😀', '\u{fffe}', '\u{2028}', '\u{7f}'][rng.usize(0..6)],
            _ => char::from(rng.u8(b' '..b'~')),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    /// The harness fails a run whose case panics, naming the seed that replays it.
    #[test]
    #[should_panic(expected = "replay: SQS_POLLER_FUZZ_SEED=")]
    fn a_panicking_case_fails_the_run_with_its_seed() {
        super::run("self_test", 1000, |rng| assert!(rng.u8(..) != 7, "drew a 7"));
    }

    /// Mutations keep some samples intact and break others: the parsers see both.
    #[test]
    fn mutations_both_keep_and_break_a_sample() {
        let sample = br#"{"a":[1,2,"x"]}"#;
        let (mut kept, mut broken) = (0, 0);
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..1000 {
            match serde_json::from_slice::<serde_json::Value>(&super::mutate(&mut rng, sample)) {
                Ok(_) => kept += 1,
                Err(_) => broken += 1,
            }
        }
        assert!(kept > 50 && broken > 50, "kept {kept}, broken {broken}");
    }
}
