//! Shared effects: what several runbooks' [`Actions`](crate::executor::Actions) do the same
//! way, written once and called from each runbook's effects. Sits between a runbook's
//! effects and the executor plumbing (`crate::executor::context`); the SQL and commands
//! come from the plan builders, so what a reviewer reads is what runs.

pub mod logical_apply;
pub mod lsn;
pub mod repoint;
pub mod traffic;
