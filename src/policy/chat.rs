//! A model's chat format: the Jinja `chat_template` its tokenizer ships
//! (`chat_template.jinja`, or `chat_template` in `tokenizer_config.json`), rendered as
//! transformers' `apply_chat_template` renders it, and the tokenizer files that travel
//! with a model from stage to stage (`tokenizer_config.json`, `chat_template.jinja`,
//! `special_tokens_map.json`, `generation_config.json`): where its special tokens, its
//! end-of-turn token and its template are written down.

use std::path::Path;

use super::PolicyError;

/// The files beside a checkpoint that say how its tokenizer is used, copied from a model
/// directory to every model directory made from it (they are not weights: a trained
/// policy keeps its base's chat format and special tokens).
pub const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "generation_config.json",
];

/// Copies those of [`TOKENIZER_FILES`] that `from` has into `to` (a directory that
/// exists). A model without them gets none: nothing changes for hone's own models.
pub fn carry_tokenizer_files(from: &Path, to: &Path) -> Result<(), PolicyError> {
    for name in TOKENIZER_FILES {
        let source = from.join(name);
        if !source.is_file() {
            continue;
        }
        let target = to.join(name);
        std::fs::copy(&source, &target).map_err(|e| PolicyError::Input {
            path: source.display().to_string(),
            message: format!("copying it to `{}`: {e}", target.display()),
        })?;
        // The store makes its objects read-only; the copy must stay writable until the
        // commit, like every other file the stage writes.
        let mut permissions = std::fs::metadata(&target)
            .map_err(|e| PolicyError::Input {
                path: target.display().to_string(),
                message: e.to_string(),
            })?
            .permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        permissions.set_readonly(false);
        std::fs::set_permissions(&target, permissions).map_err(|e| PolicyError::Input {
            path: target.display().to_string(),
            message: e.to_string(),
        })?;
    }
    Ok(())
}

/// One turn of a conversation, as `apply_chat_template` takes it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Message<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

/// A model's chat template and the special tokens it is rendered with.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    /// `bos_token`, `eos_token`, `unk_token`, `pad_token`, … as `tokenizer_config.json`
    /// gives them (the names a template refers to).
    special_tokens: std::collections::BTreeMap<String, String>,
    /// Where the template was read from, for errors.
    origin: String,
}

/// The date `strftime_now` formats. transformers formats the current time, which would
/// make a rendered prompt (and every result after it) depend on the day it ran; hone
/// renders with this fixed date instead (Llama 3.1's own default `date_string`).
const FIXED_DATE: (i32, u32, u32) = (2024, 7, 26);

