"""Forge Neo 2.26's Krea 2, Ernie-Image and PiD through the Forge front end, on stand-ins of Neo's classes
(tests/neo_standins.py) and of Forge's sampler batching (tests/forge_standins.py): only valid text tokens move, image
tokens never, Krea 2's chat-template suffix never; a call that cannot be read runs unmodified with one message naming
the class. The real Neo 2.26 backend is checked by tools/verify_forge_neo.py."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from lib_ctxrep import RepulsionConfig
from lib_ctxrep.integrations.forge import ForgeRepulsion
from tests.forge_standins import KModel, PredictionDiscreteFlow, PredictionFlux, UnetPatcher, sampling_function_inner
from tests.neo_standins import ErnieImageModel, PidNet, SingleStreamDiT

B, TEXT = 4, 9
CONFIG = RepulsionConfig(strength=0.5, iterations=4, window=1.0)


@dataclass(frozen=True)
class Family:
    """A Neo model: its diffusion model, predictor, latent, how Neo's text engine shapes ``c_crossattn``, its block
    list, and which positions of a block's output are valid text (in the one sequence, or the text stream)."""

    build: Callable[[], torch.nn.Module]
    predictor: Callable[[], torch.nn.Module]
    latent: tuple[int, ...]
    text: Callable[[torch.Tensor], torch.Tensor]
    blocks: str
    valid_text: Callable[[int], list[int]]
    stream: int | None = None  # a dual block's text stream in its output tuple (None: one sequence)


FAMILIES = {
    # [text (4 prompt tokens + 5 template suffix tokens); image (4 x 4 latent, 2 x 2 patches = 4 tokens)]
    "Krea 2": Family(SingleStreamDiT, lambda: PredictionFlux(1.15), (4, 1, 4, 4), lambda t: t[:, None], "blocks",
                     lambda text: list(range(text - 5))),
    # [image (3 x 3 latent, 1 x 1 patches = 9 tokens); text]
    "Ernie-Image": Family(ErnieImageModel, lambda: PredictionDiscreteFlow(3.0), (4, 3, 3), lambda t: t, "layers",
                          lambda text: list(range(9, 9 + text))),
    # (image, text) with the text cut to the model's 8 tokens
    "PiD": Family(lambda: PidNet(txt_max_length=8), lambda: PredictionDiscreteFlow(1.5), (3, 4, 4), lambda t: t,
                  "patch_blocks", lambda text: list(range(min(text, 8))), stream=1),
}  # fmt: skip


def unet_of(family: Family, seed: int = 0) -> UnetPatcher:
    torch.manual_seed(seed)
    return UnetPatcher(KModel(family.build(), family.predictor()))


