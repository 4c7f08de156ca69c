//! `stele-node`: the Stele validator node.
//!
//! The command-line surface is fixed here; the node itself (libp2p networking, mempool,
//! consensus driver, block sync, HTTP API) arrives with the node issue. Until then each
//! command says so and exits non-zero.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The state tree copies a page per changed page per block; mimalloc handles that
/// churn much better than glibc's allocator (see the `state` bench).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "stele-node", version, about = "Stele validator node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a validator (or observer) from a home directory.
    Start {
        /// Home directory holding config.toml, genesis.json and the key file.
        #[arg(long, value_name = "DIR")]
        home: PathBuf,
    },
    /// Create a home directory from a genesis file and a key file.
    Init {
        /// Home directory to create.
        #[arg(long, value_name = "DIR")]
        home: PathBuf,
        /// The chain's genesis file.
        #[arg(long, value_name = "FILE")]
        genesis: PathBuf,
        /// The node's key file.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Create (or reuse) a local testnet and run its validators as separate processes.
    Localnet {
        /// Number of validators.
        #[arg(long, default_value_t = 4)]
        validators: usize,
        /// Testnet directory.
        #[arg(long, value_name = "DIR", default_value = "localnet")]
        dir: PathBuf,
    },
    /// Write an audit pack (blocks and certificates) from a node's store.
    Export {
        /// Home directory of a stopped node.
        #[arg(long, value_name = "DIR")]
        home: PathBuf,
        /// Output file.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let name = match cli.command {
        Command::Start { .. } => "start",
        Command::Init { .. } => "init",
        Command::Localnet { .. } => "localnet",
        Command::Export { .. } => "export",
    };
    eprintln!(
        "error: `stele-node {name}` is not implemented yet (it lands with the node issue, #4)"
    );
    ExitCode::from(2)
}
