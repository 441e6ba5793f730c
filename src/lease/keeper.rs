//! The keeper: the lease table with SQS and room around it — reservations before a receive,
//! the heartbeat's extensions, settlements (delete, release) and the byte budget.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::table::*;
use super::RECEIVE_MAX;
use crate::metrics::LeaseMetrics;
use crate::sqs::{EntryFailure, Queue};

/// Room for up to [`RECEIVE_MAX`] messages, and the bytes they may bring, taken before a receive.
pub struct Reservation {
    permit: OwnedSemaphorePermit,
    bytes: HeldBytes,
}

/// A receive's bytes: given back when dropped unused (a receive that failed or was cut short),
/// and the gauge told.
struct HeldBytes {
    permit: Option<OwnedSemaphorePermit>,
    room: Arc<ByteRoom>,
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.room.untake(permit.num_permits());
            drop(permit);
            self.room.note();
        }
    }
}

/// The byte budget (`lease.max_outstanding_bytes`), in KiB: a receive reserves ten of the
/// queue's largest messages before it is sent; what its messages take stays with their leases
/// and the rest goes back at once.
struct ByteRoom {
    kib: Arc<Semaphore>,
    /// What one receive reserves.
    per_receive: u32,
    /// KiB taken beyond the budget (a message over the queue's largest size, which SQS does not
    /// send): paid back from the next leases to end before their KiB are free again.
    owed: Mutex<usize>,
    /// KiB held by reservations and leases now. The gauge counts these, not the semaphore's
    /// free permits: those also lack what the semaphore has lent a receive still waiting for the
    /// rest of its bytes, which it gives back unseen if the wait is given up.
    taken: std::sync::atomic::AtomicUsize,
    /// The budget's size, for the in-flight gauge.
    total: usize,
    /// `sqs_poller_in_flight_bytes`, and the admin API's figure.
    gauge: metrics::Gauge,
    status: Option<Arc<crate::status::Status>>,
}

impl ByteRoom {
    /// No budget: room for any number of receives.
    fn unlimited() -> Self {
        ByteRoom {
            kib: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
            per_receive: 0,
            owed: Mutex::new(0),
            taken: std::sync::atomic::AtomicUsize::new(0),
            total: 0,
            gauge: metrics::Gauge::noop(),
            status: None,
        }
    }

    fn take(&self, kib: usize) {
        self.taken.fetch_add(kib, std::sync::atomic::Ordering::Relaxed);
    }

