//! The selection rules: each backend once before any twice, weights, cooling and unhealthy
//! backends, priority groups, why nothing can serve, and a property test of the try loop.

use super::super::pool::tests::{pool, pool_with};
use super::*;
use crate::outcome::{Failure, Outcome};

const GPT: Option<&str> = Some("gpt-4o");

/// The backends a request tries, in order, when every try fails and `tries` are allowed.
fn walk(p: &Pool, tries: usize, now: Instant) -> Vec<usize> {
    let Ok((mut s, first)) = p.select(GPT, None, now) else {
        return vec![];
    };
    let mut order = vec![first.index];
    while order.len() < tries {
        match s.next(now) {
            Some(pick) => order.push(pick.index),
            None => break,
        }
    }
    order
}

fn throttle(p: &Pool, i: usize, secs: u64) {
    p.get(i)
        .standing
        .cool(GPT, Duration::from_secs(secs), "test");
}

fn fail(p: &Pool, i: usize) {
    for _ in 0..3 {
        p.observe(i, Outcome::Failed(Failure::Connect), None, GPT);
    }
}

#[test]
fn a_request_visits_every_backend_before_repeating() {
    let p = pool(&[(0, 1), (0, 1), (0, 1)]);
    assert_eq!(walk(&p, 5, Instant::now()), vec![0, 1, 2, 0, 1]);
    // The next request starts one further along.
    assert_eq!(walk(&p, 1, Instant::now()), vec![1]);
}

#[test]
fn weights_share_the_first_tries() {
    let p = pool(&[(0, 3), (0, 1)]);
    let firsts: Vec<usize> = (0..8).flat_map(|_| walk(&p, 1, Instant::now())).collect();
    assert_eq!(firsts, vec![0, 0, 1, 0, 0, 0, 1, 0]);
}

#[test]
fn a_cooling_backend_is_never_chosen() {
    let p = pool(&[(0, 1), (0, 1), (0, 1)]);
    throttle(&p, 1, 60);
    for _ in 0..3 {
        let order = walk(&p, 4, Instant::now());
        assert!(!order.contains(&1), "{order:?}");
        assert_eq!(order.len(), 4);
    }
    // Cooling is per deployment: another one still goes there.
    let (s, _) = p.select(Some("embed"), None, Instant::now()).unwrap();
    assert!(s.accepts(1, Instant::now()));
    // And it ends when the backend said.
    let later = Instant::now() + Duration::from_secs(61);
    assert!(walk(&p, 3, later).contains(&1));
}

#[test]
fn everything_cooling_gives_the_shortest_wait() {
    let p = pool(&[(0, 1), (1, 1)]);
    throttle(&p, 0, 30);
    throttle(&p, 1, 5);
    let Err(Unavailable::Cooling { shortest }) = p.select(GPT, None, Instant::now()) else {
        panic!("a cooling backend was chosen");
    };
    assert!(shortest <= Duration::from_secs(5) && shortest > Duration::from_secs(4));
}

#[test]
fn unhealthy_backends_sit_out_unless_nothing_else_could_serve() {
    let p = pool(&[(0, 1), (0, 1)]);
    fail(&p, 0);
    for _ in 0..3 {
        assert_eq!(walk(&p, 3, Instant::now()), vec![1, 1, 1]);
    }
    fail(&p, 1);
    assert_eq!(
        walk(&p, 2, Instant::now()).len(),
        2,
        "all ejected: all tried"
    );
    // A cooling backend is still left alone, and the unhealthy one is tried only once: the
    // cooling one says when it is back.
    throttle(&p, 0, 60);
    let now = Instant::now();
    assert_eq!(walk(&p, 3, now), vec![1]);
    let (selection, _) = p.select(GPT, None, now).unwrap();
    let left = selection
        .shortest_cooldown_at(Moment::of(now))
        .expect("a cooling backend");
    assert!(left > Duration::from_secs(59) && left <= Duration::from_secs(60));
}

