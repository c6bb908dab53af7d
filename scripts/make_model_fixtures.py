#!/usr/bin/env python3
"""Create tiny random-weight Hugging Face reference checkpoints for hone's tests.

PURPOSE
    hone (Rust, candle) implements GPT-2 and Llama forward passes and must read
    and write checkpoints that Hugging Face `transformers` understands. This
    script builds two *tiny* models with random weights, saves them exactly the
    way `transformers` does (config.json + model.safetensors), trains a tiny
    byte-level BPE tokenizer, and records the reference outputs that the Rust
    implementation must reproduce (logits, greedy generation, log-softmax, loss).
    Nothing is downloaded from the Hugging Face hub: everything is created here.

SETUP (once; only PyPI is needed; torch from PyPI is large, be patient)
    python3 -m venv /tmp/hone-ref-venv
    /tmp/hone-ref-venv/bin/pip install --progress-bar off --upgrade pip
    /tmp/hone-ref-venv/bin/pip install --progress-bar off \
        torch transformers safetensors tokenizers numpy

RUN (from the repository root)
    /tmp/hone-ref-venv/bin/python scripts/make_model_fixtures.py
    # optional: --out DIR   (default: tests/fixtures/models next to this script)

WHAT IT WRITES (into tests/fixtures/models/, well under 1 MB in total)
    tokenizer.json              shared byte-level BPE tokenizer (vocab 96,
                                special token <|endoftext|> = id 0)
    tokenizer_expected.json     a few strings -> ids / decoded text, for
                                testing a tokenizer implementation
    versions.json               python / torch / transformers / tokenizers /
                                safetensors / numpy versions this ran with
    gpt2-tiny/                  GPT2LMHeadModel, seed 0
    llama-tiny/                 LlamaForCausalLM (GQA: 4 q heads, 2 kv heads), seed 1
    qwen2-tiny/                 Qwen2ForCausalLM (q/k/v biases, tied head, GQA), seed 2
    mistral-tiny/               MistralForCausalLM (no sliding window, GQA), seed 3
    llama3-tiny/                LlamaForCausalLM with Llama 3 RoPE scaling, tied head, seed 4
    qwen3-tiny/                 Qwen3ForCausalLM (q/k norms, head_dim 16 != 32 / 4), seed 5
    mistral-window-tiny/        MistralForCausalLM with a sliding window of 4, seed 6
    gemma2-tiny/                Gemma2ForCausalLM (soft caps, window on layer 0), seed 7
    phi3-tiny/                  Phi3ForCausalLM (fused projections, half-head RoPE), seed 8
    gemma3-tiny/                Gemma3ForCausalLM (q/k norms, local and global RoPE), seed 9
    neox-tiny/                  GPTNeoXForCausalLM (Pythia's layout: parallel residual,
                                RoPE on a quarter of each head), seed 10
        config.json             as written by save_pretrained
        generation_config.json  as written by save_pretrained
        model.safetensors       as written by save_pretrained (float32)
        tokenizer.json          copy of the shared tokenizer
        expected.json           reference outputs, see below

    expected.json keys:
        model_type, attn_implementation, dtype
        sequences: [{input_ids: [...], logits: [[...]*vocab]*len}, ...]
                    (3 sequences of lengths 5, 9, 16; logits are float32
                    values written with Python's shortest round-trip repr of
                    the float32 value converted to float64, i.e. exact)
        greedy:    {prompt_ids: first 4 ids of sequence 0,
                    max_new_tokens: 8, eos_token_id: 0,
                    output_ids: model.generate(prompt, max_new_tokens=8,
                                do_sample=False) -- prompt + new tokens;
                                HF stops right after emitting eos, so this
                                can be shorter than 4 + 8,
                    eos_hit: whether the eos token was generated,
                    argmax_ids: prompt + 8 tokens of a plain argmax loop
                                that ignores eos (output_ids is its prefix)}
        last_logprobs: log_softmax(logits[0, -1]) for sequence 0 (vocab floats)
        loss:      {sequence_index: 1, value: model(ids, labels=ids).loss}
                   (mean next-token cross-entropy, labels shifted inside HF)
        param_init: how the weights were initialised (see below)

WEIGHTS
    After constructing each model under torch.manual_seed(seed) the script
    re-initialises every parameter explicitly (so the fixtures do not depend on
    transformers' init scheme and so biases / norm weights are *not* the
    trivial 0 / 1 -- a Rust port that ignores a bias must fail):
        2-D weights (embeddings, linear, Conv1D): normal(0, 0.2)
        norm weights (LayerNorm / RMSNorm):       1 + normal(0, 0.1)
        biases (incl. LayerNorm bias):            normal(0, 0.1)
    in model.named_parameters() order (tied weights appear once).

DETERMINISM
    Fixed seeds everywhere, single thread, deterministic algorithms; running it
    twice produces byte-identical files with the same library versions. The
    script pins no versions; it records them in versions.json. Regenerating
    with other versions may change the bytes (e.g. config.json's
    transformers_version) -- the Rust tests should use tolerances (~1e-5 abs)
    rather than bit equality for logits anyway.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import shutil
import sys
from pathlib import Path

import numpy
import safetensors
import tokenizers
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    Phi3Config,
    Phi3ForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
)

VOCAB_SIZE = 96
EOS_TOKEN = "<|endoftext|>"
ATTN_IMPL = "eager"  # plain softmax(QK^T/sqrt(d) + mask) V, what a port implements

# Fixed input id sequences (ids < VOCAB_SIZE), lengths 5, 9, 16.
SEQUENCES = [
    [17, 42, 5, 88, 63],
    [3, 95, 27, 27, 60, 11, 74, 1, 50],
    [0, 12, 34, 56, 78, 90, 21, 43, 65, 87, 9, 31, 53, 75, 94, 2],
]
GREEDY_PROMPT_LEN = 4
GREEDY_NEW_TOKENS = 8

# --------------------------------------------------------------------------- #
# Tokenizer
# --------------------------------------------------------------------------- #

_WORDS = (
    "the a an model reward policy value train step loss token text human "
    "answer question good bad better best small tiny fast slow learn rate "
    "batch epoch gradient update sample prompt reply chosen rejected score "
    "is are was be to of and in on for with that this it not"
).split()


def make_corpus(n_lines: int = 400, seed: int = 1234) -> list[str]:
    """A few hundred lines over a small alphabet (lowercase, digits, ' .,?!')."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 12))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words) + 1), str(rng.randint(0, 999)))
        line = " ".join(words)
        line += rng.choice([".", "?", "!", ",", ""])
        lines.append(line)
    return lines


