"""Greedy decoding (or sampling at a temperature) with a KV cache, stop sequences and a
max-new-tokens limit.

Prefixes are rows of pieces (token ids and soft tokens, see `splice`), so a soft prompt or a
generated prompt decodes the same way as plain text. Each step feeds one token per row and
applies the lm head to that position only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from frozenlm.backbone import Backbone
from frozenlm.engine.prefix_cache import PrefixCache
from frozenlm.engine.splice import Piece, splice


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode."""

    max_new_tokens: int = 32
    """Upper bound on generated tokens per row."""
    stop: tuple[str, ...] = ("\n",)
    """Decoding of a row ends at the first of these strings (not included in the output)."""
    use_cache: bool = True
    """Reuse keys/values of earlier positions; False recomputes the whole sequence every step
    (a reference for tests)."""
    top_logprobs: int = 0
    """Keep the log-probabilities of this many most likely tokens at every step (0: none)."""
    temperature: float = 0.0
    """0: greedy; above 0: sample each token from the softmax of the logits / temperature."""
    seed: int = 0
    """Seed of sampling (a generator of its own: the caller's RNG is untouched)."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be 0 (greedy) or more, got {self.temperature}")


@dataclass
class Generation:
    """One row's continuation, with the log-probability of each generated token."""

    text: str
    """The continuation, cut at the first stop string, stripped."""
    tokens: list[int] = field(default_factory=list)
    """Generated token ids (an end token is not included)."""
    logprobs: list[float] = field(default_factory=list)
    """Log-probability of each generated token."""
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    """Per step, the `top_logprobs` most likely (token id, log-probability) pairs."""


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def end_tokens(backbone: Backbone) -> set[int]:
    """Token ids that end a generation: the tokenizer's and the model config's end tokens."""
    configured = getattr(backbone.model.config, "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return {int(i) for i in [backbone.tokenizer.eos_token_id, *ids] if i is not None}


def generate(
    backbone: Backbone,
    prefixes: Sequence[Sequence[Piece]],
    config: GenerationConfig,
    shared: PrefixCache | None = None,
) -> list[str]:
    """Greedy continuation text of each prefix, cut at the first stop string or end token.

    With `shared`, every prefix continues after that cached prefix (e.g. a task's soft prompt).
    """
    return [g.text for g in generate_detailed(backbone, prefixes, config, shared)]


@torch.no_grad()
def generate_detailed(
    backbone: Backbone,
    prefixes: Sequence[Sequence[Piece]],
    config: GenerationConfig,
    shared: PrefixCache | None = None,
) -> list[Generation]:
    """`generate`, keeping each generated token and its log-probability (and the most likely
    alternatives when `config.top_logprobs` > 0). With `config.temperature` > 0 tokens are
    sampled; their log-probabilities are still those of the untempered model."""
    batch = splice(backbone, prefixes)
    if shared is not None:
        if not config.use_cache:
            raise ValueError("a shared prefix cache needs use_cache=True")
        batch = shared.after(batch)
    eos = end_tokens(backbone)
    rows = len(prefixes)
    out = [Generation("") for _ in range(rows)]
    done = [False] * rows

    cache = backbone.new_cache() if config.use_cache else None
    if shared is not None:
        cache = shared.expand(backbone, rows)
    sampler = None
    if config.temperature > 0:
        sampler = torch.Generator(device=backbone.device).manual_seed(config.seed)
    embeds, mask, positions = batch.embeds, batch.attention_mask, batch.position_ids
    hidden = backbone.forward(embeds, mask, positions, cache)
    next_positions = batch.lengths.unsqueeze(1)  # [B, 1]
    for _ in range(config.max_new_tokens):
        logits = backbone.lm_logits(hidden[:, -1])  # [B, V]
        logprobs = torch.log_softmax(logits, dim=-1)
        if sampler is None:
            tokens = logprobs.argmax(dim=-1)  # [B]
        else:
            probs = torch.softmax(logits / config.temperature, dim=-1)
            tokens = torch.multinomial(probs, 1, generator=sampler).squeeze(1)
        top = logprobs.topk(config.top_logprobs, dim=-1) if config.top_logprobs else None
        for b in range(rows):
            if done[b]:
                continue
            token = int(tokens[b])
            if token in eos:
                done[b] = True
                continue
            row = out[b]
            row.tokens.append(token)
            row.logprobs.append(float(logprobs[b, token]))
            if top is not None:
                pairs = zip(top.indices[b].tolist(), top.values[b].tolist(), strict=True)
                row.top.append([(int(i), float(v)) for i, v in pairs])
            text = backbone.tokenizer.decode(row.tokens, skip_special_tokens=True)
            row.text, done[b] = cut_at_stop(text, config.stop)
        if all(done):
            break
        new_embeds = backbone.embed(tokens.unsqueeze(1))  # [B, 1, D]
        mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
        if cache is not None:
            hidden = backbone.forward(new_embeds, mask, next_positions, cache)
        else:
            embeds = torch.cat([embeds, new_embeds.to(embeds.dtype)], dim=1)
            positions = torch.cat([positions, next_positions], dim=1)
            hidden = backbone.forward(embeds, mask, positions)
        next_positions = next_positions + 1
    for row in out:
        row.text = row.text.strip()
    return out
