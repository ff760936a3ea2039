//! The write pause over pgbouncer: PAUSE the listed aliases in order, RESUME them in reverse,
//! read which are paused, and run the inventory's traffic hooks around them. Runbook effects
//! call these for their stop-traffic and resume-traffic steps and for the forced resume the
//! executor runs when the pause bound runs out.

use crate::executor::context::{ExecContext, TrafficHook};
use crate::executor::{Sink, StepError};
use crate::inventory::Pgbouncer;
use crate::pg;
use crate::readings::queries;
use crate::runbooks::shard_split::plan::{pause_sql, resume_sql};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// One pgbouncer alias taking part in the pause.
#[derive(Clone, Copy)]
pub struct Alias<'a> {
    pub bouncer: &'a Pgbouncer,
    pub name: &'a str,
}

impl Alias<'_> {
    fn key(&self) -> (String, String) {
        (self.bouncer.name.clone(), self.name.to_string())
    }
}

/// Every paused alias of `bouncers`, as (bouncer name, alias).
pub async fn paused(
    ctx: &ExecContext,
    bouncers: &[&Pgbouncer],
) -> Result<BTreeSet<(String, String)>, StepError> {
    let mut paused = BTreeSet::new();
    for bouncer in bouncers {
        let admin = ctx.bouncer_admin(bouncer).await?;
        let reading = queries::pgbouncer(&admin, &bouncer.name).await?;
        paused.extend(
            reading
                .databases
                .into_iter()
                .filter(|d| d.paused)
                .map(|d| (bouncer.name.clone(), d.name)),
        );
    }
    Ok(paused)
}

/// The bouncers of `aliases`, each once.
fn bouncers<'a>(aliases: &[Alias<'a>]) -> Vec<&'a Pgbouncer> {
    let mut seen = Vec::<&Pgbouncer>::new();
    for alias in aliases {
        if !seen.iter().any(|b| b.name == alias.bouncer.name) {
            seen.push(alias.bouncer);
        }
    }
    seen
}

/// Run the stop hook, then PAUSE each alias of `aliases` not paused yet, in order;
/// `before_pause` runs right before each PAUSE is sent. Holds only when pgbouncer then
/// reports every alias paused.
pub async fn pause(
    ctx: &ExecContext,
    aliases: &[Alias<'_>],
    hook_timeout: Duration,
    sink: &Sink,
    mut before_pause: impl FnMut(),
) -> Result<(), StepError> {
    ctx.run_traffic_hook(TrafficHook::Stop, hook_timeout, sink)
        .await?;
    let already = paused(ctx, &bouncers(aliases)).await?;
    for alias in aliases {
        if already.contains(&alias.key()) {
            sink.output(format!("{} is already paused", alias.name));
            continue;
        }
        let admin = ctx.bouncer_admin(alias.bouncer).await?;
        let started = Instant::now();
        before_pause();
        pg::simple_execute(&admin, &alias.bouncer.name, &pause_sql(alias.name)).await?;
        sink.output(format!(
            "PAUSE {}: {:.1} ms",
            alias.name,
            started.elapsed().as_secs_f64() * 1000.0
        ));
    }
    let now = paused(ctx, &bouncers(aliases)).await?;
    let missing: Vec<&str> = aliases
        .iter()
        .filter(|a| !now.contains(&a.key()))
        .map(|a| a.name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("pgbouncer does not report paused: {missing:?}").into())
    }
}

/// RESUME each alias of `aliases` that is paused, in reverse order. Idempotent: aliases
/// already flowing are left alone.
pub async fn resume(
    ctx: &ExecContext,
    aliases: &[Alias<'_>],
    sink: &Sink,
) -> Result<(), StepError> {
    let paused = paused(ctx, &bouncers(aliases)).await?;
    for alias in aliases.iter().rev() {
        if paused.contains(&alias.key()) {
            let admin = ctx.bouncer_admin(alias.bouncer).await?;
            pg::simple_execute(&admin, &alias.bouncer.name, &resume_sql(alias.name)).await?;
            sink.output(format!("RESUME {}", alias.name));
        }
    }
    Ok(())
}

/// Run the start hook (after [`resume`]).
pub async fn start_hook(
    ctx: &ExecContext,
    hook_timeout: Duration,
    sink: &Sink,
) -> Result<(), StepError> {
    ctx.run_traffic_hook(TrafficHook::Start, hook_timeout, sink)
        .await
}

/// Holds when pgbouncer reports none of `aliases` paused; otherwise names those still paused.
pub async fn check_flowing(ctx: &ExecContext, aliases: &[Alias<'_>]) -> Result<(), StepError> {
    let wanted: BTreeSet<(String, String)> = aliases.iter().map(Alias::key).collect();
    let still: Vec<String> = paused(ctx, &bouncers(aliases))
        .await?
        .into_iter()
        .filter(|k| wanted.contains(k))
        .map(|(_, alias)| alias)
        .collect();
    if still.is_empty() {
        Ok(())
    } else {
        Err(format!("still paused: {}", still.join(", ")).into())
    }
}

/// The aliases' names joined for a report (`a, b`).
pub fn names(aliases: &[Alias<'_>]) -> String {
    aliases
        .iter()
        .map(|a| a.name)
        .collect::<Vec<_>>()
        .join(", ")
}
