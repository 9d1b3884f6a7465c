"""Issue 15: paste one image of a coupled batch, get that image again (scripts/ctxrep.py on Forge stand-ins).

Generations run through ``tests.forge_standins.process_images``, which calls the script's hooks in the order of
Forge's modules/processing.py; pasting goes through the script's ``infotext_fields`` as Forge's PNG Info "Send to"
(modules/infotext_utils.py connect_paste) and the API's ``"infotext"`` field (modules/api/api.py apply_infotext) do.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

gr = pytest.importorskip("gradio")

from lib_ctxrep.integrations import forge_args  # noqa: E402
from tests.forge_script_loader import flux_unet, forge_script  # noqa: E402
from tests.forge_standins import (  # noqa: E402
    Processing,
    ScriptRunner,
    api_pasted_value,
    create_infotext,
    init_default_script_args,
    init_script_args,
    parse_generation_parameters,
    process_images,
    sampling_function_inner,
)

ROOT = Path(__file__).resolve().parents[1]
MODEL = "0123abcd"
BATCH_KEYS = set(forge_args.BATCH_KEYS.values())


@pytest.fixture(scope="module")
def ctxrep():
    """The extension's script, imported the way Forge does."""
    with forge_script() as module:
        yield module


@pytest.fixture(autouse=True)
def forge_state(ctxrep):
    """Forge's shared state and options (the stand-ins in tests/forge_modules) as a fresh webui has them; the
    extension's Settings registered (script_callbacks.on_ui_settings)."""
    shared = ctxrep.shared
    ctxrep.add_settings()
    saved = dict(shared.opts.data)
    yield shared
    shared.opts.data.clear()
    shared.opts.data.update(saved)
    shared.state.interrupted = shared.state.skipped = shared.state.stopping_generation = False


UNET = None


def unet():
    global UNET
    if UNET is None:
        UNET = flux_unet()
    return UNET


def sampler(p, x):
    """``p.sample``: process_before_every_sampling on the reset unet, then one CFG-1 model call."""
    p.scripts.process_before_every_sampling(p, x=x, noise=x)
    rows = len(x)
    cond = [{"c_crossattn": torch.randn(1, 6, 16, generator=torch.Generator().manual_seed(9)).expand(rows, -1, -1)}]
    model = p.sd_model.forge_objects.unet
    with torch.inference_mode():
        return sampling_function_inner(model.model, x, torch.ones(rows), None, cond, 1.0, model.model_options)


def settings(**kw):
    """Script arguments in positional order: enabled, repulsion at strength 0.5, the rest at their defaults."""
    return [{**forge_args.DEFAULTS, "enabled": True, "block_strength": 0.5, **kw}[n] for n in forge_args.ARG_NAMES]


def spell_settings(**kw):
    return settings(repulsion=False, spell=True, spell_radius=2.0, **kw)


def run(ctxrep, script_args, *, before=(), after=(), sample=sampler, **kw):
    """One generation; ``before`` / ``after``: other scripts running before / after ours (each with no arguments);
    ``kw``: Processing fields (batch_size, n_iter, seed, ...), and ``engine``: attributes of ``p.sd_model``."""
    script = ctxrep.ContextualRepulsionScript()
    script.args_from, script.args_to = 0, len(script_args)
    for other in (*before, *after):
        other.args_from = other.args_to = len(script_args)
    sd_model = SimpleNamespace(forge_objects=SimpleNamespace(unet=unet()), **kw.pop("engine", {}))
    p = Processing(sd_model, list(script_args), **{"sd_model_hash": MODEL, **kw})
    p.scripts = ScriptRunner([*before, script, *after])
    processed = process_images(p, sample)
    assert p.scripts.errors == []
    return processed, p


def pasted_args(ctxrep, params, **changes):
    """The script's arguments after PNG Info "Send to txt2img" (connect_paste): each infotext field's value cast to
    its component's type, None leaving the component as it is (here: its default), then the user's ``changes``."""
    script = ctxrep.ContextualRepulsionScript()
    with gr.Blocks():
        components = script.ui(is_img2img=False)
    values = {id(c): c.value for c in components}
    for component, function in script.infotext_fields:
        value = function(params)
        if value is not None:
            values[id(component)] = type(component.value)(value)
    args = [values[id(c)] for c in components]
    for name, value in changes.items():
        args[forge_args.ARG_NAMES.index(name)] = value
    return args