def train_tokenizer(corpus: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[EOS_TOKEN],
        # Deliberately NOT ByteLevel.alphabet() (256 symbols > vocab 96): the
        # alphabet is only the byte-symbols seen in the corpus.
        initial_alphabet=[],
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.no_padding()
    tok.no_truncation()
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    assert tok.token_to_id(EOS_TOKEN) == 0
    return tok


# --------------------------------------------------------------------------- #
# Models
# --------------------------------------------------------------------------- #


def reinit_params(model: torch.nn.Module) -> list[str]:
    """Explicit deterministic init (uses the global torch RNG)."""
    notes = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
                kind = "normal(0,0.2)"
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.1)
                kind = "normal(0,0.1)"
            else:  # 1-D weight: LayerNorm / RMSNorm scale
                p.normal_(0.0, 0.1).add_(1.0)
                kind = "1+normal(0,0.1)"
            notes.append(f"{name}: {kind}")
    return notes


def gpt2_tiny(eos_id: int) -> GPT2LMHeadModel:
    cfg = GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_inner=None,  # -> 4 * n_embd = 128
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    cfg._attn_implementation = ATTN_IMPL
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg)
    model.param_init = reinit_params(model)
    return model


def llama_tiny(eos_id: int) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=32,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    cfg._attn_implementation = ATTN_IMPL
    torch.manual_seed(1)
    model = LlamaForCausalLM(cfg)
    model.param_init = reinit_params(model)
    return model


