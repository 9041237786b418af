//! Changes to a generated data set: the mutation before a second backup, and a writer that
//! keeps changing a file while a backup reads it.

use std::fs::{self, OpenOptions};
use std::io::{Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Result, bail};
use rand::rngs::StdRng;
use rand::{Rng as _, RngCore as _, SeedableRng as _};

use super::MIB;

/// What [`mutate`] changed (paths relative to the root).
#[derive(Debug, Clone, Default)]
pub struct Mutation {
    pub modified: Vec<PathBuf>,
    pub added: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
}

/// Changes the tree for a second backup: two files modified (one large, in place), one added,
/// one removed. Deterministic.
pub fn mutate(root: &Path) -> Result<Mutation> {
    let mut m = Mutation::default();

    let readme = PathBuf::from("docs/readme.txt");
    let mut file = OpenOptions::new().append(true).open(root.join(&readme))?;
    writeln!(file, "A line added after the first backup.")?;
    m.modified.push(readme);

    // 1 MiB in the middle of a large file: the rest must deduplicate.
    let big = PathBuf::from("big/random-1.bin");
    let mut file = OpenOptions::new().write(true).open(root.join(&big))?;
    file.seek(SeekFrom::Start(5 * MIB))?;
    let mut chunk = vec![0u8; MIB as usize];
    StdRng::seed_from_u64(7).fill_bytes(&mut chunk);
    file.write_all(&chunk)?;
    m.modified.push(big);

    let added = PathBuf::from("docs/added-after-first-backup.txt");
    fs::write(root.join(&added), "This file did not exist in the first snapshot.\n")?;
    m.added.push(added);

    let removed = PathBuf::from("tree/d2/d1/f005.bin");
    fs::remove_file(root.join(&removed))?;
    m.removed.push(removed);
    Ok(m)
}

/// A background thread that keeps changing one (large) file until stopped: appends 64 KiB
/// blocks (up to 32 MiB of growth) and rewrites 64 KiB blocks in place, alternately — "a file
/// modified while the backup runs".
pub struct ChangeWhileReading {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    handle: Option<JoinHandle<Result<()>>>,
}

impl ChangeWhileReading {
    /// Starts changing `path` (which must exist); returns once the first change is on disk.
    pub fn start(path: &Path) -> Result<ChangeWhileReading> {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = {
            let (path, stop, writes) = (path.to_path_buf(), stop.clone(), writes.clone());
            std::thread::Builder::new()
                .name("change-while-reading".into())
                .spawn(move || change_loop(&path, &stop, &writes, &ready_tx))?
        };
        let mut this = ChangeWhileReading { path: path.to_path_buf(), stop, writes, handle: Some(handle) };
        if ready_rx.recv_timeout(Duration::from_secs(10)).is_err() {
            let err = this.join().err();
            bail!("changing {} did not start: {err:?}", path.display());
        }
        Ok(this)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many writes so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Stops the writer and returns the number of writes it made.
    pub fn stop(mut self) -> Result<u64> {
        self.join()?;
        Ok(self.writes())
    }

    fn join(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take() {
            Some(handle) => {
                handle.join().map_err(|_| anyhow::anyhow!("change-while-reading thread panicked"))?
            }
            None => Ok(()),
        }
    }
}

impl Drop for ChangeWhileReading {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

fn change_loop(
    path: &Path,
    stop: &AtomicBool,
    writes: &AtomicU64,
    ready: &std::sync::mpsc::Sender<()>,
) -> Result<()> {
    const BLOCK: usize = 64 * 1024;
    const MAX_GROWTH: u64 = 32 * MIB;
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let start_len = file.metadata()?.len();
    let mut rng = StdRng::seed_from_u64(0xC4A9);
    let mut block = vec![0u8; BLOCK];
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        rng.fill_bytes(&mut block);
        let len = file.metadata()?.len();
        if n.is_multiple_of(2) && len < start_len + MAX_GROWTH {
            file.seek(SeekFrom::End(0))?;
        } else {
            let max = len.saturating_sub(BLOCK as u64).max(1);
            file.seek(SeekFrom::Start(rng.gen_range(0..max)))?;
        }
        file.write_all(&block)?;
        n += 1;
        writes.store(n, Ordering::Relaxed);
        if n == 1 {
            let _ = ready.send(());
        }
        // Pacing, not waiting for a condition: keep the disk and the 2 cores usable by the
        // backup we are disturbing.
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}
