//! Plan review rendering: `Plan` → markdown for pair review and change tickets. Pure.

use super::{Plan, RenderedCommand, Step, Undo};

pub(super) fn plan_markdown(plan: &Plan) -> String {
    let mut out = String::new();
    let fingerprint = plan.fingerprint();
    push_line(
        &mut out,
        &format!("# Plan: `{}` on `{}`", plan.runbook, plan.environment),
    );
    out.push('\n');
    push_line(&mut out, "| | |");
    push_line(&mut out, "|---|---|");
    push_line(
        &mut out,
        &format!("| environment | `{}` |", plan.environment),
    );
    push_line(&mut out, &format!("| runbook | `{}` |", plan.runbook));
    let params = if plan.params.is_empty() {
        "(none)".to_string()
    } else {
        plan.params
            .iter()
            .map(|(k, v)| format!("`{k}={v}`"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    push_line(&mut out, &format!("| parameters | {params} |"));
    push_line(
        &mut out,
        &format!("| tool version | `{}` |", plan.tool_version),
    );
    push_line(&mut out, &format!("| steps | {} |", plan.steps.len()));
    push_line(&mut out, &format!("| fingerprint | `{fingerprint}` |"));
    out.push('\n');
    push_line(
        &mut out,
        &format!("Run exactly this plan with `--expect-fingerprint {fingerprint}`."),
    );
    out.push('\n');
    for (index, step) in plan.steps.iter().enumerate() {
        step_markdown(&mut out, index + 1, step);
    }
    // Every section ends with a blank line; the document ends with exactly one newline.
    let trimmed_len = out.trim_end().len();
    out.truncate(trimmed_len);
    out.push('\n');
    out
}

fn step_markdown(out: &mut String, number: usize, step: &Step) {
    push_line(out, &format!("## {number}. {} (`{}`)", step.title, step.id));
    out.push('\n');
    let flags = flag_labels(step);
    if !flags.is_empty() {
        push_line(out, &format!("**Flags:** {}", flags.join(" · ")));
        out.push('\n');
    }
    if step.flags.removes_way_back {
        push_line(
            out,
            &format!(
                "**Soak:** refused until traffic has run on the new side for {} s; a headless run stops before this step unless it is named (`--through {}` or `--step {}`).",
                step.flags.min_soak_secs, step.id, step.id
            ),
        );
        out.push('\n');
    }
    if !step.commands.is_empty() {
        push_line(out, "**Runs:**");
        out.push('\n');
        commands_markdown(out, &step.commands);
    }
    if !step.preconditions.is_empty() {
        push_line(
            out,
            "**Preconditions** (checked live right before the step):",
        );
        out.push('\n');
        for pre in &step.preconditions {
            push_line(out, &format!("- `{}`: {}", pre.id, pre.description));
        }
        out.push('\n');
    }
    if !step.verification.is_empty() {
        push_line(out, &format!("**Verification:** {}", step.verification));
        out.push('\n');
    }
    match &step.undo {
        Undo::Reversible {
            description,
            commands,
        } => {
            push_line(out, &format!("**Undo:** {description}"));
            out.push('\n');
            commands_markdown(out, commands);
        }
        Undo::PointOfNoReturn { reason } => {
            push_line(out, &format!("**POINT OF NO RETURN:** {reason}"));
            out.push('\n');
        }
        Undo::NothingToUndo => {
            push_line(out, "**Undo:** nothing to undo.");
            out.push('\n');
        }
    }
}

fn flag_labels(step: &Step) -> Vec<&'static str> {
    let mut labels = Vec::new();
    if step.flags.destructive {
        labels.push("⚠ destructive");
    }
    if step.flags.needs_traffic_stopped {
        labels.push("⏸ needs traffic stopped");
    }
    if step.flags.pauses_traffic {
        labels.push("pauses traffic");
    }
    if step.flags.resumes_traffic {
        labels.push("resumes traffic");
    }
    if step.flags.removes_way_back {
        labels.push("⚠ removes the way back: runs only when named");
    }
    labels
}

fn commands_markdown(out: &mut String, commands: &[RenderedCommand]) {
    for command in commands {
        push_line(out, &format!("`{}`", command.target));
        let fence = fence_for(&command.text);
        push_line(out, &format!("{fence}{}", command.kind.fence_language()));
        out.push_str(&command.text);
        if !command.text.ends_with('\n') {
            out.push('\n');
        }
        push_line(out, &fence);
        out.push('\n');
    }
}

/// A backtick fence longer than any backtick run inside `text`, so the block cannot close early.
fn fence_for(text: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        if c == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    "`".repeat((longest + 1).max(3))
}

fn push_line(out: &mut String, line: &str) {
    out.push_str(line);
    out.push('\n');
}
