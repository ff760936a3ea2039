//! Keymap as data: one table maps keys to [`Command`]s per [`Context`]; the `?` help popup and
//! the hint bar are both generated from it, so they cannot disagree with what keys do.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// What a key (or a palette entry) asks the cockpit to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    RunNext,
    /// Run the next step alone even when it opens a paused window (palette only).
    RunNextStepwise,
    /// Abort the paused window running now: traffic resumes and the run rolls back.
    AbortWindow,
    RollbackToSelected,
    SkipSelected,
    /// Second operator (`tui --second`): approve what the driver waits on.
    ApproveRequest,
    /// Second operator: object to what the driver waits on, with a reason.
    ObjectRequest,
    /// Second operator: withdraw my approval or objection.
    WithdrawVerdict,
    ToggleFreeze,
    OpenPalette,
    ToggleHelp,
    Quit,
    FocusNext,
    FocusPrev,
    Up,
    Down,
    /// Copy pane: hold new table starts (running ones finish), or release them.
    ToggleHoldItems,
    /// Copy pane: confirm the next table waiting for the operator (`--confirm`).
    ConfirmNextItem,
    /// Copy pane: retry the selected errored table.
    RetrySelectedItem,
    /// Switch to a built-in theme (palette only).
    Theme(String),
    /// Dialog: close without doing anything.
    Cancel,
    /// Dialog: confirm with the dialog's confirm key.
    Confirm,
    /// Dialog/palette: move between input fields.
    NextField,
}

/// Where a binding applies: the top layer decides the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// The panes, with no popup open.
    Main,
    Dialog,
    Palette,
    Help,
}

impl Context {
    pub fn title(self) -> &'static str {
        match self {
            Context::Main => "Cockpit",
            Context::Dialog => "Confirmation dialog",
            Context::Palette => "Command palette",
            Context::Help => "Help",
        }
    }
}

/// A key with its modifiers. Shift is not compared for character keys (terminals differ in
/// reporting it); `Y` and `y` are different characters already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    pub code: KeyCode,
    pub modifiers: KeyModifiers,
}

impl KeySpec {
    pub const fn plain(code: KeyCode) -> KeySpec {
        KeySpec {
            code,
            modifiers: KeyModifiers::NONE,
        }
    }
    pub const fn char(c: char) -> KeySpec {
        KeySpec::plain(KeyCode::Char(c))
    }

    pub fn matches(&self, key: &KeyEvent) -> bool {
        let relevant = KeyModifiers::CONTROL | KeyModifiers::ALT;
        match (self.code, key.code) {
            (KeyCode::Char(a), KeyCode::Char(b)) => {
                a == b && (self.modifiers & relevant) == (key.modifiers & relevant)
            }
            (KeyCode::BackTab, KeyCode::BackTab) => true,
            (a, b) => a == b && (self.modifiers & relevant) == (key.modifiers & relevant),
        }
    }

    /// Short label for the hint bar and help, e.g. `Enter`, `Y`, `←`.
    pub fn label(&self) -> String {
        let base = match self.code {
            KeyCode::Enter => "Enter".to_string(),
            KeyCode::Esc => "Esc".to_string(),
            KeyCode::Tab => "Tab".to_string(),
            KeyCode::BackTab => "S-Tab".to_string(),
            KeyCode::Up => "↑".to_string(),
            KeyCode::Down => "↓".to_string(),
            KeyCode::Left => "←".to_string(),
            KeyCode::Right => "→".to_string(),
            KeyCode::Char(c) => c.to_string(),
            other => format!("{other:?}"),
        };
        if self.modifiers.contains(KeyModifiers::CONTROL) {
            format!("C-{base}")
        } else {
            base
        }
    }
}

pub struct KeyBinding {
    pub keys: &'static [KeySpec],
    pub command: Command,
    /// Shown in the help popup.
    pub description: &'static str,
    pub context: Context,
    /// Shown in the hint bar next to the first key; `None` keeps the binding out of the bar
    /// (the help popup shows every binding).
    pub hint: Option<&'static str>,
}

impl KeyBinding {
    /// The first key's label, for the hint bar.
    pub fn first_key_label(&self) -> String {
        self.keys.first().map(KeySpec::label).unwrap_or_default()
    }
    pub fn keys_label(&self) -> String {
        self.keys
            .iter()
            .map(KeySpec::label)
            .collect::<Vec<_>>()
            .join("/")
    }
}

