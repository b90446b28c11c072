//! What an answer cost, from the tokens its backend reported and its deployment's `prices`:
//! `(prompt - cached) × input + cached × cached_input + completion × output`, per 1M tokens.

use super::Usage;
use crate::config::{Price, NANOS_PER_USD};

/// The cost of `usage` at `price`, in US dollars.
pub fn usd(price: &Price, usage: &Usage) -> f64 {
    let cached = usage.cached.unwrap_or(0).min(usage.prompt);
    let fresh = usage.prompt - cached;
    let millionths = fresh as f64 * price.input
        + cached as f64 * price.cached_input
        + usage.completion as f64 * price.output;
    millionths / 1e6
}

/// `usd` in billionths of a dollar, as budgets count (saturating; never negative).
pub fn nanos(usd: f64) -> u64 {
    (usd * NANOS_PER_USD).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_prompt_tokens_cost_the_cached_price() {
        let price = Price {
            input: 2.5,
            output: 10.0,
            cached_input: 1.25,
        };
        let usage = Usage {
            prompt: 1_000_000,
            completion: 500_000,
            cached: Some(400_000),
            reasoning: None,
        };
        // 600k fresh at 2.50, 400k cached at 1.25, 500k out at 10.00.
        assert!((usd(&price, &usage) - (1.5 + 0.5 + 5.0)).abs() < 1e-9);
        assert_eq!(nanos(usd(&price, &usage)), 7_000_000_000);
        // A backend that reports more cached than prompt tokens is not paid for it twice.
        let odd = Usage {
            prompt: 10,
            completion: 0,
            cached: Some(20),
            reasoning: None,
        };
        assert!((usd(&price, &odd) - 10.0 * 1.25 / 1e6).abs() < 1e-15);
        assert_eq!(nanos(-1.0), 0);
    }
}
