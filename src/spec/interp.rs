//! `${...}` placeholders in spec strings. Spec-time names (`params.x`, `round`, `item`,
//! `prev`, `carry.x`) are resolved when the spec is loaded; run-time names (`inputs.x`,
//! `outputs.x`, `seed`, `threads`, `stage`) are left for the stage to fill in. `$${`
//! writes a literal `${` (for shell variables inside a `command`). A spec-time name with
//! `:q` (`${params.who:q}`) is written shell-quoted, for values that go into a command
//! (`O'Brien` becomes `'O'\''Brien'`); run-time paths are always quoted.

/// One piece of a string with placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(&'a str),
    /// `$${` – a literal `${`.
    Escape,
    /// The name inside `${...}`, trimmed, with its character offset in the string.
    Var(&'a str, usize),
}

/// Splits `text` into pieces, or says where an unclosed `${` starts.
pub fn scan(text: &str) -> Result<Vec<Piece<'_>>, usize> {
    let mut pieces = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(pos) = rest.find('$') {
        let after = &rest[pos..];
        if after.starts_with("$${") {
            pieces.push(Piece::Text(&rest[..pos]));
            pieces.push(Piece::Escape);
            rest = &rest[pos + 3..];
            offset += pos + 3;
        } else if after.starts_with("${") {
            pieces.push(Piece::Text(&rest[..pos]));
            let close = after.find('}').ok_or(offset + pos)?;
            let name = after[2..close].trim();
            pieces.push(Piece::Var(name, text[..offset + pos].chars().count()));
            rest = &after[close + 1..];
            offset += pos + close + 1;
        } else {
            pieces.push(Piece::Text(&rest[..pos + 1]));
            rest = &rest[pos + 1..];
            offset += pos + 1;
        }
    }
    pieces.push(Piece::Text(rest));
    pieces.retain(|p| !matches!(p, Piece::Text("")));
    Ok(pieces)
}

/// Names filled in at run time by the stage itself.
pub fn is_runtime_name(name: &str) -> bool {
    matches!(name, "seed" | "threads" | "stage")
        || name.starts_with("inputs.")
        || name.starts_with("outputs.")
}

/// The suffix that asks for a shell-quoted value.
pub const QUOTED: &str = ":q";

/// `text` as one word for a POSIX shell: unchanged when it is made only of characters no
/// shell treats specially, otherwise in single quotes (a `'` inside written `'\''`).
pub fn shell_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-@:+=,".contains(c))
    {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Writes pieces back as text, with `$${` kept escaped (used when a spec-time pass
/// leaves run-time names for later).
pub fn unscan(pieces: &[Piece<'_>]) -> String {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Escape => out.push_str("$${"),
            Piece::Var(name, _) => {
                out.push_str("${");
                out.push_str(name);
                out.push('}');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_vars_escapes_and_dollars() {
        assert_eq!(
            scan("a ${params.x} $$${HOME} $5 ${ round }").unwrap(),
            vec![
                Piece::Text("a "),
                Piece::Var("params.x", 2),
                Piece::Text(" $"),
                Piece::Escape,
                Piece::Text("HOME} $"),
                Piece::Text("5 "),
                Piece::Var("round", 27),
            ]
        );
        assert_eq!(scan("x ${oops"), Err(2));
    }

    #[test]
    fn shell_quoting_survives_a_shell() {
        assert_eq!(shell_quote("plain-1.0"), "plain-1.0");
        assert_eq!(shell_quote("O'Brien"), r"'O'\''Brien'");
        assert_eq!(shell_quote(""), "''");
        for text in [
            "O'Brien",
            "a b",
            "$(rm -rf x)",
            "`x`",
            "\"q\"",
            "*",
            "",
            "a\nb",
        ] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(text)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), text);
        }
    }

    #[test]
    fn unscan_round_trips() {
        let text = "run ${inputs.a} > ${outputs.b} $${HOME}";
        assert_eq!(unscan(&scan(text).unwrap()), text);
    }
}
