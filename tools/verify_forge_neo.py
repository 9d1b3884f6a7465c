"""Verify the Forge front end (``lib_ctxrep.integrations.forge``) against a real Forge Neo backend, on CPU.

Usage::

    python tools/verify_forge_neo.py /path/to/forge-neo

The path must be a work tree of Forge Neo (Haoming02/sd-webui-forge-classic, branch ``neo``, or a verbatim copy of
it); the script refuses Forge main and Forge Classic. Nothing from Neo is copied here: the script imports Neo's own
backend from that path at run time (``backend.nn.flux``, ``backend.operations``, ``backend.modules.k_model``,
``backend.modules.k_prediction``, ``backend.patcher.unet``, ``backend.sampling``), builds a tiny Flux model with
random float32 weights the way Neo's ``backend/loader.py`` does (the model is constructed under
``using_forge_operations`` and its weights are loaded from a state dict), wraps it as Neo's
``backend/diffusion_engine/flux.py`` does (``UnetPatcher.from_model`` with ``PredictionFlux(...)`` of Flux-dev), and
runs Neo's ``sampling_function_inner`` with conditions compiled by Neo's ``compile_conditions``:

(a) cond only at CFG 1, (b) cond + uncond at CFG 3.5 in one batched call, (c) the same split into separate calls by the
low-VRAM path (``get_free_memory`` made to report 0 as seen from ``sampling_function``), (d) two AND sub-prompts +
uncond, (e) an uncond text of another length with ``single_blocks="text"``, (k) a Flux Kontext reference latent
(``dynamic_args["ref_latents"]``, appended to the image tokens by Neo's ``IntegratedFluxTransformer2DModel.forward``),
(s) ``single_blocks="all"`` with and without a reference (text + target image tokens repelled, reference tokens not);
at sigma 1.0 (inside the window) and 0.5 (outside), with and without repulsion; for a Flux.1-dev-like model and, where
the Neo version has it, a Flux.2-Klein-like one (same class: global modulation, patch size 1). Neo-specific checks:
Neo's ``DoubleStreamBlock`` and ``SingleStreamBlock`` update their inputs in place (``txt += ...``, ``x += ...``), so
the script checks that the repelled text really is what the next block receives, that a ``patches_replace["dit"]``
block patch of another extension does not hide the blocks from the hooks, that ``UnetPatcher.clone()`` keeps
``model_options`` (and so the wrapper), and that the cross-batch memory (``memory=True``) stores what the blocks
output, not what later blocks make of it in place.

Environment: Python 3.11+ (Neo recommends 3.13) with torch (CPU), numpy, einops, psutil, rich, safetensors,
diffusers, transformers, huggingface_hub (Neo's requirements.txt pins; newer Neo versions also import
comfy-kitchen); no GPU, no network, no model files, no webui. The script puts the Neo root and its
``modules_forge/packages/`` (bundled ``gguf``, ``huggingface_guess``) on ``sys.path`` and ``--cpu`` in ``sys.argv``
before the first ``backend`` import (Neo's ``backend/args.py`` and ``backend/memory_management.py`` read them at
import). ``backend/sampling/condition.py`` imports ``modules.shared`` (which needs gradio and the webui) without using
it; when that import fails and the file never uses ``shared.``, an empty stand-in module is registered for it.

It prints one line per check and ends with ``VERIFIED: <n> checks passed`` (exit 0) or the list of failures (exit 1);
exit 2 when the path is not a Forge Neo work tree or Neo's backend cannot be imported.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import io
import math
import re
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

# tools/ for forge_verify_common, which puts the repository root on sys.path (lib_ctxrep) and never imports Neo's
# backend (Neo() below puts it on sys.path first).
TOOLS = Path(__file__).resolve().parent
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

import torch  # noqa: E402
from forge_verify_common import (  # noqa: E402
    CONFIG,
    FLUX_BLOCKS,
    SIGMA_IN,
    B,
    Checks,
    ModelChecks,
    die,
    forward_hooks,
    git,
    keep,
    load_function,
    max_diff,
    prepare_model,
    removing,
    repulsion,
    stats_summary,
    tiny_flux_config,
    verify_spell,
    window_sigmas,
)
from forge_verify_common import Scenario as BaseScenario  # noqa: E402

from lib_ctxrep.integrations.forge import ForgeRepulsion  # noqa: E402

#: Files whose presence marks a Neo work tree (all imported or read below).
NEO_MARKERS = (
    "backend/args.py",
    "backend/nn/flux.py",
    "backend/operations.py",
    "backend/modules/k_model.py",
    "backend/modules/k_prediction.py",
    "backend/patcher/base.py",
    "backend/patcher/unet.py",
    "backend/sampling/sampling_function.py",
    "backend/sampling/condition.py",
    "backend/memory_management.py",
    "modules/sd_schedulers.py",
    "modules_forge/packages",
)
#: Source text that only Neo has (Forge main's flux.py has neither block patches nor Kontext references; Forge
#: Classic has no backend/ at all).
NEO_SIGNATURES = {
    "backend/nn/flux.py": ("blocks_replace", "ref_latents", "forward_orig"),
    "backend/args.py": ("dynamic_args", "ref_latents"),
}
#: Files whose hashes identify the Neo version (copies of Neo are often not git work trees).
FINGERPRINT_FILES = (
    "backend/nn/flux.py",
    "backend/patcher/base.py",
    "backend/patcher/unet.py",
    "backend/modules/k_model.py",
    "backend/sampling/sampling_function.py",
)

#: A tiny Flux.1-dev-like transformer (hidden 64 = 2 heads x 32 = sum(axes_dim)).
FLUX1_CONFIG = dict(tiny_flux_config(), out_channels=16, patch_size=2, guidance_embed=True)
#: A tiny Flux.2-Klein-like transformer, the same class with the flags huggingface_guess/detection.py sets for Flux.2
#: (global modulation, SiLU-gated MLP, no biases, 4 rope axes, patch 1, text position ids, "index" references).
FLUX2_CONFIG = dict(
    in_channels=16,
    out_channels=16,
    vec_in_dim=None,
    context_in_dim=32,
    hidden_size=64,
    mlp_ratio=3.0,
    num_heads=2,
    depth=2,
    depth_single_blocks=2,
    axes_dim=[8, 8, 8, 8],
    theta=2000,
    patch_size=1,
    qkv_bias=False,
    guidance_embed=False,
    txt_ids_dims=[3],
    global_modulation=True,
    mlp_silu_act=True,
    ops_bias=False,
    default_ref_method="index",
    ref_index_scale=10.0,
)


# --------------------------------------------------------------------------------------------------------------------
# Loading Neo
# --------------------------------------------------------------------------------------------------------------------
def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")


def neo_root_or_exit(path: str) -> Path:
    root = Path(path).expanduser().resolve()
    usage = "Usage: python tools/verify_forge_neo.py /path/to/forge-neo (Haoming02/sd-webui-forge-classic, branch neo)"
    if not root.is_dir():
        die(f"verify_forge_neo: {path!r} is not a directory.\n{usage}")
    missing = [m for m in NEO_MARKERS if not (root / m).exists()]
    if missing:
        die(f"verify_forge_neo: {path!r} is not a Forge Neo work tree (missing: {', '.join(missing)}).\n{usage}")
    for rel, needles in NEO_SIGNATURES.items():
        text = _read(root / rel)
        absent = [n for n in needles if n not in text]
        if absent:
            die(
                f"verify_forge_neo: {path!r} is not a Forge Neo work tree ({rel} lacks {', '.join(absent)}; "
                "Forge main? use tools/verify_forge.py for it).\n" + usage
            )
    return root


def token_spans(parts: list[torch.Tensor]) -> tuple[tuple[tuple[int, int], ...], int]:
    """Where the parts handed to the engine sit in the block output they are views of: each part's (first token,
    stop token) and the output's sequence length, read from the views' strides ([rows, tokens, dim], contiguous)."""
    spans = tuple((p.storage_offset() // p.stride(1), p.storage_offset() // p.stride(1) + p.shape[1]) for p in parts)
    return spans, parts[0].stride(0) // parts[0].stride(1)


class Neo:
    """Forge Neo's own backend modules, imported from a work tree."""

    def __init__(self, root: Path) -> None:
        if "backend" in sys.modules or "modules" in sys.modules:
            die("verify_forge_neo: a module named 'backend' or 'modules' is already imported; use a fresh process")
        for p in (str(root / "modules_forge" / "packages"), str(root)):
            if p not in sys.path:
                sys.path.insert(0, p)
        # Neo's backend/args.py parses sys.argv at import (strictly in newer versions): leave it only "--cpu"
        sys.argv[1:] = ["--cpu"]
        self.root = root
        self.notes: list[str] = []
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                from backend import args as neo_args
                from backend import memory_management, operations, state_dict
                from backend.modules import k_model, k_prediction
                from backend.nn import flux
                from backend.patcher.unet import UnetPatcher

                self._import_condition()
                from backend.sampling import condition, sampling_function
                from huggingface_guess import model_list
        except ImportError as exc:
            die(f"verify_forge_neo: cannot import Neo's backend from {root}: {exc!r} (install its dependencies)")
        if not neo_args.args.cpu:
            die("verify_forge_neo: Neo's backend.args did not see --cpu")
        self.args = neo_args
        self.mm = memory_management
        self.operations = operations
        self.state_dict = state_dict
        self.k_model = k_model
        self.k_prediction = k_prediction
        self.flux = flux
        self.UnetPatcher = UnetPatcher
        self.condition = condition
        self.sf = sampling_function
        self.model_list = model_list
        self.simple_scheduler = self._load_function("modules/sd_schedulers.py", "simple_scheduler")

    def _import_condition(self) -> None:
        """backend/sampling/condition.py does ``from modules import shared`` (gradio, the whole webui) and, in the
        versions checked, never uses it: register an empty stand-in only in that case."""
        try:
            import backend.sampling.condition  # noqa: F401
        except ImportError as exc:
            text = _read(self.root / "backend/sampling/condition.py")
            if "from modules import shared" not in text or re.search(r"\bshared\.", text):
                raise
            for name in [n for n in sys.modules if n == "backend.sampling" or n.startswith("backend.sampling.")]:
                del sys.modules[name]
            sys.modules["modules.shared"] = types.ModuleType("modules.shared")
            self.notes.append(
                f"modules.shared stood in by an empty module (condition.py imports it unused; real import: {exc!r})"
            )

    def _load_function(self, relpath: str, name: str) -> Callable:
        """One top-level function of a Neo file that cannot be imported without the webui: compiled from the work
        tree's own source, not copied."""
        path = self.root / relpath
        return load_function(path, _read(path), name)

    def describe(self) -> str:
        out = (git(self.root, "rev-parse", "--abbrev-ref", "HEAD", "HEAD") or "").split()
        where = f"branch {out[0]}, commit {out[1][:12]}" if len(out) == 2 else "not a git work tree"
        digest = hashlib.sha256()
        for rel in FINGERPRINT_FILES:
            digest.update(_read(self.root / rel).encode())
        return f"{where}; backend fingerprint {digest.hexdigest()[:12]}"

    # --- dynamic_args: a dict in some Neo versions, a class with __getitem__/__setitem__ in others -----------------
    def get_dynamic(self, key: str) -> Any:
        return self.args.dynamic_args[key]

    def set_dynamic(self, key: str, value: Any) -> None:
        self.args.dynamic_args[key] = value

    # --- the model, built as backend/loader.py and backend/diffusion_engine/flux.py do -------------------------------
    def flux_unet(self, variant: str = "flux1", seed: int = 0):
        """A tiny model of ``variant`` ("flux1": Flux.1-dev, "flux2": Flux.2 Klein), or None if this Neo version does
        not have it."""
        cls = self.flux.IntegratedFluxTransformer2DModel
        flux_config = FLUX1_CONFIG if variant == "flux1" else FLUX2_CONFIG
        params = inspect.signature(cls.__init__).parameters
        required = [
            n
            for n, p in params.items()
            if n != "self" and p.default is inspect.Parameter.empty and p.kind != p.VAR_KEYWORD
        ]
        missing = [n for n in required if n not in flux_config]
        if missing:
            raise RuntimeError(f"Neo's IntegratedFluxTransformer2DModel needs {missing}: update {variant} config")
        unknown = [k for k in flux_config if k not in params]
        if variant == "flux2" and unknown:
            self.notes.append(f"no Flux.2 in this Neo version (IntegratedFluxTransformer2DModel lacks {unknown})")
            return None
        config = {k: v for k, v in flux_config.items() if k in params}
        torch.manual_seed(seed)
        weights = {k: v.clone() for k, v in cls(**config).state_dict().items()}  # random init by plain torch.nn
        cpu = torch.device("cpu")
        self.set_dynamic("ops", None)  # loader.py resets it; using_forge_operations names the operations in use
        with self.operations.using_forge_operations(device=cpu, dtype=torch.float32, manual_cast_enabled=False):
            model = cls(**config).to(device=cpu, dtype=torch.float32)
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            self.state_dict.load_state_dict(model, weights)
        if log.getvalue().strip():
            raise RuntimeError(f"loading the state dict into Neo's model: {log.getvalue().strip()}")
        model.config = config
        prepare_model(model, self.mm, initial_device=cpu)
        # The predictor as diffusion_engine/flux.py makes it for Flux-dev: from the model config in newer Neo versions
        # (base.py _get_predictor), from Flux-dev's shift parameters in older ones.
        # For Flux.2 Klein: diffusion_engine/flux2.py, PredictionFlux2(estimated_config) or, in newer versions,
        # base.py _get_predictor's PredictionFlux(estimated_config).
        model_config = self.model_list.Flux if variant == "flux1" else getattr(self.model_list, "Flux2K4B", None)
        if model_config is None:
            self.notes.append("no Flux.2 in this Neo version (huggingface_guess has no Flux2K4B)")
            return None
        prediction_flux = self.k_prediction.PredictionFlux
        if "model_config" in inspect.signature(prediction_flux.__init__).parameters:
            predictor = prediction_flux(model_config)
        elif variant == "flux2":
            predictor = self.k_prediction.PredictionFlux2(model_config)
        else:
            predictor = prediction_flux(
                seq_len=4096, base_seq_len=256, max_seq_len=4096, base_shift=0.5, max_shift=1.15
            )
        with contextlib.redirect_stdout(io.StringIO()):
            return self.UnetPatcher.from_model(
                model=model, diffusers_scheduler=None, config=model_config, k_predictor=predictor
            )


