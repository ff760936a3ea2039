//! The tool's own objects for a logical move, on the source (canary table, DDL capture: an event
//! trigger that emits a `cutover.ddl` logical message and records the DDL) and on the target
//! (progress table, canary table), and the proofs built on them: the canary seen through the
//! target, and the refusal of a native subscription into Citus.

use super::decode::{Lsn, DDL_MESSAGE_PREFIX};
use super::ApplyError;
use crate::sql::{quote_ident, quote_literal};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// The progress table on the target: one row per origin (slot), written in the same target
/// transaction as the changes it counts.
pub const PROGRESS_TABLE: &str = "cutover_apply_progress";
/// The canary table, on source and target (distributed by `id` on Citus), part of the move.
pub const CANARY_TABLE: &str = "cutover_canary";
/// The source's record of every DDL the event trigger saw.
pub const DDL_TABLE: &str = "cutover_ddl_events";
/// The event trigger function and the two triggers on the source.
pub const DDL_FUNCTION: &str = "cutover_ddl_capture";
pub const DDL_TRIGGER_END: &str = "cutover_ddl_end";
pub const DDL_TRIGGER_DROP: &str = "cutover_ddl_drop";

/// How the progress table lives on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// Plain PostgreSQL: an ordinary table.
    Plain,
    /// A Citus coordinator: the progress table is a reference table. A batch that writes it
    /// then always writes every worker, so Citus commits it with two-phase commit and the
    /// progress row commits or aborts with the batch's rows on every worker. (A coordinator-
    /// local table can be written in the same transaction, but a batch touching one worker
    /// commits there first, one-phase, and a coordinator crash before its local commit would
    /// keep the rows without their progress: re-applied, duplicated.)
    Citus,
}

fn target_err(what: &str) -> impl Fn(tokio_postgres::Error) -> ApplyError + '_ {
    move |e| ApplyError::Target {
        what: what.to_string(),
        error: crate::pg::error_chain(&e),
    }
}

fn source_err(what: &str) -> impl Fn(tokio_postgres::Error) -> ApplyError + '_ {
    move |e| ApplyError::Source {
        what: what.to_string(),
        error: crate::pg::error_chain(&e),
    }
}

/// Whether `client`'s database has the citus extension (a coordinator, for the move).
pub async fn is_citus(client: &Client) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')",
            &[],
        )
        .await?
        .get(0))
}

/// Whether `table` (unqualified, in `public`) is already a Citus table.
async fn is_citus_table(client: &Client, table: &str) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = to_regclass($1))",
            &[&format!("public.{}", quote_ident(table))],
        )
        .await?
        .get(0))
}

fn canary_ddl() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS public.{} (id uuid PRIMARY KEY, written_at timestamptz NOT NULL DEFAULT now())",
        quote_ident(CANARY_TABLE)
    )
}

/// Create the progress and canary tables on the target (idempotent). On Citus the progress table
/// becomes a reference table and the canary table is distributed by `id`, so that a canary is
/// seen only when it went through Citus, never when it sits in the coordinator's shell table.
pub async fn install_target(target: &Client) -> Result<TargetKind, ApplyError> {
    let what = "creating the apply progress and canary tables";
    let err = target_err(what);
    target
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS public.{} (origin text PRIMARY KEY, applied_lsn pg_lsn NOT NULL, \
             changes bigint NOT NULL DEFAULT 0, applied_at timestamptz NOT NULL DEFAULT now(), \
             source_committed_at timestamptz, last_error text, last_error_at timestamptz); {}",
            quote_ident(PROGRESS_TABLE),
            canary_ddl()
        ))
        .await
        .map_err(&err)?;
    if !is_citus(target).await.map_err(&err)? {
        return Ok(TargetKind::Plain);
    }
    if !is_citus_table(target, PROGRESS_TABLE).await.map_err(&err)? {
        target
            .execute(
                "SELECT create_reference_table($1::text::regclass)",
                &[&format!("public.{}", quote_ident(PROGRESS_TABLE))],
            )
            .await
            .map_err(&err)?;
    }
    if !is_citus_table(target, CANARY_TABLE).await.map_err(&err)? {
        target
            .execute(
                "SELECT create_distributed_table($1::text::regclass, 'id')",
                &[&format!("public.{}", quote_ident(CANARY_TABLE))],
            )
            .await
            .map_err(&err)?;
    }
    Ok(TargetKind::Citus)
}

/// The event trigger function: one `cutover.ddl` transactional message and one row in the DDL
/// table per command, so a stream consumer sees the DDL at its LSN and a reader of the table
/// (the native-subscription case, where messages are not seen) finds it too.
fn ddl_capture_sql() -> String {
    let table = format!("public.{}", quote_ident(DDL_TABLE));
    let function = format!("public.{}", quote_ident(DDL_FUNCTION));
    let prefix = quote_literal(DDL_MESSAGE_PREFIX);
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), \
         lsn pg_lsn NOT NULL, command_tag text NOT NULL, object_type text, object_identity text, command text);
