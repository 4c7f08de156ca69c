//! ed25519 keys and signatures with domain separation and strict verification.
//!
//! # Signed bytes
//!
//! Nothing is ever signed raw. The signed byte string is
//!
//! ```text
//! "stele/sig/v1" || u8(len(chain_id)) || chain_id || u8(kind) || payload
//! ```
//!
//! so a signature made for one chain, or for one kind of message (a transaction, a
//! prepare vote, a commit vote, ...), never verifies as another. [`SigningDomain`]
//! precomputes the prefix for a chain.
//!
//! # Verification rule
//!
//! A signature is valid when ed25519-dalek's `verify_strict` accepts it: canonical `s`,
//! canonical `R`, neither the key nor `R` of small order, and the cofactorless equation
//! `[s]B = R + [k]A`. [`verify_batch`] checks the same preconditions itself before the
//! batched equation, and falls back to one-by-one strict checks to find the bad entries
//! when a batch fails.
//!
//! One gap remains and is inherent to cofactorless batching: a signature built by hand
//! with a mixed-order `R` or key (a torsion component added to an honest point) fails
//! `verify_strict` but passes the batch equation with probability at most 1/8. Honest
//! keys and signers never produce such values; hosts that need bit-exact agreement with
//! single verification for adversarial input can call [`verify_each_strict`].

use std::fmt;

use borsh::{BorshDeserialize, BorshSerialize};
use ed25519_dalek::{Signer, VerifyingKey};
use zeroize::Zeroizing;

use crate::error::{CryptoError, DecodeError};
use crate::hash::{decode_hex_array, hex_serde};

/// Length of an encoded public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an encoded signature.
pub const SIGNATURE_LEN: usize = 64;
/// Longest chain id accepted anywhere (it is length-prefixed with one byte).
pub const CHAIN_ID_LEN_MAX: usize = 64;

const SIGNING_PREFIX: &[u8] = b"stele/sig/v1";

/// What a signature is for. The tag is part of every signed byte string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageKind {
    /// A user transaction.
    Transaction = 1,
    /// A leader's block proposal for `(height, view)`.
    PrePrepare = 2,
    /// A prepare vote.
    Prepare = 3,
    /// A commit vote; a quorum of these forms a [`crate::CommitCertificate`].
    Commit = 4,
    /// A request to move to a higher view.
    ViewChange = 5,
    /// A new leader's justified entry into a view.
    NewView = 6,
}

/// The signed-bytes prefix of one chain. Cheap to clone; build it once per chain.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningDomain {
    chain_id: String,
    prefix: Vec<u8>,
}

impl SigningDomain {
    /// Builds the domain of `chain_id`, which must be 1 to [`CHAIN_ID_LEN_MAX`] bytes.
    pub fn new(chain_id: &str) -> Result<Self, CryptoError> {
        if chain_id.is_empty() || chain_id.len() > CHAIN_ID_LEN_MAX {
            return Err(CryptoError::ChainIdLength {
                len: chain_id.len(),
                max: CHAIN_ID_LEN_MAX,
            });
        }
        let mut prefix = Vec::with_capacity(SIGNING_PREFIX.len() + 1 + chain_id.len());
        prefix.extend_from_slice(SIGNING_PREFIX);
        // Bounded above by CHAIN_ID_LEN_MAX, so it fits in a byte.
        prefix.push(chain_id.len() as u8);
        prefix.extend_from_slice(chain_id.as_bytes());
        Ok(SigningDomain {
            chain_id: chain_id.to_owned(),
            prefix,
        })
    }

    /// The chain id this domain signs for.
    pub fn chain_id(&self) -> &str {
        &self.chain_id
    }

    /// The exact bytes signed for a message of `kind` with this `payload`.
    pub fn signing_bytes(&self, kind: MessageKind, payload: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.prefix.len() + 1 + payload.len());
        bytes.extend_from_slice(&self.prefix);
        bytes.push(kind as u8);
        bytes.extend_from_slice(payload);
        bytes
    }
}

impl fmt::Debug for SigningDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningDomain({:?})", self.chain_id)
    }
}

