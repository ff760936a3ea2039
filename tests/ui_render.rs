//! Render snapshots of the cockpit on fixed readings: each pane at 80×24 and 160×48 in each
//! theme (text plus style runs), the full screen, popups, and the too-small message.

use cutover::ui::fixtures;
use cutover::ui::keymap::Command;
use cutover::ui::model::{Model, Pane};
use cutover::ui::render;
use cutover::ui::theme::{self, Theme, ThemeEnv};
use cutover::ui::update::{update, Action};
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::style::{Color, Modifier, Style};
use ratatui::Terminal;
use std::fmt::Write;
use std::time::Instant;

const SIZES: [(u16, u16); 2] = [(80, 24), (160, 48)];

fn draw(model: &Model, theme: &Theme, width: u16, height: u16) -> Buffer {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test backend");
    render::draw(&mut terminal, model, theme).expect("draw");
    terminal.backend().buffer().clone()
}

/// Draws only `pane`, filling the whole terminal.
fn draw_pane(model: &Model, pane: Pane, theme: &Theme, width: u16, height: u16) -> Buffer {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test backend");
    terminal
        .draw(|frame| {
            let area = frame.area();
            frame.render_widget(ratatui::widgets::Block::new().style(theme.text), area);
            render::render_pane(frame, area, pane, model, theme);
        })
        .expect("draw");
    terminal.backend().buffer().clone()
}

