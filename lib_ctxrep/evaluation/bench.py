"""``python -m lib_ctxrep bench``: every batch-diversity method side by side on the reference model, in one run.

The same prompts (the reference data's four object classes) and the same seeds for every method; each method makes
``batches`` batches of ``batch`` samples per class. Measured against the data's known modes
(:mod:`lib_ctxrep.evaluation.reference.metrics`):

- mode recall: the share of the data's modes (probability >= 1 %) found in one batch (mean over batches), and over
  all samples of a class;
- Vendi on the analytic mode features (one-hot attributes of the accepted samples of a batch) and on pixels;
- fidelity: the share of samples the classifier accepts as a clean instance of the prompted class;
- prompt adherence: the share whose best-matching class is the prompted one;
- time against base (whole run of that method, same machine, same process).

Methods: base; contextual repulsion (ours) at several strengths in the default window and a few in longer windows
(``--windows``); ours with cross-batch memory at batch size 1 x ``batch`` in each window (remembering text tokens,
and in the longer windows also all tokens: ``memory_image``); SPELL; latent-space
Particle Guidance; CADS. Results go to the console, a JSON file, a Pareto plot (PNG)
and, with ``--readme``, the README's results table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from ..config import DEFAULT_STEP_STRENGTH, RepulsionConfig
from ..vendi import vendi_score

NAN = float("nan")
SEED_SET_STRIDE = 1000
"""Seed set ``j`` starts at ``seed + j * SEED_SET_STRIDE`` (a set of 8 batches of 8 uses 64 seeds per class)."""
README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"
MEMORY_LABELS = {"memory": "text tokens", "memory_image": "all tokens"}
"""Cross-batch memory's bench families: the default (single blocks remember their text tokens) and ``memory_image``."""
MEMORY_FAMILIES = tuple(MEMORY_LABELS)


@dataclass
class Method:
    """One configuration of one method. ``family``: base, ours, memory, memory_image, spell, pg or cads; ``knob``: the
    value swept for the Pareto front (step strength, relative radius, guidance scale, noise scale; None: the library's
    default step strength). ``options`` of ours and the memory families: ``window``, ``single_blocks``,
    ``batch_size`` (a group of seeds is generated as batches of that size, one after another: default the whole group
    for ours, 1 for the memory families) and ``config`` (further ``RepulsionConfig`` fields)."""

    name: str
    family: str
    knob: float | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    """What one method achieved: means over every batch of every seed set, and their 95 % intervals.

    ``batch_recalls`` / ``batch_fidelities``: per batch (seed set by seed set, class by class), the units of the
    intervals; ``gain``: the mean per-batch recall gain over base on the same seeds, ``gain_ci`` its interval;
    ``per_set``: recall and fidelity of each seed set."""

    name: str
    family: str
    knob: float | None
    recall: float
    recall_all: float
    vendi_modes: float
    vendi_pixels: float
    fidelity: float
    adherence: float
    seconds: float
    ratio: float = 1.0
    window: float | None = None
    recall_ci: tuple[float, float] = (NAN, NAN)
    fidelity_ci: tuple[float, float] = (NAN, NAN)
    gain: float = NAN
    gain_ci: tuple[float, float] = (NAN, NAN)
    batch_recalls: list[float] = field(default_factory=list)
    batch_fidelities: list[float] = field(default_factory=list)
    per_set: list[dict[str, float]] = field(default_factory=list)