/// An ed25519 public key as its 32 encoded bytes; also the account identifier.
///
/// Decoding does not check that the bytes are a usable curve point: use
/// [`PublicKey::verification_key`] (or [`PublicKey::validate`]) where that matters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, BorshSerialize, BorshDeserialize)]
pub struct PublicKey([u8; PUBLIC_KEY_LEN]);

impl PublicKey {
    /// Wraps encoded key bytes without checking them.
    pub const fn from_bytes(bytes: [u8; PUBLIC_KEY_LEN]) -> Self {
        PublicKey(bytes)
    }

    /// The encoded key.
    pub const fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.0
    }

    /// Lower-case hex (64 characters).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters. Does not check the point; see [`PublicKey::validate`].
    pub fn from_hex(text: &str) -> Result<Self, DecodeError> {
        decode_hex_array(text).map(PublicKey)
    }

    /// Decompresses and checks the key: a canonical point encoding, not of small order.
    pub fn verification_key(&self) -> Result<VerificationKey, CryptoError> {
        // Non-canonical encodings of a valid point decompress, but would give one key two
        // spellings; small-order keys make forgeries trivial. Reject both.
        if !is_canonical_y(&self.0) {
            return Err(CryptoError::InvalidPublicKey);
        }
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| CryptoError::InvalidPublicKey)?;
        if key.is_weak() {
            return Err(CryptoError::InvalidPublicKey);
        }
        Ok(VerificationKey { key })
    }

    /// Whether the key is usable for verification (see [`PublicKey::verification_key`]).
    pub fn validate(&self) -> Result<(), CryptoError> {
        self.verification_key().map(|_| ())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

hex_serde!(PublicKey);

/// A checked, decompressed public key, ready to verify signatures. Decompression costs a
/// few microseconds, so hosts that verify many signatures by one key should keep this.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VerificationKey {
    key: VerifyingKey,
}

impl VerificationKey {
    /// The encoded public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.key.to_bytes())
    }

    /// Strictly verifies `signature` over `domain`'s signed bytes for `kind` and `payload`.
    pub fn verify(
        &self,
        domain: &SigningDomain,
        kind: MessageKind,
        payload: &[u8],
        signature: &Signature,
    ) -> Result<(), CryptoError> {
        self.verify_raw(&domain.signing_bytes(kind, payload), signature)
    }

    /// Strictly verifies over already-built signed bytes (see [`SigningDomain::signing_bytes`]).
    pub fn verify_raw(
        &self,
        signed_bytes: &[u8],
        signature: &Signature,
    ) -> Result<(), CryptoError> {
        let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
        self.key
            .verify_strict(signed_bytes, &signature)
            .map_err(|_| CryptoError::BadSignature)
    }
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerificationKey({:?})", self.public_key())
    }
}

/// An ed25519 signature (64 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct Signature([u8; SIGNATURE_LEN]);

impl Signature {
    /// Wraps encoded signature bytes without checking them.
    pub const fn from_bytes(bytes: [u8; SIGNATURE_LEN]) -> Self {
        Signature(bytes)
    }

    /// The encoded signature.
    pub const fn as_bytes(&self) -> &[u8; SIGNATURE_LEN] {
        &self.0
    }

    /// Lower-case hex (128 characters).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 128 hex characters.
    pub fn from_hex(text: &str) -> Result<Self, DecodeError> {
        decode_hex_array(text).map(Signature)
    }

    /// The `R` half must be a canonical encoding of a point that is not of small order;
    /// `verify_strict` demands the same, the batch equation does not. Both are checked
    /// on the bytes: decompressing R here as well would decompress every signature's R
    /// twice, since the batch equation decompresses it again (a square root each time:
    /// at saturation the check alone took 7% of the whole machine). An R that is not a
    /// point at all fails in the batch equation.
    fn r_is_acceptable(&self) -> bool {
        let mut r = [0u8; 32];
        r.copy_from_slice(&self.0[..32]);
        is_canonical_y(&r) && !SMALL_ORDER_ENCODINGS.contains(&r)
    }
}

