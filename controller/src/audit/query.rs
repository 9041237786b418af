//! Reading the audit log: filters by actor, action, target and time, newest first, in pages
//! whose cursor is the last sequence number shown.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::PgPool;

use crate::error::{Error, Result};

/// What to read. `actor` matches a whole actor (`user:<id>:<name>`) or its leading parts
/// (`user:<id>`, `machine`); `action` a whole action (`machine.revoke`) or its prefix up to a
/// dot (`machine`).
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// The cursor of the previous page.
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

pub use cofre_api::audit::{Event, EventPage as Page};

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

pub async fn list(pool: &PgPool, f: &Filter) -> Result<Page> {
    let limit = f.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(Error::field("limit", format!("between 1 and {MAX_LIMIT}")));
    }
    let before = match f.cursor.as_deref() {
        None => i64::MAX,
        Some(c) => c
            .parse::<i64>()
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| Error::field("cursor", "not a cursor this API gave"))?,
    };
    type Row = (i64, DateTime<Utc>, String, String, String, String, serde_json::Value);
    let rows: Vec<Row> = sqlx::query_as(
        "select seq, at, actor, action, target_type, target_id, details from audit_events
         where seq < $1
           and ($2::text is null or actor = $2 or starts_with(actor, $2 || ':'))
           and ($3::text is null or action = $3 or starts_with(action, $3 || '.'))
           and ($4::text is null or target_type = $4)
           and ($5::text is null or target_id = $5)
           and ($6::timestamptz is null or at >= $6)
           and ($7::timestamptz is null or at < $7)
         order by seq desc limit $8",
    )
    .bind(before)
    .bind(&f.actor)
    .bind(&f.action)
    .bind(&f.target_type)
    .bind(&f.target_id)
    .bind(f.from)
    .bind(f.to)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    let items: Vec<Event> = rows
        .into_iter()
        .map(|(seq, at, actor, action, target_type, target_id, details)| Event {
            seq,
            at,
            actor,
            action,
            target_type,
            target_id,
            details,
        })
        .collect();
    let next_cursor =
        (items.len() == limit as usize).then(|| items.last().map(|e| e.seq.to_string())).flatten();
    Ok(Page { items, next_cursor })
}
