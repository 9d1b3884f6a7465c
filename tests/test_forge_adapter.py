"""The Forge front end (lib_ctxrep.integrations.forge) on stand-ins of Forge's patcher, sampler batching and blocks."""

from __future__ import annotations

import math

import pytest
import torch

from lib_ctxrep import RepulsionConfig
from lib_ctxrep.integrations.forge import ForgeRepulsion, PredictorWindow
from tests.forge_standins import (
    IntegratedFluxTransformer2DModel,
    KModel,
    MMDiTX,
    PredictionDiscreteFlow,
    PredictionFlux,
    UnetPatcher,
    sampling_function_inner,
)
from tests.library_spy import library_calls

B = 4
CONFIG = RepulsionConfig(strength=0.5, iterations=4)


def flux_unet(seed: int = 0) -> UnetPatcher:
    torch.manual_seed(seed)
    return UnetPatcher(KModel(IntegratedFluxTransformer2DModel(), PredictionFlux()))


def sd3_unet(seed: int = 0) -> UnetPatcher:
    torch.manual_seed(seed)
    return UnetPatcher(KModel(MMDiTX(), PredictionDiscreteFlow()))


def conditions(seed: int = 1, prompts: int = 1):
    g = torch.Generator().manual_seed(seed)
    cond = [{"c_crossattn": torch.randn(1, 6, 16, generator=g).expand(B, -1, -1)} for _ in range(prompts)]
    uncond = [{"c_crossattn": torch.randn(1, 6, 16, generator=g).expand(B, -1, -1)}]
    return cond, uncond


def sample(unet: UnetPatcher, sigma: float = 1.0, cfg: float = 1.0, seed: int = 0, batch: int = B, **kw):
    x = torch.randn(batch, 4, 3, 3, generator=torch.Generator().manual_seed(seed))
    cond, uncond = conditions()
    cond = [{"c_crossattn": c["c_crossattn"][:batch]} for c in cond]
    uncond = [{"c_crossattn": c["c_crossattn"][:batch]} for c in uncond]
    with torch.inference_mode():
        return sampling_function_inner(unet.model, x, torch.full((batch,), sigma), uncond, cond, cfg,
                                       unet.model_options, **kw)  # fmt: skip


def patched(unet: UnetPatcher, config: RepulsionConfig = CONFIG, **kw):
    job = ForgeRepulsion(config, **kw)
    clone = unet.clone()
    assert job.patch(clone)
    return job, clone


def sample_untouched(unet: UnetPatcher, **kw) -> torch.Tensor:
    """``sample``, asserting that it reaches none of the library's code (no hook of ours is left on the model)."""
    with library_calls() as calls:
        out = sample(unet, **kw)
    assert calls == []
    return out


def test_cond_only_batch_at_cfg_1_is_repelled():
    unet = flux_unet()
    base = sample(unet)
    job, clone = patched(unet, record_stats=True)
    out = sample(clone)
    assert not torch.allclose(out, base)
    assert {s.branch for s in job.engine.stats} == {"cond"}
    assert all(s.vendi_after > s.vendi_before for s in job.engine.stats)


def test_no_hook_stays_on_the_shared_model_after_a_call():
    unet = flux_unet()
    base = sample(unet)
    job, clone = patched(unet)
    with library_calls() as calls:
        sample(clone)
    assert "repel_block" in calls
    assert job.attached_hooks == 0 and torch.equal(sample_untouched(unet), base)


def test_no_hook_stays_after_an_exception_inside_the_model():
    unet = flux_unet()
    base = sample(unet)
    job, clone = patched(unet)

    def explode(module, args, output):
        raise RuntimeError("interrupted")

    handle = unet.model.diffusion_model.single_blocks[0].register_forward_hook(explode)
    with pytest.raises(RuntimeError, match="interrupted"):
        sample(clone)
    handle.remove()
    assert job.attached_hooks == 0 and not job.engine.active
    assert torch.equal(sample_untouched(unet), base)


def test_the_original_patcher_is_untouched_and_gives_bit_identical_output():
    unet = flux_unet()
    base = sample(unet)
    _, clone = patched(unet)
    sample(clone)
    assert "model_function_wrapper" not in unet.model_options
    assert torch.equal(sample(unet), base)


def test_disabled_config_is_bit_identical():
    unet = flux_unet()
    base = sample(unet)
    _, clone = patched(unet, RepulsionConfig(enabled=False))
    assert torch.equal(sample(clone), base)