def seeds_of(params):
    """What the Seed script's paste fields set (processing_scripts/seed.py:55-61): the image's own seeds."""
    out = {"seed": int(params["Seed"])}
    if "Variation seed" in params:
        out.update(subseed=int(params["Variation seed"]), subseed_strength=float(params["Variation seed strength"]))
    return out


def paste(ctxrep, processed, i, *, edit=None, drop=(), changes=None, **kw):
    """Paste image ``i``'s infotext (optionally edited) at batch size and count 1, and generate."""
    params = parse_generation_parameters(processed.infotexts[i])
    params.update(edit or {})
    for key in drop:
        params.pop(key)
    fields = {"batch_size": 1, "n_iter": 1, **seeds_of(params), **kw}
    return run(ctxrep, pasted_args(ctxrep, params, **(changes or {})), **fields)


def note(processed):
    return processed.infotexts[0].get("CtxRep note", "")


def notes(processed):
    """Every note and error of the result's first infotext, as one text."""
    return " ".join(processed.infotexts[0].get(k, "") for k in ("CtxRep note", "CtxRep error"))


def without_note(infotext):
    return {k: v for k, v in infotext.items() if k != "CtxRep note"}


def hook_script(ctxrep, hook, function):
    """Another always-on script (no arguments) that runs ``function(p, *args, **kwargs)`` in the Forge hook
    named ``hook``."""
    methods = {"title": lambda self: "Other", hook: lambda self, p, *a, **k: function(p, *a, **k)}
    return type("Other", (ctxrep.scripts.Script,), methods)()


# ---- the infotext --------------------------------------------------------------------------------
def test_each_image_of_a_repelled_batch_records_its_batch_seed_size_and_position(ctxrep):
    processed, _ = run(ctxrep, settings(), batch_size=4, seed=100)
    third = processed.infotexts[2]
    assert third["Seed"] == 102
    assert {k: third[k] for k in BATCH_KEYS if k in third} == {
        "CtxRep batch size": 4, "CtxRep batch image": 3, "CtxRep batch number": 1, "CtxRep batch seed": 100,
        "CtxRep earlier batches": 0,
    }  # fmt: skip


def test_with_memory_an_image_records_its_batch_number_and_the_batches_before_it(ctxrep):
    processed, _ = run(ctxrep, settings(memory=True), batch_size=2, n_iter=3, seed=100)
    last = processed.infotexts[5]
    assert last["CtxRep batch number"] == 3 and last["CtxRep earlier batches"] == 2
    assert last["CtxRep batch seed"] == 104 and last["CtxRep batch image"] == 2


def test_without_memory_later_batches_need_no_earlier_batch(ctxrep):
    processed, _ = run(ctxrep, settings(memory=False), batch_size=2, n_iter=3, seed=100)
    assert processed.infotexts[5]["CtxRep batch number"] == 3 and processed.infotexts[5]["CtxRep earlier batches"] == 0


@pytest.mark.parametrize(
    "script_args, fields",
    [
        (settings(enabled=False), {"batch_size": 4}),  # accordion off
        (settings(), {"batch_size": 1}),  # one image, nothing to couple
        (settings(memory=False), {"batch_size": 1, "n_iter": 3}),  # batches of 1 without memory: not coupled
        (settings(repulsion=False, spell=False), {"batch_size": 4}),  # no method acting
    ],
    ids=["off", "single", "count-without-memory", "no-method"],
)
def test_uncoupled_images_get_no_batch_keys(ctxrep, script_args, fields):
    processed, _ = run(ctxrep, script_args, seed=100, **fields)
    assert all(not BATCH_KEYS & set(infotext) for infotext in processed.infotexts)


