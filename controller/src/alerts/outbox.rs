//! The alert outbox, run by every replica each second:
//! 1. **route**: alerts nobody routed yet get one delivery row per channel that takes them
//!    (`alert_routing` is written once per alert, so only one replica routes it);
//! 2. **deliver**: due deliveries are claimed with a lease (`FOR UPDATE SKIP LOCKED`), sent,
//!    then marked sent, or rescheduled with exponential backoff. Nothing is ever dropped.
//!
//! Delivery is at least once: a replica that dies between sending and marking leaves the lease
//! to expire, and another sends again. Receivers de-duplicate by the alert id (header
//! `X-Cofre-Alert-Id`, the e-mail's Message-ID).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cofre_api::alerts::{Alert, AlertRecord, Delivery};
use sqlx::PgPool;
use uuid::Uuid;

use super::channels::Channel;
use crate::config::AlertSettings;
use crate::error::{Error, Result};
use crate::state::AppState;

/// Deliveries one replica claims at a time.
const BATCH: i64 = 16;

/// Turns unrouted alerts into deliveries for `channels`. Returns the number routed.
pub async fn route_new(pool: &PgPool, channels: &[Channel], me: &str) -> Result<usize> {
    // A replica without channels leaves alerts for one that has them.
    if channels.is_empty() {
        return Ok(0);
    }
    let pending: Vec<(Uuid, serde_json::Value)> = sqlx::query_as(
        "select a.id, a.payload from alerts a
         where a.at > now() - interval '30 days'
           and not exists (select 1 from alert_routing r where r.alert_id = a.id)
         order by a.at limit 200",
    )
    .fetch_all(pool)
    .await?;
    let mut routed = 0;
    for (id, payload) in pending {
        let alert: Alert = serde_json::from_value(payload).map_err(Error::internal)?;
        let mut tx = pool.begin().await?;
        let mine: Option<Uuid> = sqlx::query_scalar(
            "insert into alert_routing (alert_id, routed_by) values ($1, $2) on conflict do nothing returning alert_id",
        )
        .bind(id)
        .bind(me)
        .fetch_optional(&mut *tx)
        .await?;
        if mine.is_none() {
            continue;
        }
        for c in channels.iter().filter(|c| c.takes(&alert)) {
            sqlx::query(
                "insert into alert_deliveries (alert_id, channel, state, next_attempt_at)
                 values ($1, $2, 'pending', now()) on conflict do nothing",
            )
            .bind(id)
            .bind(&c.settings.name)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        routed += 1;
    }
    Ok(routed)
}

/// The wait before attempt `attempts + 1`.
fn backoff(s: &AlertSettings, attempts: i32) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1)).unwrap_or(0).min(20);
    Duration::from_secs(s.retry_initial_seconds.saturating_mul(1 << exp).min(s.retry_max_seconds))
}

