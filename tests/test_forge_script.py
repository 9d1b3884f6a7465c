"""scripts/ctxrep.py on Forge stand-ins (tests/forge_modules, tests/forge_standins.py) with real gradio.

gradio is what Forge ships (4.40.0); where it is not installed (the current-diffusers CI environment) these tests
are skipped, and the Forge-pins environment runs them.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

gr = pytest.importorskip("gradio")

from lib_ctxrep.integrations import forge_args  # noqa: E402
from tests.forge_standins import (  # noqa: E402
    IntegratedFluxTransformer2DModel,
    KModel,
    PredictionFlux,
    UnetPatcher,
    sampling_function_inner,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ctxrep():
    """Import scripts/ctxrep.py the way Forge does, with the stand-in ``modules`` package on the path."""
    sys.path.insert(0, str(ROOT / "tests" / "forge_modules"))
    try:
        spec = importlib.util.spec_from_file_location("ctxrep.py", ROOT / "scripts" / "ctxrep.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(ROOT / "tests" / "forge_modules"))


class ForgeObjects:
    def __init__(self, unet):
        self.unet = unet


def processing(unet, **kw):
    """The attributes of Forge's StableDiffusionProcessing that the script touches."""
    return SimpleNamespace(
        sd_model=SimpleNamespace(forge_objects=ForgeObjects(unet)), extra_generation_params={}, is_hr_pass=False, **kw
    )


def flux_unet():
    torch.manual_seed(0)
    return UnetPatcher(KModel(IntegratedFluxTransformer2DModel(), PredictionFlux()))


def sample(unet, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 3, 3, generator=g)
    cond = [{"c_crossattn": torch.randn(1, 6, 16, generator=torch.Generator().manual_seed(9)).expand(batch, -1, -1)}]
    with torch.inference_mode():
        return sampling_function_inner(unet.model, x, torch.ones(batch), None, cond, 1.0, unet.model_options)


def args(**kw):
    return [({**forge_args.DEFAULTS, "enabled": True, "strength": 0.5, **kw})[n] for n in forge_args.ARG_NAMES]


def generate(script, p, script_args, batches=1, hr=False, batch=4):
    """Forge's order of calls for one generation (modules/processing.py): process, then per batch
    before_process_batch + process_before_every_sampling + sampling, then postprocess."""
    outs = []
    script.process(p, *script_args)
    original = p.sd_model.forge_objects.unet
    for n in range(batches):
        p.sd_model.forge_objects.unet = original  # Forge resets forge_objects before every sampling
        script.before_process_batch(p, *script_args, batch_number=n)
        script.process_before_every_sampling(p, *script_args)
        outs.append(sample(p.sd_model.forge_objects.unet, batch=batch, seed=n))
        if hr:
            p.is_hr_pass = True
            p.sd_model.forge_objects.unet = original
            script.process_before_every_sampling(p, *script_args)
            p.hr_unet = p.sd_model.forge_objects.unet
            p.is_hr_pass = False
    script.postprocess(p, None, *script_args)
    p.sd_model.forge_objects.unet = original
    return outs


def test_ui_builds_the_controls_in_argument_order_with_ids_and_infotext(ctxrep):
    script = ctxrep.ContextualRepulsionScript()
    with gr.Blocks():
        components = script.ui(is_img2img=False)
    assert len(components) == len(forge_args.ARG_NAMES)
    assert [c.elem_id for c in components[1:]] == [f"ctxrep_txt2img_{n}" for n in forge_args.ARG_NAMES[1:]]
    assert components[0].accordion.elem_id == "ctxrep_txt2img_enabled"  # InputAccordion: the accordion's id
    assert components[0].value is False  # off by default
    assert len(script.infotext_fields) == len(components)
    assert script.show(True) is ctxrep.scripts.AlwaysVisible and script.show(False) is ctxrep.scripts.AlwaysVisible


def test_infotext_fields_restore_pasted_values(ctxrep):
    script = ctxrep.ContextualRepulsionScript()
    with gr.Blocks():
        components = script.ui(is_img2img=True)
    settings = forge_args.parse(args(strength=0.2, blocks="middle third"))
    pasted = {k: str(v) for k, v in forge_args.infotext(settings).items()}
    restored = {id(c): target(pasted) for c, target in script.infotext_fields}
    assert restored[id(components[0])] is True
    assert restored[id(components[1])] == 0.2 and restored[id(components[3])] == "middle third"