def test_plain_generation_is_unchanged_apart_from_the_batch_keys(ctxrep, monkeypatch):
    processed, _ = run(ctxrep, settings(), batch_size=4, seed=100)
    monkeypatch.setattr(ctxrep.forge_reproduce.BatchKeys, "start", classmethod(lambda cls, p: None))
    without, p = run(ctxrep, settings(), batch_size=4, seed=100)  # the same run without the batch keys
    assert all(torch.equal(a, b) for a, b in zip(processed.images, without.images, strict=True)) and p.sampled == 4
    stripped = [{k: v for k, v in info.items() if k not in BATCH_KEYS} for info in processed.infotexts]
    assert stripped == without.infotexts and all(BATCH_KEYS & set(info) for info in processed.infotexts)
    assert len(processed.images) == 4 and processed.seed == 100 and processed.all_seeds == [100, 101, 102, 103]
    assert "CtxRep note" not in processed.infotexts[0]


def test_the_grid_and_later_infotexts_of_the_job_get_no_batch_keys(ctxrep):
    """Forge's grid (processing.py:1125-1137) and the X/Y/Z grid's create_infotext after the run (xyz_grid.py:776,
    index None) describe no single image of the batch."""
    processed, p = run(ctxrep, settings(), batch_size=4, seed=100, do_not_save_grid=False)
    assert processed.index_of_first_image == 1 and not BATCH_KEYS & set(processed.infotexts[0])
    assert BATCH_KEYS <= set(processed.infotexts[1]) | {"CtxRep batch source"}
    later = create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds)
    assert later["Seed"] == 100 and not BATCH_KEYS & set(later)


# ---- reproducing ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "script_args, fields, index, cost",
    [
        (settings(), {"batch_size": 4}, 2, 4),
        (settings(memory=True), {"batch_size": 2, "n_iter": 3}, 5, 6),
        (settings(memory=False), {"batch_size": 2, "n_iter": 3}, 5, 2),
        (spell_settings(), {"batch_size": 4}, 2, 4),
        (spell_settings(), {"batch_size": 1, "n_iter": 3}, 2, 3),
        (settings(), {"batch_size": 4, "subseed": 7, "subseed_strength": 0.3}, 3, 4),
    ],
    ids=["repulsion", "memory-third-batch", "no-memory-third-batch", "spell", "spell-batch-count", "variation-seed"],
)
def test_a_pasted_image_is_reproduced_bit_for_bit_from_its_rebuilt_batch(ctxrep, script_args, fields, index, cost):
    original, _ = run(ctxrep, script_args, seed=100, **fields)
    alone, _ = paste(ctxrep, original, index, changes={"reproduce": False})
    assert not torch.equal(alone.images[0], original.images[index])  # the coupling mattered
    reproduced, p = paste(ctxrep, original, index)
    assert len(reproduced.images) == 1 and torch.equal(reproduced.images[0], original.images[index])
    assert p.sampled == cost
    assert f"regenerated {cost} images to reproduce 1" in note(reproduced)
    assert without_note(reproduced.infotexts[0]) == without_note(original.infotexts[index])


def test_the_result_and_p_look_like_a_single_image_run_of_the_pasted_image(ctxrep):
    original, _ = run(ctxrep, settings(memory=True), batch_size=2, n_iter=2, seed=100)
    reproduced, p = paste(ctxrep, original, 3)
    own = original.infotexts[3]["Seed"]
    assert (reproduced.seed, reproduced.all_seeds, reproduced.batch_size) == (own, [own], 1)
    assert (p.batch_size, p.n_iter, p.seed, p.all_seeds) == (1, 1, own, [own])


def test_a_reproduced_image_pastes_again_to_the_same_image(ctxrep):
    original, _ = run(ctxrep, settings(), batch_size=4, seed=100)
    first, _ = paste(ctxrep, original, 1)
    second, _ = paste(ctxrep, first, 0)
    assert torch.equal(second.images[0], original.images[1])


