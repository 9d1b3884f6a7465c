"""Specification of lib_ctxrep.engine.RepulsionEngine: window, row layout, groups, memory and failure handling."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from lib_ctxrep.config import RepulsionConfig
from lib_ctxrep.engine import RepulsionEngine
from lib_ctxrep.repulsion import repel, repel_angular, repel_parts


def features(rows: int, seed: int, shape: tuple[int, ...] = (6, 16), spread: float = 0.2, dtype=torch.float32):
    """Contextual tokens of ``rows`` samples of one prompt: a shared random row plus per-sample differences."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(1, *shape, generator=gen)
    return (base + spread * torch.randn(rows, *shape, generator=gen)).to(dtype)


def run_call(engine: RepulsionEngine, parts: list[torch.Tensor], progress: float = 0.0, chunks=("cond",), block="b0"):
    engine.begin_call(progress, chunks)
    out = engine.process(block, parts)
    engine.end_call()
    return out


def remembered_rows(engine: RepulsionEngine) -> list[torch.Tensor]:
    """The rows the engine's memory holds, for a job that has remembered one group of one block at one step."""
    (key,) = engine.memory.keys()
    return engine.memory.rows(key)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.reshape(1, -1).double(), b.reshape(1, -1).double()).item()


# --- window and switches ---------------------------------------------------------------------------------------------


def test_call_outside_the_window_changes_nothing():
    engine = RepulsionEngine(RepulsionConfig(window=0.05))
    assert engine.begin_call(0.5, ("cond",)) is False
    assert not engine.active
    assert engine.process("b0", [features(3, seed=0)]) is None


def test_call_inside_the_window_repels():
    engine = RepulsionEngine(RepulsionConfig(window=0.05))
    x = features(3, seed=1)
    assert engine.begin_call(0.0, ("cond",)) is True
    out = engine.process("b0", [x])
    assert out is not None and len(out) == 1
    assert out[0].shape == x.shape and out[0].dtype == x.dtype
    assert not torch.equal(out[0], x)


def test_process_after_end_call_changes_nothing():
    engine = RepulsionEngine()
    engine.begin_call(0.0, ("cond",))
    engine.end_call()
    assert not engine.active
    assert engine.process("b0", [features(3, seed=2)]) is None


def test_disabled_config_is_never_active():
    engine = RepulsionEngine(RepulsionConfig(enabled=False))
    assert engine.begin_call(0.0, ("cond",)) is False
    assert engine.process("b0", [features(3, seed=3)]) is None


def test_default_strength_gives_the_angular_repulsion():
    cfg = RepulsionConfig(iterations=20)
    x = features(4, seed=4)
    (out,) = run_call(RepulsionEngine(cfg), [x])
    assert torch.equal(out, repel_angular(x, cfg.block_strength(1), cfg.iterations))


def test_raw_eta_overrides_strength():
    cfg = RepulsionConfig(eta=40.0, strength=0.5, iterations=10)
    x = features(4, seed=5)
    (out,) = run_call(RepulsionEngine(cfg), [x])
    assert torch.equal(out, repel(x, 40.0, 10))


def test_parts_are_repelled_together_as_one_feature_vector():
    cfg = RepulsionConfig(iterations=10)
    txt, img = features(3, seed=6, shape=(4, 8)), features(3, seed=7, shape=(10, 8))
    out = run_call(RepulsionEngine(cfg), [txt, img])
    expected, _ = repel_parts([txt, img], 10, strength=cfg.block_strength(1))
    assert all(torch.equal(o, e) for o, e in zip(out, expected, strict=True))


def test_single_row_without_memory_changes_nothing():
    assert run_call(RepulsionEngine(), [features(1, seed=8)]) is None


# --- row layout: chunks, branches, groups ----------------------------------------------------------------------------


@pytest.mark.parametrize("host_layout", [False, True], ids=["config-chunks", "host-chunks"])
def test_uncond_half_depends_only_on_uncond_rows(host_layout):
    cfg = RepulsionConfig(iterations=10, chunks=None if host_layout else ("uncond", "cond"))
    x = features(6, seed=10)
    y = x.clone()
    y[3:] = features(3, seed=11)
    (out_x,) = run_call(RepulsionEngine(cfg), [x], chunks=("uncond", "cond"))
    (out_y,) = run_call(RepulsionEngine(cfg), [y], chunks=("uncond", "cond"))
    assert torch.equal(out_x[:3], out_y[:3])
    assert not torch.equal(out_x[3:], out_y[3:])


