//! The `shard-split` runbook: move shards `[m, b]` of partition `from` to a new partition `to`
//! on a spare node, by streaming replication and promotion, with a bounded write pause.
//!
//! Pure: turns inventory + parameters into the reviewed [`Plan`]. The SQL builders here are the
//! single source of the statements the executor sends, so what a reviewer reads is what runs.

use super::SplitStep;
use crate::inventory::{
    Inventory, Node, Partition, Pgbouncer, PgbouncerAlias, ShardedTable, Standby,
};
use crate::pgbouncer_ini::AliasTarget;
use crate::plan::{ParamError, Plan, RenderedCommand, Step, StepFlags, Undo};
use crate::quote::shell_quote;
use crate::runbooks::RunbookError;
use crate::runbooks::StepKind;
use crate::sql::{quote_ident, quote_literal, quote_qualified};
use std::collections::BTreeMap;
use std::time::Duration;

pub const RUNBOOK: &str = "shard-split";
/// The write pause a split allows unless `--pause-bound-ms` says otherwise.
pub const DEFAULT_PAUSE_BOUND: Duration = Duration::from_secs(10);

/// Operator-given parameters of a split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitParams {
    /// Partition that gives up shards (e.g. `p1`).
    pub from: String,
    /// New partition that takes them (e.g. `p2`).
    pub to: String,
    /// Spare node that becomes the new partition's primary (e.g. `pg2`).
    pub node: String,
    /// Inclusive range moved: must be the upper part of `from`'s range.
    pub shards: [u32; 2],
    /// Longest write pause before traffic resumes by itself and the run rolls back.
    pub pause_bound: Duration,
}

impl SplitParams {
    pub fn from_map(params: &BTreeMap<String, String>) -> Result<SplitParams, ParamError> {
        let get = |name: &'static str| crate::plan::required_param(params, name);
        let range = get("shards")?;
        let shards = parse_range(&range).ok_or_else(|| ParamError::Invalid {
            name: "shards",
            value: range.clone(),
            reason: "expected FIRST-LAST, e.g. 512-1023".into(),
        })?;
        let pause_bound = crate::plan::pause_bound_param(params, DEFAULT_PAUSE_BOUND)?;
        Ok(SplitParams {
            from: get("from")?,
            to: get("to")?,
            node: get("node")?,
            shards,
            pause_bound,
        })
    }

    pub fn to_map(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("from".to_string(), self.from.clone()),
            ("to".to_string(), self.to.clone()),
            ("node".to_string(), self.node.clone()),
            (
                "shards".to_string(),
                format!("{}-{}", self.shards[0], self.shards[1]),
            ),
            (
                "pause-bound-ms".to_string(),
                self.pause_bound.as_millis().to_string(),
            ),
        ])
    }
}

fn parse_range(text: &str) -> Option<[u32; 2]> {
    let (a, b) = text.split_once('-')?;
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a <= b).then_some([a, b])
}

/// Everything a split needs, resolved from the inventory once and validated.
#[derive(Debug, Clone)]
pub struct Split {
    pub params: SplitParams,
    pub inventory: Inventory,
    pub source: Node,
    pub target: Node,
    pub from: Partition,
    /// `from` after the split: keeps the lower part of its range.
    pub from_after: Partition,
    /// The new partition.
    pub to: Partition,
    pub slot: String,
    /// The pgbouncer carrying the partition aliases (and the entry alias).
    pub bouncer: Pgbouncer,
    /// Aliases paused during the write pause, in pause order: the entry alias first.
    pub paused_aliases: Vec<String>,
    /// The inventory as it will be after the re-route.
    pub inventory_after: Inventory,
}

