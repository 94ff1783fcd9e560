import torch

from frozenlm.backbone import Backbone
from frozenlm.evaluation.evaluate import EvalConfig, evaluate
from frozenlm.tasks import load_task
from frozenlm.training.peft_prompt import PeftPromptConfig, train_peft_prompt


def test_peft_reference_trains_and_leaves_the_backbone_untouched(tiny: Backbone) -> None:
    fingerprint = tiny.fingerprint
    weights_before = tiny.model.get_input_embeddings().weight.clone()
    task = load_task("trec")
    rng_before = torch.random.get_rng_state()
    result = train_peft_prompt(tiny, task, PeftPromptConfig(prompt_length=4, steps=3, batch_size=4))
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # seeded inside, caller untouched
    assert len(result.losses) == 3 and result.seconds > 0
    prompt = result.plugin.prompts["trec"]
    assert prompt.shape == (4, tiny.hidden_size) and prompt.dtype == torch.float32
    assert torch.equal(tiny.model.get_input_embeddings().weight, weights_before)
    assert not tiny.model.training
    assert all(not p.requires_grad for p in tiny.model.parameters())
    tiny.__dict__.pop("fingerprint", None)  # recompute from the weights
    assert tiny.fingerprint == fingerprint
    report = evaluate(tiny, task, EvalConfig(limit=8), plugin=result.plugin)
    assert report.method == "soft-prompt" and report.n == 8