def default_methods(window: float, windows: tuple[float, ...] = ()) -> list[Method]:
    """The benchmark's methods and sweeps.

    - ours at the library's defaults (the default step strength in ``window``), and at half, the default and twice
      the default step strength in each of ``windows``;
    - cross-batch memory at batch size 1 x 8 at the reference model's recommended setting
      (:data:`.reference.model.REPULSION_STEP_STRENGTH` in :data:`.reference.model.REPULSION_WINDOW`, also one of
      the sweep's points, so that its batch-of-8 gain is measured too): remembering text tokens (the default) and
      all tokens (``memory_image``);
    - SPELL, Particle Guidance and CADS at three settings each.
    """
    from .reference.model import REPULSION_STEP_STRENGTH, REPULSION_WINDOW

    s = DEFAULT_STEP_STRENGTH
    methods = [
        Method("base", "base"),
        Method(f"ours default (S={s:g} w={window:g})", "ours", None, {"window": window}),
    ]
    for w in windows:
        methods += [Method(f"ours S={g:g} w={w:g}", "ours", g, {"window": w}) for g in (s / 2, s, 2 * s)]
    recommended = {"window": REPULSION_WINDOW}
    for family in MEMORY_FAMILIES:
        label = f"ours S={REPULSION_STEP_STRENGTH:g} w={REPULSION_WINDOW:g}, memory 1x8 {MEMORY_LABELS[family]}"
        methods += [Method(label, family, REPULSION_STEP_STRENGTH, recommended)]
    methods += [Method(f"SPELL r={r}", "spell", r) for r in (0.1, 0.2, 0.3)]
    methods += [Method(f"PG scale={x}", "pg", x) for x in (2.0, 8.0, 32.0)]
    methods += [Method(f"CADS s={x}", "cads", x) for x in (0.1, 0.25, 0.5)]
    return methods


def _scheduler(steps: int, shift: float) -> SimpleNamespace:
    from .reference.model import timesteps

    return SimpleNamespace(sigmas=torch.tensor(timesteps(steps, shift)))


def generate(
    model: Any, method: Method, class_id: int, seeds: list[int], *, steps: int, guidance: float, shift: float
) -> torch.Tensor:
    """One group of ``seeds`` of ``class_id`` with ``method`` (one batch, or for ours and the memory families batches
    of ``options["batch_size"]``): images [B, 3, H, W]."""
    from ..integrations.diffusers import apply_contextual_repulsion
    from ..spell import SpellConfig, SpellEngine
    from .baselines import cads_condition, particle_guidance
    from .reference.model import sample

    prompts = [class_id] * len(seeds)
    kw: dict[str, Any] = dict(steps=steps, guidance=guidance, shift=shift)
    family = method.family
    if family == "base":
        return sample(model, prompts, seeds, **kw)
    if family in ("ours", *MEMORY_FAMILIES):
        config = RepulsionConfig(
            step_strength=DEFAULT_STEP_STRENGTH if method.knob is None else float(method.knob),
            window=method.options.get("window", 0.05),
            chunks=("uncond", "cond") if guidance != 1.0 else None,
            memory=family in MEMORY_FAMILIES,
            memory_image=family == "memory_image",
            single_blocks=method.options.get("single_blocks", "all"),
            **method.options.get("config", {}),
        )
        size = method.options.get("batch_size", 1 if config.memory else len(seeds))
        with apply_contextual_repulsion(model, config, scheduler=_scheduler(steps, shift)) as handle:
            out = []
            for start in range(0, len(seeds), size):  # one batch after another: only the memory relates them
                out.append(sample(model, prompts[start : start + size], seeds[start : start + size], **kw))
                handle.new_batch()
            return torch.cat(out)
    if family == "spell":
        engine = SpellEngine(SpellConfig(relative_radius=float(method.knob), cross_batch=False))
        return sample(model, prompts, seeds, x0_fn=lambda x0, t, i: engine.correct(x0), **kw)
    if family == "pg":
        scale = float(method.knob)
        return sample(model, prompts, seeds, x0_fn=lambda x0, t, i: particle_guidance(x0, t, scale), **kw)
    if family == "cads":
        g = torch.Generator().manual_seed(seeds[0])
        s = float(method.knob)

        def cond_fn(embeds, pooled, t):
            return cads_condition(embeds, t, scale=s, generator=g), cads_condition(pooled, t, scale=s, generator=g)

        return sample(model, prompts, seeds, cond_fn=cond_fn, **kw)
    raise ValueError(f"unknown method family {family!r}")


def _mode_features(result, rows: torch.Tensor) -> torch.Tensor:
    from .reference.data import ATTRIBUTE_SIZES

    parts = [torch.nn.functional.one_hot(result.modes[rows, a], n).double() for a, n in enumerate(ATTRIBUTE_SIZES)]
    return torch.cat(parts, dim=1)


