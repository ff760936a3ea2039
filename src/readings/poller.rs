//! Pollers: one task per source × reading, each on its own interval with a statement timeout,
//! publishing its latest [`Reading`] on a watch channel (latest wins, nothing queues up).
//!
//! A tick that comes while the previous query still runs is skipped (`MissedTickBehavior::Skip`
//! plus awaiting the query inside the loop). A failed query drops the connection; the next tick
//! reconnects, so an unreachable node shows as such while the others keep updating.

use super::queries;
use super::types::*;
use crate::inventory::{CitusCluster, Inventory, Node, Partition, Pgbouncer};
use crate::pg::{self, Endpoint, PgError, SessionSettings};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

#[derive(Debug, Clone, Copy)]
pub struct PollIntervals {
    /// Replication, connections and pgbouncer.
    pub fast: Duration,
    /// Exact per-shard counts scan whole tables: poll them less often.
    pub distribution: Duration,
}

impl Default for PollIntervals {
    fn default() -> Self {
        PollIntervals {
            fast: Duration::from_secs(1),
            distribution: Duration::from_secs(10),
        }
    }
}

#[derive(Clone)]
enum Source {
    Replication(Node),
    Connections(Node),
    Pgbouncer(Pgbouncer),
    Distribution(Arc<Inventory>, Partition),
    Citus(Arc<Inventory>, CitusCluster),
    CitusCounts(Arc<Inventory>, CitusCluster),
    Slots(Arc<Inventory>, Node),
}

/// The latest value from one source.
#[derive(Debug, Clone)]
pub enum SourceReading {
    Replication(Reading<NodeReplication>),
    Connections(Reading<Vec<ConnectionGroup>>),
    Pgbouncer(Reading<PgbouncerReading>),
    Distribution(Reading<PartitionDistribution>),
    Citus(Reading<CitusReading>),
    CitusCounts(Reading<CitusCounts>),
    Slots(Reading<super::slots::SlotWatch>),
}

impl Source {
    fn name(&self) -> &str {
        match self {
            Source::Replication(n) | Source::Connections(n) | Source::Slots(_, n) => &n.name,
            Source::Pgbouncer(b) => &b.name,
            Source::Distribution(_, p) => &p.name,
            Source::Citus(_, c) | Source::CitusCounts(_, c) => &c.name,
        }
    }
    fn endpoint(&self) -> (Endpoint, SessionSettings) {
        match self {
            Source::Replication(n) => (
                Endpoint::maintenance(n),
                SessionSettings::MONITOR.named("cutover/replication"),
            ),
            Source::Connections(n) => (
                Endpoint::maintenance(n),
                SessionSettings::MONITOR.named("cutover/connections"),
            ),
            Source::Slots(_, n) => (
                Endpoint::maintenance(n),
                SessionSettings::MONITOR.named("cutover/slots"),
            ),
            Source::Pgbouncer(b) => (Endpoint::pgbouncer_admin(b), SessionSettings::PGBOUNCER),
            Source::Distribution(inv, p) => {
                let address = inv.node(&p.node).map(|n| Endpoint::node(n, &p.dbname));
                (
                    address.unwrap_or(Endpoint {
                        address: String::new(),
                        port: 0,
                        user: String::new(),
                        dbname: p.dbname.clone(),
                        tls: Default::default(),
                    }),
                    SessionSettings::MONITOR.named("cutover/distribution"),
                )
            }
            Source::Citus(inv, c) | Source::CitusCounts(inv, c) => (
                queries::citus_endpoint(inv, c).unwrap_or(Endpoint {
                    address: String::new(),
                    port: 0,
                    user: String::new(),
                    dbname: c.database.clone(),
                    tls: Default::default(),
                }),
                SessionSettings::MONITOR.named("cutover/citus"),
            ),
        }
    }
    async fn read(
        &self,
        client: &Client,
        target: &str,
        memory: &mut PollMemory,
    ) -> Result<SourceValue, PgError> {
        Ok(match self {
            Source::Replication(_) => {
                SourceValue::Replication(queries::replication(client, target).await?)
            }
            Source::Connections(_) => {
                SourceValue::Connections(queries::connections(client, target).await?)
            }
            Source::Pgbouncer(_) => {
                SourceValue::Pgbouncer(queries::pgbouncer(client, target).await?)
            }
            Source::Distribution(inv, p) => {
                SourceValue::Distribution(queries::distribution(client, target, inv, p).await?)
            }
            Source::Citus(inv, c) => {
                SourceValue::Citus(queries::citus(client, target, inv, c).await?)
            }
            Source::CitusCounts(inv, c) => {
                SourceValue::CitusCounts(queries::citus_counts(client, target, inv, c).await?)
            }
            Source::Slots(inv, n) => SourceValue::Slots(
                super::slots::read(client, target, inv, n, &mut memory.slots).await?,
            ),
        })
    }
    fn wrap(&self, reading: Reading<SourceValue>) -> SourceReading {
        let Reading {
            source,
            at,
            took_ms,
            outcome,
        } = reading;
        macro_rules! rewrap {
            ($variant:ident) => {
                SourceReading::$variant(Reading {
                    source,
                    at,
                    took_ms,
                    outcome: match outcome {
                        Outcome::Ok(SourceValue::$variant(v)) => Outcome::Ok(v),
                        Outcome::Ok(_) => Outcome::Unreachable("reading of the wrong kind".into()),
                        Outcome::Unreachable(e) => Outcome::Unreachable(e),
                    },
                })
            };
        }
        match self {
            Source::Replication(_) => rewrap!(Replication),
            Source::Connections(_) => rewrap!(Connections),
            Source::Pgbouncer(_) => rewrap!(Pgbouncer),
            Source::Distribution(..) => rewrap!(Distribution),
            Source::Citus(..) => rewrap!(Citus),
            Source::CitusCounts(..) => rewrap!(CitusCounts),
            Source::Slots(..) => rewrap!(Slots),
        }
    }
}

