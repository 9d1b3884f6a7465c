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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib_ctxrep.evaluation.bench import Method, run_method  # noqa: E402
from lib_ctxrep.evaluation.reference import model as ref  # noqa: E402
from lib_ctxrep.evaluation.reference.data import CLASSES  # noqa: E402

FAMILIES = {"none": "ours", "text": "memory", "all": "memory_image"}
"""Memory variant -> the bench family that runs it."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sub", type=int, default=4, help="batch size; --batch / --sub batches per group")
    parser.add_argument("--batch", type=int, default=8, help="images per group (recall is measured per group)")
    parser.add_argument("--batches", type=int, default=8, help="groups per class")
    parser.add_argument("--memory", default="none,text,all", help=f"memory variants, from {', '.join(FAMILIES)}")
    args = parser.parse_args(argv)
    if args.batch % args.sub:
        raise SystemExit(f"--sub {args.sub} must divide --batch {args.batch}")
    unknown = sorted(set(args.memory.split(",")) - set(FAMILIES))
    if unknown:
        raise SystemExit(f"--memory: unknown variant(s) {unknown}; choose from {', '.join(FAMILIES)}")
    model = ref.load_reference_model()
    options = {"window": ref.REPULSION_WINDOW, "batch_size": args.sub}
    for variant in args.memory.split(","):
        method = Method(f"memory {variant}", FAMILIES[variant], ref.REPULSION_STEP_STRENGTH, options)
        r = run_method(
            model, method, classes=list(range(len(CLASSES))), batches=args.batches, batch=args.batch,
            steps=ref.DEFAULT_STEPS, guidance=ref.DEFAULT_GUIDANCE, shift=ref.DEFAULT_SHIFT, seed=args.seed,
        )  # fmt: skip
        print(
            f"{args.batch // args.sub} x {args.sub}, memory {variant}: batch recall {r.recall:.3f}, fidelity "
            f"{r.fidelity:.3f}, Vendi modes {r.vendi_modes:.2f}, pixels {r.vendi_pixels:.3f} ({r.seconds:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
