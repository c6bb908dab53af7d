#!/usr/bin/env python3
"""Check a reward model hone saved against transformers, both ways.

    python scripts/check_hf_reward_model.py DIR EXPECTED_JSON OUT_DIR [--and DIR EXPECTED_JSON OUT_DIR ...]

DIR is a reward model hone wrote (`*ForSequenceClassification` config, `score.weight`).
EXPECTED_JSON holds {"sequences": [[ids...], ...], "rewards": [r, ...]}: hone's reward of
each sequence (the head on the last token). This loads DIR with
`AutoModelForSequenceClassification`, checks its logits against those rewards within
1e-4, and saves the model again with `save_pretrained` into OUT_DIR (a transformers
checkpoint, without the LM head) for hone to load back. Prints one JSON line; exit 1 when
a check fails. Needs torch and transformers (CONTRIBUTING.md, "The transformers round
trip").
"""
import json
import sys

import torch
from transformers import AutoModelForSequenceClassification


def main(argv) -> int:
    directory, expected_path, out = argv
    expected = json.load(open(expected_path))
    model = AutoModelForSequenceClassification.from_pretrained(directory, attn_implementation="eager")
    model.eval()
    failures = []
    if type(model).__name__ not in json.load(open(f"{directory}/config.json"))["architectures"]:
        failures.append(f"loaded as {type(model).__name__}")
    diffs = []
    with torch.no_grad():
        for seq, want in zip(expected["sequences"], expected["rewards"]):
            got = float(model(torch.tensor([seq])).logits[0, 0])
            diffs.append(abs(got - want))
    if max(diffs) > 1e-4:
        failures.append(f"rewards differ by up to {max(diffs)}")
    model.save_pretrained(out)
    print(json.dumps({"class": type(model).__name__, "max_abs_diff": max(diffs), "failures": failures}))
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
