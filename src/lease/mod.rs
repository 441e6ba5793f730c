//! Leases: every received message is owned by the pipeline's [`LeaseKeeper`] from the moment
//! `ReceiveMessage` returns it until it is deleted, retried, released or dead-lettered.
//!
//! - **Room.** Pollers take room for ten messages *before* they receive ([`LeaseKeeper::reserve`]);
//!   the room of each admitted message is held by its lease and returned when the lease ends, so
//!   the number of outstanding messages never exceeds `lease.max_outstanding`.
//! - **Heartbeat.** One task extends the visibility of every lease with
//!   `ChangeMessageVisibilityBatch` when half of it is left, counted from the receive, wherever the
//!   message waits (channel, batcher, FIFO hold, dispatch); it stops at `lease.max_lease_secs`
//!   (never past SQS's 12 hours from the receive) and then lets the message go, counted.
//! - **One copy.** A message id received again while leased replaces the receipt handle of the
//!   lease and the new copy goes no further ([`Admission::Duplicate`]); every settlement uses the
//!   newest handle. A lease counts from when its receive was *sent* (the earliest the message can
//!   have been hidden), and never takes a handle from a receive older than the one it holds.
//! - **Settling** (delete, retry after a backoff, release) goes through the keeper, which is the
//!   only caller of `ChangeMessageVisibility`. A settlement is sent only once no extension of
//!   the same lease is in flight, so an extension can never land after it and hide again a
//!   message that was released.
//! - **Rejections.** An answer that trying again cannot cure (`ReceiptHandleIsInvalid`,
//!   `MessageNotInflight`, `InvalidParameterValue`) ends the calls for that lease at once:
//!   counted by code in `sqs_poller_receipt_rejections_total`, logged once per call, not retried.
//!   A rejected extension leaves the lease *lost*: no more extensions until a new receive of the
//!   message renews it (the lease stays, so that receive is still recognised as a duplicate).
//! - **Bounded rounds.** One heartbeat round of extensions takes at most a quarter of the
//!   visibility timeout; rounds run side by side, so a slow one cannot hold back the leases that
//!   fall due meanwhile.
//!
//! [`LeaseTable`] is the pure bookkeeping (time is an argument); [`LeaseKeeper`] adds SQS and room.

mod keeper;
mod table;

pub use crate::limits::RECEIVE_MAX;
pub use keeper::{LeaseKeeper, Reservation};
pub use table::{Admission, Extension, Handle, LeaseTable, ReceiveStamp, RECEIVE_VISIBILITY};

/// Who hears of the heartbeat's extensions besides SQS — the batch spans of `[telemetry]`
/// (`telemetry::LeaseSpans`) — without the keeper knowing what they are.
pub trait ExtensionWatcher: Send + Sync {
    /// `message_ids` were just extended by `visibility_secs`.
    fn extended(&self, message_ids: &mut dyn Iterator<Item = &str>, visibility_secs: i32);
}
