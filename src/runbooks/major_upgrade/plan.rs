//! The `major-upgrade` runbook: move every database of node `from` (PostgreSQL N) to node `to`
//! (PostgreSQL M > N) by dump and restore (`dumpall`, `parallel`) or `pg_upgrade`, validate,
//! repoint pgbouncer, and keep the old cluster as the way back until it is retired.
//!
//! Pure: turns inventory + parameters into the reviewed [`Plan`]. The command and SQL builders
//! here are the single source of what the executor runs, so what a reviewer reads is what runs.

use super::UpgradeStep;
use crate::inventory::{Inventory, Node, Pgbouncer, PgbouncerAlias};
use crate::pgbouncer_ini::AliasTarget;
use crate::plan::{ParamError, Plan, RenderedCommand, Step, StepFlags, Undo};
use crate::quote::shell_quote;
use crate::runbooks::shard_split::plan::{pause_sql, resume_sql, unified_diff};
use crate::runbooks::RunbookError;
use crate::runbooks::StepKind;
use std::collections::BTreeMap;
use std::time::Duration;

pub const RUNBOOK: &str = "major-upgrade";
/// The write pause (the downtime window) an upgrade allows unless `--pause-bound-ms` says otherwise.
pub const DEFAULT_PAUSE_BOUND: Duration = Duration::from_secs(600);
/// How long the new cluster serves traffic before the old one may be retired, unless
/// `--min-soak-s` says otherwise.
pub const DEFAULT_MIN_SOAK: Duration = Duration::from_secs(1800);

/// Errors a restore may raise that are known to be harmless. Anything else fails the step.
/// Matched against the text after `ERROR:` in psql's or pg_restore's message.
pub const BENIGN_RESTORE_ERRORS: &[&str] = &[
    // pg_dumpall always emits CREATE ROLE for the bootstrap superuser, which initdb created.
    "role \"postgres\" already exists",
];

/// gzip level of the `dumpall` artifact: fast, because it runs inside the downtime window.
pub const GZIP_LEVEL: u32 = 1;

/// SHA-512 of finished files (the `parallel` method's, the globals). OpenSSL's SHA-512 is
/// about 3× faster than coreutils' `sha512sum` here; `-r` prints `sha512sum`'s format, so the
/// target verifies with `sha512sum --check`.
pub const SHA512_FILTER: &str = "openssl dgst -sha512 -r";

/// Writes stdin to the file named by its argument and prints the SHA-512 of what passed, in
/// one process: the artifact is hashed as it is written, never read again. It widens its pipe
/// to 1 MiB and moves 1 MiB at a time; `tee | openssl dgst` moves 8 KiB at a time, and on 2
/// cores those wake-ups cost 6–8% of the dump against this filter's 0–2%.
const TEE_SHA512_PY: &str = "import fcntl, hashlib, sys
try:
    fcntl.fcntl(0, 1031, 1 << 20)  # F_SETPIPE_SZ; a smaller pipe still works
except OSError:
    pass
digest = hashlib.sha512()
buffer = bytearray(1 << 20)
view = memoryview(buffer)
with open(sys.argv[1], 'wb', buffering=0) as out:
    while True:
        n = sys.stdin.buffer.raw.readinto(buffer)
        if not n:
            break
        digest.update(view[:n])
        written = 0
        while written < n:
            written += out.write(view[written:n])
print(digest.hexdigest())
";

/// The shell words that write stdin to `file` and print its SHA-512 (see [`TEE_SHA512_PY`]).
pub fn tee_sha512(file: &str) -> String {
    format!(
        "python3 -c {} {}",
        shell_quote(TEE_SHA512_PY),
        shell_quote(file)
    )
}

/// How the data reaches the new version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `pg_dumpall | gzip`, checksummed in the same pass, restored with psql.
    Dumpall,
    /// `pg_dump -Fd -j N` per database plus `pg_dumpall --globals-only`, restored with
    /// `pg_restore -j N`.
    Parallel,
    /// `pg_upgrade --link` (`link: true`) or `--copy` on the host that has both versions.
    PgUpgrade { link: bool },
}

impl Method {
    pub fn parse(text: &str) -> Option<Method> {
        match text {
            "dumpall" => Some(Method::Dumpall),
            "parallel" => Some(Method::Parallel),
            "pg-upgrade" | "pg-upgrade-link" => Some(Method::PgUpgrade { link: true }),
            "pg-upgrade-copy" => Some(Method::PgUpgrade { link: false }),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Method::Dumpall => "dumpall",
            Method::Parallel => "parallel",
            Method::PgUpgrade { link: true } => "pg-upgrade",
            Method::PgUpgrade { link: false } => "pg-upgrade-copy",
        }
    }
    pub fn is_dump(self) -> bool {
        !matches!(self, Method::PgUpgrade { .. })
    }
}

/// How traffic stops during the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficMode {
    /// Traffic hooks (if the inventory has them) plus pgbouncer `PAUSE` of every alias on the
    /// source.
    Pause,
    /// Traffic hooks alone: a plain downtime window; pgbouncer is only repointed.
    HooksOnly,
}

/// Operator-given parameters of an upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeParams {
    /// Node holding the old cluster.
    pub from: String,
    /// Node holding the new, empty cluster.
    pub to: String,
    pub method: Method,
    /// Parallel jobs for `parallel` (pg_dump/pg_restore) and `pg_upgrade -j`.
    pub jobs: u32,
    /// Longest write pause before traffic resumes on the source by itself and the run rolls back.
    pub pause_bound: Duration,
    /// Where the artifacts live, the same path on both hosts.
    pub dump_dir: Option<String>,
    /// Restore into a scratch cluster of the target version before the real restore.
    pub test_restore: bool,
    pub traffic: TrafficMode,
    /// Least time traffic runs on the new cluster before `retire-old-cluster` may start.
    pub min_soak: Duration,
}

