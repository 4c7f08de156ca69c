//! Local testnets: a genesis, one home directory per validator, and funded accounts.
//!
//! ```text
//! DIR/genesis.json
//! DIR/accounts/treasury.json       admin, issuer and registrar; large balance
//! DIR/accounts/alice.json ...      funded user accounts
//! DIR/node0/config.toml            listens on 127.0.0.1, ports base + 2i (p2p)
//! DIR/node0/genesis.json                                and base + 2i + 1 (API)
//! DIR/node0/validator_key.json     mode 0600
//! ...
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use stele_consensus::{PublicKey, VALIDATORS_MAX};
use stele_ledger::{ChainParams, Genesis, GenesisAccount, GenesisValidator, Role};

use crate::config::{
    ApiSection, ConsensusSection, LogSection, MempoolSection, NodeConfig, NodeSection, P2pSection,
    StorageSection,
};
use crate::error::GenesisError;
use crate::file::GenesisFile;
use crate::keys::{generate_key, write_key_file};

/// Names given to the first funded accounts; later ones are `account<N>`.
const ACCOUNT_NAMES: [&str; 8] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
];
/// Balance of the treasury account.
pub const TREASURY_BALANCE: u64 = 1_000_000_000_000;
/// Balance of each user account.
pub const USER_BALANCE: u64 = 1_000_000_000;
/// Most accounts a testnet generates.
pub const TESTNET_ACCOUNTS_MAX: usize = 1_000_000;

/// What to generate.
#[derive(Clone, Debug)]
pub struct TestnetOptions {
    /// Number of validators.
    pub validators: usize,
    /// Number of funded user accounts (besides the treasury).
    pub accounts: usize,
    /// Chain id.
    pub chain_id: String,
    /// Address every node listens on.
    pub host: IpAddr,
    /// First port; node `i` uses `base_port + 2i` (p2p) and `base_port + 2i + 1` (API).
    pub base_port: u16,
    /// Consensus parameters.
    pub params: ChainParams,
}

impl Default for TestnetOptions {
    fn default() -> Self {
        TestnetOptions {
            validators: 4,
            accounts: 3,
            chain_id: "stele-localnet".into(),
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            base_port: 27000,
            params: ChainParams::default(),
        }
    }
}

/// One generated validator node.
#[derive(Clone, Debug)]
pub struct TestnetNode {
    /// Its name (`node<i>`).
    pub name: String,
    /// Its home directory.
    pub home: PathBuf,
    /// Its public key.
    pub key: PublicKey,
    /// Peer-to-peer address.
    pub p2p: SocketAddr,
    /// API address.
    pub api: SocketAddr,
}

/// One generated account.
#[derive(Clone, Debug)]
pub struct TestnetAccount {
    /// Its name.
    pub name: String,
    /// Its public key.
    pub key: PublicKey,
    /// Its key file.
    pub key_file: PathBuf,
}

/// A generated testnet.
#[derive(Clone, Debug)]
pub struct Testnet {
    /// The genesis.
    pub genesis: Genesis,
    /// Its file.
    pub genesis_file: PathBuf,
    /// The validator nodes.
    pub nodes: Vec<TestnetNode>,
    /// The accounts, treasury first.
    pub accounts: Vec<TestnetAccount>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GenesisError + '_ {
    move |source| GenesisError::Io {
        path: path.to_owned(),
        source,
    }
}

fn invalid(dir: &Path, field: &str, problem: String) -> GenesisError {
    GenesisError::Invalid {
        path: dir.to_owned(),
        problems: vec![crate::file::GenesisProblem {
            field: field.into(),
            problem,
        }],
    }
}

