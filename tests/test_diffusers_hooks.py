"""Contextual repulsion on real diffusers classes (Flux, Flux Kontext, SD3) built from tiny configs, offline."""

from __future__ import annotations

import dataclasses
import gc
import inspect
import weakref

import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")

from lib_ctxrep import RepulsionConfig, vendi_score  # noqa: E402
from lib_ctxrep.evaluation.diffusers_tiny import (  # noqa: E402
    prompt_embeddings,
    tiny_flux_pipeline,
    tiny_flux_transformer,
    tiny_sd3_pipeline,
    tiny_sd3_transformer,
)
from lib_ctxrep.integrations.diffusers import apply_contextual_repulsion  # noqa: E402
from tests.library_spy import library_calls  # noqa: E402

B = 4
STRONG = RepulsionConfig(strength=0.5, window=0.3, iterations=5)


def flux_inputs(batch: int = B, seed: int = 0, sigma: float = 1.0) -> dict:
    g = torch.Generator().manual_seed(seed)
    embeds, pooled = prompt_embeddings(batch, 12, 32, 32)
    return dict(
        hidden_states=torch.randn(batch, 16, 4, generator=g),
        encoder_hidden_states=embeds,
        pooled_projections=pooled,
        timestep=torch.full((batch,), sigma),
        img_ids=torch.zeros(16, 3),
        txt_ids=torch.zeros(12, 3),
        return_dict=False,
    )


def run_flux(pipe, batch: int = B, steps: int = 4, seed: int = 0, embeddings: tuple | None = None, **kw):
    embeds, pooled = embeddings if embeddings is not None else prompt_embeddings(batch, 12, 32, 32)
    return pipe(
        prompt_embeds=embeds,
        pooled_prompt_embeds=pooled,
        height=16,
        width=16,
        num_inference_steps=steps,
        output_type="latent",
        generator=torch.Generator().manual_seed(seed),
        **kw,
    ).images


def run_flux_untouched(pipe, **kw) -> torch.Tensor:
    """``run_flux``, asserting that it reaches none of the library's code (no hook of ours left on the model)."""
    with library_calls() as calls:
        out = run_flux(pipe, **kw)
    assert calls == []
    return out


@pytest.fixture(scope="module")
def flux_pipe():
    return tiny_flux_pipeline(tiny_flux_transformer(layers=3, single_layers=2))


def test_attaching_to_an_unsupported_module_lists_the_supported_classes():
    with pytest.raises(TypeError, match=r"Flux.1 \(FluxTransformer2DModel\).*SD3 \(SD3Transformer2DModel\)"):
        apply_contextual_repulsion(torch.nn.Linear(2, 2))


def test_enabled_repulsion_changes_final_latents(flux_pipe):
    base = run_flux(flux_pipe)
    with apply_contextual_repulsion(flux_pipe, STRONG):
        out = run_flux(flux_pipe)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, base)


def test_disabled_config_is_bit_identical_to_never_attached(flux_pipe):
    base = run_flux(flux_pipe)
    with apply_contextual_repulsion(flux_pipe, RepulsionConfig(enabled=False)):
        out = run_flux(flux_pipe)
    assert torch.equal(out, base)


def test_remove_restores_bit_identical_output_and_the_library_is_no_longer_reached(flux_pipe):
    base = run_flux(flux_pipe)
    handle = apply_contextual_repulsion(flux_pipe, STRONG)
    with library_calls() as calls:
        assert not torch.equal(run_flux(flux_pipe), base)
    assert "repel_block" in calls and handle.attached
    handle.remove()
    handle.remove()  # idempotent
    assert not handle.attached
    assert torch.equal(run_flux_untouched(flux_pipe), base)


def test_the_model_keeps_no_reference_to_a_removed_handle_and_its_memory(flux_pipe):
    handle = apply_contextual_repulsion(flux_pipe, RepulsionConfig(strength=0.5, window=0.3, memory=True))
    run_flux(flux_pipe, batch=1)
    gone = weakref.ref(handle)
    handle.remove()
    del handle
    gc.collect()
    assert gone() is None


def test_hooks_are_gone_after_an_exception_inside_the_pipeline_call(flux_pipe):
    base = run_flux(flux_pipe)

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with apply_contextual_repulsion(flux_pipe, STRONG):
            run_flux(flux_pipe, callback_on_step_end=explode)
    assert torch.equal(run_flux_untouched(flux_pipe), base)


