//! `stele-wallet audit`: a whole history verified from the genesis, trusting no node.
//!
//! Three stages, on their own threads, joined by bounded channels:
//!
//! 1. a reader takes `(block, certificate)` pairs in height order from an audit pack or
//!    from a node's block stream, and groups them into batches of about
//!    [`BATCH_TXS`] transactions;
//! 2. one checker per core verifies a batch's transaction signatures in one ed25519
//!    batch (a batch costs about half as much per signature as one check each);
//! 3. the calling thread takes the batches back in order and runs the ledger's
//!    history verification on each block (header links, validator sets, certificates,
//!    sizes, roots, re-execution), skipping only the signature checks already done.
//!
//! A block whose batch held a bad signature is checked again in full by stage 3, so
//! the first bad height and its reason are exactly those `verify_history` reports.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use stele_consensus::{CommitCertificate, Hash, SigningDomain};
use stele_ledger::{
    Block, Genesis, HistoryError, HistoryVerifier, PackReader, check_transaction_signatures,
};

/// Transactions per signature batch (and per unit of work for a checker).
pub const BATCH_TXS: usize = 2048;
/// Blocks per batch at most (empty blocks still cost a certificate check each).
const BATCH_BLOCKS: usize = 256;

/// Where the history comes from.
pub enum Source<'a> {
    /// An audit pack written by `stele-node export`.
    Pack(&'a Path),
    /// Nodes' block streams (tried in order), up to `to` or the tip at the start.
    Nodes {
        /// API base URLs.
        urls: &'a [String],
        /// Last height to verify (default: the first node's tip when the audit starts).
        to: Option<u64>,
    },
}

/// The result of an audit.
#[derive(Debug)]
pub struct Verdict {
    /// Heights verified, from 1.
    pub heights: u64,
    /// Transactions in them.
    pub transactions: u64,
    /// State root after the last verified block.
    pub state_root: Hash,
    /// Hash of the last verified block.
    pub block_hash: Hash,
    /// The first bad height and what is wrong with it; `None` when all verified.
    pub failure: Option<Failure>,
    /// Wall time.
    pub elapsed: Duration,
}

/// What makes a history fail.
#[derive(Debug)]
pub struct Failure {
    /// The first bad height.
    pub height: u64,
    /// What is wrong.
    pub reason: String,
}

/// One batch of consecutive blocks.
struct Batch {
    seq: u64,
    blocks: Vec<(Block, CommitCertificate)>,
    /// A failure of the source just after these blocks (it ends the stream).
    failure: Option<Failure>,
}

struct Checked {
    batch: Batch,
    signatures_valid: Vec<bool>,
}

/// Runs the audit; `progress` shows a bar on standard error (when it is a terminal).
pub fn run(genesis: &Genesis, source: Source<'_>, progress: bool) -> anyhow::Result<Verdict> {
    let started = Instant::now();
    let mut verifier = HistoryVerifier::new(genesis)?;
    let domain = verifier.domain().clone();
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (batch_tx, batch_rx) = sync_channel::<Batch>(workers * 2);
    let (checked_tx, checked_rx) = sync_channel::<Checked>(workers * 2);

    let bar = if progress {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] height {pos}/{len} {per_sec} ETA {eta} {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );

    let verdict = std::thread::scope(|scope| -> anyhow::Result<Verdict> {
        // Stage 1: the reader.
        let reader = match source {
            Source::Pack(path) => {
                let pack = PackReader::open(path, genesis.params.max_block_bytes)?;
                if pack.genesis_hash() != genesis.hash() {
                    anyhow::bail!(
                        "{} is a pack for the chain with genesis {}, not this genesis ({})",
                        path.display(),
                        pack.genesis_hash(),
                        genesis.hash()
                    );
                }
                if let Some(count) = PackReader::stated_count(path) {
                    bar.set_length(count);
                }
                scope.spawn(move || {
                    batch_records(
                        pack.map(|r| {
                            r.map_err(|e| Failure {
                                height: pack_error_height(&e),
                                reason: e.to_string(),
                            })
                        }),
                        &batch_tx,
                    )
                })
            }
            Source::Nodes { urls, to } => {
                let stream = NodeStream::open(urls, to, genesis)?;
                bar.set_length(stream.to);
                scope.spawn(move || batch_records(stream, &batch_tx))
            }
        };

        // Stage 2: the checkers.
        let batch_rx = Arc::new(Mutex::new(batch_rx));
        for _ in 0..workers {
            let batch_rx = Arc::clone(&batch_rx);
            let checked_tx = checked_tx.clone();
            let domain = domain.clone();
            scope.spawn(move || check_signatures(&domain, &batch_rx, &checked_tx));
        }
        drop(checked_tx);

        // Stage 3: in order, here.
        let result = verify_in_order(&mut verifier, &checked_rx, &bar);
        // Stop the other stages early on failure: they end when their channel closes.
        drop(checked_rx);
        let _ = reader.join();
        result
    });
    bar.finish_and_clear();
    let mut verdict = verdict?;
    verdict.elapsed = started.elapsed();
    Ok(verdict)
}

