"""The recursive LM's connector (Levine et al., AI21 2022, "neural recursion"): the frozen model
applied twice.

Pass 1: the frozen backbone reads the input (with an optional frozen soft prompt, e.g. the saturated
one-pass prompt of the task); its hidden states after a chosen layer are cached (`pass_one`). The
connector, a small transformer (N learned queries that attend to themselves and to pass 1's states,
two layers by default), writes N vectors in the backbone's input embedding space. Pass 2: the same
frozen backbone reads [pass-2 soft prompt | connector's N vectors | the prompt] and answers. Only
the connector and the pass-2 prompts train; pass 1 runs without gradients.

The connector's output starts as a learned base (token embeddings of common words) and its
projection at zero, so an untrained connector is a soft prompt of P + N tokens: training starts from
one-pass prompt tuning and learns what pass 1 should add. With `join="add"` its vectors are added
onto the pass-2 prompt instead (base zero), so it starts exactly at that prompt. With a pass-1
prompt, the pass-2 prompt starts as a copy of it. `init_from` starts the network from a saved
connector (one pre-trained on language modelling: pass 1 reads a text, pass 2 must continue it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from frozenlm.backbone import Backbone
from frozenlm.devices import seeded_rng
from frozenlm.errors import CheckpointError, ConfigError
from frozenlm.plugins.checkpoint import checkpoint_folder, load_checkpoint
from frozenlm.plugins.pass_one import FirstPass, StateCache
from frozenlm.plugins.prompt_generator import check_state_shapes, query_decoder, zero_projection
from frozenlm.plugins.protocol import Conditioning, SoftPosition, count_trainable
from frozenlm.plugins.soft_prompt import PromptInit, SoftPromptConfig, initial_prompt
from frozenlm.tasks import Example, TaskSpec


@dataclass(frozen=True)
class ConnectorConfig:
    """Shape of a recursive LM's connector and of its two passes."""

    tokens: int = 20
    """Vectors N the connector writes for pass 2."""
    prompt_length: int = 20
    """Pass-2 soft prompt vectors P per task (0: none), before the connector's."""
    width: int = 256
    """Width of the connector's queries and attention."""
    layers: int = 2
    """Transformer layers (the paper's connector has two)."""
    heads: int = 4
    """Attention heads."""
    ffn: int = 1024
    """Hidden width of each layer's MLP."""
    layer: int = -1
    """Pass-1 layer read: -1 the final (normed) states, k the states after k layers."""
    max_input_tokens: int = 64
    """Pass-1 positions read: the input's last ones (the last predicts the answer)."""
    position: SoftPosition = SoftPosition.INPUT
    """Where the pass-2 vectors (prompt, then connector) and a pass-1 prompt sit in each row:
    right before the input, as the soft prompt by measurement."""
    chat_template: bool = True
    """Pass 1 renders the prompt in the backbone's chat template (as `TrainConfig` does)."""
    first_prompt: str | None = None
    """A soft-prompt checkpoint pass 1 runs with (frozen; copied into this plug-in); the pass-2
    prompt starts from it. None: pass 1 reads the bare prompt."""
    context_field: str | None = None
    """Pass 1 reads this field's raw text instead of the prompt (LM pre-training: the text that
    pass 2, which does not see it, must continue)."""
    init_from: str | None = None
    """A saved connector whose network (not its prompts) this one starts from."""
    join: str = "append"
    """How the connector's vectors meet the pass-2 prompt: "append" after it (P + N soft tokens,
    the paper's layout), or "add" onto it (N = P: an untrained connector then leaves the prompt
    exactly as it is, so a connector started from the one-pass prompt starts at its result)."""
    network_lr_scale: float = 0.01
    """The network's learning rate as a fraction of the prompts' (AdamW 1e-2 -> 1e-4). By
    measurement: at 1e-3 the zero-initialised projection's first Adam steps moved each written
    vector by a sizeable share of the embeddings' scale (RMS 0.14 on SmolLM2), and a connector
    started from the one-pass trivia prompt (dev EM 0.154) fell to 0.000 at step 20."""
    dropout: float = 0.0
    """Dropout inside the connector's layers."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "position", SoftPosition(self.position))
        for name in ("tokens", "width", "layers", "heads", "ffn", "max_input_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"connector {name.replace('_', '-')} must be at least 1")
        if self.prompt_length < 0:
            raise ConfigError("connector prompt-length must be 0 or more")
        if self.width % self.heads:
            raise ConfigError(
                f"connector width {self.width} is not divisible by {self.heads} heads"
            )
        if self.join not in ("append", "add"):
            raise ConfigError(f"connector join must be append or add, got {self.join!r}")
        if self.join == "add" and self.tokens != self.prompt_length:
            raise ConfigError(
                f"join add writes onto the pass-2 prompt, so tokens ({self.tokens}) must equal "
                f"prompt-length ({self.prompt_length})"
            )
        if self.network_lr_scale <= 0:
            raise ConfigError("connector network-lr-scale must be positive")


NETWORK = ("read", "positions", "queries", "decoder", "write", "base")
"""The connector's network parts (what `init_from` copies); the rest are per-task prompts."""


