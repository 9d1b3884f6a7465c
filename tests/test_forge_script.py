"""scripts/ctxrep.py on Forge stand-ins (tests/forge_modules, tests/forge_standins.py) with real gradio.

gradio is what Forge ships (4.40.0); where it is not installed (the current-diffusers CI environment) these tests
are skipped, and the Forge-pins environment runs them.
"""

from __future__ import annotations

import gc
import json
import re
import sys
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

gr = pytest.importorskip("gradio")

from lib_ctxrep import families  # noqa: E402
from lib_ctxrep.integrations import forge_args  # noqa: E402
from lib_ctxrep.integrations.forge import ForgeRepulsion  # noqa: E402
from tests.forge_script_loader import flux_unet, forge_script  # noqa: E402
from tests.forge_standins import (  # noqa: E402
    KModel,
    PredictionFlux,
    UnetPatcher,
    api_pasted_value,
    init_default_script_args,
    init_script_args,
    sampling_function_inner,
)
from tests.library_spy import library_calls  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ctxrep():
    """The extension's script, imported the way Forge does."""
    with forge_script() as module:
        yield module


def ctxrep_scripts():
    return sys.modules["modules.scripts"]


class ForgeObjects:
    def __init__(self, unet):
        self.unet = unet


def processing(unet, **kw):
    """The attributes of Forge's StableDiffusionProcessing that the script touches."""
    return SimpleNamespace(
        sd_model=SimpleNamespace(forge_objects=ForgeObjects(unet)), extra_generation_params={}, is_hr_pass=False, **kw
    )


def noise(batch=4, seed=0, typical=False):
    """Initial latents; ``typical``: near-copies of one noise (the typicality bias at its worst)."""
    x = torch.randn(batch, 4, 3, 3, generator=torch.Generator().manual_seed(seed))
    return x[:1] + 0.05 * x if typical else x


def sample(unet, batch=4, seed=0, typical=False):
    x = noise(batch, seed, typical)
    cond = [{"c_crossattn": torch.randn(1, 6, 16, generator=torch.Generator().manual_seed(9)).expand(batch, -1, -1)}]
    with torch.inference_mode():
        return sampling_function_inner(unet.model, x, torch.ones(batch), None, cond, 1.0, unet.model_options)


def args(**kw):
    return [({**forge_args.DEFAULTS, "enabled": True, "block_strength": 0.5, **kw})[n] for n in forge_args.ARG_NAMES]


def generate(script, p, script_args, batches=1, hr=False, batch=4, typical=False):
    """Forge's order of calls for one generation (modules/processing.py): process, then per batch
    before_process_batch + process_before_every_sampling + sampling, then postprocess."""
    outs = []
    script.process(p, *script_args)
    original = p.sd_model.forge_objects.unet
    for n in range(batches):
        p.sd_model.forge_objects.unet = original  # Forge resets forge_objects before every sampling
        script.before_process_batch(p, *script_args, batch_number=n)
        x = noise(batch, n, typical)
        script.process_before_every_sampling(p, *script_args, x=x, noise=x)
        outs.append(sample(p.sd_model.forge_objects.unet, batch=batch, seed=n, typical=typical))
        post = ctxrep_scripts().PostSampleArgs(outs[-1])
        script.post_sample(p, post, *script_args)
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
    pasted_components = [id(c) for c, _ in script.infotext_fields]
    reproduce = components[forge_args.ARG_NAMES.index("reproduce")]
    assert pasted_components == [id(c) for c in components if c is not reproduce]  # a paste leaves the choice alone
    assert script.show(True) is ctxrep.scripts.AlwaysVisible and script.show(False) is ctxrep.scripts.AlwaysVisible


def test_infotext_fields_restore_pasted_values(ctxrep):
    script = ctxrep.ContextualRepulsionScript()
    with gr.Blocks():
        components = script.ui(is_img2img=True)
    settings = forge_args.parse(args(block_strength=0.2, blocks="middle third"))
    pasted = {k: str(v) for k, v in forge_args.infotext(settings).items()}
    restored = {id(c): target(pasted) for c, target in script.infotext_fields}
    assert restored[id(components[0])] is True
    assert restored[id(components[1])] == "0.2" and restored[id(components[3])] == "middle third"


