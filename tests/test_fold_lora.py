"""The engine's LoRA folding (``model.fold_lora``): calls without gradient run with the LoRA deltas added
into the base weights. Against the plain path: the same sampled images and, for every plan, the same
parameter gradients, to float rounding; the base weights come back bit for bit."""

from __future__ import annotations

import pytest
import torch
from test_grad_plans import PLANS, T, engine_grads, model64  # noqa: F401 - model64 is a fixture
from test_models import PROMPTS, _perturb, noise

from trainers.adapters import adapters_off
from trainers.config import ModelConfig, TrainableConfig
from trainers.engine import generate
from trainers.grad_plan import refinement
from trainers.models import load_model, make_trainable


@pytest.fixture
def lora_model(request):
    """A tiny model of the family with a random (non-zero) LoRA."""
    folder = request.getfixturevalue(f"tiny_{request.param}_dir")
    model = load_model(ModelConfig(path=folder, device="cpu", resolution=16))  # every tiny model's size
    _perturb(make_trainable(model, TrainableConfig(rank=4, alpha=8.0)), scale=0.1)  # the family's default targets
    return model


@pytest.mark.parametrize("lora_model", ["sd", "sdxl", "pixart", "sd3", "flux"], indirect=True)
def test_folded_sampling_equals_the_plain_path_and_restores_the_weights(lora_model):
    model = lora_model
    before = {k: v.clone() for k, v in model.denoiser.state_dict().items()}
    x_T = noise(model)
    schedule, gen = model.family.schedule(model, 4), torch.Generator().manual_seed(1)
    plain = generate(model, PROMPTS, x_T.clone(), schedule, guidance=7.5, gen=gen, fold_lora=False)
    folded = generate(
        model, PROMPTS, x_T.clone(), schedule, guidance=7.5, gen=torch.Generator().manual_seed(1), fold_lora=True
    )
    with adapters_off(model.denoiser):
        base = generate(model, PROMPTS, x_T.clone(), schedule, guidance=7.5, gen=torch.Generator().manual_seed(1))
    assert (plain - base).abs().max() > 1e-3, "the LoRA must change the images, or the check is vacuous"
    torch.testing.assert_close(folded, plain, rtol=0, atol=2e-5)
    for key, value in model.denoiser.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("name", list(PLANS))
def test_every_plans_gradient_is_the_same_with_the_lora_folded(model64, name):  # noqa: F811 - the fixture
    ups = [p for n, p in model64.denoiser.named_parameters() if "lora_B" in n]
    saved = [p.detach().clone() for p in ups]
    _perturb(ups, seed=3, scale=0.05)  # a non-zero delta to fold
    try:
        plan = PLANS[name]
        flags = plan.flags(T, torch.Generator().manual_seed(11))
        plain, _ = engine_grads(model64, flags, refinement(plan))
        folded, _ = engine_grads(model64, flags, refinement(plan), fold_lora=True)
    finally:
        with torch.no_grad():
            for p, s in zip(ups, saved):
                p.copy_(s)
    for f, p in zip(folded, plain):
        torch.testing.assert_close(f, p, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("lora_model", ["sd"], indirect=True)
def test_folding_adds_the_delta_and_is_skipped_when_the_adapters_are_off(lora_model):
    from peft.tuners.lora import LoraLayer

    from trainers.adapters import folded

    layer = next(m for m in lora_model.denoiser.modules() if isinstance(m, LoraLayer))
    weight, original = layer.get_base_layer().weight, layer.get_base_layer().weight.detach().clone()
    delta = layer.get_delta_weight("default")
    assert delta.abs().max() > 1e-3
    with folded(lora_model.denoiser) as did:
        assert did and layer.disable_adapters
        torch.testing.assert_close(weight, original + delta)
    assert not layer.disable_adapters and torch.equal(weight, original)
    with adapters_off(lora_model.denoiser), folded(lora_model.denoiser) as did:
        assert not did, "a network with its adapters off (DI*'s teacher) is left as it is"


@pytest.mark.parametrize(
    "plan", [["plan.name=draft_k", "plan.k=1"], ["plan.name=drtune", "plan.k=2", "plan.early_stop=2"]]
)
def test_the_naive_baseline_of_the_bench_gives_the_engines_gradient(tiny_sd_dir, plan):
    """``pipeline.bench --baseline naive``: the straightforward loop it times the engine against computes
    the same first-step gradient (and both loops run their optimiser steps)."""
    from pipeline.bench.plans import side_by_side

    row = side_by_side(tiny_sd_dir, [*plan, "sampler.num_steps=5", "trainable.init=gaussian"], iters=1)
    assert row["grad_gap"] < 1e-5 and row["engine_s"] > 0 and row["naive_s"] > 0