/// Every encoding with a canonical y that decompresses to a point of small order: the
/// eight points of the torsion subgroup (the identity, one point of order 2, two of
/// order 4, four of order 8), and the identity and the order-2 point again with the x
/// sign bit set (x = 0, so the bit is ignored). Checked against the curve arithmetic in
/// the tests.
const SMALL_ORDER_ENCODINGS: [[u8; 32]; 10] = [
    hex32("0100000000000000000000000000000000000000000000000000000000000000"),
    hex32("0100000000000000000000000000000000000000000000000000000000000080"),
    hex32("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    hex32("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
    hex32("0000000000000000000000000000000000000000000000000000000000000000"),
    hex32("0000000000000000000000000000000000000000000000000000000000000080"),
    hex32("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    hex32("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"),
    hex32("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    hex32("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"),
];

/// 32 bytes from 64 lowercase hex digits, at compile time.
const fn hex32(text: &str) -> [u8; 32] {
    const fn digit(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("not a lowercase hex digit"),
        }
    }
    let text = text.as_bytes();
    assert!(text.len() == 64, "not 64 hex digits");
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = digit(text[2 * i]) << 4 | digit(text[2 * i + 1]);
        i += 1;
    }
    out
}

/// Whether a compressed Edwards point spells its y coordinate canonically: the low 255
/// bits, little-endian, below p = 2^255 - 19. Decompression reduces y modulo p, so
/// without this check a point has two spellings when y < 19. (The one other
/// non-canonical spelling, x = 0 with the sign bit set, only exists for the two
/// small-order points with x = 0, which are refused anyway.) A byte comparison, where
/// re-compressing the point would cost a field inversion.
fn is_canonical_y(bytes: &[u8; 32]) -> bool {
    // p, little-endian, is ed ff ff .. ff 7f: y >= p only if the top 254 bits are ones
    // and the lowest byte is at least 0xed.
    bytes[31] & 0x7f != 0x7f || bytes[1..31].iter().any(|&b| b != 0xff) || bytes[0] < 0xed
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}..)", &self.to_hex()[..16])
    }
}

hex_serde!(Signature);

/// An ed25519 signing key. The secret is wiped from memory when dropped, and never
/// printed by `Debug`.
#[derive(Clone)]
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
}

impl SigningKey {
    /// Derives the key from a 32-byte seed (the ed25519 secret key). The consensus crate
    /// draws no randomness itself: callers generate the seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        SigningKey {
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }

    /// The secret seed, in a buffer wiped on drop. Only for writing key files.
    pub fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.key.to_bytes())
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.key.verifying_key().to_bytes())
    }

    /// Signs `payload` as a message of `kind` in `domain`.
    pub fn sign(&self, domain: &SigningDomain, kind: MessageKind, payload: &[u8]) -> Signature {
        self.sign_raw(&domain.signing_bytes(kind, payload))
    }

    /// Signs already-built signed bytes (see [`SigningDomain::signing_bytes`]).
    pub fn sign_raw(&self, signed_bytes: &[u8]) -> Signature {
        Signature(self.key.sign(signed_bytes).to_bytes())
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(public: {:?})", self.public_key())
    }
}

/// One entry of a batch verification: a key, the signed bytes and the signature.
#[derive(Clone, Copy, Debug)]
pub struct BatchEntry<'a> {
    /// The checked key that supposedly signed.
    pub key: &'a VerificationKey,
    /// The full signed bytes (domain prefix included).
    pub signed_bytes: &'a [u8],
    /// The signature to check.
    pub signature: &'a Signature,
}