/// Groups records into batches and sends them on; stops at the first failure or when
/// the checkers are gone.
fn batch_records(
    records: impl Iterator<Item = Result<(Block, CommitCertificate), Failure>>,
    out: &SyncSender<Batch>,
) {
    let mut seq = 0;
    let mut blocks = Vec::new();
    let mut txs = 0;
    for record in records {
        match record {
            Ok((block, certificate)) => {
                txs += block.txs.len();
                blocks.push((block, certificate));
                if txs >= BATCH_TXS || blocks.len() >= BATCH_BLOCKS {
                    let batch = Batch {
                        seq,
                        blocks: std::mem::take(&mut blocks),
                        failure: None,
                    };
                    if out.send(batch).is_err() {
                        return;
                    }
                    seq += 1;
                    txs = 0;
                }
            }
            Err(failure) => {
                let _ = out.send(Batch {
                    seq,
                    blocks,
                    failure: Some(failure),
                });
                return;
            }
        }
    }
    if !blocks.is_empty() {
        let _ = out.send(Batch {
            seq,
            blocks,
            failure: None,
        });
    }
}

fn check_signatures(
    domain: &SigningDomain,
    input: &Mutex<Receiver<Batch>>,
    output: &SyncSender<Checked>,
) {
    loop {
        // Hold the lock only to take the next batch.
        let batch = match input.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(batch) = batch else { return };
        let refs: Vec<&Block> = batch.blocks.iter().map(|(b, _)| b).collect();
        let signatures_valid = check_transaction_signatures(domain, &refs);
        if output
            .send(Checked {
                batch,
                signatures_valid,
            })
            .is_err()
        {
            return;
        }
    }
}

fn verify_in_order(
    verifier: &mut HistoryVerifier,
    input: &Receiver<Checked>,
    bar: &ProgressBar,
) -> anyhow::Result<Verdict> {
    let mut waiting: BTreeMap<u64, Checked> = BTreeMap::new();
    let mut next_seq = 0;
    let mut failure = None;
    let started = Instant::now();
    'batches: while let Ok(checked) = input.recv() {
        waiting.insert(checked.batch.seq, checked);
        while let Some(checked) = waiting.remove(&next_seq) {
            next_seq += 1;
            for ((block, certificate), valid) in
                checked.batch.blocks.iter().zip(&checked.signatures_valid)
            {
                if let Err(HistoryError { height, error }) =
                    verifier.verify_next_checked(block, certificate, *valid)
                {
                    failure = Some(Failure {
                        height,
                        reason: error.to_string(),
                    });
                    break 'batches;
                }
            }
            let summary = verifier.summary()?;
            bar.set_position(summary.height);
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            bar.set_message(format!("{:.0} tx/s", summary.transactions as f64 / secs));
            if let Some(f) = checked.batch.failure {
                failure = Some(f);
                break 'batches;
            }
        }
    }
    let summary = verifier.summary()?;
    Ok(Verdict {
        heights: summary.height,
        transactions: summary.transactions,
        state_root: summary.state_root,
        block_hash: summary.block_hash,
        failure,
        elapsed: Duration::ZERO,
    })
}

fn pack_error_height(error: &stele_ledger::PackError) -> u64 {
    use stele_ledger::PackError::*;
    match error {
        RecordTooLarge { height, .. } | Truncated { height } | Decode { height, .. } => *height,
        EndMismatch { count, .. } => *count,
        Io { .. } | BadMagic { .. } | UnsupportedVersion { .. } | TrailingBytes { .. } => 0,
    }
}

/// Blocks from nodes' `GET /v1/blocks?from=H&full=true` streams, in height order. A
/// stream that breaks is reopened at the next height, on the next node when one fails
/// (each node is tried [`STREAM_ATTEMPTS`] times in all).
struct NodeStream {
    urls: Vec<String>,
    http: reqwest::blocking::Client,
    next: u64,
    to: u64,
    lines: Option<std::io::Lines<BufReader<reqwest::blocking::Response>>>,
    node: usize,
    failures: Vec<u32>,
    errors: Vec<String>,
    done: bool,
}

const STREAM_ATTEMPTS: u32 = 3;

