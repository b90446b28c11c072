//! The order in which backends are asked for a stateful object: the one known to hold it first,
//! then every other that could hold it. Unlike [`super::Selection`], a backend's health does not
//! keep it out: an object lives on one backend only, and a cooling or ejected holder must answer
//! for it (a 429 the client can wait out) rather than be skipped for a false "not found".

use std::time::Instant;

use http::HeaderValue;
use smallvec::SmallVec;

use super::standing::{Moment, Standing};
use super::{Pick, Pool, Unavailable};

impl Pool {
    /// The backends to ask for an object, in order, for a request naming `deployment`, with
    /// `token` the proxy's current Entra ID token header: `holder` first when it could serve
    /// the request, then those in good standing, then the rest, each by priority and in file
    /// order. Backends that do not serve the deployment are left out. Every other one must be
    /// asked: when one needs a token and none is held, [`Unavailable::NoToken`] (the caller
    /// waits for the token rather than tell the client "not found" without asking it).
    pub fn search_order(
        &self,
        deployment: Option<&str>,
        token: Option<&HeaderValue>,
        holder: Option<usize>,
        now: Instant,
    ) -> Result<SmallVec<[Pick; 4]>, Unavailable> {
        let at = Moment::of(now);
        let mut serving = false;
        let mut no_token = false;
        let mut order: SmallVec<[(bool, bool, usize, Pick); 4]> = SmallVec::new();
        for (index, b) in self.backends.iter().enumerate() {
            if b.naming(deployment).is_none() {
                continue;
            }
            serving = true;
            let Some(credential) = b.credential(token) else {
                no_token = true;
                continue;
            };
            let good = b.standing.standing(deployment, at) == Standing::Good;
            let key = (Some(index) != holder, !good, self.group_of[index]);
            order.push((key.0, key.1, key.2, Pick { index, credential }));
        }
        if no_token {
            return Err(Unavailable::NoToken);
        }
        if !serving {
            return Err(Unavailable::UnknownDeployment);
        }
        // Stable: file order within a group.
        order.sort_by_key(|&(other, bad, group, _)| (other, bad, group));
        Ok(order.into_iter().map(|(.., pick)| pick).collect())
    }

    /// The index of the backend named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.backends.iter().position(|b| b.name == name)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::pool::tests::pool;
    use super::*;

    fn order(p: &Pool, holder: Option<usize>) -> Vec<usize> {
        p.search_order(Some("gpt-4o"), None, holder, Instant::now())
            .unwrap()
            .iter()
            .map(|pick| pick.index)
            .collect()
    }

    #[test]
    fn the_holder_comes_first_and_cooling_backends_last_but_present() {
        let p = pool(&[(0, 1), (0, 1), (1, 1)]);
        assert_eq!(order(&p, None), [0, 1, 2]);
        assert_eq!(order(&p, Some(2)), [2, 0, 1]);
        p.get(0)
            .standing
            .cool(Some("gpt-4o"), Duration::from_secs(60), "test");
        assert_eq!(order(&p, None), [1, 2, 0], "cooling, yet still asked");
        assert_eq!(
            order(&p, Some(0)),
            [0, 1, 2],
            "a cooling holder is asked first"
        );
    }
}
