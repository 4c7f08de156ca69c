//! Safety rules: the only code that signs consensus messages, and the state it must
//! persist so that a validator never signs two different messages for the same height,
//! view and phase, even across crashes (aptos-core's safety-rules, CometBFT's privval).
//!
//! The rules, for one height:
//!
//! 1. The height never decreases; moving to a higher height forgets the lower one.
//! 2. The *view* a validator participates in never decreases. It signs a pre-prepare,
//!    prepare or commit only for its current view, and at most one of each per view;
//!    asked again for the same content it returns the same signature.
//! 3. Signing a view change for view `v'` moves the validator to `v'` at once: it never
//!    again signs anything for a lower view. (Otherwise its view change could report
//!    "nothing prepared" and it could prepare and commit a block afterwards, so a new
//!    leader could miss a decided block: PBFT's view-change safety argument needs every
//!    view change to report what its sender prepared.)
//! 4. Before the commit vote that shows a block is prepared, the prepared certificate
//!    (and the block) is recorded, so every later view change reports it.
//!
//! Every change that a later signature depends on is marked, and the engine emits the
//! new state in a [`crate::Effect::PersistSafety`] before the messages it guards.
//! Moving to a new height is not marked: nothing is signed there yet, and after a
//! restart the committed chain puts the validator at that height again, so writing
//! it would only add an fsync in front of every height's first message.

use borsh::{BorshDeserialize, BorshSerialize};

use crate::certificate::{SignedVote, Vote, VoteKind};
use crate::crypto::{Signature, SigningDomain, SigningKey};
use crate::hash::Hash;
use crate::messages::{PreparedCertificate, SignedPrePrepare, SignedViewChange, ViewChangeBody};

/// What a validator persists to sign safely after a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct SafetyState {
    /// The height the records belong to.
    pub height: u64,
    /// The view the validator participates in at `height`.
    pub view: u64,
    /// The pre-prepare signed at `(height, view)`, as leader.
    pub pre_prepare: Option<(Hash, Signature)>,
    /// The prepare vote signed at `(height, view)`.
    pub prepare: Option<(Hash, Signature)>,
    /// The commit vote signed at `(height, view)`.
    pub commit: Option<(Hash, Signature)>,
    /// The view change that moved the validator to `view`, if that is how it got there.
    pub view_change: Option<SignedViewChange>,
    /// The highest prepared certificate at `height`.
    pub prepared: Option<PreparedCertificate>,
    /// The block of `prepared`, so it can be re-proposed after a restart.
    pub prepared_block: Option<Vec<u8>>,
}

/// A request the rules refuse: signing it could make the validator equivocate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SafetyViolation {
    /// For a height below the current one.
    #[error("height {got} is below the current height {current}")]
    OldHeight {
        /// Current height.
        current: u64,
        /// Height asked for.
        got: u64,
    },
    /// For a view other than the current one (or, for a view change, not above it).
    #[error("view {got} does not fit the current view {current}")]
    WrongView {
        /// Current view.
        current: u64,
        /// View asked for.
        got: u64,
    },
    /// A different block than already signed for this height, view and phase.
    #[error("already signed another block at this height, view and phase")]
    Conflict,
}

/// The signing half of the engine.
#[derive(Debug)]
pub struct SafetyRules {
    domain: SigningDomain,
    key: SigningKey,
    state: SafetyState,
    changed: bool,
}

impl SafetyRules {
    /// Rules resuming from a persisted state (or `SafetyState::default()` on first start).
    pub fn new(domain: SigningDomain, key: SigningKey, state: SafetyState) -> Self {
        SafetyRules {
            domain,
            key,
            state,
            changed: false,
        }
    }

    /// The signing validator.
    pub fn public_key(&self) -> crate::crypto::PublicKey {
        self.key.public_key()
    }

    /// The current state.
    pub fn state(&self) -> &SafetyState {
        &self.state
    }

    /// The state, if it changed since the last call (the caller must persist it before
    /// sending anything signed since).
    pub fn take_changed(&mut self) -> Option<SafetyState> {
        std::mem::take(&mut self.changed).then(|| self.state.clone())
    }

    /// Moves to `height` (forgetting the previous one). A height below the current is
    /// refused; the current height is kept as it is (a restart resumes it).
    ///
    /// The move itself is not marked as a change to persist. The persisted state is
    /// that of the last height at which anything was signed; a validator that
    /// restarts at a higher height finds nothing signed there, which is true.
    pub fn start_height(&mut self, height: u64) -> Result<(), SafetyViolation> {
        if height < self.state.height {
            return Err(SafetyViolation::OldHeight {
                current: self.state.height,
                got: height,
            });
        }
        if height > self.state.height {
            self.state = SafetyState {
                height,
                ..SafetyState::default()
            };
        }
        Ok(())
    }