impl NodeStream {
    fn open(urls: &[String], to: Option<u64>, genesis: &Genesis) -> anyhow::Result<NodeStream> {
        if urls.is_empty() {
            anyhow::bail!("no node given: pass --node URL or --pack FILE");
        }
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // The stream is read for as long as the audit takes.
            .timeout(None)
            .build()
            .context("building the HTTP client")?;
        let to = match to {
            Some(to) => to,
            None => {
                let mut tip = None;
                let mut errors = Vec::new();
                for url in urls {
                    match status(&http, url) {
                        Ok(status) => {
                            if status["genesis_hash"].as_str()
                                != Some(genesis.hash().to_hex().as_str())
                            {
                                anyhow::bail!(
                                    "{url} serves the chain with genesis {}, not this genesis ({})",
                                    status["genesis_hash"],
                                    genesis.hash()
                                );
                            }
                            tip = status["height"].as_u64();
                            break;
                        }
                        Err(e) => errors.push(format!("{url}: {e:#}")),
                    }
                }
                tip.with_context(|| format!("no node gave its height:\n  {}", errors.join("\n  ")))?
            }
        };
        Ok(NodeStream {
            urls: urls
                .iter()
                .map(|u| u.trim_end_matches('/').to_owned())
                .collect(),
            http,
            next: 1,
            to,
            lines: None,
            node: 0,
            failures: vec![0; urls.len()],
            errors: Vec::new(),
            done: to == 0,
        })
    }

    /// Notes a failure of the current node and moves on to the next; `Err` once every
    /// node has failed too often.
    fn fail(&mut self, error: String) -> Result<(), Failure> {
        self.lines = None;
        self.errors
            .push(format!("{}: {error}", self.urls[self.node]));
        self.failures[self.node] += 1;
        let Some(node) = (1..=self.urls.len())
            .map(|i| (self.node + i) % self.urls.len())
            .find(|&i| self.failures[i] < STREAM_ATTEMPTS)
        else {
            return Err(Failure {
                height: self.next,
                reason: format!("no node served this block:\n  {}", self.errors.join("\n  ")),
            });
        };
        self.node = node;
        std::thread::sleep(Duration::from_millis(100 * u64::from(self.failures[node])));
        Ok(())
    }

    fn next_line(&mut self) -> Result<Value, String> {
        if self.lines.is_none() {
            let url = format!(
                "{}/v1/blocks?from={}&full=true",
                self.urls[self.node], self.next
            );
            let response = self.http.get(&url).send().map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("HTTP {}", response.status()));
            }
            self.lines = Some(BufReader::with_capacity(1 << 20, response).lines());
        }
        let lines = self.lines.as_mut().expect("opened above");
        match lines.next() {
            Some(Ok(line)) => serde_json::from_str(&line)
                .map_err(|e| format!("the stream sent a line that is not JSON: {e}")),
            Some(Err(e)) => Err(format!("reading the stream: {e}")),
            None => Err("the stream ended".into()),
        }
    }
}

/// A record the node sent that cannot be a block and certificate: that is the node's
/// fault, and the audit fails at that height.
fn decode_record(value: &Value) -> Result<(Block, CommitCertificate), String> {
    let field = |name: &str| -> Result<Vec<u8>, String> {
        let text = value[name]
            .as_str()
            .ok_or_else(|| format!("the node sent no {name}"))?;
        hex::decode(text).map_err(|e| format!("the node's {name} is not hex: {e}"))
    };
    let block: Block = borsh::from_slice(&field("block")?)
        .map_err(|e| format!("the node's block does not decode: {e}"))?;
    let certificate: CommitCertificate = borsh::from_slice(&field("certificate")?)
        .map_err(|e| format!("the node's certificate does not decode: {e}"))?;
    Ok((block, certificate))
}

impl Iterator for NodeStream {
    type Item = Result<(Block, CommitCertificate), Failure>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let value = match self.next_line() {
                Ok(value) => value,
                Err(e) => {
                    if let Err(failure) = self.fail(e) {
                        self.done = true;
                        return Some(Err(failure));
                    }
                    continue;
                }
            };
            if value.get("error").is_some() {
                // The node cut the stream (it tells where to resume): reopen.
                let e = format!("the node ended the stream: {}", value["error"]);
                if let Err(failure) = self.fail(e) {
                    self.done = true;
                    return Some(Err(failure));
                }
                continue;
            }
            let height = self.next;
            return match decode_record(&value) {
                Ok(record) => {
                    self.next += 1;
                    self.failures[self.node] = 0;
                    if self.next > self.to {
                        self.done = true;
                        self.lines = None;
                    }
                    Some(Ok(record))
                }
                Err(reason) => {
                    self.done = true;
                    Some(Err(Failure { height, reason }))
                }
            };
        }
        None
    }
}

fn status(http: &reqwest::blocking::Client, url: &str) -> anyhow::Result<Value> {
    let url = url.trim_end_matches('/');
    let response = http
        .get(format!("{url}/v1/status"))
        .timeout(Duration::from_secs(10))
        .send()?;
    if !response.status().is_success() {
        anyhow::bail!("HTTP {}", response.status());
    }
    Ok(response.json()?)
}

/// The machine's batched ed25519 verification rate with every core busy, in
/// signatures per second: batches of [`BATCH_TXS`] signatures, for about `duration`.
/// The audit's speed is read against it.
pub fn signature_rate(duration: Duration) -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    stele_consensus::batch_verification_rate(cores, BATCH_TXS, duration)
}