fn text(buffer: &Buffer) -> String {
    let area = buffer.area;
    let mut out = String::new();
    for y in 0..area.height {
        let mut line = String::new();
        for x in 0..area.width {
            line.push_str(buffer[(x, y)].symbol());
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

fn style_key(buffer: &Buffer, x: u16, y: u16) -> Style {
    let cell = &buffer[(x, y)];
    Style::default()
        .fg(cell.fg)
        .bg(cell.bg)
        .add_modifier(cell.modifier)
}

/// Runs of equal style per row, skipping the most common style of the screen.
fn style_runs(buffer: &Buffer) -> String {
    let area = buffer.area;
    let mut counts: Vec<(Style, usize)> = Vec::new();
    for y in 0..area.height {
        for x in 0..area.width {
            let s = style_key(buffer, x, y);
            match counts.iter_mut().find(|(k, _)| *k == s) {
                Some((_, n)) => *n += 1,
                None => counts.push((s, 1)),
            }
        }
    }
    let base = counts
        .iter()
        .max_by_key(|(_, n)| *n)
        .map(|(s, _)| *s)
        .unwrap_or_default();
    let mut out = format!("base {}\n", describe(base));
    for y in 0..area.height {
        let mut x = 0;
        while x < area.width {
            let s = style_key(buffer, x, y);
            let start = x;
            while x < area.width && style_key(buffer, x, y) == s {
                x += 1;
            }
            if s != base {
                let _ = writeln!(out, "{y:>2}:{start:>3}-{:<3} {}", x - 1, describe(s));
            }
        }
    }
    out
}

fn describe(style: Style) -> String {
    let color = |c: Option<Color>| c.map_or("-".to_string(), |c| c.to_string());
    format!(
        "fg={} bg={} mod={:?}",
        color(style.fg),
        color(style.bg),
        style.add_modifier
    )
}

fn snapshot_text(buffer: &Buffer) -> String {
    format!("{}\n--- styles ---\n{}", text(buffer), style_runs(buffer))
}

fn fixture_model() -> Model {
    fixtures::model(Instant::now())
}

fn themes() -> Vec<Theme> {
    theme::BUILTIN_NAMES
        .iter()
        .map(|n| Theme::builtin(n).expect("built-in theme parses"))
        .collect()
}

#[test]
fn each_pane_at_each_size_in_each_theme() {
    let model = fixture_model();
    for theme in themes() {
        for (w, h) in SIZES {
            for pane in Pane::ALL {
                let buffer = draw_pane(&model, pane, &theme, w, h);
                let name = format!(
                    "pane_{}_{}_{w}x{h}",
                    pane.title().to_lowercase(),
                    theme.name
                );
                insta::assert_snapshot!(name, snapshot_text(&buffer));
            }
        }
    }
}

#[test]
fn full_screen_at_each_size_in_each_theme() {
    let mut model = fixture_model();
    for theme in themes() {
        for (w, h) in SIZES {
            for focus in [Pane::Runbook, Pane::Replication] {
                model.focus = focus;
                let buffer = draw(&model, &theme, w, h);
                let name = format!(
                    "screen_{}_{}_{w}x{h}",
                    focus.title().to_lowercase(),
                    theme.name
                );
                insta::assert_snapshot!(name, snapshot_text(&buffer));
            }
        }
    }
}

#[test]
fn too_small_terminal_says_what_size_it_needs() {
    let model = fixture_model();
    let theme = Theme::builtin("dark").expect("dark");
    let buffer = draw(&model, &theme, 60, 20);
    let screen = text(&buffer);
    assert!(screen.contains("at least 80×24"), "{screen}");
    assert!(screen.contains("this terminal is 60×20"), "{screen}");
    insta::assert_snapshot!("too_small_60x20", screen);
    // One below the minimum in either direction is too small; the minimum itself is not.
    assert!(text(&draw(&model, &theme, 79, 24)).contains("Terminal too small"));
    assert!(text(&draw(&model, &theme, 80, 23)).contains("Terminal too small"));
    assert!(!text(&draw(&model, &theme, 80, 24)).contains("Terminal too small"));
}

/// Finds the first cell where `needle` starts.
fn find(buffer: &Buffer, needle: &str) -> Option<(u16, u16)> {
    let screen = text(buffer);
    for (y, line) in screen.lines().enumerate() {
        if let Some(byte) = line.find(needle) {
            let x = line[..byte].chars().count();
            return Some((x as u16, y as u16));
        }
    }
    None
}

#[test]
fn every_theme_is_applied_to_the_cells() {
    let model = fixture_model();
    for theme in themes() {
        let buffer = draw(&model, &theme, 160, 48);
        // Background of plain screen cells comes from the theme's text style.
        let bottom_right = &buffer[(159, 46)];
        assert_eq!(
            Some(bottom_right.bg),
            theme.text.bg,
            "{}: base background",
            theme.name
        );
        // The paused pgbouncer alias is highlighted with the `paused` style.
        let (x, y) = find(&buffer, " PAUSED ").expect("paused alias shown");
        let cell = &buffer[(x + 1, y)];
        assert_eq!(
            Some(cell.bg),
            theme.paused.bg,
            "{}: paused alias",
            theme.name
        );
        assert_eq!(
            Some(cell.fg),
            theme.paused.fg,
            "{}: paused alias",
            theme.name
        );
        // The slot past 8 GB is drawn in the danger style.
        let (x, y) = find(&buffer, "retains 9.7 GB").expect("danger slot shown");
        assert_eq!(
            Some(buffer[(x, y)].fg),
            theme.danger.fg,
            "{}: danger slot",
            theme.name
        );
        // Misplaced rows are drawn in the danger style.
        let (x, y) = find(&buffer, "misplaced rows").expect("misplaced rows shown");
        assert_eq!(
            Some(buffer[(x, y)].fg),
            theme.danger.fg,
            "{}: misplaced",
            theme.name
        );
        // The unreachable node carries the unreachable style.
        let (x, y) = find(&buffer, "UNREACHABLE").expect("unreachable shown");
        assert_eq!(
            Some(buffer[(x, y)].fg),
            theme.unreachable.fg,
            "{}: unreachable",
            theme.name
        );
        assert!(buffer[(x, y)].modifier.contains(Modifier::BOLD));
    }
    // The three themes really differ where it matters.
    let [dark, light, high] = [0, 1, 2].map(|i| themes().remove(i));
    assert_ne!(dark.text, light.text);
    assert_ne!(light.text, high.text);
}

#[test]
fn no_color_keeps_modifiers_only() {
    let env = ThemeEnv {
        no_color: true,
        config_home: None,
    };
    let theme = theme::resolve(Some("high-contrast"), &env).expect("resolve");
    let buffer = draw(&fixture_model(), &theme, 160, 48);
    for cell in buffer.content() {
        assert_eq!(cell.fg, Color::Reset);
        assert_eq!(cell.bg, Color::Reset);
    }
    let (x, y) = find(&buffer, "UNREACHABLE").expect("unreachable shown");
    assert!(buffer[(x, y)]
        .modifier
        .contains(Modifier::BOLD | Modifier::UNDERLINED));
    insta::assert_snapshot!("screen_no_color_160x48", snapshot_text(&buffer));
}

#[test]
fn readings_panes_mark_ages_stale_and_unreachable() {
    let model = fixture_model();
    let theme = Theme::builtin("dark").expect("dark");
    let screen = text(&draw_pane(&model, Pane::Replication, &theme, 160, 48));
    // pg2's reading is 5.2 s old with a 1 s interval: older than 3 intervals.
    assert!(screen.contains("pg2 standby · STALE 5s"), "{screen}");
    assert!(
        screen.contains("pg1 primary · WAL 0/5000060 · <1s"),
        "{screen}"
    );
    // The reason is given in full, on its own line.
    assert!(screen.contains("pg3 UNREACHABLE tried 2s ago"), "{screen}");
    assert!(
        screen.contains("  connection refused (127.0.0.1:5434)"),
        "{screen}"
    );
    assert!(screen.contains("lag 1.0 MB / 850 ms"), "{screen}");
    assert!(
        screen.contains("slot pg2_slot (physical, active) retains 3.2 GB ⚠ WAL piling up"),
        "{screen}"
    );
    assert!(screen.contains("subscription sub_reporting"), "{screen}");
    let shards = text(&draw_pane(&model, Pane::Shards, &theme, 160, 48));
    assert!(
        shards.contains("exact 99,231 · est 98,500 · baseline 99,000 (+231)"),
        "{shards}"
    );
    assert!(
        shards.contains("misplaced rows in 511 shards (512–1023)"),
        "{shards}"
    );
}

#[test]
fn pause_clock_counts_against_the_bound() {
    let mut model = fixture_model();
    let theme = Theme::builtin("dark").expect("dark");
    let screen = text(&draw(&model, &theme, 160, 48));
    assert!(screen.contains("TRAFFIC PAUSED"), "{screen}");
    assert!(screen.contains("bound 10.0s · 6.8s left"), "{screen}");
    // Time passes as data: 5 s later the clock reads 08.2 s.
    update(
        &mut model,
        Action::Tick {
            now: fixtures::fixed_now() + chrono::Duration::seconds(5),
            at: Instant::now(),
        },
    );
    let later = draw(&model, &theme, 160, 48);
    let screen = text(&later);
    assert!(screen.contains("bound 10.0s · 1.8s left"), "{screen}");
    let glyphs = render::big_text_lines("08.2s");
    assert!(screen.contains(glyphs[0].as_str()), "{screen}");
    // Past 80 % of the bound the clock turns to the danger style.
    let (x, y) = find(&later, "1.8s left").expect("remaining shown");
    assert_eq!(Some(later[(x, y)].fg), theme.danger.fg);
}

#[test]
fn popups_dialog_help_palette() {
    let theme = Theme::builtin("dark").expect("dark");
    let t0 = Instant::now();
    // A dialog for a point-of-no-return step: make the gate pass and step 5 done.
    let mut model = fixtures::model(t0);
    if let Some(r) = model.runbook.as_mut() {
        r.steps[4].status = cutover::ui::StepStatusView::Done;
        r.traffic_paused_since = None;
    }
    update(
        &mut model,
        Action::Command {
            command: Command::RunNext,
            at: t0,
        },
    );
    let screen = text(&draw(&model, &theme, 160, 48));
    assert!(screen.contains("Run step 6?"), "{screen}");
    assert!(screen.contains("POINT OF NO RETURN"), "{screen}");
    assert!(screen.contains("type pg2 to confirm"), "{screen}");
    assert!(screen.contains("Shift+Y"), "{screen}");
    insta::assert_snapshot!("dialog_point_of_no_return_160x48", screen);
    let compact = text(&draw(&model, &theme, 80, 24));
    insta::assert_snapshot!("dialog_point_of_no_return_80x24", compact);

    let mut model = fixtures::model(t0);
    update(
        &mut model,
        Action::Command {
            command: Command::ToggleHelp,
            at: t0,
        },
    );
    let screen = text(&draw(&model, &theme, 160, 48));
    // Every binding of the keymap table appears in the help popup.
    for binding in cutover::ui::keymap::KEYMAP {
        assert!(
            screen.contains(binding.description),
            "help lacks {:?}",
            binding.description
        );
    }
    insta::assert_snapshot!("help_160x48", screen);

    let mut model = fixtures::model(t0);
    update(
        &mut model,
        Action::Command {
            command: Command::OpenPalette,
            at: t0,
        },
    );
    let screen = text(&draw(&model, &theme, 80, 24));
    assert!(
        screen.contains("theme <dark|light|high-contrast>"),
        "{screen}"
    );
    insta::assert_snapshot!("palette_80x24", screen);
}

#[test]
fn hint_bar_and_status_say_why_enter_is_disabled() {
    let model = fixture_model();
    let theme = Theme::builtin("dark").expect("dark");
    let buffer = draw(&model, &theme, 160, 48);
    let screen = text(&buffer);
    assert!(screen.contains("Enter disabled: step 5: precondition “standby replay ≥ primary current WAL” does not hold (replay 0/4F00000 < current 0/5000060)"), "{screen}");
    let (x, y) = find(&buffer, " Enter run ").expect("hint");
    assert_eq!(y, 47, "hint bar is the last row");
    assert_eq!(
        Some(buffer[(x + 1, y)].fg),
        theme.dim.fg,
        "disabled key is dimmed"
    );
    let (x, y) = find(&buffer, " r rollback").expect("hint");
    assert_eq!(
        Some(buffer[(x + 1, y)].fg),
        theme.key.fg,
        "enabled key uses the key style"
    );
}

#[test]
fn theme_comes_from_the_flag_then_the_xdg_config_then_dark() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = ThemeEnv {
        no_color: false,
        config_home: Some(dir.path().to_path_buf()),
    };
    assert_eq!(theme::resolve(None, &env).expect("default").name, "dark");
    std::fs::create_dir_all(dir.path().join("cutover")).expect("mkdir");
    std::fs::write(dir.path().join("cutover/config.yaml"), "theme: light\n").expect("write");
    assert_eq!(theme::resolve(None, &env).expect("config").name, "light");
    assert_eq!(
        theme::resolve(Some("high-contrast"), &env)
            .expect("flag wins")
            .name,
        "high-contrast"
    );
    // A theme file given by path, e.g. a copy of a built-in one with a different name.
    let custom = dir.path().join("mine.yaml");
    let text = std::fs::read_to_string("themes/light.yaml")
        .expect("light theme")
        .replace("name: light", "name: mine");
    std::fs::write(&custom, text).expect("write");
    let loaded = theme::resolve(Some(custom.to_str().expect("utf-8 path")), &env).expect("path");
    assert_eq!(loaded.name, "mine");
    assert_eq!(loaded.text, Theme::builtin("light").expect("light").text);
}

#[test]
fn bad_themes_and_configs_are_reported_with_their_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = ThemeEnv {
        no_color: false,
        config_home: Some(dir.path().to_path_buf()),
    };
    let err = theme::resolve(Some("solarized"), &env).expect_err("unknown");
    assert!(
        err.to_string().contains("dark, light, high-contrast"),
        "{err}"
    );
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "name: bad\nstyles:\n  text: { fg: mauve-ish }\n").expect("write");
    let err = theme::resolve(Some(bad.to_str().expect("utf-8")), &env).expect_err("invalid");
    assert!(err.to_string().contains("bad.yaml"), "{err}");
    let incomplete = Theme::parse("name: x\nstyles:\n  text: {}\n", "x.yaml").expect_err("missing");
    assert!(
        incomplete.to_string().contains("missing field"),
        "{incomplete}"
    );
    let colour = Theme::parse(
        &std::fs::read_to_string("themes/dark.yaml")
            .expect("dark")
            .replace(
                "fg: \"#ff6b6b\", bold: true }",
                "fg: \"not-a-colour\", bold: true }",
            ),
        "edited.yaml",
    )
    .expect_err("bad colour");
    assert!(colour.to_string().contains("not-a-colour"), "{colour}");
    std::fs::create_dir_all(dir.path().join("cutover")).expect("mkdir");
    std::fs::write(dir.path().join("cutover/config.yaml"), "theme: [oops\n").expect("write");
    let err = theme::resolve(None, &env).expect_err("bad config");
    assert!(err.to_string().contains("config.yaml"), "{err}");
}

