"""Where tensors live and in what precision: `--device` and `--dtype`, and seeded RNG per device.

"auto" picks CUDA, then MPS, then the CPU; its dtype is bfloat16 on a CUDA device that supports
it and float32 everywhere else (float16 can overflow in activations, so it is there only when
asked for). On the CPU "auto" is float32, so every CPU number is what it was before devices and
dtypes could be chosen.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from frozenlm.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
"""What `device` accepts (N is a CUDA device index)."""
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
"""What `dtype` accepts besides "auto"."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`device` as a torch.device; "auto" is CUDA, else MPS, else the CPU. A device this machine
    does not have raises ConfigError."""
    text = str(device)
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    cuda = re.fullmatch(r"cuda(?::(\d+))?", text)
    if cuda:
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{text}' needs CUDA, which this machine does not have")
        index = int(cuda.group(1) or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device '{text}' does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s), cuda:0 to "
                f"cuda:{torch.cuda.device_count() - 1}"
            )
        return torch.device(text)
    if text == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("device 'mps' needs Apple's Metal backend, which is not available")
        return torch.device("mps")
    raise ConfigError(f"device '{text}' is not one of {', '.join(DEVICES)}")


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """`dtype` as a torch.dtype; "auto" is bfloat16 on a CUDA device that supports it, float32
    everywhere else. Anything but auto, float32, bfloat16 and float16 raises ConfigError."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ConfigError(f"dtype {dtype} is not one of auto, {', '.join(DTYPES)}")
        return dtype
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"dtype '{dtype}' is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


@contextmanager
def seeded_rng(seed: int, device: str | torch.device = "cpu") -> Iterator[None]:
    """Run the block with torch's global RNG seeded with `seed` (the CPU generator, and the
    generators of `device`'s type when it is a GPU), then give the caller back every RNG as it
    was, python's `random` included (a resumed run restores both). Inside, the numbers are those
    of `torch.manual_seed(seed)`; outside, library code leaves no trace on the caller's RNG."""
    kind = torch.device(device).type
    cuda = list(range(torch.cuda.device_count())) if kind == "cuda" else []
    python = random.getstate()
    mps = torch.mps.get_rng_state() if kind == "mps" else None
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        try:
            torch.random.default_generator.manual_seed(seed)
            if kind == "cuda":
                torch.cuda.manual_seed_all(seed)
            if kind == "mps":
                torch.mps.manual_seed(seed)
            yield
        finally:
            random.setstate(python)
            if mps is not None:
                torch.mps.set_rng_state(mps)
