//! The restic repository format, as far as the archiver writes and reads it: encrypted objects,
//! blobs in pack files, pack headers, index files and unpacked JSON files.
//!
//! Written from restic's design document (`doc/design.rst`, "Repository Format"):
//!
//! * every encrypted object is `IV (16) ‖ AES-256-CTR ciphertext ‖ Poly1305-AES MAC (16)`, under
//!   the master key's 32 encryption bytes and 16 + 16 MAC bytes (`k`, `r`);
//! * a pack is `blob₁ ‖ … ‖ blobₙ ‖ encrypted header ‖ header length (u32 LE)`; the header lists
//!   each blob as `type (1) ‖ length (u32 LE) ‖ [uncompressed length (u32 LE)] ‖ id (32)`, types
//!   0/1 data/tree stored as is, 2/3 data/tree compressed with zstd (repository version 2);
//! * a blob's id is the SHA-256 of its plaintext, a file's (pack, index, snapshot) the SHA-256 of
//!   its stored bytes;
//! * unpacked files in version 2 are `0x02 ‖ zstd(JSON)` before encryption, plain JSON in version 1.

use aes256ctr_poly1305aes::Aes256CtrPoly1305Aes;
use aes256ctr_poly1305aes::aead::{Aead as _, AeadInPlace as _, Nonce};
use rand::RngCore as _;
use rustic_core::repofile::MasterKey;
use serde::Serialize;
use sha2_rustic::{Digest as _, Sha256};

/// A blob or object id: the SHA-256 of its bytes.
pub(crate) type Hash = [u8; 32];

pub(crate) fn sha256(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}

/// The repository's master key, ready to encrypt and decrypt objects.
#[derive(Clone)]
pub(crate) struct Key(aes256ctr_poly1305aes::Key);

impl Key {
    pub(crate) fn from_master(master: &MasterKey) -> Result<Self, String> {
        if master.encrypt.len() != 32 || master.mac.k.len() != 16 || master.mac.r.len() != 16 {
            return Err("the repository's master key has unexpected lengths".to_owned());
        }
        let mut key = aes256ctr_poly1305aes::Key::default();
        key[..32].copy_from_slice(&master.encrypt);
        key[32..48].copy_from_slice(&master.mac.k);
        key[48..].copy_from_slice(&master.mac.r);
        Ok(Self(key))
    }

    /// Appends `IV ‖ ciphertext ‖ MAC` of `plain` to `out`; returns the number of bytes added.
    pub(crate) fn encrypt_into(&self, plain: &[u8], out: &mut Vec<u8>) -> Result<usize, String> {
        let start = out.len();
        let mut nonce = Nonce::<Aes256CtrPoly1305Aes>::default();
        // thread_rng is a CSPRNG (ChaCha, seeded and reseeded from the OS): one syscall per
        // blob for OsRng would cost more than the encryption of a small blob.
        rand::thread_rng().fill_bytes(&mut nonce);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = Aes256CtrPoly1305Aes::new(&self.0)
            .encrypt_in_place_detached(&nonce, &[], &mut out[start + 16..])
            .map_err(|e| format!("encryption failed: {e}"))?;
        out.extend_from_slice(&tag);
        Ok(out.len() - start)
    }

    /// Checks the MAC and decrypts `IV ‖ ciphertext ‖ MAC` into `out` (cleared first).
    pub(crate) fn decrypt_into(&self, data: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        if data.len() < 32 {
            return Err("encrypted object too short".to_owned());
        }
        let (nonce, rest) = data.split_at(16);
        let (cipher, tag) = rest.split_at(rest.len() - 16);
        out.clear();
        out.extend_from_slice(cipher);
        Aes256CtrPoly1305Aes::new(&self.0)
            .decrypt_in_place_detached(Nonce::<Aes256CtrPoly1305Aes>::from_slice(nonce), &[], out, tag.into())
            .map_err(|_| "MAC check failed: the object is damaged or was written with another key".to_owned())
    }

    /// Checks the MAC and decrypts `IV ‖ ciphertext ‖ MAC`.
    pub(crate) fn decrypt(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        if data.len() < 32 {
            return Err("encrypted object too short".to_owned());
        }
        let nonce = Nonce::<Aes256CtrPoly1305Aes>::from_slice(&data[..16]);
        Aes256CtrPoly1305Aes::new(&self.0)
            .decrypt(nonce, &data[16..])
            .map_err(|_| "MAC check failed: the object is damaged or was written with another key".to_owned())
    }
}

/// Blob types, as the index and pack headers name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlobKind {
    Data,
    Tree,
}

