//! The LSN gate: prove a standby (or logical target) has replayed everything its primary has
//! written, within a timeout, and report the proof through the [`Sink`]'s gate. Runbook effects
//! call it while traffic is paused, right before an irreversible switch.

use crate::executor::context::ExecContext;
use crate::executor::{Sink, StepError};
use crate::inventory::Node;
use crate::pg;
use crate::runbooks::shard_split::plan::PRIMARY_LSN_SQL;
use std::time::{Duration, Instant};

/// How often the gate reads both positions while it waits.
const POLL: Duration = Duration::from_millis(5);

/// The primary and the standby the gate compares, over their maintenance databases.
#[derive(Clone, Copy)]
pub struct Pair<'a> {
    pub primary: &'a Node,
    pub standby: &'a Node,
}

/// One gate reading: both LSNs and whether the standby had replayed the primary's.
#[derive(Debug, Clone)]
pub struct CatchUp {
    pub primary: String,
    /// The standby's replay LSN, `none` when it reports none.
    pub replayed: String,
    pub caught_up: bool,
}

/// The primary's current LSN, the standby's replay LSN, and whether the standby has replayed
/// at least the primary's current WAL.
pub async fn positions(
    ctx: &ExecContext,
    pair: Pair<'_>,
) -> Result<(String, Option<String>, bool), StepError> {
    let source = ctx
        .node_client(pair.primary, &pair.primary.maintenance_db)
        .await?;
    let primary: String = source
        .query_one(PRIMARY_LSN_SQL, &[])
        .await
        .map_err(|e| pg::error_chain(&e))?
        .get(0);
    let (replayed, caught_up) = replayed_to(ctx, pair.standby, &primary).await?;
    Ok((primary, replayed, caught_up))
}

/// `standby`'s replay LSN, and whether it is at or past `lsn`.
pub async fn replayed_to(
    ctx: &ExecContext,
    standby: &Node,
    lsn: &str,
) -> Result<(Option<String>, bool), StepError> {
    let row = ctx
        .node_client(standby, &standby.maintenance_db)
        .await?
        .query_one(
            "SELECT pg_last_wal_replay_lsn()::text, COALESCE(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
            &[&lsn],
        )
        .await
        .map_err(|e| pg::error_chain(&e))?;
    Ok((row.get(0), row.get(1)))
}

/// Poll until the standby's replay LSN reaches the primary's current LSN, or give up after
/// `timeout`. Background WAL on the primary (autovacuum, checkpoints) keeps moving its LSN
/// while traffic is paused, so a single reading is not a proof.
pub async fn await_catch_up(
    ctx: &ExecContext,
    pair: Pair<'_>,
    timeout: Duration,
) -> Result<CatchUp, StepError> {
    let deadline = Instant::now() + timeout;
    loop {
        let (primary, replayed, caught_up) = positions(ctx, pair).await?;
        let replayed = replayed.unwrap_or_else(|| "none".into());
        if caught_up || Instant::now() > deadline {
            return Ok(CatchUp {
                primary,
                replayed,
                caught_up,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The gate: the standby has replayed everything the primary wrote, within `timeout`. The
/// verdict goes to `sink` as a gate report either way; a refusal is
/// [`StepError::GateRefused`], naming `refused` (what is not done, e.g. `promotion refused`).
pub async fn gate(
    ctx: &ExecContext,
    pair: Pair<'_>,
    timeout: Duration,
    refused: &str,
    sink: &Sink,
) -> Result<(CatchUp, String), StepError> {
    let reading = await_catch_up(ctx, pair, timeout).await?;
    let (standby, primary) = (&pair.standby.name, &pair.primary.name);
    if !reading.caught_up {
        let detail = format!(
            "{standby} replay LSN {} is behind {primary} current LSN {} after {timeout:?}; {refused}",
            reading.replayed, reading.primary
        );
        sink.gate(detail.clone(), false);
        return Err(StepError::gate(detail));
    }
    let detail = format!(
        "{standby} replay LSN {} ≥ {primary} current LSN {}",
        reading.replayed, reading.primary
    );
    sink.gate(detail.clone(), true);
    Ok((reading, detail))
}
