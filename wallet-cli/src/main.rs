//! `stele-wallet`: keys, transactions, proof-checked queries and the auditor.

mod audit;
mod client;
mod keystore;
mod verify;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;
use zeroize::Zeroizing;

use std::time::Duration;

use stele_consensus::{PublicKey, SigningDomain};
use stele_ledger::{Operation, Role, Transaction};

use crate::client::Client;
use crate::keystore::{KdfCost, Keystore};

#[derive(Parser)]
#[command(name = "stele-wallet", version, about = "Stele wallet and auditor")]
struct Cli {
    /// Keystore directory (default: $STELE_WALLET_HOME/keys, or ~/.stele-wallet/keys).
    #[arg(long, global = true, value_name = "DIR")]
    keystore: Option<PathBuf>,
    /// Read the password from this file (first line) instead of prompting.
    #[arg(long, global = true, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// A node's API URL; give several for failover (default: $STELE_NODES, comma
    /// separated, or http://127.0.0.1:27001).
    #[arg(long = "node", global = true, value_name = "URL")]
    nodes: Vec<String>,
    /// Seconds to wait for a node's answer.
    #[arg(long, global = true, default_value_t = 10)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage the encrypted keystore.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Send units to another account.
    Transfer {
        /// Recipient (hex public key).
        #[arg(long)]
        to: String,
        /// Units.
        #[arg(long)]
        amount: u64,
        #[command(flatten)]
        tx: TxArgs,
    },
    /// Create units (issuer role).
    Mint {
        /// Recipient (hex public key).
        #[arg(long)]
        to: String,
        /// Units.
        #[arg(long)]
        amount: u64,
        #[command(flatten)]
        tx: TxArgs,
    },
    /// Destroy units of your own balance (issuer role).
    Burn {
        /// Units.
        #[arg(long)]
        amount: u64,
        #[command(flatten)]
        tx: TxArgs,
    },
    /// Open a new account (registrar role).
    CreateAccount {
        /// The new account (hex public key).
        #[arg(long)]
        account: String,
        #[command(flatten)]
        tx: TxArgs,
    },
    /// Give an account a role (admin role).
    GrantRole {
        /// The account (hex public key).
        #[arg(long)]
        account: String,
        /// admin, issuer or registrar.
        #[arg(long)]
        role: String,
        #[command(flatten)]
        tx: TxArgs,
    },
    /// Take a role from an account (admin role).
    RevokeRole {
        /// The account (hex public key).
        #[arg(long)]
        account: String,
        /// admin, issuer or registrar.
        #[arg(long)]
        role: String,
        #[command(flatten)]
        tx: TxArgs,
    },
    /// Change the validator set (admin role); effective after the chain's delay.
    #[command(subcommand)]
    Validator(ValidatorCommand),
    /// Transactions.
    #[command(subcommand)]
    Tx(TxCommand),
    /// Show an account's balance, checked against a certified state root.
    Balance {
        /// The account: a hex public key, or a key name in the keystore.
        account: String,
        /// The chain's genesis file: the trust anchor for the check.
        #[arg(long, value_name = "FILE")]
        genesis: Option<PathBuf>,
        /// Trust the node's answer without checking it (faster; no genesis needed).
        #[arg(long)]
        no_verify: bool,
    },
    /// Verify a chain's whole history from its genesis: every certificate, hash link,
    /// signature and state root, re-executing every block. Exits 0 only if all verify.
    Audit {
        /// The chain's genesis file: the only thing trusted.
        #[arg(long, value_name = "FILE")]
        genesis: PathBuf,
        /// Verify an audit pack written by `stele-node export` instead of asking nodes.
        #[arg(long, value_name = "FILE", conflicts_with = "to")]
        pack: Option<PathBuf>,
        /// Last height to verify from the nodes (default: the tip when the audit starts).
        #[arg(long, value_name = "HEIGHT")]
        to: Option<u64>,
        /// Also measure this machine's batched ed25519 verification rate on all cores
        /// (for about two seconds, before the audit) and report the audit's
        /// transaction rate against it.
        #[arg(long)]
        compare_signature_rate: bool,
    },
}

/// What every transaction command takes.
#[derive(clap::Args)]
struct TxArgs {
    /// The signing key's name in the keystore.
    #[arg(long, value_name = "NAME")]
    from: String,
    /// Wait until the transaction is committed, then print its height and receipt.
    #[arg(long)]
    wait: bool,
    /// Seconds `--wait` waits.
    #[arg(long, default_value_t = 60)]
    wait_secs: u64,
}

