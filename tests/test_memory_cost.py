"""docs/design.md's memory cost per remembered sample (Flux-dev, Qwen-Image, Z-Image) is the memory's own count."""

from __future__ import annotations

from pathlib import Path

import torch

from lib_ctxrep.evaluation import memory_cost
from lib_ctxrep.memory import ContextMemory

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"


def test_design_md_holds_the_table_the_cost_model_prints():
    text = DESIGN.read_text(encoding="utf-8")
    block = text.split(memory_cost.START, 1)[1].split(memory_cost.END, 1)[0].strip()
    assert block == memory_cost.markdown_table()


def test_the_cost_model_counts_what_the_memory_holds_for_a_scaled_down_model():
    """The same blocks, tokens and widths, shrunk: the memory fed those rows holds exactly the modelled bytes."""
    scale = memory_cost.Scale("tiny", dual=3, single=2, width=8, text=5, image=12)
    for image_blocks in (0, 1, None):
        memory = ContextMemory(max_rows=16, max_bytes=2**40)
        for _ in range(3):
            for key, features in enumerate(memory_cost.rows(scale, image_blocks)):
                memory.stage(key, [torch.randn(1, features).to(torch.bfloat16)])
            memory.commit()
        expected = memory_cost.anchors(scale, image_blocks) + 3 * memory_cost.per_sample(scale, image_blocks)
        assert memory.nbytes == expected


def test_the_default_budget_holds_the_stated_samples_and_one_more_would_exceed_it():
    budget = 512 * memory_cost.MIB
    for scale in memory_cost.SCALES:
        held = memory_cost.samples_held(scale)
        cost, each = memory_cost.anchors(scale), memory_cost.per_sample(scale)
        assert cost + held * each <= budget < cost + (held + 1) * each
