//! The inventory as the controller receives it: each repository as a protobuf message, in
//! reports bounded in bytes and in repositories. A repository whose snapshot ids do not fit in
//! one report (a busy one with 100,000 snapshots, or 250,000 objects planted under
//! `snapshots/`) is split into parts the controller appends, so no report ever reaches the
//! controller's message limit and none is refused for its size.

use cofre_proto::store::v1 as pb;
use prost::Message;

use crate::inventory::RepoInventory;

/// Encoded bytes per report: far below the controller's 16 MiB decoding limit.
pub(crate) const MAX_REPORT_BYTES: usize = 1024 * 1024;
/// Repositories per report (the controller refuses more than 1,000).
pub(crate) const MAX_REPORT_REPOSITORIES: usize = 200;

pub(crate) fn to_pb(r: &RepoInventory) -> pb::RepositoryInventory {
    pb::RepositoryInventory {
        path: r.repository.clone(),
        size_bytes: r.total_bytes,
        data_objects: r.objects.data,
        index_objects: r.objects.index,
        snapshot_objects: r.objects.snapshots,
        key_objects: r.objects.keys,
        lock_objects: r.objects.locks,
        last_snapshot_at: r.newest_snapshot_at.map(|t| prost_types::Timestamp {
            seconds: t.timestamp(),
            nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
        }),
        snapshot_ids: r.snapshot_ids.clone(),
        has_config: r.has_config,
        more_snapshot_ids: false,
        continues: false,
    }
}

/// Cuts repositories into reports of at most `max_bytes` (encoded, including the per-item
/// framing) and `max_repos` each; a repository too big for one report becomes several parts.
pub(crate) fn batches(
    repos: Vec<pb::RepositoryInventory>,
    max_bytes: usize,
    max_repos: usize,
) -> Vec<Vec<pb::RepositoryInventory>> {
    // Room for a report's own framing and the flags.
    let budget = max_bytes.saturating_sub(64).max(1024);
    let mut out: Vec<Vec<pb::RepositoryInventory>> = Vec::new();
    let mut current: Vec<pb::RepositoryInventory> = Vec::new();
    let mut used = 0;
    let mut flush = |current: &mut Vec<pb::RepositoryInventory>, used: &mut usize| {
        if !current.is_empty() {
            out.push(std::mem::take(current));
        }
        *used = 0;
    };
    for repo in repos {
        for part in split(repo, budget) {
            let size = framed(&part);
            if !current.is_empty() && (used + size > budget || current.len() >= max_repos) {
                flush(&mut current, &mut used);
            }
            used += size;
            current.push(part);
        }
    }
    flush(&mut current, &mut used);
    out
}

/// The encoded size of one repository inside a report.
fn framed(r: &pb::RepositoryInventory) -> usize {
    let len = r.encoded_len();
    len + prost::length_delimiter_len(len) + 1
}

/// One repository as parts that each fit `budget` bytes.
fn split(mut repo: pb::RepositoryInventory, budget: usize) -> Vec<pb::RepositoryInventory> {
    if framed(&repo) <= budget {
        return vec![repo];
    }
    let ids = std::mem::take(&mut repo.snapshot_ids);
    let head = framed(&repo) + 16;
    let mut parts = Vec::new();
    let mut chunk: Vec<String> = Vec::new();
    let mut used = head;
    for id in ids {
        let n = id.len() + prost::length_delimiter_len(id.len()) + 1;
        if !chunk.is_empty() && used + n > budget {
            parts.push(std::mem::take(&mut chunk));
            used = head;
        }
        used += n;
        chunk.push(id);
    }
    parts.push(chunk);
    let count = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, ids)| {
            let mut part = if i == 0 {
                repo.clone()
            } else {
                // Later parts only carry ids; the first part's fields stand.
                pb::RepositoryInventory { path: repo.path.clone(), continues: true, ..Default::default() }
            };
            part.snapshot_ids = ids;
            part.more_snapshot_ids = i + 1 < count;
            part
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(path: &str, ids: usize) -> pb::RepositoryInventory {
        pb::RepositoryInventory {
            path: path.into(),
            snapshot_objects: ids as u64,
            snapshot_ids: (0..ids).map(|i| format!("{i:064x}")).collect(),
            ..Default::default()
        }
    }

    fn report_len(batch: &[pb::RepositoryInventory]) -> usize {
        pb::InventoryReport { repositories: batch.to_vec(), full_sync_end: true }.encoded_len()
    }

    #[test]
    fn a_quarter_million_snapshot_ids_travel_in_bounded_parts_and_come_back_whole() {
        let batches = batches(
            vec![repo("small", 3), repo("planted", 250_000), repo("after", 1)],
            MAX_REPORT_BYTES,
            200,
        );
        assert!(batches.len() > 10, "{}", batches.len());
        for b in &batches {
            assert!(report_len(b) <= MAX_REPORT_BYTES, "{} bytes", report_len(b));
        }
        // What the controller reassembles.
        let mut got: Vec<(String, Vec<String>)> = Vec::new();
        let mut open: Option<String> = None;
        for r in batches.into_iter().flatten() {
            if r.continues {
                assert_eq!(open.as_deref(), Some(r.path.as_str()), "parts follow each other");
                got.last_mut().unwrap().1.extend(r.snapshot_ids.clone());
            } else {
                assert!(open.is_none(), "a new repository only after the last part");
                got.push((r.path.clone(), r.snapshot_ids.clone()));
            }
            open = r.more_snapshot_ids.then(|| r.path.clone());
        }
        assert!(open.is_none());
        let sizes: Vec<(&str, usize)> = got.iter().map(|(p, ids)| (p.as_str(), ids.len())).collect();
        assert_eq!(sizes, vec![("small", 3), ("planted", 250_000), ("after", 1)]);
        assert_eq!(got[1].1[249_999], format!("{:064x}", 249_999));
    }

    #[test]
    fn many_small_repositories_respect_the_repository_cap() {
        let repos: Vec<_> = (0..1000).map(|i| repo(&format!("r{i}"), 0)).collect();
        let b = batches(repos, MAX_REPORT_BYTES, 200);
        assert_eq!(b.len(), 5);
        assert!(b.iter().all(|x| x.len() <= 200));
        assert!(batches(Vec::new(), MAX_REPORT_BYTES, 200).is_empty());
    }
}