def test_enabled_generation_patches_a_clone_and_changes_the_images(ctxrep):
    unet = flux_unet()
    base = sample(unet)
    p = processing(unet)
    out = generate(ctxrep.ContextualRepulsionScript(), p, args())[0]
    assert not torch.allclose(out, base)
    assert "model_function_wrapper" not in unet.model_options
    assert p.extra_generation_params["CtxRep"] is True and p.extra_generation_params["CtxRep block strength"] == 0.5


@pytest.mark.parametrize(
    "settings",
    [
        {"block_strength": 0.3},  # a per-block strength
        {"step_strength": 4.2, "blocks": "custom", "custom_blocks": "1:3", "single_blocks": "text only"},
        {"repulsion": False, "spell": True, "spell_radius": 0.25},
        {"eta": 5e6, "iterations": 12, "memory": False, "hires": True},
    ],
)
def test_a_pasted_infotext_through_the_api_restores_the_same_settings(ctxrep, settings):
    """Forge's API casts each pasted value to its component's default type and drops it when that default is None:
    every argument must survive that (modules/api/api.py apply_infotext)."""
    script = ctxrep.ContextualRepulsionScript()
    with gr.Blocks():
        components = script.ui(is_img2img=False)
    original = forge_args.parse({"enabled": True, **settings})
    params = {k: str(v) for k, v in forge_args.infotext(original).items()}
    by_component = {id(c): api_pasted_value(function, c, params) for c, function in script.infotext_fields}
    pasted = [by_component.get(id(c), c.value) for c in components]
    assert None not in pasted
    restored = forge_args.parse(pasted)
    assert restored.config == original.config and restored.spell == original.spell and restored.hires == original.hires
    assert [c.value for c in components] == [forge_args.DEFAULTS[n] for n in forge_args.ARG_NAMES]


def test_the_infotext_names_the_architecture_that_was_repelled(ctxrep):
    p = processing(flux_unet())
    generate(ctxrep.ContextualRepulsionScript(), p, args())
    assert p.extra_generation_params["CtxRep model"] == "Flux.1"


def test_disabled_after_enabled_is_bit_identical_to_never_enabled_and_never_reaches_the_library(ctxrep):
    unet = flux_unet()
    base = sample(unet)
    script = ctxrep.ContextualRepulsionScript()
    generate(script, processing(unet), args())
    p = processing(unet)
    with library_calls() as calls:
        out = generate(script, p, args(enabled=False))[0]
    assert torch.equal(out, base)
    assert p.extra_generation_params == {}
    assert calls == []


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
    generations = []
    for _ in range(2):  # two generations: the second must not remember the first
        p = processing(unet)
        outs = generate(script, p, args(memory=True), batches=3, batch=1)
        assert torch.equal(outs[0], plain[0])  # batch size 1, nothing remembered yet: unchanged
        assert not torch.allclose(outs[1], plain[1]) and not torch.allclose(outs[2], plain[2])
        generations.append(outs)
    assert all(torch.equal(a, b) for a, b in zip(*generations, strict=True))


def test_a_generation_releases_its_job_and_memory_when_it_ends(ctxrep, monkeypatch):
    jobs = []
    create = ForgeRepulsion.__init__

    def recording(self, *a, **kw):
        create(self, *a, **kw)
        jobs.append(weakref.ref(self))

    monkeypatch.setattr(ForgeRepulsion, "__init__", recording)
    p = processing(flux_unet())
    generate(ctxrep.ContextualRepulsionScript(), p, args(memory=True), batches=2, batch=1)
    assert len(jobs) == 1
    gc.collect()
    assert jobs[0]() is None  # neither the script nor p keeps the job (and its memory) after postprocess


