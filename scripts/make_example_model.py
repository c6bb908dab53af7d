#!/usr/bin/env python3
"""Write data/models/qwen2-chat-tiny: the random-weight Qwen2 chat model that
pipelines/examples/hf_lora.yaml aligns (through the local Hugging Face cache, where
scripts/seed_hf_cache.sh puts it).

    /tmp/hone-ref-venv/bin/python scripts/make_example_model.py [OUT_DIR]

A byte-level BPE tokenizer of 512 tokens trained on the HHH world's corpus and
demonstrations, with Qwen's special tokens and Qwen2.5's chat template (from
tests/fixtures/chat/qwen2.5), and a Qwen2ForCausalLM of Qwen2.5's layout (q/k/v biases,
grouped-query attention, tied embeddings) at toy size: hidden 64, 2 layers, 256
positions, weights drawn by transformers from seed 0. It stands in for a real checkpoint,
which cannot be downloaded here; it has learned nothing.
"""
import json
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "data/models/qwen2-chat-tiny"
    texts = [json.loads(l)["text"] for l in open(ROOT / "data/hhh/corpus.jsonl")]
    for line in open(ROOT / "data/hhh/demos.jsonl"):
        demo = json.loads(line)
        texts += [demo["prompt"], demo["completion"]]
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(texts, trainer)
    template = json.load(open(ROOT / "tests/fixtures/chat/qwen2.5/tokenizer_config.json"))["chat_template"]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=256,
    )
    tok.chat_template = template
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out)
    ids = {t: bpe.token_to_id(t) for t in special}
    config = Qwen2Config(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        rope_theta=1e6,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad_token_id=ids["<|endoftext|>"]
    ).save_pretrained(out)
    print(json.dumps({"out": str(out), "vocab": bpe.get_vocab_size(), "params": sum(p.numel() for p in model.parameters())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
