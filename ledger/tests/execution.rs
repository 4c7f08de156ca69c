//! Block execution: conservation of supply, roles, nonces, overflow, validator changes.
#![allow(clippy::unwrap_used)]

mod common;

use common::{ACCOUNT_BALANCE, TestChain, account_key, key, validator_key};
use proptest::prelude::*;
use stele_consensus::PublicKey;
use stele_ledger::{ApplyError, BlockExecutor, Operation, Role, TxFailure, TxOutcome, TxRejection};

/// Applies `txs` in one block of `chain` without panicking on rejections; returns the
/// outcome (receipt outcome or rejection) of each.
fn run(
    chain: &mut TestChain,
    txs: &[stele_ledger::SignedTransaction],
) -> Vec<Result<TxOutcome, TxRejection>> {
    let mut executor = BlockExecutor::new(&chain.state, &chain.context).unwrap();
    let results = txs
        .iter()
        .map(|tx| match executor.apply(tx) {
            Ok(receipt) => Ok(receipt.outcome.clone()),
            Err(ApplyError::Rejected(r)) => Err(r),
            Err(ApplyError::State(e)) => panic!("state error: {e}"),
        })
        .collect();
    let outcome = executor.finish().unwrap();
    chain.state.apply(&outcome.delta).unwrap();
    results
}

fn failed(failure: TxFailure) -> Result<TxOutcome, TxRejection> {
    Ok(TxOutcome::Failed { failure })
}

