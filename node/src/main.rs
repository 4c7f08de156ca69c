//! `stele-node`: the Stele validator node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use stele_genesis::config::{
    ApiSection, ConsensusSection, LogFormat, LogSection, MempoolSection, NodeSection, P2pSection,
    StorageSection,
};
use stele_genesis::{NodeConfig, read_key_file, write_key_file};
use stele_node::node::{self, Home};

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
        /// Peer-to-peer listen address (default: the validator's genesis address, or
        /// 127.0.0.1:26656).
        #[arg(long, value_name = "IP:PORT")]
        p2p: Option<SocketAddr>,
        /// HTTP API listen address.
        #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:26657")]
        api: SocketAddr,
        /// Node name (default: the validator's genesis name, or the home's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Create (or reuse) a local testnet and run its validators as separate processes.
    Localnet {
        /// Number of validators.
        #[arg(long, default_value_t = 4)]
        validators: usize,
        /// Testnet directory.
        #[arg(long, value_name = "DIR", default_value = "localnet")]
        dir: PathBuf,
        /// Demo transfers per second from the testnet's `alice` to `bob`, so blocks
        /// appear (blocks are only made when there are transactions); 0 for none.
        #[arg(long, default_value_t = 2, value_name = "TX/S")]
        load: u32,
        /// Address the nodes listen on (used when the testnet is created).
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// First port: node i uses base + 2i (p2p) and base + 2i + 1 (API) (used when
        /// the testnet is created).
        #[arg(long, default_value_t = 27000)]
        base_port: u16,
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

fn init_tracing(log: &LogSection) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Start { home } => start(&home),
        Command::Init {
            home,
            genesis,
            key,
            p2p,
            api,
            name,
        } => init(&home, &genesis, &key, p2p, api, name),
        Command::Localnet {
            validators,
            dir,
            load,
            host,
            base_port,
        } => runtime().and_then(|rt| {
            rt.block_on(stele_node::localnet::run(
                stele_node::localnet::LocalnetOptions {
                    validators,
                    dir,
                    load,
                    host,
                    base_port,
                },
            ))
        }),
        Command::Export { home, out } => stele_node::export::export(&home, &out).map(|exported| {
            println!(
                "wrote {}: heights 1 to {}, {} transactions",
                exported.path.display(),
                exported.blocks,
                exported.transactions
            );
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(home: &Path) -> anyhow::Result<()> {
    let home = Home::load(home)?;
    init_tracing(&home.config.log);
    runtime()?.block_on(node::run(home))
}

fn init(
    home: &Path,
    genesis_path: &Path,
    key_path: &Path,
    p2p: Option<SocketAddr>,
    api: SocketAddr,
    name: Option<String>,
) -> anyhow::Result<()> {
    if home.join("config.toml").exists() {
        anyhow::bail!("{} already holds a node home", home.display());
    }
    let genesis = stele_genesis::load_genesis(genesis_path)?;
    let key = read_key_file(key_path)?;
    let me = key.public_key();
    let validator = genesis.validators.iter().find(|v| v.key == me);
    let p2p = match (p2p, validator) {
        (Some(address), _) => address,
        (None, Some(v)) => v.address.parse().with_context(|| {
            format!(
                "the genesis address of validator {} ({}) is not ip:port; pass --p2p",
                v.name, v.address
            )
        })?,
        (None, None) => "127.0.0.1:26656".parse().expect("valid address"),
    };
    let name = name
        .or_else(|| validator.map(|v| v.name.clone()))
        .or_else(|| home.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "node".into());
    std::fs::create_dir_all(home).with_context(|| format!("creating {}", home.display()))?;
    std::fs::copy(genesis_path, home.join("genesis.json"))
        .with_context(|| format!("copying {}", genesis_path.display()))?;
    write_key_file(&home.join("validator_key.json"), &key)?;
    let config = NodeConfig {
        node: NodeSection {
            name,
            key_file: PathBuf::from("validator_key.json"),
            genesis_file: PathBuf::from("genesis.json"),
        },
        p2p: P2pSection {
            listen: p2p,
            max_peers: 50,
            peers: vec![],
        },
        api: ApiSection::new(api),
        storage: StorageSection::default(),
        consensus: ConsensusSection::default(),
        log: LogSection::default(),
        mempool: MempoolSection::default(),
    };
    config
        .check()
        .map_err(|reason| anyhow::anyhow!("invalid configuration: {reason}"))?;
    config.write(&home.join("config.toml"))?;
    println!(
        "initialised {} for key {me}{}",
        home.display(),
        if validator.is_some() {
            " (a genesis validator)"
        } else {
            " (not a genesis validator: an observer until a transaction adds it)"
        }
    );
    Ok(())
}