impl Split {
    pub fn resolve(inventory: &Inventory, params: SplitParams) -> Result<Split, RunbookError> {
        let bad = |reason: String| RunbookError::Inventory {
            runbook: RUNBOOK,
            reason,
        };
        let from = inventory
            .partition(&params.from)
            .ok_or_else(|| {
                bad(format!(
                    "partition `{}` is not in the inventory",
                    params.from
                ))
            })?
            .clone();
        if inventory.partition(&params.to).is_some() {
            return Err(bad(format!("partition `{}` exists already", params.to)));
        }
        let source = inventory
            .node(&from.node)
            .ok_or_else(|| bad(format!("node `{}` is not in the inventory", from.node)))?
            .clone();
        let target = inventory
            .node(&params.node)
            .ok_or_else(|| bad(format!("node `{}` is not in the inventory", params.node)))?
            .clone();
        if target.name == source.name {
            return Err(bad(format!(
                "--node {} already holds {}",
                target.name, from.name
            )));
        }
        if inventory.partitions.iter().any(|p| p.node == target.name) {
            return Err(bad(format!(
                "node `{}` already holds a partition; a split needs a spare node",
                target.name
            )));
        }
        if inventory
            .proxy
            .as_ref()
            .is_some_and(|p| p.node == target.name)
        {
            return Err(bad(format!(
                "node `{}` holds the proxy database",
                target.name
            )));
        }
        if target.version != source.version {
            return Err(bad(format!(
                "streaming replication needs the same major version: {} is {}, {} is {}",
                source.name, source.version, target.name, target.version
            )));
        }
        let [first, last] = params.shards;
        if last != from.shards[1] || first <= from.shards[0] {
            return Err(RunbookError::Param(ParamError::Invalid {
                name: "shards",
                value: format!("{first}-{last}"),
                reason: format!(
                    "must be the upper part of {}'s range [{}, {}], e.g. {}-{}",
                    from.name,
                    from.shards[0],
                    from.shards[1],
                    from.shards[0] + (from.shards[1] - from.shards[0]).div_ceil(2),
                    from.shards[1]
                ),
            }));
        }
        if inventory.sharded_tables.is_empty() {
            return Err(bad("the inventory lists no sharded tables".into()));
        }
        if inventory.sharded_tables.iter().any(|t| t.key.len() != 1) {
            return Err(bad(
                "every sharded table needs a single-column key for the verified delete".into(),
            ));
        }
        let bouncer = inventory
            .pgbouncers
            .iter()
            .find(|b| b.aliases.iter().any(|a| a.name == from.dbname))
            .ok_or_else(|| bad(format!("no pgbouncer routes alias `{}`", from.dbname)))?
            .clone();
        let mut paused_aliases = Vec::new();
        if let Some(entry) = inventory.proxy.as_ref().and_then(|p| p.alias.clone()) {
            if !bouncer.aliases.iter().any(|a| a.name == entry) {
                return Err(bad(format!(
                    "the entry alias `{entry}` is not on pgbouncer `{}`",
                    bouncer.name
                )));
            }
            paused_aliases.push(entry);
        }
        paused_aliases.push(from.dbname.clone());
        let new_dbname = new_database_name(&from, &params.to);
        let to = Partition {
            name: params.to.clone(),
            dbname: new_dbname,
            node: target.name.clone(),
            shards: [first, last],
        };
        let mut from_after = from.clone();
        from_after.shards = [from.shards[0], first - 1];
        let slot = format!("cutover_{}", crate::plan::sanitize(&params.to));
        let inventory_after = inventory_after(inventory, &from_after, &to, &bouncer, &target);
        Ok(Split {
            params,
            inventory: inventory.clone(),
            source,
            target,
            from,
            from_after,
            to,
            slot,
            bouncer,
            paused_aliases,
            inventory_after,
        })
    }

    pub fn moved_shards(&self) -> std::ops::RangeInclusive<u32> {
        self.to.shards[0]..=self.to.shards[1]
    }

    /// Connection string plproxy uses for a partition: through pgbouncer when configured,
    /// else directly to the node holding `dbname` (the new partition's on the target, the
    /// source partition's on the source).
    pub fn plproxy_conn(&self, dbname: &str) -> String {
        let (host, port) = match self
            .inventory
            .proxy
            .as_ref()
            .and_then(|p| p.route_via.clone())
        {
            Some(via) => (via.address, via.port),
            None if dbname == self.to.dbname => (self.target.address.clone(), self.target.port),
            None => (self.source.address.clone(), self.source.port),
        };
        crate::pg::conninfo(&[
            ("dbname", dbname),
            ("host", &host),
            ("port", &port.to_string()),
        ])
    }

