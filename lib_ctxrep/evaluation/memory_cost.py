"""What the cross-batch memory costs per remembered sample on real models, from the memory's own byte count.

What it is for: docs/design.md states the memory per remembered sample at Flux-dev, Qwen-Image and Z-Image scale,
and how many samples the default ``memory_mb`` holds. The numbers come from :func:`lib_ctxrep.memory.key_bytes`, the
formula the memory's own accounting is tested against, applied to each model's repelled rows (one key per repelled
block, step in the window and branch). ``python -m lib_ctxrep.evaluation.memory_cost`` prints the table that
docs/design.md holds between its ``memory-cost`` markers (a test checks that they agree).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import RepulsionConfig
from ..memory import key_bytes, sample_bytes

MIB = 2**20
START = "<!-- memory-cost:start -->"
END = "<!-- memory-cost:end -->"


@dataclass(frozen=True)
class Scale:
    """One model at one resolution: its repelled blocks, widths and token counts.

    ``dual``: blocks that repel their text stream (Flux's double blocks, Qwen-Image's blocks, Z-Image's layers);
    ``single``: Flux single-stream blocks (text and image tokens in one sequence); ``text``: the repelled text tokens
    (Flux attends to and repels T5's padding, the others only the prompt's tokens); ``image``: image tokens."""

    name: str
    dual: int
    single: int
    width: int
    text: int
    image: int
    stream_bytes: int = 2  # bf16
    note: str = ""


SCALES: tuple[Scale, ...] = (
    Scale("Flux-dev, 1024²", 19, 38, 3072, 512, 4096, note="T5 padded to 512, padding repelled"),
    Scale("Qwen-Image, 1328²", 60, 0, 3072, 128, 6889, note="a 128-token prompt; padding masked, not repelled"),
    Scale("Z-Image, 1024²", 30, 0, 3840, 128, 4096, note="a 128-token caption; padding not repelled"),
)


def rows(scale: Scale, image_blocks: int | None = 0) -> list[int]:
    """Values per remembered row of each key of one step and branch: the text stream of every repelled block, and
    the image tokens of the first ``image_blocks`` single blocks (None: of all of them, ``memory_image``)."""
    keep = scale.single if image_blocks is None else min(image_blocks, scale.single)
    text = scale.text * scale.width
    singles = [text + (scale.image * scale.width if i < keep else 0) for i in range(scale.single)]
    return [text] * scale.dual + singles


def per_sample(scale: Scale, image_blocks: int | None = 0) -> int:
    """Bytes one remembered sample costs per step in the window (and per repelled branch)."""
    return sum(sample_bytes(f) for f in rows(scale, image_blocks))


def anchors(scale: Scale, image_blocks: int | None = 0) -> int:
    """Bytes of the anchor rows, paid once per key (per step in the window and branch)."""
    return sum(key_bytes(f, 0, scale.stream_bytes) for f in rows(scale, image_blocks))


def samples_held(scale: Scale, image_blocks: int | None = 0, budget_mib: float | None = None) -> int:
    """Remembered samples that fit in ``budget_mib`` (default: the default ``memory_mb``) at one step in the window."""
    budget = (RepulsionConfig().memory_mb if budget_mib is None else budget_mib) * MIB
    free = budget - anchors(scale, image_blocks)
    return max(0, int(free // per_sample(scale, image_blocks)))


VARIANTS: tuple[tuple[str, int | None], ...] = (("text tokens (default)", 0), ("all tokens (memory_image)", None))


def markdown_table() -> str:
    """The table docs/design.md holds: per model and memory variant, MiB per remembered sample and step, the anchors,
    and the samples the default budget holds at one step in the window."""
    budget = RepulsionConfig().memory_mb
    lines = [
        f"| model | remembered | MiB per sample and step | anchors (MiB, once per step) | samples in {budget:g} MiB |",
        "|---|---|---|---|---|",
    ]
    for scale in SCALES:
        for label, image_blocks in VARIANTS:
            if image_blocks is None and scale.single == 0:
                continue
            lines.append(
                f"| {scale.name} ({scale.note}) | {label} | {per_sample(scale, image_blocks) / MIB:.1f} | "
                f"{anchors(scale, image_blocks) / MIB:.1f} | {samples_held(scale, image_blocks)} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