fn total_balances(chain: &TestChain, accounts: usize) -> u64 {
    (0..accounts).map(|i| chain.balance(i)).sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever transfers are attempted (too large, zero, to oneself, to unknown
    /// accounts), balances always add up to the supply and the supply never changes.
    #[test]
    fn transfers_conserve_supply(
        ops in prop::collection::vec((0usize..6, 0usize..7, 0u64..2_500_000), 1..120),
        block_size in 1usize..40,
    ) {
        const ACCOUNTS: usize = 6;
        let mut chain = TestChain::new("conservation", 4, ACCOUNTS);
        let supply = chain.supply();
        prop_assert_eq!(supply, ACCOUNT_BALANCE * ACCOUNTS as u64);
        for batch in ops.chunks(block_size) {
            // Index 6 is an account that does not exist.
            let txs: Vec<_> = batch.iter().map(|(from, to, amount)| chain.transfer(*from, *to, *amount)).collect();
            for result in run(&mut chain, &txs) {
                match result {
                    Ok(TxOutcome::Success) => {}
                    Ok(TxOutcome::Failed { failure }) => prop_assert!(matches!(
                        failure,
                        TxFailure::InsufficientFunds { .. } | TxFailure::ZeroAmount | TxFailure::AccountNotFound { .. }
                    ), "unexpected failure {failure:?}"),
                    Err(r) => prop_assert!(false, "unexpected rejection {r:?}"),
                }
            }
            prop_assert_eq!(total_balances(&chain, ACCOUNTS), supply);
            prop_assert_eq!(chain.supply(), supply);
        }
    }
}

#[test]
fn failed_transaction_consumes_its_nonce_only() {
    let mut chain = TestChain::new("nonce", 4, 3);
    let before = chain.account(&account_key(1).public_key()).unwrap();
    let txs = vec![chain.transfer(1, 2, ACCOUNT_BALANCE + 1)];
    let results = run(&mut chain, &txs);
    assert_eq!(
        results[0],
        failed(TxFailure::InsufficientFunds {
            balance: ACCOUNT_BALANCE,
            needed: ACCOUNT_BALANCE + 1
        })
    );
    let after = chain.account(&account_key(1).public_key()).unwrap();
    assert_eq!(after.nonce, before.nonce + 1);
    assert_eq!(after.balance, before.balance);
    assert_eq!(chain.balance(2), ACCOUNT_BALANCE);
}

#[test]
fn replayed_nonce_is_rejected() {
    let mut chain = TestChain::new("replay", 4, 3);
    let tx = chain.transfer(1, 2, 10);
    // The same transaction twice in one block: the second is not includable.
    let results = run(&mut chain, &[tx.clone(), tx.clone()]);
    assert_eq!(results[0], Ok(TxOutcome::Success));
    assert_eq!(
        results[1],
        Err(TxRejection::BadNonce {
            expected: 1,
            got: 0
        })
    );
    // And in a later block.
    let results = run(&mut chain, &[tx]);
    assert_eq!(
        results[0],
        Err(TxRejection::BadNonce {
            expected: 1,
            got: 0
        })
    );
    assert_eq!(chain.balance(2), ACCOUNT_BALANCE + 10);
    // A nonce from the future is rejected too.
    let mut future = chain.transfer(1, 2, 10);
    future.tx.nonce = 7;
    let results = run(&mut chain, &[future]);
    assert_eq!(
        results[0],
        Err(TxRejection::BadNonce {
            expected: 1,
            got: 7
        })
    );
}

#[test]
fn wrong_chain_and_unknown_signer_are_rejected() {
    let mut chain = TestChain::new("reject", 4, 3);
    let mut other = TestChain::new("other-chain", 4, 3);
    let foreign = other.transfer(1, 2, 10);
    let stranger = key("stranger");
    let orphan = chain.sign(
        &stranger,
        Operation::Transfer {
            to: account_key(1).public_key(),
            amount: 1,
        },
    );
    let results = run(&mut chain, &[foreign, orphan]);
    assert!(matches!(results[0], Err(TxRejection::WrongChain { .. })));
    assert_eq!(
        results[1],
        Err(TxRejection::UnknownSigner {
            signer: stranger.public_key()
        })
    );
}

#[test]
fn roles_gate_privileged_operations() {
    let mut chain = TestChain::new("roles", 4, 3);
    let admin = account_key(0);
    let user = account_key(1);
    let newcomer = key("newcomer").public_key();
    let txs = vec![
        chain.sign(
            &user,
            Operation::Mint {
                to: user.public_key(),
                amount: 5,
            },
        ),
        chain.sign(&user, Operation::Burn { amount: 5 }),
        chain.sign(&user, Operation::CreateAccount { account: newcomer }),
        chain.sign(
            &user,
            Operation::GrantRole {
                account: user.public_key(),
                role: Role::Issuer,
            },
        ),
        chain.sign(
            &user,
            Operation::AddValidator {
                key: validator_key(9).public_key(),
                power: 5,
            },
        ),
        chain.sign(
            &admin,
            Operation::GrantRole {
                account: user.public_key(),
                role: Role::Issuer,
            },
        ),
        chain.sign(
            &user,
            Operation::Mint {
                to: user.public_key(),
                amount: 5,
            },
        ),
        chain.sign(
            &admin,
            Operation::RevokeRole {
                account: user.public_key(),
                role: Role::Issuer,
            },
        ),
        chain.sign(
            &user,
            Operation::Mint {
                to: user.public_key(),
                amount: 5,
            },
        ),
        chain.sign(
            &admin,
            Operation::RevokeRole {
                account: user.public_key(),
                role: Role::Issuer,
            },
        ),
        chain.sign(&admin, Operation::CreateAccount { account: newcomer }),
        chain.sign(&admin, Operation::CreateAccount { account: newcomer }),
        chain.sign(
            &admin,
            Operation::CreateAccount {
                account: PublicKey::from_bytes([0; 32]),
            },
        ),
    ];
    let results = run(&mut chain, &txs);
    let expected = vec![
        failed(TxFailure::MissingRole { role: Role::Issuer }),
        failed(TxFailure::MissingRole { role: Role::Issuer }),
        failed(TxFailure::MissingRole {
            role: Role::Registrar,
        }),
        failed(TxFailure::MissingRole { role: Role::Admin }),
        failed(TxFailure::MissingRole { role: Role::Admin }),
        Ok(TxOutcome::Success),
        Ok(TxOutcome::Success),
        Ok(TxOutcome::Success),
        failed(TxFailure::MissingRole { role: Role::Issuer }),
        failed(TxFailure::RoleNotHeld {
            account: user.public_key(),
            role: Role::Issuer,
        }),
        Ok(TxOutcome::Success),
        failed(TxFailure::AccountExists { account: newcomer }),
        failed(TxFailure::InvalidAccountKey {
            account: PublicKey::from_bytes([0; 32]),
        }),
    ];
    assert_eq!(results, expected);
    assert_eq!(chain.balance(1), ACCOUNT_BALANCE + 5);
    assert_eq!(chain.supply(), 3 * ACCOUNT_BALANCE + 5);
    assert!(chain.account(&newcomer).is_some());
}

#[test]
fn overflow_is_rejected() {
    let mut chain = TestChain::new("overflow", 4, 3);
    let admin = account_key(0);
    let headroom = u64::MAX - chain.supply();
    let txs = vec![
        chain.sign(
            &admin,
            Operation::Mint {
                to: account_key(1).public_key(),
                amount: headroom + 1,
            },
        ),
        chain.sign(
            &admin,
            Operation::Mint {
                to: account_key(1).public_key(),
                amount: headroom,
            },
        ),
        chain.sign(
            &admin,
            Operation::Mint {
                to: account_key(2).public_key(),
                amount: 1,
            },
        ),
        chain.sign(
            &admin,
            Operation::Transfer {
                to: account_key(1).public_key(),
                amount: 1,
            },
        ),
    ];
    let results = run(&mut chain, &txs);
    assert_eq!(results[0], failed(TxFailure::SupplyOverflow));
    assert_eq!(results[1], Ok(TxOutcome::Success));
    assert_eq!(results[2], failed(TxFailure::SupplyOverflow));
    // Account 1 holds all but 2 * ACCOUNT_BALANCE of u64::MAX; it cannot receive more
    // than that without the supply having overflowed first.
    assert_eq!(results[3], Ok(TxOutcome::Success));
    assert_eq!(chain.supply(), u64::MAX);
    assert_eq!(chain.balance(1), u64::MAX - 2 * ACCOUNT_BALANCE + 1);
    let txs = vec![chain.sign(
        &admin,
        Operation::Burn {
            amount: ACCOUNT_BALANCE,
        },
    )];
    assert_eq!(
        run(&mut chain, &txs)[0],
        failed(TxFailure::InsufficientFunds {
            balance: ACCOUNT_BALANCE - 1,
            needed: ACCOUNT_BALANCE
        })
    );
}

#[test]
fn validator_changes_apply_at_their_height() {
    let mut chain = TestChain::new("validators", 4, 2);
    let admin = account_key(0);
    let delay = chain.genesis.params.validator_change_delay;
    let newcomer = validator_key(4).public_key();
    let initial = chain.next_validator_set();
    assert_eq!(initial.len(), 4);

    // Height 1 schedules an addition for height 1 + delay.
    let txs = vec![
        chain.sign(
            &admin,
            Operation::AddValidator {
                key: newcomer,
                power: 10,
            },
        ),
        chain.sign(
            &admin,
            Operation::AddValidator {
                key: newcomer,
                power: 10,
            },
        ),
        chain.sign(
            &admin,
            Operation::SetValidatorPower {
                key: validator_key(9).public_key(),
                power: 3,
            },
        ),
        chain.sign(
            &admin,
            Operation::SetValidatorPower {
                key: validator_key(1).public_key(),
                power: 0,
            },
        ),
    ];
    chain.produce(txs);
    let receipts = &chain.outcomes[0].receipts;
    assert_eq!(receipts[0].outcome, TxOutcome::Success);
    assert_eq!(receipts[0].effective_height, Some(1 + delay));
    assert_eq!(
        receipts[1].outcome,
        TxOutcome::Failed {
            failure: TxFailure::ValidatorExists { key: newcomer }
        }
    );
    assert!(matches!(
        receipts[2].outcome,
        TxOutcome::Failed {
            failure: TxFailure::ValidatorNotFound { .. }
        }
    ));
    assert!(matches!(
        receipts[3].outcome,
        TxOutcome::Failed {
            failure: TxFailure::InvalidValidatorSet { .. }
        }
    ));

    // Every height up to 1 + delay - 1 is still certified by the old set; the header
    // of height delay announces the new set as the next one.
    for height in 2..=delay {
        chain.produce(vec![]);
        let header = &chain.blocks[(height - 1) as usize].0.header;
        assert_eq!(header.validator_set_hash, initial.hash(), "height {height}");
    }
    let last_old = &chain.blocks[(delay - 1) as usize].0.header;
    let next = chain.next_validator_set();
    assert_eq!(next.len(), 5);
    assert!(next.contains(&newcomer));
    assert_eq!(last_old.next_validator_set_hash, next.hash());
    let (block, _) = chain.produce(vec![]);
    assert_eq!(block.header.height, 1 + delay);
    assert_eq!(block.header.validator_set_hash, next.hash());
    // The history, including the certificate signed by the new set, verifies.
    stele_ledger::verify_history(&chain.genesis, chain.blocks.iter().map(|(b, c)| (b, c))).unwrap();
}

#[test]
fn cannot_remove_the_last_validator() {
    let mut chain = TestChain::new("last-validator", 1, 1);
    let admin = account_key(0);
    let txs = vec![chain.sign(
        &admin,
        Operation::RemoveValidator {
            key: validator_key(0).public_key(),
        },
    )];
    chain.produce(txs);
    assert!(matches!(
        chain.outcomes[0].receipts[0].outcome,
        TxOutcome::Failed {
            failure: TxFailure::InvalidValidatorSet { .. }
        }
    ));
}