def api_pasted_args(ctxrep, params):
    """/sdapi/v1/txt2img with "infotext" (api.py apply_infotext, init_default_script_args, init_script_args): each
    script field's value cast to the component's default type over the UI defaults."""
    script = ctxrep.ContextualRepulsionScript()
    script.args_from, script.args_to = 1, 1 + len(forge_args.ARG_NAMES)
    script.alwayson, script.is_img2img = True, False
    runner = SimpleNamespace(scripts=[script])
    with gr.Blocks():
        components = script.ui(is_img2img=False)
    index = {id(c): script.args_from + i for i, c in enumerate(components)}
    given = {index[id(c)]: api_pasted_value(function, c, params) for c, function in script.infotext_fields}
    request = SimpleNamespace(alwayson_scripts=None, script_args=[])
    defaults = init_default_script_args(runner)
    mentioned = {i: value for i, value in given.items() if value is not None}
    return init_script_args(request, defaults, None, None, runner, input_script_args=mentioned)[script.args_from :]


def test_the_api_infotext_field_reproduces_the_image(ctxrep):
    original, _ = run(ctxrep, settings(), batch_size=4, seed=100)
    params = parse_generation_parameters(original.infotexts[2])
    reproduced, p = run(ctxrep, api_pasted_args(ctxrep, params), batch_size=1, **seeds_of(params))
    assert torch.equal(reproduced.images[0], original.images[2]) and p.sampled == 4


def test_other_scripts_see_the_pasted_images_seed_at_its_job_index(ctxrep):
    """postprocess_image gets index i + iteration * batch_size (processing.py:1054) and reads the job's lists."""
    original, _ = run(ctxrep, settings(memory=True), batch_size=2, n_iter=3, seed=100)
    seen = []
    reader = hook_script(ctxrep, "postprocess_image", lambda p, pp, *a: seen.append(p.all_seeds[pp.index]))
    params = parse_generation_parameters(original.infotexts[5])
    run(ctxrep, pasted_args(ctxrep, params), after=[reader], batch_size=1, **seeds_of(params))
    assert seen == [original.infotexts[5]["Seed"]]


def test_with_memory_the_grid_of_the_reproduced_image_carries_its_seed(ctxrep, forge_state):
    forge_state.opts.set("grid_only_if_multiple", False)
    original, _ = run(ctxrep, settings(memory=True), batch_size=2, n_iter=2, seed=100)
    reproduced, _ = paste(ctxrep, original, 3, do_not_save_grid=False)
    assert reproduced.index_of_first_image == 1 and reproduced.infotexts[0]["Seed"] == 103
    assert torch.equal(reproduced.images[1], original.images[3])


def test_a_rebuild_does_not_save_every_image_before_the_hires_pass(ctxrep, forge_state):
    """The rebuild's override of save_images_before_highres_fix, applied by process_images (processing.py:820-829)
    and restored afterwards (:846-847)."""
    forge_state.opts.set("save_images_before_highres_fix", True)
    during = []

    def sample(p, x):
        during.append(forge_state.opts.save_images_before_highres_fix)
        return sampler(p, x)

    original, _ = run(ctxrep, settings(), batch_size=4, seed=100)
    params = parse_generation_parameters(original.infotexts[2])
    run(ctxrep, pasted_args(ctxrep, params), sample=sample, batch_size=1, **seeds_of(params))
    assert during == [False] and forge_state.opts.save_images_before_highres_fix is True


def test_the_first_image_of_a_batch_at_its_own_batch_size_is_the_batch_itself(ctxrep):
    original, _ = run(ctxrep, settings(), batch_size=4, seed=100)
    again, p = paste(ctxrep, original, 0, batch_size=4)
    assert p.sampled == 4 and all(torch.equal(a, b) for a, b in zip(again.images, original.images, strict=True))
    assert "CtxRep note" not in again.infotexts[0]


# ---- when it is not rebuilt ---------------------------------------------------------------------------------------
def test_with_reproduce_off_the_image_runs_alone_and_the_note_says_it_differs(ctxrep):
    original, _ = run(ctxrep, settings(), batch_size=4, seed=100)
    alone, p = paste(ctxrep, original, 2, changes={"reproduce": False})
    plain, _ = run(ctxrep, settings(), batch_size=1, seed=102)
    assert torch.equal(alone.images[0], plain.images[0]) and p.sampled == 1
    assert "'Reproduce pasted batch images' is off" in note(alone) and "differ" in note(alone)