def qwen2_tiny(eos_id: int) -> Qwen2ForCausalLM:
    """Qwen2: Llama's layout with biases on q, k and v (not o), a tied head as in
    Qwen2.5-0.5B, GQA."""
    cfg = Qwen2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=32,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        use_sliding_window=False,
        attention_dropout=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    cfg._attn_implementation = ATTN_IMPL
    torch.manual_seed(2)
    model = Qwen2ForCausalLM(cfg)
    model.param_init = reinit_params(model)
    return model


def qwen3_tiny(eos_id: int) -> Qwen3ForCausalLM:
    """Qwen3: per-head RMSNorm of q and k, a head size (16) that is not hidden / heads (8),
    a tied head as in Qwen3-0.6B."""
    cfg = Qwen3Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        hidden_act="silu",
        max_position_embeddings=32,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        attention_bias=False,
        use_sliding_window=False,
        attention_dropout=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    cfg._attn_implementation = ATTN_IMPL
    torch.manual_seed(5)
    model = Qwen3ForCausalLM(cfg)
    model.param_init = reinit_params(model)
    return model


def mistral_tiny(eos_id: int) -> MistralForCausalLM:
    """Mistral without a sliding window (as Mistral 7B v0.3): Llama's layout."""
    cfg = MistralConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=32,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        sliding_window=None,
        tie_word_embeddings=False,
        attention_dropout=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    cfg._attn_implementation = ATTN_IMPL
    torch.manual_seed(3)
    model = MistralForCausalLM(cfg)
    model.param_init = reinit_params(model)
    return model


def mistral_window_tiny(eos_id: int) -> MistralForCausalLM:
    """Mistral with a sliding window of 4 (Mistral 7B v0.1 has 4096), shorter than the
    test sequences, so that the window decides logits and greedy decoding."""
    model = mistral_tiny(eos_id)
    cfg = model.config
    cfg.sliding_window = 4
    torch.manual_seed(6)
    model = MistralForCausalLM(cfg)
    model.param_init = reinit_params(model)
    return model


def gemma2_tiny(eos_id: int) -> Gemma2ForCausalLM:
    """Gemma 2: scaled embeddings, 1 + w norms, four norms a layer, a tanh-GELU MLP, soft
    caps small enough to bite (attention 2, logits 3), q k^T scaled by 24^-1/2 with a head
    size of 16, a window of 4 on the first layer only."""
    cfg = Gemma2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=32,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        query_pre_attn_scalar=24,
        sliding_window=4,
        attn_logit_softcapping=2.0,
        final_logit_softcapping=3.0,
        tie_word_embeddings=True,
        attention_bias=False,
        attention_dropout=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    cfg._attn_implementation = ATTN_IMPL
    torch.manual_seed(7)
    model = Gemma2ForCausalLM(cfg)
    model.param_init = reinit_params(model)
    return model


def gemma3_tiny(eos_id: int) -> Gemma3ForCausalLM:
    """Gemma 3 (text): per-head q/k norms, windowed layers (4) rotating with base 10^4 and a
    full layer with 10^6, no soft caps."""
    cfg = Gemma3TextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=32,
        rms_norm_eps=1e-6,
        query_pre_attn_scalar=24,
        sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        tie_word_embeddings=True,
        attention_bias=False,
        attention_dropout=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    cfg._attn_implementation = ATTN_IMPL
    torch.manual_seed(9)
    model = Gemma3ForCausalLM(cfg)
    model.param_init = reinit_params(model)
    return model


