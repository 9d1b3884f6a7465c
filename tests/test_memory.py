"""Specification of lib_ctxrep.memory.ContextMemory: staged, committed, bounded, compressed cross-batch rows."""

from __future__ import annotations

import pytest
import torch

from lib_ctxrep.memory import ContextMemory, key_bytes, sample_bytes


def near_identical(b: int, shape: tuple[int, ...], seed: int, spread: float = 0.01, scale: float = 1.0, dtype=None):
    """``b`` samples of one prompt: a common random row plus a small per-sample difference."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(1, *shape, generator=gen)
    x = scale * (base + spread * torch.randn(b, *shape, generator=gen))
    return x if dtype is None else x.to(dtype)


def flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).to(torch.float64)


def residual_errors(original: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
    """Per row (after the first, the anchor): |restored residual - true residual| / |true residual|."""
    anchor = flat(original)[0]
    true = flat(original)[1:] - anchor
    got = flat(restored)[1:] - anchor
    return (got - true).norm(dim=1) / true.norm(dim=1)


def test_staged_rows_are_invisible_until_commit():
    memory = ContextMemory()
    memory.stage("k", [near_identical(2, (3, 4), seed=0)])
    assert memory.rows("k") is None
    assert len(memory) == 0 and memory.nbytes == 0
    memory.commit()
    assert memory.rows("k") is not None


def test_unknown_key_has_no_rows():
    memory = ContextMemory()
    memory.stage("a", [near_identical(2, (4,), seed=1)])
    memory.commit()
    assert memory.rows("b") is None


def test_commit_without_staged_rows_changes_nothing():
    memory = ContextMemory()
    memory.commit()
    assert memory.nbytes == 0 and len(memory) == 0


def test_restaging_a_key_replaces_what_was_staged():
    memory = ContextMemory()
    memory.stage("k", [near_identical(3, (8,), seed=2)])
    second = near_identical(2, (8,), seed=3)
    memory.stage("k", [second])
    memory.commit()
    (rows,) = memory.rows("k")
    assert rows.shape[0] == 2
    torch.testing.assert_close(rows[0], second[0], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_rows_come_back_per_part_in_stream_dtype_and_shape(dtype):
    memory = ContextMemory()
    a = near_identical(3, (5, 8), seed=4, dtype=dtype)
    b = near_identical(3, (7, 8), seed=5, dtype=dtype)
    memory.stage(("block", 0.0, "cond", 0), [a, b])
    memory.commit()
    ra, rb = memory.rows(("block", 0.0, "cond", 0))
    assert ra.shape == (3, 5, 8) and rb.shape == (3, 7, 8)
    assert ra.dtype == dtype and rb.dtype == dtype


def test_first_row_is_stored_exactly_as_the_anchor():
    memory = ContextMemory()
    x = near_identical(3, (4, 16), seed=6)
    memory.stage("k", [x])
    memory.commit()
    assert torch.equal(memory.rows("k")[0][0], x[0])


@pytest.mark.parametrize("spread", [0.1, 0.01])
def test_residuals_are_restored_within_one_percent(spread):
    memory = ContextMemory()
    x = near_identical(5, (16, 64), seed=7, spread=spread)
    memory.stage("k", [x])
    memory.commit()
    (rows,) = memory.rows("k")
    assert residual_errors(x, rows).max().item() < 0.01


def test_restored_near_identical_rows_keep_their_direction():
    memory = ContextMemory()
    x = near_identical(6, (16, 64), seed=8, spread=0.01)
    memory.stage("k", [x])
    memory.commit()
    (rows,) = memory.rows("k")
    cos = torch.nn.functional.cosine_similarity(flat(rows), flat(x), dim=1)
    assert cos.min().item() > 0.99999
    # The kernel the repulsion sees: pairwise 1 - cos between samples, preserved to a few percent.
    unit, unit_ref = torch.nn.functional.normalize(flat(rows)), torch.nn.functional.normalize(flat(x))
    off = ~torch.eye(6, dtype=torch.bool)
    gap, gap_ref = (1 - unit @ unit.T)[off], (1 - unit_ref @ unit_ref.T)[off]
    assert ((gap - gap_ref).abs() / gap_ref).max().item() < 0.03


@pytest.mark.parametrize(
    "scale",
    [
        1e-2,
        1e-4,
        1.0,
        1e4,
        1e8,
    ],
)
def test_residual_accuracy_does_not_depend_on_feature_scale(scale):
    memory = ContextMemory()
    x = near_identical(4, (8, 64), seed=9, spread=0.1, scale=scale)
    memory.stage("k", [x])
    memory.commit()
    (rows,) = memory.rows("k")
    assert torch.isfinite(rows).all()
    assert residual_errors(x, rows).max().item() < 0.01


def test_commits_accumulate_across_batches():
    memory = ContextMemory()
    batches = [near_identical(2, (32,), seed=10 + i) for i in range(3)]
    for batch in batches:
        memory.stage("k", [batch])
        memory.commit()
    (rows,) = memory.rows("k")
    assert rows.shape == (6, 32)
    assert len(memory) == 6


def test_max_rows_keeps_the_newest_rows():
    memory = ContextMemory(max_rows=3)
    gen = torch.Generator().manual_seed(11)
    base = torch.randn(1, 64, generator=gen)
    batches = [base + 0.1 * torch.randn(2, 64, generator=gen) for _ in range(4)]
    for batch in batches:
        memory.stage("k", [batch])
        memory.commit()
    (rows,) = memory.rows("k")
    assert rows.shape[0] == 3 and len(memory) == 3
    newest = torch.cat(batches)[-3:]
    torch.testing.assert_close(rows, newest, rtol=0, atol=0.01)


def test_max_bytes_holds_after_every_commit():
    limit = 6_000
    memory = ContextMemory(max_rows=1000, max_bytes=limit)
    for i in range(40):
        memory.stage(("block", i % 3), [near_identical(2, (4, 64), seed=100 + i)])
        memory.commit()
        assert memory.nbytes <= limit
    assert memory.nbytes > limit // 2


def row_bytes(features: int) -> int:
    """What one remembered row costs: an int8 residual per feature (padded to a multiple of 64) and one float32
    scale per 64 values."""
    groups = -(-features // 64)
    return 64 * groups + 4 * groups


def test_max_bytes_drops_the_oldest_batch_first():
    anchor = 4 * 1024  # the first row, kept in the float32 stream's dtype
    memory = ContextMemory(max_rows=1000, max_bytes=anchor + 3 * row_bytes(1024))  # exactly three rows
    samples = near_identical(6, (1024,), seed=200, spread=0.1)
    for i in range(6):
        memory.stage("k", [samples[i : i + 1]])
        memory.commit()
        assert len(memory) == min(i + 1, 3)
        assert memory.nbytes == anchor + len(memory) * row_bytes(1024)
    (rows,) = memory.rows("k")
    torch.testing.assert_close(rows, samples[3:], rtol=0, atol=0.01)


def test_keys_are_those_with_committed_rows_in_the_order_first_committed():
    memory = ContextMemory()
    assert memory.keys() == []
    memory.stage(("b", 1), [near_identical(2, (64,), seed=20)])
    assert memory.keys() == []  # staged only
    memory.commit()
    memory.stage(("a", 0), [near_identical(2, (64,), seed=21)])
    memory.stage(("b", 1), [near_identical(2, (64,), seed=22)])
    memory.commit()
    assert memory.keys() == [("b", 1), ("a", 0)]
    memory.clear()
    assert memory.keys() == []


def test_a_key_whose_rows_the_bound_dropped_is_no_longer_listed():
    memory = ContextMemory(max_rows=1000, max_bytes=4 * 64 + 2 * row_bytes(64))  # room for one batch of two rows
    memory.stage(("b", 1), [near_identical(2, (64,), seed=23)])
    memory.commit()
    memory.stage(("a", 0), [near_identical(2, (64,), seed=24)])
    memory.commit()  # over the bound: the older batch, all of key ("b", 1), goes
    assert memory.keys() == [("a", 0)] and memory.rows(("b", 1)) is None


def test_clear_forgets_committed_and_staged_rows():
    memory = ContextMemory()
    memory.stage("a", [near_identical(2, (16,), seed=12)])
    memory.commit()
    memory.stage("b", [near_identical(2, (16,), seed=13)])
    memory.clear()
    memory.commit()
    assert memory.rows("a") is None and memory.rows("b") is None
    assert memory.nbytes == 0 and len(memory) == 0


@pytest.mark.parametrize("features", [640, 4096, 100])
def test_a_row_costs_one_int8_byte_per_feature_and_a_float32_scale_per_64_beside_one_anchor_row(features):
    memory = ContextMemory()
    rows = 8
    memory.stage("k", [near_identical(rows, (features,), seed=14, dtype=torch.bfloat16)])
    memory.commit()
    anchor_bytes = features * 2  # the first row in the bfloat16 stream's dtype
    assert memory.nbytes == anchor_bytes + rows * row_bytes(features)
    if features % 64 == 0:
        assert (memory.nbytes - anchor_bytes) / (rows * features) == 1 + 4 / 64  # about one byte per feature


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_key_bytes_the_formula_the_docs_cost_with_is_what_the_memory_holds(dtype):
    """docs/design.md sizes the memory at Flux-dev, Qwen-Image and Z-Image scale with ``key_bytes``; it must be the
    memory's own count, for parts of any size and several keys and batches."""
    memory = ContextMemory()
    keys = {"a": [(3, 77)], "b": [(5,), (2, 64)], "c": [(1, 129)]}
    for batch in (2, 3):
        for seed, (key, shapes) in enumerate(keys.items()):
            memory.stage(key, [near_identical(batch, shape, seed=seed, dtype=dtype) for shape in shapes])
        memory.commit()
    features = {key: sum(torch.Size(shape).numel() for shape in shapes) for key, shapes in keys.items()}
    element = torch.tensor([], dtype=dtype).element_size()
    assert memory.nbytes == sum(key_bytes(f, 5, element) for f in features.values())
    assert sample_bytes(64) == 68 and sample_bytes(65) == 136


