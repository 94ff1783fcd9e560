"""The micro-batcher: a bounded queue, requests for unloaded models answered cleanly, clients
that leave dropped, and every batching policy giving the same answers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from frozenlm.backbone import Backbone
from frozenlm.codec import to_json
from frozenlm.engine.generation import GenerationConfig
from frozenlm.plugins.soft_prompt import SoftPromptConfig
from frozenlm.serve.batcher import Batcher, BatcherConfig, ClassifyJob, GenerateJob, Policy
from frozenlm.serve.models import ModelTable, Prompted, ServeError
from frozenlm.tasks import load_task
from frozenlm.training.config import TrainConfig
from frozenlm.training.loop import train_plugin


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, tiny: Backbone) -> Path:
    out = tmp_path_factory.mktemp("batcher") / "sent"
    config = TrainConfig(steps=1, batch_size=2, eval_every=1, eval_limit=2)
    train_plugin(
        tiny, ["sentiment"], "soft-prompt", to_json(SoftPromptConfig(length=3)), config, out
    )
    return out


def _rows(table: ModelTable, texts: list[str]) -> list[Prompted]:
    model = table.get("sent")
    return [Prompted(model, model.render(model.example(t), None), model.example(t)) for t in texts]


def _base_rows(tiny: Backbone, table: ModelTable, texts: list[str]) -> list[Prompted]:
    from frozenlm.prompts.render import RenderedPrompt

    return [
        Prompted(table.base, RenderedPrompt(list(tiny.tokenizer(t)["input_ids"]), t, 0, 0, False))
        for t in texts
    ]


def test_a_full_queue_refuses_with_429_and_an_unloaded_model_gets_404(
    tiny: Backbone, folder: Path
) -> None:
    table = ModelTable(tiny)
    table.add(folder)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        batcher = Batcher(tiny, table, BatcherConfig(max_queue=2))  # not started: jobs wait
        jobs = [ClassifyJob(_rows(table, ["fine"]), loop) for _ in range(2)]
        for job in jobs:
            batcher.submit(job)
        with pytest.raises(ServeError) as err:
            batcher.submit(ClassifyJob(_rows(table, ["fine"]), loop))
        assert err.value.status == 429 and "queue is full" in str(err.value)
        table.unload("sent")  # while its requests wait
        batcher.start()
        for job in jobs:
            assert job.future is not None
            with pytest.raises(ServeError) as err:
                await job.future
            assert err.value.status == 404 and "was unloaded" in str(err.value)
        batcher.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize("policy", list(Policy))
def test_every_policy_gives_the_same_scores_and_generations(
    tiny: Backbone, folder: Path, policy: Policy
) -> None:
    table = ModelTable(tiny)
    table.add(folder)
    texts = [ex.fields["text"] for ex in load_task("sentiment").test[:5]]

    async def answers(config: BatcherConfig) -> tuple[list[torch.Tensor], list[list[int]]]:
        loop = asyncio.get_running_loop()
        batcher = Batcher(tiny, table, config)
        batcher.start()
        scored = [ClassifyJob(_rows(table, [t]), loop) for t in texts]
        made = [  # two models generate: per-task keeps a decode batch for each
            GenerateJob(rows, loop, configs=[GenerationConfig(4, ())])
            for t in texts
            for rows in (_rows(table, [t]), _base_rows(tiny, table, [t]))
        ]
        for job in [*scored, *made]:
            batcher.submit(job)
        scores = [(await job.future)[0].values() for job in scored if job.future is not None]
        tokens = []
        for job in made:
            row: list[int] = []
            while (item := await job.events.get()) is not None:
                assert not isinstance(item, Exception)
                row += [item[1].token] if item[1].token is not None else []
            tokens.append(row)
        batcher.stop()
        return scores, tokens

    reference = asyncio.run(answers(BatcherConfig(policy=Policy.SINGLE)))
    got = asyncio.run(answers(BatcherConfig(policy=policy, gather_ms=20)))
    for a, b in zip(got[0], reference[0], strict=True):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=0)
    assert got[1] == reference[1]


def test_a_client_that_leaves_stops_its_rows(tiny: Backbone) -> None:
    table = ModelTable(tiny)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        batcher = Batcher(tiny, table)
        ids = list(tiny.tokenizer("Once upon a time")["input_ids"])
        from frozenlm.prompts.render import RenderedPrompt

        row = Prompted(table.base, RenderedPrompt(ids, "", 0, 0, False))
        job = GenerateJob([row], loop, configs=[GenerationConfig(500, ())])
        batcher.start()
        batcher.submit(job)
        await job.events.get()  # the first token arrived: the row is decoding
        job.cancelled = True
        for _ in range(200):
            await asyncio.sleep(0.01)
            if not batcher._running:
                break
        assert not batcher._running and not batcher._slots  # dropped, long before 500 tokens
        assert job.events.qsize() < 400
        batcher.stop()

    asyncio.run(scenario())
