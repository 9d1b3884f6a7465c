"""The block map: finding a block output's contextual tokens, repelling them, and leaving every other token alone."""

from __future__ import annotations

import logging

import pytest
import torch

from lib_ctxrep import RepulsionConfig, RepulsionEngine, blockmap, families
from lib_ctxrep.blockmap import IMAGE_FIRST, Blocks, CallTokens, repel_block

STRONG = RepulsionConfig(strength=0.5, window=1.0, iterations=5, memory=False)
SINGLE = Blocks("single_blocks")


def features(rows: int, tokens: int, dim: int = 8, seed: int = 0) -> torch.Tensor:
    """Near-copies of one sample (the typicality bias), so repulsion has something to push apart."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, tokens, dim, generator=g)
    return base + 0.1 * torch.randn(rows, tokens, dim, generator=g)


def engine_in_call(config: RepulsionConfig = STRONG, chunks: tuple[str, ...] = ("cond",)) -> RepulsionEngine:
    engine = RepulsionEngine(config)
    assert engine.begin_call(0.0, chunks)
    return engine


def moved(before: torch.Tensor, after: torch.Tensor) -> list[int]:
    """Token positions where any row changed."""
    return (before != after).any(dim=2).any(dim=0).nonzero().flatten().tolist()


def test_text_first_sequence_in_text_mode_moves_only_the_valid_text_tokens():
    seq = features(4, 6 + 10)
    out = repel_block(engine_in_call(), "single.0", SINGLE, seq, CallTokens(6, (4,)), "text")
    assert moved(seq, out) == [0, 1, 2, 3]


def test_all_mode_moves_text_and_the_target_image_tokens_never_the_references():
    seq = features(4, 6 + 10 + 5)  # 6 text, 10 target image tokens, 5 reference tokens
    out = repel_block(engine_in_call(), "single.0", SINGLE, seq, CallTokens(6, target=(0, 10)), "all")
    assert set(moved(seq, out)) == set(range(16))


def test_an_image_first_sequence_moves_the_caption_after_the_padded_image():
    seq = features(4, 12 + 8)  # 12 image tokens (padding included), then 5 caption tokens + 3 caption padding
    where = Blocks("layers", order=IMAGE_FIRST)
    out = repel_block(engine_in_call(), "single.0", where, seq, CallTokens(8, (5,), image_len=12), "text")
    assert moved(seq, out) == [12, 13, 14, 15, 16]


def test_a_dual_block_output_keeps_its_image_stream_and_replaces_only_its_text_stream():
    image, text = features(4, 10, seed=1), features(4, 6, seed=2)
    where = Blocks("double_blocks", text_at=1, image_at=0)  # Forge's Flux: (img, txt)
    out = repel_block(engine_in_call(), "double.0", where, (image, text), CallTokens(6), "text")
    assert out[0] is image and moved(text, out[1]) == list(range(6))


def test_a_block_without_a_text_stream_is_left_alone():
    image = features(4, 10)
    assert (
        repel_block(engine_in_call(), "double.2", Blocks("transformer_blocks"), (None, image), CallTokens(6)) is None
    )


def test_chunks_with_different_text_lengths_are_each_repelled_as_if_alone():
    seq = features(8, 6 + 4)  # rows 0-3: the prompt (6 real text tokens), rows 4-7: a shorter negative prompt (3)
    out = repel_block(
        engine_in_call(chunks=("cond", "uncond")), "single.0", SINGLE, seq, CallTokens(6, (6, 3)), "text"
    )
    assert moved(seq[:4], out[:4]) == list(range(6)) and moved(seq[4:], out[4:]) == [0, 1, 2]
    alone = repel_block(engine_in_call(), "single.0", SINGLE, seq[4:].clone(), CallTokens(6, (3,)), "text")
    torch.testing.assert_close(out[4:], alone, rtol=0, atol=0)


def test_a_single_row_without_memory_is_not_changed():
    assert repel_block(engine_in_call(), "single.0", SINGLE, features(1, 10), CallTokens(6), "all") is None


def test_rows_that_do_not_split_into_the_call_chunks_are_skipped_with_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger="lib_ctxrep")
    engine = engine_in_call(chunks=("uncond", "cond"))
    assert repel_block(engine, "single.0", SINGLE, features(3, 10), CallTokens(6), "text") is None
    assert any("do not split" in r.getMessage() for r in caplog.records)


def test_memory_in_all_mode_remembers_the_text_and_moves_a_later_single_sample_text_only():
    engine = RepulsionEngine(RepulsionConfig(strength=0.5, window=1.0, memory=True))
    call = CallTokens(6, target=(0, 20))
    engine.begin_call(0.0, ("cond",))
    assert repel_block(engine, "single.0", SINGLE, features(1, 26, seed=40), call, "all") is None  # nothing yet
    engine.end_call()
    engine.new_batch()
    engine.begin_call(0.0, ("cond",))
    later = features(1, 26, seed=41)
    out = repel_block(engine, "single.0", SINGLE, later, call, "all")
    assert moved(later, out) and set(moved(later, out)) <= set(range(6))


def test_leading_valid_counts_the_real_tokens_every_row_shares():
    mask = torch.tensor([[1, 1, 1, 0, 1, 0], [1, 1, 1, 1, 0, 0]])
    assert blockmap.leading_valid(mask, 6) == 3
    assert blockmap.leading_valid(torch.ones(2, 9), 6) == 6  # a mask longer than the text (text + image)
    assert blockmap.leading_valid(None, 6) == 6
    assert blockmap.leading_valid(torch.zeros(2, 6), 6) == 0


@pytest.mark.parametrize(
    ("first_ids", "span"),
    [
        ([0] * 10, (0, 10)),  # no reference
        ([0] * 6 + [1] * 4, (0, 6)),  # Kontext / Flux.2 edit: references after the target
        ([10] * 4 + [0] * 6, (4, 10)),  # references first
        ([0, 1] * 5, (0, 10)),  # ragged: not one span, every token is the target's
    ],
)
def test_the_target_span_comes_from_the_first_image_id(first_ids, span):
    ids = torch.zeros(10, 3)
    ids[:, 0] = torch.tensor(first_ids, dtype=torch.float32)
    assert blockmap.target_span(ids, 10) == span
    assert blockmap.target_span(ids[None].expand(2, -1, -1), 10) == span


def test_every_front_end_finds_its_architecture_by_class_name():
    class FluxTransformer2DModel(torch.nn.Module):
        pass

    class IntegratedChromaTransformer2DModel(torch.nn.Module):
        pass

    assert families.recognise(FluxTransformer2DModel(), "diffusers").family == "Flux.1"
    assert families.recognise(FluxTransformer2DModel(), "forge") is None
    assert families.recognise(IntegratedChromaTransformer2DModel(), "forge").family == "Chroma"
    assert families.families("forge")[:5] == ["Flux.1", "Chroma", "Qwen-Image", "Z-Image", "SD3"]


def test_a_text_stream_of_another_length_than_the_call_says_is_left_alone_with_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger="lib_ctxrep")
    image, text = features(4, 10, seed=1), features(4, 7, seed=2)
    out = repel_block(engine_in_call(), "double.3", Blocks("transformer_blocks"), (text, image), CallTokens(6))
    assert out is None
    assert any(
        "double.3 output 7 text tokens where this call's layout says 6" in r.getMessage() for r in caplog.records
    )


def test_a_sequence_shorter_than_the_call_layout_is_left_alone_with_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger="lib_ctxrep")
    where = Blocks("layers", order=IMAGE_FIRST)
    out = repel_block(engine_in_call(), "single.0", where, features(4, 16), CallTokens(8, image_len=12), "text")
    assert out is None and any("at least 20" in r.getMessage() for r in caplog.records)


def test_a_left_padded_text_moves_only_its_last_valid_tokens():
    seq = features(4, 6 + 10)  # 2 padding tokens, 4 text tokens, then 10 image tokens (Ideogram 4's packed row)
    call = CallTokens(6, (4,), image_len=10, left_padded=True)
    out = repel_block(engine_in_call(), "single.0", SINGLE, seq, call, "text")
    assert moved(seq, out) == [2, 3, 4, 5]


def test_a_sequence_first_block_moves_the_same_tokens_as_its_batch_first_twin():
    seq = features(4, 12 + 8)  # [rows, image 12 + caption 5 + padding 3]
    call = CallTokens(8, (5,), image_len=12)
    batch_first = repel_block(engine_in_call(), "single.0", Blocks("layers", order=IMAGE_FIRST), seq.clone(), call)
    where = Blocks("layers", order=IMAGE_FIRST, seq_first=True)
    out = repel_block(engine_in_call(), "single.0", where, seq.transpose(0, 1).contiguous(), call)
    assert out.shape == (20, 4, 8) and out.is_contiguous()
    assert moved(seq, out.transpose(0, 1)) == [12, 13, 14, 15, 16]
    torch.testing.assert_close(out.transpose(0, 1), batch_first, rtol=0, atol=1e-6)


class _FourBlockModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList(torch.nn.Identity() for _ in range(4))


@pytest.mark.parametrize(
    "blocks, said", [((5, 9), "none of them is repelled"), ((2, 9), "only blocks 2 to 3 are repelled"), ((0, 4), None)]
)
def test_a_block_range_past_the_model_says_once_how_many_blocks_it_has(caplog, blocks, said):
    from lib_ctxrep.blockmap import Architecture, select_blocks

    caplog.set_level(logging.WARNING, logger="lib_ctxrep")
    engine = RepulsionEngine(RepulsionConfig(blocks=blocks))
    arch = Architecture(("_FourBlockModel",), Blocks("transformer_blocks"))
    for _ in range(2):
        select_blocks(arch, _FourBlockModel(), engine)
    messages = [r.getMessage() for r in caplog.records if "reach past" in r.getMessage()]
    if said is None:
        assert messages == []
    else:
        assert len(messages) == 1 and "_FourBlockModel's 4 dual-stream blocks (0 to 3)" in messages[0]
        assert said in messages[0]
