//! History verification catches every kind of tampering, at the right height, with the
//! right typed error.
#![allow(clippy::unwrap_used)]

mod common;

use common::{TestChain, account_key, certify, key, validator_key};
use stele_consensus::{CertificateError, CommitSignature, Hash, SigningKey};
use stele_ledger::{
    Block, BlockError, HistoryError, Operation, TxRejection, TxSignatureError, verify_history,
};

type History = Vec<(Block, stele_consensus::CommitCertificate)>;

/// Six blocks with transfers, a failing transfer, a mint and a new account.
fn sample_chain(chain_id: &str) -> TestChain {
    let mut chain = TestChain::new(chain_id, 4, 5);
    let txs = vec![chain.transfer(0, 1, 100), chain.transfer(1, 2, 50)];
    chain.produce(txs);
    let txs = vec![
        chain.transfer(2, 3, 10),
        chain.transfer(3, 4, 1_000_000_000),
    ];
    chain.produce(txs);
    let newcomer = key("newcomer").public_key();
    let txs = vec![
        chain.sign(
            &account_key(0),
            Operation::Mint {
                to: account_key(1).public_key(),
                amount: 5_000,
            },
        ),
        chain.sign(
            &account_key(0),
            Operation::CreateAccount { account: newcomer },
        ),
    ];
    chain.produce(txs);
    let txs = vec![chain.transfer(1, 0, 7), chain.transfer(4, 2, 3)];
    chain.produce(txs);
    let txs = vec![chain.transfer(2, 1, 1)];
    chain.produce(txs);
    chain.produce(vec![]);
    chain
}

fn verify(
    chain: &TestChain,
    history: &History,
) -> Result<stele_ledger::HistorySummary, HistoryError> {
    verify_history(&chain.genesis, history.iter().map(|(b, c)| (b, c)))
}

fn all_validators() -> Vec<SigningKey> {
    (0..4).map(validator_key).collect()
}

/// Re-certifies block `index` after `edit`, as a colluding quorum would.
fn resign(chain: &TestChain, history: &mut History, index: usize, edit: impl FnOnce(&mut Block)) {
    edit(&mut history[index].0);
    let keys = all_validators();
    let signers: Vec<&SigningKey> = keys.iter().collect();
    let block = &history[index].0;
    history[index].1 = certify(&chain.context, block.header.height, block.hash(), &signers);
}

fn expect_error(
    result: Result<stele_ledger::HistorySummary, HistoryError>,
    height: u64,
) -> BlockError {
    match result {
        Ok(summary) => panic!("tampering not detected: {summary:?}"),
        Err(e) => {
            assert_eq!(e.height, height, "wrong height in {e}");
            e.error
        }
    }
}

#[test]
fn untampered_history_verifies() {
    let chain = sample_chain("history");
    let summary = verify(&chain, &chain.blocks).unwrap();
    assert_eq!(summary.height, 6);
    assert_eq!(summary.transactions, 9);
    assert_eq!(summary.block_hash, chain.tip.block_hash);
    assert_eq!(summary.state_root, chain.blocks[5].0.header.state_root);
}

#[test]
fn altered_transaction() {
    let chain = sample_chain("history");
    let mut history = chain.blocks.clone();
    if let Operation::Transfer { amount, .. } = &mut history[1].0.txs[0].tx.op {
        *amount += 1;
    }
    let error = expect_error(verify(&chain, &history), 2);
    assert!(
        matches!(error, BlockError::TransactionRootMismatch { .. }),
        "{error}"
    );

    // Even with the transaction root fixed and re-certified, the signature gives it away.
    let mut history = chain.blocks.clone();
    resign(&chain, &mut history, 1, |b| {
        if let Operation::Transfer { amount, .. } = &mut b.txs[0].tx.op {
            *amount += 1;
        }
        b.header.tx_root = stele_ledger::merkle_root(&b.tx_hashes());
    });
    let error = expect_error(verify(&chain, &history), 2);
    assert!(
        matches!(
            error,
            BlockError::BadTransactionSignature {
                index: 0,
                error: TxSignatureError::BadSignature
            }
        ),
        "{error}"
    );
}

