"""The block map, specified on the real diffusers classes it names, each built tiny (random seeded weights, offline).

Every architecture the map supports in diffusers (Flux.1, SD3, Chroma, Flux.2, Qwen-Image, Z-Image) is called the
way its pipeline calls it, with real text padding (Chroma's ``attention_mask``, Qwen-Image's
``encoder_hidden_states_mask``, Z-Image's captions of different lengths padded to multiples of 32) and, for Flux.2,
edit reference tokens after the target's image tokens. What a block hands on is observed with two forward hooks per
block: one registered before repulsion is attached sees what the block computed, one registered after sees what the
next block gets (torch runs a module's forward hooks in registration order).

The rules, one test each:

- a dual-stream block's image stream is handed on exactly as the block computed it;
- text padding is never moved, in dual-stream and single-stream blocks alike;
- a single-stream block in "text" mode moves valid text tokens only; in "all" mode also the target's image tokens,
  never padding and never an edit's reference tokens;
- Z-Image's selected layers move their caption tokens only (image tokens and caption padding never);
- removing the handle leaves the model bit-identical to a model never attached; a batch of one is left alone;
- a whole pipeline run (each with its own scheduler and CFG) ends in other latents with repulsion on, each CFG
  branch repelled within itself.

Classes that the installed diffusers lacks (Forge pins 0.31, before Chroma, Flux.2, Qwen-Image and Z-Image) skip.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from PIL import Image

diffusers = pytest.importorskip("diffusers")

from lib_ctxrep import RepulsionConfig  # noqa: E402
from lib_ctxrep.evaluation import diffusers_tiny as tiny  # noqa: E402
from lib_ctxrep.integrations.diffusers import ContextualRepulsionHandle, apply_contextual_repulsion  # noqa: E402
from tests.library_spy import library_calls  # noqa: E402

B = 4
#: Strong enough that every hooked block visibly moves its tokens; window 1: every direct call is inside it.
STRONG = RepulsionConfig(strength=0.5, window=1.0, iterations=5)
#: For whole pipeline runs: the first 30 % of the steps.
PIPELINE = RepulsionConfig(strength=0.5, window=0.3, iterations=5)
TEXT = 12  # text tokens of the direct calls (Flux.1, Chroma, Flux.2)
IMAGE = 16  # image tokens of the direct calls: a 4 x 4 grid


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on shared cores their barriers cost seconds per run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def needs(*names: str) -> None:
    """Skip the test when the installed diffusers lacks one of the classes ``names``."""
    missing = [n for n in names if getattr(diffusers, n, None) is None]
    if missing:
        pytest.skip(f"diffusers {diffusers.__version__} has no {', '.join(missing)}")


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def grid_ids(first: int, side: int, axes: int) -> torch.Tensor:
    """Position ids [side * side, axes] of a side x side grid whose first coordinate is ``first`` (0: the target
    image; non-zero: a reference image, Kontext's and Flux.2's convention); a 4th axis (Flux.2) is 0."""
    h, w = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    ids = torch.stack([torch.full_like(h, first), h, w] + [torch.zeros_like(h)] * (axes - 3), dim=-1)
    return ids.reshape(-1, axes)


def text_mask(lengths: list[int], tokens: int) -> torch.Tensor:
    """[rows, tokens]: 1 for each row's first ``lengths[row]`` tokens (real), 0 after them (padding)."""
    return (torch.arange(tokens)[None] < torch.tensor(lengths)[:, None]).long()


def padded(tokens: int, multiple: int = 32) -> int:
    return tokens + (-tokens) % multiple


# ---- the models, called the way their pipelines call them


@dataclass(frozen=True)
class Layout:
    """Where each kind of token sits in one call's single-stream sequence, per row ([rows, sequence] masks)."""

    text: torch.Tensor  # real text tokens
    padding: torch.Tensor  # text padding (and, in Z-Image, the padding that batches rows of different lengths)
    target: torch.Tensor  # the target image's tokens
    reference: torch.Tensor  # an edit's reference-image tokens


def sequence_layout(rows: int, spans: dict[str, list[tuple[int, int]]], length: int) -> Layout:
    """A Layout from per-row [start, stop) spans of each kind."""
    masks = {}
    for kind in ("text", "padding", "target", "reference"):
        mask = torch.zeros(rows, length, dtype=torch.bool)
        for row, (start, stop) in enumerate(spans.get(kind, [(0, 0)] * rows)):
            mask[row, start:stop] = True
        masks[kind] = mask
    return Layout(**masks)