const fn bind(
    keys: &'static [KeySpec],
    command: Command,
    description: &'static str,
    context: Context,
    hint: Option<&'static str>,
) -> KeyBinding {
    KeyBinding {
        keys,
        command,
        description,
        context,
        hint,
    }
}

/// The confirm key of a plain (non-destructive) confirmation.
pub const CONFIRM_PLAIN: KeySpec = KeySpec::char('y');
/// The confirm key of destructive, point-of-no-return, rollback and quit confirmations:
/// a shifted key, so that a stray keypress cannot confirm.
pub const CONFIRM_SHIFTED: KeySpec = KeySpec::char('Y');

/// The one keymap. Order is the order of the help popup and the hint bar.
pub static KEYMAP: &[KeyBinding] = &[
    bind(
        &[KeySpec::plain(KeyCode::Enter)],
        Command::RunNext,
        "run next step (asks to confirm)",
        Context::Main,
        Some("run"),
    ),
    bind(
        &[KeySpec::char('r')],
        Command::RollbackToSelected,
        "roll back to selected step",
        Context::Main,
        Some("rollback"),
    ),
    bind(
        &[KeySpec::char('s')],
        Command::SkipSelected,
        "skip selected step (typed reason)",
        Context::Main,
        Some("skip"),
    ),
    bind(
        &[KeySpec::char('a')],
        Command::ApproveRequest,
        "second operator: approve what the driver waits on (tui --second)",
        Context::Main,
        None,
    ),
    bind(
        &[KeySpec::char('o')],
        Command::ObjectRequest,
        "second operator: object to it, with a reason (blocks the driver)",
        Context::Main,
        None,
    ),
    bind(
        &[KeySpec::char('w')],
        Command::WithdrawVerdict,
        "second operator: withdraw your approval or objection",
        Context::Main,
        None,
    ),
    bind(
        &[KeySpec::char('f')],
        Command::ToggleFreeze,
        "freeze/unfreeze readings",
        Context::Main,
        Some("freeze"),
    ),
    bind(
        &[KeySpec::char(':')],
        Command::OpenPalette,
        "command palette",
        Context::Main,
        Some("palette"),
    ),
    bind(
        &[
            KeySpec::plain(KeyCode::Tab),
            KeySpec::plain(KeyCode::Right),
            KeySpec::char('l'),
        ],
        Command::FocusNext,
        "next pane",
        Context::Main,
        Some("pane"),
    ),
    bind(
        &[
            KeySpec::plain(KeyCode::BackTab),
            KeySpec::plain(KeyCode::Left),
            KeySpec::char('h'),
        ],
        Command::FocusPrev,
        "previous pane",
        Context::Main,
        None,
    ),
    bind(
        &[KeySpec::char('j'), KeySpec::plain(KeyCode::Down)],
        Command::Down,
        "select next step / scroll down",
        Context::Main,
        None,
    ),
    bind(
        &[KeySpec::char('k'), KeySpec::plain(KeyCode::Up)],
        Command::Up,
        "select previous step / scroll up",
        Context::Main,
        None,
    ),
    bind(
        &[KeySpec::char('x')],
        Command::AbortWindow,
        "abort the running paused window (resume, roll back)",
        Context::Main,
        None,
    ),
    bind(
        &[KeySpec::char('p')],
        Command::ToggleHoldItems,
        "Copy pane: hold new table starts (running ones finish) / release them",
        Context::Main,
        None,
    ),
    bind(
        &[KeySpec::char('c')],
        Command::ConfirmNextItem,
        "Copy pane: confirm the next table (--confirm)",
        Context::Main,
        None,
    ),
    bind(
        &[KeySpec::char('t')],
        Command::RetrySelectedItem,
        "Copy pane: retry the selected errored table (j/k select)",
        Context::Main,
        None,
    ),
    bind(
        &[KeySpec::char('?')],
        Command::ToggleHelp,
        "help",
        Context::Main,
        Some("help"),
    ),
    bind(
        &[KeySpec::char('q')],
        Command::Quit,
        "quit (asks while a step runs or traffic is paused)",
        Context::Main,
        Some("quit"),
    ),
    bind(
        &[KeySpec::plain(KeyCode::Esc), KeySpec::plain(KeyCode::Enter)],
        Command::Cancel,
        "cancel (the default)",
        Context::Dialog,
        Some("cancel"),
    ),
    bind(
        &[CONFIRM_PLAIN],
        Command::Confirm,
        "confirm a plain step",
        Context::Dialog,
        Some("confirm"),
    ),
    bind(
        &[CONFIRM_SHIFTED],
        Command::Confirm,
        "confirm destructive step / rollback / quit (Shift+y)",
        Context::Dialog,
        Some("confirm"),
    ),
    bind(
        &[KeySpec::plain(KeyCode::Tab)],
        Command::NextField,
        "next field (Enter also leaves a field)",
        Context::Dialog,
        Some("next field"),
    ),
    bind(
        &[KeySpec::plain(KeyCode::Enter)],
        Command::Confirm,
        "run the typed command",
        Context::Palette,
        Some("run"),
    ),
    bind(
        &[KeySpec::plain(KeyCode::Tab)],
        Command::NextField,
        "complete",
        Context::Palette,
        Some("complete"),
    ),
    bind(
        &[KeySpec::plain(KeyCode::Esc)],
        Command::Cancel,
        "close",
        Context::Palette,
        Some("close"),
    ),
    bind(
        &[
            KeySpec::plain(KeyCode::Esc),
            KeySpec::char('?'),
            KeySpec::char('q'),
        ],
        Command::Cancel,
        "close help",
        Context::Help,
        Some("close"),
    ),
    bind(
        &[KeySpec::plain(KeyCode::Down), KeySpec::char('j')],
        Command::Down,
        "scroll down",
        Context::Help,
        Some("scroll"),
    ),
    bind(
        &[KeySpec::plain(KeyCode::Up), KeySpec::char('k')],
        Command::Up,
        "scroll up",
        Context::Help,
        None,
    ),
];

