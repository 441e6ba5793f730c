//! How many batches may be in flight to the target at once.
//!
//! `target.concurrency = "fixed"` (the default): `max_concurrency`, always.
//! `"adaptive"`: a limit between `min_concurrency` and `max_concurrency` that follows the
//! worker. Its latency half is [`tower_acc::Vegas`] (TCP Vegas as in Netflix's
//! concurrency-limits): the queue the worker builds is estimated from a window's mean batch time
//! against the shortest seen (`limit × (1 − shortest / this one)`); a short queue grows the
//! limit, a long one shrinks it by a tenth — once per window of about one batch time (see
//! `Window`). Its back-pressure half is ours: a throttle (429/503, a Lambda throttle), a
//! timeout or a refused connection sets a *ceiling* one below the calls in flight when it came
//! back (at most halving the limit; each refused call of a burst takes it one lower), and
//! shrinks the Vegas estimate by a tenth too (at the window's end). The
//! ceiling holds while pushback keeps coming and is lifted [`CEILING_HOLD`] after the last one,
//! so a worker whose capacity came back is found again (one probe past the old ceiling then).
//!
//! [`AdaptiveLimit`] is the pure decision (time is an argument); [`Slots`] is the semaphore
//! whose size follows it — one pipeline's, or a pool's that several pipelines share by priority
//! and weight ([`entitlements`] is that pure rule) — and tells each pipeline's lease keeper the
//! room its pollers may fill.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tower_acc::Algorithm;

/// How long a pushback ceiling holds after the last pushback.
pub const CEILING_HOLD: Duration = Duration::from_secs(30);

/// What one call of the target said about its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// It answered after this long (whatever the answer: the worker worked).
    Answered(Duration),
    /// It pushed back: a throttle, a timeout, no connection, a 5xx.
    Pushback,
}

/// The adaptive limit's state.
#[derive(Debug, Clone)]
pub struct AdaptiveLimit {
    vegas: tower_acc::Vegas,
    floor: usize,
    max: usize,
    /// The pushback ceiling and when the last pushback came.
    ceiling: Option<(usize, Instant)>,
    /// The samples since Vegas was last told.
    window: Window,
}

/// The calls of one window: Vegas is told once per window, not once per call.
///
/// A batch's time is known only when it ends, one round trip after the limit it ran under was
/// set: told per call, Vegas adds (or takes) a step for every batch of that round trip before
/// the first batch run under the new limit comes back, and the limit swings from the floor to
/// several times the worker's capacity and back (seen against a real worker: 4 → 44 → 4 every
/// 1.7 s). As TCP Vegas adjusts once per round trip, and Netflix's `WindowedLimit` wraps its
/// limiters, the window closes once it has lasted its own mean batch time (at least
/// [`MIN_WINDOW`]) and Vegas gets its mean time and the most batches that were in flight.
#[derive(Debug, Clone)]
struct Window {
    started: Instant,
    answered: u32,
    took: Duration,
    in_flight: usize,
    pushback: bool,
}

/// The shortest window.
const MIN_WINDOW: Duration = Duration::from_millis(100);

impl Window {
    fn new(now: Instant) -> Self {
        Window { started: now, answered: 0, took: Duration::ZERO, in_flight: 0, pushback: false }
    }

    fn mean(&self) -> Option<Duration> {
        (self.answered > 0).then(|| self.took / self.answered)
    }
}

/// Vegas's queue thresholds, in batches: grow while fewer than `alpha` wait at the worker, shrink
/// past `beta` (it settles one to three batches past the worker's capacity). Vegas's defaults
/// (3 and 6 × log10 of the limit) suit limits in the hundreds; a worker of a few slots would carry
/// a queue of half its size before they react.
fn alpha(limit: usize) -> usize {
    log10(limit)
}
fn beta(limit: usize) -> usize {
    3 * log10(limit)
}
fn log10(limit: usize) -> usize {
    ((limit as f64).log10() as usize).max(1)
}
fn grow(limit: f64) -> f64 {
    limit + 1.0
}
fn shrink(limit: f64) -> f64 {
    limit * 0.9
}

impl AdaptiveLimit {
    /// Starts at the floor, as TCP does at one segment: the worker's capacity is found, not assumed.
    pub fn new(floor: usize, max: usize) -> Self {
        let floor = floor.clamp(1, max.max(1));
        let vegas = tower_acc::Vegas::builder()
            .initial_limit(floor)
            .max_limit(max)
            .alpha(alpha)
            .beta(beta)
            .increase(grow)
            .decrease(shrink)
            // the shortest time is learned again every ~100 × limit windows (Vegas's default of
            // 30 × limit re-learns it under load too often, and the limit creeps up each time)
            .probe_multiplier(100)
            .build();
        AdaptiveLimit { vegas, floor, max, ceiling: None, window: Window::new(Instant::now()) }
    }

