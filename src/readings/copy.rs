//! Readings: the table copy's progress for the cockpit's Copy pane — the run's per-table
//! state file and the target's `pg_stat_progress_copy` — made into a [`CopyView`] by a poller
//! task and published on a watch channel (the latest reading wins).

use crate::pg::{self, Endpoint, SessionSettings};
use crate::runbooks::table_copy::state::{self, CopyProgress, PairState, Status};
use crate::ui::model::{CopyRunningView, CopyView};
use chrono::{DateTime, Utc};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;

/// How often the Copy pane is read.
pub const COPY_INTERVAL: Duration = Duration::from_secs(1);
/// The rate is taken over the readings of about this long.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// What the Copy pane's poller reads.
#[derive(Debug, Clone)]
pub struct CopyFeed {
    /// The target database, where `pg_stat_progress_copy` shows the COPYs running into it.
    pub target: Endpoint,
    /// The copy's state file (`<state dir>/table-copy/<env>.json`).
    pub state_path: PathBuf,
    /// `FROM → TO`, the state file's key for this copy.
    pub pair: String,
    /// `--confirm`: each table waits for the operator.
    pub confirm_each: bool,
}

/// One point of the rate: COPY bytes moved, and the plan's source bytes done, so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at: DateTime<Utc>,
    pub copied_bytes: f64,
    pub source_bytes_done: f64,
}

/// `schema.table` as the state names targets, from `relid::regclass::text` (unqualified when
/// the schema is on the search path; quoted when it needs quotes).
fn qualified(regclass: &str) -> String {
    let bare = regclass.replace('"', "");
    if bare.contains('.') {
        bare
    } else {
        format!("public.{bare}")
    }
}

/// The Copy pane's view of one reading: counts, the running COPYs matched to the parts
/// the state says are copying, the errored parts, and the rate and ETA from `history`
/// (oldest first; this reading's sample is appended).
pub fn copy_view(
    feed: &CopyFeed,
    pair: &PairState,
    progress: &[CopyProgress],
    at: DateTime<Utc>,
    history: &mut VecDeque<Sample>,
) -> CopyView {
    let stats = state::stats(pair);
    let mut view = CopyView {
        at,
        pair: feed.pair.clone(),
        pending: stats.pending,
        copying: stats.copying,
        verified: stats.migrated,
        errored: stats.errored,
        confirm_each: feed.confirm_each,
        ..CopyView::default()
    };
    let mut unmatched: Vec<&CopyProgress> = progress.iter().collect();
    let mut copied_bytes = 0f64;
    let mut source_done = 0f64;
    let mut source_total = 0f64;
    for (name, table) in &pair.tables {
        let parts = table.parts.len().max(1) as i64;
        let part_bytes = table.source_bytes.max(0) as f64 / parts as f64;
        source_total += table.source_bytes.max(0) as f64;
        for (part, p) in &table.parts {
            let item = if part == crate::runbooks::table_copy::plan::WHOLE {
                name.clone()
            } else {
                format!("{name}#{part}")
            };
            match p.status {
                Status::Copied | Status::Verified => {
                    copied_bytes += p.bytes as f64;
                    source_done += part_bytes;
                }
                Status::Errored => view
                    .errors
                    .push((item, p.error.clone().unwrap_or_default())),
                Status::Copying => {
                    let found = unmatched
                        .iter()
                        .position(|c| qualified(&c.table) == table.target);
                    if let Some(i) = found {
                        let c = unmatched.remove(i);
                        let estimate = (table.rows_estimate / parts).max(1);
                        copied_bytes += c.bytes_processed as f64;
                        source_done +=
                            part_bytes * (c.tuples_processed as f64 / estimate as f64).min(1.0);
                        view.running.push(CopyRunningView {
                            item,
                            rows: c.tuples_processed,
                            rows_estimate: estimate,
                            bytes: c.bytes_processed,
                        });
                    }
                }
                Status::Pending => {}
            }
        }
    }
    history.push_back(Sample {
        at,
        copied_bytes,
        source_bytes_done: source_done,
    });
    while history.len() > 2
        && history
            .front()
            .and_then(|first| (at - first.at).to_std().ok())
            .is_some_and(|age| age > RATE_WINDOW)
    {
        history.pop_front();
    }
    if let (Some(first), Some(last)) = (history.front(), history.back()) {
        let seconds = (last.at - first.at).num_milliseconds() as f64 / 1000.0;
        if seconds > 0.0 {
            let bytes = (last.copied_bytes - first.copied_bytes).max(0.0);
            view.bytes_per_s = Some(bytes / seconds);
            let source_rate = (last.source_bytes_done - first.source_bytes_done) / seconds;
            if source_rate > 0.0 {
                let remaining = (source_total - source_done).max(0.0);
                view.eta = Some(Duration::from_secs_f64(remaining / source_rate));
            }
        }
    }
    view
}

