//! The encrypted keystore: one JSON file per key in the keystore directory.
//!
//! A key's 32-byte secret seed is sealed with XChaCha20-Poly1305 under a key derived
//! from the password with Argon2id (64 MiB, 3 passes by default; the cost is stored in
//! the file). The name, public key and KDF settings are authenticated as associated
//! data, so altering any of them makes the file fail to open rather than mislead.
//!
//! Files and the directory are private to the owner (0600 and 0700) and refused when
//! group or others can read them. A new file is written under a temporary name, synced,
//! and linked into place, so a crash never leaves a half-written key and an existing key
//! is never overwritten. A wrong password writes nothing.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::Rng;
use serde::{Deserialize, Serialize};
use stele_consensus::{PublicKey, SigningKey};
use zeroize::Zeroizing;

/// Argon2id cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfCost {
    /// Memory, KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for KdfCost {
    fn default() -> Self {
        KdfCost {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    /// The password does not open the key.
    #[error("wrong password for key {name:?} (or its file was altered)")]
    WrongPassword {
        /// The key's name.
        name: String,
    },
    /// No key of that name.
    #[error("no key named {name:?} in {dir}")]
    NotFound {
        /// The name.
        name: String,
        /// The keystore directory.
        dir: PathBuf,
    },
    /// A key of that name exists.
    #[error("a key named {name:?} already exists in {dir}")]
    AlreadyExists {
        /// The name.
        name: String,
        /// The keystore directory.
        dir: PathBuf,
    },
    /// Not a usable name.
    #[error("bad key name {name:?}: use 1 to 64 characters from A-Z a-z 0-9 . _ -")]
    BadName {
        /// The name.
        name: String,
    },
    /// Group or others may read the file or directory.
    #[error(
        "{path} has mode {mode:o}: group and others must have no access (chmod 600, or 700 for the directory)"
    )]
    Permissions {
        /// The path.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// The file is not a keystore file.
    #[error("{path} is not a valid keystore file: {reason}")]
    Corrupt {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The KDF settings are unusable.
    #[error("key derivation settings: {0}")]
    Kdf(String),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    version: u32,
    name: String,
    public_key: String,
    kdf: KdfSection,
    cipher: CipherSection,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KdfSection {
    algorithm: String,
    #[serde(flatten)]
    cost: KdfCost,
    salt: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CipherSection {
    algorithm: String,
    nonce: String,
    ciphertext: String,
}

const VERSION: u32 = 1;
const KDF: &str = "argon2id";
const CIPHER: &str = "xchacha20poly1305";

/// A keystore directory.
pub struct Keystore {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeystoreError + '_ {
    move |source| KeystoreError::Io {
        path: path.to_owned(),
        source,
    }
}

fn check_name(name: &str) -> Result<(), KeystoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(KeystoreError::BadName { name: name.into() })
    }
}

fn check_private(path: &Path, allowed: u32) -> Result<(), KeystoreError> {
    let mode = std::fs::metadata(path)
        .map_err(io(path))?
        .permissions()
        .mode();
    if mode & 0o077 & !allowed != 0 {
        return Err(KeystoreError::Permissions {
            path: path.to_owned(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

fn derive(
    password: &[u8],
    salt: &[u8],
    cost: KdfCost,
) -> Result<Zeroizing<[u8; 32]>, KeystoreError> {
    let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, Some(32))
        .map_err(|e| KeystoreError::Kdf(e.to_string()))?;
    let mut key = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(password, salt, key.as_mut())
        .map_err(|e| KeystoreError::Kdf(e.to_string()))?;
    Ok(key)
}

/// The bytes bound to the ciphertext besides the seed.
fn associated_data(name: &str, public_key: &str, cost: &KdfCost, salt: &str) -> Vec<u8> {
    format!(
        "stele-keystore/v{VERSION}|{name}|{public_key}|{KDF}|{}|{}|{}|{salt}",
        cost.memory_kib, cost.iterations, cost.parallelism
    )
    .into_bytes()
}

impl Keystore {
    /// Opens (creating, mode 0700) the keystore in `dir`.
    pub fn open(dir: &Path) -> Result<Keystore, KeystoreError> {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(dir))?;
        }
        check_private(dir, 0)?;
        Ok(Keystore {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Seals `key` under `password` as `name`.
    pub fn add(
        &self,
        name: &str,
        key: &SigningKey,
        password: &[u8],
        cost: KdfCost,
    ) -> Result<PublicKey, KeystoreError> {
        check_name(name)?;
        let path = self.path(name);
        if path.exists() {
            return Err(KeystoreError::AlreadyExists {
                name: name.into(),
                dir: self.dir.clone(),
            });
        }
        let mut rng = rand::rng();
        let mut salt = [0u8; 16];
        rng.fill_bytes(&mut salt);
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        let public_key = key.public_key().to_hex();
        let salt_hex = hex::encode(salt);
        let sealing_key = derive(password, &salt, cost)?;
        let cipher = XChaCha20Poly1305::new(sealing_key.as_ref().into());
        let seed = key.seed();
        let ciphertext = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: seed.as_ref(),
                    aad: &associated_data(name, &public_key, &cost, &salt_hex),
                },
            )
            .map_err(|_| KeystoreError::Kdf("encryption failed".into()))?;
        let file = KeyFile {
            version: VERSION,
            name: name.into(),
            public_key,
            kdf: KdfSection {
                algorithm: KDF.into(),
                cost,
                salt: salt_hex,
            },
            cipher: CipherSection {
                algorithm: CIPHER.into(),
                nonce: hex::encode(nonce),
                ciphertext: hex::encode(ciphertext),
            },
        };
        let mut text = serde_json::to_string_pretty(&file).expect("key file serialises");
        text.push('\n');
        // Write aside, sync, then link into place: never a partial file under the real
        // name, and linking fails instead of replacing an existing key.
        let temporary = self.dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(io(&temporary))?;
        let written = out.write_all(text.as_bytes()).and_then(|()| out.sync_all());
        drop(out);
        let linked = written.and_then(|()| std::fs::hard_link(&temporary, &path));
        let _ = std::fs::remove_file(&temporary);
        match linked {
            Ok(()) => Ok(key.public_key()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(KeystoreError::AlreadyExists {
                    name: name.into(),
                    dir: self.dir.clone(),
                })
            }
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn read(&self, name: &str) -> Result<(PathBuf, KeyFile), KeystoreError> {
        check_name(name)?;
        let path = self.path(name);
        if !path.exists() {
            return Err(KeystoreError::NotFound {
                name: name.into(),
                dir: self.dir.clone(),
            });
        }
        check_private(&path, 0)?;
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let file: KeyFile = serde_json::from_str(&text).map_err(|e| KeystoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let corrupt = |reason: &str| KeystoreError::Corrupt {
            path: path.clone(),
            reason: reason.into(),
        };
        if file.version != VERSION {
            return Err(corrupt("unknown version"));
        }
        if file.kdf.algorithm != KDF || file.cipher.algorithm != CIPHER {
            return Err(corrupt("unknown algorithm"));
        }
        if file.name != name {
            return Err(corrupt("the name inside does not match the file name"));
        }
        PublicKey::from_hex(&file.public_key).map_err(|_| corrupt("bad public_key"))?;
        Ok((path, file))
    }

    /// The public key of `name` (no password needed).
    pub fn public_key(&self, name: &str) -> Result<PublicKey, KeystoreError> {
        let (path, file) = self.read(name)?;
        PublicKey::from_hex(&file.public_key).map_err(|_| KeystoreError::Corrupt {
            path,
            reason: "bad public_key".into(),
        })
    }

    /// Every key's name and public key, by name.
    pub fn list(&self) -> Result<Vec<(String, PublicKey)>, KeystoreError> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let entry = entry.map_err(io(&self.dir))?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if let Some(name) = file_name.strip_suffix(".json")
                && check_name(name).is_ok()
            {
                names.push(name.to_owned());
            }
        }
        names.sort();
        names
            .into_iter()
            .map(|name| {
                let key = self.public_key(&name)?;
                Ok((name, key))
            })
            .collect()
    }

    /// Opens `name` with `password`.
    pub fn unlock(&self, name: &str, password: &[u8]) -> Result<SigningKey, KeystoreError> {
        let (path, file) = self.read(name)?;
        let corrupt = |reason: &str| KeystoreError::Corrupt {
            path: path.clone(),
            reason: reason.into(),
        };
        let salt = hex::decode(&file.kdf.salt).map_err(|_| corrupt("bad salt"))?;
        let nonce = hex::decode(&file.cipher.nonce).map_err(|_| corrupt("bad nonce"))?;
        if nonce.len() != 24 {
            return Err(corrupt("nonce must be 24 bytes"));
        }
        let ciphertext =
            hex::decode(&file.cipher.ciphertext).map_err(|_| corrupt("bad ciphertext"))?;
        let sealing_key = derive(password, &salt, file.kdf.cost)?;
        let cipher = XChaCha20Poly1305::new(sealing_key.as_ref().into());
        let seed = Zeroizing::new(
            cipher
                .decrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: &ciphertext,
                        aad: &associated_data(
                            &file.name,
                            &file.public_key,
                            &file.kdf.cost,
                            &file.kdf.salt,
                        ),
                    },
                )
                .map_err(|_| KeystoreError::WrongPassword { name: name.into() })?,
        );
        let seed: [u8; 32] = seed
            .as_slice()
            .try_into()
            .map_err(|_| corrupt("sealed seed is not 32 bytes"))?;
        let key = SigningKey::from_seed(seed);
        if key.public_key().to_hex() != file.public_key {
            return Err(corrupt("public_key does not match the sealed secret"));
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: KdfCost = KdfCost {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn round_trip_wrong_password_and_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let store = Keystore::open(&dir.path().join("keys")).unwrap();
        let key = SigningKey::from_seed([5; 32]);
        store.add("alice", &key, b"correct horse", CHEAP).unwrap();
        let path = dir.path().join("keys/alice.json");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let opened = store.unlock("alice", b"correct horse").unwrap();
        assert_eq!(opened.public_key(), key.public_key());
        let before = std::fs::read(&path).unwrap();
        assert!(matches!(
            store.unlock("alice", b"wrong"),
            Err(KeystoreError::WrongPassword { .. })
        ));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "a failed unlock wrote"
        );
        assert!(matches!(
            store.add("alice", &key, b"x", CHEAP),
            Err(KeystoreError::AlreadyExists { .. })
        ));
        assert_eq!(
            store.list().unwrap(),
            vec![("alice".to_owned(), key.public_key())]
        );
        // Swapping in another public key breaks the authentication.
        let other = SigningKey::from_seed([6; 32]).public_key().to_hex();
        let text = String::from_utf8(before.clone()).unwrap();
        std::fs::write(&path, text.replace(&key.public_key().to_hex(), &other)).unwrap();
        assert!(store.unlock("alice", b"correct horse").is_err());
        // Readable by others: refused.
        std::fs::write(&path, &before).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            store.unlock("alice", b"correct horse"),
            Err(KeystoreError::Permissions { .. })
        ));
        assert!(matches!(
            store.add("../x", &key, b"x", CHEAP),
            Err(KeystoreError::BadName { .. })
        ));
    }
}
