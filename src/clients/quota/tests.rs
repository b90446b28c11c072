use super::*;
use crate::config::Period;
use jiff::Timestamp;

/// Seconds since the Unix epoch of a UTC date and time.
fn at(s: &str) -> u64 {
    let t: Timestamp = s.parse().unwrap();
    t.as_second() as u64
}

fn limits(tokens: Option<(u64, Period)>, nanos: Option<(u64, Period)>) -> ClientLimits {
    let allowance = |(limit, per)| Allowance { limit, per };
    ClientLimits {
        token_quota: tokens.map(allowance),
        budget: nanos.map(allowance),
        ..ClientLimits::default()
    }
}

fn secs(unix: u64) -> Duration {
    Duration::from_secs(unix)
}

#[test]
fn periods_are_utc_calendar_periods() {
    let t = at("2024-02-29T13:45:10Z");
    assert_eq!(
        Period::Hour.bounds(t),
        (at("2024-02-29T13:00:00Z"), at("2024-02-29T14:00:00Z"))
    );
    assert_eq!(
        Period::Day.bounds(t),
        (at("2024-02-29T00:00:00Z"), at("2024-03-01T00:00:00Z"))
    );
    // 2024-02-29 was a Thursday: its week began on Monday the 26th.
    assert_eq!(
        Period::Week.bounds(t),
        (at("2024-02-26T00:00:00Z"), at("2024-03-04T00:00:00Z"))
    );
    let monday = at("2024-02-26T00:00:00Z");
    assert_eq!(Period::Week.bounds(monday).0, monday);
    assert_eq!(Period::Week.bounds(monday - 1).1, monday);
    // A leap February, and December into the next year.
    assert_eq!(
        Period::Month.bounds(t),
        (at("2024-02-01T00:00:00Z"), at("2024-03-01T00:00:00Z"))
    );
    assert_eq!(
        Period::Month.bounds(at("2025-12-31T23:59:59Z")),
        (at("2025-12-01T00:00:00Z"), at("2026-01-01T00:00:00Z"))
    );
    assert_eq!(
        Period::Every(Duration::from_secs(10)).bounds(1_000_000_007),
        (1_000_000_000, 1_000_000_010)
    );
}

#[test]
fn a_token_quota_refuses_once_spent_and_says_when_it_resets() {
    let store = LocalQuotas::default();
    let l = limits(Some((1000, Period::Day)), None);
    let now = secs(at("2026-12-07T22:00:00Z")) + Duration::from_millis(250);
    let spend = |tokens| Spend { tokens, nanos: 0 };
    // Admitted on estimates while the count is under the quota: the fourth 300 goes past it
    // (a client overshoots by at most one request's worth), the fifth is refused.
    for _ in 0..4 {
        store.charge_here("a", &l, spend(300), now).unwrap();
    }
    let over = store.charge_here("a", &l, spend(1), now).unwrap_err();
    assert_eq!(over.kind, Kind::Tokens);
    assert_eq!(over.used, 1200);
    assert_eq!(over.resets_at, at("2026-12-08T00:00:00Z"));
    assert_eq!(over.resets_in, Duration::from_millis(2 * 3600 * 1000 - 250));
    // Another client counts apart.
    assert!(store.charge_here("b", &l, spend(999), now).is_ok());
    // The next day starts from zero.
    let tomorrow = secs(at("2026-12-08T00:00:00Z"));
    let charged = store.charge_here("a", &l, spend(900), tomorrow).unwrap();
    let standing = store.standing_here("a", &l, tomorrow)[0].unwrap();
    assert_eq!((standing.used, standing.limit), (900, 1000));
    assert_eq!(standing.resets_in, Duration::from_secs(24 * 3600));
    // The backend reported less than the estimate: room again.
    store.settle_here("a", &l, &charged, spend(100), tomorrow);
    assert_eq!(store.standing_here("a", &l, tomorrow)[0].unwrap().used, 100);
    assert!(store.charge_here("a", &l, spend(0), tomorrow).is_ok());
}

#[test]
fn a_budget_counts_money_and_either_allowance_refuses() {
    let store = LocalQuotas::default();
    let hour = Period::Every(Duration::from_secs(3600));
    let l = limits(
        Some((1_000_000, hour)),
        Some((2_000_000_000, Period::Month)),
    );
    let now = secs(at("2026-12-07T10:00:00Z"));
    let charged = store
        .charge_here(
            "a",
            &l,
            Spend {
                tokens: 10,
                nanos: 1_500_000_000,
            },
            now,
        )
        .unwrap();
    store.settle_here(
        "a",
        &l,
        &charged,
        Spend {
            tokens: 20,
            nanos: 2_100_000_000,
        },
        now,
    );
    let over = store
        .charge_here("a", &l, Spend::default(), now)
        .unwrap_err();
    assert_eq!(over.kind, Kind::Usd);
    assert_eq!(over.used, 2_100_000_000);
    assert_eq!(over.resets_at, at("2027-01-01T00:00:00Z"));
    let [tokens, usd] = store.standing_here("a", &l, now);
    assert_eq!(tokens.unwrap().used, 20);
    assert_eq!(usd.unwrap().used, 2_100_000_000);
    // A refused request is not counted.
    assert_eq!(store.standing_here("a", &l, now)[0].unwrap().used, 20);
}

#[test]
fn a_request_settled_after_its_period_ended_counts_in_the_new_one() {
    let store = LocalQuotas::default();
    let l = limits(Some((1000, Period::Hour)), None);
    let before = secs(at("2026-12-07T10:59:59Z"));
    let after = secs(at("2026-12-07T11:00:30Z"));
    let charged = store
        .charge_here(
            "a",
            &l,
            Spend {
                tokens: 500,
                nanos: 0,
            },
            before,
        )
        .unwrap();
    store.settle_here(
        "a",
        &l,
        &charged,
        Spend {
            tokens: 700,
            nanos: 0,
        },
        after,
    );
    assert_eq!(store.standing_here("a", &l, after)[0].unwrap().used, 700);
    // Nothing overflows.
    let big = store
        .charge_here(
            "b",
            &l,
            Spend {
                tokens: u64::MAX,
                nanos: 0,
            },
            after,
        )
        .unwrap();
    assert!(store.charge_here("b", &l, Spend::default(), after).is_err());
    store.settle_here("b", &l, &big, Spend::default(), after);
    assert!(store.charge_here("b", &l, Spend::default(), after).is_ok());
}
