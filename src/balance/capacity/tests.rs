use super::*;

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, v.parse().unwrap());
    }
    h
}

fn report(tokens: u64, requests: u64) -> Report {
    Report::read(&headers(&[
        ("x-ratelimit-remaining-tokens", &tokens.to_string()),
        ("x-ratelimit-remaining-requests", &requests.to_string()),
    ]))
    .unwrap()
}

#[test]
fn headers_are_read_and_minus_one_says_nothing() {
    let r = Report::read(&headers(&[
        ("x-ratelimit-remaining-tokens", "9000"),
        ("x-ratelimit-remaining-requests", "-1"),
        ("x-ratelimit-limit-tokens", "30000"),
        ("azure-openai-deployment-utilization", "37.5%"),
    ]))
    .unwrap();
    assert_eq!(r.tokens, Some(9000));
    assert_eq!(r.requests, None);
    assert_eq!(r.token_limit, Some(30000));
    assert_eq!(r.utilization, Some(37.5));
    assert_eq!(Report::read(&headers(&[("content-type", "x")])), None);
    assert_eq!(
        Report::read(&headers(&[("x-ratelimit-remaining-tokens", "-1")])),
        None
    );
}

#[test]
fn a_level_refills_at_its_limit_a_minute_up_to_the_limit() {
    let c = Capacity::default();
    let t0 = Instant::now();
    let limit = Report {
        token_limit: Some(60_000),
        ..report(0, 10)
    };
    c.report(Some("d"), &limit, t0, t0);
    assert_eq!(
        c.room(Some("d"), 1, t0),
        Room::Full(Duration::from_millis(1))
    );
    // 1,000 tokens a second.
    let later = t0 + Duration::from_secs(2);
    assert_eq!(c.room(Some("d"), 1500, later), Room::Tokens(2000.0));
    assert_eq!(
        c.room(Some("d"), 2500, later),
        Room::Full(Duration::from_millis(500))
    );
    let much_later = t0 + Duration::from_secs(600);
    assert_eq!(c.room(Some("d"), 1, much_later), Room::Tokens(60_000.0));
}

#[test]
fn without_a_limit_header_the_largest_level_seen_is_the_limit() {
    let c = Capacity::default();
    let t0 = Instant::now();
    c.report(None, &report(30_000, 100), t0, t0);
    c.report(None, &report(0, 99), t0, t0);
    let later = t0 + Duration::from_secs(30);
    assert_eq!(c.room(None, 10, later), Room::Tokens(15_000.0));
    assert_eq!(c.tokens(None, later), Some((15_000, 30_000)));
}

#[test]
fn no_request_left_or_full_utilization_is_full_and_unknown_has_room() {
    let c = Capacity::default();
    let t0 = Instant::now();
    assert_eq!(c.room(Some("d"), 10, t0), Room::Unknown);
    c.report(Some("d"), &report(50_000, 0), t0, t0);
    assert!(matches!(c.room(Some("d"), 10, t0), Room::Full(_)));
    let ptu = Report {
        utilization: Some(100.0),
        ..Report::default()
    };
    c.report(Some("p"), &ptu, t0, t0);
    assert_eq!(c.room(Some("p"), 10, t0), Room::Full(Duration::ZERO));
    // Utilization falls back as the minute passes.
    let later = t0 + Duration::from_secs(6);
    assert_eq!(c.room(Some("p"), 10, later), Room::Unknown);
    assert_eq!(c.room(Some("other"), 10, t0), Room::Unknown);
}

#[test]
fn a_request_sent_is_taken_off_until_the_answer_says() {
    let c = Capacity::default();
    let t0 = Instant::now();
    c.report(Some("d"), &report(5000, 10), t0, t0);
    c.charge(Some("d"), 3000, t0);
    assert_eq!(c.room(Some("d"), 2000, t0), Room::Tokens(2000.0));
    c.charge(Some("d"), 3000, t0);
    assert!(matches!(c.room(Some("d"), 1, t0), Room::Full(_)));
    c.report(Some("d"), &report(4000, 8), t0, t0);
    assert_eq!(c.room(Some("d"), 1, t0), Room::Tokens(4000.0));
}

