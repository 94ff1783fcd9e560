"""Benchmark: shared-prefix rank classification vs full forwards, and forward FLOP/s vs peak.

One run on the embedded model, measured side by side (the machine is shared and noisy, so the
ratios are what count):

- `topic` (5 labels): our scoring (prefix once, KV cache reused by every label, lm head only where
  a label token is predicted) against the plain approach of one full forward per label with
  full-vocabulary logits, same examples, same rows per batch. Target speedup >= 2.5.
- forward FLOP/s of a batch 8 x 128 against a measured fp32 2048^2 matmul peak. Target >= 0.6.

    python benchmarks/scoring.py --out scoring.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch

from frozenlm.atomic import atomic_write_json
from frozenlm.backbone import Backbone
from frozenlm.engine.scoring import ScoreRequest, score_batch
from frozenlm.prompts.render import PromptConfig, Prompter
from frozenlm.tasks import load_task


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Fastest wall time of `repeats` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    seconds = best_of(lambda: a @ b, repeats)
    return 2 * n**3 / seconds / 1e9


def forward_flops(backbone: Backbone, batch: int, seq: int) -> float:
    """Matmul FLOPs of a full forward with logits: 2 x weights x tokens, plus attention scores."""
    config = backbone.model.config
    embedding = backbone.vocab_size * backbone.hidden_size
    weights = backbone.num_parameters - embedding  # decoder matmuls
    weights += embedding  # the lm head (tied to the embedding, but a matmul of its own)
    attention = 4 * config.num_hidden_layers * seq * seq * backbone.hidden_size  # QK^T and AV
    return float(batch * (2 * weights * seq + attention))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--examples", type=int, default=32, help="topic test examples to score")
    parser.add_argument("--batch", type=int, default=8, help="rows per forward")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)
    backbone = Backbone.load()
    task = load_task("topic")
    examples = list(task.test)[: args.examples]
    prompter = Prompter(
        task.spec, backbone.tokenizer, PromptConfig(), max_tokens=2048, answer_tokens=8
    )
    prefixes = [prompter.render(ex).ids for ex in examples]
    labels = [prompter.continuation_ids(v) for v in task.spec.labels.values()]
    chunks = [
        range(i, min(i + args.batch, len(prefixes))) for i in range(0, len(prefixes), args.batch)
    ]

    def shared_prefix() -> list[int]:
        predictions = []
        for chunk in chunks:
            scores = score_batch(backbone, [ScoreRequest([prefixes[i]], labels) for i in chunk])
            predictions += [int(s.logprobs.argmax()) for s in scores]
        return predictions

    pad = backbone.tokenizer.pad_token_id
    rows = [
        (i, k, prefixes[i] + label) for i in range(len(prefixes)) for k, label in enumerate(labels)
    ]

    @torch.no_grad()
    def full_forwards() -> list[int]:
        """The plain approach: one row per (example, label), full-vocabulary logits everywhere."""
        scores = torch.zeros(len(prefixes), len(labels))  # [N, K]
        for start in range(0, len(rows), args.batch):
            part = rows[start : start + args.batch]
            width = max(len(ids) for _, _, ids in part)
            ids = torch.tensor([[pad] * (width - len(r)) + r for _, _, r in part])  # [b, T]
            pads = torch.tensor([width - len(r) for _, _, r in part])[:, None]  # [b, 1]
            mask = (torch.arange(width)[None] >= pads).long()  # [b, T]
            positions = (mask.cumsum(1) - 1).clamp(min=0)
            logits = backbone.model(
                input_ids=ids, attention_mask=mask, position_ids=positions
            ).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)  # [b, T, V]
            for r, (i, k, _) in enumerate(part):
                label = torch.tensor(labels[k])
                span = logprobs[r, width - len(label) - 1 : width - 1]  # [L, V]
                scores[i, k] = span.gather(1, label[:, None]).sum()
        return scores.argmax(dim=1).tolist()

    same_predictions = shared_prefix() == full_forwards()
    shared_s = best_of(shared_prefix, args.repeats)
    full_s = best_of(full_forwards, args.repeats)

    batch, seq = 8, 128
    ids = torch.randint(0, backbone.vocab_size, (batch, seq))
    with torch.no_grad():
        forward_s = best_of(lambda: backbone.model(input_ids=ids).logits, args.repeats)
    forward_gflops = forward_flops(backbone, batch, seq) / forward_s / 1e9
    peak = matmul_peak_gflops()

    result = {
        "backbone": backbone.name,
        "examples": len(examples),
        "labels": len(labels),
        "label_tokens": [len(label) for label in labels],
        "mean_prefix_tokens": sum(map(len, prefixes)) / len(prefixes),
        "shared_prefix_s": shared_s,
        "full_forwards_s": full_s,
        "speedup": full_s / shared_s,
        "same_predictions": same_predictions,
        "forward_batch": [batch, seq],
        "forward_s": forward_s,
        "forward_gflops": forward_gflops,
        "matmul_peak_gflops": peak,
        "fraction_of_peak": forward_gflops / peak,
        "threads": torch.get_num_threads(),
    }
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
