//! The plan: one walk of the trees (parent-first) that creates directories, empty files, links
//! and special files and groups every file's blobs by pack, in rounds of bounded size.

use super::*;

/// A blob to write: where it is in its pack and where it goes.
pub(super) struct Target {
    pub(super) offset: u32,
    pub(super) length: u32,
    pub(super) uncompressed_length: u32,
    pub(super) file: u32,
    pub(super) file_offset: u64,
}

pub(super) struct PlannedFile {
    pub(super) path: Box<Path>,
    pub(super) meta: FileMeta,
    /// Blobs still to write; whoever writes the last one sets the metadata.
    pub(super) remaining: AtomicU32,
    /// More than one blob: the file was created (at its size) while planning.
    pub(super) multi: bool,
}

pub(super) struct Plan<'a> {
    pub(super) index: &'a Index,
    pub(super) be: &'a dyn WriteBackend,
    pub(super) key: &'a Key,
    pub(super) files: Vec<PlannedFile>,
    pub(super) by_pack: HashMap<u32, Vec<Target>>,
    pub(super) dirs: Vec<(PathBuf, FileMeta)>,
    /// Symlinks and special files: metadata set at the end.
    pub(super) links: Vec<(PathBuf, Kind, FileMeta)>,
    pub(super) hardlinks: Vec<(PathBuf, PathBuf)>,
    /// First path restored for each (device, inode) of a hard-linked file.
    pub(super) inodes: HashMap<(u64, u64), PathBuf>,
    pub(super) is_root: bool,
    pub(super) outcome: Outcome,
}

