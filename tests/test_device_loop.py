"""The device-resident inner loop (lib_ctxrep.kernels.flow): the same update as the host loop on fresh random and
degenerate groups, no transfer to the host inside the window, a skipped non-finite update reported after it, and
the host loop wherever the device loop does not apply. Without a GPU the kernel runs in Triton's CPU interpreter
(skipped where Triton is not installed)."""

from __future__ import annotations

import importlib.util
import logging
import os
import re

import numpy as np
import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("Triton is not installed (pip install triton)", allow_module_level=True)
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":  # conftest.py sets it first
    pytest.skip("Triton's interpreter was not turned on before Triton was imported", allow_module_level=True)

from lib_ctxrep import blockmap, kernels, repulsion  # noqa: E402
from lib_ctxrep.config import RepulsionConfig  # noqa: E402
from lib_ctxrep.engine import RepulsionEngine  # noqa: E402
from lib_ctxrep.vendi import NULL_EIG  # noqa: E402
from tests.test_block_cost import SINGLE, Recorder, sequence  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def use_kernels(monkeypatch):
    """The library runs its kernels, the inner loop included, also on CPU tensors."""
    monkeypatch.setenv("CTXREP_KERNELS", "triton")
    monkeypatch.delenv("CTXREP_INNER_LOOP", raising=False)


def rows_of(count: int, cols: int, seed: int, spread: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, cols, generator=g) + 0.5
    return (base + spread * torch.randn(count, cols, generator=g)).double()


def device_and_host(x: torch.Tensor, b: int, iterations: int, step: float, raw: bool):
    """The device loop's coefficients T - [I 0] and flag, and the host loop's result, for rows ``x`` (``b`` move)."""
    r = x.shape[0]
    centred = repulsion.centred_gram([x[:b]], [x[b:]] if r > b else None)
    deltas, flags = kernels.flow(centred[None].to(DEVICE), b, iterations, step, raw, NULL_EIG * r)
    gram = repulsion.uncentre_gram(centred.numpy())
    kwargs = {"eta": step * iterations} if raw else {"strength": step * iterations}
    (host,) = repulsion.coefficient_flows(gram[None], b, iterations, **kwargs)
    return deltas[0, :b, :r].double().cpu().numpy(), int(flags[0]), host


@pytest.mark.parametrize(("b", "memory"), [(2, 0), (4, 0), (3, 2)])
@pytest.mark.parametrize("raw", [False, True], ids=["strength", "eta"])
def test_device_loop_matches_host_loop(b, memory, raw):
    x = rows_of(b + memory, 300, seed=b + 10 * memory, spread=0.2)
    step = 0.1 / 6 if not raw else 0.1 / 6 * x.pow(2).sum(1).mean().item()  # eta_i = strength * n_i^2
    got, flag, host = device_and_host(x, b, 6, step, raw)
    want = host.coefficients - np.eye(b, b + memory)
    assert flag == 1 and host.finite
    assert np.abs(want).max() > 1e-3  # the update is not trivially zero
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())  # float32 coefficients


@pytest.mark.parametrize("spread", [1e-3, 1e-6, 0.0], ids=["cos-0.999", "near-identical", "identical"])
def test_device_loop_matches_host_loop_on_degenerate_groups(spread):
    # identical rows have null directions (the host drops them from log K); nearly identical ones nearly do
    x = rows_of(4, 300, seed=3, spread=spread)
    got, flag, host = device_and_host(x, 4, 5, 0.3 / 5, False)
    want = host.coefficients - np.eye(4)
    assert flag == 1
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * max(np.abs(want).max(), 1e-12))


def test_device_loop_leaves_a_group_with_a_zero_row_as_it_is():
    x = rows_of(3, 50, seed=4, spread=0.2)
    x[1] = 0.0
    got, flag, host = device_and_host(x, 3, 4, 0.1, False)
    assert flag == 1 and host.finite
    assert not got.any() and np.array_equal(host.coefficients, np.eye(3))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NaN/inf inputs, on purpose