def neox_tiny(eos_id: int) -> GPTNeoXForCausalLM:
    """GPT-NeoX as Pythia lays it out: the parallel residual, q/k/v fused head by head,
    RoPE on a quarter of each head, exact GELU, an untied `embed_out`."""
    cfg = GPTNeoXConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        hidden_act="gelu",
        rotary_pct=0.25,
        rotary_emb_base=10000,
        max_position_embeddings=32,
        layer_norm_eps=1e-5,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )
    cfg._attn_implementation = ATTN_IMPL
    torch.manual_seed(10)
    model = GPTNeoXForCausalLM(cfg)
    model.param_init = reinit_params(model)
    return model


def phi3_tiny(eos_id: int) -> Phi3ForCausalLM:
    """Phi-3 layout (fused qkv_proj and gate_up_proj) with RoPE on half of each head, as
    Phi-4-mini rotates part of its heads."""
    cfg = Phi3Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=32,
        original_max_position_embeddings=32,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        partial_rotary_factor=0.5,
        sliding_window=None,
        tie_word_embeddings=False,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attention_dropout=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    cfg._attn_implementation = ATTN_IMPL
    torch.manual_seed(8)
    model = Phi3ForCausalLM(cfg)
    model.param_init = reinit_params(model)
    return model


def llama3_tiny(eos_id: int) -> LlamaForCausalLM:
    """Llama 3's rotary scaling (`rope_type: llama3`, as Llama 3.1/3.2), with an original
    context of 8 so that the test sequences reach the scaled frequencies."""
    cfg = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        hidden_act="silu",
        max_position_embeddings=32,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8,
        },
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    cfg._attn_implementation = ATTN_IMPL
    torch.manual_seed(4)
    model = LlamaForCausalLM(cfg)
    model.param_init = reinit_params(model)
    return model


# --------------------------------------------------------------------------- #
# Reference outputs
# --------------------------------------------------------------------------- #


def f32_list(t: torch.Tensor):
    """float32 tensor -> nested lists of Python floats (exact, full repr)."""
    assert t.dtype == torch.float32
    return t.detach().cpu().double().tolist()


@torch.no_grad()
def manual_greedy(model, prompt: torch.Tensor, n: int) -> list[int]:
    ids = prompt.clone()
    for _ in range(n):
        logits = model(ids).logits[:, -1, :]
        nxt = logits.argmax(dim=-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids[0].tolist()


@torch.no_grad()
def reference_outputs(model, model_type: str) -> dict:
    model.eval()
    out: dict = {
        "model_type": model_type,
        "attn_implementation": ATTN_IMPL,
        "dtype": "float32",
        "sequences": [],
    }
    for seq in SEQUENCES:
        ids = torch.tensor([seq], dtype=torch.long)
        logits = model(ids).logits[0]
        assert logits.shape == (len(seq), VOCAB_SIZE)
        out["sequences"].append({"input_ids": seq, "logits": f32_list(logits)})

    eos = model.config.eos_token_id
    prompt = torch.tensor([SEQUENCES[0][:GREEDY_PROMPT_LEN]], dtype=torch.long)
    gen = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=GREEDY_NEW_TOKENS,
        do_sample=False,
        pad_token_id=eos,
    )[0].tolist()
    new = gen[GREEDY_PROMPT_LEN:]
    eos_hit = eos in new
    argmax_ids = manual_greedy(model, prompt, GREEDY_NEW_TOKENS)
    # generate() (KV cache, stops after emitting eos) must be a prefix of the
    # plain full-recompute argmax loop (which never stops early).
    assert argmax_ids[: len(gen)] == gen, (gen, argmax_ids)
    assert eos_hit or len(gen) == GREEDY_PROMPT_LEN + GREEDY_NEW_TOKENS
    out["greedy"] = {
        "prompt_ids": prompt[0].tolist(),
        "max_new_tokens": GREEDY_NEW_TOKENS,
        "eos_token_id": eos,
        "output_ids": gen,
        "eos_hit": eos_hit,
        "argmax_ids": argmax_ids,
    }

    ids0 = torch.tensor([SEQUENCES[0]], dtype=torch.long)
    last = model(ids0).logits[0, -1]
    out["last_logprobs"] = f32_list(torch.log_softmax(last, dim=-1))

    ids1 = torch.tensor([SEQUENCES[1]], dtype=torch.long)
    loss = model(ids1, labels=ids1).loss
    out["loss"] = {
        "sequence_index": 1,
        "value": float(loss.item()),
        "definition": "mean over positions t=0..n-2 of -log_softmax(logits[t])[ids[t+1]]",
    }
    out["param_init"] = model.param_init
    return out


