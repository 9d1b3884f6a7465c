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
import ast
import contextlib
import copy
import hashlib
import inspect
import io
import math
import re
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from lib_ctxrep import RepulsionConfig  # noqa: E402
from lib_ctxrep.integrations.forge import ForgeRepulsion, PredictorWindow  # noqa: E402

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

B = 4  # rows per chunk (batch size)
STEPS = 20
SIGMA_IN, SIGMA_OUT = 1.0, 0.5
CONFIG = RepulsionConfig(strength=0.5, iterations=4)
#: A tiny Flux.1-dev-like transformer (hidden 64 = 2 heads x 32 = sum(axes_dim)).
FLUX1_CONFIG = dict(
    in_channels=16,
    out_channels=16,
    vec_in_dim=16,
    context_in_dim=32,
    hidden_size=64,
    mlp_ratio=4.0,
    num_heads=2,
    depth=2,
    depth_single_blocks=2,
    axes_dim=[8, 12, 12],
    theta=10000,
    patch_size=2,
    qkv_bias=True,
    guidance_embed=True,
)
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
def _die(message: str) -> None:
    print(message, file=sys.stderr)
    raise SystemExit(2)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")


def neo_root_or_exit(path: str) -> Path:
    root = Path(path).expanduser().resolve()
    usage = "Usage: python tools/verify_forge_neo.py /path/to/forge-neo (Haoming02/sd-webui-forge-classic, branch neo)"
    if not root.is_dir():
        _die(f"verify_forge_neo: {path!r} is not a directory.\n{usage}")
    missing = [m for m in NEO_MARKERS if not (root / m).exists()]
    if missing:
        _die(f"verify_forge_neo: {path!r} is not a Forge Neo work tree (missing: {', '.join(missing)}).\n{usage}")
    for rel, needles in NEO_SIGNATURES.items():
        text = _read(root / rel)
        absent = [n for n in needles if n not in text]
        if absent:
            _die(
                f"verify_forge_neo: {path!r} is not a Forge Neo work tree ({rel} lacks {', '.join(absent)}; "
                "Forge main? use tools/verify_forge.py for it).\n" + usage
            )
    return root