    /// `ALTER SERVER` re-pointing the moved shards; `dbname` picks the destination.
    pub fn reroute_sql(&self, dbname: &str) -> Option<String> {
        let proxy = self.inventory.proxy.as_ref()?;
        let conn = quote_literal(&self.plproxy_conn(dbname));
        let sets: Vec<String> = self
            .moved_shards()
            .map(|shard| format!("SET p{shard:04} {conn}"))
            .collect();
        Some(format!(
            "BEGIN;\nALTER SERVER {} OPTIONS ({});\nCOMMIT;",
            quote_ident(&proxy.cluster),
            sets.join(", ")
        ))
    }

    pub fn new_alias_target(&self) -> AliasTarget {
        AliasTarget {
            host: self.target.address.clone(),
            port: self.target.port,
            dbname: self.to.dbname.clone(),
        }
    }

    pub fn basebackup_command(&self) -> String {
        let bin = &self.target.bin_dir;
        format!(
            "{bin}/pg_basebackup -h {host} -p {port} -U {user} -D {data} -R -C -S {slot} -X stream -c fast -P",
            host = shell_quote(&self.source.address),
            port = self.source.port,
            user = shell_quote(&self.source.user),
            data = shell_quote(&self.target.data_dir),
            slot = shell_quote(&self.slot),
        )
    }

    /// The target's own port and name in its copied configuration. Idempotent, so a re-check
    /// after a crash between the copy and this command converges.
    pub fn standby_settings_command(&self) -> String {
        let conf = shell_quote(&format!("{}/postgresql.auto.conf", self.target.data_dir));
        let port = format!("port = {}", self.target.port);
        let name = format!(
            "cluster_name = '{}'",
            crate::plan::sanitize(&self.target.name)
        );
        format!(
            "grep -qxF {port_q} {conf} && grep -qxF {name_q} {conf} || printf '%s\\n' {port_q} {name_q} >> {conf}",
            port_q = shell_quote(&port),
            name_q = shell_quote(&name),
        )
    }

    /// Lists the target host's processes as `PID STAT COMMAND LINE`;
    /// [`Self::copies_into_target`] picks the `pg_basebackup`s copying into the target.
    pub const PROCESSES_COMMAND: &'static str = "ps -eo pid=,stat=,args=";

