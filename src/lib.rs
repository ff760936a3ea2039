//! `cutover`: a terminal cockpit for PostgreSQL cutovers.
//!
//! Data flows inventory → readings (pollers) → UI model; runbook plan → engine (pure) →
//! executor (effects over tokio-postgres, pgbouncer admin, russh) → journal.
//! See `docs/ARCHITECTURE.md`.

pub mod approval;
pub mod cockpit;
pub mod effects;
pub mod engine;
pub mod executor;
pub mod guard;
pub mod identity;
pub mod inventory;
pub mod journal;
pub mod lab;
pub mod pg;
pub mod pgbouncer_ini;
pub mod plan;
pub mod quote;
pub mod readings;
pub mod redact;
pub mod remote;
pub mod runbooks;
pub mod session;
pub mod sql;
pub mod tls;
pub mod ui;