class Connector(nn.Module):
    """Pass-1 states -> N vectors for pass 2, after each task's pass-2 prompt."""

    method = "recursion"
    reads_input = True
    serves_any_task = False  # each task has its own pass-2 prompt

    def __init__(
        self,
        config: ConnectorConfig,
        backbone: Backbone,
        prompts: Mapping[str, torch.Tensor],
        first_prompts: Mapping[str, torch.Tensor],
    ) -> None:
        super().__init__()
        self.config = config
        hidden, width = backbone.hidden_size, config.width
        self.prompts = nn.ParameterDict(
            {name: nn.Parameter(w.detach().float().clone()) for name, w in prompts.items()}
        )  # task -> [P, D]
        self.first_prompts = nn.ParameterDict(
            {
                name: nn.Parameter(w.detach().float().clone(), requires_grad=False)
                for name, w in first_prompts.items()
            }
        )  # task -> [P1, D], frozen
        self.read = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, width))  # D -> W
        self.positions = nn.Parameter(torch.zeros(config.max_input_tokens, width))  # [L, W]
        self.queries = nn.Parameter(torch.randn(config.tokens, width) * 0.02)  # [N, W]
        self.decoder = query_decoder(width, config.heads, config.ffn, config.layers, config.dropout)
        self.write = zero_projection(width, hidden)  # -> the backbone's embedding space
        self.base = nn.Parameter(torch.zeros(config.tokens, hidden))  # [N, D]
        self.first = FirstPass(
            backbone,
            layer=config.layer,
            max_tokens=config.max_input_tokens,
            chat_template=config.chat_template,
            prompts=self.first_prompts,
            position=config.position,
            context_field=config.context_field,
            cache=StateCache.from_environment(),
        )

    @classmethod
    def from_config(
        cls, config: ConnectorConfig, backbone: Backbone, specs: Sequence[TaskSpec], seed: int
    ) -> Connector:
        """A new connector for `specs`: pass-2 prompts from the pass-1 prompt (or Lester's
        class-label init), the network seeded, or copied from `config.init_from`."""
        first = read_first_prompt(config, backbone, specs)
        prompts: dict[str, torch.Tensor] = {}
        for i, spec in enumerate(specs):
            if config.prompt_length == 0:
                prompts[spec.name] = torch.zeros(0, backbone.hidden_size)
            elif spec.name in first and first[spec.name].shape[0] == config.prompt_length:
                prompts[spec.name] = first[spec.name]
            else:
                prompt_config = SoftPromptConfig(length=config.prompt_length)
                prompts[spec.name] = initial_prompt(backbone, prompt_config, [spec], seed + i)
        with seeded_rng(seed):  # seeded weights (built on the CPU); the caller's RNG untouched
            connector = cls(config, backbone, prompts, first)
            vocab = SoftPromptConfig(length=config.tokens, init=PromptInit.VOCAB)
            base = initial_prompt(backbone, vocab, [], seed + len(specs))
        with torch.no_grad():
            connector.base.copy_(base if config.join == "append" else torch.zeros_like(base))
        if config.init_from is not None:
            connector.load_network(config.init_from, backbone)
        return connector

    @classmethod
    def from_tensors(
        cls, tensors: Mapping[str, torch.Tensor], config: ConnectorConfig, backbone: Backbone
    ) -> Connector:
        """A saved connector; a tensor of the wrong name or shape is refused in one sentence."""
        prompts = {k.removeprefix("prompts."): v for k, v in tensors.items() if k[:8] == "prompts."}
        first = {
            k.removeprefix("first_prompts."): v
            for k, v in tensors.items()
            if k.startswith("first_prompts.")
        }
        if not prompts:
            raise CheckpointError(
                "a connector checkpoint holds no pass-2 prompt ('prompts.<task>')"
            )
        connector = cls(config, backbone, prompts, first)
        check_state_shapes(connector, tensors, "connector", backbone.hidden_size)
        connector.load_state_dict(dict(tensors))
        return connector

    def load_network(self, path: str, backbone: Backbone) -> None:
        """Copy a saved connector's network (not its prompts) into this one."""
        checkpoint = load_checkpoint(checkpoint_folder(path), backbone=backbone)
        if checkpoint.meta.get("kind") != self.method:
            raise ConfigError(
                f"init-from '{path}' holds a {checkpoint.meta.get('kind')!r} plug-in, not a "
                "connector (method recursion)"
            )
        # added onto the prompt, the connector starts at it: a saved base would move it
        parts = [p for p in NETWORK if not (p == "base" and self.config.join == "add")]
        network = {k: v for k, v in checkpoint.tensors.items() if k.split(".")[0] in parts}
        mine = {k: v for k, v in self.state_dict().items() if k.split(".")[0] in parts}
        for name, tensor in mine.items():
            if name not in network or tuple(network[name].shape) != tuple(tensor.shape):
                got = list(network[name].shape) if name in network else "missing"
                raise ConfigError(
                    f"init-from '{path}': connector tensor '{name}' is {got} there but "
                    f"{list(tensor.shape)} for this config (tokens, width, layers, heads, ffn "
                    "and max-input-tokens must match the saved connector's)"
                )
        self.load_state_dict(network, strict=False)

    def forward(self, states: Sequence[torch.Tensor]) -> torch.Tensor:
        """The connector's vectors [B, N, D] for pass-1 states [L_b, D] of each row."""
        device, dtype = self.base.device, self.base.dtype
        longest = max(int(s.shape[0]) for s in states)
        memory = self.base.new_zeros(len(states), longest, self.base.shape[1])  # [B, L, D]
        mask = torch.zeros(len(states), longest, dtype=torch.bool, device=device)  # True: pad
        for b, s in enumerate(states):  # left-padded: the last state is at the last column
            memory[b, longest - s.shape[0] :] = s.to(device=device, dtype=dtype)
            mask[b, : longest - s.shape[0]] = True
        columns = self.positions[self.config.max_input_tokens - longest :]  # [L, W], from the end
        memory = self.read(memory) + columns  # [B, L, W]
        queries = self.queries.unsqueeze(0).expand(len(states), -1, -1)  # [B, N, W]
        out = self.decoder(queries, memory, memory_key_padding_mask=mask)  # [B, N, W]
        return self.base + self.write(out)  # [B, N, D]

    def prompt(self, task: str) -> torch.Tensor:
        if task not in self.prompts:
            raise ConfigError(
                f"this connector has no pass-2 prompt for task '{task}'; it has: "
                f"{', '.join(self.prompts)}"
            )
        return self.prompts[task]

    def condition(self, task: TaskSpec, examples: Sequence[Example]) -> list[Conditioning]:
        """Pass 1 over the examples (cached, no gradients), then each row's pass-2 vectors:
        the task's prompt and the connector's N vectors, at `config.position`."""
        if not examples:
            return []
        prompt = self.prompt(task.name)  # [P, D]
        written = self(self.first.states(task, examples))  # [B, N, D]
        position = self.config.position
        if self.config.join == "add":
            return [Conditioning(prompt + w, position=position) for w in written]
        return [Conditioning(torch.cat([prompt, w]), position=position) for w in written]

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """The pass-2 prompts at `lr`, the network at `lr * network_lr_scale`."""
        prompts = [p for p in self.prompts.values() if p.requires_grad and p.numel()]
        network = [
            p for n, p in self.named_parameters() if n.split(".")[0] in NETWORK and p.requires_grad
        ]
        groups = [{"params": network, "lr": lr * self.config.network_lr_scale}]
        return ([{"params": prompts, "lr": lr}] if prompts else []) + groups

    def tensors(self) -> dict[str, torch.Tensor]:
        return {n: t.detach().clone() for n, t in self.state_dict().items()}

    def num_trainable(self) -> int:
        return count_trainable(self)