    /// The limit now.
    pub fn limit(&self, now: Instant) -> usize {
        let ceiling = match self.ceiling {
            Some((c, at)) if now.saturating_duration_since(at) < CEILING_HOLD => c,
            _ => self.max,
        };
        self.vegas.max_concurrency().min(ceiling).clamp(self.floor, self.max)
    }

    /// One call's signal; `in_flight`: the calls of the target in flight when it came back,
    /// itself included (calls, not slots: a slot is also held while its batch is acknowledged);
    /// `sent_with`: the calls in flight when it was sent, itself included.
    pub fn observe(&mut self, signal: Signal, in_flight: usize, sent_with: usize, now: Instant) {
        if self.window.answered == 0 && !self.window.pushback {
            // the first call of a window starts it (an idle spell is not part of it)
            self.window = Window::new(now);
        }
        self.window.in_flight = self.window.in_flight.max(in_flight);
        match signal {
            Signal::Answered(took) => {
                self.window.answered += 1;
                self.window.took += took.max(Duration::from_micros(1));
            }
            Signal::Pushback => {
                // the ceiling acts at once; Vegas hears of it at the window's end
                let current = self.limit(now);
                if let Some((c, at)) = self.ceiling.filter(|(_, at)| now.saturating_duration_since(*at) < CEILING_HOLD)
                {
                    if sent_with > current {
                        // sent when more calls were out than the ceiling now allows: the ceiling
                        // already answers it (a late refusal of an earlier burst must not take
                        // the limit below what the worker takes; it keeps the ceiling held)
                        let _ = at;
                        self.ceiling = Some((c, now));
                        self.window.pushback = true;
                        return;
                    }
                }
                // one pushback at most halves the limit: the count of calls at the worker is an
                // estimate, and a ceiling set too low would hold for CEILING_HOLD (a pushback
                // burst brings it down further, one refused call after another)
                let below = in_flight.saturating_sub(1).min(current).max(current / 2).max(self.floor);
                let ceiling = match self.ceiling {
                    Some((c, at)) if now.saturating_duration_since(at) < CEILING_HOLD => c.min(below),
                    _ => below,
                };
                self.ceiling = Some((ceiling, now));
                self.window.pushback = true;
            }
        }
        let Some(mean) = self.window.mean() else {
            // pushback alone: nothing timed to tell Vegas (the ceiling holds the limit)
            if now.saturating_duration_since(self.window.started) >= MIN_WINDOW {
                self.window = Window::new(now);
            }
            return;
        };
        if now.saturating_duration_since(self.window.started) >= mean.max(MIN_WINDOW) {
            // Vegas does not count batches queued behind our own limit: only ours in flight
            self.vegas.update(mean, self.window.in_flight, self.window.pushback, false);
            self.window = Window::new(now);
        }
    }
}

/// The concurrency slots of one pipeline, or of a shared pool (`[pools.NAME]`): a permit per
/// batch in flight, as many as the limit, handed to the pipelines that take part ([`Member`]) by
/// priority and weight (`Slots::grant`).
pub struct Slots {
    inner: Mutex<SlotsInner>,
    /// The limit is adaptive (fixed at construction).
    adaptive: bool,
    /// Wakes waiting acquires when a slot is kept for a moment (they look again when it ends).
    reserved: tokio::sync::Notify,
}

/// How a pipeline takes part in its slots ([`Slots::join`]).
pub struct MemberSettings {
    /// Strict: a member gets a slot only when no member of a higher priority waits for one.
    pub priority: u32,
    /// Among members of one priority that all wait, slots in flight in proportion to weight.
    pub weight: u32,
    /// The member's own most batches in flight (`target.max_concurrency` in a pool).
    pub max: usize,
    pub batch_size: usize,
    /// The pipeline's `sqs_poller_concurrency_limit` and admin status, told the limit.
    pub gauge: metrics::Gauge,
    pub status: Arc<crate::status::Status>,
    /// Told the room, in messages, that the member's share of the limit leaves the pollers
    /// (`None`: the room stays as configured).
    pub room: Option<Room>,
}