def test_unsupported_model_keeps_the_generation_and_says_why(ctxrep, capsys):
    unet = UnetPatcher(KModel(torch.nn.Linear(2, 2), PredictionFlux()))
    p = processing(unet)
    script = ctxrep.ContextualRepulsionScript()
    script.process(p, *args())
    script.process_before_every_sampling(p, *args())
    assert p.sd_model.forge_objects.unet is unet
    assert "Linear is not supported" in p.extra_generation_params["CtxRep note"]
    assert f"(supported: {', '.join(families.families('forge'))})" in p.extra_generation_params["CtxRep note"]
    assert "CtxRep model" not in p.extra_generation_params
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
    assert labels == ["[CtxRep] Step strength", "[CtxRep] Window", "[CtxRep] Block preset", "[CtxRep] SPELL radius"]
    with pytest.raises(forge_args.ArgumentError, match="window"):
        axis_options[1].confirm(None, [0.1, 3.0])
    unet = flux_unet()
    p = processing(unet)
    axis_options[0].apply(p, 3.0, [3.0])
    out = generate(ctxrep.ContextualRepulsionScript(), p, args(enabled=False, block_strength="", step_strength=0.5))[0]
    assert p.extra_generation_params["CtxRep step strength"] == 3.0
    script = ctxrep.ContextualRepulsionScript()
    same = generate(script, processing(unet), args(block_strength="", step_strength=3.0))[0]
    assert torch.equal(out, same)


