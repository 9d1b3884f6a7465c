"""Measure the reference model's sample quality and typicality bias against the known data distribution.

What it is for: the numbers a batch-diversity method should move (mode recall up, over-representation of the frequent
modes down) at a fidelity it should keep. ``python -m lib_ctxrep.evaluation.reference.evaluate --guidance 1 4`` prints,
per guidance scale, the fidelity, the class accuracy, the mode recall within batches of 8 and over all samples of a
class (next to what as many samples of the data itself would reach), the share of the most frequent modes and attribute
values (next to their data probability) and the total-variation distance to the data's mode distribution.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from . import metrics
from .data import CLASSES, classify
from .model import DEFAULT_GUIDANCE, DEFAULT_SHIFT, DEFAULT_STEPS, load_reference_model, sample


def class_seeds(class_id: int, n: int, seed: int = 0) -> list[int]:
    """The seeds of a class's ``n`` samples: ``seed * 10**6 + class_id * 10**5 + i``."""
    return [seed * 10**6 + class_id * 10**5 + i for i in range(n)]


def sample_classes(
    model: Any,
    n_per_class: int,
    guidance: float,
    steps: int = DEFAULT_STEPS,
    shift: float = DEFAULT_SHIFT,
    seed: int = 0,
    chunk: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_per_class`` samples of every class: ``(images [4 n, 3, 16, 16], class_ids [4 n])``, class-major.

    Sample ``i`` of class ``k`` uses seed ``seed * 10**6 + k * 10**5 + i``, so consecutive runs of 8 are what a user
    gets from one batch of 8 with consecutive seeds.
    """
    images, classes = [], []
    for k in range(len(CLASSES)):
        seeds = class_seeds(k, n_per_class, seed)
        for i in range(0, n_per_class, chunk):
            part = seeds[i : i + chunk]
            images.append(sample(model, [k] * len(part), part, steps=steps, guidance=guidance, shift=shift))
            classes.append(torch.full((len(part),), k, dtype=torch.long))
    return torch.cat(images), torch.cat(classes)


def typicality_report(
    model: Any,
    guidance: float = DEFAULT_GUIDANCE,
    n_per_class: int = 256,
    steps: int = DEFAULT_STEPS,
    shift: float = DEFAULT_SHIFT,
    seed: int = 0,
    batch: int = 8,
    min_prob: float = metrics.DEFAULT_MIN_PROB,
) -> dict[str, Any]:
    """Sample ``n_per_class`` images of each class at ``guidance`` and measure them (see the module docstring)."""
    images, classes = sample_classes(model, n_per_class, guidance, steps, shift, seed)
    r = classify(images)
    top1, top1_data = metrics.top_mode_share(r, classes, k=1)
    top5, top5_data = metrics.top_mode_share(r, classes, k=5)
    return {
        "guidance": guidance,
        "n_per_class": n_per_class,
        "steps": steps,
        "fidelity": metrics.fidelity(r),
        "fidelity_per_class": {
            name: float(r.valid[classes == k].float().mean()) for k, name in enumerate(CLASSES) if (classes == k).any()
        },
        "class_accuracy": metrics.class_accuracy(r, classes),
        f"mode_recall_batch{batch}": metrics.batch_mode_recall(r, classes, batch, min_prob),
        f"data_mode_recall_batch{batch}": metrics.expected_mode_recall(batch, min_prob),
        "mode_recall_all": metrics.mode_recall(r, classes, min_prob),
        "data_mode_recall_all": metrics.expected_mode_recall(n_per_class, min_prob),
        "top1_mode_share": top1,
        "top1_mode_data": top1_data,
        "top5_mode_share": top5,
        "top5_mode_data": top5_data,
        "attribute_top_share": metrics.attribute_shares(r, classes),
        "total_variation": metrics.total_variation(r, classes),
    }


def commitment(
    model: Any,
    guidance: float = DEFAULT_GUIDANCE,
    n_per_class: int = 16,
    steps: int = DEFAULT_STEPS,
    shift: float = DEFAULT_SHIFT,
    seed: int = 0,
) -> list[dict[str, float]]:
    """When the model commits to a mode: per step, the share of the accepted final samples whose prediction of the
    clean image at that step (``x0``) already shows their final mode, position and colour.

    What it is for: a method that acts in the first steps (contextual repulsion's window) can only move a sample to
    another mode while the model has not committed to one; this says how much of the trajectory that is."""
    seeds = {k: class_seeds(k, n_per_class, seed) for k in range(len(CLASSES))}
    classes = [k for k in seeds for _ in seeds[k]]
    predictions: list[tuple[float, torch.Tensor]] = []
    final = classify(
        sample(
            model, classes, [s for k in seeds for s in seeds[k]], steps=steps, guidance=guidance, shift=shift,
            callback=lambda i, t, x, x0: predictions.append((t, x0.clone())),
        )
    )  # fmt: skip
    ok = final.valid & (final.class_id == torch.tensor(classes))
    out = []
    for t, x0 in predictions:
        r = classify(x0.clamp(-1, 1))
        same = (r.class_id == final.class_id) & (r.mode == final.mode)
        out.append(
            {
                "t": round(t, 4),
                "mode": float(same[ok].float().mean()) if ok.any() else float("nan"),
                "position": float((r.position == final.position)[ok].float().mean()) if ok.any() else float("nan"),
                "colour": float((r.colour == final.colour)[ok].float().mean()) if ok.any() else float("nan"),
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line:
    ``python -m lib_ctxrep.evaluation.reference.evaluate [--weights PATH] [--guidance 1 4] [--n 256]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default=None, help="safetensors weights (default: the committed ones)")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, DEFAULT_GUIDANCE])
    parser.add_argument("--n", type=int, default=256, help="samples per class")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--shift", type=float, default=DEFAULT_SHIFT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the reports to this file")
    parser.add_argument(
        "--commitment", action="store_true",
        help="also report, per step, the share of samples whose x0 prediction already shows their final mode",
    )  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_reference_model(args.weights)
    reports = []
    for g in args.guidance:
        start = time.time()
        report = typicality_report(model, g, args.n, args.steps, args.shift, args.seed)
        if args.commitment:
            report["commitment"] = commitment(model, g, 16, args.steps, args.shift, args.seed + 1)
        report["seconds"] = round(time.time() - start, 1)
        reports.append(report)
        print(json.dumps(report, indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=1))


if __name__ == "__main__":
    main()