@dataclass(frozen=True)
class Model:
    """One architecture: its class, a tiny instance and a call with padding (where it has any)."""

    name: str
    cls: str
    build: Callable[[], Any]
    inputs: Callable[[int], dict[str, Any]]
    #: The single-stream sequence's layout of ``inputs(batch)`` (None: no single-stream blocks).
    layout: Callable[[dict[str, Any]], Layout] | None = None
    #: Per row, which text-stream tokens are real ([rows, text]; None: no text padding).
    text_valid: Callable[[dict[str, Any]], torch.Tensor] | None = None

    def run(self, model: Any, batch: int = B) -> torch.Tensor:
        """The model's output for ``inputs(batch)``, as one tensor."""
        with torch.no_grad():
            out = model(**self.inputs(batch))[0]
        return torch.stack(out) if isinstance(out, list) else out


def flux_inputs(batch: int) -> dict[str, Any]:
    return dict(
        hidden_states=randn(batch, IMAGE, 4, seed=0),
        encoder_hidden_states=randn(batch, TEXT, 32, seed=1),
        pooled_projections=randn(batch, 32, seed=2),
        timestep=torch.ones(batch),
        img_ids=grid_ids(0, 4, 3).float(),
        txt_ids=torch.zeros(TEXT, 3),
        return_dict=False,
    )


def sd3_inputs(batch: int) -> dict[str, Any]:
    return dict(
        hidden_states=randn(batch, 4, 8, 8, seed=0),
        encoder_hidden_states=randn(batch, 10, 32, seed=1),
        pooled_projections=randn(batch, 64, seed=2),
        timestep=torch.full((batch,), 1000.0),
        return_dict=False,
    )


CHROMA_TEXT = [7, 9, 7, 10]  # real text tokens per row; the rest of the 12 is padding that attention_mask masks


def chroma_inputs(batch: int) -> dict[str, Any]:
    mask = torch.cat([text_mask(CHROMA_TEXT[:batch], TEXT), torch.ones(batch, IMAGE, dtype=torch.long)], dim=1)
    return dict(
        hidden_states=randn(batch, IMAGE, 4, seed=0),
        encoder_hidden_states=randn(batch, TEXT, 32, seed=1),
        timestep=torch.ones(batch),
        img_ids=grid_ids(0, 4, 3).float(),
        txt_ids=torch.zeros(TEXT, 3),
        attention_mask=mask.float(),  # [B, text + image], as ChromaPipeline builds it
        return_dict=False,
    )


def chroma_layout(inputs: dict[str, Any]) -> Layout:
    lengths = inputs["attention_mask"][:, :TEXT].sum(1).long().tolist()
    return sequence_layout(
        len(lengths),
        {
            "text": [(0, n) for n in lengths],
            "padding": [(n, TEXT) for n in lengths],
            "target": [(TEXT, TEXT + IMAGE)] * len(lengths),
        },
        TEXT + IMAGE,
    )


def flux2_inputs(batch: int) -> dict[str, Any]:
    """An edit call: 16 target tokens, then 16 reference tokens (time coordinate 10), as Flux2Pipeline appends them."""
    ids = torch.cat([grid_ids(0, 4, 4), grid_ids(10, 4, 4)])
    txt_ids = torch.stack([torch.zeros(TEXT), torch.zeros(TEXT), torch.zeros(TEXT), torch.arange(TEXT)], dim=-1)
    return dict(
        hidden_states=randn(batch, 2 * IMAGE, 4, seed=0),
        encoder_hidden_states=randn(batch, TEXT, 32, seed=1),
        timestep=torch.ones(batch),
        guidance=torch.full((batch,), 4.0),
        img_ids=ids[None].expand(batch, -1, -1),
        txt_ids=txt_ids.long()[None].expand(batch, -1, -1),
        return_dict=False,
    )


def flux2_layout(inputs: dict[str, Any]) -> Layout:
    rows = inputs["hidden_states"].shape[0]
    return sequence_layout(
        rows,
        {
            "text": [(0, TEXT)] * rows,
            "target": [(TEXT, TEXT + IMAGE)] * rows,
            "reference": [(TEXT + IMAGE, TEXT + 2 * IMAGE)] * rows,
        },
        TEXT + 2 * IMAGE,
    )