#[test]
fn altered_state_root() {
    let chain = sample_chain("history");
    // Changing the header changes the block hash: the certificate no longer covers it.
    let mut history = chain.blocks.clone();
    history[2].0.header.state_root = Hash::digest(b"forged");
    let error = expect_error(verify(&chain, &history), 3);
    assert!(
        matches!(
            error,
            BlockError::Certificate(CertificateError::WrongBlock { .. })
        ),
        "{error}"
    );
    // A quorum that signs a wrong state root is caught by re-execution.
    let mut history = chain.blocks.clone();
    resign(&chain, &mut history, 2, |b| {
        b.header.state_root = Hash::digest(b"forged")
    });
    let error = expect_error(verify(&chain, &history), 3);
    assert!(
        matches!(error, BlockError::StateRootMismatch { .. }),
        "{error}"
    );
}

#[test]
fn altered_receipt() {
    let chain = sample_chain("history");
    // Block 2 holds a failed transfer; claim it succeeded.
    let mut receipts = chain.outcomes[1].receipts.clone();
    receipts[1].outcome = stele_ledger::TxOutcome::Success;
    let hashes: Vec<Hash> = receipts.iter().map(|r| r.hash()).collect();
    let forged_root = stele_ledger::merkle_root(&hashes);

    let mut history = chain.blocks.clone();
    history[1].0.header.receipts_root = forged_root;
    let error = expect_error(verify(&chain, &history), 2);
    assert!(
        matches!(
            error,
            BlockError::Certificate(CertificateError::WrongBlock { .. })
        ),
        "{error}"
    );
    let mut history = chain.blocks.clone();
    resign(&chain, &mut history, 1, |b| {
        b.header.receipts_root = forged_root
    });
    let error = expect_error(verify(&chain, &history), 2);
    assert!(
        matches!(error, BlockError::ReceiptsRootMismatch { .. }),
        "{error}"
    );
}

#[test]
fn missing_block() {
    let chain = sample_chain("history");
    let mut history = chain.blocks.clone();
    history.remove(2);
    let error = expect_error(verify(&chain, &history), 3);
    assert!(
        matches!(
            error,
            BlockError::UnexpectedHeight {
                expected: 3,
                got: 4
            }
        ),
        "{error}"
    );
}

#[test]
fn swapped_blocks() {
    let chain = sample_chain("history");
    let mut history = chain.blocks.clone();
    history.swap(3, 4);
    let error = expect_error(verify(&chain, &history), 4);
    assert!(
        matches!(
            error,
            BlockError::UnexpectedHeight {
                expected: 4,
                got: 5
            }
        ),
        "{error}"
    );
}

#[test]
fn wrong_chain_id() {
    // Another chain with the same validators, accounts and transactions.
    let chain = sample_chain("history");
    let other = sample_chain("history-fork");
    let error = expect_error(verify(&chain, &other.blocks), 1);
    assert!(matches!(error, BlockError::WrongChainId { .. }), "{error}");

    // A block of this chain relabelled and re-certified.
    let mut history = chain.blocks.clone();
    resign(&chain, &mut history, 0, |b| {
        b.header.chain_id = "history-fork".into()
    });
    let error = expect_error(verify(&chain, &history), 1);
    assert!(matches!(error, BlockError::WrongChainId { .. }), "{error}");
}

#[test]
fn certificate_below_quorum() {
    let chain = sample_chain("history");
    let mut history = chain.blocks.clone();
    history[3].1.signatures.truncate(2);
    let error = expect_error(verify(&chain, &history), 4);
    assert!(
        matches!(
            error,
            BlockError::Certificate(CertificateError::InsufficientPower {
                got: 20,
                needed: 27
            })
        ),
        "{error}"
    );
}

#[test]
fn certificate_with_non_member_signer() {
    let chain = sample_chain("history");
    let mut history = chain.blocks.clone();
    let outsider = key("outsider");
    let vote = history[3].1.vote();
    let signed = vote.sign(&chain.context.domain, &outsider);
    history[3].1.signatures[0] = CommitSignature {
        validator: signed.validator,
        signature: signed.signature,
    };
    let error = expect_error(verify(&chain, &history), 4);
    assert!(
        matches!(
            error,
            BlockError::Certificate(CertificateError::UnknownSigner { validator }) if validator == outsider.public_key()
        ),
        "{error}"
    );
}

