//! Filter benchmark: 5 patterns against Lambda records with 1 KiB JSON bodies.
//! `cargo bench --bench filter` (no services needed). Prints messages per second for matching
//! alone and for what the service does per message (parse the record and body, then match),
//! that cost's share of sqs-poller's whole CPU per message (from bench/results.json, written by
//! scripts/bench.sh), and the cost per KiB at 1, 8 and 64 KiB bodies (linear in the size).

use std::hint::black_box;
use std::time::Instant;

use serde_json::json;
use sqs_poller::filter::{match_value, Filter};

const PATTERNS: [&str; 5] = [
    r#"{"body": {"type": ["REFUND"], "amount": [{"numeric": [">", 1000]}]}}"#,
    r#"{"body": {"customer": {"tier": [{"equals-ignore-case": "PLATINUM"}]}}}"#,
    r#"{"body": {"sku": [{"wildcard": "Z-*-9"}]}, "messageAttributes": {"tenant": {"stringValue": ["globex"]}}}"#,
    r#"{"body": {"source_ip": [{"cidr": "192.168.0.0/16"}]}}"#,
    r#"{"body": {"type": ["ORDER"], "region": [{"anything-but": ["us-gov-west-1"]}], "tags": [{"prefix": "prio-"}]}}"#,
];

fn record(i: usize, body_kib: usize) -> String {
    let filler = "x".repeat(body_kib * 1024 - 300);
    let body = json!({
        "type": if i % 2 == 0 { "ORDER" } else { "REFUND" },
        "amount": i % 500,
        "customer": {"id": format!("c-{i}"), "tier": "gold"},
        "sku": format!("A-{i}-7"),
        "source_ip": format!("10.0.{}.{}", i % 250, i % 200),
        "region": "eu-west-1",
        "tags": [format!("prio-{}", i % 3), "web"],
        "notes": filler,
    })
    .to_string();
    json!({
        "messageId": format!("m-{i}"),
        "receiptHandle": "AQEB…",
        "body": body,
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1545082649183"},
        "messageAttributes": {"tenant": {"stringValue": "acme", "dataType": "String", "stringListValues": [], "binaryListValues": []}},
        "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:orders",
        "awsRegion": "us-east-1"
    })
    .to_string()
}

fn main() {
    let filter = Filter::compile(&PATTERNS).unwrap();
    let n = 20_000;
    let records: Vec<String> = (0..256).map(|i| record(i, 1)).collect();
    let values: Vec<_> = records.iter().map(|r| match_value(r).unwrap()).collect();
    let matched = values.iter().filter(|v| filter.matches(v)).count();

    let t = Instant::now();
    for i in 0..n {
        black_box(filter.matches(black_box(&values[i % values.len()])));
    }
    let match_ns = t.elapsed().as_nanos() as f64 / n as f64;

    let t = Instant::now();
    for i in 0..n {
        let v = match_value(black_box(&records[i % records.len()])).unwrap();
        black_box(filter.matches(&v));
    }
    let full_ns = t.elapsed().as_nanos() as f64 / n as f64;

    // what the service runs: only the fields the patterns name parsed from the record's text
    let t = Instant::now();
    for i in 0..n {
        black_box(filter.matches_json(black_box(&records[i % records.len()])).unwrap());
    }
    let selected_ns = t.elapsed().as_nanos() as f64 / n as f64;

    println!("filter: 5 patterns, 1 KiB JSON bodies ({matched} of {} sample records match)", values.len());
    println!("  match only (record already parsed): {:>10.0} msg/s  {match_ns:>8.0} ns/msg", 1e9 / match_ns);
    println!("  parse record + body, then match:    {:>10.0} msg/s  {full_ns:>8.0} ns/msg", 1e9 / full_ns);
    println!(
        "  parse the named fields, then match: {:>10.0} msg/s  {selected_ns:>8.0} ns/msg  (the service's path; {:.2}x the full parse)",
        1e9 / selected_ns,
        selected_ns / full_ns
    );
    let service = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/bench/results.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["cost"]["sqs_poller_batch_10"]["median_range"]["cpu_us_per_msg"]["median"].as_f64());
    match service {
        Some(us) => println!(
            "  share of sqs-poller's CPU per message ({us:.1} µs at batch 10, bench/results.json, 200 B bodies): {:.0}% with a 1 KiB body",
            100.0 * selected_ns / 1000.0 / (us + selected_ns / 1000.0)
        ),
        None => println!("  (run scripts/bench.sh for the service's CPU per message to compare with)"),
    }
    for kib in [1, 8, 64] {
        let recs: Vec<String> = (0..32).map(|i| record(i, kib)).collect();
        let m = 4_000 / kib.max(1) + 50;
        let t = Instant::now();
        for i in 0..m {
            black_box(filter.matches_json(black_box(&recs[i % recs.len()])).unwrap());
        }
        let ns = t.elapsed().as_nanos() as f64 / m as f64;
        println!("  body {kib:>2} KiB: {ns:>9.0} ns/msg = {:>6.0} ns/KiB", ns / kib as f64);
    }
}