def evaluate(images: torch.Tensor, classes: torch.Tensor, batch: int) -> dict[str, float]:
    """The benchmark's columns for ``images`` [N, 3, H, W] prompted with ``classes`` [N], in batches of ``batch``,
    with the per-batch recall and fidelity (``batch_recalls``, ``batch_fidelities``).

    Vendi (modes) is the mean over the batches with at least one accepted sample: a Vendi score is >= 1 for any
    non-empty set and undefined for an empty one, so a batch without accepted samples has none (and does not count as
    0); NaN when no batch has an accepted sample."""
    from .reference import metrics
    from .reference.data import classify

    result = classify(images)
    ok = metrics.accepted(result, classes)
    vendi_modes, vendi_pixels = [], []
    for start in range(0, len(images) - batch + 1, batch):
        rows = torch.arange(start, start + batch)
        good = rows[ok[rows]]
        if len(good):
            vendi_modes.append(float(vendi_score(_mode_features(result, good))))
        vendi_pixels.append(float(vendi_score(images[rows])))
    recalls = metrics.batch_mode_recalls(result, classes, batch)
    fidelities = [float(ok[i : i + batch].float().mean()) for i in range(0, len(images) - batch + 1, batch)]
    return dict(
        recall=sum(recalls) / len(recalls) if recalls else NAN,
        batch_recalls=recalls,
        batch_fidelities=fidelities,
        recall_all=metrics.mode_recall(result, classes),
        vendi_modes=sum(vendi_modes) / len(vendi_modes) if vendi_modes else float("nan"),
        vendi_pixels=sum(vendi_pixels) / len(vendi_pixels),
        fidelity=float(ok.float().mean()),
        adherence=float((result.class_id == classes).float().mean()),
    )


def run_method(
    model: Any,
    method: Method,
    *,
    classes: list[int],
    batches: int,
    batch: int,
    steps: int,
    guidance: float,
    shift: float,
    seed: int,
    progress: Callable[[str], None] | None = None,
    seed_sets: int = 1,
) -> Result:
    """Generate and evaluate one method (seed set by seed set, class-major, batch by batch)."""
    from .stats import interval

    images, prompted, per_set = [], [], []
    start = time.perf_counter()
    for j in range(seed_sets):
        first = seed + j * SEED_SET_STRIDE
        set_images, set_classes = [], []
        for c in classes:
            for k in range(batches):
                seeds = [first + 100_000 * c + batch * k + i for i in range(batch)]
                set_images.append(generate(model, method, c, seeds, steps=steps, guidance=guidance, shift=shift))
                set_classes.append(torch.full((batch,), c))
                if progress is not None:
                    progress(method.name)
        images += set_images
        prompted += set_classes
        part = evaluate(torch.cat(set_images), torch.cat(set_classes), batch)
        per_set.append({"seed": first, "recall": part["recall"], "fidelity": part["fidelity"]})
    seconds = time.perf_counter() - start
    images_t, classes_t = torch.cat(images), torch.cat(prompted)
    columns = evaluate(images_t, classes_t, batch)
    window = method.options.get("window") if method.family in ("ours", *MEMORY_FAMILIES) else None
    _, *recall_ci = interval(columns["batch_recalls"])
    _, *fidelity_ci = interval(columns["batch_fidelities"])
    return Result(
        method.name, method.family, method.knob, seconds=seconds, window=window, per_set=per_set,
        recall_ci=tuple(recall_ci), fidelity_ci=tuple(fidelity_ci), **columns,
    )  # fmt: skip


def paired_gains(results: list[Result]) -> None:
    """Set each result's ``gain`` and ``gain_ci``: its per-batch recall minus base's, on the same seeds."""
    from .stats import paired_interval

    base = results[0]
    for r in results:
        if len(r.batch_recalls) == len(base.batch_recalls) and r.batch_recalls:
            r.gain, *ci = paired_interval(r.batch_recalls, base.batch_recalls)
            r.gain_ci = tuple(ci)


def pareto_front(results: list[Result], x: str = "fidelity", y: str = "recall") -> list[Result]:
    """The results not dominated by another (higher or equal on both axes, higher on one)."""

    def dominated(r: Result) -> bool:
        return any(
            getattr(o, x) >= getattr(r, x) and getattr(o, y) >= getattr(r, y) and (
                getattr(o, x) > getattr(r, x) or getattr(o, y) > getattr(r, y)
            )
            for o in results
        )  # fmt: skip

    return [r for r in results if not dominated(r)]


Goal = tuple[str, bool, str]
"""One goal's check: (description, met, the numbers)."""


