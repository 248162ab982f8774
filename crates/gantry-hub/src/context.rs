//! `GET .../context`: an item as one markdown document to paste into an
//! LLM's prompt. Everything an agent needs to start, nothing it must parse.

use std::fmt::Write;

use crate::model::{Comment, Item};

pub fn render(item: &Item, comments: &[Comment]) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_document(&mut out, item, comments);
    out
}

fn write_document(out: &mut String, item: &Item, comments: &[Comment]) -> std::fmt::Result {
    writeln!(out, "# {}: {}\n", item.reference, item.title)?;
    writeln!(
        out,
        "- Type: {}\n- Status: {} ({})\n- Priority: {}",
        item.kind, item.status, item.status_category, item.priority
    )?;
    if !item.labels.is_empty() {
        let labels: Vec<&str> = item.labels.iter().map(|l| l.name.as_str()).collect();
        writeln!(out, "- Labels: {}", labels.join(", "))?;
    }
    if let Some(assignee) = &item.assignee {
        writeln!(out, "- Assignee: {assignee}")?;
    }
    if let Some(release) = &item.target_release {
        writeln!(out, "- Target release: {release}")?;
    }
    let planning = [
        ("Estimate", item.estimate.map(|e| e.to_string())),
        ("Due", item.due_date.clone()),
        ("Environment", item.environment.clone()),
        ("Affected version", item.affected_version.clone()),
        ("Fixed in", item.fixed_version.clone()),
        ("Sub-task of", item.parent.clone()),
        (
            "Milestone",
            item.milestone.as_ref().map(|m| match &m.target_date {
                Some(date) => format!("{} (target {date})", m.name),
                None => m.name.clone(),
            }),
        ),
    ];
    for (name, value) in planning {
        if let Some(value) = value {
            writeln!(out, "- {name}: {value}")?;
        }
    }
    if item.subtasks.total > 0 {
        writeln!(
            out,
            "- Sub-tasks: {} of {} finished",
            item.subtasks.finished, item.subtasks.total
        )?;
    }
    writeln!(out, "- Branch: `{}`", item.branch)?;
    if let Some(claim) = &item.claim {
        writeln!(
            out,
            "- Claimed by {} until {}",
            claim.holder, claim.expires_at
        )?;
    }
    writeln!(out, "\n## Description\n")?;
    if item.description.trim().is_empty() {
        writeln!(out, "(none)")?;
    } else {
        writeln!(out, "{}", item.description.trim_end())?;
    }
    if let Some(bug) = &item.bug {
        for (title, text) in [
            ("Steps to reproduce", &bug.steps_to_reproduce),
            ("Expected", &bug.expected),
            ("Actual", &bug.actual),
        ] {
            if let Some(text) = text {
                writeln!(out, "\n## {title}\n\n{}", text.trim_end())?;
            }
        }
    }
    if !item.checklist.is_empty() {
        writeln!(out, "\n## Acceptance criteria\n")?;
        for entry in &item.checklist {
            let mark = if entry.done { "x" } else { " " };
            writeln!(out, "- [{mark}] {}", entry.text)?;
        }
    }
    if !item.links.is_empty() {
        writeln!(out, "\n## Linked items\n")?;
        for link in &item.links {
            writeln!(
                out,
                "- {} {}",
                link.kind.as_str().replace('_', " "),
                link.target
            )?;
        }
    }
    if !item.pull_requests.is_empty() {
        writeln!(out, "\n## Pull requests\n")?;
        for pr in &item.pull_requests {
            let title = pr.title.as_deref().unwrap_or("(untitled)");
            write!(out, "- [{}] {title} <{}>", pr.status, pr.url)?;
            if let Some(branch) = &pr.branch {
                write!(out, " from `{branch}`")?;
            }
            if let Some(commit) = &pr.commit {
                write!(out, " at {commit}")?;
            }
            writeln!(out)?;
        }
    }
    if !comments.is_empty() {
        writeln!(out, "\n## Comments\n")?;
        for comment in comments {
            writeln!(
                out,
                "### {} at {}\n\n{}\n",
                comment.author,
                comment.created_at,
                comment.body.trim_end()
            )?;
        }
    }
    Ok(())
}
