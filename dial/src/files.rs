//! The files a client of the controller keeps: written whole (temp file, fsync, rename, fsync of
//! the directory) and readable only by their owner; the identity file holds the certificate
//! and its key together, so a renewal never leaves a mismatched pair. A write that fails (a
//! full disk) leaves nothing behind.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use anyhow::Context as _;

/// Writes `data` to `path` atomically with mode 0600.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let written = (|| {
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        // A partial temporary file would hold on to space a full disk needs back.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // Make the rename itself durable.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes a certificate and its key as one identity file (one rename).
pub fn write_identity(path: &Path, cert_pem: &str, key_pem: &str) -> anyhow::Result<()> {
    write_atomic(path, format!("{cert_pem}{key_pem}").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// (certificate PEM, key PEM) from an identity file.
pub fn read_identity(path: &Path) -> anyhow::Result<(String, String)> {
    let pem = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let idx = pem
        .find("-----BEGIN PRIVATE KEY-----")
        .with_context(|| format!("{} holds no private key", path.display()))?;
    Ok((pem[..idx].to_string(), pem[idx..].to_string()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn identity_files_are_private_whole_and_split_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("identity.pem");
        write_identity(&p, "CERT\n", "-----BEGIN PRIVATE KEY-----\nK\n").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let (cert, key) = read_identity(&p).unwrap();
        assert_eq!(cert, "CERT\n");
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
        let leftovers: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(leftovers.len(), 1, "no temp file left: {leftovers:?}");
    }
}