enum SourceValue {
    Replication(NodeReplication),
    Connections(Vec<ConnectionGroup>),
    Pgbouncer(PgbouncerReading),
    Distribution(PartitionDistribution),
    Citus(CitusReading),
    CitusCounts(CitusCounts),
    Slots(super::slots::SlotWatch),
}

/// What a poller task keeps between ticks (rates, cached host readings).
#[derive(Default)]
struct PollMemory {
    slots: super::slots::SlotMemory,
}

impl Source {
    /// Whether `other` polls the same thing the same way, so a running poller can stay.
    fn same_as(&self, other: &Source) -> bool {
        match (self, other) {
            (Source::Replication(a), Source::Replication(b))
            | (Source::Connections(a), Source::Connections(b)) => a == b,
            (Source::Pgbouncer(a), Source::Pgbouncer(b)) => a == b,
            (Source::Slots(inv_a, a), Source::Slots(inv_b, b)) => {
                a == b && inv_a.hosts == inv_b.hosts
            }
            (Source::Distribution(inv_a, a), Source::Distribution(inv_b, b)) => {
                a == b
                    && inv_a.node(&a.node) == inv_b.node(&b.node)
                    && inv_a.shard_count == inv_b.shard_count
                    && inv_a.sharded_tables == inv_b.sharded_tables
            }
            (Source::Citus(inv_a, a), Source::Citus(inv_b, b))
            | (Source::CitusCounts(inv_a, a), Source::CitusCounts(inv_b, b)) => {
                a == b && inv_a.nodes == inv_b.nodes
            }
            _ => false,
        }
    }
}

/// Every source of `inventory`, in inventory order (the snapshot keeps this order).
fn sources(inventory: &Arc<Inventory>, intervals: PollIntervals) -> Vec<(Source, Duration)> {
    let mut sources: Vec<(Source, Duration)> = Vec::new();
    for node in &inventory.nodes {
        sources.push((Source::Replication(node.clone()), intervals.fast));
        sources.push((Source::Connections(node.clone()), intervals.fast));
        sources.push((
            Source::Slots(inventory.clone(), node.clone()),
            intervals.fast,
        ));
    }
    for bouncer in &inventory.pgbouncers {
        sources.push((Source::Pgbouncer(bouncer.clone()), intervals.fast));
    }
    for partition in &inventory.partitions {
        sources.push((
            Source::Distribution(inventory.clone(), partition.clone()),
            intervals.distribution,
        ));
    }
    for cluster in &inventory.citus {
        sources.push((
            Source::Citus(inventory.clone(), cluster.clone()),
            intervals.fast,
        ));
        sources.push((
            Source::CitusCounts(inventory.clone(), cluster.clone()),
            intervals.distribution,
        ));
    }
    sources
}

/// One poller task and its latest value. Dropping it stops the task.
struct Running {
    source: Source,
    interval: Duration,
    latest: watch::Receiver<Option<SourceReading>>,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Handles to the running pollers. Dropping it stops them.
///
/// Invariant: exactly one poller runs per source of the latest inventory seen; a source that
/// left the inventory has no poller and no reading in the snapshot.
pub struct Pollers {
    environment: String,
    intervals: PollIntervals,
    running: Vec<Running>,
    wake_tx: mpsc::Sender<()>,
    wake: mpsc::Receiver<()>,
    /// New versions of the inventory (see [`super::inventory_file`]); `None` once the sender
    /// is gone or when following was not asked for.
    inventory: Option<watch::Receiver<Arc<Inventory>>>,
}

impl Pollers {
    /// Start one poller per source of `inventory`. Must be called inside a tokio runtime.
    pub fn spawn(inventory: Arc<Inventory>, intervals: PollIntervals) -> Pollers {
        // Capacity 1 + try_send: many updates between two UI frames coalesce into one wake-up.
        let (wake_tx, wake) = mpsc::channel(1);
        let mut pollers = Pollers {
            environment: inventory.environment.clone(),
            intervals,
            running: Vec::new(),
            wake_tx,
            wake,
            inventory: None,
        };
        pollers.follow_version(inventory);
        pollers
    }

