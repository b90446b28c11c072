use crate::config::*;

const BASE: &str = "listen: [\"127.0.0.1:8080\"]\nauth: {kind: none}\nbackends:\n  - url: https://a.openai.azure.com\n    deployments: {gpt-4o: gpt-4o, gpt-4o-mini: gpt-4o-mini}\n";

fn problems(yaml: &str) -> Vec<Problem> {
    Config::from_yaml(yaml).expect_err("the configuration should be refused")
}

/// Each problem as `path: message`.
fn said(p: &[Problem]) -> Vec<String> {
    p.iter()
        .map(|p| format!("{}: {}", p.path, p.message))
        .collect()
}

#[test]
fn quotas_budgets_prices_and_fallbacks_are_read_with_their_defaults() {
    let yaml = format!(
        "{BASE}clients:\n  - name: team-a\n    key: k\n    token_quota: {{tokens: 5000000, per: day}}\n    budget: {{usd: 200, per: month}}\n  - name: team-b\n    key: k2\n    token_quota: {{tokens: 10, per: 30s}}\nprices:\n  gpt-4o: {{input: 2.50, output: 10.00, cached_input: 1.25}}\n  gpt-4o-mini: {{input: 0.15, output: 0.60}}\nfallbacks:\n  - deployment: gpt-4o\n    to: [gpt-4o-mini]\n  - deployment: gpt-4o-mini\n    to: [gpt-4o]\n    on: [content_filter]\n"
    );
    let c = Config::from_yaml(&yaml).unwrap();
    let clients = c.clients.unwrap();
    let a = &clients[0].limits;
    assert_eq!(
        a.token_quota,
        Some(Allowance {
            limit: 5_000_000,
            per: Period::Day
        })
    );
    assert_eq!(
        a.budget,
        Some(Allowance {
            limit: 200_000_000_000,
            per: Period::Month
        })
    );
    assert_eq!(
        clients[1].limits.token_quota.unwrap().per,
        Period::Every(std::time::Duration::from_secs(30))
    );
    assert_eq!(c.prices["gpt-4o"].cached_input, 1.25);
    assert_eq!(
        c.prices["gpt-4o-mini"].cached_input, 0.15,
        "defaults to input"
    );
    let f = &c.fallbacks["gpt-4o"];
    assert_eq!(f.to, ["gpt-4o-mini"]);
    assert_eq!(f.on.len(), 3, "all three causes by default");
    assert_eq!(
        c.fallbacks["gpt-4o-mini"].on.iter().collect::<Vec<_>>(),
        [&FallbackCause::ContentFilter]
    );
    // Without the sections: none.
    let c = Config::from_yaml(BASE).unwrap();
    assert!(c.prices.is_empty() && c.fallbacks.is_empty());
}

#[test]
fn bad_quotas_name_their_key_and_line() {
    let p = problems(&format!(
        "{BASE}clients:\n  - name: a\n    key: k\n    token_quota: {{tokens: 10, per: fortnight}}\n"
    ));
    assert_eq!(p[0].path, "clients[0].token_quota.per");
    assert_eq!(p[0].line, Some(9));
    assert!(p[0].message.contains("not a period"), "{}", p[0].message);
    let p = problems(&format!(
        "{BASE}clients:\n  - name: a\n    key: k\n    token_quota: {{tokens: 0, per: day}}\n    budget: {{usd: -1, per: day}}\nprices:\n  gpt-4o: {{input: 1, output: 1}}\n  gpt-4o-mini: {{input: .nan, output: 1}}\n"
    ));
    let said = said(&p);
    for key in [
        "clients[0].token_quota.tokens",
        "clients[0].budget.usd",
        "prices.gpt-4o-mini.input",
    ] {
        assert!(said.iter().any(|s| s.starts_with(key)), "{key}: {said:?}");
    }
}

#[test]
fn a_budget_needs_a_price_for_every_deployment_its_client_may_use() {
    let client = |extra: &str| {
        format!(
            "{BASE}clients:\n  - name: a\n    key: k\n    budget: {{usd: 5, per: day}}\n{extra}"
        )
    };
    // The backends list two deployments; one has a price.
    let p = problems(&client("prices:\n  gpt-4o: {input: 1, output: 1}\n"));
    assert_eq!(
        said(&p),
        ["clients[0].budget: needs a price for every deployment the client may use; none in `prices` for gpt-4o-mini"]
    );
    // A client limited to the priced one is fine.
    let ok = client("    deployments: [gpt-4o]\nprices:\n  gpt-4o: {input: 1, output: 1}\n");
    assert!(Config::from_yaml(&ok).is_ok());
    // A backend that serves any name: the client must say which it uses.
    let open = "listen: [\"127.0.0.1:8080\"]\nauth: {kind: none}\nbackends:\n  - url: https://a.openai.azure.com\nclients:\n  - name: a\n    key: k\n    budget: {usd: 5, per: day}\nprices:\n  gpt-4o: {input: 1, output: 1}\n";
    let p = problems(open);
    assert_eq!(p[0].path, "clients[0].budget");
    assert!(p[0].message.contains("give the client `deployments`"));
}

#[test]
fn bad_fallbacks_are_refused() {
    let p = problems(&format!(
        "{BASE}fallbacks:\n  - deployment: gpt-4o\n    to: []\n  - deployment: gpt-4o-mini\n    to: [gpt-4o-mini, x, x]\n    on: []\n  - deployment: gpt-4o\n    to: [y]\n"
    ));
    let said = said(&p);
    for expected in [
        "fallbacks: two entries are for deployment \"gpt-4o\"",
        "fallbacks[0].to: give at least one deployment",
        "fallbacks[1].to: \"gpt-4o-mini\" is not another deployment's name",
        "fallbacks[1].to: \"x\" is listed twice",
        "fallbacks[1].on: give at least one cause",
    ] {
        assert!(
            said.iter().any(|s| s.starts_with(expected)),
            "{expected}: {said:?}"
        );
    }
    let p = problems(&format!(
        "{BASE}fallbacks:\n  - deployment: gpt-4o\n    to: [gpt-4o-mini]\n    on: [rate_limited]\n"
    ));
    assert_eq!(p[0].path, "fallbacks[0].on[0]");
    assert!(p[0].message.contains("unknown variant"), "{}", p[0].message);
}
