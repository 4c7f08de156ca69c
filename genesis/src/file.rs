//! `genesis.json`: its format and its validation.
//!
//! The file is read with serde into [`GenesisFile`], whose keys are plain strings so
//! that validation can say exactly which field is wrong (`validators[2].public_key:
//! ...`), then checked as a whole into the ledger's [`Genesis`]. Validation reports
//! every problem it finds, not just the first.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use stele_consensus::{CHAIN_ID_LEN_MAX, PublicKey, TOTAL_POWER_MAX, VALIDATORS_MAX};
use stele_ledger::{ChainParams, Genesis, GenesisAccount, GenesisPeer, GenesisValidator, Role};

use crate::error::GenesisError;

/// A validator entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidatorEntry {
    /// Human name.
    pub name: String,
    /// Public key, 64 hex characters.
    pub public_key: String,
    /// Voting power, at least 1.
    pub power: u64,
    /// Peer-to-peer address, `host:port`.
    pub address: String,
}

/// An account entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountEntry {
    /// Optional human label; not part of the chain's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Public key, 64 hex characters.
    pub account: String,
    /// Starting balance.
    #[serde(default)]
    pub balance: u64,
    /// Role names: `admin`, `issuer`, `registrar`.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// A non-validating peer entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    /// Human name.
    pub name: String,
    /// Network key, 64 hex characters.
    pub public_key: String,
}

/// The contents of `genesis.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisFile {
    /// Chain id: 1 to 64 characters from `A-Z a-z 0-9 . _ -`.
    pub chain_id: String,
    /// Milliseconds since the Unix epoch.
    pub genesis_time_ms: u64,
    /// Consensus parameters.
    #[serde(default)]
    pub params: ChainParams,
    /// The first validator set.
    pub validators: Vec<ValidatorEntry>,
    /// Accounts existing from the start.
    #[serde(default)]
    pub accounts: Vec<AccountEntry>,
    /// Non-validating peers allowed to connect.
    #[serde(default)]
    pub peers: Vec<PeerEntry>,
}

/// One thing wrong with a genesis file: where, and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenesisProblem {
    /// The field path, such as `validators[2].public_key`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for GenesisProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// Collects problems while validating.
#[derive(Default)]
struct Problems(Vec<GenesisProblem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, problem: impl Into<String>) {
        self.0.push(GenesisProblem {
            field: field.into(),
            problem: problem.into(),
        });
    }

    fn key(&mut self, field: String, text: &str) -> Option<PublicKey> {
        match PublicKey::from_hex(text) {
            Err(e) => {
                self.add(field, format!("bad key encoding: {e}"));
                None
            }
            Ok(key) => match key.validate() {
                Err(_) => {
                    self.add(field, "bad key encoding: not a valid ed25519 public key");
                    None
                }
                Ok(()) => Some(key),
            },
        }
    }
}

