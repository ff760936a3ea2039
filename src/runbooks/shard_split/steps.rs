//! The steps of a `shard-split` plan, in plan order; each slug is the journal's stable step id.

/// One variant per step: the effects match on it exhaustively, so a step without an action
/// or an undo arm does not compile.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::EnumString, strum::IntoStaticStr, strum::EnumIter,
)]
#[strum(serialize_all = "kebab-case")]
pub enum SplitStep {
    Preflight,
    BaseBackup,
    Baseline,
    StopTraffic,
    LsnGate,
    Promote,
    Rename,
    Reroute,
    ResumeTraffic,
    Verify,
    DeleteInvalid,
    Vacuum,
    DropSlot,
    ValidateConnections,
}

impl crate::runbooks::StepKind for SplitStep {}
