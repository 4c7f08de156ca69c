//! `stele-wallet`: keys, transactions, proof-checked queries and the auditor.
//!
//! The keystore commands are in place; transactions, verified queries and the audit
//! arrive with the rest of the wallet issue and say so until then.

mod keystore;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;
use zeroize::Zeroizing;

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage the encrypted keystore.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Send units to another account.
    Transfer,
    /// Show an account's balance, checked against a certified state root.
    Balance,
    /// Verify a chain's whole history from its genesis.
    Audit {
        /// The chain's genesis file.
        #[arg(long, value_name = "FILE")]
        genesis: PathBuf,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Keys(command) => keys(&cli, command),
        Command::Transfer => Err(not_yet("transfer")),
        Command::Balance => Err(not_yet("balance")),
        Command::Audit { .. } => Err(not_yet("audit")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn not_yet(name: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "`stele-wallet {name}` is not implemented yet (it lands with the wallet issue, #5)"
    )
}
