#!/usr/bin/env python3
"""The PyTorch twin of hone's sft stage in benches/lora_05b/run.sh: transformers (and
PEFT for LoRA) fine-tuning the same model on the same demonstrations, formatted the same
way, with the same batch size, steps, optimiser and LoRA settings.

    python torch_sft.py DIR {lora,full} BATCH STEPS

Prints one JSON line: target tokens per second of the training loop (the completion
tokens whose prediction counts in the loss, the figure hone's sft logs as items_per_s),
the loop's seconds, and the peak resident memory of the process (ru_maxrss).
"""
import json
import random
import resource
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_model import exchange  # noqa: E402


def main() -> int:
    out, mode, batch, steps = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(2)
    torch.manual_seed(1)
    model_dir = out / "qwen2.5-0.5b-shape"
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"),
        )
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    # hone's AdamW settings for sft: lr 2e-4 here, weight decay 0.0 (hone's default), clip 1.0.
    optim = torch.optim.AdamW(trainable, lr=2e-4, weight_decay=0.0)
    examples = []
    for line in open(out / "demos.jsonl"):
        demo = json.loads(line)
        examples.append(exchange(tok, demo["prompt"], demo["completion"]))
    random.Random(1).shuffle(examples)
    pad = tok.convert_tokens_to_ids("<|endoftext|>")
    counted = 0
    started = time.perf_counter()
    for step in range(steps):
        chosen = examples[step * batch : (step + 1) * batch]
        length = max(len(ids) for ids, _ in chosen) - 1
        inputs, labels = [], []
        for ids, start in chosen:
            row = ids[:-1] + [pad] * (length - len(ids) + 1)
            target = [t if i + 1 >= start else -100 for i, t in enumerate(ids[1:])]
            target += [-100] * (length - len(target))
            inputs.append(row)
            labels.append(target)
        inputs = torch.tensor(inputs)
        labels = torch.tensor(labels)
        logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        counted += int((labels != -100).sum())
        print(f"step {step + 1}/{steps} loss {loss.item():.4f}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "trainer": f"torch+{'peft' if mode == 'lora' else 'full'}",
                "mode": mode,
                "trainable_params": sum(p.numel() for p in trainable),
                "target_tokens": counted,
                "seconds": round(seconds, 2),
                "target_tokens_per_s": round(counted / seconds, 2),
                "peak_rss_mib": round(peak_kib / 1024),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
