//! The steps of a `major-upgrade` plan, in plan order; each slug is the journal's stable step id.

/// One variant per step: the effects match on it exhaustively, so a step without an action
/// or an undo arm does not compile.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::EnumString, strum::IntoStaticStr, strum::EnumIter,
)]
#[strum(serialize_all = "kebab-case")]
pub enum UpgradeStep {
    Preflight,
    StopTarget,
    UpgradeCheck,
    StopTraffic,
    Baseline,
    Dump,
    Transfer,
    TestRestore,
    Restore,
    StopSource,
    PgUpgrade,
    StartTarget,
    Validate,
    Repoint,
    ResumeTraffic,
    StopOldCluster,
    RetireOldCluster,
}

impl crate::runbooks::StepKind for UpgradeStep {}
