"""Data parallelism for the one training loop: N ranks (`torchrun --nproc-per-node N -m
frozenlm train ...`), each with the same frozen backbone, synchronise only the plug-in.

The backbone is never wrapped, broadcast or all-reduced: every rank loads the same weights
(checked by fingerprint at the start). Each optimizer step of N ranks is that of one process
with N times the micro-batches: rank r takes micro-batches r * grad_accum ... of the step's
global stream (a pure function of seed and step), scales its loss by 1 / (grad_accum * N), and
the plug-in's gradients are summed over ranks in one flat all-reduce — a parameter that got no
gradient on a rank (an ID-PT task absent from its rows) contributes zeros, so no rank waits
for a gradient that never comes (DDP's `find_unused_parameters` problem does not arise). Rank 0
alone evaluates on dev and writes checkpoints and records; after each evaluation it sends the
loop's state and the plug-in's weights to the others (a recovery from divergence changes both),
so every rank holds the same weights after every step. Collectives time out
(`FROZENLM_DIST_TIMEOUT`, 600 s): a rank killed mid-run ends the job instead of hanging it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from frozenlm.errors import ConfigError


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that evaluates and writes."""
        return self.rank == 0


def current() -> Ranks:
    """The ranks of the initialised process group (one process when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def init_from_env(device: str = "cpu") -> Ranks:
    """Join the job `torchrun` started (RANK, WORLD_SIZE, MASTER_ADDR in the environment):
    gloo on CPUs, NCCL on CUDA devices (`device` "auto" means CUDA when there is one). One
    process without them."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return current()
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed; run one process")
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if cuda else "gloo"
    seconds = float(os.environ.get("FROZENLM_DIST_TIMEOUT", "600"))
    dist.init_process_group(backend, timeout=timedelta(seconds=seconds))
    return current()


def rank_device(device: str) -> str:
    """The device of this rank: on CUDA, the GPU `torchrun` gave it (LOCAL_RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = device in ("cuda", "auto") and torch.cuda.is_available()
    if world > 1 and cuda:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def check_same(value: str, ranks: Ranks, problem: str) -> None:
    """Refuse (on every rank alike) a job whose ranks disagree on `value`; `problem` says
    what that means, with {values} for what they hold."""
    if ranks.world == 1:
        return
    seen: list[Any] = [None] * ranks.world
    dist.all_gather_object(seen, value)
    if len(set(seen)) > 1:
        raise ConfigError(problem.format(values=", ".join(sorted({str(v) for v in seen}))))


def check_same_backbone(fingerprint: str, ranks: Ranks) -> None:
    """Refuse a job whose ranks loaded different backbone weights."""
    check_same(fingerprint, ranks, "the ranks loaded different backbones (fingerprints {values})")


def all_reduce_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Sum every trainable parameter's gradient over the ranks, in one flat all-reduce (a
    missing gradient counts as zeros)."""
    grads = [
        p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters
    ]  # each like its parameter
    flat = torch.cat([g.reshape(-1) for g in grads])  # [total trainable]
    dist.all_reduce(flat)
    offset = 0
    for p in parameters:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def all_reduce_sum(value: float, device: torch.device) -> float:
    """`value` summed over the ranks (the step's loss)."""
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total)


def broadcast_parameters(parameters: list[torch.nn.Parameter]) -> None:
    """Rank 0's values of `parameters` on every rank."""
    with torch.no_grad():
        for p in parameters:
            dist.broadcast(p.data, 0)


def broadcast_json(value: Any, ranks: Ranks, device: torch.device) -> Any:
    """Rank 0's JSON-able `value` on every rank (sent as UTF-8 bytes, never pickled)."""
    data = json.dumps(value).encode() if ranks.main else b""
    size = torch.tensor([len(data)], dtype=torch.long, device=device)
    dist.broadcast(size, 0)
    buffer = torch.zeros(int(size), dtype=torch.uint8, device=device)
    if ranks.main:
        buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buffer, 0)
    return json.loads(bytes(buffer.cpu().tolist()).decode())
