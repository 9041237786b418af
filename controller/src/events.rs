//! Rare cross-replica events (a plan changed, a machine was revoked, a job was queued) over
//! Postgres LISTEN/NOTIFY, fanned out in-process on a broadcast channel. The hot path
//! (heartbeats, results) never uses this.

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::broadcast;
use uuid::Uuid;

pub const CHANNEL: &str = "cofre_events";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A machine's status changed (approved, revoked, ...): sessions re-check it.
    Machine { id: Uuid },
    /// Plans may have changed for these machines (None: possibly all).
    Plans { machines: Option<Vec<Uuid>> },
    /// Jobs were queued for a machine.
    Jobs { machine: Uuid },
    /// Repositories may need provisioning.
    Provision,
    /// Stores' access lists may have changed (quotas) or a store was revoked.
    Stores,
    /// Maintenance jobs were queued: workers look now.
    Maintenance,
    /// The listener reconnected and may have missed events: re-check everything.
    Resync,
    /// This process is shutting down (local only, never sent through Postgres): sessions
    /// end so the servers' graceful shutdown does not wait for agents forever.
    Shutdown,
}

/// A NOTIFY payload must stay under 8000 bytes: past this many machines, say "all".
const MAX_NAMED_MACHINES: usize = 100;

impl Event {
    /// Plans changed for these machines; "possibly all" when there are too many to name.
    pub fn plans_for(machines: Vec<Uuid>) -> Self {
        if machines.len() > MAX_NAMED_MACHINES {
            Event::Plans { machines: None }
        } else {
            Event::Plans { machines: Some(machines) }
        }
    }

    /// Plans of possibly every machine changed.
    pub fn plans_for_all() -> Self {
        Event::Plans { machines: None }
    }

    pub fn concerns(&self, machine: Uuid) -> bool {
        match self {
            Event::Machine { id } => *id == machine,
            Event::Plans { machines } => machines.as_ref().is_none_or(|m| m.contains(&machine)),
            Event::Jobs { machine: m } => *m == machine,
            Event::Provision | Event::Stores | Event::Maintenance => false,
            Event::Resync | Event::Shutdown => true,
        }
    }
}

/// Queues a notification; Postgres delivers it only if the transaction commits.
pub async fn notify(tx: &mut Transaction<'_, Postgres>, event: &Event) -> crate::error::Result<()> {
    let payload = serde_json::to_string(event).map_err(crate::error::Error::internal)?;
    sqlx::query("select pg_notify($1, $2)").bind(CHANNEL).bind(payload).execute(&mut **tx).await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
}

impl Events {
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Events without a database listener (for tests that do not need cross-process events).
    pub fn local() -> Self {
        Self { tx: broadcast::channel(1024).0 }
    }

    /// Tells this process's sessions to end.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Event::Shutdown);
    }

    /// Starts the listener task. Reconnects forever; after a reconnect it broadcasts
    /// `Resync`, because notifications sent while it was away are lost.
    pub async fn start(pool: PgPool) -> anyhow::Result<Self> {
        let (tx, _) = broadcast::channel(1024);
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(CHANNEL).await?;
        let out = tx.clone();
        tokio::spawn(async move {
            let mut reconnecting = false;
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) => {
                        if reconnecting {
                            reconnecting = false;
                            let _ = out.send(Event::Resync);
                        }
                        match serde_json::from_str::<Event>(n.payload()) {
                            Ok(ev) => {
                                let _ = out.send(ev);
                            }
                            Err(e) => tracing::warn!(error = %e, "ignoring malformed notification"),
                        }
                    }
                    Ok(None) => {
                        // The connection was lost; try_recv reconnects on the next call.
                        tracing::warn!("lost the database notification connection; reconnecting");
                        reconnecting = true;
                        let _ = out.send(Event::Resync);
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "notification listener error; retrying");
                        reconnecting = true;
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(Self { tx })
    }
}
