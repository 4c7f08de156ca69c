//! Checking a node's answers without trusting the node.
//!
//! The trust anchor is the genesis file. Its validator set certifies the first blocks;
//! each validator-set change the node lists is accepted only if a quorum of the set in
//! force signed the block that commits to the new set (as its next-validator-set hash).
//! An account's proof is then checked against the state root of a header certified by
//! the set in force at that header's height, and that header must name that set: a
//! change the node left out of its list shows up as a mismatch there.

use serde_json::Value;
use stele_consensus::{CommitCertificate, PublicKey, SigningDomain, Validator, ValidatorSet};
use stele_ledger::{
    Account, Genesis, Header, SparseMerkleProof, StateKey, StateReader, value_hash,
};

use crate::client::Client;

/// The node's answer did not check out.
#[derive(Debug, thiserror::Error)]
#[error("the node's answer does not verify: {0}")]
pub struct Lie(pub String);

fn lie(message: impl Into<String>) -> anyhow::Error {
    Lie(message.into()).into()
}

fn hex_field<T: borsh::BorshDeserialize>(value: &Value, field: &str) -> anyhow::Result<T> {
    let text = value[field]
        .as_str()
        .ok_or_else(|| lie(format!("{field} is missing")))?;
    let bytes = hex::decode(text).map_err(|e| lie(format!("{field} is not hex: {e}")))?;
    borsh::from_slice(&bytes).map_err(|e| lie(format!("{field} does not decode: {e}")))
}

/// The validator set in force at `height`, followed from the genesis through every
/// change the node lists below that height, each checked.
pub fn set_at(
    client: &mut Client,
    genesis: &Genesis,
    domain: &SigningDomain,
    height: u64,
) -> anyhow::Result<ValidatorSet> {
    let mut set = genesis.validator_set()?;
    let answer = client.get("/v1/validator-sets")?;
    let changes = answer.body["changes"]
        .as_array()
        .ok_or_else(|| lie("validator-set changes are missing"))?;
    let mut last = 0;
    for change in changes {
        let at = change["height"]
            .as_u64()
            .ok_or_else(|| lie("a validator-set change has no height"))?;
        if at <= last && last != 0 {
            return Err(lie("validator-set changes are not in height order"));
        }
        last = at;
        if at >= height {
            break;
        }
        let header: Header = hex_field(change, "header")?;
        let certificate: CommitCertificate = hex_field(change, "certificate")?;
        if header.height != at || header.chain_id != domain.chain_id() {
            return Err(lie(format!(
                "the header of set change {at} is for another height or chain"
            )));
        }
        if header.validator_set_hash != set.hash() {
            return Err(lie(format!(
                "the header at height {at} names a validator set other than the one followed from the genesis"
            )));
        }
        certificate
            .verify(domain, &set, at, &header.hash())
            .map_err(|e| lie(format!("certificate of height {at}: {e}")))?;
        let validators: Vec<Validator> = serde_json::from_value(change["validators"].clone())
            .map_err(|e| lie(format!("the new set at {at}: {e}")))?;
        let next =
            ValidatorSet::new(validators).map_err(|e| lie(format!("the new set at {at}: {e}")))?;
        if next.hash() != header.next_validator_set_hash {
            return Err(lie(format!(
                "the set given for height {} is not the one block {at} commits to",
                at + 1
            )));
        }
        set = next;
    }
    Ok(set)
}

/// A verified account: the height and state root it was proven against.
pub struct VerifiedAccount {
    /// The account, if it exists.
    pub account: Option<Account>,
    /// Height of the certified header.
    pub height: u64,
    /// Its state root, hex.
    pub state_root: String,
}

/// Checks an `/v1/accounts/{key}` answer against the genesis.
pub fn account(
    client: &mut Client,
    genesis: &Genesis,
    key: &PublicKey,
    answer: &Value,
) -> anyhow::Result<VerifiedAccount> {
    let domain = genesis.signing_domain()?;
    let height = answer["height"]
        .as_u64()
        .ok_or_else(|| lie("the answer has no height"))?;
    let root = if height == 0 {
        genesis.memory_state()?.root()?
    } else {
        let header: Header = hex_field(answer, "header")?;
        let certificate: CommitCertificate = hex_field(answer, "certificate")?;
        if header.height != height || header.chain_id != domain.chain_id() {
            return Err(lie("the header is for another height or chain"));
        }
        let set = set_at(client, genesis, &domain, height)?;
        if header.validator_set_hash != set.hash() {
            return Err(lie(format!(
                "the header at height {height} names a validator set other than the one followed from the genesis"
            )));
        }
        certificate
            .verify(&domain, &set, height, &header.hash())
            .map_err(|e| lie(format!("certificate of height {height}: {e}")))?;
        header.state_root
    };
    let proof: SparseMerkleProof = hex_field(answer, "proof")?;
    let value = match answer["value"].as_str() {
        Some(text) => Some(hex::decode(text).map_err(|e| lie(format!("value is not hex: {e}")))?),
        None => None,
    };
    let state_key = StateKey::Account(*key).hash();
    proof
        .verify(&root, &state_key, value.as_deref().map(value_hash).as_ref())
        .map_err(|e| {
            lie(format!(
                "the Merkle proof does not match the certified state root: {e}"
            ))
        })?;
    let account = match value {
        Some(bytes) => Some(
            borsh::from_slice::<Account>(&bytes)
                .map_err(|e| lie(format!("the proven value is not an account: {e}")))?,
        ),
        None => None,
    };
    // The readable fields must say what the proof proves: a node that states another
    // balance than the one it proves is lying, even if the proof itself is sound.
    let stated = (
        answer["exists"].as_bool(),
        answer["balance"].as_u64(),
        answer["nonce"].as_u64(),
    );
    let proven = match &account {
        Some(a) => (Some(true), Some(a.balance), Some(a.nonce)),
        None => (Some(false), stated.1, stated.2),
    };
    if stated != proven {
        return Err(lie(format!(
            "the node states exists/balance/nonce {stated:?}, its proof shows {proven:?}"
        )));
    }
    Ok(VerifiedAccount {
        account,
        height,
        state_root: root.to_hex(),
    })
}