#[derive(Subcommand)]
enum ValidatorCommand {
    /// Add a validator.
    Add {
        /// Its key (hex).
        #[arg(long)]
        key: String,
        /// Its power.
        #[arg(long)]
        power: u64,
        #[command(flatten)]
        tx: TxArgs,
    },
    /// Remove a validator.
    Remove {
        /// Its key (hex).
        #[arg(long)]
        key: String,
        #[command(flatten)]
        tx: TxArgs,
    },
    /// Change a validator's power.
    SetPower {
        /// Its key (hex).
        #[arg(long)]
        key: String,
        /// The new power.
        #[arg(long)]
        power: u64,
        #[command(flatten)]
        tx: TxArgs,
    },
}

#[derive(Subcommand)]
enum TxCommand {
    /// Where a transaction stands: pending, committed (height, receipt) or rejected.
    Status {
        /// Its hash (hex).
        hash: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a new key.
    New {
        /// Its name.
        name: String,
        /// Argon2id memory, MiB (the default, 64, takes a fraction of a second).
        #[arg(long, default_value_t = 64, value_name = "MIB")]
        kdf_memory_mib: u32,
        /// Argon2id passes.
        #[arg(long, default_value_t = 3)]
        kdf_iterations: u32,
    },
    /// List the keys (names and public keys; no password needed).
    List,
    /// Show one key's public key.
    Show {
        /// Its name.
        name: String,
    },
    /// Import a plain key file (as written by `stele-genesis keygen`).
    Import {
        /// Name to give it.
        name: String,
        /// The key file.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// Argon2id memory, MiB.
        #[arg(long, default_value_t = 64, value_name = "MIB")]
        kdf_memory_mib: u32,
        /// Argon2id passes.
        #[arg(long, default_value_t = 3)]
        kdf_iterations: u32,
    },
    /// Write a key out as a plain key file (mode 0600).
    Export {
        /// Its name.
        name: String,
        /// The file to write (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

fn keystore_dir(cli: &Cli) -> anyhow::Result<PathBuf> {
    if let Some(dir) = &cli.keystore {
        return Ok(dir.clone());
    }
    if let Some(home) = std::env::var_os("STELE_WALLET_HOME") {
        return Ok(PathBuf::from(home).join("keys"));
    }
    let home = std::env::var_os("HOME").context("HOME is not set: pass --keystore")?;
    Ok(PathBuf::from(home).join(".stele-wallet").join("keys"))
}

/// The password: `--password-file`, else `STELE_WALLET_PASSWORD`, else a prompt (twice
/// when `confirm`).
fn password(cli: &Cli, confirm: bool) -> anyhow::Result<Zeroizing<String>> {
    if let Some(path) = &cli.password_file {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the password file {}", path.display()))?,
        );
        let line = text.lines().next().unwrap_or("");
        return Ok(Zeroizing::new(line.to_owned()));
    }
    if let Ok(value) = std::env::var("STELE_WALLET_PASSWORD") {
        return Ok(Zeroizing::new(value));
    }
    let first =
        Zeroizing::new(rpassword::prompt_password("password: ").context("reading the password")?);
    if confirm {
        let second = Zeroizing::new(
            rpassword::prompt_password("password again: ").context("reading the password")?,
        );
        if *first != *second {
            anyhow::bail!("the two passwords differ");
        }
    }
    Ok(first)
}

fn cost(memory_mib: u32, iterations: u32) -> anyhow::Result<KdfCost> {
    if memory_mib == 0 || iterations == 0 {
        anyhow::bail!("--kdf-memory-mib and --kdf-iterations must be at least 1");
    }
    Ok(KdfCost {
        memory_kib: memory_mib
            .checked_mul(1024)
            .context("--kdf-memory-mib is too large")?,
        iterations,
        parallelism: 1,
    })
}

fn keys(cli: &Cli, command: &KeysCommand) -> anyhow::Result<()> {
    let store = Keystore::open(&keystore_dir(cli)?)?;
    match command {
        KeysCommand::New {
            name,
            kdf_memory_mib,
            kdf_iterations,
        } => {
            let cost = cost(*kdf_memory_mib, *kdf_iterations)?;
            let password = password(cli, true)?;
            let key = stele_genesis::generate_key();
            let public = store.add(name, &key, password.as_bytes(), cost)?;
            print_key(cli, name, &public.to_hex(), "created");
        }
        KeysCommand::List => {
            let keys = store.list()?;
            if cli.json {
                let list: Vec<_> = keys
                    .iter()
                    .map(|(name, key)| json!({ "name": name, "public_key": key.to_hex() }))
                    .collect();
                println!("{}", json!({ "keys": list }));
            } else if keys.is_empty() {
                println!("no keys (create one with `stele-wallet keys new NAME`)");
            } else {
                for (name, key) in keys {
                    println!("{name:<20} {key}");
                }
            }
        }
        KeysCommand::Show { name } => {
            let key = store.public_key(name)?;
            print_key(cli, name, &key.to_hex(), "");
        }
        KeysCommand::Import {
            name,
            file,
            kdf_memory_mib,
            kdf_iterations,
        } => {
            let cost = cost(*kdf_memory_mib, *kdf_iterations)?;
            let key = stele_genesis::read_key_file(file)?;
            let password = password(cli, true)?;
            let public = store.add(name, &key, password.as_bytes(), cost)?;
            print_key(cli, name, &public.to_hex(), "imported");
        }
        KeysCommand::Export { name, out } => {
            let password = password(cli, false)?;
            let key = store.unlock(name, password.as_bytes())?;
            stele_genesis::write_key_file(out, &key)?;
            print_key(cli, name, &key.public_key().to_hex(), &exported(out));
        }
    }
    Ok(())
}

fn exported(out: &Path) -> String {
    format!("exported to {}", out.display())
}

fn print_key(cli: &Cli, name: &str, public_key: &str, what: &str) {
    if cli.json {
        println!("{}", json!({ "name": name, "public_key": public_key }));
    } else if what.is_empty() {
        println!("{name} {public_key}");
    } else {
        println!("{name} {public_key} ({what})");
    }
}

fn key_arg(text: &str, what: &str) -> anyhow::Result<PublicKey> {
    PublicKey::from_hex(text).map_err(|e| anyhow::anyhow!("{what}: not a hex public key: {e}"))
}

fn role_arg(text: &str) -> anyhow::Result<Role> {
    Role::from_name(text)
        .with_context(|| format!("--role: unknown role {text:?} (known: admin, issuer, registrar)"))
}

fn client(cli: &Cli) -> anyhow::Result<Client> {
    Client::new(&node_urls(cli), Duration::from_secs(cli.timeout))
}

/// `--node` URLs, else `STELE_NODES`, else the first localnet node.
fn node_urls(cli: &Cli) -> Vec<String> {
    let mut urls = cli.nodes.clone();
    if urls.is_empty()
        && let Ok(list) = std::env::var("STELE_NODES")
    {
        urls = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
    }
    if urls.is_empty() {
        urls.push("http://127.0.0.1:27001".into());
    }
    urls
}

/// Signs `op` with the keystore key `args.from` at the account's next nonce (asked of
/// the node once), submits it (resending the same bytes on failure), and with `--wait`
/// follows it to its commit.
fn send(cli: &Cli, args: &TxArgs, op: Operation) -> anyhow::Result<()> {
    let store = Keystore::open(&keystore_dir(cli)?)?;
    let public = store.public_key(&args.from)?;
    let mut client = client(cli)?;
    let status = client.get("/v1/status")?.body;
    let chain_id = status["chain_id"]
        .as_str()
        .context("the node's status has no chain_id")?
        .to_owned();
    let domain = SigningDomain::new(&chain_id)?;
    let account = client.get(&format!("/v1/accounts/{}", public.to_hex()))?;
    if account.status != 200 || account.body["exists"] != true {
        anyhow::bail!(
            "account {public} ({}) does not exist on the chain",
            args.from
        );
    }
    let nonce = account.body["next_nonce"]
        .as_u64()
        .context("the node did not give the account's next nonce")?;
    let password = password(cli, false)?;
    let key = store.unlock(&args.from, password.as_bytes())?;
    let signed = Transaction {
        chain_id,
        signer: public,
        nonce,
        op,
    }
    .sign(&domain, &key);
    let hash = signed.hash().to_hex();
    let body = json!({ "txs": [hex::encode(signed.encode())] });
    let answer = client.post("/v1/txs", &body)?;
    let result = &answer.body["results"][0];
    let outcome = result["status"].as_str().unwrap_or("?");
    if outcome == "rejected" {
        anyhow::bail!(
            "transaction {hash} rejected: {}",
            result["reason"].as_str().unwrap_or("no reason given")
        );
    }
    if outcome != "accepted" && outcome != "pending" {
        anyhow::bail!("unexpected answer: {}", answer.body);
    }
    if !args.wait {
        if cli.json {
            println!(
                "{}",
                json!({ "hash": hash, "nonce": nonce, "status": "pending" })
            );
        } else {
            println!("submitted {hash} (nonce {nonce})");
        }
        return Ok(());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(args.wait_secs);
    loop {
        let answer = client.get(&format!("/v1/txs/{hash}"))?;
        match answer.body["status"].as_str() {
            Some("committed") => {
                let receipt = &answer.body["receipt"];
                if cli.json {
                    println!("{}", answer.body);
                } else {
                    println!(
                        "committed {hash} at height {} ({})",
                        answer.body["height"],
                        receipt["outcome"]["status"].as_str().unwrap_or("?")
                    );
                    if let Some(failure) = receipt["outcome"].get("failure") {
                        println!("  failure: {failure}");
                    }
                }
                let failed = receipt["outcome"]["status"] != "success";
                if failed {
                    anyhow::bail!("the transaction was included but failed");
                }
                return Ok(());
            }
            Some("rejected") => anyhow::bail!(
                "transaction {hash} rejected: {}",
                answer.body["reason"].as_str().unwrap_or("no reason given")
            ),
            // Pending, or not yet known to a node we failed over to: resend the same
            // bytes (the node deduplicates) and keep waiting.
            Some("unknown") => {
                let _ = client.post("/v1/txs", &body);
            }
            _ => {}
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "transaction {hash} not committed within {}s",
                args.wait_secs
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn balance(
    cli: &Cli,
    account: &str,
    genesis: Option<&Path>,
    no_verify: bool,
) -> anyhow::Result<()> {
    let key = match PublicKey::from_hex(account) {
        Ok(key) => key,
        Err(_) => Keystore::open(&keystore_dir(cli)?)?
            .public_key(account)
            .with_context(|| format!("{account:?} is neither a hex public key nor a key name"))?,
    };
    let mut client = client(cli)?;
    let answer = client.get(&format!("/v1/accounts/{}", key.to_hex()))?;
    if answer.status != 200 {
        anyhow::bail!("the node refused: {}", answer.body);
    }
    let (account, height, state_root, verified) = if no_verify {
        let account = if answer.body["exists"] == true {
            Some(stele_ledger::Account {
                balance: answer.body["balance"].as_u64().unwrap_or(0),
                nonce: answer.body["nonce"].as_u64().unwrap_or(0),
                roles: 0,
            })
        } else {
            None
        };
        (
            account,
            answer.body["height"].as_u64().unwrap_or(0),
            String::new(),
            false,
        )
    } else {
        let Some(genesis) = genesis else {
            anyhow::bail!(
                "checking the answer needs the chain's genesis: pass --genesis FILE (or --no-verify to trust the node)"
            );
        };
        let genesis = stele_genesis::load_genesis(genesis)?;
        let checked = verify::account(&mut client, &genesis, &key, &answer.body)?;
        (checked.account, checked.height, checked.state_root, true)
    };
    if cli.json {
        println!(
            "{}",
            json!({
                "account": key.to_hex(),
                "exists": account.is_some(),
                "balance": account.map(|a| a.balance),
                "nonce": account.map(|a| a.nonce),
                "roles": if verified { account.map(|a| a.role_list().iter().map(|r| r.name()).collect::<Vec<_>>()) } else { None },
                "height": height,
                "verified": verified,
                "state_root": if verified { Some(state_root.clone()) } else { None },
            })
        );
    } else {
        match account {
            Some(a) => print!("balance {}  nonce {}", a.balance, a.nonce),
            None => print!("no such account"),
        }
        if verified {
            println!("  (verified at height {height}, state root {state_root})");
        } else {
            println!("  (height {height}, NOT verified)");
        }
    }
    Ok(())
}

fn tx_status(cli: &Cli, hash: &str) -> anyhow::Result<()> {
    let mut client = client(cli)?;
    let answer = client.get(&format!("/v1/txs/{hash}"))?;
    if cli.json {
        println!("{}", answer.body);
    } else {
        match answer.body["status"].as_str() {
            Some("committed") => println!(
                "committed at height {}: {}",
                answer.body["height"], answer.body["receipt"]["outcome"]
            ),
            Some("rejected") => println!("rejected: {}", answer.body["reason"]),
            Some(other) => println!("{other}"),
            None => println!("{}", answer.body),
        }
    }
    if answer.status == 404 {
        anyhow::bail!("no node knows transaction {hash}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Keys(command) => keys(&cli, command),
        Command::Transfer { to, amount, tx } => key_arg(to, "--to").and_then(|to| {
            send(
                &cli,
                tx,
                Operation::Transfer {
                    to,
                    amount: *amount,
                },
            )
        }),
        Command::Mint { to, amount, tx } => key_arg(to, "--to").and_then(|to| {
            send(
                &cli,
                tx,
                Operation::Mint {
                    to,
                    amount: *amount,
                },
            )
        }),
        Command::Burn { amount, tx } => send(&cli, tx, Operation::Burn { amount: *amount }),
        Command::CreateAccount { account, tx } => key_arg(account, "--account")
            .and_then(|account| send(&cli, tx, Operation::CreateAccount { account })),
        Command::GrantRole { account, role, tx } => {
            key_arg(account, "--account").and_then(|account| {
                send(
                    &cli,
                    tx,
                    Operation::GrantRole {
                        account,
                        role: role_arg(role)?,
                    },
                )
            })
        }
        Command::RevokeRole { account, role, tx } => {
            key_arg(account, "--account").and_then(|account| {
                send(
                    &cli,
                    tx,
                    Operation::RevokeRole {
                        account,
                        role: role_arg(role)?,
                    },
                )
            })
        }
        Command::Validator(ValidatorCommand::Add { key, power, tx }) => key_arg(key, "--key")
            .and_then(|key| send(&cli, tx, Operation::AddValidator { key, power: *power })),
        Command::Validator(ValidatorCommand::Remove { key, tx }) => {
            key_arg(key, "--key").and_then(|key| send(&cli, tx, Operation::RemoveValidator { key }))
        }
        Command::Validator(ValidatorCommand::SetPower { key, power, tx }) => key_arg(key, "--key")
            .and_then(|key| {
                send(
                    &cli,
                    tx,
                    Operation::SetValidatorPower { key, power: *power },
                )
            }),
        Command::Tx(TxCommand::Status { hash }) => tx_status(&cli, hash),
        Command::Balance {
            account,
            genesis,
            no_verify,
        } => balance(&cli, account, genesis.as_deref(), *no_verify),
        Command::Audit {
            genesis,
            pack,
            to,
            compare_signature_rate,
        } => audit(&cli, genesis, pack.as_deref(), *to, *compare_signature_rate),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn audit(
    cli: &Cli,
    genesis: &Path,
    pack: Option<&Path>,
    to: Option<u64>,
    compare_signature_rate: bool,
) -> anyhow::Result<()> {
    let genesis = stele_genesis::load_genesis(genesis)?;
    let signature_rate =
        compare_signature_rate.then(|| audit::signature_rate(Duration::from_secs(2)));
    let urls;
    let source = match pack {
        Some(path) => audit::Source::Pack(path),
        None => {
            urls = node_urls(cli);
            audit::Source::Nodes { urls: &urls, to }
        }
    };
    let verdict = audit::run(&genesis, source, !cli.json)?;
    let secs = verdict.elapsed.as_secs_f64().max(1e-9);
    let blocks_per_sec = verdict.heights as f64 / secs;
    let txs_per_sec = verdict.transactions as f64 / secs;
    if cli.json {
        let mut out = json!({
            "ok": verdict.failure.is_none(),
            "heights_verified": verdict.heights,
            "transactions": verdict.transactions,
            "state_root": verdict.state_root.to_hex(),
            "block_hash": verdict.block_hash.to_hex(),
            "seconds": secs,
            "blocks_per_sec": blocks_per_sec,
            "txs_per_sec": txs_per_sec,
        });
        if let Some(failure) = &verdict.failure {
            out["failed_height"] = json!(failure.height);
            out["error"] = json!(failure.reason);
        }
        if let Some(rate) = signature_rate {
            out["signature_rate"] = json!(rate);
            out["txs_per_sec_over_signature_rate"] = json!(txs_per_sec / rate);
        }
        println!("{out}");
    } else {
        match &verdict.failure {
            None => println!(
                "audit passed: heights 1 to {} verified, {} transactions\n  final state root {}\n  last block {}",
                verdict.heights, verdict.transactions, verdict.state_root, verdict.block_hash
            ),
            Some(failure) => println!(
                "audit FAILED at height {}: {}\n  heights 1 to {} verified before it ({} transactions)",
                failure.height, failure.reason, verdict.heights, verdict.transactions
            ),
        }
        println!("  {secs:.2} s: {blocks_per_sec:.0} blocks/s, {txs_per_sec:.0} transactions/s");
        if let Some(rate) = signature_rate {
            println!(
                "  batched signature verification on all cores: {rate:.0} signatures/s; audit at {:.2} x that",
                txs_per_sec / rate
            );
        }
    }
    match verdict.failure {
        None => Ok(()),
        Some(failure) => Err(anyhow::anyhow!(
            "the history does not verify at height {}",
            failure.height
        )),
    }
}
