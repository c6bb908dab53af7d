#!/usr/bin/env python3
"""Check a LoRA adapter hone saved against PEFT.

    python scripts/check_peft_adapter.py ADAPTER_DIR EXPECTED_JSON [--and ADAPTER_DIR EXPECTED_JSON ...]

ADAPTER_DIR holds `adapter_config.json` and `adapter_model.safetensors` as hone writes
them, its `base_model_name_or_path` a transformers checkpoint directory. EXPECTED_JSON
holds {"ids": [...], "logits": [[...], ...]}: what hone's adapted model computes for
`ids`. This loads the base with `AutoModelForCausalLM`, the adapter with
`PeftModel.from_pretrained` (which must report no missing or unexpected adapter
tensors), compares the logits within 1e-4, and does the same after PEFT's
`merge_and_unload`. Prints one JSON line; exit 1 when a check fails. Needs torch,
transformers and peft (CONTRIBUTING.md, "The transformers round trip").
"""
import json
import sys
import warnings

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def main(argv) -> int:
    adapter_dir, expected_path = argv
    expected = json.load(open(expected_path))
    config = json.load(open(f"{adapter_dir}/adapter_config.json"))
    base = AutoModelForCausalLM.from_pretrained(
        config["base_model_name_or_path"], attn_implementation="eager"
    )
    failures = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, adapter_dir)
    for w in caught:
        text = str(w.message)
        if "missing" in text.lower() or "unexpected" in text.lower():
            failures.append(f"PEFT warned: {text[:300]}")
    model.eval()
    ids = torch.tensor([expected["ids"]])
    want = torch.tensor(expected["logits"])
    with torch.no_grad():
        got = model(ids).logits[0]
        adapted = float((got - want).abs().max())
        # PEFT's adapter must change the base's output, or the check says nothing.
        with model.disable_adapter():
            plain = float((model(ids).logits[0] - want).abs().max())
        merged = model.merge_and_unload()
        merged_diff = float((merged(ids).logits[0] - want).abs().max())
    if adapted > 1e-4:
        failures.append(f"adapted logits differ by up to {adapted}")
    if merged_diff > 1e-4:
        failures.append(f"merged logits differ by up to {merged_diff}")
    if plain < 1e-3:
        failures.append(f"the adapter changes the base's logits by only {plain}")
    print(json.dumps({"max_abs_diff": adapted, "merged_max_abs_diff": merged_diff,
                      "base_differs_by": plain, "failures": failures}))
    return 1 if failures else 0


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
