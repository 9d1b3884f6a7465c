"""``python -m lib_ctxrep overhead``: the hooked Flux transformer forward against the plain one, side by side.

Realistic widths (D = 3072, 512 text tokens, batch 4) with fewer blocks and image tokens on a CPU, full Flux depth
and 1024 x 1024 (4096 image tokens) on a GPU. Settings are the paper's Flux settings: M = 50 inner iterations,
tau = 1 (the call is at sigma = 1, inside the window), every double block and every single block (all tokens).

Printed: the floor (bytes and FLOPs of the repulsion against those of the forward), the median time of each
variant measured alternately, their ratio, the inactive-hook ratio (a call outside the window), the cost per block,
that the [B, N, D] work does not grow with M, and the peak-memory growth.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from ..config import RepulsionConfig
from ..engine import RepulsionEngine
from ..repulsion import combine_rows, gram_matrix

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


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
    return model.to(dtype).eval()


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


def run(args: argparse.Namespace) -> dict:
    """Run the benchmark and print its report; returns the numbers."""
    from ..integrations.diffusers import apply_contextual_repulsion

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    heads, b, n, img = args.heads, args.batch, args.text_tokens, args.image_tokens
    d = heads * 128
    model = build_flux(heads, args.double, args.single, device, dtype)
    active = flux_inputs(b, n, img, 1.0, device, dtype)
    inactive = flux_inputs(b, n, img, 0.5, device, dtype)
    config = RepulsionConfig(iterations=args.iterations, window=0.05, single_blocks=args.single_mode)
    itemsize = torch.tensor([], dtype=dtype).element_size()

    # The floor: per hooked block, one Gram matrix and one combination over [B, P].
    p_double, p_single = n * d, (n + img if args.single_mode == "all" else n) * d
    rep_flops = args.double * 4 * b * b * p_double + args.single * 4 * b * b * p_single
    rep_bytes = args.double * 3 * b * p_double * itemsize + args.single * 3 * b * p_single * itemsize
    params = sum(p.numel() for p in model.parameters())
    fwd_flops = 2 * params * b * (n + img)  # linear layers; attention adds more
    print(f"[overhead] device={device} dtype={args.dtype} B={b} text tokens={n} image tokens={img} D={d}")
    print(
        f"[overhead] blocks: {args.double} double + {args.single} single ({args.single_mode} tokens), "
        f"{params / 1e6:.0f} M parameters, M={args.iterations}"
    )
    print(
        f"[overhead] floor: repulsion {rep_flops / 1e9:.2f} GFLOP and {rep_bytes / 2**20:.0f} MiB moved per call, "
        f"forward >= {fwd_flops / 1e12:.2f} TFLOP -> FLOP share {rep_flops / fwd_flops:.2e}"
    )

    with torch.inference_mode():
        plain_fn = lambda: model(**active)  # noqa: E731
        hooked_fn = lambda: model(**active)  # noqa: E731
        inactive_fn = lambda: model(**inactive)  # noqa: E731
        for _ in range(args.warmup):
            plain_fn()
        plain_peak = _peak(device, plain_fn)
        with apply_contextual_repulsion(model, config):
            hooked_peak = _peak(device, hooked_fn)

        # Alternate the variants so that drifts of the machine hit all alike; a plain call costs the same at any
        # sigma, so one plain timing serves as the reference for the calls inside and outside the window.
        times: dict[str, list[float]] = {"plain": [], "hooked": [], "hooked_late": []}
        variants = [("plain", plain_fn, False), ("hooked", hooked_fn, True), ("hooked_late", inactive_fn, True)]
        for r in range(args.repeats):
            for name, fn, hooked in variants if r % 2 == 0 else variants[::-1]:  # ABC CBA ...: drift cancels
                if hooked:
                    with apply_contextual_repulsion(model, config):
                        times[name].append(_time(fn, device))
                else:
                    times[name].append(_time(fn, device))
        med = {k: min(v) for k, v in times.items()}

        # Cost per block, and independence of the [B, N, D] work from M.
        x = torch.randn(b, n, d, device=device, dtype=dtype)
        engine = RepulsionEngine(config)
        engine.begin_call(0.0, ("cond",))
        per_block = {}
        for m in (1, args.iterations):
            engine.config.iterations = m
            engine.process("probe", [x])
            per_block[m] = statistics.median(_time(lambda: engine.process("probe", [x]), device) for _ in range(5))
        engine.config.iterations = args.iterations
        counts = {"gram": 0, "combine": 0}
        import lib_ctxrep.repulsion as rep

        def counted(name, fn):
            def wrapper(*a, **k):
                counts[name] += 1
                return fn(*a, **k)

            return wrapper

        rep.gram_matrix, rep.combine_rows = counted("gram", gram_matrix), counted("combine", combine_rows)
        try:
            engine.process("probe", [x])
            passes_m = dict(counts)
            engine.config.iterations = 1
            counts.update(gram=0, combine=0)
            engine.process("probe", [x])
            passes_1 = dict(counts)
        finally:
            rep.gram_matrix, rep.combine_rows = gram_matrix, combine_rows

    ratio = med["hooked"] / med["plain"]
    late = med["hooked_late"] / med["plain"]
    hooked_blocks = args.double + args.single
    print(
        f"[overhead] forward, best of {args.repeats}: plain {med['plain'] * 1e3:.1f} ms, hooked inside the window "
        f"{med['hooked'] * 1e3:.1f} ms, hooked outside the window {med['hooked_late'] * 1e3:.1f} ms"
    )
    print(f"[overhead] ratio inside the window (hooked / plain): {ratio:.4f}  (+{(ratio - 1) * 100:.2f} %)")
    print(f"[overhead] ratio outside the window (inactive hooks): {late:.4f}")
    whole = (med["hooked"] + (args.steps - 1) * med["hooked_late"]) / (args.steps * med["plain"])
    print(f"[overhead] whole {args.steps}-step generation, repulsion on the first step only: ratio {whole:.4f}")
    print(
        f"[overhead] per block (text stream [{b}, {n}, {d}]): {per_block[1] * 1e3:.2f} ms at M=1, "
        f"{per_block[args.iterations] * 1e3:.2f} ms at M={args.iterations}; "
        f"{(med['hooked'] - med['plain']) / hooked_blocks * 1e3:.2f} ms measured per hooked block in the forward"
    )
    attributed = 1 + hooked_blocks * per_block[args.iterations] / med["plain"]
    print(f"[overhead] ratio attributed from the per-block cost: {attributed:.4f}  (+{(attributed - 1) * 100:.2f} %)")
    print(
        f"[overhead] passes over [B, N, D] per block: M=1 -> {passes_1['gram']} Gram + "
        f"{passes_1['combine']} combination, "
        f"M={args.iterations} -> {passes_m['gram']} Gram + {passes_m['combine']} combination"
    )
    stream_bytes = b * n * d * itemsize
    if plain_peak is not None and hooked_peak is not None:
        grow = hooked_peak - plain_peak
        print(
            f"[overhead] peak {'memory' if device.type == 'cuda' else 'RSS'}: plain {plain_peak / 2**20:.0f} MiB, "
            f"hooked {hooked_peak / 2**20:.0f} MiB, growth "
            f"{grow / 2**20:.1f} MiB = {grow / stream_bytes:.2f} copies of the text stream "
            f"({stream_bytes / 2**20:.1f} MiB)"
        )
    search = spell_search(args.spell_set, args.spell_dim, nprobe=args.nprobe) if args.spell_set > 0 else None
    return dict(
        ratio=ratio,
        inactive_ratio=late,
        whole=whole,
        per_block=per_block,
        passes=(passes_1, passes_m),
        times=med,
        spell_search=search,
    )


def spell_search(n: int, dim: int, *, queries: int = 64, k: int = 16, nprobe: int = 8, seed: int = 0) -> dict:
    """SPELL's protected-set search: time per query of exact search and of the faiss IVF-Flat index (when installed)
    on ``n`` synthetic latents of ``dim`` values (clustered, like latents of similar images), and the index's recall
    of the exact k nearest neighbours. Printed and returned."""
    from ..spell import ReferenceSet

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
    from .cli import whole

    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
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
