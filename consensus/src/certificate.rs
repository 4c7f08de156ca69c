//! Votes and commit certificates.
//!
//! A validator votes for a block at a `(height, view)` with a signed [`Vote`]. A quorum of
//! `Commit` votes for one block, from distinct members of the height's validator set, is a
//! [`CommitCertificate`]: proof, checkable by anyone holding the validator set, that the
//! block is decided (PBFT's "committed-local" predicate, Castro and Liskov 1999, §4.3).

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::crypto::{BatchEntry, MessageKind, PublicKey, Signature, SigningDomain, SigningKey};
use crate::error::CertificateError;
use crate::hash::{Hash, Hasher};
use crate::validator::ValidatorSet;

/// The two voting phases of PBFT.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    BorshSerialize,
    BorshDeserialize,
    Serialize,
    Deserialize,
)]
#[borsh(use_discriminant = true)]
#[repr(u8)]
pub enum VoteKind {
    /// "I hold a valid proposal for this block."
    Prepare = 0,
    /// "I saw a quorum of prepares for this block."
    Commit = 1,
}

impl VoteKind {
    /// The signing tag of this vote kind.
    pub fn message_kind(self) -> MessageKind {
        match self {
            VoteKind::Prepare => MessageKind::Prepare,
            VoteKind::Commit => MessageKind::Commit,
        }
    }
}

/// A vote for `block_hash` at `(height, view)`.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    BorshSerialize,
    BorshDeserialize,
    Serialize,
    Deserialize,
)]
pub struct Vote {
    /// Prepare or commit.
    pub kind: VoteKind,
    /// Chain height (PBFT's sequence number).
    pub height: u64,
    /// View number within the height.
    pub view: u64,
    /// Hash of the block header voted for.
    pub block_hash: Hash,
}

impl Vote {
    /// The payload signed for this vote; the kind is carried by the signing tag.
    pub fn signing_payload(&self) -> [u8; 48] {
        let mut out = [0u8; 48];
        out[..8].copy_from_slice(&self.height.to_le_bytes());
        out[8..16].copy_from_slice(&self.view.to_le_bytes());
        out[16..].copy_from_slice(self.block_hash.as_bytes());
        out
    }

    /// The full signed bytes of this vote in `domain`.
    pub fn signing_bytes(&self, domain: &SigningDomain) -> Vec<u8> {
        domain.signing_bytes(self.kind.message_kind(), &self.signing_payload())
    }

    /// Signs the vote.
    pub fn sign(&self, domain: &SigningDomain, key: &SigningKey) -> SignedVote {
        SignedVote {
            vote: *self,
            validator: key.public_key(),
            signature: key.sign_raw(&self.signing_bytes(domain)),
        }
    }
}

/// A vote with its signer and signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct SignedVote {
    /// What is voted for.
    pub vote: Vote,
    /// Who votes.
    pub validator: PublicKey,
    /// Signature over [`Vote::signing_bytes`].
    pub signature: Signature,
}

impl SignedVote {
    /// Checks membership in `set` and the signature; returns the signer's index.
    pub fn verify(
        &self,
        domain: &SigningDomain,
        set: &ValidatorSet,
    ) -> Result<u32, CertificateError> {
        let index = set
            .index_of(&self.validator)
            .ok_or(CertificateError::UnknownSigner {
                validator: self.validator,
            })?;
        let key = set
            .verification_key(index)
            .expect("index_of returned a valid index");
        key.verify_raw(&self.vote.signing_bytes(domain), &self.signature)
            .map_err(|_| CertificateError::BadSignature {
                validator: self.validator,
            })?;
        Ok(index)
    }
}

/// One validator's commit signature inside a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct CommitSignature {
    /// The signer.
    pub validator: PublicKey,
    /// Its signature over the commit vote for the certificate's `(height, view, block_hash)`.
    pub signature: Signature,
}

/// A quorum of commit votes for one block: the proof that the block is decided.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct CommitCertificate {
    /// Height of the decided block.
    pub height: u64,
    /// View in which it was decided.
    pub view: u64,
    /// Hash of the decided block's header.
    pub block_hash: Hash,
    /// Commit signatures, one per signer.
    pub signatures: Vec<CommitSignature>,
}