impl ChatTemplate {
    /// The chat template of the model in `dir`: `chat_template.jinja`, else the
    /// `chat_template` of `tokenizer_config.json` (a string, or a list of named templates
    /// of which `default` is taken); `None` when the model has neither.
    pub fn load(dir: &Path) -> Result<Option<ChatTemplate>, PolicyError> {
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| PolicyError::input(&config_path, format!("not JSON: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Value::Null,
            Err(e) => return Err(PolicyError::input(&config_path, e)),
        };
        let jinja_path = dir.join("chat_template.jinja");
        let (source, origin) = match std::fs::read_to_string(&jinja_path) {
            Ok(text) => (text, jinja_path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let origin = format!("{} (chat_template)", config_path.display());
                match &config["chat_template"] {
                    serde_json::Value::Null => return Ok(None),
                    serde_json::Value::String(s) => (s.clone(), origin),
                    serde_json::Value::Array(named) => {
                        let default = named
                            .iter()
                            .find(|t| t["name"] == "default")
                            .and_then(|t| t["template"].as_str())
                            .ok_or_else(|| {
                                PolicyError::input(
                                    &config_path,
                                    "`chat_template` is a list of named templates without one named `default`",
                                )
                            })?;
                        (default.to_string(), origin)
                    }
                    other => {
                        return Err(PolicyError::input(
                            &config_path,
                            format!("`chat_template` is {other}, not a string"),
                        ));
                    }
                }
            }
            Err(e) => return Err(PolicyError::input(&jinja_path, e)),
        };
        let mut special_tokens = std::collections::BTreeMap::new();
        if let Some(config) = config.as_object() {
            for (key, value) in config {
                if !key.ends_with("_token") {
                    continue;
                }
                // A token is a string, or an AddedToken written as {"content": ...}.
                let token = value
                    .as_str()
                    .or_else(|| value.get("content").and_then(|c| c.as_str()));
                if let Some(token) = token {
                    special_tokens.insert(key.clone(), token.to_string());
                }
            }
        }
        let template = ChatTemplate {
            source,
            special_tokens,
            origin,
        };
        // A template that does not parse is reported when the model is loaded, not at
        // the first prompt.
        template.environment()?;
        Ok(Some(template))
    }

    /// A template from its source text and special tokens (tests, and models whose
    /// template comes from elsewhere).
    pub fn new(
        source: impl Into<String>,
        special_tokens: impl IntoIterator<Item = (String, String)>,
    ) -> Result<ChatTemplate, PolicyError> {
        let template = ChatTemplate {
            source: source.into(),
            special_tokens: special_tokens.into_iter().collect(),
            origin: "chat template".into(),
        };
        template.environment()?;
        Ok(template)
    }

    /// The special token named `name` (`eos_token`, `bos_token`), if the config has it.
    pub fn special_token(&self, name: &str) -> Option<&str> {
        self.special_tokens.get(name).map(String::as_str)
    }

    /// The Jinja environment transformers renders chat templates in: blocks trimmed and
    /// left-stripped, `break`/`continue`, Python's string methods, `raise_exception`, and
    /// `strftime_now` (at [`FIXED_DATE`]).
    fn environment(&self) -> Result<minijinja::Environment<'static>, PolicyError> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        env.add_function("strftime_now", |format: String| strftime_fixed(&format));
        env.add_template_owned("chat", self.source.clone())
            .map_err(|e| self.error(e))?;
        Ok(env)
    }

    fn error(&self, e: minijinja::Error) -> PolicyError {
        let mut message = e.to_string();
        if let Some(detail) = e.detail() {
            message = format!("{message}: {detail}");
        }
        PolicyError::Input {
            path: format!("`{}`", self.origin),
            message: format!("the chat template: {message}"),
        }
    }

