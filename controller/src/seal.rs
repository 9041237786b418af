//! The master key and sealing of secrets at rest.
//!
//! Every secret stored in Postgres is sealed with XChaCha20-Poly1305 under the 32-byte master
//! key. The associated data binds the value to its place (`table/column/row`), so a sealed value
//! copied into another row or column does not open. Each sealed value starts with the id of the
//! key that sealed it, so a wrong master key is reported as such and rotation can be resumable.

use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use secrecy::zeroize::{Zeroize as _, Zeroizing};
use sha2::{Digest, Sha256};

const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 8;
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("master key: {0}")]
    Key(String),
    #[error(
        "this value was sealed under master key {found}, but the configured master key is {expected}: \
         the controller is using the wrong master key file"
    )]
    WrongKey { expected: String, found: String },
    #[error("sealed value is corrupt or was moved from another place ({0})")]
    Corrupt(&'static str),
}

/// The 32-byte master key. Never stored in Postgres; shared by all replicas.
#[derive(Clone)]
pub struct MasterKey {
    key: [u8; 32],
    id: [u8; KEY_ID_LEN],
}

/// Every copy of the key (each replica's state holds clones) is wiped when it is dropped.
impl Drop for MasterKey {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey(id={})", self.key_id())
    }
}

impl MasterKey {
    pub fn from_bytes(key: [u8; 32]) -> Self {
        let digest = Sha256::digest([b"cofre-master-key-id:".as_slice(), &key].concat());
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Self { key, id }
    }

    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Self::from_bytes(key)
    }

    /// Parses 64 hex characters (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, SealError> {
        let raw = Zeroizing::new(
            hex::decode(text.trim())
                .map_err(|_| SealError::Key("expected 64 hexadecimal characters".into()))?,
        );
        if raw.len() != 32 {
            return Err(SealError::Key("expected 64 hexadecimal characters (32 bytes)".into()));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&raw);
        Ok(Self::from_bytes(*key))
    }

    /// The key as its file holds it (wiped when dropped).
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.key))
    }

    /// Reads the key file, refusing files that other users can read.
    pub fn read_file(path: &Path) -> Result<Self, SealError> {
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(std::path::PathBuf::from);
        Self::read_file_with(path, credentials.as_deref())
    }

    /// [`MasterKey::read_file`], with systemd's credentials directory of this service (if any):
    /// a key file there (`LoadCredential=`) may be group-readable — newer systemd hands it over
    /// as 0440 with an access list, in a directory only this service can enter — but never
    /// readable by others. Anywhere else the file must be 0600 or 0400.
    pub fn read_file_with(path: &Path, credentials_dir: Option<&Path>) -> Result<Self, SealError> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)
            .map_err(|e| SealError::Key(format!("cannot read {}: {e}", path.display())))?;
        let in_credentials = credentials_dir.is_some_and(|dir| {
            match (dir.canonicalize(), path.parent().map(Path::canonicalize)) {
                (Ok(dir), Some(Ok(parent))) => dir == parent,
                _ => false,
            }
        });
        let forbidden = if in_credentials { 0o007 } else { 0o077 };
        if meta.permissions().mode() & forbidden != 0 {
            return Err(SealError::Key(format!(
                "{} is readable by other users (mode {:o}); run: chmod 600 {}",
                path.display(),
                meta.permissions().mode() & 0o777,
                path.display()
            )));
        }
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| SealError::Key(format!("cannot read {}: {e}", path.display())))?,
        );
        Self::from_hex(&text).map_err(|e| SealError::Key(format!("{}: {e}", path.display())))
    }

    /// Writes a new key file with mode 0600; refuses to overwrite an existing file.
    pub fn write_new_file(&self, path: &Path) -> Result<(), SealError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| SealError::Key(format!("cannot create {}: {e}", path.display())))?;
        let line = Zeroizing::new(format!("{}\n", self.to_hex().as_str()));
        f.write_all(line.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| SealError::Key(format!("cannot write {}: {e}", path.display())))
    }

    pub fn key_id(&self) -> String {
        hex::encode(self.id)
    }

    pub fn seal(&self, place: &Place<'_>, plaintext: &[u8]) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new((&self.key).into());
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = place.aad();
        let ct = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: &aad })
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        let mut out = Vec::with_capacity(1 + KEY_ID_LEN + NONCE_LEN + ct.len());
        out.push(VERSION);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// The plaintext, wiped when dropped.
    pub fn open(&self, place: &Place<'_>, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if sealed.len() < 1 + KEY_ID_LEN + NONCE_LEN + 16 || sealed[0] != VERSION {
            return Err(SealError::Corrupt("bad header"));
        }
        let id = &sealed[1..1 + KEY_ID_LEN];
        if id != self.id {
            return Err(SealError::WrongKey { expected: self.key_id(), found: hex::encode(id) });
        }
        let nonce = &sealed[1 + KEY_ID_LEN..1 + KEY_ID_LEN + NONCE_LEN];
        let ct = &sealed[1 + KEY_ID_LEN + NONCE_LEN..];
        let cipher = XChaCha20Poly1305::new((&self.key).into());
        let aad = place.aad();
        cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .map(Zeroizing::new)
            .map_err(|_| SealError::Corrupt("authentication failed"))
    }

    /// The plaintext as text, for a holder that wipes it (`SecretString`, `Zeroizing`); what
    /// is not UTF-8 is wiped here.
    pub fn open_string(&self, place: &Place<'_>, sealed: &[u8]) -> Result<String, SealError> {
        let mut bytes = self.open(place, sealed)?;
        String::from_utf8(std::mem::take(&mut *bytes)).map_err(|e| {
            e.into_bytes().zeroize();
            SealError::Corrupt("not UTF-8")
        })
    }
}

