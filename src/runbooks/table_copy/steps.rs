//! The steps of a `table-copy` plan, in plan order; each slug is the journal's stable step id.

/// One variant per step: the effects match on it exhaustively, so a step without an action
/// or an undo arm does not compile.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::EnumString, strum::IntoStaticStr, strum::EnumIter,
)]
#[strum(serialize_all = "kebab-case")]
pub enum CopyStep {
    /// Discover the tables on the source, check the target, record the list in the run.
    Preflight,
    /// Create the copy ledger on the target.
    Ledger,
    /// Copy every table (or key range), N at a time, as engine items; each item verifies its
    /// part (count and checksum on both sides) right after its commit.
    Copy,
    /// Confirm from the target's ledger that every table (or key range) is verified.
    Verify,
}

impl crate::runbooks::StepKind for CopyStep {}
