"""Cross-batch memory at batch count x batch size on the reference model (the README's 2 x 4 numbers).

Each group of ``--batch`` seeds of a class is generated as ``batch / --sub`` batches of ``--sub`` with contextual
repulsion (the reference model's setting) and the memory off, on with text tokens (the default), or on with all
tokens (``memory_image``); batch mode recall and the other bench columns are measured over each group, as in
``python -m lib_ctxrep bench`` (same seeds for the same ``--seed``)::

    python tools/memory_batch_count.py --seed 0 --sub 4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib_ctxrep.bench import _scheduler, evaluate  # noqa: E402
from lib_ctxrep.config import RepulsionConfig  # noqa: E402
from lib_ctxrep.integrations.diffusers import apply_contextual_repulsion  # noqa: E402
from lib_ctxrep.reference import model as ref  # noqa: E402
from lib_ctxrep.reference.data import CLASSES  # noqa: E402

VARIANTS = {"none": (False, False), "text": (True, False), "all": (True, True)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sub", type=int, default=4, help="batch size; --batch / --sub batches per group")
    parser.add_argument("--batch", type=int, default=8, help="images per group (recall is measured per group)")
    parser.add_argument("--batches", type=int, default=8, help="groups per class")
    parser.add_argument("--memory", default="none,text,all", help=f"memory variants, from {', '.join(VARIANTS)}")
    args = parser.parse_args(argv)
    if args.batch % args.sub:
        raise SystemExit(f"--sub {args.sub} must divide --batch {args.batch}")
    unknown = sorted(set(args.memory.split(",")) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"--memory: unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    kw = dict(steps=ref.DEFAULT_STEPS, guidance=ref.DEFAULT_GUIDANCE, shift=ref.DEFAULT_SHIFT)
    model = ref.load_reference_model()
    for variant in args.memory.split(","):
        memory, image = VARIANTS[variant]
        config = RepulsionConfig(
            strength=ref.REPULSION_STRENGTH, window=ref.REPULSION_WINDOW, chunks=("uncond", "cond"),
            memory=memory, memory_image=image,
        )  # fmt: skip
        start, images, classes = time.perf_counter(), [], []
        for c in range(len(CLASSES)):
            for k in range(args.batches):
                seeds = [args.seed + 100_000 * c + args.batch * k + i for i in range(args.batch)]
                with apply_contextual_repulsion(model, config, scheduler=_scheduler(kw["steps"], kw["shift"])) as h:
                    for j in range(0, args.batch, args.sub):
                        images.append(ref.sample(model, [c] * args.sub, seeds[j : j + args.sub], **kw))
                        h.new_batch()
                classes.append(torch.full((args.batch,), c))
        r = evaluate(torch.cat(images), torch.cat(classes), args.batch)
        print(
            f"{args.batch // args.sub} x {args.sub}, memory {variant}: batch recall {r['recall']:.3f}, fidelity "
            f"{r['fidelity']:.3f}, Vendi modes {r['vendi_modes']:.2f}, pixels {r['vendi_pixels']:.3f} "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