def test_a_new_row_size_replaces_the_slot():
    memory = ContextMemory()
    memory.stage("k", [near_identical(2, (16,), seed=15)])
    memory.commit()
    memory.stage("k", [near_identical(3, (32,), seed=16)])
    memory.commit()
    (rows,) = memory.rows("k")
    assert rows.shape == (3, 32)


def test_a_new_row_shape_of_the_same_size_replaces_the_slot():
    memory = ContextMemory()
    memory.stage("k", [near_identical(2, (4, 8), seed=17)])
    memory.commit()
    memory.stage("k", [near_identical(2, (8, 4), seed=18)])
    memory.commit()
    (rows,) = memory.rows("k")
    assert rows.shape == (2, 8, 4)


def test_commit_reports_when_the_bound_leaves_nothing_of_the_batch():
    assert ContextMemory().commit()  # nothing staged: nothing lost
    roomy = ContextMemory()
    roomy.stage("k", [near_identical(2, (1024,), seed=19)])
    assert roomy.commit()
    tight = ContextMemory(max_bytes=1000)  # the float32 anchor alone is 4096 bytes
    tight.stage("k", [near_identical(2, (1024,), seed=19)])
    assert not tight.commit()
    assert tight.rows("k") is None


def test_stage_detaches_from_autograd():
    memory = ContextMemory()
    x = near_identical(2, (8,), seed=17).requires_grad_()
    memory.stage("k", [x * 2])
    memory.commit()
    assert not memory.rows("k")[0].requires_grad


def test_staged_rows_are_a_copy_unaffected_by_later_in_place_updates():
    # Forge Neo's blocks update the text stream in place after a hook has returned it.
    memory = ContextMemory()
    rows = torch.randn(2, 4, 8)
    keep = rows.clone()
    memory.stage("k", [rows])
    rows += 100.0
    memory.commit()
    (restored,) = memory.rows("k")
    torch.testing.assert_close(restored, keep, rtol=0, atol=0.02)