def test_enabled_generation_patches_a_clone_and_changes_the_images(ctxrep):
    unet = flux_unet()
    base = sample(unet)
    p = processing(unet)
    out = generate(ctxrep.ContextualRepulsionScript(), p, args())[0]
    assert not torch.allclose(out, base)
    assert "model_function_wrapper" not in unet.model_options
    assert p.extra_generation_params["CtxRep"] is True and p.extra_generation_params["CtxRep strength"] == 0.5


def test_disabled_after_enabled_is_bit_identical_to_never_enabled(ctxrep):
    unet = flux_unet()
    base = sample(unet)
    script = ctxrep.ContextualRepulsionScript()
    generate(script, processing(unet), args())
    p = processing(unet)
    out = generate(script, p, args(enabled=False))[0]
    assert torch.equal(out, base)
    assert p.extra_generation_params == {}
    assert sum(len(m._forward_hooks) for m in unet.model.diffusion_model.modules()) == 0


def test_hires_pass_is_left_alone_unless_asked(ctxrep):
    unet = flux_unet()
    p = processing(unet)
    generate(ctxrep.ContextualRepulsionScript(), p, args(), hr=True)
    assert p.hr_unet is unet
    p = processing(unet)
    generate(ctxrep.ContextualRepulsionScript(), p, args(hires=True), hr=True)
    assert p.hr_unet is not unet and "model_function_wrapper" in p.hr_unet.model_options


def test_cross_batch_memory_spans_the_batch_count_and_a_new_generation_starts_empty(ctxrep):
    unet = flux_unet()
    script = ctxrep.ContextualRepulsionScript()
    plain = [sample(unet, batch=1, seed=n) for n in range(3)]
    for _ in range(2):  # two generations: the second must not remember the first
        p = processing(unet)
        outs = generate(script, p, args(memory=True), batches=3, batch=1)
        assert torch.equal(outs[0], plain[0])  # batch size 1, nothing remembered yet: unchanged
        assert not torch.allclose(outs[1], plain[1]) and not torch.allclose(outs[2], plain[2])
        assert p._ctxrep_job is None


def test_unsupported_model_keeps_the_generation_and_says_why(ctxrep, capsys):
    unet = UnetPatcher(KModel(torch.nn.Linear(2, 2), PredictionFlux()))
    p = processing(unet)
    script = ctxrep.ContextualRepulsionScript()
    script.process(p, *args())
    script.process_before_every_sampling(p, *args())
    assert p.sd_model.forge_objects.unet is unet
    assert "Linear is not supported" in p.extra_generation_params["CtxRep note"]
    assert "[Contextual Repulsion]" in capsys.readouterr().out


def test_invalid_arguments_give_a_clear_message_and_the_generation_continues(ctxrep):
    unet = flux_unet()
    base = sample(unet)
    p = processing(unet)
    out = generate(ctxrep.ContextualRepulsionScript(), p, args(window=5.0))[0]
    assert torch.equal(out, base)
    assert "window" in p.extra_generation_params["CtxRep error"]


def test_xyz_axes_register_once_and_override_the_ui_values(ctxrep):
    axis_options = []

    class AxisOption:
        def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None, prepare=None):
            self.label, self.type, self.apply, self.confirm, self.choices = label, type, apply, confirm, choices

    xyz = SimpleNamespace(axis_options=axis_options, AxisOption=AxisOption)
    entry = ctxrep.scripts.ScriptClassData(type("Script", (), {"__module__": "xyz_grid.py"}), "", "", xyz)
    ctxrep.scripts.scripts_data.append(entry)
    try:
        ctxrep.script_callbacks.before_ui_callback()
        ctxrep.script_callbacks.before_ui_callback()
    finally:
        ctxrep.scripts.scripts_data.remove(entry)
    labels = [o.label for o in axis_options]
    assert labels == ["[CtxRep] Strength", "[CtxRep] Window", "[CtxRep] Block preset"]
    with pytest.raises(forge_args.ArgumentError, match="window"):
        axis_options[1].confirm(None, [0.1, 3.0])
    p = processing(flux_unet())
    axis_options[0].apply(p, 0.3, [0.3])
    ctxrep.ContextualRepulsionScript().process(p, *args(enabled=False, strength=0.05))
    assert p._ctxrep_settings.config.strength == 0.3


def test_api_dict_form_is_accepted(ctxrep):
    unet = flux_unet()
    p = processing(unet)
    script = ctxrep.ContextualRepulsionScript()
    script.process(p, {"enabled": True, "strength": 0.25, "blocks": "middle third"})
    assert p._ctxrep_settings.config.strength == 0.25 and p._ctxrep_settings.config.blocks == "middle"