/// Where a sealed value lives; bound into the AEAD's associated data.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub table: &'a str,
    pub column: &'a str,
    pub row: &'a str,
}

impl Place<'_> {
    fn aad(&self) -> Vec<u8> {
        format!("cofre-seal-v1\0{}\0{}\0{}", self.table, self.column, self.row).into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Place<'static> = Place { table: "t", column: "c", row: "1" };

    #[test]
    fn round_trip_and_binding() {
        let k = MasterKey::generate();
        let s = k.seal(&P, b"secret");
        assert_eq!(k.open(&P, &s).unwrap().as_slice(), b"secret");
        let other_row = Place { row: "2", ..P };
        assert!(matches!(k.open(&other_row, &s), Err(SealError::Corrupt(_))));
        let k2 = MasterKey::generate();
        assert!(matches!(k2.open(&P, &s), Err(SealError::WrongKey { .. })));
    }

    #[test]
    fn key_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("master.key");
        let k = MasterKey::generate();
        k.write_new_file(&f).unwrap();
        assert_eq!(MasterKey::read_file(&f).unwrap().key_id(), k.key_id());
        assert!(k.write_new_file(&f).is_err(), "must not overwrite an existing key");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(MasterKey::read_file(&f).unwrap_err().to_string().contains("chmod 600"));
    }

    #[test]
    fn a_systemd_credential_may_be_group_readable_but_never_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let creds = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let k = MasterKey::generate();
        for dir in [creds.path(), elsewhere.path()] {
            let f = dir.join("master.key");
            k.write_new_file(&f).unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o440)).unwrap();
        }
        let (cred, other) = (creds.path().join("master.key"), elsewhere.path().join("master.key"));
        // As newer systemd hands a LoadCredential= file over: 0440 in the service's own directory.
        assert_eq!(MasterKey::read_file_with(&cred, Some(creds.path())).unwrap().key_id(), k.key_id());
        // The same mode anywhere else is refused, as before.
        assert!(MasterKey::read_file_with(&other, Some(creds.path())).is_err());
        assert!(MasterKey::read_file_with(&cred, None).is_err());
        // Readable by others: refused even there.
        std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o444)).unwrap();
        assert!(MasterKey::read_file_with(&cred, Some(creds.path())).is_err());
    }
}