/// The command `key` is bound to in `context`, if any.
pub fn lookup(context: Context, key: &KeyEvent) -> Option<&'static KeyBinding> {
    KEYMAP
        .iter()
        .filter(|b| b.context == context)
        .find(|b| b.keys.iter().any(|k| k.matches(key)))
}

/// Bindings of one context, in table order.
pub fn bindings(context: Context) -> impl Iterator<Item = &'static KeyBinding> {
    KEYMAP.iter().filter(move |b| b.context == context)
}

/// Palette commands: name, argument hint, description.
pub static PALETTE_COMMANDS: &[(&str, &str, &str)] = &[
    ("run", "", "run the next step (asks to confirm)"),
    (
        "step",
        "",
        "walk a paused window step by step (its bound still runs)",
    ),
    ("abort", "", "abort the running paused window"),
    ("rollback", "", "roll back to the selected step"),
    ("skip", "", "skip the selected step"),
    ("freeze", "", "freeze/unfreeze readings"),
    ("theme", " <dark|light|high-contrast>", "switch theme"),
    ("help", "", "show keys"),
    ("quit", "", "quit"),
];

/// Parses a palette line into a command.
pub fn parse_palette(line: &str) -> Result<Command, String> {
    let mut words = line.split_whitespace();
    let name = words.next().unwrap_or("");
    let arg = words.next();
    let command = match (name, arg) {
        ("run", None) => Command::RunNext,
        ("step", None) => Command::RunNextStepwise,
        ("abort", None) => Command::AbortWindow,
        ("rollback", None) => Command::RollbackToSelected,
        ("skip", None) => Command::SkipSelected,
        ("freeze", None) => Command::ToggleFreeze,
        ("help", None) => Command::ToggleHelp,
        ("quit" | "q", None) => Command::Quit,
        ("theme", Some(theme)) => {
            if !super::theme::BUILTIN_NAMES.contains(&theme) {
                return Err(format!(
                    "unknown theme {theme:?}; built-in themes: {}",
                    super::theme::BUILTIN_NAMES.join(", ")
                ));
            }
            Command::Theme(theme.to_string())
        }
        ("theme", None) => {
            return Err("theme needs a name: theme <dark|light|high-contrast>".into())
        }
        ("", _) => return Err("type a command; Tab completes".into()),
        _ => {
            return Err(format!(
                "unknown command {line:?}; commands: {}",
                PALETTE_COMMANDS
                    .iter()
                    .map(|c| c.0)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    };
    if words.next().is_some() {
        return Err(format!("too many words in {line:?}"));
    }
    Ok(command)
}

/// Palette commands starting with what was typed.
pub fn palette_completions(typed: &str) -> Vec<&'static str> {
    let typed = typed.trim_start();
    PALETTE_COMMANDS
        .iter()
        .map(|c| c.0)
        .filter(|name| name.starts_with(typed) || typed.starts_with(name))
        .collect()
}