def read_first_prompt(
    config: ConnectorConfig, backbone: Backbone, specs: Sequence[TaskSpec]
) -> dict[str, torch.Tensor]:
    """The pass-1 prompt of each task from `config.first_prompt` (empty when there is none),
    refused when it was trained for another backbone, place, rendering or task set."""
    if config.first_prompt is None:
        return {}
    checkpoint = load_checkpoint(checkpoint_folder(config.first_prompt), backbone=backbone)
    source = f"first-prompt '{config.first_prompt}'"
    if checkpoint.meta.get("kind") != "soft-prompt":
        raise ConfigError(f"{source} holds a {checkpoint.meta.get('kind')!r}, not a soft prompt")
    saved = checkpoint.meta.get("plugin_config", {})
    position = SoftPosition(saved.get("position", SoftPosition.START.value))
    if position is not config.position:
        raise ConfigError(
            f"{source} was trained at position {position.value}, but the connector's position is "
            f"{config.position.value}; pass --position {position.value}"
        )
    trained = checkpoint.meta.get("train_config", {}).get("chat_template", True)
    if trained != config.chat_template:
        raise ConfigError(
            f"{source} was trained with chat_template={trained}, the connector renders with "
            f"{config.chat_template}; train both the same way"
        )
    prompts = {k.removeprefix("prompt."): v for k, v in checkpoint.tensors.items()}
    if "*" in prompts:  # a shared prompt serves every task
        return {spec.name: prompts["*"] for spec in specs}
    missing = [spec.name for spec in specs if spec.name not in prompts]
    if missing:
        raise ConfigError(f"{source} has no prompt for task '{missing[0]}'")
    return {spec.name: prompts[spec.name] for spec in specs}
