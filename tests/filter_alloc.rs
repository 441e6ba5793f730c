//! Matching allocates nothing: patterns are compiled once and matching only reads.
//! (A counting global allocator; this file is its own test binary.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use sqs_poller::filter::{match_value, Filter};

struct Counting;
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    let mut matched = 0;
    for _ in 0..1000 {
        matched += usize::from(filter.matches(&value));
    }
    let allocations = ALLOCATIONS.load(Ordering::SeqCst) - before;
    assert_eq!(matched, 1000);
    assert_eq!(allocations, 0, "matching allocated {allocations} times in 1000 matches");
}
