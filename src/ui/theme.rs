//! Themes: named styles that [`super::render`] applies; loaded from YAML (three built in,
//! embedded in the binary, or a file path), chosen by `--theme` or the XDG config file,
//! with `NO_COLOR` stripping every colour and keeping only modifiers.

use ratatui::style::{Color, Modifier, Style};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub const DEFAULT_THEME: &str = "dark";
pub const BUILTIN_NAMES: &[&str] = &["dark", "light", "high-contrast"];

const DARK_YAML: &str = include_str!("../../themes/dark.yaml");
const LIGHT_YAML: &str = include_str!("../../themes/light.yaml");
const HIGH_CONTRAST_YAML: &str = include_str!("../../themes/high-contrast.yaml");

#[derive(Debug, thiserror::Error)]
pub enum ThemeError {
    #[error("unknown theme {name:?}: built-in themes are {}, or give a path to a .yaml file", BUILTIN_NAMES.join(", "))]
    Unknown { name: String },
    #[error("cannot read theme {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid theme {origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("cannot read config {}: {message}", path.display())]
    Config { path: PathBuf, message: String },
}

/// Every style the cockpit uses. A theme file must define all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Theme {
    pub name: String,
    /// Base text and background of the whole screen.
    pub text: Style,
    pub dim: Style,
    pub title: Style,
    pub border: Style,
    pub border_focused: Style,
    pub header: Style,
    pub selected: Style,
    pub ok: Style,
    pub warn: Style,
    pub danger: Style,
    pub stale: Style,
    pub unreachable: Style,
    pub paused: Style,
    pub key: Style,
    pub dialog: Style,
    pub dialog_danger: Style,
    pub sparkline: Style,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StyleSpec {
    #[serde(default)]
    fg: Option<String>,
    #[serde(default)]
    bg: Option<String>,
    #[serde(default)]
    bold: bool,
    #[serde(default)]
    dim: bool,
    #[serde(default)]
    italic: bool,
    #[serde(default)]
    underlined: bool,
    #[serde(default)]
    reversed: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThemeFile {
    name: String,
    styles: StylesFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StylesFile {
    text: StyleSpec,
    dim: StyleSpec,
    title: StyleSpec,
    border: StyleSpec,
    border_focused: StyleSpec,
    header: StyleSpec,
    selected: StyleSpec,
    ok: StyleSpec,
    warn: StyleSpec,
    danger: StyleSpec,
    stale: StyleSpec,
    unreachable: StyleSpec,
    paused: StyleSpec,
    key: StyleSpec,
    dialog: StyleSpec,
    dialog_danger: StyleSpec,
    sparkline: StyleSpec,
}

fn color(value: &Option<String>, field: &str, origin: &str) -> Result<Option<Color>, ThemeError> {
    match value {
        None => Ok(None),
        Some(text) => Color::from_str(text)
            .map(Some)
            .map_err(|_| ThemeError::Invalid {
                origin: origin.to_string(),
                message: format!(
                    "{field}: {text:?} is not a colour (a name like red, #rrggbb, or 0-255)"
                ),
            }),
    }
}

impl StyleSpec {
    fn to_style(&self, field: &str, origin: &str) -> Result<Style, ThemeError> {
        let mut style = Style::default();
        if let Some(fg) = color(&self.fg, &format!("{field}.fg"), origin)? {
            style = style.fg(fg);
        }
        if let Some(bg) = color(&self.bg, &format!("{field}.bg"), origin)? {
            style = style.bg(bg);
        }
        let flags = [
            (self.bold, Modifier::BOLD),
            (self.dim, Modifier::DIM),
            (self.italic, Modifier::ITALIC),
            (self.underlined, Modifier::UNDERLINED),
            (self.reversed, Modifier::REVERSED),
        ];
        for (on, modifier) in flags {
            if on {
                style = style.add_modifier(modifier);
            }
        }
        Ok(style)
    }
}

impl Theme {
    /// Parses theme YAML; `origin` names the source in errors.
    pub fn parse(yaml: &str, origin: &str) -> Result<Theme, ThemeError> {
        let file: ThemeFile = serde_yaml::from_str(yaml).map_err(|e| ThemeError::Invalid {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        let s = &file.styles;
        let st = |spec: &StyleSpec, field: &str| spec.to_style(field, origin);
        Ok(Theme {
            name: file.name,
            text: st(&s.text, "text")?,
            dim: st(&s.dim, "dim")?,
            title: st(&s.title, "title")?,
            border: st(&s.border, "border")?,
            border_focused: st(&s.border_focused, "border_focused")?,
            header: st(&s.header, "header")?,
            selected: st(&s.selected, "selected")?,
            ok: st(&s.ok, "ok")?,
            warn: st(&s.warn, "warn")?,
            danger: st(&s.danger, "danger")?,
            stale: st(&s.stale, "stale")?,
            unreachable: st(&s.unreachable, "unreachable")?,
            paused: st(&s.paused, "paused")?,
            key: st(&s.key, "key")?,
            dialog: st(&s.dialog, "dialog")?,
            dialog_danger: st(&s.dialog_danger, "dialog_danger")?,
            sparkline: st(&s.sparkline, "sparkline")?,
        })
    }

    /// One of the themes embedded in the binary.
    pub fn builtin(name: &str) -> Result<Theme, ThemeError> {
        let yaml = match name {
            "dark" => DARK_YAML,
            "light" => LIGHT_YAML,
            "high-contrast" => HIGH_CONTRAST_YAML,
            _ => {
                return Err(ThemeError::Unknown {
                    name: name.to_string(),
                })
            }
        };
        Theme::parse(yaml, &format!("built-in {name}"))
    }

    /// A built-in name, or a path to a YAML file (anything with `/` or ending in `.yaml`/`.yml`).
    pub fn load(name_or_path: &str) -> Result<Theme, ThemeError> {
        if BUILTIN_NAMES.contains(&name_or_path) {
            return Theme::builtin(name_or_path);
        }
        let looks_like_path = name_or_path.contains('/')
            || name_or_path.ends_with(".yaml")
            || name_or_path.ends_with(".yml");
        if !looks_like_path {
            return Err(ThemeError::Unknown {
                name: name_or_path.to_string(),
            });
        }
        let path = Path::new(name_or_path);
        let text = std::fs::read_to_string(path).map_err(|source| ThemeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Theme::parse(&text, &path.display().to_string())
    }

    /// The same theme without any colour: modifiers only (`NO_COLOR`).
    pub fn without_colors(&self) -> Theme {
        let strip = |s: Style| Style {
            fg: None,
            bg: None,
            ..s
        };
        Theme {
            name: self.name.clone(),
            text: strip(self.text),
            dim: strip(self.dim),
            title: strip(self.title),
            border: strip(self.border),
            border_focused: strip(self.border_focused),
            header: strip(self.header),
            selected: strip(self.selected),
            ok: strip(self.ok),
            warn: strip(self.warn),
            danger: strip(self.danger),
            stale: strip(self.stale),
            unreachable: strip(self.unreachable),
            paused: strip(self.paused),
            key: strip(self.key),
            dialog: strip(self.dialog),
            dialog_danger: strip(self.dialog_danger),
            sparkline: strip(self.sparkline),
        }
    }
}

/// What theme resolution reads from the environment, passed in so it can be tested.
#[derive(Debug, Clone, Default)]
pub struct ThemeEnv {
    /// `NO_COLOR` is set to a non-empty value.
    pub no_color: bool,
    /// `$XDG_CONFIG_HOME`, or `~/.config` when unset.
    pub config_home: Option<PathBuf>,
}

impl ThemeEnv {
    pub fn from_process() -> ThemeEnv {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let config_home = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| dirs::home_dir().map(|h| h.join(".config")));
        ThemeEnv {
            no_color,
            config_home,
        }
    }
    pub fn config_file(&self) -> Option<PathBuf> {
        self.config_home
            .as_ref()
            .map(|d| d.join("cutover").join("config.yaml"))
    }
}

#[derive(Debug, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    theme: Option<String>,
}

/// Picks the theme: `--theme` first, then `theme:` in `$XDG_CONFIG_HOME/cutover/config.yaml`,
/// then [`DEFAULT_THEME`]; strips colours when `NO_COLOR` is set.
pub fn resolve(cli: Option<&str>, env: &ThemeEnv) -> Result<Theme, ThemeError> {
    let from_config = match (cli, env.config_file()) {
        (Some(_), _) | (None, None) => None,
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(text) => {
                let config: ConfigFile =
                    serde_yaml::from_str(&text).map_err(|e| ThemeError::Config {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                config.theme
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(ThemeError::Config {
                    path,
                    message: e.to_string(),
                })
            }
        },
    };
    let name = cli
        .map(str::to_string)
        .or(from_config)
        .unwrap_or_else(|| DEFAULT_THEME.to_string());
    let theme = Theme::load(&name)?;
    Ok(if env.no_color {
        theme.without_colors()
    } else {
        theme
    })
}