/// Read the state file and the target's progress every [`COPY_INTERVAL`] (a tick is skipped
/// while the previous reading runs) and publish each view.
pub fn spawn(feed: CopyFeed) -> watch::Receiver<Option<CopyView>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(COPY_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut client = None;
        let mut history = VecDeque::new();
        let mut last = CopyView::default();
        loop {
            tick.tick().await;
            if tx.is_closed() {
                return;
            }
            let pair = match tokio::fs::read(&feed.state_path).await {
                Ok(bytes) => serde_json::from_slice::<state::CopyState>(&bytes)
                    .map_err(|e| format!("{}: {e}", feed.state_path.display()))
                    .map(|s| s.pairs.get(&feed.pair).cloned().unwrap_or_default()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PairState::default()),
                Err(e) => Err(format!("{}: {e}", feed.state_path.display())),
            };
            if client.is_none() {
                client = pg::connect(&feed.target, SessionSettings::MONITOR)
                    .await
                    .ok();
            }
            let progress = match &client {
                Some(c) => state::progress(c).await.map_err(|e| pg::error_chain(&e)),
                None => Err(format!("{} does not answer", feed.target.label())),
            };
            if progress.is_err() {
                client = None;
            }
            let view = match (pair, progress) {
                (Ok(pair), Ok(progress)) => {
                    copy_view(&feed, &pair, &progress, Utc::now(), &mut history)
                }
                (Ok(pair), Err(e)) => CopyView {
                    error: Some(e),
                    ..copy_view(&feed, &pair, &[], Utc::now(), &mut history)
                },
                (Err(e), _) => CopyView {
                    error: Some(e),
                    ..last.clone()
                },
            };
            last = view.clone();
            if tx.send(Some(view)).is_err() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runbooks::table_copy::state::{PartState, TableState};
    use std::collections::BTreeMap;

    fn feed() -> CopyFeed {
        CopyFeed {
            target: Endpoint {
                address: "127.0.0.1".into(),
                port: 5432,
                user: "postgres".into(),
                dbname: "t".into(),
                tls: Default::default(),
            },
            state_path: PathBuf::from("/nonexistent"),
            pair: "a → b".into(),
            confirm_each: false,
        }
    }

    fn table(target: &str, bytes: i64, rows: i64, parts: &[(&str, PartState)]) -> TableState {
        TableState {
            target: target.into(),
            date: None,
            source_bytes: bytes,
            rows_estimate: rows,
            parts: parts
                .iter()
                .map(|(k, p)| (k.to_string(), p.clone()))
                .collect(),
        }
    }

    #[test]
    fn rate_and_eta_follow_the_copied_bytes_and_the_plan_sizes() {
        let part = |status, bytes| PartState {
            status,
            bytes,
            ..PartState::default()
        };
        let pair = PairState {
            tables: BTreeMap::from([
                (
                    "public.a".to_string(),
                    table(
                        "public.a",
                        1000,
                        100,
                        &[("all", part(Status::Verified, 800))],
                    ),
                ),
                (
                    "public.b".to_string(),
                    table("public.b", 1000, 100, &[("all", part(Status::Copying, 0))]),
                ),
                (
                    "public.c".to_string(),
                    table("public.c", 2000, 200, &[("all", part(Status::Pending, 0))]),
                ),
            ]),
        };
        let running = |tuples, bytes| {
            vec![CopyProgress {
                table: "b".into(),
                bytes_processed: bytes,
                bytes_total: 0,
                tuples_processed: tuples,
            }]
        };
        let t0 = Utc::now();
        let mut history = VecDeque::new();
        let first = copy_view(&feed(), &pair, &running(0, 0), t0, &mut history);
        assert_eq!(first.bytes_per_s, None);
        assert_eq!((first.pending, first.copying, first.verified), (1, 1, 1));
        let t1 = t0 + chrono::Duration::seconds(2);
        let second = copy_view(&feed(), &pair, &running(50, 400), t1, &mut history);
        assert_eq!(second.running.len(), 1);
        assert_eq!(second.running[0].item, "public.b");
        assert_eq!(second.running[0].rows_estimate, 100);
        // 400 bytes in 2 s; half of b (500 of the plan's 4000 bytes) in 2 s: 2500 left.
        assert_eq!(second.bytes_per_s, Some(200.0));
        assert_eq!(second.eta, Some(Duration::from_secs(10)));
    }
}