def goals(results: list[Result]) -> list[Goal]:
    """The issue's three goals, each (description, met, the numbers); a goal whose methods were not run (``--methods``)
    is left out rather than judged on nothing."""
    by = {r.name: r for r in results}
    base = by["base"]
    ours = [r for r in results if r.family == "ours"]
    if not ours:
        return []
    near = [r for r in ours if r.fidelity >= base.fidelity - 0.02]
    best = max(near, key=lambda r: r.recall, default=None)
    gain = (best.recall / base.recall - 1) if best is not None and base.recall > 0 else float("nan")
    found = f"{best.name} {best.recall:.3f} @ {best.fidelity:.3f} ({gain:+.1%}{_spread(best, base)})" if best else ""
    recall: Goal = (
        "at fidelity within 2 points of base, ours raises batch mode recall by >= 25 % relative",
        best is not None and gain >= 0.25,
        f"base {base.recall:.3f} @ fidelity {base.fidelity:.3f}; best ours within 2 points: {found or 'none'}",
    )
    others = [r for r in results if r.family in ("pg", "cads")]
    memories = [r for r in results if r.family in MEMORY_FAMILIES]
    later = (_dominance_goal(ours, others), _memory_goal(memories, ours, base))
    return [recall, *(check for check in later if check is not None)]


def _spread(r: Result, base: Result) -> str:
    """The gain's 95 % interval and each seed set's gain, where there are several sets."""
    if r.gain != r.gain or len(r.per_set) < 2 or len(base.per_set) != len(r.per_set) or not base.recall > 0:
        return ""
    low, high = (g / base.recall for g in r.gain_ci)
    sets = ", ".join(
        f"{(m['recall'] / b['recall'] - 1) if b['recall'] > 0 else NAN:+.0%}"
        for m, b in zip(r.per_set, base.per_set, strict=True)
    )
    return f", 95 % CI [{low:+.0%}, {high:+.0%}]; per seed set {sets}"


def _dominance_goal(ours: list[Result], others: list[Result]) -> Goal | None:
    if not others:
        return None
    beaten = [o for o in others if any(u.fidelity >= o.fidelity and u.recall >= o.recall for u in ours)]
    front = pareto_front([*ours, *others])
    return (
        "ours dominates Particle Guidance and CADS on the Pareto front (recall vs fidelity)",
        len(beaten) == len(others) and all(r.family == "ours" for r in front),
        f"{len(beaten)}/{len(others)} PG/CADS points weakly dominated by an ours point; front: "
        + ", ".join(r.name for r in front),
    )


def _memory_goal(memories: list[Result], ours: list[Result], base: Result) -> Goal | None:
    batch_of = {(r.knob, r.window): r for r in ours}
    pairs = [(m, batch_of[m.knob, m.window]) for m in memories if (m.knob, m.window) in batch_of]
    if not pairs:
        return None

    def up(r: Result) -> float:
        return r.recall - base.recall

    # judged where one batch of 8 gains most: a gain of one or two modes in 256 samples is within the noise
    single = max((s for _, s in pairs), key=lambda s: s.recall)
    gain = up(single)
    there = [m for m, s in pairs if s is single]
    share = {m.name: up(m) / gain if gain > 0 else 0.0 for m in there}
    best = max(share.values())
    kept = ", ".join(f"{MEMORY_LABELS[m.family]} {up(m):+.3f} ({share[m.name]:.0%})" for m in there)
    every = "; ".join(
        f"window {m.window:g}, {MEMORY_LABELS[m.family]}: {up(s):+.3f} vs {up(m):+.3f}" for m, s in pairs
    )
    sets = ""
    if len(single.per_set) > 1 and len(base.per_set) == len(single.per_set):
        top = max(there, key=lambda m: share[m.name])
        shares = []
        for m, s1, b in zip(top.per_set, single.per_set, base.per_set, strict=True):
            shares.append(f"{(m['recall'] - b['recall']) / (s1['recall'] - b['recall']):.0%}"
                          if s1["recall"] > b["recall"] else "no gain to keep")  # fmt: skip
        sets = f"; per seed set ({MEMORY_LABELS[top.family]}): {', '.join(shares)}"
    return (
        "cross-batch memory at batch size 1 x 8 reaches >= 80 % of the gain of one batch of 8",
        gain > 0 and best >= 0.8,
        f"where one batch of 8 gains most ({single.name}): {gain:+.3f}; 1 x 8 with memory: {kept}{sets}; "
        f"gains (batch of 8 vs 1 x 8) per window: {every}",
    )