CREATE OR REPLACE FUNCTION {function}() RETURNS event_trigger LANGUAGE plpgsql AS $cutover$
DECLARE
  r record;
  what text;
  at_lsn pg_lsn;
BEGIN
  IF TG_EVENT = 'sql_drop' THEN
    FOR r IN SELECT * FROM pg_event_trigger_dropped_objects() WHERE original LOOP
      what := TG_TAG || ' ' || coalesce(r.object_type, '') || ' ' || coalesce(r.object_identity, '');
      at_lsn := pg_logical_emit_message(true, {prefix}, what);
      INSERT INTO {table} (lsn, command_tag, object_type, object_identity, command)
        VALUES (at_lsn, TG_TAG, r.object_type, r.object_identity, current_query());
    END LOOP;
  ELSE
    FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
      IF r.object_identity IS NOT NULL AND r.object_identity LIKE 'public.cutover\\_ddl\\_events%' THEN
        CONTINUE;
      END IF;
      what := r.command_tag || ' ' || coalesce(r.object_identity, '');
      at_lsn := pg_logical_emit_message(true, {prefix}, what);
      INSERT INTO {table} (lsn, command_tag, object_type, object_identity, command)
        VALUES (at_lsn, r.command_tag, r.object_type, r.object_identity, current_query());
    END LOOP;
  END IF;
END
$cutover$;
DROP EVENT TRIGGER IF EXISTS {end};
CREATE EVENT TRIGGER {end} ON ddl_command_end EXECUTE FUNCTION {function}();
DROP EVENT TRIGGER IF EXISTS {drop};
CREATE EVENT TRIGGER {drop} ON sql_drop EXECUTE FUNCTION {function}();",
        end = quote_ident(DDL_TRIGGER_END),
        drop = quote_ident(DDL_TRIGGER_DROP),
    )
}

/// Create the canary table and the DDL capture on the source (idempotent; needs a superuser,
/// as event triggers do). Install it after the schema has been copied to the target, so the
/// trigger itself is not copied.
pub async fn install_source(source: &Client) -> Result<(), ApplyError> {
    source
        .batch_execute(&format!("{};\n{}", canary_ddl(), ddl_capture_sql()))
        .await
        .map_err(source_err(
            "installing the canary table and the DDL capture",
        ))
}

/// Remove the DDL capture from the source (the canary table stays with the data it moved).
pub async fn uninstall_source(source: &Client) -> Result<(), ApplyError> {
    source
        .batch_execute(&format!(
            "DROP EVENT TRIGGER IF EXISTS {}; DROP EVENT TRIGGER IF EXISTS {}; \
             DROP FUNCTION IF EXISTS public.{}(); DROP TABLE IF EXISTS public.{}",
            quote_ident(DDL_TRIGGER_END),
            quote_ident(DDL_TRIGGER_DROP),
            quote_ident(DDL_FUNCTION),
            quote_ident(DDL_TABLE)
        ))
        .await
        .map_err(source_err("removing the DDL capture"))
}

/// One DDL the source's event trigger recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DdlEvent {
    pub id: i64,
    pub lsn: String,
    pub command_tag: String,
    pub object_type: Option<String>,
    pub object_identity: Option<String>,
    /// The statement text as the client sent it.
    pub command: Option<String>,
}

impl DdlEvent {
    /// `ALTER TABLE public.orders`.
    pub fn describe(&self) -> String {
        match &self.object_identity {
            Some(object) => format!("{} {object}", self.command_tag),
            None => self.command_tag.clone(),
        }
    }
}

/// The DDL recorded on the source with id greater than `after` (0 for all), oldest first. For a
/// plain target fed by a native subscription, which never sees the logical messages.
pub async fn ddl_events(source: &Client, after: i64) -> Result<Vec<DdlEvent>, ApplyError> {
    let rows = source
        .query(
            &format!(
                "SELECT id, lsn::text, command_tag, object_type, object_identity, command \
                 FROM public.{} WHERE id > $1 ORDER BY id",
                quote_ident(DDL_TABLE)
            ),
            &[&after],
        )
        .await
        .map_err(source_err("reading the recorded DDL"))?;
    Ok(rows
        .iter()
        .map(|r| DdlEvent {
            id: r.get(0),
            lsn: r.get(1),
            command_tag: r.get(2),
            object_type: r.get(3),
            object_identity: r.get(4),
            command: r.get(5),
        })
        .collect())
}

/// A canary seen through the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryProof {
    pub id: uuid::Uuid,
    /// The source's WAL position right after the canary's commit.
    pub written_lsn: String,
    /// From the canary's commit on the source to its first sighting on the target.
    pub seen_after: Duration,
}

