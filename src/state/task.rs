//! The background task of the shared state: it connects (and checks, every half second while
//! Redis is down), writes what requests queued, listens for other replicas' cooldowns, and
//! resynchronises when Redis comes back.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, watch, Mutex};

use super::capacity;
use super::cooldowns::{self, Message};
use super::{limits, objects, quotas};
use super::{unix_now, SharedState, Write, CHECK_EVERY};
use crate::balance::Pool;

/// Keeps [`SharedState`] connected and in step.
pub struct StateTask {
    pub state: Arc<SharedState>,
    /// The quota counts this replica may have made alone while Redis was down.
    pub quotas: Arc<super::quotas::SharedQuotas>,
    pub pools: watch::Receiver<Arc<Pool>>,
    pub writes: Mutex<Option<mpsc::Receiver<Write>>>,
    /// The response cache's index of prompts (`cache.semantic`), which other replicas' prompts
    /// go into.
    pub prompts: Option<Arc<crate::cache::semantic::SemanticIndex>>,
}

#[async_trait]
impl BackgroundService for StateTask {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(writes) = self.writes.lock().await.take() else {
            return;
        };
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = self.keep_up() => {}
            _ = self.write(writes) => {}
            _ = self.listen() => {}
        }
    }
}

impl StateTask {
    /// Connects, then checks Redis every [`CHECK_EVERY`] while it is down; on each return,
    /// resynchronises.
    async fn keep_up(&self) {
        let state = &self.state;
        loop {
            if state.conn.load().is_none() {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(state.timeout.max(CHECK_EVERY)))
                    .set_response_timeout(Some(state.timeout))
                    .set_number_of_retries(1);
                let connect = ConnectionManager::new_with_config(state.client.clone(), config);
                match tokio::time::timeout(CHECK_EVERY * 4, connect).await {
                    Ok(Ok(conn)) => state.conn.store(Some(Arc::new(conn))),
                    Ok(Err(e)) => state.note_unreachable(&e.to_string()),
                    Err(_) => state.note_unreachable("connecting timed out"),
                }
            }
            if !state.is_up() {
                if let Some(conn) = state.conn.load_full() {
                    let mut conn = (*conn).clone();
                    let cmd = redis::cmd("PING");
                    let ping = cmd.query_async::<String>(&mut conn);
                    // A slower first answer is allowed: a Redis that just came back is busy.
                    match tokio::time::timeout(state.timeout.max(CHECK_EVERY), ping).await {
                        Ok(Ok(_)) => {
                            if state.mark_up() {
                                self.resync().await;
                            }
                        }
                        Ok(Err(e)) => state.note_unreachable(&e.to_string()),
                        Err(_) => state.note_unreachable("PING timed out"),
                    }
                }
            }
            tokio::time::sleep(CHECK_EVERY).await;
        }
    }

    /// Publishes the cooldowns and ejections in force here (seen while Redis was down), tells
    /// the quota counts made here meanwhile, and applies the cooldowns the other replicas keep.
    async fn resync(&self) {
        let pool = self.pools.borrow().clone();
        for (backend, change) in cooldowns::in_force(&pool) {
            self.state.send(Write::Standing { backend, change });
        }
        let told = self.quotas.tell_untold();
        if told > 0 {
            log::info!("state store: {told} quota count(s) made while it was down told");
        }
        let applied = cooldowns::take_in_kept(&self.state, &pool).await;
        if applied > 0 {
            log::info!(
                "state store: {applied} cooldown(s) or ejection(s) of other replicas applied"
            );
        }
    }

    /// Writes what requests queued, one at a time, each within the timeout.
    async fn write(&self, mut writes: mpsc::Receiver<Write>) {
        let state = &self.state;
        let (publish, learn, settle) = (
            &redis::Script::new(cooldowns::PUBLISH),
            &redis::Script::new(objects::LEARN),
            &redis::Script::new(limits::SETTLE),
        );
        while let Some(write) = writes.recv().await {
            if !state.is_up() {
                // Down: it stays local. Cooldowns are published again on the return.
                continue;
            }
            let done = match write {
                Write::Standing { backend, change } => {
                    cooldowns::publish(state, publish, &backend, &change).await
                }
                Write::Capacity {
                    backend,
                    deployment,
                    report,
                } => capacity::publish(state, &backend, deployment, &report).await,
                Write::Learn { id, backend } => objects::learn(state, learn, id, backend).await,
                Write::Forget { id } => objects::forget(state, id).await,
                Write::Settle {
                    client,
                    admitted_second,
                    estimate,
                    now_second,
                    spent,
                } => {
                    let admitted = (admitted_second, estimate);
                    limits::settle(state, settle, &client, admitted, (now_second, spent)).await
                }
                Write::Spend(told) => quotas::tell(state, told).await.map(|()| 1),
                Write::Prompt(wire) => super::cache::publish_prompt(state, wire).await,
            };
            if done.is_none() {
                log::debug!("state store: a write was not made");
            }
        }
    }

    /// Listens for the cooldowns, ejections and quota reports other replicas publish, and
    /// applies them to the pool in force; reconnects when the subscription breaks.
    async fn listen(&self) {
        let state = &self.state;
        let (health, capacity) = (state.key("health"), state.key("capacity"));
        let prompts = state.key(super::cache::PROMPTS);
        loop {
            let subscribed = async {
                let mut pubsub = state.client.get_async_pubsub().await?;
                pubsub.subscribe(&[&health, &capacity, &prompts]).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let pubsub = match tokio::time::timeout(CHECK_EVERY * 4, subscribed).await {
                Ok(Ok(p)) => p,
                _ => {
                    tokio::time::sleep(CHECK_EVERY).await;
                    continue;
                }
            };
            let mut messages = pubsub.into_on_message();
            while let Some(msg) = messages.next().await {
                let payload = msg.get_payload_bytes();
                let pool = self.pools.borrow().clone();
                if msg.get_channel_name() == prompts {
                    let prompt = serde_json::from_slice::<super::cache::Prompt>(payload);
                    if let (Ok(p), Some(index)) = (prompt, &self.prompts) {
                        p.apply(index, &state.replica);
                    }
                    continue;
                }
                if msg.get_channel_name() == capacity {
                    match serde_json::from_slice::<capacity::Message>(payload) {
                        Ok(m) if m.replica != state.replica => _ = m.apply(&pool),
                        _ => {}
                    }
                    continue;
                }
                match serde_json::from_slice::<Message>(payload) {
                    Ok(m) if m.replica != state.replica => _ = m.apply(&pool, unix_now()),
                    _ => {}
                }
            }
            // The subscription broke: Redis went away.
            state.mark_down("the subscription to other replicas' cooldowns broke");
            tokio::time::sleep(CHECK_EVERY).await;
        }
    }
}