    fn untake(&self, kib: usize) {
        self.taken.fetch_sub(kib, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sets the gauge to what is taken now (reserved, leased and owed).
    fn note(&self) {
        if self.per_receive > 0 {
            let used = self.taken.load(std::sync::atomic::Ordering::Relaxed);
            let owed = *self.owed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let bytes = (used + owed) * 1024;
            self.gauge.set(bytes as f64);
            if let Some(status) = &self.status {
                status.in_flight_bytes.store(bytes, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// The lease keeper of one pipeline.
pub struct LeaseKeeper {
    queue: Arc<dyn Queue>,
    pipeline: String,
    metrics: LeaseMetrics,
    room: Arc<Semaphore>,
    /// The room's size now ([`Self::set_room`]) and the permits it still owes: a shrink takes the
    /// free permits at once and the rest as leases end.
    room_size: Mutex<RoomSize>,
    bytes: Arc<ByteRoom>,
    table: Mutex<LeaseTable>,
    /// Woken when a receive brought a lease due sooner than the heartbeat's planned wake (the
    /// first lease, an answer that took long, a visibility timeout lowered since the other
    /// leases were taken), so that it plans again.
    replan: tokio::sync::Notify,
    /// Woken when a heartbeat round ends, for settlements waiting on its extensions.
    round_ended: tokio::sync::Notify,
    /// Its grace period bounds the settling calls' retries.
    shutdown: crate::shutdown::Shutdown,
    /// `[telemetry]`: the batch spans of leased messages, told of their extensions.
    spans: Option<Arc<dyn super::ExtensionWatcher>>,
}

/// See [`LeaseKeeper::set_room`].
struct RoomSize {
    max: usize,
    size: usize,
    owed: usize,
}

impl LeaseKeeper {
    /// A keeper for `max_outstanding` messages (at least [`RECEIVE_MAX`]).
    pub fn new(
        queue: Arc<dyn Queue>,
        visibility: Duration,
        max_lease: Duration,
        max_outstanding: usize,
        metrics: LeaseMetrics,
    ) -> Self {
        let max_outstanding = max_outstanding.max(RECEIVE_MAX);
        metrics.max_outstanding.set(max_outstanding as f64);
        LeaseKeeper {
            queue,
            pipeline: metrics.pipeline.clone(),
            metrics,
            room: Arc::new(Semaphore::new(max_outstanding)),
            room_size: Mutex::new(RoomSize { max: max_outstanding, size: max_outstanding, owed: 0 }),
            bytes: Arc::new(ByteRoom::unlimited()),
            table: Mutex::new(LeaseTable::new(visibility, max_lease)),
            replan: tokio::sync::Notify::new(),
            round_ended: tokio::sync::Notify::new(),
            shutdown: crate::shutdown::Shutdown::default(),
            spans: None,
        }
    }

    /// A byte budget of `max_bytes` for a queue whose messages are at most `max_message_bytes`
    /// (body and attributes): each receive reserves ten of them, plus the fixed overhead each.
    /// A budget under one receive's worth is raised to it (logged).
    #[must_use]
    pub fn with_byte_budget(mut self, max_bytes: usize, max_message_bytes: usize) -> Self {
        let per_receive = RECEIVE_MAX * (max_message_bytes + crate::limits::MESSAGE_OVERHEAD_BYTES);
        let per_receive_kib = per_receive.div_ceil(1024);
        let mut total = max_bytes / 1024;
        if total < per_receive_kib {
            tracing::warn!(pipeline = %self.pipeline, max_outstanding_bytes = max_bytes, receive_bytes = per_receive, "lease.max_outstanding_bytes is less than one receive can bring (ten of the queue's largest messages): raised to that");
            total = per_receive_kib;
        }
        self.metrics.max_outstanding_bytes.set((total * 1024) as f64);
        self.metrics.in_flight_bytes.set(0.0);
        self.bytes = Arc::new(ByteRoom {
            kib: Arc::new(Semaphore::new(total)),
            per_receive: u32::try_from(per_receive_kib).unwrap_or(u32::MAX),
            owed: Mutex::new(0),
            taken: std::sync::atomic::AtomicUsize::new(0),
            total,
            gauge: self.metrics.in_flight_bytes.clone(),
            status: Some(self.metrics.status.clone()),
        });
        self.metrics.status.max_outstanding_bytes.store(total * 1024, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// A large payload fetched for `message_id` (`bytes` long) takes its size of the byte budget
    /// with the message's lease, until the lease ends: what is free is taken now and the rest
    /// owed, so pollers wait for room until the payloads are settled. The fetch does not wait
    /// for room (a message waiting for bytes that only its own settlement frees would never be
    /// settled); the fetches in progress are bounded apart, by `large_payloads.concurrency`
    /// fetches of at most `large_payloads.max_bytes`.
    pub fn charge_payload(&self, message_id: &str, bytes: usize) {
        if self.bytes.per_receive == 0 {
            return;
        }
        let kib = bytes.div_ceil(1024);
        if !self.table().add_kib(message_id, u32::try_from(kib).unwrap_or(u32::MAX)) {
            return;
        }
        self.take_beyond_reservation(kib);
    }

    /// The message's record is what the service holds of it while it is leased: its lease reads
    /// the receipt handle from the record from now on (its own copy is dropped) and takes at
    /// least the record's size of the byte budget. SQS's count (body and attributes,
    /// plus the per-message overhead) covers an ordinary record; escaping can make one twice
    /// its body (quotes, backslashes, line breaks; the control characters that would escape six
    /// times, `\u00XX`, are not allowed in SQS messages).
    /// What is missing is taken as [`Self::charge_payload`] takes it.
    pub fn hold_record(&self, message_id: &str, record: &Arc<str>) {
        // without a byte budget, leases take no bytes
        let kib = match self.bytes.per_receive {
            0 => 0,
            _ => u32::try_from(record.len().div_ceil(1024)).unwrap_or(u32::MAX),
        };
        let more = self.table().take_record(message_id, record, kib);
        if more > 0 {
            self.take_beyond_reservation(more as usize);
        }
    }

    /// Takes `kib` more of the budget for a lease already admitted: what is free now, the rest
    /// owed (paid back first by what settlements give back).
    fn take_beyond_reservation(&self, kib: usize) {
        let taken = self.bytes.kib.forget_permits(kib);
        self.bytes.take(taken);
        if taken < kib {
            *self.bytes.owed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) += kib - taken;
        }
        self.note_bytes();
    }

    /// How many receives the byte budget lets run at once.
    pub fn receives_in_budget(&self) -> Option<usize> {
        (self.bytes.per_receive > 0).then(|| self.bytes.total / self.bytes.per_receive as usize)
    }

    fn note_bytes(&self) {
        self.bytes.note();
    }

    /// Gives back `kib` of the byte budget, paying what is owed first.
    fn return_bytes(&self, kib: usize) {
        if kib == 0 {
            return;
        }
        let mut owed = self.bytes.owed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let paid = (*owed).min(kib);
        *owed -= paid;
        drop(owed);
        self.bytes.untake(kib - paid);
        self.bytes.kib.add_permits(kib - paid);
        self.note_bytes();
    }

    /// Tells `spans` of every extension of a message in a traced batch.
    pub fn tracing_to(mut self, spans: Option<Arc<dyn super::ExtensionWatcher>>) -> Self {
        self.spans = spans;
        self
    }

    /// Resolves once shutdown's settle deadline has passed: other settling work (a dead-letter
    /// copy) is raced against it.
    pub async fn settle_cutoff(&self) {
        self.shutdown.settle_cutoff().await;
    }

    /// The queue whose messages it leases.
    pub fn queue(&self) -> Arc<dyn Queue> {
        self.queue.clone()
    }

    /// Sends a copy of a leased message (a dead-letter copy, a delay's hop) to `queue`, given up
    /// when the grace period of a shutdown ends first.
    ///
    /// # Errors
    /// The send's error, or `ShutdownDeadline` when the grace period ended first.
    pub async fn send_copy(
        &self,
        queue: &dyn Queue,
        message: crate::sqs::Outgoing<'_>,
    ) -> Result<(), crate::sqs::SqsError> {
        tokio::select! {
            r = queue.send(message) => r,
            () = self.settle_cutoff() => Err(crate::sqs::SqsError::coded(
                "SendMessage",
                "ShutdownDeadline",
                "no answer before the end of the grace period",
                true,
            )),
        }
    }

    /// How long an open receive may still answer once shutdown has begun (see
    /// [`crate::shutdown::Shutdown::receive_grace`]).
    pub fn receive_grace(&self, most: Duration) -> Duration {
        self.shutdown.receive_grace(most)
    }

    /// Settling calls during shutdown stop retrying before `shutdown`'s grace period ends.
    #[must_use]
    pub fn stopping_with(mut self, shutdown: crate::shutdown::Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    fn table(&self) -> std::sync::MutexGuard<'_, LeaseTable> {
        self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits for room for one receive (up to [`RECEIVE_MAX`] messages).
    pub async fn reserve(&self) -> Reservation {
        loop {
            let mut permit =
                self.room.clone().acquire_many_owned(RECEIVE_MAX as u32).await.expect("the room is never closed");
            // a shrunk room takes what it is owed from here (see set_room)
            let owed = {
                let mut r = self.room_size.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let pay = r.owed.min(RECEIVE_MAX);
                r.owed -= pay;
                pay
            };
            if owed == 0 {
                // then the bytes (always in this order, so two pollers never hold one each)
                let bytes = self
                    .bytes
                    .kib
                    .clone()
                    .acquire_many_owned(self.bytes.per_receive)
                    .await
                    .expect("the byte room is never closed");
                self.bytes.take(bytes.num_permits());
                self.note_bytes();
                return Reservation { permit, bytes: HeldBytes { permit: Some(bytes), room: self.bytes.clone() } };
            }
            if let Some(paid) = permit.split(owed) {
                paid.forget();
            }
        }
    }

    /// Messages outstanding now.
    pub fn outstanding(&self) -> usize {
        self.table().len()
    }

    /// Ids of the messages outstanding now.
    pub fn outstanding_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.table().ids();
        ids.sort_unstable();
        ids
    }

    /// Puts what one receive (`stamp`: when it was sent, with what visibility timeout) returned
    /// under lease: `(message id, receipt handle)` pairs. Returns, per message, whether it is new
    /// (goes on) or a duplicate (stops here). The reservation's room is kept for the new ones
    /// and the rest returned.
    pub fn admit<'a>(
        &self,
        reservation: Reservation,
        received: impl IntoIterator<Item = (&'a str, &'a str)>,
        stamp: ReceiveStamp,
    ) -> Vec<Admission> {
        self.admit_sized(reservation, received.into_iter().map(|(id, rh)| (id, rh, 0)), stamp)
    }

    /// [`Self::admit`] with each message's bytes (body, attributes): a new lease keeps them of
    /// the byte budget (with the fixed overhead) until it ends; the rest of the receive's
    /// reservation goes back.
    pub fn admit_sized<'a>(
        &self,
        reservation: Reservation,
        received: impl IntoIterator<Item = (&'a str, &'a str, usize)>,
        stamp: ReceiveStamp,
    ) -> Vec<Admission> {
        let sent_at = stamp.sent_at;
        let metered = self.bytes.per_receive > 0;
        let mut kept_kib = 0usize;
        let (admissions, planned_due): (Vec<Admission>, Option<Instant>) = {
            let mut table = self.table();
            let a = received
                .into_iter()
                .map(|(id, rh, bytes)| {
                    let kib = if metered { (bytes + crate::limits::MESSAGE_OVERHEAD_BYTES).div_ceil(1024) } else { 0 };
                    let kib = u32::try_from(kib).unwrap_or(u32::MAX);
                    let admission = table.admit_sized(id, rh, stamp, kib);
                    if admission == Admission::New {
                        kept_kib += kib as usize;
                    }
                    admission
                })
                .collect();
            self.metrics.in_flight_messages.set(table.len() as f64);
            self.metrics.status.in_flight.store(table.len(), std::sync::atomic::Ordering::Relaxed);
            (a, table.planned_due)
        };
        let new = admissions.iter().filter(|a| **a == Admission::New).count();
        let duplicates = admissions.len() - new;
        if duplicates > 0 {
            self.metrics.duplicates.increment(duplicates as u64);
            tracing::info!(pipeline = %self.pipeline, duplicates, "received messages that are already leased; their receipt handles were replaced");
        }
        self.keep_reserved_bytes(reservation.bytes, kept_kib);
        self.keep_reserved_room(reservation.permit, new);
        // a new lease, or a lost one renewed by this receive, falls due half its visibility
        // timeout after its receive was sent: the heartbeat plans again when that is sooner
        // than the extension it plans for (mostly not: a busy pipeline is no wake per receive)
        if !admissions.is_empty() && planned_due.is_none_or(|due| sent_at + stamp.visibility / 2 < due) {
            self.replan.notify_one();
        }
        admissions
    }

    /// The byte budget of a receive once its messages are admitted: what the new leases keep
    /// (`kept_kib`) stays taken, the rest goes back. An answer of more than a receive's room
    /// (SQS never sends more than 10; a server that does is not trusted) keeps every permit and
    /// owes the rest, paid as room comes back (issue 30: the whole reservation went back, and
    /// max_outstanding stopped holding).
    fn keep_reserved_bytes(&self, mut held: HeldBytes, kept_kib: usize) {
        let mut bytes = held.permit.take().expect("a reservation holds its bytes until admitted");
        let reserved_kib = bytes.num_permits();
        if kept_kib >= reserved_kib {
            bytes.forget();
            if kept_kib > reserved_kib {
                *self.bytes.owed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) += kept_kib - reserved_kib;
                tracing::warn!(pipeline = %self.pipeline, bytes = kept_kib * 1024, "a receive brought more bytes than ten of the queue's largest messages; they are leased, and the byte budget is paid back as leases end");
            }
        } else {
            if let Some(kept) = bytes.split(kept_kib) {
                kept.forget();
            }
            self.bytes.untake(bytes.num_permits());
            drop(bytes);
        }
        self.note_bytes();
    }

    /// The room of a receive once its messages are admitted: each new message's room now
    /// belongs to its lease, the rest goes back; more messages than asked for are owed.
    fn keep_reserved_room(&self, mut permit: OwnedSemaphorePermit, new: usize) {
        let held = permit.num_permits();
        if new >= held {
            permit.forget();
            if new > held {
                let mut r = self.room_size.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                r.owed += new - held;
                drop(r);
                tracing::warn!(pipeline = %self.pipeline, messages = new, "a receive returned more messages than it asked for; they are leased, and the room is paid back as leases end");
            }
        } else {
            if let Some(kept) = permit.split(new) {
                kept.forget();
            }
            drop(permit);
        }
    }

    /// Ends the leases of `ids` and returns their last receipt handles (a message without a
    /// lease is skipped), with its index into `ids`. The room stays taken until
    /// [`Self::return_room`]: the lease ends *before* the settling call, so that a receive of the
    /// same message once it is visible again is a new delivery, not a duplicate of a lease that
    /// is about to end.
    fn end(&self, ids: &[&str]) -> Ended {
        let mut table = self.table();
        let mut ended =
            Ended { entries: Vec::with_capacity(ids.len()), visible_until: None, rounds: Vec::new(), kib: 0 };
        for (i, id) in ids.iter().enumerate() {
            if let Some(l) = table.end_lease(id) {
                let until = l.visible_until;
                ended.entries.push((i, l.receipt_handle, l.received));
                ended.kib += l.kib as usize;
                ended.visible_until = Some(ended.visible_until.map_or(until, |u: Instant| u.min(until)));
                for r in l.rounds {
                    if !ended.rounds.contains(&r) {
                        ended.rounds.push(r);
                    }
                }
            }
        }
        self.metrics.in_flight_messages.set(table.len() as f64);
        self.metrics.status.in_flight.store(table.len(), std::sync::atomic::Ordering::Relaxed);
        ended
    }

    /// Until when a settling call for `ended` is worth retrying: while the messages are still
    /// invisible (less a second: a later call may cross their next delivery), and, during
    /// shutdown, within the grace period.
    fn settle_deadline(&self, ended: &Ended) -> Instant {
        let invisible = ended.visible_until.map_or_else(Instant::now, |u| u - SETTLE_MARGIN);
        match self.shutdown.settle_deadline() {
            Some(d) => invisible.min(d),
            None => invisible,
        }
    }

    /// Waits until no extension of the ended leases is in flight (a call SQS has not answered
    /// stays in flight past its round's limit, bounded by the client's attempts), so that the
    /// settlement is the last call SQS sees for them; at most [`LATE_EXTENSION_WAIT`], and not
    /// past the shutdown's grace.
    async fn after_extensions(&self, ended: &Ended) {
        if ended.rounds.is_empty() {
            return;
        }
        let wait = async {
            loop {
                let ended_round = self.round_ended.notified();
                tokio::pin!(ended_round);
                ended_round.as_mut().enable();
                if !self.table().any_in_flight(&ended.rounds) {
                    return;
                }
                ended_round.await;
            }
        };
        let most = Instant::now() + LATE_EXTENSION_WAIT;
        let until = self.shutdown.settle_deadline().map_or(most, |d| d.min(most));
        let _ = tokio::time::timeout_at(until, wait).await;
    }

    /// Counts and logs (once per call) entries SQS rejected for good.
    fn rejected(&self, call: &'static str, rejections: &[EntryFailure]) {
        if rejections.is_empty() {
            return;
        }
        let mut by_code: Vec<(&'static str, usize)> = Vec::new();
        for r in rejections {
            let label = r.code_label();
            match by_code.iter_mut().find(|(c, _)| *c == label) {
                Some((_, n)) => *n += 1,
                None => by_code.push((label, 1)),
            }
        }
        for (code, n) in &by_code {
            self.metrics.receipt_rejected(call, code, *n as u64);
        }
        let codes: Vec<String> = by_code.iter().map(|(c, n)| format!("{c}×{n}")).collect();
        let first = &rejections[0].code;
        tracing::warn!(pipeline = %self.pipeline, call, messages = rejections.len(), codes = %codes.join(","), first_code = %first, "SQS rejected receipt handles for good; not retried (the messages come back when their visibility timeout ends, if SQS still holds them)");
    }

    /// Runs a settling call over `n` entries until each succeeded, was rejected for good, or the
    /// deadline (re-read each round: a shutdown shortens it) has passed. `call` gets the
    /// positions still pending and returns the failures among them (indexes into what it got).
    /// Returns the positions that never succeeded.
    async fn settle_with_retries<F, Fut>(
        &self,
        what: &'static str,
        call_name: &'static str,
        n: usize,
        deadline: impl Fn() -> Instant,
        call: F,
    ) -> Vec<usize>
    where
        F: Fn(Vec<usize>) -> Fut,
        Fut: std::future::Future<Output = Vec<EntryFailure>>,
    {
        if n == 0 {
            return Vec::new();
        }
        let mut pending: Vec<usize> = (0..n).collect();
        let mut given_up: Vec<usize> = Vec::new();
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
        let mut first = true;
        loop {
            // the first call is made whatever the messages' visibility; only shutdown cuts it short
            let invisible_until = (!first).then(&deadline);
            first = false;
            let all = || (0..pending.len()).map(|i| EntryFailure::retryable(i, "cut short")).collect();
            let failed: Vec<EntryFailure> = tokio::select! {
                failed = call(pending.clone()) => failed,
                () = self.shutdown.settle_cutoff() => all(),
                () = async { tokio::time::sleep_until(invisible_until.expect("checked")).await }, if invisible_until.is_some() => all(),
            };
            let (rejections, retry): (Vec<EntryFailure>, Vec<EntryFailure>) =
                failed.into_iter().filter(|f| f.index < pending.len()).partition(|f| f.permanent);
            self.rejected(call_name, &rejections);
            given_up.extend(rejections.iter().map(|f| pending[f.index]));
            pending = retry.into_iter().map(|f| pending[f.index]).collect();
            if pending.is_empty() {
                return given_up;
            }
            let delay = backoff.next_delay();
            if Instant::now() + delay >= deadline() {
                given_up.extend(pending);
                return given_up;
            }
            tracing::warn!(pipeline = %self.pipeline, messages = pending.len(), retry_in_ms = delay.as_millis() as u64, "could not {what}; trying again while the messages are still invisible");
            tokio::time::sleep(delay).await;
        }
    }

    fn return_room(&self, n: usize) {
        let mut r = self.room_size.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let paid = r.owed.min(n);
        r.owed -= paid;
        drop(r);
        self.room.add_permits(n - paid);
    }

    /// Sets the room to `messages` (in whole receives, at least one, at most `max_outstanding`):
    /// the adaptive concurrency limit keeps the pollers from receiving what could not be
    /// dispatched.
    pub fn set_room(&self, messages: usize) {
        let mut r = self.room_size.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let size = messages.div_ceil(RECEIVE_MAX).max(1).saturating_mul(RECEIVE_MAX).min(r.max);
        if size < r.size {
            let shrink = r.size - size;
            let taken = self.room.forget_permits(shrink);
            r.owed += shrink - taken;
        } else if size > r.size {
            let grow = size - r.size;
            let forgiven = r.owed.min(grow);
            r.owed -= forgiven;
            self.room.add_permits(grow - forgiven);
        }
        r.size = size;
        self.metrics.max_outstanding.set(size as f64);
    }

    /// Deletes `ids` (processed, filtered out or dead-lettered) and ends their leases; returns the
    /// indexes (into `ids`) that SQS deleted.
    ///
    /// A delete that fails is tried again with backoff while the messages are still invisible
    /// (and, during shutdown, within the grace period): a delete that SQS carried out but whose
    /// answer was lost succeeds again with the same receipt handle.
    pub async fn delete(&self, ids: &[&str]) -> Vec<usize> {
        let ended = self.end(ids);
        self.after_extensions(&ended).await;
        let failed = self
            .settle_with_retries(
                "delete",
                "delete",
                ended.entries.len(),
                || self.settle_deadline(&ended),
                |pending| {
                    let entries = &ended.entries;
                    async move {
                        let receipts: Vec<&str> = pending.iter().map(|&k| entries[k].1.as_str()).collect();
                        self.queue.delete(&receipts).await
                    }
                },
            )
            .await;
        self.return_room(ended.entries.len());
        self.return_bytes(ended.kib);
        if !failed.is_empty() {
            tracing::error!(pipeline = %self.pipeline, messages = failed.len(), "could not delete processed messages before their visibility timeout ran out; they will be delivered again");
        }
        ended.entries.iter().enumerate().filter(|(k, _)| !failed.contains(k)).map(|(_, (i, ..))| *i).collect()
    }

    /// Makes `ids` visible again after the given seconds (a retry backoff, or 0 to release) and
    /// ends their leases; returns how many SQS accepted.
    pub async fn release_after(&self, entries: &[(&str, i32)]) -> usize {
        let ids: Vec<&str> = entries.iter().map(|(id, _)| *id).collect();
        let ended = self.end(&ids);
        self.after_extensions(&ended).await;
        // SQS refuses a visibility that ends more than 12 hours after the handle's receive: such
        // a delay is shortened to the most SQS allows (refused, the message would come back
        // after its current visibility instead — issue 30)
        let now = Instant::now();
        let mut shortened = 0;
        let changes: Vec<(&str, i32)> = ended
            .entries
            .iter()
            .map(|(i, rh, received)| {
                let asked = entries[*i].1;
                let most = visibility_allowed(now.saturating_duration_since(*received));
                if asked > most {
                    shortened += 1;
                }
                (rh.as_str(), asked.min(most))
            })
            .collect();
        if shortened > 0 {
            tracing::warn!(pipeline = %self.pipeline, messages = shortened, "a delay ran past SQS's 12-hour visibility limit: shortened to the limit (the messages come back then)");
        }
        let failed = self
            .settle_with_retries(
                "change the visibility of messages being released",
                "release",
                changes.len(),
                || self.settle_deadline(&ended),
                |pending| {
                    let changes: Vec<(&str, i32)> = pending.iter().map(|&k| changes[k]).collect();
                    async move { self.queue.change_visibility(&changes).await }
                },
            )
            .await;
        self.return_room(ended.entries.len());
        self.return_bytes(ended.kib);
        if !failed.is_empty() {
            tracing::warn!(pipeline = %self.pipeline, messages = failed.len(), "could not change the visibility of messages being released; they come back after their visibility timeout");
        }
        changes.len() - failed.len()
    }

    /// Makes `ids` visible at once and ends their leases, counting them as released.
    pub async fn release(&self, ids: &[&str]) {
        let entries: Vec<(&str, i32)> = ids.iter().map(|id| (*id, 0)).collect();
        let released = self.release_after(&entries).await;
        self.metrics.released.increment(released as u64);
    }

    /// Keeps every lease invisible until `stop` is cancelled. Extensions go out when half a
    /// visibility timeout is left; a failed one is a warning and a counter. Rounds run side by
    /// side (a lease is in at most one), each bounded by `Self::round_limit`.
    pub async fn heartbeat(&self, stop: tokio_util::sync::CancellationToken) {
        use futures_util::StreamExt as _;
        let spacing = self.spacing();
        let mut last_round = Instant::now();
        let mut rounds = futures_util::stream::FuturesUnordered::new();
        loop {
            // found and published under one lock: a lease admitted after this sees it and asks
            // for a new plan if it falls due sooner (the notification is kept until
            // the select below takes it)
            let next = {
                let mut table = self.table();
                let next = table.next_due(Instant::now());
                table.planned_due = next;
                next
            };
            let planned = next.map(|due| due.max(last_round + spacing));
            tokio::select! {
                () = stop.cancelled() => return,
                Some(()) = rounds.next(), if !rounds.is_empty() => continue,
                () = self.replan.notified() => continue,
                () = async { tokio::time::sleep_until(planned.expect("checked")).await }, if planned.is_some() => {}
            }
            last_round = Instant::now();
            rounds.push(self.extend_due());
        }
    }

    /// The visibility timeout receives ask for (and new leases are kept for).
    pub fn visibility(&self) -> Duration {
        self.table().visibility
    }

    /// Receives ask for `visibility` from now on (the queue's attribute changed); leases taken
    /// before keep the timeout their receive asked for.
    pub fn set_visibility(&self, visibility: Duration) {
        self.table().set_visibility(visibility);
    }

    /// The stamp of a receive sent now.
    pub fn stamp(&self) -> ReceiveStamp {
        ReceiveStamp { sent_at: Instant::now(), visibility: self.visibility().min(super::table::RECEIVE_VISIBILITY) }
    }

    /// Heartbeat rounds are at least this far apart, so that a busy pipeline (a receive every few
    /// ms, each lease due at its own instant) scans its leases a few times a second, not per
    /// receive.
    fn spacing(&self) -> Duration {
        (self.visibility() / 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// The longest one round of extensions may take: a quarter of the shortest visibility window
    /// (a receive's; the extensions went out with half of it left), at least a second, at most
    /// SQS's attempt time.
    fn round_limit(&self) -> Duration {
        let window = self.visibility().min(super::table::RECEIVE_VISIBILITY);
        (window / 4).clamp(Duration::from_secs(1), crate::limits::SQS_ATTEMPT_TIMEOUT)
    }

    /// One round of extensions, within `Self::round_limit`; the extensions not answered by then
    /// count as failed (tried again a moment later).
    pub async fn extend_due(&self) {
        let now = Instant::now();
        let (round, due, lapsed) = self.table().start_round(now);
        if !lapsed.is_empty() {
            self.metrics.expired.increment(lapsed.len() as u64);
            tracing::warn!(pipeline = %self.pipeline, messages = lapsed.len(), "messages reached lease.max_lease_secs (or SQS's 12-hour limit): no longer extended, they become visible when their visibility timeout ends");
        }
        if due.is_empty() {
            return;
        }
        // whatever ends this round (an answer, the limit, the heartbeat's stop), its leases are
        // free to be settled and extended again
        let _done = RoundDone { keeper: self, round, due: &due };
        let entries: Vec<(&str, i32)> = due.iter().map(|e| (e.receipt_handle.as_str(), e.visibility_secs)).collect();
        let call = self.queue.change_visibility(&entries);
        tokio::pin!(call);
        let failed = match tokio::time::timeout(self.round_limit(), &mut call).await {
            Ok(failed) => failed,
            Err(_) => {
                // past the limit: a later round tries again; the call is not dropped, since it
                // may still land, and a settlement of these leases must land after it (issue 30:
                // a release went first and the late extension hid the message again)
                self.table().round_late(round, &due, now);
                self.metrics.extensions_failed.increment(due.len() as u64);
                tracing::warn!(pipeline = %self.pipeline, messages = due.len(), "an extension of leased messages was not answered within the round's limit; trying again in a moment");
                self.replan.notify_one();
                let _ = call.await;
                return;
            }
        };
        self.record_extensions(&due, failed, now);
    }

    /// What SQS answered to a round: each lease extended, to retry, or rejected for good; the
    /// spans and counters told.
    fn record_extensions(&self, due: &[Extension], failed: Vec<EntryFailure>, now: Instant) {
        let (rejections, retry): (Vec<EntryFailure>, Vec<EntryFailure>) =
            failed.into_iter().filter(|f| f.index < due.len()).partition(|f| f.permanent);
        let mut table = self.table();
        for (k, e) in due.iter().enumerate() {
            if rejections.iter().any(|f| f.index == k) {
                table.extension_rejected(e);
            } else if retry.iter().any(|f| f.index == k) {
                table.extension_failed(e, now);
            } else {
                table.extended(e, now);
            }
        }
        drop(table);
        if let Some(spans) = &self.spans {
            let mut extended = due
                .iter()
                .enumerate()
                .filter(|(k, _)| !rejections.iter().chain(&retry).any(|f| f.index == *k))
                .map(|(_, e)| e.message_id.as_str());
            spans.extended(&mut extended, due[0].visibility_secs);
        }
        let not_extended = rejections.len() + retry.len();
        self.metrics.extensions.increment((due.len() - not_extended) as u64);
        self.rejected("extend", &rejections);
        if not_extended > 0 {
            self.metrics.extensions_failed.increment(not_extended as u64);
        }
        if !retry.is_empty() {
            tracing::warn!(pipeline = %self.pipeline, messages = retry.len(), "could not extend the visibility of leased messages; trying again in a moment");
        }
    }
}

/// Marks a heartbeat round done when dropped, and wakes the settlements waiting for it.
struct RoundDone<'a> {
    keeper: &'a LeaseKeeper,
    round: u64,
    due: &'a [Extension],
}

impl Drop for RoundDone<'_> {
    fn drop(&mut self) {
        self.keeper.table().round_done(self.round, self.due);
        self.keeper.round_ended.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lease keeper's metrics for a test (a pipeline named `t`).
    fn metrics() -> LeaseMetrics {
        crate::metrics::PipelineMetrics::new("t", 1, 1, 1).lease
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// A lease taken after the queue's visibility timeout was lowered falls due long before the
    /// wake the heartbeat planned for the leases taken before (300 s: due at 150 s); the heartbeat
    /// must plan again, or the new lease's message reappears after 6 s while it is worked on
    /// (seen in tests/e2e/visibility_change.rs on a loaded machine: ten messages processed twice).
    #[tokio::test(start_paused = true)]
    async fn a_lease_due_sooner_than_the_planned_wake_is_extended_in_time() {
        use crate::sim::{SimConfig, SimQueue};
        use crate::sqs::Queue as _;
        let queue = Arc::new(SimQueue::new(SimConfig::new("http://sim/q", secs(300), 1)));
        queue.put("old", None);
        let keeper = Arc::new(LeaseKeeper::new(queue.clone(), secs(300), secs(3600), 20, metrics()));
        let stop = tokio_util::sync::CancellationToken::new();
        let heartbeat = tokio::spawn({
            let (keeper, stop) = (keeper.clone(), stop.clone());
            async move { keeper.heartbeat(stop).await }
        });
        let admit_one = |stamp: ReceiveStamp| {
            let (queue, keeper) = (queue.clone(), keeper.clone());
            async move {
                let got = queue.receive(Duration::ZERO, Some(stamp.visibility)).await.unwrap();
                let pairs: Vec<(&str, &str)> =
                    got.iter().map(|m| (m.message_id().unwrap(), m.receipt_handle().unwrap())).collect();
                keeper.admit(keeper.reserve().await, pairs, stamp);
            }
        };
        admit_one(keeper.stamp()).await;
        tokio::time::sleep(secs(1)).await;
        keeper.set_visibility(secs(6));
        queue.put("new", None);
        admit_one(keeper.stamp()).await;
        tokio::time::sleep(secs(20)).await;
        assert_eq!(
            queue.receive(Duration::ZERO, None).await.unwrap().len(),
            0,
            "the new lease was extended: still hidden"
        );
        assert!(queue.log().visibility_changes.len() >= 6, "{:?}", queue.log().visibility_changes);
        stop.cancel();
        heartbeat.await.unwrap();
    }

    #[tokio::test]
    async fn a_shrunk_room_takes_the_free_room_now_and_the_rest_as_it_comes_back() {
        use crate::sim::{SimConfig, SimQueue};
        let queue = Arc::new(SimQueue::new(SimConfig::new("http://sim/q", secs(30), 1)));
        let keeper = LeaseKeeper::new(queue, secs(30), secs(3600), 40, metrics());
        // two pollers hold a receive's room each (long polls out)
        let (a, b) = (keeper.reserve().await, keeper.reserve().await);
        keeper.set_room(10);
        assert_eq!(keeper.room.available_permits(), 0, "the 20 free permits are taken at once");
        drop((a, b));
        // the 10 still owed are taken by the next reservation
        let c = keeper.reserve().await;
        assert_eq!(keeper.room.available_permits(), 0);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), keeper.reserve()).await.is_err(),
            "room for one receive only"
        );
        drop(c);
        keeper.set_room(35);
        assert_eq!(keeper.room.available_permits(), 40, "in whole receives, up to max_outstanding");
    }

    #[tokio::test]
    async fn room_goes_with_each_new_lease_and_comes_back_when_it_ends() {
        use crate::sim::{SimConfig, SimQueue};
        use crate::sqs::Queue as _;
        let queue = Arc::new(SimQueue::new(SimConfig::new("http://sim/q", secs(30), 1)));
        for body in ["a", "b", "c"] {
            queue.put(body, None);
        }
        let keeper = LeaseKeeper::new(queue.clone(), secs(30), secs(3600), 20, metrics());
        let got = queue.receive(Duration::ZERO, None).await.unwrap();
        let pairs: Vec<(&str, &str)> =
            got.iter().map(|m| (m.message_id().unwrap(), m.receipt_handle().unwrap())).collect();
        // a receive of three, one of them seen twice (as a duplicate delivery would be)
        let mut with_duplicate = pairs.clone();
        with_duplicate.push(pairs[0]);
        let admitted = keeper.admit(keeper.reserve().await, with_duplicate, keeper.stamp());
        assert_eq!(admitted.iter().filter(|a| **a == Admission::New).count(), 3);
        assert_eq!(admitted[3], Admission::Duplicate);
        assert_eq!(keeper.outstanding(), 3);
        assert_eq!(keeper.room.available_permits(), 17, "room for the three leases only");
        let deleted = keeper.delete(&[pairs[0].0, pairs[1].0]).await;
        assert_eq!(deleted, vec![0, 1]);
        assert_eq!(keeper.room.available_permits(), 19);
        keeper.release(&[pairs[2].0]).await;
        assert_eq!((keeper.outstanding(), keeper.room.available_permits()), (0, 20));
        assert_eq!(queue.len(), 1, "the released one is back in the queue");
    }

    /// Issue 30: a receive answered with more than 10 messages put the whole reservation back;
    /// the room then allowed more than `max_outstanding`.
    #[tokio::test(start_paused = true)]
    async fn an_answer_larger_than_its_reservation_owes_the_difference() {
        use crate::sim::{SimConfig, SimQueue};
        let queue = Arc::new(SimQueue::new(SimConfig::new("http://sim/q", secs(30), 1)));
        let keeper = LeaseKeeper::new(queue, secs(30), secs(3600), 20, metrics());
        let ids: Vec<String> = (0..11).map(|i| format!("m{i}")).collect();
        let pairs: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "rh")).collect();
        let admitted = keeper.admit(keeper.reserve().await, pairs, keeper.stamp());
        assert_eq!(admitted.iter().filter(|a| **a == Admission::New).count(), 11);
        assert_eq!(keeper.room.available_permits(), 10, "the reservation's 10 are kept");
        // 11 leased of 20: no room for another whole receive (the 10 free pay the one owed first)
        assert!(
            tokio::time::timeout(Duration::from_secs(1), keeper.reserve()).await.is_err(),
            "room for a receive with 11 of 20 leased"
        );
    }

    /// Issue 30: a delay past SQS's 12-hour visibility limit was refused for good, and the
    /// message came back after its current visibility timeout; now it is shortened to the limit.
    #[tokio::test(start_paused = true)]
    async fn a_delay_past_twelve_hours_is_shortened_to_what_sqs_allows() {
        use crate::sim::{SimConfig, SimQueue};
        use crate::sqs::Queue as _;
        let queue = Arc::new(SimQueue::new(SimConfig::new("http://sim/q", secs(30), 1)));
        queue.put("a", None);
        let keeper = LeaseKeeper::new(queue.clone(), secs(30), secs(3600), 20, metrics());
        let stamp = keeper.stamp();
        let got = queue.receive(Duration::ZERO, None).await.unwrap();
        let id = got[0].message_id().unwrap().to_string();
        keeper.admit(keeper.reserve().await, [(id.as_str(), got[0].receipt_handle().unwrap())], stamp);
        // (still in flight: no heartbeat here)
        tokio::time::sleep(secs(20)).await;
        assert_eq!(keeper.release_after(&[(id.as_str(), 50_000)]).await, 1, "SQS took the change");
        let (_, _, asked) = *queue.log().visibility_changes.last().unwrap();
        assert!((43_150..=43_180).contains(&asked), "{asked} s: the 12 hours less the 20 s since the receive");
        tokio::time::sleep(secs(43_000)).await;
        assert!(queue.receive(Duration::ZERO, None).await.unwrap().is_empty(), "still hidden near 12 hours");
    }

    /// Issue 32: the byte budget. A receive reserves ten of the queue's largest messages; the
    /// messages it brought keep their own bytes and the rest goes back at once; a poller waits
    /// while the budget cannot cover another receive; bytes come back as the leases end.
    #[tokio::test(start_paused = true)]
    async fn the_byte_budget_reserves_a_receives_worth_and_keeps_what_the_messages_take() {
        use crate::sim::{SimConfig, SimQueue};
        let queue = Arc::new(SimQueue::new(SimConfig::new("http://sim/q", secs(30), 1)));
        // messages of at most 100 KiB: a receive reserves 10 × (100 + 2) KiB = 1,020 KiB; a
        // budget of 2,500 KiB holds two receives at once
        let keeper =
            LeaseKeeper::new(queue, secs(30), secs(3600), 1000, metrics()).with_byte_budget(2500 * 1024, 100 * 1024);
        assert_eq!(keeper.receives_in_budget(), Some(2));
        let first = keeper.reserve().await;
        let second = keeper.reserve().await;
        assert_eq!(keeper.bytes.kib.available_permits(), 2500 - 2 * 1020);
        assert!(
            tokio::time::timeout(Duration::from_secs(60), keeper.reserve()).await.is_err(),
            "a third receive while two reserve the budget"
        );
        // the first brought three messages of 50 KiB (52 KiB each with the overhead) and a
        // duplicate of one of them: 156 KiB stay with the leases, the rest comes back
        let ids: Vec<String> = (0..3).map(|i| format!("m{i}")).collect();
        let mut received: Vec<(&str, &str, usize)> = ids.iter().map(|id| (id.as_str(), "rh", 50 * 1024)).collect();
        received.push((ids[0].as_str(), "rh2", 50 * 1024));
        keeper.admit_sized(first, received, keeper.stamp());
        assert_eq!(keeper.bytes.kib.available_permits(), 2500 - 1020 - 156);
        // the second brought nothing: all of it back; now a third receive fits
        keeper.admit_sized(second, Vec::<(&str, &str, usize)>::new(), keeper.stamp());
        let third = tokio::time::timeout(Duration::from_secs(1), keeper.reserve()).await.expect("room for a receive");
        keeper.admit_sized(third, Vec::<(&str, &str, usize)>::new(), keeper.stamp());
        assert_eq!(keeper.bytes.kib.available_permits(), 2500 - 156);
        // the leases end: their bytes come back
        keeper.delete(&[ids[0].as_str(), ids[1].as_str()]).await;
        keeper.release(&[ids[2].as_str()]).await;
        assert_eq!(keeper.bytes.kib.available_permits(), 2500);
    }

    /// A budget under one receive's worth is raised to it, and a receive that brings more than
    /// it reserved (SQS does not) owes the rest: the budget holds from the next receive on.
    #[tokio::test(start_paused = true)]
    async fn a_receive_over_its_byte_reservation_owes_the_difference() {
        use crate::sim::{SimConfig, SimQueue};
        let queue = Arc::new(SimQueue::new(SimConfig::new("http://sim/q", secs(30), 1)));
        let keeper = LeaseKeeper::new(queue, secs(30), secs(3600), 1000, metrics()).with_byte_budget(1024, 10 * 1024);
        assert_eq!(keeper.receives_in_budget(), Some(1), "raised to one receive's worth (120 KiB)");
        let ids: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
        let received: Vec<(&str, &str, usize)> = ids.iter().map(|id| (id.as_str(), "rh", 20 * 1024)).collect();
        keeper.admit_sized(keeper.reserve().await, received, keeper.stamp());
        assert!(
            tokio::time::timeout(Duration::from_secs(60), keeper.reserve()).await.is_err(),
            "room for a receive while 220 KiB of a 120 KiB budget are leased"
        );
        let all: Vec<&str> = ids.iter().map(String::as_str).collect();
        keeper.release(&all).await;
        assert_eq!(keeper.bytes.kib.available_permits(), 120, "the debt paid, the budget whole again");
    }

    /// Issue 32: a fetched large payload takes its size of the byte budget with its lease: what
    /// is free now and owed beyond, so no receive is sent until it is settled; it all comes back
    /// with the lease.
    #[tokio::test(start_paused = true)]
    async fn a_large_payload_takes_its_size_of_the_byte_budget_with_its_lease() {
        use crate::sim::{SimConfig, SimQueue};
        let queue = Arc::new(SimQueue::new(SimConfig::new("http://sim/q", secs(30), 1)));
        // a receive reserves 10 × (2 + 2) KiB = 40 KiB; the budget is 1,000 KiB
        let keeper =
            LeaseKeeper::new(queue, secs(30), secs(3600), 1000, metrics()).with_byte_budget(1000 * 1024, 2 * 1024);
        keeper.admit_sized(keeper.reserve().await, [("p1", "rh", 300), ("p2", "rh", 300)], keeper.stamp());
        assert_eq!(keeper.bytes.kib.available_permits(), 1000 - 6);
        keeper.charge_payload("p1", 100 * 1024);
        assert_eq!(keeper.bytes.kib.available_permits(), 1000 - 6 - 100);
        // a payload past what is free: all of it taken, the rest owed; no receive fits meanwhile
        keeper.charge_payload("p2", 2000 * 1024);
        assert_eq!(keeper.bytes.kib.available_permits(), 0);
        assert!(
            tokio::time::timeout(Duration::from_secs(60), keeper.reserve()).await.is_err(),
            "a receive while the payloads hold more than the budget"
        );
        keeper.charge_payload("gone", 50 * 1024); // not leased: nothing taken
        keeper.release(&["p1"]).await;
        assert_eq!(keeper.bytes.kib.available_permits(), 0, "p1's bytes pay p2's debt first");
        keeper.release(&["p2"]).await;
        assert_eq!(keeper.bytes.kib.available_permits(), 1000, "every byte back, the debt paid");
    }

    /// The gauge counts what reservations and leases hold, not what the semaphore has lent to a
    /// receive still waiting for its bytes: a waiter given up (a poller retired, a drain) must
    /// leave the gauge where it was (the simulation found `sqs_poller_in_flight_bytes` stuck at
    /// the whole budget after a drain).
    #[tokio::test(start_paused = true)]
    async fn the_bytes_gauge_ignores_a_receive_that_gave_up_waiting() {
        use crate::sim::{SimConfig, SimQueue};
        use std::sync::atomic::Ordering::Relaxed;
        let queue = Arc::new(SimQueue::new(SimConfig::new("http://sim/q", secs(30), 1)));
        let metrics = crate::metrics::PipelineMetrics::new("t", 1, 1, 1);
        let status = metrics.status.clone();
        // a receive reserves 10 × (2 + 2) KiB = 40 KiB; the budget is one receive
        let keeper = Arc::new(
            LeaseKeeper::new(queue, secs(30), secs(3600), 1000, metrics.lease).with_byte_budget(40 * 1024, 2 * 1024),
        );
        let first = keeper.reserve().await;
        assert_eq!(status.in_flight_bytes.load(Relaxed), 40 * 1024);
        // a second poller waits for bytes
        let waiting = tokio::spawn({
            let keeper = keeper.clone();
            async move { keeper.reserve().await }
        });
        tokio::time::sleep(secs(1)).await;
        // the first receive brought one message (3 KiB with the overhead): 37 KiB come back and
        // go to the waiter, who still lacks 3
        keeper.admit_sized(first, [("m", "rh", 100)], keeper.stamp());
        assert_eq!(status.in_flight_bytes.load(Relaxed), 3 * 1024, "the lease's bytes, not the waiter's share");
        waiting.abort();
        assert!(waiting.await.is_err_and(|e| e.is_cancelled()));
        keeper.release(&["m"]).await;
        assert_eq!(status.in_flight_bytes.load(Relaxed), 0, "nothing taken once the lease ended");
        assert_eq!(keeper.bytes.kib.available_permits(), 40);
    }
}
