//! Inventory following, the start of the flow seen again: a task re-reads the inventory file
//! every few seconds and publishes each new valid version on a `watch`, so the pollers follow
//! a step that rewrote it (the shard split's re-route adds a partition) without a restart.

use crate::inventory::{self, Inventory};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the file is re-read.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(2);

/// Publishes `initial`, then every version of the file at `path` that differs from the last
/// published one, passes the inventory checks and names the same environment. Unreadable or
/// invalid versions are logged and skipped (a half-written file is read again next time).
/// The task ends when every receiver is gone. Must be called inside a tokio runtime.
pub fn follow_file(
    path: PathBuf,
    initial: Arc<Inventory>,
    every: Duration,
) -> watch::Receiver<Arc<Inventory>> {
    let (tx, rx) = watch::channel(initial);
    tokio::spawn(async move {
        let label = path.display().to_string();
        let mut last_bytes: Option<Vec<u8>> = None;
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = tx.closed() => return,
            }
            let bytes = match tokio::fs::read(&path).await {
                Ok(bytes) => bytes,
                Err(error) => {
                    tracing::warn!(target: "cutover::inventory", inventory = %label, %error, "cannot re-read the inventory");
                    continue;
                }
            };
            if last_bytes.as_ref() == Some(&bytes) {
                continue;
            }
            let parsed = inventory::parse_bytes(&bytes, &label);
            last_bytes = Some(bytes);
            match parsed {
                Ok(new) if new.environment != tx.borrow().environment => {
                    tracing::warn!(target: "cutover::inventory", inventory = %label, environment = %new.environment, "the inventory now names another environment; still showing the first one");
                }
                Ok(new) => {
                    tx.send_if_modified(|current| {
                        let changed = **current != new;
                        if changed {
                            tracing::info!(target: "cutover::inventory", inventory = %label, "inventory changed; pollers follow it");
                            *current = Arc::new(new);
                        }
                        changed
                    });
                }
                Err(error) => {
                    tracing::warn!(target: "cutover::inventory", inventory = %label, %error, "the rewritten inventory is invalid; pollers keep the last valid one");
                }
            }
        }
    });
    rx
}