def test_device_loop_flags_a_nonfinite_group_and_gives_it_no_update():
    x = rows_of(4, 50, seed=5, spread=0.2)
    x[2, 7] = float("inf")
    got, flag, host = device_and_host(x, 4, 4, 0.1, False)
    assert flag == 0 and not host.finite
    assert not got.any()


def test_groups_of_one_size_are_solved_in_one_launch_each_with_its_own_result():
    xs = [rows_of(4, 80, seed=s, spread=0.1 * (s + 1)) for s in range(3)]
    stack = torch.stack([repulsion.centred_gram([x]) for x in xs]).to(DEVICE)
    deltas, flags = kernels.flow(stack, 4, 3, 0.1, False, NULL_EIG * 4)
    for j in range(len(xs)):
        alone, _ = kernels.flow(stack[j : j + 1], 4, 3, 0.1, False, NULL_EIG * 4)
        torch.testing.assert_close(deltas[j], alone[0], rtol=0, atol=0)
    assert flags.tolist() == [1, 1, 1]
    assert not torch.equal(deltas[0], deltas[1])


@pytest.mark.parametrize("mode", ["text", "all"])
def test_engine_repels_the_same_with_the_device_and_the_host_loop(use_kernels, monkeypatch, mode):
    # two branches, two prompts, memory in the second batch ("all": the image tokens then repelled by a second flow
    # within the batch): every kind of flow of a block
    config = RepulsionConfig(
        strength=0.5, iterations=4, branches=("uncond", "cond"), group_size=2, memory=True, single_blocks=mode
    )
    call = blockmap.CallTokens(text_len=10, text_valid=(7, 10), image_len=6)
    outputs = {}
    for loop in ("host", "device"):
        monkeypatch.setenv("CTXREP_INNER_LOOP", loop)
        engine = RepulsionEngine(config)
        for batch in range(2):
            engine.begin_call(0.0, ("uncond", "cond"))
            out = sequence(8, 10, 6, seed=batch).to(DEVICE)
            outputs[loop, batch] = blockmap.repel_block(engine, "single.0", SINGLE, out, call, mode, inputs=())
            engine.end_call()
            engine.new_batch()
    for batch in range(2):
        want = outputs["host", batch]
        assert not torch.equal(want, sequence(8, 10, 6, seed=batch).to(DEVICE))
        torch.testing.assert_close(outputs["device", batch], want, rtol=0, atol=1e-6 * want.abs().max().item())


def test_device_loop_reads_nothing_back_inside_the_window(use_kernels, transfers):
    engine = RepulsionEngine(RepulsionConfig(strength=0.5, iterations=3, window=0.5))
    x = rows_of(4, 60, seed=6, spread=0.1).float().reshape(4, 3, 20).to(DEVICE)
    for progress in (0.0, 0.25):
        engine.begin_call(progress, ("cond",))
        with Recorder() as recorder:
            new = engine.process("b0", [x])
        engine.end_call()
        assert new is not None and not torch.equal(new[0], x)
        assert recorder.scalar_reads == 0
    assert transfers["calls"] == 0
    engine.begin_call(0.75, ("cond",))  # the window is over: its updates' flags come back in one transfer
    assert transfers["calls"] == 1
    engine.begin_call(0.9, ("cond",))
    assert transfers["calls"] == 1


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NaN/inf inputs, on purpose
def test_a_nonfinite_update_on_the_device_leaves_the_rows_and_is_reported_after_the_window(use_kernels, caplog):
    engine = RepulsionEngine(RepulsionConfig(strength=0.5, iterations=3, window=0.5))
    x = rows_of(4, 60, seed=7, spread=0.1).float().reshape(4, 3, 20)
    x[1, 2, 5] = float("nan")
    x = x.to(DEVICE)
    with caplog.at_level(logging.WARNING, logger="lib_ctxrep"):
        engine.begin_call(0.0, ("cond",))
        new = engine.process("b7", [x])
        engine.end_call()
        assert new is not None and torch.equal(new[0].nan_to_num(), x.nan_to_num())
        assert not caplog.records
        engine.begin_call(0.8, ("cond",))
    assert [r.message for r in caplog.records] == [
        "[ctxrep] non-finite values in block b7: its update was skipped (output unchanged)"
    ]


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NaN/inf inputs, on purpose
def test_the_next_batch_reports_what_the_device_skipped_when_the_window_covers_every_step(use_kernels, caplog):
    engine = RepulsionEngine(RepulsionConfig(strength=0.5, iterations=2, window=1.0))
    x = rows_of(4, 40, seed=8, spread=0.1).float().reshape(4, 2, 20)
    x[0, 0, 0] = float("inf")
    with caplog.at_level(logging.WARNING, logger="lib_ctxrep"):
        engine.begin_call(0.5, ("cond",))
        engine.process("b1", [x.to(DEVICE)])
        engine.end_call()
        assert not caplog.records
        engine.begin_call(0.0, ("cond",))  # a new batch starts
    assert len(caplog.records) == 1 and "block b1" in caplog.records[0].message


