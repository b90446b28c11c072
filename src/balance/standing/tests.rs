use super::*;

#[test]
fn cooldowns_are_per_deployment() {
    let h = BackendStanding::new("b");
    let now = Instant::now();
    assert_eq!(h.cooling_left(Some("gpt-4o"), now), None);
    h.cool(Some("gpt-4o"), Duration::from_secs(5), "test");
    let left = h.cooling_left(Some("gpt-4o"), Instant::now()).unwrap();
    assert!(left > Duration::from_secs(4) && left <= Duration::from_secs(5));
    assert_eq!(h.cooling_left(Some("gpt-35"), now), None);
    assert_eq!(h.cooling_left(None, now), None);
    assert_eq!(
        h.cooling_left(Some("gpt-4o"), now + Duration::from_secs(6)),
        None
    );
    // A shorter cooldown never cuts a longer one short.
    h.cool(Some("gpt-4o"), Duration::from_secs(1), "test");
    assert!(h.cooling_left(Some("gpt-4o"), Instant::now()).unwrap() > Duration::from_secs(4));
}

#[test]
fn ejection_grows_while_failing_and_one_success_restores() {
    let policy = EjectionPolicy {
        failures: 3,
        base: Duration::from_secs(10),
        max: Duration::from_secs(25),
    };
    let h = BackendStanding::new("b");
    h.record_failure(&policy);
    h.record_failure(&policy);
    assert!(!h.is_ejected(Instant::now()));
    h.record_failure(&policy);
    let first = h.snapshot(Instant::now()).ejected.unwrap();
    assert!(first > Duration::from_secs(9) && first <= Duration::from_secs(10));
    // Back after the ejection, it fails at once: ejected again, for twice as long.
    h.ejected_until.store(0, Ordering::Release);
    h.record_failure(&policy);
    let second = h.snapshot(Instant::now()).ejected.unwrap();
    assert!(second > Duration::from_secs(19), "{second:?}");
    h.ejected_until.store(0, Ordering::Release);
    h.record_failure(&policy);
    assert!(
        h.snapshot(Instant::now()).ejected.unwrap() <= Duration::from_secs(25),
        "capped"
    );
    h.record_success();
    assert!(!h.is_ejected(Instant::now()));
    h.record_failure(&policy);
    assert!(!h.is_ejected(Instant::now()), "a success resets the count");
}

#[test]
fn a_throttled_answer_cools_the_deployment_for_as_long_as_allowed() {
    let cooldown = CooldownPolicy {
        default: Duration::from_secs(10),
        max: Duration::from_secs(3600),
    };
    let eject_at_once = EjectionPolicy {
        failures: 1,
        ..Default::default()
    };
    let status = |s| Outcome::Status(http::StatusCode::from_u16(s).unwrap());
    let mut asks_two_hours = HeaderMap::new();
    asks_two_hours.insert("retry-after", "7200".parse().unwrap());
    let h = BackendStanding::new("b");
    h.observe(
        status(429),
        Some(&asks_two_hours),
        Some("gpt-4o"),
        &cooldown,
        &eject_at_once,
    );
    let left = h.cooling_left(Some("gpt-4o"), Instant::now()).unwrap();
    assert!(
        left <= Duration::from_secs(3600) && left > Duration::from_secs(3590),
        "capped by cooldown.max: {left:?}"
    );
    assert!(
        !h.is_ejected(Instant::now()),
        "a 429 shows the backend alive"
    );
    // A 503 with nothing usable: the default cooldown, and it counts towards ejection.
    let h = BackendStanding::new("b");
    h.observe(
        status(503),
        Some(&HeaderMap::new()),
        None,
        &cooldown,
        &eject_at_once,
    );
    let left = h.cooling_left(None, Instant::now()).unwrap();
    assert!(
        left <= Duration::from_secs(10) && left > Duration::from_secs(9),
        "{left:?}"
    );
    assert!(h.is_ejected(Instant::now()));
    // Any answer below 500 brings it back.
    h.observe(status(404), None, None, &cooldown, &eject_at_once);
    assert!(!h.is_ejected(Instant::now()));
}

#[test]
fn probes_flip_state() {
    let h = BackendStanding::new("b");
    assert_eq!(h.snapshot(Instant::now()).probe_up, None);
    h.set_probe(false);
    assert!(h.is_probe_down());
    h.set_probe(true);
    assert_eq!(h.snapshot(Instant::now()).probe_up, Some(true));
}