def test_cond_half_depends_only_on_cond_rows():
    cfg = RepulsionConfig(iterations=10, chunks=("uncond", "cond"))
    x = features(6, seed=12)
    y = x.clone()
    y[:3] = features(3, seed=13)
    (out_x,) = run_call(RepulsionEngine(cfg), [x])
    (out_y,) = run_call(RepulsionEngine(cfg), [y])
    assert torch.equal(out_x[3:], out_y[3:])


def test_each_chunk_is_repelled_as_its_own_batch():
    cfg = RepulsionConfig(iterations=10, chunks=("uncond", "cond"))
    x = features(6, seed=14)
    (out,) = run_call(RepulsionEngine(cfg), [x])
    assert torch.equal(out[:3], repel_angular(x[:3], cfg.block_strength(1), 10))
    assert torch.equal(out[3:], repel_angular(x[3:], cfg.block_strength(1), 10))


def test_branch_not_selected_is_left_bit_identical():
    cfg = RepulsionConfig(iterations=10, chunks=("uncond", "cond"), branches=("cond",))
    x = features(6, seed=15)
    (out,) = run_call(RepulsionEngine(cfg), [x])
    assert torch.equal(out[:3], x[:3])
    assert torch.equal(out[3:], repel_angular(x[3:], cfg.block_strength(1), 10))


def test_no_selected_branch_changes_nothing():
    cfg = RepulsionConfig(chunks=("uncond", "cond"), branches=())
    assert run_call(RepulsionEngine(cfg), [features(6, seed=16)]) is None


def test_group_size_splits_a_chunk_into_independent_groups():
    cfg = RepulsionConfig(iterations=10, group_size=2)
    x = features(4, seed=17)
    y = x.clone()
    y[2:] = features(2, seed=18)
    (out_x,) = run_call(RepulsionEngine(cfg), [x])
    (out_y,) = run_call(RepulsionEngine(cfg), [y])
    assert torch.equal(out_x[:2], out_y[:2])
    assert torch.equal(out_x[:2], repel_angular(x[:2], cfg.block_strength(1), 10))
    assert torch.equal(out_x[2:], repel_angular(x[2:], cfg.block_strength(1), 10))


def test_group_size_applies_within_each_chunk():
    cfg = RepulsionConfig(iterations=10, group_size=2, chunks=("uncond", "cond"))
    x = features(8, seed=19)
    (out,) = run_call(RepulsionEngine(cfg), [x])
    for start in range(0, 8, 2):
        assert torch.equal(out[start : start + 2], repel_angular(x[start : start + 2], cfg.block_strength(1), 10))


def test_group_size_that_does_not_divide_the_chunk_warns_and_uses_the_chunk(caplog):
    caplog.set_level(logging.WARNING, logger="lib_ctxrep")
    cfg = RepulsionConfig(iterations=10, group_size=2)
    x = features(3, seed=20)
    (out,) = run_call(RepulsionEngine(cfg), [x])
    assert torch.equal(out, repel_angular(x, cfg.block_strength(1), 10))
    assert any("group_size" in r.getMessage() for r in caplog.records)


def test_rows_that_do_not_split_into_chunks_are_skipped_with_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger="lib_ctxrep")
    engine = RepulsionEngine(RepulsionConfig(chunks=("uncond", "cond")))
    assert run_call(engine, [features(3, seed=21)]) is None
    assert any("do not split" in r.getMessage() for r in caplog.records)


# --- cross-batch memory ----------------------------------------------------------------------------------------------


def test_memory_makes_single_sample_batches_diverse():
    engine = RepulsionEngine(RepulsionConfig(memory=True))
    rows = features(2, seed=30)
    first, second = rows[:1], rows[1:]
    assert run_call(engine, [first]) is None  # nothing remembered yet
    engine.new_batch()
    out = run_call(engine, [second])
    assert out is not None
    assert out[0].shape == second.shape
    assert not torch.equal(out[0], second)
    assert cosine(out[0], first) < cosine(second, first)


