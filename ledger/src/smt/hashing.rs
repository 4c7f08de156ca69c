//! The hashes of the state tree's nodes, and key bits.

use stele_consensus::Hash;

/// Bit `depth` of `key`, most significant first: `false` is left, `true` is right.
pub fn key_bit(key: &Hash, depth: usize) -> bool {
    debug_assert!(depth < 256);
    (key.as_bytes()[depth / 8] >> (7 - depth % 8)) & 1 == 1
}

/// Hash of a leaf: `H(0x00 || key || value_hash)`. The one-byte prefixes keep leaves,
/// internal nodes and every tagged hash (whose first byte is a tag length of 5 or
/// more) apart.
pub fn leaf_hash(key: &Hash, value_hash: &Hash) -> Hash {
    sha256_65(0, key, value_hash)
}

/// Hash of an internal node: `H(0x01 || left || right)`, with [`Hash::ZERO`] for an
/// empty child.
pub fn internal_hash(left: &Hash, right: &Hash) -> Hash {
    sha256_65(1, left, right)
}

/// SHA-256 of the 65 bytes `prefix || a || b`, as two calls of the compression
/// function with the padding precomputed. Tree hashing is most of the state's CPU
/// time; this skips the general-purpose buffering of the `Digest` API (about half
/// the cost for a message this short). Tested against `Hash::digest`.
fn sha256_65(prefix: u8, a: &Hash, b: &Hash) -> Hash {
    /// The SHA-256 initial state (FIPS 180-4, 5.3.3).
    const INITIAL_STATE: [u32; 8] = [
        0x6a09_e667,
        0xbb67_ae85,
        0x3c6e_f372,
        0xa54f_f53a,
        0x510e_527f,
        0x9b05_688c,
        0x1f83_d9ab,
        0x5be0_cd19,
    ];
    /// Message length in bits, the last 8 bytes of the padded message.
    const BIT_LEN: u64 = 65 * 8;
    let mut blocks = [[0u8; 64]; 2];
    blocks[0][0] = prefix;
    blocks[0][1..33].copy_from_slice(a.as_bytes());
    blocks[0][33..].copy_from_slice(&b.as_bytes()[..31]);
    blocks[1][0] = b.as_bytes()[31];
    blocks[1][1] = 0x80;
    blocks[1][56..].copy_from_slice(&BIT_LEN.to_be_bytes());
    let mut state = INITIAL_STATE;
    sha2::block_api::compress256(&mut state, &blocks);
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    Hash::from_bytes(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_hashes_are_plain_sha256() {
        for i in 0..200u64 {
            let a = Hash::digest(&i.to_le_bytes());
            let b = Hash::digest(&(i + 1000).to_le_bytes());
            for prefix in [0u8, 1] {
                let mut buf = [0u8; 65];
                buf[0] = prefix;
                buf[1..33].copy_from_slice(a.as_bytes());
                buf[33..].copy_from_slice(b.as_bytes());
                let expected = Hash::digest(&buf);
                let got = if prefix == 0 {
                    leaf_hash(&a, &b)
                } else {
                    internal_hash(&a, &b)
                };
                assert_eq!(got, expected);
            }
        }
    }

    #[test]
    fn key_bits_are_most_significant_first() {
        let mut bytes = [0u8; 32];
        bytes[0] = 0b1010_0000;
        bytes[31] = 0b0000_0001;
        let key = Hash::from_bytes(bytes);
        assert!(key_bit(&key, 0));
        assert!(!key_bit(&key, 1));
        assert!(key_bit(&key, 2));
        assert!(!key_bit(&key, 254));
        assert!(key_bit(&key, 255));
    }
}