impl UpgradeParams {
    pub fn from_map(params: &BTreeMap<String, String>) -> Result<UpgradeParams, ParamError> {
        let get = |name: &'static str| crate::plan::required_param(params, name);
        let invalid = |name: &'static str, value: &str, reason: &str| ParamError::Invalid {
            name,
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let method = match params.get("method") {
            None => Method::Dumpall,
            Some(m) => Method::parse(m).ok_or_else(|| {
                invalid(
                    "method",
                    m,
                    "expected dumpall, parallel, pg-upgrade or pg-upgrade-copy",
                )
            })?,
        };
        let jobs = match params.get("jobs") {
            None => 4,
            Some(j) => j
                .parse()
                .ok()
                .filter(|n| (1..=64).contains(n))
                .ok_or_else(|| invalid("jobs", j, "expected 1–64"))?,
        };
        let pause_bound = crate::plan::pause_bound_param(params, DEFAULT_PAUSE_BOUND)?;
        let test_restore = match params.get("test-restore").map(String::as_str) {
            None | Some("no" | "false") => false,
            Some("yes" | "true") => true,
            Some(other) => return Err(invalid("test-restore", other, "expected yes or no")),
        };
        let traffic = match params.get("traffic").map(String::as_str) {
            None | Some("pause") => TrafficMode::Pause,
            Some("hooks") => TrafficMode::HooksOnly,
            Some(other) => return Err(invalid("traffic", other, "expected pause or hooks")),
        };
        let min_soak = match params.get("min-soak-s") {
            None => DEFAULT_MIN_SOAK,
            Some(s) => s
                .parse()
                .map(Duration::from_secs)
                .map_err(|_| invalid("min-soak-s", s, "expected whole seconds"))?,
        };
        let dump_dir = params.get("dump-dir").cloned();
        if let Some(dir) = &dump_dir {
            if !dir.starts_with('/') {
                return Err(invalid("dump-dir", dir, "must be an absolute path"));
            }
        }
        Ok(UpgradeParams {
            from: get("from")?,
            to: get("to")?,
            method,
            jobs,
            pause_bound,
            dump_dir,
            test_restore,
            traffic,
            min_soak,
        })
    }

    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut map = BTreeMap::from([
            ("from".to_string(), self.from.clone()),
            ("to".to_string(), self.to.clone()),
            ("method".to_string(), self.method.name().to_string()),
            ("jobs".to_string(), self.jobs.to_string()),
            (
                "pause-bound-ms".to_string(),
                self.pause_bound.as_millis().to_string(),
            ),
            (
                "test-restore".to_string(),
                if self.test_restore { "yes" } else { "no" }.to_string(),
            ),
            (
                "traffic".to_string(),
                match self.traffic {
                    TrafficMode::Pause => "pause",
                    TrafficMode::HooksOnly => "hooks",
                }
                .to_string(),
            ),
        ]);
        if let Some(dir) = &self.dump_dir {
            map.insert("dump-dir".into(), dir.clone());
        }
        // Recorded only when given, so plans made before the flag keep their fingerprints.
        if self.min_soak != DEFAULT_MIN_SOAK {
            map.insert("min-soak-s".into(), self.min_soak.as_secs().to_string());
        }
        map
    }
}

/// The aliases of one pgbouncer that route to the source node.
#[derive(Debug, Clone)]
pub struct BouncerAliases {
    pub bouncer: Pgbouncer,
    pub aliases: Vec<PgbouncerAlias>,
}

/// Everything an upgrade needs, resolved from the inventory once and validated.
#[derive(Debug, Clone)]
pub struct Upgrade {
    pub params: UpgradeParams,
    pub inventory: Inventory,
    pub source: Node,
    pub target: Node,
    /// Aliases routed to the source, per pgbouncer; repointed to the target.
    pub routes: Vec<BouncerAliases>,
    /// Artifact directory (same path on the source and target hosts).
    pub dump_dir: String,
    /// The inventory as it will be after the switch: everything on the source now on the target.
    pub inventory_after: Inventory,
}

impl Upgrade {
    pub fn resolve(inventory: &Inventory, params: UpgradeParams) -> Result<Upgrade, RunbookError> {
        let bad = |reason: String| RunbookError::Inventory {
            runbook: RUNBOOK,
            reason,
        };
        let node = |name: &str| {
            inventory
                .node(name)
                .cloned()
                .ok_or_else(|| bad(format!("node `{name}` is not in the inventory")))
        };
        let source = node(&params.from)?;
        let target = node(&params.to)?;
        if source.name == target.name {
            return Err(bad("--from and --to name the same node".into()));
        }
        if target.version <= source.version {
            return Err(bad(format!(
                "{} is PostgreSQL {} and {} is {}: the target must be a newer major version",
                source.name, source.version, target.name, target.version
            )));
        }
        if matches!(params.method, Method::PgUpgrade { .. }) && source.host != target.host {
            return Err(bad(format!(
                "pg_upgrade needs both clusters on one host: {} is on {}, {} on {}; use --method dumpall or parallel",
                source.name, source.host, target.name, target.host
            )));
        }
        if let Some(proxy) = &inventory.proxy {
            if proxy.route_via.is_none() && proxy.node == source.name {
                return Err(bad(
                    "plproxy connects to the nodes directly (no route_via); route it through pgbouncer first".into(),
                ));
            }
        }
        let routes: Vec<BouncerAliases> = inventory
            .pgbouncers
            .iter()
            .filter_map(|b| {
                let aliases: Vec<PgbouncerAlias> = b
                    .aliases
                    .iter()
                    .filter(|a| a.node == source.name)
                    .cloned()
                    .collect();
                (!aliases.is_empty()).then(|| BouncerAliases {
                    bouncer: b.clone(),
                    aliases,
                })
            })
            .collect();
        let has_hooks = inventory.traffic.is_some();
        match params.traffic {
            TrafficMode::Pause if routes.is_empty() && !has_hooks => {
                return Err(bad(format!(
                    "nothing stops traffic to {}: no pgbouncer alias routes to it and the inventory has no traffic hooks",
                    source.name
                )))
            }
            TrafficMode::HooksOnly if !has_hooks => {
                return Err(bad(
                    "--traffic hooks needs `traffic:` hooks in the inventory".into(),
                ))
            }
            _ => {}
        }
        let dump_dir = params.dump_dir.clone().unwrap_or_else(|| {
            let parent = std::path::Path::new(&source.data_dir)
                .parent()
                .map(|p| p.display().to_string())
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/tmp".into());
            format!(
                "{}/cutover-upgrade-{}-{}",
                parent.trim_end_matches('/'),
                crate::plan::sanitize(&source.name),
                crate::plan::sanitize(&target.name)
            )
        });
        let inventory_after = inventory_after(inventory, &source, &target);
        Ok(Upgrade {
            params,
            inventory: inventory.clone(),
            source,
            target,
            routes,
            dump_dir,
            inventory_after,
        })
    }

    pub fn method(&self) -> Method {
        self.params.method
    }

