//! Uploads: streamed into a dotfile temp in the target's directory while hashing SHA-256,
//! fsynced, verified against the name, then published without ever overwriting (a hard link
//! fails if the target exists) and the directory fsynced. Each identity has a bounded number of
//! uploads in progress. Quota bytes are reserved before the body is read when its length is
//! known, and the reservation grows as bytes arrive beyond it (a body without Content-Length),
//! always before they are written: an upload over quota is cut at once and its temp file removed.

use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use axum::body::{Body, BodyDataStream};
use axum::http::{HeaderMap, header};
use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use crate::StoreState;
use crate::access::{self, Action, Identity};
use crate::error::StoreError;
use crate::layout::{FileKind, ObjectType, RepoPath, TEMP_MARKER};
use crate::quota;
use crate::slots::UploadSlot;

/// Removes the temp file unless it was published (also when the handler future is dropped
/// because the client went away mid-upload).
struct TempFile {
    path: PathBuf,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(file = %self.path.display(), error = %e, "cannot remove upload temp file");
        }
    }
}

/// A refused upload's body is still read and discarded up to this many bytes, so the client
/// sees the answer instead of a connection reset mid-send (restic's packs are ~16 MiB).
const DRAIN_LIMIT: u64 = 64 << 20;

/// Reads and discards what is left of a request body (bounded in bytes and time); beyond that
/// the connection is simply closed after the answer. `declared` is the Content-Length. Nothing
/// read here is written anywhere.
pub async fn drain(stream: &mut BodyDataStream, declared: Option<u64>) {
    if declared.is_some_and(|n| n > DRAIN_LIMIT) {
        return;
    }
    let read_rest = async {
        let mut n: u64 = 0;
        while let Some(Ok(chunk)) = stream.next().await {
            n += chunk.len() as u64;
            if n > DRAIN_LIMIT {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), read_rest).await;
}

/// Receives the body of `POST <repo>/config` or `POST <repo>/<type>/<name>`; returns its size.
/// The body is taken out of `body` only once the upload is accepted (the caller drains it
/// otherwise).
pub async fn receive(
    state: &StoreState,
    identity: &Identity,
    repo: &RepoPath,
    kind: FileKind,
    name: &str,
    headers: &HeaderMap,
    body: &mut Option<Body>,
) -> Result<u64, StoreError> {
    let s = state.shared();
    let dir = s.layout.parent_dir(repo, kind, name);
    let final_path = s.layout.file(repo, kind, name);
    if !tokio::fs::metadata(s.layout.repo_dir(repo)).await.is_ok_and(|m| m.is_dir()) {
        return Err(StoreError::NotFound);
    }
    // Refused before reading anything; checked again, atomically, when publishing.
    if tokio::fs::symlink_metadata(&final_path).await.is_ok() {
        return Err(StoreError::Forbidden("an existing object is never overwritten"));
    }
    let max = s.settings.max_object_size;
    let length = content_length(headers)?;
    if length.is_some_and(|n| n > max) {
        return Err(StoreError::PayloadTooLarge);
    }
    let slot = s.uploads.acquire(identity)?;
    let limits = quota::limits_for(identity, &state.access_list(), &s.users);
    let mut reservation = quota::reserve(&s.catalog, repo, length.unwrap_or(0), &limits)?;

    let (tmp, file) = create_temp(&dir, name).await?;
    let mut out = tokio::io::BufWriter::with_capacity(256 * 1024, file);
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut stream = body.take().unwrap_or_default().into_data_stream();
    let idle = std::time::Duration::from_secs(s.settings.upload_idle_timeout_seconds);
    // A client that stops sending must not hold its connection, temp file and reserved quota
    // forever: each chunk has to arrive within the idle timeout.
    while let Some(chunk) =
        tokio::time::timeout(idle, stream.next()).await.map_err(|_| StoreError::RequestTimeout)?
    {
        let chunk = chunk.map_err(|e| StoreError::BadRequest(format!("upload interrupted: {e}")))?;
        size += chunk.len() as u64;
        // Before the bytes reach the disk: the temp file never holds more than the object size
        // limit or the quota (with every other upload's reservation) allows.
        let refused = if size > max {
            Some(StoreError::PayloadTooLarge)
        } else {
            reservation.grow_to(size, &limits).err()
        };
        if let Some(e) = refused {
            drop(out);
            drop(tmp);
            discard_rest(stream, slot);
            return Err(e);
        }
        hasher.update(&chunk);
        out.write_all(&chunk).await.map_err(|e| StoreError::io("writing an upload", e))?;
    }
    out.flush().await.map_err(|e| StoreError::io("writing an upload", e))?;
    out.into_inner().sync_all().await.map_err(|e| StoreError::io("syncing an upload", e))?;
    // restic and rustic name every object by the SHA-256 of its stored bytes; config is not hashed.
    if kind != FileKind::Config && hex::encode(hasher.finalize()) != name {
        return Err(StoreError::BadRequest("the content's SHA-256 does not match the object's name".into()));
    }
    // An upload can take minutes: the identity must still be allowed when it lands.
    access::authorize(identity, &state.access_list(), &s.users, repo, Action::Write(kind))?;
    publish(state, identity, kind, &tmp, &final_path, &dir).await?;
    let mtime = tokio::fs::metadata(&final_path)
        .await
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| SystemTime::now());
    s.catalog.record_added(repo, kind, name, size, mtime);
    drop(reservation);
    drop(slot);
    Ok(size)
}

