//! The waiting room of `retry.wait_for_capacity`: requests that would get the throttling 429
//! wait here, per deployment, in arrival order, contacting no backend, and are let go at the
//! pace the freed backend takes them:
//!
//! - the first in line goes when the first cooldown of the backends that could serve it ends
//!   (the caller says when that is: [`Ticket::turn`]'s `free_in`), and only while no request let
//!   go before it still waits for its answer (or that one has waited [`PATIENCE`]);
//! - an answer that shows room (a 2xx) lets the next two go, so the pace doubles while the
//!   backend keeps up (as TCP's slow start does); any other answer but a 429 lets one go; a 429
//!   lets none go, and the request it answered goes back to the front of the line;
//! - a request that leaves (its client disconnected, its wait budget spent) leaves the line at
//!   once, and one it was let go in its place is let go to the next.
//!
//! So when a cooldown ends, a backend still out of quota answers one 429, not one per waiting
//! request. Newcomers queue behind waiting requests ([`WaitingRoom::busy`]) so that nobody
//! overtakes them; when nobody waits they go straight on, whatever is still out.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How many an answer that shows room lets go: itself replaced, and one more.
const ROOM_SHOWN: usize = 2;
/// How long the first in line waits for the answers of those let go before it, once a backend
/// is free: an answer that is not streamed comes only when the whole completion is written,
/// and the line must not stand still that long.
pub const PATIENCE: Duration = Duration::from_secs(1);

/// One deployment's line.
#[derive(Default)]
struct Line {
    waiting: VecDeque<(u64, Arc<Notify>)>,
    /// Let go and not yet answered.
    out: usize,
    /// When the last one was let go.
    released: Option<Instant>,
}

impl Line {
    /// When the first in line may look for a free backend itself: now when nobody let go
    /// awaits an answer, else [`PATIENCE`] after the last was let go.
    fn may_watch_at(&self, now: Instant) -> Instant {
        match (self.out, self.released) {
            (0, _) | (_, None) => now,
            (_, Some(at)) => at + PATIENCE,
        }
    }
}

/// The lines, one per deployment (`None`: requests that name none).
pub struct WaitingRoom {
    lines: Mutex<Vec<(Option<Box<str>>, Line)>>,
    /// Requests in every line now; `retry.max_waiting` bounds it.
    held: AtomicUsize,
    /// Lines with someone waiting or out: while 0, [`WaitingRoom::busy`] takes no lock.
    busy: AtomicUsize,
    /// `retry.max_waiting` of the configuration in force.
    max: AtomicUsize,
    ids: AtomicU64,
}

/// How a wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    /// The request goes on: a backend is free, and it is its turn.
    Go,
    /// The wait budget is spent.
    TimedOut,
}

/// A request's place in a line; dropped, it leaves the line (and passes on a turn it was
/// given and did not use).
pub struct Ticket {
    room: Arc<WaitingRoom>,
    deployment: Option<Box<str>>,
    id: u64,
    notify: Arc<Notify>,
    state: State,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Waiting,
    /// Let go; its answer not yet seen.
    Out,
    Done,
}

impl WaitingRoom {
    pub fn new(max: usize) -> Arc<WaitingRoom> {
        Arc::new(WaitingRoom {
            lines: Mutex::new(Vec::new()),
            held: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
            ids: AtomicU64::new(0),
        })
    }

    fn with_line<T>(&self, deployment: Option<&str>, f: impl FnOnce(&mut Line) -> T) -> T {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let i = match lines.iter().position(|(d, _)| d.as_deref() == deployment) {
            Some(i) => i,
            None => {
                lines.push((deployment.map(Box::from), Line::default()));
                lines.len() - 1
            }
        };
        let line = &mut lines[i].1;
        let was_busy = !line.waiting.is_empty() || line.out > 0;
        let value = f(line);
        let is_busy = !line.waiting.is_empty() || line.out > 0;
        if !is_busy {
            // Keep the list short: a line nobody is in is forgotten.
            lines.swap_remove(i);
        }
        match (was_busy, is_busy) {
            (false, true) => {
                self.busy.fetch_add(1, Ordering::AcqRel);
            }
            (true, false) => {
                self.busy.fetch_sub(1, Ordering::AcqRel);
            }
            _ => {}
        }
        value
    }

    /// Sets `retry.max_waiting` (a reload): the room, and who waits in it, stay.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Whether requests for `deployment` are waiting: a newcomer then queues behind them.
    pub fn busy(&self, deployment: Option<&str>) -> bool {
        if self.busy.load(Ordering::Acquire) == 0 {
            return false;
        }
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .iter()
            .any(|(d, line)| d.as_deref() == deployment && !line.waiting.is_empty())
    }