def test_outside_the_window_nothing_is_attached_or_changed():
    unet = flux_unet()
    base = sample(unet, sigma=0.5)
    job, clone = patched(unet)
    attached = []
    unet.model.diffusion_model.double_blocks[0].register_forward_pre_hook(
        lambda m, a: attached.append(job.attached_hooks)
    )
    with library_calls() as calls:
        out = sample(clone, sigma=0.5)
    assert torch.equal(out, base)
    assert "active" not in calls and "repel_block" not in calls  # no block hook ran
    assert attached == [0]


def test_cond_and_uncond_chunks_are_each_repelled_as_a_batch_of_b_rows():
    unet = flux_unet()
    job, clone = patched(unet, record_stats=True)
    sample(clone, cfg=3.5)
    assert sorted((s.block, s.branch, s.rows) for s in job.engine.stats) == sorted(
        (block, branch, B) for block in ("double.0", "double.1", "double.2", "single.0", "single.1")
        for branch in ("cond", "uncond")
    )  # fmt: skip


@pytest.mark.parametrize("branch", ["cond", "uncond"])
def test_the_rows_forge_marks_1_in_cond_or_uncond_are_the_uncond_branch(branch):
    """With one branch selected, the chunks of the other branch come out of the model exactly as without repulsion."""
    unet = flux_unet()
    _, clone = patched(unet, RepulsionConfig(strength=0.5, iterations=4, branches=(branch,)))
    ours = clone.model_options["model_function_wrapper"]
    seen = []

    def compare(apply_model, args):  # around ours: the plain output of the same call, then ours
        plain = apply_model(args["input"], args["timestep"], **args["c"])
        out = ours(apply_model, args)
        chunks = len(args["cond_or_uncond"])
        for kind, got, expected in zip(args["cond_or_uncond"], out.chunk(chunks), plain.chunk(chunks), strict=True):
            seen.append(("uncond" if kind == 1 else "cond", torch.equal(got, expected)))
        return out

    clone.model_options["model_function_wrapper"] = compare
    sample(clone, cfg=3.5)
    assert sorted(seen) == sorted([(branch, False), ("uncond" if branch == "cond" else "cond", True)])


def test_low_vram_separate_calls_give_the_same_result_as_one_batched_call():
    unet = flux_unet()
    _, batched = patched(unet)
    _, split = patched(unet)
    together = sample(batched, cfg=3.5)
    apart = sample(split, cfg=3.5, max_chunks_per_call=1)
    torch.testing.assert_close(apart, together, rtol=1e-5, atol=1e-5)


def test_and_prompts_add_cond_chunks_each_repelled_on_its_own():
    unet = flux_unet()
    job, clone = patched(unet, record_stats=True)
    x = torch.randn(B, 4, 3, 3)
    cond, uncond = conditions(prompts=2)
    with torch.inference_mode():
        sampling_function_inner(clone.model, x, torch.ones(B), uncond, cond, 3.5, clone.model_options)
    first_block = [s for s in job.engine.stats if s.block == "double.0"]
    assert sorted(s.branch for s in first_block) == ["cond", "cond", "uncond"]


def test_an_existing_model_function_wrapper_is_chained_not_dropped():
    unet = flux_unet()
    calls = []

    def multidiffusion_like(apply_model, args):
        calls.append(args["input"].shape[0])
        return apply_model(args["input"], args["timestep"], **args["c"])

    unet.set_model_unet_function_wrapper(multidiffusion_like)
    base = sample(unet)
    _, clone = patched(unet)
    out = sample(clone)
    assert len(calls) == 2
    assert not torch.allclose(out, base)


def test_batch_size_one_without_memory_changes_nothing():
    unet = flux_unet()
    base = sample(unet, batch=1)
    _, clone = patched(unet)
    assert torch.equal(sample(clone, batch=1), base)


def test_memory_spans_the_batch_count_of_one_job():
    unet = flux_unet()
    plain = [sample(unet, batch=1, seed=s) for s in range(3)]
    job, clone = patched(unet, RepulsionConfig(strength=0.5, iterations=4, memory=True))
    outs = []
    for s in range(3):
        outs.append(sample(clone, batch=1, seed=s))
        job.engine.new_batch()
    assert torch.equal(outs[0], plain[0])
    assert not torch.allclose(outs[1], plain[1]) and not torch.allclose(outs[2], plain[2])
    job.close()
    assert len(job.engine.memory) == 0


