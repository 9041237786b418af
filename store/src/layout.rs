//! Strict request-path parsing and the on-disk layout, which is exactly restic rest-server's:
//! `<repo>/config`, `<repo>/{keys,locks,snapshots,index}/<name>`, `<repo>/data/<nn>/<name>`.

use std::fmt;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// At most this many segments in a repository path (`city/3f2a…` has two).
pub const MAX_REPO_SEGMENTS: usize = 8;
/// Temp files of unfinished uploads contain this (and start with a dot, so no listing shows them).
pub const TEMP_MARKER: &str = ".cofre-upload-";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectType {
    Data,
    Keys,
    Locks,
    Snapshots,
    Index,
}

impl ObjectType {
    pub const ALL: [ObjectType; 5] =
        [ObjectType::Data, ObjectType::Keys, ObjectType::Locks, ObjectType::Snapshots, ObjectType::Index];

    pub fn dir_name(self) -> &'static str {
        match self {
            ObjectType::Data => "data",
            ObjectType::Keys => "keys",
            ObjectType::Locks => "locks",
            ObjectType::Snapshots => "snapshots",
            ObjectType::Index => "index",
        }
    }

    pub fn from_dir_name(s: &str) -> Option<ObjectType> {
        ObjectType::ALL.into_iter().find(|t| t.dir_name() == s)
    }
}

impl fmt::Display for ObjectType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dir_name())
    }
}

/// A file of a repository: its config or one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Config,
    Object(ObjectType),
}

/// A validated repository path: 1–8 segments joined by `/`, none a type name or `config`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoPath(String);

impl RepoPath {
    pub fn parse(s: &str) -> Result<RepoPath, String> {
        let segments: Vec<&str> = s.split('/').collect();
        Self::from_segments(&segments)
    }