    /// Aliases paused in the window (none with `--traffic hooks`), as (bouncer, alias).
    pub fn paused_aliases(&self) -> Vec<(String, String)> {
        if self.params.traffic == TrafficMode::HooksOnly {
            return Vec::new();
        }
        self.routes
            .iter()
            .flat_map(|r| {
                r.aliases
                    .iter()
                    .map(|a| (r.bouncer.name.clone(), a.name.clone()))
            })
            .collect()
    }

    pub fn new_alias_target(&self, alias: &PgbouncerAlias) -> AliasTarget {
        AliasTarget {
            host: self.target.address.clone(),
            port: self.target.port,
            dbname: alias.dbname.clone(),
        }
    }

    pub fn plan(&self) -> Result<Plan, RunbookError> {
        Ok(Plan::new(
            &self.inventory,
            RUNBOOK,
            self.params.to_map(),
            self.steps(),
        )?)
    }

    // ---- command builders (the executor runs exactly these) ----------------------------------

    fn conn_args(node: &Node) -> String {
        format!(
            "-h {} -p {} -U {}",
            shell_quote(&node.address),
            node.port,
            shell_quote(&node.user)
        )
    }

    /// A program in an installation's `bin_dir`, quoted as one shell word.
    fn tool(bin_dir: &str, program: &str) -> String {
        shell_quote(&format!("{bin_dir}/{program}"))
    }

    /// `bash -o pipefail -c '…'`: a failing stage of a pipeline fails the command.
    fn pipefail(script: &str) -> String {
        format!("bash -o pipefail -c {}", shell_quote(script))
    }

    pub fn dumpall_file(&self) -> String {
        format!("{}/dumpall.sql.gz", self.dump_dir)
    }

    pub fn parallel_dir(&self) -> String {
        format!("{}/parallel", self.dump_dir)
    }

    pub fn globals_file(&self) -> String {
        format!("{}/globals.sql", self.parallel_dir())
    }

    /// The directory holding one database's `pg_dump -Fd` output; hex keeps any name safe.
    pub fn database_dump_dir(&self, dbname: &str) -> String {
        format!("{}/db-{}.dir", self.parallel_dir(), hex::encode(dbname))
    }

    /// Checksum file next to an artifact, in `sha512sum -c` format.
    pub fn checksum_file(artifact: &str) -> String {
        format!("{artifact}.sha512")
    }

    /// `pg_dumpall | gzip`, with the sha512 computed in the same pass by [`tee_sha512`], the
    /// stage that writes the artifact. Source tools; written to `.partial` files first, so a
    /// crash never leaves a complete-looking artifact.
    pub fn dumpall_command(&self) -> String {
        let file = self.dumpall_file();
        let sum = Self::checksum_file(&file);
        let name = "dumpall.sql.gz";
        Self::pipefail(&format!(
            "mkdir -p {dir} && rm -f {file_q} {sum_q} && \
             {dumpall} {conn} | gzip -{GZIP_LEVEL} | {tee} | \
             awk '{{print $1 \"  {name}\"}}' > {sum_q}.partial && \
             mv {file_q}.partial {file_q} && mv {sum_q}.partial {sum_q}",
            dir = shell_quote(&self.dump_dir),
            file_q = shell_quote(&file),
            sum_q = shell_quote(&sum),
            tee = tee_sha512(&format!("{file}.partial")),
            dumpall = Self::tool(&self.source.bin_dir, "pg_dumpall"),
            conn = Self::conn_args(&self.source),
        ))
    }

    /// `pg_dumpall` alone, to the same fast gzip, without the checksum (the rehearsal measures
    /// what checksumming adds).
    pub fn dumpall_unchecked_command(&self, out: &str) -> String {
        Self::pipefail(&format!(
            "{dumpall} {conn} | gzip -{GZIP_LEVEL} > {out}",
            dumpall = Self::tool(&self.source.bin_dir, "pg_dumpall"),
            conn = Self::conn_args(&self.source),
            out = shell_quote(out),
        ))
    }

    pub fn globals_dump_command(&self) -> String {
        let file = self.globals_file();
        Self::pipefail(&format!(
            "mkdir -p {dir} && {dumpall} --globals-only {conn} -f {file_q} && \
             cd {dir} && {SHA512_FILTER} globals.sql > globals.sql.sha512",
            dir = shell_quote(&self.parallel_dir()),
            dumpall = Self::tool(&self.source.bin_dir, "pg_dumpall"),
            conn = Self::conn_args(&self.source),
            file_q = shell_quote(&file),
        ))
    }

    /// `pg_dump -Fd -j N` of one database, then a checksum of every file it wrote.
    pub fn database_dump_command(&self, dbname: &str) -> String {
        let dir = self.database_dump_dir(dbname);
        Self::pipefail(&format!(
            "mkdir -p {parent} && rm -rf {dir_q} {sum_q} && \
             {dump} {conn} -Fd -j {jobs} -Z {GZIP_LEVEL} -f {dir_q} {db} && \
             cd {dir_q} && {SHA512_FILTER} -- * > {sum_q}.partial && mv {sum_q}.partial {sum_q}",
            parent = shell_quote(&self.parallel_dir()),
            dir_q = shell_quote(&dir),
            sum_q = shell_quote(&Self::checksum_file(&dir)),
            dump = Self::tool(&self.source.bin_dir, "pg_dump"),
            conn = Self::conn_args(&self.source),
            jobs = self.params.jobs,
            db = shell_quote(dbname),
        ))
    }

    /// Verify a checksum file against the files it names, in the directory `dir`.
    pub fn verify_checksum_command(dir: &str, checksum_file: &str) -> String {
        format!(
            "cd {} && sha512sum --check --strict --quiet {}",
            shell_quote(dir),
            shell_quote(checksum_file)
        )
    }

    /// The line of the first `\connect` in the dumpall artifact: everything before it is
    /// globals (roles, tablespaces), everything from it on is per-database.
    pub fn dumpall_split_line_command(&self) -> String {
        format!(
            "gunzip -c {} | grep -n -m 1 '^\\\\connect ' | cut -d: -f1",
            shell_quote(&self.dumpall_file())
        )
    }

    /// The globals part of the dumpall artifact, as text (small: roles and tablespaces).
    pub fn dumpall_globals_text_command(&self, split_line: u64) -> String {
        format!(
            "gunzip -c {} | head -n {}",
            shell_quote(&self.dumpall_file()),
            split_line.saturating_sub(1)
        )
    }