impl CommitCertificate {
    /// Assembles a certificate from commit votes that agree on `(height, view, block_hash)`.
    ///
    /// # Panics
    ///
    /// If a vote is not a commit vote for the same `(height, view, block_hash)` as the
    /// first: that is a bug in the caller, which must group votes before assembling.
    pub fn from_votes(votes: &[SignedVote]) -> Option<Self> {
        let first = votes.first()?;
        assert!(
            votes
                .iter()
                .all(|v| v.vote == first.vote && v.vote.kind == VoteKind::Commit),
            "certificate votes must be commits for one (height, view, block)"
        );
        Some(CommitCertificate {
            height: first.vote.height,
            view: first.vote.view,
            block_hash: first.vote.block_hash,
            signatures: votes
                .iter()
                .map(|v| CommitSignature {
                    validator: v.validator,
                    signature: v.signature,
                })
                .collect(),
        })
    }

    /// The commit vote every signature in this certificate signs.
    pub fn vote(&self) -> Vote {
        Vote {
            kind: VoteKind::Commit,
            height: self.height,
            view: self.view,
            block_hash: self.block_hash,
        }
    }

    /// Digest of the certificate, as carried in the next block's header.
    pub fn hash(&self) -> Hash {
        let mut hasher = Hasher::new(b"stele/commit-certificate");
        hasher.update(&borsh::to_vec(self).expect("borsh encoding to a Vec never fails"));
        hasher.finish()
    }

    /// Checks that this certificate decides the block `block_hash` at `height` under
    /// `set`: right height and block, signers distinct members, every signature valid,
    /// and their power a quorum. Structural problems are reported before any signature
    /// is checked, so a malformed certificate costs no curve arithmetic.
    pub fn verify(
        &self,
        domain: &SigningDomain,
        set: &ValidatorSet,
        height: u64,
        block_hash: &Hash,
    ) -> Result<(), CertificateError> {
        if self.height != height {
            return Err(CertificateError::WrongHeight {
                expected: height,
                got: self.height,
            });
        }
        if self.block_hash != *block_hash {
            return Err(CertificateError::WrongBlock {
                expected: *block_hash,
                got: self.block_hash,
            });
        }
        verify_quorum(domain, set, &self.vote(), &self.signatures)
    }
}

