//! SQS's own limits and the service's timeouts for talking to it, below every stage that
//! uses them (config validation, the lease keeper, the SQS edge).

use std::time::Duration;

/// SQS's largest visibility timeout (and so the longest a receive can hide a message): 12 h.
pub const MAX_VISIBILITY_SECS: u64 = 43_200;

/// AWS's bounds for provisioned SQS pollers of an event source mapping: `MaximumPollers` up to
/// 10,000, `MinimumPollers` up to 200 (Lambda API reference, `ProvisionedPollerConfig`).
pub const MAX_POLLERS: u64 = 10_000;
pub const MAX_MIN_POLLERS: u64 = 200;

/// The most messages one ReceiveMessage returns.
pub const RECEIVE_MAX: usize = 10;
/// SQS's largest message (body and attributes): 1 MiB (`MaximumMessageSize`'s upper bound).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// What the byte budget counts for a message beyond its body and attributes: its ids, receipt
/// handle (up to about 1 KB), record and bookkeeping.
pub const MESSAGE_OVERHEAD_BYTES: usize = 2048;
/// The most bytes one receive can bring: ten of SQS's largest messages.
pub const RECEIVE_MAX_BYTES: usize = RECEIVE_MAX * (MAX_MESSAGE_BYTES + MESSAGE_OVERHEAD_BYTES);

/// The largest answer read from SQS's JSON protocol: a receive of 10 messages of 1 MiB (body and
/// attributes) is about 10 MiB, twice that with every character escaped, plus Base64 binary
/// attributes; past this the answer is refused, not read.
pub const MAX_SQS_ANSWER_BYTES: usize = 32 << 20;

/// The largest batch event (Lambda's 6 MB payload limit for a synchronous invocation).
pub const MAX_BATCH_BYTES: usize = 6_291_456;

/// How long one attempt of an SQS request may take (plus the long poll, for a receive): a hung
/// connection becomes a timeout error, retried like the others.
pub const SQS_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
