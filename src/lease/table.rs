//! The pure bookkeeping of leases: every clock reading is an argument ([`LeaseTable`]).

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::limits::MAX_VISIBILITY_SECS;

/// SQS's limit on how long a receipt handle can be kept invisible, counted from its receive.
const SQS_LEASE_LIMIT: Duration = Duration::from_secs(MAX_VISIBILITY_SECS);

/// What the lease of a received message counts from: when its receive was sent, and the
/// visibility timeout that receive asked for (at most [`RECEIVE_VISIBILITY`]; the lease's
/// extensions then ask for the table's).
#[derive(Debug, Clone, Copy)]
pub struct ReceiveStamp {
    pub sent_at: Instant,
    pub visibility: Duration,
}

/// The longest visibility timeout a receive asks for. What a receive takes is hidden this long at
/// first, and its leases extend it to the pipeline's visibility timeout at half of it: a long
/// poll given up at shutdown (the service stops in a moment instead of waiting out
/// `wait_time_secs`) can only hide what SQS handed it for this long, whatever the queue's
/// timeout. A batch settled within half of it needs no extension at all.
pub const RECEIVE_VISIBILITY: Duration = Duration::from_secs(30);

impl Lease {
    fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms as u64)
    }

    fn visibility(&self) -> Duration {
        Duration::from_millis(self.visibility_ms as u64)
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// A receipt handle as a lease keeps it: a copy of its own from the receive until the message's
/// record is made, then the record's own bytes (the handle is in it verbatim), so a leased
/// message holds its handle once (issue 32: receipt handles are ~400 bytes on real SQS).
#[derive(Clone)]
pub struct Handle(HandleBytes);

#[derive(Clone)]
enum HandleBytes {
    Own(Box<str>),
    /// `record[start..end]`
    InRecord {
        record: Arc<str>,
        start: u32,
        end: u32,
    },
}

impl Handle {
    pub fn as_str(&self) -> &str {
        match &self.0 {
            HandleBytes::Own(s) => s,
            HandleBytes::InRecord { record, start, end } => &record[*start as usize..*end as usize],
        }
    }

    /// The same handle read from `record`, when the record carries it verbatim as its
    /// `receiptHandle` (a record made from another receive of the message carries another).
    fn within(&self, record: &Arc<str>) -> Option<Handle> {
        // a `"` inside a JSON string is escaped: this is the key, never a value's bytes
        const KEY: &str = "\"receiptHandle\":\"";
        let start = record.find(KEY)? + KEY.len();
        let end = start + self.as_str().len();
        let verbatim = record.get(start..end)? == self.as_str() && record[end..].starts_with('"');
        let (start, end) = (u32::try_from(start).ok()?, u32::try_from(end).ok()?);
        verbatim.then(|| Handle(HandleBytes::InRecord { record: record.clone(), start, end }))
    }
}

impl From<&str> for Handle {
    fn from(s: &str) -> Self {
        Handle(HandleBytes::Own(s.into()))
    }
}

impl PartialEq for Handle {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Handle {}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

/// One outstanding message.
#[derive(Debug, Clone)]
struct Lease {
    receipt_handle: Handle,
    /// What it takes of the byte budget, KiB (its receive's bytes for it).
    kib: u32,
    /// The visibility timeout its extensions ask for, in milliseconds (the table's when it was
    /// received; milliseconds in 32 bits: a table holds thousands of leases).
    visibility_ms: u32,
    /// The visibility window it is in now, in milliseconds: the one its receive asked for (short,
    /// [`ReceiveStamp`]), then each extension's. The next extension falls due at half of it.
    window_ms: u32,
    /// The first receive of this lease: the maximum lease counts from here.
    leased_at: Instant,
    /// The receive of the current receipt handle: SQS's 12-hour limit counts from here.
    handle_received_at: Instant,
    /// Until when SQS keeps the message invisible (as far as the keeper knows).
    visible_until: Instant,
    /// The maximum lease was reached: no more extensions.
    lapsed: bool,
    /// SQS rejected an extension for good (the handle is no longer valid, the message no longer
    /// in flight): no more extensions until a new receive renews the lease.
    lost: bool,
    /// An extension failed: the next try waits until then.
    retry_at: Option<Instant>,
    /// The heartbeat round whose extension of this lease is in flight (rounds count from 1).
    extending: Option<NonZeroU64>,
    /// Rounds that gave up waiting for their extension of this lease (the round limit) while the
    /// call may still reach SQS: a settlement waits for them too. (A boxed slice: a lease is in
    /// a table of thousands, and this is almost always empty.)
    late: Box<[u64]>,
}

impl Lease {
    /// Extending is worth trying at `now`: not lapsed or lost, no extension in flight, still
    /// invisible (a lease whose visibility ran out waits for the message to be received again,
    /// which renews it), not backing off.
    fn extendable(&self, now: Instant) -> bool {
        !self.lapsed
            && !self.lost
            && self.extending.is_none()
            && self.visible_until > now
            && self.retry_at.is_none_or(|t| t <= now)
    }
}

/// Leases ended for one settling call.
pub(super) struct Ended {
    /// (index into the ids asked for, last receipt handle, when that handle was received: SQS's
    /// 12-hour limit counts from there)
    pub(super) entries: Vec<(usize, Handle, Instant)>,
    /// The earliest visibility end among them.
    pub(super) visible_until: Option<Instant>,
    /// Heartbeat rounds with an extension of one of them in flight: the call waits for them.
    pub(super) rounds: Vec<u64>,
    /// What they took of the byte budget, KiB: given back with their room.
    pub(super) kib: usize,
}

/// The longest visibility timeout SQS accepts for a handle received `since` ago: what is left of
/// its 12 hours, less a margin for the time between the receive's send and SQS's own receive.
pub(super) fn visibility_allowed(since: Duration) -> i32 {
    let left = SQS_LEASE_LIMIT.saturating_sub(since + VISIBILITY_LIMIT_MARGIN);
    left.as_secs() as i32
}

/// Kept short of SQS's 12-hour limit.
const VISIBILITY_LIMIT_MARGIN: Duration = Duration::from_secs(5);

/// The longest a settlement waits for an extension still in flight (the SQS client gives up on
/// its attempts well before; a call that never returns does not hold a settlement for good).
pub(super) const LATE_EXTENSION_WAIT: Duration = Duration::from_secs(60);

/// A settling call is not retried in the last second of the messages' invisibility.
pub(super) const SETTLE_MARGIN: Duration = Duration::from_secs(1);

/// Pause before an extension that failed is tried again.
const EXTENSION_RETRY: Duration = Duration::from_secs(1);

/// What [`LeaseTable::admit`] made of a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A new lease: the message goes on.
    New,
    /// The message is already leased: its receipt handle was replaced; this copy goes no further.
    Duplicate,
}

/// An extension the heartbeat should send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    pub message_id: String,
    pub receipt_handle: Handle,
    pub visibility_secs: i32,
}

