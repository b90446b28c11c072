//! [`Rotation`]: one priority group's round robin. Turns are taken with pingora-load-balancing's
//! [`RoundRobin`] (its [`SelectionAlgorithm`]), over one round of a smooth weighted order
//! (weights 3:1 give `a a b a`, as nginx's smooth weighted round robin does).
//!
//! NOTE: why not pingora-load-balancing's `BackendSelection` (`Weighted<RoundRobin>`, behind a
//! `LoadBalancer` and its `select_with`): it cannot express three of the README's rules.
//! - Its backends are a `BTreeSet<Backend>` keyed by socket address and weight: two backends at
//!   one address (different keys, names or deployment maps, as behind one API Management)
//!   would be one, the order would be the addresses' rather than the file's, and a backend
//!   would need its address at start, before DNS has resolved it.
//! - `Weighted` repeats each backend in a run (`a a a b`), and its iterator takes a new turn of
//!   the shared counter for every fallback, so the retries of concurrent requests take each
//!   other's turns and one request can meet a backend twice before it has met them all; here a
//!   request takes one turn and walks the order from it ([`super::Selection`]).
//! - `select_with` keeps a `HashSet` of the backends it has seen, an allocation per request on
//!   the healthy path; a [`super::Selection`] allocates nothing there.

use pingora::lb::selection::algorithms::RoundRobin;
use pingora::lb::selection::SelectionAlgorithm;

/// A priority group's backends in their rotation, and the turns taken.
pub struct Rotation {
    /// One round: backend indexes, each as often as its weight, spread out.
    order: Box<[usize]>,
    turns: RoundRobin,
}

impl Rotation {
    /// The rotation of backends `members` with `weights`.
    pub fn new(members: &[usize], weights: &[u16]) -> Rotation {
        Rotation {
            order: smooth(weights).into_iter().map(|k| members[k]).collect(),
            turns: RoundRobin::new(),
        }
    }

    /// One round of the rotation.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// A new turn: where a request starts in [`Self::order`] (modulo its length).
    pub fn take_turn(&self) -> usize {
        self.turns.next(&[]) as usize
    }
}

/// The order of one round of weighted round robin, spread out as nginx's smooth weighted
/// round robin does (weights 3:1 give `a a b a`, not `a a a b`).
fn smooth(weights: &[u16]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            for (c, &w) in current.iter_mut().zip(weights) {
                *c += i64::from(w);
            }
            let best = (0..current.len())
                .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
                .unwrap_or(0);
            current[best] -= total;
            best
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_weights_rotate_exactly() {
        assert_eq!(smooth(&[1, 1, 1]), vec![0, 1, 2]);
    }

    #[test]
    fn weights_are_spread_out() {
        assert_eq!(smooth(&[3, 1]), vec![0, 0, 1, 0]);
        let r = smooth(&[5, 1, 1]);
        assert_eq!(r.len(), 7);
        assert_eq!(r.iter().filter(|&&i| i == 0).count(), 5);
        assert_ne!(
            &r[..5],
            &[0, 0, 0, 0, 0],
            "heavy backend not bunched: {r:?}"
        );
    }

    #[test]
    fn turns_go_round_over_the_members() {
        let r = Rotation::new(&[4, 7], &[1, 2]);
        assert_eq!(r.order(), &[7, 4, 7]);
        let turns: Vec<usize> = (0..4).map(|_| r.take_turn()).collect();
        assert_eq!(turns, [0, 1, 2, 3]);
    }
}
