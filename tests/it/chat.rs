//! Chat templates rendered by hone (minijinja) against transformers'
//! `apply_chat_template` (jinja2): the templates of Qwen2.5, Llama 3, Gemma 2 and SmolLM2,
//! and one that exercises Python string methods, `namespace`, loop controls and
//! whitespace control, each over the same conversations, with and without the
//! generation prompt. Written by `scripts/make_chat_fixtures.py`.

use std::path::{Path, PathBuf};

use hone::policy::chat::{ChatTemplate, Message};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat")
}

#[test]
fn renderings_equal_transformers() {
    let expected: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
            .unwrap();
    assert!(expected.len() >= 50, "{}", expected.len());
    let mut errors = 0;
    for case in &expected {
        let name = case["template"].as_str().unwrap();
        let template = ChatTemplate::load(&fixtures().join(name))
            .unwrap()
            .expect("the fixture has a chat template");
        let messages: Vec<Message<'_>> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| Message {
                role: m["role"].as_str().unwrap(),
                content: m["content"].as_str().unwrap(),
            })
            .collect();
        let generation = case["add_generation_prompt"].as_bool().unwrap();
        let rendered = template.render(&messages, generation);
        match (&case["text"], &case["error"]) {
            (Value::String(text), _) => {
                let rendered = rendered.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(
                    &rendered, text,
                    "{name}, {messages:?}, generation {generation}"
                );
            }
            (_, Value::String(error)) => {
                // The template raised: so must hone, with the template's message.
                let e = rendered.expect_err(name).to_string();
                assert!(e.contains(error), "{name}: {e}");
                errors += 1;
            }
            _ => panic!("a case without text or error"),
        }
    }
    // Gemma 2 refuses the system turn and a conversation that starts with the assistant.
    assert_eq!(errors, 4);
}

#[test]
fn special_tokens_come_from_the_tokenizer_config() {
    let llama = ChatTemplate::load(&fixtures().join("llama3"))
        .unwrap()
        .unwrap();
    assert_eq!(llama.special_token("eos_token"), Some("<|eot_id|>"));
    assert_eq!(llama.special_token("bos_token"), Some("<|begin_of_text|>"));
    // Qwen2.5 has no BOS: `bos_token: null` is no token.
    let qwen = ChatTemplate::load(&fixtures().join("qwen2.5"))
        .unwrap()
        .unwrap();
    assert_eq!(qwen.special_token("bos_token"), None);
}

#[test]
fn templates_are_found_and_broken_ones_named() {
    let dir = tempfile::tempdir().unwrap();
    // No tokenizer_config.json, no chat_template.jinja: no template.
    assert!(ChatTemplate::load(dir.path()).unwrap().is_none());
    // A config without one: none either.
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"eos_token": {"content": "<e>", "lstrip": false}}"#,
    )
    .unwrap();
    assert!(ChatTemplate::load(dir.path()).unwrap().is_none());
    // chat_template.jinja wins over the config, and AddedToken-style tokens are read.
    std::fs::write(dir.path().join("chat_template.jinja"), "{{ eos_token }}!\n").unwrap();
    let t = ChatTemplate::load(dir.path()).unwrap().unwrap();
    assert_eq!(t.render(&[], false).unwrap(), "<e>!");
    // A list of named templates: `default` is taken; without one, an error naming the file.
    std::fs::remove_file(dir.path().join("chat_template.jinja")).unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
    )
    .unwrap();
    let t = ChatTemplate::load(dir.path()).unwrap().unwrap();
    assert_eq!(t.render(&[], false).unwrap(), "D");
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"chat_template": [{"name": "tool_use", "template": "T"}]}"#,
    )
    .unwrap();
    let e = ChatTemplate::load(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer_config.json") && e.contains("default"),
        "{e}"
    );
    // A template that does not parse is an error when the model is loaded, naming it.
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"chat_template": "{% for m in messages %}{{ m.content }"}"#,
    )
    .unwrap();
    let e = ChatTemplate::load(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer_config.json") && e.contains("chat template"),
        "{e}"
    );
    // Broken JSON is named too.
    std::fs::write(dir.path().join("tokenizer_config.json"), "{").unwrap();
    let e = ChatTemplate::load(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer_config.json") && e.contains("not JSON"),
        "{e}"
    );
}