    /// psql of the target version with ON_ERROR_STOP: the first error stops it.
    pub fn psql(&self, dbname: &str) -> String {
        format!(
            "{} -X -q -v ON_ERROR_STOP=1 {} -d {}",
            Self::tool(&self.target.bin_dir, "psql"),
            Self::conn_args(&self.target),
            shell_quote(dbname)
        )
    }

    /// Restore a globals script file on the target host with ON_ERROR_STOP.
    pub fn globals_restore_command(&self, script: &str) -> String {
        format!(
            "{} -f {}",
            self.psql(&self.target.maintenance_db),
            shell_quote(script)
        )
    }

    /// Restore every database of the dumpall artifact, from its first `\connect` on.
    pub fn dumpall_databases_restore_command(&self, split_line: &str) -> String {
        Self::pipefail(&format!(
            "gunzip -c {} | tail -n +{split_line} | {}",
            shell_quote(&self.dumpall_file()),
            self.psql(&self.target.maintenance_db)
        ))
    }

    /// `pg_restore -j N --exit-on-error` of one database; `-C` creates it, except for the
    /// maintenance database, which exists on every cluster.
    pub fn database_restore_command(&self, dbname: &str) -> String {
        let create = if dbname == self.target.maintenance_db {
            format!("-d {}", shell_quote(dbname))
        } else {
            format!("-C -d {}", shell_quote(&self.target.maintenance_db))
        };
        format!(
            "{} {} --exit-on-error -j {} {create} {}",
            Self::tool(&self.target.bin_dir, "pg_restore"),
            Self::conn_args(&self.target),
            self.params.jobs,
            shell_quote(&self.database_dump_dir(dbname))
        )
    }

    /// The scratch cluster for the test restore: target version, source locale and encoding,
    /// unix socket only.
    pub fn scratch_dir(&self) -> String {
        format!("{}/scratch", self.dump_dir)
    }

    pub fn scratch_init_command(&self, locale: &str, encoding: &str) -> String {
        let dir = shell_quote(&self.scratch_dir());
        // Each setting is one shell word; the socket path is a postgresql.conf string literal.
        let settings = [
            "listen_addresses = ''".to_string(),
            format!(
                "unix_socket_directories = '{}'",
                self.dump_dir.replace('\'', "''")
            ),
            format!("port = {}", self.target.port),
            "fsync = off".to_string(),
        ]
        .iter()
        .map(|line| shell_quote(line))
        .collect::<Vec<_>>()
        .join(" ");
        format!(
            "rm -rf {dir} && {initdb} -D {dir} -U {user} --auth=trust -E {enc} --locale={loc} --no-sync >/dev/null && \
             printf '%s\\n' {settings} >> {dir}/postgresql.conf && \
             {pg_ctl} -D {dir} -l {dir}/log -w -t 60 start >/dev/null",
            initdb = Self::tool(&self.target.bin_dir, "initdb"),
            pg_ctl = Self::tool(&self.target.bin_dir, "pg_ctl"),
            user = shell_quote(&self.target.user),
            enc = shell_quote(encoding),
            loc = shell_quote(locale),
        )
    }

    pub fn scratch_stop_command(&self) -> String {
        let dir = shell_quote(&self.scratch_dir());
        format!(
            "if [ -f {dir}/postmaster.pid ]; then {pg_ctl} -D {dir} -m immediate -w stop >/dev/null; fi; rm -rf {dir}",
            pg_ctl = Self::tool(&self.target.bin_dir, "pg_ctl"),
        )
    }

    /// A copy of the node description that talks to the scratch cluster over its socket.
    pub fn scratch_node(&self) -> Node {
        let mut node = self.target.clone();
        node.address = self.dump_dir.clone();
        node.name = format!("{}-scratch", self.target.name);
        node
    }

    /// Where the pristine (freshly initialised) target data directory is kept for pg_upgrade's undo.
    pub fn pristine_dir(&self) -> String {
        format!("{}/target-pristine", self.dump_dir)
    }

    pub fn pg_upgrade_command(&self, check_only: bool) -> String {
        let mode = match (check_only, self.method()) {
            (true, _) => "--check".to_string(),
            (false, Method::PgUpgrade { link: true }) => "--link".to_string(),
            (false, _) => "--copy".to_string(),
        };
        format!(
            "mkdir -p {work} && cd {work} && {pg_upgrade} {mode} -j {jobs} \
             -b {old_bin} -B {new_bin_q} -d {old} -D {new} -p {old_port} -P {new_port} -U {user} -s {work}",
            work = shell_quote(&self.dump_dir),
            pg_upgrade = Self::tool(&self.target.bin_dir, "pg_upgrade"),
            new_bin_q = shell_quote(&self.target.bin_dir),
            old_bin = shell_quote(&self.source.bin_dir),
            jobs = self.params.jobs,
            old = shell_quote(&self.source.data_dir),
            new = shell_quote(&self.target.data_dir),
            old_port = self.source.port,
            new_port = self.target.port,
            user = shell_quote(&self.source.user),
        )
    }

    /// Keep a copy of the freshly initialised target, so the upgrade can be undone.
    pub fn save_pristine_command(&self) -> String {
        format!(
            "rm -rf {p} && cp -a {t} {p}",
            p = shell_quote(&self.pristine_dir()),
            t = shell_quote(&self.target.data_dir)
        )
    }

    /// Undo of `pg_upgrade`: re-enable the old cluster (link mode renamed its pg_control) and
    /// put the pristine target back.
    pub fn undo_pg_upgrade_command(&self) -> String {
        let old = shell_quote(&self.source.data_dir);
        format!(
            "if [ -f {old}/global/pg_control.old ] && [ ! -f {old}/global/pg_control ]; then mv {old}/global/pg_control.old {old}/global/pg_control; fi; \
             if [ -d {p} ]; then find {t} -mindepth 1 -maxdepth 1 -exec rm -rf {{}} + && cp -a {p}/. {t}/; fi",
            p = shell_quote(&self.pristine_dir()),
            t = shell_quote(&self.target.data_dir)
        )
    }

    /// Free bytes on the filesystem of `path` (or of its nearest existing ancestor).
    pub fn disk_free_command(path: &str) -> String {
        format!(
            "d={}; while [ ! -e \"$d\" ]; do d=$(dirname \"$d\"); done; df -B1 --output=avail \"$d\" | tail -n 1",
            shell_quote(path)
        )
    }

    /// Extensions the target's installation ships, when the target is not running.
    pub fn available_extensions_command(&self) -> String {
        format!(
            "ls \"$({} --sharedir)/extension\" | sed -n 's/\\.control$//p'",
            Self::tool(&self.target.bin_dir, "pg_config")
        )
    }

