//! Choosing a backend for each try of a request: the one accept rule ([`Fit`]), the walk through
//! the priority groups' rotations ([`Selection::next`]), and why a request cannot be served at
//! all ([`Unavailable`]).
//!
//! A request takes one turn of a group's rotation the first time it uses that group, then walks
//! on from there for its retries, so every backend is tried once before any is tried twice. The
//! clock is read once a pick by the caller; on the healthy path nothing is allocated.

use std::time::{Duration, Instant};

use http::HeaderValue;
use smallvec::SmallVec;

use std::sync::Arc;

use super::backend::{Backend, Credential};
use super::capacity::Room;
use super::standing::{Moment, Standing};
use super::Pool;

/// Why no backend can take a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// No backend serves the deployment (404).
    UnknownDeployment,
    /// Every backend that serves it needs the proxy's Entra ID token, and none is held (503).
    NoToken,
    /// Every backend that could take it is cooling (429): the shortest of their waits.
    Cooling { shortest: Duration },
}

/// A backend for one try, with the credential it is sent.
#[derive(Clone, Debug)]
pub struct Pick {
    pub index: usize,
    pub credential: Credential,
}

/// How well a backend fits a request, worst first: the accept rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fit {
    /// It does not serve the deployment.
    NotServing,
    /// It needs the proxy's token, and none is held.
    NoToken,
    /// It asked to be left alone for this deployment, for this long still.
    Cooling(Duration),
    /// It is ejected by passive health, or failing its probes.
    Unhealthy,
    /// It said it has too little quota left for the request (`balance.strategy: headroom`):
    /// taken only when no backend has room.
    Full,
    /// It may take the request.
    Ready,
}

/// One request's choice of backends: which it may use, and which it has tried.
pub struct Selection<'a> {
    pool: &'a Pool,
    deployment: Option<&'a str>,
    /// The tokens the request is estimated to use, with `balance.strategy: headroom`; `None`
    /// with round robin, which does not look at capacity.
    headroom: Option<u64>,
    /// The proxy's Entra ID token header, when one is held.
    token: Option<HeaderValue>,
    /// The least fit a backend needs: [`Fit::Ready`], or [`Fit::Unhealthy`] when no backend
    /// that could take the request is healthy (then all are tried rather than none).
    least: Fit,
    /// This request's turn in each group's rotation: (group, turn).
    turns: SmallVec<[(usize, usize); 2]>,
    /// The backends tried, one entry a try.
    tried: SmallVec<[usize; 4]>,
}

impl Pool {
    /// [`Pool::select_costing`] a request of no estimated cost.
    #[cfg(test)]
    pub fn select<'a>(
        &'a self,
        deployment: Option<&'a str>,
        token: Option<HeaderValue>,
        now: Instant,
    ) -> Result<(Selection<'a>, Pick), Unavailable> {
        self.select_costing(deployment, 0, token, now)
    }

    /// Starts choosing backends for a request that names `deployment` and is estimated to use
    /// `estimate` tokens, with `token` the proxy's current Entra ID token header: its first
    /// backend, or why none can take it.
    pub fn select_costing<'a>(
        &'a self,
        deployment: Option<&'a str>,
        estimate: u64,
        token: Option<HeaderValue>,
        now: Instant,
    ) -> Result<(Selection<'a>, Pick), Unavailable> {
        let mut selection = Selection {
            pool: self,
            deployment,
            headroom: (self.strategy == crate::config::Strategy::Headroom).then_some(estimate),
            token,
            least: Fit::Ready,
            turns: SmallVec::new(),
            tried: SmallVec::new(),
        };
        let at = Moment::of(now);
        let (mut best, mut shortest, mut serving) = (Fit::NotServing, None::<Duration>, false);
        // The lowest group with a backend of the best fit: where the first try goes.
        let mut group = usize::MAX;
        for i in 0..self.backends.len() {
            let fit = selection.fit(i, at);
            serving |= fit != Fit::NotServing;
            if let Fit::Cooling(left) = fit {
                shortest = Some(shortest.map_or(left, |s| s.min(left)));
            }
            if fit > best {
                (best, group) = (fit, self.group_of[i]);
            } else if fit == best {
                group = group.min(self.group_of[i]);
            }
        }
        let why = match (shortest, serving) {
            (Some(shortest), _) => Unavailable::Cooling { shortest },
            (None, true) => Unavailable::NoToken,
            (None, false) => Unavailable::UnknownDeployment,
        };
        if best < Fit::Unhealthy {
            return Err(why);
        }
        selection.least = best;
        match selection.pick_in(group, 0, at) {
            Some(first) => Ok((selection, first)),
            // Another request changed a backend's state between the two looks: a cooldown or
            // an ejection began. Come back in a moment.
            None => Err(Unavailable::Cooling {
                shortest: shortest.unwrap_or(Duration::from_millis(1)),
            }),
        }
    }
}