/// How often the canary is looked for on the target.
const CANARY_POLL: Duration = Duration::from_millis(20);

async fn write_canary(source: &Client) -> Result<(uuid::Uuid, String), ApplyError> {
    let id = uuid::Uuid::new_v4();
    source
        .execute(
            &format!(
                "INSERT INTO public.{} (id) VALUES ($1)",
                quote_ident(CANARY_TABLE)
            ),
            &[&id],
        )
        .await
        .map_err(source_err("writing the canary"))?;
    let lsn: String = source
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(source_err("reading the canary's LSN"))?
        .get(0);
    Ok((id, lsn))
}

/// Wait until `id` is visible in the target's canary table (through the coordinator on Citus).
async fn await_canary(
    target: &Client,
    id: uuid::Uuid,
    timeout: Duration,
) -> Result<Option<Duration>, ApplyError> {
    let started = Instant::now();
    let sql = format!(
        "SELECT count(*) FROM public.{} WHERE id = $1",
        quote_ident(CANARY_TABLE)
    );
    loop {
        let seen: i64 = target
            .query_one(&sql, &[&id])
            .await
            .map_err(target_err("looking for the canary"))?
            .get(0);
        if seen > 0 {
            return Ok(Some(started.elapsed()));
        }
        if started.elapsed() >= timeout {
            return Ok(None);
        }
        tokio::time::sleep(CANARY_POLL).await;
    }
}

/// Write a canary row on the source and prove it arrives on the target within `timeout`
/// (something must be applying the stream meanwhile: the tool's apply loop or a subscription).
/// Until this holds, the stream is not trusted.
pub async fn canary(
    source: &Client,
    target: &Client,
    timeout: Duration,
) -> Result<CanaryProof, ApplyError> {
    let (id, written_lsn) = write_canary(source).await?;
    match await_canary(target, id, timeout).await? {
        Some(seen_after) => Ok(CanaryProof {
            id,
            written_lsn,
            seen_after,
        }),
        None => Err(ApplyError::CanaryNotSeen {
            lsn: written_lsn,
            waited: timeout,
            through: if is_citus(target).await.unwrap_or(false) {
                "through the coordinator"
            } else {
                "on the target"
            },
        }),
    }
}

/// Tables a subscription of `target` feeds that are Citus distributed or reference tables: what
/// a native subscription silently misses (the rows land in the coordinator's shell tables).
pub async fn subscribed_citus_tables(
    target: &Client,
    subscription: &str,
) -> Result<Vec<String>, ApplyError> {
    let err = target_err("reading the subscription's tables");
    if !is_citus(target).await.map_err(&err)? {
        return Ok(Vec::new());
    }
    let rows = target
        .query(
            "SELECT r.srrelid::regclass::text FROM pg_subscription s \
             JOIN pg_subscription_rel r ON r.srsubid = s.oid \
             JOIN pg_dist_partition p ON p.logicalrelid = r.srrelid \
             WHERE s.subname = $1 ORDER BY 1",
            &[&subscription],
        )
        .await
        .map_err(&err)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The trust check for a native subscription: every table of `subscription` on the target in
/// state `r`, then a canary written on the source must arrive through the target within
/// `timeout`. Into Citus it never does (citus#4389, #6294, #7085): the subscription is refused
/// with [`ApplyError::SilentSubscription`], naming its state and the Citus tables it would miss.
pub async fn check_native_subscription(
    source: &Client,
    target: &Client,
    subscription: &str,
    timeout: Duration,
) -> Result<CanaryProof, ApplyError> {
    let states: Vec<String> = target
        .query(
            "SELECT r.srsubstate::text FROM pg_subscription s \
             JOIN pg_subscription_rel r ON r.srsubid = s.oid WHERE s.subname = $1",
            &[&subscription],
        )
        .await
        .map_err(target_err("reading the subscription's state"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let state = if states.is_empty() {
        "no tables".to_string()
    } else if states.iter().all(|s| s == "r") {
        "r".to_string()
    } else {
        states.join(",")
    };
    let citus_tables = subscribed_citus_tables(target, subscription).await?;
    let (id, lsn) = write_canary(source).await?;
    match await_canary(target, id, timeout).await? {
        Some(seen_after) if citus_tables.is_empty() => Ok(CanaryProof {
            id,
            written_lsn: lsn,
            seen_after,
        }),
        seen => Err(ApplyError::SilentSubscription {
            subscription: subscription.to_string(),
            state,
            lsn,
            waited: timeout,
            canary_seen: seen.is_some(),
            citus_tables,
        }),
    }
}

/// `lsn` parsed, or a decode error naming where it came from.
pub(super) fn parse_lsn(text: &str, what: &str) -> Result<Lsn, ApplyError> {
    text.parse().map_err(|detail| ApplyError::Decode {
        lsn: text.to_string(),
        detail: format!("{what}: {detail}"),
    })
}
