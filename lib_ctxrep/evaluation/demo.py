"""``python -m lib_ctxrep demo``: see the diversity gain on the shipped reference model, in under a minute on a CPU.

For each prompt (an object class of the reference data), one batch is generated without and one with contextual
repulsion, from the same seeds. The images go into a PNG that explains itself: a title with the model and the
settings, per prompt a box with the base batch above the repulsion batch (each column one seed, named above it), each
row's numbers beside it, marks on the images whose mode changed or that the classifier rejects, and a legend. The
same numbers are printed as a table: how many of the data's frequent modes one batch finds (mode recall), the Vendi
score of the batch's modes and pixels, and the share of samples the classifier accepts (fidelity).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import DEFAULT_STEP_STRENGTH, DEFAULT_WINDOW
from .reference.model import REPULSION_STEP_STRENGTH, REPULSION_WHY, REPULSION_WINDOW

CHANGED = (170, 0, 230)
"""Frame colour of a repulsion image in another mode than the base image of the same seed (no palette colour)."""
REJECTED = (220, 20, 20)
"""Frame and badge colour of an image the classifier rejects."""
TEXT, MUTED, BOX = (0, 0, 0), (90, 90, 90), (170, 170, 170)
BETTER, WORSE = (0, 130, 0), (200, 0, 0)
FADE = 0.45
"""How far a rejected image is faded towards white, so that the accepted ones stand out."""
SCALE = 6
"""The picture's upscaling of the 16 x 16 images (nearest neighbour): 96 x 96 tiles."""
HEADER = "[demo] {:10} {:10} {:>11}  {:>11}  {:>11}  {:>12}  {:>8}"


@dataclass
class Batch:
    """One batch of the demo, as the picture and the table show it.

    ``images`` [B, 3, H, W] in [-1, 1]; ``accepted`` bool [B]: the classifier reads a clean shape of the prompted
    class; ``modes`` long [B]: the mode it reads (meaningful where accepted); ``numbers``: the table's columns
    (:func:`lib_ctxrep.evaluation.bench.evaluate`'s, plus ``modes_found`` of ``modes_counted`` frequent modes).
    """

    method: str
    images: torch.Tensor
    accepted: torch.Tensor
    modes: torch.Tensor
    numbers: dict[str, float]


@dataclass
class Prompt:
    """One prompt of the demo: its batch without (``base``) and with ``repulsion``, from the same ``seeds``."""

    name: str
    seeds: list[int]
    base: Batch
    repulsion: Batch


def read_batch(method: str, images: torch.Tensor, class_id: int) -> Batch:
    """Classify ``images`` (one batch prompted with ``class_id``) and measure them: what the picture and table show."""
    from .bench import evaluate
    from .reference import metrics
    from .reference.data import MODE_PROBS, classify

    result = classify(images)
    prompted = torch.full((len(images),), class_id)
    numbers = evaluate(images, prompted, len(images))
    frequent = MODE_PROBS[class_id] >= metrics.DEFAULT_MIN_PROB  # the modes mode recall counts
    hit = (metrics.mode_counts(result, prompted)[class_id] > 0) & frequent
    numbers.update(modes_found=int(hit.sum()), modes_counted=int(frequent.sum()))
    return Batch(method, images, metrics.accepted(result, prompted), result.mode, numbers)


def changed_modes(base: Batch, repulsion: Batch) -> torch.Tensor:
    """Bool [B]: the images of a seed are both accepted, and the repulsion one is in another mode than the base one."""
    return base.accepted & repulsion.accepted & (base.modes != repulsion.modes)


def format_vendi(value: float, digits: int = 2) -> str:
    """A Vendi score as printed: "-" where there is none (no accepted sample: NaN); a score is never below 1."""
    return "-" if value != value else f"{value:.{digits}f}"