def sample(family: Family, unet: UnetPatcher, cfg: float = 3.0, text: int = TEXT) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    cond = [{"c_crossattn": family.text(torch.randn(1, text, 16, generator=g).expand(B, -1, -1))}]
    uncond = [{"c_crossattn": family.text(torch.randn(1, text, 16, generator=g).expand(B, -1, -1))}]
    x = torch.randn(B, *family.latent, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return sampling_function_inner(unet.model, x, torch.full((B,), 1.0), uncond, cond, cfg, unet.model_options)


def observed(family: Family, unet: UnetPatcher, text: int = TEXT) -> tuple:
    """What the first hooked block computed and what the second one received (after our hook), with repulsion on."""
    blocks = getattr(unet.model.diffusion_model, family.blocks)
    seen: dict = {}

    def computed(module, args, output) -> None:  # registered before ours (attached per call): the block's own output
        seen.setdefault("computed", tuple(t.clone() for t in output) if isinstance(output, tuple) else output.clone())

    def handed_on(module, args) -> None:  # the next block's input: after our hook
        seen.setdefault("handed_on", tuple(t.clone() if t is not None else None for t in args[:2]))

    hooks = [blocks[0].register_forward_hook(computed), blocks[1].register_forward_pre_hook(handed_on)]
    try:
        job = ForgeRepulsion(CONFIG)
        clone = unet.clone()
        assert job.patch(clone)
        sample(family, clone, text=text)
    finally:
        for hook in hooks:
            hook.remove()
    return job, seen["computed"], seen["handed_on"]


def moved_positions(before: torch.Tensor, after: torch.Tensor) -> list[int]:
    return (before != after).any(-1).any(0).nonzero().flatten().tolist()


@pytest.mark.parametrize("name", FAMILIES)
def test_a_neo_family_moves_its_valid_text_tokens_only(name: str) -> None:
    family = FAMILIES[name]
    job, computed, handed_on = observed(family, unet_of(family))
    assert job.architecture.family == name
    if family.stream is None:
        assert moved_positions(computed, handed_on[0]) == family.valid_text(TEXT)
    else:
        image_at = 1 - family.stream
        assert torch.equal(handed_on[image_at], computed[image_at])
        assert moved_positions(computed[family.stream], handed_on[family.stream]) == family.valid_text(TEXT)


def test_krea2_text_in_neos_four_dimensional_form_is_read_by_its_length() -> None:
    family = FAMILIES["Krea 2"]
    assert family.text(torch.zeros(B, TEXT, 16)).ndim == 4  # [B, 1, L, D], as this Neo tree's text engine gives it
    _, computed, handed_on = observed(family, unet_of(family))
    assert max(moved_positions(computed, handed_on[0])) == TEXT - 6  # the last prompt token, never the suffix


def test_pid_text_longer_than_the_model_keeps_is_read_at_the_models_length() -> None:
    family = FAMILIES["PiD"]
    _, computed, handed_on = observed(family, unet_of(family), text=12)
    assert moved_positions(computed[1], handed_on[1]) == list(range(8))


@pytest.mark.parametrize("name", FAMILIES)
def test_a_neo_family_off_is_bit_identical_to_no_extension(name: str) -> None:
    family = FAMILIES[name]
    plain = sample(family, unet_of(family))
    clone = unet_of(family).clone()
    assert ForgeRepulsion(RepulsionConfig(enabled=False)).patch(clone)
    assert torch.equal(sample(family, clone), plain)


def test_a_krea2_call_with_reference_latents_runs_unmodified_with_one_message_naming_the_class(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="lib_ctxrep")
    family = FAMILIES["Krea 2"]
    unet = unet_of(family)
    plain = sample(family, unet)
    job = ForgeRepulsion(CONFIG)
    clone = unet.clone()
    assert job.patch(clone)
    wrapper = clone.model_options["model_function_wrapper"]

    def with_references(apply_model, args):  # a call whose conditions carry reference latents
        return wrapper(apply_model, {**args, "c": {**args["c"], "ref_latents": [torch.zeros(1, 4, 1, 4, 4)]}})

    clone.model_options["model_function_wrapper"] = with_references
    for _ in range(2):
        out = sample(family, clone)
    assert torch.equal(out, plain)
    messages = [r.getMessage() for r in caplog.records if "could not be read" in r.getMessage()]
    assert len(messages) == 1 and "SingleStreamDiT" in messages[0] and "reference latents" in messages[0]


def test_krea2_negative_prompt_tiled_to_the_prompts_length_moves_only_its_first_copys_prompt_tokens() -> None:
    """Neo batches a 12-token prompt with a 6-token negative prompt by repeating the negative twice (each copy ends in
    its own 5 template tokens): the negative's rows move their first prompt token only, the prompt's its 7."""
    family = FAMILIES["Krea 2"]
    unet = unet_of(family)
    blocks = unet.model.diffusion_model.blocks
    seen: dict = {}

    def computed(module, args, output) -> None:
        seen.setdefault("computed", output.clone())

    def handed_on(module, args) -> None:
        seen.setdefault("handed_on", args[0].clone())

    g = torch.Generator().manual_seed(1)
    cond = [{"c_crossattn": torch.randn(1, 12, 16, generator=g).expand(B, -1, -1)}]
    uncond = [{"c_crossattn": torch.randn(1, 6, 16, generator=g).expand(B, -1, -1).repeat(1, 2, 1)}]
    x = torch.randn(B, *family.latent, generator=torch.Generator().manual_seed(0))
    hooks = [blocks[0].register_forward_hook(computed), blocks[1].register_forward_pre_hook(handed_on)]
    try:
        job = ForgeRepulsion(CONFIG)
        clone = unet.clone()
        assert job.patch(clone)
        with torch.inference_mode():
            sampling_function_inner(clone.model, x, torch.full((B,), 1.0), uncond, cond, 3.0, clone.model_options)
    finally:
        for hook in hooks:
            hook.remove()
    before, after = seen["computed"], seen["handed_on"]
    assert before.shape[0] == 2 * B  # one call: [uncond; cond] (Forge batches the higher chunk index first)
    assert moved_positions(before[:B], after[:B]) == [0]
    assert moved_positions(before[B:], after[B:]) == list(range(7))