impl GenesisFile {
    /// Reads and parses a file (without validating it).
    pub fn read(path: &Path) -> Result<GenesisFile, GenesisError> {
        let text = std::fs::read_to_string(path).map_err(|source| GenesisError::Io {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| GenesisError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes the file as pretty JSON.
    pub fn write(&self, path: &Path) -> Result<(), GenesisError> {
        let mut text = serde_json::to_string_pretty(self).expect("genesis serialises");
        text.push('\n');
        std::fs::write(path, text).map_err(|source| GenesisError::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// Validates the whole file and builds the ledger's genesis, or returns every
    /// problem found.
    pub fn validate(&self) -> Result<Genesis, Vec<GenesisProblem>> {
        let mut problems = Problems::default();
        check_chain_id(&self.chain_id, &mut problems);
        let params = self.params.clone();
        if let Err((field, problem)) = params.check() {
            problems.add(format!("params.{field}"), problem);
        }
        let validators = self.check_validators(&mut problems);
        let accounts = self.check_accounts(&mut problems);
        let peers = self.check_peers(&validators, &mut problems);
        if !problems.0.is_empty() {
            return Err(problems.0);
        }
        Ok(Genesis {
            chain_id: self.chain_id.clone(),
            genesis_time_ms: self.genesis_time_ms,
            params,
            validators,
            accounts,
            peers,
        })
    }

    fn check_validators(&self, problems: &mut Problems) -> Vec<GenesisValidator> {
        if self.validators.is_empty() {
            problems.add("validators", "no validators: a chain needs at least one");
        }
        if self.validators.len() > VALIDATORS_MAX {
            problems.add(
                "validators",
                format!(
                    "{} validators, at most {VALIDATORS_MAX} allowed",
                    self.validators.len()
                ),
            );
        }
        let mut out = Vec::with_capacity(self.validators.len());
        let mut by_key: HashMap<PublicKey, usize> = HashMap::new();
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        let mut by_address: HashMap<SocketAddr, usize> = HashMap::new();
        let mut total_power: u64 = 0;
        for (i, v) in self.validators.iter().enumerate() {
            let at = |field: &str| format!("validators[{i}].{field}");
            if v.name.trim().is_empty() {
                problems.add(at("name"), "must not be empty");
            } else if let Some(first) = by_name.insert(&v.name, i) {
                problems.add(
                    at("name"),
                    format!("duplicate name (same as validators[{first}])"),
                );
            }
            let key = problems.key(at("public_key"), &v.public_key);
            if let Some(key) = key
                && let Some(first) = by_key.insert(key, i)
            {
                problems.add(
                    at("public_key"),
                    format!("duplicate validator (same key as validators[{first}])"),
                );
            }
            if v.power == 0 {
                problems.add(
                    at("power"),
                    "zero power: every validator needs power of at least 1",
                );
            }
            total_power = total_power.saturating_add(v.power);
            match v.address.parse::<SocketAddr>() {
                Err(_) => problems.add(
                    at("address"),
                    format!(
                        "{:?} is not a host:port address such as 127.0.0.1:27000",
                        v.address
                    ),
                ),
                Ok(addr) => {
                    if let Some(first) = by_address.insert(addr, i) {
                        problems.add(
                            at("address"),
                            format!("duplicate address (same as validators[{first}])"),
                        );
                    }
                }
            }
            if let Some(key) = key {
                out.push(GenesisValidator {
                    name: v.name.clone(),
                    key,
                    power: v.power,
                    address: v.address.clone(),
                });
            }
        }
        if total_power > TOTAL_POWER_MAX {
            problems.add(
                "validators",
                format!("total power exceeds {TOTAL_POWER_MAX}"),
            );
        }
        out
    }

    fn check_accounts(&self, problems: &mut Problems) -> Vec<GenesisAccount> {
        let mut out = Vec::with_capacity(self.accounts.len());
        let mut seen: HashMap<PublicKey, usize> = HashMap::new();
        let mut supply: Option<u64> = Some(0);
        for (i, a) in self.accounts.iter().enumerate() {
            let at = |field: &str| format!("accounts[{i}].{field}");
            let key = problems.key(at("account"), &a.account);
            if let Some(key) = key
                && let Some(first) = seen.insert(key, i)
            {
                problems.add(
                    at("account"),
                    format!("duplicate account (same as accounts[{first}])"),
                );
            }
            let mut roles = Vec::new();
            for (j, name) in a.roles.iter().enumerate() {
                match Role::from_name(name) {
                    None => problems.add(
                        format!("accounts[{i}].roles[{j}]"),
                        format!("unknown role {name:?} (known roles: admin, issuer, registrar)"),
                    ),
                    Some(role) if roles.contains(&role) => {
                        problems.add(
                            format!("accounts[{i}].roles[{j}]"),
                            format!("role {name:?} listed twice"),
                        );
                    }
                    Some(role) => roles.push(role),
                }
            }
            let before = supply;
            supply = supply.and_then(|s| s.checked_add(a.balance));
            if before.is_some() && supply.is_none() {
                problems.add(
                    at("balance"),
                    format!(
                        "balance overflow: the total of balances up to here exceeds {}",
                        u64::MAX
                    ),
                );
            }
            if let Some(key) = key {
                out.push(GenesisAccount {
                    account: key,
                    balance: a.balance,
                    roles,
                });
            }
        }
        out
    }

    fn check_peers(
        &self,
        validators: &[GenesisValidator],
        problems: &mut Problems,
    ) -> Vec<GenesisPeer> {
        let mut out = Vec::with_capacity(self.peers.len());
        let mut seen: HashMap<PublicKey, String> = validators
            .iter()
            .enumerate()
            .map(|(i, v)| (v.key, format!("validators[{i}]")))
            .collect();
        for (i, p) in self.peers.iter().enumerate() {
            let field = format!("peers[{i}].public_key");
            if p.name.trim().is_empty() {
                problems.add(format!("peers[{i}].name"), "must not be empty");
            }
            if let Some(key) = problems.key(field.clone(), &p.public_key) {
                if let Some(first) = seen.insert(key, format!("peers[{i}]")) {
                    problems.add(field, format!("duplicate peer (same key as {first})"));
                }
                out.push(GenesisPeer {
                    name: p.name.clone(),
                    key,
                });
            }
        }
        out
    }

    /// The file form of a ledger genesis (for writing generated genesis files).
    pub fn from_genesis(
        genesis: &Genesis,
        account_names: &HashMap<PublicKey, String>,
    ) -> GenesisFile {
        GenesisFile {
            chain_id: genesis.chain_id.clone(),
            genesis_time_ms: genesis.genesis_time_ms,
            params: genesis.params.clone(),
            validators: genesis
                .validators
                .iter()
                .map(|v| ValidatorEntry {
                    name: v.name.clone(),
                    public_key: v.key.to_hex(),
                    power: v.power,
                    address: v.address.clone(),
                })
                .collect(),
            accounts: genesis
                .accounts
                .iter()
                .map(|a| AccountEntry {
                    name: account_names.get(&a.account).cloned(),
                    account: a.account.to_hex(),
                    balance: a.balance,
                    roles: a.roles.iter().map(|r| r.name().to_owned()).collect(),
                })
                .collect(),
            peers: genesis
                .peers
                .iter()
                .map(|p| PeerEntry {
                    name: p.name.clone(),
                    public_key: p.key.to_hex(),
                })
                .collect(),
        }
    }
}

fn check_chain_id(chain_id: &str, problems: &mut Problems) {
    if chain_id.is_empty() {
        problems.add("chain_id", "empty chain id");
    } else if chain_id.len() > CHAIN_ID_LEN_MAX {
        problems.add(
            "chain_id",
            format!(
                "{} bytes long, at most {CHAIN_ID_LEN_MAX} allowed",
                chain_id.len()
            ),
        );
    } else if !chain_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        problems.add(
            "chain_id",
            "only letters, digits, '.', '_' and '-' are allowed",
        );
    }
}

/// Reads, parses and validates a genesis file.
pub fn load_genesis(path: &Path) -> Result<Genesis, GenesisError> {
    let file = GenesisFile::read(path)?;
    file.validate().map_err(|problems| GenesisError::Invalid {
        path: path.to_owned(),
        problems,
    })
}