def test_upscaling_a_gallery_image_regenerates_nothing(ctxrep):
    original, _ = run(ctxrep, settings(), batch_size=4, seed=100)
    for upscale in ({"txt2img_upscale": True}, {"firstpass_image": object()}):
        result, p = paste(ctxrep, original, 2, **upscale)
        assert p.sampled == 1 and "CtxRep note" not in result.infotexts[0]


@pytest.mark.parametrize("wan, rebuilt", [(False, True), (True, False)], ids=["krea-2", "wan-video"])
def test_a_neo_engine_with_wan_latents_is_rebuilt_unless_it_makes_videos(ctxrep, monkeypatch, wan, rebuilt):
    """Neo sets ``sd_model.is_wan`` for Wan (a batch is one video's frames) and for Krea 2 (its latent layout only);
    ``backend.args.dynamic_args.wan`` (modules/processing.py) tells the video model apart."""
    backend, args = types.ModuleType("backend"), types.ModuleType("backend.args")
    args.dynamic_args = SimpleNamespace(wan=wan)
    backend.args = args
    monkeypatch.setitem(sys.modules, "backend", backend)
    monkeypatch.setitem(sys.modules, "backend.args", args)
    original, _ = run(ctxrep, settings(), batch_size=4, seed=100, engine={"is_wan": True})
    result, p = paste(ctxrep, original, 2, engine={"is_wan": True})
    assert p.sampled == (4 if rebuilt else 1)
    assert torch.equal(result.images[0], original.images[2]) == rebuilt


def paste_changed_and_plain(ctxrep, made: dict, changed: dict):
    """Image 2 of a batch of 4 (made with ``made``) pasted with ``changed`` fields, and that image's own seeds with
    ``changed`` generated alone without the script's batch: (pasted result, its processing, plain result)."""
    original, _ = run(ctxrep, settings(), batch_size=4, seed=100, **made)
    result, p = paste(ctxrep, original, 2, **changed)
    own = seeds_of(parse_generation_parameters(original.infotexts[2]))
    plain, _ = run(ctxrep, settings(), batch_size=1, **{**own, **changed})
    return result, p, plain


@pytest.mark.parametrize(
    "made, fields", [({}, {"seed": 555}), ({"subseed": 7, "subseed_strength": 0.3}, {"subseed": 8})],
    ids=["another-seed", "another-variation-seed"],
)  # fmt: skip
def test_a_stale_record_with_another_seed_runs_plain_without_a_note(ctxrep, made, fields):
    result, p, plain = paste_changed_and_plain(ctxrep, made, fields)
    assert p.sampled == 1 and torch.equal(result.images[0], plain.images[0])
    assert "CtxRep note" not in result.infotexts[0]


@pytest.mark.parametrize(
    "made, changed",
    [
        ({}, {"subseed": 7, "subseed_strength": 0.3}),
        ({"subseed": 7, "subseed_strength": 0.3}, {"subseed_strength": 0.5}),
    ],
    ids=["pasted-0-now-0.3", "pasted-0.3-now-0.5"],
)
def test_a_variation_strength_changed_after_the_paste_runs_the_image_alone_and_says_why(ctxrep, made, changed):
    result, p, plain = paste_changed_and_plain(ctxrep, made, changed)
    assert p.sampled == 1 and torch.equal(result.images[0], plain.images[0])
    assert "the variation strength differs from the pasted image's" in note(result) and "runs alone" in note(result)


def test_a_larger_batch_after_a_paste_keeps_its_meaning_and_says_so(ctxrep):
    original, _ = run(ctxrep, settings(), batch_size=4, seed=100)
    result, p = paste(ctxrep, original, 2, batch_size=3)
    assert p.sampled == 3 and len(result.images) == 3
    assert "batch size or batch count is not 1" in note(result)


def test_the_accordion_off_adds_nothing_to_a_pasted_image(ctxrep):
    original, _ = run(ctxrep, settings(), batch_size=4, seed=100)
    result, p = paste(ctxrep, original, 2, changes={"enabled": False})
    assert p.sampled == 1 and not any(k.startswith("CtxRep") for k in result.infotexts[0])


