"""SPELL on real diffusers pipelines built from tiny configs (lib_ctxrep.integrations.diffusers_spell)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from lib_ctxrep.evaluation.diffusers_tiny import (  # noqa: E402
    prompt_embeddings,
    tiny_flux_pipeline,
    tiny_flux_transformer,
    tiny_sd3_pipeline,
)
from lib_ctxrep.integrations.diffusers_spell import apply_spell  # noqa: E402
from lib_ctxrep.spell import ReferenceSet, SpellConfig  # noqa: E402

B = 4


@pytest.fixture(scope="module")
def pipe():
    return tiny_flux_pipeline(tiny_flux_transformer(layers=1, single_layers=1))


def run(pipe, batch=B, seed=0, steps=4):
    embeds, pooled = prompt_embeddings(batch, 12, 32, 32)
    return pipe(
        prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=16, width=16, num_inference_steps=steps,
        output_type="latent", generator=torch.Generator().manual_seed(seed),
    ).images  # fmt: skip


def test_no_reference_within_the_radius_is_bit_identical_to_spell_off(pipe):
    base = run(pipe)
    with apply_spell(pipe, SpellConfig(radius=1e-6)) as handle:
        out = run(pipe)
    assert torch.equal(out, base)
    assert handle.stats.calls == 4 and handle.stats.samples_pushed == 0


def test_intra_batch_spell_changes_the_batch_and_reports_its_sparsity(pipe):
    base = run(pipe)
    with apply_spell(pipe, SpellConfig(relative_radius=2.0)) as handle:
        out = run(pipe)
    assert not torch.allclose(out, base) and torch.isfinite(out).all()
    assert handle.stats.samples_pushed > 0 and handle.stats.share_pushed <= 1.0


def test_outputs_land_farther_than_r_from_a_protected_set_of_the_baseline_outputs(pipe):
    base = run(pipe)
    flat = base.reshape(B, -1)
    radius = 0.25 * torch.pdist(flat).min().item()  # disjoint shields, with room for the overshoot
    protected = ReferenceSet(base)
    with apply_spell(pipe, SpellConfig(radius=radius, intra_batch=False, cross_batch=False), protected):
        out = run(pipe)
    assert torch.cdist(out.reshape(B, -1), flat).min().item() >= radius * (1 - 1e-4)


def test_final_latents_of_a_batch_repel_the_next_batch(pipe):
    config = SpellConfig(relative_radius=2.0, intra_batch=False)
    plain = [run(pipe, batch=1, seed=s) for s in range(2)]
    with apply_spell(pipe, config) as handle:
        first = run(pipe, batch=1, seed=0)
        assert handle.engine.remembered == 1
        second = run(pipe, batch=1, seed=1)
    assert torch.equal(first, plain[0]) and not torch.allclose(second, plain[1])


def test_attaching_twice_acts_once_and_remove_restores_bit_identical_output(pipe):
    base = run(pipe)
    config = SpellConfig(relative_radius=2.0)
    with apply_spell(pipe, config):
        once = run(pipe)
    first = apply_spell(pipe, config)
    second = apply_spell(pipe, config)
    twice = run(pipe)
    assert torch.equal(twice, once) and not torch.equal(twice, base)
    assert first.stats.calls == 0 and second.stats.calls == 4  # the first handle was replaced, not wrapped
    second.remove()
    first.remove()
    assert torch.equal(run(pipe), base)
    assert first.stats.calls == 0 and second.stats.calls == 4  # removed: neither sees the run


def test_sd3_pipeline_with_cfg_runs_with_spell():
    sd3 = tiny_sd3_pipeline()
    embeds, pooled = prompt_embeddings(B, 10, 32, 64, seed=3)
    neg, neg_pooled = prompt_embeddings(B, 10, 32, 64, seed=4)
    with apply_spell(sd3, SpellConfig(relative_radius=2.0)) as handle:
        out = sd3(
            prompt_embeds=embeds, pooled_prompt_embeds=pooled, negative_prompt_embeds=neg,
            negative_pooled_prompt_embeds=neg_pooled, guidance_scale=3.5, height=16, width=16,
            num_inference_steps=3, output_type="latent", generator=torch.Generator().manual_seed(0),
        ).images  # fmt: skip
    assert torch.isfinite(out).all() and handle.stats.calls == 3


def test_non_flow_matching_schedulers_are_refused_with_the_supported_ones():
    from types import SimpleNamespace

    with pytest.raises(TypeError, match="flow-matching"):
        apply_spell(SimpleNamespace(scheduler=SimpleNamespace(sigmas=torch.ones(2))))
