//! Keeps the simulation honest: the same scenarios, through the same `Queue` trait the service
//! uses, against the simulated queue, fauxqs, moto and LocalStack. Each backend's behaviour is
//! pinned to the table in docs/src/testing.md ("Where the emulators differ from SQS"); SQS's own column
//! comes from the AWS documentation. When an emulator changes, this test fails and the table
//! must be updated with it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName};
use sqs_poller::aws::SqsMessage;
use sqs_poller::metrics::PipelineMetrics;
use sqs_poller::sim::{SimConfig, SimQueue};
use sqs_poller::sqs::{Outgoing, Queue, SqsQueue};

/// What a backend does, per scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Behaviour {
    /// FIFO: a receive returns several messages of one group (in order).
    several_of_a_group_per_receive: bool,
    /// FIFO: no message of a group while an earlier one is in flight.
    locks_a_group_in_flight: bool,
    /// FIFO: still locked once the earlier message's visibility was changed (a retry backoff).
    locks_a_group_after_a_visibility_change: bool,
    /// A delete with an older receipt handle of a message received again deletes it.
    old_handle_deletes: bool,
    /// SendMessage with a control character in an attribute value is refused.
    refuses_control_characters: bool,
    /// SendMessage with a MessageDeduplicationId to a standard queue is refused.
    refuses_dedup_id_on_standard: bool,
    /// After `SetQueueAttributes` lowers `VisibilityTimeout`, the attribute reads the new value
    /// and a receive that asks for none hides its message for the new value.
    follows_a_changed_visibility: bool,
}

/// SQS, from the AWS documentation: FIFO ("no more messages for the same message group ID are
/// returned unless you delete the message or it becomes visible"), DeleteMessage ("the request
/// succeeds, but the message might not be deleted" with an older handle), the allowed
/// characters of attribute values, and deduplication ids for FIFO queues only.
const SQS: Behaviour = Behaviour {
    several_of_a_group_per_receive: true,
    locks_a_group_in_flight: true,
    locks_a_group_after_a_visibility_change: true,
    old_handle_deletes: false,
    refuses_control_characters: true,
    refuses_dedup_id_on_standard: true,
    follows_a_changed_visibility: true,
};

/// A backend: makes queues, and hands out the `Queue` the service would use.
trait Backend {
    async fn queue(&self, name: &str, fifo: bool, visibility_secs: u32) -> Arc<dyn Queue>;
    /// `SetQueueAttributes` of the queue's `VisibilityTimeout`, as an operator would.
    async fn set_visibility(&self, queue: &dyn Queue, secs: u32);
}

struct Emulator(Sqs);

impl Backend for Emulator {
    async fn queue(&self, name: &str, fifo: bool, visibility_secs: u32) -> Arc<dyn Queue> {
        let v = visibility_secs.to_string();
        let mut attrs = vec![(QueueAttributeName::VisibilityTimeout, v.as_str())];
        if fifo {
            attrs.push((QueueAttributeName::FifoQueue, "true"));
            attrs.push((QueueAttributeName::ContentBasedDeduplication, "true"));
        }
        let url = self.0.queue(name, &attrs).await;
        // receives, deletes and visibility changes through sqs-poller's JSON client, as the service sends them
        let clients = self.0.clients().await;
        Arc::new(SqsQueue::new(&clients, url, PipelineMetrics::new("conformance", 1, 1, 1).sqs))
    }

    async fn set_visibility(&self, queue: &dyn Queue, secs: u32) {
        self.0
            .client
            .set_queue_attributes()
            .queue_url(queue.url())
            .attributes(QueueAttributeName::VisibilityTimeout, secs.to_string())
            .send()
            .await
            .expect("SetQueueAttributes");
    }
}

#[derive(Default)]
struct Simulated {
    queues: std::sync::Mutex<HashMap<String, Arc<SimQueue>>>,
}

impl Backend for Simulated {
    async fn queue(&self, name: &str, fifo: bool, visibility_secs: u32) -> Arc<dyn Queue> {
        let url = format!("http://sim/000000000000/{}{}", unique(name), if fifo { ".fifo" } else { "" });
        let q = Arc::new(SimQueue::new(SimConfig::new(&url, Duration::from_secs(visibility_secs.into()), 1)));
        self.queues.lock().unwrap().insert(url, q.clone());
        q
    }

    async fn set_visibility(&self, queue: &dyn Queue, secs: u32) {
        self.queues.lock().unwrap()[queue.url()].set_visibility(Duration::from_secs(secs.into()));
    }
}

async fn send(q: &dyn Queue, body: &str, group: Option<&str>) {
    q.send(Outgoing::new(body, HashMap::new()).grouped(group, None))
        .await
        .unwrap_or_else(|e| panic!("send {body}: {e}"));
}

async fn receive(q: &dyn Queue, visibility_secs: u64) -> Vec<SqsMessage> {
    q.receive(Duration::ZERO, Some(Duration::from_secs(visibility_secs))).await.expect("ReceiveMessage")
}

fn bodies(m: &[SqsMessage]) -> Vec<&str> {
    m.iter().filter_map(|m| m.body()).collect()
}