/// The leases of one pipeline; pure (every clock reading is an argument).
#[derive(Debug)]
pub struct LeaseTable {
    /// The visibility timeout new receives ask for.
    pub(super) visibility: Duration,
    max_lease: Duration,
    leases: HashMap<Box<str>, Lease>,
    /// The number of the next heartbeat round (from 1).
    next_round: u64,
    /// Rounds whose extensions have not all been answered.
    rounds_in_flight: std::collections::BTreeSet<u64>,
    /// The earliest extension the heartbeat plans for (none: nothing to extend).
    pub(super) planned_due: Option<Instant>,
}

impl LeaseTable {
    pub fn new(visibility: Duration, max_lease: Duration) -> Self {
        LeaseTable {
            visibility,
            max_lease: max_lease.min(SQS_LEASE_LIMIT),
            leases: HashMap::new(),
            next_round: 1,
            rounds_in_flight: std::collections::BTreeSet::new(),
            planned_due: None,
        }
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// The ids of every lease, in no order.
    pub fn ids(&self) -> Vec<String> {
        self.leases.keys().map(|k| k.to_string()).collect()
    }

    /// The visibility timeout receives ask for from now on (leases taken before keep theirs).
    pub fn set_visibility(&mut self, visibility: Duration) {
        self.visibility = visibility;
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Takes a message returned by a receive sent at `sent_at` (SQS hid it for the visibility
    /// timeout at some point after that, so the lease counts from there: never too late). A
    /// message already leased keeps its lease; it takes the new receipt handle unless the lease
    /// holds one from a later receive (a slow receive must not put back a handle SQS no longer
    /// honours).
    pub fn admit(&mut self, message_id: &str, receipt_handle: &str, stamp: ReceiveStamp) -> Admission {
        self.admit_sized(message_id, receipt_handle, stamp, 0)
    }

    /// [`Self::admit`], the message taking `kib` of the byte budget while its lease lasts (a
    /// duplicate keeps its lease's own).
    pub fn admit_sized(&mut self, message_id: &str, receipt_handle: &str, stamp: ReceiveStamp, kib: u32) -> Admission {
        let ReceiveStamp { sent_at, visibility } = stamp;
        let visible_until = sent_at + visibility;
        match self.leases.get_mut(message_id) {
            Some(lease) => {
                if sent_at >= lease.handle_received_at {
                    lease.receipt_handle = receipt_handle.into();
                    lease.visibility_ms = millis(self.visibility.max(visibility));
                    lease.window_ms = millis(visibility);
                    lease.handle_received_at = sent_at;
                    lease.visible_until = visible_until;
                    lease.retry_at = None;
                    lease.lost = false;
                }
                Admission::Duplicate
            }
            None => {
                self.leases.insert(
                    message_id.into(),
                    Lease {
                        receipt_handle: receipt_handle.into(),
                        kib,
                        visibility_ms: millis(self.visibility.max(visibility)),
                        window_ms: millis(visibility),
                        leased_at: sent_at,
                        handle_received_at: sent_at,
                        visible_until,
                        lapsed: false,
                        lost: false,
                        retry_at: None,
                        extending: None,
                        late: Box::default(),
                    },
                );
                Admission::New
            }
        }
    }

    /// Adds `kib` to what a lease takes of the byte budget; `false` when it is not leased.
    pub(super) fn add_kib(&mut self, message_id: &str, kib: u32) -> bool {
        match self.leases.get_mut(message_id) {
            Some(l) => {
                l.kib = l.kib.saturating_add(kib);
                true
            }
            None => false,
        }
    }

    /// The message's record is made: its lease reads the receipt handle from it from now on
    /// (when it carries the lease's) and takes at least `kib` of the byte budget; returns how
    /// many KiB more it takes (0 when it took that much already or is not leased).
    pub(super) fn take_record(&mut self, message_id: &str, record: &Arc<str>, kib: u32) -> u32 {
        let Some(l) = self.leases.get_mut(message_id) else { return 0 };
        if let Some(shared) = l.receipt_handle.within(record) {
            l.receipt_handle = shared;
        }
        if l.kib < kib {
            std::mem::replace(&mut l.kib, kib).abs_diff(kib)
        } else {
            0
        }
    }

    /// The current receipt handle of a leased message.
    pub fn receipt_handle(&self, message_id: &str) -> Option<&str> {
        self.leases.get(message_id).map(|l| l.receipt_handle.as_str())
    }

    /// Ends a lease; returns its last receipt handle.
    pub fn end(&mut self, message_id: &str) -> Option<String> {
        self.end_lease(message_id).map(|l| l.receipt_handle.as_str().to_string())
    }

    /// Ends a lease: its last receipt handle, until when the message stays invisible, and the
    /// heartbeat round with an extension of it in flight, if any.
    pub(super) fn end_lease(&mut self, message_id: &str) -> Option<EndedLease> {
        let l = self.leases.remove(message_id)?;
        let rounds =
            l.extending.map(NonZeroU64::get).into_iter().chain(l.late).filter(|r| self.rounds_in_flight.contains(r));
        Some(EndedLease {
            receipt_handle: l.receipt_handle,
            visible_until: l.visible_until,
            rounds: rounds.collect(),
            received: l.handle_received_at,
            kib: l.kib,
        })
    }

    /// Whether any of `rounds` still has extensions in flight.
    pub(super) fn any_in_flight(&self, rounds: &[u64]) -> bool {
        rounds.iter().any(|r| self.rounds_in_flight.contains(r))
    }

    /// Starts a heartbeat round at `now`: the extensions due (see [`Self::due`]), marked in
    /// flight under the returned round number until [`Self::round_done`], and the leases that
    /// lapsed.
    pub fn start_round(&mut self, now: Instant) -> (u64, Vec<Extension>, Vec<String>) {
        let round = self.next_round;
        self.next_round += 1;
        let (due, lapsed) = self.due(now);
        if !due.is_empty() {
            self.rounds_in_flight.insert(round);
            for e in &due {
                if let Some(l) = self.leases.get_mut(e.message_id.as_str()) {
                    l.extending = NonZeroU64::new(round);
                }
            }
        }
        (round, due, lapsed)
    }

    /// A round's extensions were all answered (or given up): its leases may be extended and
    /// settled again.
    pub fn round_done(&mut self, round: u64, extensions: &[Extension]) {
        self.rounds_in_flight.remove(&round);
        for e in extensions {
            if let Some(l) = self.leases.get_mut(e.message_id.as_str()) {
                if l.extending == NonZeroU64::new(round) {
                    l.extending = None;
                }
                if l.late.contains(&round) {
                    l.late = l.late.iter().copied().filter(|&r| r != round).collect();
                }
            }
        }
    }

    /// A round reached its limit with its call unanswered: its extensions count as failed (tried
    /// again by a later round), but the round stays in flight until the call returns, since it
    /// may still reach SQS.
    pub fn round_late(&mut self, round: u64, extensions: &[Extension], now: Instant) {
        for e in extensions {
            self.extension_failed(e, now);
            if let Some(l) = self.leases.get_mut(e.message_id.as_str()) {
                if l.extending == NonZeroU64::new(round) {
                    l.extending = None;
                    let mut late = std::mem::take(&mut l.late).into_vec();
                    late.push(round);
                    l.late = late.into_boxed_slice();
                }
            }
        }
    }

    /// The extensions due at `now` (half the visibility timeout or less left), each for at most
    /// one visibility timeout and never past the maximum lease or SQS's 12-hour limit. Leases
    /// that reached their maximum are marked lapsed and returned in the second list.
    pub fn due(&mut self, now: Instant) -> (Vec<Extension>, Vec<String>) {
        let mut extend = Vec::new();
        let mut lapsed = Vec::new();
        for (id, lease) in &mut self.leases {
            if !lease.extendable(now) || lease.visible_until.saturating_duration_since(now) > lease.window() / 2 {
                continue;
            }
            let lease_end = (lease.leased_at + self.max_lease).min(lease.handle_received_at + SQS_LEASE_LIMIT);
            let room = lease_end.saturating_duration_since(now);
            // whole seconds only; less than one second left is no extension at all
            let secs = room.min(lease.visibility()).as_secs();
            if secs == 0 || now + Duration::from_secs(secs) <= lease.visible_until {
                lease.lapsed = true;
                lapsed.push(id.to_string());
                continue;
            }
            extend.push(Extension {
                message_id: id.to_string(),
                receipt_handle: lease.receipt_handle.clone(),
                visibility_secs: secs as i32,
            });
        }
        // in a fixed order (the map's is per process): the same leases make the same calls, so
        // that a simulation's seed replays
        extend.sort_unstable_by(|a, b| a.message_id.cmp(&b.message_id));
        lapsed.sort_unstable();
        (extend, lapsed)
    }

    /// Records that SQS accepted an extension sent at `sent_at` (ignored when the lease has ended
    /// or its receipt handle changed meanwhile).
    pub fn extended(&mut self, e: &Extension, sent_at: Instant) {
        if let Some(lease) = self.leases.get_mut(e.message_id.as_str()) {
            if lease.receipt_handle == e.receipt_handle {
                lease.visible_until = sent_at + Duration::from_secs(e.visibility_secs as u64);
                lease.window_ms = millis(Duration::from_secs(e.visibility_secs as u64));
            }
        }
    }

    /// Records that an extension sent at `now` failed: it is tried again a moment later, while
    /// the message is still invisible.
    pub fn extension_failed(&mut self, e: &Extension, now: Instant) {
        if let Some(lease) = self.leases.get_mut(e.message_id.as_str()) {
            if lease.receipt_handle == e.receipt_handle {
                lease.retry_at = Some(now + EXTENSION_RETRY.min(lease.window() / 4));
            }
        }
    }

    /// Records that SQS rejected an extension for good: the lease is lost (not extended again)
    /// until a new receive renews it.
    pub fn extension_rejected(&mut self, e: &Extension) {
        if let Some(lease) = self.leases.get_mut(e.message_id.as_str()) {
            if lease.receipt_handle == e.receipt_handle {
                lease.lost = true;
            }
        }
    }

    /// When the next extension may be due (`now` or later).
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        self.leases
            .values()
            .filter(|l| !l.lapsed && !l.lost && l.extending.is_none() && l.visible_until > now)
            .map(|l| {
                let due = l.visible_until.checked_sub(l.window() / 2).unwrap_or(now);
                due.max(l.retry_at.unwrap_or(due)).max(now)
            })
            .min()
    }
}

/// What [`LeaseTable::end_lease`] hands back of a lease.
pub(super) struct EndedLease {
    pub(super) receipt_handle: Handle,
    pub(super) visible_until: Instant,
    /// Heartbeat rounds with an extension of it in flight.
    pub(super) rounds: Vec<u64>,
    /// The receive of its receipt handle.
    pub(super) received: Instant,
    pub(super) kib: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// A table of 10,000 leases is 16,384 slots of key and lease (issue 32): 176 bytes a slot
    /// with a `String` key, an `Option<u64>` round and a `Vec` of late rounds.
    #[test]
    fn a_lease_table_slot_stays_small() {
        let slot = std::mem::size_of::<(Box<str>, Lease)>();
        assert!(slot <= 152, "{slot} bytes");
    }

    /// A receive sent at `sent_at` with the table's visibility timeout.
    fn at(sent_at: Instant, t: &LeaseTable) -> ReceiveStamp {
        ReceiveStamp { sent_at, visibility: t.visibility }
    }

    #[test]
    fn a_second_receive_replaces_the_handle_and_is_a_duplicate() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(secs(30), secs(3600));
        assert_eq!(t.admit("m", "rh1", at(t0, &t)), Admission::New);
        assert_eq!(t.admit("m", "rh2", at(t0 + secs(40), &t)), Admission::Duplicate);
        assert_eq!(t.len(), 1);
        assert_eq!(t.receipt_handle("m"), Some("rh2"));
        assert_eq!(t.end("m").as_deref(), Some("rh2"));
        assert!(t.is_empty());
        assert_eq!(t.admit("m", "rh3", at(t0 + secs(50), &t)), Admission::New, "after the lease ended it is new again");
    }

    #[test]
    fn a_lease_never_takes_a_handle_older_than_the_one_it_holds() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(secs(30), secs(3600));
        assert_eq!(t.admit("m", "rh2", at(t0 + secs(40), &t)), Admission::New);
        // the answer of an earlier receive, slow to arrive (a slow long poll, a slow fetch)
        assert_eq!(t.admit("m", "rh1", at(t0, &t)), Admission::Duplicate);
        assert_eq!(t.receipt_handle("m"), Some("rh2"), "the newer handle stays");
        assert_eq!(t.next_due(t0 + secs(40)), Some(t0 + secs(55)), "counted from the newer receive");
    }