def test_rows_of_the_running_batch_are_not_remembered_yet():
    engine = RepulsionEngine(RepulsionConfig(memory=True))
    assert run_call(engine, [features(1, seed=31)]) is None
    # Same batch (no new_batch, progress does not go back): still nothing to repel from.
    assert run_call(engine, [features(1, seed=32)], progress=0.0) is None


def test_a_call_earlier_in_the_trajectory_starts_a_new_batch():
    cfg = RepulsionConfig(memory=True, window=0.1)
    engine = RepulsionEngine(cfg)
    rows = features(2, seed=33)
    assert run_call(engine, [rows[:1]], progress=0.0) is None
    assert run_call(engine, [rows[:1]], progress=0.05) is None
    out = run_call(engine, [rows[1:]], progress=0.0)
    assert out is not None and not torch.equal(out[0], rows[1:])


def test_memory_is_keyed_by_block():
    engine = RepulsionEngine(RepulsionConfig(memory=True))
    rows = features(2, seed=34)
    run_call(engine, [rows[:1]], block="b0")
    engine.new_batch()
    assert run_call(engine, [rows[1:]], block="b1") is None


def test_memory_stays_within_memory_size():
    engine = RepulsionEngine(RepulsionConfig(memory=True, memory_size=3))
    samples = features(8, seed=35)
    for i in range(8):
        run_call(engine, [samples[i : i + 1]])
        engine.new_batch()
        assert len(engine.memory) <= 3
    assert len(engine.memory) == 3


def test_memory_parts_remembers_only_the_leading_parts():
    engine = RepulsionEngine(RepulsionConfig(memory=True))
    text, image = features(2, seed=36), features(2, seed=136, shape=(24, 16))
    engine.begin_call(0.0, ("cond",))
    engine.process("b0", [text, image], memory_parts=1)
    engine.end_call()
    engine.new_batch()
    (remembered,) = remembered_rows(engine)
    assert remembered.shape == text.shape


def test_memory_parts_repels_all_parts_within_the_batch_until_there_is_memory():
    text, image = features(3, seed=37), features(3, seed=137, shape=(24, 16))
    with_memory = RepulsionEngine(RepulsionConfig(memory=True))
    with_memory.begin_call(0.0, ("cond",))
    out = with_memory.process("b0", [text, image], memory_parts=1)
    expected = run_call(RepulsionEngine(), [text, image])
    assert torch.equal(out[0], expected[0]) and torch.equal(out[1], expected[1])


def one_then_the_rest(engine: RepulsionEngine, text: torch.Tensor, image: torch.Tensor):
    """Batch 1 = the first row of [text, image] (batch size 1: staged, not moved), then batch 2 = the other rows, in
    single-block layout (text remembered, ``memory_parts=1``). Returns (the remembered rows, batch 2's output)."""
    engine.begin_call(0.0, ("cond",))
    engine.process("b0", [text[:1], image[:1]], memory_parts=1)
    engine.end_call()
    engine.new_batch()
    remembered = remembered_rows(engine)
    engine.begin_call(0.0, ("cond",))
    return remembered, engine.process("b0", [text[1:], image[1:]], memory_parts=1)


def test_memory_parts_repels_the_remembered_parts_against_the_memory_and_the_rest_within_the_batch():
    cfg = RepulsionConfig(memory=True)
    text, image = features(3, seed=38), features(3, seed=138, shape=(24, 16))
    (remembered,), out = one_then_the_rest(RepulsionEngine(cfg), text, image)
    (expected,), _ = repel_parts([text[1:]], cfg.iterations, strength=cfg.block_strength(1), memory=[remembered])
    assert torch.allclose(out[0], expected, atol=1e-6) and not torch.equal(out[0], text[1:])
    (_, within), _ = repel_parts(
        [text[1:], image[1:]], cfg.iterations, strength=cfg.block_strength(1)
    )  # as without memory
    assert torch.equal(out[1], within) and not torch.equal(out[1], image[1:])


def test_memory_parts_without_memory_is_plain_repulsion():
    text, image = features(3, seed=39), features(3, seed=139, shape=(24, 16))
    engine = RepulsionEngine()
    engine.begin_call(0.0, ("cond",))
    out = engine.process("b0", [text, image], memory_parts=1)
    expected = run_call(RepulsionEngine(), [text, image])
    assert all(torch.equal(a, b) for a, b in zip(out, expected, strict=True))
    assert engine.memory.nbytes == 0