/// Checks that `signatures` are valid signatures of `vote` by distinct members of `set`
/// holding a quorum of its power. Structural problems are reported before any
/// signature is checked, so a malformed certificate costs no curve arithmetic.
pub(crate) fn verify_quorum(
    domain: &SigningDomain,
    set: &ValidatorSet,
    vote: &Vote,
    signatures: &[CommitSignature],
) -> Result<(), CertificateError> {
    if signatures.len() > set.len() {
        return Err(CertificateError::TooManySignatures {
            count: signatures.len(),
            max: set.len(),
        });
    }
    let mut seen = vec![false; set.len()];
    let mut indices = Vec::with_capacity(signatures.len());
    let mut power: u64 = 0;
    for sig in signatures {
        let index = set
            .index_of(&sig.validator)
            .ok_or(CertificateError::UnknownSigner {
                validator: sig.validator,
            })?;
        if std::mem::replace(&mut seen[index as usize], true) {
            return Err(CertificateError::DuplicateSigner {
                validator: sig.validator,
            });
        }
        // Members are distinct and the total is bounded, so this cannot overflow.
        power += set.get(index).map_or(0, |v| v.power);
        indices.push(index);
    }
    if !set.is_quorum(power) {
        return Err(CertificateError::InsufficientPower {
            got: power,
            needed: set.quorum_power(),
        });
    }
    let signed_bytes = vote.signing_bytes(domain);
    let entries: Vec<BatchEntry<'_>> = signatures
        .iter()
        .zip(&indices)
        .map(|(sig, index)| BatchEntry {
            key: set
                .verification_key(*index)
                .expect("indices come from index_of on this set"),
            signed_bytes: &signed_bytes,
            signature: &sig.signature,
        })
        .collect();
    if crate::crypto::verify_batch(&entries).is_ok() {
        return Ok(());
    }
    let results = crate::crypto::verify_each(&entries);
    let bad = results.iter().position(|ok| !ok).unwrap_or(0);
    Err(CertificateError::BadSignature {
        validator: signatures[bad].validator,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validator::Validator;

    struct Fixture {
        domain: SigningDomain,
        keys: Vec<SigningKey>,
        set: ValidatorSet,
        block: Hash,
    }

    fn fixture(powers: &[u64]) -> Fixture {
        let keys: Vec<SigningKey> = (0..powers.len())
            .map(|i| SigningKey::from_seed([i as u8 + 1; 32]))
            .collect();
        let set = ValidatorSet::new(
            keys.iter()
                .zip(powers)
                .map(|(k, p)| Validator {
                    key: k.public_key(),
                    power: *p,
                })
                .collect(),
        )
        .unwrap();
        Fixture {
            domain: SigningDomain::new("cert-test").unwrap(),
            keys,
            set,
            block: Hash::digest(b"block"),
        }
    }

    fn certificate(f: &Fixture, signers: &[usize]) -> CommitCertificate {
        let vote = Vote {
            kind: VoteKind::Commit,
            height: 7,
            view: 2,
            block_hash: f.block,
        };
        let votes: Vec<SignedVote> = signers
            .iter()
            .map(|i| vote.sign(&f.domain, &f.keys[*i]))
            .collect();
        CommitCertificate::from_votes(&votes).unwrap()
    }

    #[test]
    fn quorum_certificate_verifies() {
        let f = fixture(&[1, 1, 1, 1]);
        let cert = certificate(&f, &[0, 1, 2]);
        cert.verify(&f.domain, &f.set, 7, &f.block).unwrap();
    }

    #[test]
    fn each_defect_has_its_error() {
        let f = fixture(&[1, 1, 1, 1]);
        let cert = certificate(&f, &[0, 1, 2]);
        assert!(matches!(
            cert.verify(&f.domain, &f.set, 8, &f.block),
            Err(CertificateError::WrongHeight {
                expected: 8,
                got: 7
            })
        ));
        assert!(matches!(
            cert.verify(&f.domain, &f.set, 7, &Hash::digest(b"other")),
            Err(CertificateError::WrongBlock { .. })
        ));
        let below = certificate(&f, &[0, 1]);
        assert_eq!(
            below.verify(&f.domain, &f.set, 7, &f.block),
            Err(CertificateError::InsufficientPower { got: 2, needed: 3 })
        );
        let mut twice = certificate(&f, &[0, 1]);
        twice.signatures.push(twice.signatures[0]);
        assert_eq!(
            twice.verify(&f.domain, &f.set, 7, &f.block),
            Err(CertificateError::DuplicateSigner {
                validator: f.keys[0].public_key()
            })
        );
        let outsider = SigningKey::from_seed([99; 32]);
        let mut foreign = certificate(&f, &[0, 1]);
        foreign.signatures.push(
            cert.vote()
                .sign(&f.domain, &outsider)
                .into_commit_signature(),
        );
        assert_eq!(
            foreign.verify(&f.domain, &f.set, 7, &f.block),
            Err(CertificateError::UnknownSigner {
                validator: outsider.public_key()
            })
        );
        let mut forged = certificate(&f, &[0, 1, 2]);
        forged.signatures[1].signature = forged.signatures[0].signature;
        assert_eq!(
            forged.verify(&f.domain, &f.set, 7, &f.block),
            Err(CertificateError::BadSignature {
                validator: f.keys[1].public_key()
            })
        );
        let other_chain = SigningDomain::new("other").unwrap();
        assert!(matches!(
            cert.verify(&other_chain, &f.set, 7, &f.block),
            Err(CertificateError::BadSignature { .. })
        ));
    }

    #[test]
    fn power_not_head_count_decides() {
        // One validator with 7 of 10 power is a quorum alone; three with 1 each are not.
        let f = fixture(&[7, 1, 1, 1]);
        certificate(&f, &[0])
            .verify(&f.domain, &f.set, 7, &f.block)
            .unwrap();
        assert!(matches!(
            certificate(&f, &[1, 2, 3]).verify(&f.domain, &f.set, 7, &f.block),
            Err(CertificateError::InsufficientPower { got: 3, needed: 7 })
        ));
    }

    impl SignedVote {
        fn into_commit_signature(self) -> CommitSignature {
            CommitSignature {
                validator: self.validator,
                signature: self.signature,
            }
        }
    }
}