    pub fn tools_check_command(&self) -> Vec<(String, String)> {
        let checksum_tool = match self.method() {
            Method::PgUpgrade { .. } => "",
            Method::Dumpall => " && { command -v python3 >/dev/null || { echo 'python3 is missing: the in-stream dump checksum uses it (or choose --method parallel)' >&2; exit 1; }; }",
            Method::Parallel => " && { command -v openssl >/dev/null || { echo 'openssl is missing: the dump checksums use `openssl dgst -sha512`' >&2; exit 1; }; }",
        };
        let mut checks = vec![(
            self.source.host.clone(),
            format!(
                "test -x {dumpall} && test -x {dump}{checksum_tool} && {dump} --version",
                dumpall = Self::tool(&self.source.bin_dir, "pg_dumpall"),
                dump = Self::tool(&self.source.bin_dir, "pg_dump"),
            ),
        )];
        let target_tools = match self.method() {
            Method::PgUpgrade { .. } => format!(
                "test -x {postgres} && test -x {pg_upgrade} && {pg_upgrade} --version",
                postgres = Self::tool(&self.source.bin_dir, "postgres"),
                pg_upgrade = Self::tool(&self.target.bin_dir, "pg_upgrade"),
            ),
            _ => format!(
                "test -x {psql} && test -x {restore} && {psql} --version",
                psql = Self::tool(&self.target.bin_dir, "psql"),
                restore = Self::tool(&self.target.bin_dir, "pg_restore"),
            ),
        };
        checks.push((self.target.host.clone(), target_tools));
        checks
    }

    /// Removes the old cluster's data directory contents (never the directory itself).
    pub fn retire_command(&self) -> String {
        format!(
            "find {} -mindepth 1 -maxdepth 1 -exec rm -rf {{}} +",
            shell_quote(&self.source.data_dir)
        )
    }

    // ---- steps ---------------------------------------------------------------------------------