    /// The conversation as the model sees it, as `apply_chat_template(messages,
    /// tokenize=False, add_generation_prompt=...)` renders it.
    pub fn render(
        &self,
        messages: &[Message<'_>],
        add_generation_prompt: bool,
    ) -> Result<String, PolicyError> {
        let env = self.environment()?;
        let template = env.get_template("chat").map_err(|e| self.error(e))?;
        let mut context: std::collections::BTreeMap<String, minijinja::Value> = self
            .special_tokens
            .iter()
            .map(|(k, v)| (k.clone(), minijinja::Value::from(v.as_str())))
            .collect();
        context.insert(
            "messages".into(),
            minijinja::Value::from_serialize(messages),
        );
        context.insert(
            "add_generation_prompt".into(),
            minijinja::Value::from(add_generation_prompt),
        );
        context.insert("tools".into(), minijinja::Value::from(()));
        context.insert("documents".into(), minijinja::Value::from(()));
        template.render(context).map_err(|e| self.error(e))
    }
}

/// `strftime` of [`FIXED_DATE`] for the directives chat templates use (`%d %b %Y`,
/// `%Y-%m-%d`, `%B`); any other directive is an error naming it.
fn strftime_fixed(format: &str) -> Result<String, minijinja::Error> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let (year, month, day) = FIXED_DATE;
    let name = MONTHS[month as usize - 1];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('b') => out.push_str(&name[..3]),
            Some('B') => out.push_str(name),
            Some('%') => out.push('%'),
            other => {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: `%{}` is not supported",
                        other.map(String::from).unwrap_or_default()
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// How prompts (and, for a reward model, responses) are put to a model: its own chat
/// template, or one of hone's plain templates with `{prompt}` (and `{response}`).
#[derive(Debug, Clone)]
pub enum PromptFormat {
    Plain(String),
    Chat(ChatTemplate),
}

impl PromptFormat {
    /// The format for the model in `dir`, given a stage's `template` parameter and that
    /// parameter's default: the model's chat template when it has one and `template` is
    /// left at its default (written out or not: the same stage), else `template`. hone's
    /// own models have no chat template, so for them nothing changes.
    pub fn for_model(
        dir: &Path,
        template: &str,
        default: &str,
    ) -> Result<PromptFormat, PolicyError> {
        if template == default
            && let Some(chat) = ChatTemplate::load(dir)?
        {
            return Ok(PromptFormat::Chat(chat));
        }
        Ok(PromptFormat::Plain(template.to_string()))
    }

    pub fn chat(&self) -> Option<&ChatTemplate> {
        match self {
            PromptFormat::Chat(chat) => Some(chat),
            PromptFormat::Plain(_) => None,
        }
    }

    /// The text a policy continues from: the template with the prompt filled in, or the
    /// user's turn and the generation prompt.
    pub fn prompt_text(&self, prompt: &str) -> Result<String, PolicyError> {
        match self {
            PromptFormat::Plain(template) => Ok(template.replace("{prompt}", prompt)),
            PromptFormat::Chat(chat) => chat.render(
                &[Message {
                    role: "user",
                    content: prompt,
                }],
                true,
            ),
        }
    }

    /// A whole exchange as a reward model reads it: a plain template with `{prompt}` and
    /// `{response}` filled in, or the user's turn and the assistant's.
    pub fn exchange_text(&self, prompt: &str, response: &str) -> Result<String, PolicyError> {
        match self {
            PromptFormat::Plain(template) => Ok(template
                .replace("{prompt}", prompt)
                .replace("{response}", response)),
            PromptFormat::Chat(chat) => chat.render(&exchange(prompt, response), false),
        }
    }

    /// The text before and after the response in what a reward model reads: for a plain
    /// template the parts around `{response}`, for a chat template the rendered exchange
    /// around the response's text (a template may trim it; an error where the response
    /// cannot be found in the rendering).
    pub fn around_response(
        &self,
        prompt: &str,
        response: &str,
    ) -> Result<(String, String), PolicyError> {
        match self {
            PromptFormat::Plain(template) => {
                let (before, after) = template.split_once("{response}").ok_or_else(|| {
                    PolicyError::Invalid(format!("the template `{template}` lacks `{{response}}`"))
                })?;
                Ok((
                    before.replace("{prompt}", prompt),
                    after.replace("{prompt}", prompt),
                ))
            }
            PromptFormat::Chat(chat) => {
                let whole = self.exchange_text(prompt, response)?;
                let head = self.prompt_text(prompt)?;
                let from = if whole.starts_with(&head) {
                    head.len()
                } else {
                    0
                };
                let needle = response.trim();
                let at = whole[from..]
                    .find(needle)
                    .map(|i| from + i)
                    .ok_or_else(|| PolicyError::Input {
                        path: format!("`{}`", chat.origin),
                        message: "the chat template's rendering does not contain the response"
                            .into(),
                    })?;
                Ok((
                    whole[..at].to_string(),
                    whole[at + needle.len()..].to_string(),
                ))
            }
        }
    }

    /// The tokens of the prompt as a policy sees it.
    pub fn encode_prompt(
        &self,
        tok: &tokenizers::Tokenizer,
        prompt: &str,
    ) -> Result<Vec<u32>, PolicyError> {
        crate::model::tokenizer::encode(tok, &self.prompt_text(prompt)?)
            .map_err(PolicyError::Invalid)
    }

    /// The tokens of prompt and response as a policy is trained on them (sft, dpo), and
    /// the index of the first response token. Plain: the prompt's tokens, the tokens of
    /// " response", then `eot`. Chat: the prompt with its generation prompt, then the rest
    /// of the rendered exchange (the response and the template's end of turn), each
    /// tokenized on its own so that the prompt's tokens are the ones sampling starts from.
    pub fn encode_exchange(
        &self,
        tok: &tokenizers::Tokenizer,
        prompt: &str,
        response: &str,
        eot: u32,
    ) -> Result<(Vec<u32>, usize), PolicyError> {
        let encode =
            |text: &str| crate::model::tokenizer::encode(tok, text).map_err(PolicyError::Invalid);
        let mut tokens = self.encode_prompt(tok, prompt)?;
        let start = tokens.len();
        match self {
            PromptFormat::Plain(_) => {
                tokens.extend(encode(&format!(" {response}"))?);
                tokens.push(eot);
            }
            PromptFormat::Chat(chat) => {
                let head = self.prompt_text(prompt)?;
                let whole = chat.render(&exchange(prompt, response), false)?;
                let rest = whole.strip_prefix(&head).ok_or_else(|| PolicyError::Input {
                    path: format!("`{}`", chat.origin),
                    message: "the chat template does not render a prompt with its generation prompt as the start of the whole exchange, so the response cannot be told apart".into(),
                })?;
                tokens.extend(encode(rest)?);
            }
        }
        Ok((tokens, start))
    }

    /// The tokens that end a sampled response: `eot`, and for a chat model its end of turn
    /// too (every `eos_token_id` of `config.json`, given as `model_eos`; `eos_token` of
    /// `tokenizer_config.json`; `eos_token_id` of `generation_config.json` in `dir`, which
    /// may be a list). Only `eot` for a plain template.
    pub fn stop_tokens(
        &self,
        dir: &Path,
        tok: &tokenizers::Tokenizer,
        eot: u32,
        model_eos: &[u32],
    ) -> Result<Vec<u32>, PolicyError> {
        let mut ids = vec![eot];
        let PromptFormat::Chat(chat) = self else {
            return Ok(ids);
        };
        ids.extend(model_eos);
        if let Some(id) = chat
            .special_token("eos_token")
            .and_then(|t| tok.token_to_id(t))
        {
            ids.push(id);
        }
        let path = dir.join("generation_config.json");
        if let Ok(text) = std::fs::read_to_string(&path) {
            let config: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| PolicyError::input(&path, format!("not JSON: {e}")))?;
            match &config["eos_token_id"] {
                serde_json::Value::Number(n) => ids.extend(n.as_u64().map(|n| n as u32)),
                serde_json::Value::Array(list) => {
                    ids.extend(list.iter().filter_map(|n| n.as_u64()).map(|n| n as u32))
                }
                _ => {}
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        ids.retain(|id| seen.insert(*id));
        Ok(ids)
    }
}

fn exchange<'a>(prompt: &'a str, response: &'a str) -> [Message<'a>; 2] {
    [
        Message {
            role: "user",
            content: prompt,
        },
        Message {
            role: "assistant",
            content: response,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> tokenizers::Tokenizer {
        crate::model::tokenizer::load(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/models/gpt2-tiny/tokenizer.json"),
        )
        .unwrap()
    }

    fn chatml() -> PromptFormat {
        PromptFormat::Chat(
            ChatTemplate::new(
                "{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}</t>\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
                [("eos_token".to_string(), "</t>".to_string())],
            )
            .unwrap(),
        )
    }

    fn encode(tok: &tokenizers::Tokenizer, text: &str) -> Vec<u32> {
        crate::model::tokenizer::encode(tok, text).unwrap()
    }

    #[test]
    fn a_plain_exchange_is_the_prompt_a_space_the_response_and_end_of_text() {
        let tok = tokenizer();
        let plain = PromptFormat::Plain("User: {prompt}\nAssistant:".into());
        let (tokens, start) = plain.encode_exchange(&tok, "Hi", "Yo", 0).unwrap();
        let mut want = encode(&tok, "User: Hi\nAssistant:");
        assert_eq!(start, want.len());
        want.extend(encode(&tok, " Yo"));
        want.push(0);
        assert_eq!(tokens, want);
        assert_eq!(
            plain.exchange_text("Hi", "Yo").unwrap(),
            "User: Hi\nAssistant:"
        );
        let reward = PromptFormat::Plain("User: {prompt}\nAssistant: {response}".into());
        assert_eq!(
            reward.exchange_text("Hi", "Yo").unwrap(),
            "User: Hi\nAssistant: Yo"
        );
        assert_eq!(
            reward.around_response("Hi", "Yo").unwrap(),
            ("User: Hi\nAssistant: ".into(), String::new())
        );
    }

    #[test]
    fn a_chat_exchange_is_the_generation_prompt_then_the_rest_of_the_rendering() {
        let tok = tokenizer();
        let chat = chatml();
        assert_eq!(
            chat.prompt_text(" Hi ").unwrap(),
            "<user>Hi</t>\n<assistant>"
        );
        let (tokens, start) = chat.encode_exchange(&tok, "Hi", "Yo", 0).unwrap();
        // The prompt's tokens are exactly what sampling starts from; the rest is the
        // response and the template's end of turn, without hone's end-of-text.
        assert_eq!(
            tokens[..start],
            encode(&tok, "<user>Hi</t>\n<assistant>")[..]
        );
        assert_eq!(tokens[start..], encode(&tok, "Yo</t>\n")[..]);
        assert_eq!(
            chat.exchange_text("Hi", "Yo").unwrap(),
            "<user>Hi</t>\n<assistant>Yo</t>\n"
        );
        // Around the (trimmed) response in what a reward model reads.
        assert_eq!(
            chat.around_response("Hi", " Yo ").unwrap(),
            ("<user>Hi</t>\n<assistant>".into(), "</t>\n".into())
        );
    }

    #[test]
    fn a_chat_model_stops_at_its_end_of_turn_tokens() {
        let tok = tokenizer();
        let dir = tempfile::tempdir().unwrap();
        // The plain format stops at end-of-text only, whatever the directory holds.
        std::fs::write(
            dir.path().join("generation_config.json"),
            r#"{"eos_token_id": [5, 0, 7]}"#,
        )
        .unwrap();
        let plain = PromptFormat::Plain("{prompt}".into());
        assert_eq!(
            plain.stop_tokens(dir.path(), &tok, 0, &[3]).unwrap(),
            vec![0]
        );
        // A chat model: end-of-text first, then config.json's and generation_config's
        // lists, once each (`</t>` is not in this vocabulary, so it adds nothing).
        assert_eq!(
            chatml().stop_tokens(dir.path(), &tok, 0, &[0, 3]).unwrap(),
            vec![0, 3, 5, 7]
        );
        std::fs::write(
            dir.path().join("generation_config.json"),
            r#"{"eos_token_id": 9}"#,
        )
        .unwrap();
        assert_eq!(
            chatml().stop_tokens(dir.path(), &tok, 0, &[]).unwrap(),
            vec![0, 9]
        );
        std::fs::write(dir.path().join("generation_config.json"), "{").unwrap();
        let e = chatml()
            .stop_tokens(dir.path(), &tok, 0, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("generation_config.json"), "{e}");
    }

    #[test]
    fn the_default_template_selects_the_chat_template_and_a_set_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let default = "User: {prompt}\nAssistant:";
        // No template in the directory: the plain default.
        assert!(
            PromptFormat::for_model(dir.path(), default, default)
                .unwrap()
                .chat()
                .is_none()
        );
        std::fs::write(
            dir.path().join("chat_template.jinja"),
            "{{ messages[0].content }}",
        )
        .unwrap();
        assert!(
            PromptFormat::for_model(dir.path(), default, default)
                .unwrap()
                .chat()
                .is_some()
        );
        let set = PromptFormat::for_model(dir.path(), "Q: {prompt}", default).unwrap();
        assert_eq!(set.prompt_text("x").unwrap(), "Q: x");
    }

    #[test]
    fn strftime_now_formats_a_fixed_date() {
        assert_eq!(strftime_fixed("%d %b %Y").unwrap(), "26 Jul 2024");
        assert_eq!(
            strftime_fixed("%Y-%m-%d, %B %y %%").unwrap(),
            "2024-07-26, July 24 %"
        );
        assert!(strftime_fixed("%H").is_err());
    }

    #[test]
    fn carried_files_are_copied_and_missing_ones_skipped() {
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(from.path().join("tokenizer_config.json"), "{}").unwrap();
        std::fs::write(from.path().join("model.safetensors"), "weights").unwrap();
        carry_tokenizer_files(from.path(), to.path()).unwrap();
        let names: Vec<String> = std::fs::read_dir(to.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["tokenizer_config.json".to_string()]);
    }
}