/// Verifies every entry at once. `Ok` means all are valid; on `Err`, call
/// [`verify_each`] to learn which failed.
pub fn verify_batch(entries: &[BatchEntry<'_>]) -> Result<(), CryptoError> {
    match entries.len() {
        0 => return Ok(()),
        1 => {
            let e = entries[0];
            return e.key.verify_raw(e.signed_bytes, e.signature);
        }
        _ => {}
    }
    if !entries.iter().all(|e| e.signature.r_is_acceptable()) {
        return Err(CryptoError::BadSignature);
    }
    let messages: Vec<&[u8]> = entries.iter().map(|e| e.signed_bytes).collect();
    let signatures: Vec<ed25519_dalek::Signature> = entries
        .iter()
        .map(|e| ed25519_dalek::Signature::from_bytes(&e.signature.0))
        .collect();
    let keys: Vec<VerifyingKey> = entries.iter().map(|e| e.key.key).collect();
    ed25519_dalek::verify_batch(&messages, &signatures, &keys)
        .map_err(|_| CryptoError::BadSignature)
}

/// Verifies every entry and reports each result, in order. Runs one batch first; only
/// when it fails does it bisect, so a batch with a few bad signatures costs a few extra
/// small batches rather than one strict check per entry.
pub fn verify_each(entries: &[BatchEntry<'_>]) -> Vec<bool> {
    let mut results = vec![false; entries.len()];
    verify_range(entries, 0, &mut results);
    results
}

fn verify_range(entries: &[BatchEntry<'_>], offset: usize, results: &mut [bool]) {
    // Below this size, bisecting costs more than checking one by one.
    const BISECT_LEN_MIN: usize = 8;
    if entries.is_empty() {
        return;
    }
    if entries.len() < BISECT_LEN_MIN {
        for (i, e) in entries.iter().enumerate() {
            results[offset + i] = e.key.verify_raw(e.signed_bytes, e.signature).is_ok();
        }
        return;
    }
    if verify_batch(entries).is_ok() {
        results[offset..offset + entries.len()].fill(true);
        return;
    }
    let mid = entries.len() / 2;
    verify_range(&entries[..mid], offset, results);
    verify_range(&entries[mid..], offset + mid, results);
}

/// Verifies every entry one by one with `verify_strict`; exact but about three times
/// slower than [`verify_each`].
pub fn verify_each_strict(entries: &[BatchEntry<'_>]) -> Vec<bool> {
    entries
        .iter()
        .map(|e| e.key.verify_raw(e.signed_bytes, e.signature).is_ok())
        .collect()
}

/// Measures batched verification on this machine, for benchmarks and for tools that
/// report their speed against it (the engine never calls it): `threads` threads each
/// verify batches of `batch_len` valid signatures over transaction-sized messages for
/// about `duration`. Returns signatures verified per second, all threads together.
pub fn batch_verification_rate(
    threads: usize,
    batch_len: usize,
    duration: std::time::Duration,
) -> f64 {
    let domain = SigningDomain::new("stele-baseline").expect("a valid chain id");
    let keys: Vec<SigningKey> = (0..batch_len)
        .map(|i| {
            let mut seed = [0x5a_u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            SigningKey::from_seed(seed)
        })
        .collect();
    // About the size of a signed transfer's signing bytes.
    let messages: Vec<Vec<u8>> = (0..batch_len)
        .map(|i| domain.signing_bytes(MessageKind::Transaction, &[i as u8; 120]))
        .collect();
    let signatures: Vec<Signature> = keys
        .iter()
        .zip(&messages)
        .map(|(k, m)| k.sign_raw(m))
        .collect();
    let verification: Vec<VerificationKey> = keys
        .iter()
        .map(|k| {
            k.public_key()
                .verification_key()
                .expect("a generated key is valid")
        })
        .collect();
    let entries: Vec<BatchEntry<'_>> = verification
        .iter()
        .zip(&messages)
        .zip(&signatures)
        .map(|((key, signed_bytes), signature)| BatchEntry {
            key,
            signed_bytes,
            signature,
        })
        .collect();
    let started = std::time::Instant::now();
    let total: u64 = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                scope.spawn(|| {
                    let mut verified = 0u64;
                    while started.elapsed() < duration {
                        verify_batch(&entries).expect("the measured signatures are valid");
                        verified += entries.len() as u64;
                    }
                    verified
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    total as f64 / started.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::edwards::CompressedEdwardsY;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_seed([n; 32])
    }

    /// Keys `key(first)`, `key(first + 1)`, .. (`count` of them) and their verification
    /// keys.
    fn keys_from(first: u8, count: u8) -> (Vec<SigningKey>, Vec<VerificationKey>) {
        let keys: Vec<SigningKey> = (0..count).map(|i| key(first + i)).collect();
        let vks = keys
            .iter()
            .map(|k| k.public_key().verification_key().unwrap())
            .collect();
        (keys, vks)
    }

    /// The byte blocklist is exactly the set of canonical-y encodings of small-order
    /// points: each entry decompresses to one, and the multiples of an order-8 point
    /// (the whole torsion subgroup, which is cyclic) all compress to entries.
    #[test]
    fn small_order_blocklist_is_complete_and_exact() {
        for encoding in &SMALL_ORDER_ENCODINGS {
            assert!(is_canonical_y(encoding));
            let point = CompressedEdwardsY(*encoding).decompress().unwrap();
            assert!(point.is_small_order(), "{encoding:02x?}");
        }
        let order_8 = CompressedEdwardsY(SMALL_ORDER_ENCODINGS[6])
            .decompress()
            .unwrap();
        let mut multiple = curve25519_dalek::EdwardsPoint::default();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..8 {
            let bytes = multiple.compress().to_bytes();
            assert!(SMALL_ORDER_ENCODINGS.contains(&bytes), "{bytes:02x?}");
            seen.insert(bytes);
            multiple += order_8;
        }
        assert_eq!(
            seen.len(),
            8,
            "an order-8 point makes eight distinct points"
        );
        assert_eq!(multiple, curve25519_dalek::EdwardsPoint::default());
        // The other two entries are the x = 0 points with the sign bit set.
        for encoding in &SMALL_ORDER_ENCODINGS {
            if !seen.contains(encoding) {
                let mut cleared = *encoding;
                cleared[31] &= 0x7f;
                assert!(seen.contains(&cleared));
                let point = CompressedEdwardsY(*encoding).decompress().unwrap();
                assert_eq!(point.compress().to_bytes(), cleared);
            }
        }
        // A signature with a small-order R is refused, whatever the rest.
        for encoding in &SMALL_ORDER_ENCODINGS {
            let mut signature = [7u8; 64];
            signature[..32].copy_from_slice(encoding);
            assert!(!Signature(signature).r_is_acceptable());
        }
        // And one with the R of a real signature is not.
        let real = key(9).sign_raw(b"message");
        assert!(real.r_is_acceptable());
    }

    /// A batch holding a signature whose R is not a point fails, and bisection names it.
    #[test]
    fn batch_refuses_an_r_that_is_not_a_point() {
        let domain = SigningDomain::new("batch").unwrap();
        let (keys, vks) = keys_from(100, 16);
        let message = domain.signing_bytes(MessageKind::Transaction, b"x");
        let mut sigs: Vec<Signature> = keys.iter().map(|k| k.sign_raw(&message)).collect();
        // y = 2 is not on the curve (see weak_and_malformed_keys_are_rejected).
        let mut off_curve = [0u8; 32];
        off_curve[0] = 2;
        assert!(CompressedEdwardsY(off_curve).decompress().is_none());
        sigs[5].0[..32].copy_from_slice(&off_curve);
        assert!(
            sigs[5].r_is_acceptable(),
            "only the batch equation can tell"
        );
        let entries: Vec<BatchEntry<'_>> = vks
            .iter()
            .zip(&sigs)
            .map(|(key, signature)| BatchEntry {
                key,
                signed_bytes: &message,
                signature,
            })
            .collect();
        assert!(verify_batch(&entries).is_err());
        let results = verify_each(&entries);
        assert_eq!(results.iter().filter(|ok| !**ok).count(), 1, "{results:?}");
        assert!(!results[5]);
    }

    /// y + p for a small y spells the same point as y: refused as a key and as R.
    #[test]
    fn non_canonical_points_are_refused() {
        let mut tested = 0;
        for y in 2u8..19 {
            let mut canonical = [0u8; 32];
            canonical[0] = y;
            let Some(point) = CompressedEdwardsY(canonical).decompress() else {
                continue;
            };
            if point.is_small_order() {
                continue;
            }
            // y + p = y - 19 + 2^255: low byte y + 0xed, then ff .. ff, top byte 7f.
            let mut other = [0xffu8; 32];
            other[0] = y + 0xed;
            other[31] = 0x7f;
            assert!(CompressedEdwardsY(other).decompress().is_some());
            assert!(is_canonical_y(&canonical));
            assert!(!is_canonical_y(&other));
            assert!(PublicKey(canonical).verification_key().is_ok());
            assert!(PublicKey(other).verification_key().is_err());
            let mut signature = [0u8; 64];
            signature[..32].copy_from_slice(&canonical);
            assert!(Signature(signature).r_is_acceptable());
            signature[..32].copy_from_slice(&other);
            assert!(!Signature(signature).r_is_acceptable());
            tested += 1;
        }
        assert!(tested > 0, "no small y gave a usable point");
        // p itself, and 2^255 - 1: not canonical; p - 1: canonical.
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        assert!(!is_canonical_y(&p));
        p[0] = 0xec;
        assert!(is_canonical_y(&p));
        assert!(!is_canonical_y(&[0xff; 32]));
    }

    #[test]
    fn sign_and_verify_with_domain() {
        let domain = SigningDomain::new("test-chain").unwrap();
        let k = key(1);
        let sig = k.sign(&domain, MessageKind::Prepare, b"payload");
        let vk = k.public_key().verification_key().unwrap();
        vk.verify(&domain, MessageKind::Prepare, b"payload", &sig)
            .unwrap();
        // Another kind, another chain, or another payload must fail.
        assert!(
            vk.verify(&domain, MessageKind::Commit, b"payload", &sig)
                .is_err()
        );
        let other = SigningDomain::new("other-chain").unwrap();
        assert!(
            vk.verify(&other, MessageKind::Prepare, b"payload", &sig)
                .is_err()
        );
        assert!(
            vk.verify(&domain, MessageKind::Prepare, b"payloaD", &sig)
                .is_err()
        );
    }

    #[test]
    fn chain_id_length_is_bounded() {
        assert!(SigningDomain::new("").is_err());
        assert!(SigningDomain::new(&"x".repeat(CHAIN_ID_LEN_MAX)).is_ok());
        assert!(SigningDomain::new(&"x".repeat(CHAIN_ID_LEN_MAX + 1)).is_err());
    }

    #[test]
    fn weak_and_malformed_keys_are_rejected() {
        // The identity point (small order).
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(PublicKey::from_bytes(identity).validate().is_err());
        // y = 2 is not on the curve.
        let mut off_curve = [0u8; 32];
        off_curve[0] = 2;
        assert!(PublicKey::from_bytes(off_curve).validate().is_err());
        assert!(key(3).public_key().validate().is_ok());
    }

    #[test]
    fn batch_finds_exactly_the_bad_entries() {
        let domain = SigningDomain::new("batch").unwrap();
        let (keys, vks) = keys_from(1, 40);
        let messages: Vec<Vec<u8>> = (0..40u32)
            .map(|i| domain.signing_bytes(MessageKind::Transaction, &i.to_le_bytes()))
            .collect();
        let mut sigs: Vec<Signature> = keys
            .iter()
            .zip(&messages)
            .map(|(k, m)| k.sign_raw(m))
            .collect();
        let make_batch = |sigs: &[Signature]| -> Vec<(usize, Signature)> {
            sigs.iter().copied().enumerate().collect()
        };
        let good = make_batch(&sigs);
        let batch: Vec<BatchEntry<'_>> = good
            .iter()
            .map(|(i, s)| BatchEntry {
                key: &vks[*i],
                signed_bytes: &messages[*i],
                signature: s,
            })
            .collect();
        assert!(verify_batch(&batch).is_ok());
        assert!(verify_each(&batch).iter().all(|ok| *ok));

        // Corrupt entries 3 and 31 (one in s, one in R).
        sigs[3].0[40] ^= 1;
        sigs[31].0[0] ^= 1;
        let bad = make_batch(&sigs);
        let batch: Vec<BatchEntry<'_>> = bad
            .iter()
            .map(|(i, s)| BatchEntry {
                key: &vks[*i],
                signed_bytes: &messages[*i],
                signature: s,
            })
            .collect();
        assert!(verify_batch(&batch).is_err());
        let results = verify_each(&batch);
        let failed: Vec<usize> = (0..40).filter(|i| !results[*i]).collect();
        assert_eq!(failed, vec![3, 31]);
        assert_eq!(results, verify_each_strict(&batch));
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let k = key(9);
        let printed = format!("{k:?}");
        assert!(!printed.contains(&hex::encode(*k.seed())));
    }
}
