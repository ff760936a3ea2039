//! The steps of a `logical-move` plan, in plan order; each slug is the journal's stable step id.

/// One variant per step: the effects match on it exhaustively, so a step without an action
/// or an undo arm does not compile.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::EnumString, strum::IntoStaticStr, strum::EnumIter,
)]
#[strum(serialize_all = "kebab-case")]
pub enum MoveStep {
    /// Keys or replica identity, wal_level, WAL senders and slots, source disk, target.
    Preflight,
    /// `wal_level = logical` on the source, with a restart through its `control` commands
    /// (nothing to do when it is set already).
    WalLevel,
    /// The publication of the moved tables and the canary table on the source.
    Publication,
    /// `pg_dump --schema-only` of the source restored on the target (or the target's own
    /// schema checked compatible).
    Schema,
    /// One logical slot with an exported snapshot; the table-copy engine copies and verifies
    /// every table under that snapshot.
    InitialCopy,
    /// The subscription on the existing slot, proven by a canary row.
    Subscribe,
    /// Wait until the target is in sync; stop on DDL or apply errors.
    CatchUp,
    /// PAUSE the entry alias and the aliases of the source database.
    StopTraffic,
    /// Record the source's LSN (with a marker message); the target has applied up to it.
    LsnGate,
    /// Sequences on the target past the source's values and the columns' maxima.
    Sequences,
    /// With `--reverse-stream`: publication and slot on the target (its consistent point is
    /// the cutover moment), a disabled subscription on the source.
    ReverseStream,
    /// The aliases of the source database now route to the target.
    Repoint,
    /// RESUME: writes land on the target from here on.
    ResumeTraffic,
    /// Count and checksum of every table, the target read as of the cutover.
    Verify,
    /// Drop the subscription, the slot, the publication and the tool's tables (and, with
    /// `--reverse-stream`, enable the reverse subscription on the source).
    Cleanup,
    /// With `--reverse-stream`, held: PAUSE, the source has applied the target's writes
    /// (canary), sequences on the source, aliases back to the source, RESUME.
    MoveBack,
    /// With `--reverse-stream`: drop the reverse subscription on the source, its slot and
    /// publication on the target.
    RetireReverseStream,
}

impl crate::runbooks::StepKind for MoveStep {}