/// Told the room, in messages, the pollers of a member may fill.
pub type Room = Arc<dyn Fn(usize) + Send + Sync>;

struct MemberState {
    settings: MemberSettings,
    in_flight: usize,
    /// Its acquires waiting for a slot, oldest first (a dropped one is skipped).
    waiting: VecDeque<oneshot::Sender<()>>,
    /// The room last told.
    room: usize,
    /// When it was last given a slot.
    last_grant: Option<Instant>,
}

impl MemberState {
    fn waits(&self) -> bool {
        self.waiting.iter().any(|w| !w.is_closed())
    }
}

struct SlotsInner {
    in_flight: usize,
    /// Calls of the target in flight ([`Member::call`] to [`Member::observe`]).
    calls_in_flight: usize,
    adaptive: Option<AdaptiveLimit>,
    fixed: usize,
    /// The limit last published.
    published: usize,
    /// By member id; a member that left is `None`.
    members: Vec<Option<MemberState>>,
    /// A slot is kept for a member served a moment ago until then ([`SlotsInner::grant`]).
    reserved_until: Option<Instant>,
}

impl SlotsInner {
    fn limit(&self, now: Instant) -> usize {
        self.adaptive.as_ref().map_or(self.fixed, |a| a.limit(now))
    }

    /// Hands free slots to waiting members: the highest priority first; within it, the member
    /// with the fewest in flight for its weight.
    ///
    /// A pipeline asks for one slot at a time (its batcher submits one batch, then cuts the next),
    /// so a backlogged member does not wait in the instant after it was served. A member served
    /// within [`REGRANT`] counts as waiting: when it would be chosen, the slot is kept for it
    /// until then (`reserved_until`), so that slots freed together do not all go to a lower
    /// priority or a smaller weight.
    fn grant(&mut self, now: Instant) {
        let limit = self.limit(now);
        self.reserved_until = None;
        while self.in_flight < limit {
            let mut best: Option<usize> = None;
            for (id, m) in self.members.iter().enumerate() {
                let Some(m) = m else { continue };
                let back_soon = m.last_grant.is_some_and(|at| now.saturating_duration_since(at) < REGRANT);
                if m.in_flight >= m.settings.max || !(m.waits() || back_soon) {
                    continue;
                }
                let better = match best.and_then(|b| self.members[b].as_ref()) {
                    None => true,
                    Some(b) => {
                        let (mw, bw) = (m.settings.weight.max(1) as usize, b.settings.weight.max(1) as usize);
                        m.settings.priority > b.settings.priority
                            || (m.settings.priority == b.settings.priority && m.in_flight * bw < b.in_flight * mw)
                    }
                };
                if better {
                    best = Some(id);
                }
            }
            let Some(id) = best else { return };
            let m = self.members[id].as_mut().expect("chosen among the members");
            let mut granted = false;
            while let Some(w) = m.waiting.pop_front() {
                if w.send(()).is_ok() {
                    granted = true;
                    break;
                }
            }
            if !granted {
                // kept for a member served a moment ago
                self.reserved_until = m.last_grant.map(|at| at + REGRANT);
                return;
            }
            m.in_flight += 1;
            m.last_grant = Some(now);
            self.in_flight += 1;
        }
    }
}

/// How long a member just served counts as waiting for its next slot ([`SlotsInner::grant`]).
const REGRANT: Duration = Duration::from_millis(20);

/// A pipeline's place in its slots; it leaves them when dropped.
pub struct Member {
    slots: Arc<Slots>,
    id: usize,
}

/// One call of the target in flight ([`Member::call`]).
#[must_use]
pub struct Call {
    /// The calls in flight when it was sent, itself included (adaptive limits only).
    sent_with: usize,
}

/// One batch's slot; give it back with [`Member::release`].
#[must_use]
pub struct Slot {
    _taken: (),
}

/// A batch's slot while it is dispatched: lent back to the pipeline (or its pool) while the
/// circuit breaker holds the batch, taken again before the target is called, so that held
/// batches do not starve the pool's other pipelines. Its fleet slot
/// (`target.fleet_max_concurrency`) goes and comes back with it: a batch the breaker holds must
/// not keep the probe it waits for from a fleet slot.
pub struct SlotHold<'a> {
    member: &'a Member,
    slot: Option<Slot>,
    fleet: Option<(Arc<crate::fleet::FleetSlots>, Option<crate::fleet::FleetSlot>)>,
}

impl<'a> SlotHold<'a> {
    pub fn new(member: &'a Member, slot: Slot) -> Self {
        SlotHold { member, slot: Some(slot), fleet: None }
    }

