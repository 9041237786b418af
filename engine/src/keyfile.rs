//! The repository key file, written with restic's scrypt cost (N = 2^15, r = 8, p = 1: 32 MiB)
//! instead of rustic_core's (N = 2^17: 128 MiB). Every process that opens a repository derives
//! this key first, so rustic's parameters put a 128 MiB floor under every backup's memory and
//! cost ~0.3 s per open (measured: docs/benchmarks.md, item 6). The passwords Cofre generates are
//! 256-bit random strings: their strength comes from their entropy, not from the KDF's cost.
//!
//! The format is restic's: JSON with the KDF parameters, a random salt, and the master key
//! (`{"mac":{"k","r"},"encrypt"}`) encrypted with AES-256-CTR + Poly1305-AES under the 64 bytes
//! scrypt derives (32 for AES, 16 + 16 for the MAC), laid out nonce ‖ ciphertext ‖ tag.

use aes256ctr_poly1305aes::Aes256CtrPoly1305Aes;
use aes256ctr_poly1305aes::aead::AeadInPlace as _;
use rand::RngCore as _;
use rustic_core::repofile::{KeyFile, MasterKey};
use sha2::{Digest as _, Sha256};

use crate::error::EngineError;

/// log2 of scrypt's N, r and p, as restic 0.14 writes them.
const LOG_N: u8 = 15;
const R: u32 = 8;
const P: u32 = 1;

/// A key file for `master` under `password`, serialised, and its id (SHA-256 of the bytes).
pub(crate) fn light_key_file(
    master: &MasterKey,
    password: &str,
    hostname: Option<String>,
) -> Result<(Vec<u8>, String), EngineError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| EngineError::Other(format!("{what}: {e}"));
    let params = scrypt::Params::new(LOG_N, R, P).map_err(|e| fail("scrypt parameters", &e))?;
    let mut salt = vec![0u8; 64];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let mut derived = aes256ctr_poly1305aes::Key::default();
    scrypt::scrypt(password.as_bytes(), &salt, &params, &mut derived).map_err(|e| fail("scrypt", &e))?;

    let plain = serde_json::to_vec(master).map_err(|e| fail("master key", &e))?;
    let mut nonce = aes256ctr_poly1305aes::aead::Nonce::<Aes256CtrPoly1305Aes>::default();
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let mut data = Vec::with_capacity(plain.len() + 32);
    data.extend_from_slice(&nonce);
    data.extend_from_slice(&plain);
    let tag = Aes256CtrPoly1305Aes::new(&derived)
        .encrypt_in_place_detached(&nonce, &[], &mut data[16..])
        .map_err(|e| fail("encrypting the master key", &e))?;
    data.extend_from_slice(&tag);

    let file = KeyFile {
        hostname,
        username: None,
        created: Some(rustic_core::jiff::Zoned::now()),
        kdf: "scrypt".to_string(),
        n: 1 << LOG_N,
        r: R,
        p: P,
        data,
        salt,
    };
    let bytes = serde_json::to_vec(&file).map_err(|e| fail("key file", &e))?;
    let id = hex::encode(Sha256::digest(&bytes));
    Ok((bytes, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_light_key_opens_with_its_password_only() {
        let master = MasterKey::new();
        let (bytes, id) = light_key_file(&master, "a password", Some("host".into())).unwrap();
        assert_eq!(id, hex::encode(Sha256::digest(&bytes)), "named by its hash, as restic names keys");
        let file: KeyFile = serde_json::from_slice(&bytes).unwrap();
        assert_eq!((file.n, file.r, file.p), (1 << 15, 8, 1));
        // rustic_core's own reader decrypts it (its MAC check passes); the engine's tests open
        // whole repositories with it through rustic and restic.
        assert!(file.key_from_password(&"a password").is_ok());
        assert!(file.key_from_password(&"wrong").is_err(), "a wrong password does not open it");
    }
}
