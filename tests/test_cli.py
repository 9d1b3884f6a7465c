"""The two commands of ``python -m lib_ctxrep`` run end to end (reduced sizes)."""

from __future__ import annotations

import pytest

pytest.importorskip("diffusers")

from lib_ctxrep.__main__ import main  # noqa: E402


def test_demo_reports_vendi_per_block_overhead_and_memory(capsys):
    main(
        [
            "demo",
            "--batch", "2", "--steps", "3", "--layers", "1", "--single-layers", "1",
            "--heads", "2", "--text-tokens", "8", "--memory-batches", "2", "--strength", "0.5",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "contextual Vendi per hooked block" in out and "double.0" in out and "single.0" in out
    assert "ratio" in out and "memory reaches" in out


def test_bench_reports_ratio_cost_per_block_and_m_independence(capsys):
    main(
        [
            "bench",
            "--device", "cpu", "--heads", "1", "--double", "1", "--single", "1", "--batch", "2",
            "--text-tokens", "8", "--image-tokens", "4", "--repeats", "1", "--iterations", "3",
            "--spell-set", "3000", "--spell-dim", "8",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "ratio inside the window" in out and "ratio outside the window" in out
    assert "M=1 -> 1 Gram + 1 combination, M=3 -> 1 Gram + 1 combination" in out
    assert "SPELL search, 3000 latents x 8: exact" in out and "ms per query" in out
