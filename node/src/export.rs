//! `stele-node export`: a node's blocks and certificates written as an audit pack.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use stele_ledger::{PackWriter, Store, StoreOptions};

use crate::node::Home;

/// What an export wrote.
#[derive(Debug)]
pub struct Exported {
    /// The pack.
    pub path: PathBuf,
    /// Blocks written (heights 1 to this).
    pub blocks: u64,
    /// Transactions in them.
    pub transactions: u64,
}

/// Writes every committed block of the (stopped) node in `home`, with its certificate,
/// to an audit pack at `out`.
pub fn export(home: &Path, out: &Path) -> anyhow::Result<Exported> {
    let home = Home::load(home)?;
    let data = home.dir.join(&home.config.storage.data_dir);
    if !data.exists() {
        bail!(
            "{} holds no store yet (the node has never run)",
            data.display()
        );
    }
    let options = StoreOptions {
        state_versions_kept: home.config.storage.state_versions_kept,
        ..StoreOptions::default()
    };
    let store = Store::open(&data, &home.genesis, options).map_err(|e| {
        let text = e.to_string();
        if text.contains("lock") {
            anyhow::anyhow!(
                "the store in {} is in use: stop the node before exporting ({text})",
                data.display()
            )
        } else {
            anyhow::anyhow!("opening the store in {}: {text}", data.display())
        }
    })?;
    let tip = store.tip();
    let mut writer = PackWriter::create(out, store.genesis_hash())?;
    let mut transactions = 0u64;
    for height in 1..=tip.height {
        let block = store
            .block(height)?
            .with_context(|| format!("the store has no block at height {height}"))?;
        let certificate = store
            .certificate(height)?
            .with_context(|| format!("the store has no certificate at height {height}"))?;
        transactions += block.txs.len() as u64;
        writer.append(&block, &certificate)?;
    }
    let path = writer.finish()?;
    Ok(Exported {
        path,
        blocks: tip.height,
        transactions,
    })
}
