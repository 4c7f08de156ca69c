//! A small chain driver for tests: deterministic keys, real signatures, blocks built
//! and executed by the ledger, and commit certificates signed by the validators.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::collections::HashMap;

use stele_consensus::{
    CommitCertificate, Hash, PublicKey, SignedVote, SigningKey, ValidatorSet, Vote, VoteKind,
};
use stele_ledger::{
    Block, ChainContext, ChainParams, ChainTip, ExecutionOutcome, Genesis, GenesisAccount,
    GenesisValidator, MemoryState, Operation, Role, SignedTransaction, StateReader, Transaction,
    build_block,
};

/// A key derived from a label, so parent and child processes agree on keys.
pub fn key(label: &str) -> SigningKey {
    SigningKey::from_seed(*Hash::digest(label.as_bytes()).as_bytes())
}

pub fn validator_key(i: usize) -> SigningKey {
    key(&format!("validator-{i}"))
}

pub fn account_key(i: usize) -> SigningKey {
    key(&format!("account-{i}"))
}

pub const ACCOUNT_BALANCE: u64 = 1_000_000;

/// A genesis with `validators` validators of power 10 and `accounts` funded accounts;
/// account 0 holds every role.
pub fn genesis(chain_id: &str, validators: usize, accounts: usize) -> Genesis {
    Genesis {
        chain_id: chain_id.into(),
        genesis_time_ms: 1_700_000_000_000,
        params: ChainParams::default(),
        validators: (0..validators)
            .map(|i| GenesisValidator {
                name: format!("v{i}"),
                key: validator_key(i).public_key(),
                power: 10,
                address: format!("127.0.0.1:{}", 30000 + i),
            })
            .collect(),
        accounts: (0..accounts)
            .map(|i| GenesisAccount {
                account: account_key(i).public_key(),
                balance: ACCOUNT_BALANCE,
                roles: if i == 0 {
                    Role::ALL.to_vec()
                } else {
                    Vec::new()
                },
            })
            .collect(),
        peers: Vec::new(),
    }
}

/// Signs a commit certificate for `block_hash` at `height` by `signers`.
pub fn certify(
    context: &ChainContext,
    height: u64,
    block_hash: Hash,
    signers: &[&SigningKey],
) -> CommitCertificate {
    let vote = Vote {
        kind: VoteKind::Commit,
        height,
        view: 0,
        block_hash,
    };
    let votes: Vec<SignedVote> = signers
        .iter()
        .map(|k| vote.sign(&context.domain, k))
        .collect();
    CommitCertificate::from_votes(&votes).expect("at least one signer")
}

/// A chain kept in memory, with its blocks and certificates.
pub struct TestChain {
    pub genesis: Genesis,
    pub context: ChainContext,
    pub state: MemoryState,
    pub tip: ChainTip,
    pub blocks: Vec<(Block, CommitCertificate)>,
    pub outcomes: Vec<ExecutionOutcome>,
    /// Every validator key that may ever sign, by public key.
    pub signers: HashMap<PublicKey, SigningKey>,
    nonces: HashMap<PublicKey, u64>,
    time_ms: u64,
}

impl TestChain {
    pub fn new(chain_id: &str, validators: usize, accounts: usize) -> TestChain {
        TestChain::from_genesis(genesis(chain_id, validators, accounts), validators + 4)
    }

    /// `extra_validators` more validator keys are known, for validators added later.
    pub fn from_genesis(genesis: Genesis, known_validators: usize) -> TestChain {
        let context = ChainContext {
            domain: genesis.signing_domain().unwrap(),
            params: genesis.params.clone(),
            keys: None,
        };
        let state = genesis.memory_state().unwrap();
        let tip = ChainTip {
            height: 0,
            block_hash: genesis.hash(),
            time_ms: genesis.genesis_time_ms,
        };
        let signers = (0..known_validators)
            .map(validator_key)
            .map(|k| (k.public_key(), k))
            .collect();
        TestChain {
            time_ms: genesis.genesis_time_ms,
            genesis,
            context,
            state,
            tip,
            blocks: Vec::new(),
            outcomes: Vec::new(),
            signers,
            nonces: HashMap::new(),
        }
    }

    /// Signs `op` by `signer` with its next nonce (as tracked by this helper).
    pub fn sign(&mut self, signer: &SigningKey, op: Operation) -> SignedTransaction {
        let nonce = self.nonces.entry(signer.public_key()).or_insert(0);
        let tx = Transaction {
            chain_id: self.genesis.chain_id.clone(),
            signer: signer.public_key(),
            nonce: *nonce,
            op,
        }
        .sign(&self.context.domain, signer);
        *nonce += 1;
        tx
    }

    pub fn transfer(&mut self, from: usize, to: usize, amount: u64) -> SignedTransaction {
        self.sign(
            &account_key(from),
            Operation::Transfer {
                to: account_key(to).public_key(),
                amount,
            },
        )
    }

    /// The set that certifies the next block.
    pub fn next_validator_set(&self) -> ValidatorSet {
        stele_ledger::BlockExecutor::new(&self.state, &self.context)
            .unwrap()
            .validator_set()
            .clone()
    }

    /// Builds the next block from `txs`, certifies it by every validator of its set,
    /// applies it, and returns it. Panics if a transaction is rejected.
    pub fn produce(&mut self, txs: Vec<SignedTransaction>) -> (Block, CommitCertificate) {
        let set = self.next_validator_set();
        let height = self.tip.height + 1;
        let proposer = set.validators()[(height as usize) % set.len()].key;
        self.time_ms += 1_000;
        let last_commit = self.blocks.last().map(|(_, c)| c.clone());
        let built = build_block(
            &self.state,
            &self.context,
            &self.tip,
            proposer,
            self.time_ms,
            txs,
            last_commit,
        )
        .unwrap();
        assert!(built.rejected.is_empty(), "rejected: {:?}", built.rejected);
        let signers: Vec<&SigningKey> = set
            .validators()
            .iter()
            .map(|v| self.signers.get(&v.key).expect("known validator key"))
            .collect();
        let certificate = certify(&self.context, height, built.block.hash(), &signers);
        self.state.apply(&built.outcome.delta).unwrap();
        self.tip = ChainTip {
            height,
            block_hash: built.block.hash(),
            time_ms: built.block.header.time_ms,
        };
        self.blocks.push((built.block.clone(), certificate.clone()));
        self.outcomes.push(built.outcome);
        (built.block, certificate)
    }

    /// Balance of account `i` in the current state.
    pub fn balance(&self, i: usize) -> u64 {
        self.account(&account_key(i).public_key())
            .map_or(0, |a| a.balance)
    }

    pub fn account(&self, key: &PublicKey) -> Option<stele_ledger::Account> {
        self.state
            .decoded(stele_ledger::StateKey::Account(*key))
            .unwrap()
    }

    pub fn supply(&self) -> u64 {
        self.state
            .decoded::<u64>(stele_ledger::StateKey::Supply)
            .unwrap()
            .unwrap()
    }
}