def test_memory_image_remembers_every_part():
    engine = RepulsionEngine(RepulsionConfig(memory=True, memory_image=True))
    text, image = features(2, seed=236), features(2, seed=336, shape=(24, 16))
    engine.begin_call(0.0, ("cond",))
    engine.process("b0", [text, image], memory_parts=1)
    engine.end_call()
    engine.new_batch()
    remembered = remembered_rows(engine)
    assert [r.shape for r in remembered] == [text.shape, image.shape]


def test_memory_image_repels_later_batches_on_every_part_against_the_memory():
    cfg = RepulsionConfig(memory=True, memory_image=True)
    text, image = features(3, seed=238), features(3, seed=338, shape=(24, 16))
    remembered, out = one_then_the_rest(RepulsionEngine(cfg), text, image)
    expected, _ = repel_parts([text[1:], image[1:]], cfg.iterations, strength=cfg.block_strength(1), memory=remembered)
    assert all(torch.allclose(o, e, atol=1e-6) for o, e in zip(out, expected, strict=True))
    assert not torch.equal(out[1], image[1:])


def test_remembered_rows_of_another_shape_are_not_used_and_the_memory_starts_again(caplog):
    caplog.set_level(logging.WARNING, logger="lib_ctxrep")
    engine = RepulsionEngine(RepulsionConfig(memory=True, memory_image=True))
    text = features(3, seed=240)
    small, large = features(3, seed=340, shape=(16, 16)), features(3, seed=341, shape=(24, 16))
    engine.begin_call(0.0, ("cond",))
    engine.process("b0", [text[:1], small[:1]], memory_parts=1)
    engine.end_call()
    engine.new_batch()
    engine.begin_call(0.0, ("cond",))
    assert engine.process("b0", [text[1:2], large[1:2]], memory_parts=1) is None  # e.g. another resolution: B = 1
    assert any("another shape" in r.getMessage() for r in caplog.records)
    engine.end_call()
    engine.new_batch()
    engine.begin_call(0.0, ("cond",))
    out = engine.process("b0", [text[2:], large[2:]], memory_parts=1)  # remembers the new shape
    assert out is not None and not torch.equal(out[1], large[2:])


def test_a_memory_too_small_for_one_batch_warns(caplog):
    caplog.set_level(logging.WARNING, logger="lib_ctxrep")
    engine = RepulsionEngine(RepulsionConfig(memory=True, memory_mb=1))
    run_call(engine, [features(1, seed=42, shape=(512, 1024))])  # a float32 anchor row of 2 MiB
    engine.new_batch()
    assert len(engine.memory) == 0
    assert any("cannot hold one batch" in r.getMessage() for r in caplog.records)


def test_non_finite_image_tokens_of_a_later_batch_are_left_unchanged_with_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger="lib_ctxrep")
    text, image = features(3, seed=243), features(3, seed=343, shape=(24, 16))
    image[2, 0, 0] = float("inf")
    _, out = one_then_the_rest(RepulsionEngine(RepulsionConfig(memory=True)), text, image)
    assert not torch.equal(out[0], text[1:])  # the remembered text tokens are still repelled
    assert torch.equal(out[1], image[1:])
    assert any("non-finite" in r.getMessage() for r in caplog.records)


def test_new_job_forgets_the_memory():
    engine = RepulsionEngine(RepulsionConfig(memory=True))
    rows = features(2, seed=37)
    run_call(engine, [rows[:1]])
    engine.new_batch()
    engine.new_job()
    assert len(engine.memory) == 0
    assert run_call(engine, [rows[1:]]) is None


def test_memory_disabled_by_default_keeps_batches_independent():
    engine = RepulsionEngine()
    rows = features(2, seed=38)
    run_call(engine, [rows[:1]])
    engine.new_batch()
    assert run_call(engine, [rows[1:]]) is None
    assert engine.memory.nbytes == 0


# --- failures and diagnostics ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_non_finite_rows_are_left_unchanged_and_warned_about_once(caplog, bad):
    caplog.set_level(logging.WARNING, logger="lib_ctxrep")
    engine = RepulsionEngine(RepulsionConfig(iterations=10))
    x = features(3, seed=40)
    x[1, 2, 3] = bad
    assert run_call(engine, [x]) is None
    assert run_call(engine, [x]) is None
    warnings = [r for r in caplog.records if r.name == "lib_ctxrep" and "non-finite" in r.getMessage()]
    assert len(warnings) == 1


