//! The semantic cache's embeddings (`cache.semantic.embeddings_deployment`), asked of the
//! proxy's own backends as any request would be: the deployment's turn of the round robin, the
//! proxy's credential, the forward policy's retries (a 429 or a 5xx tries the next backend),
//! and the balancer told what each try produced. Not a client's request: it charges no
//! client's limits, and it is not in the access log.

use bytes::Bytes;
use pingora::http::RequestHeader;
use serde::Deserialize;

use super::exchange::{self, Attempt};
use super::headers::Added;
use super::Gateway;
use crate::balance::{Backend, Naming, Pick};
use crate::metrics::Retried;
use crate::retry::{Policy, Product, Settled, Try, Verdict};

/// The API version the embeddings are asked with: generally available, and answered alike by
/// every version since.
const API_VERSION: &str = "2024-10-21";
/// The largest embeddings answer read.
const MAX_ANSWER: usize = 4 << 20;

#[derive(Deserialize)]
struct Embeddings {
    data: Vec<Embedded>,
}

#[derive(Deserialize)]
struct Embedded {
    embedding: Vec<f32>,
}

impl Gateway {
    /// The embedding of `input`, or `None` when no backend gave one.
    pub(super) async fn embed(&self, input: &str) -> Option<Vec<f32>> {
        let semantic = self.cache.as_ref()?.config.semantic.as_ref()?;
        let deployment = semantic.embeddings_deployment.as_str();
        let body = Bytes::from(serde_json::to_vec(&serde_json::json!({ "input": input })).ok()?);
        let (mut policy, mut start) = self.forward_plan(Some(deployment), 0).await.ok()?;
        for made in 1.. {
            let index = start.pick.index;
            let backend = self.pool.get(index);
            let attempt = self
                .embedding_try(backend, &start.pick, deployment, &body)
                .await?;
            let outcome = attempt.outcome();
            let tried = Try {
                backend: index,
                made,
                sent: start.pick.credential.sent(),
                outcome,
            };
            let next = match policy.decide(&tried) {
                Verdict::Deliver if outcome.is_success() => {
                    Settled::Deliver(self.relay.read(index, attempt, MAX_ANSWER).await)
                }
                Verdict::Read(max) => {
                    let product = self.relay.read(index, attempt, max).await;
                    policy.settle(&tried, product)
                }
                Verdict::Next(next) => {
                    self.relay.set_aside(attempt);
                    Settled::Next(next)
                }
                _ => {
                    self.relay.set_aside(attempt);
                    Settled::End
                }
            };
            let retried = match next {
                Settled::Next(_) => Retried::Yes,
                _ => Retried::No,
            };
            self.metrics.record_try(&backend.stats, outcome, retried);
            match next {
                Settled::Next(pick) => start.pick = pick,
                Settled::Deliver(Product::Whole(whole)) if whole.head.status == 200 => {
                    let answer: Embeddings = serde_json::from_slice(&whole.body).ok()?;
                    return answer.data.into_iter().next().map(|e| e.embedding);
                }
                _ => return None,
            }
        }
        None
    }

    /// One try of the embeddings of `body` on `pick`'s `backend`, and the balancer told of it.
    async fn embedding_try(
        &self,
        backend: &Backend,
        pick: &Pick,
        deployment: &str,
        body: &Bytes,
    ) -> Option<Attempt> {
        let own = match backend.naming(Some(deployment)) {
            Some(Naming::Renamed(own)) => own,
            _ => deployment,
        };
        let path = format!("/openai/deployments/{own}/embeddings?api-version={API_VERSION}");
        let mut head = RequestHeader::build("POST", path.as_bytes(), Some(3)).ok()?;
        head.insert_header("content-type", "application/json")
            .ok()?;
        let added = Added {
            host: &backend.host_header,
            credential: &pick.credential,
            traceparent: None,
            continues: false,
        };
        let wire = exchange::Request::for_backend(&head, path.as_bytes(), added, body).ok()?;
        let peer = backend.peer()?;
        let t = &self.relay.timeouts;
        let sent_at = std::time::Instant::now();
        let upstream = &self.relay.upstream;
        let attempt = exchange::send(upstream, &peer, &wire, t.response_header, t.body_idle).await;
        self.observe(
            pick.index,
            attempt.outcome(),
            sent_at,
            &attempt,
            Some(deployment),
        );
        Some(attempt)
    }
}
