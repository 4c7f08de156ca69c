//! SHA-256 digests with domain-separation tags.
//!
//! Every hash Stele computes over structured data starts with a tag naming what is
//! hashed (`stele/header`, `stele/tx`, ...), so that two different kinds of object can
//! never share a digest even if their encodings happen to coincide.

use std::fmt;

use borsh::{BorshDeserialize, BorshSerialize};
use sha2::{Digest, Sha256};

use crate::error::DecodeError;

/// Length of a [`Hash`] in bytes.
pub const HASH_LEN: usize = 32;

/// A SHA-256 digest.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, BorshSerialize, BorshDeserialize,
)]
pub struct Hash([u8; HASH_LEN]);

impl Hash {
    /// The all-zero hash. Used as the hash of "nothing" (an empty subtree, the absent
    /// certificate of the first block), never as the digest of real data.
    pub const ZERO: Hash = Hash([0; HASH_LEN]);

    /// Wraps raw digest bytes.
    #[inline]
    pub const fn from_bytes(bytes: [u8; HASH_LEN]) -> Self {
        Hash(bytes)
    }

    /// The raw digest bytes.
    #[inline]
    pub const fn as_bytes(&self) -> &[u8; HASH_LEN] {
        &self.0
    }

    /// Plain SHA-256 of `data`, with no tag. Prefer [`Hash::tagged`] for structured data.
    pub fn digest(data: &[u8]) -> Self {
        Hash(Sha256::digest(data).into())
    }

    /// SHA-256 over `tag`, then each part in order.
    ///
    /// Parts are concatenated without length prefixes, so callers must only pass parts
    /// whose boundaries are fixed by the tag (fixed-width fields, or a single trailing
    /// variable-length field).
    pub fn tagged(tag: &[u8], parts: &[&[u8]]) -> Self {
        let mut hasher = Hasher::new(tag);
        for part in parts {
            hasher.update(part);
        }
        hasher.finish()
    }

    /// Lower-case hex encoding (64 characters).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(text: &str) -> Result<Self, DecodeError> {
        decode_hex_array(text).map(Hash)
    }

    /// Whether this is [`Hash::ZERO`].
    #[inline]
    pub fn is_zero(&self) -> bool {
        self.0 == [0; HASH_LEN]
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl AsRef<[u8]> for Hash {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Incremental tagged SHA-256, for hashing data that arrives in pieces.
#[derive(Clone)]
pub struct Hasher(Sha256);

impl Hasher {
    /// Starts a hash of the given domain tag. The tag is length-prefixed so that no
    /// tag is a prefix of another tag's input.
    pub fn new(tag: &[u8]) -> Self {
        let mut inner = Sha256::new();
        let tag_len = u8::try_from(tag.len()).expect("domain tags are short constants");
        inner.update([tag_len]);
        inner.update(tag);
        Hasher(inner)
    }

    /// Feeds more bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// Finishes the digest.
    pub fn finish(self) -> Hash {
        Hash(self.0.finalize().into())
    }
}

/// Lets an encoder write straight into the digest, with no buffer in between.
impl std::io::Write for Hasher {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.update(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Decodes exactly `N` bytes of hex, naming what was wrong on failure.
pub(crate) fn decode_hex_array<const N: usize>(text: &str) -> Result<[u8; N], DecodeError> {
    let text = text.trim();
    let text = text.strip_prefix("0x").unwrap_or(text);
    if text.len() != 2 * N {
        return Err(DecodeError::HexLength {
            expected: 2 * N,
            got: text.len(),
        });
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).map_err(|_| DecodeError::HexCharacter)?;
    Ok(out)
}

/// Implements serde as a hex string for a newtype over a byte array with
/// `to_hex`/`from_hex`.
macro_rules! hex_serde {
    ($ty:ty) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text =
                    <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(deserializer)?;
                <$ty>::from_hex(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use hex_serde;

hex_serde!(Hash);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_separate_domains() {
        let a = Hash::tagged(b"stele/a", &[b"x"]);
        let b = Hash::tagged(b"stele/b", &[b"x"]);
        assert_ne!(a, b);
        // The tag is length-prefixed: moving a byte between tag and data changes the hash.
        assert_ne!(Hash::tagged(b"ab", &[b"c"]), Hash::tagged(b"a", &[b"bc"]));
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let h = Hash::digest(b"stele");
        assert_eq!(Hash::from_hex(&h.to_hex()).unwrap(), h);
        assert!(matches!(
            Hash::from_hex("abcd"),
            Err(DecodeError::HexLength {
                expected: 64,
                got: 4
            })
        ));
        let bad = "zz".repeat(32);
        assert!(matches!(
            Hash::from_hex(&bad),
            Err(DecodeError::HexCharacter)
        ));
    }

    #[test]
    fn known_sha256_vector() {
        // FIPS 180-2 test vector for "abc".
        assert_eq!(
            Hash::digest(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
