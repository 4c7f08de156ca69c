//! Key files: one ed25519 key per file, as JSON, readable only by its owner.
//!
//! ```json
//! { "public_key": "<64 hex>", "secret_key": "<64 hex>" }
//! ```
//!
//! Files are created with mode 0600 and never overwritten; reading one that group or
//! others can read is refused, as ssh does for private keys.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rand::Rng;
use serde::{Deserialize, Serialize};
use stele_consensus::{PublicKey, SigningKey};
use zeroize::Zeroizing;

use crate::error::GenesisError;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    public_key: String,
    secret_key: Zeroizing<String>,
}

/// A fresh key from the operating system's randomness (through a thread-local CSPRNG
/// seeded from it).
pub fn generate_key() -> SigningKey {
    let mut seed = Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(seed.as_mut());
    SigningKey::from_seed(*seed)
}

/// Writes `key` to a new file at `path` with mode 0600. Refuses to overwrite.
pub fn write_key_file(path: &Path, key: &SigningKey) -> Result<(), GenesisError> {
    let io = |source| GenesisError::Io {
        path: path.to_owned(),
        source,
    };
    let contents = KeyFile {
        public_key: key.public_key().to_hex(),
        secret_key: Zeroizing::new(hex::encode(*key.seed())),
    };
    let mut text =
        Zeroizing::new(serde_json::to_string_pretty(&contents).expect("key file serialises"));
    text.push('\n');
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                GenesisError::AlreadyExists {
                    path: path.to_owned(),
                }
            } else {
                io(source)
            }
        })?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(())
}

/// Reads a key file, refusing it if group or others may read it, or if its public key
/// does not match its secret.
pub fn read_key_file(path: &Path) -> Result<SigningKey, GenesisError> {
    let io = |source| GenesisError::Io {
        path: path.to_owned(),
        source,
    };
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(GenesisError::KeyFilePermissions {
            path: path.to_owned(),
            mode: mode & 0o777,
        });
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
    let format = |reason: String| GenesisError::KeyFileFormat {
        path: path.to_owned(),
        reason,
    };
    let file: KeyFile = serde_json::from_str(&text).map_err(|e| format(e.to_string()))?;
    let mut seed = Zeroizing::new([0u8; 32]);
    let secret = file.secret_key.trim();
    if secret.len() != 64 {
        return Err(format(format!(
            "secret_key: expected 64 hex characters, got {}",
            secret.len()
        )));
    }
    hex::decode_to_slice(secret, seed.as_mut())
        .map_err(|_| format("secret_key: invalid hex character".into()))?;
    let key = SigningKey::from_seed(*seed);
    let public =
        PublicKey::from_hex(&file.public_key).map_err(|e| format(format!("public_key: {e}")))?;
    if public != key.public_key() {
        return Err(format("public_key does not match secret_key".into()));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_owner_only_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        let key = generate_key();
        write_key_file(&path, &key).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_key_file(&path).unwrap().public_key(), key.public_key());
        assert!(matches!(
            write_key_file(&path, &key),
            Err(GenesisError::AlreadyExists { .. })
        ));
    }

    #[test]
    fn refuses_readable_and_broken_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        write_key_file(&path, &generate_key()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_key_file(&path).unwrap_err();
        assert!(matches!(
            err,
            GenesisError::KeyFilePermissions { mode: 0o644, .. }
        ));
        assert!(err.to_string().contains("chmod 600"));

        let broken = dir.path().join("broken.json");
        std::fs::write(&broken, "{\"public_key\": \"00\", \"secret_key\": \"11\"}").unwrap();
        std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            read_key_file(&broken),
            Err(GenesisError::KeyFileFormat { .. })
        ));

        let mismatched = dir.path().join("mismatch.json");
        let a = generate_key();
        let b = generate_key();
        let text = format!(
            "{{\"public_key\": \"{}\", \"secret_key\": \"{}\"}}",
            b.public_key().to_hex(),
            hex::encode(*a.seed())
        );
        std::fs::write(&mismatched, text).unwrap();
        std::fs::set_permissions(&mismatched, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = read_key_file(&mismatched).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }
}
