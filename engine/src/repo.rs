//! Opening and initialising repositories: one probe, then at most one open per engine call.
//!
//! Opening costs about 0.45 s (scrypt key derivation), so every public entry point opens the
//! repository exactly once and hands the open [`Repository`] down. Before opening, `probe.rs`
//! checks that the REST server answers and whether a config exists, which gives precise errors
//! (refused credentials, no repository, dead server) that rustic_core would blur.

use std::path::PathBuf;
use std::sync::{PoisonError, RwLock};

use rustic_core::{ConfigOptions, Credentials, KeyOptions, OpenStatus, Repository, RepositoryOptions};
use secrecy::ExposeSecret;

use crate::RepoTarget;
use crate::error::{EngineError, from_rustic};
use crate::probe::{ConfigState, probe_config};
use crate::target::Prepared;

/// An open repository plus what is needed to describe errors about it.
pub(crate) struct OpenRepo {
    pub(crate) repo: Repository<OpenStatus>,
    pub(crate) prepared: Prepared,
}

impl OpenRepo {
    /// The restic repository id (64 hex digits).
    pub(crate) fn restic_id(&self) -> String {
        self.repo.config().id.to_hex().to_string()
    }
}

fn credentials(target: &RepoTarget) -> Credentials {
    Credentials::password(target.repository_password.expose_secret())
}

/// Where rustic keeps its local cache; `None`: rustic's default (`$XDG_CACHE_HOME/rustic` or
/// `~/.cache/rustic`).
static CACHE_DIR: RwLock<Option<PathBuf>> = RwLock::new(None);

/// Sets the directory of rustic's local cache for backups and restores in this process
/// (`None`: rustic's default, `$XDG_CACHE_HOME/rustic` or `~/.cache/rustic`).
///
/// The cache holds index, snapshot and tree files (one subdirectory per repository id), so
/// backups do not download the whole index every time. It is only an optimisation: if the
/// directory cannot be created, rustic silently works without it.
pub fn set_cache_dir(dir: Option<PathBuf>) {
    *CACHE_DIR.write().unwrap_or_else(PoisonError::into_inner) = dir;
}

/// Repository options: the cache speeds up repeated backups and restores; init and id
/// look-ups do not need it.
fn repository_options(use_cache: bool) -> RepositoryOptions {
    let opts = RepositoryOptions::default().no_cache(!use_cache);
    match CACHE_DIR.read().unwrap_or_else(PoisonError::into_inner).clone() {
        Some(dir) if use_cache => opts.cache_dir(dir),
        _ => opts,
    }
}

/// Checks the target, probes the server and opens the repository (never initialises it).
pub(crate) fn open(target: &RepoTarget, use_cache: bool) -> Result<OpenRepo, EngineError> {
    open_reporting(target, use_cache, rustic_core::NoProgressBars)
}

/// [`open`], with rustic_core's progress hooks going to `bars`.
pub(crate) fn open_reporting(
    target: &RepoTarget,
    use_cache: bool,
    bars: impl rustic_core::ProgressBars,
) -> Result<OpenRepo, EngineError> {
    let prepared = target.prepare()?;
    match probe_config(target, &prepared.url, &prepared.redactor)? {
        ConfigState::Absent => return Err(EngineError::NotInitialised),
        ConfigState::Present => {}
    }
    let repo = open_prepared(target, &prepared, use_cache, bars)?;
    Ok(OpenRepo { repo, prepared })
}

fn open_prepared(
    target: &RepoTarget,
    prepared: &Prepared,
    use_cache: bool,
    bars: impl rustic_core::ProgressBars,
) -> Result<Repository<OpenStatus>, EngineError> {
    let doing = format!("opening the repository at {}", prepared.url);
    Repository::new_with_progress(&repository_options(use_cache), &prepared.backends, bars)
        .and_then(|repo| repo.open(&credentials(target)))
        .map_err(|err| from_rustic(&err, &prepared.redactor, &doing))
}

/// Lock files are small: a request that takes longer is stuck.
const LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// What the repository lock (`lock.rs`) needs of an open repository: its backend and key.
pub(crate) fn lock_backend(
    target: &RepoTarget,
    open: &OpenRepo,
) -> Result<crate::lock::LockBackend, EngineError> {
    let key = crate::archiver::format::Key::from_master(&open.repo.key()).map_err(EngineError::Other)?;
    Ok(crate::lock::LockBackend {
        files: crate::rest::RestFiles::new(target, &open.prepared, LOCK_TIMEOUT)?,
        key,
        compress: open.repo.config().version > 1,
    })
}