#[test]
fn levels_are_shared_at_most_every_quarter_second() {
    let c = Capacity::default();
    let t0 = Instant::now();
    assert!(c.report(Some("d"), &report(1, 1), t0, t0));
    assert!(!c.report(
        Some("d"),
        &report(1, 1),
        t0 + SHARE_EVERY / 2,
        t0 + SHARE_EVERY / 2
    ));
    assert!(c.report(Some("d"), &report(1, 1), t0 + SHARE_EVERY, t0 + SHARE_EVERY));
    assert!(c.report(Some("e"), &report(1, 1), t0, t0), "per deployment");
}

#[test]
fn a_level_with_no_known_limit_is_believed_a_second_and_a_huge_request_fits_a_full_quota() {
    let c = Capacity::default();
    let t0 = Instant::now();
    let zero = Report {
        tokens: Some(0),
        ..Report::default()
    };
    c.report(None, &zero, t0, t0);
    assert!(matches!(c.room(None, 10, t0), Room::Full(_)));
    assert_eq!(c.room(None, 10, t0 + UNREFILLED), Room::Unknown);
    let full = Report {
        tokens: Some(30_000),
        ..Report::default()
    };
    c.report(Some("d"), &full, t0, t0);
    assert_eq!(c.room(Some("d"), 1_000_000, t0), Room::Tokens(30_000.0));
}

#[test]
fn at_most_64_deployments_are_remembered() {
    let c = Capacity::default();
    let r = Report {
        tokens: Some(1),
        ..Report::default()
    };
    for i in 0..100 {
        c.report(Some(&format!("d{i}")), &r, Instant::now(), Instant::now());
    }
    assert_eq!(c.token_levels(Instant::now()).len(), DEPLOYMENTS);
    // Asked of, a deployment never reported adds nothing.
    c.charge(Some("never"), 5, Instant::now());
    assert_eq!(c.token_levels(Instant::now()).len(), DEPLOYMENTS);
}

#[test]
fn a_provisioned_deployment_s_percent_is_learned_from_the_requests_sent() {
    let c = Capacity::default();
    let t0 = Instant::now();
    let at = |u: f64| Report {
        utilization: Some(u),
        ..Report::default()
    };
    c.report(Some("p"), &at(50.0), t0, t0);
    // Unknown size: room below 100%.
    assert_eq!(c.room(Some("p"), 5000, t0), Room::Unknown);
    // 2,000 tokens sent made it rise 2%: a percent holds 1,000 tokens.
    c.charge(Some("p"), 2000, t0);
    c.report(Some("p"), &at(52.0), t0, t0);
    assert_eq!(c.room(Some("p"), 5000, t0), Room::Tokens(48_000.0));
    c.report(Some("p"), &at(99.0), t0, t0);
    let full = c.room(Some("p"), 5000, t0);
    assert!(
        matches!(full, Room::Full(d) if d > Duration::from_millis(2000) && d < Duration::from_millis(2500)),
        "{full:?}"
    );
}

#[test]
fn an_answer_counts_what_was_sent_after_its_request() {
    let c = Capacity::default();
    let t0 = Instant::now();
    c.report(Some("d"), &report(60_000, 100), t0, t0);
    // Sent at t0 + 1 ms; two more sent before its answer, which says what was left on arrival.
    let first = t0 + Duration::from_millis(1);
    c.charge(Some("d"), 5_000, first);
    c.charge(Some("d"), 5_000, t0 + Duration::from_millis(2));
    c.charge(Some("d"), 5_000, t0 + Duration::from_millis(3));
    c.report(
        Some("d"),
        &report(55_000, 99),
        first,
        t0 + Duration::from_millis(3),
    );
    let left = c
        .tokens(Some("d"), t0 + Duration::from_millis(3))
        .unwrap()
        .0;
    assert!((44_990..=45_010).contains(&left), "{left}");
}