@pytest.mark.parametrize(
    "edit, drop, fields, message",
    [
        ({"CtxRep batch seed": "99"}, (), {}, "does not match 'Seed: 102'"),
        ({"CtxRep batch image": "7"}, (), {}, "'CtxRep batch image: 7' must be a whole number from 1 to 4"),
        ({"CtxRep batch size": "four"}, (), {}, "'CtxRep batch size: four' is not a number"),
        ({}, ("CtxRep batch seed",), {}, "no 'CtxRep batch seed'"),
        ({}, (), {"width": 128}, "the pasted image is 64 by 64, this run is 128 by 64"),
        ({}, (), {"sd_model_hash": "ffff0000"}, "made with model 0123abcd, this run uses ffff0000"),
        ({"Seed": "1", "CtxRep batch seed": "-1"}, (), {"seed": 1}, "would start at seed -1"),
        ({"CtxRep batch source": "inpaint"}, (), {}, "'CtxRep batch source: inpaint' must be img2img"),
    ],
    ids=[
        "edited-seed",
        "edited-position",
        "edited-size",
        "missing-key",
        "another-size",
        "another-model",
        "seed-minus-1",
        "edited-source",
    ],  # fmt: skip
)
def test_a_record_that_cannot_be_rebuilt_gives_a_clear_note_and_a_plain_single_image(
    ctxrep, edit, drop, fields, message
):
    original, _ = run(ctxrep, settings(), batch_size=4, seed=100)
    result, p = paste(ctxrep, original, 2, edit=edit, drop=drop, **fields)
    plain, _ = run(ctxrep, settings(), batch_size=1, **{"seed": 102, **fields})
    assert len(result.images) == 1 and torch.equal(result.images[0], plain.images[0])
    assert message in notes(result) and "runs alone" in notes(result)


# ---- img2img ------------------------------------------------------------------------------------------------------
INIT = {"init_images": ["an init image"]}


def test_an_img2img_batch_records_its_source_and_a_txt2img_batch_does_not(ctxrep):
    img2img, _ = run(ctxrep, settings(), batch_size=4, seed=100, **INIT)
    txt2img, _ = run(ctxrep, settings(), batch_size=4, seed=100)
    assert all(info["CtxRep batch source"] == "img2img" for info in img2img.infotexts)
    assert all("CtxRep batch source" not in info for info in txt2img.infotexts)


def test_an_img2img_image_pasted_into_img2img_is_reproduced(ctxrep):
    original, _ = run(ctxrep, settings(), batch_size=4, seed=100, **INIT)
    reproduced, p = paste(ctxrep, original, 2, **INIT)
    assert p.sampled == 4 and torch.equal(reproduced.images[0], original.images[2])
    assert "regenerated 4 images" in note(reproduced)


@pytest.mark.parametrize(
    "made, pasted_into, message",
    [({}, INIT, "made in txt2img, this run is img2img"), (INIT, {}, "made in img2img, this run is txt2img")],
    ids=["txt2img-into-img2img", "img2img-into-txt2img"],
)
def test_an_image_pasted_into_the_other_tab_runs_alone_and_says_why(ctxrep, made, pasted_into, message):
    original, _ = run(ctxrep, settings(), batch_size=4, seed=100, **made)
    result, p = paste(ctxrep, original, 2, **pasted_into)
    plain, _ = run(ctxrep, settings(), batch_size=1, seed=102, **pasted_into)
    assert p.sampled == 1 and torch.equal(result.images[0], plain.images[0])
    assert message in note(result) and "reproducing" not in note(result)


# ---- what a rebuild may cost --------------------------------------------------------------------------------------
def test_a_rebuild_above_the_settings_limit_runs_alone_and_gives_the_cost(ctxrep, forge_state):
    original, _ = run(ctxrep, settings(memory=True), batch_size=2, n_iter=3, seed=100)
    assert forge_state.opts.ctxrep_rebuild_max_images == 32  # the default allows this 6-image rebuild
    forge_state.opts.set("ctxrep_rebuild_max_images", 4)
    params = parse_generation_parameters(original.infotexts[5])
    for script_args in (pasted_args(ctxrep, params), api_pasted_args(ctxrep, params)):
        result, p = run(ctxrep, script_args, batch_size=1, **seeds_of(params))
        assert p.sampled == 1 and "rebuilding would generate 6 images; the limit is 4 (Settings" in note(result)


