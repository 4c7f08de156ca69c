//! The HTTP API: JSON under `/v1`, plus `/health` and `/metrics`.
//!
//! Binary payloads (transactions, blocks, certificates, proofs) are hex of their borsh
//! encoding, the exact bytes that are hashed and signed, so clients verify them without
//! trusting any JSON rendering; readable fields sit beside them.
//!
//! Request bodies are capped, and each client address has a token bucket.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use stele_consensus::{Evidence, Hash, PublicKey, SigningDomain};
use stele_ledger::{Account, KeyCache, Store, TxLocation};
use tokio::sync::{Notify, mpsc, watch};
use tracing::{info, warn};

use crate::driver::ConsensusStatus;
use crate::intake::IntakeJob;
use crate::mempool::{Admission, Intake, Mempool, MempoolLimits, PoolStatus};
use crate::metrics::Metrics;
use crate::network::PeerInfo;

/// Most transactions in one submission.
pub const SUBMIT_TXS_MAX: usize = 10_000;

/// What the handlers share.
pub struct ApiState {
    /// The store.
    pub store: Arc<Store>,
    /// The mempool.
    pub mempool: Arc<Mutex<Mempool>>,
    /// Wakes the driver when transactions arrive.
    pub mempool_notify: Arc<Notify>,
    /// Accepted transactions to gossip.
    pub gossip: mpsc::Sender<Vec<u8>>,
    /// The intake worker, which checks submitted transactions.
    pub intake: mpsc::Sender<IntakeJob>,
    /// The chain id.
    pub chain_id: String,
    /// Consensus status.
    pub status: watch::Receiver<ConsensusStatus>,
    /// Connected peers.
    pub peers: watch::Receiver<Vec<PeerInfo>>,
    /// Committed tip.
    pub tip: watch::Receiver<u64>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Evidence seen.
    pub evidence: Arc<Mutex<VecDeque<Evidence>>>,
    /// Our key, hex.
    pub node_key: String,
    /// Our name.
    pub node_name: String,
    /// Block-stream lag limit.
    pub stream_max_lag: u64,
}

struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    fn allow(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limiter lock poisoned");
        if buckets.len() > 100_000 {
            // Forget idle clients rather than grow without bound.
            buckets.retain(|_, (_, at)| now.duration_since(*at).as_secs() < 60);
        }
        let (tokens, at) = buckets.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn rate_limit(
    State(limiter): State<Arc<RateLimiter>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if !limiter.allow(peer.ip()) {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate limit exceeded: slow down and retry",
        );
    }
    next.run(request).await
}

/// Serves the API on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState>,
    max_body_bytes: usize,
    rate_per_sec: u32,
    burst: u32,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let limiter = Arc::new(RateLimiter {
        rate: f64::from(rate_per_sec),
        burst: f64::from(burst),
        buckets: Mutex::new(HashMap::new()),
    });
    let app = Router::new()
        .route("/v1/txs", post(submit))
        .route("/v1/txs/{hash}", get(tx_status))
        .route("/v1/accounts/{account}", get(account))
        .route("/v1/blocks", get(block_stream))
        .route("/v1/blocks/{height}", get(block))
        .route("/v1/status", get(status))
        .route("/v1/evidence", get(evidence))
        .route("/v1/validator-sets", get(validator_sets))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(limiter, rate_limit))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state);
    info!(address = %listener.local_addr()?, "HTTP API listening");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    })
    .await?;
    Ok(())
}

/// `POST /v1/txs` body (JSON form).
#[derive(Deserialize)]
struct SubmitBody {
    /// Hex of each signed transaction's borsh encoding.
    txs: Vec<String>,
}

/// One transaction's outcome.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct SubmitResult {
    /// Transaction hash, when the bytes decoded.
    pub hash: Option<String>,
    /// `accepted`, `pending` (already waiting) or `rejected`.
    pub status: String,
    /// Why it was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /v1/txs`: one or many signed transactions, either JSON `{"txs": [hex, ...]}`