    fn from_segments(segments: &[&str]) -> Result<RepoPath, String> {
        if segments.is_empty() || segments.len() > MAX_REPO_SEGMENTS {
            return Err(format!("a repository path has 1 to {MAX_REPO_SEGMENTS} segments"));
        }
        for s in segments {
            if !is_segment(s) {
                return Err(format!("invalid path segment {s:?}"));
            }
            if *s == "config" || ObjectType::from_dir_name(s).is_some() {
                return Err(format!("{s:?} cannot name a repository (it is a restic file or type)"));
            }
        }
        Ok(RepoPath(segments.join("/")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True if `self` is `other` or lies below it (`city/pc` is within `city`, not `cit`).
    pub fn is_within(&self, other: &RepoPath) -> bool {
        self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }

    /// The first segment (rest-server's `--private-repos` compares it with the user name).
    pub fn first_segment(&self) -> &str {
        self.0.split('/').next().unwrap_or_default()
    }
}

impl fmt::Display for RepoPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}`: never empty, never `.` or `..`, never hidden.
pub fn is_segment(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_' || b[0] == b'-')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// Object names are 64 lowercase hex characters (a SHA-256).
pub fn is_object_name(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// What a request path addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `/<repo>/` (create with `?create=true`).
    Repo(RepoPath),
    Config(RepoPath),
    /// `/<repo>/<type>/`.
    List(RepoPath, ObjectType),
    Object(RepoPath, ObjectType, String),
}

impl Target {
    pub fn repo(&self) -> &RepoPath {
        match self {
            Target::Repo(r) | Target::Config(r) | Target::List(r, _) | Target::Object(r, _, _) => r,
        }
    }
}

/// Parses the RAW (not percent-decoded) request path. Only `[A-Za-z0-9._/-]` is accepted at
/// all, so encoded separators or dots, backslashes, NUL and non-ASCII never reach the disk.
pub fn parse_target(raw: &str) -> Result<Target, StoreError> {
    let bad = |m: &str| StoreError::BadRequest(m.to_string());
    let Some(rest) = raw.strip_prefix('/') else { return Err(bad("the path must start with /")) };
    if !raw.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b'/')) {
        return Err(bad("the path holds characters outside [A-Za-z0-9._/-]"));
    }
    // One trailing slash marks a directory (list or create); any other empty segment is refused.
    let (body, is_dir) = match rest.strip_suffix('/') {
        Some(body) => (body, true),
        None => (rest, false),
    };
    if body.is_empty() {
        // The data dir's root is not served as a repository.
        return Err(StoreError::NotFound);
    }
    let segs: Vec<&str> = body.split('/').collect();
    if let Some(s) = segs.iter().find(|s| !is_segment(s)) {
        return Err(if s.is_empty() { bad("empty path segment") } else { bad("invalid path segment") });
    }
    let repo = |n: usize| {
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        RepoPath::from_segments(&segs[..n]).map_err(StoreError::BadRequest)
    };
    let n = segs.len();
    let last = segs[n - 1];
    if let Some(t) = ObjectType::from_dir_name(last) {
        return Ok(Target::List(repo(n - 1)?, t));
    }
    if is_dir {
        return Ok(Target::Repo(repo(n)?));
    }
    if last == "config" {
        return Ok(Target::Config(repo(n - 1)?));
    }
    if n >= 2
        && let Some(t) = ObjectType::from_dir_name(segs[n - 2])
    {
        if !is_object_name(last) {
            return Err(bad("object names are 64 lowercase hex characters"));
        }
        return Ok(Target::Object(repo(n - 2)?, t, last.to_string()));
    }
    Ok(Target::Repo(repo(n)?))
}

/// Paths on disk for validated targets.
#[derive(Clone, Debug)]
pub struct Layout {
    data_dir: PathBuf,
}

impl Layout {
    pub fn new(data_dir: &Path) -> Layout {
        Layout { data_dir: data_dir.to_path_buf() }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn repo_dir(&self, repo: &RepoPath) -> PathBuf {
        self.data_dir.join(repo.as_str())
    }

    /// The directory holding a file: the repo dir for config, `data/<nn>` for data.
    pub fn parent_dir(&self, repo: &RepoPath, kind: FileKind, name: &str) -> PathBuf {
        let dir = self.repo_dir(repo);
        match kind {
            FileKind::Config => dir,
            FileKind::Object(ObjectType::Data) => dir.join("data").join(&name[..2]),
            FileKind::Object(t) => dir.join(t.dir_name()),
        }
    }

    pub fn file(&self, repo: &RepoPath, kind: FileKind, name: &str) -> PathBuf {
        match kind {
            FileKind::Config => self.repo_dir(repo).join("config"),
            FileKind::Object(_) => self.parent_dir(repo, kind, name).join(name),
        }
    }

    /// Creates the repository's directories as rest-server does (data/00…ff included); an
    /// existing repository is fine. Refuses a repository nested inside another one.
    pub fn create_repo(&self, repo: &RepoPath) -> Result<(), StoreError> {
        let segs: Vec<&str> = repo.as_str().split('/').collect();
        for n in 1..segs.len() {
            if is_repo_dir(&self.data_dir.join(segs[..n].join("/"))) {
                return Err(StoreError::BadRequest(format!(
                    "{} is inside repository {}",
                    repo,
                    segs[..n].join("/")
                )));
            }
        }
        let dir = self.repo_dir(repo);
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true).mode(0o700);
        let mk = |p: &Path| b.create(p).map_err(|e| StoreError::io(format!("creating {}", p.display()), e));
        mk(&dir)?;
        for t in ObjectType::ALL {
            mk(&dir.join(t.dir_name()))?;
        }
        for i in 0..=255u8 {
            mk(&dir.join("data").join(format!("{i:02x}")))?;
        }
        Ok(())
    }

    /// Valid objects of one type with their sizes; a missing type dir is an empty list. Junk
    /// (temp files, other names, data files in the wrong `<nn>` dir) is skipped.
    pub fn list(&self, repo: &RepoPath, t: ObjectType) -> io::Result<Vec<(String, u64)>> {
        list_objects(&self.repo_dir(repo), t)
    }
}

/// [`Layout::list`] for a repository directory.
pub fn list_objects(repo_dir: &Path, t: ObjectType) -> io::Result<Vec<(String, u64)>> {
    let dir = repo_dir.join(t.dir_name());
    let mut out = Vec::new();
    if t == ObjectType::Data {
        for sub in read_dir_or_empty(&dir)? {
            let sub = sub?;
            let prefix = sub.file_name().to_string_lossy().into_owned();
            if prefix.len() == 2 && sub.file_type()?.is_dir() {
                list_files(&sub.path(), Some(&prefix), &mut out)?;
            }
        }
    } else {
        list_files(&dir, None, &mut out)?;
    }
    Ok(out)
}

fn read_dir_or_empty(dir: &Path) -> io::Result<Box<dyn Iterator<Item = io::Result<std::fs::DirEntry>>>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => Ok(Box::new(rd)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Box::new(std::iter::empty())),
        Err(e) => Err(e),
    }
}

fn list_files(dir: &Path, prefix: Option<&str>, out: &mut Vec<(String, u64)>) -> io::Result<()> {
    for entry in read_dir_or_empty(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_object_name(name) || prefix.is_some_and(|p| !name.starts_with(p)) {
            continue;
        }
        // Entries can vanish between readdir and stat (a concurrent delete): skip them.
        match entry.metadata() {
            Ok(m) if m.is_file() => out.push((name.to_string(), m.len())),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A directory is a repository when it holds `config` or one of the type dirs.
pub fn is_repo_dir(dir: &Path) -> bool {
    dir.join("config").is_file() || ObjectType::ALL.iter().any(|t| dir.join(t.dir_name()).is_dir())
}

/// Every repository below `data_dir` (not descending into repositories, nor hidden dirs).
pub fn find_repos(data_dir: &Path) -> io::Result<Vec<RepoPath>> {
    let mut found = Vec::new();
    walk(data_dir, &mut Vec::new(), &mut found)?;
    found.sort();
    Ok(found)
}

fn walk(dir: &Path, segs: &mut Vec<String>, found: &mut Vec<RepoPath>) -> io::Result<()> {
    if !segs.is_empty() && is_repo_dir(dir) {
        let s: Vec<&str> = segs.iter().map(String::as_str).collect();
        match RepoPath::from_segments(&s) {
            Ok(r) => found.push(r),
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "repository with an unservable path"),
        }
        return Ok(());
    }
    if segs.len() >= MAX_REPO_SEGMENTS {
        return Ok(());
    }
    for entry in read_dir_or_empty(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_segment(&name) && entry.file_type()?.is_dir() {
            segs.push(name);
            walk(&entry.path(), segs, found)?;
            segs.pop();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn repo(s: &str) -> RepoPath {
        RepoPath::parse(s).unwrap()
    }

    #[test]
    fn parses_restic_paths() {
        assert_eq!(parse_target("/city/pc-01/").unwrap(), Target::Repo(repo("city/pc-01")));
        assert_eq!(parse_target("/r/config").unwrap(), Target::Config(repo("r")));
        assert_eq!(parse_target("/a/b/keys/").unwrap(), Target::List(repo("a/b"), ObjectType::Keys));
        assert_eq!(parse_target("/a/b/data").unwrap(), Target::List(repo("a/b"), ObjectType::Data));
        assert_eq!(
            parse_target(&format!("/r/data/{H}")).unwrap(),
            Target::Object(repo("r"), ObjectType::Data, H.into())
        );
        assert_eq!(parse_target("/a/b/c/d/e/f/g/h/").unwrap(), Target::Repo(repo("a/b/c/d/e/f/g/h")));
    }

    #[test]
    fn refuses_hostile_paths() {
        let bad = [
            "/r/../x/config",
            "/r/./config",
            "/../config",
            "/r/%2e%2e/config",
            "/r%2Fx/config",
            "//r/config",
            "/r//config",
            "/r/config/",
            "/r\\x/config",
            "/r/\0/config",
            "/rä/config",
            "/.hidden/config",
            "/a/b/c/d/e/f/g/h/i/",
            "/data/config",
            "/r/keys/keys/",
            "/r/data/ABCDEF",
            &format!("/r/data/{}", H.to_uppercase()),
            &format!("/r/data/{H}0"),
            &format!("/r/data/{H}/"),
            "relative/config",
        ];
        for p in bad {
            let e = parse_target(p).err();
            assert!(
                matches!(e, Some(StoreError::BadRequest(_) | StoreError::NotFound)),
                "{p:?} was accepted: {e:?}"
            );
        }
        assert!(matches!(parse_target("/config"), Err(StoreError::NotFound)));
        assert!(matches!(parse_target("/"), Err(StoreError::NotFound)));
        assert!(!is_segment(&"a".repeat(129)));
        assert!(is_segment(&"a".repeat(128)));
    }

    #[test]
    fn within_compares_whole_segments() {
        assert!(repo("city/pc").is_within(&repo("city")));
        assert!(repo("city").is_within(&repo("city")));
        assert!(!repo("cityx/pc").is_within(&repo("city")));
        assert!(!repo("city").is_within(&repo("city/pc")));
    }

    #[test]
    fn lists_skip_junk_and_nested_repos_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path());
        let r = repo("city/pc");
        l.create_repo(&r).unwrap();
        l.create_repo(&r).unwrap();
        let d = l.parent_dir(&r, FileKind::Object(ObjectType::Data), H);
        std::fs::write(d.join(H), b"abc").unwrap();
        std::fs::write(d.join(format!(".{H}{TEMP_MARKER}x")), b"abc").unwrap();
        std::fs::write(l.repo_dir(&r).join("data/ff").join(H), b"wrong dir").unwrap();
        std::fs::write(l.repo_dir(&r).join("keys/junk"), b"").unwrap();
        assert_eq!(l.list(&r, ObjectType::Data).unwrap(), vec![(H.to_string(), 3)]);
        assert!(l.list(&r, ObjectType::Keys).unwrap().is_empty());
        std::fs::remove_dir(l.repo_dir(&r).join("index")).unwrap();
        assert!(l.list(&r, ObjectType::Index).unwrap().is_empty());
        assert!(l.create_repo(&repo("city/pc/sub")).is_err());
        assert_eq!(find_repos(dir.path()).unwrap(), vec![r]);
    }
}