/// After an upload was refused mid-body (its temp file already gone): the rest of the body is
/// read and discarded in the background, within [`drain`]'s bounds, while the answer goes out,
/// so the client reads the answer instead of a connection reset. The identity's upload slot is
/// held until then.
fn discard_rest(mut stream: BodyDataStream, slot: UploadSlot) {
    tokio::spawn(async move {
        drain(&mut stream, None).await;
        drop(slot);
    });
}

pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, StoreError> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| v.to_str().ok().and_then(|v| v.parse::<u64>().ok()))
        .map(|v| v.ok_or_else(|| StoreError::BadRequest("invalid Content-Length".into())))
        .transpose()
}

async fn create_temp(dir: &Path, name: &str) -> Result<(TempFile, tokio::fs::File), StoreError> {
    let tmp = dir.join(format!(".{name}{TEMP_MARKER}{}", hex::encode(rand::random::<[u8; 8]>())));
    let (d, t) = (dir.to_path_buf(), tmp.clone());
    // data/<nn> or a type dir may be missing in a repository made by another tool.
    let file = tokio::task::spawn_blocking(move || {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&d)?;
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&t)
    })
    .await
    .map_err(|e| StoreError::Internal(e.into()))?
    .map_err(|e| StoreError::io(format!("creating {}", tmp.display()), e))?;
    Ok((TempFile { path: tmp }, tokio::fs::File::from_std(file)))
}

/// Links the temp file to its final name (never replacing anything), removes the temp name and
/// fsyncs the directory so the new entry survives a crash.
async fn publish(
    state: &StoreState,
    identity: &Identity,
    kind: FileKind,
    tmp: &TempFile,
    final_path: &Path,
    dir: &Path,
) -> Result<(), StoreError> {
    let s = state.shared_arc();
    let (t, f, d) = (tmp.path.clone(), final_path.to_path_buf(), dir.to_path_buf());
    let owner = (kind == FileKind::Object(ObjectType::Locks)).then(|| identity.to_string());
    tokio::task::spawn_blocking(move || {
        if let Some(owner) = &owner {
            s.owners.record(&t, &f, owner);
        }
        match std::fs::hard_link(&t, &f) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if owner.is_some() {
                    s.owners.forget(&f);
                }
                return Err(StoreError::Forbidden("an existing object is never overwritten"));
            }
            Err(e) => return Err(StoreError::io(format!("publishing {}", f.display()), e)),
        }
        std::fs::remove_file(&t).map_err(|e| StoreError::io(format!("removing {}", t.display()), e))?;
        sync_dir(&d)
    })
    .await
    .map_err(|e| StoreError::Internal(e.into()))?
}

/// fsyncs a directory (after adding or removing an entry). Blocking.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("syncing {}", dir.display()), e))
}