impl Pool {
    /// How long until a backend that serves `deployment` is free to take a request estimated at
    /// `estimate` tokens, when none is now: the shortest of their cooldowns and, with
    /// `balance.strategy: headroom`, of the times the full ones take to refill for it. `None`
    /// when one is free (or none serves it). `token`: whether the proxy holds its Entra ID
    /// token (a backend that needs it is not free without it), as [`Selection`]'s rule says.
    pub fn free_in(
        &self,
        deployment: Option<&str>,
        estimate: u64,
        token: bool,
        now: Instant,
    ) -> Option<Duration> {
        let at = Moment::of(now);
        let headroom = self.strategy == crate::config::Strategy::Headroom;
        let mut shortest = None;
        let usable =
            |b: &&Arc<Backend>| b.naming(deployment).is_some() && (token || !b.needs_token());
        for b in self.backends.iter().filter(usable) {
            let left = match b.standing.standing(deployment, at) {
                Standing::Cooling(left) => left,
                Standing::Good if headroom => match b.capacity.room(deployment, estimate, now) {
                    Room::Full(left) => left,
                    _ => return None,
                },
                _ => return None,
            };
            shortest = Some(shortest.map_or(left, |s: Duration| s.min(left)));
        }
        shortest
    }
}

impl Selection<'_> {
    /// How backend `i` fits this request at `at`.
    fn fit(&self, i: usize, at: Moment) -> Fit {
        let b = &self.pool.backends[i];
        if b.naming(self.deployment).is_none() {
            Fit::NotServing
        } else if b.needs_token() && self.token.is_none() {
            Fit::NoToken
        } else {
            match b.standing.standing(self.deployment, at) {
                Standing::Cooling(left) => Fit::Cooling(left),
                Standing::Unhealthy => Fit::Unhealthy,
                Standing::Good if matches!(self.room(i, at), Room::Full(_)) => Fit::Full,
                Standing::Good => Fit::Ready,
            }
        }
    }

    /// How much of this request backend `i` has room for, with `balance.strategy: headroom`
    /// (with round robin every backend counts as having room).
    fn room(&self, i: usize, at: Moment) -> Room {
        match self.headroom {
            Some(estimate) => {
                let capacity = &self.pool.backends[i].capacity;
                capacity.room(self.deployment, estimate, at.instant())
            }
            None => Room::Unknown,
        }
    }

    /// How long until a backend that serves this request's deployment is free (see
    /// [`Pool::free_in`]).
    pub fn free_in(&self, now: Instant) -> Option<Duration> {
        let token = self.token.is_some();
        self.pool
            .free_in(self.deployment, self.headroom.unwrap_or(0), token, now)
    }

    /// Whether backend `i` may take a try of this request at `now`.
    pub fn accepts(&self, i: usize, now: Instant) -> bool {
        self.accepts_at(i, Moment::of(now))
    }

    fn accepts_at(&self, i: usize, at: Moment) -> bool {
        self.fit(i, at) >= self.least
    }

    fn tries_of(&self, i: usize) -> usize {
        self.tried.iter().filter(|&&t| t == i).count()
    }

    /// This request's turn in `group`, taken the first time it uses the group.
    fn turn(&mut self, group: usize) -> usize {
        if let Some(&(_, turn)) = self.turns.iter().find(|(g, _)| *g == group) {
            return turn;
        }
        let turn = self.pool.groups[group].take_turn();
        self.turns.push((group, turn));
        turn
    }

    /// The backend for the next try: among those that accept the request, the least tried,
    /// then the lowest priority, then the nearest in that group's rotation. So a request stays
    /// in the first group while it has a usable backend, and every backend is tried once
    /// before any is tried twice. `None` when no backend accepts the request any more.
    ///
    /// An unhealthy backend, tried because none that could take the request was healthy, is not
    /// tried twice while another backend is only cooling: it has just failed again, and the
    /// cooling one says when it will be back.
    pub fn next(&mut self, now: Instant) -> Option<Pick> {
        let at = Moment::of(now);
        let repeats = self.least == Fit::Ready || self.shortest_cooldown_at(at).is_none();
        let mut best: Option<(usize, usize)> = None; // (tries, group)
        for i in 0..self.pool.backends.len() {
            if self.accepts_at(i, at) && (repeats || self.tries_of(i) == 0) {
                let key = (self.tries_of(i), self.pool.group_of[i]);
                if best.is_none_or(|b| key < b) {
                    best = Some(key);
                }
            }
        }
        let (fewest, group) = best?;
        self.pick_in(group, fewest, at)
    }

    /// The shortest wait among the backends that could take this request but are cooling;
    /// `None` when none is.
    fn shortest_cooldown_at(&self, at: Moment) -> Option<Duration> {
        (0..self.pool.backends.len())
            .filter_map(|i| match self.fit(i, at) {
                Fit::Cooling(left) => Some(left),
                _ => None,
            })
            .min()
    }

    /// The nearest backend in `group`'s rotation, from this request's turn, that accepts the
    /// request and has been tried `fewest` times; with `balance.strategy: headroom`, the one
    /// among those with the most room (weighted), the nearest on a tie.
    fn pick_in(&mut self, group: usize, fewest: usize, at: Moment) -> Option<Pick> {
        let turn = self.turn(group);
        let rotation = self.pool.groups.get(group)?.order();
        let mut candidates = (0..rotation.len())
            .map(|k| rotation[(turn + k) % rotation.len()])
            .filter(|&i| self.tries_of(i) == fewest && self.accepts_at(i, at));
        let index = match self.headroom {
            None => candidates.next()?,
            Some(_) => {
                let score = |i: usize| {
                    let weight = self.pool.backends[i].config.weight;
                    self.room(i, at).score(weight)
                };
                let first = candidates.next()?;
                candidates
                    .fold((first, score(first)), |best, i| {
                        let s = score(i);
                        if s > best.1 {
                            (i, s)
                        } else {
                            best
                        }
                    })
                    .0
            }
        };
        self.take(index, at)
    }

    /// Backend `index` once more, with a fresh `token`: the retry after a 401 to the old one.
    /// The backend has just answered, so its health does not matter; `None` when it started
    /// cooling meanwhile. The repeat does not count as another try on it in the rotation.
    pub fn again(&mut self, index: usize, token: HeaderValue, now: Instant) -> Option<Pick> {
        self.token = Some(token);
        if self.fit(index, Moment::of(now)) < Fit::Unhealthy {
            return None;
        }
        let credential = self.pool.backends[index].credential(self.token.as_ref())?;
        Some(Pick { index, credential })
    }

    /// Backend `index` for the next try; with `balance.strategy: headroom` the request's
    /// estimate is taken off what it has left until its answer says.
    fn take(&mut self, index: usize, at: Moment) -> Option<Pick> {
        let backend = &self.pool.backends[index];
        let credential = backend.credential(self.token.as_ref())?;
        if let Some(estimate) = self.headroom {
            backend
                .capacity
                .charge(self.deployment, estimate, at.instant());
        }
        self.tried.push(index);
        Some(Pick { index, credential })
    }
}

#[cfg(test)]
mod tests;