def test_non_finite_chunk_does_not_stop_the_other_chunk(caplog):
    caplog.set_level(logging.WARNING, logger="lib_ctxrep")
    cfg = RepulsionConfig(iterations=10, chunks=("uncond", "cond"))
    x = features(6, seed=41)
    x[4, 0, 0] = math.inf
    (out,) = run_call(RepulsionEngine(cfg), [x])
    assert torch.equal(out[3:], x[3:])
    assert torch.equal(out[:3], repel_angular(x[:3], cfg.block_strength(1), 10))


def test_record_stats_reports_vendi_increase():
    engine = RepulsionEngine(RepulsionConfig(iterations=20, chunks=("uncond", "cond")), record_stats=True)
    run_call(engine, [features(6, seed=42, spread=0.05)], progress=0.0, block="b3")
    assert [(s.block, s.branch, s.rows, s.memory_rows) for s in engine.stats] == [
        ("b3", "uncond", 3, 0),
        ("b3", "cond", 3, 0),
    ]
    assert all(s.vendi_after > s.vendi_before >= 1.0 for s in engine.stats)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_rows_keep_their_dtype(dtype):
    x = features(4, seed=43, dtype=dtype)
    (out,) = run_call(RepulsionEngine(RepulsionConfig(iterations=10)), [x])
    assert out.dtype == dtype and out.shape == x.shape and torch.isfinite(out).all()


# A bf16 group of 2 rows of n features costs 4.125 n bytes in the memory: a bf16 anchor (2 n), two int8 rows (2 n)
# and a float32 scale per 64 values of each (n / 8).
_TWO_BATCHES = 123_648  # two such batches: 1 020 096 bytes, under 1 MiB (1 048 576) and over 1 MB (10^6)
_BIG_BATCH = 192_000  # 792 000 bytes: with it, even one of the two older batches would overflow 1 MiB


def _remembered_batch(engine: RepulsionEngine, name: str, features: int) -> None:
    assert engine.begin_call(0.0, ("cond",))
    engine.process(name, [torch.randn(2, features, generator=torch.Generator().manual_seed(len(name))).bfloat16()])
    engine.end_call()
    engine.new_batch()


def test_memory_mb_is_counted_in_mebibytes_through_the_engine():
    engine = RepulsionEngine(RepulsionConfig(strength=0.5, window=1.0, memory=True, memory_mb=1))
    _remembered_batch(engine, "double.0", _TWO_BATCHES)
    _remembered_batch(engine, "double.1", _TWO_BATCHES)
    assert engine.memory.nbytes == 2 * int(4.125 * _TWO_BATCHES) > 10**6  # both kept: 1 MiB, not 1 MB
    assert len(engine.memory.keys()) == 2


def test_a_batch_that_needs_more_than_one_old_batch_evicted_evicts_enough():
    engine = RepulsionEngine(RepulsionConfig(strength=0.5, window=1.0, memory=True, memory_mb=1))
    _remembered_batch(engine, "double.0", _TWO_BATCHES)
    _remembered_batch(engine, "double.1", _TWO_BATCHES)
    _remembered_batch(engine, "double.2", _BIG_BATCH)
    assert engine.memory.nbytes == int(4.125 * _BIG_BATCH) <= 2**20
    assert len(engine.memory.keys()) == 1  # only the newest batch's block is remembered


def test_a_batch_of_one_without_memory_warns_once_per_job_that_nothing_changes(caplog):
    caplog.set_level(logging.WARNING, logger="lib_ctxrep")
    engine = RepulsionEngine(RepulsionConfig(strength=0.5, window=1.0))

    def said() -> int:
        return sum("a batch of 1 without cross-batch memory" in r.getMessage() for r in caplog.records)

    for _ in range(3):
        assert run_call(engine, [features(1, seed=8)]) is None
    assert said() == 1
    engine.new_job()
    run_call(engine, [features(1, seed=8)])
    assert said() == 2
    run_call(RepulsionEngine(RepulsionConfig(strength=0.5, window=1.0, memory=True)), [features(1, seed=8)])
    assert said() == 2  # with memory, later batches are repelled from this one
