"""``python -m lib_ctxrep overhead``: the hooked Flux transformer forward against the plain one, side by side.

Realistic widths (D = 3072, 512 text tokens, batch 4) with fewer blocks and image tokens on a CPU, full Flux depth
and 1024 x 1024 (4096 image tokens) on a GPU. Settings are the paper's Flux settings: M = 50 inner iterations,
tau = 1 (the call is at sigma = 1, inside the window), every double block and every single block (all tokens).

Printed, after a line per measurement stage as it starts (a CPU run takes minutes): the floor (bytes and FLOPs of the
repulsion against those of the forward), the best time of each variant measured alternately, the extra cost inside
and outside the window, the cost per block, that the [B, N, D] work does not grow with M, and the peak-memory growth.
A cost is the difference of two noisy timings: it is printed with the noise (the spread of the repeated timings), and
as "below measurement noise" when it does not exceed it, never as a negative figure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch

from .. import repulsion as rep
from ..config import RepulsionConfig
from ..engine import RepulsionEngine
from ..repulsion import centred_gram, coefficient_flow, combine_rows

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
VARIANTS = ("plain", "hooked", "hooked_late")
"""The timed forwards: without hooks, hooked inside the window (sigma = 1) and hooked outside it (sigma = 0.5).
With several implementations (:data:`PATHS`) "hooked" is the default one and the others are timed as well."""
#: The library's implementations compared side by side, as its environment switches: the default (inner loop on the
#: device where the Triton kernels run), the host inner loop, and the versions that run without Triton and numba.
PATHS = (
    {},
    {"CTXREP_INNER_LOOP": "host"},
    {"CTXREP_KERNELS": "torch", "CTXREP_HOST_LOOP": "numpy", "CTXREP_INNER_LOOP": "host"},
)


def _stage(text: str) -> None:
    print(f"[overhead] ... {text}", flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


@dataclass
class Timing:
    """Repeated timings (seconds) of one variant: the best is the estimate, the spread (max - min) its noise."""

    times: list[float]

    @property
    def best(self) -> float:
        """The fastest repeat: the least disturbed by the rest of the machine."""
        return min(self.times)

    @property
    def spread(self) -> float | None:
        """max - min of the repeats; None with one repeat (no spread to estimate the noise from)."""
        return max(self.times) - min(self.times) if len(self.times) > 1 else None


def noise(*timings: Timing) -> float | None:
    """The noise of a difference between these variants' best times: the largest spread of their repeats."""
    spreads = [t.spread for t in timings]
    return None if any(s is None for s in spreads) else max(spreads)


def format_cost(cost: float, noise: float | None, unit: str = "ms", scale: float = 1e3) -> str:
    """An extra cost measured as the difference of two noisy timings (``cost`` and ``noise`` in seconds, or as
    fractions for ``unit="%"`` with ``scale=100``), as text: the figure with its noise, or "below measurement noise"
    when it does not exceed the noise. A negative difference is noise, never printed as a figure."""
    if noise is None:
        if cost <= 0:
            return "below measurement noise (one repeat: noise not estimated; use --repeats 3 or more)"
        return f"+{cost * scale:.2f} {unit} (one repeat: noise not estimated)"
    if cost < -noise:
        return (
            f"below measurement noise (+/- {noise * scale:.2f} {unit}; the hooked variant measured faster by more "
            "than that, so the machine's speed drifted: rerun, or raise --repeats)"
        )
    if cost <= noise:
        return f"below measurement noise (+/- {noise * scale:.2f} {unit})"
    return f"+{cost * scale:.2f} {unit} (noise +/- {noise * scale:.2f} {unit})"


