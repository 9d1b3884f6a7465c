"""The block map's further diffusers families, specified on their real classes built tiny (random seeded weights,
offline), in the style of tests/test_blockmap_models.py.

HiDream, Lumina 2, Krea 2, Flux 3, HunyuanImage 2.1, Ovis-Image, LongCat-Image, Bria 3, AuraFlow, CogView4,
CogView3-Plus, Ernie-Image and Ideogram 4 are each called the way their pipelines call them, with their own kind of
text padding: HiDream's per-block Llama tokens (discarded after each block), Lumina 2's padding dropped per row, Krea
2's padding between the prompt and the chat-template suffix, HunyuanImage's masked MLLM and byT5 tokens, zero rows
(Ovis-Image, Bria 3, AuraFlow), Ernie-Image's masked padding after each row's text in sequence-first blocks, Ideogram
4's left padding before each row's text, and with edit references (Flux 3's image_cond, LongCat-Image Edit's
modality-2 tokens). What a block hands
on is observed with two forward hooks per block, registered before and after repulsion is attached.

The rules, one test each:

- every hooked dual-stream block hands on its image stream exactly as computed and moves valid text only;
- a single-stream block in "text" mode moves valid text tokens only (never image, reference or padding tokens);
- in "all" mode also the target's image tokens, never padding (HiDream's non-square image padding), never references;
- removing the handle is bit-identical to never attaching; a batch of one is left alone;
- a whole pipeline run (with its own scheduler and CFG rows) ends in other latents, each CFG branch repelled within
  itself; CogView4's unshifted timesteps are placed by the scheduler's timesteps.

Classes that the installed diffusers lacks (Forge pins 0.31, which has AuraFlow and CogView3-Plus only) skip.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from lib_ctxrep import RepulsionConfig  # noqa: E402
from lib_ctxrep.blockmap import target_span  # noqa: E402
from lib_ctxrep.evaluation import diffusers_tiny as tiny  # noqa: E402
from lib_ctxrep.integrations.diffusers import apply_contextual_repulsion  # noqa: E402
from tests.test_blockmap_models import (  # noqa: E402
    PIPELINE,
    STRONG,
    a_batch_of_one_is_unchanged,
    generator,
    grid_ids,
    moved,
    needs,
    one_thread,  # noqa: F401  (the autouse fixture: one torch thread)
    randn,
    removal_is_bit_identical,
    text_mask,
    watching,
)

B = 4
IMAGE = 16  # image tokens of the direct calls: a 4 x 4 grid


def zero_padded(lengths: list[int], tokens: int, dim: int, seed: int) -> torch.Tensor:
    """Text embeddings [rows, tokens, dim] whose rows after each row's ``lengths[row]`` tokens are zero (the
    pipeline's padding)."""
    return randn(len(lengths), tokens, dim, seed=seed) * text_mask(lengths, tokens)[..., None]


def spans(rows: int, length: int, per_row: Callable[[int], list[tuple[int, int]]]) -> torch.Tensor:
    """[rows, length] bool: True inside each row's spans."""
    mask = torch.zeros(rows, length, dtype=torch.bool)
    for row in range(rows):
        for start, stop in per_row(row):
            mask[row, start:stop] = True
    return mask


@dataclass(frozen=True)
class Model:
    """One architecture: its class, a tiny instance, a call as its pipeline makes it, and where its tokens are."""

    name: str
    cls: str
    build: Callable[[], Any]
    inputs: Callable[[int], dict[str, Any]]
    #: The dual-stream block list and the text stream's index in a dual block's output (None: no dual blocks).
    dual: str | None = None
    dual_text_at: int = 0
    #: The single-stream block list (None: no single-stream blocks).
    single: str | None = None
    #: Which text-stream positions may move ([rows, text]); for every block output with a text stream.
    text_valid: Callable[[dict[str, Any]], torch.Tensor] | None = None
    #: Single-stream blocks returning one sequence: which positions are valid text ([rows, sequence]).
    sequence_text: Callable[[dict[str, Any]], torch.Tensor] | None = None
    #: ... and which are the target's image tokens (moved in "all" mode only).
    sequence_target: Callable[[dict[str, Any]], torch.Tensor] | None = None
    #: Single-stream blocks returning (text, image) tuples: the text's index.
    single_text_at: int | None = None

    def run(self, model: Any, batch: int = B) -> torch.Tensor:
        with torch.no_grad():
            out = model(**self.inputs(batch))[0]
        return torch.stack(out) if isinstance(out, list) else out


# ---- HiDream: dual (image, text); single [image (padded to max_seq when not square); T5; Llama; block's Llama]

HIDREAM_T5, HIDREAM_LLAMA = 6, 5


def hidream_inputs(batch: int, height: int = 8, width: int = 8) -> dict[str, Any]:
    return dict(
        hidden_states=randn(batch, 4, height, width, seed=0),
        timesteps=torch.full((batch,), 1000.0),
        encoder_hidden_states_t5=randn(batch, HIDREAM_T5, 16, seed=1),
        encoder_hidden_states_llama3=randn(4, batch, HIDREAM_LLAMA, 16, seed=2),  # one Llama layer per block
        pooled_embeds=randn(batch, 32, seed=3),
        return_dict=False,
    )


