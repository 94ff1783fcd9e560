"""Input-dependent prompt tuning (ID-PT; Levine et al., AI21 2022): a small network reads each
input and writes the soft prompt for it, so one generator serves many tasks on one frozen model.

The generator reads the task's instruction and the formatted input (never a task id), encoded by
a frozen encoder, either the backbone's own token embeddings or the packaged MiniLM sentence
encoder. P learned queries cross-attend to that encoding through one or two transformer decoder
layers (torch's `nn.TransformerDecoderLayer`), and a projection maps them to the backbone's
hidden size. The projection starts at zero and adds to a learned base prompt, so an untrained
generator is the shared soft prompt of its tasks and training learns what the input should
change.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from frozenlm.backbone import Backbone
from frozenlm.devices import seeded_rng
from frozenlm.errors import CheckpointError, ConfigError
from frozenlm.plugins.protocol import Conditioning, SoftPosition, count_trainable
from frozenlm.plugins.soft_prompt import SoftPromptConfig, initial_prompt
from frozenlm.tasks import Example, TaskSpec


class EncoderKind(StrEnum):
    """The frozen encoder the generator reads the input through."""

    BACKBONE = "backbone-embeddings"
    """The frozen backbone's token embeddings (no context; costs one table lookup)."""
    MINILM = "minilm"
    """The packaged all-MiniLM-L6-v2 encoder's last hidden states (6 layers, 384-dim)."""


@dataclass(frozen=True)
class PromptGeneratorConfig:
    """Shape of an ID-PT prompt generator."""

    length: int = 20
    """Soft tokens P it writes per input (the soft prompt's default length)."""
    encoder: EncoderKind = EncoderKind.MINILM
    """Frozen encoder of the input. MiniLM, by measurement on the embedded model (README, ID-PT):
    at the same budget its generator reached mean test accuracy 0.527 on the four built-in
    classification tasks against 0.438 with the backbone's embeddings, which carry no context;
    the backbone's embeddings cost nothing to compute and need no second model."""
    width: int = 256
    """Width of the queries and of the attention layers."""
    layers: int = 1
    """Decoder layers (self-attention over the queries, cross-attention to the input, MLP)."""
    heads: int = 4
    """Attention heads."""
    ffn: int = 512
    """Hidden width of each layer's MLP."""
    max_input_tokens: int = 128
    """Encoder tokens read per input (instruction first, so a long input loses its tail)."""
    dropout: float = 0.0
    """Dropout inside the decoder layers."""
    network_lr_scale: float = 1 / 300
    """The network's learning rate as a fraction of the base prompt's: the base prompt learns at
    Lester's soft-prompt rate (Adafactor 0.3), the network at 0.3 / 300 = 1e-3, a usual rate
    for a small transformer."""
    position: SoftPosition = SoftPosition.START
    """Where the written prompt sits in each row (see `SoftPosition`). Before everything by
    measurement, unlike the soft prompt (docs/results/quality/recipe.md): in the quick budget
    on sentiment at 128 rows, test accuracy 0.700 / 0.525 / 0.688 over seeds 0-2 at `start`
    against 0.287 / 0.500 / 0.725 right before the input. Checkpoints saved before the option
    existed were trained before everything and load there."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder", EncoderKind(self.encoder))
        object.__setattr__(self, "position", SoftPosition(self.position))
        for name in ("length", "width", "layers", "heads", "ffn", "max_input_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"prompt generator {name} must be at least 1")
        if self.width % self.heads:
            raise ConfigError(f"width {self.width} is not divisible by {self.heads} heads")


def generator_text(spec: TaskSpec, example: Example) -> str:
    """What the generator reads: the task's instruction, then the formatted input."""
    return f"{spec.instruction}\n{spec.format_input(example)}"


class InputEncoder(Protocol):
    """A frozen encoder: texts -> states [B, L, E] and mask [B, L] (True on real tokens)."""

    width: int
    name: str

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]: ...