def build_flux(width_heads: int, double: int, single: int, device: torch.device, dtype: torch.dtype):
    """A FluxTransformer2DModel of Flux's width (heads x 128) with the given depth, random weights, on ``device``."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    with torch.device(device):
        model = FluxTransformer2DModel(
            num_layers=double,
            num_single_layers=single,
            num_attention_heads=width_heads,
            attention_head_dim=128,
            guidance_embeds=True,
        )
    # nn.Module.to: diffusers' own .to warns about float32 modules to keep, and Flux has none
    return torch.nn.Module.to(model, dtype).eval()


def flux_inputs(batch: int, text: int, image: int, sigma: float, device: torch.device, dtype: torch.dtype) -> dict:
    """Inputs of one transformer call: distinct latents per sample, one prompt's embeddings for the whole batch."""
    g = torch.Generator().manual_seed(1)
    embeds = torch.randn(1, text, 4096, generator=g).expand(batch, -1, -1)
    return dict(
        hidden_states=torch.randn(batch, image, 64, generator=g).to(device, dtype),
        encoder_hidden_states=embeds.to(device, dtype).contiguous(),
        pooled_projections=torch.randn(1, 768, generator=g).expand(batch, -1).to(device, dtype).contiguous(),
        timestep=torch.full((batch,), sigma, device=device, dtype=dtype),
        guidance=torch.full((batch,), 3.5, device=device, dtype=dtype),
        img_ids=torch.zeros(image, 3, device=device),
        txt_ids=torch.zeros(text, 3, device=device),
        return_dict=False,
    )


def _peak(device: torch.device, fn: Callable[[], object]) -> int | None:
    """Peak memory (bytes) after running ``fn``: CUDA's allocator peak, or on the CPU the process's peak RSS
    (monotone, so call this for the plain variant first: the difference is what the hooked one adds on top)."""
    if device.type != "cuda":
        try:
            import resource
        except ImportError:  # not on Windows
            return None
        fn()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def print_floor(args: argparse.Namespace, model: Any, itemsize: int) -> None:
    """The setting and the floor: per hooked block, one Gram matrix and one combination over [B, P]."""
    b, n, img, d = args.batch, args.text_tokens, args.image_tokens, args.heads * 128
    p_double, p_single = n * d, (n + img if args.single_mode == "all" else n) * d
    rep_flops = args.double * 4 * b * b * p_double + args.single * 4 * b * b * p_single
    rep_bytes = args.double * 3 * b * p_double * itemsize + args.single * 3 * b * p_single * itemsize
    params = sum(p.numel() for p in model.parameters())
    fwd_flops = 2 * params * b * (n + img)  # linear layers; attention adds more
    print(f"[overhead] device={args.device} dtype={args.dtype} B={b} text tokens={n} image tokens={img} D={d}")
    print(
        f"[overhead] blocks: {args.double} double + {args.single} single ({args.single_mode} tokens), "
        f"{params / 1e6:.0f} M parameters, M={args.iterations}"
    )
    print(
        f"[overhead] floor: repulsion {rep_flops / 1e9:.2f} GFLOP and {rep_bytes / 2**20:.0f} MiB moved per call, "
        f"forward >= {fwd_flops / 1e12:.2f} TFLOP -> FLOP share {rep_flops / fwd_flops:.2e}",
        flush=True,
    )


def measure_peaks(
    model: Any, config: RepulsionConfig, inputs: dict, device: torch.device, warmup: int
) -> tuple[int | None, int | None]:
    """Peak memory of a plain and of a hooked forward (bytes; None where it cannot be read), after ``warmup`` calls."""
    from ..integrations.diffusers import apply_contextual_repulsion

    if warmup:
        _stage(f"warm-up: {warmup} plain forward{'s' if warmup > 1 else ''}")
    for _ in range(warmup):
        model(**inputs)
    _stage("peak memory: one plain forward, then one hooked")
    plain = _peak(device, lambda: model(**inputs))
    with apply_contextual_repulsion(model, config):
        hooked = _peak(device, lambda: model(**inputs))
    return plain, hooked


def time_forwards(
    model: Any,
    config: RepulsionConfig,
    active: dict,
    inactive: dict,
    device: torch.device,
    repeats: int,
    paths: dict[str, dict[str, str]] | None = None,
) -> dict[str, Timing]:
    """Each variant of :data:`VARIANTS` timed ``repeats`` times, alternately (ABC CBA ...) so that drifts of the
    machine hit all alike; with ``paths`` (label -> environment, the first being the default) the hooked call inside
    the window is timed once per path, as "hooked" and "hooked:<label>". A plain call costs the same at any sigma, so
    one plain timing is the reference for the calls inside and outside the window."""
    from ..integrations.diffusers import apply_contextual_repulsion

    paths = paths or {"default": {}}
    labels = list(paths)
    names = ["plain", *(f"hooked:{label}" for label in labels), "hooked_late"]
    times: dict[str, list[float]] = {name: [] for name in names}
    calls = {"plain": active, "hooked_late": inactive} | {f"hooked:{label}": active for label in labels}
    settings = {"plain": {}, "hooked_late": paths[labels[0]]} | {f"hooked:{k}": v for k, v in paths.items()}
    for r in range(repeats):
        _stage(f"timing, round {r + 1}/{repeats}: plain, hooked inside the window ({len(labels)} implementation"
               f"{'s' if len(labels) > 1 else ''}) and hooked outside it")  # fmt: skip
        for name in names if r % 2 == 0 else names[::-1]:
            forward = partial(model, **calls[name])
            if name == "plain":
                times[name].append(_time(forward, device))
                continue
            with _environment(settings[name]), apply_contextual_repulsion(model, config):
                times[name].append(_time(forward, device))
    out = {name: Timing(t) for name, t in times.items()}
    out["hooked"] = out[f"hooked:{labels[0]}"]
    return out


