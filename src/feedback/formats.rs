//! The feedback formats people have, each normalised into hone's records: hone's own,
//! TRL preference (explicit or implicit prompt, text or conversations), TRL unpaired,
//! HH-RLHF transcripts and UltraFeedback. Unknown extra columns are ignored: data files
//! routinely carry ids and metadata hone does not need.

use serde_json::{Map, Value};

use super::RowError;
use crate::artifact::feedback::{Comparison, Flag, Ranking, Record, Score, prompt_id};

/// Which layout the rows follow.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// hone's own rows: `kind` = `comparison` | `ranking` | `score` | `flag` (inferred from
    /// the fields when absent).
    Hone,
    /// TRL preference: `prompt` (optional: implicit in a shared prefix), `chosen`, `rejected`;
    /// text or conversations (lists of `{role, content}`), optional `margin`.
    TrlPreference,
    /// TRL unpaired: `prompt`, `completion`, `label` (true = good).
    TrlUnpaired,
    /// Anthropic HH-RLHF: `chosen` and `rejected` transcripts in "\n\nHuman: ...\n\nAssistant: ..."
    /// form; the prompt is everything up to the last Assistant turn.
    HhRlhf,
    /// UltraFeedback: `instruction` and `completions` with per-aspect ratings (1-5) and an
    /// `overall_score` (1-10).
    Ultrafeedback,
}

/// The reason of an internal error that means "the value is missing", turned into a count.
const MISSING_VALUE: &str = "missing_value";

/// The flags hone knows.
pub const FLAG_NAMES: [&str; 3] = ["hallucination", "bias", "unsafe"];

/// What one source row gave: its records, the values dropped from it (each a row of the
/// rejects table, the rest of the row kept), and how many values were missing (`"N/A"`,
/// null, NaN: counted, not rejected).
#[derive(Debug, Default)]
pub struct Normalized {
    pub records: Vec<Record>,
    pub dropped: Vec<RowError>,
    pub missing: u64,
}

impl From<Vec<Record>> for Normalized {
    fn from(records: Vec<Record>) -> Self {
        Normalized {
            records,
            ..Normalized::default()
        }
    }
}

/// Normalises one source row. An `Err` rejects the whole row; a row may also keep some of
/// its values and drop others (an UltraFeedback rating out of range).
pub fn normalize(
    format: Format,
    row: &Map<String, Value>,
    source_row: u64,
    annotator: Option<&str>,
) -> Result<Normalized, RowError> {
    let annotator = match row.get("annotator") {
        Some(Value::String(a)) if !a.trim().is_empty() => Some(a.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => annotator.map(str::to_string),
    };
    let r = Row {
        row,
        source_row,
        annotator,
    };
    match format {
        Format::Hone => r.hone(),
        Format::TrlPreference => r.trl_preference().map(Normalized::from),
        Format::TrlUnpaired => r.trl_unpaired().map(Normalized::from),
        Format::HhRlhf => r.hh_rlhf().map(Normalized::from),
        Format::Ultrafeedback => r.ultrafeedback(),
    }
}

/// Whether a value stands for "no value": null, NaN (a JSON Lines `NaN` token arrives as
/// null), or a text such as `N/A` (the published UltraFeedback data has them) or empty.
fn is_missing(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Number(n) => n.as_f64().is_none_or(|v| v.is_nan()),
        Value::String(s) => {
            let t = s.trim();
            t.is_empty()
                || ["n/a", "na", "nan", "null", "none", "-"]
                    .iter()
                    .any(|m| t.eq_ignore_ascii_case(m))
        }
        _ => false,
    }
}

struct Row<'a> {
    row: &'a Map<String, Value>,
    source_row: u64,
    annotator: Option<String>,
}

fn err(reason: &'static str, detail: impl Into<String>) -> RowError {
    RowError::new(reason, detail.into(), String::new())
}

