//! Matching allocates nothing: patterns are compiled once and matching only reads.
//! (A counting global allocator, counting per thread so that the test harness's own threads do
//! not count; this file is its own test binary.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use sqs_poller::filter::{match_value, Filter};

struct Counting;

thread_local! {
    /// Allocations made by this thread (const-initialized: reading it never allocates).
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn allocated() -> usize {
    ALLOCATIONS.with(Cell::get)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // try_with: the thread's counter may already be gone while the thread ends
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f`.
fn allocations(f: impl FnOnce()) -> usize {
    let before = allocated();
    f();
    allocated() - before
}

fn record(body: serde_json::Value, tenant: &str) -> String {
    serde_json::json!({
        "messageId": "m1",
        "body": body.to_string(),
        "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": {"tenant": {"stringValue": tenant, "dataType": "String"}}
    })
    .to_string()
}

/// Each operator alone, on a record it matches and one it does not: every path of the matcher
/// is evaluated (with several patterns, `any` stops at the first that matches).
#[test]
fn every_operator_matches_and_misses_without_allocating() {
    use serde_json::json;
    let cases: Vec<(&str, String, String)> = vec![
        (
            r#"{"body": {"type": ["ORDER"]}}"#,
            record(json!({"type": "ORDER"}), "a"),
            record(json!({"type": "REFUND"}), "a"),
        ),
        (
            r#"{"body": {"type": [{"equals-ignore-case": "order"}]}}"#,
            record(json!({"type": "ORDER"}), "a"),
            record(json!({"type": "orders"}), "a"),
        ),
        (
            r#"{"body": {"n": [{"numeric": [">", 10, "<=", 1000]}]}}"#,
            record(json!({"n": 50}), "a"),
            record(json!({"n": 5}), "a"),
        ),
        (
            r#"{"body": {"sku": [{"wildcard": "A-*-X"}]}}"#,
            record(json!({"sku": "A-7-X"}), "a"),
            record(json!({"sku": "A-7-Y"}), "a"),
        ),
        (
            r#"{"body": {"sku": [{"prefix": "A-"}]}}"#,
            record(json!({"sku": "A-7"}), "a"),
            record(json!({"sku": "B-7"}), "a"),
        ),
        (
            r#"{"body": {"f": [{"suffix": ".png"}]}}"#,
            record(json!({"f": "a.png"}), "a"),
            record(json!({"f": "a.jpg"}), "a"),
        ),
        (
            r#"{"body": {"tags": [{"anything-but": {"prefix": "test"}}]}}"#,
            record(json!({"tags": ["prod"]}), "a"),
            record(json!({"tags": ["test-1"]}), "a"),
        ),
        (
            r#"{"body": {"s": [{"anything-but": ["a", "b"]}]}}"#,
            record(json!({"s": "c"}), "a"),
            record(json!({"s": "a"}), "a"),
        ),
        (
            r#"{"body": {"ip": [{"cidr": "10.0.0.0/8"}]}}"#,
            record(json!({"ip": "10.1.2.3"}), "a"),
            record(json!({"ip": "11.1.2.3"}), "a"),
        ),
        (
            r#"{"body": {"missing": [{"exists": false}]}}"#,
            record(json!({"x": 1}), "a"),
            record(json!({"missing": 1}), "a"),
        ),
        (r#"{"body": {"x": [{"exists": true}]}}"#, record(json!({"x": 1}), "a"), record(json!({"y": 1}), "a")),
        (
            r#"{"messageAttributes": {"tenant": {"stringValue": [{"suffix": {"equals-ignore-case": "CORP"}}]}}}"#,
            record(json!({}), "acme.corp"),
            record(json!({}), "acme.org"),
        ),
        (
            r#"{"$or": [{"body": {"a": [1]}}, {"body": {"b": [2]}}]}"#,
            record(json!({"b": 2}), "a"),
            record(json!({"a": 2, "b": 1}), "a"),
        ),
        (
            r#"{"body": {"name": ["Zürich"]}}"#,
            record(json!({"name": "Zürich"}), "a"),
            record(json!({"name": "Zurich"}), "a"),
        ),
    ];
    for (pattern, hit, miss) in &cases {
        let filter = Filter::compile(&[pattern]).unwrap();
        let hit = match_value(hit).unwrap();
        let miss = match_value(miss).unwrap();
        let mut results = (0, 0);
        let n = allocations(|| {
            for _ in 0..100 {
                results.0 += usize::from(filter.matches(&hit));
                results.1 += usize::from(filter.matches(&miss));
            }
        });
        assert_eq!(results, (100, 0), "{pattern}: matches its record and misses the other");
        assert_eq!(n, 0, "{pattern}: matching allocated {n} times");
    }
}

#[test]
fn matching_does_not_allocate() {
    let filter = Filter::compile(&[
        r#"{"body": {"type": [{"equals-ignore-case": "order"}], "amount": [{"numeric": [">", 10, "<=", 1000]}]}}"#,
        r#"{"body": {"sku": [{"wildcard": "A-*-X"}], "tags": [{"anything-but": {"prefix": "test"}}]}}"#,
        r#"{"body": {"ip": [{"cidr": "10.0.0.0/8"}]}, "messageAttributes": {"tenant": {"stringValue": [{"suffix": {"equals-ignore-case": "CORP"}}]}}}"#,
        r#"{"$or": [{"body": {"missing": [{"exists": false}]}}, {"attributes": {"ApproximateReceiveCount": [{"prefix": "1"}]}}]}"#,
        r#"{"body": {"name": ["Zürich", {"suffix": ".png"}]}}"#,
    ])
    .unwrap();
    let record = serde_json::json!({
        "messageId": "m1",
        "body": serde_json::json!({"type": "ORDER", "amount": 50, "sku": "A-7-X", "tags": ["prod", "eu"], "ip": "10.1.2.3", "name": "Zürich"}).to_string(),
        "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": {"tenant": {"stringValue": "acme.corp", "dataType": "String"}}
    })
    .to_string();
    let value = match_value(&record).unwrap();
    let before = allocated();
    let mut matched = 0;
    for _ in 0..1000 {
        matched += usize::from(filter.matches(&value));
    }
    let allocations = allocated() - before;
    assert_eq!(matched, 1000);
    assert_eq!(allocations, 0, "matching allocated {allocations} times in 1000 matches");
}