    /// The PID on a [`Self::PROCESSES_COMMAND`] line whose live (not zombie) process is a
    /// `pg_basebackup` copying into the target's data directory.
    pub fn copies_into_target<'a>(&self, line: &'a str) -> Option<&'a str> {
        let mut fields = line.trim_start().splitn(3, char::is_whitespace);
        let (pid, stat, command) = (fields.next()?, fields.next()?, fields.next()?.trim());
        let target = format!(" -D {}", self.target.data_dir);
        let is_basebackup = command
            .split_whitespace()
            .next()
            .is_some_and(|program| program.ends_with("pg_basebackup"));
        let into_target = command.contains(&format!("{target} ")) || command.ends_with(&target);
        let pid_is_number = !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
        (pid_is_number && is_basebackup && into_target && !stat.starts_with('Z')).then_some(pid)
    }

    /// Removes the target's data directory contents (never the directory itself).
    pub fn discard_target_command(&self) -> String {
        format!(
            "find {} -mindepth 1 -maxdepth 1 -exec rm -rf {{}} +",
            shell_quote(&self.target.data_dir)
        )
    }

    pub fn plan(&self) -> Result<Plan, RunbookError> {
        Ok(Plan::new(
            &self.inventory,
            RUNBOOK,
            self.params.to_map(),
            self.steps(),
        )?)
    }

    fn steps(&self) -> Vec<Step> {
        let s = &self.source.name;
        let t = &self.target.name;
        let b = &self.bouncer.name;
        let from_db = &self.from.dbname;
        let to_db = &self.to.dbname;
        let [first, last] = self.to.shards;
        let pause: Vec<RenderedCommand> = self
            .paused_aliases
            .iter()
            .map(|a| RenderedCommand::pgbouncer_admin(b, pause_sql(a)))
            .collect();
        let resume: Vec<RenderedCommand> = self
            .paused_aliases
            .iter()
            .rev()
            .map(|a| RenderedCommand::pgbouncer_admin(b, resume_sql(a)))
            .collect();
        let traffic = self.inventory.traffic.clone();
        let hook_host = traffic
            .as_ref()
            .and_then(|h| h.host.clone())
            .unwrap_or_else(|| "local".into());

        let preflight = SplitStep::Preflight.step(format!("Preflight: {s} can feed a standby on {t}"))
            .command(RenderedCommand::sql(s, &self.source.maintenance_db, PREFLIGHT_SETTINGS_SQL))
            .command(RenderedCommand::sql(s, &self.source.maintenance_db, LONG_TRANSACTIONS_SQL))
            .command(RenderedCommand::shell(&self.target.host, self.target_disk_command()))
            .command(RenderedCommand::pgbouncer_admin(b, "SHOW VERSION"))
            .precondition("replication-capacity", format!("{s}: wal_level is replica or logical, a WAL sender and a replication slot are free, slot {} is unused", self.slot))
            .precondition("target-empty", format!("{t}: not running and data directory {} empty", self.target.data_dir))
            .precondition("target-disk", format!("{t}: free disk ≥ size of {s}"))
            .precondition("ssh-and-pgbouncer", format!("SSH to {} and pgbouncer {b} admin console answer", self.target.host))
            .precondition("shard-map", "distribution has no misplaced rows; plproxy routes every shard as the inventory says")
            .precondition("no-long-transactions", format!("{s}: no transaction open longer than 60 s"))
            .verification("every precondition holds");

        let base_backup = SplitStep::BaseBackup
            .step(format!("Base backup: make {t} a streaming standby of {s}"))
            .command(RenderedCommand::shell(
                &self.target.host,
                self.basebackup_command(),
            ))
            .command(RenderedCommand::shell(
                &self.target.host,
                self.standby_settings_command(),
            ))
            .command(RenderedCommand::shell(
                &self.target.host,
                self.target.control.start.clone(),
            ))
            .command(RenderedCommand::internal(
                format!("{t} · poll"),
                format!("wait until {t} replays up to {s}'s pg_current_wal_lsn()"),
            ))
            .verification(format!(
                "{t} is in recovery, streaming from {s} through slot {}, lag 0 B",
                self.slot
            ))
            .undo(Undo::Reversible {
                description: format!(
                    "stop {t}, discard its data directory, drop slot {} on {s}",
                    self.slot
                ),
                commands: vec![
                    RenderedCommand::shell(&self.target.host, self.target.control.stop.clone()),
                    RenderedCommand::shell(&self.target.host, self.discard_target_command()),
                    RenderedCommand::sql(s, &self.source.maintenance_db, drop_slot_sql(&self.slot)),
                ],
            });

        let mut baseline = SplitStep::Baseline
            .step("Baseline: record the per-shard distribution of every sharded table")
            .verification("per-shard counts of every sharded table recorded in the journal");
        for table in &self.inventory.sharded_tables {
            baseline =
                baseline.command(RenderedCommand::sql(s, from_db, self.per_shard_sql(table)));
        }

        let mut stop_traffic = SplitStep::StopTraffic
            .step(format!(
                "Stop traffic: PAUSE {}",
                self.paused_aliases.join(", ")
            ))
            .verification("SHOW DATABASES reports every alias paused")
            .undo(Undo::Reversible {
                description: "RESUME the aliases and start traffic".into(),
                commands: resume.clone(),
            })
            .flags(StepFlags {
                pauses_traffic: true,
                ..StepFlags::default()
            });
        if let Some(hooks) = &traffic {
            stop_traffic =
                stop_traffic.command(RenderedCommand::shell(&hook_host, hooks.stop.clone()));
        }
        for command in pause {
            stop_traffic = stop_traffic.command(command);
        }
        stop_traffic = stop_traffic.command(RenderedCommand::internal(
            "pause bound",
            format!("if RESUME has not run {} ms after PAUSE, traffic resumes by itself and the run rolls back to before the pause", self.params.pause_bound.as_millis()),
        ));

        let gate = SplitStep::LsnGate
            .step(format!("Gate: {t} has replayed everything {s} wrote"))
            .command(RenderedCommand::sql(
                s,
                &self.source.maintenance_db,
                PRIMARY_LSN_SQL,
            ))
            .command(RenderedCommand::sql(
                t,
                &self.target.maintenance_db,
                STANDBY_LSN_SQL,
            ))
            .verification(format!(
                "{t}'s pg_last_wal_replay_lsn() ≥ {s}'s pg_current_wal_lsn(); both recorded"
            ))
            .flags(StepFlags {
                needs_traffic_stopped: true,
                ..StepFlags::default()
            });

        let promote = SplitStep::Promote
            .step(format!("Promote {t}"))
            .command(RenderedCommand::sql(
                t,
                &self.target.maintenance_db,
                format!("{STANDBY_LSN_SQL}  -- re-proved right before promoting"),
            ))
            .command(RenderedCommand::sql(
                t,
                &self.target.maintenance_db,
                PROMOTE_SQL,
            ))
            .command(RenderedCommand::internal(
                format!("{t} · poll"),
                "SELECT pg_is_in_recovery();  -- every 5 ms until false",
            ))
            .verification(format!("{t} is out of recovery"))
            .undo(Undo::Reversible {
                description: format!(
                    "{t} has served no traffic yet: stop it (base-backup's undo discards it)"
                ),
                commands: vec![RenderedCommand::shell(
                    &self.target.host,
                    self.target.control.stop.clone(),
                )],
            })
            .flags(StepFlags {
                needs_traffic_stopped: true,
                ..StepFlags::default()
            });

        let rename = SplitStep::Rename
            .step(format!("Rename {from_db} to {to_db} on {t}"))
            .command(RenderedCommand::sql(
                t,
                &self.target.maintenance_db,
                terminate_sql(from_db),
            ))
            .command(RenderedCommand::sql(
                t,
                &self.target.maintenance_db,
                rename_sql(from_db, to_db),
            ))
            .verification(format!("{t} has {to_db} and no {from_db}"))
            .undo(Undo::Reversible {
                description: format!("rename {to_db} back to {from_db}"),
                commands: vec![
                    RenderedCommand::sql(t, &self.target.maintenance_db, terminate_sql(to_db)),
                    RenderedCommand::sql(
                        t,
                        &self.target.maintenance_db,
                        rename_sql(to_db, from_db),
                    ),
                ],
            })
            .flags(StepFlags {
                needs_traffic_stopped: true,
                ..StepFlags::default()
            });

        let mut reroute = SplitStep::Reroute
            .step(format!(
                "Re-route shards {first}–{last} to {} on {t}",
                self.to.name
            ))
            .command(RenderedCommand::file("<inventory>", self.inventory_diff()))
            .command(RenderedCommand::file(
                &self.bouncer.config,
                format!(
                    "[databases]\n+{} = {}",
                    to_db,
                    self.new_alias_target().render()
                ),
            ))
            .command(RenderedCommand::pgbouncer_admin(b, "RELOAD"));
        if let (Some(proxy), Some(sql)) = (self.inventory.proxy.as_ref(), self.reroute_sql(to_db)) {
            reroute = reroute.command(RenderedCommand::sql(&proxy.node, &proxy.dbname, sql));
        }
        let mut undo_reroute = Vec::new();
        if let (Some(proxy), Some(sql)) = (self.inventory.proxy.as_ref(), self.reroute_sql(from_db))
        {
            undo_reroute.push(RenderedCommand::sql(&proxy.node, &proxy.dbname, sql));
        }
        undo_reroute.push(RenderedCommand::file(
            &self.bouncer.config,
            format!(
                "copy {} back to {} on host {}",
                run_file(INI_BACKUP_FILE),
                self.bouncer.config,
                self.bouncer.host
            ),
        ));
        undo_reroute.push(RenderedCommand::pgbouncer_admin(b, "RELOAD"));
        undo_reroute.push(RenderedCommand::file(
            "<inventory>",
            format!(
                "copy {} back to <inventory>",
                run_file(INVENTORY_BACKUP_FILE)
            ),
        ));
        let reroute = reroute
            .verification("plproxy, pgbouncer and the new inventory route every moved shard to the new partition")
            .undo(Undo::Reversible {
                description: format!(
                    "restore the plproxy options, then pgbouncer.ini and the inventory from the copies the re-route kept in the run dir ({}, on the machine running cutover)",
                    run_file("")
                ),
                commands: undo_reroute,
            })
            .flags(StepFlags { needs_traffic_stopped: true, ..StepFlags::default() });

        let mut resume_traffic = SplitStep::ResumeTraffic.step(format!(
            "Resume traffic: RESUME {}",
            self.paused_aliases.join(", ")
        ));
        for command in resume {
            resume_traffic = resume_traffic.command(command);
        }
        if let Some(hooks) = &traffic {
            resume_traffic =
                resume_traffic.command(RenderedCommand::shell(&hook_host, hooks.start.clone()));
        }
        let resume_traffic = resume_traffic
            .verification("SHOW DATABASES reports no alias paused")
            .undo(Undo::PointOfNoReturn {
                reason: format!("from here on, writes for shards {first}–{last} land only on {t}; going back would lose them"),
            })
            .flags(StepFlags { resumes_traffic: true, needs_traffic_stopped: true, ..StepFlags::default() });

        let mut verify = SplitStep::Verify.step("Verify: one owner per shard; counts match the baseline plus new writes")
            .command(RenderedCommand::sql(
                self.inventory.proxy.as_ref().map(|p| p.node.as_str()).unwrap_or(s),
                self.inventory.proxy.as_ref().map(|p| p.dbname.as_str()).unwrap_or("-"),
                PLPROXY_OPTIONS_SQL,
            ))
            .command(RenderedCommand::pgbouncer_admin(b, "SHOW DATABASES"))
            .verification("for every shard, plproxy, pgbouncer and the inventory name the same single node; for every sharded table, per-shard counts on the owner ≥ baseline");
        for table in &self.inventory.sharded_tables {
            let sql = self.per_shard_sql(table);
            verify = verify
                .command(RenderedCommand::sql(s, from_db, sql.clone()))
                .command(RenderedCommand::sql(t, to_db, sql));
        }

        let mut delete = SplitStep::DeleteInvalid.step("Delete rows each node no longer owns, online, proven first")
            .command(RenderedCommand::internal(
                "per sharded table, per shard, both nodes",
                format!(
                    "1. on the non-owner: keys of the shard, and whether each was written after the cutover (age(xmin) ≤ age(cutover xid): the cutover xid is the first one not yet assigned at promotion)\n\
                     2. on the owner: which of those keys exist\n\
                     3. keys missing on the owner and written after the cutover are stray writes: copy them to the owner\n\
                     4. keys missing on the owner and older than the cutover: REFUSE the shard (the owner lacks rows)\n\
                     5. prove count + md5 of the keys equal on both sides, per shard\n\
                     6. delete in batches of {DELETE_BATCH} keys, pausing while replication lag > {} MB",
                    MAX_LAG_BYTES / 1_000_000
                ),
            ))
            .verification("no node holds rows of a shard it does not own; every deleted key is present on its owner")
            .undo(Undo::PointOfNoReturn { reason: "rows are deleted from the nodes that no longer own them".into() })
            .flags(StepFlags { destructive: true, ..StepFlags::default() });
        // Each node is the non-owner of the other's shards: the statements run both ways.
        for table in &self.inventory.sharded_tables {
            let ty = KEY_TYPE_PLACEHOLDER;
            for ((n, n_db), (o, o_db)) in [((s, from_db), (t, to_db)), ((t, to_db), (s, from_db))] {
                delete = delete
                    .command(RenderedCommand::sql(n, n_db, self.shard_keys_sql(table)))
                    .command(RenderedCommand::sql(o, o_db, present_keys_sql(table, ty)))
                    .command(RenderedCommand::sql(
                        n,
                        n_db,
                        self.key_digest_sql(table, ty),
                    ))
                    .command(RenderedCommand::sql(
                        o,
                        o_db,
                        self.key_digest_sql(table, ty),
                    ))
                    .command(RenderedCommand::sql(
                        n,
                        n_db,
                        self.delete_batch_sql(table, ty),
                    ));
            }
        }

        let mut vacuum = SplitStep::Vacuum
            .step("VACUUM ANALYZE so the estimates are right")
            .verification("planner estimates match exact counts within 10%");
        for table in &self.inventory.sharded_tables {
            let sql = format!("VACUUM ANALYZE {}", quote_qualified(&table.table));
            vacuum = vacuum
                .command(RenderedCommand::sql(s, from_db, sql.clone()))
                .command(RenderedCommand::sql(t, to_db, sql));
        }

        let drop_slot = SplitStep::DropSlot
            .step(format!("Drop slot {} on {s}", self.slot))
            .command(RenderedCommand::sql(
                s,
                &self.source.maintenance_db,
                drop_slot_sql(&self.slot),
            ))
            .verification(format!("{s} has no slot {}", self.slot));

        let validate = SplitStep::ValidateConnections
            .step(format!(
                "Validate connections: {s} serves only {from_db}, {t} only {to_db}"
            ))
            .command(RenderedCommand::sql(
                s,
                &self.source.maintenance_db,
                CONNECTIONS_BY_DB_SQL,
            ))
            .command(RenderedCommand::sql(
                t,
                &self.target.maintenance_db,
                CONNECTIONS_BY_DB_SQL,
            ))
            .verification(
                "no client is connected to a partition database on a node that does not hold it",
            );

        vec![
            preflight,
            base_backup,
            baseline,
            stop_traffic,
            gate,
            promote,
            rename,
            reroute,
            resume_traffic,
            verify,
            delete,
            vacuum,
            drop_slot,
            validate,
        ]
    }

    pub fn target_disk_command(&self) -> String {
        format!(
            "df -B1 --output=avail {} | tail -n 1",
            shell_quote(&self.target.data_dir)
        )
    }

    /// Exact rows per shard of `table`, for the baseline and verify.
    pub fn per_shard_sql(&self, table: &ShardedTable) -> String {
        format!(
            "SELECT {} AS shard, count(*) FROM {} GROUP BY 1 ORDER BY 1",
            self.shard_expr(table),
            quote_qualified(&table.table)
        )
    }

    /// `(hash) & mask` of `table`: a row's shard.
    ///
    /// Invariant: the inventory's `hash` was checked to be exactly one SQL expression, and every
    /// statement it appears in is sent with the extended protocol (`query`/`execute`), which
    /// parses exactly one statement, so it can never become a second one.
    pub fn shard_expr(&self, table: &ShardedTable) -> String {
        format!("(({}) & {})::int8", table.hash, self.inventory.shard_mask())
    }

    /// On the non-owner: key, shard and whether the row was written after the cutover, for the
    /// rows of the shards in `$1`; `$2` is the node's cutover xid.
    pub fn shard_keys_sql(&self, table: &ShardedTable) -> String {
        let shard = self.shard_expr(table);
        format!(
            "SELECT {}::text, {shard}, age(xmin) <= age($2::text::xid) FROM {} WHERE {shard} = ANY($1::int8[])",
            quote_ident(&table.key[0]),
            quote_qualified(&table.table)
        )
    }

    /// Per shard, count and md5 of the sorted keys among `$1`; equal on both nodes proves the
    /// owner holds exactly the keys the non-owner is about to delete.
    pub fn key_digest_sql(&self, table: &ShardedTable, key_type: &str) -> String {
        let key = quote_ident(&table.key[0]);
        format!(
            "SELECT {}, count(*), md5(string_agg({key}::text, ',' ORDER BY {key}::text)) \
             FROM {} WHERE {key} = ANY($1::text[]::{key_type}[]) GROUP BY 1",
            self.shard_expr(table),
            quote_qualified(&table.table)
        )
    }

    /// One batch of the verified delete: `$1` holds keys proven present on the owner, `$2`
    /// the proven shards, which guards against a wrong key list. `key_type` is the key column's type
    /// (looked up at run time; the plan shows a placeholder).
    pub fn delete_batch_sql(&self, table: &ShardedTable, key_type: &str) -> String {
        format!(
            "DELETE FROM {} WHERE {} = ANY($1::text[]::{key_type}[]) AND {} = ANY($2::int8[])",
            quote_qualified(&table.table),
            quote_ident(&table.key[0]),
            self.shard_expr(table)
        )
    }

    fn inventory_diff(&self) -> String {
        let before = serde_yaml::to_string(&self.inventory).unwrap_or_default();
        let after = serde_yaml::to_string(&self.inventory_after).unwrap_or_default();
        unified_diff(&before, &after)
    }
}

