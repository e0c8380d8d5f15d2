//! Password hashing: argon2id for every new hash; upstream's unsalted SHA-256 hex accepted for
//! verification only, so that imported users can log in once and be re-hashed.

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// argon2id memory cost in KiB (OWASP's first recommended configuration: 19 MiB, t=2, p=1).
pub const ARGON2_MEMORY_KIB: u32 = 19 * 1024;
/// argon2id passes.
pub const ARGON2_ITERATIONS: u32 = 2;
/// argon2id lanes.
pub const ARGON2_PARALLELISM: u32 = 1;

fn hasher() -> Argon2<'static> {
    // The parameters are constants within the crate's accepted ranges.
    let params = Params::new(
        ARGON2_MEMORY_KIB,
        ARGON2_ITERATIONS,
        ARGON2_PARALLELISM,
        None,
    )
    .unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password with argon2id and a random salt, as a PHC string.
pub fn hash(password: &str) -> String {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).expect("16 bytes is a valid salt length");
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashing with valid parameters cannot fail")
        .to_string()
}

/// Outcome of checking a password against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Matches an argon2 hash.
    Valid,
    /// Matches a legacy SHA-256 hash: accept, then store an argon2 hash instead.
    ValidLegacy,
    Invalid,
}

fn is_legacy(stored: &str) -> bool {
    stored.len() == 64 && stored.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks `password` against `stored` (argon2 PHC string or legacy SHA-256 hex).
pub fn verify(stored: &str, password: &str) -> Verification {
    if is_legacy(stored) {
        let digest = hex(&Sha256::digest(password.as_bytes()));
        return if digest
            .as_bytes()
            .ct_eq(stored.to_ascii_lowercase().as_bytes())
            .into()
        {
            Verification::ValidLegacy
        } else {
            Verification::Invalid
        };
    }
    match PasswordHash::new(stored) {
        Ok(parsed) if matches_argon2(&parsed, password) => Verification::Valid,
        _ => Verification::Invalid,
    }
}

/// Working memories kept for reuse between verifications.
const KEPT_MEMORIES: usize = 4;

/// argon2's working memory (19 MiB), kept between verifications: a fresh allocation of that
/// size is a fresh mapping from the kernel, and faulting its pages in cost more than the hash
/// itself on a blocking thread (measured: 27 ms instead of 15 ms per verification).
static MEMORIES: std::sync::Mutex<Vec<Vec<Block>>> = std::sync::Mutex::new(Vec::new());

/// Recomputes the argon2 hash `parsed` describes (its algorithm, version, parameters and salt)
/// for `password`, in a reused working memory, and compares in constant time.
fn matches_argon2(parsed: &PasswordHash<'_>, password: &str) -> bool {
    let (Some(expected), Some(salt)) = (parsed.hash, parsed.salt) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = parsed.version.map_or(Ok(Version::V0x13), Version::try_from);
    let (Ok(version), Ok(params)) = (version, Params::try_from(parsed)) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let blocks = params.block_count();
    let argon2 = Argon2::new(algorithm, version, params);
    let mut memory = MEMORIES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop()
        .filter(|m| m.len() == blocks)
        .unwrap_or_else(|| vec![Block::default(); blocks]);
    let mut out = vec![0u8; expected.len()];
    let computed =
        argon2.hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut memory[..]);
    {
        let mut kept = MEMORIES.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < KEPT_MEMORIES {
            kept.push(memory);
        }
    }
    computed.is_ok() && bool::from(out.as_slice().ct_eq(expected.as_bytes()))
}

/// A dummy verification costing as much as a real one, so that an unknown username takes as
/// long to refuse as a wrong password.
pub fn verify_nothing(password: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let stored = DUMMY.get_or_init(|| hash("not a password"));
    let _ = verify(stored, password);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Upstream's legacy hash of a password (for imports and tests).
pub fn legacy_sha256(password: &str) -> String {
    hex(&Sha256::digest(password.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::PasswordHasher;

    #[test]
    fn argon2id_hashes_are_salted_and_verify() {
        let a = hash("s3cret!");
        let b = hash("s3cret!");
        assert_ne!(a, b, "two hashes of one password differ by their salt");
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_eq!(verify(&a, "s3cret!"), Verification::Valid);
        assert_eq!(verify(&a, "s3cret"), Verification::Invalid);
    }

    #[test]
    fn hashes_of_other_parameters_and_variants_verify_and_altered_ones_do_not() {
        // Written by the argon2 crate's own hasher with other costs and variants (imports).
        let salt = SaltString::encode_b64(b"sixteen byte salt").unwrap();
        for (algorithm, memory) in [(Algorithm::Argon2id, 8 * 1024), (Algorithm::Argon2i, 4096)] {
            let params = Params::new(memory, 1, 1, None).unwrap();
            let stored = Argon2::new(algorithm, Version::V0x13, params)
                .hash_password(b"imported", &salt)
                .unwrap()
                .to_string();
            assert_eq!(verify(&stored, "imported"), Verification::Valid, "{stored}");
            assert_eq!(verify(&stored, "imported!"), Verification::Invalid);
            // A hash with one character of its output changed no longer matches.
            let at = stored.len() - 10;
            let swapped = if &stored[at..=at] == "A" { "B" } else { "A" };
            let altered = format!("{}{swapped}{}", &stored[..at], &stored[at + 1..]);
            assert_eq!(verify(&altered, "imported"), Verification::Invalid);
        }
        // Again after the memories above were kept: a reused memory gives the same answers.
        let ours = hash("again");
        assert_eq!(verify(&ours, "again"), Verification::Valid);
        assert_eq!(verify(&ours, "agai"), Verification::Invalid);
    }

    #[test]
    fn legacy_sha256_is_recognised_for_verification_only() {
        let legacy = legacy_sha256("password");
        assert_eq!(
            legacy,
            "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
        );
        assert_eq!(verify(&legacy, "password"), Verification::ValidLegacy);
        assert_eq!(
            verify(&legacy.to_uppercase(), "password"),
            Verification::ValidLegacy
        );
        assert_eq!(verify(&legacy, "Password"), Verification::Invalid);
        assert_eq!(verify("garbage", "password"), Verification::Invalid);
    }
}
