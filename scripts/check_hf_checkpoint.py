#!/usr/bin/env python3
"""Check that a checkpoint directory (e.g. one saved by hone) loads in HF transformers.

PURPOSE
    hone writes checkpoints as  DIR/config.json + DIR/model.safetensors
    (+ DIR/tokenizer.json). This script loads DIR with
    `AutoModelForCausalLM.from_pretrained(DIR)` and the tokenizer with
    `PreTrainedTokenizerFast(tokenizer_file=DIR/tokenizer.json)`, reports
    missing / unexpected / shape-mismatched tensors, and -- given an
    expected.json as written by scripts/make_model_fixtures.py -- compares the
    model's logits, greedy generation, last-position log-softmax and loss with
    it. The result is printed as one JSON object on stdout.

SETUP
    python3 -m venv /tmp/hone-ref-venv
    /tmp/hone-ref-venv/bin/pip install --progress-bar off \
        torch transformers safetensors tokenizers numpy

USAGE
    /tmp/hone-ref-venv/bin/python scripts/check_hf_checkpoint.py DIR [EXPECTED_JSON] [--and DIR [EXPECTED_JSON] ...]
        [--tol 1e-4] [--attn eager|sdpa] [--dtype float32|keep]

    EXPECTED_JSON defaults to DIR/expected.json when that exists; without one
    only loading, tokenizer round-trip and a smoke forward pass are checked.

    With --attn eager (default) a checkpoint produced by
    make_model_fixtures.py reproduces its expected.json bit-exactly (use
    --tol 0 to assert that); --attn sdpa differs by ~2e-6. For bf16 weights
    (--dtype keep) expect differences of ~1e-1 and loosen --tol.

    Exit status: 0 = ok; 1 = a check failed (max_abs_logit_diff > tol, greedy
    ids differ, missing/unexpected/mismatched tensors, non-finite logits);
    2 = could not load.

OUTPUT (JSON, stdout)
    {"dir", "model_class", "model_type", "dtype", "attn_implementation",
     "num_parameters", "loading_info": {missing_keys, unexpected_keys,
     mismatched_keys}, "tokenizer": {...}, "max_abs_logit_diff",
     "per_sequence": [{len, max_abs_logit_diff}], "greedy_match",
     "last_logprobs_max_abs_diff", "loss", "loss_abs_diff", "tol", "ok",
     "failures": [...]}
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max().item())


def main(argv) -> int:
    ap = argparse.ArgumentParser(description="Load a checkpoint dir in transformers and compare outputs.")
    ap.add_argument("dir", type=Path)
    ap.add_argument("expected", type=Path, nargs="?")
    ap.add_argument("--tol", type=float, default=1e-4, help="max abs logit difference allowed")
    ap.add_argument("--attn", default="eager", choices=["eager", "sdpa"])
    ap.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "keep"],
        help="float32: upcast weights (default); keep: use the dtype stored in the checkpoint",
    )
    args = ap.parse_args(argv)

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)

    d: Path = args.dir
    result: dict = {"dir": str(d), "tol": args.tol, "failures": []}
    fail = result["failures"]

    try:
        kw = {"attn_implementation": args.attn, "output_loading_info": True}
        kw["dtype"] = torch.float32 if args.dtype == "float32" else "auto"
        model, info = AutoModelForCausalLM.from_pretrained(str(d), **kw)
    except Exception as e:  # noqa: BLE001
        result.update(ok=False, error=f"{type(e).__name__}: {e}")
        print(json.dumps(result, indent=1))
        return 2
    model.eval()
    dtype = next(model.parameters()).dtype
    result.update(
        model_class=type(model).__name__,
        model_type=model.config.model_type,
        dtype=str(dtype).replace("torch.", ""),
        attn_implementation=args.attn,
        num_parameters=sum(p.numel() for p in model.parameters()),
        transformers_version=transformers.__version__,
        torch_version=torch.__version__,
    )
    li = {k: sorted(map(str, v)) for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    result["loading_info"] = li
    for k, v in li.items():
        if v:
            fail.append(f"{k}: {v}")

    vocab = model.config.vocab_size
    tok_file = d / "tokenizer.json"
    if tok_file.exists():
        tok = PreTrainedTokenizerFast(tokenizer_file=str(tok_file))
        sample = "the reward model is good."
        ids = tok(sample)["input_ids"]
        back = tok.decode(ids)
        result["tokenizer"] = {
            "vocab_size": len(tok),
            "sample_ids": ids,
            "roundtrip_ok": back == sample,
        }
        if len(tok) > vocab:
            fail.append(f"tokenizer has {len(tok)} tokens > model vocab {vocab}")
        if back != sample:
            fail.append(f"tokenizer round-trip: {back!r} != {sample!r}")
    else:
        result["tokenizer"] = None
        ids = [i % vocab for i in range(1, 9)]

    exp_path = args.expected or (d / "expected.json" if (d / "expected.json").exists() else None)
    with torch.no_grad():
        if exp_path is None:
            logits = model(torch.tensor([ids])).logits.float()
            result["smoke"] = {"input_ids": ids, "logits_shape": list(logits.shape)}
            if not bool(torch.isfinite(logits).all()):
                fail.append("non-finite logits")
        else:
            exp = json.loads(Path(exp_path).read_text())
            result["expected"] = str(exp_path)
            per = []
            for s in exp["sequences"]:
                ids_t = torch.tensor([s["input_ids"]], dtype=torch.long)
                got = model(ids_t).logits[0].float()
                want = torch.tensor(s["logits"], dtype=torch.float64)
                if tuple(got.shape) != tuple(want.shape):
                    fail.append(f"logits shape {tuple(got.shape)} != {tuple(want.shape)}")
                    per.append({"len": len(s["input_ids"]), "max_abs_logit_diff": None})
                    continue
                if not bool(torch.isfinite(got).all()):
                    fail.append("non-finite logits")
                per.append({"len": len(s["input_ids"]), "max_abs_logit_diff": max_abs(got, want)})
            result["per_sequence"] = per
            diffs = [p["max_abs_logit_diff"] for p in per if p["max_abs_logit_diff"] is not None]
            result["max_abs_logit_diff"] = max(diffs) if diffs else None
            if diffs and max(diffs) > args.tol:
                fail.append(f"max_abs_logit_diff {max(diffs)} > tol {args.tol}")

            if "greedy" in exp:
                g = exp["greedy"]
                prompt = torch.tensor([g["prompt_ids"]], dtype=torch.long)
                eos = g.get("eos_token_id", model.generation_config.eos_token_id)
                out = model.generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt),
                    max_new_tokens=g["max_new_tokens"],
                    do_sample=False,
                    pad_token_id=eos,
                    eos_token_id=eos,
                )[0].tolist()
                result["greedy"] = {"got": out, "want": g["output_ids"]}
                result["greedy_match"] = out == g["output_ids"]
                if not result["greedy_match"]:
                    fail.append("greedy ids differ")

            if "last_logprobs" in exp:
                ids0 = torch.tensor([exp["sequences"][0]["input_ids"]], dtype=torch.long)
                lp = torch.log_softmax(model(ids0).logits[0, -1].float(), dim=-1)
                d_lp = max_abs(lp, torch.tensor(exp["last_logprobs"], dtype=torch.float64))
                result["last_logprobs_max_abs_diff"] = d_lp
                if d_lp > args.tol:
                    fail.append(f"last_logprobs diff {d_lp} > tol {args.tol}")

            if "loss" in exp:
                idx = exp["loss"]["sequence_index"]
                ids1 = torch.tensor([exp["sequences"][idx]["input_ids"]], dtype=torch.long)
                loss = float(model(ids1, labels=ids1).loss.item())
                result["loss"] = loss
                result["loss_abs_diff"] = abs(loss - exp["loss"]["value"])
                if not math.isfinite(loss) or result["loss_abs_diff"] > args.tol:
                    fail.append(f"loss diff {result['loss_abs_diff']} > tol {args.tol}")

    result["ok"] = not fail
    print(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


def run_groups(main, argv) -> int:
    """`SCRIPT ARGS [--and ARGS ...]`: one check per group of arguments, in one process
    (torch's import takes seconds); exit 1 when any fails."""
    groups, current = [], []
    for arg in argv:
        if arg == "--and":
            groups.append(current)
            current = []
        else:
            current.append(arg)
    groups.append(current)
    return max(main(group) for group in groups)


if __name__ == "__main__":
    sys.exit(run_groups(main, sys.argv[1:]))
