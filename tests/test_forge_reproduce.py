"""Issue 15: paste one image of a coupled batch, get that image again (scripts/ctxrep.py on Forge stand-ins).

Generations run through ``tests.forge_standins.process_images``, which calls the script's hooks in the order of
Forge's modules/processing.py; pasting goes through the script's ``infotext_fields`` as Forge's PNG Info "Send to"
(modules/infotext_utils.py connect_paste) and the API's ``"infotext"`` field (modules/api/api.py apply_infotext) do.
"""

from __future__ import annotations

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
    return [{**forge_args.DEFAULTS, "enabled": True, "strength": 0.5, **kw}[n] for n in forge_args.ARG_NAMES]


def spell_settings(**kw):
    return settings(repulsion=False, spell=True, spell_radius=2.0, **kw)


def run(ctxrep, script_args, **kw):
    """One generation; ``kw``: Processing fields (batch_size, n_iter, seed, ...)."""
    script = ctxrep.ContextualRepulsionScript()
    script.args_from, script.args_to = 0, len(script_args)
    sd_model = SimpleNamespace(forge_objects=SimpleNamespace(unet=unet()))
    p = Processing(sd_model, list(script_args), **{"sd_model_hash": MODEL, **kw})
    p.scripts = ScriptRunner([script])
    processed = process_images(p, sampler)
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


def without_note(infotext):
    return {k: v for k, v in infotext.items() if k != "CtxRep note"}


# ---- the infotext --------------------------------------------------------------------------------
def test_each_image_of_a_repelled_batch_records_its_batch_seed_size_and_position(ctxrep):
    processed, _ = run(ctxrep, settings(), batch_size=4, seed=100)
    third = processed.infotexts[2]
    assert third["Seed"] == 102
    assert {k: third[k] for k in BATCH_KEYS} == {
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


def test_plain_generation_is_unchanged_apart_from_the_batch_keys(ctxrep):
    processed, _ = run(ctxrep, settings(), batch_size=4, seed=100)
    again, _ = run(ctxrep, settings(), batch_size=4, seed=100)
    assert all(torch.equal(a, b) for a, b in zip(processed.images, again.images, strict=True))
    assert len(processed.images) == 4 and processed.seed == 100 and processed.all_seeds == [100, 101, 102, 103]
    assert "CtxRep note" not in processed.infotexts[0]


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


def test_the_api_infotext_field_reproduces_the_image(ctxrep):
    """/sdapi/v1/txt2img with "infotext": each script field's value cast to the component's default type."""
    original, _ = run(ctxrep, settings(), batch_size=4, seed=100)
    params = parse_generation_parameters(original.infotexts[2])
    script = ctxrep.ContextualRepulsionScript()
    with gr.Blocks():
        components = script.ui(is_img2img=False)
    given = {id(c): api_pasted_value(function, c, params) for c, function in script.infotext_fields}
    script_args = [given.get(id(c)) if given.get(id(c)) is not None else c.value for c in components]
    reproduced, _ = run(ctxrep, script_args, batch_size=1, **seeds_of(params))
    assert torch.equal(reproduced.images[0], original.images[2])


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


def test_a_stale_record_with_another_seed_runs_plain_without_a_note(ctxrep):
    original, _ = run(ctxrep, settings(), batch_size=4, seed=100)
    result, p = paste(ctxrep, original, 2, seed=555)
    plain, _ = run(ctxrep, settings(), batch_size=1, seed=555)
    assert (
        p.sampled == 1 and torch.equal(result.images[0], plain.images[0]) and "CtxRep note" not in result.infotexts[0]
    )


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
    ],
    ids=["edited-seed", "edited-position", "edited-size", "missing-key", "another-size", "another-model"],
)
def test_a_record_that_cannot_be_rebuilt_gives_a_clear_note_and_a_plain_single_image(
    ctxrep, edit, drop, fields, message
):
    original, _ = run(ctxrep, settings(), batch_size=4, seed=100)
    result, p = paste(ctxrep, original, 2, edit=edit, drop=drop, **fields)
    plain, _ = run(ctxrep, settings(), batch_size=1, seed=102, **fields)
    assert len(result.images) == 1 and torch.equal(result.images[0], plain.images[0])
    notes = " ".join(result.infotexts[0].get(k, "") for k in ("CtxRep note", "CtxRep error"))
    assert message in notes and "runs alone" in notes
