//! The assembler: builds the trees in order as the walker's events and the workers' results
//! come back, and packs the tree blobs.

use super::*;

/// One directory being assembled.
pub(super) struct Open {
    node: Node,
    parent: Option<Id>,
    nodes: Vec<Node>,
}

pub(super) fn assemble(
    events: &Receiver<Event>,
    results: &Receiver<(u64, Vec<Option<Vec<DataId>>>)>,
    packer: &mut Packer,
    uploads: &Sender<Pack>,
    shared: &Shared,
    root_parent: Option<Id>,
) -> Result<(Id, SnapshotSummary), Failure> {
    let mut a =
        Assembler { summary: SnapshotSummary::default(), added: IdSet::default(), packer, uploads, shared };
    let mut arrived: HashMap<u64, Vec<Option<Vec<DataId>>>> = HashMap::new();
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Vec<Node> = Vec::new();
    for event in events {
        match event {
            Event::Enter { node, parent } => stack.push(Open { node, parent, nodes: Vec::new() }),
            Event::Ready { node, change } => {
                a.count_file(&node, change);
                stack.last_mut().map_or(&mut root, |o| &mut o.nodes).push(node);
            }
            Event::Pending { mut node, change, batch, idx } => {
                let outcome = loop {
                    if let Some(files) = arrived.get_mut(&batch) {
                        let outcome = files[idx].take();
                        if idx + 1 == files.len() {
                            arrived.remove(&batch);
                        }
                        break outcome;
                    }
                    match results.recv() {
                        Ok((no, files)) => {
                            arrived.insert(no, files);
                        }
                        Err(_) => return Err(a.stopped()),
                    }
                };
                if let Some(content) = outcome {
                    node.content = Some(content);
                    a.count_file(&node, change);
                    stack.last_mut().map_or(&mut root, |o| &mut o.nodes).push(node);
                }
            }
            Event::Leave => {
                let Some(open) = stack.pop() else { continue };
                let node = a.close(open)?;
                stack.last_mut().map_or(&mut root, |o| &mut o.nodes).push(node);
            }
        }
    }
    if shared.aborted() {
        return Err(a.stopped());
    }
    while let Some(open) = stack.pop() {
        let node = a.close(open)?;
        stack.last_mut().map_or(&mut root, |o| &mut o.nodes).push(node);
    }
    let root_id = a.save_tree(root, root_parent)?;
    match a.packer.finish() {
        Ok(Some(pack)) => a.uploads.send(pack).map_err(|_| a.stopped())?,
        Ok(None) => {}
        Err(e) => return Err(Failure::Other(e)),
    }
    Ok((root_id, a.summary))
}

pub(super) struct Assembler<'a> {
    summary: SnapshotSummary,
    added: IdSet,
    packer: &'a mut Packer,
    uploads: &'a Sender<Pack>,
    shared: &'a Shared<'a>,
}

impl Assembler<'_> {
    fn stopped(&self) -> Failure {
        Failure::Other("the backup stopped early (see the first error)".to_owned())
    }

    fn count_file(&mut self, node: &Node, change: Change) {
        let s = &mut self.summary;
        match change {
            Change::New => s.files_new += 1,
            Change::Changed => s.files_changed += 1,
            Change::Unmodified => s.files_unmodified += 1,
        }
        s.total_files_processed += 1;
        s.total_bytes_processed += node.meta.size;
    }

    fn close(&mut self, open: Open) -> Result<Node, Failure> {
        let Open { mut node, parent, nodes } = open;
        node.subtree = Some(TreeId::from(self.save_tree(nodes, parent)?));
        Ok(node)
    }

    /// Serialises and stores (if new) the tree of `nodes`; returns its id.
    fn save_tree(&mut self, mut nodes: Vec<Node>, parent: Option<Id>) -> Result<Id, Failure> {
        if !nodes.is_sorted_by(|a, b| a.name() <= b.name()) {
            nodes.sort_by(|a, b| a.name().cmp(&b.name()));
        }
        let tree = Tree { nodes };
        let (bytes, _) =
            tree.serialize().map_err(|e| Failure::Other(format!("a tree cannot be serialised: {e}")))?;
        let hash = sha256(&bytes);
        let id = Id::new(hash);
        let s = &mut self.summary;
        s.total_dirs_processed += 1;
        s.total_dirsize_processed += bytes.len() as u64;
        match parent {
            None => s.dirs_new += 1,
            Some(p) if p == id => s.dirs_unmodified += 1,
            Some(_) => s.dirs_changed += 1,
        }
        if !self.shared.index.has_tree(&id) && self.added.insert(id) {
            let (stored, full) = self.packer.add(hash, &bytes).map_err(Failure::Other)?;
            let stats = &self.shared.stats;
            stats.tree_blobs.fetch_add(1, Ordering::Relaxed);
            stats.trees_added.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            stats.trees_added_packed.fetch_add(stored, Ordering::Relaxed);
            if let Some(pack) = full {
                self.uploads.send(pack).map_err(|_| self.stopped())?;
            }
        }
        Ok(id)
    }
}