/// or `application/octet-stream` holding a borsh `Vec<Vec<u8>>` of encodings.
async fn submit(State(state): State<Arc<ApiState>>, headers: HeaderMap, body: Bytes) -> Response {
    let binary = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/octet-stream"));
    let raw: Vec<Vec<u8>> = if binary {
        match borsh::from_slice(&body) {
            Ok(raw) => raw,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("body is not a borsh list of transactions: {e}"),
                );
            }
        }
    } else {
        let parsed: SubmitBody = match serde_json::from_slice(&body) {
            Ok(parsed) => parsed,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("body is not {{\"txs\": [hex, ...]}}: {e}"),
                );
            }
        };
        let mut raw = Vec::with_capacity(parsed.txs.len());
        for (i, text) in parsed.txs.iter().enumerate() {
            match hex::decode(text) {
                Ok(bytes) => raw.push(bytes),
                Err(e) => {
                    return error(StatusCode::BAD_REQUEST, format!("txs[{i}] is not hex: {e}"));
                }
            }
        }
        raw
    };
    if raw.is_empty() {
        return error(StatusCode::BAD_REQUEST, "no transactions");
    }
    if raw.len() > SUBMIT_TXS_MAX {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} transactions; at most {SUBMIT_TXS_MAX} per request",
                raw.len()
            ),
        );
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    if state.intake.send(IntakeJob { raw, reply }).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down");
    }
    match answer.await {
        Ok(Ok((raw, outcomes))) => {
            Json(json!({ "results": report(&state, raw, outcomes) })).into_response()
        }
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down"),
    }
}

/// Checks and admits transactions; shared by the API and gossip intake.
pub fn admit_raw(
    store: &Store,
    mempool: &Mutex<Mempool>,
    domain: &SigningDomain,
    limits: &MempoolLimits,
    keys: &KeyCache,
    metrics: &crate::metrics::Metrics,
    raw: &[Vec<u8>],
) -> Result<Vec<Admission>, String> {
    let tip = store.tip().height;
    let snapshot = store.state_at(tip).map_err(|e| e.to_string())?;
    let intake = Intake {
        domain,
        limits,
        keys: Some(keys),
    };
    let already = |hash: &Hash| {
        mempool
            .lock()
            .expect("mempool lock poisoned")
            .contains(hash)
            .then_some(Admission::AlreadyPending(*hash))
    };
    let committed = |hash: &Hash| match store.tx_location(hash) {
        Ok(Some(location)) => Some(Admission::Rejected(
            Some(*hash),
            crate::mempool::Rejection::Excluded(format!(
                "already committed at height {}",
                location.height
            )),
        )),
        _ => None,
    };
    let checked = intake.check(raw, &snapshot, &already, &committed);
    drop(snapshot);
    metrics
        .intake_signature_checks
        .inc_by(checked.signatures_checked as u64);
    metrics.intake_batches.inc();
    Ok(mempool
        .lock()
        .expect("mempool lock poisoned")
        .admit(checked.results))
}

/// The answer to a submission: its outcomes, and the accepted transactions gossiped.
fn report(state: &ApiState, raw: Vec<Vec<u8>>, outcomes: Vec<Admission>) -> Vec<SubmitResult> {
    let mut results = Vec::with_capacity(outcomes.len());
    for (outcome, bytes) in outcomes.into_iter().zip(raw) {
        results.push(match outcome {
            Admission::Accepted(hash) => {
                if state.gossip.try_send(bytes).is_err() {
                    warn!("gossip queue full: transaction {hash} stays local");
                }
                SubmitResult {
                    hash: Some(hash.to_hex()),
                    status: "accepted".into(),
                    reason: None,
                }
            }
            Admission::AlreadyPending(hash) => SubmitResult {
                hash: Some(hash.to_hex()),
                status: "pending".into(),
                reason: None,
            },
            Admission::Rejected(hash, reason) => {
                state.metrics.rejected_txs.inc();
                SubmitResult {
                    hash: hash.map(|h| h.to_hex()),
                    status: "rejected".into(),
                    reason: Some(reason.to_string()),
                }
            }
        });
    }
    results
}

fn parse_hash(text: &str) -> Result<Hash, (StatusCode, String)> {
    Hash::from_hex(text).map_err(|e| (StatusCode::BAD_REQUEST, format!("bad hash: {e}")))
}