/// Generates a testnet in `dir`, which must not already hold one.
pub fn generate_testnet(dir: &Path, options: &TestnetOptions) -> Result<Testnet, GenesisError> {
    if options.validators == 0 || options.validators > VALIDATORS_MAX {
        return Err(invalid(
            dir,
            "--validators",
            format!("must be 1 to {VALIDATORS_MAX}"),
        ));
    }
    if options.accounts > TESTNET_ACCOUNTS_MAX {
        return Err(invalid(
            dir,
            "--accounts",
            format!("at most {TESTNET_ACCOUNTS_MAX}"),
        ));
    }
    let last_port = u32::from(options.base_port) + 2 * options.validators as u32 - 1;
    if options.base_port == 0 || last_port > u32::from(u16::MAX) {
        return Err(invalid(
            dir,
            "--base-port",
            format!("ports {}..={last_port} do not fit", options.base_port),
        ));
    }
    let genesis_file = dir.join("genesis.json");
    if genesis_file.exists() {
        return Err(GenesisError::AlreadyExists { path: genesis_file });
    }
    let accounts_dir = dir.join("accounts");
    std::fs::create_dir_all(&accounts_dir).map_err(io(&accounts_dir))?;

    let mut nodes = Vec::with_capacity(options.validators);
    let mut node_keys = Vec::with_capacity(options.validators);
    for i in 0..options.validators {
        let name = format!("node{i}");
        let home = dir.join(&name);
        std::fs::create_dir_all(&home).map_err(io(&home))?;
        let key = generate_key();
        write_key_file(&home.join("validator_key.json"), &key)?;
        let port = options.base_port + 2 * i as u16;
        nodes.push(TestnetNode {
            name,
            home,
            key: key.public_key(),
            p2p: SocketAddr::new(options.host, port),
            api: SocketAddr::new(options.host, port + 1),
        });
        node_keys.push(key);
    }

    let mut accounts = Vec::with_capacity(options.accounts + 1);
    let mut genesis_accounts = Vec::with_capacity(options.accounts + 1);
    for i in 0..=options.accounts {
        let name = match i {
            0 => "treasury".to_owned(),
            i if i <= ACCOUNT_NAMES.len() => ACCOUNT_NAMES[i - 1].to_owned(),
            i => format!("account{i}"),
        };
        let key = generate_key();
        let key_file = accounts_dir.join(format!("{name}.json"));
        write_key_file(&key_file, &key)?;
        genesis_accounts.push(GenesisAccount {
            account: key.public_key(),
            balance: if i == 0 {
                TREASURY_BALANCE
            } else {
                USER_BALANCE
            },
            roles: if i == 0 {
                Role::ALL.to_vec()
            } else {
                Vec::new()
            },
        });
        accounts.push(TestnetAccount {
            name,
            key: key.public_key(),
            key_file,
        });
    }

    let genesis = Genesis {
        chain_id: options.chain_id.clone(),
        genesis_time_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        params: options.params.clone(),
        validators: nodes
            .iter()
            .map(|n| GenesisValidator {
                name: n.name.clone(),
                key: n.key,
                power: 10,
                address: n.p2p.to_string(),
            })
            .collect(),
        accounts: genesis_accounts,
        peers: Vec::new(),
    };
    let names: HashMap<PublicKey, String> =
        accounts.iter().map(|a| (a.key, a.name.clone())).collect();
    let file = GenesisFile::from_genesis(&genesis, &names);
    // Check what was generated exactly as a hand-written file would be checked.
    let checked = file.validate().map_err(|problems| GenesisError::Invalid {
        path: genesis_file.clone(),
        problems,
    })?;
    assert_eq!(checked, genesis, "a generated genesis reads back as itself");

    for node in &nodes {
        file.write(&node.home.join("genesis.json"))?;
        node_config(node).write(&node.home.join("config.toml"))?;
    }
    // The top-level genesis goes last: its presence marks a complete testnet.
    file.write(&genesis_file)?;
    Ok(Testnet {
        genesis,
        genesis_file,
        nodes,
        accounts,
    })
}

fn node_config(node: &TestnetNode) -> NodeConfig {
    NodeConfig {
        node: NodeSection {
            name: node.name.clone(),
            key_file: PathBuf::from("validator_key.json"),
            genesis_file: PathBuf::from("genesis.json"),
        },
        p2p: P2pSection {
            listen: node.p2p,
            max_peers: 50,
            peers: vec![],
        },
        api: ApiSection::new(node.api),
        storage: StorageSection::default(),
        consensus: ConsensusSection::default(),
        log: LogSection::default(),
        mempool: MempoolSection::default(),
    }
}