# ---- the API (/sdapi/v1/txt2img, img2img), through the stand-in of Forge's modules/api/api.py ----------------------
def readme_api_examples() -> list[dict]:
    """Every ``"alwayson_scripts"`` JSON fragment in the README, as a user would paste it into a request."""
    blocks = re.findall(r"```json\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    return [json.loads("{" + block + "}")["alwayson_scripts"] for block in blocks if '"alwayson_scripts"' in block]


def api_args(ctxrep, alwayson_scripts: dict | None) -> list:
    """What Forge's API hands our script for a request: every script's UI defaults, the request's ``args`` over the
    first positions of ours. Another always-on script comes first, as in every Forge (ours does not start at 1)."""

    class Other(ctxrep.scripts.Script):
        def title(self):
            return "Other"

        def ui(self, is_img2img):
            return [gr.Checkbox(value=True), gr.Slider(0, 1, value=0.5)]

    other, ours = Other(), ctxrep.ContextualRepulsionScript()
    other.args_from, other.args_to = 1, 3
    ours.args_from, ours.args_to = 3, 3 + len(forge_args.ARG_NAMES)
    for script in (other, ours):
        script.alwayson, script.is_img2img = True, False
    runner = SimpleNamespace(scripts=[other, ours])
    request = SimpleNamespace(alwayson_scripts=alwayson_scripts, script_args=[])
    script_args = init_script_args(request, init_default_script_args(runner), None, None, runner)
    return script_args[ours.args_from : ours.args_to]


def positional(settings: dict) -> list:
    return [{**forge_args.DEFAULTS, **settings}[name] for name in forge_args.ARG_NAMES]


def api_generate(ctxrep, script_args: list):
    p = spell_processing(flux_unet())
    out = generate(ctxrep.ContextualRepulsionScript(), p, script_args, typical=True)[0]
    return out, p.extra_generation_params


@pytest.mark.parametrize("example", readme_api_examples(), ids=lambda e: json.dumps(e)[:60])
def test_every_readme_api_example_acts_like_its_positional_form(ctxrep, example):
    ((name, request),) = example.items()
    script_args = api_args(ctxrep, example)
    assert len(script_args) == len(forge_args.ARG_NAMES) and script_args[0] == request["args"][0]  # padded
    out, info = api_generate(ctxrep, script_args)
    same, same_info = api_generate(ctxrep, positional(request["args"][0]))
    plain, _ = api_generate(ctxrep, api_args(ctxrep, None))
    assert torch.equal(out, same) and info == same_info
    assert not torch.equal(out, plain)
    assert info["CtxRep"] is True and "'enabled'" not in info.get("CtxRep error", "")


def test_api_dict_with_some_keys_takes_the_defaults_for_the_rest(ctxrep):
    out, info = api_generate(ctxrep, api_args(ctxrep, {"contextual repulsion": {"args": [{"block_strength": 0.3}]}}))
    same, _ = api_generate(ctxrep, positional({"enabled": True, "block_strength": 0.3}))
    assert torch.equal(out, same) and info["CtxRep block strength"] == 0.3
    assert info["CtxRep window"] == forge_args.DEFAULTS["window"]


def test_api_positions_after_the_dict_fill_what_it_does_not_name(ctxrep):
    out, info = api_generate(ctxrep, api_args(ctxrep, {"contextual repulsion": {"args": [{"enabled": True}, 0.3]}}))
    assert info["CtxRep block strength"] == 0.3


def test_api_off_after_on_is_bit_identical_to_plain(ctxrep):
    plain, _ = api_generate(ctxrep, api_args(ctxrep, None))
    api_generate(ctxrep, api_args(ctxrep, readme_api_examples()[0]))
    again, info = api_generate(ctxrep, api_args(ctxrep, None))
    assert torch.equal(again, plain) and info == {}


def test_api_dict_with_an_unknown_key_names_it_and_runs_plain(ctxrep):
    plain, _ = api_generate(ctxrep, api_args(ctxrep, None))
    request = {"contextual repulsion": {"args": [{"enabled": True, "strenght": 0.3}]}}
    out, info = api_generate(ctxrep, api_args(ctxrep, request))
    assert torch.equal(out, plain)
    assert "'strenght' (did you mean 'step_strength'?)" in info["CtxRep error"] and "known:" in info["CtxRep error"]


def test_api_dict_disabled_by_a_string_stays_off(ctxrep):
    plain, _ = api_generate(ctxrep, api_args(ctxrep, None))
    out, info = api_generate(ctxrep, api_args(ctxrep, {"contextual repulsion": {"args": [{"enabled": "false"}]}}))
    assert torch.equal(out, plain) and info == {}


# ---- SPELL ---------------------------------------------------------------------------------------------------------
class IntegratedUNet2DConditionModel(torch.nn.Module):
    """A convolutional stand-in of Forge's SD1.5/SDXL UNet (backend/nn/unet.py): no MM-DiT blocks to hook."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x, timestep, context=None, control=None, transformer_options=None, **kwargs):
        return 0.1 * self.conv(x)


class Flux(SimpleNamespace):
    """Named like Forge's engine class (backend/diffusion_engine/flux.py), which gives the latent space."""


def spell_args(**kw):
    return args(repulsion=False, spell=True, **kw)


def spell_processing(unet, **kw):
    p = processing(unet, width=12, height=12, **kw)
    p.sd_model = Flux(forge_objects=ForgeObjects(unet), encode_first_stage=lambda images: pool4(images))
    return p


def pool4(images):
    pooled = torch.nn.functional.avg_pool2d(images, 4)
    return torch.cat([pooled, pooled.mean(1, keepdim=True)], dim=1)


@pytest.fixture
def protected_root(ctxrep, tmp_path):
    root = tmp_path / "protected"
    root.mkdir()
    opts = ctxrep.shared.opts
    ctxrep.script_callbacks.ui_settings_callback()
    opts.set(ctxrep.ROOT_OPTION, str(root))
    yield root
    opts.set(ctxrep.ROOT_OPTION, "")
    from lib_ctxrep.protected import clear_cache

    clear_cache()


def test_spell_runs_on_a_unet_that_contextual_repulsion_does_not_support(ctxrep):
    unet = UnetPatcher(KModel(IntegratedUNet2DConditionModel(), PredictionFlux()))
    base = sample(unet)
    p = processing(unet)
    out = generate(ctxrep.ContextualRepulsionScript(), p, args(spell=True, spell_radius=1.0))[0]
    assert not torch.allclose(out, base)
    info = p.extra_generation_params
    note = "IntegratedUNet2DConditionModel (SD 1.5 / SDXL UNet) cannot be repelled: a UNet takes its text by cross"
    assert note in info["CtxRep note"]
    assert "SPELL still runs" in info["CtxRep note"]
    assert info["CtxRep SPELL"] is True and info["CtxRep repulsion"] is False and "CtxRep block strength" not in info
    assert info["CtxRep SPELL radius abs"] == pytest.approx(1.0 * (2 * 36) ** 0.5, rel=1e-3)
    assert "sampler_post_cfg_function" not in unet.model_options  # only the clone was patched


def test_unsupported_model_without_spell_points_to_spell(ctxrep):
    unet = UnetPatcher(KModel(IntegratedUNet2DConditionModel(), PredictionFlux()))
    p = processing(unet)
    generate(ctxrep.ContextualRepulsionScript(), p, args())
    assert "SPELL (in this accordion) works on every model" in p.extra_generation_params["CtxRep note"]


def test_spell_with_no_reference_within_the_radius_is_bit_identical_to_off(ctxrep):
    unet = flux_unet()
    base = sample(unet)
    p = processing(unet)
    out = generate(ctxrep.ContextualRepulsionScript(), p, spell_args(spell_radius=0.01))[0]
    assert torch.equal(out, base)
    assert p.extra_generation_params["CtxRep SPELL pushed"] == "0/4 samples in 0/1 steps (0/4 sample-steps)"


def test_spell_reports_its_sparsity_in_the_console_and_the_infotext(ctxrep, capsys):
    p = processing(flux_unet())
    generate(ctxrep.ContextualRepulsionScript(), p, spell_args(spell_radius=1.5))
    assert "[Contextual Repulsion] SPELL pushed 4/4 samples in 1/1 steps" in capsys.readouterr().out
    assert p.extra_generation_params["CtxRep SPELL pushed"].startswith("4/4 samples")


def test_spell_repels_later_batches_from_earlier_ones_and_a_new_generation_forgets_them(ctxrep):
    unet = flux_unet()
    plain = [sample(unet, batch=1, seed=n) for n in range(2)]
    script = ctxrep.ContextualRepulsionScript()
    for _ in range(2):
        outs = generate(script, processing(unet), spell_args(spell_radius=1.5), batches=2, batch=1)
        assert torch.equal(outs[0], plain[0])  # batch size 1 and nothing earlier: nothing to repel from
        assert not torch.allclose(outs[1], plain[1])


def test_spell_leaves_the_hires_pass_alone(ctxrep):
    unet = flux_unet()
    p = processing(unet)
    generate(ctxrep.ContextualRepulsionScript(), p, spell_args(spell_radius=1.0), hr=True)
    assert p.hr_unet is unet


def test_protected_latent_set_pushes_every_output_out_of_its_shields(ctxrep, protected_root):
    from lib_ctxrep.protected import save_latent_set

    unet = flux_unet()
    base = sample(unet)
    near = base + 0.3 * torch.randn(base.shape, generator=torch.Generator().manual_seed(5))
    save_latent_set(protected_root / "mine.safetensors", near, "flux")
    p = spell_processing(unet)
    out = generate(ctxrep.ContextualRepulsionScript(), p, spell_args(spell_protected="mine.safetensors"))[0]
    radius = p.extra_generation_params["CtxRep SPELL radius abs"]
    assert torch.cdist(base.flatten(1), near.flatten(1)).min() < radius  # the baseline lies inside the shields
    assert torch.cdist(out.flatten(1), near.flatten(1)).min() >= radius * (1 - 1e-3)
    assert p.extra_generation_params["CtxRep SPELL protected"] == "mine.safetensors"


def test_protected_folder_is_encoded_with_the_models_vae_at_the_generation_size(ctxrep, protected_root, capsys):
    from PIL import Image

    (protected_root / "refs").mkdir()
    for i in range(3):
        Image.new("RGB", (24, 24), (60 * i, 0, 0)).save(protected_root / "refs" / f"{i}.png")
    p = spell_processing(flux_unet())
    generate(ctxrep.ContextualRepulsionScript(), p, spell_args(spell_protected="refs"))
    console = capsys.readouterr().out
    assert "SPELL protected set 'refs': 3 latents, exact search" in console
    assert (
        "3 image(s) of another size were resized and centre-cropped to 12x12"
        in p.extra_generation_params["CtxRep note"]
    )
    assert "CtxRep error" not in p.extra_generation_params


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("../outside", "is outside the protected-set folder"),
        ("missing", "not found"),
        ("set.pt", "pickle"),
    ],
)
def test_a_bad_protected_set_is_refused_with_the_reason_and_the_generation_continues(
    ctxrep, protected_root, path, reason
):
    (protected_root.parent / "outside").mkdir()
    (protected_root / "set.pt").write_bytes(b"\x80\x04K\x01.")
    unet = flux_unet()
    p = spell_processing(unet)
    out = generate(ctxrep.ContextualRepulsionScript(), p, spell_args(spell_protected=path))[0]
    assert out.shape == (4, 4, 3, 3) and torch.isfinite(out).all()
    error = p.extra_generation_params["CtxRep error"]
    assert error.startswith("SPELL protected set:") and reason in error and error.endswith("SPELL runs without it")