/// One blob of a pack: where it is and what it is.
#[derive(Debug, Clone)]
pub(crate) struct PackedBlob {
    pub(crate) kind: BlobKind,
    pub(crate) id: Hash,
    pub(crate) offset: u32,
    pub(crate) length: u32,
    /// Set when the blob is stored compressed.
    pub(crate) uncompressed_length: Option<u32>,
}

/// The plaintext pack header for `blobs`.
pub(crate) fn pack_header(blobs: &[PackedBlob]) -> Vec<u8> {
    let mut out = Vec::with_capacity(blobs.len() * 41);
    for blob in blobs {
        let code = match (blob.kind, blob.uncompressed_length.is_some()) {
            (BlobKind::Data, false) => 0u8,
            (BlobKind::Tree, false) => 1,
            (BlobKind::Data, true) => 2,
            (BlobKind::Tree, true) => 3,
        };
        out.push(code);
        out.extend_from_slice(&blob.length.to_le_bytes());
        if let Some(len) = blob.uncompressed_length {
            out.extend_from_slice(&len.to_le_bytes());
        }
        out.extend_from_slice(&blob.id);
    }
    out
}

/// An index file: which blobs each pack holds.
#[derive(Serialize)]
pub(crate) struct IndexJson {
    pub(crate) packs: Vec<IndexPackJson>,
}

#[derive(Serialize)]
pub(crate) struct IndexPackJson {
    #[serde(with = "hex::serde")]
    pub(crate) id: Hash,
    pub(crate) blobs: Vec<IndexBlobJson>,
}

#[derive(Serialize)]
pub(crate) struct IndexBlobJson {
    #[serde(with = "hex::serde")]
    id: Hash,
    #[serde(rename = "type")]
    kind: &'static str,
    offset: u32,
    length: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    uncompressed_length: Option<u32>,
}

impl IndexPackJson {
    pub(crate) fn new(id: Hash, blobs: &[PackedBlob]) -> Self {
        let blobs = blobs
            .iter()
            .map(|b| IndexBlobJson {
                id: b.id,
                kind: match b.kind {
                    BlobKind::Data => "data",
                    BlobKind::Tree => "tree",
                },
                offset: b.offset,
                length: b.length,
                uncompressed_length: b.uncompressed_length,
            })
            .collect();
        Self { id, blobs }
    }
}

/// The stored bytes of an unpacked file (index, snapshot) and its id.
pub(crate) fn unpacked_file(
    key: &Key,
    json: &[u8],
    compress: Option<i32>,
) -> Result<(Vec<u8>, Hash), String> {
    let plain = match compress {
        Some(level) => {
            let mut plain = vec![2u8];
            plain.extend(zstd::bulk::compress(json, level).map_err(|e| format!("compression failed: {e}"))?);
            plain
        }
        None => json.to_vec(),
    };
    let mut out = Vec::with_capacity(plain.len() + 32);
    key.encrypt_into(&plain, &mut out)?;
    // Verified before upload, like blobs (small files: always).
    let back = key.decrypt(&out)?;
    let json_back = match compress {
        Some(_) => {
            zstd::bulk::decompress(&back[1..], json.len()).map_err(|e| format!("verification: {e}"))?
        }
        None => back,
    };
    if json_back != json {
        return Err(
            "an index or snapshot file did not verify after encryption; nothing was stored".to_owned()
        );
    }
    let id = sha256(&out);
    Ok((out, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_round_trip_and_tampering_is_detected() {
        let key = Key::from_master(&MasterKey::new()).unwrap();
        let mut out = b"prefix".to_vec();
        let n = key.encrypt_into(b"hello", &mut out).unwrap();
        assert_eq!(n, 5 + 32);
        assert_eq!(key.decrypt(&out[6..]).unwrap(), b"hello");
        out[6 + 16] ^= 1;
        assert!(key.decrypt(&out[6..]).is_err());
        let other = Key::from_master(&MasterKey::new()).unwrap();
        let mut again = Vec::new();
        key.encrypt_into(b"hello", &mut again).unwrap();
        assert!(other.decrypt(&again).is_err(), "another key does not open it");
    }

    #[test]
    fn header_entries_have_restic_sizes() {
        let blob = |kind, u| PackedBlob { kind, id: [7; 32], offset: 0, length: 99, uncompressed_length: u };
        let header = pack_header(&[blob(BlobKind::Data, None), blob(BlobKind::Tree, Some(500))]);
        assert_eq!(header.len(), 37 + 41);
        assert_eq!(header[0], 0);
        assert_eq!(&header[1..5], &99u32.to_le_bytes());
        assert_eq!(header[37], 3);
        assert_eq!(&header[42..46], &500u32.to_le_bytes());
    }
}