    /// With the fleet slot taken after the local one.
    pub fn with_fleet(mut self, fleet: Option<(Arc<crate::fleet::FleetSlots>, crate::fleet::FleetSlot)>) -> Self {
        self.fleet = fleet.map(|(slots, slot)| (slots, Some(slot)));
        self
    }

    /// Gives the slot back for a while (no-op when already lent), the fleet slot too.
    pub fn lend(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.member.release(slot);
        }
        if let Some((_, slot)) = self.fleet.as_mut() {
            drop(slot.take());
        }
    }

    /// Takes a slot again (at once when it was not lent), then a fleet slot.
    pub async fn reclaim(&mut self) {
        if self.slot.is_none() {
            self.slot = Some(self.member.acquire().await);
        }
        if let Some((slots, slot @ None)) = self.fleet.as_mut() {
            *slot = Some(slots.acquire().await);
        }
    }

    /// Whether it holds its slot now.
    pub fn holds(&self) -> bool {
        self.slot.is_some()
    }

    /// The batch ended: the slot goes back, if it holds one.
    pub fn release(mut self) {
        self.lend();
    }
}

/// The share of `limit` each member is entitled to now, in batches: priority levels from the
/// highest take what they use (in flight and waiting) and leave the rest to the next level;
/// within a level, a member is entitled to its weight's part of what is left, counted among
/// the members of the level that use slots and itself. `members`: (priority, weight, max,
/// used). Pure, for the rooms the pollers may fill.
pub fn entitlements(limit: usize, members: &[(u32, u32, usize, usize)]) -> Vec<usize> {
    let mut out = vec![0; members.len()];
    let mut levels: Vec<u32> = members.iter().map(|m| m.0).collect();
    levels.sort_unstable_by(|a, b| b.cmp(a));
    levels.dedup();
    let mut left = limit;
    for level in levels {
        let at: Vec<usize> = (0..members.len()).filter(|&i| members[i].0 == level).collect();
        let busy_weight: usize = at.iter().filter(|&&i| members[i].3 > 0).map(|&i| members[i].1.max(1) as usize).sum();
        for &i in &at {
            let (_, w, max, used) = members[i];
            let w = w.max(1) as usize;
            let among = if used > 0 { busy_weight } else { busy_weight + w };
            out[i] = (left * w / among.max(1)).min(max);
        }
        // what the level uses, shared by weight and capped by each one's use (water-filling)
        let mut open: Vec<usize> = at.iter().copied().filter(|&i| members[i].3 > 0).collect();
        let mut budget = left;
        let mut used_total = 0;
        loop {
            let weight: usize = open.iter().map(|&i| members[i].1.max(1) as usize).sum();
            if open.is_empty() || budget == 0 {
                break;
            }
            let (done, rest): (Vec<usize>, Vec<usize>) = open.iter().partition(|&&i| {
                let (_, w, max, used) = members[i];
                used.min(max) <= budget * w.max(1) as usize / weight
            });
            if done.is_empty() {
                // every one wants more than its part: they take the budget between them
                used_total += budget;
                break;
            }
            for i in done {
                let (_, _, max, used) = members[i];
                budget -= used.min(max).min(budget);
                used_total += used.min(max);
            }
            open = rest;
        }
        left = left.saturating_sub(used_total);
    }
    out
}

impl Slots {
    /// `adaptive`: `Some(floor)`; else fixed at `max`.
    pub fn new(max: usize, adaptive: Option<usize>) -> Self {
        let adaptive = adaptive.map(|floor| AdaptiveLimit::new(floor, max));
        let inner = SlotsInner {
            in_flight: 0,
            calls_in_flight: 0,
            published: 0,
            fixed: max,
            members: Vec::new(),
            reserved_until: None,
            adaptive,
        };
        let published = inner.limit(Instant::now());
        Slots {
            adaptive: inner.adaptive.is_some(),
            inner: Mutex::new(SlotsInner { published, ..inner }),
            reserved: tokio::sync::Notify::new(),
        }
    }

    /// A pipeline joins: it is told the limit (and its room) now and at each change.
    pub fn join(self: &Arc<Self>, settings: MemberSettings) -> Member {
        let mut s = self.inner();
        let id = s.members.len();
        settings.status.adaptive.store(self.adaptive, std::sync::atomic::Ordering::Relaxed);
        s.members.push(Some(MemberState {
            settings,
            in_flight: 0,
            waiting: VecDeque::new(),
            room: usize::MAX,
            last_grant: None,
        }));
        // every member hears the limit and its room from the start
        s.published = usize::MAX;
        self.publish(s);
        Member { slots: self.clone(), id }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, SlotsInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.inner().limit(Instant::now())
    }

