//! `stele-wallet`: keys, transactions, proof-checked queries and the auditor.
//!
//! The command-line surface is sketched here; the commands arrive with the wallet
//! issue. Until then each command says so and exits non-zero.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "stele-wallet", version, about = "Stele wallet and auditor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage the encrypted keystore.
    Keys,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let name = match cli.command {
        Command::Keys => "keys",
        Command::Transfer => "transfer",
        Command::Balance => "balance",
        Command::Audit { .. } => "audit",
    };
    eprintln!(
        "error: `stele-wallet {name}` is not implemented yet (it lands with the wallet issue, #5)"
    );
    ExitCode::from(2)
}
