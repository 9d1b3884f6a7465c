"""The ComfyUI SPELL node (lib_ctxrep.integrations.comfyui_nodes.SpellNode) on stand-ins of ComfyUI's patcher and
sampler: its post-CFG function, its ``outer_sample`` wrapper (the end of a queue run) and its protected LATENT."""

from __future__ import annotations

import logging

import pytest
import torch

from lib_ctxrep.integrations.comfyui_nodes import SpellNode
from lib_ctxrep.spell import SpellConfig
from tests.comfy_standins import BaseModel, Flux, LatentFormat, ModelPatcher, ModelSamplingFlux, ksampler

B, STEPS, CFG, CTX = 4, 4, 3.0, 16
LATENT = (4, 4, 4)


def flux(seed: int = 0) -> ModelPatcher:
    torch.manual_seed(seed)
    return ModelPatcher(BaseModel(Flux(), ModelSamplingFlux(), LatentFormat(4)))


def sample(model: ModelPatcher, seed: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, 6, CTX, generator=g), {}]]
    negative = [[torch.randn(1, 6, CTX, generator=g), {}]]
    return ksampler(model, seed, STEPS, CFG, positive, negative, {"samples": torch.zeros(B, *LATENT)})


def spell(model: ModelPatcher, **inputs) -> ModelPatcher:
    values = {"radius": 0.5, "overcompensation": 1.6, "within_batch": False, "earlier_runs": False, **inputs}
    return SpellNode().patch(model, **values)[0]


def test_a_second_run_is_pushed_from_the_first_when_earlier_runs_is_on():
    base = flux()
    remembering = spell(base, radius=2.0, earlier_runs=True)
    first, second = sample(remembering), sample(remembering)  # the same seed: the second starts where the first did
    assert torch.equal(first, sample(base))  # nothing to push from in the first run
    assert float((second - first).abs().max()) > 1e-4


def test_a_second_run_is_not_pushed_when_earlier_runs_is_off():
    forgetting = spell(flux(), radius=2.0, earlier_runs=False)
    assert torch.equal(sample(forgetting), sample(forgetting))


def test_within_batch_pushes_the_images_of_one_run_apart():
    base = flux()
    assert float((sample(spell(base, radius=2.0, within_batch=True)) - sample(base)).abs().max()) > 1e-4


def test_a_protected_set_is_escaped():
    base = flux()
    plain = sample(base)
    shielded = sample(spell(base, protected={"samples": plain.clone()}))
    inside = base.model.process_latent_in  # SPELL works in the model's latent space
    radius = SpellConfig(relative_radius=0.5).absolute_radius(LATENT)
    nearest = float(torch.cdist(inside(shielded).flatten(1), inside(plain).flatten(1)).min())
    assert nearest > radius


@pytest.mark.parametrize(
    ("samples", "said"),
    [(torch.zeros(2, 16, 4, 4), "16 channels"), (torch.zeros(0, 4, 4, 4), "no samples")],
    ids=["another channel count", "empty"],
)
def test_an_unusable_protected_latent_gets_a_message_and_spell_runs_without_it(caplog, samples, said):
    base = flux()
    alone = sample(spell(base, within_batch=True))
    with caplog.at_level(logging.WARNING, logger="lib_ctxrep"):
        patched = spell(base, within_batch=True, protected={"samples": samples})
    messages = [r.getMessage() for r in caplog.records if r.name == "lib_ctxrep"]
    assert len(messages) == 1 and said in messages[0] and "without" in messages[0]
    assert torch.equal(sample(patched), alone)


def test_spell_leaves_the_original_model_untouched():
    base = flux()
    plain = sample(base)
    sample(spell(base, radius=2.0, within_batch=True, earlier_runs=True))
    options = base.model_options
    assert "sampler_post_cfg_function" not in options and not options["transformer_options"] and not base.wrappers
    assert torch.equal(sample(base), plain)
