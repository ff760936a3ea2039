//! The steps of a `citus-bootstrap` plan, in plan order; each slug is the journal's stable step id.

/// One variant per step: the effects match on it exhaustively, so a step without an action
/// or an undo arm does not compile.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::EnumString, strum::IntoStaticStr, strum::EnumIter,
)]
#[strum(serialize_all = "kebab-case")]
pub enum CitusStep {
    Preflight,
    PreloadCitus,
    CreateDatabase,
    CreateExtension,
    SetCoordinator,
    AddWorkers,
    ShardCount,
    VerifyCluster,
    CreateTables,
    Distribute,
    VerifyDistribution,
}

impl crate::runbooks::StepKind for CitusStep {}