#[test]
fn lower_priority_groups_go_first_and_spill_in_order() {
    let p = pool(&[(1, 1), (0, 1), (0, 1), (2, 1)]);
    assert_eq!(walk(&p, 4, Instant::now()), vec![1, 2, 0, 3]);
    // The first group cooling: the second takes the traffic.
    throttle(&p, 1, 60);
    throttle(&p, 2, 60);
    assert_eq!(walk(&p, 1, Instant::now()), vec![0]);
    assert_eq!(walk(&p, 1, Instant::now()), vec![0]);
    // A group a request did not use kept its place in the rotation.
    let later = Instant::now() + Duration::from_secs(61);
    let firsts: Vec<usize> = (0..2).flat_map(|_| walk(&p, 1, later)).collect();
    assert_eq!(firsts, vec![2, 1]);
}

#[test]
fn the_reason_a_request_cannot_be_served() {
    let p = pool_with(&[(0, 1)], "auth: {kind: managed_identity}\n");
    assert_eq!(
        p.select(GPT, None, Instant::now()).err(),
        Some(Unavailable::NoToken),
        "no token: no backend is called without credentials"
    );
    let token = HeaderValue::from_static("Bearer t");
    let (_, pick) = p.select(GPT, Some(token.clone()), Instant::now()).unwrap();
    assert!(matches!(pick.credential, Credential::EntraToken(v) if v == token));

    let yaml = "listen: [\"127.0.0.1:1\"]\nauth: {kind: none}\nbackends:\n  - {url: \"http://127.0.0.1:1\", deployments: {gpt-4o: gpt-4o-eu}}\n";
    let p = Pool::new(&crate::config::Config::from_yaml(yaml).unwrap(), None).unwrap();
    assert_eq!(
        p.select(Some("o3"), None, Instant::now()).err(),
        Some(Unavailable::UnknownDeployment)
    );
    assert!(p.select(GPT, None, Instant::now()).is_ok());
}

#[test]
fn the_healthy_path_allocates_nothing() {
    let p = pool_with(
        &[(0, 1), (0, 1), (1, 1)],
        "auth: {kind: managed_identity}\n",
    );
    let token = HeaderValue::from_static("Bearer t");
    let info = allocation_counter::measure(|| {
        let picked = p
            .select(GPT, Some(token.clone()), Instant::now())
            .map(|(_, pick)| pick.index);
        let _ = std::hint::black_box(picked);
    });
    assert_eq!(info.count_total, 0, "selection allocated");
}

#[test]
fn a_fresh_token_retries_the_same_backend_unless_it_cooled() {
    let p = pool_with(&[(0, 1), (0, 1)], "auth: {kind: managed_identity}\n");
    let old = HeaderValue::from_static("Bearer old");
    let fresh = HeaderValue::from_static("Bearer fresh");
    let (mut s, first) = p.select(GPT, Some(old), Instant::now()).unwrap();
    let again = s.again(first.index, fresh.clone(), Instant::now()).unwrap();
    assert_eq!(again.index, first.index);
    assert!(matches!(again.credential, Credential::EntraToken(v) if v == fresh));
    // The repeat is not another turn: the next pick is the other backend, then this one.
    let (mut s2, first2) = p.select(GPT, Some(fresh.clone()), Instant::now()).unwrap();
    let again = s2
        .again(first2.index, fresh.clone(), Instant::now())
        .unwrap();
    assert_eq!(s2.next(Instant::now()).unwrap().index, 1 - again.index);
    // Ejected while the token came: it just answered, so it is tried again all the same.
    fail(&p, first.index);
    assert!(s
        .again(first.index, fresh.clone(), Instant::now())
        .is_some());
    // Cooling: not.
    throttle(&p, first.index, 60);
    assert!(s.again(first.index, fresh, Instant::now()).is_none());
}

mod properties {
    use super::*;
    use crate::outcome::Sent;
    use crate::retry::{Forward, Policy, Try, Verdict};
    use proptest::prelude::*;

    /// (priority, weight) of each backend, which are cooling, which ejected, `max_tries`.
    type Setup = (Vec<(u8, u16)>, Vec<bool>, Vec<bool>, u32);

    /// A pool of 1 to 6 backends with random priorities and weights, some cooling and
    /// some ejected, and a `max_tries`.
    fn setups() -> impl Strategy<Value = Setup> {
        (1usize..=6).prop_flat_map(|n| {
            (
                proptest::collection::vec((0u8..3, 1u16..4), n),
                proptest::collection::vec(any::<bool>(), n),
                proptest::collection::vec(any::<bool>(), n),
                1u32..=8,
            )
        })
    }

