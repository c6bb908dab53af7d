//! Validation errors that point at a file, line and column, rendered the way rustc
//! renders them, and the "did you mean" suggestions that go with them.

use std::fmt;
use std::sync::Arc;

use super::node::Span;

/// The text of a spec, kept so that errors can quote the offending line.
#[derive(Debug)]
pub struct SourceFile {
    /// The path as the user gave it (relative paths stay relative in messages).
    pub name: String,
    pub text: String,
}

/// One problem in a spec.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    /// The key path, `stages.reward.with.lr`.
    pub path: String,
    pub span: Span,
    pub message: String,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(path: impl Into<String>, span: Span, message: impl Into<String>) -> Self {
        Diagnostic {
            path: path.into(),
            span,
            message: message.into(),
            help: None,
        }
    }

    pub fn with_help(mut self, help: Option<String>) -> Self {
        self.help = help;
        self
    }
}

/// Every problem found in one spec: validation collects them all before reporting.
#[derive(Debug)]
pub struct SpecError {
    pub file: Arc<SourceFile>,
    pub diagnostics: Vec<Diagnostic>,
}

impl std::error::Error for SpecError {}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sorted: Vec<&Diagnostic> = self.diagnostics.iter().collect();
        // Source order reads best; command-line problems (line 0) come first.
        sorted.sort_by_key(|d| (d.span.line, d.span.col));
        for diag in &sorted {
            render(&self.file, diag, f)?;
            writeln!(f)?;
        }
        let n = self.diagnostics.len();
        write!(
            f,
            "invalid spec in `{}`: {n} problem{}, nothing was run",
            self.file.name,
            if n == 1 { "" } else { "s" }
        )
    }
}

fn render(file: &SourceFile, diag: &Diagnostic, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    writeln!(f, "error: {}", diag.message)?;
    let span = diag.span;
    if span.is_command_line() {
        writeln!(f, "  --> command line override (`{}`)", diag.path)?;
    } else {
        let location = format!("{}:{}:{}", file.name, span.line, span.col + 1);
        if diag.path.is_empty() {
            writeln!(f, "  --> {location}")?;
        } else {
            writeln!(f, "  --> {location} (`{}`)", diag.path)?;
        }
        if let Some(line_text) = file.text.lines().nth(span.line - 1) {
            let gutter = span.line.to_string().len();
            let pad = " ".repeat(gutter);
            let line_chars = line_text.chars().count();
            let width = if span.end > span.start {
                (span.end - span.start).min(line_chars.saturating_sub(span.col))
            } else {
                0
            }
            .max(1);
            // A long line is quoted as a window around the column.
            let (shown, col, width) = window(line_text, span.col, width);
            writeln!(f, "{pad} |")?;
            writeln!(f, "{} | {}", span.line, shown)?;
            writeln!(f, "{pad} | {}{}", " ".repeat(col), "^".repeat(width))?;
        }
    }
    if let Some(help) = &diag.help {
        writeln!(f, "  = help: {help}")?;
    }
    Ok(())
}

/// At most [`WINDOW`] characters of `line` around column `col`, with `…` where it was
/// cut, and the column and caret width within what is shown.
fn window(line: &str, col: usize, width: usize) -> (String, usize, usize) {
    const WINDOW: usize = 120;
    let chars: Vec<char> = line.chars().collect();
    if chars.len() <= WINDOW {
        return (line.to_string(), col, width);
    }
    let start = col
        .saturating_sub(WINDOW / 2)
        .min(chars.len().saturating_sub(WINDOW));
    let end = (start + WINDOW).min(chars.len());
    let rel = col.min(end) - start;
    let mut shown = String::new();
    if start > 0 {
        shown.push('…');
    }
    shown.extend(&chars[start..end]);
    if end < chars.len() {
        shown.push('…');
    }
    let width = width.min(end - start - rel).max(1);
    (shown, rel + usize::from(start > 0), width)
}

/// The candidate closest to `name`, when it is close enough to be a likely typo.
pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let best = candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(name, c), c))
        .filter(|(d, c)| *d > 0 && *d <= (name.len().max(c.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d)?;
    Some(best.1.to_string())
}

/// `did you mean `x`?` for `name`, or nothing.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    suggest(name, candidates).map(|s| format!("did you mean `{s}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, candidates: &[&str], expected: Option<&str>) {
        assert_eq!(
            suggest(name, candidates.iter().copied()).as_deref(),
            expected
        );
    }

    #[test]
    fn suggestions_catch_typos_and_ignore_strangers() {
        check(
            "learnin_rate",
            &["learning_rate", "n_epochs"],
            Some("learning_rate"),
        );
        check("kidn", &["kind", "inputs"], Some("kind"));
        check("banana", &["kind", "inputs", "with"], None);
        check("with", &["with"], None);
    }

    #[test]
    fn a_long_line_is_quoted_as_a_window_around_the_column() {
        let line = format!("{}X{}", "a".repeat(5000), "b".repeat(5000));
        let (shown, col, width) = window(&line, 5000, 1);
        assert!(shown.chars().count() <= 122, "{}", shown.len());
        assert_eq!(shown.chars().nth(col), Some('X'));
        assert_eq!(width, 1);
        assert!(shown.starts_with('…') && shown.ends_with('…'));
        assert_eq!(window("short", 2, 3), ("short".to_string(), 2, 3));
    }

    #[test]
    fn rendering_quotes_the_line_with_a_caret() {
        let file = SourceFile {
            name: "p.yaml".into(),
            text: "name: x\nstages:\n  a: {kidn: command}\n".into(),
        };
        let err = SpecError {
            file: Arc::new(file),
            diagnostics: vec![
                Diagnostic::new(
                    "stages.a.kidn",
                    Span::new(19, 3, 6, 23),
                    "unknown key `kidn`",
                )
                .with_help(Some("did you mean `kind`?".into())),
            ],
        };
        assert_eq!(
            err.to_string(),
            "error: unknown key `kidn`\n  --> p.yaml:3:7 (`stages.a.kidn`)\n  |\n3 |   a: {kidn: command}\n  |       ^^^^\n  = help: did you mean `kind`?\n\ninvalid spec in `p.yaml`: 1 problem, nothing was run"
        );
    }
}
