//! # stele-consensus
//!
//! The parts of Stele that agree on blocks, with no IO at all: no network, no disk, no
//! clock, no randomness. Hosts feed inputs in and carry the results out.
//!
//! This crate holds:
//!
//! - [`Hash`]: SHA-256 with domain-separation tags;
//! - [`PublicKey`], [`Signature`], [`SigningKey`]: ed25519 over ed25519-dalek, with
//!   strict verification and signatures bound to a chain and a message kind through
//!   [`SigningDomain`]; [`verify_batch`] and [`verify_each`] check many at once;
//! - [`ValidatorSet`]: keys and voting powers, the quorum rule (more than two thirds of
//!   the power) and a deterministic hash;
//! - [`Vote`] and [`CommitCertificate`]: a quorum of commit votes deciding one block, and
//!   its verification against a validator set.
//!
//! - [`Engine`]: the PBFT engine (pre-prepare, prepare, commit, view change, new view)
//!   as a pure state machine, `handle(Input) -> Vec<Effect>`, with its signing guarded
//!   by [`SafetyRules`]. See the `engine` module documentation for the protocol.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod certificate;
mod crypto;
mod engine;
mod error;
mod hash;
mod messages;
mod safety;
mod validator;

pub use certificate::{CommitCertificate, CommitSignature, SignedVote, Vote, VoteKind};
pub use crypto::{
    BatchEntry, CHAIN_ID_LEN_MAX, MessageKind, PUBLIC_KEY_LEN, PublicKey, SIGNATURE_LEN, Signature,
    SigningDomain, SigningKey, VerificationKey, batch_verification_rate, verify_batch, verify_each,
    verify_each_strict,
};
pub use engine::{Effect, Engine, EngineConfig, Evidence, Input};
pub use error::{CertificateError, CryptoError, DecodeError, ValidatorSetError};
pub use hash::{HASH_LEN, Hash, Hasher};
pub use messages::{
    ConsensusMessage, MessageDecodeError, NewView, PreparedCertificate, SignedPrePrepare,
    SignedViewChange, ViewChangeBody,
};
pub use safety::{SafetyRules, SafetyState, SafetyViolation};
pub use validator::{TOTAL_POWER_MAX, VALIDATORS_MAX, Validator, ValidatorSet};
