"""``python -m lib_ctxrep demo``: see the diversity gain on the shipped reference model, in under a minute on a CPU.

For each prompt (an object class of the reference data), one batch is generated without and one with contextual
repulsion, from the same seeds. The images go side by side into a PNG grid (upper row of each prompt: base; lower
row: with repulsion), and the ground-truth numbers are printed: how many of the data's modes one batch finds (mode
recall), the Vendi score of the batch's modes and pixels, and the share of samples the classifier accepts (fidelity).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ..config import DEFAULT_STEP_STRENGTH, DEFAULT_WINDOW
from .reference.model import REPULSION_STRENGTH, REPULSION_WINDOW


def grid_image(rows: list[torch.Tensor], labels: list[str], scale: int = 4, gap: int = 4):
    """A PIL image: one row per tensor [B, 3, H, W] in [-1, 1] (nearest-neighbour upscaled), a label on the left."""
    from PIL import Image, ImageDraw

    b, _, h, w = rows[0].shape
    cell_w, cell_h, left = w * scale + gap, h * scale + gap, 150
    img = Image.new("RGB", (left + b * cell_w + gap, len(rows) * cell_h + gap), "white")
    draw = ImageDraw.Draw(img)
    for r, (batch, label) in enumerate(zip(rows, labels, strict=True)):
        y = gap + r * cell_h
        draw.text((6, y + cell_h // 2 - 8), label, fill=(0, 0, 0))
        pixels = ((batch.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for i, tile in enumerate(pixels):
            im = Image.fromarray(tile, "RGB").resize((w * scale, h * scale), Image.NEAREST)
            img.paste(im, (left + gap + i * cell_w, y))
    return img


def run(args: argparse.Namespace) -> dict:
    """Run the demo and print its report; returns the numbers per prompt and method."""
    from .bench import Method, evaluate, generate
    from .reference.data import CLASSES
    from .reference.model import load_reference_model

    start = time.perf_counter()
    model = load_reference_model(args.weights)
    methods = [Method("base", "base"), Method("repulsion", "ours", args.strength, {"window": args.window})]
    classes = list(range(min(args.classes, len(CLASSES))))
    if args.classes > len(CLASSES):
        print(f"[demo] --classes {args.classes}: the reference model has {len(CLASSES)} classes; using {len(CLASSES)}")
    if args.batch == 1:
        print("[demo] --batch 1: contextual repulsion acts within a batch, so one image per batch cannot change")
    total, done = len(classes) * len(methods), 0
    rows, labels, report = [], [], {}
    print(
        f"[demo] reference model, {len(classes)} prompts x batch of {args.batch}, {args.steps} steps, "
        f"CFG {args.guidance}; repulsion strength {args.strength}, window {args.window}"
    )
    if (args.strength, args.window) == (REPULSION_STRENGTH, REPULSION_WINDOW):
        print(
            "[demo] (the reference model's setting, per block; the library default is the step strength "
            f"{DEFAULT_STEP_STRENGTH} shared out over the repelled blocks, {DEFAULT_STEP_STRENGTH / 4:.2f} per block "
            f"on this model's 4, in window {DEFAULT_WINDOW}: see the README)"
        )
    for c in classes:
        seeds = [args.seed + 1000 * c + i for i in range(args.batch)]
        for method in methods:
            images = generate(model, method, c, seeds, steps=args.steps, guidance=args.guidance, shift=1.0)
            done += 1
            bar = "#" * (20 * done // total)
            print(f"\r[demo] [{bar:20}] {done}/{total}", end="" if sys.stdout.isatty() else "\n", flush=True)
            numbers = evaluate(images, torch.full((len(images),), c), len(images))
            report[(CLASSES[c], method.name)] = numbers
            rows.append(images)
            labels.append(f"{CLASSES[c]}: {method.name}")
    print()
    head = f"{'prompt':10} {'method':10} {'mode recall':>11} {'Vendi modes':>11} {'Vendi pixels':>12} {'fidelity':>8}"
    print(f"[demo] {head}")
    for (prompt, name), n in report.items():
        print(
            f"[demo] {prompt:10} {name:10} {n['recall']:11.3f} {n['vendi_modes']:11.2f} {n['vendi_pixels']:12.3f} "
            f"{n['fidelity']:8.3f}"
        )
    for name in ("base", "repulsion"):
        mean = {
            k: sum(v[k] for (_, m), v in report.items() if m == name) / len(classes) for k in ("recall", "fidelity")
        }
        print(f"[demo] mean over prompts, {name:9}: mode recall {mean['recall']:.3f}, fidelity {mean['fidelity']:.3f}")
    out = Path(args.out)
    grid_image(rows, labels).save(out)
    print(f"[demo] grid: {out} (per prompt, upper row base, lower row with repulsion; same seeds)")
    print(f"[demo] {time.perf_counter() - start:.1f} s")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of ``python -m lib_ctxrep demo``."""
    from .cli import fraction, new_file, non_negative, whole
    from .reference.model import DEFAULT_GUIDANCE, DEFAULT_STEPS

    parser.add_argument("--classes", type=whole(1), default=4, help="prompts: the first N of the 4 object classes")
    parser.add_argument("--batch", type=whole(1), default=8, help="images per batch (repulsion acts within a batch)")
    parser.add_argument("--steps", type=whole(1), default=DEFAULT_STEPS, help="sampling steps")
    parser.add_argument("--guidance", type=non_negative, default=DEFAULT_GUIDANCE, help="true-CFG scale")
    parser.add_argument(
        "--strength", type=non_negative, default=REPULSION_STRENGTH,
        help="per-block strength; the default is the reference model's setting",
    )  # fmt: skip
    parser.add_argument(
        "--window", type=fraction, default=REPULSION_WINDOW, help="share of the steps; the reference model's setting"
    )
    parser.add_argument("--seed", type=int, default=0, help="first seed (each prompt and image has its own)")
    parser.add_argument("--weights", default=None, help="a reference-weights file instead of the committed one")
    parser.add_argument("--out", type=new_file, default="demo_grid.png", help="where to write the PNG grid")
