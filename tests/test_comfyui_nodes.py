"""The ComfyUI nodes (lib_ctxrep.integrations.comfyui_nodes) on stand-ins of ComfyUI's patcher, sampler and models.

The CI mirror of tools/verify_comfyui.py, which runs the same behaviours against a real ComfyUI: the nodes patch a
``ModelPatcher`` stand-in, and a KSampler stand-in (Euler, "simple", CFG, ``calc_cond_batch``'s row layout) samples
tiny Flux, Z-Image (NextDiT), SD3 and unsupported models through ComfyUI's patch points.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lib_ctxrep import RepulsionConfig
from lib_ctxrep.integrations.comfyui import ComfyRepulsion
from lib_ctxrep.integrations.comfyui_nodes import NODE_CLASS_MAPPINGS, ContextualRepulsionNode, SpellNode
from tests.comfy_standins import (
    BaseModel,
    Flux,
    LatentFormat,
    MMDiT,
    ModelPatcher,
    ModelSamplingDiscreteFlow,
    ModelSamplingFlux,
    NextDiT,
    OpenAISignatureMMDITWrapper,
    ksampler,
    no_free_memory,
)

ROOT = Path(__file__).resolve().parents[1]
B, STEPS, CFG, CTX, TEXT = 4, 4, 3.0, 16, 6
ON = {"step_strength": 8.0, "window": 0.5}
STEP_FRACTIONS = [0.0, 0.25, 0.5, 0.75]  # the simple schedule's 4 steps, as fractions of the trajectory


# --------------------------------------------------------------------------------------------------------------------
# Models, conditioning, sampling
# --------------------------------------------------------------------------------------------------------------------
def flux(seed: int = 0, patch_size: int = 2) -> ModelPatcher:
    torch.manual_seed(seed)
    return ModelPatcher(BaseModel(Flux(patch_size=patch_size), ModelSamplingFlux(), LatentFormat(4)))


def zimage(seed: int = 0) -> ModelPatcher:
    torch.manual_seed(seed)
    return ModelPatcher(BaseModel(NextDiT(), ModelSamplingDiscreteFlow(shift=3.0, multiplier=1.0), LatentFormat(4)))


def sd3(seed: int = 0) -> ModelPatcher:
    torch.manual_seed(seed)
    model = BaseModel(OpenAISignatureMMDITWrapper(), ModelSamplingDiscreteFlow(), LatentFormat(4, 1.5305, 0.0609))
    return ModelPatcher(model)


def unsupported(seed: int = 0) -> ModelPatcher:
    """AuraFlow's diffusion model class (``MMDiT``), which the block map does not cover."""
    torch.manual_seed(seed)
    return ModelPatcher(BaseModel(MMDiT(), ModelSamplingDiscreteFlow(shift=1.73, multiplier=1.0), LatentFormat(4)))


MODELS = {"flux": flux, "zimage": zimage, "sd3": sd3}


def conditioning(extra: dict | None = None) -> tuple[list, list]:
    """CONDITIONING for the positive and the negative prompt (same length: one call holds both)."""
    g = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, TEXT, CTX, generator=g), dict(extra or {})]]
    negative = [[torch.randn(1, TEXT, CTX, generator=g), dict(extra or {})]]
    return positive, negative


def sample(model: ModelPatcher, seed: int = 7, extra: dict | None = None, batch: int = B) -> torch.Tensor:
    positive, negative = conditioning(extra)
    return ksampler(model, seed, STEPS, CFG, positive, negative, {"samples": torch.zeros(batch, 4, 4, 4)})


def repulsion_node(model: ModelPatcher, **inputs) -> ModelPatcher:
    values = {"step_strength": 2.85, "window": 0.05, "blocks": "all", "custom_blocks": ""}
    values.update({"single_blocks": "all tokens", "memory": False, **inputs})
    return ContextualRepulsionNode().patch(model, **values)[0]


def recorded(config: RepulsionConfig, model: ModelPatcher) -> tuple[ComfyRepulsion, ModelPatcher]:
    repulsion = ComfyRepulsion(config, record_stats=True)
    patched = repulsion.patch(model)
    assert patched is not None
    return repulsion, patched


