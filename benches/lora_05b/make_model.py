#!/usr/bin/env python3
"""Write a random-weight model of Qwen2.5-0.5B's shape, as transformers writes it, and the
demonstrations both trainers fine-tune on (benches/lora_05b/run.sh calls this).

    python make_model.py OUT_DIR

The config is Qwen2.5-0.5B-Instruct's (hidden 896, intermediate 4864, 24 layers, 14
query and 2 key-value heads, vocabulary 151,936, tied embeddings, RoPE theta 1e6), saved
in bfloat16 as the real checkpoint is (988 MB). Two things differ from the real model,
neither in its shape: the weights are transformers' random initialisation (seed 0), and
the tokenizer is data/models/qwen2-chat-tiny's 512-token BPE with Qwen2.5's chat template
(the real one cannot be downloaded here), so its special-token ids replace Qwen's. A text
is therefore about 1.5x more tokens than under Qwen's tokenizer; the cost of a token is
the real model's.

OUT_DIR/demos.jsonl holds the HHH demonstrations whose formatted exchange is 96 to 112
tokens long, so that a batch's padding, and so its work, hardly depends on which
demonstrations the two trainers' shuffles put together.
"""
import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "data/models/qwen2-chat-tiny"
LENGTHS = (96, 112)


def main() -> int:
    out = Path(sys.argv[1])
    model_dir = out / "qwen2.5-0.5b-shape"
    model_dir.mkdir(parents=True, exist_ok=True)
    for name in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
        shutil.copy(TOKENIZER / name, model_dir / name)
    tok = AutoTokenizer.from_pretrained(model_dir)
    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        use_sliding_window=False,
        sliding_window=32768,
        max_window_layers=21,
        attention_dropout=0.0,
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
    )
    if not (model_dir / "model.safetensors").exists():
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(model_dir)
    kept = 0
    with open(out / "demos.jsonl", "w") as demos:
        for line in open(ROOT / "data/hhh/demos.jsonl"):
            demo = json.loads(line)
            n = len(exchange(tok, demo["prompt"], demo["completion"])[0])
            if LENGTHS[0] <= n <= LENGTHS[1]:
                demos.write(json.dumps(demo) + "\n")
                kept += 1
    print(f"{kept} demonstrations of {LENGTHS[0]}-{LENGTHS[1]} tokens in {out / 'demos.jsonl'}")
    return 0


def exchange(tok, prompt, completion):
    """The tokens of one demonstration as hone's sft forms them through a chat template
    (the prompt with the generation prompt, then the completion and the end of turn), and
    the index of the first completion token."""
    ids = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
    )
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    ids = list(ids)
    start = len(ids)
    ids += tok(completion, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    return ids, start


if __name__ == "__main__":
    sys.exit(main())
