//! HTTP access to one or more nodes, with retries and failover.
//!
//! Each request goes to the first node whose circuit is closed. A failure there (no
//! connection, a timeout, a 5xx or 429 answer) is retried with exponential backoff and
//! jitter; when the retries run out the next node is tried. A node that failed
//! [`OPEN_AFTER`] requests in a row is skipped for [`OPEN_FOR`] (its circuit is open),
//! then tried again. Answers with a 4xx status other than 429 are the node's verdict on
//! the request and are returned, not retried.
//!
//! Requests carry only data that is safe to send again: a signed transaction is signed
//! once and the same bytes are resent, so a retry can never produce a second
//! transaction with another nonce.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::RngExt;
use serde_json::Value;

/// Consecutive failed requests that open a node's circuit.
pub const OPEN_AFTER: u32 = 3;
/// How long an open circuit skips the node.
pub const OPEN_FOR: Duration = Duration::from_secs(30);
const ATTEMPTS_PER_NODE: u32 = 3;
const BACKOFF_BASE: Duration = Duration::from_millis(100);

struct Node {
    url: String,
    failures: u32,
    open_until: Option<Instant>,
}

/// A client for a list of nodes.
pub struct Client {
    nodes: Vec<Node>,
    http: reqwest::blocking::Client,
}

/// A node's answer: HTTP status and JSON body.
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body.
    pub body: Value,
}

impl Client {
    /// A client for `urls` (tried in order).
    pub fn new(urls: &[String], timeout: Duration) -> anyhow::Result<Client> {
        if urls.is_empty() {
            bail!("no node given: pass --node URL (or list nodes in the wallet config)");
        }
        let nodes = urls
            .iter()
            .map(|u| Node {
                url: u.trim_end_matches('/').to_owned(),
                failures: 0,
                open_until: None,
            })
            .collect();
        Ok(Client {
            nodes,
            http: reqwest::blocking::Client::builder()
                .timeout(timeout)
                .build()
                .context("building the HTTP client")?,
        })
    }

    /// `GET path`.
    pub fn get(&mut self, path: &str) -> anyhow::Result<Answer> {
        self.request(|http, url| http.get(format!("{url}{path}")))
    }

    /// `POST path` with a JSON body.
    pub fn post(&mut self, path: &str, body: &Value) -> anyhow::Result<Answer> {
        self.request(|http, url| http.post(format!("{url}{path}")).json(body))
    }

    fn request(
        &mut self,
        build: impl Fn(&reqwest::blocking::Client, &str) -> reqwest::blocking::RequestBuilder,
    ) -> anyhow::Result<Answer> {
        let mut errors = Vec::new();
        let now = Instant::now();
        // Closed circuits first, in order; open ones only if nothing else is left.
        let mut order: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].open_until.is_none_or(|t| t <= now))
            .collect();
        if order.is_empty() {
            order = (0..self.nodes.len()).collect();
        }
        for i in order {
            let url = self.nodes[i].url.clone();
            for attempt in 0..ATTEMPTS_PER_NODE {
                if attempt > 0 {
                    std::thread::sleep(backoff(attempt));
                }
                match build(&self.http, &url).send() {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        if status >= 500 || status == 429 {
                            errors.push(format!("{url}: HTTP {status}"));
                            continue;
                        }
                        let body: Value = response.json().with_context(|| {
                            format!("{url} answered something that is not JSON")
                        })?;
                        let node = &mut self.nodes[i];
                        node.failures = 0;
                        node.open_until = None;
                        return Ok(Answer { status, body });
                    }
                    Err(e) => errors.push(format!("{url}: {e}")),
                }
            }
            let node = &mut self.nodes[i];
            node.failures += 1;
            if node.failures >= OPEN_AFTER {
                node.open_until = Some(Instant::now() + OPEN_FOR);
            }
        }
        bail!("no node answered:\n  {}", errors.join("\n  "))
    }
}

/// Exponential backoff with jitter: about `BACKOFF_BASE * 2^attempt`, from half to the
/// full value.
fn backoff(attempt: u32) -> Duration {
    let full = BACKOFF_BASE * 2u32.saturating_pow(attempt.min(8));
    let jitter = rand::rng().random_range(0.5..=1.0);
    full.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter() {
        for attempt in 1..6 {
            let full = BACKOFF_BASE * 2u32.pow(attempt);
            let d = backoff(attempt);
            assert!(d <= full && d >= full / 2, "{d:?} for attempt {attempt}");
        }
    }

    #[test]
    fn failing_nodes_are_skipped_after_opening() {
        // Nothing listens on these ports (port 9 is discard, normally closed).
        let mut client = Client::new(
            &["http://127.0.0.1:9".into(), "http://127.0.0.1:9/".into()],
            Duration::from_millis(200),
        )
        .unwrap();
        for _ in 0..OPEN_AFTER {
            assert!(client.get("/health").is_err());
        }
        assert!(client.nodes.iter().all(|n| n.open_until.is_some()));
    }
}