# --------------------------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------------------------
class Scenario(BaseScenario):
    """The Flux model with its fixed inputs (and a Kontext reference latent); runs Neo's sampling_function_inner.

    Flux.1: T5 + pooled CLIP + distilled guidance (diffusion_engine/flux.py); Flux.2 Klein (``pooled=False``): the
    text tensor only (flux2.py). Conditions are cut to the rows of the batch sampled."""

    def __init__(self, neo: Neo, name: str, unet, ctx_len: int = 8, pooled: bool = True) -> None:
        super().__init__(neo, name, unet, ctx_len, guidance=pooled, vector=pooled, reference=True)
        self.neo = neo
        self.patch = unet.model.diffusion_model.patch_size

    def conditioning(self, text: dict, rows: int) -> dict | torch.Tensor:
        if len(text) == 1:
            return text["crossattn"][:rows]
        return {k: v[:rows] for k, v in text.items()}


@contextlib.contextmanager
def kontext_reference(neo: Neo, ref: torch.Tensor):
    """What Neo's Flux engine does for a Kontext model: get_learned_conditioning sets dynamic_args["ref_latents"]."""
    previous = neo.get_dynamic("ref_latents")
    neo.set_dynamic("ref_latents", [ref])
    try:
        yield
    finally:
        neo.set_dynamic("ref_latents", previous)