# ---- output ------------------------------------------------------------------------------------------------------
def _with_ci(value: float, ci: tuple[float, float], fmt: str) -> str:
    if value != value:
        return "-"
    if ci[0] != ci[0] or ci[0] == ci[1]:
        return fmt.format(value)
    return f"{fmt.format(value)} [{fmt.format(ci[0])}, {fmt.format(ci[1])}]"


def _gain(r: Result, base: Result) -> str:
    if r is base or r.gain != r.gain or not base.recall > 0:
        return "-"
    low, high = (g / base.recall for g in r.gain_ci)
    return f"{r.gain / base.recall:+.1%} [{low:+.0%}, {high:+.0%}]"


COLUMNS: tuple[tuple[str, Callable[[Result, Result], str]], ...] = (
    ("method", lambda r, b: r.name),
    ("batch mode recall [95 % CI]", lambda r, b: _with_ci(r.recall, r.recall_ci, "{:.3f}")),
    ("gain vs base [95 % CI]", _gain),
    ("fidelity [95 % CI]", lambda r, b: _with_ci(r.fidelity, r.fidelity_ci, "{:.3f}")),
    ("mode recall (all)", lambda r, b: _cell("{:.3f}", r.recall_all)),
    ("Vendi (modes)", lambda r, b: _cell("{:.2f}", r.vendi_modes)),
    ("Vendi (pixels)", lambda r, b: _cell("{:.3f}", r.vendi_pixels)),
    ("adherence", lambda r, b: _cell("{:.3f}", r.adherence)),
    ("time vs base", lambda r, b: _cell("{:.2f}", r.ratio)),
)
"""The table's columns: header and cell of a result (given base's). The gain is the paired per-batch gain over base
relative to base's recall; its interval is the paired interval divided by base's mean recall."""