    /// Enters `view` at the current height on a valid new-view message.
    pub fn enter_view(&mut self, height: u64, view: u64) -> Result<(), SafetyViolation> {
        self.check_height(height)?;
        if view < self.state.view {
            return Err(SafetyViolation::WrongView {
                current: self.state.view,
                got: view,
            });
        }
        if view > self.state.view {
            self.move_to_view(view);
        }
        Ok(())
    }

    fn move_to_view(&mut self, view: u64) {
        self.state.view = view;
        self.state.pre_prepare = None;
        self.state.prepare = None;
        self.state.commit = None;
        if self
            .state
            .view_change
            .as_ref()
            .is_some_and(|vc| vc.body.new_view != view)
        {
            self.state.view_change = None;
        }
        self.changed = true;
    }

    fn check_height(&self, height: u64) -> Result<(), SafetyViolation> {
        if height != self.state.height {
            return Err(SafetyViolation::OldHeight {
                current: self.state.height,
                got: height,
            });
        }
        Ok(())
    }

    fn check_view(&self, height: u64, view: u64) -> Result<(), SafetyViolation> {
        self.check_height(height)?;
        if view != self.state.view {
            return Err(SafetyViolation::WrongView {
                current: self.state.view,
                got: view,
            });
        }
        Ok(())
    }

    /// Signs the leader's proposal of `block_hash` at `(height, view)`.
    pub fn sign_pre_prepare(
        &mut self,
        height: u64,
        view: u64,
        block_hash: Hash,
    ) -> Result<SignedPrePrepare, SafetyViolation> {
        self.check_view(height, view)?;
        let signed = SignedPrePrepare::sign(&self.domain, &self.key, height, view, block_hash);
        match self.state.pre_prepare {
            Some((hash, signature)) if hash == block_hash => Ok(SignedPrePrepare {
                signature,
                ..signed
            }),
            Some(_) => Err(SafetyViolation::Conflict),
            None => {
                self.state.pre_prepare = Some((block_hash, signed.signature));
                self.changed = true;
                Ok(signed)
            }
        }
    }

    /// Signs a prepare vote for `block_hash` at `(height, view)`.
    pub fn sign_prepare(
        &mut self,
        height: u64,
        view: u64,
        block_hash: Hash,
    ) -> Result<SignedVote, SafetyViolation> {
        self.check_view(height, view)?;
        let vote = Vote {
            kind: VoteKind::Prepare,
            height,
            view,
            block_hash,
        };
        let record = self.state.prepare;
        let signed = self.sign_vote(vote, record)?;
        self.state.prepare = Some((block_hash, signed.signature));
        Ok(signed)
    }

    /// Records `prepared` (with its block) as the highest prepared certificate, then
    /// signs the commit vote it allows.
    pub fn sign_commit(
        &mut self,
        prepared: PreparedCertificate,
        block: Vec<u8>,
    ) -> Result<SignedVote, SafetyViolation> {
        self.check_view(prepared.height, prepared.view)?;
        let vote = Vote {
            kind: VoteKind::Commit,
            height: prepared.height,
            view: prepared.view,
            block_hash: prepared.block_hash,
        };
        let record = self.state.commit;
        let signed = self.sign_vote(vote, record)?;
        self.state.commit = Some((vote.block_hash, signed.signature));
        if self
            .state
            .prepared
            .as_ref()
            .is_none_or(|p| p.view < prepared.view)
        {
            self.state.prepared = Some(prepared);
            self.state.prepared_block = Some(block);
            self.changed = true;
        }
        Ok(signed)
    }

    fn sign_vote(
        &mut self,
        vote: Vote,
        record: Option<(Hash, Signature)>,
    ) -> Result<SignedVote, SafetyViolation> {
        match record {
            Some((hash, signature)) if hash == vote.block_hash => Ok(SignedVote {
                vote,
                validator: self.key.public_key(),
                signature,
            }),
            Some(_) => Err(SafetyViolation::Conflict),
            None => {
                self.changed = true;
                Ok(vote.sign(&self.domain, &self.key))
            }
        }
    }

