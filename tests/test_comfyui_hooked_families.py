"""ComfyUI's Krea 2 and Ernie-Image (comfy/ldm/krea2, comfy/ldm/ernie), which have no block patch point: the node hooks
their blocks for the duration of each in-window call, on stand-ins of ComfyUI's classes (tests/comfy_standins.py).
The real ComfyUI is checked by tools/verify_comfyui.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from lib_ctxrep.integrations.comfyui_nodes import ContextualRepulsionNode
from tests.comfy_standins import (
    BaseModel,
    ErnieImageModel,
    LatentFormat,
    ModelPatcher,
    ModelSamplingDiscreteFlow,
    ModelSamplingFlux,
    SingleStreamDiT,
    ksampler,
)
from tests.library_spy import library_calls

B, TEXT, SUFFIX = 4, 9, 5
ON = {"step_strength": 8.0, "window": 0.5}


def krea2(seed: int = 0) -> ModelPatcher:
    torch.manual_seed(seed)
    return ModelPatcher(BaseModel(SingleStreamDiT(), ModelSamplingFlux(shift=1.15), LatentFormat(4)))


def ernie(seed: int = 0) -> ModelPatcher:
    torch.manual_seed(seed)
    return ModelPatcher(BaseModel(ErnieImageModel(), ModelSamplingDiscreteFlow(shift=3.0), LatentFormat(4)))


#: name: (model, latent shape, the block list, the valid text positions in a block's sequence)
FAMILIES: dict[str, tuple[Callable[[], ModelPatcher], tuple[int, ...], str, list[int]]] = {
    "Krea 2": (krea2, (4, 1, 4, 4), "blocks", list(range(TEXT - SUFFIX))),  # [text; 2 x 2 = 4 image tokens]
    "Ernie-Image": (ernie, (4, 3, 3), "layers", list(range(9, 9 + TEXT))),  # [9 image tokens; text]
}


def sample(model: ModelPatcher, shape: tuple[int, ...], extra: dict | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, TEXT, 16, generator=g), dict(extra or {})]]
    negative = [[torch.randn(1, TEXT, 16, generator=g), dict(extra or {})]]
    return ksampler(model, 7, 4, 3.0, positive, negative, {"samples": torch.zeros(B, *shape)})


def node(model: ModelPatcher, **inputs) -> ModelPatcher:
    values = {"step_strength": 2.85, "window": 0.05, "blocks": "all", "custom_blocks": ""}
    values.update({"single_blocks": "all tokens", "memory": False, **inputs})
    return ContextualRepulsionNode().patch(model, **values)[0]


def observed(model: ModelPatcher, patched: ModelPatcher, shape: tuple, blocks: str, extra: dict | None = None):
    """What the first block computed and what the second one received (after our hook), in the first call."""
    layers = getattr(model.model.diffusion_model, blocks)
    seen: dict = {}

    def computed(module, args, output) -> None:
        seen.setdefault("computed", output.clone())

    def handed_on(module, args) -> None:
        seen.setdefault("handed_on", args[0].clone())

    hooks = [layers[0].register_forward_hook(computed), layers[1].register_forward_pre_hook(handed_on)]
    try:
        sample(patched, shape, extra)
    finally:
        for hook in hooks:
            hook.remove()
    return seen["computed"], seen["handed_on"]


def moved_positions(before: torch.Tensor, after: torch.Tensor) -> list[int]:
    return (before != after).any(-1).any(0).nonzero().flatten().tolist()


@pytest.mark.parametrize("name", FAMILIES)
def test_the_node_on_a_model_without_block_patches_changes_the_batch(name: str) -> None:
    build, shape, _, _ = FAMILIES[name]
    base = build()
    assert not torch.allclose(sample(node(base, **ON), shape), sample(base, shape))


@pytest.mark.parametrize("name", FAMILIES)
def test_only_valid_text_tokens_move(name: str) -> None:
    build, shape, blocks, valid = FAMILIES[name]
    base = build()
    before, after = observed(base, node(base, **ON), shape, blocks)
    assert moved_positions(before, after) == valid


def test_krea2_reference_tokens_after_the_target_never_move() -> None:
    base = krea2()
    reference = {"reference_latents": [torch.randn(1, 4, 1, 4, 4)]}
    before, after = observed(base, node(base, **ON), (4, 1, 4, 4), "blocks", reference)
    assert before.shape[1] == TEXT + 4 + 4  # [text; target; reference]
    assert moved_positions(before, after) == list(range(TEXT - SUFFIX))


@pytest.mark.parametrize("name", FAMILIES)
def test_no_hook_stays_on_the_shared_model_after_a_run_or_an_exception(name: str) -> None:
    build, shape, blocks, _ = FAMILIES[name]
    base = build()
    plain = sample(base, shape)
    patched = node(base, **ON)
    sample(patched, shape)
    layer = getattr(base.model.diffusion_model, blocks)[1]

    def fail(module, args):
        raise RuntimeError("out of memory")

    failing = layer.register_forward_pre_hook(fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        sample(patched, shape)
    failing.remove()
    with library_calls() as calls:
        assert torch.equal(sample(base, shape), plain)  # the shared model runs as it did before, untouched
    assert calls == []


@pytest.mark.parametrize("name", FAMILIES)
def test_the_step_strength_is_shared_out_over_the_hooked_blocks(name: str) -> None:
    build, shape, _, _ = FAMILIES[name]
    base = build()
    shared = sample(node(base, **ON), shape)
    per_block = sample(node(base, step_strength=1.0, block_strength=8.0 / 3, window=0.5), shape)  # 3 blocks
    torch.testing.assert_close(shared, per_block, rtol=1e-5, atol=1e-6)