def with_wrapper(model: ModelPatcher, calls: list) -> ModelPatcher:
    """A clone with another node's model-function wrapper, which records each call's ``cond_or_uncond``."""
    clone = model.clone()

    def other_node_wrapper(apply_model: Callable, args: dict) -> torch.Tensor:
        calls.append(list(args["cond_or_uncond"]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    clone.set_model_unet_function_wrapper(other_node_wrapper)
    return clone


def options_clean(model: ModelPatcher) -> bool:
    options = model.model_options
    transformer = options.get("transformer_options", {})
    return (
        "model_function_wrapper" not in options
        and not options.get("sampler_post_cfg_function")
        and not transformer.get("patches_replace")
        and not transformer.get("patches")
        and not transformer.get("wrappers")
        and not model.wrappers
    )


def differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return float((a - b).abs().max()) > 1e-4


def library_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "lib_ctxrep"]


# --------------------------------------------------------------------------------------------------------------------
# Loading: the node pack as ComfyUI imports it
# --------------------------------------------------------------------------------------------------------------------
LOADER = """
import importlib.util, json, sys
root = sys.argv[1]
spec = importlib.util.spec_from_file_location("ctxrep-nodes", root + "/__init__.py", submodule_search_locations=[root])
module = importlib.util.module_from_spec(spec)
sys.modules["ctxrep-nodes"] = module
spec.loader.exec_module(module)
print(json.dumps({
    "comfy": sorted(m for m in sys.modules if m == "comfy" or m.startswith("comfy.")),
    "nodes": sorted(module.NODE_CLASS_MAPPINGS),
    "names": sorted(module.NODE_DISPLAY_NAME_MAPPINGS),
    "modules": sorted({c.__module__ for c in module.NODE_CLASS_MAPPINGS.values()}),
}))
"""


def test_the_root_package_loads_as_comfyui_loads_it_importing_no_comfy_module(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", LOADER, str(ROOT)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["comfy"] == []
    assert loaded["nodes"] == loaded["names"] == ["ContextualRepulsion", "SPELLRepellency"]
    assert loaded["modules"] == ["ctxrep-nodes.lib_ctxrep.integrations.comfyui_nodes"]  # relative imports resolved


# --------------------------------------------------------------------------------------------------------------------
# The node classes (ComfyUI's V1 node API)
# --------------------------------------------------------------------------------------------------------------------
NODES = [ContextualRepulsionNode, SpellNode]


@pytest.mark.parametrize("node", NODES, ids=lambda n: n.__name__)
def test_every_input_has_a_tooltip(node):
    inputs = {**node.INPUT_TYPES()["required"], **node.INPUT_TYPES().get("optional", {})}
    missing = [name for name, (_, options) in inputs.items() if not str(options.get("tooltip", "")).strip()]
    assert inputs and missing == []


@pytest.mark.parametrize("node", NODES, ids=lambda n: n.__name__)
def test_the_node_is_a_model_patch_returning_a_model(node):
    assert node.CATEGORY == "model_patches"
    assert node.RETURN_TYPES == ("MODEL",)
    assert callable(getattr(node(), node.FUNCTION))
    assert node in NODE_CLASS_MAPPINGS.values()


@pytest.mark.parametrize("node", NODES, ids=lambda n: n.__name__)
def test_every_default_lies_within_its_range_or_choices(node):
    inputs = {**node.INPUT_TYPES()["required"], **node.INPUT_TYPES().get("optional", {})}
    for name, (kind, options) in inputs.items():
        if isinstance(kind, list):
            assert options["default"] in kind, name
        elif kind in ("FLOAT", "INT"):
            assert options["min"] <= options["default"] <= options["max"], name
            assert options["step"] > 0, name


@pytest.mark.parametrize(
    ("blocks", "custom_blocks"), [("all", ""), ("middle third", ""), ("custom", "6:13"), ("custom", " 0:1 ")]
)
def test_validate_inputs_accepts_a_preset_or_a_custom_range(blocks, custom_blocks):
    assert ContextualRepulsionNode.VALIDATE_INPUTS(blocks=blocks, custom_blocks=custom_blocks) is True


@pytest.mark.parametrize(
    ("blocks", "custom_blocks", "named"),
    [("custom", "", "custom_blocks"), ("custom", "abc", "blocks"), ("custom", "13:6", "blocks"),
     ("everything", "", "blocks")],
)  # fmt: skip
def test_validate_inputs_refuses_a_bad_range_or_an_unknown_preset_with_a_message(blocks, custom_blocks, named):
    answer = ContextualRepulsionNode.VALIDATE_INPUTS(blocks=blocks, custom_blocks=custom_blocks)
    assert isinstance(answer, str) and named in answer


# --------------------------------------------------------------------------------------------------------------------
# Contextual repulsion: on, off, and the original model
# --------------------------------------------------------------------------------------------------------------------
def test_strength_0_returns_the_model_itself():
    base = flux()
    assert repulsion_node(base, step_strength=0.0) is base


@pytest.mark.parametrize("family", MODELS)
def test_the_node_on_changes_the_batch(family):
    base = MODELS[family]()
    assert differs(sample(repulsion_node(base, **ON)), sample(base))


@pytest.mark.parametrize("family", MODELS)
def test_patching_leaves_the_original_model_untouched_and_its_sampling_bit_identical(family):
    base = MODELS[family]()
    plain = sample(base)
    sample(repulsion_node(base, memory=True, **ON))
    assert options_clean(base)
    assert torch.equal(sample(base), plain)


def test_an_unsupported_model_is_returned_unpatched_with_one_message_naming_it(caplog):
    base = unsupported()
    with caplog.at_level(logging.WARNING, logger="lib_ctxrep"):
        same = repulsion_node(base, **ON)
    messages = library_messages(caplog)
    assert same is base and options_clean(base)
    assert len(messages) == 1 and "MMDiT" in messages[0] and "not supported" in messages[0]


def test_spell_works_on_an_unsupported_model():
    base = unsupported()
    plain = sample(base)
    pushed = SpellNode().patch(base, radius=4.0, overcompensation=1.6, within_batch=True, earlier_runs=False)[0]
    assert differs(sample(pushed), plain)


# --------------------------------------------------------------------------------------------------------------------
# CFG rows and the window
# --------------------------------------------------------------------------------------------------------------------
def test_cond_and_uncond_in_one_call_are_repelled_as_in_separate_calls():
    base = flux()
    calls: list = []
    batched = sample(repulsion_node(with_wrapper(base, calls), **ON))
    assert [1, 0] in calls
    calls.clear()
    with no_free_memory():
        split = sample(repulsion_node(with_wrapper(base, calls), **ON))
    assert calls and {len(c) for c in calls} == {1}
    torch.testing.assert_close(split, batched, rtol=1e-5, atol=1e-5)


def test_repelling_cond_and_uncond_together_would_differ_from_separate_calls():
    """The comparison above can fail: rows of both branches labelled one group differ between the layouts."""
    mixed = RepulsionConfig(step_strength=8.0, window=0.5, chunks=("cond",))
    batched = sample(recorded(mixed, flux())[1])
    with no_free_memory():
        split = sample(recorded(mixed, flux())[1])
    assert differs(split, batched)


def test_every_repulsion_group_is_one_branch_of_the_batch():
    repulsion, patched = recorded(RepulsionConfig(step_strength=8.0, window=0.5), flux())
    sample(patched)
    assert {s.branch for s in repulsion.engine.stats} == {"cond", "uncond"}
    assert {s.rows for s in repulsion.engine.stats} == {B}


@pytest.mark.parametrize(
    ("blocks", "repelled"), [("first", {"single.0"}), ("last", {"single.2"}), ((1, 3), {"single.1", "single.2"})]
)
def test_z_image_post_block_patch_repels_only_the_selected_layers(blocks, repelled):
    repulsion, patched = recorded(RepulsionConfig(step_strength=8.0, window=0.5, blocks=blocks), zimage())
    sample(patched)
    assert {s.block for s in repulsion.engine.stats} == repelled


@pytest.mark.parametrize("family", MODELS)
@pytest.mark.parametrize(("window", "steps"), [(0.05, 1), (0.5, 2), (0.3, 2), (1.0, 4)])
def test_repulsion_acts_only_at_the_steps_inside_the_window_of_the_sigma_table(family, window, steps):
    repulsion, patched = recorded(RepulsionConfig(step_strength=8.0, window=window), MODELS[family]())
    sample(patched)
    assert sorted({round(s.progress, 4) for s in repulsion.engine.stats}) == STEP_FRACTIONS[:steps]


# --------------------------------------------------------------------------------------------------------------------
# Other nodes' patches
# --------------------------------------------------------------------------------------------------------------------
def test_another_nodes_replace_patch_on_the_same_block_is_chained():
    seen: list[int] = []

    def other_replace_patch(args: dict, extra: dict) -> dict:
        seen.append(args["txt"].shape[0])
        out = extra["original_block"](args)
        return {"img": out["img"] * 0.9, "txt": out["txt"]}

    other = flux().clone()
    other.set_model_patch_replace(other_replace_patch, "dit", "double_block", 0)
    alone = sample(other)
    calls = len(seen)
    on = sample(repulsion_node(other, **ON))
    assert len(seen) == 2 * calls  # every call of the sampling still runs it
    assert differs(on, alone)  # and repulsion still acts


def test_another_nodes_model_function_wrapper_is_chained():
    calls: list = []
    other = with_wrapper(flux(), calls)
    alone = sample(other)
    count = len(calls)
    on = sample(repulsion_node(other, **ON))
    assert len(calls) == 2 * count
    assert differs(on, alone)


def test_z_image_post_block_patches_keep_the_other_nodes_patch():
    seen: list[int] = []

    def other_post_patch(args: dict) -> dict:
        seen.append(args["block_index"])
        return {}

    other = zimage().clone()
    other.set_model_patch(other_post_patch, "double_block")
    alone = sample(other)
    count = len(seen)
    patched = repulsion_node(other, **ON)
    assert patched.model_options["transformer_options"]["patches"]["double_block"][0] is other_post_patch
    on = sample(patched)
    assert len(seen) == 2 * count and sorted(set(seen)) == [0, 1, 2]
    assert differs(on, alone)


# --------------------------------------------------------------------------------------------------------------------
# Tokens that are never repelled
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("patch_size", [2, 1], ids=["flux1-kontext", "flux2-edit"])
def test_edit_reference_tokens_are_never_repelled(patch_size):
    reference = torch.randn(1, 4, 2, 6, generator=torch.Generator().manual_seed(3))
    patched = repulsion_node(flux(patch_size=patch_size), **ON)  # single blocks: "all tokens"
    ours = patched.model_options["transformer_options"]["patches_replace"]["dit"][("single_block", 0)]
    target, references = (4 // patch_size) ** 2, (2 // patch_size) * (6 // patch_size)
    moved: dict[str, list[float]] = {"text": [], "target": [], "reference": []}

    def outer_probe(args: dict, extra: dict) -> dict:  # ours against the plain block, per token span
        out, original = ours(args, extra), extra["original_block"](args)
        delta = (out["img"] - original["img"]).abs()
        assert delta.shape[1] == TEXT + target + references
        moved["text"].append(float(delta[:, :TEXT].max()))
        moved["target"].append(float(delta[:, TEXT : TEXT + target].max()))
        moved["reference"].append(float(delta[:, TEXT + target :].max()))
        return out

    patched.set_model_patch_replace(outer_probe, "dit", "single_block", 0)
    sample(patched, extra={"reference_latents": [reference]})
    assert max(moved["text"]) > 0 and max(moved["target"]) > 0
    assert max(moved["reference"]) == 0


def test_z_image_caption_padding_is_never_repelled():
    seen: dict[str, list[torch.Tensor]] = {"before": [], "after": []}
    model = zimage().clone()
    model.set_model_patch(lambda args: seen["before"].append(args["txt"].clone()) or {}, "double_block")
    patched = repulsion_node(model, **ON)
    patched.set_model_patch(lambda args: seen["after"].append(args["txt"].clone()) or {}, "double_block")
    sample(patched)
    pairs = list(zip(seen["before"], seen["after"], strict=True))
    assert pairs[0][0].shape[1] == 8  # 6 caption tokens padded to the model's pad_tokens_multiple
    assert any(not torch.equal(a[:, :TEXT], b[:, :TEXT]) for a, b in pairs)
    assert all(torch.equal(a[:, TEXT:], b[:, TEXT:]) for a, b in pairs)


def test_sd3s_last_block_is_never_patched_and_sampling_works():
    base = sd3()
    depth = len(base.model.diffusion_model.joint_blocks)
    repulsion, patched = recorded(RepulsionConfig(step_strength=8.0, window=0.5), base)
    replaced = set(patched.model_options["transformer_options"]["patches_replace"]["dit"])
    assert replaced == {("double_block", i) for i in range(depth - 1)}
    out = sample(patched)
    assert torch.isfinite(out).all() and differs(out, sample(base))
    assert {s.block for s in repulsion.engine.stats} == {f"double.{i}" for i in range(depth - 1)}


def test_a_z_image_edit_call_is_left_alone_with_one_message(caplog):
    base = zimage()
    edit = {"reference_latents": [torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(4))]}
    plain = sample(base, extra=edit)
    patched = repulsion_node(base, **ON)
    with caplog.at_level(logging.WARNING, logger="lib_ctxrep"):
        out = sample(patched, extra=edit)
        sample(patched, seed=8, extra=edit)
    messages = library_messages(caplog)
    assert torch.equal(out, plain)
    assert len(messages) == 1 and "Z-Image edit" in messages[0]


# --------------------------------------------------------------------------------------------------------------------
# Cross-batch memory: queue runs of one patched model
# --------------------------------------------------------------------------------------------------------------------
def test_memory_the_first_run_equals_a_fresh_models_and_the_second_is_pushed_from_it():
    base = flux()
    remembering = repulsion_node(base, memory=True, **ON)
    first, second = sample(remembering, seed=7), sample(remembering, seed=8)
    assert torch.equal(first, sample(repulsion_node(base, memory=True, **ON), seed=7))
    assert differs(second, sample(repulsion_node(base, memory=True, **ON), seed=8))


def test_memory_off_a_second_run_is_not_pushed():
    base = flux()
    forgetting = repulsion_node(base, memory=False, **ON)
    sample(forgetting, seed=7)
    assert torch.equal(sample(forgetting, seed=8), sample(repulsion_node(base, memory=False, **ON), seed=8))


def test_a_clone_of_the_patched_model_shares_its_memory():
    base = flux()
    reference = repulsion_node(base, memory=True, **ON)
    sample(reference, seed=7)
    expected = sample(reference, seed=8)
    patched = repulsion_node(base, memory=True, **ON)
    clone = patched.clone()  # before any run: ModelPatcher.clone deep-copies model_options
    sample(patched, seed=7)
    assert torch.equal(sample(clone, seed=8), expected)


@pytest.mark.parametrize(
    "family, inputs, hooked",
    [
        ("flux", {}, 3 + 2),  # 3 double + 2 single blocks
        ("flux", {"blocks": "first third", "single_blocks": "off"}, 1),
        ("zimage", {}, 3),  # its layers play the dual blocks' role
        ("sd3", {}, 2),  # the last joint block has no text stream
    ],
)
def test_the_step_strength_over_n_hooked_blocks_equals_a_per_block_strength_of_its_nth(family, inputs, hooked):
    base = MODELS[family]()
    shared = sample(repulsion_node(base, step_strength=8.0, window=0.5, **inputs))
    per_block = sample(repulsion_node(base, step_strength=1.0, block_strength=8.0 / hooked, window=0.5, **inputs))
    assert differs(shared, sample(base))
    torch.testing.assert_close(shared, per_block, rtol=1e-5, atol=1e-6)