def table_lines(prompts: list[Prompt]) -> list[str]:
    """The printed table: a line saying which way is better, the header, a row per batch, the means over the prompts
    and what each column means."""
    batch = len(prompts[0].seeds)
    counted = prompts[0].base.numbers["modes_counted"]
    lines = [
        f"[demo] per prompt, a batch of {batch} without (base) and with repulsion, same seeds; "
        "in every column higher is better",
        HEADER.format("prompt", "method", "modes found", "mode recall", "Vendi modes", "Vendi pixels", "fidelity"),
    ]
    for prompt in prompts:
        for b in (prompt.base, prompt.repulsion):
            n = b.numbers
            found = f"{n['modes_found']} of {n['modes_counted']}"
            lines.append(
                HEADER.format(
                    prompt.name, b.method, found, f"{n['recall']:.3f}", format_vendi(n["vendi_modes"]),
                    format_vendi(n["vendi_pixels"], 3), f"{n['fidelity']:.3f}",
                )
            )  # fmt: skip
    for name in ("base", "repulsion"):
        batches = [getattr(p, name) for p in prompts]
        mean = {k: sum(b.numbers[k] for b in batches) / len(batches) for k in ("modes_found", "recall", "fidelity")}
        lines.append(
            f"[demo] mean over prompts, {name:9}: {mean['modes_found']:.2f} of {counted} modes found, "
            f"mode recall {mean['recall']:.3f}, fidelity {mean['fidelity']:.3f}"
        )
    lines += [
        f"[demo] modes found: distinct modes among the accepted images, of the prompt's {counted} frequent ones; "
        f"mode recall = found / {counted}",
        f"[demo] Vendi: effective number of distinct modes (of the accepted images) or images, 1 to {batch}; "
        '"-": none accepted',
        "[demo] fidelity: the share of images the classifier accepts as a clean shape of the prompted class",
    ]
    return lines


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one small bitmap font, no sizes
        return ImageFont.load_default()


def _width(draw: Any, text: str, font: Any) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def _tiles(images: torch.Tensor, scale: int) -> list[Any]:
    from PIL import Image

    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(p, "RGB").resize((p.shape[1] * scale, p.shape[0] * scale), Image.NEAREST) for p in pixels]


def _frame(draw: Any, box: tuple[int, int, int, int], colour: tuple[int, int, int], width: int) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle([x0 - width, y0 - width, x1 + width - 1, y1 + width - 1], outline=colour, width=width)