def test_the_host_loop_runs_where_the_device_loop_does_not_apply(use_kernels, monkeypatch):
    x = torch.ones(4, 8, device=DEVICE)
    assert repulsion.inner_loop(x) == "device"
    assert repulsion.inner_loop(x, memory_rows=kernels.FLOW_MAX_ROWS - 4) == "device"
    assert repulsion.inner_loop(x, memory_rows=kernels.FLOW_MAX_ROWS) != "device"  # too many rows
    assert repulsion.inner_loop(x.double()) != "device"  # float64 stays exact on the host
    monkeypatch.setenv("CTXREP_INNER_LOOP", "host")
    assert repulsion.inner_loop(x) == repulsion.host_loop()
    monkeypatch.setenv("CTXREP_INNER_LOOP", "device")
    monkeypatch.setenv("CTXREP_KERNELS", "torch")
    assert repulsion.inner_loop(x) == repulsion.host_loop()


def test_recorded_stats_come_from_the_host_loop(use_kernels, transfers):
    engine = RepulsionEngine(RepulsionConfig(strength=0.5, iterations=3), record_stats=True)
    engine.begin_call(0.0, ("cond",))
    engine.process("b0", [rows_of(4, 60, seed=9, spread=0.1).float().reshape(4, 3, 20).to(DEVICE)])
    assert transfers["calls"] == 1
    (stat,) = engine.stats
    assert 1.0 <= stat.vendi_before < stat.vendi_after <= 4.0