    /// A place in `deployment`'s line: at its end, or at its front for a request whose turn
    /// was just answered 429. `None` when `retry.max_waiting` requests wait already.
    pub fn enter(self: &Arc<Self>, deployment: Option<&str>, front: bool) -> Option<Ticket> {
        if self.held.fetch_add(1, Ordering::AcqRel) >= self.max.load(Ordering::Relaxed) {
            self.held.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        self.with_line(deployment, |line| match front {
            true => line.waiting.push_front((id, notify.clone())),
            false => line.waiting.push_back((id, notify.clone())),
        });
        Some(Ticket {
            room: self.clone(),
            deployment: deployment.map(Box::from),
            id,
            notify,
            state: State::Waiting,
        })
    }

    /// Takes request `id` out of `line`: `false` when it was not in it (let go already).
    fn step_out(&self, line: &mut Line, id: u64) -> bool {
        let before = line.waiting.len();
        line.waiting.retain(|(i, _)| *i != id);
        let was_in = line.waiting.len() < before;
        if was_in {
            self.held.fetch_sub(1, Ordering::AcqRel);
        }
        was_in
    }

    /// Lets up to `n` go from the front of `line`; wakes the new first in line in any case
    /// (it may now be the one to watch the clock).
    fn let_go(&self, line: &mut Line, n: usize) {
        for _ in 0..n {
            let Some((_, notify)) = line.waiting.pop_front() else {
                return;
            };
            self.held.fetch_sub(1, Ordering::AcqRel);
            line.out += 1;
            line.released = Some(Instant::now());
            notify.notify_one();
        }
        if let Some((_, first)) = line.waiting.front() {
            first.notify_one();
        }
    }
}

impl Ticket {
    /// Waits for this request's turn, at most until `deadline`. `free_in` says how long until
    /// a backend that could serve the request is free (`None`: one is free now); it is asked
    /// only by the first in line, while nobody let go before it awaits an answer (or once
    /// that one has waited [`PATIENCE`]).
    pub async fn turn(
        &mut self,
        free_in: impl Fn() -> Option<Duration>,
        deadline: Instant,
    ) -> Turn {
        loop {
            // A wake-up between the look and the wait is kept by `Notify` as a permit.
            let notified = self.notify.clone();
            let notified = notified.notified();
            let now = Instant::now();
            let (gone, watch_at) = self.room.with_line(self.deployment.as_deref(), |line| {
                let first = line.waiting.front().map(|(id, _)| *id) == Some(self.id);
                let gone = !line.waiting.iter().any(|(id, _)| *id == self.id);
                (gone, first.then(|| line.may_watch_at(now)))
            });
            if gone {
                // Let go by an answer that showed room.
                self.state = State::Out;
                return Turn::Go;
            }
            if now >= deadline {
                return Turn::TimedOut;
            }
            let mut until = deadline;
            match watch_at {
                Some(at) if at <= now => match free_in() {
                    None => {
                        self.go_first(now);
                        return Turn::Go;
                    }
                    // Free only after the budget: no use waiting for it.
                    Some(left) if now + left > deadline => return Turn::TimedOut,
                    Some(left) => until = until.min(now + left),
                },
                Some(at) => until = until.min(at),
                None => {}
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(until.into()) => {}
            }
        }
    }

    /// Leaves the front of the line to go on, a backend being free; the next in line is woken
    /// to watch the clock in its turn. (Let go by an answer meanwhile, it is already out.)
    fn go_first(&mut self, now: Instant) {
        let room = self.room.clone();
        let id = self.id;
        room.with_line(self.deployment.as_deref(), |line| {
            if room.step_out(line, id) {
                line.out += 1;
                line.released = Some(now);
                room.let_go(line, 0);
            }
        });
        self.state = State::Out;
    }

    /// The answer to this request's try after its turn: `room` when it showed room (a 2xx),
    /// `throttled` for a 429 (then the request may take a place at the front again).
    pub fn answered(mut self, room: bool, throttled: bool) {
        let n = match (room, throttled) {
            (true, _) => ROOM_SHOWN,
            (false, true) => 0,
            (false, false) => 1,
        };
        self.leave(n);
    }

    /// Leaves the line, or, let go, counts its answer in and lets `n` go after it.
    fn leave(&mut self, n: usize) {
        let room = self.room.clone();
        match self.state {
            State::Waiting => {
                let id = self.id;
                room.with_line(self.deployment.as_deref(), |line| {
                    if room.step_out(line, id) {
                        room.let_go(line, 0);
                    } else {
                        // Let go while it was not looking: its turn passes to the next.
                        line.out = line.out.saturating_sub(1);
                        room.let_go(line, 1);
                    }
                });
            }
            State::Out => {
                room.with_line(self.deployment.as_deref(), |line| {
                    line.out = line.out.saturating_sub(1);
                    room.let_go(line, n);
                });
            }
            State::Done => {}
        }
        self.state = State::Done;
    }
}

impl Drop for Ticket {
    /// A request that leaves while waiting frees its place; one let go that never saw its
    /// answer lets the next go in its place.
    fn drop(&mut self) {
        self.leave(1);
    }
}

#[cfg(test)]
mod tests;