/// `GET /v1/txs/{hash}`.
async fn tx_status(State(state): State<Arc<ApiState>>, Path(hash): Path<String>) -> Response {
    let hash = match parse_hash(&hash) {
        Ok(h) => h,
        Err((status, message)) => return error(status, message),
    };
    match state.store.tx_location(&hash) {
        Ok(Some(TxLocation { height, index })) => {
            let receipt = state
                .store
                .receipts(height)
                .ok()
                .flatten()
                .and_then(|r| r.get(index as usize).cloned());
            return Json(json!({
                "hash": hash.to_hex(),
                "status": "committed",
                "height": height,
                "index": index,
                "receipt": receipt,
            }))
            .into_response();
        }
        Ok(None) => {}
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    let status = state
        .mempool
        .lock()
        .expect("mempool lock poisoned")
        .status(&hash);
    match status {
        PoolStatus::Pending => {
            Json(json!({ "hash": hash.to_hex(), "status": "pending" })).into_response()
        }
        PoolStatus::Rejected(reason) => Json(json!({
            "hash": hash.to_hex(),
            "status": "rejected",
            "reason": reason,
        }))
        .into_response(),
        PoolStatus::Unknown => (
            StatusCode::NOT_FOUND,
            Json(json!({ "hash": hash.to_hex(), "status": "unknown" })),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct AtHeight {
    height: Option<u64>,
}

/// `GET /v1/accounts/{account}[?height=H]`: the account, its Merkle proof against the
/// state root of the header at that height (the tip by default), and that header's
/// certificate.
async fn account(
    State(state): State<Arc<ApiState>>,
    Path(account): Path<String>,
    Query(at): Query<AtHeight>,
) -> Response {
    let key = match PublicKey::from_hex(&account) {
        Ok(k) => k,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad account: {e}")),
    };
    let store = state.store.clone();
    let mempool = state.mempool.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<serde_json::Value, (StatusCode, String)> {
        let height = at.height.unwrap_or_else(|| store.tip().height);
        let (value, proof) = store
            .prove(&stele_ledger::StateKey::Account(key).hash(), height)
            .map_err(|e| (StatusCode::NOT_FOUND, e.to_string()))?;
        let decoded: Option<Account> = match &value {
            Some(bytes) => Some(borsh::from_slice(bytes).map_err(|e| {
                (StatusCode::INTERNAL_SERVER_ERROR, format!("stored account: {e}"))
            })?),
            None => None,
        };
        let (header, certificate) = if height == 0 {
            (None, None)
        } else {
            let block = store
                .block(height)
                .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            let certificate = store
                .certificate(height)
                .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            (block.map(|b| b.header), certificate)
        };
        Ok(json!({
            "account": key.to_hex(),
            "height": height,
            "exists": decoded.is_some(),
            "balance": decoded.map(|a| a.balance),
            "nonce": decoded.map(|a| a.nonce),
            // For signing the next transaction: past the ones already waiting here.
            "next_nonce": decoded.map(|a| mempool.lock().expect("mempool lock poisoned").next_nonce(&key, a.nonce)),
            "roles": decoded.map(|a| a.role_list().iter().map(|r| r.name()).collect::<Vec<_>>()),
            "value": value.as_ref().map(hex::encode),
            "proof": hex::encode(borsh::to_vec(&proof).unwrap_or_default()),
            "header": header.as_ref().map(|h| hex::encode(borsh::to_vec(h).unwrap_or_default())),
            "header_json": header,
            "certificate": certificate.as_ref().map(|c| hex::encode(borsh::to_vec(c).unwrap_or_default())),
        }))
    })
    .await;
    match result {
        Ok(Ok(value)) => Json(value).into_response(),
        Ok(Err((status, message))) => error(status, message),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn block_json(store: &Store, height: u64, full: bool) -> Result<Option<serde_json::Value>, String> {
    let Some(block) = store.block(height).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let certificate = store.certificate(height).map_err(|e| e.to_string())?;
    let mut value = json!({
        "height": height,
        "hash": block.hash().to_hex(),
        "time_ms": block.header.time_ms,
        "proposer": block.header.proposer.to_hex(),
        "txs": block.txs.len(),
        "tx_hashes": block.tx_hashes().iter().map(|h| h.to_hex()).collect::<Vec<_>>(),
        "state_root": block.header.state_root.to_hex(),
        "certificate": certificate.as_ref().map(|c| hex::encode(borsh::to_vec(c).unwrap_or_default())),
    });
    if full {
        value["header"] = serde_json::to_value(&block.header).map_err(|e| e.to_string())?;
        value["block"] = json!(hex::encode(
            borsh::to_vec(&block).map_err(|e| e.to_string())?
        ));
    }
    Ok(Some(value))
}

/// `GET /v1/blocks/{height}`: the block (hex borsh and a readable header) with its
/// certificate.
async fn block(State(state): State<Arc<ApiState>>, Path(height): Path<u64>) -> Response {
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || block_json(&store, height, true)).await {
        Ok(Ok(Some(value))) => Json(value).into_response(),
        Ok(Ok(None)) => error(
            StatusCode::NOT_FOUND,
            format!("no block at height {height}"),
        ),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize)]
struct StreamQuery {
    from: Option<u64>,
    full: Option<bool>,
}

/// `GET /v1/blocks?from=H[&full=true]`: committed blocks from height `H` on, one JSON
/// object per line, following the tip as it grows. Blocks are read from the store as
/// the client takes them, so nothing is ever skipped; a client that falls more than
/// `stream_max_lag` heights behind the tip is told so in a last line
/// (`{"error": ..., "resume_from": H}`) and disconnected, and can reconnect from there.
async fn block_stream(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<StreamQuery>,
) -> Response {
    let start = query.from.unwrap_or(1).max(1);
    let full = query.full.unwrap_or(false);
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let mut tip = state.tip.clone();
    let store = state.store.clone();
    let max_lag = state.stream_max_lag;
    tokio::spawn(async move {
        let mut next = start;
        let mut caught_up = false;
        loop {
            let current = *tip.borrow_and_update();
            if next > current {
                caught_up = true;
                if tip.changed().await.is_err() {
                    return;
                }
                continue;
            }
            if caught_up && current - next > max_lag {
                let line = json!({
                    "error": format!("consumer fell more than {max_lag} heights behind the tip"),
                    "resume_from": next,
                });
                let _ = tx.send(Ok(Bytes::from(format!("{line}\n")))).await;
                return;
            }
            let store = store.clone();
            let value = tokio::task::spawn_blocking(move || block_json(&store, next, full)).await;
            let line = match value {
                Ok(Ok(Some(value))) => value,
                _ => json!({ "error": format!("cannot read block {next}"), "resume_from": next }),
            };
            let failed = line.get("error").is_some();
            if tx.send(Ok(Bytes::from(format!("{line}\n")))).await.is_err() || failed {
                return;
            }
            next += 1;
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// `GET /v1/status`.
async fn status(State(state): State<Arc<ApiState>>) -> Response {
    let consensus = state.status.borrow().clone();
    let peers = state.peers.borrow().clone();
    let (pool_txs, pool_bytes) = {
        let pool = state.mempool.lock().expect("mempool lock poisoned");
        (pool.len(), pool.bytes())
    };
    Json(json!({
        "node": state.node_name,
        "node_key": state.node_key,
        "chain_id": state.chain_id,
        "genesis_hash": state.store.genesis_hash().to_hex(),
        "height": consensus.height,
        "block_hash": consensus.block_hash,
        "view": consensus.view,
        "engine_height": consensus.engine_height,
        "syncing": consensus.syncing,
        "is_validator": consensus.is_validator,
        "validators": consensus.validators.iter().map(|(k, p)| json!({"key": k, "power": p})).collect::<Vec<_>>(),
        "peers": peers,
        "mempool": { "txs": pool_txs, "bytes": pool_bytes },
    }))
    .into_response()
}

/// `GET /v1/validator-sets`: every validator-set change, for light clients that follow
/// the set from the genesis: at each change height `h`, the header and certificate of
/// block `h` (certified by the old set, committing to the new one as its
/// `next_validator_set_hash`) and the new set.
async fn validator_sets(State(state): State<Arc<ApiState>>) -> Response {
    let store = state.store.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<serde_json::Value, String> {
        let mut changes = Vec::new();
        for (height, set) in store.validator_set_changes().map_err(|e| e.to_string())? {
            let block = store
                .block(height)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("block {height} is missing"))?;
            let certificate = store
                .certificate(height)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("certificate {height} is missing"))?;
            changes.push(json!({
                "height": height,
                "validators": set.validators(),
                "header": hex::encode(borsh::to_vec(&block.header).map_err(|e| e.to_string())?),
                "certificate": hex::encode(borsh::to_vec(&certificate).map_err(|e| e.to_string())?),
            }));
        }
        Ok(json!({ "changes": changes }))
    })
    .await;
    match result {
        Ok(Ok(value)) => Json(value).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /v1/evidence`: equivocations seen since start.
async fn evidence(State(state): State<Arc<ApiState>>) -> Response {
    let kept = state.evidence.lock().expect("evidence lock poisoned");
    let items: Vec<serde_json::Value> = kept
        .iter()
        .map(|e| json!({ "validator": e.validator().to_hex(), "evidence": format!("{e:?}") }))
        .collect();
    Json(json!({ "evidence": items })).into_response()
}

/// `GET /health`.
async fn health(State(state): State<Arc<ApiState>>) -> Response {
    let height = state.store.tip().height;
    Json(json!({ "status": "ok", "height": height })).into_response()
}

/// `GET /metrics`.
async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}