/// On the owner: which of the keys in `$1` it holds.
pub fn present_keys_sql(table: &ShardedTable, key_type: &str) -> String {
    format!(
        "SELECT {key}::text FROM {} WHERE {key} = ANY($1::text[]::{key_type}[])",
        quote_qualified(&table.table),
        key = quote_ident(&table.key[0])
    )
}

/// The run dir as a plan can name it: the run id is not known when the plan is made.
/// `session` places a run's files under `<state-dir>/runs/<run-id>/`.
pub const RUN_DIR_PATTERN: &str = "<state-dir>/runs/<run-id>/";
/// The run-dir file the re-route keeps pgbouncer.ini in before changing it (effects `INI_BACKUP`).
pub const INI_BACKUP_FILE: &str = "pgbouncer.ini.before";
/// The run-dir file the re-route keeps the inventory in before rewriting it
/// (`executor::context`'s `INVENTORY_BACKUP`).
pub const INVENTORY_BACKUP_FILE: &str = "inventory.before.yaml";

fn run_file(name: &str) -> String {
    format!("{RUN_DIR_PATTERN}{name}")
}

pub const DELETE_BATCH: usize = 5_000;
const KEY_TYPE_PLACEHOLDER: &str = "<key column type>";
pub const MAX_LAG_BYTES: i64 = 64_000_000;