#[test]
fn certificate_listing_one_signer_twice() {
    let chain = sample_chain("history");
    let mut history = chain.blocks.clone();
    // Two real signers, one of them twice: 30 power if counted naively, a quorum.
    let first = history[3].1.signatures[0];
    history[3].1.signatures.truncate(2);
    history[3].1.signatures.push(first);
    let error = expect_error(verify(&chain, &history), 4);
    assert!(
        matches!(
            error,
            BlockError::Certificate(CertificateError::DuplicateSigner { validator }) if validator == first.validator
        ),
        "{error}"
    );
}

#[test]
fn certificate_for_another_block() {
    let chain = sample_chain("history");
    // Validly signed, right height, different block.
    let mut history = chain.blocks.clone();
    let keys = all_validators();
    let signers: Vec<&SigningKey> = keys.iter().collect();
    history[4].1 = certify(&chain.context, 5, Hash::digest(b"another block"), &signers);
    let error = expect_error(verify(&chain, &history), 5);
    assert!(
        matches!(
            error,
            BlockError::Certificate(CertificateError::WrongBlock { .. })
        ),
        "{error}"
    );
    // The previous block's certificate reused.
    let mut history = chain.blocks.clone();
    history[4].1 = history[3].1.clone();
    let error = expect_error(verify(&chain, &history), 5);
    assert!(
        matches!(
            error,
            BlockError::Certificate(CertificateError::WrongHeight {
                expected: 5,
                got: 4
            })
        ),
        "{error}"
    );
}

#[test]
fn forged_certificate_signature() {
    let chain = sample_chain("history");
    let mut history = chain.blocks.clone();
    let mut bytes = *history[2].1.signatures[1].signature.as_bytes();
    bytes[10] ^= 0x40;
    history[2].1.signatures[1].signature = stele_consensus::Signature::from_bytes(bytes);
    let error = expect_error(verify(&chain, &history), 3);
    assert!(
        matches!(
            error,
            BlockError::Certificate(CertificateError::BadSignature { .. })
        ),
        "{error}"
    );
}

#[test]
fn tampered_last_commit() {
    let chain = sample_chain("history");
    // Dropping the parent's certificate from a block changes nothing the block's own
    // certificate covers, but the header commits to it.
    let mut history = chain.blocks.clone();
    history[3].0.last_commit = None;
    let error = expect_error(verify(&chain, &history), 4);
    assert!(matches!(error, BlockError::LastCommitMissing), "{error}");

    let mut history = chain.blocks.clone();
    if let Some(cert) = &mut history[3].0.last_commit {
        cert.signatures.truncate(3);
    }
    let error = expect_error(verify(&chain, &history), 4);
    assert!(
        matches!(error, BlockError::LastCommitHashMismatch { .. }),
        "{error}"
    );

    // Re-certified with a below-quorum parent certificate.
    let mut history = chain.blocks.clone();
    resign(&chain, &mut history, 3, |b| {
        let cert = b.last_commit.as_mut().unwrap();
        cert.signatures.truncate(2);
        b.header.last_commit_hash = cert.hash();
    });
    let error = expect_error(verify(&chain, &history), 4);
    assert!(
        matches!(
            error,
            BlockError::LastCommit(CertificateError::InsufficientPower { .. })
        ),
        "{error}"
    );
}

#[test]
fn replayed_transaction_in_a_later_block() {
    let chain = sample_chain("history");
    let mut history = chain.blocks.clone();
    let replay = history[0].0.txs[0].clone();
    resign(&chain, &mut history, 5, |b| {
        b.txs.push(replay);
        b.header.tx_root = stele_ledger::merkle_root(&b.tx_hashes());
    });
    let error = expect_error(verify(&chain, &history), 6);
    assert!(
        matches!(
            error,
            BlockError::InvalidTransaction {
                index: 0,
                rejection: TxRejection::BadNonce {
                    expected: 3,
                    got: 0
                }
            }
        ),
        "{error}"
    );
}

#[test]
fn broken_parent_link() {
    let chain = sample_chain("history");
    let mut history = chain.blocks.clone();
    resign(&chain, &mut history, 2, |b| {
        b.header.parent_hash = Hash::digest(b"elsewhere")
    });
    let error = expect_error(verify(&chain, &history), 3);
    assert!(matches!(error, BlockError::WrongParent { .. }), "{error}");
}
