//! Errors of the consensus crate: one enum per concern, each variant with named fields.

use thiserror::Error;

use crate::crypto::PublicKey;
use crate::hash::Hash;

/// Text that could not be decoded into a fixed-size value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Wrong number of hex characters.
    #[error("expected {expected} hex characters, got {got}")]
    HexLength {
        /// Characters required.
        expected: usize,
        /// Characters given.
        got: usize,
    },
    /// A character outside `0-9a-fA-F`.
    #[error("invalid hex character")]
    HexCharacter,
}

/// Failures of key handling and signature checks.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CryptoError {
    /// Not a canonical encoding of a curve point, or a point of small order.
    #[error("invalid public key: not a canonical ed25519 point of large order")]
    InvalidPublicKey,
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// Chain ids are 1 to `max` bytes.
    #[error("chain id must be 1 to {max} bytes, got {len}")]
    ChainIdLength {
        /// Length given.
        len: usize,
        /// Longest accepted.
        max: usize,
    },
}

/// Why a list of validators is not a valid [`crate::ValidatorSet`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValidatorSetError {
    /// A set needs at least one validator.
    #[error("validator set is empty")]
    Empty,
    /// Too many validators.
    #[error("validator set has {count} validators, at most {max} allowed")]
    TooMany {
        /// Validators given.
        count: usize,
        /// Most allowed.
        max: usize,
    },
    /// The same key twice.
    #[error("validator {key} is listed twice")]
    Duplicate {
        /// The repeated key.
        key: PublicKey,
    },
    /// Every validator needs positive power.
    #[error("validator {key} has zero power")]
    ZeroPower {
        /// The validator.
        key: PublicKey,
    },
    /// The powers add up past the protocol's limit.
    #[error("total voting power exceeds {max}")]
    TotalPowerTooLarge {
        /// The limit.
        max: u64,
    },
    /// A key that cannot verify signatures.
    #[error("validator key {key} is not a valid ed25519 public key")]
    InvalidKey {
        /// The key.
        key: PublicKey,
    },
}

/// Why a [`crate::CommitCertificate`] does not certify a block.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CertificateError {
    /// Certifies another height.
    #[error("certificate is for height {got}, expected {expected}")]
    WrongHeight {
        /// The height being checked.
        expected: u64,
        /// The certificate's height.
        got: u64,
    },
    /// Certifies another block.
    #[error("certificate is for block {got}, expected {expected}")]
    WrongBlock {
        /// The block being checked.
        expected: Hash,
        /// The certificate's block.
        got: Hash,
    },
    /// More signatures than the set has validators.
    #[error("certificate carries {count} signatures, the set has {max} validators")]
    TooManySignatures {
        /// Signatures carried.
        count: usize,
        /// Validators in the set.
        max: usize,
    },
    /// A signer outside the validator set.
    #[error("signer {validator} is not in the validator set")]
    UnknownSigner {
        /// The signer.
        validator: PublicKey,
    },
    /// The same validator counted twice.
    #[error("signer {validator} appears more than once")]
    DuplicateSigner {
        /// The repeated signer.
        validator: PublicKey,
    },
    /// A signature that does not verify.
    #[error("signature of {validator} does not verify")]
    BadSignature {
        /// Whose signature.
        validator: PublicKey,
    },
    /// The signers hold too little power.
    #[error("signers hold power {got}, a quorum needs {needed}")]
    InsufficientPower {
        /// Power of the valid, distinct signers.
        got: u64,
        /// Quorum threshold.
        needed: u64,
    },
}
