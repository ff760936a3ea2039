//! The cockpit: the last stage of the flow. Readings (pollers) and runbook views (engine) flow
//! into the [`model::Model`]; keys become [`update::Action`]s through the [`keymap`] table;
//! [`update::update`] changes the model purely and returns [`model::UiRequest`]s for the
//! engine; [`render`] draws the model with a [`theme::Theme`]. [`app::run`] is the loop.

pub mod app;
pub mod dialog;
#[doc(hidden)]
pub mod fixtures;
pub mod keymap;
pub mod model;
pub mod render;
pub mod theme;
pub mod update;

pub use app::{log_layer, run, TuiOptions, UiError};
pub use model::{
    default_seen, BaselineRow, CommandView, ConfirmationView, Model, Pane, PreconditionView,
    RunbookUpdate, RunbookView, SeenFn, Session, StepStatusView, StepView, UiRequest,
};
pub use theme::{Theme, ThemeEnv, ThemeError};
pub use update::{update, Action};