/// See [`crate::init_repository`].
pub(crate) fn init_repository(target: &RepoTarget) -> Result<String, EngineError> {
    let prepared = target.prepare()?;
    if probe_config(target, &prepared.url, &prepared.redactor)? == ConfigState::Present {
        let restic_id = open_prepared(target, &prepared, false, rustic_core::NoProgressBars)
            .ok()
            .map(|repo| repo.config().id.to_hex().to_string());
        return Err(EngineError::AlreadyInitialised { restic_id });
    }

    // Repository format version 2 with rustic's default zstd compression; the chunker
    // polynomial and the repository id are random, as with `restic init`.
    // Data packs of 16 MiB, restic's default, instead of rustic's 32 MiB: rustic's restorer
    // holds up to 20 whole pack ranges at once, so pack size sets its memory; the size still
    // grows slowly with the repository (rustic's grow factor) up to 128 MiB.
    let config_opts = ConfigOptions::default()
        .set_version(2u32)
        .set_datapack_size(bytesize::ByteSize::mib(16))
        .set_datapack_size_limit(bytesize::ByteSize::mib(128));
    let key_opts = KeyOptions::default().with_created(true);
    let doing = format!("initialising a repository at {}", prepared.url);
    let repo = Repository::new(&repository_options(false), &prepared.backends)
        .and_then(|repo| repo.init(&credentials(target), &key_opts, &config_opts))
        .map_err(|err| from_rustic(&err, &prepared.redactor, &doing))?;
    replace_key_with_light_one(target, &prepared, &repo.key())?;
    Ok(repo.config().id.to_hex().to_string())
}

/// Swaps the key rustic wrote (scrypt N = 2^17) for one with restic's cost (see `keyfile`):
/// the new key is written first, then the old one removed, so the repository always has a key.
fn replace_key_with_light_one(
    target: &RepoTarget,
    prepared: &crate::target::Prepared,
    master: &rustic_core::repofile::MasterKey,
) -> Result<(), EngineError> {
    use rustic_core::{FileType, Id, ReadBackend as _, WriteBackend as _};
    let be = prepared.backends.repository();
    let doing = format!("writing the repository key at {}", prepared.url);
    let fail = |err: Box<rustic_core::RusticError>| from_rustic(&err, &prepared.redactor, &doing);
    let old = be.list(FileType::Key).map_err(fail)?;
    let hostname = nix_hostname();
    let (bytes, id) =
        crate::keyfile::light_key_file(master, target.repository_password.expose_secret(), hostname)?;
    let id: Id = id.parse().map_err(fail)?;
    be.write_bytes(FileType::Key, &id, false, bytes.into()).map_err(fail)?;
    for old_id in old.iter().filter(|o| **o != id) {
        be.remove(FileType::Key, old_id, false).map_err(fail)?;
    }
    Ok(())
}

fn nix_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string())
}

/// See [`crate::repository_id`].
pub(crate) fn repository_id(target: &RepoTarget) -> Result<String, EngineError> {
    Ok(open(target, false)?.restic_id())
}

/// Normalises a restic id given by a caller: trimmed, lower-case, hex only.
pub(crate) fn normalise_id(id: &str, what: &str) -> Result<String, EngineError> {
    let id = id.trim().to_ascii_lowercase();
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(EngineError::InvalidInput(format!("the {what} `{id}` is not a hexadecimal restic id")));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_normalised() {
        assert_eq!(normalise_id(" ABCdef01 ", "id").unwrap(), "abcdef01");
        assert!(normalise_id("", "id").is_err());
        assert!(normalise_id("xyz", "id").is_err());
        assert!(normalise_id(&"a".repeat(65), "id").is_err());
    }

    #[test]
    fn options() {
        assert!(repository_options(false).no_cache);
        assert!(!repository_options(true).no_cache);
        set_cache_dir(Some(PathBuf::from("/var/cache/cofre-test")));
        let with_dir = repository_options(true);
        set_cache_dir(None);
        assert_eq!(with_dir.cache_dir, Some(PathBuf::from("/var/cache/cofre-test")));
        assert_eq!(repository_options(true).cache_dir, None);
        let key = KeyOptions::default().with_created(true);
        assert!(key.with_created);
    }
}