    #[test]
    fn a_lease_counts_from_when_its_receive_was_sent() {
        let sent = Instant::now();
        let mut t = LeaseTable::new(secs(30), secs(3600));
        t.admit("m", "rh", at(sent, &t));
        // admitted 20 s after the receive was sent: already due
        assert_eq!(t.next_due(sent + secs(20)), Some(sent + secs(20)));
        assert_eq!(t.due(sent + secs(20)).0.len(), 1);
    }

    #[test]
    fn extensions_fall_due_at_half_the_visibility_timeout() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(secs(30), secs(3600));
        t.admit("m", "rh", at(t0, &t));
        assert_eq!(t.next_due(t0), Some(t0 + secs(15)));
        assert!(t.due(t0 + secs(14)).0.is_empty());
        let (due, lapsed) = t.due(t0 + secs(15));
        assert!(lapsed.is_empty());
        assert_eq!(due, vec![Extension { message_id: "m".into(), receipt_handle: "rh".into(), visibility_secs: 30 }]);
        t.extended(&due[0], t0 + secs(15));
        assert_eq!(t.next_due(t0 + secs(15)), Some(t0 + secs(30)));
        assert!(t.due(t0 + secs(29)).0.is_empty());
    }

    /// A receive asks for a short visibility (so that a long poll given up at shutdown hides what
    /// it took only briefly); the lease's first extension, at half of that, asks for the table's,
    /// and the next falls due at half of the table's.
    #[test]
    fn a_short_receive_visibility_is_extended_to_the_tables() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(secs(120), secs(3600));
        let stamp = ReceiveStamp { sent_at: t0, visibility: RECEIVE_VISIBILITY.min(t.visibility) };
        assert_eq!(stamp.visibility, secs(30));
        t.admit("m", "rh", stamp);
        assert_eq!(t.next_due(t0), Some(t0 + secs(15)), "half of the receive's 30 s");
        assert!(t.due(t0 + secs(14)).0.is_empty());
        let (due, _) = t.due(t0 + secs(15));
        assert_eq!(due[0].visibility_secs, 120, "the extension asks for the table's visibility");
        t.extended(&due[0], t0 + secs(15));
        assert_eq!(t.next_due(t0 + secs(15)), Some(t0 + secs(75)), "then half of 120 s");
    }

    #[test]
    fn the_maximum_lease_caps_extensions_then_lets_go() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(secs(30), secs(40));
        t.admit("m", "rh", at(t0, &t));
        let (due, _) = t.due(t0 + secs(15));
        assert_eq!(due[0].visibility_secs, 25, "up to the 40 s maximum, not a whole timeout");
        t.extended(&due[0], t0 + secs(15));
        let (due, lapsed) = t.due(t0 + secs(28));
        assert!(due.is_empty());
        assert_eq!(lapsed, vec!["m".to_string()]);
        assert_eq!(t.next_due(t0 + secs(28)), None, "a lapsed lease is not extended again");
        assert_eq!(t.len(), 1, "it stays leased until it is settled");
    }

    #[test]
    fn never_past_twelve_hours_from_the_receive() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(secs(600), secs(1_000_000));
        t.admit("m", "rh", at(t0, &t));
        let mut now = t0;
        let mut total = secs(600);
        loop {
            now += secs(300);
            let (due, lapsed) = t.due(now);
            if !lapsed.is_empty() {
                break;
            }
            for e in &due {
                t.extended(e, now);
                total = now - t0 + secs(e.visibility_secs as u64);
            }
        }
        assert!(total <= SQS_LEASE_LIMIT, "visible after {total:?}");
        assert!(total >= SQS_LEASE_LIMIT - secs(300));
    }

    #[test]
    fn a_stale_extension_does_not_touch_a_newer_handle() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(secs(30), secs(3600));
        t.admit("m", "rh1", at(t0, &t));
        let (due, _) = t.due(t0 + secs(15));
        t.admit("m", "rh2", at(t0 + secs(16), &t));
        t.extension_failed(&due[0], t0 + secs(16));
        assert_eq!(t.next_due(t0 + secs(16)), Some(t0 + secs(31)), "the new handle is still extended");
    }

    /// Once the message's record is made, the lease reads its receipt handle from the record
    /// (held once); a record from another receive of the message leaves the lease's own copy.
    #[test]
    fn a_lease_reads_its_handle_from_the_messages_record() {
        let mut t = LeaseTable::new(secs(30), secs(3600));
        let sent = Instant::now();
        t.admit("m", "AQEB+handle/0==", at(sent, &t));
        t.admit("n", "rh-n", at(sent, &t));
        let record: Arc<str> =
            r#"{"messageId":"m","receiptHandle":"AQEB+handle/0==","body":"\"receiptHandle\":\"x"}"#.into();
        let other: Arc<str> = r#"{"messageId":"n","receiptHandle":"rh-n-older","body":""}"#.into();
        t.take_record("m", &record, 0);
        t.take_record("n", &other, 0);
        let handle = t.receipt_handle("m").unwrap();
        assert_eq!(handle, "AQEB+handle/0==");
        let within = record.as_ptr() as usize..record.as_ptr() as usize + record.len();
        assert!(within.contains(&(handle.as_ptr() as usize)), "read from the record");
        assert_eq!(t.receipt_handle("n"), Some("rh-n"), "another receive's record: the lease's own copy");
        let n = t.receipt_handle("n").unwrap().as_ptr() as usize;
        assert!(!(other.as_ptr() as usize..other.as_ptr() as usize + other.len()).contains(&n));
        // the heartbeat extends with it, and a newer receive replaces it as before
        let (_, due, _) = t.start_round(sent + secs(16));
        assert!(due.iter().any(|e| e.message_id == "m" && e.receipt_handle.as_str() == "AQEB+handle/0=="));
        t.admit("m", "rh-m-2", at(sent + secs(20), &t));
        assert_eq!(t.end("m").as_deref(), Some("rh-m-2"));
    }

    #[test]
    fn a_failed_extension_is_tried_again_while_the_message_is_invisible() {
        let t0 = Instant::now();
        let mut t = LeaseTable::new(secs(30), secs(3600));
        t.admit("m", "rh", at(t0, &t));
        let (due, _) = t.due(t0 + secs(15));
        t.extension_failed(&due[0], t0 + secs(15));
        assert!(t.due(t0 + secs(15)).0.is_empty(), "not at once");
        assert_eq!(t.next_due(t0 + secs(15)), Some(t0 + secs(16)));
        assert_eq!(t.due(t0 + secs(16)).0.len(), 1, "a second later");
        // the visibility ran out: nothing to extend until the message is received again
        assert!(t.due(t0 + secs(31)).0.is_empty());
        assert_eq!(t.next_due(t0 + secs(31)), None);
        t.admit("m", "rh2", at(t0 + secs(32), &t));
        assert_eq!(t.next_due(t0 + secs(32)), Some(t0 + secs(47)), "a new receive renews the lease");
    }
}