def hidream_text_valid(inputs: dict[str, Any]) -> torch.Tensor:
    """T5 and the last Llama layer: the block's own Llama tokens after them are discarded after the block."""
    rows, kept = inputs["hidden_states"].shape[0], HIDREAM_T5 + HIDREAM_LLAMA
    return spans(rows, kept + HIDREAM_LLAMA, lambda r: [(0, kept)])


def hidream_image(inputs: dict[str, Any]) -> tuple[int, int]:
    """(image tokens in the sequence, the target's): a non-square latent pads to max_seq = 16 tokens."""
    _, _, h, w = inputs["hidden_states"].shape
    return (h // 2) * (w // 2) if h == w else 16, (h // 2) * (w // 2)


def hidream_sequence_text(inputs: dict[str, Any]) -> torch.Tensor:
    image, _ = hidream_image(inputs)
    return torch.cat(
        [torch.zeros(inputs["hidden_states"].shape[0], image, dtype=torch.bool), hidream_text_valid(inputs)], 1
    )


def hidream_sequence_target(inputs: dict[str, Any]) -> torch.Tensor:
    image, target = hidream_image(inputs)
    rows = inputs["hidden_states"].shape[0]
    return spans(rows, image + HIDREAM_T5 + 2 * HIDREAM_LLAMA, lambda r: [(0, target)])


# ---- Lumina 2: one sequence per row [real caption tokens; image; zeros]

LUMINA_CAPTION = [6, 10, 8, 6]


def lumina2_inputs(batch: int) -> dict[str, Any]:
    return dict(
        hidden_states=randn(batch, 4, 8, 8, seed=0),
        timestep=torch.zeros(batch),  # Lumina2Pipeline passes 1 - sigma
        encoder_hidden_states=randn(batch, 10, 16, seed=1),
        encoder_attention_mask=text_mask(LUMINA_CAPTION[:batch], 10).bool(),
        return_dict=False,
    )


def lumina2_sequence_text(inputs: dict[str, Any]) -> torch.Tensor:
    lengths = inputs["encoder_attention_mask"].sum(1).tolist()
    return spans(len(lengths), max(lengths) + IMAGE, lambda r: [(0, lengths[r])])


# ---- Krea 2: one sequence [prompt | padding | 5 template suffix tokens; image]

KREA_TEXT, KREA_SUFFIX = 12, 5
KREA_PROMPT = [4, 6, 5, 7]  # prompt tokens per row; the suffix sits at 7..11 after the padding


def krea2_mask(prompts: list[int]) -> torch.Tensor:
    prompt_part = text_mask(prompts, KREA_TEXT - KREA_SUFFIX)
    return torch.cat([prompt_part, torch.ones(len(prompts), KREA_SUFFIX, dtype=torch.long)], 1).bool()


def krea2_inputs(batch: int, prompts: list[int] | None = None) -> dict[str, Any]:
    h, w = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    image_ids = torch.stack([torch.zeros_like(h), h, w], -1).reshape(-1, 3)
    return dict(
        hidden_states=randn(batch, IMAGE, 16, seed=0),
        encoder_hidden_states=randn(batch, KREA_TEXT, 2, 16, seed=1),
        timestep=torch.ones(batch),
        position_ids=torch.cat([torch.zeros(KREA_TEXT, 3, dtype=torch.long), image_ids]),
        encoder_attention_mask=krea2_mask((prompts or KREA_PROMPT)[:batch]),
        return_dict=False,
    )


def krea2_sequence_text(inputs: dict[str, Any]) -> torch.Tensor:
    mask = inputs["encoder_attention_mask"]
    prompts = [int(m[: KREA_TEXT - KREA_SUFFIX].sum()) for m in mask]
    return spans(len(prompts), KREA_TEXT + IMAGE, lambda r: [(0, prompts[r])])


# ---- Flux 3: joint blocks returning (text, [image; references])


def flux3_inputs(batch: int) -> dict[str, Any]:
    return dict(
        hidden_states=randn(batch, IMAGE, 4, seed=0),
        encoder_hidden_states=randn(batch, 12, 32, seed=1),
        timestep=torch.ones(batch),
        img_ids=grid_ids(0, 4, 4),
        txt_ids=torch.stack([torch.zeros(12), torch.zeros(12), torch.zeros(12), torch.arange(12)], -1).long(),
        image_cond_hidden_states=randn(batch, IMAGE, 4, seed=2),
        image_cond_ids=grid_ids(10, 4, 4),
        return_dict=False,
    )


# ---- HunyuanImage 2.1: (image, text) tuples in both lists; valid byT5 and MLLM tokens moved first

HUNYUAN_MLLM, HUNYUAN_BYT5 = [6, 10, 8, 6], [2, 4, 3, 2]


def hunyuan_inputs(batch: int) -> dict[str, Any]:
    return dict(
        hidden_states=randn(batch, 4, 4, 4, seed=0),
        timestep=torch.full((batch,), 1000.0),
        encoder_hidden_states=randn(batch, 10, 16, seed=1),
        encoder_attention_mask=text_mask(HUNYUAN_MLLM[:batch], 10),
        encoder_hidden_states_2=randn(batch, 4, 8, seed=2),
        encoder_attention_mask_2=text_mask(HUNYUAN_BYT5[:batch], 4),
        return_dict=False,
    )


def hunyuan_text_valid(inputs: dict[str, Any]) -> torch.Tensor:
    real = inputs["encoder_attention_mask"].sum(1) + inputs["encoder_attention_mask_2"].sum(1)
    return spans(len(real), 14, lambda r: [(0, int(real[r]))])


# ---- Flux-like models (Ovis-Image, LongCat-Image, Bria 3): (text, image) tuples in both lists

FLUX_LIKE_TEXT = [7, 9, 7, 10]  # real tokens of 12; the pipelines of Ovis-Image and Bria 3 zero the rest


def flux_like_inputs(batch: int, zero: bool, first: int = 0, references: bool = False) -> dict[str, Any]:
    ids = torch.cat([grid_ids(first, 4, 3)] + ([grid_ids(2, 4, 3)] if references else [])).float()
    text = zero_padded(FLUX_LIKE_TEXT[:batch], 12, 32, 1) if zero else randn(batch, 12, 32, seed=1)
    return dict(
        hidden_states=randn(batch, ids.shape[0], 4, seed=0),
        encoder_hidden_states=text,
        timestep=torch.ones(batch),
        img_ids=ids,
        txt_ids=torch.zeros(12, 3),
        return_dict=False,
    )


def zero_rows_valid(inputs: dict[str, Any]) -> torch.Tensor:
    return (inputs["encoder_hidden_states"] != 0).any(-1)


def all_text_valid(inputs: dict[str, Any]) -> torch.Tensor:
    text = inputs["encoder_hidden_states"]
    return torch.ones(text.shape[0], text.shape[1], dtype=torch.bool)


def bria_inputs(batch: int) -> dict[str, Any]:
    return {**flux_like_inputs(batch, zero=True), "timestep": torch.full((batch,), 1000.0)}


# ---- AuraFlow: text stream [8 registers; T5 (zeroed padding)]; single [text; image]

AURA_TEXT = [6, 10, 8, 6]


def auraflow_inputs(batch: int) -> dict[str, Any]:
    return dict(
        hidden_states=randn(batch, 4, 8, 8, seed=0),
        encoder_hidden_states=zero_padded(AURA_TEXT[:batch], 10, 32, 1),
        timestep=torch.ones(batch),
        return_dict=False,
    )


def auraflow_text_valid(inputs: dict[str, Any]) -> torch.Tensor:
    real = zero_rows_valid(inputs)
    return torch.cat([torch.ones(real.shape[0], 8, dtype=torch.bool), real], 1)


def auraflow_sequence_text(inputs: dict[str, Any]) -> torch.Tensor:
    return torch.cat(
        [auraflow_text_valid(inputs), torch.zeros(inputs["hidden_states"].shape[0], IMAGE, dtype=torch.bool)], 1
    )


# ---- CogView4 and CogView3-Plus: dual (image, text) only


def cogview_inputs(batch: int) -> dict[str, Any]:
    return dict(
        hidden_states=randn(batch, 4, 8, 8, seed=0),
        encoder_hidden_states=randn(batch, 10, 32, seed=1),
        timestep=torch.full((batch,), 999.0),
        original_size=torch.full((batch, 2), 8.0),
        target_size=torch.full((batch, 2), 8.0),
        crop_coords=torch.zeros(batch, 2),
        return_dict=False,
    )


# ---- Ernie-Image: sequence-first blocks [image; text (zero-padded after each row's text_lens)]

ERNIE_TEXT, ERNIE_TOKENS = [3, 6, 4, 6], 6


def ernie_inputs(batch: int) -> dict[str, Any]:
    lengths = ERNIE_TEXT[:batch]
    return dict(
        hidden_states=randn(batch, 8, 4, 4, seed=0),
        timestep=torch.full((batch,), 900.0),  # 1000 sigma
        text_bth=zero_padded(lengths, ERNIE_TOKENS, 24, 1),
        text_lens=torch.tensor(lengths),
        return_dict=False,
    )


def ernie_sequence_text(inputs: dict[str, Any]) -> torch.Tensor:
    """[tokens, rows] (the blocks are sequence-first): each row's real text after the image."""
    lengths = inputs["text_lens"].tolist()
    return spans(len(lengths), IMAGE + ERNIE_TOKENS, lambda r: [(IMAGE, IMAGE + lengths[r])]).T


# ---- Ideogram 4: one packed row per sample [left padding; text; image], indicator 3 = text, 2 = image

IDEOGRAM_TEXT, IDEOGRAM_MAX = [2, 4, 3, 4], 6


def ideogram_layout(lengths: list[int], grid: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from diffusers.pipelines.ideogram4.pipeline_ideogram4 import Ideogram4Pipeline

    return Ideogram4Pipeline._prepare_ids(lengths, grid, grid, IDEOGRAM_MAX, torch.device("cpu"))


def ideogram4_inputs(batch: int) -> dict[str, Any]:
    position_ids, segment_ids, indicator = ideogram_layout(IDEOGRAM_TEXT[:batch])
    return dict(
        hidden_states=torch.cat([torch.zeros(batch, IDEOGRAM_MAX, 8), randn(batch, IMAGE, 8, seed=0)], 1),
        timestep=torch.full((batch,), 0.1),  # 1 - sigma
        encoder_hidden_states=randn(batch, IDEOGRAM_MAX + IMAGE, 24, seed=1) * (indicator == 3)[..., None],
        position_ids=position_ids,
        segment_ids=segment_ids,
        indicator=indicator,
        return_dict=False,
    )


def ideogram4_sequence_text(inputs: dict[str, Any]) -> torch.Tensor:
    return inputs["indicator"] == 3


MODELS = {
    "HiDream": Model(
        "HiDream", "HiDreamImageTransformer2DModel", tiny.tiny_hidream_transformer, hidream_inputs,
        dual="double_stream_blocks", dual_text_at=1, single="single_stream_blocks", text_valid=hidream_text_valid,
        sequence_text=hidream_sequence_text, sequence_target=hidream_sequence_target,
    ),
    "Lumina 2": Model(
        "Lumina 2", "Lumina2Transformer2DModel", tiny.tiny_lumina2_transformer, lumina2_inputs, single="layers",
        sequence_text=lumina2_sequence_text,
    ),
    "Krea 2": Model(
        "Krea 2", "Krea2Transformer2DModel", tiny.tiny_krea2_transformer, krea2_inputs, single="transformer_blocks",
        sequence_text=krea2_sequence_text,
    ),
    "Flux 3": Model(
        "Flux 3", "Flux3Transformer2DModel", tiny.tiny_flux3_transformer, flux3_inputs,
        single="single_transformer_blocks", text_valid=all_text_valid, single_text_at=0,
    ),
    "HunyuanImage 2.1": Model(
        "HunyuanImage 2.1", "HunyuanImageTransformer2DModel", tiny.tiny_hunyuan_image_transformer, hunyuan_inputs,
        dual="transformer_blocks", dual_text_at=1, single="single_transformer_blocks", text_valid=hunyuan_text_valid,
        single_text_at=1,
    ),
    "Ovis-Image": Model(
        "Ovis-Image", "OvisImageTransformer2DModel", tiny.tiny_ovis_image_transformer,
        lambda batch: flux_like_inputs(batch, zero=True), dual="transformer_blocks",
        single="single_transformer_blocks", text_valid=zero_rows_valid, single_text_at=0,
    ),
    "LongCat-Image": Model(
        "LongCat-Image", "LongCatImageTransformer2DModel", tiny.tiny_longcat_image_transformer,
        lambda batch: flux_like_inputs(batch, zero=False, first=1, references=True), dual="transformer_blocks",
        single="single_transformer_blocks", text_valid=all_text_valid, single_text_at=0,
    ),
    "Bria 3": Model(
        "Bria 3", "BriaTransformer2DModel", tiny.tiny_bria_transformer, bria_inputs, dual="transformer_blocks",
        single="single_transformer_blocks", text_valid=zero_rows_valid, single_text_at=0,
    ),
    "AuraFlow": Model(
        "AuraFlow", "AuraFlowTransformer2DModel", tiny.tiny_auraflow_transformer, auraflow_inputs,
        dual="joint_transformer_blocks", single="single_transformer_blocks", text_valid=auraflow_text_valid,
        sequence_text=auraflow_sequence_text,
    ),
    "CogView4": Model(
        "CogView4", "CogView4Transformer2DModel", tiny.tiny_cogview4_transformer, cogview_inputs,
        dual="transformer_blocks", dual_text_at=1, text_valid=all_text_valid,
    ),
    "CogView3-Plus": Model(
        "CogView3-Plus", "CogView3PlusTransformer2DModel", tiny.tiny_cogview3plus_transformer, cogview_inputs,
        dual="transformer_blocks", dual_text_at=1, text_valid=all_text_valid,
    ),
    "Ernie-Image": Model(
        "Ernie-Image", "ErnieImageTransformer2DModel", tiny.tiny_ernie_image_transformer, ernie_inputs,
        single="layers", sequence_text=ernie_sequence_text,
    ),
    "Ideogram 4": Model(
        "Ideogram 4", "Ideogram4Transformer2DModel", tiny.tiny_ideogram4_transformer, ideogram4_inputs,
        single="layers", sequence_text=ideogram4_sequence_text,
    ),
}  # fmt: skip
DUAL = [n for n, m in MODELS.items() if m.dual]
SINGLE = [n for n, m in MODELS.items() if m.single]


def built(name: str) -> tuple[Model, Any]:
    model = MODELS[name]
    needs(model.cls)
    return model, model.build()


def observe(model: Model, transformer: Any, attr: str, config: RepulsionConfig, inputs: dict[str, Any]) -> list:
    """Per block of ``attr``: (computed, handed_on) of one call."""
    blocks = getattr(transformer, attr)
    with watching(blocks, lambda: apply_contextual_repulsion(transformer, config)) as seen:
        with torch.no_grad():
            transformer(**inputs)
    return [(block.computed[0], block.handed_on[0]) for block in seen]


# ---- dual-stream blocks


@pytest.mark.parametrize("name", DUAL)
def test_every_hooked_dual_stream_block_hands_on_its_image_stream_and_moves_valid_text_only(name: str) -> None:
    model, transformer = built(name)
    config = RepulsionConfig(strength=0.5, window=1.0, iterations=5, blocks="all", single_blocks="off")
    inputs = model.inputs(B)
    valid = model.text_valid(inputs)
    for computed, handed_on in observe(model, transformer, model.dual, config, inputs):
        assert isinstance(computed, tuple) and len(computed) == 2
        image_at = 1 - model.dual_text_at
        assert torch.equal(handed_on[image_at], computed[image_at])
        text_moved = moved(computed[model.dual_text_at], handed_on[model.dual_text_at])
        assert text_moved.shape == valid.shape
        assert not (text_moved & ~valid).any()  # no padding, no discarded tokens
        assert (text_moved & valid).any()


# ---- single-stream blocks


@pytest.mark.parametrize("name", SINGLE)
def test_a_single_stream_block_in_text_mode_moves_valid_text_tokens_only(name: str) -> None:
    model, transformer = built(name)
    inputs = model.inputs(B)
    config = RepulsionConfig(strength=0.5, window=1.0, iterations=5, single_blocks="text")
    for computed, handed_on in observe(model, transformer, model.single, config, inputs):
        if model.single_text_at is None:
            text = model.sequence_text(inputs)
            block_moved = moved(computed, handed_on)
            assert block_moved.shape == text.shape
            assert not (block_moved & ~text).any()  # no image token, no padding
            assert (block_moved & text).any()
        else:  # (text, image) tuples: the image stream (Flux 3: [image; references]) is handed on as computed
            text_at = model.single_text_at
            assert torch.equal(handed_on[1 - text_at], computed[1 - text_at])
            text_moved = moved(computed[text_at], handed_on[text_at])
            valid = model.text_valid(inputs)
            assert not (text_moved & ~valid).any() and (text_moved & valid).any()


@pytest.mark.parametrize("shape", [(8, 8), (8, 4)], ids=["square", "non-square"])
def test_hidream_single_stream_blocks_in_all_mode_never_move_image_padding_or_discarded_tokens(shape: tuple) -> None:
    model, transformer = built("HiDream")
    inputs = hidream_inputs(B, *shape)
    text, target = model.sequence_text(inputs), model.sequence_target(inputs)
    config = RepulsionConfig(strength=0.5, window=1.0, iterations=5, single_blocks="all")
    for computed, handed_on in observe(model, transformer, model.single, config, inputs):
        block_moved = moved(computed, handed_on)
        assert not (block_moved & ~(text | target)).any()
        assert (block_moved & text).any() and (block_moved & target).any()


def test_longcat_edit_reference_tokens_never_move_in_all_mode() -> None:
    """LongCat-Image Edit: the target's img_ids start with 1, the references' with 2 (after the target's)."""
    model, transformer = built("LongCat-Image")
    inputs = model.inputs(B)
    assert inputs["hidden_states"].shape[1] == 2 * IMAGE
    config = RepulsionConfig(strength=0.5, window=1.0, iterations=5, single_blocks="all")
    for computed, handed_on in observe(model, transformer, model.single, config, inputs):
        image_moved = moved(computed[1], handed_on[1])
        assert not image_moved[:, IMAGE:].any()  # references
        assert image_moved[:, :IMAGE].any()  # the target


def test_target_span_reads_the_target_id_of_the_architecture() -> None:
    ids = torch.cat([grid_ids(1, 2, 3), grid_ids(2, 2, 3)])
    assert target_span(ids, 8, target_id=1) == (0, 4)
    assert target_span(ids, 8) == (0, 8)  # no token has 0: all of them are the target's


def test_krea2_never_moves_the_template_suffix_even_without_padding() -> None:
    model, transformer = built("Krea 2")
    inputs = krea2_inputs(B, prompts=[KREA_TEXT - KREA_SUFFIX] * B)  # prompts fill the prompt part: no padding
    assert inputs["encoder_attention_mask"].all()
    for computed, handed_on in observe(model, transformer, model.single, STRONG, inputs):
        block_moved = moved(computed, handed_on)
        assert not block_moved[:, KREA_TEXT - KREA_SUFFIX :].any()  # suffix and image
        assert block_moved[:, : KREA_TEXT - KREA_SUFFIX].all()


# ---- attaching, removing, batch size one


@pytest.mark.parametrize("name", list(MODELS))
def test_removing_the_handle_is_bit_identical_to_never_attaching(name: str) -> None:
    model, transformer = built(name)
    removal_is_bit_identical(model.run, transformer)


@pytest.mark.parametrize("name", list(MODELS))
def test_a_batch_of_one_is_left_exactly_as_computed(name: str) -> None:
    model, transformer = built(name)
    a_batch_of_one_is_unchanged(model.run, transformer)


# ---- whole pipeline runs


def embeds(tokens: int, dim: int, seed: int, batch: int = B) -> torch.Tensor:
    return randn(1, tokens, dim, seed=seed).expand(batch, -1, -1).contiguous()


def run_hidream(pipe: Any) -> torch.Tensor:
    """CFG on: one call per step over [negatives; prompts]."""

    def llama(seed: int) -> torch.Tensor:  # [layers, rows, tokens, 16]
        return randn(4, 1, HIDREAM_LLAMA, 16, seed=seed).expand(-1, B, -1, -1).contiguous()

    return pipe(
        prompt_embeds_t5=embeds(HIDREAM_T5, 16, 1), prompt_embeds_llama3=llama(2),
        pooled_prompt_embeds=embeds(1, 32, 3)[:, 0], negative_prompt_embeds_t5=embeds(HIDREAM_T5, 16, 4),
        negative_prompt_embeds_llama3=llama(5), negative_pooled_prompt_embeds=embeds(1, 32, 6)[:, 0],
        guidance_scale=3.0, num_inference_steps=4, output_type="latent", generator=generator(),
    ).images  # fmt: skip


def run_lumina2(pipe: Any) -> torch.Tensor:
    """CFG on: the prompt's call, then the negative prompt's, per step (captions of 7 and 4 real tokens)."""
    return pipe(
        prompt_embeds=embeds(10, 16, 1), prompt_attention_mask=text_mask([7] * B, 10),
        negative_prompt_embeds=embeds(10, 16, 2), negative_prompt_attention_mask=text_mask([4] * B, 10),
        guidance_scale=3.0, height=32, width=32, num_inference_steps=4, output_type="latent", generator=generator(),
    ).images  # fmt: skip


def run_auraflow(pipe: Any) -> torch.Tensor:
    """guidance_scale > 1: one call per step over [negatives; prompts] (no do_classifier_free_guidance property)."""
    return pipe(
        prompt_embeds=zero_padded([7] * B, 10, 32, 1), prompt_attention_mask=text_mask([7] * B, 10),
        negative_prompt_embeds=zero_padded([3] * B, 10, 32, 2), negative_prompt_attention_mask=text_mask([3] * B, 10),
        guidance_scale=3.0, height=8, width=8, num_inference_steps=4, output_type="latent", generator=generator(),
    ).images  # fmt: skip


def run_cogview(pipe: Any, steps: int = 4) -> torch.Tensor:
    return pipe(
        prompt_embeds=embeds(10, 32, 1), negative_prompt_embeds=embeds(10, 32, 2), guidance_scale=3.0, height=16,
        width=16, num_inference_steps=steps, output_type="latent", generator=generator(),
    ).images  # fmt: skip


@dataclass(frozen=True)
class Pipeline:
    cls: str
    build: Callable[[], Any]
    run: Callable[[Any], torch.Tensor]
    branches: set[tuple[str, int]]


CFG = {("cond", B), ("uncond", B)}  # one group per branch
PIPELINES = {
    "HiDream, CFG": Pipeline("HiDreamImagePipeline", tiny.tiny_hidream_pipeline, run_hidream, CFG),
    "Lumina 2, CFG": Pipeline("Lumina2Pipeline", tiny.tiny_lumina2_pipeline, run_lumina2, CFG),
    "AuraFlow, CFG": Pipeline("AuraFlowPipeline", tiny.tiny_auraflow_pipeline, run_auraflow, CFG),
    "CogView4, CFG": Pipeline("CogView4Pipeline", tiny.tiny_cogview4_pipeline, run_cogview, CFG),
    "CogView3-Plus, CFG": Pipeline("CogView3PlusPipeline", tiny.tiny_cogview3plus_pipeline, run_cogview, CFG),
}  # fmt: skip


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
    # each CFG branch repelled within itself, in the first 30 % of the steps (4 steps: the first two)
    assert {(s.branch, s.rows) for s in handle.stats} == case.branches
    assert {s.progress for s in handle.stats} == {0.0, 0.25}, name


def test_auraflow_without_guidance_is_one_prompt_batch() -> None:
    """guidance_scale = 1: no negative rows, so the whole batch is the prompt's."""
    needs("AuraFlowPipeline")
    pipe = tiny.tiny_auraflow_pipeline()
    with apply_contextual_repulsion(pipe, PIPELINE, record_stats=True) as handle:
        pipe(
            prompt_embeds=zero_padded([7] * B, 10, 32, 1), prompt_attention_mask=text_mask([7] * B, 10),
            guidance_scale=1.0, height=8, width=8, num_inference_steps=2, output_type="latent", generator=generator(),
        )  # fmt: skip
    assert {(s.branch, s.rows) for s in handle.stats} == {("cond", B)}


def test_cogview4_steps_are_placed_by_the_schedulers_timesteps_not_its_shifted_sigmas() -> None:
    """CogView4Pipeline passes unshifted timesteps while its scheduler steps shifted sigmas: with a window of 0.5
    exactly the first half of the steps is repelled."""
    needs("CogView4Pipeline")
    pipe = tiny.tiny_cogview4_pipeline()
    config = RepulsionConfig(strength=0.5, window=0.5, iterations=3)
    with apply_contextual_repulsion(pipe, config, record_stats=True) as handle:
        run_cogview(pipe, steps=8)
    assert float(pipe.scheduler.timesteps[2]) / 1000 != pytest.approx(float(pipe.scheduler.sigmas[2]), abs=0.01)
    per_step = Counter(s.progress for s in handle.stats)  # read from sigma, t = 857 would be step 0 again
    assert sorted(per_step) == [0.0, 0.125, 0.25, 0.375] and len(set(per_step.values())) == 1


# ---- Ernie-Image and Ideogram 4 pipelines


def run_ernie(pipe: Any, prompt: int = 5, negative: int = 2) -> torch.Tensor:
    """CFG on: one call per step over [negatives; prompts], right-padded to the longer text (5 vs 2 tokens)."""
    return pipe(
        prompt_embeds=[randn(prompt, 24, seed=1)] * B, negative_prompt_embeds=[randn(negative, 24, seed=2)] * B,
        guidance_scale=4.0, height=64, width=64, num_inference_steps=4, output_type="latent", generator=generator(),
    ).images  # fmt: skip


@pytest.mark.parametrize("prompt, negative", [(5, 2), (2, 5)], ids=["negative-shorter", "negative-longer"])
def test_ernie_branches_of_different_text_lengths_in_one_call_each_keep_their_own_length(prompt, negative) -> None:
    needs("ErnieImagePipeline")
    pipe = tiny.tiny_ernie_image_pipeline()
    image = 16  # 64 x 64 without a VAE: a 4 x 4 latent
    with watching(pipe.transformer.layers, lambda: apply_contextual_repulsion(pipe, PIPELINE)) as seen:
        run_ernie(pipe, prompt, negative)
    uncond_moved = cond_moved = torch.zeros(image + max(prompt, negative), dtype=torch.bool)
    for block in seen:
        for computed, handed_on in zip(block.computed, block.handed_on, strict=True):
            block_moved = moved(computed, handed_on)  # [tokens, rows]: [uncond rows; cond rows]
            assert block_moved.shape[1] == 2 * B
            uncond_moved = uncond_moved | block_moved[:, :B].any(1)
            cond_moved = cond_moved | block_moved[:, B:].any(1)
    assert cond_moved.nonzero().flatten().tolist() == list(range(image, image + prompt))  # every prompt token
    assert uncond_moved.nonzero().flatten().tolist() == list(range(image, image + negative))


def test_ernie_with_branches_cond_moves_only_the_prompts_rows() -> None:
    needs("ErnieImagePipeline")
    pipe = tiny.tiny_ernie_image_pipeline()
    config = RepulsionConfig(strength=0.5, window=0.3, iterations=5, branches=("cond",))
    with watching(pipe.transformer.layers, lambda: apply_contextual_repulsion(pipe, config)) as seen:
        run_ernie(pipe)
    block_moved = [moved(c, h) for block in seen for c, h in zip(block.computed, block.handed_on, strict=True)]
    assert not any(m[:, :B].any() for m in block_moved)  # ErnieImagePipeline's rows: [uncond; cond]
    assert any(m[:, B:].any() for m in block_moved)


def tiny_ideogram4_pipeline() -> Any:
    """Ideogram4Pipeline with two tiny transformers and, in place of its Qwen3-VL encoder, prompts of 2 and 4 tokens
    (left-padded to 6) laid out by the pipeline's own ``_prepare_ids``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Ideogram4Pipeline

    pipe = Ideogram4Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None, tokenizer=None,
        transformer=tiny.tiny_ideogram4_transformer(),
        unconditional_transformer=tiny.tiny_ideogram4_transformer(seed=1),
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)

    def encode_prompt(prompt: list, grid_h: int, grid_w: int, max_sequence_length: int, device: Any) -> tuple:
        lengths = [2, 4] * (len(prompt) // 2)
        position_ids, segment_ids, indicator = ideogram_layout(lengths, grid_h)
        features = randn(len(prompt), max_sequence_length + grid_h * grid_w, 24, seed=3) * (indicator == 3)[..., None]
        return features, position_ids, segment_ids, indicator

    pipe.encode_prompt = encode_prompt
    return pipe


def test_ideogram4_pipeline_repels_the_prompts_text_only_never_its_left_padding() -> None:
    needs("Ideogram4Pipeline")
    pipe = tiny_ideogram4_pipeline()
    layouts = []
    pipe.transformer.register_forward_pre_hook(lambda m, a, kw: layouts.append(kw["indicator"]), with_kwargs=True)
    plain = pipe(prompt=["a"] * B, height=64, width=64, num_inference_steps=4, guidance_schedule=[7.0, 7.0, 3.0, 3.0],
                 max_sequence_length=IDEOGRAM_MAX, output_type="latent", generator=generator()).images  # fmt: skip
    handles = []

    def attach() -> Any:
        handles.append(apply_contextual_repulsion(pipe, PIPELINE, record_stats=True))
        return handles[0]

    with watching(pipe.transformer.layers, attach) as seen:
        repelled = pipe(prompt=["a"] * B, height=64, width=64, num_inference_steps=4,
                        guidance_schedule=[7.0, 7.0, 3.0, 3.0], max_sequence_length=IDEOGRAM_MAX,
                        output_type="latent", generator=generator()).images  # fmt: skip
    assert not torch.allclose(repelled, plain)
    assert {(s.branch, s.rows) for s in handles[0].stats} == {("cond", B)}  # the unconditional model: no text
    text = layouts[-1] == 3
    assert (~text[:, : IDEOGRAM_MAX - 4]).all() and text[:, IDEOGRAM_MAX - 2 : IDEOGRAM_MAX].all()
    some = False
    for block in seen:
        for computed, handed_on in zip(block.computed, block.handed_on, strict=True):
            block_moved = moved(computed, handed_on)
            assert not (block_moved & ~text).any()  # never padding, never image tokens
            some |= bool(block_moved.any())
    assert some


# ---- pipelines that batch the CFG branches in one call: the rows labelled cond are the prompt's


def _run_sd3(pipe: Any) -> torch.Tensor:
    from tests.test_diffusers_hooks import run_sd3

    return run_sd3(pipe, 3.5)


def _run_z_image(pipe: Any) -> torch.Tensor:
    from tests.test_blockmap_models import run_z_image

    return run_z_image(pipe)


#: name: (pipeline class, build, run, hooked block list, the text's index in a block output (None: one sequence),
#: whether the prompt's rows come second in the batch)
BATCHED_CFG = {
    "SD3": ("StableDiffusion3Pipeline", lambda: tiny.tiny_sd3_pipeline(tiny.tiny_sd3_transformer(layers=3)), _run_sd3,
            "transformer_blocks", 0, True),
    "Z-Image": ("ZImagePipeline", tiny.tiny_z_image_pipeline, _run_z_image, "layers", None, False),
    "HiDream": ("HiDreamImagePipeline", tiny.tiny_hidream_pipeline, run_hidream, "double_stream_blocks", 1, True),
    "AuraFlow": ("AuraFlowPipeline", tiny.tiny_auraflow_pipeline, run_auraflow, "joint_transformer_blocks", 0, True),
    "CogView3-Plus": ("CogView3PlusPipeline", tiny.tiny_cogview3plus_pipeline, run_cogview, "transformer_blocks", 1,
                      True),
}  # fmt: skip


@pytest.mark.parametrize("name", list(BATCHED_CFG))
def test_with_branches_cond_only_the_prompts_rows_of_a_batched_cfg_call_move(name: str) -> None:
    cls, build, run, blocks, text_at, prompt_second = BATCHED_CFG[name]
    needs(cls)
    pipe = build()
    config = RepulsionConfig(strength=0.5, window=0.3, iterations=5, branches=("cond",))
    with watching(getattr(pipe.transformer, blocks), lambda: apply_contextual_repulsion(pipe, config)) as seen:
        run(pipe)
    prompt = slice(B, 2 * B) if prompt_second else slice(0, B)
    negative = slice(0, B) if prompt_second else slice(B, 2 * B)
    prompt_moved = False
    for block in seen:
        for computed, handed_on in zip(block.computed, block.handed_on, strict=True):
            before = computed if text_at is None else computed[text_at]
            after = handed_on if text_at is None else handed_on[text_at]
            if before is None or before.shape[0] != 2 * B:
                continue  # SD3's last block (no text stream)
            rows = moved(before, after).any(1)
            assert not rows[negative].any(), "a negative prompt's row moved"
            prompt_moved |= bool(rows[prompt].any())
    assert prompt_moved


def test_an_ideogram4_call_packing_two_samples_in_a_row_runs_unmodified_with_one_message(caplog) -> None:
    needs("Ideogram4Transformer2DModel")
    caplog.set_level("WARNING", logger="lib_ctxrep")
    transformer = tiny.tiny_ideogram4_transformer()
    inputs = ideogram4_inputs(B)
    inputs["segment_ids"] = inputs["segment_ids"].clone()
    inputs["segment_ids"][0, -4:] = 2  # a second sample packed into the first row
    with torch.no_grad():
        plain = transformer(**inputs)[0]
        with apply_contextual_repulsion(transformer, STRONG):
            out = transformer(**inputs)[0]
            transformer(**inputs)
    assert torch.equal(out, plain)
    messages = [r.getMessage() for r in caplog.records if "could not be read" in r.getMessage()]
    assert len(messages) == 1 and "Ideogram4Transformer2DModel" in messages[0] and "packed" in messages[0]
