//! Large messages: bodies of about 1 MiB (SQS's limit since August 2025, counted with the
//! attributes) with 10 message attributes of every data type pass end to end intact. The worker
//! (a Python `command` target) checks each record's `md5OfBody` and `md5OfMessageAttributes`
//! (SQS's algorithm) against what it received, and batches stay within `max_bytes`.

use std::time::Duration;

use crate::common::*;
use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::MessageAttributeValue;

const MESSAGES: usize = 12;
/// SQS counts the body and the attributes against its 1 MiB limit.
const LIMIT: usize = 1024 * 1024;

/// Checks every record and writes one line per record to the file in argv[1]:
/// `messageId body-md5-ok attributes-md5-ok body-bytes records-in-batch event-bytes`.
const CHECKER: &str = r#"
import base64, hashlib, json, struct, sys
raw = sys.stdin.buffer.read()
event = json.loads(raw)
records = event["Records"]

def md5_of_attributes(attrs):
    out = b""
    for name in sorted(attrs):
        a = attrs[name]
        kind = a["dataType"]
        out += struct.pack(">I", len(name.encode())) + name.encode()
        out += struct.pack(">I", len(kind.encode())) + kind.encode()
        if kind.startswith("Binary"):
            value = base64.b64decode(a["binaryValue"])
            out += b"\x02"
        else:
            value = a["stringValue"].encode()
            out += b"\x01"
        out += struct.pack(">I", len(value)) + value
    return hashlib.md5(out).hexdigest()

failed = []
with open(sys.argv[1], "a") as log:
    for r in records:
        body = r["body"].encode()
        body_ok = hashlib.md5(body).hexdigest() == r["md5OfBody"]
        attrs_ok = md5_of_attributes(r["messageAttributes"]) == r.get("md5OfMessageAttributes")
        if not (body_ok and attrs_ok):
            failed.append({"itemIdentifier": r["messageId"]})
        log.write(f"{r['messageId']} {body_ok} {attrs_ok} {len(body)} {len(records)} {len(raw)}\n")
print(json.dumps({"batchItemFailures": failed}))
"#;

/// Ten attributes: strings (with characters beyond ASCII), numbers, binary and custom types.
fn attributes(i: usize) -> Vec<(String, MessageAttributeValue)> {
    let s = |t: &str, v: String| MessageAttributeValue::builder().data_type(t).string_value(v).build().unwrap();
    let b =
        |t: &str, v: Vec<u8>| MessageAttributeValue::builder().data_type(t).binary_value(Blob::new(v)).build().unwrap();
    vec![
        ("trace".into(), s("String", format!("Root=1-{i:08x}-abcdef"))),
        ("tenant".into(), s("String", "café-東京".into())),
        ("count".into(), s("Number", format!("{i}"))),
        ("price".into(), s("Number", "-12.50".into())),
        ("kind".into(), s("String.custom", "order".into())),
        ("blob".into(), b("Binary", vec![0, 1, 2, 255, 254, i as u8])),
        ("image".into(), b("Binary.png", vec![137, 80, 78, 71])),
        ("empty-ish".into(), s("String", " ".into())),
        ("zeta".into(), s("String", "last by name".into())),
        ("Alpha".into(), s("String", "first by name (upper case sorts first)".into())),
    ]
}

fn attributes_size(attrs: &[(String, MessageAttributeValue)]) -> usize {
    attrs
        .iter()
        .map(|(n, v)| {
            n.len()
                + v.data_type().len()
                + v.string_value().map_or(0, str::len)
                + v.binary_value().map_or(0, |b| b.as_ref().len())
        })
        .sum()
}

/// A body of exactly `bytes` UTF-8 bytes: ASCII with two- and three-byte characters mixed in.
fn body(i: usize, bytes: usize) -> String {
    let mut s = format!("message {i}: ");
    let pieces = ["abcdefghij", "é", "東", "0123456789", "\t", "\n"];
    let mut k = i;
    while s.len() < bytes {
        let p = pieces[k % pieces.len()];
        k = k.wrapping_mul(31).wrapping_add(7);
        if s.len() + p.len() <= bytes {
            s.push_str(p);
        } else {
            s.push('x');
        }
    }
    s
}