impl Row<'_> {
    fn get(&self, name: &str) -> Result<&Value, RowError> {
        match self.row.get(name) {
            None | Some(Value::Null) => {
                Err(err("missing_field", format!("missing field `{name}`")))
            }
            Some(v) => Ok(v),
        }
    }

    /// A non-empty string field.
    fn text(&self, name: &str) -> Result<String, RowError> {
        match self.get(name)? {
            Value::String(s) => non_empty(name, s.clone()),
            other => Err(err(
                "wrong_type",
                format!("`{name}` should be text, found {}", kind(other)),
            )),
        }
    }

    /// A number field (numbers in CSV arrive as text); NaN and infinities are rejected.
    fn number(&self, name: &str) -> Result<f64, RowError> {
        let value = self.get(name)?;
        to_number(name, value)
    }

    /// An optional number; a missing one (`N/A`, null, NaN, empty) is absent.
    fn optional_number(&self, name: &str) -> Result<Option<f64>, RowError> {
        match self.row.get(name) {
            None => Ok(None),
            Some(v) if is_missing(v) => Ok(None),
            Some(v) => to_number(name, v).map(Some),
        }
    }

    fn id(&self, prompt: &str) -> String {
        match self.row.get("prompt_id") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => prompt_id(prompt),
        }
    }

    fn comparison(
        &self,
        prompt: String,
        chosen: String,
        rejected: String,
        margin: Option<f64>,
    ) -> Result<Record, RowError> {
        if chosen == rejected {
            return Err(err(
                "identical_pair",
                "`chosen` and `rejected` are the same text",
            ));
        }
        Ok(Record::Comparison(Comparison {
            prompt_id: self.id(&prompt),
            prompt,
            chosen,
            rejected,
            margin,
            annotator: self.annotator.clone(),
            source_row: self.source_row,
        }))
    }

    /// A hone row. A label left empty or `N/A` (a score, a pair's `choice`, a flag's
    /// `value`: an exported batch nobody filled in) is counted as missing, not rejected.
    fn hone(&self) -> Result<Normalized, RowError> {
        match self.hone_records() {
            Err(e) if e.reason == MISSING_VALUE => Ok(Normalized {
                missing: 1,
                ..Normalized::default()
            }),
            other => other.map(Normalized::from),
        }
    }

    fn hone_records(&self) -> Result<Vec<Record>, RowError> {
        let kind = match self.row.get("kind") {
            Some(Value::String(k)) => k.as_str(),
            Some(other) => {
                return Err(err(
                    "wrong_type",
                    format!("`kind` should be text, found {}", kind(other)),
                ));
            }
            None if self.row.contains_key("chosen") || self.row.contains_key("response_a") => {
                "comparison"
            }
            None if self.row.contains_key("responses") => "ranking",
            None if self.row.contains_key("score") => "score",
            None if self.row.contains_key("flag") => "flag",
            None => {
                return Err(err(
                    "missing_field",
                    "missing field `kind` (and the fields do not say which kind of label this is)",
                ));
            }
        };
        let prompt = self.text("prompt")?;
        match kind {
            "comparison"
                if !self.row.contains_key("chosen") && self.row.contains_key("response_a") =>
            {
                // A labelling tool's layout (what `annotate` exports): two responses and
                // which one was preferred.
                let a = self.text("response_a")?;
                let b = self.text("response_b")?;
                let choice = match self.row.get("choice") {
                    None => {
                        return Err(err("missing_field", "missing field `choice`"));
                    }
                    // An exported pair nobody labelled (or marked N/A): missing, not bad.
                    Some(v) if is_missing(v) => return Err(err(MISSING_VALUE, "no choice")),
                    Some(Value::String(c)) => c.trim().to_ascii_lowercase(),
                    Some(other) => {
                        return Err(err(
                            "wrong_type",
                            format!("`choice` should be `a` or `b`, found {}", self::kind(other)),
                        ));
                    }
                };
                let margin = self.optional_number("margin")?;
                match choice.as_str() {
                    "a" => Ok(vec![self.comparison(prompt, a, b, margin)?]),
                    "b" => Ok(vec![self.comparison(prompt, b, a, margin)?]),
                    other => Err(err(
                        "out_of_range",
                        format!("`choice` should be `a` or `b`, found `{other}`"),
                    )),
                }
            }
            "comparison" => {
                let chosen = self.text("chosen")?;
                let rejected = self.text("rejected")?;
                let margin = self.optional_number("margin")?;
                Ok(vec![self.comparison(prompt, chosen, rejected, margin)?])
            }
            "ranking" => {
                let responses = match self.get("responses")? {
                    Value::Array(items) => items
                        .iter()
                        .map(|v| match v {
                            Value::String(s) => non_empty("responses", s.clone()),
                            other => Err(err(
                                "wrong_type",
                                format!(
                                    "`responses` should hold text, found {}",
                                    self::kind(other)
                                ),
                            )),
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                    other => {
                        return Err(err(
                            "wrong_type",
                            format!("`responses` should be a list, found {}", self::kind(other)),
                        ));
                    }
                };
                self.ranking(prompt, responses)
            }
            "score" => {
                let response = self.text("response")?;
                if self.row.get("score").is_none_or(is_missing) {
                    return Err(err(MISSING_VALUE, "no score"));
                }
                let score = self.number("score")?;
                let scale_min = self.optional_number("scale_min")?.unwrap_or(1.0);
                let scale_max = self.optional_number("scale_max")?.unwrap_or(5.0);
                let aspect = match self.row.get("aspect") {
                    Some(Value::String(a)) if !a.trim().is_empty() => a.clone(),
                    _ => "overall".to_string(),
                };
                Ok(vec![self.score(
                    prompt,
                    response,
                    aspect,
                    score,
                    (scale_min, scale_max),
                )?])
            }
            "flag" => {
                let response = self.text("response")?;
                let flag = self.text("flag")?;
                if !FLAG_NAMES.contains(&flag.as_str()) {
                    return Err(err(
                        "out_of_range",
                        format!("unknown flag `{flag}` (flags: {})", FLAG_NAMES.join(", ")),
                    ));
                }
                // An absent `value` means the flag is raised; an empty one (an exported
                // batch nobody filled in) is not a label at all.
                let value = match self.row.get("value") {
                    None => true,
                    Some(v) if is_missing(v) => return Err(err(MISSING_VALUE, "no value")),
                    Some(v) => to_bool("value", v)?,
                };
                Ok(vec![Record::Flag(Flag {
                    prompt_id: self.id(&prompt),
                    prompt,
                    response,
                    flag,
                    value,
                    annotator: self.annotator.clone(),
                    source_row: self.source_row,
                })])
            }
            other => Err(err(
                "unknown_kind",
                format!("unknown kind `{other}` (kinds: comparison, ranking, score, flag)"),
            )),
        }
    }

    fn ranking(&self, prompt: String, responses: Vec<String>) -> Result<Vec<Record>, RowError> {
        if responses.len() < 2 {
            return Err(err(
                "too_few_responses",
                format!(
                    "a ranking needs at least two responses, found {}",
                    responses.len()
                ),
            ));
        }
        for (i, a) in responses.iter().enumerate() {
            if responses[..i].contains(a) {
                return Err(err(
                    "identical_pair",
                    format!("response {} appears twice in the ranking", i + 1),
                ));
            }
        }
        Ok(vec![Record::Ranking(Ranking {
            prompt_id: self.id(&prompt),
            prompt,
            responses,
            annotator: self.annotator.clone(),
            source_row: self.source_row,
        })])
    }

    fn score(
        &self,
        prompt: String,
        response: String,
        aspect: String,
        score: f64,
        (min, max): (f64, f64),
    ) -> Result<Record, RowError> {
        if !(min..=max).contains(&score) {
            return Err(err(
                "out_of_range",
                format!("`{aspect}` rating {score} is outside {min}..{max}"),
            ));
        }
        Ok(Record::Score(Score {
            prompt_id: self.id(&prompt),
            prompt,
            response,
            aspect,
            score,
            scale_min: min,
            scale_max: max,
            annotator: self.annotator.clone(),
            source_row: self.source_row,
        }))
    }

    fn trl_preference(&self) -> Result<Vec<Record>, RowError> {
        let chosen = self.get("chosen")?;
        let rejected = self.get("rejected")?;
        let margin = self.optional_number("margin")?;
        let (prompt, chosen, rejected) = match self.row.get("prompt") {
            Some(p) if !p.is_null() => (
                render("prompt", p)?,
                render("chosen", chosen)?,
                render("rejected", rejected)?,
            ),
            _ => split_implicit(chosen, rejected)?,
        };
        let prompt = non_empty("prompt", prompt)?;
        let chosen = non_empty("chosen", chosen)?;
        let rejected = non_empty("rejected", rejected)?;
        Ok(vec![self.comparison(prompt, chosen, rejected, margin)?])
    }

    fn trl_unpaired(&self) -> Result<Vec<Record>, RowError> {
        let prompt = non_empty("prompt", render("prompt", self.get("prompt")?)?)?;
        let completion = non_empty("completion", render("completion", self.get("completion")?)?)?;
        let label = to_bool("label", self.get("label")?)?;
        Ok(vec![self.score(
            prompt,
            completion,
            "label".into(),
            if label { 1.0 } else { 0.0 },
            (0.0, 1.0),
        )?])
    }

    fn hh_rlhf(&self) -> Result<Vec<Record>, RowError> {
        let (p_chosen, chosen) = split_transcript("chosen", &self.text("chosen")?)?;
        let (p_rejected, rejected) = split_transcript("rejected", &self.text("rejected")?)?;
        if p_chosen != p_rejected {
            return Err(err(
                "prompt_mismatch",
                "`chosen` and `rejected` transcripts differ before their last Assistant turn",
            ));
        }
        let prompt = non_empty("prompt", p_chosen)?;
        Ok(vec![self.comparison(
            prompt,
            non_empty("chosen", chosen)?,
            non_empty("rejected", rejected)?,
            None,
        )?])
    }

    /// UltraFeedback: one score per rating. A rating that is `N/A`, null or NaN is counted
    /// as missing; one out of range or not a number is dropped (a row of the rejects
    /// table naming the completion and aspect) and the row's other ratings are kept.
    fn ultrafeedback(&self) -> Result<Normalized, RowError> {
        let prompt = self.text("instruction")?;
        let completions = match self.get("completions")? {
            Value::Array(items) if !items.is_empty() => items,
            Value::Array(_) => return Err(err("too_few_responses", "`completions` is empty")),
            other => {
                return Err(err(
                    "wrong_type",
                    format!("`completions` should be a list, found {}", kind(other)),
                ));
            }
        };
        let mut out = Normalized::default();
        for (i, completion) in completions.iter().enumerate() {
            let Value::Object(c) = completion else {
                out.dropped.push(err(
                    "wrong_type",
                    format!("completion {} should be an object", i + 1),
                ));
                continue;
            };
            let response = match c.get("response") {
                Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
                _ => {
                    out.dropped.push(err(
                        "missing_field",
                        format!("completion {} has no `response` text", i + 1),
                    ));
                    continue;
                }
            };
            let mut ratings: Vec<(String, &Value, (f64, f64))> = Vec::new();
            if let Some(Value::Object(annotations)) = c.get("annotations") {
                for (aspect, annotation) in annotations {
                    let rating = match annotation {
                        Value::Array(items) => items.first().and_then(|a| a.get("Rating")),
                        other => other.get("Rating"),
                    };
                    match rating {
                        Some(rating) => ratings.push((aspect.clone(), rating, (1.0, 5.0))),
                        None => out.missing += 1,
                    }
                }
            }
            if let Some(overall) = c.get("overall_score") {
                ratings.push(("overall".into(), overall, (1.0, 10.0)));
            }
            for (aspect, rating, scale) in ratings {
                if is_missing(rating) {
                    out.missing += 1;
                    continue;
                }
                let name = if aspect == "overall" {
                    format!("completions[{i}].overall_score")
                } else {
                    format!("completions[{i}].annotations.{aspect}.Rating")
                };
                let scored = to_number(&name, rating).and_then(|value| {
                    self.score(
                        prompt.clone(),
                        response.clone(),
                        aspect.clone(),
                        value,
                        scale,
                    )
                });
                match scored {
                    Ok(record) => out.records.push(record),
                    Err(e) => out.dropped.push(RowError {
                        detail: format!("completion {}: {}", i + 1, e.detail),
                        ..e
                    }),
                }
            }
        }
        if out.records.is_empty() && (out.missing == 0 || !out.dropped.is_empty()) {
            // Nothing usable: the row itself is rejected, with the first reason.
            return Err(out.dropped.into_iter().next().unwrap_or_else(|| {
                err(
                    "missing_field",
                    "no completion carries a rating or an `overall_score`",
                )
            }));
        }
        Ok(out)
    }
}

fn non_empty(name: &str, text: String) -> Result<String, RowError> {
    if text.trim().is_empty() {
        Err(err("empty_text", format!("`{name}` is empty")))
    } else {
        Ok(text)
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn to_number(name: &str, value: &Value) -> Result<f64, RowError> {
    let n = match value {
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        Value::String(s) => s.trim().parse::<f64>().map_err(|_| {
            err(
                "wrong_type",
                format!("`{name}` should be a number, found `{s}`"),
            )
        })?,
        other => {
            return Err(err(
                "wrong_type",
                format!("`{name}` should be a number, found {}", kind(other)),
            ));
        }
    };
    if n.is_finite() {
        Ok(n)
    } else {
        Err(err("not_a_number", format!("`{name}` is {n}")))
    }
}

fn to_bool(name: &str, value: &Value) -> Result<bool, RowError> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) if n.as_f64() == Some(1.0) => Ok(true),
        Value::Number(n) if n.as_f64() == Some(0.0) => Ok(false),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(err(
                "wrong_type",
                format!("`{name}` should be true or false, found `{s}`"),
            )),
        },
        other => Err(err(
            "wrong_type",
            format!("`{name}` should be true or false, found {}", kind(other)),
        )),
    }
}