    /// Like [`Self::spawn`] from the current inventory, then follows every new version
    /// published on `inventory`: pollers start for new nodes, pgbouncers and partitions, stop
    /// for removed ones, and restart for changed ones. Updates are applied inside
    /// [`Self::changed`].
    pub fn follow(
        mut inventory: watch::Receiver<Arc<Inventory>>,
        intervals: PollIntervals,
    ) -> Pollers {
        let current = inventory.borrow_and_update().clone();
        let mut pollers = Self::spawn(current, intervals);
        pollers.inventory = Some(inventory);
        pollers
    }

    /// Makes the running pollers those of `inventory`, keeping the ones that are unchanged.
    fn follow_version(&mut self, inventory: Arc<Inventory>) {
        let mut previous = std::mem::take(&mut self.running);
        for (source, interval) in sources(&inventory, self.intervals) {
            let kept = previous
                .iter()
                .position(|r| r.interval == interval && r.source.same_as(&source));
            let running = match kept {
                Some(index) => previous.swap_remove(index),
                None => {
                    let (tx, latest) = watch::channel(None);
                    let task = tokio::spawn(poll_loop(
                        source.clone(),
                        interval,
                        tx,
                        self.wake_tx.clone(),
                    ));
                    Running {
                        source,
                        interval,
                        latest,
                        task,
                    }
                }
            };
            self.running.push(running);
        }
        // Whatever is left in `previous` is no longer in the inventory: dropped, so stopped.
        self.environment = inventory.environment.clone();
    }

    /// Wait until some poller published a new reading or a new inventory arrived (whose
    /// pollers are then already running). Cancel safe.
    pub async fn changed(&mut self) {
        let new_inventory = match &mut self.inventory {
            Some(inventory) => tokio::select! {
                _ = self.wake.recv() => None,
                changed = inventory.changed() => match changed {
                    Ok(()) => Some(inventory.borrow_and_update().clone()),
                    Err(_) => {
                        self.inventory = None;
                        None
                    }
                },
            },
            None => {
                let _ = self.wake.recv().await;
                None
            }
        };
        if let Some(inventory) = new_inventory {
            self.follow_version(inventory);
        }
    }

    /// The latest reading of every source that has reported at least once.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot {
            environment: self.environment.clone(),
            taken_at: chrono::Utc::now(),
            replication: vec![],
            connections: vec![],
            pgbouncer: vec![],
            distribution: vec![],
            citus: vec![],
            citus_counts: vec![],
            slots: vec![],
        };
        for running in &self.running {
            match running.latest.borrow().clone() {
                Some(SourceReading::Replication(r)) => snapshot.replication.push(r),
                Some(SourceReading::Connections(r)) => snapshot.connections.push(r),
                Some(SourceReading::Pgbouncer(r)) => snapshot.pgbouncer.push(r),
                Some(SourceReading::Distribution(r)) => snapshot.distribution.push(r),
                Some(SourceReading::Citus(r)) => snapshot.citus.push(r),
                Some(SourceReading::CitusCounts(r)) => snapshot.citus_counts.push(r),
                Some(SourceReading::Slots(r)) => snapshot.slots.push(r),
                None => {}
            }
        }
        snapshot
    }
}

async fn poll_loop(
    source: Source,
    interval: Duration,
    tx: watch::Sender<Option<SourceReading>>,
    wake: mpsc::Sender<()>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (endpoint, settings) = source.endpoint();
    let target = endpoint.label();
    let mut client: Option<Client> = None;
    let mut memory = PollMemory::default();
    loop {
        ticker.tick().await;
        if tx.is_closed() {
            return;
        }
        let reading = queries::timed(source.name(), async {
            let live = match client.take().filter(|c| !c.is_closed()) {
                Some(live) => live,
                None => pg::connect(&endpoint, settings).await?,
            };
            let result = source.read(&live, &target, &mut memory).await;
            if result.is_ok() {
                client = Some(live);
            }
            result
        })
        .await;
        tx.send_replace(Some(source.wrap(reading)));
        let _ = wake.try_send(());
    }
}
