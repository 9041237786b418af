//! The demanding data set the end-to-end tests back up, a mutation for the second backup, and a
//! writer that keeps changing one file while a backup reads it.
//!
//! Everything is deterministic given the seed (names, sizes, contents, modes, owners, xattrs,
//! mtimes), so a test can regenerate the expected tree instead of trusting the source.

mod changes;
mod generator;

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::{Result, bail, ensure};
use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

pub use changes::{ChangeWhileReading, Mutation, mutate};

/// The large file that [`ChangeWhileReading`] is meant for (relative to the data set root).
pub const CHANGING_FILE: &str = "big/growing.log";
/// The 64 MiB sparse file (a few KiB allocated).
pub const SPARSE_FILE: &str = "big/sparse.img";
/// Apparent size of [`SPARSE_FILE`].
pub const SPARSE_SIZE: u64 = 64 * MIB;

const MIB: u64 = 1024 * 1024;
/// Branching of the `tree/` hierarchy per level: 4·3·3·2·2 leaf dirs, 5 levels below `tree/`.
const TREE_FANOUT: [usize; 5] = [4, 3, 3, 2, 2];
const TREE_FILES_PER_DIR: usize = 8;
/// 2000-01-01 .. 2030-01-01: ordinary mtimes.
const MTIME_RANGE: std::ops::Range<i64> = 946_684_800..1_893_456_000;

/// Knobs for [`generate`].
#[derive(Debug, Clone)]
pub struct DatasetOptions {
    pub seed: u64,
    /// Fail when the filesystem refuses `user.*` xattrs (otherwise they are left out and
    /// [`Dataset::xattrs`] is false).
    pub require_xattrs: bool,
}

impl Default for DatasetOptions {
    fn default() -> Self {
        DatasetOptions { seed: 0xC0F2E, require_xattrs: true }
    }
}

/// What [`generate`] made (paths relative to `root`).
#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    pub files: usize,
    pub dirs: usize,
    pub symlinks: usize,
    /// Extra names of hard-linked files (not counted in `files`).
    pub hardlink_names: usize,
    /// Apparent bytes of all regular files (each inode once).
    pub bytes: u64,
    /// Whether `user.*` xattrs were written.
    pub xattrs: bool,
    pub large_files: Vec<PathBuf>,
    /// Groups of names sharing one inode.
    pub hardlink_groups: Vec<Vec<PathBuf>>,
    pub empty_dirs: Vec<PathBuf>,
}

impl Dataset {
    pub fn path(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.root.join(relative)
    }
}

/// Generates the data set into `root` (created if missing; must be empty).
pub fn generate(root: &Path, options: &DatasetOptions) -> Result<Dataset> {
    fs::create_dir_all(root)?;
    ensure!(fs::read_dir(root)?.next().is_none(), "data set root {} is not empty", root.display());
    let xattrs = probe_xattrs(root, options.require_xattrs)?;
    generator::Generator::new(root, options.seed, xattrs).run()
}

fn probe_xattrs(root: &Path, require: bool) -> Result<bool> {
    let probe = root.join(".cofre-xattr-probe");
    File::create(&probe)?;
    let result = xattr::set(&probe, "user.cofre.probe", b"1");
    fs::remove_file(&probe)?;
    match result {
        Ok(()) => Ok(true),
        Err(err) if require => bail!(
            "the filesystem holding {} does not support user.* extended attributes ({err}); \
             put the data set on ext4/xfs/btrfs (or tmpfs on Linux >= 6.6), or set \
             DatasetOptions::require_xattrs = false to generate it without xattrs",
            root.display()
        ),
        Err(err) => {
            eprintln!(
                "cofre-e2e: no user.* xattrs on the filesystem of {} ({err}): data set without xattrs",
                root.display()
            );
            Ok(false)
        }
    }
}

/// Sets the mtime of `path` itself (not a symlink's target), leaving atime alone.
pub fn set_mtime(path: &Path, secs: i64, nanos: i64) -> Result<()> {
    utimensat(
        None,
        path,
        &TimeSpec::UTIME_OMIT,
        &TimeSpec::new(secs, nanos),
        UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}