def path_label(x: torch.Tensor) -> str:
    """What runs for a block's rows ``x`` under the current environment: where the inner loop runs, and which
    implementation computes the Gram matrix and the combination."""
    rows = x.reshape(x.shape[0], -1)
    streams = "triton" if rep._kernels_for([rows], None) is not None else "torch"
    return f"inner loop {rep.inner_loop(x)}, Gram and combination {streams}"


def distinct_paths(x: torch.Tensor) -> dict[str, dict[str, str]]:
    """The implementations of :data:`PATHS` that differ on this machine for rows like ``x``, by label (the default
    first): on a CPU without numba, for instance, only one."""
    out: dict[str, dict[str, str]] = {}
    for setting in PATHS:
        with _environment(setting):
            out.setdefault(path_label(x), setting)
    return out


def time_per_block(config: RepulsionConfig, x: torch.Tensor, device: torch.device) -> dict[int, float]:
    """Median time of one block's repulsion on the text stream ``x`` [B, N, D] at M = 1 and at the configured M."""
    _stage(f"cost per block: the repulsion alone on a text stream {list(x.shape)}, at M=1 and M={config.iterations}")
    per_block = {}
    for m in (1, config.iterations):
        engine = RepulsionEngine(replace(config, iterations=m))
        engine.begin_call(0.0, ("cond",))
        engine.process("probe", [x])  # warm-up
        per_block[m] = statistics.median(_time(partial(engine.process, "probe", [x]), device) for _ in range(5))
    return per_block


@contextlib.contextmanager
def _counting(*names: str):
    """Count the calls of these functions of :mod:`lib_ctxrep.repulsion` inside the block (the library calls them
    through the module); yields the counts by name."""
    counts = dict.fromkeys(names, 0)
    originals = {name: getattr(rep, name) for name in names}

    def counted(name: str) -> Callable:
        def wrapper(*a, **k):
            counts[name] += 1
            return originals[name](*a, **k)

        return wrapper

    for name in names:
        setattr(rep, name, counted(name))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(rep, name, original)


def count_passes(config: RepulsionConfig, x: torch.Tensor) -> dict[int, dict[str, int]]:
    """Gram matrices and row combinations over [B, N, D] that one block's repulsion computes, at M = 1 and at the
    configured M (the same: the inner iterations run on the B x B kernel)."""
    passes = {}
    for m in (1, config.iterations):
        engine = RepulsionEngine(replace(config, iterations=m))
        engine.begin_call(0.0, ("cond",))
        with _counting("centred_gram", "combine_rows") as counts:
            engine.process("probe", [x])
        passes[m] = {"gram": counts["centred_gram"], "combine": counts["combine_rows"]}
    return passes


def device_loop_us(batch: int, iterations: int, device: torch.device, repeats: int = 20) -> float | None:
    """Median device time (microseconds, CUDA events) of the device inner loop (:func:`lib_ctxrep.kernels.flow`)
    for one group of ``batch`` near-identical rows over a whole ``iterations``-step loop; None where it does not run
    (it needs CUDA and Triton)."""
    g = torch.Generator().manual_seed(0)
    rows = (torch.randn(1, 4096, generator=g) + 0.1 * torch.randn(batch, 4096, generator=g)).to(device)
    if device.type != "cuda" or rep.inner_loop(rows) != "device":
        return None
    from .. import kernels
    from ..vendi import NULL_EIG

    centred = kernels.centred_gram([rows])[None]
    run = partial(kernels.flow, centred, batch, iterations, 0.3 / iterations, False, NULL_EIG * batch)
    run()  # compile
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def count_transfers(model: Any, config: RepulsionConfig, inputs: dict) -> tuple[int, int]:
    """Device-to-host transfers (calls of :func:`lib_ctxrep.repulsion.to_host`) in one hooked forward inside the
    window, and the number of hooked blocks."""
    from ..integrations.diffusers import apply_contextual_repulsion

    with _counting("to_host") as counts, apply_contextual_repulsion(model, config) as handle:
        model(**inputs)
    return counts["to_host"], handle.engine.repelled_blocks