impl Plan<'_> {
    /// Plans the tree `id` into the directory `dir`, which exists; depth-first with an
    /// explicit stack (a hostile snapshot cannot exhaust the thread's stack).
    pub(super) fn tree(&mut self, trees: &TreeReader, id: Id, dir: &Path) -> Result<(), Failure> {
        let mut pending = vec![(id, dir.to_path_buf())];
        while let Some((id, dir)) = pending.pop() {
            let tree = trees.read(&id).map_err(|why| {
                Failure::Other(format!("the tree of {} cannot be read: {why}", dir.display()))
            })?;
            for node in tree.nodes {
                self.node(node, &dir, &mut pending)?;
            }
            if self.files.len() >= PLAN_FILES {
                self.write_content();
            }
        }
        Ok(())
    }

    /// The content phase for the files planned so far: workers take their packs in turn.
    pub(super) fn write_content(&mut self) {
        let files = std::mem::take(&mut self.files);
        let mut packs: Vec<(u32, Vec<Target>)> = std::mem::take(&mut self.by_pack).into_iter().collect();
        packs.sort_unstable_by_key(|(pack, _)| *pack);
        let content = Content {
            be: self.be,
            key: self.key,
            index: self.index,
            files: &files,
            packs: &packs,
            next: AtomicUsize::new(0),
            is_root: self.is_root,
            outcome: Mutex::new(Outcome::default()),
        };
        let workers = std::thread::available_parallelism().map_or(2, usize::from).clamp(1, 4) * 2;
        std::thread::scope(|s| {
            for _ in 0..workers.min(packs.len()) {
                s.spawn(|| content.work());
            }
        });
        let done = content.outcome.into_inner().unwrap_or_else(PoisonError::into_inner);
        self.outcome.files += done.files;
        self.outcome.bytes += done.bytes;
        self.outcome.errors.extend(done.errors);
        self.outcome.warnings.extend(done.warnings);
    }

    pub(super) fn node(
        &mut self,
        node: Node,
        dir: &Path,
        pending: &mut Vec<(Id, PathBuf)>,
    ) -> Result<(), Failure> {
        let name = node.name();
        check_name(&name)?;
        let path = dir.join(&*name);
        match &node.node_type {
            NodeType::Dir => {
                if let Err(e) = make_dir(&path) {
                    self.outcome.errors.push(format!("{}: cannot create the directory: {e}", path.display()));
                    return Ok(());
                }
                if let Some(subtree) = node.subtree {
                    pending.push((*subtree, path.clone()));
                }
                self.dirs.push((path, node.meta.into()));
            }
            NodeType::File => self.file(node, path),
            NodeType::Symlink { .. } => {
                let _ = fs::remove_file(&path);
                match std::os::unix::fs::symlink(node.node_type.to_link(), &path) {
                    Ok(()) => self.links.push((path, Kind::of(&node), node.meta.into())),
                    Err(e) => {
                        self.outcome.errors.push(format!("{}: cannot create the link: {e}", path.display()));
                    }
                }
            }
            NodeType::Fifo => {
                let _ = fs::remove_file(&path);
                match nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
                    Ok(()) => self.links.push((path, Kind::of(&node), node.meta.into())),
                    Err(e) => {
                        self.outcome.errors.push(format!("{}: cannot create the FIFO: {e}", path.display()));
                    }
                }
            }
            NodeType::Dev { device } | NodeType::Chardev { device } => {
                let kind = if matches!(node.node_type, NodeType::Dev { .. }) {
                    nix::sys::stat::SFlag::S_IFBLK
                } else {
                    nix::sys::stat::SFlag::S_IFCHR
                };
                if !self.is_root {
                    self.outcome
                        .warnings
                        .push(format!("{}: device node not restored (needs root)", path.display()));
                    return Ok(());
                }
                let _ = fs::remove_file(&path);
                let mode = nix::sys::stat::Mode::from_bits_truncate(0o600);
                match nix::sys::stat::mknod(&path, kind, mode, *device) {
                    Ok(()) => self.links.push((path, Kind::of(&node), node.meta.into())),
                    Err(e) => {
                        self.outcome
                            .errors
                            .push(format!("{}: cannot create the device: {e}", path.display()));
                    }
                }
            }
            // restic does not restore sockets either: a socket is only meaningful to the
            // process that listens on it.
            NodeType::Socket => {}
        }
        Ok(())
    }

    fn file(&mut self, mut node: Node, path: PathBuf) {
        if node.meta.links > 1 && node.meta.inode != 0 {
            let key = (node.meta.device_id, node.meta.inode);
            if let Some(first) = self.inodes.get(&key) {
                self.hardlinks.push((path, first.clone()));
                return;
            }
            self.inodes.insert(key, path.clone());
        }
        let content = node.content.take().unwrap_or_default();
        let mut targets = Vec::with_capacity(content.len());
        let mut offset = 0u64;
        for id in &content {
            let Some(loc) = self.index.data_location(id) else {
                self.outcome.errors.push(format!(
                    "{}: not restored, blob {} is missing from the repository (run `restic check`)",
                    path.display(),
                    id.to_hex().as_str()
                ));
                return;
            };
            targets.push((loc, offset));
            offset += u64::from(loc.plain_length());
        }
        let file_no = u32::try_from(self.files.len()).unwrap_or(u32::MAX);
        let multi = targets.len() > 1;
        if targets.len() != 1 {
            // Empty files and files of several blobs are created here; a single-blob file is
            // created by the worker that writes it.
            let _ = fs::remove_file(&path);
            let file = match File::create(&path).and_then(|f| f.set_len(offset).map(|()| f)) {
                Ok(file) => file,
                Err(e) => {
                    self.outcome.errors.push(format!("{}: cannot create the file: {e}", path.display()));
                    return;
                }
            };
            if targets.is_empty() {
                self.outcome.files += 1;
                set_file_metadata(&file, &path, &node.meta.into(), self.is_root, &mut self.outcome.warnings);
                return;
            }
        }
        for (loc, file_offset) in &targets {
            self.by_pack.entry(loc.pack).or_default().push(target(loc, file_no, *file_offset));
        }
        let remaining = AtomicU32::new(u32::try_from(targets.len()).unwrap_or(u32::MAX));
        self.files.push(PlannedFile {
            path: path.into_boxed_path(),
            meta: node.meta.into(),
            remaining,
            multi,
        });
    }
}

pub(super) fn target(loc: &Location, file: u32, file_offset: u64) -> Target {
    Target {
        offset: loc.offset,
        length: loc.length,
        uncompressed_length: loc.uncompressed_length,
        file,
        file_offset,
    }
}

/// Names come from the repository (authenticated by its key), but a damaged or hostile
/// snapshot must still not write outside the destination.
pub(super) fn check_name(name: &OsStr) -> Result<(), Failure> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') || bytes.contains(&0) {
        return Err(Failure::Other(format!(
            "the snapshot holds an invalid file name {:?}; refusing to restore it",
            name.to_string_lossy()
        )));
    }
    Ok(())
}

pub(super) fn make_dir(path: &Path) -> io::Result<()> {
    match fs::create_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if fs::symlink_metadata(path)?.is_dir() {
                Ok(())
            } else {
                fs::remove_file(path)?;
                fs::create_dir(path)
            }
        }
        other => other,
    }
}