async fn large_messages_pass_intact(sqs: &Sqs, name: &str) {
    let queue = sqs.queue(name, &[]).await;
    for i in 0..MESSAGES {
        let attrs = attributes(i);
        // both emulators refuse a message of exactly 1 MiB ("must be shorter than"): a KiB below
        let size = LIMIT - 1024 - attributes_size(&attrs);
        let mut req = sqs.client.send_message().queue_url(&queue).message_body(body(i, size));
        for (n, v) in attrs {
            req = req.message_attributes(n, v);
        }
        req.send().await.unwrap_or_else(|e| panic!("SendMessage of a {size}-byte body: {e:?}"));
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("checked.log");
    let pipeline = format!(
        "[[pipelines]]\nname = \"{name}\"\nqueue_url = \"{queue}\"\n[pipelines.pollers]\nwait_time_secs = 1\n\
         [pipelines.batch]\nsize = 10\nwindow_ms = 2000\n[pipelines.target]\ntype = \"command\"\nprogram = \"python3\"\n\
         args = [\"-c\", {CHECKER:?}, {:?}]\ntimeout_secs = 30\n[pipelines.retry]\ninitial_backoff_secs = 60\n",
        log.display().to_string()
    );
    let poller = start_poller(sqs, 10, &pipeline).await;
    poller
        .wait_metric(
            &format!("sqs_poller_messages_deleted_total{{pipeline=\"{name}\"}}"),
            MESSAGES as f64,
            Duration::from_secs(60),
        )
        .await;
    let lines = std::fs::read_to_string(&log).unwrap();
    let rows: Vec<Vec<&str>> = lines.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(rows.len(), MESSAGES, "each message checked once:\n{lines}");
    for r in &rows {
        assert_eq!((r[1], r[2]), ("True", "True"), "md5OfBody and md5OfMessageAttributes match: {r:?}");
        let bytes: usize = r[3].parse().unwrap();
        assert!(bytes > LIMIT - 2048, "a body of {bytes} bytes");
        let event: usize = r[5].parse().unwrap();
        assert!(event <= 6 * 1024 * 1024, "an event of {event} bytes is over max_bytes");
    }
    let largest_batch = rows.iter().map(|r| r[4].parse::<usize>().unwrap()).max().unwrap();
    assert!(largest_batch > 1 && largest_batch <= 5, "batches of about 1 MiB messages hold 2 to 5: {largest_batch}");
    println!("{name}: {MESSAGES} messages of ~1 MiB with 10 attributes intact; largest batch {largest_batch}");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mebibyte_messages_with_ten_attributes_pass_intact() {
    large_messages_pass_intact(&sqs().await, "large").await;
}

/// LocalStack computes the digests as SQS does; fauxqs's are checked above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mebibyte_messages_pass_intact_on_localstack() {
    large_messages_pass_intact(&localstack().await, "large-ls").await;
}

/// Issue 32: the byte budget bounds what is leased in bytes, end to end. 96 messages of 512 KiB
/// (48 MiB) on a queue whose messages may be 1 MiB, a budget of 24 MiB (two receives' worth: a
/// receive reserves ten of the largest messages) and a worker that takes 400 ms per batch of 4:
/// the worker never has more than the budget's worth (47) of messages at once — without it, 10
/// pollers and 24 batches in flight reach 96 — and every message is processed once.
/// The in-flight bytes gauge, sampled, never passes the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_byte_budget_bounds_what_is_leased_in_bytes() {
    const BODY: usize = 512 * 1024;
    const BUDGET: usize = 24 << 20;
    let sqs = sqs().await;
    let queue = sqs.queue("budget", &[]).await;
    for i in 0..96 {
        let mut b = format!("{i:03}-");
        b.push_str(&"x".repeat(BODY - b.len()));
        sqs.client.send_message().queue_url(&queue).message_body(b).send().await.expect("SendMessage");
    }
    let worker = worker(|_| Reply { delay: Duration::from_millis(400), ..Reply::ok("") }).await;
    let name = "budget";
    let pipeline = http_pipeline(
        name,
        &queue,
        &worker.url,
        &format!(
            "[pipelines.pollers]\nmin = 10\nmax = 10\nwait_time_secs = 1\n[pipelines.batch]\nsize = 4\nwindow_ms = 0\n\
             [pipelines.lease]\nmax_outstanding_bytes = {BUDGET}\n"
        ),
    )
    .replace("[pipelines.target]\n", "[pipelines.target]\nmax_concurrency = 24\n");
    let poller = start_poller(&sqs, 10, &pipeline).await;
    let gauge = format!("sqs_poller_in_flight_bytes{{pipeline=\"{name}\"}}");
    let deleted = format!("sqs_poller_messages_deleted_total{{pipeline=\"{name}\"}}");
    let mut most_bytes = 0.0f64;
    // a hang guard, not a speed: fails only when no message is deleted for 60 s
    let (mut done, mut progress_at) = (0.0f64, std::time::Instant::now());
    while done < 96.0 {
        most_bytes = most_bytes.max(poller.metric(&gauge).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = poller.metric(&deleted).await;
        if now > done {
            (done, progress_at) = (now, std::time::Instant::now());
        }
        assert!(progress_at.elapsed() < Duration::from_secs(60), "stalled at {done} deleted");
    }
    assert!(most_bytes > 0.0, "the gauge was sampled while messages were leased");
    assert!(most_bytes <= BUDGET as f64, "{most_bytes} bytes taken of a {BUDGET}-byte budget");
    assert_eq!(poller.metric(&format!("sqs_poller_max_outstanding_bytes{{pipeline=\"{name}\"}}")).await, BUDGET as f64);

    // what the worker held at once, in messages: at most the budget's worth (each message takes
    // its 512 KiB and 2 KiB of overhead), and more than one receive's (the budget is used)
    let deliveries = worker.deliveries();
    let mut steps: Vec<(std::time::Instant, i64)> = Vec::new();
    for d in &deliveries {
        let n = d.records().len() as i64;
        steps.push((d.at, n));
        steps.push((d.done.unwrap_or_else(std::time::Instant::now), -n));
    }
    steps.sort_by_key(|&(at, step)| (at, step));
    let (mut now, mut peak) = (0i64, 0i64);
    for (_, step) in steps {
        now += step;
        peak = peak.max(now);
    }
    let fits = BUDGET / (BODY + 2048);
    assert!(peak as usize <= fits, "{peak} messages at the worker at once; the budget holds {fits}");
    assert!(peak >= 8, "{peak} messages at the worker at once: the budget was not used");
    let mut seen: Vec<String> = deliveries
        .iter()
        .flat_map(|d| d.records().iter().map(|r| r["body"].as_str().unwrap()[..3].to_string()).collect::<Vec<_>>())
        .collect();
    seen.sort();
    let total = seen.len();
    seen.dedup();
    assert_eq!((seen.len(), total), (96, 96), "every message processed once");
    assert_eq!(sqs.counts(&queue).await, (0, 0));
    println!("byte budget {BUDGET}: at most {most_bytes} bytes taken, {peak} messages at the worker at once");
    // the bodies' memory goes back to the system when they are settled: glibc keeps freed large
    // blocks on its heap, and a thread of the service trims it (src/main.rs)
    let pid = poller.child.id().expect("running");
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect();
    assert!(threads.iter().any(|t| t == "malloc-trim"), "no malloc-trim thread: {threads:?}");
    let (status, _, log) = poller.stop().await;
    assert!(status.success(), "{log}");
}
