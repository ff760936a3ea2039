//! Repointing pgbouncer: rewrite aliases in a bouncer's `pgbouncer.ini` and RELOAD, keeping the
//! config as it was first found in the run dir so the undo can put it back. Runbook effects call
//! it for their re-route / repoint steps and undos.

use crate::executor::context::ExecContext;
use crate::executor::{Sink, StepError};
use crate::inventory::Pgbouncer;
use crate::pg;
use crate::pgbouncer_ini::{self, AliasTarget};
use crate::quote::shell_quote;
use crate::runbooks::shard_split::plan::unified_diff;
use std::time::Duration;

/// How long reading a bouncer's config may take.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Point each `(alias, target)` of `aliases` in `bouncer`'s config at its target, then RELOAD.
/// The config as first found is kept as `backup` in the run dir (a re-run keeps the first
/// copy, never its own edit); the diff is shown under `label`.
pub async fn repoint(
    ctx: &ExecContext,
    bouncer: &Pgbouncer,
    backup: &str,
    label: &str,
    aliases: &[(&str, AliasTarget)],
    sink: &Sink,
) -> Result<(), StepError> {
    let ini = ctx
        .host_read(
            &bouncer.host,
            &format!("cat {}", shell_quote(&bouncer.config)),
            READ_TIMEOUT,
        )
        .await?;
    ctx.keep_first_copy(backup, ini.as_bytes())?;
    let new_ini = aliases.iter().fold(ini.clone(), |text, (alias, target)| {
        pgbouncer_ini::set_alias(&text, alias, target)
    });
    install(ctx, bouncer, label, &ini, &new_ini, sink).await
}

/// Put back `bouncer`'s config kept as `backup` by [`repoint`], if there is one, and RELOAD.
pub async fn undo_repoint(
    ctx: &ExecContext,
    bouncer: &Pgbouncer,
    backup: &str,
    sink: &Sink,
) -> Result<(), StepError> {
    if let Ok(ini) = std::fs::read(ctx.path(backup)) {
        ctx.upload(&bouncer.host, &bouncer.config, &ini).await?;
        reload(ctx, bouncer).await?;
        sink.output(format!("{} restored and reloaded", bouncer.config));
    }
    Ok(())
}

/// Install `new_ini` as `bouncer`'s config when it differs from `ini` (the diff shown under
/// `label`), then RELOAD either way.
async fn install(
    ctx: &ExecContext,
    bouncer: &Pgbouncer,
    label: &str,
    ini: &str,
    new_ini: &str,
    sink: &Sink,
) -> Result<(), StepError> {
    if new_ini != ini {
        sink.output(format!("{label}:\n{}", unified_diff(ini, new_ini)));
        ctx.upload(&bouncer.host, &bouncer.config, new_ini.as_bytes())
            .await?;
    }
    reload(ctx, bouncer).await
}

async fn reload(ctx: &ExecContext, bouncer: &Pgbouncer) -> Result<(), StepError> {
    let admin = ctx.bouncer_admin(bouncer).await?;
    pg::simple_execute(&admin, &bouncer.name, "RELOAD").await?;
    Ok(())
}
