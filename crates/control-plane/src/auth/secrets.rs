//! Random secrets and their stored form. API keys, one-time tokens and refresh tokens are
//! ≥128-bit random strings, so a fast SHA-256 is the right hash (argon2 per request would only
//! burn CPU); only the hash is stored, and lookups go by hash.

use sha2::{Digest, Sha256};

/// `n` random bytes from the OS, hex-encoded.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    // The OS RNG failing is unrecoverable; every secret depends on it.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut buf).expect("the OS random number generator failed");
    hex::encode(buf)
}

/// SHA-256 hex of a secret, the form kept in the database.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The prefix every API key carries.
pub const API_KEY_PREFIX: &str = "wrn_";

/// A new API key: `wrn_` + 32 hex characters (16 random bytes), as upstream.
pub fn new_api_key() -> String {
    format!("{API_KEY_PREFIX}{}", random_hex(16))
}

/// What the dashboard shows of a key: its first 10 characters.
pub fn api_key_display_prefix(key: &str) -> String {
    key.chars().take(10).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_have_the_upstream_shape_and_differ() {
        let a = new_api_key();
        let b = new_api_key();
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 32);
        assert!(a.starts_with("wrn_"));
        assert!(a[4..].bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(api_key_display_prefix(&a), a[..10]);
        assert_eq!(hash_secret("abc").len(), 64);
        assert_ne!(hash_secret(&a), hash_secret(&b));
    }
}