QWEN_TEXT = [6, 10, 8, 6]  # real text tokens per row of 10; encoder_hidden_states_mask marks the rest as padding


def qwen_inputs(batch: int) -> dict[str, Any]:
    return dict(
        hidden_states=randn(batch, IMAGE, 16, seed=0),
        encoder_hidden_states=randn(batch, 10, 16, seed=1),
        encoder_hidden_states_mask=text_mask(QWEN_TEXT[:batch], 10),
        timestep=torch.ones(batch),
        img_shapes=[[(1, 4, 4)]] * batch,
        return_dict=False,
    )


Z_CAPTIONS = [10, 40, 10, 40]  # caption tokens per row: padded to 32 and 64 with cap_pad_token, then batched


def z_image_inputs(batch: int) -> dict[str, Any]:
    return dict(
        x=[randn(16, 1, 8, 8, seed=row) for row in range(batch)],  # 4 x 4 = 16 image tokens, padded to 32
        t=torch.zeros(batch),  # ZImagePipeline passes 1 - sigma
        cap_feats=[randn(n, 16, seed=10 + row) for row, n in enumerate(Z_CAPTIONS[:batch])],
        return_dict=False,
    )


def z_image_layout_of(images: list[torch.Tensor], captions: list[torch.Tensor]) -> Layout:
    """Z-Image's unified rows: [image tokens (padded to 32); caption (padded to 32 with cap_pad_token)], then
    zero-padded to the longest row."""
    image = padded(images[0].shape[-3] * images[0].shape[-2] * images[0].shape[-1] // 4)
    lengths = [len(c) for c in captions]
    length = image + max(padded(n) for n in lengths)
    return sequence_layout(
        len(lengths),
        {
            "text": [(image, image + n) for n in lengths],
            "padding": [(image + n, length) for n in lengths],
            "target": [(0, image)] * len(lengths),
        },
        length,
    )


MODELS = {
    "Flux.1": Model("Flux.1", "FluxTransformer2DModel", lambda: tiny.tiny_flux_transformer(layers=2), flux_inputs),
    "SD3": Model("SD3", "SD3Transformer2DModel", lambda: tiny.tiny_sd3_transformer(layers=3), sd3_inputs),
    "Chroma": Model(
        "Chroma",
        "ChromaTransformer2DModel",
        tiny.tiny_chroma_transformer,
        chroma_inputs,
        chroma_layout,
        lambda inputs: inputs["attention_mask"][:, :TEXT] != 0,
    ),
    "Flux.2": Model("Flux.2", "Flux2Transformer2DModel", tiny.tiny_flux2_transformer, flux2_inputs, flux2_layout),
    "Qwen-Image": Model(
        "Qwen-Image",
        "QwenImageTransformer2DModel",
        tiny.tiny_qwen_image_transformer,
        qwen_inputs,
        text_valid=lambda inputs: inputs["encoder_hidden_states_mask"] != 0,
    ),
    "Z-Image": Model(
        "Z-Image",
        "ZImageTransformer2DModel",
        tiny.tiny_z_image_transformer,
        z_image_inputs,
        lambda inputs: z_image_layout_of(inputs["x"], inputs["cap_feats"]),
    ),
}
DUAL = ["Flux.1", "SD3", "Chroma", "Flux.2", "Qwen-Image"]
PADDED_TEXT = ["Chroma", "Qwen-Image"]
SINGLE = ["Chroma", "Flux.2", "Z-Image"]


def built(name: str) -> tuple[Model, Any]:
    model = MODELS[name]
    needs(model.cls)
    return model, model.build()


def single_stream_blocks(transformer: Any) -> Any:
    return getattr(transformer, "single_transformer_blocks", None) or transformer.layers


# ---- observing what each block computed and what it hands on


def _copy(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output.detach().clone()
    if isinstance(output, tuple):
        return tuple(_copy(o) for o in output)
    return output


@dataclass
class Seen:
    """One block's outputs, one entry per call: as the block computed them and as the next block got them."""

    computed: list
    handed_on: list


@contextlib.contextmanager
def watching(blocks: Any, attach: Callable[[], ContextualRepulsionHandle]) -> Iterator[list[Seen]]:
    """Hooks on ``blocks`` around repulsion: registered before ``attach()`` (what each block computed) and after
    (what the next block gets); all of them, repulsion's included, are removed on exit."""
    seen = [Seen([], []) for _ in blocks]
    hooks = [
        b.register_forward_hook(lambda m, a, out, s=s: s.computed.append(_copy(out)))
        for b, s in zip(blocks, seen, strict=True)
    ]
    handle = attach()
    hooks += [
        b.register_forward_hook(lambda m, a, out, s=s: s.handed_on.append(_copy(out)))
        for b, s in zip(blocks, seen, strict=True)
    ]
    try:
        yield seen
    finally:
        handle.remove()
        for hook in hooks:
            hook.remove()


def moved(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """[rows, tokens]: which tokens of which rows changed."""
    return (before != after).any(dim=-1)


def streams(model: Model, output: tuple) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(text, image) streams of a dual-stream block's output tuple (every diffusers model here: text first)."""
    assert isinstance(output, tuple) and len(output) == 2, f"{model.name}: a dual block returns (text, image)"
    return output[0], output[1]


# ---- dual-stream blocks


@pytest.mark.parametrize("name", DUAL)
def test_every_hooked_dual_stream_block_hands_on_its_image_stream_exactly_as_computed(name: str) -> None:
    model, transformer = built(name)
    config = RepulsionConfig(strength=0.5, window=1.0, iterations=5, blocks="all", single_blocks="off")
    with watching(transformer.transformer_blocks, lambda: apply_contextual_repulsion(transformer, config)) as seen:
        model.run(transformer)
    text_moved = []
    for block in seen:
        (computed,), (handed_on,) = block.computed, block.handed_on
        (text, image), (text_after, image_after) = streams(model, computed), streams(model, handed_on)
        assert torch.equal(image_after, image)
        text_moved.append(text is not None and not torch.equal(text_after, text))
    # every block with a text stream was repelled (SD3's last block has none and is left alone)
    assert text_moved == [True] * (len(seen) - 1) + [name != "SD3"]


@pytest.mark.parametrize("name", PADDED_TEXT)
def test_padded_text_tokens_of_a_dual_stream_block_never_move(name: str) -> None:
    model, transformer = built(name)
    config = RepulsionConfig(strength=0.5, window=1.0, iterations=5, single_blocks="off")
    inputs = model.inputs(B)
    valid = model.text_valid(inputs)
    assert (~valid).any(), "the call has text padding"
    with watching(transformer.transformer_blocks, lambda: apply_contextual_repulsion(transformer, config)) as seen:
        with torch.no_grad():
            transformer(**inputs)
    for block in seen:
        text_moved = moved(streams(model, block.computed[0])[0], streams(model, block.handed_on[0])[0])
        assert not (text_moved & ~valid).any()
        assert (text_moved & valid).any()


# ---- single-stream blocks


def single_stream_moves(name: str, config: RepulsionConfig) -> tuple[list[torch.Tensor], Layout]:
    """Per single-stream block, which tokens of which rows moved in one call; and the call's layout."""
    model, transformer = built(name)
    inputs = model.inputs(B)
    blocks = single_stream_blocks(transformer)
    with watching(blocks, lambda: apply_contextual_repulsion(transformer, config)) as seen:
        with torch.no_grad():
            transformer(**inputs)
    return [moved(block.computed[0], block.handed_on[0]) for block in seen], model.layout(inputs)


@pytest.mark.parametrize("name", SINGLE)
def test_a_single_stream_block_in_text_mode_moves_valid_text_tokens_only(name: str) -> None:
    layout_moves, layout = single_stream_moves(name, RepulsionConfig(strength=0.5, window=1.0, single_blocks="text"))
    assert layout.padding.any() or name == "Flux.2", "the call has text padding"
    for block_moved in layout_moves:
        assert not (block_moved & ~layout.text).any()  # no image token, no padding
        assert (block_moved & layout.text).any()


@pytest.mark.parametrize("name", ["Chroma", "Flux.2"])
def test_a_single_stream_block_in_all_mode_moves_text_and_target_tokens_never_padding_or_references(name: str) -> None:
    layout_moves, layout = single_stream_moves(name, RepulsionConfig(strength=0.5, window=1.0, single_blocks="all"))
    for block_moved in layout_moves:
        assert not (block_moved & (layout.padding | layout.reference)).any()
        assert (block_moved & layout.text).any() and (block_moved & layout.target).any()


@pytest.mark.parametrize("single_blocks", ["text", "all"])
def test_z_image_moves_the_caption_of_the_selected_layers_only(single_blocks: str) -> None:
    config = RepulsionConfig(strength=0.5, window=1.0, blocks=(1, 2), single_blocks=single_blocks)
    (layer0, layer1), layout = single_stream_moves("Z-Image", config)
    assert not layer0.any()  # not selected: handed on exactly as computed
    assert layer1.any() and not (layer1 & ~layout.text).any()  # caption only: no image token, no caption padding


def test_z_image_layers_without_padding_reach_the_last_caption_token() -> None:
    """With captions of a multiple of 32 tokens (no caption padding) the whole caption moves."""
    needs("ZImageTransformer2DModel")
    transformer = tiny.tiny_z_image_transformer()
    inputs = {**z_image_inputs(B), "cap_feats": [randn(32, 16, seed=10 + row) for row in range(B)]}
    layout = z_image_layout_of(inputs["x"], inputs["cap_feats"])
    with watching(transformer.layers, lambda: apply_contextual_repulsion(transformer, STRONG)) as seen:
        with torch.no_grad():
            transformer(**inputs)
    for block in seen:
        assert torch.equal(moved(block.computed[0], block.handed_on[0]), layout.text)


# ---- attaching, removing, batch size one


def removal_is_bit_identical(run: Callable[[Any], torch.Tensor], transformer: Any) -> None:
    """With repulsion the output changes; after ``remove()`` the output is the plain one and a call reaches none of
    the library's code (no hook of ours is left on the model)."""
    plain = run(transformer)
    handle = apply_contextual_repulsion(transformer, STRONG)
    assert not torch.equal(run(transformer), plain)
    handle.remove()
    with library_calls() as calls:
        assert torch.equal(run(transformer), plain)
    assert calls == []


def a_batch_of_one_is_unchanged(run: Callable[..., torch.Tensor], transformer: Any) -> None:
    plain = run(transformer, batch=1)
    with apply_contextual_repulsion(transformer, STRONG) as handle:
        assert torch.equal(run(transformer, batch=1), plain)
    assert not handle.attached


@pytest.mark.parametrize("name", list(MODELS))
def test_removing_the_handle_is_bit_identical_to_never_attaching(name: str) -> None:
    model, transformer = built(name)
    removal_is_bit_identical(model.run, transformer)


@pytest.mark.parametrize("name", list(MODELS))
def test_a_batch_of_one_is_left_exactly_as_computed(name: str) -> None:
    model, transformer = built(name)
    a_batch_of_one_is_unchanged(model.run, transformer)


# ---- whole pipeline runs


def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def embeds(tokens: int, dim: int, seed: int, batch: int = B) -> torch.Tensor:
    """One prompt's embeddings [batch, tokens, dim], repeated over the batch."""
    return randn(1, tokens, dim, seed=seed).expand(batch, -1, -1).contiguous()


def run_chroma(pipe: Any) -> torch.Tensor:
    """CFG on: Chroma calls the transformer once for the prompt, once for the negative prompt, per step."""
    mask = text_mask([8] * B, TEXT).float()  # 7 real tokens + the one pad token Chroma leaves unmasked
    negative_mask = text_mask([3] * B, TEXT).float()
    return pipe(
        prompt_embeds=embeds(TEXT, 32, 1), prompt_attention_mask=mask, negative_prompt_embeds=embeds(TEXT, 32, 2),
        negative_prompt_attention_mask=negative_mask, guidance_scale=3.0, height=16, width=16,
        num_inference_steps=4, output_type="latent", generator=generator(),
    ).images  # fmt: skip


def run_flux2(pipe: Any, edit: bool = False) -> torch.Tensor:
    """Embedded guidance (no CFG call); ``edit``: a 64 x 64 input image, whose 64 reference tokens are appended."""
    image = Image.new("RGB", (64, 64), (120, 60, 30)) if edit else None
    return pipe(
        prompt_embeds=embeds(TEXT, 32, 1), image=image, guidance_scale=4.0, height=32, width=32,
        num_inference_steps=4, output_type="latent", generator=generator(),
    ).images  # fmt: skip


def run_qwen(pipe: Any) -> torch.Tensor:
    """True CFG: negative embeddings and true_cfg_scale > 1 make a second transformer call per step."""
    return pipe(
        prompt_embeds=embeds(10, 16, 1), prompt_embeds_mask=text_mask([7] * B, 10),
        negative_prompt_embeds=embeds(10, 16, 2), negative_prompt_embeds_mask=text_mask([4] * B, 10),
        true_cfg_scale=4.0, height=32, width=32, num_inference_steps=4, output_type="latent", generator=generator(),
    ).images  # fmt: skip


def run_qwen_edit(pipe: Any) -> torch.Tensor:
    """The Edit pipeline resizes its input to about 1024 x 1024: with the tiny VAE's 32 x downsampling, 256
    reference tokens after the 16 target tokens of a 256 x 256 output, in the image stream."""
    return pipe(
        image=Image.new("RGB", (64, 64), (120, 60, 30)), prompt_embeds=embeds(10, 16, 1),
        prompt_embeds_mask=text_mask([7] * B, 10), true_cfg_scale=1.0, height=256, width=256,
        num_inference_steps=3, output_type="latent", generator=generator(),
    ).images  # fmt: skip


def run_z_image(pipe: Any, **kwargs: Any) -> torch.Tensor:
    """CFG on (guidance_scale > 0): one call per step over [prompts; negatives], whose captions have 10 and 40 tokens
    (padded to 32 and 64)."""
    return pipe(
        prompt_embeds=[randn(10, 16, seed=1)] * B, negative_prompt_embeds=[randn(40, 16, seed=2)] * B,
        guidance_scale=3.0, height=8, width=8, num_inference_steps=4, output_type="latent", generator=generator(),
        **kwargs,
    ).images  # fmt: skip


@dataclass(frozen=True)
class Pipeline:
    """A tiny pipeline, how it is run, and the (branch, rows) of the repulsions its run must record."""

    cls: str
    build: Callable[[], Any]
    run: Callable[[Any], torch.Tensor]
    branches: set[tuple[str, int]]


PIPELINES = {
    "Chroma, CFG": Pipeline("ChromaPipeline", tiny.tiny_chroma_pipeline, run_chroma, {("cond", B), ("uncond", B)}),
    "Flux.2": Pipeline("Flux2Pipeline", tiny.tiny_flux2_pipeline, run_flux2, {("cond", B)}),
    "Flux.2 edit": Pipeline(
        "Flux2Pipeline", tiny.tiny_flux2_pipeline, lambda pipe: run_flux2(pipe, edit=True), {("cond", B)}
    ),
    "Qwen-Image, true CFG": Pipeline(
        "QwenImagePipeline", tiny.tiny_qwen_image_pipeline, run_qwen, {("cond", B), ("uncond", B)}
    ),
    "Qwen-Image Edit": Pipeline(
        "QwenImageEditPipeline", lambda: tiny.tiny_qwen_image_pipeline(edit=True), run_qwen_edit, {("cond", B)}
    ),
    "Z-Image, CFG": Pipeline("ZImagePipeline", tiny.tiny_z_image_pipeline, run_z_image, {("cond", B), ("uncond", B)}),
}


@pytest.mark.parametrize("name", list(PIPELINES))
def test_a_pipeline_run_ends_in_other_latents_with_repulsion_on(name: str) -> None:
    case = PIPELINES[name]
    needs(case.cls)
    pipe = case.build()
    plain = case.run(pipe)
    with apply_contextual_repulsion(pipe, PIPELINE, record_stats=True) as handle:
        repelled = case.run(pipe)
    assert repelled.shape == plain.shape and torch.isfinite(repelled).all()
    assert not torch.allclose(repelled, plain)
    # each CFG branch is repelled within itself: the negative prompt's rows (its own call, or Z-Image's second half
    # of the batch) as a group of their own
    assert {(s.branch, s.rows) for s in handle.stats} == case.branches


def test_the_qwen_image_edit_image_stream_with_its_reference_latents_is_never_touched() -> None:
    needs("QwenImageEditPipeline")
    pipe = tiny.tiny_qwen_image_pipeline(edit=True)
    images = []
    pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: images.append(kw["hidden_states"].shape[1]), with_kwargs=True
    )
    blocks = pipe.transformer.transformer_blocks
    with watching(blocks, lambda: apply_contextual_repulsion(pipe, PIPELINE)) as seen:
        run_qwen_edit(pipe)
    assert images[0] == 16 + 256  # the target's tokens, then the reference latents
    model = MODELS["Qwen-Image"]
    text_moved = False
    for block in seen:
        for computed, handed_on in zip(block.computed, block.handed_on, strict=True):
            (text, image), (text_after, image_after) = streams(model, computed), streams(model, handed_on)
            assert torch.equal(image_after, image)
            text_moved |= not torch.equal(text_after, text)
    assert text_moved


@pytest.mark.parametrize("single_blocks", ["text", "all"])
def test_flux2_edit_reference_tokens_never_move(single_blocks: str) -> None:
    needs("Flux2Pipeline")
    pipe = tiny.tiny_flux2_pipeline()
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda m, a, kw: calls.append(kw), with_kwargs=True)
    config = RepulsionConfig(strength=0.5, window=0.3, iterations=5, single_blocks=single_blocks)
    with watching(
        pipe.transformer.single_transformer_blocks, lambda: apply_contextual_repulsion(pipe, config)
    ) as seen:
        run_flux2(pipe, edit=True)
    ids, text = calls[0]["img_ids"], calls[0]["encoder_hidden_states"].shape[1]
    reference = torch.cat([torch.zeros(text, dtype=torch.bool), ids[0, :, 0] != 0])
    target = torch.cat([torch.zeros(text, dtype=torch.bool), ids[0, :, 0] == 0])
    assert reference.sum() == 64 and target.sum() == 16
    image_moved = False
    for block in seen:
        for computed, handed_on in zip(block.computed, block.handed_on, strict=True):
            block_moved = moved(computed, handed_on)
            assert not block_moved[:, reference].any()
            image_moved |= bool(block_moved[:, target].any())
    assert image_moved == (single_blocks == "all")  # the target's image tokens move in "all" mode only


def test_z_image_pipeline_repels_prompt_and_negative_captions_each_within_its_own_length() -> None:
    needs("ZImagePipeline")
    pipe = tiny.tiny_z_image_pipeline()
    layouts = []
    pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: layouts.append(z_image_layout_of(a[0], a[2])), with_kwargs=True
    )
    with watching(pipe.transformer.layers, lambda: apply_contextual_repulsion(pipe, PIPELINE)) as seen:
        run_z_image(pipe)
    prompt_moved = negative_moved = False
    for block in seen:
        for layout, computed, handed_on in zip(layouts, block.computed, block.handed_on, strict=True):
            block_moved = moved(computed, handed_on)
            assert not (block_moved & ~layout.text).any()
            prompt_moved |= bool(block_moved[:B].any())
            negative_moved |= bool(block_moved[B:].any())
    assert layouts[0].text.shape[0] == 2 * B and prompt_moved and negative_moved


