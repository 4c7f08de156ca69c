//! The messages validators exchange, and how each is signed and checked.
//!
//! | message | signed payload (after the domain prefix and kind tag) |
//! |---|---|
//! | pre-prepare | `height, view, block_hash` |
//! | prepare, commit | `height, view, block_hash` (see [`Vote`]) |
//! | view change | borsh of [`ViewChangeBody`] |
//!
//! Blocks travel next to the signed parts, never inside them: the block hash binds a
//! block, and the host checks that the bytes it receives hash to it before voting.

use borsh::{BorshDeserialize, BorshSerialize};

use crate::certificate::{CommitCertificate, CommitSignature, Vote, VoteKind, verify_quorum};
use crate::crypto::{MessageKind, PublicKey, Signature, SigningDomain, SigningKey};
use crate::error::CertificateError;
use crate::hash::Hash;
use crate::validator::ValidatorSet;

/// A leader's proposal of `block_hash` at `(height, view)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct SignedPrePrepare {
    /// Height proposed for.
    pub height: u64,
    /// View proposed in.
    pub view: u64,
    /// Hash of the proposed block.
    pub block_hash: Hash,
    /// The leader.
    pub proposer: PublicKey,
    /// The leader's signature.
    pub signature: Signature,
}

fn position_payload(height: u64, view: u64, block_hash: &Hash) -> [u8; 48] {
    let mut out = [0u8; 48];
    out[..8].copy_from_slice(&height.to_le_bytes());
    out[8..16].copy_from_slice(&view.to_le_bytes());
    out[16..].copy_from_slice(block_hash.as_bytes());
    out
}

impl SignedPrePrepare {
    /// Signs a proposal.
    pub fn sign(
        domain: &SigningDomain,
        key: &SigningKey,
        height: u64,
        view: u64,
        block_hash: Hash,
    ) -> Self {
        SignedPrePrepare {
            height,
            view,
            block_hash,
            proposer: key.public_key(),
            signature: key.sign(
                domain,
                MessageKind::PrePrepare,
                &position_payload(height, view, &block_hash),
            ),
        }
    }

    /// Checks the signature by a member of `set`.
    pub fn verify(
        &self,
        domain: &SigningDomain,
        set: &ValidatorSet,
    ) -> Result<(), CertificateError> {
        let index = set
            .index_of(&self.proposer)
            .ok_or(CertificateError::UnknownSigner {
                validator: self.proposer,
            })?;
        set.verification_key(index)
            .expect("index_of returned a valid index")
            .verify(
                domain,
                MessageKind::PrePrepare,
                &position_payload(self.height, self.view, &self.block_hash),
                &self.signature,
            )
            .map_err(|_| CertificateError::BadSignature {
                validator: self.proposer,
            })
    }
}

/// A quorum of prepare votes for one block at `(height, view)`: the block is
/// *prepared*, and any later view at this height must re-propose it.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct PreparedCertificate {
    /// Height.
    pub height: u64,
    /// View in which the block was prepared.
    pub view: u64,
    /// The prepared block.
    pub block_hash: Hash,
    /// Prepare signatures, one per signer.
    pub signatures: Vec<CommitSignature>,
}

impl PreparedCertificate {
    /// The prepare vote every signature signs.
    pub fn vote(&self) -> Vote {
        Vote {
            kind: VoteKind::Prepare,
            height: self.height,
            view: self.view,
            block_hash: self.block_hash,
        }
    }

    /// Checks a quorum of valid, distinct prepare signatures under `set` for `height`.
    pub fn verify(
        &self,
        domain: &SigningDomain,
        set: &ValidatorSet,
        height: u64,
    ) -> Result<(), CertificateError> {
        if self.height != height {
            return Err(CertificateError::WrongHeight {
                expected: height,
                got: self.height,
            });
        }
        verify_quorum(domain, set, &self.vote(), &self.signatures)
    }
}

/// What a view change says: "move height `height` to view `new_view`; the highest block
/// I prepared is `prepared`".
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct ViewChangeBody {
    /// Height.
    pub height: u64,
    /// The view asked for.
    pub new_view: u64,
    /// The sender's highest prepared certificate at this height, if any.
    pub prepared: Option<PreparedCertificate>,
}

/// A signed view change.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct SignedViewChange {
    /// Content.
    pub body: ViewChangeBody,
    /// Sender.
    pub validator: PublicKey,
    /// Signature over the borsh encoding of `body`.
    pub signature: Signature,
}

impl SignedViewChange {
    /// Signs a view change.
    pub fn sign(domain: &SigningDomain, key: &SigningKey, body: ViewChangeBody) -> Self {
        let payload = borsh::to_vec(&body).expect("borsh encoding to a Vec never fails");
        SignedViewChange {
            signature: key.sign(domain, MessageKind::ViewChange, &payload),
            validator: key.public_key(),
            body,
        }
    }