async fn observe(b: &impl Backend) -> Behaviour {
    // FIFO: one group of twelve, more than one receive can return
    let q = b.queue("conf-fifo", true, 30).await;
    for i in 0..12 {
        send(q.as_ref(), &format!("a{i}"), Some("a")).await;
    }
    let first = receive(q.as_ref(), 30).await;
    assert!(!first.is_empty() && first[0].body() == Some("a0"), "the group starts with a0: {:?}", bodies(&first));
    let several = first.len() > 1;
    // with a0 (and whatever came with it) in flight, is anything of the group returned?
    let while_in_flight = receive(q.as_ref(), 30).await;
    let locks_in_flight = while_in_flight.is_empty();

    // a0 goes back with a 3 s backoff, the rest of what we hold at once
    let q = b.queue("conf-fifo-change", true, 30).await;
    for i in 0..12 {
        send(q.as_ref(), &format!("b{i}"), Some("b")).await;
    }
    // (one message per receive on fauxqs: then the scenario is about b0 alone)
    let held = receive(q.as_ref(), 30).await;
    let b0 = held[0].receipt_handle().unwrap().to_string();
    let mut changes = vec![(b0.as_str(), 3)];
    for m in &held[1..] {
        changes.push((m.receipt_handle().unwrap(), 0));
    }
    let failed = q.change_visibility(&changes).await;
    assert!(failed.is_empty(), "change visibility failed for {failed:?}");
    let after_change = receive(q.as_ref(), 30).await;
    let locks_after_change = after_change.is_empty();

    // an older receipt handle of a message received again
    let q = b.queue("conf-stale", false, 1).await;
    send(q.as_ref(), "s", None).await;
    let old = receive(q.as_ref(), 1).await;
    assert_eq!(old.len(), 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut again = receive(q.as_ref(), 30).await;
    if again.is_empty() {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        again = receive(q.as_ref(), 30).await;
    }
    assert_eq!(again.len(), 1, "received again after the visibility timeout");
    let not_deleted = q.delete(&[old[0].receipt_handle().unwrap()]).await;
    assert!(not_deleted.is_empty(), "the old handle's delete is answered with success everywhere");
    let attrs = q.attributes(&[QueueAttributeName::ApproximateNumberOfMessagesNotVisible]).await.unwrap();
    let in_flight: u64 = attrs["ApproximateNumberOfMessagesNotVisible"].parse().unwrap();
    let old_handle_deletes = in_flight == 0;

    // sends SQS refuses
    let q = b.queue("conf-send", false, 30).await;
    let value = MessageAttributeValue::builder().data_type("String").string_value("bad\u{1}value").build().unwrap();
    let control = q.send(Outgoing::new("x", HashMap::from([("r".to_string(), value)]))).await;
    let dedup = q.send(Outgoing::new("x", HashMap::new()).grouped(None, Some("d-1"))).await;
    // a standard queue takes a group id (fair queues) everywhere
    q.send(Outgoing::new("fair", HashMap::new()).grouped(Some("tenant"), None))
        .await
        .expect("MessageGroupId on a standard queue");

    // the queue's visibility lowered from 30 s to 2 s: read back, and used by a receive that
    // asks for none (a message hidden for 2 s, not 30)
    let q = b.queue("conf-visibility", false, 30).await;
    b.set_visibility(q.as_ref(), 2).await;
    let attrs = q.attributes(&[QueueAttributeName::VisibilityTimeout]).await.unwrap();
    let reads_back = attrs.get("VisibilityTimeout").map(String::as_str) == Some("2");
    send(q.as_ref(), "v", None).await;
    // (a one-second wait: the simulation, as a standard queue, may skip a visible message in one
    // look, and looks again within the wait)
    let wait = Duration::from_secs(1);
    let first = q.receive(wait, None).await.expect("ReceiveMessage");
    assert_eq!(first.len(), 1, "the message is received");
    let hidden = q.receive(Duration::ZERO, None).await.expect("ReceiveMessage").is_empty();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let back = q.receive(wait, None).await.expect("ReceiveMessage").len() == 1;
    let follows_a_changed_visibility = reads_back && hidden && back;

    Behaviour {
        follows_a_changed_visibility,
        several_of_a_group_per_receive: several,
        locks_a_group_in_flight: locks_in_flight,
        locks_a_group_after_a_visibility_change: locks_after_change,
        old_handle_deletes,
        refuses_control_characters: control.is_err(),
        refuses_dedup_id_on_standard: dedup.is_err(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulation_behaves_as_sqs_is_documented() {
    assert_eq!(observe(&Simulated::default()).await, SQS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fauxqs_differs_where_the_readme_says() {
    let expected = Behaviour {
        several_of_a_group_per_receive: false,
        refuses_control_characters: false,
        refuses_dedup_id_on_standard: false,
        ..SQS
    };
    assert_eq!(observe(&Emulator(sqs().await)).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_differs_where_the_readme_says() {
    let expected = Behaviour {
        old_handle_deletes: true,
        refuses_control_characters: false,
        refuses_dedup_id_on_standard: false,
        ..SQS
    };
    assert_eq!(observe(&Emulator(moto_sqs().await)).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localstack_differs_where_the_readme_says() {
    let expected = Behaviour { locks_a_group_after_a_visibility_change: false, old_handle_deletes: true, ..SQS };
    assert_eq!(observe(&Emulator(localstack().await)).await, expected);
}
