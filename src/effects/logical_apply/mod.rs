//! The logical apply: a logical slot's changes (wal2json, read through SQL) applied to a target,
//! a Citus coordinator or any PostgreSQL, exactly once. Sits between the source's slot and the
//! target: `peek` → [`decode`] → [`statements`] → one target transaction per batch (rows and the
//! progress row together) → slot advanced. Runbook effects drive it (`logical-move`); the
//! readings show its progress row and the slot's lag.
//!
//! Why: a native subscription into a Citus distributed table reaches state `r` and silently
//! lands the rows in the coordinator's shell table (citus#4389, #6294, #7085), so into Citus the
//! tool applies the changes itself, through the coordinator.
//!
//! Exactly once: the progress row (`cutover_apply_progress`, per origin) holds the commit LSN of
//! the last applied source transaction and is written in the same target transaction as the
//! batch; the slot is advanced only after that commit. A crash between the two re-reads those
//! transactions, and every transaction whose commit LSN is at or before the applied LSN is
//! skipped.

pub mod decode;
pub mod objects;
pub mod statements;

pub use decode::{Change, ChangeKind, ColumnValue, DdlMessage, Lsn, SourceTransaction};
pub use objects::{
    canary, check_native_subscription, ddl_events, install_source, install_target,
    subscribed_citus_tables, uninstall_source, CanaryProof, DdlEvent, TargetKind, CANARY_TABLE,
    DDL_TABLE, PROGRESS_TABLE,
};
pub use statements::{Statement, TargetColumn, TargetTable};

use crate::pg::{self, Endpoint, SessionSettings};
use crate::sql::{quote_ident, quote_qualified};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

/// The output plugin the apply decodes with: the slot must be created with it.
pub const OUTPUT_PLUGIN: &str = "wal2json";

/// Why the apply stopped. Every variant names what failed; a failed change names its table,
/// key, LSN and the target's error.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("source: {what}: {error}")]
    Source { what: String, error: String },
    #[error("target: {what}: {error}")]
    Target { what: String, error: String },
    #[error("slot {slot}: {problem}")]
    Slot { slot: String, problem: String },
    #[error("applying {kind} on {table} {key} at LSN {lsn}: {error}")]
    Change {
        kind: &'static str,
        table: String,
        /// `(col, ...)=(value, ...)`, as PostgreSQL prints keys.
        key: String,
        lsn: String,
        error: String,
    },
    #[error("the change at LSN {lsn} cannot be decoded: {detail}")]
    Decode { lsn: String, detail: String },
    #[error("the target has no table {table} (the schemas differ)")]
    MissingTable { table: String },
    #[error("a schema change on the source mid-stream: {ddl} at LSN {lsn}; the move stops here")]
    SchemaChange { ddl: String, lsn: String },
    #[error(
        "the stream is not trusted: the canary written at LSN {lsn} was not seen {through} after {} s",
        waited.as_secs_f64()
    )]
    CanaryNotSeen {
        lsn: String,
        waited: Duration,
        /// `through the coordinator` (Citus) or `on the target`.
        through: &'static str,
    },
    #[error(
        "subscription {subscription} reports state {state} but is not trusted: {}{}; on Citus the tool applies the changes through the coordinator instead (citus#4389)",
        if *canary_seen { format!("the canary written at LSN {lsn} arrived") } else { format!("the canary written at LSN {lsn} was not seen through the coordinator after {} s", waited.as_secs_f64()) },
        if citus_tables.is_empty() { String::new() } else { format!(", and it feeds Citus tables {} whose rows land in the coordinator's shell tables", citus_tables.join(", ")) }
    )]
    SilentSubscription {
        subscription: String,
        state: String,
        lsn: String,
        waited: Duration,
        canary_seen: bool,
        citus_tables: Vec<String>,
    },
}

/// What the apply reads and how much at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyConfig {
    /// The logical slot on the source (created with [`OUTPUT_PLUGIN`]).
    pub slot: String,
    /// The progress row's key on the target; the slot name unless set otherwise.
    pub origin: String,
    /// Changes per peek (whole transactions: a batch may hold more, never a part of one).
    pub batch_changes: u32,
    /// `schema.table` names to apply; empty: every table the slot decodes (the tool's DDL
    /// table excepted).
    pub tables: Vec<String>,
    /// How long the loop waits when a peek finds nothing.
    pub idle_wait: Duration,
}

