//! [`LocalQuotas`] as a [`QuotaStore`]: the counts of a process of its own (no `state.redis`).

use std::time::Duration;

use super::{Charged, LocalQuotas, OverQuota, QuotaStore, Spend, Standing};
use crate::config::ClientLimits;

#[async_trait::async_trait]
impl QuotaStore for LocalQuotas {
    async fn charge(
        &self,
        client: &str,
        limits: &ClientLimits,
        estimate: Spend,
        now: Duration,
    ) -> Result<Charged, OverQuota> {
        self.charge_here(client, limits, estimate, now)
    }

    fn settle(
        &self,
        client: &str,
        limits: &ClientLimits,
        charged: &Charged,
        spent: Spend,
        now: Duration,
    ) {
        self.settle_here(client, limits, charged, spent, now)
    }

    async fn standing(
        &self,
        client: &str,
        limits: &ClientLimits,
        now: Duration,
    ) -> [Option<Standing>; 2] {
        self.standing_here(client, limits, now)
    }
}