def test_protected_sets_are_off_until_a_root_is_configured_in_settings(ctxrep):
    ctxrep.script_callbacks.ui_settings_callback()
    p = spell_processing(flux_unet())
    generate(ctxrep.ContextualRepulsionScript(), p, spell_args(spell_protected="anything"))
    assert "no protected-set folder is configured" in p.extra_generation_params["CtxRep error"]


def test_the_protected_root_cannot_be_changed_through_the_api(ctxrep):
    ctxrep.script_callbacks.ui_settings_callback()
    opts = ctxrep.shared.opts
    assert opts.data_labels[ctxrep.ROOT_OPTION].restrict_api
    assert not opts.set(ctxrep.ROOT_OPTION, "/", is_api=True)  # /sdapi/v1/options and override_settings
    assert getattr(opts, ctxrep.ROOT_OPTION) in ("", None)


def test_on_a_webui_without_forge_the_accordion_and_console_say_so_and_the_infotext_has_nothing(
    ctxrep, capsys, monkeypatch
):
    # AUTOMATIC1111's webui (036500223) has no modules_forge package and its sd_model (modules/sd_models.py, a
    # LatentDiffusion) has no forge_objects; its modules/scripts.py Script calls before_process, process,
    # before_process_batch, post_sample, postprocess_batch_list and postprocess, never process_before_every_sampling.
    monkeypatch.setitem(sys.modules, "modules_forge", None)
    script = ctxrep.ContextualRepulsionScript()
    with gr.Blocks() as blocks:
        script.ui(is_img2img=False)
    texts = [getattr(c, "value", "") for c in blocks.blocks.values() if isinstance(c, gr.Markdown)]
    assert any("needs Forge (main or Neo)" in str(t) for t in texts)
    p = SimpleNamespace(
        sd_model=SimpleNamespace(), extra_generation_params={}, is_hr_pass=False, batch_size=1, n_iter=1, seed=5
    )
    record = json.dumps({"CtxRep batch size": "4", "CtxRep batch image": "2", "CtxRep batch number": "1",
                         "CtxRep batch seed": "4", "CtxRep earlier batches": "0", "Seed": "5"})  # fmt: skip
    pasted = args(spell=True, pasted_batch=record)
    script.before_process(p, *pasted)
    script.process(p, *pasted)
    script.before_process_batch(p, *pasted, batch_number=1)
    script.post_sample(p, ctxrep_scripts().PostSampleArgs(torch.zeros(1, 4, 3, 3)), *pasted)
    script.postprocess(p, None, *pasted)
    assert (p.batch_size, p.n_iter) == (1, 1)  # no pasted batch rebuilt
    assert not any(key.startswith("CtxRep") for key in p.extra_generation_params)
    assert capsys.readouterr().out.count("needs Forge (main or Neo)") == 1


def test_on_forge_the_accordion_says_nothing_of_needing_forge(ctxrep):
    with gr.Blocks() as blocks:
        ctxrep.ContextualRepulsionScript().ui(is_img2img=False)
    texts = [str(getattr(c, "value", "")) for c in blocks.blocks.values() if isinstance(c, gr.Markdown)]
    assert texts and not any("needs Forge" in t for t in texts)