impl ApplyConfig {
    pub fn new(slot: &str) -> Self {
        ApplyConfig {
            slot: slot.to_string(),
            origin: slot.to_string(),
            batch_changes: 2000,
            tables: Vec::new(),
            idle_wait: Duration::from_millis(50),
        }
    }
}

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Source transactions applied in this batch's target transaction.
    pub transactions: usize,
    /// Transactions peeked again that were already applied (after a crash before the advance).
    pub skipped: usize,
    /// Row changes applied.
    pub changes: u64,
    /// The applied LSN after the batch.
    pub applied_lsn: Lsn,
    /// Where the slot was advanced to, if it was.
    pub advanced_to: Option<Lsn>,
    /// The last applied source transaction's commit time (source clock).
    pub last_commit_at: Option<String>,
    /// A schema change the batch stopped before: nothing at or after it was applied.
    pub stopped_at: Option<DdlMessage>,
}

/// The apply's running totals, published after every batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyStatus {
    pub slot: String,
    pub applied_lsn: Lsn,
    pub batches: u64,
    pub transactions: u64,
    pub changes: u64,
    pub last_batch_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_commit_at: Option<String>,
    /// Why the loop stopped, when it stopped on an error.
    pub error: Option<String>,
}

/// The gate's proof: everything the source committed up to `lsn` is applied on the target,
/// and the target's progress row records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateProof {
    pub lsn: Lsn,
    /// The progress row's applied LSN after recording the gate (≥ `lsn`).
    pub applied_lsn: Lsn,
    /// Transactions the gate applied on its way.
    pub transactions: usize,
}

/// The applier: owns one source and one target connection, the target's table shapes and the
/// prepared statements. One applier per slot at a time (a peek holds the slot while it runs).
pub struct Applier {
    source: Client,
    target: Client,
    config: ApplyConfig,
    kind: TargetKind,
    applied: Lsn,
    tables: HashMap<String, Arc<TargetTable>>,
    prepared: HashMap<String, tokio_postgres::Statement>,
    status: ApplyStatus,
}

/// Prepared statements kept per connection before the cache is emptied.
const PREPARED_LIMIT: usize = 2000;
/// Statements sent to the target before their results are awaited.
const PIPELINE: usize = 500;

fn source_err(what: &str) -> impl Fn(tokio_postgres::Error) -> ApplyError + '_ {
    move |e| ApplyError::Source {
        what: what.to_string(),
        error: pg::error_chain(&e),
    }
}

fn target_err(what: &str) -> impl Fn(tokio_postgres::Error) -> ApplyError + '_ {
    move |e| ApplyError::Target {
        what: what.to_string(),
        error: pg::error_chain(&e),
    }
}

/// A name for wal2json's `add-tables`/`filter-tables`: its special characters backslashed.
fn wal2json_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if matches!(c, '\\' | ',' | '.' | '*' | ' ' | '\'') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The plugin options every peek passes.
fn plugin_options(config: &ApplyConfig) -> Vec<String> {
    let mut options: Vec<String> = [
        ("format-version", "2"),
        ("include-lsn", "1"),
        ("include-xids", "1"),
        ("include-transaction", "1"),
        ("include-timestamp", "1"),
        ("include-pk", "1"),
        ("include-type-oids", "0"),
        ("add-msg-prefixes", decode::DDL_MESSAGE_PREFIX),
    ]
    .iter()
    .flat_map(|(k, v)| [k.to_string(), v.to_string()])
    .collect();
    options.push("filter-tables".into());
    options.push(format!("*.{}", wal2json_name(DDL_TABLE)));
    if !config.tables.is_empty() {
        let tables: Vec<String> = config
            .tables
            .iter()
            .map(|t| {
                let (schema, table) = t.split_once('.').unwrap_or(("public", t));
                format!("{}.{}", wal2json_name(schema), wal2json_name(table))
            })
            .chain(std::iter::once(format!(
                "*.{}",
                wal2json_name(CANARY_TABLE)
            )))
            .collect();
        options.push("add-tables".into());
        options.push(tables.join(","));
    }
    options
}