/// The diff a reviewer sees for a file change.
pub fn unified_diff(before: &str, after: &str) -> String {
    similar::TextDiff::from_lines(before, after)
        .unified_diff()
        .context_radius(2)
        .header("before", "after")
        .to_string()
}

/// `commcarehq_p1` → `commcarehq_p2` when the database is named after its partition, else `to`.
fn new_database_name(from: &Partition, to: &str) -> String {
    match from.dbname.strip_suffix(&from.name) {
        Some(prefix) => format!("{prefix}{to}"),
        None => to.to_string(),
    }
}

fn inventory_after(
    inventory: &Inventory,
    from_after: &Partition,
    to: &Partition,
    bouncer: &Pgbouncer,
    target: &Node,
) -> Inventory {
    let mut after = inventory.clone();
    for p in after.partitions.iter_mut() {
        if p.name == from_after.name {
            *p = from_after.clone();
        }
    }
    let position = after
        .partitions
        .iter()
        .position(|p| p.name == from_after.name)
        .map_or(after.partitions.len(), |i| i + 1);
    after.partitions.insert(position, to.clone());
    for b in after
        .pgbouncers
        .iter_mut()
        .filter(|b| b.name == bouncer.name)
    {
        b.aliases.retain(|a| a.name != to.dbname);
        b.aliases.push(PgbouncerAlias {
            name: to.dbname.clone(),
            node: target.name.clone(),
            dbname: to.dbname.clone(),
        });
    }
    after.standbys.retain(|s: &Standby| s.node != target.name);
    after
}