def test_single_blocks_in_all_tokens_mode_remember_only_their_text_tokens():
    unet = flux_unet()
    job, clone = patched(unet, RepulsionConfig(strength=0.5, iterations=4, memory=True, single_blocks="all"))
    for s in range(2):
        sample(clone, batch=1, seed=s)
        job.engine.new_batch()
    memory = job.engine.memory
    remembered = [[tuple(part.shape[1:]) for part in memory.rows(key)] for key in memory.keys()]
    # one key per hooked block (3 double, 2 single), each holding the 6 text tokens only (the image has 4)
    assert remembered == [[(6, 32)]] * 5
    job.close()


def test_sd3_joint_blocks_are_repelled_and_the_last_block_is_left_alone():
    unet = sd3_unet()
    base = sample(unet, cfg=3.5)
    job, clone = patched(unet, record_stats=True)
    out = sample(clone, cfg=3.5)
    assert not torch.allclose(out, base)
    assert {s.block for s in job.engine.stats} == {"double.0", "double.1", "double.2"}
    assert {s.branch for s in job.engine.stats} == {"cond", "uncond"}


@pytest.mark.parametrize("mode", ["text", "all"])
def test_flux_single_blocks_repel_their_text_tokens_and_their_image_tokens_in_all_mode_only(mode):
    unet = flux_unet()
    model = unet.model.diffusion_model
    seen = {}

    def computed(module, args, output):  # registered before ours (attached per call): the block's own output
        seen.setdefault("computed", output.clone())

    def handed_on(module, args):  # the next single block's input: after our hook
        seen.setdefault("handed_on", args[0].clone())

    hooks = [model.single_blocks[0].register_forward_hook(computed),
             model.single_blocks[1].register_forward_pre_hook(handed_on)]  # fmt: skip
    try:
        job, clone = patched(unet, RepulsionConfig(strength=0.5, iterations=4, single_blocks=mode), record_stats=True)
        sample(clone)
    finally:
        for hook in hooks:
            hook.remove()
    text = 6  # [text; image] with 4 image tokens (a 3 x 3 latent padded to 2 x 2 patches)
    before, after = seen["computed"], seen["handed_on"]
    assert before.shape[1] == text + 4
    assert not torch.equal(after[:, :text], before[:, :text])
    assert torch.equal(after[:, text:], before[:, text:]) == (mode == "text")
    assert {s.block for s in job.engine.stats if s.block.startswith("single")} == {"single.0", "single.1"}


def test_unsupported_models_are_reported_and_left_unpatched():
    unet = UnetPatcher(KModel(torch.nn.Linear(2, 2), PredictionFlux()))
    job = ForgeRepulsion(CONFIG)
    clone = unet.clone()
    assert not job.supports(clone)
    assert not job.patch(clone)
    assert "model_function_wrapper" not in clone.model_options


@pytest.mark.parametrize("predictor", [PredictionFlux(), PredictionDiscreteFlow()], ids=["flux", "sd3"])
def test_window_from_the_predictor_is_the_first_step_of_20_with_the_simple_schedule(predictor):
    window = PredictorWindow(predictor)
    table = predictor.sigmas
    steps = 20
    sigmas = [float(table[math.floor((len(table) - 1) * (1 - i / steps))]) for i in range(steps)]
    progress = [window.progress(s) for s in sigmas]
    assert progress[0] == 0.0
    assert [p < 0.05 - 1e-9 for p in progress].count(True) == 1
    assert progress == sorted(progress)