/// `(a, b)=(1, x)` from the change's key values, for error messages.
fn describe_key(change: &Change, table: Option<&TargetTable>) -> String {
    let key_names: Vec<&str> = table
        .map(|t| t.key.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let values: Vec<&ColumnValue> = if key_names.is_empty() {
        if change.identity.is_empty() {
            change.columns.iter().collect()
        } else {
            change.identity.iter().collect()
        }
    } else {
        key_names
            .iter()
            .filter_map(|k| {
                change
                    .identity
                    .iter()
                    .find(|v| v.name == *k)
                    .or_else(|| change.columns.iter().find(|v| v.name == *k))
            })
            .collect()
    };
    let names: Vec<&str> = values.iter().map(|v| v.name.as_str()).collect();
    let texts: Vec<&str> = values
        .iter()
        .map(|v| v.text.as_deref().unwrap_or("NULL"))
        .collect();
    format!("({})=({})", names.join(", "), texts.join(", "))
}

impl Applier {
    /// Open the applier's own connections (`cutover/apply`) and [`Applier::new`].
    pub async fn connect(
        source: &Endpoint,
        target: &Endpoint,
        config: ApplyConfig,
    ) -> Result<Applier, ApplyError> {
        let settings = SessionSettings::EXECUTOR.named("cutover/apply");
        let source_client =
            pg::connect(source, settings)
                .await
                .map_err(|e| ApplyError::Source {
                    what: "connecting".into(),
                    error: e.to_string(),
                })?;
        let target_client =
            pg::connect(target, settings)
                .await
                .map_err(|e| ApplyError::Target {
                    what: "connecting".into(),
                    error: e.to_string(),
                })?;
        Applier::new(source_client, target_client, config).await
    }

    /// Check the slot (logical, [`OUTPUT_PLUGIN`], this database), create the target's progress
    /// and canary tables if absent ([`install_target`]) and read the applied LSN.
    pub async fn new(
        source: Client,
        target: Client,
        config: ApplyConfig,
    ) -> Result<Applier, ApplyError> {
        let slot = source
            .query_opt(
                "SELECT plugin::text, slot_type, database::text = current_database() \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&config.slot],
            )
            .await
            .map_err(source_err("reading the slot"))?;
        let problem = match slot {
            None => Some("does not exist on the source".to_string()),
            Some(row) => {
                let plugin: Option<String> = row.get(0);
                let kind: String = row.get(1);
                let here: Option<bool> = row.get(2);
                if kind != "logical" || plugin.as_deref() != Some(OUTPUT_PLUGIN) {
                    Some(format!(
                        "is a {kind} slot decoding with {}; the apply needs a logical slot with {OUTPUT_PLUGIN}",
                        plugin.as_deref().unwrap_or("no plugin")
                    ))
                } else if here != Some(true) {
                    Some("belongs to another database of the source".to_string())
                } else {
                    None
                }
            }
        };
        if let Some(problem) = problem {
            return Err(ApplyError::Slot {
                slot: config.slot.clone(),
                problem,
            });
        }
        let kind = install_target(&target).await?;
        let applied = applied_lsn(&target, &config.origin)
            .await?
            .unwrap_or_default();
        let status = ApplyStatus {
            slot: config.slot.clone(),
            applied_lsn: applied,
            ..ApplyStatus::default()
        };
        Ok(Applier {
            source,
            target,
            config,
            kind,
            applied,
            tables: HashMap::new(),
            prepared: HashMap::new(),
            status,
        })
    }

    pub fn config(&self) -> &ApplyConfig {
        &self.config
    }
    /// Whether the target is a Citus coordinator.
    pub fn target_kind(&self) -> TargetKind {
        self.kind
    }
    /// The commit LSN of the last source transaction the target has (per its progress row).
    pub fn applied_lsn(&self) -> Lsn {
        self.applied
    }
    pub fn status(&self) -> &ApplyStatus {
        &self.status
    }
    /// The applier's source connection (for the canary, the gate's LSN, ...).
    pub fn source(&self) -> &Client {
        &self.source
    }
    /// The applier's target connection.
    pub fn target(&self) -> &Client {
        &self.target
    }

    /// Whole committed transactions from the slot, without consuming them, up to `upto`
    /// (transactions committed before it) and about [`ApplyConfig::batch_changes`] changes.
    pub async fn peek(&self, upto: Option<Lsn>) -> Result<Vec<SourceTransaction>, ApplyError> {
        let upto_text = upto.map(|l| l.to_string());
        let limit = i32::try_from(self.config.batch_changes).unwrap_or(i32::MAX);
        let options = plugin_options(&self.config);
        let rows = self
            .source
            .query(
                "SELECT lsn::text, data FROM pg_logical_slot_peek_changes($1, $2::text::pg_lsn, $3, VARIADIC $4::text[])",
                &[&self.config.slot, &upto_text, &limit, &options],
            )
            .await
            .map_err(source_err("peeking at the slot"))?;
        let mut decoded = Vec::with_capacity(rows.len());
        for row in &rows {
            let lsn_text: String = row.get(0);
            decoded.push((
                objects::parse_lsn(&lsn_text, "the peek's LSN")?,
                row.get::<_, String>(1),
            ));
        }
        decode::transactions(&decoded).map_err(|e| ApplyError::Decode {
            lsn: e.lsn.to_string(),
            detail: e.detail,
        })
    }

    /// The target's shape of `schema.table`, read once.
    async fn table(&mut self, qualified: &str) -> Result<Arc<TargetTable>, ApplyError> {
        if let Some(table) = self.tables.get(qualified) {
            return Ok(table.clone());
        }
        let err = target_err("reading a table's columns");
        let regclass = quote_qualified(qualified);
        let columns: Vec<TargetColumn> = self
            .target
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attgenerated <> '' \
                 FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 \
                 AND NOT a.attisdropped ORDER BY a.attnum",
                &[&regclass],
            )
            .await
            .map_err(&err)?
            .iter()
            .map(|r| TargetColumn {
                name: r.get(0),
                type_sql: r.get(1),
                generated: r.get(2),
            })
            .collect();
        if columns.is_empty() {
            return Err(ApplyError::MissingTable {
                table: qualified.to_string(),
            });
        }
        let key: Vec<String> = self
            .target
            .query(
                "SELECT a.attname::text FROM pg_index i \
                 JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE i.indrelid = to_regclass($1) AND i.indisprimary ORDER BY k.ord",
                &[&regclass],
            )
            .await
            .map_err(&err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let distribution_column = if self.kind == TargetKind::Citus {
            self.target
                .query_opt(
                    "SELECT column_to_column_name(logicalrelid, partkey) FROM pg_dist_partition \
                     WHERE logicalrelid = to_regclass($1) AND partmethod = 'h'",
                    &[&regclass],
                )
                .await
                .map_err(&err)?
                .map(|r| r.get(0))
        } else {
            None
        };
        let table = Arc::new(TargetTable {
            name: qualified.to_string(),
            columns,
            key,
            distribution_column,
        });
        self.tables.insert(qualified.to_string(), table.clone());
        Ok(table)
    }

    async fn prepare(
        &mut self,
        sql: &str,
        params: usize,
    ) -> Result<tokio_postgres::Statement, ApplyError> {
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        if self.prepared.len() >= PREPARED_LIMIT {
            self.prepared.clear();
        }
        let statement = self
            .target
            .prepare_typed(sql, &vec![Type::TEXT; params])
            .await
            .map_err(target_err("preparing a statement"))?;
        self.prepared.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    /// Apply the next batch to the target in one transaction, with the progress row, and commit;
    /// the slot is NOT advanced (see [`Applier::apply_batch`]). Transactions at or before the
    /// applied LSN are skipped; a transaction carrying a schema change and everything after it
    /// are left unapplied and reported in [`BatchOutcome::stopped_at`].
    pub async fn apply_to_target(&mut self, upto: Option<Lsn>) -> Result<BatchOutcome, ApplyError> {
        let peeked = self.peek(upto).await?;
        let mut outcome = BatchOutcome {
            applied_lsn: self.applied,
            ..BatchOutcome::default()
        };
        let mut pending: Vec<SourceTransaction> = Vec::new();
        for txn in peeked {
            if txn.commit_lsn <= self.applied {
                outcome.skipped += 1;
                continue;
            }
            if let Some(ddl) = &txn.ddl {
                outcome.stopped_at = Some(ddl.clone());
                break;
            }
            pending.push(txn);
        }
        if pending.is_empty() {
            return Ok(outcome);
        }
        // Statements in source order, each with the change it applies.
        let mut work: Vec<(&Change, Arc<TargetTable>, Statement)> = Vec::new();
        for change in pending.iter().flat_map(|t| &t.changes) {
            let table = self.table(&change.qualified_table()).await?;
            let statements =
                statements::statements_for(change, &table).map_err(|error| ApplyError::Change {
                    kind: change.kind.as_str(),
                    table: change.qualified_table(),
                    key: describe_key(change, Some(&table)),
                    lsn: change.lsn.to_string(),
                    error,
                })?;
            for statement in statements {
                work.push((change, table.clone(), statement));
            }
        }
        let mut prepared = Vec::with_capacity(work.len());
        for (_, _, statement) in &work {
            prepared.push(self.prepare(&statement.sql, statement.params.len()).await?);
        }
        let last = pending
            .last()
            .map(|t| (t.commit_lsn, t.committed_at.clone()));
        let changes: u64 = pending.iter().map(|t| t.changes.len() as u64).sum();
        let (commit_lsn, committed_at) = last.unwrap_or((self.applied, None));

        let txn = self
            .target
            .transaction()
            .await
            .map_err(target_err("beginning the batch"))?;
        for (chunk, statements) in work.chunks(PIPELINE).zip(prepared.chunks(PIPELINE)) {
            let results = futures_util::future::join_all(chunk.iter().zip(statements).map(
                |((_, _, statement), prepared)| {
                    let txn = &txn;
                    async move {
                        let params: Vec<&(dyn ToSql + Sync)> = statement
                            .params
                            .iter()
                            .map(|p| p as &(dyn ToSql + Sync))
                            .collect();
                        txn.execute(prepared, &params).await
                    }
                },
            ))
            .await;
            for ((change, table, statement), result) in chunk.iter().zip(results) {
                let failure = match result {
                    Err(e) => Some(pg::error_chain(&e)),
                    Ok(rows) if statement.expect_one_row && rows != 1 => Some(if rows == 0 {
                        "no row with this key on the target (the target has drifted from the source)".to_string()
                    } else {
                        format!("{rows} rows matched the key on the target, expected one")
                    }),
                    Ok(_) => None,
                };
                if let Some(error) = failure {
                    let error = ApplyError::Change {
                        kind: change.kind.as_str(),
                        table: change.qualified_table(),
                        key: describe_key(change, Some(table)),
                        lsn: change.lsn.to_string(),
                        error,
                    };
                    drop(txn);
                    self.record_error(&error).await;
                    return Err(error);
                }
            }
        }
        let commit_text = commit_lsn.to_string();
        let changes_i64 = i64::try_from(changes).unwrap_or(i64::MAX);
        txn.execute(
            &progress_upsert_sql(),
            &[
                &self.config.origin,
                &commit_text,
                &changes_i64,
                &committed_at,
            ],
        )
        .await
        .map_err(target_err("recording the batch's progress"))?;
        txn.commit()
            .await
            .map_err(target_err("committing the batch"))?;
        self.applied = commit_lsn;
        outcome.transactions = pending.len();
        outcome.changes = changes;
        outcome.applied_lsn = commit_lsn;
        outcome.last_commit_at = committed_at;
        Ok(outcome)
    }

    /// Best effort: the error in the progress row, for the readings (the batch is rolled back).
    async fn record_error(&self, error: &ApplyError) {
        let text = error.to_string();
        let result = self
            .target
            .execute(
                &format!(
                    "INSERT INTO public.{t} AS p (origin, applied_lsn, changes, last_error, last_error_at) \
                     VALUES ($1, $2::text::pg_lsn, 0, $3, now()) ON CONFLICT (origin) DO UPDATE \
                     SET last_error = excluded.last_error, last_error_at = excluded.last_error_at",
                    t = quote_ident(PROGRESS_TABLE)
                ),
                &[&self.config.origin, &self.applied.to_string(), &text],
            )
            .await;
        if let Err(e) = result {
            tracing::warn!(target: "cutover::apply", error = %pg::error_chain(&e), "recording the apply error");
        }
    }

    /// Move the slot's confirmed position to `lsn` (never backwards), releasing the WAL it held.
    /// Only after the target has committed everything up to `lsn`.
    pub async fn advance_slot(&self, lsn: Lsn) -> Result<Lsn, ApplyError> {
        let row = self
            .source
            .query_one(
                "SELECT (pg_replication_slot_advance(slot_name, greatest($2::text::pg_lsn, confirmed_flush_lsn))).end_lsn::text \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.config.slot, &lsn.to_string()],
            )
            .await
            .map_err(source_err("advancing the slot"))?;
        let end: Option<String> = row.get(0);
        end.map(|text| objects::parse_lsn(&text, "the slot's new position"))
            .transpose()
            .map(|l| l.unwrap_or(lsn))
    }

    /// One batch: [`Applier::apply_to_target`], then the slot advanced past what the target now
    /// has. A schema change in the stream ends it with [`ApplyError::SchemaChange`] once the
    /// transactions before it are applied.
    pub async fn apply_batch(&mut self) -> Result<BatchOutcome, ApplyError> {
        self.apply_batch_upto(None).await
    }

    async fn apply_batch_upto(&mut self, upto: Option<Lsn>) -> Result<BatchOutcome, ApplyError> {
        let mut outcome = self.apply_to_target(upto).await?;
        if outcome.transactions > 0 || outcome.skipped > 0 {
            outcome.advanced_to = Some(self.advance_slot(self.applied).await?);
        }
        self.status.applied_lsn = self.applied;
        self.status.batches += 1;
        self.status.transactions += outcome.transactions as u64;
        self.status.changes += outcome.changes;
        if outcome.transactions > 0 {
            self.status.last_batch_at = Some(chrono::Utc::now());
            self.status.last_commit_at = outcome.last_commit_at.clone();
        }
        if let Some(ddl) = &outcome.stopped_at {
            let error = ApplyError::SchemaChange {
                ddl: ddl.content.clone(),
                lsn: ddl.lsn.to_string(),
            };
            self.record_error(&error).await;
            return Err(error);
        }
        Ok(outcome)
    }

    /// The cutover gate: apply everything the source committed before `lsn` (read while traffic
    /// is paused), prove a peek up to `lsn` finds nothing unapplied, then record
    /// `applied_lsn = max(applied, lsn)` on the target and advance the slot to it. Stop the
    /// [`run_apply`] loop of this applier first: one peek at a time holds the slot.
    pub async fn caught_up_to(&mut self, lsn: Lsn) -> Result<GateProof, ApplyError> {
        let mut transactions = 0;
        loop {
            let outcome = self.apply_batch_upto(Some(lsn)).await?;
            transactions += outcome.transactions;
            if outcome.transactions == 0 && outcome.skipped == 0 {
                break;
            }
        }
        if !self
            .peek(Some(lsn))
            .await?
            .iter()
            .all(|t| t.commit_lsn <= self.applied)
        {
            return Err(ApplyError::Slot {
                slot: self.config.slot.clone(),
                problem: format!(
                    "still holds unapplied transactions before LSN {lsn} after the gate's apply"
                ),
            });
        }
        let recorded = self.applied.max(lsn);
        let no_changes: i64 = 0;
        let committed_at: Option<String> = None;
        self.target
            .execute(
                &progress_upsert_sql(),
                &[
                    &self.config.origin,
                    &recorded.to_string(),
                    &no_changes,
                    &committed_at,
                ],
            )
            .await
            .map_err(target_err("recording the gate's LSN"))?;
        self.applied = recorded;
        self.status.applied_lsn = recorded;
        self.advance_slot(recorded).await?;
        Ok(GateProof {
            lsn,
            applied_lsn: recorded,
            transactions,
        })
    }
}

/// Upsert of the progress row: `$1` origin, `$2` applied LSN (text), `$3` changes, `$4` the source
/// commit time (text or NULL). The applied LSN never moves backwards.
fn progress_upsert_sql() -> String {
    format!(
        "INSERT INTO public.{t} AS p (origin, applied_lsn, changes, applied_at, source_committed_at) \
         VALUES ($1, $2::text::pg_lsn, $3, now(), $4::text::timestamptz) ON CONFLICT (origin) DO UPDATE \
         SET applied_lsn = greatest(p.applied_lsn, excluded.applied_lsn), changes = p.changes + excluded.changes, \
         applied_at = excluded.applied_at, source_committed_at = coalesce(excluded.source_committed_at, p.source_committed_at), \
         last_error = NULL, last_error_at = NULL",
        t = quote_ident(PROGRESS_TABLE)
    )
}

/// The target's applied LSN for `origin`, if it has a progress row.
pub async fn applied_lsn(target: &Client, origin: &str) -> Result<Option<Lsn>, ApplyError> {
    let row = target
        .query_opt(
            &format!(
                "SELECT applied_lsn::text FROM public.{} WHERE origin = $1",
                quote_ident(PROGRESS_TABLE)
            ),
            &[&origin],
        )
        .await
        .map_err(target_err("reading the applied LSN"))?;
    row.map(|r| objects::parse_lsn(&r.get::<_, String>(0), "the applied LSN"))
        .transpose()
}

/// Apply batches until `stop` turns true (or its sender is gone) or an error: the long-running
/// loop for a tokio task (`tokio::spawn(async move { let r = run_apply(&mut a, stop, tx).await;
/// (a, r) })` hands the applier back for the gate). After every batch that applied something,
/// and at the end, the totals go to `status` (latest wins). A stop request lets the batch in
/// flight finish: its target commit and slot advance are never cut apart by the loop.
pub async fn run_apply(
    applier: &mut Applier,
    mut stop: watch::Receiver<bool>,
    status: watch::Sender<ApplyStatus>,
) -> Result<ApplyStatus, ApplyError> {
    loop {
        if *stop.borrow() {
            break;
        }
        match applier.apply_batch().await {
            Ok(outcome) => {
                if outcome.transactions > 0 {
                    status.send_replace(applier.status.clone());
                }
                if outcome.transactions == 0 {
                    tokio::select! {
                        changed = stop.changed() => if changed.is_err() { break },
                        _ = tokio::time::sleep(applier.config.idle_wait) => {}
                    }
                }
            }
            Err(error) => {
                applier.status.error = Some(error.to_string());
                status.send_replace(applier.status.clone());
                return Err(error);
            }
        }
    }
    status.send_replace(applier.status.clone());
    Ok(applier.status.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_options_name_tables_escaped_and_keep_the_canary() {
        let mut config = ApplyConfig::new("s");
        config.tables = vec!["public.orders".into(), "we,ird".into()];
        let options = plugin_options(&config);
        let at = options.iter().position(|o| o == "add-tables").unwrap();
        assert_eq!(
            options[at + 1],
            "public.orders,public.we\\,ird,*.cutover_canary"
        );
        let at = options.iter().position(|o| o == "filter-tables").unwrap();
        assert_eq!(options[at + 1], "*.cutover_ddl_events");
        assert_eq!(options.len() % 2, 0);
    }

    #[test]
    fn error_messages_name_what_failed() {
        let e = ApplyError::SchemaChange {
            ddl: "ALTER TABLE public.orders".into(),
            lsn: "0/1A2B".into(),
        };
        assert_eq!(
            e.to_string(),
            "a schema change on the source mid-stream: ALTER TABLE public.orders at LSN 0/1A2B; the move stops here"
        );
        let e = ApplyError::CanaryNotSeen {
            lsn: "0/10".into(),
            waited: Duration::from_secs(5),
            through: "through the coordinator",
        };
        assert_eq!(
            e.to_string(),
            "the stream is not trusted: the canary written at LSN 0/10 was not seen through the coordinator after 5 s"
        );
    }
}