def test_z_image_steps_past_cfg_truncation_are_repelled_as_one_prompt_batch() -> None:
    needs("ZImagePipeline")
    pipe = tiny.tiny_z_image_pipeline()
    config = RepulsionConfig(strength=0.5, window=0.5, iterations=3)
    with apply_contextual_repulsion(pipe, config, record_stats=True) as handle:
        run_z_image(pipe, cfg_truncation=0.1)  # CFG at the first step only (t = 1 - sigma > 0.1 afterwards)
    first = {(s.branch, s.rows) for s in handle.stats if s.progress == 0.0}
    later = {(s.branch, s.rows) for s in handle.stats if s.progress > 0.0}
    assert first == {("cond", B), ("uncond", B)}
    assert later == {("cond", B)}


def test_a_z_image_call_whose_token_layout_cannot_be_read_runs_unmodified_with_one_message(caplog) -> None:
    needs("ZImageTransformer2DModel")
    caplog.set_level("WARNING", logger="lib_ctxrep")
    transformer = tiny.tiny_z_image_transformer()
    inputs = z_image_inputs(B)
    inputs["x"][1] = randn(16, 1, 16, 16, seed=99)  # another size (64 tokens, not 32): its caption starts later
    with torch.no_grad():
        plain = transformer(**inputs)[0]
        with apply_contextual_repulsion(transformer, STRONG):
            out = transformer(**inputs)[0]
            transformer(**inputs)
    assert all(torch.equal(a, b) for a, b in zip(out, plain, strict=True))
    messages = [r.getMessage() for r in caplog.records if "could not be read" in r.getMessage()]
    assert len(messages) == 1 and "ZImageTransformer2DModel" in messages[0]