def verify_flux(neo: Neo, sc: Scenario, check: Checks) -> None:
    unet = sc.unet
    dm = unet.model.diffusion_model
    model = ModelChecks(sc, check, hooked_blocks=4, expect_blocks=FLUX_BLOCKS, check_finite=True)
    model.cases("model_function_wrapper called by Neo, cond_or_uncond")

    # (k) Flux Kontext: a reference latent appended to the image tokens -----------------------------------------------
    for tag, sigma, inside in window_sigmas("(k) Kontext reference latent, cfg 3.5"):
        plain = sc.sample(unet, sigma, 3.5)
        seq: list[int] = []
        probe = dm.single_blocks[0].register_forward_pre_hook(
            lambda m, a, k, seq=seq: seq.append(a[0].shape[1]), with_kwargs=True
        )
        with removing([probe]), kontext_reference(neo, sc.ref):
            job, spy, base, out = model.compare(sigma, 3.5, repulsion(single_blocks="text"))
        tokens = sc.ctx_len + 2 * (8 // sc.patch) ** 2  # text + target image + reference image tokens
        check(
            f"{tag}: the reference changes the output and lengthens the joint sequence to {tokens} tokens",
            not torch.allclose(plain, base) and seq and set(seq) == {tokens},
            f"sequence lengths {sorted(set(seq))}",
        )
        model.after_run(tag, job, spy, out, base, inside)
        if inside:
            model.groups(
                f"{tag}: stats: uncond then cond per block, {B} rows each (text rows only)", job, ["uncond", "cond"]
            )
    check("(k) dynamic_args['ref_latents'] restored", neo.get_dynamic("ref_latents") == [])

    # (s) single_blocks="all": text + target image tokens are repelled, Kontext reference tokens are not -------------
    image_tokens = (8 // sc.patch) ** 2  # Neo's process_img: (h / patch) x (w / patch) tokens per latent
    for with_ref in (False, True):
        tag = f"(s) single_blocks='all'{' + Kontext reference' if with_ref else ''}, cfg 3.5, sigma {SIGMA_IN}"
        ctx = kontext_reference(neo, sc.ref) if with_ref else contextlib.nullcontext()
        with ctx:
            base = sc.sample(unet, SIGMA_IN, 3.5)
            job, clone, spy = sc.patched(repulsion(single_blocks="all"))
            spans: list[tuple] = []
            process = job.engine.process

            def recording_process(block, parts, process=process, spans=spans, **kw):
                if block.startswith("single."):
                    spans.append(token_spans(parts))
                return process(block, parts, **kw)

            job.engine.process = recording_process
            out = sc.sample(clone, SIGMA_IN, 3.5)
        model.after_run(tag, job, spy, out, base, True)
        total = sc.ctx_len + image_tokens + (image_tokens if with_ref else 0)
        want = (((0, sc.ctx_len), (sc.ctx_len, sc.ctx_len + image_tokens)), total)
        check(
            f"{tag}: single blocks repel exactly the {sc.ctx_len} text + {image_tokens} target image tokens "
            f"of {total} (patch {sc.patch})",
            spans and all(span == want for span in spans),
            f"(repelled token spans, sequence length) per single block: {sorted(set(spans))}",
        )

    # (f) in-place blocks: the repelled text is what the next block gets ----------------------------------------------
    verify_in_place(neo, sc, check)

    # (g) another extension's patches_replace["dit"] block patches --------------------------------------------------
    tag = "(g) patches_replace['dit'] block patches of another extension"
    called: list[str] = []

    def passthrough(name: str) -> Callable:
        def patch(args: dict, extra: dict) -> dict:
            called.append(name)
            return extra["original_block"](args)

        return patch

    host = unet.clone()
    for i in range(len(dm.double_blocks)):
        host.set_model_patch_replace(passthrough(f"double.{i}"), "dit", "double_block", i)
    for i in range(len(dm.single_blocks)):
        host.set_model_patch_replace(passthrough(f"single.{i}"), "dit", "single_block", i)
    base = sc.sample(host, SIGMA_IN, 3.5)
    check(
        f"{tag}: pass-through patches are called and change nothing",
        called and torch.equal(base, sc.sample(unet, SIGMA_IN, 3.5)),
        f"{len(called)} calls",
    )
    reference_job, reference_clone, _ = sc.patched()
    reference = sc.sample(reference_clone, SIGMA_IN, 3.5)
    called.clear()
    job, clone, spy = sc.patched(unet=host)
    out = sc.sample(clone, SIGMA_IN, 3.5)
    check(
        f"{tag}: hooks still fire through original_block (same result as without the patches)",
        called and torch.equal(out, reference) and len(job.engine.stats) == len(reference_job.engine.stats),
        f"{len(called)} patch calls, {stats_summary(job)}",
    )
    check(f"{tag}: no forward hook left", forward_hooks(dm) == 0 and job.attached_hooks == 0)

    model.chained_wrapper(check_clone=True)

    # an exception (e.g. an interrupt) inside an in-window model call ---------------------------------------------
    tag = "exception inside an in-window call"

    def failing_wrapper(apply_model, args):
        raise KeyboardInterrupt("interrupted")

    host = unet.clone()
    host.set_model_unet_function_wrapper(failing_wrapper)
    job, clone, _ = sc.patched(unet=host)
    try:
        sc.sample(clone, SIGMA_IN, 3.5)
        raised = False
    except KeyboardInterrupt:
        raised = True
    check(
        f"{tag}: propagates, no forward hook left, engine inactive",
        raised and forward_hooks(dm) == 0 and job.attached_hooks == 0 and not job.engine.active,
    )

    # the patched clone cloned again (another script cloning after this one) ------------------------------------------
    tag = "clone of the patched clone"
    job1, clone1, _ = sc.patched()
    out1 = sc.sample(clone1, SIGMA_IN, 3.5)
    job2 = ForgeRepulsion(CONFIG, record_stats=True)
    clone2 = unet.clone()
    job2.patch(clone2)
    again = clone2.clone()
    out2 = sc.sample(again, SIGMA_IN, 3.5)
    check(
        f"{tag}: still carries the wrapper and gives the same result",
        "model_function_wrapper" in again.model_options and torch.equal(out1, out2) and job2.engine.stats,
        stats_summary(job2),
    )

    model.shared_patcher()
    window = model.schedule_window(neo.simple_scheduler, "Neo")
    predictor = unet.model.predictor
    check("PredictorWindow reads Neo's predictor sigma table (not the 1 - sigma fallback)", window._table is not None)
    # Not used by the adapter; reported because Neo versions differ here (Forge main: 1 - p).
    samples = {p: predictor.percent_to_sigma(p) for p in (0.05, 0.3, 0.9)}
    convention = "1 - p" if all(math.isclose(v, 1 - p) for p, v in samples.items()) else "shifted"
    print(
        f"  [NOTE] predictor.percent_to_sigma is {convention}: "
        + ", ".join(
            f"p={p}: sigma {v:.4f} -> PredictorWindow progress {window.progress(v):.4f}" for p, v in samples.items()
        )
    )


def verify_in_place(neo: Neo, sc: Scenario, check: Checks) -> None:
    """Neo's DoubleStreamBlock does ``txt += ...`` and SingleStreamBlock ``x += ...`` on their inputs."""
    unet = sc.unet
    dm = unet.model.diffusion_model
    length = sc.ctx_len
    tag = "(f) in-place blocks"

    def sample_capturing(patcher, cfg: float) -> dict[str, torch.Tensor]:
        """Sample, recording the txt every block receives (single blocks: the first ``length`` tokens)."""
        store: dict[str, torch.Tensor] = {}
        handles = []
        for i, block in enumerate(dm.double_blocks):
            handles.append(
                block.register_forward_pre_hook(
                    lambda m, a, k, i=i: keep(store, f"double.{i}", k["txt"].clone()), with_kwargs=True
                )
            )
        for i, block in enumerate(dm.single_blocks):
            handles.append(
                block.register_forward_pre_hook(
                    lambda m, a, k, i=i: keep(store, f"single.{i}", a[0][:, :length].clone()), with_kwargs=True
                )
            )
        with removing(handles):
            sc.sample(patcher, SIGMA_IN, cfg)
        return store

    # The blocks really work in place (what makes Neo different from Forge main here).
    seen_in: dict[str, torch.Tensor] = {}
    seen_out: dict[str, tuple] = {}
    block = dm.double_blocks[0]
    h1 = block.register_forward_pre_hook(lambda m, a, k: keep(seen_in, "txt", k["txt"]), with_kwargs=True)
    h2 = block.register_forward_hook(lambda m, a, o: keep(seen_out, "out", o))
    with removing([h1, h2]):
        sc.sample(unet, SIGMA_IN, 1.0)
    check(
        f"{tag}: Neo's DoubleStreamBlock returns its input txt tensor, updated in place",
        "out" in seen_out and seen_out["out"][1] is seen_in.get("txt"),
    )

    for branch_cfg, name in ((1.0, "cond only"), (3.5, "cond+uncond")):
        plain = sample_capturing(unet, branch_cfg)
        job, clone, _ = sc.patched()
        returned: dict[str, torch.Tensor] = {}
        returned_ref: dict[str, torch.Tensor] = {}
        process = job.engine.process

        def recording_process(block_name, parts, process=process, returned=returned, returned_ref=returned_ref, **kw):
            new = process(block_name, parts, **kw)
            if new is not None:
                returned[block_name] = new[0].clone()
                returned_ref[block_name] = new[0]
            return new

        job.engine.process = recording_process
        got = sample_capturing(clone, branch_cfg)
        check(
            f"{tag}, {name}: double block 1 receives the repelled txt of double block 0",
            torch.equal(got["double.1"], returned["double.0"])
            and not torch.allclose(got["double.1"], plain["double.1"]),
            max_diff(got["double.1"], plain["double.1"]) + " vs plain",
        )
        check(
            f"{tag}, {name}: single block 0 receives the repelled txt of double block 1 as its first {length} tokens",
            torch.equal(got["single.0"], returned["double.1"]),
        )
        mutated = not torch.equal(returned_ref["double.0"], returned["double.0"])
        what = "then updated in place by double block 1" if mutated else "left as it was"
        print(f"      the tensor the hook returned for double.0 was {what}")
        check(f"{tag}, {name}: no forward hook left", forward_hooks(dm) == 0 and job.attached_hooks == 0)

    # Same under torch.no_grad (in-place on tensors made by the engine outside inference mode).
    base = sc.sample(unet, SIGMA_IN, 3.5, no_grad=True)
    job, clone, _ = sc.patched()
    out = sc.sample(clone, SIGMA_IN, 3.5, no_grad=True)
    ref = sc.sample(sc.patched()[1], SIGMA_IN, 3.5)
    check(
        f"{tag}: torch.no_grad instead of inference_mode: same repelled result",
        not torch.allclose(out, base) and torch.equal(out, ref),
        max_diff(out, ref),
    )


def verify_memory(neo: Neo, sc: Scenario, check: Checks) -> None:
    """Cross-batch memory (memory=True) keeps the rows the engine staged; Neo's in-place blocks must not alter them."""
    print("\n== cross-batch memory (memory=True) with Neo's in-place blocks ==")
    for rows in (1, 2):
        for single in ("off", "text", "all"):
            tag = f"memory=True, batch size {rows}, single_blocks={single!r}"
            cfg = repulsion(memory=True, single_blocks=single)
            job, clone, _ = sc.patched(cfg)
            memory = job.engine.memory
            at_stage: dict[Any, list[torch.Tensor]] = {}
            stage = memory.stage

            def recording_stage(key, parts, stage=stage, at_stage=at_stage):
                at_stage[key] = [p.detach().clone() for p in parts]
                return stage(key, parts)

            memory.stage = recording_stage
            x1, x2 = sc.x[:rows], sc.x[rows : 2 * rows]  # two batches of a batch count: other noise, same prompt
            sc.sample(clone, SIGMA_IN, 1.0, x=x1)  # batch 1
            staged = dict(memory._staged)
            changed = sorted(
                str(key[0])
                for key, parts in staged.items()
                if not all(torch.equal(p, q) for p, q in zip(parts, at_stage[key], strict=True))
            )
            check(
                f"{tag}: staged rows unchanged by later blocks until commit",
                staged and not changed,
                f"{len(staged)} staged; altered after staging: {changed}" if changed else f"{len(staged)} staged",
            )
            job.engine.new_batch()  # what an earlier-in-trajectory call does: batch 1's rows become memory
            out = sc.sample(clone, SIGMA_IN, 1.0, x=x2)  # batch 2 also repels from batch 1's rows
            _, alone, _ = sc.patched(repulsion(single_blocks=single))
            without = sc.sample(alone, SIGMA_IN, 1.0, x=x2)
            check(
                f"{tag}: the remembered batch changes the next batch, output finite",
                not torch.allclose(out, without) and bool(torch.isfinite(out).all()),
                max_diff(out, without),
            )
            check(f"{tag}: no forward hook left", forward_hooks(sc.unet.model.diffusion_model) == 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("neo", help="path to a Forge Neo work tree (sd-webui-forge-classic, branch neo)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the memory=True checks")
    ns = parser.parse_args(argv)
    root = neo_root_or_exit(ns.neo)
    neo = Neo(root)
    torch.set_grad_enabled(False)
    print(f"Forge Neo at {root} ({neo.describe()})")
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}, device {neo.mm.get_torch_device()}")
    startup_notes = list(neo.notes)
    for note in startup_notes:
        print(f"  [NOTE] {note}")
    if (root / "backend/nn/mmditx.py").exists():
        print("  [NOTE] backend/nn/mmditx.py present: SD3 is not covered by this script (tools/verify_forge.py is)")
    check = Checks()

    unet = neo.flux_unet("flux1")
    dm = unet.model.diffusion_model
    print(
        f"  Neo ops: {neo.get_dynamic('ops')}, Linear class {type(dm.double_blocks[0].img_attn.qkv).__module__}."
        f"{type(dm.double_blocks[0].img_attn.qkv).__qualname__}"
    )
    sc = Scenario(neo, "Flux.1 (dev-like, guidance embed)", unet)
    verify_flux(neo, sc, check)
    if not ns.skip_memory:
        verify_memory(neo, sc, check)
    klein = neo.flux_unet("flux2")
    if klein is not None:
        verify_flux(neo, Scenario(neo, "Flux.2 (Klein-like: global modulation, patch 1)", klein, pooled=False), check)
    verify_spell(
        neo,
        [("Flux.1 (dev-like)", neo.flux_unet("flux1"), 16, {})],
        check,
        lambda name, unet, kw: Scenario(neo, name, unet),
    )
    for note in neo.notes[len(startup_notes) :]:
        print(f"  [NOTE] {note}")

    return check.report()


if __name__ == "__main__":
    sys.exit(main())