    fn steps(&self) -> Vec<Step> {
        let s = &self.source.name;
        let t = &self.target.name;
        let method = self.method();
        let paused = self.paused_aliases();
        let traffic = self.inventory.traffic.clone();
        let hook_host = traffic
            .as_ref()
            .and_then(|h| h.host.clone())
            .unwrap_or_else(|| "local".into());
        let maint = &self.source.maintenance_db;
        let mut steps = Vec::new();

        let mut preflight = UpgradeStep::Preflight
            .step(format!(
                "Preflight: {s} (PostgreSQL {}) can move to {t} (PostgreSQL {}) by {}",
                self.source.version,
                self.target.version,
                method.name()
            ))
            .command(RenderedCommand::sql(s, maint, VERSION_SQL))
            .command(RenderedCommand::sql(
                t,
                &self.target.maintenance_db,
                VERSION_SQL,
            ))
            .command(RenderedCommand::sql(s, maint, DATABASE_LOCALES_SQL))
            .command(RenderedCommand::sql(
                t,
                &self.target.maintenance_db,
                DATABASE_LOCALES_SQL,
            ))
            .command(RenderedCommand::internal(
                "each database of the source",
                EXTENSIONS_SQL,
            ))
            .command(RenderedCommand::sql(
                t,
                &self.target.maintenance_db,
                AVAILABLE_EXTENSIONS_SQL,
            ))
            .command(RenderedCommand::sql(
                t,
                &self.target.maintenance_db,
                TARGET_CONTENTS_SQL,
            ))
            .command(RenderedCommand::sql(s, maint, LONG_TRANSACTIONS_SQL))
            .command(RenderedCommand::shell(
                &self.source.host,
                Self::disk_free_command(&self.dump_dir),
            ));
        for (host, check) in self.tools_check_command() {
            preflight = preflight.command(RenderedCommand::shell(&host, check));
        }
        let preflight = preflight
            .precondition("versions", format!("{s} runs PostgreSQL {} and {t} runs {} (as the inventory says)", self.source.version, self.target.version))
            .precondition("encoding-locale", format!("every database of {s} has an encoding, collation and ctype {t} uses by default or offers; no ICU database unless {t} has ICU"))
            .precondition("extensions", format!("every extension installed in a database of {s} is available on {t}"))
            .precondition("disk", if method.is_dump() {
                format!("free disk for the dump in {} and for the data on {t}", self.dump_dir)
            } else {
                format!("free disk on {t} for {}", if matches!(method, Method::PgUpgrade { link: true }) { "the new catalog (--link shares data files)" } else { "a copy of the data (--copy)" })
            })
            .precondition("target-empty", format!("{t} holds no user database and no role but its bootstrap superuser"))
            .precondition("no-long-transactions", format!("{s}: no transaction open longer than 60 s"))
            .precondition("tools", format!("{s}'s version of pg_dump/pg_dumpall; {t}'s {}", if method.is_dump() { "psql and pg_restore" } else { "pg_upgrade, with the old binaries on the same host" }))
            .verification("every precondition holds");
        steps.push(preflight);

        if let Method::PgUpgrade { .. } = method {
            steps.push(
                UpgradeStep::StopTarget
                    .step(format!(
                        "Stop {t}, the empty new cluster, and keep a pristine copy"
                    ))
                    .command(RenderedCommand::shell(
                        &self.target.host,
                        self.target.control.stop.clone(),
                    ))
                    .command(RenderedCommand::shell(
                        &self.target.host,
                        format!(
                            "mkdir -p {} && {}",
                            shell_quote(&self.dump_dir),
                            self.save_pristine_command()
                        ),
                    ))
                    .verification(format!(
                        "{t} does not answer; {} holds its pristine copy",
                        self.pristine_dir()
                    ))
                    .undo(Undo::Reversible {
                        description: format!("start {t} again"),
                        commands: vec![RenderedCommand::shell(
                            &self.target.host,
                            self.target.control.start.clone(),
                        )],
                    }),
            );
            steps.push(
                UpgradeStep::UpgradeCheck
                    .step(format!("pg_upgrade --check against the live {s}"))
                    .command(RenderedCommand::shell(
                        &self.target.host,
                        self.pg_upgrade_command(true),
                    ))
                    .verification("pg_upgrade reports the clusters compatible"),
            );
        }

        let mut stop_traffic = UpgradeStep::StopTraffic.step(if paused.is_empty() {
            "Stop traffic: traffic hooks (downtime window)".to_string()
        } else {
            format!(
                "Stop traffic: PAUSE {}",
                paused
                    .iter()
                    .map(|(_, a)| a.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
        if let Some(hooks) = &traffic {
            stop_traffic =
                stop_traffic.command(RenderedCommand::shell(&hook_host, hooks.stop.clone()));
        }
        for (bouncer, alias) in &paused {
            stop_traffic =
                stop_traffic.command(RenderedCommand::pgbouncer_admin(bouncer, pause_sql(alias)));
        }
        let mut resume_on_source: Vec<RenderedCommand> = paused
            .iter()
            .rev()
            .map(|(b, a)| RenderedCommand::pgbouncer_admin(b, resume_sql(a)))
            .collect();
        if let Some(hooks) = &traffic {
            resume_on_source.push(RenderedCommand::shell(&hook_host, hooks.start.clone()));
        }
        steps.push(
            stop_traffic
                .command(RenderedCommand::internal(
                    "pause bound",
                    format!(
                        "if traffic has not resumed {} ms after it stopped, it resumes on {s} by itself and the run rolls back to before the pause",
                        self.params.pause_bound.as_millis()
                    ),
                ))
                .verification("SHOW DATABASES reports every alias routed to the source paused")
                .undo(Undo::Reversible {
                    description: format!("RESUME on {s} (the aliases still route there) and start traffic"),
                    commands: resume_on_source,
                })
                .flags(StepFlags { pauses_traffic: true, ..StepFlags::default() }),
        );

        let needs_stopped = StepFlags {
            needs_traffic_stopped: true,
            ..StepFlags::default()
        };
        steps.push(
            UpgradeStep::Baseline.step(format!("Baseline: per database and table row counts, sequences, roles and extensions of {s}"))
                .command(RenderedCommand::sql(s, maint, ROLES_SQL))
                .command(RenderedCommand::internal("each database of the source", format!("{TABLES_SQL}\nSELECT count(*) FROM <each table>;\n{SEQUENCES_SQL}\n{EXTENSIONS_SQL}")))
                .verification("the snapshot is recorded in the journal and the run directory")
                .flags(needs_stopped),
        );

        match method {
            Method::Dumpall | Method::Parallel => {
                let (dump, verify_dir, verify_files) = if method == Method::Dumpall {
                    (
                        vec![RenderedCommand::shell(
                            &self.source.host,
                            self.dumpall_command(),
                        )],
                        self.dump_dir.clone(),
                        "dumpall.sql.gz.sha512".to_string(),
                    )
                } else {
                    (
                        vec![
                            RenderedCommand::shell(&self.source.host, self.globals_dump_command()),
                            RenderedCommand::shell(
                                &self.source.host,
                                self.database_dump_command("<each database>"),
                            ),
                        ],
                        self.parallel_dir(),
                        "globals.sql.sha512 and db-<hex>.dir.sha512".to_string(),
                    )
                };
                let mut dump_step = UpgradeStep::Dump.step(if method == Method::Dumpall {
                    format!("Dump {s}: pg_dumpall | gzip, sha512 in the same pass")
                } else {
                    format!(
                        "Dump {s}: pg_dump -Fd -j {} per database, globals, a checksum per file",
                        self.params.jobs
                    )
                });
                for c in dump {
                    dump_step = dump_step.command(c);
                }
                steps.push(
                    dump_step
                        .verification(format!(
                            "the artifact and its checksum exist in {}",
                            self.dump_dir
                        ))
                        .flags(needs_stopped),
                );

                let mut transfer =
                    UpgradeStep::Transfer.step(if self.source.host == self.target.host {
                        format!(
                            "Verify the artifact on {} (same host, nothing to move)",
                            self.target.host
                        )
                    } else {
                        format!(
                            "Transfer the artifact {} → {} over SSH",
                            self.source.host, self.target.host
                        )
                    });
                if self.source.host != self.target.host {
                    transfer = transfer.command(RenderedCommand::internal(
                        format!("host {} → host {}", self.source.host, self.target.host),
                        format!(
                            "copy every file of {} in 8 MiB chunks through the jump host",
                            self.dump_dir
                        ),
                    ));
                }
                steps.push(
                    transfer
                        .command(RenderedCommand::shell(&self.target.host, Self::verify_checksum_command(&verify_dir, &verify_files)))
                        .verification("sha512 of every file on the target host equals the one computed while dumping")
                        .flags(needs_stopped),
                );

                if self.params.test_restore {
                    steps.push(
                        UpgradeStep::TestRestore.step(format!("Test restore into a scratch PostgreSQL {} cluster", self.target.version))
                            .command(RenderedCommand::shell(&self.target.host, self.scratch_init_command("<source locale>", "<source encoding>")))
                            .command(RenderedCommand::internal("scratch cluster", "the same restore as the next step, then the same validation"))
                            .command(RenderedCommand::shell(&self.target.host, self.scratch_stop_command()))
                            .verification("the scratch restore raised only allowed errors (the real target is untouched)")
                            .flags(needs_stopped),
                    );
                }

                let mut restore = UpgradeStep::Restore
                    .step(format!("Restore into {t} with ON_ERROR_STOP"))
                    .command(RenderedCommand::shell(
                        &self.target.host,
                        Self::verify_checksum_command(&verify_dir, &verify_files),
                    ));
                if method == Method::Dumpall {
                    restore = restore
                        .command(RenderedCommand::shell(
                            &self.target.host,
                            self.dumpall_split_line_command(),
                        ))
                        .command(RenderedCommand::shell(
                            &self.target.host,
                            self.globals_restore_command("<globals part>"),
                        ))
                        .command(RenderedCommand::shell(
                            &self.target.host,
                            self.dumpall_databases_restore_command("<first \\connect line>"),
                        ));
                } else {
                    restore = restore
                        .command(RenderedCommand::shell(
                            &self.target.host,
                            self.globals_restore_command(&self.globals_file()),
                        ))
                        .command(RenderedCommand::shell(
                            &self.target.host,
                            self.database_restore_command("<each database>"),
                        ));
                }
                steps.push(
                    restore
                        .command(RenderedCommand::internal(
                            "allowed restore errors",
                            format!(
                                "only in the globals part, each skipped and recorded: {}\nany other error stops the restore and fails the step",
                                BENIGN_RESTORE_ERRORS.join("; ")
                            ),
                        ))
                        .verification("psql/pg_restore exit 0; every error met is on the allow-list")
                        .undo(Undo::Reversible {
                            description: format!("return {t} to empty: drop the restored databases and roles, recreate {}", self.target.maintenance_db),
                            commands: vec![
                                RenderedCommand::sql(t, "template1", "DROP DATABASE <each restored database> WITH (FORCE)"),
                                RenderedCommand::sql(t, "template1", format!("DROP DATABASE {0} WITH (FORCE); CREATE DATABASE {0} TEMPLATE template0", crate::sql::quote_ident(&self.target.maintenance_db))),
                                RenderedCommand::sql(t, "template1", "DROP ROLE <each restored role>"),
                            ],
                        })
                        .flags(needs_stopped),
                );
            }
            Method::PgUpgrade { link } => {
                steps.push(
                    UpgradeStep::StopSource
                        .step(format!("Stop {s}"))
                        .command(RenderedCommand::shell(
                            &self.source.host,
                            self.source.control.stop.clone(),
                        ))
                        .verification(format!("{s} does not answer"))
                        .undo(Undo::Reversible {
                            description: format!("start {s} again"),
                            commands: vec![RenderedCommand::shell(
                                &self.source.host,
                                self.source.control.start.clone(),
                            )],
                        })
                        .flags(needs_stopped),
                );
                steps.push(
                    UpgradeStep::PgUpgrade.step(format!("pg_upgrade {} {s} → {t}", if link { "--link" } else { "--copy" }))
                        .command(RenderedCommand::shell(&self.target.host, self.pg_upgrade_command(false)))
                        .verification(format!("pg_upgrade exits 0; {} holds the upgraded cluster", self.target.data_dir))
                        .undo(Undo::Reversible {
                            description: format!("re-enable {s}'s pg_control (renamed by --link) and restore {t}'s pristine copy"),
                            commands: vec![RenderedCommand::shell(&self.target.host, self.undo_pg_upgrade_command())],
                        })
                        .flags(needs_stopped),
                );
                let start_undo = if link {
                    Undo::PointOfNoReturn {
                        reason: format!(
                            "pg_upgrade --link: {t} shares {s}'s data files; once {t} starts and writes, {s} can never start again. The way back ends here"
                        ),
                    }
                } else {
                    Undo::Reversible {
                        description: format!("stop {t}; {s} is untouched (--copy)"),
                        commands: vec![RenderedCommand::shell(
                            &self.target.host,
                            self.target.control.stop.clone(),
                        )],
                    }
                };
                steps.push(
                    UpgradeStep::StartTarget
                        .step(format!("Start {t} on the upgraded data"))
                        .command(RenderedCommand::shell(
                            &self.target.host,
                            self.target.control.start.clone(),
                        ))
                        .verification(format!(
                            "{t} answers and runs PostgreSQL {}",
                            self.target.version
                        ))
                        .undo(start_undo)
                        .flags(needs_stopped),
                );
            }
        }

        steps.push(
            UpgradeStep::Validate.step(format!("Validate {t} against the baseline"))
                .command(RenderedCommand::internal(
                    format!("{t} · each database"),
                    format!("{TABLES_SQL}\nSELECT count(*) FROM <each table>;\n{SEQUENCES_SQL}\n{EXTENSIONS_SQL}\n{ROLES_SQL}"),
                ))
                .verification("databases, per-table row counts and sequences equal the baseline; every role and extension is present; recorded in the journal")
                .flags(needs_stopped),
        );

        let mut repoint = UpgradeStep::Repoint
            .step(format!("Repoint pgbouncer from {s} to {t}"))
            .command(RenderedCommand::file(
                "<inventory>",
                unified_diff(
                    &serde_yaml::to_string(&self.inventory).unwrap_or_default(),
                    &serde_yaml::to_string(&self.inventory_after).unwrap_or_default(),
                ),
            ));
        let mut undo_repoint = vec![RenderedCommand::file(
            "<inventory>",
            "restore the inventory kept in the run directory",
        )];
        for route in &self.routes {
            let lines: Vec<String> = route
                .aliases
                .iter()
                .map(|a| format!("{} = {}", a.name, self.new_alias_target(a).render()))
                .collect();
            repoint = repoint
                .command(RenderedCommand::file(
                    &route.bouncer.config,
                    format!("[databases]\n{}", lines.join("\n")),
                ))
                .command(RenderedCommand::pgbouncer_admin(
                    &route.bouncer.name,
                    "RELOAD",
                ));
            undo_repoint.push(RenderedCommand::file(
                &route.bouncer.config,
                "restore the previous pgbouncer.ini",
            ));
            undo_repoint.push(RenderedCommand::pgbouncer_admin(
                &route.bouncer.name,
                "RELOAD",
            ));
        }
        steps.push(
            repoint
                .verification(format!("every alias that routed to {s} routes to {t}"))
                .undo(Undo::Reversible {
                    description: format!("route the aliases back to {s}"),
                    commands: undo_repoint,
                })
                .flags(needs_stopped),
        );

        let mut resume = UpgradeStep::ResumeTraffic.step(format!("Resume traffic on {t}"));
        for (b, a) in paused.iter().rev() {
            resume = resume.command(RenderedCommand::pgbouncer_admin(b, resume_sql(a)));
        }
        if let Some(hooks) = &traffic {
            resume = resume.command(RenderedCommand::shell(&hook_host, hooks.start.clone()));
        }
        steps.push(
            resume
                .verification("SHOW DATABASES reports no alias paused; the downtime is recorded")
                .undo(Undo::PointOfNoReturn {
                    reason: format!(
                        "from here on, writes land only on {t}; going back to {s} would lose them"
                    ),
                })
                .flags(StepFlags {
                    resumes_traffic: true,
                    needs_traffic_stopped: true,
                    ..StepFlags::default()
                }),
        );

        steps.push(
            UpgradeStep::StopOldCluster
                .step(format!("Stop {s} and keep it intact as the way back"))
                .command(RenderedCommand::shell(
                    &self.source.host,
                    format!("{} || true", self.source.control.stop),
                ))
                .verification(format!(
                    "{s} does not answer; {} is untouched",
                    self.source.data_dir
                )),
        );

        steps.push(
            UpgradeStep::RetireOldCluster
                .step(format!("Retire {s}: delete its data directory"))
                .command(RenderedCommand::shell(
                    &self.source.host,
                    self.retire_command(),
                ))
                .verification(format!("{} is empty", self.source.data_dir))
                .undo(Undo::PointOfNoReturn {
                    reason: format!("{s}'s data directory, the last way back, is deleted"),
                })
                .flags(StepFlags {
                    destructive: true,
                    removes_way_back: true,
                    min_soak_secs: self.params.min_soak.as_secs(),
                    ..StepFlags::default()
                }),
        );
        steps
    }
}

/// Everything that lived on `source` (aliases, partitions, the proxy) now lives on `target`.
fn inventory_after(inventory: &Inventory, source: &Node, target: &Node) -> Inventory {
    let mut after = inventory.clone();
    for bouncer in after.pgbouncers.iter_mut() {
        for alias in bouncer.aliases.iter_mut().filter(|a| a.node == source.name) {
            alias.node = target.name.clone();
        }
    }
    for partition in after
        .partitions
        .iter_mut()
        .filter(|p| p.node == source.name)
    {
        partition.node = target.name.clone();
    }
    if let Some(proxy) = after.proxy.as_mut().filter(|p| p.node == source.name) {
        proxy.node = target.name.clone();
    }
    after
}

/// `server_version_num` and whether data checksums are on.
pub const VERSION_SQL: &str =
    "SELECT current_setting('server_version_num')::int, current_setting('data_checksums')";
/// Every connectable database with its encoding and locale (provider `c` libc, `i` ICU).
pub const DATABASE_LOCALES_SQL: &str = "SELECT datname::text, pg_encoding_to_char(encoding)::text, datcollate::text, datctype::text, datlocprovider::text \
FROM pg_database WHERE datallowconn ORDER BY datname";
/// The locales a cluster offers (libc collations the server knows).
pub const COLLATIONS_SQL: &str =
    "SELECT DISTINCT collcollate::text FROM pg_collation WHERE collcollate IS NOT NULL";
pub const EXTENSIONS_SQL: &str = "SELECT extname::text FROM pg_extension ORDER BY 1";
pub const AVAILABLE_EXTENSIONS_SQL: &str =
    "SELECT name::text FROM pg_available_extensions ORDER BY 1";
/// User databases and roles other than the bootstrap superuser (oid 10).
pub const TARGET_CONTENTS_SQL: &str = "SELECT 'database ' || datname FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1') \
UNION ALL SELECT 'role ' || rolname FROM pg_roles WHERE rolname !~ '^pg_' AND oid <> 10";
pub const LONG_TRANSACTIONS_SQL: &str = crate::runbooks::shard_split::plan::LONG_TRANSACTIONS_SQL;
pub const DATABASE_SIZE_SQL: &str =
    "SELECT coalesce(sum(pg_database_size(datname)), 0)::int8 FROM pg_database";
pub const ROLES_SQL: &str = "SELECT rolname::text, concat_ws(',', CASE WHEN rolsuper THEN 'superuser' END, CASE WHEN rolcanlogin THEN 'login' END, \
CASE WHEN rolcreatedb THEN 'createdb' END, CASE WHEN rolcreaterole THEN 'createrole' END, CASE WHEN rolreplication THEN 'replication' END, \
CASE WHEN rolbypassrls THEN 'bypassrls' END, CASE WHEN NOT rolinherit THEN 'noinherit' END, 'connlimit=' || rolconnlimit) \
FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY 1";
/// Databases the upgrade carries (and validates): every connectable one but template1.
pub const DATABASES_SQL: &str =
    "SELECT datname::text FROM pg_database WHERE datallowconn AND datname <> 'template1' ORDER BY 1";
pub const TABLES_SQL: &str = "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast' ORDER BY 1";
pub const SEQUENCES_SQL: &str =
    "SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences ORDER BY 1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_round_trip() {
        for m in ["dumpall", "parallel", "pg-upgrade", "pg-upgrade-copy"] {
            assert_eq!(Method::parse(m).unwrap().name(), m);
        }
        assert!(Method::parse("sed").is_none());
    }

    #[test]
    fn dumpall_checksums_in_the_same_pass() {
        let cmd = {
            let mut params = BTreeMap::new();
            params.insert("from".to_string(), "a".to_string());
            params.insert("to".to_string(), "b".to_string());
            UpgradeParams::from_map(&params).unwrap()
        };
        assert_eq!(cmd.method, Method::Dumpall);
        assert_eq!(cmd.pause_bound, Duration::from_secs(600));
    }

    /// Every path from the inventory or the parameters reaches the shell as one word, however
    /// it is spelled.
    #[test]
    fn paths_are_single_shell_words() {
        let mut inventory =
            crate::inventory::parse(include_str!("../../../inventories/lab.yaml"), "lab.yaml")
                .unwrap();
        for node in &mut inventory.nodes {
            node.bin_dir = format!("/opt/it's pg/{}/bin", node.name);
            node.data_dir = format!("/srv/data dir/{}", node.name);
            if node.name == "pg2" {
                node.version = 16;
            }
        }
        for method in ["dumpall", "parallel", "pg-upgrade"] {
            let mut params = BTreeMap::new();
            params.insert("from".to_string(), "pg1".to_string());
            params.insert("to".to_string(), "pg2".to_string());
            params.insert("method".to_string(), method.to_string());
            params.insert("dump-dir".to_string(), "/var/dump $HOME/x".to_string());
            let upgrade =
                Upgrade::resolve(&inventory, UpgradeParams::from_map(&params).unwrap()).unwrap();
            let mut commands = vec![
                upgrade.dumpall_command(),
                upgrade.dumpall_unchecked_command("/tmp/out file"),
                upgrade.globals_dump_command(),
                upgrade.database_dump_command("db one"),
                upgrade.psql("postgres"),
                upgrade.database_restore_command("db one"),
                upgrade.scratch_init_command("C", "UTF8"),
                upgrade.scratch_stop_command(),
                upgrade.pg_upgrade_command(false),
                upgrade.save_pristine_command(),
                upgrade.undo_pg_upgrade_command(),
                upgrade.available_extensions_command(),
                upgrade.retire_command(),
            ];
            commands.extend(upgrade.tools_check_command().into_iter().map(|(_, c)| c));
            for command in commands {
                // Inside `bash -c '…'` a quoted word's quotes are escaped once more, so a raw
                // path is only ever preceded by a quote (or the `/` of its own prefix).
                for raw in ["/opt/it", "/srv/data dir", "/var/dump $HOME"] {
                    for (at, _) in command.match_indices(raw) {
                        let before = command[..at].chars().last();
                        assert!(
                            matches!(before, Some('\'')),
                            "unquoted {raw:?} in {command}"
                        );
                    }
                }
                let parsed = std::process::Command::new("sh")
                    .arg("-n")
                    .arg("-c")
                    .arg(&command)
                    .status()
                    .unwrap();
                assert!(parsed.success(), "not a valid shell command: {command}");
            }
        }
    }
}
