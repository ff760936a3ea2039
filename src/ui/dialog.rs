//! Popup layers of the UI model (helix-like compositor): confirmation dialogs, the command
//! palette and help. The top layer receives every key; see [`super::update`].

use super::keymap::{KeySpec, CONFIRM_PLAIN, CONFIRM_SHIFTED};
use std::time::{Duration, Instant};

/// Keys other than Esc arriving sooner than this after a dialog opened (or asked again) are
/// ignored: they are auto-repeat or a keypress meant for the screen below.
pub const CONFIRM_GUARD: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layer {
    Confirm(ConfirmDialog),
    Palette(Palette),
    Help { scroll: u16 },
}

/// What a confirmation dialog confirms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    RunStep {
        step: usize,
    },
    /// The paused window from `from` through `through`, confirmed once.
    RunWindow {
        from: usize,
        through: usize,
    },
    Rollback {
        to: usize,
    },
    Skip {
        step: usize,
    },
    /// Second operator (`tui --second`): approve the driver's request on `step`.
    Approve {
        request: i64,
        step: usize,
    },
    /// Second operator: object to the driver's request, with a reason.
    Object {
        request: i64,
        step: usize,
    },
    Quit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// Must equal the word exactly (point of no return).
    ConfirmWord,
    /// Free text, not empty (skip reason).
    Reason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextField {
    pub kind: FieldKind,
    pub label: String,
    pub value: String,
    /// For [`FieldKind::ConfirmWord`]: the word to type.
    pub expected: Option<String>,
}

impl TextField {
    pub fn new(kind: FieldKind, label: impl Into<String>, expected: Option<String>) -> TextField {
        TextField {
            kind,
            label: label.into(),
            value: String::new(),
            expected,
        }
    }
}

/// Where keys go inside a dialog. Dialogs start on the buttons row with Cancel as the default,
/// or on their first text field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogFocus {
    Field(usize),
    Buttons,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Plain,
    /// Destructive, point of no return, rollback, quit while live.
    Dangerous,
}

impl Severity {
    pub fn confirm_key(self) -> KeySpec {
        match self {
            Severity::Plain => CONFIRM_PLAIN,
            Severity::Dangerous => CONFIRM_SHIFTED,
        }
    }
    /// How the confirm key is shown to the operator.
    pub fn confirm_label(self) -> &'static str {
        match self {
            Severity::Plain => "y",
            Severity::Dangerous => "Shift+Y",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmDialog {
    pub intent: Intent,
    pub title: String,
    /// Context lines shown above the fields (what will run, why it is dangerous).
    pub body: Vec<String>,
    pub severity: Severity,
    /// When the dialog opened or last asked again; starts the [`CONFIRM_GUARD`].
    pub opened_at: Instant,
    /// What the operator is confirming, from the model's `SeenFn` (empty for quit).
    pub seen: String,
    /// Set when `seen` changed before the confirmation: the lines that changed.
    pub changed: Vec<String>,
    pub fields: Vec<TextField>,
    pub focus: DialogFocus,
    /// Why the last confirm attempt was refused.
    pub error: Option<String>,
    /// First body line shown (PageUp/PageDown scroll a body taller than the screen).
    pub scroll: u16,
}

impl ConfirmDialog {
    pub fn new(
        intent: Intent,
        title: impl Into<String>,
        body: Vec<String>,
        severity: Severity,
        opened_at: Instant,
        seen: String,
        fields: Vec<TextField>,
    ) -> ConfirmDialog {
        let focus = if fields.is_empty() {
            DialogFocus::Buttons
        } else {
            DialogFocus::Field(0)
        };
        ConfirmDialog {
            intent,
            title: title.into(),
            body,
            severity,
            opened_at,
            seen,
            changed: Vec::new(),
            fields,
            focus,
            error: None,
            scroll: 0,
        }
    }

    pub fn guarded(&self, at: Instant) -> bool {
        at.saturating_duration_since(self.opened_at) < CONFIRM_GUARD
    }

    pub fn field(&self, kind: FieldKind) -> Option<&TextField> {
        self.fields.iter().find(|f| f.kind == kind)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Palette {
    pub input: String,
    pub error: Option<String>,
}