/// Text, or a conversation rendered as text: a lone message is its content; several are
/// `Role: content` lines (`User:`, `Assistant:`, `System:`).
fn render(name: &str, value: &Value) -> Result<String, RowError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Array(messages) => {
            let parsed = messages
                .iter()
                .map(|m| message(name, m))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(render_messages(&parsed))
        }
        other => Err(err(
            "wrong_type",
            format!(
                "`{name}` should be text or a list of messages, found {}",
                kind(other)
            ),
        )),
    }
}

fn message(name: &str, value: &Value) -> Result<(String, String), RowError> {
    let role = value.get("role").and_then(Value::as_str);
    let content = value.get("content").and_then(Value::as_str);
    match (role, content) {
        (Some(r), Some(c)) => Ok((r.to_string(), c.to_string())),
        _ => Err(err(
            "wrong_type",
            format!("`{name}` messages need `role` and `content` text"),
        )),
    }
}

fn render_messages(messages: &[(String, String)]) -> String {
    if let [(_, content)] = messages {
        return content.clone();
    }
    messages
        .iter()
        .map(|(role, content)| {
            let mut role = role.clone();
            if let Some(first) = role.get_mut(..1) {
                first.make_ascii_uppercase();
            }
            format!("{role}: {content}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// TRL's implicit prompt: the shared beginning of `chosen` and `rejected`. For
/// conversations, the shared leading messages; for text, the shared prefix cut back to a
/// whitespace boundary so that no word is split.
fn split_implicit(chosen: &Value, rejected: &Value) -> Result<(String, String, String), RowError> {
    match (chosen, rejected) {
        (Value::Array(a), Value::Array(b)) => {
            let a = a
                .iter()
                .map(|m| message("chosen", m))
                .collect::<Result<Vec<_>, _>>()?;
            let b = b
                .iter()
                .map(|m| message("rejected", m))
                .collect::<Result<Vec<_>, _>>()?;
            let shared = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
            if shared == 0 {
                return Err(err(
                    "missing_field",
                    "no `prompt`, and `chosen` and `rejected` share no leading message",
                ));
            }
            Ok((
                render_messages(&a[..shared]),
                render_messages(&a[shared..]),
                render_messages(&b[shared..]),
            ))
        }
        (Value::String(a), Value::String(b)) => {
            let mut cut = a
                .char_indices()
                .zip(b.chars())
                .take_while(|((_, x), y)| x == y)
                .map(|((i, x), _)| i + x.len_utf8())
                .last()
                .unwrap_or(0);
            if cut < a.len() && cut < b.len() {
                cut = a[..cut].rfind(char::is_whitespace).map_or(0, |i| i + 1);
            }
            if a[..cut].trim().is_empty() {
                return Err(err(
                    "missing_field",
                    "no `prompt`, and `chosen` and `rejected` share no leading text",
                ));
            }
            Ok((
                a[..cut].trim_end().to_string(),
                a[cut..].trim().to_string(),
                b[cut..].trim().to_string(),
            ))
        }
        _ => Err(err(
            "wrong_type",
            "`chosen` and `rejected` should both be text or both be lists of messages",
        )),
    }
}

/// An HH-RLHF transcript as (prompt up to and including the last "Assistant:", the answer).
fn split_transcript(name: &str, transcript: &str) -> Result<(String, String), RowError> {
    const MARKER: &str = "\n\nAssistant:";
    let at = transcript.rfind(MARKER).ok_or_else(|| {
        err(
            "missing_field",
            format!("`{name}` has no \"\\n\\nAssistant:\" turn"),
        )
    })?;
    let prompt = transcript[..at + MARKER.len()].trim_start().to_string();
    let answer = transcript[at + MARKER.len()..].trim().to_string();
    Ok((prompt, answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(format: Format, row: serde_json::Value) -> Result<Vec<Record>, String> {
        let Value::Object(map) = row else {
            panic!("rows are objects")
        };
        normalize(format, &map, 7, None)
            .map(|n| n.records)
            .map_err(|e| format!("{}: {}", e.reason, e.detail))
    }

    #[test]
    fn ultrafeedback_keeps_every_valid_rating_of_a_row() {
        // NaN overall score (read as null), an "N/A" and a null rating, one rating out of
        // range: the two valid ratings are kept, the bad one dropped, three missing.
        let row = serde_json::json!({"instruction": "Explain tides.", "completions": [
            {"response": "The moon pulls the sea.", "overall_score": null,
             "annotations": {"helpfulness": {"Rating": "4"}, "honesty": {"Rating": "N/A"},
                             "truthfulness": {"Rating": "7"}}},
            {"response": "Wind.", "overall_score": 2,
             "annotations": {"helpfulness": {"Rating": null}}}
        ]});
        let Value::Object(map) = row else { panic!() };
        let n = normalize(Format::Ultrafeedback, &map, 3, None).unwrap();
        let scores: Vec<(String, f64)> = n
            .records
            .iter()
            .map(|r| match r {
                Record::Score(s) => (s.aspect.clone(), s.score),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            scores,
            [("helpfulness".to_string(), 4.0), ("overall".into(), 2.0)]
        );
        assert_eq!(n.missing, 3);
        assert_eq!(n.dropped.len(), 1);
        assert_eq!(n.dropped[0].reason, "out_of_range");
        assert!(
            n.dropped[0].detail.contains("completion 1")
                && n.dropped[0].detail.contains("truthfulness"),
            "{}",
            n.dropped[0].detail
        );
        // Every rating missing: nothing to keep, nothing to reject.
        let row = serde_json::json!({"instruction": "x", "completions": [
            {"response": "y", "overall_score": "N/A"}]});
        let Value::Object(map) = row else { panic!() };
        let n = normalize(Format::Ultrafeedback, &map, 3, None).unwrap();
        assert!(n.records.is_empty() && n.dropped.is_empty() && n.missing == 1);
    }

    #[test]
    fn a_missing_score_is_counted_not_rejected() {
        for score in [
            serde_json::json!("N/A"),
            Value::Null,
            serde_json::json!(""),
            serde_json::json!("NaN"),
        ] {
            let row = serde_json::json!({"kind": "score", "prompt": "p", "response": "r", "score": score});
            let Value::Object(map) = row else { panic!() };
            let n = normalize(Format::Hone, &map, 1, None).unwrap();
            assert_eq!((n.records.len(), n.missing), (0, 1), "{score}");
        }
        let row =
            serde_json::json!({"kind": "score", "prompt": "p", "response": "r", "score": "high"});
        assert!(
            check(Format::Hone, row)
                .unwrap_err()
                .starts_with("wrong_type")
        );
    }

    fn comparison(records: Vec<Record>) -> (String, String, String) {
        match records.as_slice() {
            [Record::Comparison(c)] => (c.prompt.clone(), c.chosen.clone(), c.rejected.clone()),
            other => panic!("expected one comparison, got {other:?}"),
        }
    }

    #[test]
    fn trl_explicit_and_implicit_prompts() {
        let explicit = check(
            Format::TrlPreference,
            serde_json::json!({"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}),
        )
        .unwrap();
        assert_eq!(
            comparison(explicit),
            ("Hi?".into(), "Hello!".into(), "Go away.".into())
        );
        let implicit = check(
            Format::TrlPreference,
            serde_json::json!({"chosen": "Q: sky? A: blue", "rejected": "Q: sky? A: bleu"}),
        )
        .unwrap();
        assert_eq!(
            comparison(implicit),
            ("Q: sky? A:".into(), "blue".into(), "bleu".into())
        );
        let conversational = check(Format::TrlPreference, serde_json::json!({
            "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
            "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "No"}]
        })).unwrap();
        assert_eq!(
            comparison(conversational),
            ("Hi".into(), "Hello".into(), "No".into())
        );
    }

    #[test]
    fn hh_rlhf_splits_before_the_last_assistant_turn() {
        let row = serde_json::json!({
            "chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Name?\n\nAssistant: I am an assistant.",
            "rejected": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Name?\n\nAssistant: None of your business."
        });
        let (prompt, chosen, rejected) = comparison(check(Format::HhRlhf, row).unwrap());
        assert_eq!(
            prompt,
            "Human: Hi\n\nAssistant: Hello\n\nHuman: Name?\n\nAssistant:"
        );
        assert_eq!(
            (chosen.as_str(), rejected.as_str()),
            ("I am an assistant.", "None of your business.")
        );
        let mismatch = serde_json::json!({"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: B\n\nAssistant: y"});
        assert_eq!(
            check(Format::HhRlhf, mismatch).unwrap_err(),
            "prompt_mismatch: `chosen` and `rejected` transcripts differ before their last Assistant turn"
        );
    }

    #[test]
    fn ultrafeedback_gives_a_score_per_aspect_and_overall() {
        let row = serde_json::json!({"instruction": "Explain tides.", "completions": [
            {"response": "The moon pulls the sea.", "annotations": {"helpfulness": {"Rating": "4"}, "honesty": [{"Rating": "5"}], "truthfulness": {"Rating": "N/A"}}, "overall_score": 7.5},
            {"response": "No idea.", "annotations": {"helpfulness": {"Rating": "1"}}, "overall_score": 2}
        ]});
        let records = check(Format::Ultrafeedback, row).unwrap();
        let scores: Vec<(String, f64)> = records
            .iter()
            .map(|r| match r {
                Record::Score(s) => (s.aspect.clone(), s.score),
                _ => panic!(),
            })
            .collect();
        assert_eq!(
            scores,
            vec![
                ("helpfulness".into(), 4.0),
                ("honesty".into(), 5.0),
                ("overall".into(), 7.5),
                ("helpfulness".into(), 1.0),
                ("overall".into(), 2.0)
            ]
        );
        let bad = serde_json::json!({"instruction": "x", "completions": [{"response": "y", "annotations": {"helpfulness": {"Rating": "9"}}}]});
        assert_eq!(
            check(Format::Ultrafeedback, bad).unwrap_err(),
            "out_of_range: completion 1: `helpfulness` rating 9 is outside 1..5"
        );
    }

    #[test]
    fn every_reject_reason_of_a_row() {
        let cases = [
            (
                Format::Hone,
                serde_json::json!({"kind": "comparison", "prompt": "p", "chosen": "a"}),
                "missing_field",
            ),
            (
                Format::Hone,
                serde_json::json!({"kind": "comparison", "prompt": "p", "chosen": "a", "rejected": "a"}),
                "identical_pair",
            ),
            (
                Format::Hone,
                serde_json::json!({"kind": "comparison", "prompt": "  ", "chosen": "a", "rejected": "b"}),
                "empty_text",
            ),
            (
                Format::Hone,
                serde_json::json!({"kind": "comparison", "prompt": 3, "chosen": "a", "rejected": "b"}),
                "wrong_type",
            ),
            (
                Format::Hone,
                serde_json::json!({"kind": "score", "prompt": "p", "response": "r", "score": 6}),
                "out_of_range",
            ),
            (
                Format::Hone,
                serde_json::json!({"kind": "score", "prompt": "p", "response": "r", "score": "inf"}),
                "not_a_number",
            ),
            (
                Format::Hone,
                serde_json::json!({"kind": "ranking", "prompt": "p", "responses": ["a"]}),
                "too_few_responses",
            ),
            (
                Format::Hone,
                serde_json::json!({"kind": "vote", "prompt": "p"}),
                "unknown_kind",
            ),
            (
                Format::Hone,
                serde_json::json!({"kind": "flag", "prompt": "p", "response": "r", "flag": "rude"}),
                "out_of_range",
            ),
            (
                Format::TrlUnpaired,
                serde_json::json!({"prompt": "p", "completion": "c", "label": "maybe"}),
                "wrong_type",
            ),
        ];
        for (format, row, reason) in cases {
            let got = check(format, row.clone()).unwrap_err();
            assert!(
                got.starts_with(reason),
                "{row}: expected {reason}, got {got}"
            );
        }
    }

    #[test]
    fn hone_kinds_are_inferred_and_values_typed() {
        let records = check(
            Format::Hone,
            serde_json::json!({"prompt": "p", "responses": ["a", "b", "c"], "annotator": "ann-1"}),
        )
        .unwrap();
        assert!(
            matches!(&records[0], Record::Ranking(r) if r.responses.len() == 3 && r.annotator.as_deref() == Some("ann-1"))
        );
        let records = check(
            Format::Hone,
            serde_json::json!({"prompt": "p", "response": "r", "score": "4", "aspect": "honesty"}),
        )
        .unwrap();
        assert!(
            matches!(&records[0], Record::Score(s) if s.score == 4.0 && s.aspect == "honesty" && s.source_row == 7)
        );
        let records = check(
            Format::Hone,
            serde_json::json!({"prompt": "p", "response": "r", "flag": "unsafe", "value": "false"}),
        )
        .unwrap();
        assert!(matches!(&records[0], Record::Flag(f) if !f.value));
    }
}