def tokenizer_samples(tok: Tokenizer) -> dict:
    texts = [
        "the reward model is good.",
        "train the policy with 42 prompts!",
        "chosen and rejected reply",
        " leading space, trailing space ",
        "the tiny model<|endoftext|>",
    ]
    samples = []
    for t in texts:
        enc = tok.encode(t)
        samples.append(
            {
                "text": t,
                "ids": enc.ids,
                "tokens": enc.tokens,
                "decoded": tok.decode(enc.ids, skip_special_tokens=False),
            }
        )
    return {"eos_token": EOS_TOKEN, "eos_id": tok.token_to_id(EOS_TOKEN), "samples": samples}


def dump_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, allow_nan=False) + "\n")


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": numpy.__version__,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_out = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "models"
    ap.add_argument("--out", type=Path, default=default_out)
    ap.add_argument(
        "--only",
        action="append",
        help="write only these model fixtures (e.g. --only qwen2-tiny), leaving the others",
    )
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    tok = train_tokenizer(make_corpus())
    tok_path = out / "tokenizer.json"
    if args.only:
        # The committed tokenizer, so that new fixtures share it with the old ones.
        tok = Tokenizer.from_file(str(tok_path))
    else:
        tok.save(str(tok_path), pretty=True)
        dump_json(out / "tokenizer_expected.json", tokenizer_samples(tok))
    eos_id = tok.token_to_id(EOS_TOKEN)

    for name, build, model_type in (
        ("gpt2-tiny", gpt2_tiny, "gpt2"),
        ("llama-tiny", llama_tiny, "llama"),
        ("qwen2-tiny", qwen2_tiny, "qwen2"),
        ("mistral-tiny", mistral_tiny, "mistral"),
        ("llama3-tiny", llama3_tiny, "llama"),
        ("qwen3-tiny", qwen3_tiny, "qwen3"),
        ("mistral-window-tiny", mistral_window_tiny, "mistral"),
        ("gemma2-tiny", gemma2_tiny, "gemma2"),
        ("phi3-tiny", phi3_tiny, "phi3"),
        ("gemma3-tiny", gemma3_tiny, "gemma3_text"),
        ("neox-tiny", neox_tiny, "gpt_neox"),
    ):
        if args.only and name not in args.only:
            continue
        d = out / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        model = build(eos_id)
        model.eval()
        try:
            model.save_pretrained(str(d), safe_serialization=True)
        except TypeError:  # a transformers that dropped the kwarg (safetensors-only)
            model.save_pretrained(str(d))
        assert (d / "model.safetensors").exists() and (d / "config.json").exists()
        shutil.copyfile(tok_path, d / "tokenizer.json")
        dump_json(d / "expected.json", reference_outputs(model, model_type))

    if args.only:
        # The new fixtures must come from the versions the others did, or say which.
        committed = json.loads((out / "versions.json").read_text())
        if committed != versions():
            for name in args.only:
                dump_json(out / name / "versions.json", versions())
    else:
        dump_json(out / "versions.json", versions())

    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    for p in sorted(out.rglob("*")):
        if p.is_file():
            print(f"{p.stat().st_size:>8}  {p.relative_to(out)}")
    print(f"{total:>8}  total bytes")
    assert total < 2_500_000, "fixtures must stay well under 2.5 MB"
    return 0


if __name__ == "__main__":
    sys.exit(main())