    /// Batches in flight now, of every member.
    pub fn in_flight(&self) -> usize {
        self.inner().in_flight
    }

    pub fn is_adaptive(&self) -> bool {
        self.adaptive
    }

    /// Publishes the limit to every member when it changed, and each member's room when its
    /// entitlement changed; hands out the slots that are free.
    fn publish(&self, mut s: std::sync::MutexGuard<'_, SlotsInner>) {
        let now = Instant::now();
        s.grant(now);
        if s.reserved_until.is_some() {
            self.reserved.notify_waiters();
        }
        let limit = s.limit(now);
        if limit != s.published {
            s.published = limit;
            for m in s.members.iter().flatten() {
                m.settings.gauge.set(limit as f64);
                m.settings.status.concurrency_limit.store(limit, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if s.members.iter().flatten().all(|m| m.settings.room.is_none()) {
            return;
        }
        let shares: Vec<(u32, u32, usize, usize)> = s
            .members
            .iter()
            .flatten()
            .map(|m| (m.settings.priority, m.settings.weight, m.settings.max, m.in_flight + usize::from(m.waits())))
            .collect();
        let shares = entitlements(limit, &shares);
        let mut tell: Vec<(Room, usize)> = Vec::new();
        let shared = s.members.iter().flatten().count() > 1;
        for (m, share) in s.members.iter_mut().flatten().zip(shares) {
            let Some(room) = &m.settings.room else { continue };
            // room for the batches of its share and one receive (a poller reserves room for a
            // whole receive); in a shared pool as many batches again,
            // received for when they end (a backlogged member has its next batches ready when its
            // slots come free, or they go to another member)
            let batches = if shared { 2 * share } else { share };
            let messages = batches.saturating_mul(m.settings.batch_size) + crate::limits::RECEIVE_MAX;
            if messages != m.room {
                m.room = messages;
                tell.push((room.clone(), messages));
            }
        }
        drop(s);
        for (room, messages) in tell {
            room(messages);
        }
    }
}

impl Member {
    /// The limit now (of the pool, when shared).
    pub fn limit(&self) -> usize {
        self.slots.limit()
    }

    /// Batches in flight now (of the pool, when shared: the worker's load).
    pub fn in_flight(&self) -> usize {
        self.slots.in_flight()
    }

    /// (batches in flight, the most allowed) for the autoscaler: the member's own when it is at
    /// its own most (`target.max_concurrency` in a pool), else the pool's.
    pub fn saturation(&self) -> (usize, usize) {
        let s = self.slots.inner();
        let limit = s.limit(Instant::now());
        match s.members[self.id].as_ref() {
            Some(m) if m.in_flight >= m.settings.max => (m.in_flight, m.settings.max),
            _ => (s.in_flight, limit),
        }
    }

    pub fn is_adaptive(&self) -> bool {
        self.slots.adaptive
    }

    /// Waits for a slot.
    pub async fn acquire(&self) -> Slot {
        /// Gives back a slot granted to an acquire that was dropped before it saw it.
        struct Pending<'a> {
            rx: Option<oneshot::Receiver<()>>,
            member: &'a Member,
        }
        impl Drop for Pending<'_> {
            fn drop(&mut self) {
                if let Some(mut rx) = self.rx.take() {
                    rx.close();
                    if rx.try_recv().is_ok() {
                        self.member.release(Slot { _taken: () });
                    }
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut s = self.slots.inner();
            s.members[self.id].as_mut().expect("a member in its slots").waiting.push_back(tx);
            self.slots.publish(s);
        }
        let mut pending = Pending { rx: Some(rx), member: self };
        loop {
            let reserved = self.slots.reserved.notified();
            tokio::pin!(reserved);
            reserved.as_mut().enable();
            // a ceiling lifts with time, not with a release: look again now and then, and when a
            // slot kept for another member is free again
            let look_again =
                self.slots.inner().reserved_until.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            let rx = pending.rx.as_mut().expect("taken only here and on drop");
            tokio::select! {
                () = &mut reserved => continue,
                granted = rx => {
                    pending.rx = None;
                    if granted.is_ok() {
                        return Slot { _taken: () };
                    }
                    // (never: a waiter is only dropped after its receiver was)
                    let (tx, rx) = oneshot::channel();
                    self.slots.inner().members[self.id].as_mut().expect("a member").waiting.push_back(tx);
                    pending.rx = Some(rx);
                }
                () = tokio::time::sleep_until(look_again) => self.slots.publish(self.slots.inner()),
            }
        }
    }

    /// Gives a slot back.
    pub fn release(&self, slot: Slot) {
        let Slot { _taken: () } = slot;
        let mut s = self.slots.inner();
        s.in_flight -= 1;
        if let Some(m) = s.members[self.id].as_mut() {
            m.in_flight -= 1;
        }
        self.slots.publish(s);
    }

    /// A call of the target is sent now; report what it said with [`Member::observe`].
    pub fn call(&self) -> Call {
        // a fixed limit listens to nothing: no bookkeeping on its hot path
        let mut sent_with = 0;
        if self.slots.adaptive {
            let mut s = self.slots.inner();
            s.calls_in_flight += 1;
            sent_with = s.calls_in_flight;
        }
        Call { sent_with }
    }

    /// A call that shutdown took before it answered.
    pub fn abandoned(&self, call: Call) {
        let Call { sent_with: _ } = call;
        if self.slots.adaptive {
            let mut s = self.slots.inner();
            s.calls_in_flight = s.calls_in_flight.saturating_sub(1);
        }
    }

    /// Reports what a call said; each call of the target reports once.
    pub fn observe(&self, call: Call, signal: Signal) {
        let Call { sent_with } = call;
        if !self.slots.adaptive {
            return;
        }
        let mut s = self.slots.inner();
        let in_flight = s.calls_in_flight;
        s.calls_in_flight = s.calls_in_flight.saturating_sub(1);
        if let Some(a) = s.adaptive.as_mut() {
            a.observe(signal, in_flight, sent_with, Instant::now());
        }
        self.slots.publish(s);
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut s = self.slots.inner();
        if let Some(m) = s.members[self.id].take() {
            s.in_flight -= m.in_flight;
        }
        self.slots.publish(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One pipeline's own slots (batches of 10).
    fn alone(max: usize, adaptive: Option<usize>, room: Option<Arc<dyn Fn(usize) + Send + Sync>>) -> Member {
        Arc::new(Slots::new(max, adaptive)).join(MemberSettings {
            priority: 0,
            weight: 1,
            max,
            batch_size: 10,
            gauge: metrics::Gauge::noop(),
            status: Arc::default(),
            room,
        })
    }

    /// A backlog against a worker that serves `capacity` batches at once in 100 ms, and slower in
    /// proportion past that (a batch's time is set by the load it started under, and known only
    /// when it ends, as with a real worker). Returns (seconds, limit) after each batch, for
    /// `secs` of simulated time.
    fn settle(capacity: usize, max: usize, secs: u64) -> Vec<(f64, usize)> {
        let start = Instant::now();
        let mut a = AdaptiveLimit::new(1, max);
        let base = Duration::from_millis(100);
        let mut now = start;
        // (end, took) of the batches in flight
        let mut running: Vec<(Instant, Duration)> = Vec::new();
        let mut seen = Vec::new();
        while now < start + Duration::from_secs(secs) {
            while running.len() < a.limit(now) {
                let n = running.len() + 1;
                let took = if n <= capacity { base } else { base.mul_f64(n as f64 / capacity as f64) };
                running.push((now + took, took));
            }
            running.sort_by_key(|r| r.0);
            let (end, took) = running.remove(0);
            now = end;
            a.observe(Signal::Answered(took), running.len() + 1, running.len() + 1, now);
            seen.push(((now - start).as_secs_f64(), a.limit(now)));
        }
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn settles_near_a_slowing_workers_capacity() {
        let seen = settle(8, 64, 60);
        let tail: Vec<usize> = seen.iter().filter(|s| s.0 >= 20.0).map(|s| s.1).collect();
        assert!(tail.iter().all(|l| (6..=12).contains(l)), "{seen:?}");
        let early = seen.iter().find(|s| s.1 >= 6).expect("grew");
        assert!(early.0 < 5.0, "found the capacity only after {} s", early.0);
    }

    #[tokio::test(start_paused = true)]
    async fn grows_to_the_max_when_the_worker_does_not_slow_down() {
        let seen = settle(1000, 40, 30);
        assert_eq!(seen.last().unwrap().1, 40, "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn pushback_caps_one_below_what_was_in_flight_until_it_stops_for_the_hold() {
        let start = Instant::now();
        let mut a = AdaptiveLimit::new(1, 64);
        let ms = |i: u64| start + Duration::from_millis(i);
        for i in 0..200 {
            let n = a.limit(ms(i * 20));
            a.observe(Signal::Answered(Duration::from_millis(50)), n, n, ms(i * 20));
        }
        let now = ms(4000);
        let before = a.limit(now);
        assert!(before > 10, "{before}");
        // the first pushback at most halves the limit; the next ones of the burst take it to one
        // below the calls at the worker
        a.observe(Signal::Pushback, 5, 5, now);
        assert_eq!(a.limit(now), (before / 2).max(4));
        a.observe(Signal::Pushback, 5, 5, now);
        a.observe(Signal::Pushback, 5, 5, now);
        a.observe(Signal::Pushback, 5, 5, now);
        a.observe(Signal::Pushback, 5, 5, now);
        a.observe(Signal::Pushback, 5, 5, now);
        assert_eq!(a.limit(now), 4);
        // answers keep coming: the ceiling holds
        for i in 0..1000 {
            a.observe(Signal::Answered(Duration::from_millis(50)), 4, 4, now + Duration::from_millis(i * 20));
        }
        assert_eq!(a.limit(now + Duration::from_secs(20)), 4);
        // a late refusal of a call sent while more were out (an earlier burst's) neither lowers
        // it nor raises it, and keeps it held
        a.observe(Signal::Pushback, 3, 6, now + Duration::from_secs(20));
        assert_eq!(a.limit(now + Duration::from_secs(20)), 4);
        a.observe(Signal::Pushback, 9, 9, now + Duration::from_secs(20));
        assert_eq!(a.limit(now + Duration::from_secs(49)), 4);
        // quiet for the hold: lifted
        assert!(a.limit(now + Duration::from_secs(51)) > 4);
    }

    #[tokio::test(start_paused = true)]
    async fn never_below_the_floor() {
        let now = Instant::now();
        let mut a = AdaptiveLimit::new(3, 10);
        for _ in 0..50 {
            a.observe(Signal::Pushback, 1, 1, now);
        }
        assert_eq!(a.limit(now), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pushback_burst_takes_the_limit_to_one_below_the_calls_still_at_the_worker() {
        let slots = alone(8, Some(1), None);
        // grow the limit: answers at a steady time, windows of 100 ms
        for _ in 0..40 {
            let calls: Vec<Call> = (0..slots.limit()).map(|_| slots.call()).collect();
            tokio::time::advance(Duration::from_millis(100)).await;
            for call in calls {
                slots.observe(call, Signal::Answered(Duration::from_millis(100)));
            }
        }
        assert_eq!(slots.limit(), 8);
        // 8 calls to a worker that takes 5: 3 come back refused, one after another
        let mut calls: Vec<Call> = (0..8).map(|_| slots.call()).collect();
        slots.observe(calls.pop().unwrap(), Signal::Pushback);
        assert_eq!(slots.limit(), 7, "one below the 8 in flight");
        slots.observe(calls.pop().unwrap(), Signal::Pushback);
        slots.observe(calls.pop().unwrap(), Signal::Pushback);
        assert_eq!(slots.limit(), 5, "one below the 5 accepted and the last refused");
        for call in calls {
            slots.observe(call, Signal::Answered(Duration::from_millis(100)));
        }
        assert_eq!(slots.slots.inner().calls_in_flight, 0);
        assert_eq!(slots.limit(), 5, "the ceiling holds");
    }

    #[tokio::test(start_paused = true)]
    async fn slots_follow_the_limit_and_report_room() {
        let room = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let r = room.clone();
        let slots = alone(8, Some(2), Some(Arc::new(move |n| r.store(n, std::sync::atomic::Ordering::Relaxed))));
        assert_eq!(slots.limit(), 2);
        assert_eq!(room.load(std::sync::atomic::Ordering::Relaxed), 30);
        let a = slots.acquire().await;
        let b = slots.acquire().await;
        assert!(tokio::time::timeout(Duration::from_millis(10), slots.acquire()).await.is_err(), "full at 2");
        slots.observe(slots.call(), Signal::Answered(Duration::from_millis(5)));
        slots.release(a);
        slots.release(b);
        let fixed = alone(8, None, None);
        assert_eq!(fixed.limit(), 8);
    }

    #[test]
    fn entitlements_follow_priority_then_weight() {
        // strict: the high priority uses 6 (its own cap), the low one is entitled to the rest
        assert_eq!(entitlements(10, &[(1, 1, 6, 6), (0, 1, 10, 9)]), vec![6, 4]);
        // a higher priority that uses nothing leaves everything to the next
        assert_eq!(entitlements(10, &[(1, 1, 10, 0), (0, 1, 10, 5)]), vec![10, 10]);
        // weights 3:1, both busy
        assert_eq!(entitlements(8, &[(0, 3, 8, 8), (0, 1, 8, 8)]), vec![6, 2]);
        // the idle one of a level is entitled to what it would get if it started
        assert_eq!(entitlements(8, &[(0, 3, 8, 8), (0, 1, 8, 0)]), vec![8, 2]);
        // a busy member that uses less than its weight's part leaves the rest to the next level
        assert_eq!(entitlements(12, &[(2, 1, 12, 2), (2, 1, 12, 3), (0, 1, 12, 4)]), vec![6, 6, 7]);
    }

    /// Members of one pool, each holding `hold` slots and always waiting for more.
    async fn pool_run(members: &[(u32, u32, usize)], limit: usize, rounds: usize) -> Vec<usize> {
        let slots = Arc::new(Slots::new(limit, None));
        let joined: Vec<Arc<Member>> = members
            .iter()
            .map(|&(priority, weight, max)| {
                Arc::new(slots.join(MemberSettings {
                    priority,
                    weight,
                    max,
                    batch_size: 1,
                    gauge: metrics::Gauge::noop(),
                    status: Arc::default(),
                    room: None,
                }))
            })
            .collect();
        let got: Arc<Vec<std::sync::atomic::AtomicUsize>> =
            Arc::new(members.iter().map(|_| std::sync::atomic::AtomicUsize::new(0)).collect());
        let mut tasks = Vec::new();
        for (i, m) in joined.iter().enumerate() {
            let (m, got) = (m.clone(), got.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let slot = m.acquire().await;
                    got[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let m = m.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        m.release(slot);
                    });
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(100 * rounds as u64)).await;
        for t in tasks {
            t.abort();
        }
        got.iter().map(|g| g.load(std::sync::atomic::Ordering::Relaxed)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_pool_hands_slots_by_strict_priority_and_by_weight() {
        // strict: the high priority takes the 6 it can use, the low one the other 4
        let got = pool_run(&[(1, 1, 6), (0, 1, 10)], 10, 100).await;
        assert!((590..=610).contains(&got[0]) && (390..=410).contains(&got[1]), "{got:?}");
        // unbounded high priority: the low one starves (strict)
        let got = pool_run(&[(1, 1, 10), (0, 1, 10)], 10, 100).await;
        assert!(got[1] <= 10, "{got:?}");
        // weights 3:1
        let got = pool_run(&[(0, 3, 8), (0, 1, 8)], 8, 100).await;
        let share = got[0] as f64 / (got[0] + got[1]) as f64;
        assert!((0.72..=0.78).contains(&share), "{got:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pools_adaptive_limit_is_shared_and_told_to_every_member() {
        let slots = Arc::new(Slots::new(16, Some(1)));
        let statuses: Vec<Arc<crate::status::Status>> = (0..2).map(|_| Arc::default()).collect();
        let members: Vec<Member> = statuses
            .iter()
            .map(|status| {
                slots.join(MemberSettings {
                    priority: 0,
                    weight: 1,
                    max: 16,
                    batch_size: 1,
                    gauge: metrics::Gauge::noop(),
                    status: status.clone(),
                    room: None,
                })
            })
            .collect();
        let limit_of = |s: &Arc<crate::status::Status>| s.concurrency_limit.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(limit_of(&statuses[1]), 1, "both start at the floor");
        // the calls of the first member grow the pool's limit; the second sees it
        for _ in 0..40 {
            let calls: Vec<Call> = (0..slots.limit()).map(|_| members[0].call()).collect();
            tokio::time::advance(Duration::from_millis(100)).await;
            for call in calls {
                members[0].observe(call, Signal::Answered(Duration::from_millis(100)));
            }
        }
        let grown = slots.limit();
        assert!(grown > 8, "{grown}");
        assert_eq!(limit_of(&statuses[1]), grown);
        assert!(statuses.iter().all(|s| s.adaptive.load(std::sync::atomic::Ordering::Relaxed)));
        // a pushback seen by the second member caps the pool for both
        members[1].observe(members[1].call(), Signal::Pushback);
        assert!(slots.limit() < grown);
        assert_eq!(limit_of(&statuses[0]), slots.limit());
    }
}