    /// Checks the signature by a member of `set`, and the prepared certificate (for this
    /// height, a view below the one asked for).
    pub fn verify(
        &self,
        domain: &SigningDomain,
        set: &ValidatorSet,
    ) -> Result<(), CertificateError> {
        self.verify_signature(domain, set)?;
        if let Some(prepared) = &self.body.prepared {
            if prepared.view >= self.body.new_view {
                return Err(CertificateError::WrongHeight {
                    expected: self.body.new_view,
                    got: prepared.view,
                });
            }
            prepared.verify(domain, set, self.body.height)?;
        }
        Ok(())
    }

    /// Checks only that a member of `set` signed this view change, not the prepared
    /// certificate it carries (which needs the set of the view change's own height).
    pub fn verify_signature(
        &self,
        domain: &SigningDomain,
        set: &ValidatorSet,
    ) -> Result<(), CertificateError> {
        let index = set
            .index_of(&self.validator)
            .ok_or(CertificateError::UnknownSigner {
                validator: self.validator,
            })?;
        let payload = borsh::to_vec(&self.body).expect("borsh encoding to a Vec never fails");
        set.verification_key(index)
            .expect("index_of returned a valid index")
            .verify(domain, MessageKind::ViewChange, &payload, &self.signature)
            .map_err(|_| CertificateError::BadSignature {
                validator: self.validator,
            })
    }
}

/// A new leader's entry into a view: a quorum of view changes for it, and the
/// proposal they justify.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct NewView {
    /// Height.
    pub height: u64,
    /// The view entered.
    pub view: u64,
    /// View changes for `(height, view)` from validators holding a quorum of power.
    pub view_changes: Vec<SignedViewChange>,
    /// The leader's proposal for the view.
    pub pre_prepare: SignedPrePrepare,
}

impl NewView {
    /// The block the view changes force the leader to propose: that of the highest
    /// prepared certificate among them, or `None` if none prepared anything (the leader
    /// is then free). Ties between certificates of one view name the same block unless
    /// a third of the power is faulty; the first in message order is taken.
    pub fn forced_block(view_changes: &[SignedViewChange]) -> Option<&PreparedCertificate> {
        let mut best: Option<&PreparedCertificate> = None;
        for vc in view_changes {
            if let Some(p) = &vc.body.prepared
                && best.is_none_or(|b| p.view > b.view)
            {
                best = Some(p);
            }
        }
        best
    }
}

/// Everything validators send each other, as it travels.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum ConsensusMessage {
    /// A proposal in view 0 (later views propose through [`NewView`]).
    PrePrepare {
        /// The signed proposal.
        pre_prepare: SignedPrePrepare,
        /// The proposed block.
        block: Vec<u8>,
    },
    /// A prepare or commit vote.
    Vote(SignedVote),
    /// A request to change view.
    ViewChange {
        /// The signed request.
        view_change: SignedViewChange,
        /// The block of its prepared certificate, so the new leader can re-propose it.
        block: Option<Vec<u8>>,
    },
    /// A new leader's justified proposal.
    NewView {
        /// The justification and proposal.
        new_view: NewView,
        /// The proposed block.
        block: Vec<u8>,
    },
    /// A decided block's certificate, announced so that nodes that missed the votes can
    /// catch up.
    Certificate(CommitCertificate),
}

pub use crate::certificate::SignedVote;

impl ConsensusMessage {
    /// Encodes for the wire.
    pub fn encode(&self) -> Vec<u8> {
        borsh::to_vec(self).expect("borsh encoding to a Vec never fails")
    }

    /// Decodes bytes from the wire, refusing more than `max_bytes` before decoding.
    pub fn decode(bytes: &[u8], max_bytes: usize) -> Result<Self, MessageDecodeError> {
        if bytes.len() > max_bytes {
            return Err(MessageDecodeError::TooLarge {
                size: bytes.len(),
                max: max_bytes,
            });
        }
        borsh::from_slice(bytes).map_err(|e| MessageDecodeError::Malformed {
            reason: e.to_string(),
        })
    }

    /// The height the message is about.
    pub fn height(&self) -> u64 {
        match self {
            ConsensusMessage::PrePrepare { pre_prepare, .. } => pre_prepare.height,
            ConsensusMessage::Vote(v) => v.vote.height,
            ConsensusMessage::ViewChange { view_change, .. } => view_change.body.height,
            ConsensusMessage::NewView { new_view, .. } => new_view.height,
            ConsensusMessage::Certificate(c) => c.height,
        }
    }

    /// The view the message is about (the view asked for, for a view change).
    pub fn view(&self) -> u64 {
        match self {
            ConsensusMessage::PrePrepare { pre_prepare, .. } => pre_prepare.view,
            ConsensusMessage::Vote(v) => v.vote.view,
            ConsensusMessage::ViewChange { view_change, .. } => view_change.body.new_view,
            ConsensusMessage::NewView { new_view, .. } => new_view.view,
            ConsensusMessage::Certificate(c) => c.view,
        }
    }
}

/// A message that could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageDecodeError {
    /// Larger than allowed; nothing was decoded.
    #[error("message is {size} bytes, the limit is {max}")]
    TooLarge {
        /// Bytes received.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// Not a valid encoding.
    #[error("malformed message: {reason}")]
    Malformed {
        /// Decoder message.
        reason: String,
    },
}