def _reject_badge(draw: Any, x1: int, y0: int, size: int) -> None:
    """A white X on red in the tile's top-right corner (a full-tile X would read as the class "cross")."""
    draw.rectangle([x1 - size, y0, x1 - 1, y0 + size - 1], fill=REJECTED)
    pad = size // 4
    for a, b in (((x1 - size + pad, y0 + pad), (x1 - 1 - pad, y0 + size - 1 - pad)),
                 ((x1 - size + pad, y0 + size - 1 - pad), (x1 - 1 - pad, y0 + pad))):  # fmt: skip
        draw.line([a, b], fill=(255, 255, 255), width=max(2, size // 7))


def _stats(batch: Batch, base: Batch | None) -> list[tuple[str, str, tuple[int, int, int]]]:
    """The row's numbers, as the table prints them: (text, change against base, the change's colour) per line."""
    n = batch.numbers
    accepted = int(batch.accepted.sum())

    def delta(key: str, fmt: str) -> tuple[str, tuple[int, int, int]]:
        if base is None or n[key] == base.numbers[key]:
            return "", TEXT
        change = n[key] - base.numbers[key]
        return f" ({change:+{fmt}})", BETTER if change > 0 else WORSE

    return [
        (f"modes found: {n['modes_found']} of {n['modes_counted']}", *delta("modes_found", "d")),
        (f"mode recall {n['recall']:.3f}", *delta("recall", ".3f")),
        (f"Vendi: modes {format_vendi(n['vendi_modes'])}, pixels {format_vendi(n['vendi_pixels'], 3)}", "", TEXT),
        (f"fidelity {n['fidelity']:.3f} ({accepted} of {len(batch.accepted)} accepted)", *delta("fidelity", ".3f")),
    ]


@dataclass
class _Layout:
    """Where things go in the picture (pixels)."""

    scale: int
    tile_w: int
    tile_h: int
    gap: int = 14  # between tiles: room for a frame around each
    frame: int = 4
    margin: int = 16
    left: int = 280  # a row's name and numbers, left of its tiles
    head: int = 48  # the prompt's line and the seeds above the tiles
    line: int = 24  # a legend line

    @property
    def box_h(self) -> int:
        return self.head + 2 * (self.tile_h + self.gap)


def grid_image(prompts: list[Prompt], title: list[str], scale: int = 6) -> Any:
    """The demo picture (a PIL image): ``title`` lines (the first large), then per prompt a box with the base batch
    above the repulsion batch, a column per seed (named above it), each row's numbers on its left, the images
    nearest-neighbour upscaled by ``scale``. A :data:`CHANGED` frame marks a repulsion image in another mode than the
    base image of the same seed; an image the classifier rejects is faded, with a :data:`REJECTED` frame and X. A
    legend at the bottom explains the marks and the numbers."""
    from PIL import Image, ImageDraw

    fonts = {"title": _font(22), "text": _font(14), "small": _font(12), "label": _font(16)}
    h, w = prompts[0].base.images.shape[-2:]
    lay = _Layout(scale, w * scale, h * scale)
    legend = _legend_lines(prompts)
    top = lay.margin + 30 + 20 * (len(title) - 1) + 12
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    texts = [_width(probe, line, fonts["title" if i == 0 else "text"]) for i, line in enumerate(title)]
    texts += [34 + _width(probe, text, fonts["text"]) for _, text in legend]
    tiles = lay.left + len(prompts[0].seeds) * (lay.tile_w + lay.gap)
    width = 2 * lay.margin + max(tiles, *texts)  # a small batch: the text sets the width
    height = top + len(prompts) * (lay.box_h + 12) + lay.line * len(legend) + lay.margin
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(title):
        y = lay.margin + (0 if i == 0 else 30 + 20 * (i - 1))
        draw.text((lay.margin, y), line, fill=TEXT, font=fonts["title" if i == 0 else "text"])
    y = top
    for prompt in prompts:
        _draw_prompt(img, draw, prompt, (lay.margin, y, width - lay.margin, y + lay.box_h), fonts, lay)
        y += lay.box_h + 12
    for kind, text in legend:
        _draw_legend_line(draw, lay.margin, y + 4, kind, text, fonts["text"])
        y += lay.line
    return img


def _draw_prompt(img: Any, draw: Any, prompt: Prompt, box: tuple[int, int, int, int], fonts: dict, lay: _Layout):
    from PIL import Image

    x0, y0, x1, y1 = box
    draw.rectangle([x0, y0, x1, y1], outline=BOX, width=2)
    name, seeds = f'prompt "{prompt.name}"', prompt.seeds
    draw.text((x0 + 10, y0 + 6), name, fill=TEXT, font=fonts["label"])
    note = f"seed{f's {seeds[0]} to' if len(seeds) > 1 else ''} {seeds[-1]}, the same in both rows"
    draw.text((x0 + 24 + _width(draw, name, fonts["label"]), y0 + 9), note, fill=MUTED, font=fonts["small"])
    columns = [x0 + lay.left + i * (lay.tile_w + lay.gap) for i in range(len(seeds))]
    for x, seed in zip(columns, seeds, strict=True):
        label = f"seed {seed}"
        draw.text((x + (lay.tile_w - _width(draw, label, fonts["small"])) // 2, y0 + 28), label, fill=MUTED,
                  font=fonts["small"])  # fmt: skip
    changed = changed_modes(prompt.base, prompt.repulsion)
    for r, batch in enumerate((prompt.base, prompt.repulsion)):
        y = y0 + lay.head + r * (lay.tile_h + lay.gap)
        draw.text((x0 + 10, y + 4), batch.method, fill=TEXT, font=fonts["label"])
        for k, (line, change, colour) in enumerate(_stats(batch, prompt.base if r == 1 else None)):
            at = (x0 + 10, y + 26 + 17 * k)
            draw.text(at, line, fill=TEXT, font=fonts["small"])
            draw.text((at[0] + _width(draw, line, fonts["small"]), at[1]), change, fill=colour, font=fonts["small"])
        for i, (x, tile) in enumerate(zip(columns, _tiles(batch.images, lay.scale), strict=True)):
            corner = (x, y, x + lay.tile_w, y + lay.tile_h)
            if not batch.accepted[i]:
                img.paste(Image.blend(tile, Image.new("RGB", tile.size, "white"), FADE), (x, y))
                _frame(draw, corner, REJECTED, 2)
                _reject_badge(draw, corner[2], y, max(12, lay.tile_w // 6))
                continue
            img.paste(tile, (x, y))
            if r == 1 and changed[i]:
                _frame(draw, corner, CHANGED, lay.frame)


def _legend_lines(prompts: list[Prompt]) -> list[tuple[str, str]]:
    counted = prompts[0].base.numbers["modes_counted"]
    batch = len(prompts[0].seeds)
    return [
        (
            "changed",
            "mode changed: another mode than the base image of the same seed (both accepted by the classifier)",
        ),
        (
            "rejected",
            "rejected (faded): not a clean shape of the prompted class; counts against fidelity, not as a mode",
        ),
        (
            "",
            f"modes found: distinct modes among the accepted images, of the prompt's {counted} frequent ones; "
            f"mode recall = found / {counted}",
        ),
        (
            "",
            "Vendi: effective number of distinct modes (of the accepted images) or images, "
            f'1 to {batch}; "-": none accepted',
        ),
        ("", "every number: higher is better; (+n) / (-n) in green / red: repulsion's change against base"),
    ]


def _draw_legend_line(draw, x: int, y: int, kind: str, text: str, font) -> None:
    if kind:
        box = (x + 4, y + 2, x + 22, y + 16)
        draw.rectangle(box, fill=(235, 235, 235))
        _frame(draw, box, CHANGED if kind == "changed" else REJECTED, 3)
        if kind == "rejected":
            _reject_badge(draw, box[2], box[1], 10)
        x += 34
    draw.text((x, y), text, fill=TEXT, font=font)


def _title(args: argparse.Namespace, model: Any, prompts: list[Prompt], scale: int) -> list[str]:
    params = sum(p.numel() for p in model.parameters())
    mean = {
        name: (
            sum(getattr(p, name).numbers["modes_found"] for p in prompts) / len(prompts),
            sum(getattr(p, name).numbers["fidelity"] for p in prompts) / len(prompts),
        )
        for name in ("base", "repulsion")
    }
    counted = prompts[0].base.numbers["modes_counted"]
    return [
        "Contextual repulsion on the reference model: the same seeds without (base) and with repulsion",
        f"Model: the reference model, a tiny Flux-architecture transformer ({params / 1e6:.1f} M parameters) trained "
        f"on 16x16 shapes whose modes are known; images scaled {scale}x",
        f"Settings: {args.steps} steps, CFG {args.guidance:g}, repulsion {_strength(args)}, window "
        f"{args.window:g} (the first {args.window:.0%} of the steps), batch of {args.batch}, seed {args.seed}",
        f"Mean over the {len(prompts)} prompts: modes found {mean['base'][0]:.2f} -> {mean['repulsion'][0]:.2f} "
        f"of {counted}, fidelity {mean['base'][1]:.3f} -> {mean['repulsion'][1]:.3f} (base -> repulsion)",
    ]


def _strength(args: argparse.Namespace) -> str:
    if args.strength is not None:
        return f"strength {args.strength:g} per block"
    return f"step strength {args.step_strength:g}"


def _announce(args: argparse.Namespace, prompts: int) -> None:
    if args.batch == 1:
        print("[demo] --batch 1: contextual repulsion acts within a batch, so one image per batch cannot change")
    print(
        f"[demo] reference model, {prompts} prompt{'s' if prompts != 1 else ''} x batch of {args.batch}, "
        f"{args.steps} steps, CFG {args.guidance}; repulsion {_strength(args)}, window {args.window}"
    )
    library = (args.strength, args.step_strength, args.window) == (None, DEFAULT_STEP_STRENGTH, DEFAULT_WINDOW)
    if not library and (args.strength, args.step_strength, args.window) == (
        None, REPULSION_STEP_STRENGTH, REPULSION_WINDOW
    ):  # fmt: skip
        print(
            f"[demo] not the library defaults (step strength {DEFAULT_STEP_STRENGTH}, window {DEFAULT_WINDOW}): "
            f"{REPULSION_WHY}"
        )


def run(args: argparse.Namespace) -> dict:
    """Run the demo, print its table and write its picture; returns the numbers per (prompt, method)."""
    from .bench import Method, generate
    from .reference.data import CLASSES
    from .reference.model import load_reference_model

    start = time.perf_counter()
    model = load_reference_model(args.weights)
    options: dict = {"window": args.window}
    if args.strength is not None:
        options["config"] = {"strength": args.strength}
    methods = [Method("base", "base"), Method("repulsion", "ours", args.step_strength, options)]
    classes = list(range(min(args.classes, len(CLASSES))))
    _announce(args, len(classes))
    total, done, prompts = len(classes) * len(methods), 0, []
    for c in classes:
        seeds = [args.seed + 1000 * c + i for i in range(args.batch)]
        batches = []
        for method in methods:
            images = generate(model, method, c, seeds, steps=args.steps, guidance=args.guidance, shift=1.0)
            batches.append(read_batch(method.name, images, c))
            done += 1
            bar = "#" * (20 * done // total)
            print(f"\r[demo] [{bar:20}] {done}/{total}", end="" if sys.stdout.isatty() else "\n", flush=True)
        prompts.append(Prompt(CLASSES[c], seeds, *batches))
    print()
    lines = table_lines(prompts)
    print("\n".join(lines))
    out = Path(args.out)
    if getattr(args, "readme", False):
        out = README.parent / "docs" / "demo_grid.png"
        first = next(i for i, line in enumerate(lines) if line.startswith("[demo] prompt"))
        last = max(i for i, line in enumerate(lines) if line.startswith("[demo] mean over prompts"))
        write_readme_table(README, lines[first : last + 1])
        print(f"[demo] table written into {README}")
    grid_image(prompts, _title(args, model, prompts, SCALE), SCALE).save(out)
    print(f"[demo] picture: {out} (per prompt, base above repulsion, a column per seed; marks explained in it)")
    print(f"[demo] {time.perf_counter() - start:.1f} s")
    return {(p.name, b.method): b.numbers for p in prompts for b in (p.base, p.repulsion)}


README = Path(__file__).resolve().parents[2] / "README.md"
README_START = "<!-- demo:start -->"
README_END = "<!-- demo:end -->"


def write_readme_table(path: Path, lines: list[str]) -> None:
    """Replace the demo table in ``path`` (a ```text block between the demo markers) with ``lines``."""
    text = path.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        raise ValueError(f"{path} has no {README_START} ... {README_END} block")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    table = "\n".join(lines)
    path.write_text(f"{head}{README_START}\n```text\n{table}\n```\n{README_END}{tail}", encoding="utf-8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of ``python -m lib_ctxrep demo``."""
    from .cli import existing_file, fraction, new_file, non_negative, whole
    from .reference.data import CLASSES
    from .reference.model import DEFAULT_GUIDANCE, DEFAULT_STEPS

    parser.add_argument(
        "--classes", type=whole(1, len(CLASSES)), default=len(CLASSES),
        help=f"prompts: the first N of the {len(CLASSES)} object classes",
    )  # fmt: skip
    parser.add_argument("--batch", type=whole(1), default=8, help="images per batch (repulsion acts within a batch)")
    parser.add_argument("--steps", type=whole(1), default=DEFAULT_STEPS, help="sampling steps")
    parser.add_argument("--guidance", type=non_negative, default=DEFAULT_GUIDANCE, help="true-CFG scale")
    parser.add_argument(
        "--step-strength", type=non_negative, default=REPULSION_STEP_STRENGTH,
        help="push per step, shared out over the repelled blocks (the library's default)",
    )  # fmt: skip
    parser.add_argument(
        "--strength",
        type=non_negative,
        default=None,
        help="per-block strength instead of the step strength (default: none, the step strength is used)",
    )
    parser.add_argument(
        "--window", type=fraction, default=REPULSION_WINDOW, help="share of the steps (the reference model's setting)"
    )
    parser.add_argument("--seed", type=int, default=0, help="first seed (each prompt and image has its own)")
    parser.add_argument(
        "--weights", type=existing_file, default=None, help="a reference-weights file (default: the committed one)"
    )
    parser.add_argument(
        "--out",
        type=new_file,
        default="demo_grid.png",
        help="where to write the PNG picture (the README's: docs/demo_grid.png)",
    )
    parser.add_argument(
        "--readme", action="store_true",
        help="write the table into the README and the picture into docs/demo_grid.png (what the README shows)",
    )  # fmt: skip