pub fn pause_sql(alias: &str) -> String {
    format!("PAUSE {}", quote_ident(alias))
}
pub fn resume_sql(alias: &str) -> String {
    format!("RESUME {}", quote_ident(alias))
}
pub fn rename_sql(from: &str, to: &str) -> String {
    format!(
        "ALTER DATABASE {} RENAME TO {}",
        quote_ident(from),
        quote_ident(to)
    )
}
pub fn terminate_sql(dbname: &str) -> String {
    format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = {} AND pid <> pg_backend_pid()",
        quote_literal(dbname)
    )
}
pub fn drop_slot_sql(slot: &str) -> String {
    format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {}",
        quote_literal(slot)
    )
}

pub const PREFLIGHT_SETTINGS_SQL: &str = "SELECT current_setting('wal_level'), current_setting('max_wal_senders')::int, \
(SELECT count(*) FROM pg_stat_replication)::int, current_setting('max_replication_slots')::int, \
(SELECT count(*) FROM pg_replication_slots)::int, (SELECT sum(pg_database_size(datname)) FROM pg_database)::int8";
pub const LONG_TRANSACTIONS_SQL: &str = "SELECT count(*)::int8, coalesce(max(extract(epoch FROM now() - xact_start)), 0)::float8 \
FROM pg_stat_activity WHERE xact_start < now() - interval '60 seconds' AND backend_type = 'client backend' AND pid <> pg_backend_pid()";
pub const PRIMARY_LSN_SQL: &str = "SELECT pg_current_wal_lsn()::text";
pub const STANDBY_LSN_SQL: &str = "SELECT pg_last_wal_replay_lsn()::text, pg_is_in_recovery()";
pub const PROMOTE_SQL: &str = "SELECT pg_promote(wait => false)";
pub const PLPROXY_OPTIONS_SQL: &str =
    "SELECT unnest(srvoptions) FROM pg_foreign_server WHERE srvname = $1";
pub const CONNECTIONS_BY_DB_SQL: &str = "SELECT datname::text, count(*)::int8 FROM pg_stat_activity \
WHERE backend_type = 'client backend' AND datname IS NOT NULL AND pid <> pg_backend_pid() GROUP BY 1 ORDER BY 1";
