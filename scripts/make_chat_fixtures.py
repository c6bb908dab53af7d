#!/usr/bin/env python3
"""Write the chat-template fixtures: a few real models' chat templates, and what
transformers' `apply_chat_template` renders for a set of conversations.

hone renders a model's chat template with minijinja (src/policy/chat.rs); the Rust tests
(tests/it/chat.rs) check that every rendering here comes out the same, byte for byte.

SETUP (once; torch is not needed)
    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install transformers jinja2

RUN (from the repository root)
    /tmp/tfvenv/bin/python scripts/make_chat_fixtures.py

WHAT IT WRITES (tests/fixtures/chat/)
    NAME/tokenizer_config.json   the template and its special tokens, as a model ships them
    NAME/tokenizer.json          the shared tiny tokenizer of tests/fixtures/models
    expected.json                [{template, messages, add_generation_prompt,
                                   text | error}], rendered by transformers
    versions.json                the transformers and jinja2 versions
"""
import json
import shutil
import sys
from pathlib import Path

import jinja2
import transformers
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "chat"

# Qwen2.5-Instruct's template (with its tool-calling branches, which hone never takes).
QWEN25 = "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}\n        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"

# Meta-Llama-3-Instruct's template.
LLAMA3 = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"

# Gemma 2 (-it)'s template: no system role, strictly alternating turns.
GEMMA2 = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"

# SmolLM2-Instruct's template: ChatML with a default system turn.
SMOLLM2 = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"

# Not a real model's: the Python string methods, `namespace`, loop controls, filters and
# `strftime_now` that recent templates (Qwen3's thinking, Llama 3.1's dates) lean on, in
# multi-line form with whitespace control, so that trim_blocks and lstrip_blocks matter.
FEATURES = """{%- set ns = namespace(last_user=-1) %}
{%- for message in messages %}
    {%- if message.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}
{%- endfor %}
{{- bos_token }}
{% for message in messages %}
    {% if message.role == 'system' %}
        {% continue %}
    {% endif %}
    {% set content = message.content.strip() %}
    {% if message.role == 'assistant' and '</think>' in content %}
        {% set content = content.split('</think>')[-1].lstrip('\\n') %}
    {% endif %}
[{{ message.role | upper }}{% if loop.index0 == ns.last_user %} (last){% endif %}] {{ content.replace('  ', ' ') }}{% if content.startswith('Q:') %} #question{% endif %}{% if content.endswith('?') %} ?{% endif %}

    {% if loop.index > 5 %}{% break %}{% endif %}
{% endfor %}
{% if add_generation_prompt %}
[ASSISTANT] ({{ strftime_now('%d %b %Y') }}) {{ messages | length }} turns{{ eos_token }}
{% endif %}
"""

TEMPLATES = {
    "qwen2.5": (QWEN25, {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
    "llama3": (LLAMA3, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    "gemma2": (GEMMA2, {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}),
    "smollm2": (SMOLLM2, {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}),
    "features": (FEATURES, {"bos_token": "<s>", "eos_token": "</s>"}),
}

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}],
    [{"role": "user", "content": "  Q: why  is the sky blue? \n"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "<think>\nblue or red\n</think>\n\nBlue."},
        {"role": "user", "content": "Another?"},
    ],
    [
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "Two"},
        {"role": "user", "content": "Three"},
        {"role": "assistant", "content": "Four"},
        {"role": "user", "content": "Five"},
        {"role": "assistant", "content": "Six"},
        {"role": "user", "content": "Seven?"},
    ],
    [{"role": "assistant", "content": "I speak first."}],
]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    shared = ROOT / "tests" / "fixtures" / "models" / "gpt2-tiny" / "tokenizer.json"
    expected = []
    for name, (template, special) in TEMPLATES.items():
        d = OUT / name
        d.mkdir(exist_ok=True)
        shutil.copyfile(shared, d / "tokenizer.json")
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template}
        config.update(special)
        (d / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        tok = AutoTokenizer.from_pretrained(d)
        for messages in CONVERSATIONS:
            for generation in (False, True):
                case = {"template": name, "messages": messages, "add_generation_prompt": generation}
                try:
                    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
                    if "strftime_now" in template:
                        # transformers formats today's date; hone a fixed one.
                        from datetime import datetime
                        text = text.replace(datetime.now().strftime("%d %b %Y"), "26 Jul 2024")
                    case["text"] = text
                except Exception as e:  # raise_exception in the template
                    case["error"] = str(e)
                expected.append(case)
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    versions = {"python": sys.version.split()[0], "transformers": transformers.__version__, "jinja2": jinja2.__version__}
    (OUT / "versions.json").write_text(json.dumps(versions, indent=2) + "\n")
    print(f"{len(expected)} renderings in {OUT}")


if __name__ == "__main__":
    main()
