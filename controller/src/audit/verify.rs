//! Verification of the whole log: every event's sequence number, link to its predecessor and
//! link value (unkeyed before the migration's boundary, keyed after it), then every checkpoint
//! (in Postgres and in the file): signed by the audit key, present in both places, and still
//! matching the event it signed. The answer names the first problem by sequence number.

use std::collections::BTreeMap;

use futures::TryStreamExt as _;
use serde_json::Value;
use sqlx::PgPool;

use super::checkpoints::{self, Checkpoint, CheckpointFile};
use super::{AuditKeys, ChainRule, chain};
use crate::error::Result;

pub use cofre_api::audit::{Problem, Report};

fn event_problem(seq: i64, message: String) -> Problem {
    Problem { seq, kind: "event".into(), message }
}

fn checkpoint_problem(seq: i64, message: String) -> Problem {
    Problem { seq, kind: "checkpoint".into(), message }
}

type Row = (i64, chrono::DateTime<chrono::Utc>, String, String, String, String, Value, Vec<u8>, Vec<u8>);

/// Recomputes the chain and checks the checkpoints (those in `file` too).
pub async fn verify(pool: &PgPool, keys: &AuditKeys, file: Option<&CheckpointFile>) -> Result<Report> {
    let keyed_from_seq: i64 = sqlx::query_scalar("select keyed_from_seq from audit_chain_rules")
        .fetch_optional(pool)
        .await?
        .unwrap_or(1);
    let mut problems = Vec::new();

    // Checkpoints: both copies, each signed, each copy in the other place.
    let in_db = checkpoints::list(pool).await?;
    let in_file = match file.map(CheckpointFile::read) {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            problems.push(checkpoint_problem(0, e));
            Vec::new()
        }
        None => Vec::new(),
    };
    let mut all: BTreeMap<i64, Checkpoint> = BTreeMap::new();
    for (c, place) in in_db.iter().map(|c| (c, "database")).chain(in_file.iter().map(|c| (c, "file"))) {
        if !c.signed_by(keys.public_key()) {
            problems.push(checkpoint_problem(
                c.seq,
                format!("checkpoint {} (in the {place}) is not signed by the audit key", c.seq),
            ));
        }
        match all.get(&c.seq) {
            Some(other) if other.head_hash != c.head_hash || other.at != c.at => {
                problems.push(checkpoint_problem(
                    c.seq,
                    format!("checkpoint {} differs between the database and the file", c.seq),
                ));
            }
            _ => {
                all.insert(c.seq, c.clone());
            }
        }
    }
    for c in &in_file {
        if !in_db.iter().any(|d| d.seq == c.seq) {
            problems.push(checkpoint_problem(
                c.seq,
                format!("checkpoint {} is in the file but was removed from the database", c.seq),
            ));
        }
    }

    // The chain.
    let mut rows = sqlx::query_as::<_, Row>(
        "select seq, at, actor, action, target_type, target_id, details, prev_hash, hash from audit_events order by seq",
    )
    .fetch(pool);
    let (mut expected_seq, mut expected_prev, mut checked) = (1i64, vec![0u8; 32], 0i64);
    let mut broken = None;
    while let Some((seq, at, actor, action, target_type, target_id, details, prev, hash)) =
        rows.try_next().await?
    {
        if seq != expected_seq {
            broken = Some(event_problem(
                expected_seq,
                format!("event {expected_seq} is missing (the next one is {seq}): events were removed"),
            ));
            break;
        }
        if prev != expected_prev {
            broken = Some(event_problem(
                seq,
                format!("event {seq} does not link to event {}: the log was reordered or rewritten", seq - 1),
            ));
            break;
        }
        let rule = if seq >= keyed_from_seq { ChainRule::Keyed } else { ChainRule::Legacy };
        let event = chain::Event {
            seq,
            at,
            actor: &actor,
            action: &action,
            target_type: &target_type,
            target_id: &target_id,
            details: &details,
        };
        if rule.link(keys, &prev, &event)? != hash {
            broken = Some(event_problem(
                seq,
                format!("event {seq} was changed, or was not written by Cofre: its link does not verify"),
            ));
            break;
        }
        if let Some(c) = all.get(&seq)
            && c.head_hash != hash
        {
            problems.push(checkpoint_problem(seq, format!("checkpoint {seq} no longer matches event {seq}")));
        }
        checked += 1;
        expected_prev = hash;
        expected_seq += 1;
    }
    drop(rows);
    let head_seq = expected_seq - 1;
    match broken {
        Some(p) => problems.push(p),
        None => {
            for seq in all.range(head_seq + 1..).map(|(s, _)| *s) {
                problems.push(checkpoint_problem(
                    seq,
                    format!("checkpoint {seq} signed event {seq}, but the log ends at {head_seq}: events were removed"),
                ));
            }
        }
    }
    let problem = problems.into_iter().min_by_key(|p| p.seq);
    Ok(Report {
        ok: problem.is_none(),
        events_checked: checked,
        head_seq,
        keyed_from_seq,
        checkpoints_checked: all.len(),
        newest_checkpoint_seq: all.keys().next_back().copied(),
        checkpoint_file: file.map(|f| f.path().display().to_string()),
        problem,
    })
}