def test_attaching_twice_repels_once_and_the_first_handle_goes_inert(flux_pipe):
    with apply_contextual_repulsion(flux_pipe, STRONG):
        once = run_flux(flux_pipe)
    first = apply_contextual_repulsion(flux_pipe, STRONG, record_stats=True)
    second = apply_contextual_repulsion(flux_pipe, STRONG, record_stats=True)
    twice = run_flux(flux_pipe)
    second.remove()
    assert torch.equal(twice, once)
    assert not first.attached and first.stats == [] and second.stats


def capture_block_outputs(transformer, call) -> dict:
    """Outputs of every block as seen *after* all other hooks (registered last, so it runs last)."""
    seen = {}
    handles = []
    for name, block in [("double", b) for b in transformer.transformer_blocks] + [
        ("single", b) for b in getattr(transformer, "single_transformer_blocks", [])
    ]:
        index = len([k for k in seen if k[0] == name])
        key = (name, index)
        seen[key] = None

        def hook(module, args, output, key=key):
            seen[key] = (
                tuple(o.clone() if isinstance(o, torch.Tensor) else o for o in output)
                if isinstance(output, tuple)
                else output.clone()
            )

        handles.append(block.register_forward_hook(hook))
    try:
        call()
    finally:
        for h in handles:
            h.remove()
    return seen


def test_only_text_stream_of_selected_blocks_changes_and_image_stream_is_untouched_at_the_hook():
    transformer = tiny_flux_transformer(layers=3, single_layers=0)
    inputs = flux_inputs()
    config = RepulsionConfig(strength=0.5, iterations=5, blocks="1:2", single_blocks="off")
    with apply_contextual_repulsion(transformer, config):
        hooked = capture_block_outputs(transformer, lambda: transformer(**inputs))
    plain = capture_block_outputs(transformer, lambda: transformer(**inputs))
    text0, image0 = hooked[("double", 0)]
    assert torch.equal(text0, plain[("double", 0)][0]) and torch.equal(image0, plain[("double", 0)][1])
    text1, image1 = hooked[("double", 1)]
    assert torch.equal(image1, plain[("double", 1)][1])  # image stream of the hooked block: untouched
    assert not torch.equal(text1, plain[("double", 1)][0])  # text stream of the hooked block: repelled
    assert vendi_score(text1) > vendi_score(plain[("double", 1)][0])


def test_no_change_outside_the_window():
    transformer = tiny_flux_transformer(layers=2, single_layers=1)
    inputs = flux_inputs(sigma=0.5)  # progress 0.5 > window 0.3
    base = transformer(**inputs)[0]
    with apply_contextual_repulsion(transformer, STRONG):
        out = transformer(**inputs)[0]
    assert torch.equal(out, base)


def test_contextual_vendi_rises_at_every_hooked_block(flux_pipe):
    with apply_contextual_repulsion(flux_pipe, STRONG, record_stats=True) as handle:
        run_flux(flux_pipe)
    first_step = [s for s in handle.stats if s.progress == 0.0]
    assert {s.block for s in first_step} == {"double.0", "double.1", "double.2", "single.0", "single.1"}
    assert all(s.vendi_after > s.vendi_before for s in first_step)


def test_window_counts_steps_from_the_scheduler_not_calls(flux_pipe):
    config = RepulsionConfig(strength=0.5, window=0.05, iterations=2)
    for steps, active in ((4, {0.0}), (20, {0.0}), (50, {0.0, 0.02, 0.04})):
        with apply_contextual_repulsion(flux_pipe, config, record_stats=True) as handle:
            run_flux(flux_pipe, batch=2, steps=steps)
        assert {s.progress for s in handle.stats} == active


def split_single(output) -> tuple[torch.Tensor, torch.Tensor]:
    """(text, image) tokens of a Flux single block's output: a (text, image) tuple from diffusers 0.35, one
    [text; image] sequence before."""
    if isinstance(output, tuple):
        return output[0], output[1]
    return output[:, :12], output[:, 12:]


