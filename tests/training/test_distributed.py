"""Data parallelism: 2 ranks (real processes, gloo on CPU) train a plug-in exactly as one process
with twice the micro-batches, hold identical weights after every step, and only rank 0 writes."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from conftest import write_toy_task
from frozenlm.codec import to_json
from frozenlm.plugins.soft_prompt import SoftPromptConfig
from frozenlm.training.config import TrainConfig

STEPS = 4


def _config(grad_accum: int) -> TrainConfig:
    return TrainConfig(steps=STEPS, batch_size=2, grad_accum=grad_accum, eval_every=2,
                       eval_limit=4, optimizer="adamw", lr=1e-2, seed=0)  # fmt: skip


def _train(kind: str, task: str, config: TrainConfig, out: str | Path) -> None:
    """Train `kind` (a soft prompt, or LoRA adapters of a copy) with the one loop."""
    from frozenlm.backbone import Backbone
    from frozenlm.devices import seeded_rng
    from frozenlm.tasks import load_task
    from frozenlm.training import loop
    from frozenlm.training.finetune import LoraSettings, lora_copy

    tiny = Backbone.load("tiny")
    if kind == "id-pt":  # two tasks in mixed batches: a rank's rows may miss one of them
        from frozenlm.plugins.prompt_generator import PromptGeneratorConfig

        small = to_json(PromptGeneratorConfig(length=3, width=32, heads=2, ffn=64))
        loop.train_plugin(tiny, [task, "trec"], "id-pt", small, config, out)
        return
    if kind in ("prefix", "recursion"):  # a deep prompt; a connector (recursive LM)
        connector = {"tokens": 3, "prompt_length": 2, "width": 16, "heads": 2, "ffn": 32}
        small = {"length": 3} if kind == "prefix" else connector
        loop.train_plugin(tiny, [task], kind, small, config, out)
        return
    if kind == "soft-prompt":
        soft = to_json(SoftPromptConfig(length=3))
        loop.train_plugin(tiny, [task], "soft-prompt", soft, config, out)
        return
    with seeded_rng(0):
        tuned, weights = lora_copy(tiny, LoraSettings(r=2))
    meta = {"kind": "lora", "backbone": {"fingerprint": tiny.fingerprint}}
    loop.train(tuned, weights, [load_task(task)], config, Path(out), meta=meta)


def _rank(
    rank: int, world: int, port: int, task: str, out: str, spy: str, kind: str = "soft-prompt"
) -> None:
    """One rank: join the group, train, and leave each step's weights in `spy` (outside the
    output folder)."""
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    os.environ |= {"RANK": str(rank), "WORLD_SIZE": str(world), "FROZENLM_DIST_TIMEOUT": "120"}
    torch.set_num_threads(1)
    from frozenlm.training import loop
    from frozenlm.training.distributed import init_from_env

    init_from_env()
    seen: dict[str, torch.Tensor] = {}
    original = loop.optimizer_step

    def spying(run: loop.Run, step: int, lr_factor: float = 1.0) -> float:
        value = original(run, step, lr_factor)
        for name, p in run.plugin.named_parameters():
            seen[f"{step}.{name}"] = p.detach().clone()
        return value

    loop.optimizer_step = spying  # type: ignore[assignment]
    mine = out if rank == 0 else f"{out}-rank{rank}"  # only rank 0 may write
    _train(kind, task, _config(1), mine)
    save_file(seen, f"{spy}/rank{rank}.safetensors")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_ranks_train_as_one_process_with_twice_the_micro_batches(
    tmp_path: Path, tiny: object
) -> None:
    from frozenlm.backbone import Backbone
    from frozenlm.training.loop import train_plugin

    task = str(write_toy_task(tmp_path))
    spy = tmp_path / "spy"
    spy.mkdir()
    out = tmp_path / "ddp"
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [
        ctx.Process(target=_rank, args=(r, 2, port, task, str(out), str(spy))) for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0, 0]
    assert (out / "best").is_dir() and not Path(f"{out}-rank1").exists()

    zero, one = (load_file(spy / f"rank{r}.safetensors") for r in range(2))
    assert set(zero) == set(one) and len(zero) == STEPS
    for key in zero:  # every rank holds the same weights after every step
        torch.testing.assert_close(zero[key], one[key], atol=0, rtol=0)

    single = tmp_path / "single"
    backbone = Backbone.load("tiny")
    soft = to_json(SoftPromptConfig(length=3))
    result = train_plugin(backbone, [task], "soft-prompt", soft, _config(2), single)
    mine = load_file(next((out / "best").glob("*.safetensors")))
    ref = load_file(next((single / "best").glob("*.safetensors")))
    for key in ref:
        torch.testing.assert_close(mine[key], ref[key], atol=1e-5, rtol=1e-5)
    dev = json.loads((out / "best" / "plugin.json").read_text())
    assert dev["metrics"]["dev"] == pytest.approx(result.best_metric)
    # the test can tell batches apart: one process with half the rows per step ends elsewhere
    half = train_plugin(backbone, [task], "soft-prompt", soft, _config(1), tmp_path / "half")
    other = load_file(next((tmp_path / "half" / "best").glob("*.safetensors")))
    assert half.steps_done == STEPS
    assert any(not torch.allclose(other[k], ref[k], atol=1e-4) for k in ref)


@pytest.mark.parametrize("kind", ["lora", "id-pt", "prefix", "recursion"])
def test_every_kind_trains_under_two_ranks_as_in_one_process(tmp_path: Path, kind: str) -> None:
    task = str(write_toy_task(tmp_path))
    spy, out = tmp_path / "spy", tmp_path / "ddp"
    spy.mkdir()
    ctx, port = mp.get_context("spawn"), _free_port()
    args = (task, str(out), str(spy), kind)
    procs = [ctx.Process(target=_rank, args=(r, 2, port, *args)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0, 0]
    zero, one = (load_file(spy / f"rank{r}.safetensors") for r in range(2))
    for key in zero:
        torch.testing.assert_close(zero[key], one[key], atol=0, rtol=0)
    _train(kind, task, _config(2), tmp_path / "single")
    mine = load_file(out / "best" / "plugin.safetensors")
    ref = load_file(tmp_path / "single" / "best" / "plugin.safetensors")
    assert mine.keys() == ref.keys() and mine
    for key in ref:
        torch.testing.assert_close(mine[key], ref[key], atol=1e-5, rtol=1e-5)


def test_torchrun_trains_with_two_ranks_and_only_rank_0_reports(tmp_path: Path) -> None:
    import subprocess
    import sys

    task = str(write_toy_task(tmp_path))
    out = tmp_path / "run"
    runs = tmp_path / "records"
    env = os.environ | {"OMP_NUM_THREADS": "1", "FROZENLM_RUNS": str(runs)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "frozenlm", "train", "--backbone", "tiny",
               "--task", task, "--prompt-length", "3", "--steps", "2", "--batch-size", "2",
               "--eval-every", "2", "--eval-limit", "4", "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("best dev") == 1  # rank 0 alone prints
    assert len(list(runs.glob("*.json"))) == 1  # and records
    assert (out / "best" / "plugin.json").is_file()


def test_a_rank_killed_mid_run_ends_the_job_and_resume_finishes_it_the_same(
    tmp_path: Path,
) -> None:
    import signal
    import subprocess
    import sys
    import time

    import psutil

    task = str(write_toy_task(tmp_path))
    env = os.environ | {"OMP_NUM_THREADS": "1", "FROZENLM_DIST_TIMEOUT": "60"}

    def command(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", "-m", "frozenlm", "--no-record", "train",
                "--backbone", "tiny", "--task", task, "--prompt-length", "3", "--steps", "12",
                "--batch-size", "2", "--eval-every", "2", "--eval-limit", "4", "--patience", "0",
                "--out", str(out), *extra]  # fmt: skip

    whole = tmp_path / "whole"
    assert subprocess.run(command(whole), env=env, capture_output=True, timeout=300).returncode == 0

    cut = tmp_path / "cut"
    job = subprocess.Popen(command(cut), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (cut / "last").is_dir():
        assert job.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    workers = psutil.Process(job.pid).children(recursive=True)
    rank1 = next(p for p in workers if p.environ().get("RANK") == "1")
    rank1.send_signal(signal.SIGKILL)
    assert job.wait(timeout=120) != 0  # the job ends: no rank waits forever
    saved = json.loads((cut / "last" / "training_state.json").read_text())["loop"]["step"]
    assert 0 < saved < 12

    resumed = subprocess.run(command(cut, "--resume"), env=env, capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(whole / "last" / "training_state.safetensors")
    b = load_file(cut / "last" / "training_state.safetensors")
    params = [k for k in a if k.startswith("param.")]
    assert params
    for key in params:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=1e-6)