    /// Signs a view change to `new_view`, reporting the highest prepared certificate,
    /// and moves to `new_view`. Asked again for the current view, returns the same
    /// message.
    pub fn sign_view_change(
        &mut self,
        height: u64,
        new_view: u64,
    ) -> Result<SignedViewChange, SafetyViolation> {
        self.check_height(height)?;
        if let Some(vc) = &self.state.view_change
            && vc.body.new_view == new_view
        {
            return Ok(vc.clone());
        }
        if new_view <= self.state.view {
            return Err(SafetyViolation::WrongView {
                current: self.state.view,
                got: new_view,
            });
        }
        let body = ViewChangeBody {
            height,
            new_view,
            prepared: self.state.prepared.clone(),
        };
        let signed = SignedViewChange::sign(&self.domain, &self.key, body);
        self.move_to_view(new_view);
        self.state.view_change = Some(signed.clone());
        Ok(signed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> SafetyRules {
        SafetyRules::new(
            SigningDomain::new("safety").unwrap(),
            SigningKey::from_seed([3; 32]),
            SafetyState::default(),
        )
    }

    #[test]
    fn one_block_per_height_view_and_phase() {
        let mut r = rules();
        r.start_height(5).unwrap();
        let a = Hash::digest(b"a");
        let b = Hash::digest(b"b");
        let first = r.sign_prepare(5, 0, a).unwrap();
        assert!(r.take_changed().is_some());
        // The same request again gives the same signature and changes nothing.
        assert_eq!(r.sign_prepare(5, 0, a).unwrap(), first);
        assert!(r.take_changed().is_none());
        assert_eq!(r.sign_prepare(5, 0, b), Err(SafetyViolation::Conflict));
        assert!(matches!(
            r.sign_prepare(5, 1, a),
            Err(SafetyViolation::WrongView { .. })
        ));
        assert!(matches!(
            r.sign_prepare(4, 0, a),
            Err(SafetyViolation::OldHeight { .. })
        ));
        r.sign_pre_prepare(5, 0, a).unwrap();
        assert_eq!(r.sign_pre_prepare(5, 0, b), Err(SafetyViolation::Conflict));
    }

    #[test]
    fn view_change_moves_on_and_reports_what_was_prepared() {
        let mut r = rules();
        r.start_height(1).unwrap();
        let a = Hash::digest(b"a");
        let prepared = PreparedCertificate {
            height: 1,
            view: 0,
            block_hash: a,
            signatures: vec![],
        };
        r.sign_commit(prepared.clone(), b"block a".to_vec())
            .unwrap();
        let vc = r.sign_view_change(1, 1).unwrap();
        assert_eq!(vc.body.prepared, Some(prepared));
        // Nothing more for view 0, and no going back.
        assert!(matches!(
            r.sign_commit(
                PreparedCertificate {
                    height: 1,
                    view: 0,
                    block_hash: a,
                    signatures: vec![]
                },
                vec![]
            ),
            Err(SafetyViolation::WrongView { .. })
        ));
        assert!(matches!(
            r.sign_view_change(1, 0),
            Err(SafetyViolation::WrongView { .. })
        ));
        // The same view change again is the same message.
        assert_eq!(r.sign_view_change(1, 1).unwrap(), vc);
    }

    #[test]
    fn a_new_height_is_persisted_with_its_first_signature() {
        let mut r = rules();
        r.start_height(3).unwrap();
        r.sign_prepare(3, 0, Hash::digest(b"a")).unwrap();
        let at_three = r.take_changed().unwrap();
        r.start_height(4).unwrap();
        assert!(r.take_changed().is_none(), "nothing signed at 4 yet");
        // Restarted from the record of height 3 and started at 4 (the committed chain
        // says so), it may sign anything at 4: it signed nothing there before.
        let mut restarted = SafetyRules::new(
            SigningDomain::new("safety").unwrap(),
            SigningKey::from_seed([3; 32]),
            at_three,
        );
        restarted.start_height(4).unwrap();
        let b = Hash::digest(b"b");
        restarted.sign_prepare(4, 0, b).unwrap();
        let at_four = restarted.take_changed().unwrap();
        assert_eq!((at_four.height, at_four.prepare.map(|p| p.0)), (4, Some(b)));
        // Starting the same height again changes nothing; a lower one is refused.
        restarted.start_height(4).unwrap();
        assert!(restarted.take_changed().is_none());
        assert!(restarted.start_height(3).is_err());
    }

    #[test]
    fn restart_from_persisted_state_refuses_conflicts() {
        let mut r = rules();
        r.start_height(9).unwrap();
        let a = Hash::digest(b"a");
        r.sign_prepare(9, 0, a).unwrap();
        let persisted = r.take_changed().unwrap();
        let bytes = borsh::to_vec(&persisted).unwrap();
        let mut restarted = SafetyRules::new(
            SigningDomain::new("safety").unwrap(),
            SigningKey::from_seed([3; 32]),
            borsh::from_slice(&bytes).unwrap(),
        );
        restarted.start_height(9).unwrap();
        assert_eq!(
            restarted.sign_prepare(9, 0, Hash::digest(b"other")),
            Err(SafetyViolation::Conflict)
        );
        assert!(restarted.sign_prepare(9, 0, a).is_ok());
    }
}