def table(results: list[Result]) -> str:
    """The results as a Markdown table (every column but time: higher is better; "-": not measurable)."""
    base = results[0]
    lines = ["| " + " | ".join(c[0] for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in results:
        lines.append("| " + " | ".join(cell(r, base) for _, cell in COLUMNS) + " |")
    return "\n".join(lines)


def _cell(fmt: str, value: Any) -> str:
    # NaN: not measurable (e.g. Vendi over modes without an accepted sample), shown as "-" rather than "nan"
    return "-" if isinstance(value, float) and value != value else fmt.format(value)


FAMILY_COLOURS = {
    "base": (0, 0, 0),
    "ours": (214, 39, 40),
    "memory": (255, 127, 14),
    "memory_image": (127, 127, 127),
    "spell": (31, 119, 180),
    "pg": (44, 160, 44),
    "cads": (148, 103, 189),
}
WINDOW_COLOURS = {
    "ours": ((227, 119, 194), (140, 86, 75)),
    "memory": ((188, 189, 34), (23, 190, 207)),
    "memory_image": ((90, 90, 90), (0, 90, 130)),
}
"""Colours of ours / memory in the longer windows (``--windows``)."""
FAMILY_LABELS = {
    "base": "base",
    "ours": "contextual repulsion (ours)",
    "memory": "ours, memory 1x8",
    "memory_image": "ours, memory 1x8 all tokens",
    "spell": "SPELL",
    "pg": "Particle Guidance",
    "cads": "CADS",
}


def pareto_plot(results: list[Result], path: str | Path) -> None:
    """Diversity (batch mode recall) against fidelity, one colour per method family, sweeps joined by lines (PNG)."""
    from PIL import Image, ImageDraw

    w, h, m = 860, 560, 70
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    xs = [v for r in results for v in (r.fidelity, *r.fidelity_ci) if v == v]
    ys = [v for r in results for v in (r.recall, *r.recall_ci) if v == v]
    x0, x1 = min(xs) - 0.02, max(xs) + 0.02
    y0, y1 = min(ys) - 0.02, max(ys) + 0.02

    def at(x: float, y: float) -> tuple[float, float]:
        return m + (x - x0) / (x1 - x0) * (w - 2 * m - 280), h - m - (y - y0) / (y1 - y0) * (h - 2 * m)

    d.rectangle([m, m, w - m - 280, h - m], outline=(0, 0, 0))
    for i in range(5):
        fx, fy = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
        px, _ = at(fx, y0)
        _, py = at(x0, fy)
        d.text((px - 12, h - m + 6), f"{fx:.2f}", fill=(0, 0, 0))
        d.text((m - 34, py - 6), f"{fy:.2f}", fill=(0, 0, 0))
    d.text(((w - 280) // 2 - 80, h - 30), "fidelity (accepted share); bars: 95 % intervals", fill=(0, 0, 0))
    d.text((8, m - 30), "batch mode recall (diversity)", fill=(0, 0, 0))
    groups: dict[tuple[str, float | None], list[Result]] = {}
    for r in results:
        groups.setdefault((r.family, r.window), []).append(r)
    windows_of = Counter(family for family, _ in groups)
    shades: Counter[str] = Counter()
    legend = []
    for (family, window), members in groups.items():
        shade = shades[family]
        shades[family] += 1
        colour = FAMILY_COLOURS[family] if shade == 0 else WINDOW_COLOURS[family][(shade - 1) % 2]
        several = windows_of[family] > 1
        legend.append((FAMILY_LABELS[family] + (f", window {window:g}" if several else ""), colour))
        points = sorted((r for r in members if r.knob is not None), key=lambda r: r.knob)
        coords = [at(r.fidelity, r.recall) for r in points]
        if len(coords) > 1:
            d.line(coords, fill=colour, width=2)
        for r in members:  # 95 % intervals, where there are several batches
            if r.recall_ci[0] == r.recall_ci[0] and r.fidelity_ci[0] == r.fidelity_ci[0]:
                cx, cy = at(r.fidelity, r.recall)
                d.line([at(r.fidelity, r.recall_ci[0]), at(r.fidelity, r.recall_ci[1])], fill=_pale(colour), width=1)
                d.line([at(r.fidelity_ci[0], r.recall), at(r.fidelity_ci[1], r.recall)], fill=_pale(colour), width=1)
        for (px, py), r in zip(coords, points, strict=True):
            d.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour)
            d.text((px + 6, py - 12), f"{r.knob:g}", fill=colour)
        for r in members:
            if r.knob is None and family != "base":  # the library default (the step strength): a square, off the line
                px, py = at(r.fidelity, r.recall)
                d.rectangle([px - 5, py - 5, px + 5, py + 5], outline=colour, width=2)
                d.text((px + 7, py + 2), "default", fill=colour)
    for i, (label, colour) in enumerate(legend):
        y = m + 10 + 20 * i
        d.ellipse([w - m - 262, y, w - m - 254, y + 8], fill=colour)
        d.text((w - m - 248, y - 2), label, fill=(0, 0, 0))
    img.save(str(path))


def _pale(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(int(c + (255 - c) * 0.6) for c in colour)  # type: ignore[return-value]


def write_readme(path: Path, text: str) -> None:
    """Replace the README's results block (between the bench markers) with ``text``."""
    readme = path.read_text(encoding="utf-8")
    if README_START not in readme or README_END not in readme:
        raise ValueError(f"{path} has no {README_START} ... {README_END} block")
    head, rest = readme.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    path.write_text(f"{head}{README_START}\n{text}\n{README_END}{tail}", encoding="utf-8")


# ---- command -----------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> list[Result]:
    """Run the comparison and write its outputs; returns the results."""
    from .reference.data import CLASSES
    from .reference.model import load_reference_model

    methods = select_methods(args)
    torch.manual_seed(0)
    model = load_reference_model(args.weights)
    classes = list(range(min(args.classes, len(CLASSES))))
    results = run_methods(model, methods, classes, args)
    print(
        f"[bench] reference model, {len(classes)} classes x {args.batches} batches of {args.batch}, {args.steps} "
        f"steps, CFG {args.guidance}, seed {args.seed}, {getattr(args, 'seed_sets', 1)} seed set(s)"
    )
    text = table(results)
    print(text)
    checks = goals(results)
    for name, met, numbers in checks:
        print(f"[bench] goal {'MET' if met else 'NOT MET'}: {name}: {numbers}")
    write_outputs(args, results, checks)
    if args.readme:
        write_readme(Path(args.readme_path), readme_block(args, text, checks))
        plot = Path(args.readme_path).with_name("pareto.png")
        pareto_plot(results, plot)
        print(f"[bench] results table written into {args.readme_path}, the plot into {plot}")
    return results


def select_methods(args: argparse.Namespace) -> list[Method]:
    """The default methods in the windows of ``args``, narrowed to the families of ``--methods`` (base always)."""
    methods = default_methods(args.window, _windows(args.windows))
    if args.methods:
        wanted = {w.strip() for w in args.methods.split(",") if w.strip()}
        unknown = sorted(wanted - {m.family for m in methods})
        if unknown:
            raise SystemExit(f"bench: --methods {unknown} unknown; families: {sorted({m.family for m in methods})}")
        methods = [m for m in methods if m.family in wanted or m.family == "base"]
    return methods


def progress_printer(total: int) -> Callable[[str], None]:
    """A progress bar over ``total`` batches: redrawn in place on a terminal, ten lines in a log file."""
    done = [0]
    tty = sys.stdout.isatty()

    def progress(name: str) -> None:
        done[0] += 1
        width = 30
        filled = int(width * done[0] / total)
        line = f"[bench] [{'#' * filled}{'.' * (width - filled)}] {done[0]}/{total} {name:32}"
        if tty:
            print(f"\r{line}", end="", flush=True)
        elif done[0] % max(1, total // 10) == 0 or done[0] == total:  # a log file gets ten lines, not hundreds
            print(line, flush=True)

    return progress


def run_methods(model: Any, methods: list[Method], classes: list[int], args: argparse.Namespace) -> list[Result]:
    """Every method on the same prompts and seeds, with a progress bar; each result's time is set against base's
    (the first method)."""
    seed_sets = getattr(args, "seed_sets", 1)
    progress = progress_printer(len(methods) * len(classes) * args.batches * seed_sets)
    # Warm-up (first calls pay for allocations and thread start-up), so base is not charged for it.
    warm = [args.seed + i for i in range(args.batch)]
    for _ in range(2):
        generate(model, methods[0], 0, warm, steps=args.steps, guidance=args.guidance, shift=args.shift)
    jobs = min(getattr(args, "jobs", 1), len(methods))
    if jobs > 1:
        results = _run_parallel(methods, classes, args, jobs, progress)
    else:
        results = []
        for method in methods:
            result = run_method(
                model, method, classes=classes, batches=args.batches, batch=args.batch, steps=args.steps,
                guidance=args.guidance, shift=args.shift, seed=args.seed, progress=progress, seed_sets=seed_sets,
            )  # fmt: skip
            results.append(result)
    print()
    base = results[0]
    for r in results:
        r.ratio = r.seconds / base.seconds if base.seconds > 0 else float("nan")
    paired_gains(results)
    return results


def _run_one(method: Method, classes: list[int], args: dict[str, Any]) -> Result:
    """One method in a worker process (one thread, its own copy of the model)."""
    from .reference.model import load_reference_model

    torch.set_num_threads(1)
    model = load_reference_model(args["weights"])
    warm = [args["seed"] + i for i in range(args["batch"])]
    kw = dict(steps=args["steps"], guidance=args["guidance"], shift=args["shift"])
    generate(model, Method("base", "base"), 0, warm, **kw)
    return run_method(
        model, method, classes=classes, batches=args["batches"], batch=args["batch"], seed=args["seed"],
        seed_sets=args.get("seed_sets", 1), **kw,
    )  # fmt: skip


def _run_parallel(
    methods: list[Method], classes: list[int], args: argparse.Namespace, jobs: int, progress: Callable[[str], None]
) -> list[Result]:
    """Every method in ``jobs`` worker processes of one thread each; the results in the methods' order. The numbers
    are those of a one-thread run; the times are measured while the workers share the cores."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    per_method = len(classes) * args.batches * getattr(args, "seed_sets", 1)
    plain = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, type(None)))}
    # fork where the platform has it (no re-import of torch in each worker); spawn elsewhere
    start = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context(start)) as pool:
        futures = {pool.submit(_run_one, m, classes, plain): i for i, m in enumerate(methods)}
        results: list[Result | None] = [None] * len(methods)
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            for _ in range(per_method):
                progress(methods[futures[future]].name)
    return [r for r in results if r is not None]


def write_outputs(args: argparse.Namespace, results: list[Result], checks: list[Goal]) -> None:
    """bench.json (the arguments, results and goals) and pareto.png in ``args.out`` (created)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(
        json.dumps(
            {"args": vars(args), "results": [asdict(r) for r in results], "goals": checks}, indent=1, default=str
        )
    )
    pareto_plot(results, out / "pareto.png")
    print(f"[bench] wrote {out / 'bench.json'} and {out / 'pareto.png'}")


def readme_block(args: argparse.Namespace, text: str, checks: list[Goal]) -> str:
    """The Markdown written between the bench markers: the command that reproduces it, the table and the goals."""
    command = (
        f"python -m lib_ctxrep bench --batches {args.batches} --steps {args.steps} --guidance {args.guidance} "
        f"--window {args.window:g} --windows {args.windows} --seed {args.seed} "
        f"--seed-sets {getattr(args, 'seed_sets', 1)} --batch {args.batch} --jobs {getattr(args, 'jobs', 1)} --readme"
    )
    sets = getattr(args, "seed_sets", 1)
    lines = [
        f"Reproduce: `{command}` (same numbers for the same seed and thread count). Means over {sets} seed set(s) "
        f"(seeds from {args.seed}, sets {SEED_SET_STRIDE} apart) of {args.batches} batches of {args.batch} per class; "
        "95 % intervals over the batches (Student t); the gain is paired with base on the same seeds.",
        "",
        text,
        "",
    ]
    lines += [f"- {'met' if met else '**not met**'}: {name} — {numbers}" for name, met, numbers in checks]
    return "\n".join(lines)


def _windows(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(w) for w in text.split(",") if w.strip())
        for w in values:
            RepulsionConfig(window=w)  # the library's own range check and message
    except ValueError as exc:
        raise SystemExit(f"--windows {text!r}: {exc}") from None
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of ``python -m lib_ctxrep bench``."""
    from .cli import existing_file, fraction, fractions, new_file, non_negative, one_of_each, whole
    from .reference.data import CLASSES
    from .reference.model import DEFAULT_GUIDANCE, DEFAULT_SHIFT, DEFAULT_STEPS

    parser.add_argument("--batches", type=whole(1), default=8, help="batches per class (seeds differ per batch)")
    parser.add_argument("--batch", type=whole(2), default=8, help="samples per batch")
    parser.add_argument(
        "--classes", type=whole(1, len(CLASSES)), default=len(CLASSES),
        help=f"how many of the {len(CLASSES)} classes (prompts)",
    )  # fmt: skip
    parser.add_argument("--steps", type=whole(1), default=DEFAULT_STEPS, help="sampling steps")
    parser.add_argument("--guidance", type=non_negative, default=DEFAULT_GUIDANCE, help="true-CFG scale")
    parser.add_argument("--shift", type=non_negative, default=DEFAULT_SHIFT, help="flow-matching time shift")
    parser.add_argument("--window", type=fraction, default=0.05, help="contextual repulsion's window (the default's)")
    parser.add_argument(
        "--windows",
        type=fractions,
        default="0.2,0.3",
        help="comma-separated longer windows, each swept at three strengths",
    )
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument(
        "--jobs", type=whole(1), default=1,
        help="worker processes of one thread each (the numbers are a one-thread run's; times share the cores)",
    )  # fmt: skip
    parser.add_argument(
        "--seed-sets", type=whole(1), default=3,
        help=f"seed sets, each of its own seeds ({SEED_SET_STRIDE} apart): the intervals span them all",
    )  # fmt: skip
    families = {m.family for m in default_methods(0.05, (0.2,))}
    parser.add_argument(
        "--methods", type=one_of_each(families), default="", help="comma-separated families to run (default: all)"
    )
    parser.add_argument(
        "--weights", type=existing_file, default=None, help="a reference-weights file (default: the committed one)"
    )
    parser.add_argument("--out", default="bench_out", help="folder for bench.json and pareto.png (created)")
    parser.add_argument(
        "--readme", action="store_true", help="write the results table into docs/benchmark.md and the plot beside it"
    )
    parser.add_argument(
        "--readme-path", type=new_file, default=str(Path(__file__).resolve().parents[2] / "docs" / "benchmark.md"),
        help="the Markdown file (with the bench markers) to write the table into",
    )  # fmt: skip