class Neo:
    """Forge Neo's own backend modules, imported from a work tree."""

    def __init__(self, root: Path) -> None:
        if "backend" in sys.modules or "modules" in sys.modules:
            _die("verify_forge_neo: a module named 'backend' or 'modules' is already imported; use a fresh process")
        for p in (str(root / "modules_forge" / "packages"), str(root)):
            if p not in sys.path:
                sys.path.insert(0, p)
        if "--cpu" not in sys.argv:
            sys.argv.append("--cpu")
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
            _die(f"verify_forge_neo: cannot import Neo's backend from {root}: {exc!r} (install its dependencies)")
        if not neo_args.args.cpu:
            _die("verify_forge_neo: Neo's backend.args did not see --cpu")
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
        tree = ast.parse(_read(path), str(path))
        node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
        namespace: dict[str, Any] = {"torch": torch}
        exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
        return namespace[name]

    def describe(self) -> str:
        try:
            out = subprocess.run(
                ["git", "-C", str(self.root), "rev-parse", "--abbrev-ref", "HEAD", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            branch, commit = out.stdout.split()
            git = f"branch {branch}, commit {commit[:12]}"
        except (OSError, subprocess.SubprocessError, ValueError):
            git = "not a git work tree"
        digest = hashlib.sha256()
        for rel in FINGERPRINT_FILES:
            digest.update(_read(self.root / rel).encode())
        return f"{git}; backend fingerprint {digest.hexdigest()[:12]}"

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
        model.storage_dtype = model.computation_dtype = torch.float32
        model.load_device = self.mm.get_torch_device()
        model.offload_device = self.mm.unet_offload_device()
        model.initial_device = cpu
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
class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failures: list[str] = []

    def __call__(self, name: str, ok: bool, detail: Any = "") -> bool:
        ok = bool(ok)
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}" + (f"  ({detail})" if detail != "" else ""))
        if ok:
            self.passed += 1
        else:
            self.failures.append(f"{name}" + (f" ({detail})" if detail != "" else ""))
        return ok


def forward_hooks(diffusion_model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in diffusion_model.modules())


def _keep(store: dict, key: str, value: Any) -> None:
    """Record the first value seen for key (hooks must return None to leave the call alone)."""
    store.setdefault(key, value)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> str:
    return f"max |diff| {float((a - b).abs().max()):.3e}"


class _NoFreeMemory:
    """backend.memory_management as seen by calc_cond_uncond_batch under low VRAM: no free memory at all, so every
    cond/uncond chunk goes to the model in a call of its own."""

    def __init__(self, module: Any) -> None:
        self._module = module

    def get_free_memory(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


class Spy:
    """Wraps the clone's model_function_wrapper: records cond_or_uncond, c keys, and hooks attached inside the call."""

    def __init__(self, clone, diffusion_model: torch.nn.Module) -> None:
        self.calls: list[list[int]] = []
        self.c_keys: list[list[str]] = []
        self.text_lens: list[int] = []
        self.hooks_during: list[int] = []
        previous = clone.model_options["model_function_wrapper"]

        def spy(apply_model, args):
            self.calls.append(list(args["cond_or_uncond"]))
            self.c_keys.append(sorted(args["c"]))
            self.text_lens.append(int(args["c"]["c_crossattn"].shape[1]))

            def counting_apply_model(*a, **k):
                self.hooks_during.append(forward_hooks(diffusion_model))
                return apply_model(*a, **k)

            return previous(counting_apply_model, args)

        clone.model_options["model_function_wrapper"] = spy


class Scenario:
    """The Flux model with its fixed inputs; runs Neo's sampling_function_inner."""

    def __init__(self, neo: Neo, name: str, unet, ctx_len: int = 8, pooled: bool = True) -> None:
        self.neo, self.name, self.unet = neo, name, unet
        self.patch = unet.model.diffusion_model.patch_size
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(B, 16, 8, 8, generator=g)
        self.ref = torch.randn(1, 16, 8, 8, generator=g)  # a Kontext reference latent (encode_first_stage keeps one)

        def text(length: int) -> dict:
            # One prompt for the whole batch, as Neo's engines return it: B identical rows. Flux.1: T5 + pooled CLIP
            # + distilled guidance (diffusion_engine/flux.py); Flux.2 Klein: the text tensor only (flux2.py).
            d = {"crossattn": torch.randn(1, length, 32, generator=g).repeat(B, 1, 1)}
            if pooled:
                d["vector"] = torch.randn(1, 16, generator=g).repeat(B, 1)
                d["guidance"] = torch.FloatTensor([3.5] * B)
            return d

        self.ctx_len = ctx_len
        self.cond_text = [text(ctx_len), text(ctx_len)]  # the second one is an AND sub-prompt
        self.uncond_text = text(ctx_len)
        self.uncond_short = text(max(1, ctx_len // 2))  # for (e): Neo repeats it to the lcm length when batching

    def sample(
        self,
        unet,
        sigma: float,
        cfg: float,
        *,
        prompts: int = 1,
        low_vram: bool = False,
        short_uncond: bool = False,
        x: torch.Tensor | None = None,
        no_grad: bool = False,
    ) -> torch.Tensor:
        f = self.neo
        x = self.x if x is None else x
        cond = []
        for t in self.cond_text[:prompts]:
            cond += f.condition.compile_conditions(self._cond(t, x.shape[0]))
        uncond_text = self.uncond_short if short_uncond else self.uncond_text
        uncond = f.condition.compile_conditions(self._cond(uncond_text, x.shape[0]))
        timestep = torch.full((x.shape[0],), sigma)
        if low_vram:
            # Only as seen from backend/sampling/sampling_function.py (the attention code asks for free memory too).
            f.sf.memory_management = _NoFreeMemory(f.mm)
        # Neo's processing.py samples under torch.inference_mode(); no_grad covers the callers that do not.
        mode = torch.no_grad() if no_grad else torch.inference_mode()
        try:
            with mode, contextlib.redirect_stdout(io.StringIO()):
                f.sf.sampling_prepare(unet, x)
                out = f.sf.sampling_function_inner(unet.model, x, timestep, uncond, cond, cfg, unet.model_options)
                f.sf.sampling_cleanup(unet)
        finally:
            f.sf.memory_management = f.mm
        return out

    @staticmethod
    def _cond(text: dict, rows: int) -> dict | torch.Tensor:
        if len(text) == 1:
            return text["crossattn"][:rows]
        return {k: v[:rows] for k, v in text.items()}

    def patched(self, config: RepulsionConfig = CONFIG, unet=None):
        job = ForgeRepulsion(config, record_stats=True)
        clone = (unet or self.unet).clone()
        if not job.patch(clone):
            raise RuntimeError(f"ForgeRepulsion.patch returned False for {type(self.unet.model.diffusion_model)}")
        spy = Spy(clone, self.unet.model.diffusion_model)
        return job, clone, spy


@contextlib.contextmanager
def kontext_reference(neo: Neo, ref: torch.Tensor):
    """What Neo's Flux engine does for a Kontext model: get_learned_conditioning sets dynamic_args["ref_latents"]."""
    previous = neo.get_dynamic("ref_latents")
    neo.set_dynamic("ref_latents", [ref])
    try:
        yield
    finally:
        neo.set_dynamic("ref_latents", previous)


def stats_summary(job: ForgeRepulsion) -> str:
    stats = job.engine.stats
    blocks = sorted({s.block for s in stats})
    rows = sorted({s.rows for s in stats})
    return f"{len(stats)} stats, blocks {blocks}, branches {[s.branch for s in stats]}, rows {rows}"


def verify_flux(neo: Neo, sc: Scenario, check: Checks) -> None:
    unet = sc.unet
    dm = unet.model.diffusion_model
    hooked_blocks = 4
    expect_blocks = {"double.0", "double.1", "single.0", "single.1"}
    options_before = copy.deepcopy(unet.model_options)
    print(f"\n== {sc.name}: {type(dm).__name__}, predictor {type(unet.model.predictor).__name__}, B={B} ==")

    def common(tag: str, job, spy, out, base, inside: bool) -> None:
        check(
            f"{tag}: no forward hook left on the diffusion model",
            forward_hooks(dm) == 0 and job.attached_hooks == 0,
            f"{forward_hooks(dm)} hooks",
        )
        check(f"{tag}: output finite", bool(torch.isfinite(out).all()))
        if inside:
            check(f"{tag}: output differs from the plain patcher", not torch.allclose(out, base), max_diff(out, base))
            check(
                f"{tag}: hooks attached during each call",
                spy.hooks_during == [hooked_blocks] * len(spy.calls),
                spy.hooks_during,
            )
        else:
            check(f"{tag}: bit-identical to the plain patcher", torch.equal(out, base))
            check(
                f"{tag}: nothing attached during the call", spy.hooks_during == [0] * len(spy.calls), spy.hooks_during
            )
            check(f"{tag}: no repulsion recorded", not job.engine.stats, stats_summary(job))

    def groups_ok(job, order: list[str], rows: int = B) -> tuple[bool, str]:
        """Stats per block come in chunk order; every group has B rows; blocks are the expected ones."""
        stats = job.engine.stats
        by_block: dict[str, list[str]] = {}
        for s in stats:
            by_block.setdefault(s.block, []).append(s.branch)
        ok = (
            set(by_block) == expect_blocks
            and all(branches == order for branches in by_block.values())
            and all(s.rows == rows for s in stats)
        )
        return ok, stats_summary(job)

    # (a) cond only, CFG 1 --------------------------------------------------------------------------------------------
    for sigma in (SIGMA_IN, SIGMA_OUT):
        inside = sigma == SIGMA_IN
        tag = f"(a) cond only, cfg 1, sigma {sigma}"
        base = sc.sample(unet, sigma, 1.0)
        job, clone, spy = sc.patched()
        out = sc.sample(clone, sigma, 1.0)
        check(f"{tag}: model_function_wrapper called by Neo, cond_or_uncond [[0]]", spy.calls == [[0]], spy.calls)
        common(tag, job, spy, out, base, inside)
        if inside:
            print(f"      c keys given to the wrapper: {spy.c_keys[0]}")
            ok, detail = groups_ok(job, ["cond"])
            check(f"{tag}: stats: branch cond, {B} rows, blocks {sorted(expect_blocks)}", ok, detail)
            check(
                f"{tag}: Vendi score rises in every group",
                all(s.vendi_after > s.vendi_before for s in job.engine.stats),
            )
            _, dclone, _ = sc.patched(RepulsionConfig(enabled=False))
            check(f"{tag}: enabled=False is bit-identical", torch.equal(sc.sample(dclone, sigma, 1.0), base))

    # (b) cond + uncond, CFG 3.5, one batched call --------------------------------------------------------------------
    batched_in = None
    for sigma in (SIGMA_IN, SIGMA_OUT):
        inside = sigma == SIGMA_IN
        tag = f"(b) cond+uncond, cfg 3.5, sigma {sigma}"
        base = sc.sample(unet, sigma, 3.5)
        job, clone, spy = sc.patched()
        out = sc.sample(clone, sigma, 3.5)
        check(f"{tag}: wrapper saw one batched call, uncond first [[1, 0]]", spy.calls == [[1, 0]], spy.calls)
        common(tag, job, spy, out, base, inside)
        if inside:
            batched_in = out
            ok, detail = groups_ok(job, ["uncond", "cond"])
            check(f"{tag}: stats: uncond then cond per block, {B} rows each", ok, detail)
            _, dclone, _ = sc.patched(RepulsionConfig(enabled=False))
            check(f"{tag}: enabled=False is bit-identical", torch.equal(sc.sample(dclone, sigma, 3.5), base))

    # (c) low VRAM: the same chunks in separate calls -----------------------------------------------------------------
    for sigma in (SIGMA_IN, SIGMA_OUT):
        inside = sigma == SIGMA_IN
        tag = f"(c) cond+uncond split by low VRAM, sigma {sigma}"
        base = sc.sample(unet, sigma, 3.5, low_vram=True)
        job, clone, spy = sc.patched()
        out = sc.sample(clone, sigma, 3.5, low_vram=True)
        check(f"{tag}: wrapper saw separate calls [[1], [0]]", spy.calls == [[1], [0]], spy.calls)
        common(tag, job, spy, out, base, inside)
        if inside:
            stats = job.engine.stats
            half = len(stats) // 2
            ok = (
                {s.block for s in stats} == expect_blocks
                and [s.branch for s in stats] == ["uncond"] * half + ["cond"] * half
                and all(s.rows == B for s in stats)
            )
            check(f"{tag}: stats: all uncond blocks, then all cond blocks, {B} rows each", ok, stats_summary(job))
            close = batched_in is not None and torch.allclose(out, batched_in, rtol=1e-4, atol=1e-5)
            check(
                f"{tag}: same result as the batched call (b)",
                close,
                max_diff(out, batched_in) if batched_in is not None else "",
            )

    # (d) two AND sub-prompts + uncond --------------------------------------------------------------------------------
    tag = f"(d) 2 AND prompts + uncond, cfg 3.5, sigma {SIGMA_IN}"
    base = sc.sample(unet, SIGMA_IN, 3.5, prompts=2)
    job, clone, spy = sc.patched()
    out = sc.sample(clone, SIGMA_IN, 3.5, prompts=2)
    check(f"{tag}: wrapper saw [[1, 0, 0]]", spy.calls == [[1, 0, 0]], spy.calls)
    common(tag, job, spy, out, base, True)
    ok, detail = groups_ok(job, ["uncond", "cond", "cond"])
    check(f"{tag}: stats: uncond, cond, cond per block, {B} rows each", ok, detail)

    # (e) cond and uncond texts of different lengths, single blocks on their text tokens only -------------------------
    tag = f"(e) uncond text half as long, single_blocks='text', cfg 3.5, sigma {SIGMA_IN}"
    base = sc.sample(unet, SIGMA_IN, 3.5, short_uncond=True)
    job, clone, spy = sc.patched(RepulsionConfig(strength=0.5, iterations=4, single_blocks="text"))
    out = sc.sample(clone, SIGMA_IN, 3.5, short_uncond=True)
    check(
        f"{tag}: one batched call [[1, 0]], c_crossattn padded to {sc.ctx_len} tokens",
        spy.calls == [[1, 0]] and spy.text_lens == [sc.ctx_len],
        f"{spy.calls}, lengths {spy.text_lens}",
    )
    common(tag, job, spy, out, base, True)
    ok, detail = groups_ok(job, ["uncond", "cond"])
    check(f"{tag}: stats: uncond then cond per block, {B} rows each", ok, detail)

    # (k) Flux Kontext: a reference latent appended to the image tokens -----------------------------------------------
    for sigma in (SIGMA_IN, SIGMA_OUT):
        inside = sigma == SIGMA_IN
        tag = f"(k) Kontext reference latent, cfg 3.5, sigma {sigma}"
        plain = sc.sample(unet, sigma, 3.5)
        seq: list[int] = []
        probe = dm.single_blocks[0].register_forward_pre_hook(
            lambda m, a, k, seq=seq: seq.append(a[0].shape[1]), with_kwargs=True
        )
        try:
            with kontext_reference(neo, sc.ref):
                base = sc.sample(unet, sigma, 3.5)
                job, clone, spy = sc.patched(RepulsionConfig(strength=0.5, iterations=4, single_blocks="text"))
                out = sc.sample(clone, sigma, 3.5)
        finally:
            probe.remove()
        tokens = sc.ctx_len + 2 * (8 // sc.patch) ** 2  # text + target image + reference image tokens
        check(
            f"{tag}: the reference changes the output and lengthens the joint sequence to {tokens} tokens",
            not torch.allclose(plain, base) and seq and set(seq) == {tokens},
            f"sequence lengths {sorted(set(seq))}",
        )
        common(tag, job, spy, out, base, inside)
        if inside:
            ok, detail = groups_ok(job, ["uncond", "cond"])
            check(f"{tag}: stats: uncond then cond per block, {B} rows each (text rows only)", ok, detail)
    check("(k) dynamic_args['ref_latents'] restored", neo.get_dynamic("ref_latents") == [])

    # (s) single_blocks="all": text + target image tokens are repelled, Kontext reference tokens are not -------------
    image_tokens = (8 // sc.patch) ** 2  # Neo's process_img: (h / patch) x (w / patch) tokens per latent
    for with_ref in (False, True):
        tag = f"(s) single_blocks='all'{' + Kontext reference' if with_ref else ''}, cfg 3.5, sigma {SIGMA_IN}"
        ctx = kontext_reference(neo, sc.ref) if with_ref else contextlib.nullcontext()
        with ctx:
            base = sc.sample(unet, SIGMA_IN, 3.5)
            job, clone, spy = sc.patched(RepulsionConfig(strength=0.5, iterations=4, single_blocks="all"))
            spans: list[tuple[int, int]] = []
            process_prefix = job.engine.process_prefix

            def recording_prefix(block, sequence, length, process_prefix=process_prefix, spans=spans, **kw):
                spans.append((int(length), int(sequence.shape[1])))
                return process_prefix(block, sequence, length, **kw)

            job.engine.process_prefix = recording_prefix
            out = sc.sample(clone, SIGMA_IN, 3.5)
        common(tag, job, spy, out, base, True)
        want = sc.ctx_len + image_tokens
        total = want + (image_tokens if with_ref else 0)
        check(
            f"{tag}: single blocks repel exactly the {sc.ctx_len} text + {image_tokens} target image tokens "
            f"of {total} (patch {sc.patch})",
            spans and all(span == (want, total) for span in spans),
            f"(repelled prefix, sequence) per single block: {sorted(set(spans))}",
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

    # chained wrapper -------------------------------------------------------------------------------------------------
    tag = "existing model_function_wrapper"
    seen: list[int] = []

    def other_wrapper(apply_model, args):
        seen.append(args["input"].shape[0])
        return apply_model(args["input"], args["timestep"], **args["c"])

    host = unet.clone()
    host.set_model_unet_function_wrapper(other_wrapper)
    base = sc.sample(host, SIGMA_IN, 1.0)
    job = ForgeRepulsion(CONFIG)
    clone = host.clone()
    check(
        f"{tag}: UnetPatcher.clone() keeps model_options (the wrapper survives a clone)",
        clone.model_options.get("model_function_wrapper") is other_wrapper,
        f"clone keys {sorted(clone.model_options)}",
    )
    job.patch(clone)
    out = sc.sample(clone, SIGMA_IN, 1.0)
    check(f"{tag}: chained (called in both runs) and repelled", seen == [B, B] and not torch.allclose(out, base), seen)

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

    # the shared patcher ----------------------------------------------------------------------------------------------
    check(
        "original UnetPatcher.model_options unchanged",
        unet.model_options == options_before,
        f"keys {sorted(unet.model_options)}",
    )
    again = sc.sample(unet, SIGMA_IN, 3.5)
    check(
        "plain patcher still bit-identical after all patched runs",
        torch.equal(again, sc.sample(unet.clone(), SIGMA_IN, 3.5)),
    )

    # the window from the real predictor ------------------------------------------------------------------------------
    predictor = unet.model.predictor
    window = PredictorWindow(predictor)

    class ScheduleLinker:  # what Neo hands its schedulers: .sigmas is predictor.sigmas
        sigmas = predictor.sigmas

    sigmas = neo.simple_scheduler(STEPS, None, None, ScheduleLinker, torch.device("cpu"))[:-1].tolist()
    progress = [window.progress(s) for s in sigmas]
    shown = [round(s, 4) for s in sigmas[:3]]
    print(f"      simple-schedule sigmas[:3] {shown} -> progress {[round(p, 4) for p in progress[:3]]}")
    check(
        f"PredictorWindow on Neo's simple schedule ({STEPS} steps): only the first step < 0.05",
        progress[0] == 0.0 and [p < 0.05 - 1e-9 for p in progress].count(True) == 1 and progress == sorted(progress),
        f"progress[:3] {[round(p, 4) for p in progress[:3]]}",
    )
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

    def capture_inputs(store: dict) -> list:
        handles = []
        for i, block in enumerate(dm.double_blocks):
            handles.append(
                block.register_forward_pre_hook(
                    lambda m, a, k, i=i: _keep(store, f"double.{i}", k["txt"].clone()), with_kwargs=True
                )
            )
        for i, block in enumerate(dm.single_blocks):
            handles.append(
                block.register_forward_pre_hook(
                    lambda m, a, k, i=i: _keep(store, f"single.{i}", a[0][:, :length].clone()), with_kwargs=True
                )
            )
        return handles

    # The blocks really work in place (what makes Neo different from Forge main here).
    seen_in: dict[str, torch.Tensor] = {}
    seen_out: dict[str, tuple] = {}
    block = dm.double_blocks[0]
    h1 = block.register_forward_pre_hook(lambda m, a, k: _keep(seen_in, "txt", k["txt"]), with_kwargs=True)
    h2 = block.register_forward_hook(lambda m, a, o: _keep(seen_out, "out", o))
    try:
        sc.sample(unet, SIGMA_IN, 1.0)
    finally:
        h1.remove()
        h2.remove()
    check(
        f"{tag}: Neo's DoubleStreamBlock returns its input txt tensor, updated in place",
        "out" in seen_out and seen_out["out"][1] is seen_in.get("txt"),
    )

    for branch_cfg, name in ((1.0, "cond only"), (3.5, "cond+uncond")):
        plain: dict[str, torch.Tensor] = {}
        handles = capture_inputs(plain)
        try:
            sc.sample(unet, SIGMA_IN, branch_cfg)
        finally:
            for h in handles:
                h.remove()
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
        got: dict[str, torch.Tensor] = {}
        handles = capture_inputs(got)
        try:
            sc.sample(clone, SIGMA_IN, branch_cfg)
        finally:
            for h in handles:
                h.remove()
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
        for single in ("off", "text"):
            tag = f"memory=True, batch size {rows}, single_blocks={single!r}"
            cfg = RepulsionConfig(strength=0.5, iterations=4, memory=True, single_blocks=single)
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
            _, alone, _ = sc.patched(RepulsionConfig(strength=0.5, iterations=4, single_blocks=single))
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
    for note in neo.notes[len(startup_notes) :]:
        print(f"  [NOTE] {note}")

    print()
    if check.failures:
        print(f"FAILED: {len(check.failures)} of {check.passed + len(check.failures)} checks")
        for f in check.failures:
            print(f"  - {f}")
        return 1
    print(f"VERIFIED: {check.passed} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
