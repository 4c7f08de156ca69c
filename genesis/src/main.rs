//! `stele-genesis`: create keys, create local testnets, check genesis files.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use stele_genesis::{TestnetOptions, generate_key, generate_testnet, load_genesis, write_key_file};

#[derive(Parser)]
#[command(
    name = "stele-genesis",
    version,
    about = "Create and check Stele genesis files, key files and local testnets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new ed25519 key to FILE (mode 0600; never overwrites).
    Keygen {
        /// Where to write the key file.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Create a local testnet: DIR/genesis.json, DIR/node0.. with config and keys,
    /// and funded accounts in DIR/accounts.
    Testnet {
        /// Number of validators.
        #[arg(long, default_value_t = 4)]
        validators: usize,
        /// Output directory (created; must not already hold a testnet).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Chain id.
        #[arg(long, default_value = "stele-localnet")]
        chain_id: String,
        /// First port: node i listens on BASE+2i (p2p) and BASE+2i+1 (HTTP API).
        #[arg(long, default_value_t = 27000)]
        base_port: u16,
        /// Funded user accounts to create besides the treasury.
        #[arg(long, default_value_t = 3)]
        accounts: usize,
    },
    /// Check a genesis file: exit 0 with a summary, or non-zero naming each problem.
    Validate {
        /// The genesis file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen { out } => {
            let key = generate_key();
            write_key_file(&out, &key)?;
            println!("{}", key.public_key());
        }
        Command::Testnet {
            validators,
            out,
            chain_id,
            base_port,
            accounts,
        } => {
            let options = TestnetOptions {
                validators,
                accounts,
                chain_id,
                base_port,
                ..TestnetOptions::default()
            };
            let testnet = generate_testnet(&out, &options)
                .with_context(|| format!("creating a testnet in {}", out.display()))?;
            println!(
                "testnet {} in {}: genesis hash {}",
                testnet.genesis.chain_id,
                out.display(),
                testnet.genesis.hash()
            );
            for node in &testnet.nodes {
                println!(
                    "  {}  p2p {}  api http://{}  home {}",
                    node.name,
                    node.p2p,
                    node.api,
                    node.home.display()
                );
            }
            for account in &testnet.accounts {
                println!(
                    "  account {:<9} {}  key {}",
                    account.name,
                    account.key,
                    account.key_file.display()
                );
            }
        }
        Command::Validate { file } => {
            let genesis = load_genesis(&file)?;
            let set = genesis.validator_set()?;
            let supply = genesis.supply()?;
            println!(
                "ok: {}: chain {}, {} validators (total power {}, quorum {}), {} accounts (supply {}), {} peers, hash {}",
                file.display(),
                genesis.chain_id,
                set.len(),
                set.total_power(),
                set.quorum_power(),
                genesis.accounts.len(),
                supply,
                genesis.peers.len(),
                genesis.hash()
            );
        }
    }
    Ok(())
}
