//! `stele-genesis` as a user runs it: the real binary, real files.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};
use stele_genesis::{NodeConfig, read_key_file};

fn stele_genesis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stele-genesis"))
        .args(args)
        .output()
        .expect("run stele-genesis")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn make_testnet(dir: &Path) {
    let out = stele_genesis(&[
        "testnet",
        "--validators",
        "4",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn testnet_then_validate() {
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join("net");
    make_testnet(&net);
    let out = stele_genesis(&["validate", net.join("genesis.json").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let summary = text(&out);
    assert!(summary.starts_with("ok: "), "{summary}");
    assert!(
        summary.contains("4 validators (total power 40, quorum 27)"),
        "{summary}"
    );
    assert_eq!(summary.lines().count(), 1);

    // Every node home is complete, ports are distinct, keys are private.
    let mut ports = HashSet::new();
    for i in 0..4 {
        let home = net.join(format!("node{i}"));
        let config = NodeConfig::load(&home.join("config.toml")).unwrap();
        assert!(ports.insert(config.p2p.listen.port()));
        assert!(ports.insert(config.api.listen.port()));
        assert!(config.p2p.listen.ip().is_loopback());
        let key_file = home.join("validator_key.json");
        assert_eq!(
            std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        read_key_file(&key_file).unwrap();
        let copy = std::fs::read(home.join("genesis.json")).unwrap();
        assert_eq!(copy, std::fs::read(net.join("genesis.json")).unwrap());
    }
    for name in ["treasury", "alice", "bob", "carol"] {
        read_key_file(&net.join("accounts").join(format!("{name}.json"))).unwrap();
    }

    // A second testnet in the same place is refused.
    let out = stele_genesis(&[
        "testnet",
        "--validators",
        "4",
        "--out",
        net.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("already exists"), "{}", text(&out));
}

#[test]
fn keygen_writes_a_private_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.json");
    let out = stele_genesis(&["keygen", "--out", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(read_key_file(&path).unwrap().public_key().to_hex(), printed);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let out = stele_genesis(&["keygen", "--out", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("already exists"));
}

/// Each malformed genesis exits non-zero and names the field and the problem.
#[test]
fn malformed_genesis_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join("net");
    make_testnet(&net);
    let original: Value =
        serde_json::from_str(&std::fs::read_to_string(net.join("genesis.json")).unwrap()).unwrap();
    let first_key = original["validators"][0]["public_key"].clone();
    let first_account = original["accounts"][1]["account"].clone();

    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "no validators",
            Box::new(|g| g["validators"] = json!([])),
            "validators: no validators",
        ),
        (
            "duplicate validator",
            Box::new(move |g| g["validators"][1]["public_key"] = first_key.clone()),
            "validators[1].public_key: duplicate validator (same key as validators[0])",
        ),
        (
            "zero power",
            Box::new(|g| g["validators"][2]["power"] = json!(0)),
            "validators[2].power: zero power",
        ),
        (
            "bad key encoding",
            Box::new(|g| g["validators"][3]["public_key"] = json!("abc")),
            "validators[3].public_key: bad key encoding: expected 64 hex characters, got 3",
        ),
        (
            "key not on the curve",
            Box::new(|g| g["validators"][3]["public_key"] = json!(format!("02{}", "0".repeat(62)))),
            "validators[3].public_key: bad key encoding: not a valid ed25519 public key",
        ),
        (
            "empty chain id",
            Box::new(|g| g["chain_id"] = json!("")),
            "chain_id: empty chain id",
        ),
        (
            "unknown role",
            Box::new(|g| g["accounts"][0]["roles"] = json!(["admin", "minter"])),
            "accounts[0].roles[1]: unknown role \"minter\"",
        ),
        (
            "duplicate account",
            Box::new(move |g| g["accounts"][2]["account"] = first_account.clone()),
            "accounts[2].account: duplicate account (same as accounts[1])",
        ),
        (
            "balance overflow",
            Box::new(|g| g["accounts"][3]["balance"] = json!(u64::MAX)),
            "accounts[3].balance: balance overflow",
        ),
        (
            "bad address",
            Box::new(|g| g["validators"][0]["address"] = json!("localhost")),
            "validators[0].address:",
        ),
        (
            "bad parameter",
            Box::new(|g| g["params"]["max_block_txs"] = json!(0)),
            "params.max_block_txs: must be",
        ),
        (
            "unknown field",
            Box::new(|g| g["validators"][0]["weight"] = json!(3)),
            "unknown field `weight`",
        ),
    ];
    for (name, edit, expected) in cases {
        let mut genesis = original.clone();
        edit(&mut genesis);
        let path = dir.path().join(format!("{}.json", name.replace(' ', "-")));
        std::fs::write(&path, serde_json::to_string_pretty(&genesis).unwrap()).unwrap();
        let out = stele_genesis(&["validate", path.to_str().unwrap()]);
        assert!(!out.status.success(), "{name}: accepted");
        assert!(
            text(&out).contains(expected),
            "{name}: expected {expected:?} in:\n{}",
            text(&out)
        );
    }

    // Several problems are all reported.
    let mut genesis = original.clone();
    genesis["chain_id"] = json!("");
    genesis["validators"][2]["power"] = json!(0);
    let path = dir.path().join("several.json");
    std::fs::write(&path, genesis.to_string()).unwrap();
    let out = text(&stele_genesis(&["validate", path.to_str().unwrap()]));
    assert!(
        out.contains("chain_id: empty chain id") && out.contains("validators[2].power: zero power"),
        "{out}"
    );
}

#[test]
fn unreadable_inputs_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    let out = stele_genesis(&["validate", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("missing.json"), "{}", text(&out));

    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "{ \"chain_id\": ").unwrap();
    let out = stele_genesis(&["validate", garbage.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("line 1"), "{}", text(&out));

    let out = stele_genesis(&[
        "testnet",
        "--validators",
        "0",
        "--out",
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--validators"), "{}", text(&out));

    let out = stele_genesis(&["validate"]);
    assert!(!out.status.success());
    let out = stele_genesis(&["frobnicate"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("unrecognized subcommand"),
        "{}",
        text(&out)
    );
}
