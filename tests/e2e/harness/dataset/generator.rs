//! Writes the data set: one method per part of the tree, metadata applied last.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{BufWriter, Seek as _, SeekFrom, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{PermissionsExt as _, lchown, symlink};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use rand::rngs::StdRng;
use rand::{Rng as _, RngCore as _, SeedableRng as _};

use super::{
    CHANGING_FILE, Dataset, MIB, MTIME_RANGE, SPARSE_FILE, SPARSE_SIZE, TREE_FANOUT, TREE_FILES_PER_DIR,
    set_mtime,
};

pub(super) struct Generator {
    root: PathBuf,
    rng: StdRng,
    xattrs: bool,
    /// Every directory (relative), parents first.
    dirs: Vec<PathBuf>,
    /// Files and symlinks whose mtime is set at the end (one entry per inode).
    timed: Vec<(PathBuf, Option<(i64, i64)>)>,
    /// Explicit permission bits, applied at the end (after children exist).
    modes: Vec<(PathBuf, u32)>,
    owners: Vec<(PathBuf, u32, u32)>,
    ds: Dataset,
}

fn rel(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

impl Generator {
    pub(super) fn new(root: &Path, seed: u64, xattrs: bool) -> Generator {
        Generator {
            root: root.to_path_buf(),
            rng: StdRng::seed_from_u64(seed),
            xattrs,
            dirs: vec![PathBuf::new()],
            timed: Vec::new(),
            modes: vec![(PathBuf::new(), 0o755)],
            owners: Vec::new(),
            ds: Dataset {
                root: root.to_path_buf(),
                files: 0,
                dirs: 0,
                symlinks: 0,
                hardlink_names: 0,
                bytes: 0,
                xattrs,
                large_files: Vec::new(),
                hardlink_groups: Vec::new(),
                empty_dirs: Vec::new(),
            },
        }
    }

    /// Writes every part, then owners, modes and times; returns the summary.
    pub(super) fn run(mut self) -> Result<Dataset> {
        self.docs()?;
        self.big_files()?;
        self.tree()?;
        self.deep()?;
        self.empties()?;
        self.names()?;
        self.links()?;
        self.hardlinks()?;
        self.modes()?;
        self.owners()?;
        self.xattr_entries()?;
        self.finish()?;
        Ok(self.ds)
    }

    fn abs(&self, relative: &Path) -> PathBuf {
        self.root.join(relative)
    }

    fn dir(&mut self, relative: impl AsRef<Path>) -> Result<PathBuf> {
        let relative = relative.as_ref().to_path_buf();
        fs::create_dir(self.abs(&relative)).with_context(|| format!("mkdir {}", relative.display()))?;
        self.dirs.push(relative.clone());
        self.modes.push((relative.clone(), 0o755));
        self.ds.dirs += 1;
        Ok(relative)
    }

    fn file(&mut self, relative: impl AsRef<Path>, content: &[u8]) -> Result<PathBuf> {
        let relative = relative.as_ref().to_path_buf();
        fs::write(self.abs(&relative), content)
            .with_context(|| format!("writing {:?}", relative.as_os_str()))?;
        self.register_file(&relative, content.len() as u64);
        Ok(relative)
    }

    fn register_file(&mut self, relative: &Path, len: u64) {
        self.timed.push((relative.to_path_buf(), None));
        self.modes.push((relative.to_path_buf(), 0o644));
        self.ds.files += 1;
        self.ds.bytes += len;
    }

    fn symlink(&mut self, relative: impl AsRef<Path>, target: &[u8]) -> Result<()> {
        let relative = relative.as_ref().to_path_buf();
        symlink(OsStr::from_bytes(target), self.abs(&relative))
            .with_context(|| format!("symlink {}", relative.display()))?;
        self.timed.push((relative, None));
        self.ds.symlinks += 1;
        Ok(())
    }

    fn set_mode(&mut self, relative: impl AsRef<Path>, mode: u32) {
        let relative = relative.as_ref();
        // The last entry wins: replace the default registered at creation.
        self.modes.retain(|(path, _)| path != relative);
        self.modes.push((relative.to_path_buf(), mode));
    }

    fn set_time(&mut self, relative: impl AsRef<Path>, secs: i64, nanos: i64) {
        let relative = relative.as_ref();
        if let Some(entry) = self.timed.iter_mut().find(|(path, _)| path == relative) {
            entry.1 = Some((secs, nanos));
        } else {
            self.timed.push((relative.to_path_buf(), Some((secs, nanos))));
        }
    }

    fn random_bytes(&mut self, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.rng.fill_bytes(&mut buf);
        buf
    }

    fn text(&mut self, approx_len: usize) -> Vec<u8> {
        const WORDS: [&str; 16] = [
            "backup",
            "restic",
            "cofre",
            "snapshot",
            "fleet",
            "agent",
            "controller",
            "pack",
            "index",
            "blob",
            "tree",
            "prune",
            "retention",
            "machine",
            "repository",
            "chunk",
        ];
        let mut out = Vec::with_capacity(approx_len + 16);
        while out.len() < approx_len {
            let word = WORDS[self.rng.gen_range(0..WORDS.len())];
            out.extend_from_slice(word.as_bytes());
            out.push(if self.rng.gen_ratio(1, 12) { b'\n' } else { b' ' });
        }
        out.truncate(approx_len);
        out
    }

    /// Streams `len` bytes from `fill` into a new file in 1 MiB chunks.
    fn large_file(
        &mut self,
        relative: &str,
        len: u64,
        mut fill: impl FnMut(&mut StdRng, &mut [u8], u64),
    ) -> Result<()> {
        let relative = PathBuf::from(relative);
        let mut out = BufWriter::new(File::create(self.abs(&relative))?);
        let mut chunk = vec![0u8; MIB as usize];
        let mut written = 0;
        while written < len {
            let n = (len - written).min(MIB) as usize;
            fill(&mut self.rng, &mut chunk[..n], written);
            out.write_all(&chunk[..n])?;
            written += n as u64;
        }
        out.flush()?;
        self.register_file(&relative, len);
        self.ds.large_files.push(relative);
        Ok(())
    }

    fn docs(&mut self) -> Result<()> {
        self.dir("docs")?;
        self.file(
            "docs/readme.txt",
            b"Cofre end-to-end data set.\nEvery byte of it must come back from a restore.\n",
        )?;
        Ok(())
    }

    fn big_files(&mut self) -> Result<()> {
        self.dir("big")?;
        let random = |rng: &mut StdRng, buf: &mut [u8], _: u64| rng.fill_bytes(buf);
        self.large_file("big/random-0.bin", 10 * MIB + 1, random)?;
        self.large_file("big/random-1.bin", 11 * MIB + 4097, random)?;
        self.large_file("big/random-2.bin", 12 * MIB - 7, random)?;
        self.large_file(CHANGING_FILE, 12 * MIB, random)?;
        // Highly compressible but not trivially repetitive: numbered log lines.
        self.large_file("big/compressible.txt", 16 * MIB, |_, buf, offset| {
            let mut line = Vec::new();
            let mut n = offset / 64;
            while line.len() < buf.len() {
                line.extend_from_slice(
                    format!("{n:012} INFO cofre-agent: backup job progressing nicely\n").as_bytes(),
                );
                n += 1;
            }
            buf.copy_from_slice(&line[..buf.len()]);
        })?;

        // Sparse: 64 MiB apparent, three 4 KiB extents (start, middle, end).
        let sparse = PathBuf::from(SPARSE_FILE);
        let mut file = File::create(self.abs(&sparse))?;
        for offset in [0, SPARSE_SIZE / 2, SPARSE_SIZE - 4096] {
            let block = self.random_bytes(4096);
            file.seek(SeekFrom::Start(offset))?;
            file.write_all(&block)?;
        }
        file.set_len(SPARSE_SIZE)?;
        self.register_file(&sparse, SPARSE_SIZE);
        Ok(())
    }

    /// `tree/`: 268 directories five levels deep, eight files in each (small, mixed sizes).
    fn tree(&mut self) -> Result<()> {
        let top = self.dir("tree")?;
        let mut level = vec![top];
        for fanout in TREE_FANOUT {
            let mut next = Vec::new();
            for parent in &level {
                self.tree_files(parent)?;
                for i in 0..fanout {
                    next.push(self.dir(parent.join(format!("d{i}")))?);
                }
            }
            level = next;
        }
        for leaf in &level {
            self.tree_files(leaf)?;
        }
        Ok(())
    }

    fn tree_files(&mut self, dir: &Path) -> Result<()> {
        const EXT: [&str; 4] = ["txt", "bin", "dat", "log"];
        for j in 0..TREE_FILES_PER_DIR {
            let len = match self.rng.gen_range(0..100) {
                0..70 => self.rng.gen_range(0..2048),
                70..95 => self.rng.gen_range(2048..32 * 1024),
                _ => self.rng.gen_range(32 * 1024..128 * 1024),
            };
            let content = if j % 2 == 0 { self.text(len) } else { self.random_bytes(len) };
            self.file(dir.join(format!("f{j:03}.{}", EXT[j % 4])), &content)?;
        }
        Ok(())
    }

    fn deep(&mut self) -> Result<()> {
        let mut path = self.dir("deep")?;
        for level in 1..=24 {
            path = self.dir(path.join(format!("level-{level:02}")))?;
        }
        self.file(path.join("bottom.txt"), b"24 levels down\n")?;
        Ok(())
    }

    fn empties(&mut self) -> Result<()> {
        self.dir("empty")?;
        for dir in ["empty/empty-dir", "empty/nested", "empty/nested/empty", "empty/nested/empty/dirs"] {
            self.dir(dir)?;
        }
        self.ds.empty_dirs = vec!["empty/empty-dir".into(), "empty/nested/empty/dirs".into()];
        for file in ["empty/empty-file.txt", "empty/.empty-hidden", "empty/nested/zero.bin"] {
            self.file(file, b"")?;
        }
        Ok(())
    }

    fn names(&mut self) -> Result<()> {
        self.dir("names")?;
        let long = [vec![b'l'; 251], b".txt".to_vec()].concat();
        let names: Vec<&[u8]> = vec![
            b"latin1-caf\xe9.txt",
            b"invalid-utf8-\xff\xfe.bin",
            b"new\nline.txt",
            b"trailing-newline\n",
            b"carriage\rreturn",
            b"tab\tname",
            "🦀-crab.txt".as_bytes(),
            "👩‍👩‍👧‍👦 family (ZWJ).txt".as_bytes(),
            "e\u{301}-combining.txt".as_bytes(),
            "é-precomposed.txt".as_bytes(),
            "日本語のファイル名.txt".as_bytes(),
            "עברית.txt".as_bytes(),
            b"back\\slash",
            b"quote\"and'apostrophe",
            b"glob*?[chars].txt",
            b" leading-space",
            b"trailing-space ",
            b"-leading-dash",
            b".hidden",
            b"..double-dot-prefix",
            b"colon:name",
            b"percent%20encoded",
            &long,
        ];
        for name in names {
            let content = self.text(64 + name.len());
            self.file(Path::new("names").join(rel(name)), &content)?;
        }
        let bad_dir = self.dir(Path::new("names").join(rel(b"dir-\xc3\x28-invalid")))?;
        self.file(bad_dir.join("plain.txt"), b"inside a directory whose name is not UTF-8\n")?;
        self.file(bad_dir.join(rel(b"also-\x80-invalid")), b"both names invalid\n")?;
        let emoji_dir = self.dir("names/📦 package dir")?;
        self.file(emoji_dir.join("inside.txt"), b"inside an emoji directory\n")?;
        Ok(())
    }

    fn links(&mut self) -> Result<()> {
        self.dir("links")?;
        let long_target = [b"long/".repeat(200), b"end".to_vec()].concat();
        let links: Vec<(&str, &[u8])> = vec![
            ("relative", b"../docs/readme.txt"),
            ("absolute", b"/etc/passwd"),
            ("dangling-relative", b"does/not/exist"),
            ("dangling-absolute", b"/nonexistent/cofre-e2e/target"),
            ("to-dir", b"../tree/d0"),
            ("chain", b"relative"),
            ("non-utf8-target", b"target-\xff\xfe"),
            ("emoji-target", "🦀-crab.txt".as_bytes()),
            ("self-loop", b"self-loop"),
            ("long-target", &long_target),
        ];
        for (name, target) in links {
            self.symlink(Path::new("links").join(name), target)?;
        }
        Ok(())
    }

    fn hardlinks(&mut self) -> Result<()> {
        self.dir("hardlinks")?;
        self.dir("hardlinks/sub")?;
        let content = self.random_bytes(100 * 1024);
        let original = self.file("hardlinks/original.bin", &content)?;
        let mut group = vec![original.clone()];
        for name in
            ["hardlinks/second-name.bin", "hardlinks/sub/third-name.bin", "tree/d0/hardlink-from-tree.bin"]
        {
            fs::hard_link(self.abs(&original), self.abs(Path::new(name)))?;
            group.push(name.into());
        }
        self.ds.hardlink_names += group.len() - 1;
        self.ds.hardlink_groups.push(group);

        let text = self.text(3000);
        let a = self.file("hardlinks/pair-a.txt", &text)?;
        fs::hard_link(self.abs(&a), self.abs(Path::new("hardlinks/pair-b.txt")))?;
        self.ds.hardlink_names += 1;
        self.ds.hardlink_groups.push(vec![a, "hardlinks/pair-b.txt".into()]);

        let empty = self.file("hardlinks/empty-a", b"")?;
        fs::hard_link(self.abs(&empty), self.abs(Path::new("hardlinks/empty-b")))?;
        self.ds.hardlink_names += 1;
        self.ds.hardlink_groups.push(vec![empty, "hardlinks/empty-b".into()]);
        Ok(())
    }

    fn modes(&mut self) -> Result<()> {
        self.dir("modes")?;
        for (name, mode) in [
            ("mode-0600.txt", 0o600),
            ("mode-0755.sh", 0o755),
            ("mode-0444.txt", 0o444),
            ("mode-0640.txt", 0o640),
            ("mode-0000.txt", 0o000),
            ("setuid-4755", 0o4755),
            ("setgid-2755", 0o2755),
        ] {
            let content = self.text(200);
            let path = self.file(Path::new("modes").join(name), &content)?;
            self.set_mode(path, mode);
        }
        for (name, mode) in [
            ("dir-0700", 0o700),
            ("dir-0711", 0o711),
            ("setgid-dir-2775", 0o2775),
            ("sticky-dir-1777", 0o1777),
            ("readonly-dir-0555", 0o555),
        ] {
            let dir = self.dir(Path::new("modes").join(name))?;
            self.set_mode(&dir, mode);
            self.file(dir.join("child.txt"), b"a child, created before the mode was set\n")?;
            self.dir(dir.join("subdir"))?;
        }
        // Times at the edges: just after the epoch, a whole second, past 2038.
        self.set_time("modes/mode-0600.txt", 1, 0);
        self.set_time("modes/mode-0755.sh", 1_600_000_000, 0);
        self.set_time("modes/mode-0444.txt", 4_102_444_800, 123_456_789);
        Ok(())
    }

    fn owners(&mut self) -> Result<()> {
        let dir = self.dir("owners")?;
        let file = self.file(dir.join("uid-1234-gid-5678.txt"), b"owned by 1234:5678\n")?;
        self.owners.push((file, 1234, 5678));
        let file = self.file(dir.join("root-gid-100.txt"), b"owned by 0:100\n")?;
        self.owners.push((file, 0, 100));
        let nobody = self.dir(dir.join("nobody-dir"))?;
        self.file(nobody.join("root-file.txt"), b"root's file in nobody's dir\n")?;
        self.owners.push((nobody, 65534, 65534));
        let link = dir.join("link-owned-4321");
        self.symlink(&link, b"uid-1234-gid-5678.txt")?;
        self.owners.push((link, 4321, 4321));
        Ok(())
    }

    fn xattr_entries(&mut self) -> Result<()> {
        let dir = self.dir("xattrs")?;
        let file = self.file(dir.join("with-xattrs.txt"), b"this file carries extended attributes\n")?;
        let sub = self.dir(dir.join("dir-with-xattr"))?;
        self.file(sub.join("plain.txt"), b"no xattrs here\n")?;
        if !self.xattrs {
            return Ok(());
        }
        let binary: Vec<u8> = (0..=255).collect();
        let big = self.random_bytes(1024);
        for (name, value) in [
            ("user.cofre.text", &b"hello"[..]),
            ("user.cofre.binary", &binary),
            ("user.cofre.empty", b""),
            ("user.cofre.big", &big),
        ] {
            xattr::set(self.abs(&file), name, value)?;
        }
        xattr::set(self.abs(&sub), "user.cofre.dir", b"directory attribute")?;
        xattr::set(self.abs(Path::new("big/random-0.bin")), "user.cofre.note", b"large")?;
        Ok(())
    }

    /// Owners, then modes, then mtimes (directories after all their children exist, so the
    /// times stick).
    fn finish(&mut self) -> Result<()> {
        for (path, uid, gid) in &self.owners {
            lchown(self.root.join(path), Some(*uid), Some(*gid))
                .with_context(|| format!("lchown {}", path.display()))?;
        }
        // Modes after owners: chown clears setuid/setgid bits.
        for (path, mode) in &self.modes {
            fs::set_permissions(self.root.join(path), fs::Permissions::from_mode(*mode))
                .with_context(|| format!("chmod {:o} {}", mode, path.display()))?;
        }
        let timed = std::mem::take(&mut self.timed);
        let dirs = self.dirs.clone();
        let all = timed.into_iter().chain(dirs.into_iter().rev().map(|dir| (dir, None)));
        for (path, fixed) in all {
            let (secs, nanos) = fixed
                .unwrap_or_else(|| (self.rng.gen_range(MTIME_RANGE), self.rng.gen_range(0..1_000_000_000)));
            set_mtime(&self.root.join(&path), secs, nanos)
                .with_context(|| format!("setting the mtime of {:?}", path.as_os_str()))?;
        }
        Ok(())
    }
}