def _pad(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad [L_b, E] rows into states [B, L, E] and a mask [B, L]."""
    states = pad_sequence(list(rows), batch_first=True)  # [B, L, E], zeros after each row
    lengths = torch.tensor([int(r.shape[0]) for r in rows], device=states.device)
    columns = torch.arange(states.shape[1], device=states.device).unsqueeze(0)  # [1, L]
    mask = columns < lengths.unsqueeze(1)  # [B, L]
    return states, mask


class BackboneEmbeddingEncoder:
    """The backbone's frozen token embeddings of the text: a lookup, nothing to cache."""

    name = EncoderKind.BACKBONE.value

    def __init__(self, backbone: Backbone, max_tokens: int) -> None:
        self.backbone, self.max_tokens = backbone, max_tokens
        self.width = backbone.hidden_size

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokenizer = self.backbone.tokenizer
        ids = [
            tokenizer.encode(t, add_special_tokens=False)[: self.max_tokens] or [0] for t in texts
        ]
        flat_ids = torch.tensor([i for row in ids for i in row], device=self.backbone.device)
        flat = self.backbone.embed(flat_ids).float()  # [N, E]
        return _pad(torch.split(flat, [len(row) for row in ids]))


class MiniLMEncoder:
    """The packaged MiniLM's last hidden states, cached per text (it is frozen, and training
    and dev evaluation read the same inputs again)."""

    name = EncoderKind.MINILM.value

    def __init__(self, max_tokens: int, cache_size: int = 4096, path: str | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        from frozenlm.backbone import quiet_loading
        from frozenlm.prompts.demos import default_encoder_path

        folder = path or default_encoder_path()
        with quiet_loading():
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            self.model = AutoModel.from_pretrained(folder).eval().requires_grad_(False)
        self.max_tokens, self.cache_size = max_tokens, cache_size
        self.width = int(self.model.config.hidden_size)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            batch = self.tokenizer(
                missing,
                truncation=True,
                max_length=self.max_tokens,
                padding=True,
                return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state  # [N, L, E]
            for text, states, mask in zip(missing, hidden, batch["attention_mask"], strict=True):
                self._cache[text] = states[mask.bool()].clone()  # [L_t, E]
        rows = []
        for text in texts:
            self._cache.move_to_end(text)
            rows.append(self._cache[text])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return _pad(rows)


def make_encoder(config: PromptGeneratorConfig, backbone: Backbone) -> InputEncoder:
    if config.encoder is EncoderKind.MINILM:
        return MiniLMEncoder(config.max_input_tokens)
    return BackboneEmbeddingEncoder(backbone, config.max_input_tokens)


def query_decoder(
    width: int, heads: int, ffn: int, layers: int, dropout: float
) -> nn.TransformerDecoder:
    """Learned queries that attend to themselves and to a memory (torch's pre-norm decoder
    layers), with a final LayerNorm: the network of the ID-PT generator and of the connector."""
    layer = nn.TransformerDecoderLayer(
        width, heads, dim_feedforward=ffn, dropout=dropout, batch_first=True, norm_first=True
    )
    return nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(width))


def zero_projection(width: int, hidden_size: int) -> nn.Linear:
    """A projection into the backbone's embedding space that starts at zero, so a network
    writing through it first adds nothing to what it writes onto."""
    linear = nn.Linear(width, hidden_size)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


def check_state_shapes(
    module: nn.Module, tensors: Mapping[str, torch.Tensor], kind: str, hidden_size: int
) -> None:
    """Refuse saved tensors whose names or shapes differ from `module`'s, naming the first."""
    expected = {n: tuple(p.shape) for n, p in module.state_dict().items()}
    got = {n: tuple(t.shape) for n, t in tensors.items()}
    if expected == got:
        return
    wrong = sorted(set(expected) ^ set(got)) or [n for n in expected if expected[n] != got[n]]
    name = wrong[0]
    raise CheckpointError(
        f"{kind} tensor '{name}' is {list(got.get(name, ()))} in the checkpoint but "
        f"{list(expected.get(name, ()))} for this config and backbone (hidden size {hidden_size})"
    )


class PromptGenerator(nn.Module):
    """Writes a soft prompt [P, D] for each input from its instruction and text."""

    method = "id-pt"
    reads_input = True
    serves_any_task = True  # it reads the instruction, so it can be asked about unseen tasks

    def __init__(
        self, config: PromptGeneratorConfig, encoder: InputEncoder, hidden_size: int
    ) -> None:
        super().__init__()
        self.config = config
        self._encoder = [encoder]  # in a list: frozen, never a submodule, never saved
        width = config.width
        self.read = nn.Linear(encoder.width, width)  # encoder states -> generator width
        self.positions = nn.Parameter(torch.zeros(config.max_input_tokens, width))  # [L, W]
        self.queries = nn.Parameter(torch.randn(config.length, width) * 0.02)  # [P, W]
        self.decoder = query_decoder(width, config.heads, config.ffn, config.layers, config.dropout)
        self.write = zero_projection(width, hidden_size)  # -> the backbone's embedding space
        self.base = nn.Parameter(torch.zeros(config.length, hidden_size))  # [P, D]

    @classmethod
    def from_config(
        cls,
        config: PromptGeneratorConfig,
        backbone: Backbone,
        specs: Sequence[TaskSpec],
        seed: int,
    ) -> PromptGenerator:
        """A new generator that writes, for every input, the shared soft prompt of `specs`
        (Lester's class-label init over all their labels) until training teaches it more."""
        with seeded_rng(seed):  # seeded weights (built on the CPU); the caller's RNG untouched
            generator = cls(config, make_encoder(config, backbone), backbone.hidden_size)
        shared = SoftPromptConfig(length=config.length, shared=True)
        with torch.no_grad():
            generator.base.copy_(initial_prompt(backbone, shared, specs, seed))
        return generator

    @classmethod
    def from_tensors(
        cls, tensors: Mapping[str, torch.Tensor], config: PromptGeneratorConfig, backbone: Backbone
    ) -> PromptGenerator:
        """A saved generator; a tensor of the wrong name or shape is refused in one sentence."""
        generator = cls(config, make_encoder(config, backbone), backbone.hidden_size)
        check_state_shapes(generator, tensors, "prompt generator", backbone.hidden_size)
        generator.load_state_dict(dict(tensors))
        return generator

    @property
    def encoder(self) -> InputEncoder:
        return self._encoder[0]

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Soft prompts [B, P, D] for the texts."""
        states, mask = self.encoder.encode(texts)  # [B, L, E], [B, L]
        device = self.base.device  # the encoder may run elsewhere (MiniLM stays on the CPU)
        states, mask = states.to(device=device, dtype=self.base.dtype), mask.to(device)
        length = states.shape[1]
        memory = self.read(states) + self.positions[:length]  # [B, L, W]
        queries = self.queries.unsqueeze(0).expand(len(texts), -1, -1)  # [B, P, W]
        out = self.decoder(queries, memory, memory_key_padding_mask=~mask)  # [B, P, W]
        return self.base + self.write(out)  # [B, P, D]

    def soft_tokens(self, task: TaskSpec, examples: Sequence[Example]) -> list[torch.Tensor]:
        """The prompt [P, D] written for each example of `task` (any task: it reads the text)."""
        if not examples:
            return []
        return list(self([generator_text(task, ex) for ex in examples]).unbind(0))

    def condition(self, task: TaskSpec, examples: Sequence[Example]) -> list[Conditioning]:
        """Each example's written prompt, at `config.position`."""
        position = self.config.position
        return [
            Conditioning(tokens, position=position) for tokens in self.soft_tokens(task, examples)
        ]

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer groups: the base prompt at `lr`, the network at `lr * network_lr_scale`."""
        network = [p for n, p in self.named_parameters() if n != "base" and p.requires_grad]
        groups = [{"params": network, "lr": lr * self.config.network_lr_scale}]
        if self.base.requires_grad:
            groups.insert(0, {"params": [self.base], "lr": lr})
        return groups

    def tensors(self) -> dict[str, torch.Tensor]:
        return {n: t.detach().clone() for n, t in self.state_dict().items()}

    def num_trainable(self) -> int:
        return count_trainable(self)
