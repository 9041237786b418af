//! The walker: walks the source in restic's order, compares each entry with the parent
//! snapshot (unchanged files keep its content without being read), sends new and changed files
//! to the workers in batches and every node, in order, to the assembler.

use super::*;

/// How a file or directory compares with the parent snapshot.
#[derive(Clone, Copy)]
pub(super) enum Change {
    New,
    Changed,
    Unmodified,
}

pub(super) enum Event {
    /// A directory starts; its parent snapshot's tree id, if it had one there.
    Enter {
        node: Node,
        parent: Option<Id>,
    },
    /// A node whose content is known.
    Ready {
        node: Node,
        change: Change,
    },
    /// A file being read by a worker: result `idx` of batch `batch`.
    Pending {
        node: Node,
        change: Change,
        batch: u64,
        idx: usize,
    },
    Leave,
}

/// A directory of the walk and the parent snapshot's tree for it.
pub(super) struct Frame {
    path: PathBuf,
    parent: Option<Tree>,
    sorted: bool,
}

impl Frame {
    pub(super) fn new(path: PathBuf, parent: Option<Tree>) -> Self {
        let sorted = parent.as_ref().is_none_or(|t| t.nodes.is_sorted_by(|a, b| a.name() <= b.name()));
        Self { path, parent, sorted }
    }

    fn parent_node(&self, name: &OsStr) -> Option<&Node> {
        let nodes = &self.parent.as_ref()?.nodes;
        if self.sorted {
            nodes.binary_search_by(|n| AsRef::<OsStr>::as_ref(&n.name()).cmp(name)).ok().map(|i| &nodes[i])
        } else {
            nodes.iter().find(|n| n.name() == name)
        }
    }
}

pub(super) struct Walker<'a> {
    pub(super) stack: Vec<Frame>,
    pub(super) batch: Vec<(WatchedOpen, u64)>,
    pub(super) batch_bytes: u64,
    pub(super) batch_no: u64,
    pub(super) jobs: Sender<Batch>,
    pub(super) events: Sender<Event>,
    pub(super) trees: &'a TreeReader,
    pub(super) warnings: &'a Warnings,
    pub(super) shared: &'a Shared<'a>,
}

impl Walker<'_> {
    pub(super) fn walk(&mut self, source: &WatchedSource) {
        for entry in source.entries() {
            if self.shared.aborted() {
                return;
            }
            // Walk errors are already warnings (source.rs).
            let Ok(ReadSourceEntry { path, node, open }) = entry else { continue };
            let dir = if node.is_dir() {
                path.clone()
            } else {
                path.parent().map_or_else(PathBuf::new, Path::to_path_buf)
            };
            while self.stack.len() > 1 && !dir.starts_with(&self.top().path) {
                self.stack.pop();
                self.send(Event::Leave);
            }
            let missing: Vec<OsString> = dir
                .strip_prefix(&self.top().path)
                .map(|rest| {
                    rest.components()
                        .filter_map(|c| match c {
                            Component::Normal(name) => Some(name.to_owned()),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mut dir_node = node.is_dir().then_some(node.clone());
            let count = missing.len();
            for (i, name) in missing.into_iter().enumerate() {
                let node = match dir_node.take() {
                    Some(node) if i + 1 == count => node,
                    other => {
                        dir_node = other;
                        // As restic and rustic do for directories the walk did not describe.
                        let meta = Metadata { mode: Some(0o755), ..Metadata::default() };
                        Node::new_node(&name, NodeType::Dir, meta)
                    }
                };
                self.enter(&name, node);
            }
            if node.is_dir() {
                continue;
            }
            self.file(node, open);
        }
    }

    fn top(&self) -> &Frame {
        self.stack.last().expect("the root frame is never popped")
    }

    fn enter(&mut self, name: &OsStr, node: Node) {
        let subtree = self.top().parent_node(name).and_then(|p| p.subtree).map(|id| *id);
        let parent_tree = subtree.and_then(|id| match self.trees.read(&id) {
            Ok(tree) => Some(tree),
            Err(why) => {
                self.warnings.push(format!(
                    "{}: its tree in the parent snapshot cannot be read ({why}); its files are read again",
                    self.top().path.join(name).display()
                ));
                None
            }
        });
        let path = self.top().path.join(name);
        self.send(Event::Enter { node, parent: subtree });
        self.stack.push(Frame::new(path, parent_tree));
    }

    fn file(&mut self, mut node: Node, open: Option<WatchedOpen>) {
        let name = node.name().into_owned();
        let size = node.meta.size;
        let progress = self.shared.progress;
        let change = match self.top().parent_node(&name) {
            None => Change::New,
            Some(p) if unchanged(p, &node) && self.content_known(p) => {
                node.content.clone_from(&p.content);
                Change::Unmodified
            }
            Some(_) => Change::Changed,
        };
        let open = match (node.is_file(), change, open) {
            (true, Change::New | Change::Changed, Some(open)) if size > 0 => open,
            (true, Change::New | Change::Changed, _) => {
                progress.file_done(size);
                node.content = Some(Vec::new());
                return self.send(Event::Ready { node, change });
            }
            // Unchanged files, links and special files: counted as the snapshot's summary does.
            _ => {
                progress.file_done(size);
                return self.send(Event::Ready { node, change });
            }
        };
        let idx = self.batch.len();
        self.batch.push((open, size));
        self.batch_bytes += size;
        self.send(Event::Pending { node, change, batch: self.batch_no, idx });
        if self.batch.len() >= BATCH_FILES || self.batch_bytes >= BATCH_BYTES {
            self.flush();
        }
    }

    /// An unchanged file's content can be reused only if the repository still has it.
    fn content_known(&self, parent: &Node) -> bool {
        parent.content.iter().flatten().all(|id| self.shared.index.has_data(id))
    }

    /// Sends an event; before waiting for room, hands the open batch to the workers (the
    /// assembler may be waiting for it).
    fn send(&mut self, event: Event) {
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(event)) => {
                self.flush();
                let _ = self.events.send(event);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    pub(super) fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let files = std::mem::take(&mut self.batch);
        let _ = self.jobs.send(Batch { no: self.batch_no, files });
        self.batch_no += 1;
        self.batch_bytes = 0;
    }
}

/// restic's and rustic's change detection: same type, size, mtime, ctime and inode.
pub(super) fn unchanged(parent: &Node, node: &Node) -> bool {
    let (p, m) = (&parent.meta, &node.meta);
    parent.node_type == node.node_type
        && p.size == m.size
        && p.mtime == m.mtime
        && p.ctime.zip(m.ctime).is_none_or(|(a, b)| a == b)
        && (p.inode == 0 || m.inode == 0 || p.inode == m.inode)
}
