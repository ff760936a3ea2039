//! Headless cockpit tests: key events driven through the pure `update`, with time passed as
//! data, asserting what is (and is not) sent to the engine.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use cutover::ui::dialog::{DialogFocus, Layer};
use cutover::ui::fixtures;
use cutover::ui::model::{
    Model, NoticeLevel, PairRequestView, PairWaitView, RunbookUpdate, StepStatusView, UiRequest,
};
use cutover::ui::update::{update, Action};
use std::time::{Duration, Instant};

/// A cockpit driven by keys, with its own clock.
struct App {
    model: Model,
    at: Instant,
}

fn press(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn ch(c: char) -> KeyEvent {
    let modifiers = if c.is_ascii_uppercase() {
        KeyModifiers::SHIFT
    } else {
        KeyModifiers::NONE
    };
    KeyEvent::new(KeyCode::Char(c), modifiers)
}

fn repeat(mut key: KeyEvent) -> KeyEvent {
    key.kind = KeyEventKind::Repeat;
    key
}

impl App {
    fn new() -> App {
        let at = Instant::now();
        App {
            model: fixtures::model(at),
            at,
        }
    }
    /// The fixture with step `index` as the next step (earlier steps done) and traffic running.
    fn at_step(index: usize) -> App {
        let mut app = App::new();
        let runbook = app.model.runbook.as_mut().expect("fixture runbook");
        for step in &mut runbook.steps[..index] {
            step.status = StepStatusView::Done;
        }
        runbook.traffic_paused_since = None;
        app.model.selected_step = index;
        app
    }
    /// Step 5 (the gate) with its preconditions holding: a plain step.
    fn at_passing_gate() -> App {
        let mut app = App::at_step(4);
        let runbook = app.model.runbook.as_mut().expect("fixture runbook");
        runbook.steps[4].preconditions[1].holds = Some(true);
        runbook.steps[4].preconditions[1].detail = "replay 0/5000060 ≥ current 0/5000060".into();
        app
    }
    fn key(&mut self, key: KeyEvent) -> Vec<UiRequest> {
        self.at += Duration::from_millis(20);
        update(&mut self.model, Action::Key { key, at: self.at })
    }
    fn keys(&mut self, keys: &[KeyEvent]) -> Vec<UiRequest> {
        keys.iter().flat_map(|k| self.key(*k)).collect()
    }
    fn type_text(&mut self, text: &str) -> Vec<UiRequest> {
        text.chars().flat_map(|c| self.key(ch(c))).collect()
    }
    /// Lets the operator read the dialog (past the auto-repeat guard).
    fn think(&mut self) {
        self.at += Duration::from_millis(400);
    }
    fn dialog(&self) -> Option<&cutover::ui::dialog::ConfirmDialog> {
        match self.model.layers.last() {
            Some(Layer::Confirm(d)) => Some(d),
            _ => None,
        }
    }
    fn last_notice(&self) -> String {
        self.model
            .notices
            .back()
            .map(|n| n.text.clone())
            .unwrap_or_default()
    }
}

#[test]
fn enter_on_an_open_dialog_cancels() {
    let mut app = App::at_passing_gate();
    assert!(app.key(press(KeyCode::Enter)).is_empty());
    let dialog = app.dialog().expect("Enter opens a confirmation");
    assert_eq!(dialog.focus, DialogFocus::Buttons, "focus starts on Cancel");
    app.think();
    assert!(
        app.key(press(KeyCode::Enter)).is_empty(),
        "Enter must not confirm"
    );
    assert!(app.dialog().is_none(), "Enter cancelled the dialog");
    // Esc cancels too, and `n`.
    app.key(press(KeyCode::Enter));
    app.think();
    assert!(app.key(press(KeyCode::Esc)).is_empty());
    assert!(app.dialog().is_none());
    app.key(press(KeyCode::Enter));
    app.think();
    assert!(app.key(ch('n')).is_empty());
    assert!(app.dialog().is_none());
    // The plain confirm key does confirm, bound to the operator and what they saw.
    app.key(press(KeyCode::Enter));
    app.think();
    let sent = app.key(ch('y'));
    match sent.as_slice() {
        [UiRequest::RunStep {
            step: 4,
            confirmation,
        }] => {
            assert_eq!(confirmation.by, vec!["alice".to_string()]);
            assert!(
                confirmation.seen.contains("step gate"),
                "{}",
                confirmation.seen
            );
            assert!(confirmation
                .seen
                .contains("standby replay ≥ primary current WAL: holds"));
        }
        other => panic!("expected RunStep 4, got {other:?}"),
    }
    assert!(app.dialog().is_none());
}

#[test]
fn destructive_step_needs_the_shifted_key() {
    let mut app = App::at_step(6); // Rename: destructive, with an undo.
    app.key(press(KeyCode::Enter));
    let dialog = app.dialog().expect("dialog");
    assert_eq!(dialog.severity.confirm_label(), "Shift+Y");
    app.think();
    assert!(
        app.key(ch('y')).is_empty(),
        "unshifted y must not confirm a destructive step"
    );
    let dialog = app.dialog().expect("still open");
    assert!(dialog.error.as_deref().unwrap_or("").contains("Shift+Y"));
    let sent = app.key(ch('Y'));
    assert!(
        matches!(sent.as_slice(), [UiRequest::RunStep { step: 6, .. }]),
        "{sent:?}"
    );
}

#[test]
fn point_of_no_return_needs_the_typed_name() {
    let mut app = App::at_step(5); // Promote pg2: point of no return, word "pg2".
    app.key(press(KeyCode::Enter));
    assert_eq!(app.dialog().expect("dialog").focus, DialogFocus::Field(0));
    app.think();
    // In the field, `Y` is text, not a confirmation.
    assert!(app.type_text("pgY").is_empty());
    assert_eq!(app.dialog().expect("open").fields[0].value, "pgY");
    app.key(press(KeyCode::Backspace));
    app.type_text("1");
    app.key(press(KeyCode::Enter)); // leaves the field for the buttons row
    assert_eq!(app.dialog().expect("open").focus, DialogFocus::Buttons);
    assert!(app.key(ch('Y')).is_empty(), "wrong name must be refused");
    let dialog = app.dialog().expect("still open");
    assert!(
        dialog.error.as_deref().unwrap_or("").contains("\"pg2\""),
        "{:?}",
        dialog.error
    );
    assert_eq!(
        dialog.focus,
        DialogFocus::Field(0),
        "focus returns to the field"
    );
    app.keys(&[
        press(KeyCode::Backspace),
        press(KeyCode::Backspace),
        press(KeyCode::Backspace),
    ]);
    app.type_text("pg2");
    app.key(press(KeyCode::Tab));
    let sent = app.key(ch('Y'));
    assert!(
        matches!(sent.as_slice(), [UiRequest::RunStep { step: 5, .. }]),
        "{sent:?}"
    );
}

#[test]
fn a_stale_confirmation_is_asked_again() {
    let mut app = App::at_passing_gate();
    app.key(press(KeyCode::Enter));
    let opened_seen = app.dialog().expect("dialog").seen.clone();
    assert!(
        opened_seen.contains("pg1: current WAL 0/5000060"),
        "{opened_seen}"
    );
    app.think();
    // Writes land while the dialog is open: the primary's WAL moves, the standby lags again.
    let mut snapshot = fixtures::snapshot(fixtures::fixed_now() + chrono::Duration::seconds(1));
    if let Some(pg1) = snapshot.replication[0].value().cloned() {
        let mut pg1 = pg1;
        pg1.current_wal_lsn = Some("0/5000F00".into());
        snapshot.replication[0].outcome = cutover::readings::types::Outcome::Ok(pg1);
    }
    update(&mut app.model, Action::Snapshot(Box::new(snapshot)));
    assert!(
        app.key(ch('y')).is_empty(),
        "a stale confirmation must not be sent"
    );
    let dialog = app.dialog().expect("the dialog asks again");
    assert!(
        dialog
            .changed
            .contains(&"- pg1: current WAL 0/5000060".to_string()),
        "{:?}",
        dialog.changed
    );
    assert!(
        dialog
            .changed
            .contains(&"+ pg1: current WAL 0/5000F00".to_string()),
        "{:?}",
        dialog.changed
    );
    assert!(dialog.error.as_deref().unwrap_or("").contains("changed"));
    // Asking again restarts the guard: an immediate second press is ignored.
    assert!(app.key(ch('y')).is_empty());
    assert!(app.dialog().is_some());
    app.think();
    let sent = app.key(ch('y'));
    match sent.as_slice() {
        [UiRequest::RunStep {
            step: 4,
            confirmation,
        }] => {
            assert!(
                confirmation.seen.contains("0/5000F00"),
                "sent what was seen last"
            );
            assert_ne!(confirmation.seen, opened_seen);
        }
        other => panic!("expected RunStep, got {other:?}"),
    }
}

#[test]
fn lag_reappearing_makes_a_confirmation_stale() {
    // Step 12 (VACUUM) does not need traffic stopped: LSNs are not part of what is confirmed,
    // so live traffic alone does not invalidate it, but lag appearing does.
    let mut app = App::at_step(11);
    let mut caught_up = fixtures::snapshot(fixtures::fixed_now());
    let mut pg1 = caught_up.replication[0].value().cloned().expect("pg1");
    pg1.senders[0].lag_bytes = Some(0);
    caught_up.replication[0].outcome = cutover::readings::types::Outcome::Ok(pg1.clone());
    update(
        &mut app.model,
        Action::Snapshot(Box::new(caught_up.clone())),
    );
    app.key(press(KeyCode::Enter));
    app.think();
    let mut moved = caught_up.clone();
    pg1.current_wal_lsn = Some("0/6000000".into());
    moved.replication[0].outcome = cutover::readings::types::Outcome::Ok(pg1.clone());
    update(&mut app.model, Action::Snapshot(Box::new(moved.clone())));
    // WAL moving with no lag is fine, and so is the few kB a streaming standby trails by
    // under live traffic; now the standby falls behind for real.
    let mut trailing = moved.clone();
    let mut pg1_trailing = pg1.clone();
    pg1_trailing.senders[0].lag_bytes = Some(8192);
    trailing.replication[0].outcome = cutover::readings::types::Outcome::Ok(pg1_trailing);
    let step = app.model.step(11).expect("step 12").clone();
    assert_eq!(
        cutover::ui::model::default_seen(&step, &moved),
        cutover::ui::model::default_seen(&step, &trailing),
        "normal streaming lag does not make a confirmation stale"
    );
    let mut lagging = moved;
    pg1.senders[0].lag_bytes = Some(64 * 1024 * 1024);
    lagging.replication[0].outcome = cutover::readings::types::Outcome::Ok(pg1);
    update(&mut app.model, Action::Snapshot(Box::new(lagging)));
    assert!(app.key(ch('y')).is_empty());
    let changed = &app.dialog().expect("asked again").changed;
    assert!(
        changed.contains(&"+ pg1 → pg2: streaming, lagging".to_string()),
        "{changed:?}"
    );
}

#[test]
fn auto_repeat_is_ignored() {
    let mut app = App::at_passing_gate();
    // A held key on the main screen opens nothing.
    assert!(app.key(repeat(press(KeyCode::Enter))).is_empty());
    assert!(app.dialog().is_none());
    app.key(press(KeyCode::Enter));
    // Within 300 ms of opening, even a real press of the confirm key is ignored.
    assert!(app.key(ch('y')).is_empty());
    assert!(app.dialog().is_some(), "early press ignored, dialog stays");
    app.think();
    // Auto-repeat of Enter or of y never cancels, types or confirms.
    assert!(app.key(repeat(press(KeyCode::Enter))).is_empty());
    assert!(app.dialog().is_some(), "repeat of Enter ignored");
    assert!(app.key(repeat(ch('y'))).is_empty());
    assert!(app.dialog().is_some(), "repeat of y ignored");
    let sent = app.key(ch('y'));
    assert_eq!(sent.len(), 1, "a deliberate press after the guard confirms");
}

#[test]
fn rollback_is_sent_after_confirmation() {
    let mut app = App::new();
    assert_eq!(
        app.model.selected_step, 4,
        "selection starts at the next step"
    );
    app.key(ch('k')); // select step 4, "Stop traffic"
    assert_eq!(app.model.selected_step, 3);
    app.key(ch('r'));
    assert!(app.dialog().is_some());
    app.think();
    assert!(
        app.key(press(KeyCode::Enter)).is_empty(),
        "Enter cancels the rollback"
    );
    assert!(app.dialog().is_none());
    app.key(ch('r'));
    app.think();
    assert!(
        app.key(ch('y')).is_empty(),
        "rollback needs the shifted key"
    );
    let sent = app.key(ch('Y'));
    assert_eq!(
        sent,
        vec![UiRequest::Rollback {
            to: 3,
            by: vec!["alice".into()]
        }]
    );
}

#[test]
fn rollback_past_the_point_of_no_return_is_refused_with_the_reason() {
    let mut app = App::at_step(7); // steps 1-7 done, including Promote (point of no return)
    app.model.selected_step = 3;
    assert!(app.key(ch('r')).is_empty());
    assert!(app.dialog().is_none());
    let notice = app.last_notice();
    assert!(notice.contains("point of no return"), "{notice}");
    assert!(
        notice.contains("a promoted standby cannot follow pg1 again"),
        "{notice}"
    );
}

#[test]
fn skip_needs_a_typed_reason() {
    let mut app = App::new();
    for _ in 0..7 {
        app.key(ch('j'));
    }
    assert_eq!(app.model.selected_step, 11);
    app.key(ch('s'));
    assert_eq!(
        app.dialog().expect("skip dialog").focus,
        DialogFocus::Field(0)
    );
    app.think();
    app.key(press(KeyCode::Enter));
    assert!(app.key(ch('y')).is_empty(), "empty reason refused");
    assert!(app
        .dialog()
        .and_then(|d| d.error.clone())
        .unwrap_or_default()
        .contains("reason is required"));
    app.type_text("estimates not needed, ANALYZE runs nightly");
    app.key(press(KeyCode::Enter));
    let sent = app.key(ch('y'));
    assert_eq!(
        sent,
        vec![UiRequest::Skip {
            step: 11,
            reason: "estimates not needed, ANALYZE runs nightly".into(),
            by: vec!["alice".into()]
        }]
    );
}

#[test]
fn quit_is_refused_while_traffic_is_paused_unless_confirmed() {
    let mut app = App::new(); // traffic paused in the fixture
    assert!(app.key(ch('q')).is_empty());
    assert!(!app.model.should_quit);
    assert!(app.dialog().is_some());
    app.think();
    app.key(press(KeyCode::Enter));
    assert!(
        app.dialog().is_none() && !app.model.should_quit,
        "Enter cancels the quit"
    );
    app.key(ch('q'));
    app.think();
    assert!(
        app.key(ch('y')).is_empty(),
        "quitting while live needs the shifted key"
    );
    assert_eq!(app.key(ch('Y')), vec![UiRequest::Quit]);
    assert!(app.model.should_quit);
}

#[test]
fn quit_is_refused_while_a_step_runs_and_immediate_when_idle() {
    let mut app = App::at_step(4);
    app.model.runbook.as_mut().expect("runbook").running = Some(4);
    assert!(app.key(ch('q')).is_empty());
    let body = app.dialog().expect("asks").body.join("\n");
    assert!(
        body.contains("Step 5 “Gate: standby caught up” is running"),
        "{body}"
    );

    let mut idle = App::at_step(4);
    assert_eq!(idle.key(ch('q')), vec![UiRequest::Quit]);
    assert!(idle.model.should_quit);
}

/// The screen as text, drawn by the real renderer.
fn screen_text(model: &Model, width: u16, height: u16) -> String {
    let mut terminal = ratatui::Terminal::new(ratatui::backend::TestBackend::new(width, height))
        .expect("test backend");
    let theme = cutover::ui::Theme::builtin("dark").expect("theme");
    cutover::ui::render::draw(&mut terminal, model, &theme).expect("draw");
    let buffer = terminal.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..height {
        for x in 0..width {
            out.push_str(buffer[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

#[test]
fn pair_mode_asks_no_typed_name_and_says_who_approves() {
    let mut app = App::at_step(6); // destructive
    app.model.session.pair = true;
    app.key(press(KeyCode::Enter));
    let dialog = app.dialog().expect("dialog");
    assert!(dialog.fields.is_empty(), "no second name is typed");
    assert!(
        dialog
            .body
            .iter()
            .any(|l| l.contains("another OS user approves")),
        "{:?}",
        dialog.body
    );
    app.think();
    match app.key(ch('Y')).as_slice() {
        [UiRequest::RunStep {
            step: 6,
            confirmation,
        }] => assert_eq!(confirmation.by, vec!["alice".to_string()]),
        other => panic!("expected RunStep, got {other:?}"),
    }
    // The driver's cockpit says who it waits for and since when, and shows an objection.
    let since = app.model.now - chrono::Duration::seconds(42);
    update(
        &mut app.model,
        Action::Runbook(RunbookUpdate::PairWait(Some(PairWaitView {
            request: 3,
            covers: "step `delete-invalid`".into(),
            driver: "alice (uid 1000)".into(),
            since,
            seen: "ab".repeat(32),
            objection: Some(("bob (uid 1001)".into(), "not before the backup".into())),
            note: None,
        }))),
    );
    let screen = screen_text(&app.model, 120, 40);
    for needle in [
        "Waiting for a second operator to approve step `delete-invalid`",
        "another OS user than alice (uid 1000)",
        "(42 s)",
        "BLOCKED: bob (uid 1001) objects: not before the backup",
    ] {
        assert!(screen.contains(needle), "lacks {needle:?}:\n{screen}");
    }
}

#[test]
fn the_second_session_approves_or_objects_to_what_the_driver_waits_on() {
    let mut app = App::at_step(6);
    app.model.session.readonly = true;
    app.model.session.second = true;
    assert!(app.key(ch('a')).is_empty());
    assert!(app.dialog().is_none(), "nothing to approve yet");
    let request = PairRequestView {
        request: 9,
        step: 6,
        covers: "step `delete-invalid`".into(),
        driver: "alice (uid 1000)".into(),
        driver_terminal: "tty /dev/pts/1".into(),
        since: app.model.now,
        seen: "cd".repeat(32),
        shown: vec!["observed routing = true".into()],
        refusal: None,
        mine: None,
    };
    update(
        &mut app.model,
        Action::Runbook(RunbookUpdate::PairRequest(Some(request.clone()))),
    );
    app.key(ch('a'));
    let dialog = app.dialog().expect("approval dialog");
    let body = dialog.body.join("\n");
    for needle in [
        "alice (uid 1000) waits since",
        &"cd".repeat(32),
        "observed routing = true",
    ] {
        assert!(body.contains(needle), "lacks {needle:?}:\n{body}");
    }
    app.think();
    match app.key(ch('Y')).as_slice() {
        [UiRequest::Approve { request: 9, seen }] => assert_eq!(seen, &"cd".repeat(32)),
        other => panic!("expected Approve, got {other:?}"),
    }
    // An objection needs a reason.
    app.key(ch('o'));
    app.think();
    app.key(press(KeyCode::Enter));
    assert!(app.key(ch('Y')).is_empty(), "no reason, no objection");
    app.type_text("wait");
    app.key(press(KeyCode::Enter));
    match app.key(ch('Y')).as_slice() {
        [UiRequest::Object { request: 9, reason }] => assert_eq!(reason, "wait"),
        other => panic!("expected Object, got {other:?}"),
    }
    assert_eq!(app.key(ch('w')), vec![UiRequest::Withdraw { request: 9 }]);
    // The driver's own OS user is told why it cannot approve.
    update(
        &mut app.model,
        Action::Runbook(RunbookUpdate::PairRequest(Some(PairRequestView {
            request: 10,
            refusal: Some("you (alice (uid 1000)) drive this run".into()),
            ..request
        }))),
    );
    assert!(app.key(ch('a')).is_empty());
    assert!(app.dialog().is_none());
    assert!(
        app.last_notice().contains("drive this run"),
        "{}",
        app.last_notice()
    );
}

#[test]
fn readonly_shows_everything_and_sends_nothing() {
    let mut app = App::at_passing_gate();
    app.model.session.readonly = true;
    let mut sent = Vec::new();
    sent.extend(app.key(press(KeyCode::Enter)));
    app.think();
    sent.extend(app.keys(&[ch('y'), ch('Y')]));
    sent.extend(app.keys(&[ch('k'), ch('r')]));
    app.think();
    sent.extend(app.keys(&[ch('Y'), ch('s')]));
    app.think();
    sent.extend(app.type_text("reason"));
    sent.extend(app.keys(&[press(KeyCode::Enter), ch('y')]));
    sent.extend(app.keys(&[ch(':')]));
    sent.extend(app.type_text("run"));
    sent.extend(app.keys(&[press(KeyCode::Enter)]));
    assert!(sent.is_empty(), "read-only sent {sent:?}");
    assert!(app.dialog().is_none(), "no confirmation opens in read-only");
    assert!(app.last_notice().contains("read-only"));
    // Quitting a read-only cockpit needs no confirmation: it drives nothing.
    assert_eq!(app.key(ch('q')), vec![UiRequest::Quit]);
}

#[test]
fn a_failing_precondition_disables_enter_and_says_why() {
    let mut app = App::new();
    assert!(app.key(press(KeyCode::Enter)).is_empty());
    assert!(app.dialog().is_none(), "no dialog for a disabled step");
    let notice = app.model.notices.back().expect("a reason").clone();
    assert_eq!(notice.level, NoticeLevel::Refused);
    assert!(
        notice.text.contains("standby replay ≥ primary current WAL"),
        "{}",
        notice.text
    );
    assert!(
        notice.text.contains("replay 0/4F00000 < current 0/5000060"),
        "{}",
        notice.text
    );
    // The engine re-evaluates: the precondition now holds, and Enter opens the dialog.
    let mut view = app.model.runbook.clone().expect("runbook");
    view.steps[4].preconditions[1].holds = Some(true);
    update(
        &mut app.model,
        Action::Runbook(RunbookUpdate::View(view.clone())),
    );
    app.key(press(KeyCode::Enter));
    assert!(app.dialog().is_some());
    // It stops holding while the dialog is open: confirming is refused with the reason.
    app.think();
    view.steps[4].preconditions[1].holds = Some(false);
    update(&mut app.model, Action::Runbook(RunbookUpdate::View(view)));
    assert!(app.key(ch('y')).is_empty());
    let error = app
        .dialog()
        .and_then(|d| d.error.clone())
        .unwrap_or_default();
    assert!(error.contains("does not hold"), "{error}");
}

#[test]
fn palette_runs_commands_and_reports_unknown_ones() {
    let mut app = App::new();
    app.key(ch(':'));
    app.type_text("theme light");
    app.key(press(KeyCode::Enter));
    assert_eq!(app.model.theme_request.as_deref(), Some("light"));
    assert!(app.model.layers.is_empty());
    app.key(ch(':'));
    app.type_text("launch");
    app.key(press(KeyCode::Enter));
    match app.model.layers.last() {
        Some(Layer::Palette(p)) => {
            assert!(p.error.as_deref().unwrap_or("").contains("unknown command"))
        }
        other => panic!("palette should stay open with an error, got {other:?}"),
    }
    app.key(press(KeyCode::Esc));
    app.key(ch(':'));
    app.type_text("fr");
    app.key(press(KeyCode::Tab));
    app.key(press(KeyCode::Enter));
    assert!(app.model.frozen, "`fr` + Tab completes to freeze");
}

#[test]
fn freeze_holds_the_view_but_confirmations_use_the_latest_readings() {
    let mut app = App::new();
    app.key(ch('f'));
    assert!(app.model.frozen);
    let before = app.model.shown.clone();
    let later = fixtures::snapshot(fixtures::fixed_now() + chrono::Duration::seconds(3));
    update(&mut app.model, Action::Snapshot(Box::new(later.clone())));
    assert_eq!(app.model.shown, before, "frozen view does not move");
    assert_eq!(app.model.latest, later);
    app.key(ch('f'));
    assert_eq!(app.model.shown, later, "unfreezing shows the latest");
}

#[test]
fn lag_history_samples_each_reading_once_and_keeps_sixty() {
    let mut app = App::new();
    app.model.lag_history.clear();
    for i in 0..70 {
        let snapshot = fixtures::snapshot(fixtures::fixed_now() + chrono::Duration::seconds(i));
        update(&mut app.model, Action::Snapshot(Box::new(snapshot.clone())));
        // The same reading arriving again (another source changed) is not a new sample.
        update(&mut app.model, Action::Snapshot(Box::new(snapshot)));
    }
    let history = app
        .model
        .lag_history
        .get("pg1/pg2")
        .expect("sender history");
    assert_eq!(history.samples.len(), cutover::ui::model::LAG_HISTORY_LEN);
    assert!(history.samples.iter().all(|&s| s == 1_048_672));
}

#[test]
fn selection_follows_the_run_and_engine_refusals_are_shown() {
    let mut app = App::at_passing_gate();
    let mut view = app.model.runbook.clone().expect("runbook");
    view.steps[4].status = StepStatusView::Done;
    update(&mut app.model, Action::Runbook(RunbookUpdate::View(view)));
    assert_eq!(
        app.model.selected_step, 5,
        "selection moved on with the next step"
    );
    update(
        &mut app.model,
        Action::Runbook(RunbookUpdate::Refused(
            "confirmation is stale: lag on pg2".into(),
        )),
    );
    let notice = app.model.notices.back().expect("notice");
    assert_eq!(notice.level, NoticeLevel::Refused);
    assert!(notice.text.contains("lag on pg2"));
}

// ---------------------------------------------------------------------------------------------
// The real loop (`ui::run`) in a real terminal (tmux) against a real lab: readings arrive in the
// panes, keys go through crossterm, requests reach the engine channel, `q` asks while paused.

const TMUX_INVENTORY: &str = "CUTOVER_UI_TMUX_INVENTORY";
const TMUX_REQUESTS: &str = "CUTOVER_UI_TMUX_REQUESTS";

/// The cockpit process the tmux test starts (this test binary, running only this function).
/// A stand-in engine appends every request it receives to a file and marks run steps done;
/// once the cockpit has exited, the requests must be exactly the run of step 5 and the quit.
/// The tmux test checks this process's exit status.
#[test]
#[ignore = "helper process started by run_loop_in_tmux_against_a_real_lab"]
fn tmux_cockpit_process() {
    use cutover::ui::{RunbookUpdate, TuiOptions};
    use std::io::Write;
    use std::sync::Arc;
    let (Ok(inventory_path), Ok(requests_path)) =
        (std::env::var(TMUX_INVENTORY), std::env::var(TMUX_REQUESTS))
    else {
        panic!("run by run_loop_in_tmux_against_a_real_lab only");
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let inventory =
            cutover::inventory::load(std::path::Path::new(&inventory_path)).expect("inventory");
        let (requests_tx, mut requests_rx) = tokio::sync::mpsc::channel(8);
        let (updates_tx, updates_rx) = tokio::sync::mpsc::channel(8);
        let mut view = fixtures::runbook(chrono::Utc::now());
        view.steps[4].preconditions[1].holds = Some(true);
        let initial = view.clone();
        let engine = tokio::spawn(async move {
            let mut received = Vec::new();
            while let Some(request) = requests_rx.recv().await {
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&requests_path)
                    .expect("requests file");
                writeln!(file, "{request:?}").expect("write request");
                if let UiRequest::RunStep { step, .. } = request {
                    view.steps[step].status = StepStatusView::Done;
                    let _ = updates_tx.send(RunbookUpdate::View(view.clone())).await;
                }
                received.push(request);
            }
            received
        });
        cutover::ui::run(TuiOptions {
            inventory: Arc::new(inventory),
            inventory_updates: None,
            theme: cutover::ui::Theme::builtin("dark").expect("theme"),
            operator: "alice".into(),
            pair: false,
            readonly: false,
            second: false,
            requests_tx,
            updates_rx,
            initial: Some(initial),
            intervals: cutover::readings::poller::PollIntervals {
                fast: Duration::from_millis(500),
                distribution: Duration::from_secs(2),
            },
            seen: cutover::ui::default_seen,
            copy: None,
        })
        .await
        .expect("cockpit ran");
        // `run` dropped its sender: the engine drains what was sent, then ends.
        let received = engine.await.expect("engine task");
        assert!(
            matches!(
                received.as_slice(),
                [UiRequest::RunStep { step: 4, .. }, UiRequest::Quit]
            ),
            "the engine received {received:?}"
        );
    });
}

/// Kills the tmux session this test created, by its unique name.
struct TmuxSession(String);

impl TmuxSession {
    fn capture(&self) -> String {
        let out = std::process::Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.0])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    fn send(&self, keys: &str) {
        let status = std::process::Command::new("tmux")
            .args(["send-keys", "-t", &self.0, keys])
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }
    fn alive(&self) -> bool {
        std::process::Command::new("tmux")
            .args(["has-session", "-t", &self.0])
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
    fn wait_for(&self, what: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.capture();
            if screen.contains(what) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{what:?} never appeared; screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for TmuxSession {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn wait_for_file(path: &std::path::Path, what: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(what) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what:?} never sent; requests:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_loop_in_tmux_against_a_real_lab() {
    let lab = cutover::lab::TestLab::start(2_000).await.expect("lab up");
    let scratch = tempfile::tempdir().expect("tempdir");
    let requests = scratch.path().join("requests.txt");
    let exe = std::env::current_exe().expect("test binary");
    let exit_code = scratch.path().join("exit-code.txt");
    let command = format!(
        "{TMUX_INVENTORY}={} {TMUX_REQUESTS}={} {} --ignored --exact tmux_cockpit_process --nocapture --test-threads=1 2>{}; echo $? >{}",
        lab.config.inventory_path().display(),
        requests.display(),
        exe.display(),
        scratch.path().join("stderr.txt").display(),
        exit_code.display(),
    );
    let session = TmuxSession(format!("cutover-ui-{}", uuid::Uuid::new_v4().simple()));
    let status = std::process::Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-s",
            &session.0,
            "-x",
            "160",
            "-y",
            "48",
            &command,
        ])
        .status()
        .expect("tmux new-session");
    assert!(status.success());
    let long = Duration::from_secs(20);
    // Live readings from the lab's servers reach the panes.
    session.wait_for("pg1 primary · WAL 0/", long);
    session.wait_for("alias", long);
    let screen = session.wait_for("exact 2,000", long);
    assert!(screen.contains("TRAFFIC PAUSED"), "{screen}");
    assert!(screen.contains("env lab"), "{screen}");
    // Enter opens the confirmation; `y` after the guard sends the request to the engine.
    session.send("Enter");
    session.wait_for("Run step 5?", long);
    std::thread::sleep(Duration::from_millis(500));
    session.send("y");
    wait_for_file(&requests, "RunStep { step: 4", long);
    session.wait_for("5/14 steps done", long);
    // q while traffic is paused asks; Shift+Y confirms and the cockpit exits.
    session.send("q");
    session.wait_for("Quit while live?", long);
    std::thread::sleep(Duration::from_millis(500));
    session.send("Y");
    wait_for_file(&requests, "Quit", long);
    let deadline = Instant::now() + long;
    while session.alive() {
        assert!(
            Instant::now() < deadline,
            "cockpit did not exit:\n{}",
            session.capture()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The helper's own assertions (what its engine received) held.
    let code = std::fs::read_to_string(&exit_code).unwrap_or_default();
    let stderr = std::fs::read_to_string(scratch.path().join("stderr.txt")).unwrap_or_default();
    assert_eq!(code.trim(), "0", "the cockpit process failed:\n{stderr}");
    drop(lab);
}