@contextlib.contextmanager
def _environment(setting: dict[str, str]):
    """Set these environment variables for the block (the library's switches of implementation)."""
    previous = {name: os.environ.get(name) for name in setting}
    os.environ.update(setting)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def host_loop_us(batch: int, iterations: int, repeats: int = 30) -> dict[str, float]:
    """Median host time (microseconds) of one inner iteration for a group of ``batch`` near-identical rows (the
    first step's case: cosine about 0.99), timed over a whole ``iterations``-step loop: for the loop the library
    uses ("numba" where installed) and for numpy."""
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(1, 4096, generator=g, dtype=torch.float64) + 0.1 * torch.randn(
        batch, 4096, generator=g, dtype=torch.float64
    )
    gram = (rows @ rows.T).numpy()
    out = {}
    for loop in sorted({rep.host_loop(), "numpy"}):
        with _environment({"CTXREP_HOST_LOOP": loop}):
            coefficient_flow(gram, batch, iterations, strength=0.3)  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                coefficient_flow(gram, batch, iterations, strength=0.3)
                times.append(time.perf_counter() - start)
        out[loop] = statistics.median(times) / iterations * 1e6
    return out


@dataclass
class StreamCost:
    """The measured time and the bytes moved, against the floor, of the Gram matrix and the combination over one
    block's repelled rows [B, P], for one implementation ("torch", or "triton": :mod:`lib_ctxrep.kernels`)."""

    path: str
    shape: tuple[int, ...]
    gram_s: float
    combine_s: float
    floor_gram: int  #: one read of the rows
    gram_bytes: int  #: torch: a float32 copy (read, write), centring (read, write), product (read); triton: one read
    floor_combine: int  #: one read and one write of the rows
    combine_bytes: int  #: torch: the product reads the rows twice (added term, factor) and writes; triton: the floor


def stream_costs(x: torch.Tensor, device: torch.device, repeats: int = 5) -> list[StreamCost]:
    """Time :func:`centred_gram` and :func:`combine_rows` on the rows ``x`` [B, ...] (median of ``repeats``) with
    the torch versions, and with the Triton kernels where they run for these rows (CUDA with Triton 3)."""
    rows = x.reshape(x.shape[0], -1)
    b, p, item = rows.shape[0], rows.shape[1], rows.element_size()
    work = 8 if rows.dtype == torch.float64 else 4
    delta = torch.full((b, b), 1e-3, device=device, dtype=torch.float32)
    elements = b * p
    paths = ["torch"] + (["triton"] if rep._kernels_for([rows], None) is not None else [])
    costs = []
    for path in paths:
        with _environment({"CTXREP_KERNELS": path}):
            centred_gram([rows])
            combine_rows(delta, rows)
            gram_s = statistics.median(_time(partial(centred_gram, [rows]), device) for _ in range(repeats))
            combine_s = statistics.median(_time(partial(combine_rows, delta, rows), device) for _ in range(repeats))
        torch_path = path == "torch"
        costs.append(
            StreamCost(
                path,
                tuple(x.shape),
                gram_s,
                combine_s,
                elements * item,
                elements * (item + 4 * work) if torch_path else elements * item,
                2 * elements * item,
                3 * elements * item if torch_path else 2 * elements * item,
            )
        )
    return costs