@pytest.mark.parametrize("mode", ["text", "all"])
def test_single_blocks_repel_their_text_tokens_and_their_image_tokens_in_all_mode_only(mode):
    transformer = tiny_flux_transformer(layers=1, single_layers=2)
    inputs = flux_inputs()
    seen = {}

    def computed(module, args, output):  # registered before ours: the block's output as it computed it
        seen.setdefault("computed", tuple(t.clone() for t in split_single(output)))

    def handed_on(module, args, output):  # registered after ours: what the next block gets
        seen.setdefault("handed_on", tuple(t.clone() for t in split_single(output)))

    block = transformer.single_transformer_blocks[0]
    hooks = [block.register_forward_hook(computed)]
    try:
        with apply_contextual_repulsion(transformer, RepulsionConfig(strength=0.5, iterations=5, single_blocks=mode)):
            hooks.append(block.register_forward_hook(handed_on))
            with torch.no_grad():
                transformer(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    (text, image), (text_after, image_after) = seen["computed"], seen["handed_on"]
    assert text.shape[1] == 12 and image.shape[1] == 16
    assert not torch.equal(text_after, text)
    assert torch.equal(image_after, image) == (mode == "text")


def test_positional_block_calls_under_gradient_checkpointing_are_repelled():
    transformer = tiny_flux_transformer(layers=2, single_layers=1)
    transformer.train()
    transformer.enable_gradient_checkpointing()
    inputs = flux_inputs()
    with torch.no_grad():
        base = transformer(**inputs)[0]
    hidden = inputs["hidden_states"].clone().requires_grad_(True)
    with apply_contextual_repulsion(transformer, STRONG) as handle, torch.enable_grad():
        out = transformer(**{**inputs, "hidden_states": hidden})[0]
        out.sum().backward()
    assert not handle.attached
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()
    assert not torch.allclose(out.detach(), base)


def test_prompt_embeddings_are_never_modified(flux_pipe):
    embeds, pooled = prompt_embeddings(B, 12, 32, 32)
    keep = embeds.clone()
    with apply_contextual_repulsion(flux_pipe, STRONG):
        run_flux(flux_pipe, steps=3, embeddings=(embeds, pooled))
    assert torch.equal(embeds, keep)


def test_cross_batch_memory_changes_later_batches_of_one_and_stays_bounded(flux_pipe):
    config = RepulsionConfig(strength=0.5, window=0.3, iterations=5, memory=True, memory_size=2)
    plain = [run_flux(flux_pipe, batch=1, seed=s) for s in range(4)]
    with apply_contextual_repulsion(flux_pipe, config) as handle:
        remembered = []
        for s in range(4):
            remembered.append(run_flux(flux_pipe, batch=1, seed=s))
            assert len(handle.engine.memory) <= 2
        assert handle.engine.memory.nbytes <= config.memory_mb * 2**20
    assert torch.equal(remembered[0], plain[0])  # nothing to remember yet, B = 1: no-op
    for s in range(1, 4):
        assert not torch.allclose(remembered[s], plain[s])


def test_single_blocks_in_all_tokens_mode_remember_their_text_tokens_at_batch_size_one(flux_pipe):
    config = RepulsionConfig(strength=0.5, window=0.3, iterations=5, memory=True, single_blocks="all")
    with apply_contextual_repulsion(flux_pipe, config, record_stats=True) as handle:
        run_flux(flux_pipe, batch=1, seed=0)
        run_flux(flux_pipe, batch=1, seed=1)
        memory = handle.engine.memory
        remembered = [[tuple(part.shape[1:]) for part in memory.rows(key)] for key in memory.keys()]
    # one key per hooked block (3 dual, 2 single) and step in the window (2 of 4), each holding text tokens only
    assert remembered == [[(12, 32)]] * (5 * 2)
    pushed = {s.block for s in handle.stats if s.memory_rows > 0}
    assert {"single.0", "single.1", "double.0"} <= pushed


def test_single_blocks_with_memory_image_remember_all_their_tokens_at_batch_size_one(flux_pipe):
    config = RepulsionConfig(strength=0.5, window=0.3, iterations=5, memory=True, memory_image=True)
    with apply_contextual_repulsion(flux_pipe, config) as handle:
        run_flux(flux_pipe, batch=1, seed=0)
        all_tokens = run_flux(flux_pipe, batch=1, seed=1)
        memory = handle.engine.memory
        remembered = [[tuple(part.shape[1:]) for part in memory.rows(key)] for key in memory.keys()]
    # per step in the window (2 of 4): the 3 dual blocks remember their text, the 2 single blocks text and image
    assert sorted(remembered) == [[(12, 32)]] * (3 * 2) + [[(12, 32), (64, 32)]] * (2 * 2)
    with apply_contextual_repulsion(flux_pipe, dataclasses.replace(config, memory_image=False)):
        run_flux(flux_pipe, batch=1, seed=0)
        assert not torch.allclose(all_tokens, run_flux(flux_pipe, batch=1, seed=1))


def test_memory_is_cleared_between_jobs(flux_pipe):
    config = RepulsionConfig(strength=0.5, window=0.3, iterations=5, memory=True)
    with apply_contextual_repulsion(flux_pipe, config) as handle:
        run_flux(flux_pipe, batch=1, seed=0)
        run_flux(flux_pipe, batch=1, seed=1)
        assert len(handle.engine.memory) > 0
        handle.new_job()
        assert len(handle.engine.memory) == 0
        first = run_flux(flux_pipe, batch=1, seed=2)
    assert torch.equal(first, run_flux(flux_pipe, batch=1, seed=2))


def test_bf16_transformer_runs_and_changes_output():
    transformer = tiny_flux_transformer(layers=2, single_layers=1).to(torch.bfloat16)
    inputs = flux_inputs()
    inputs = {
        k: v.to(torch.bfloat16) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        for k, v in inputs.items()
    }
    base = transformer(**inputs)[0]
    with apply_contextual_repulsion(transformer, STRONG):
        out = transformer(**inputs)[0]
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert not torch.equal(out, base)


def kontext_available() -> None:
    import diffusers

    if not hasattr(diffusers, "FluxKontextPipeline"):
        pytest.skip("FluxKontextPipeline needs diffusers >= 0.35")


def run_kontext(pipe, steps: int = 3) -> torch.Tensor:
    """One batch of B edits of a plain 32 x 32 input image."""
    embeds, pooled = prompt_embeddings(B, 12, 32, 32)
    return pipe(
        image=Image.new("RGB", (32, 32), (120, 60, 30)), prompt_embeds=embeds, pooled_prompt_embeds=pooled,
        height=16, width=16, max_area=256, _auto_resize=False, num_inference_steps=steps, output_type="latent",
        generator=torch.Generator().manual_seed(0),
    ).images  # fmt: skip


def test_flux_kontext_pipeline_edits_differ_and_stay_finite():
    kontext_available()
    pipe = tiny_flux_pipeline(tiny_flux_transformer(layers=2, single_layers=1), kontext=True)
    base = run_kontext(pipe)
    with apply_contextual_repulsion(pipe, STRONG, record_stats=True) as handle:
        edited = run_kontext(pipe)
    assert edited.shape == base.shape and torch.isfinite(edited).all()
    assert not torch.allclose(edited, base)
    assert handle.stats and all(s.vendi_after > s.vendi_before for s in handle.stats)
    assert any(s.block.startswith("single") for s in handle.stats)


def run_sd3(pipe, guidance: float, batch: int = B) -> torch.Tensor:
    embeds, pooled = prompt_embeddings(batch, 10, 32, 64, seed=3)
    neg, neg_pooled = prompt_embeddings(batch, 10, 32, 64, seed=4)
    return pipe(
        prompt_embeds=embeds,
        pooled_prompt_embeds=pooled,
        negative_prompt_embeds=neg,
        negative_pooled_prompt_embeds=neg_pooled,
        guidance_scale=guidance,
        height=16,
        width=16,
        num_inference_steps=3,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
    ).images


def test_sd3_pipeline_repels_cond_and_uncond_separately():
    pipe = tiny_sd3_pipeline(tiny_sd3_transformer(layers=3))
    base = run_sd3(pipe, 3.5)
    with apply_contextual_repulsion(pipe, STRONG, record_stats=True) as handle:
        out = run_sd3(pipe, 3.5)
    assert not torch.allclose(out, base) and torch.isfinite(out).all()
    first = [s for s in handle.stats if s.progress == 0.0]
    assert {s.branch for s in first} == {"uncond", "cond"}
    assert all(s.rows == B for s in first)
    # the last joint block emits no text stream: never hooked into
    assert {s.block for s in first} == {"double.0", "double.1"}


def test_sd3_rows_of_different_branches_never_mix():
    transformer = tiny_sd3_transformer(layers=3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * B, 4, 8, 8, generator=g)
    text = torch.randn(2 * B, 10, 32, generator=g)
    pooled = torch.randn(2 * B, 64, generator=g)
    t = torch.full((2 * B,), 1000.0)
    config = RepulsionConfig(strength=0.5, iterations=5, chunks=("uncond", "cond"))
    with apply_contextual_repulsion(transformer, config):
        out = transformer(x, text, pooled, t, return_dict=False)[0]
        changed = text.clone()
        changed[B:] += torch.randn(B, 10, 32, generator=g)  # perturb the cond rows only
        out2 = transformer(x, changed, pooled, t, return_dict=False)[0]
    assert torch.equal(out[:B], out2[:B])  # uncond rows do not see the cond rows
    assert not torch.equal(out[B:], out2[B:])


def test_sd3_only_cond_branch_when_configured():
    pipe = tiny_sd3_pipeline(tiny_sd3_transformer(layers=3))
    with apply_contextual_repulsion(
        pipe, RepulsionConfig(strength=0.5, window=0.3, iterations=3, branches=("cond",)), record_stats=True
    ) as handle:
        run_sd3(pipe, 3.5)
    assert {s.branch for s in handle.stats} == {"cond"}


def test_sd3_without_cfg_is_one_cond_chunk():
    pipe = tiny_sd3_pipeline(tiny_sd3_transformer(layers=3))
    with apply_contextual_repulsion(pipe, STRONG, record_stats=True) as handle:
        out = run_sd3(pipe, 1.0)
    assert torch.isfinite(out).all()
    assert {(s.branch, s.rows) for s in handle.stats} == {("cond", B)}


def transformer_outputs(pipe, run) -> list[torch.Tensor]:
    """The transformer's output of every call ``run()`` makes, in call order."""
    outputs = []
    hook = pipe.transformer.register_forward_hook(lambda m, a, out: outputs.append(out[0].clone()))
    try:
        run()
    finally:
        hook.remove()
    return outputs


def test_flux_true_cfg_negative_prompt_call_is_the_uncond_branch():
    """FluxPipeline with true_cfg_scale > 1 and a negative prompt calls the transformer twice per step, the prompt
    first. With one branch selected, of the first step's two calls (on the same latents as without repulsion) only
    that branch's changes: the prompt's call for "cond", the negative prompt's for "uncond"."""
    needs_argument("FluxPipeline", "true_cfg_scale")
    pipe = tiny_flux_pipeline(tiny_flux_transformer(layers=2, single_layers=1))
    negative = prompt_embeddings(B, 12, 32, 32, seed=7)

    def run():
        run_flux(pipe, steps=3, true_cfg_scale=4.0, negative_prompt_embeds=negative[0],
                 negative_pooled_prompt_embeds=negative[1])  # fmt: skip

    plain = transformer_outputs(pipe, run)
    assert len(plain) == 2 * 3  # two calls per step
    for branch in ("cond", "uncond"):
        with apply_contextual_repulsion(pipe, dataclasses.replace(STRONG, branches=(branch,))):
            repelled = transformer_outputs(pipe, run)
        moved = [not torch.equal(after, before) for after, before in zip(repelled[:2], plain[:2], strict=True)]
        assert moved == [branch == "cond", branch == "uncond"], branch  # [the prompt's call, the negative's]


def needs_argument(pipeline: str, argument: str) -> None:
    """Skip the test when the installed diffusers' ``pipeline`` has no ``argument``."""
    import diffusers

    if argument not in inspect.signature(getattr(diffusers, pipeline).__call__).parameters:
        pytest.skip(f"diffusers {diffusers.__version__} has no {argument} in {pipeline}")


def test_sd3_skip_layer_guidance_call_is_repelled_as_the_prompt_rows_alone():
    """With skip_guidance_layers, StableDiffusion3Pipeline makes an extra call per step on the prompt's B rows alone
    (``skip_layers=[...]``): one cond group of B rows, never split into [uncond; cond] halves."""
    needs_argument("StableDiffusion3Pipeline", "skip_guidance_layers")
    pipe = tiny_sd3_pipeline(tiny_sd3_transformer(layers=3))
    rows = []
    pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: rows.append((kw["hidden_states"].shape[0], kw.get("skip_layers"))), with_kwargs=True
    )
    embeds, pooled = prompt_embeddings(B, 10, 32, 64, seed=3)
    neg, neg_pooled = prompt_embeddings(B, 10, 32, 64, seed=4)
    config = RepulsionConfig(strength=0.5, window=0.5, iterations=3)  # steps 0 and 1 of 3
    with apply_contextual_repulsion(pipe, config, record_stats=True) as handle:
        pipe(
            prompt_embeds=embeds, pooled_prompt_embeds=pooled, negative_prompt_embeds=neg,
            negative_pooled_prompt_embeds=neg_pooled, guidance_scale=3.5, skip_guidance_layers=[1],
            skip_layer_guidance_start=0.0, skip_layer_guidance_stop=1.0, height=16, width=16, num_inference_steps=3,
            output_type="latent", generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
    assert (B, [1]) in rows[:3]  # step 1 (progress 1/3, in the window) made a skip-layer call
    second_step = [(s.branch, s.rows) for s in handle.stats if 0 < s.progress < 0.5]
    # the CFG call: blocks 0 and 1, each branch; the skip-layer call: block 0 only (block 1 is skipped)
    assert sorted(second_step) == [("cond", B)] * 3 + [("uncond", B)] * 2


def test_flux_kontext_reference_tokens_are_never_repelled():
    kontext_available()
    pipe = tiny_flux_pipeline(tiny_flux_transformer(layers=1, single_layers=2), kontext=True)
    seen: dict = {}
    transformer = pipe.transformer

    def ids(module, args, kwargs):
        seen.setdefault("img_ids", kwargs["img_ids"])

    def before(module, args, output):  # registered before ours: the single block's output before repulsion
        seen.setdefault("out", output[1].clone())

    def after(module, args, kwargs):  # the next single block's input: after repulsion
        seen.setdefault("next_in", kwargs["hidden_states"].clone())

    hooks = [
        transformer.register_forward_pre_hook(ids, with_kwargs=True),
        transformer.single_transformer_blocks[0].register_forward_hook(before),
        transformer.single_transformer_blocks[1].register_forward_pre_hook(after, with_kwargs=True),
    ]
    try:
        with apply_contextual_repulsion(pipe, STRONG):
            run_kontext(pipe, steps=2)
    finally:
        for h in hooks:
            h.remove()
    target = int((seen["img_ids"][:, 0] == 0).sum())
    assert 0 < target < seen["out"].shape[1]  # there are reference tokens after the target's
    assert torch.equal(seen["next_in"][:, target:], seen["out"][:, target:])
    assert not torch.equal(seen["next_in"][:, :target], seen["out"][:, :target])


def flux_once(transformer, config: RepulsionConfig) -> torch.Tensor:
    with apply_contextual_repulsion(transformer, config), torch.no_grad():
        return transformer(**flux_inputs())[0]


@pytest.mark.parametrize(("blocks", "repelled"), [("all", 3 + 2), ("middle", 1 + 2), ((0, 2), 2 + 2)])
def test_the_step_strength_is_shared_out_over_the_hooked_blocks(blocks, repelled):
    transformer = tiny_flux_transformer(layers=3, single_layers=2)
    shared = flux_once(transformer, RepulsionConfig(step_strength=1.5, blocks=blocks, window=1.0))
    per_block = flux_once(transformer, RepulsionConfig(strength=1.5 / repelled, blocks=blocks, window=1.0))
    assert torch.equal(shared, per_block)
    assert not torch.equal(shared, flux_once(transformer, RepulsionConfig(strength=1.5, blocks=blocks, window=1.0)))


def test_sd3_shares_the_step_strength_over_the_blocks_that_emit_text():
    transformer = tiny_sd3_transformer(layers=3)  # the last block emits no text stream: 2 repelled blocks
    g = torch.Generator().manual_seed(0)
    inputs = (
        torch.randn(B, 4, 8, 8, generator=g),
        torch.randn(B, 10, 32, generator=g),
        torch.randn(B, 64, generator=g),
    )
    t = torch.full((B,), 1000.0)
    outs = []
    for config in (RepulsionConfig(step_strength=1.0, window=1.0), RepulsionConfig(strength=0.5, window=1.0)):
        with apply_contextual_repulsion(transformer, config), torch.no_grad():
            outs.append(transformer(*inputs, t, return_dict=False)[0])
    assert torch.equal(*outs)


def test_a_dict_in_place_of_a_config_is_refused_before_anything_is_attached():
    transformer = tiny_flux_transformer()
    with pytest.raises(TypeError, match=r"apply_contextual_repulsion: config must be a RepulsionConfig, got a dict"):
        apply_contextual_repulsion(transformer, {"strength": 0.1})
    with library_calls() as calls, torch.no_grad():
        transformer(**flux_inputs())
    assert calls == []


@pytest.mark.parametrize("sigma", [1.0, 0.5], ids=["inside", "outside"])
def test_the_hooks_keep_no_reference_to_a_calls_tensors_after_it(sigma):
    import gc
    import weakref

    transformer = tiny_flux_transformer()
    inputs = flux_inputs(sigma=sigma)
    latents = weakref.ref(inputs["hidden_states"])
    with apply_contextual_repulsion(transformer, RepulsionConfig(window=0.3)), torch.no_grad():
        transformer(**inputs)
        del inputs
        gc.collect()
        assert latents() is None