#[test]
fn secrets_never_reach_the_log_pane() {
    use cutover::ui::render::redact_secrets;
    assert_eq!(
        redact_secrets("connect host=pg1 user=postgres password=hunter2 dbname=p1"),
        "connect host=pg1 user=postgres password=*** dbname=p1"
    );
    assert_eq!(
        redact_secrets("ALTER ROLE app PASSWORD 'hunter2';"),
        "ALTER ROLE app PASSWORD '***';"
    );
    assert_eq!(
        redact_secrets("PGPASSWORD=s3cret psql"),
        "PGPASSWORD=*** psql"
    );
    assert_eq!(
        redact_secrets("curl -H token=abc123 api"),
        "curl -H token=*** api"
    );
    assert_eq!(redact_secrets("SELECT 1"), "SELECT 1");
}

#[test]
fn paused_window_dialog_and_shard_strips() {
    let theme = Theme::builtin("dark").expect("dark");
    let t0 = Instant::now();
    // Before the pause: steps 1–3 done, stop-traffic next.
    let mut model = fixtures::model(t0);
    if let Some(r) = model.runbook.as_mut() {
        r.steps[3].status = cutover::ui::StepStatusView::Pending;
        r.steps[3].started_at = None;
        r.steps[3].finished_at = None;
        r.traffic_paused_since = None;
    }
    update(
        &mut model,
        Action::Command {
            command: Command::RunNext,
            at: t0,
        },
    );
    let screen = text(&draw(&model, &theme, 200, 60));
    assert!(
        screen.contains("Run the paused window, steps 4–9?"),
        "{screen}"
    );
    for expected in [
        "[pgbouncer pgb1] PAUSE proxy;",
        "gate: standby replay ≥ primary current WAL",
        "-- then poll pg_is_in_recovery() every 10 ms",
        "Pause bound 10.0s",
        "x aborts while it runs",
        "POINT OF NO RETURN: a promoted standby cannot follow pg1 again",
        "type pg2 to confirm the whole window",
        "Shift+Y",
    ] {
        assert!(screen.contains(expected), "lacks {expected:?}:\n{screen}");
    }
    assert!(!screen.contains("holds ()"), "{screen}");
    insta::assert_snapshot!("dialog_paused_window_200x60", screen);
    let compact = text(&draw(&model, &theme, 80, 24));
    assert!(compact.contains("PgDn/PgUp scroll"), "{compact}");
    insta::assert_snapshot!("dialog_paused_window_80x24", compact);

    let model = fixtures::model(t0);
    for (width, height) in [(80, 24), (200, 60)] {
        let shards = text(&draw_pane(&model, Pane::Shards, &theme, width, height));
        assert!(shards.contains("shards █"), "{shards}");
        assert!(shards.contains("▚"), "moving shards marked:\n{shards}");
        assert!(shards.contains("rows   █"), "{shards}");
        insta::assert_snapshot!(format!("pane_shards_drawn_{width}x{height}"), shards);
    }
}