def print_block_costs(
    transfers: dict[str, tuple[int, int]],
    loop_us: dict[tuple[int, int], dict[str, float]],
    device_us: dict[tuple[int, int], float | None],
    streams: list[StreamCost],
    dtype: str,
) -> None:
    """Per hooked block: transfers (per implementation), inner-loop time on the host and on the device, and the Gram
    and combination against the floor."""
    for label, (count, blocks) in transfers.items():
        print(
            f"[overhead] per hooked block, {label}: {count / max(blocks, 1):.2f} device-to-host transfers ({count} "
            f"in a hooked forward of {blocks} blocks)"
        )
    loops = sorted({loop for per_loop in loop_us.values() for loop in per_loop})
    for batch in sorted({rows for rows, _ in loop_us}):
        for loop in loops:
            print(
                f"[overhead] host inner loop ({loop}, float64), B={batch}: "
                + ", ".join(
                    f"{per_loop[loop]:.1f} us per iteration at M={m}"
                    for (rows, m), per_loop in loop_us.items()
                    if rows == batch
                )
            )
        measured = {m: us for (rows, m), us in device_us.items() if rows == batch and us is not None}
        if not measured:
            print(f"[overhead] device inner loop, B={batch}: not measured here (it runs on CUDA, with Triton)")
            continue
        print(
            f"[overhead] device inner loop (Triton, float64), B={batch}: "
            + ", ".join(
                f"{us:.1f} us per block at M={m} ({us / m:.2f} us per iteration)" for m, us in measured.items()
            )
        )
    for cost in streams:
        mb = 1e6
        print(
            f"[overhead] stream {list(cost.shape)} {dtype}, {cost.path}: Gram {cost.gram_s * 1e3:.2f} ms "
            f"({cost.gram_bytes / mb:.0f} MB moved, floor {cost.floor_gram / mb:.0f} MB: "
            f"{cost.gram_bytes / cost.floor_gram:.1f}x; {cost.floor_gram / cost.gram_s / 1e9:.1f} GB/s of rows), "
            f"combination {cost.combine_s * 1e3:.2f} ms ({cost.combine_bytes / mb:.0f} MB moved, floor "
            f"{cost.floor_combine / mb:.0f} MB: {cost.combine_bytes / cost.floor_combine:.1f}x)"
        )


def _scaled(value: float | None, by: float) -> float | None:
    return None if value is None else value / by


def _ratio_text(value: float, rel_noise: float | None) -> str:
    """A time ratio against plain: the ratio and its extra cost, or only that the cost is below the noise."""
    cost = format_cost(value - 1, rel_noise, "%", 100)
    return f"{value:.4f}, extra cost {cost}" if value - 1 > (rel_noise or 0) else f"extra cost {cost}"


def report(args: argparse.Namespace, times: dict[str, Timing], per_block: dict[int, float]) -> dict[str, Any]:
    """Print the forward timings and the costs derived from them, each against its noise; returns the numbers."""
    plain, hooked, late = (times[k] for k in VARIANTS)
    m, blocks, steps = args.iterations, args.double + args.single, args.steps
    spreads = ", ".join("n/a" if t.spread is None else f"{t.spread * 1e3:.1f}" for t in (plain, hooked, late))
    print(
        f"[overhead] forward, best of {args.repeats}: plain {plain.best * 1e3:.1f} ms, hooked inside the window "
        f"{hooked.best * 1e3:.1f} ms, hooked outside the window {late.best * 1e3:.1f} ms "
        f"(spread of the repeats, max - min: {spreads} ms)"
    )
    ratio, inactive = hooked.best / plain.best, late.best / plain.best
    whole = (hooked.best + (steps - 1) * late.best) / (steps * plain.best)
    inside_noise = noise(plain, hooked)
    print(
        f"[overhead] ratio inside the window (hooked / plain): {_ratio_text(ratio, _scaled(inside_noise, plain.best))}"
    )
    print(
        "[overhead] ratio outside the window (inactive hooks): "
        f"{_ratio_text(inactive, _scaled(noise(plain, late), plain.best))}"
    )
    print(
        f"[overhead] whole {steps}-step generation, repulsion on the first step only: "
        f"{_ratio_text(whole, _scaled(noise(plain, hooked, late), plain.best))}"
    )
    measured = format_cost((hooked.best - plain.best) / blocks, _scaled(inside_noise, blocks))
    print(
        f"[overhead] per block (text stream [{args.batch}, {args.text_tokens}, {args.heads * 128}]): "
        f"{per_block[1] * 1e3:.2f} ms at M=1, {per_block[m] * 1e3:.2f} ms at M={m}; measured per hooked block in "
        f"the forward: {measured}"
    )
    attributed = 1 + blocks * per_block[m] / plain.best
    print(f"[overhead] ratio attributed from the per-block cost: {attributed:.4f}  (+{(attributed - 1) * 100:.2f} %)")
    sides = {}
    for name, timing in times.items():
        if not name.startswith("hooked:"):
            continue
        label = name.removeprefix("hooked:")
        sides[label] = dict(
            ratio=timing.best / plain.best, whole=(timing.best + (steps - 1) * late.best) / (steps * plain.best)
        )
        print(
            f"[overhead] side by side, {label}: inside the window "
            f"{_ratio_text(sides[label]['ratio'], _scaled(noise(plain, timing), plain.best))}; whole {steps}-step "
            f"generation {_ratio_text(sides[label]['whole'], _scaled(noise(plain, timing, late), plain.best))}; per "
            f"hooked block {format_cost((timing.best - plain.best) / blocks, _scaled(noise(plain, timing), blocks))}"
        )
    return dict(
        ratio=ratio,
        inactive_ratio=inactive,
        whole=whole,
        per_block=per_block,
        noise=noise(*times.values()),
        paths=sides,
    )