def test_rows_that_need_gradients_keep_them(use_kernels):
    x = rows_of(4, 60, seed=10, spread=0.1).float().reshape(4, 3, 20).to(DEVICE).requires_grad_()
    out = repulsion.repel_angular(x, 0.4, 3)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_overhead_benchmark_names_the_device_loop_and_counts_no_transfer_for_it(use_kernels, capsys):
    pytest.importorskip("diffusers")
    from lib_ctxrep.__main__ import main

    main(
        [
            "overhead",
            "--device", DEVICE, "--dtype", "float32", "--heads", "1", "--double", "1", "--single", "1",
            "--batch", "2", "--text-tokens", "8", "--image-tokens", "4", "--repeats", "1", "--iterations", "2",
            "--spell-set", "0",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    device = "inner loop device, Gram and combination triton"
    assert f"per hooked block, {device}: 0.00 device-to-host transfers (0 in a hooked forward of 2 blocks)" in out
    assert f"side by side, {device}: inside the window" in out
    assert re.search(r"side by side, inner loop (numba|numpy), Gram and combination triton: inside the window", out)
    assert re.search(r"per hooked block, inner loop numpy, Gram and combination torch: 1.00 device-to-host", out)
    assert "M=1 -> 1 Gram + 1 combination, M=2 -> 1 Gram + 1 combination" in out  # counted on the device path too


@pytest.mark.parametrize("mode", ["text", "all"])
def test_device_loop_writes_a_single_blocks_new_rows_into_its_output_without_a_copy(use_kernels, monkeypatch, mode):
    config = RepulsionConfig(strength=0.5, iterations=3, single_blocks=mode)
    call = blockmap.CallTokens(text_len=40, text_valid=(36,), image_len=40)  # padding text tokens: no group is whole
    g = torch.Generator().manual_seed(11)
    base = torch.randn(1, 80, 64, generator=g)
    fresh = (base + 0.1 * torch.randn(4, 80, 64, generator=g)).to(DEVICE).clone
    monkeypatch.setenv("CTXREP_INNER_LOOP", "host")
    engine = RepulsionEngine(config)
    engine.begin_call(0.0, ("cond",))
    want = blockmap.repel_block(engine, "single.0", SINGLE, fresh(), call, mode)
    monkeypatch.setenv("CTXREP_INNER_LOOP", "device")
    engine = RepulsionEngine(config)
    engine.begin_call(0.0, ("cond",))
    output = fresh()
    with Recorder() as recorder:
        new = blockmap.repel_block(engine, "single.0", SINGLE, output, call, mode, inputs=())
    assert new is output  # written in place
    text_rows = 4 * 36 * 64 * output.element_size()  # the smallest repelled part
    assert sum(size for _, size in recorder.allocations) < text_rows  # Gram partials, coefficient tiles and flags
    assert [c for c in recorder.copies if c[0] == output.dtype] == []  # nor copied into place
    torch.testing.assert_close(new, want, rtol=0, atol=1e-6 * want.abs().max().item())
    assert not torch.equal(new, fresh())


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NaN/inf inputs, on purpose
def test_a_combination_kernel_that_fails_leaves_torch_combining_the_device_loops_coefficients(
    use_kernels, monkeypatch, caplog
):
    x = rows_of(4, 60, seed=12, spread=0.1).float().reshape(4, 3, 20).to(DEVICE)
    x[2, 1, 3] = float("inf")  # and a second group, not finite, that must stay as it is
    y = rows_of(4, 60, seed=13, spread=0.1).float().reshape(4, 3, 20).to(DEVICE)
    monkeypatch.setenv("CTXREP_KERNELS", "torch")
    want = repulsion.repel_flows([repulsion.Flow([y])], 3, strength=0.4)[0][0][0]
    monkeypatch.setenv("CTXREP_KERNELS", "triton")

    def broken(*args, **kwargs):
        raise RuntimeError("cannot compile")

    monkeypatch.setattr(kernels, "combine_rows", broken)
    monkeypatch.setattr(repulsion, "_KERNELS", [])
    with caplog.at_level(logging.WARNING, logger="lib_ctxrep"):
        (bad, result), (good, _) = repulsion.repel_flows([repulsion.Flow([x]), repulsion.Flow([y])], 3, strength=0.4)
    assert result.flag is not None and result.flag.tolist() == [0]  # the device loop solved it
    assert torch.equal(bad[0], x)
    torch.testing.assert_close(good[0], want, rtol=0, atol=1e-6 * want.abs().max().item())
    assert ["the Triton kernels failed (RuntimeError: cannot compile)" in r.message for r in caplog.records] == [True]


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NaN/inf inputs, on purpose
def test_a_group_skipped_on_the_device_is_not_remembered(use_kernels, monkeypatch):
    # a NaN in the first batch: its group is skipped; the later batches repel their text against a memory without it
    config = RepulsionConfig(strength=0.5, iterations=3, memory=True, single_blocks="all", window=0.5)
    call = blockmap.CallTokens(text_len=10, image_len=6)
    outputs = {}
    for loop in ("host", "device"):
        monkeypatch.setenv("CTXREP_INNER_LOOP", loop)
        engine = RepulsionEngine(config)
        for batch in range(3):
            out = sequence(4, 10, 6, seed=20 + batch).to(DEVICE)
            if batch == 0:
                out[0, 3, 5] = float("nan")
            engine.begin_call(0.0, ("cond",))
            outputs[loop, batch] = blockmap.repel_block(engine, "single.0", SINGLE, out, call, "all", inputs=())
            engine.end_call()
            engine.begin_call(0.75, ("cond",))  # outside the window
            engine.new_batch()
    for batch in (1, 2):
        want, got = outputs["host", batch], outputs["device", batch]
        before = sequence(4, 10, 6, seed=20 + batch).to(DEVICE)
        assert not torch.equal(got[:, :10], before[:, :10])  # the text moved
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6 * want.abs().max().item())