def test_a_batch_size_above_the_ui_maximum_is_not_rebuilt_unless_the_ui_allows_it(ctxrep):
    original, _ = run(ctxrep, settings(), batch_size=9, seed=100)
    result, p = paste(ctxrep, original, 2)
    assert p.sampled == 1 and "batch size 9 is above the batch size maximum (8)" in note(result)
    script = ctxrep.ContextualRepulsionScript()  # a ui-config.json with a batch size maximum of 16
    assert script.show(False) is ctxrep.scripts.AlwaysVisible
    ((elem_id, created),) = script.on_after_component_elem_id
    with gr.Blocks():
        created(ctxrep.scripts.OnComponent(gr.Slider(1, 16, value=1, elem_id=elem_id)))
    assert elem_id == "txt2img_batch_size" and script._max_batch_size() == 16


# ---- settings that do not run -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes, message",
    [
        ({"blocks": "custom", "custom_blocks": ""}, "'custom_blocks' must be a range"),
        ({"repulsion": False}, "both methods are off"),
    ],
    ids=["invalid", "both-off"],
)
def test_settings_that_do_not_run_rebuild_nothing_and_say_only_why(ctxrep, changes, message):
    original, _ = run(ctxrep, settings(), batch_size=4, seed=100)
    result, p = paste(ctxrep, original, 2, changes=changes)
    assert p.sampled == 1 and message in notes(result)
    assert "reproduc" not in notes(result) and "regenerated" not in notes(result)


# ---- interrupted ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag, images", [("interrupted", 0), ("skipped", 1)])
def test_an_interrupt_or_skip_during_an_earlier_batch_says_the_image_was_not_reproduced(
    ctxrep, forge_state, flag, images
):
    original, _ = run(ctxrep, settings(memory=True), batch_size=2, n_iter=2, seed=100)

    def sample(p, x):
        if p.iteration == 0:
            setattr(forge_state.state, flag, True)  # the user's click while batch 1 samples
        return sampler(p, x)

    params = parse_generation_parameters(original.infotexts[3])
    result, p = run(ctxrep, pasted_args(ctxrep, params), sample=sample, batch_size=1, **seeds_of(params))
    assert len(result.images) == images
    text = note(result)
    assert f"the generation was {flag} during batch 1 of the 2 rebuilt batch(es)" in text
    assert "could not be reproduced" in text and "regenerated" not in text
    assert (result.seed, result.all_seeds, p.seed) == (103, [103], 103)


def test_a_stop_between_batches_says_the_image_was_not_reproduced(ctxrep, forge_state):
    original, _ = run(ctxrep, settings(memory=True), batch_size=2, n_iter=2, seed=100)
    stop = hook_script(
        ctxrep, "postprocess_batch_list", lambda p, *a, **k: setattr(forge_state.state, "stopping_generation", True)
    )
    params = parse_generation_parameters(original.infotexts[3])
    result, p = run(ctxrep, pasted_args(ctxrep, params), after=[stop], batch_size=1, **seeds_of(params))
    assert result.images == [] and p.sampled == 2 and result.all_seeds == [103]
    assert (
        "stopped before the pasted image's batch, so image 2 of batch 2 could not be reproduced"
        in (result.extra_generation_params["CtxRep note"])
    )


def test_another_script_changing_the_batch_keeps_its_images_and_says_so(ctxrep):
    original, _ = run(ctxrep, settings(), batch_size=4, seed=100)
    drop = hook_script(ctxrep, "postprocess_batch_list", lambda p, pp, *a, **k: setattr(pp, "images", pp.images[:3]))
    params = parse_generation_parameters(original.infotexts[2])
    result, _ = run(ctxrep, pasted_args(ctxrep, params), before=[drop], batch_size=1, **seeds_of(params))
    assert len(result.images) == 3 and "another script changed the batch to 3 images" in notes(result)