def print_peaks(peaks: tuple[int | None, int | None], stream_bytes: int, device: torch.device) -> None:
    """The peak-memory growth of the hooked forward, also in copies of one text stream."""
    plain, hooked = peaks
    if plain is None or hooked is None:
        return
    grow = hooked - plain
    print(
        f"[overhead] peak {'memory' if device.type == 'cuda' else 'RSS'}: plain {plain / 2**20:.0f} MiB, "
        f"hooked {hooked / 2**20:.0f} MiB, growth {grow / 2**20:.1f} MiB = {grow / stream_bytes:.2f} copies of the "
        f"text stream ({stream_bytes / 2**20:.1f} MiB)"
    )


def run(args: argparse.Namespace) -> dict:
    """Run the measurement (a line per stage as it starts) and print its report; returns the numbers."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    b, n, img, d = args.batch, args.text_tokens, args.image_tokens, args.heads * 128
    _stage(
        f"building a Flux transformer of width {d}: {args.double} double + {args.single} single blocks, random weights"
    )
    model = build_flux(args.heads, args.double, args.single, device, dtype)
    config = RepulsionConfig(iterations=args.iterations, window=0.05, single_blocks=args.single_mode)
    itemsize = torch.tensor([], dtype=dtype).element_size()
    print_floor(args, model, itemsize)
    _stage(f"loading the host inner loop ({rep.host_loop()}) before anything is measured")
    active = flux_inputs(b, n, img, 1.0, device, dtype)
    inactive = flux_inputs(b, n, img, 0.5, device, dtype)
    with torch.inference_mode():
        x = torch.randn(b, n, d, device=device, dtype=dtype)
        paths = distinct_paths(x)
        peaks = measure_peaks(model, config, active, device, args.warmup)
        times = time_forwards(model, config, active, inactive, device, args.repeats, paths)
        per_block = time_per_block(config, x, device)
        passes = count_passes(config, x)
        _stage("transfers per hooked block, inner loop on the host and the device, Gram and combination per stream")
        transfers = {}
        for label, setting in paths.items():
            with _environment(setting):
                transfers[label] = count_transfers(model, config, active)
        batches = sorted({4, b})
        loop_us = {(rows, m): host_loop_us(rows, m) for rows in batches for m in (8, 50)}
        device_us = {(rows, m): device_loop_us(rows, m, device) for rows in batches for m in (8, 50)}
        streams = stream_costs(x, device)
        if args.single and args.single_mode == "all":
            streams += stream_costs(torch.randn(b, n + img, d, device=device, dtype=dtype), device)
    numbers = report(args, times, per_block)
    print_block_costs(transfers, loop_us, device_us, streams, args.dtype)
    m = args.iterations
    print(
        f"[overhead] passes over [B, N, D] per block: M=1 -> {passes[1]['gram']} Gram + {passes[1]['combine']} "
        f"combination, M={m} -> {passes[m]['gram']} Gram + {passes[m]['combine']} combination"
    )
    print_peaks(peaks, b * n * d * itemsize, device)
    search = spell_search(args.spell_set, args.spell_dim, nprobe=args.nprobe) if args.spell_set > 0 else None
    return dict(
        numbers,
        passes=(passes[1], passes[m]),
        times={k: t.best for k, t in times.items()},
        spell_search=search,
        transfers=transfers,
        host_loop_us=loop_us,
        device_loop_us=device_us,
        streams=streams,
    )


def spell_search(n: int, dim: int, *, queries: int = 64, k: int = 16, nprobe: int = 8, seed: int = 0) -> dict:
    """SPELL's protected-set search: time per query of exact search and of the faiss IVF-Flat index (when installed)
    on ``n`` synthetic latents of ``dim`` values (clustered, like latents of similar images), and the index's recall
    of the exact k nearest neighbours. Printed and returned."""
    from ..spell import ReferenceSet

    _stage(f"SPELL search: {n} synthetic latents x {dim}, exact search, then the faiss index when installed")
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(max(1, n // 200), dim, generator=g) * 3
    data = centres[torch.randint(len(centres), (n,), generator=g)] + torch.randn(n, dim, generator=g)
    q = data[torch.randint(n, (queries,), generator=g)] + 0.5 * torch.randn(queries, dim, generator=g)
    exact = ReferenceSet(data, exact_limit=n)
    start = time.perf_counter()
    truth = exact.search(q, k)
    exact_ms = (time.perf_counter() - start) * 1e3 / queries
    out = dict(n=n, dim=dim, k=k, exact_ms=exact_ms)
    print(f"[overhead] SPELL search, {n} latents x {dim}: exact {exact_ms:.2f} ms per query (k={k})")
    try:
        start = time.perf_counter()
        approx = ReferenceSet(data, exact_limit=0, nprobe=nprobe)
        build_s = time.perf_counter() - start
    except ImportError:
        print("[overhead] SPELL search: faiss not installed (pip install faiss-cpu); approximate index not measured")
        return out
    start = time.perf_counter()
    found = approx.search(q, k)
    approx_ms = (time.perf_counter() - start) * 1e3 / queries
    recall = sum(len(set(a.tolist()) & set(t.tolist())) for a, t in zip(found, truth, strict=True)) / truth.numel()
    print(
        f"[overhead] SPELL search, faiss IVF-Flat (nlist {approx.index.nlist}, nprobe {nprobe}): "
        f"built in {build_s:.1f} s, {approx_ms:.3f} ms per query ({exact_ms / approx_ms:.0f}x faster than exact), "
        f"recall@{k} {recall:.3f}"
    )
    out.update(approx_ms=approx_ms, build_s=build_s, recall=recall, nprobe=nprobe)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of ``python -m lib_ctxrep overhead``."""
    from .cli import device, whole

    parser.add_argument(
        "--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu", help="torch device"
    )
    parser.add_argument(
        "--dtype", default=None, choices=sorted(DTYPES), help="default: bfloat16 on GPU, float32 on CPU"
    )
    parser.add_argument("--heads", type=whole(1), default=24, help="attention heads of 128 channels (Flux: 24)")
    parser.add_argument("--double", type=whole(0), default=None, help="double blocks (default 1 on CPU, 19 on GPU)")
    parser.add_argument("--single", type=whole(0), default=None, help="single blocks (default 1 on CPU, 38 on GPU)")
    parser.add_argument("--batch", type=whole(2), default=4, help="images per batch")
    parser.add_argument("--steps", type=whole(1), default=20, help="steps of the whole generation (window: the first)")
    parser.add_argument("--text-tokens", type=whole(1), default=512, help="text tokens (Flux-dev: 512)")
    parser.add_argument("--image-tokens", type=whole(1), default=None, help="default 16 on CPU, 4096 on GPU (1024²)")
    parser.add_argument("--iterations", type=whole(1), default=50, help="M (the paper's Flux setting: 50)")
    parser.add_argument("--single-mode", default="all", choices=("all", "text"), help="single blocks: paper = all")
    parser.add_argument("--repeats", type=whole(1), default=None, help="timed calls (default 3 on CPU, 10 on GPU)")
    parser.add_argument("--warmup", type=whole(0), default=1, help="plain calls before timing")
    parser.add_argument(
        "--spell-set", type=whole(0), default=200_000, help="SPELL protected-set size to time (0: skip)"
    )
    parser.add_argument("--spell-dim", type=whole(1), default=64, help="values per latent in the SPELL search timing")
    parser.add_argument("--nprobe", type=whole(1), default=8, help="faiss cells searched per SPELL query")


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the device-dependent defaults (CPU: a short model that runs in about a minute on 2 cores)."""
    gpu = args.device.startswith("cuda")
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
    args.double = args.double if args.double is not None else (19 if gpu else 1)
    args.single = args.single if args.single is not None else (38 if gpu else 1)
    args.image_tokens = args.image_tokens if args.image_tokens is not None else (4096 if gpu else 16)
    args.repeats = args.repeats if args.repeats is not None else (10 if gpu else 3)
    return args