def test_kontext_reference_tokens_are_never_repelled_and_its_forward_is_left_in_place():
    from tests.forge_standins import kontext_forward

    unet = flux_unet()
    model = unet.model.diffusion_model
    reference = torch.randn(1, 3, 16, generator=torch.Generator().manual_seed(5))  # 3 reference tokens
    patched_forward = kontext_forward(reference)
    original = IntegratedFluxTransformer2DModel.forward
    IntegratedFluxTransformer2DModel.forward = patched_forward  # what forge2_flux_kontext does
    seen = {}

    def before(module, args, output):  # registered first: sees the single block's output before our hook
        seen["out"] = output.clone()

    def after(module, args):  # input of the next single block: after our hook
        seen["next_in"] = args[0].clone()

    hooks = [
        model.single_blocks[0].register_forward_hook(before),
        model.single_blocks[1].register_forward_pre_hook(after),
    ]
    try:
        job, clone = patched(unet, RepulsionConfig(strength=0.5, iterations=4, single_blocks="all"), record_stats=True)
        x = torch.randn(B, 4, 4, 4, generator=torch.Generator().manual_seed(0))
        cond, _ = conditions()
        with torch.inference_mode():
            out = sampling_function_inner(clone.model, x, torch.ones(B), None, cond, 1.0, clone.model_options)
        assert out.shape == x.shape
        assert IntegratedFluxTransformer2DModel.forward is patched_forward
        text, image = 6, 4
        assert torch.equal(seen["next_in"][:, text + image :], seen["out"][:, text + image :])  # reference: untouched
        assert not torch.equal(
            seen["next_in"][:, : text + image], seen["out"][:, : text + image]
        )  # text + image: repelled
    finally:
        IntegratedFluxTransformer2DModel.forward = original
        for h in hooks:
            h.remove()


def test_spell_post_cfg_function_pushes_the_denoised_prediction_on_any_model():
    from lib_ctxrep.integrations.forge import ForgeSpell
    from lib_ctxrep.spell import SpellConfig

    class UNetLike(torch.nn.Module):  # not an MM-DiT (no double/joint blocks): SPELL still applies
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 4, 1)

        def forward(self, x, timestep, context=None, **kwargs):
            return self.conv(x) + context.mean()

    torch.manual_seed(0)
    unet = UnetPatcher(KModel(UNetLike(), PredictionFlux()))
    base = sample(unet, cfg=3.5)
    far = ForgeSpell(SpellConfig(radius=1e-6))
    clone = unet.clone()
    far.patch(clone)
    assert torch.equal(sample(clone, cfg=3.5), base) and far.engine.stats.samples_pushed == 0
    near = ForgeSpell(SpellConfig(relative_radius=2.0))
    clone = unet.clone()
    near.patch(clone)
    out = sample(clone, cfg=3.5)
    assert not torch.allclose(out, base) and near.engine.stats.samples_pushed > 0
    assert "sampler_post_cfg_function" not in unet.model_options
    near.end_batch(out)
    assert near.engine.remembered == B


def test_spell_remembers_the_first_pass_prediction_when_the_hires_pass_changed_the_shape():
    from lib_ctxrep.integrations.forge import ForgeSpell
    from lib_ctxrep.spell import SpellConfig

    unet = flux_unet()
    job = ForgeSpell(SpellConfig(relative_radius=1.0))
    clone = unet.clone()
    job.patch(clone)
    first_pass = sample(clone)
    hires = torch.zeros(B, 4, 6, 6)  # the hires pass's samples: another latent size
    job.end_batch(hires)
    assert job.engine.remembered == B
    # a later batch of one (nothing to repel within it) is repelled from the first pass's predictions, not the hires
    near = first_pass[:1] + 0.1 * torch.randn(first_pass[:1].shape, generator=torch.Generator().manual_seed(3))
    assert job.engine.delta(near).abs().sum() > 0
    assert torch.equal(job.engine.delta(hires[:1] + 0.1), torch.zeros(1, 4, 6, 6))


@pytest.mark.parametrize(
    ("unet", "cfg", "repelled"),
    [(flux_unet, 1.0, 3 + 2), (sd3_unet, 3.0, 4 - 1)],  # SD3: the last joint block emits no text and is not hooked
    ids=["flux", "sd3"],
)
def test_the_step_strength_is_shared_out_over_the_blocks_the_front_end_hooks(unet, cfg, repelled):
    shared = sample(patched(unet(), RepulsionConfig(step_strength=1.5, iterations=4))[1], cfg=cfg)
    per_block = sample(patched(unet(), RepulsionConfig(strength=1.5 / repelled, iterations=4))[1], cfg=cfg)
    assert torch.equal(shared, per_block)


def test_a_model_of_another_class_with_flux_block_lists_is_read_as_flux():
    renamed = flux_unet()
    model = renamed.model.diffusion_model
    methods = {k: v for k, v in vars(type(model)).items() if callable(v) and not k.startswith("__")}
    model.__class__ = type("ForkedFluxModel", (torch.nn.Module,), methods)  # a fork's copy under another name
    assert torch.equal(sample(patched(renamed)[1]), sample(patched(flux_unet())[1]))
    assert not torch.equal(sample(renamed), sample(patched(renamed)[1]))
