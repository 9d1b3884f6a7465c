"""Train the reference model: rectified flow with prompt dropout on the procedural data, deterministic for a seed.

What it is for: producing (and reproducing) the committed ``lib_ctxrep/evaluation/reference/weights.safetensors``::

    python -m lib_ctxrep.evaluation.reference.train --out lib_ctxrep/evaluation/reference/weights.safetensors --seed 0

Training is resumable: with ``--minutes`` a session stops when its budget is spent and leaves the whole training
state (weights, optimizer, EMA, the data stream's generator, the step) beside the weights in ``OUT.state``; the same
command with ``--resume`` goes on from there, and the result is the same, bit for bit, as one uninterrupted run.

Each step draws a fresh batch from the data stream of ``seed`` (:func:`.data.make_batch`), replaces the prompt by the
null prompt with probability ``p_drop`` (so classifier-free guidance works), draws a prompt template per sample
(:data:`.text.TEMPLATES`), a time ``t`` (logit-normal by default, as SD3 trains; or uniform) and noise, and regresses
the velocity ``noise - x0`` at ``x_t = (1 - t) x0 + t noise``. AdamW with linear warm-up and cosine decay, gradient
clipping, and an exponential moving average of the weights (the EMA is what is saved, in float16 by default: half the
file, and a rounding far below the model's own error). Runs on the CPU with a fixed number of threads and deterministic
algorithms, so the same seed and arguments give the same weights on the same machine and torch build.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from . import data, text
from .model import REFERENCE_CONFIG, build_model, velocity


def train(
    out: str | Path | None = None,
    seed: int = 0,
    steps: int = 6000,
    batch: int = 64,
    lr: float = 1.5e-3,
    p_drop: float = 0.15,
    ema_decay: float = 0.999,
    warmup: int = 200,
    threads: int = 2,
    minutes: float | None = None,
    stop_after: int | None = None,
    save_every: int | None = None,
    log_every: int = 100,
    config: dict[str, Any] | None = None,
    quiet: bool = False,
    t_dist: str = "logit-normal",
    save_dtype: str = "float16",
    resume: bool = False,
) -> dict[str, torch.Tensor]:
    """Train from scratch and return the EMA state dict (float32 holding ``save_dtype`` values: exactly what is saved);
    with ``out``, also save it as safetensors.

    ``steps`` sets the learning-rate schedule's length. ``minutes`` stops early when the wall-clock budget is spent
    (the number of steps done is stored in the metadata as ``steps``; ``stop_after`` = that number reproduces such a
    run exactly). ``save_every`` also saves the EMA weights to ``out`` every that many steps (checkpoints to
    evaluate during training) and the training state to ``OUT.state``. ``resume`` goes on from ``OUT.state`` (the
    arguments must be those of the run that wrote it). Everything else is deterministic for ``seed``.
    """
    config = dict(REFERENCE_CONFIG if config is None else config)
    settings = dict(
        config=config, seed=seed, steps=steps, batch=batch, lr=lr, p_drop=p_drop, ema_decay=ema_decay, warmup=warmup,
        t_dist=t_dist, data_version=data.DATA_VERSION, text_embedding_seed=text.EMBEDDING_SEED,
    )  # fmt: skip
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        model = build_model(config, seed=seed).train()
        ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.01)
        g = torch.Generator().manual_seed(seed)
        start = time.time()
        first, running, earlier = 0, None, 0.0
        state_path = None if out is None else Path(str(out) + ".state")
        if resume:
            if state_path is None or not state_path.exists():
                raise FileNotFoundError(f"--resume: no training state at {state_path}")
            saved = torch.load(state_path, weights_only=False)
            if saved["settings"] != settings:
                changed = sorted(k for k in settings if saved["settings"].get(k) != settings[k])
                raise ValueError(f"--resume: {state_path} was written with other settings ({', '.join(changed)})")
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            ema = saved["ema"]
            g.set_state(saved["generator"])
            first, running, earlier = saved["step"], saved["running"], saved["train_seconds"]

        def meta(done: int, loss: float | None) -> dict[str, Any]:
            return {
                "config": config,
                "seed": seed,
                "steps": done,
                "schedule_steps": steps,
                "batch": batch,
                "lr": lr,
                "p_drop": p_drop,
                "ema_decay": ema_decay,
                "warmup": warmup,
                "data_version": data.DATA_VERSION,
                "text_embedding_seed": text.EMBEDDING_SEED,
                "final_loss": loss,
                "train_seconds": round(earlier + time.time() - start, 1),
                "threads": threads,
                "t_dist": t_dist,
                "save_dtype": save_dtype,
                "torch": torch.__version__,
            }

        done = first
        for step in range(first, steps):
            if minutes is not None and time.time() - start > minutes * 60:
                break
            if stop_after is not None and step >= stop_after:
                break
            scale = min(1.0, (step + 1) / warmup) * (0.55 + 0.45 * math.cos(math.pi * step / steps))
            for group in opt.param_groups:
                group["lr"] = lr * scale
            x0, class_ids, _ = data.make_batch(batch, g)
            drop = torch.rand(batch, generator=g) < p_drop
            templates = torch.randint(len(text.TEMPLATES), (batch,), generator=g)
            embeds, pooled_vec = text.encode_classes(class_ids, drop, templates)
            if t_dist == "logit-normal":  # SD3's training-time distribution: more weight on mid-trajectory times
                t = torch.sigmoid(torch.randn(batch, generator=g))
            else:
                t = torch.rand(batch, generator=g)
            noise = torch.randn(x0.shape, generator=g)
            tt = t[:, None, None, None]
            xt = (1 - tt) * x0 + tt * noise
            pred = velocity(model, xt, t, embeds, pooled_vec)
            loss = ((pred - (noise - x0)) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            decay = min(ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
            done = step + 1
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            if out is not None and save_every and done % save_every == 0:
                _save(ema, out, meta(done, running), save_dtype)
                _save_state(state_path, settings, model, opt, ema, g, done, running, earlier + time.time() - start)
            if not quiet and (done % log_every == 0 or done == steps):
                elapsed = time.time() - start
                print(
                    f"step {done}/{steps} loss {running:.4f} lr {lr * scale:.2e} "
                    f"{elapsed:.0f}s ({elapsed / (done - first):.3f}s/step)",
                    flush=True,
                )
    finally:
        torch.use_deterministic_algorithms(deterministic)
    state = {k: v.to(getattr(torch, save_dtype)).float().contiguous() for k, v in ema.items()}  # what is saved
    if out is not None:
        if done < steps:  # stopped early: leave what --resume needs
            _save_state(state_path, settings, model, opt, ema, g, done, running, earlier + time.time() - start)
        _save(state, out, meta(done, running), save_dtype)
        if not quiet:
            print(f"saved {out} ({Path(out).stat().st_size / 1e6:.2f} MB) after {done} steps", flush=True)
    return state


def _save_state(
    path: Path, settings: dict[str, Any], model: Any, opt: Any, ema: dict, g: torch.Generator, step: int,
    running: float | None, seconds: float,
) -> None:  # fmt: skip
    """Everything a resumed run needs to continue exactly (written atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    torch.save(
        {
            "settings": settings, "model": model.state_dict(), "optimizer": opt.state_dict(), "ema": ema,
            "generator": g.get_state(), "step": step, "running": running, "train_seconds": seconds,
        },
        tmp,
    )  # fmt: skip
    tmp.replace(path)


def _save(state: dict[str, torch.Tensor], out: str | Path, meta: dict[str, Any], dtype: str = "float32") -> None:
    from safetensors.torch import save_file

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(out) + ".tmp")
    tensors = {k: v.to(getattr(torch, dtype)).contiguous() for k, v in state.items()}
    save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in meta.items()})
    tmp.replace(out)


def main(argv: list[str] | None = None) -> None:
    """Command line:
    ``python -m lib_ctxrep.evaluation.reference.train --out PATH [--seed 0] [--steps N] [--minutes M]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="where to write the safetensors weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=6000, help="length of the learning-rate schedule")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--p-drop", type=float, default=0.15, help="share of prompts replaced by the null prompt")
    parser.add_argument("--ema", type=float, default=0.999, help="EMA decay of the saved weights")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=None, help="optional wall-clock cap (stops early)")
    parser.add_argument(
        "--stop-after", type=int, default=None, help="stop after this many steps (reproduces a capped run)"
    )
    parser.add_argument("--save-every", type=int, default=None, help="also save a checkpoint every this many steps")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument(
        "--resume", action="store_true", help="go on from OUT.state, written by a run that stopped early (--minutes)"
    )
    parser.add_argument("--t-dist", choices=("uniform", "logit-normal"), default="logit-normal", help="training times")
    parser.add_argument(
        "--save-dtype", choices=("float16", "float32"), default="float16", help="dtype of the saved weights"
    )
    options = vars(parser.parse_args(argv))
    options["ema_decay"] = options.pop("ema")
    train(options.pop("out"), **options)


if __name__ == "__main__":
    main()