/// Claims, sends and marks due deliveries for this replica's channels. Returns how many were
/// attempted.
pub async fn deliver_due(pool: &PgPool, channels: &[Channel], s: &AlertSettings, me: &str) -> Result<usize> {
    let names: Vec<String> = channels.iter().map(|c| c.settings.name.clone()).collect();
    if names.is_empty() {
        return Ok(0);
    }
    let lease = i64::try_from(s.send_timeout_seconds).unwrap_or(60) + 30;
    let claimed: Vec<(Uuid, String, i32, serde_json::Value)> = sqlx::query_as(
        "with due as (
             select alert_id, channel from alert_deliveries
             where state = 'pending' and next_attempt_at <= now()
               and (claimed_until is null or claimed_until < now()) and channel = any($3)
             order by next_attempt_at limit $4 for update skip locked)
         update alert_deliveries d set claimed_by = $1, claimed_until = now() + make_interval(secs => $2),
                attempts = d.attempts + 1
         from due, alerts a
         where d.alert_id = due.alert_id and d.channel = due.channel and a.id = d.alert_id
         returning d.alert_id, d.channel, d.attempts, a.payload",
    )
    .bind(me)
    .bind(lease as f64)
    .bind(&names)
    .bind(BATCH)
    .fetch_all(pool)
    .await?;
    let sends = claimed.iter().map(|(id, channel, attempts, payload)| async move {
        let result = match (
            serde_json::from_value::<Alert>(payload.clone()),
            channels.iter().find(|c| c.settings.name == *channel),
        ) {
            (Ok(alert), Some(c)) => c.send(&alert, *attempts).await,
            (Err(e), _) => Err(format!("unreadable alert: {e}")),
            (_, None) => Err("channel no longer configured".into()),
        };
        (*id, channel.clone(), *attempts, result)
    });
    let results = futures::future::join_all(sends).await;
    for (id, channel, attempts, result) in &results {
        match result {
            Ok(()) => {
                sqlx::query(
                    "update alert_deliveries set state = 'sent', sent_at = now(), last_error = null,
                         claimed_by = null, claimed_until = null
                     where alert_id = $1 and channel = $2 and claimed_by = $3",
                )
                .bind(id)
                .bind(channel)
                .bind(me)
                .execute(pool)
                .await?;
            }
            Err(e) => {
                let wait = backoff(s, *attempts);
                tracing::warn!(alert = %id, channel, attempts, "alert delivery failed, retrying in {wait:?}: {e}");
                sqlx::query(
                    "update alert_deliveries set next_attempt_at = now() + make_interval(secs => $4), last_error = $5,
                         claimed_by = null, claimed_until = null
                     where alert_id = $1 and channel = $2 and claimed_by = $3",
                )
                .bind(id)
                .bind(channel)
                .bind(me)
                .bind(wait.as_secs_f64())
                .bind(e.chars().take(1000).collect::<String>())
                .execute(pool)
                .await?;
            }
        }
    }
    Ok(results.len())
}

/// Alerts raised since `since` (all when None) about `group`'s machines (None: all), newest
/// first, with their deliveries.
pub async fn list(
    pool: &PgPool,
    since: Option<DateTime<Utc>>,
    group: Option<Uuid>,
    limit: i64,
) -> Result<Vec<AlertRecord>> {
    let alerts: Vec<(Uuid, serde_json::Value)> = sqlx::query_as(
        "select id, payload from alerts where ($1::timestamptz is null or at >= $1) and ($3::uuid is null or group_id = $3)
         order by at desc, id desc limit $2",
    )
    .bind(since)
    .bind(limit)
    .bind(group)
    .fetch_all(pool)
    .await?;
    let ids: Vec<Uuid> = alerts.iter().map(|a| a.0).collect();
    type D = (Uuid, String, String, i32, DateTime<Utc>, Option<String>, Option<DateTime<Utc>>);
    let deliveries: Vec<D> = sqlx::query_as(
        "select alert_id, channel, state, attempts, next_attempt_at, last_error, sent_at from alert_deliveries
         where alert_id = any($1) order by channel",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    alerts
        .into_iter()
        .map(|(id, payload)| {
            let alert: Alert = serde_json::from_value(payload).map_err(Error::internal)?;
            let deliveries = deliveries
                .iter()
                .filter(|d| d.0 == id)
                .map(|d| Delivery {
                    channel: d.1.clone(),
                    state: d.2.clone(),
                    attempts: d.3,
                    next_attempt_at: d.4,
                    last_error: d.5.clone(),
                    sent_at: d.6,
                })
                .collect();
            Ok(AlertRecord { alert, deliveries })
        })
        .collect()
}

/// Routes and delivers every second on this replica.
///
/// # Errors
/// A channel that cannot be built (unreadable CA file).
pub fn spawn(st: &AppState, me: String) -> anyhow::Result<()> {
    let s = st.settings.alerts.clone();
    let timeout = Duration::from_secs(s.send_timeout_seconds);
    let channels: Arc<Vec<Channel>> =
        Arc::new(s.channels.iter().map(|c| Channel::build(c, timeout)).collect::<anyhow::Result<_>>()?);
    let pool = st.pool.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = route_new(&pool, &channels, &me).await {
                tracing::warn!("routing alerts: {e}");
            }
            if let Err(e) = deliver_due(&pool, &channels, &s, &me).await {
                tracing::warn!("delivering alerts: {e}");
            }
        }
    });
    Ok(())
}