    proptest! {
        /// The try loop as the proxy runs it, every try failing: the backends it picks.
        #[test]
        fn never_twice_while_another_is_left_never_over_max_tries_never_cooling(
            (backends, cooling, ejected, max) in setups()
        ) {
            let p = pool(&backends);
            let now = Instant::now();
            for i in 0..backends.len() {
                if cooling[i] {
                    throttle(&p, i, 60);
                }
                if ejected[i] {
                    fail(&p, i);
                }
            }
            let usable: Vec<usize> = (0..backends.len()).filter(|&i| !cooling[i]).collect();
            let Ok((s, first)) = p.select(GPT, None, now) else {
                prop_assert!(usable.is_empty(), "a usable backend, yet none chosen");
                return Ok(());
            };
            let mut policy = Forward::new(s, max);
            let mut picks = vec![first.index];
            loop {
                let t = Try {
                    backend: picks[picks.len() - 1],
                    made: picks.len() as u32,
                    sent: Sent::Nothing,
                    outcome: Outcome::Failed(Failure::Connect),
                };
                match policy.decide(&t) {
                    Verdict::Next(pick) => picks.push(pick.index),
                    Verdict::Deliver => break,
                    other => prop_assert!(false, "no token was sent, nothing to read: {other:?}"),
                }
            }
            // Every try is made: a backend is always left (a tried one may go again), except
            // that unhealthy backends, when no usable one is healthy, go once each while
            // another is only cooling.
            let healthy: Vec<usize> = usable.iter().copied().filter(|&i| !ejected[i]).collect();
            let expected = match healthy.is_empty() && cooling.contains(&true) {
                true => max.min(usable.len() as u32),
                false => max,
            };
            prop_assert_eq!(picks.len() as u32, expected, "tries made of {}", max);
            for &i in &picks {
                prop_assert!(!cooling[i], "cooling backend {i} chosen: {picks:?}");
            }
            // Healthy usable backends come first; each is tried once before any twice.
            let pool_of = if healthy.is_empty() { &usable } else { &healthy };
            let distinct = pool_of.len().min(picks.len());
            let mut seen = picks[..distinct].to_vec();
            seen.sort_unstable();
            seen.dedup();
            prop_assert_eq!(seen.len(), distinct, "a backend twice while another was left: {:?}", picks);
            prop_assert!(picks.iter().all(|i| pool_of.contains(i)), "an ejected backend while a healthy one was left: {:?}", picks);
        }
    }
}

/// A pool with `balance.strategy: headroom` whose backends said they have `left` tokens.
fn headroom_pool(backends: &[(u8, u16)], left: &[u64]) -> Pool {
    let p = pool_with(
        backends,
        "auth: {kind: none}\nbalance: {strategy: headroom}\n",
    );
    let now = Instant::now();
    for (i, &tokens) in left.iter().enumerate() {
        let said = crate::balance::Report {
            tokens: Some(tokens),
            token_limit: Some(100_000),
            ..Default::default()
        };
        p.get(i).capacity.report(GPT, &said, now, now);
    }
    p
}

#[test]
fn headroom_weighs_the_tokens_left_and_passes_over_a_backend_too_full() {
    let now = Instant::now();
    // Weight 2 with 12k left ranks above weight 1 with 20k (24k against 20k), whatever the turn.
    for _ in 0..3 {
        let p = headroom_pool(&[(0, 1), (0, 2)], &[20_000, 12_000]);
        let (_, first) = p.select_costing(GPT, 1_000, None, now).unwrap();
        assert_eq!(first.index, 1);
    }
    // The estimate no longer fits the one with most left: the other is picked.
    let p = headroom_pool(&[(0, 1), (0, 1)], &[20_000, 12_000]);
    let (_, first) = p.select_costing(GPT, 15_000, None, now).unwrap();
    assert_eq!(first.index, 0);
    let (_, first) = p.select_costing(GPT, 15_000, None, now).unwrap();
    assert_eq!(
        first.index, 1,
        "0 has 5k left after the first: both too full, the rotation"
    );
    // A full first group sends the request to the next, not to a 429.
    let p = headroom_pool(&[(0, 1), (1, 1)], &[500, 90_000]);
    let (_, first) = p.select_costing(GPT, 1_000, None, now).unwrap();
    assert_eq!(first.index, 1);
}
