"""Verify the Forge front end (``lib_ctxrep.integrations.forge``) against a real Forge backend, on CPU.

Usage::

    python tools/verify_forge.py /path/to/stable-diffusion-webui-forge [--kontext /path/to/forge2_flux_kontext]

The path must be a checkout (or an exported work tree) of lllyasviel/stable-diffusion-webui-forge; written against
main at dfdcbab6. Nothing from Forge is copied here: the script imports Forge's own backend from that path at run
time (``backend.nn.flux``, ``backend.nn.mmditx``, ``backend.modules.k_model``, ``backend.modules.k_prediction``,
``backend.patcher.unet``, ``backend.sampling``), builds tiny Flux and MMDiT-X (SD3) models with random float32
weights, wraps them the way Forge's diffusion engines do (``UnetPatcher.from_model`` with ``PredictionFlux()`` /
``PredictionDiscreteFlow(shift=3.0)``), and runs Forge's ``sampling_function_inner`` with conditions compiled by
Forge's ``compile_conditions``:

(a) cond only at CFG 1 (the Flux-dev path), (b) cond + uncond at CFG 3.5 in one batched call, (c) the same split into
separate calls by Forge's low-VRAM path (``get_free_memory`` made to report 0 as seen from ``sampling_function``),
(d) two AND sub-prompts + uncond, (e) Flux only: an uncond text of another length (Forge repeats it to the common
length when batching) with ``single_blocks="text"``; at sigma 1.0 (inside the window) and 0.5 (outside), with and
without repulsion, plus an already installed ``model_function_wrapper`` (chained), the shared patcher left untouched,
``PredictorWindow`` on Forge's own "simple" schedule (``modules/sd_schedulers.py``), and the flow predictors of
``tests/forge_standins.py`` against Forge's.

Chroma (``backend/nn/chroma.py`` ``IntegratedChromaTransformer2DModel``, when the checkout has it) goes through the
same cases (a)-(e), wrapped as ``backend/diffusion_engine/chroma.py`` does (``PredictionFlux(mu=1.0)``; its
conditions are the bare T5 tensor, no pooled vector or guidance).

Flux Kontext, with ``--kontext PATH`` (a checkout or exported work tree of DenOfEquity/forge2_flux_kontext; skipped
with a note without it): that extension's ``scripts/kontext.py`` imports the webui (``modules.scripts``, ``gradio``,
``modules.api``), so it cannot be imported here. The script parses that file with ``ast`` at run time and executes
the extension's own ``patched_flux_forward`` from it (nothing is copied), with the file's own ``torch`` / ``numpy`` /
``einops`` imports and, for the name ``forgeKontext``, a stand-in holding the two class attributes the function reads
(``latent`` and ``ids``, batch 1, built as ``process_before_every_sampling`` builds them from a random reference
latent). It is installed as the extension installs it, a class-level ``IntegratedFluxTransformer2DModel.forward =
patched_flux_forward`` (the file is checked to contain that statement and the restoring one of ``postprocess``), and
the original is restored at the end. Then Flux-dev runs with B rows per chunk through ``sampling_function_inner``:
reference tokens appended after the image tokens, the output cropped back to the target's shape, with and without
repulsion, inside and outside the window; the class ``forward`` must still be the extension's after every job; and,
observed around ForgeRepulsion's own hooks, which tokens each block changes: the text stream in double blocks, text
(+ target image with ``single_blocks="all"``) in single blocks, never the reference tokens.

Environment: Python 3.10+ with torch (CPU), diffusers==0.31.0, transformers==4.46.1, huggingface_hub<0.27, einops,
safetensors, sentencepiece, scipy, numpy<2, psutil (Forge's pins); no GPU, no network, no model files. The script
puts the Forge root and its ``packages_3rdparty/`` on ``sys.path`` and ``--always-cpu`` in ``sys.argv`` before the
first ``backend`` import (Forge's ``backend/args.py`` and ``backend/memory_management.py`` read them at import).

It prints one line per check and ends with ``VERIFIED: <n> checks passed`` (exit 0) or the list of failures (exit 1);
exit 2 when the path is not a Forge checkout or Forge's backend cannot be imported.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import contextlib
import copy
import inspect
import io
import math
import subprocess
import symtable
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from lib_ctxrep import RepulsionConfig  # noqa: E402
from lib_ctxrep.integrations.forge import ForgeRepulsion, PredictorWindow  # noqa: E402

#: Files whose presence marks a Forge checkout (all imported or read below).
FORGE_MARKERS = (
    "backend/nn/flux.py",
    "backend/nn/mmditx.py",
    "backend/modules/k_model.py",
    "backend/modules/k_prediction.py",
    "backend/patcher/unet.py",
    "backend/sampling/sampling_function.py",
    "backend/sampling/condition.py",
    "backend/memory_management.py",
    "modules/sd_schedulers.py",
    "packages_3rdparty",
)

B = 4  # rows per chunk (batch size)
STEPS = 20
SIGMA_IN, SIGMA_OUT = 1.0, 0.5
CONFIG = RepulsionConfig(strength=0.5, iterations=4)


# --------------------------------------------------------------------------------------------------------------------
# Loading Forge
# --------------------------------------------------------------------------------------------------------------------
def _die(message: str) -> None:
    print(message, file=sys.stderr)
    raise SystemExit(2)


def forge_root_or_exit(path: str) -> Path:
    root = Path(path).expanduser().resolve()
    missing = [m for m in FORGE_MARKERS if not (root / m).exists()]
    if not root.is_dir() or missing:
        _die(
            f"verify_forge: {path!r} is not a stable-diffusion-webui-forge checkout "
            f"(missing: {', '.join(missing) if root.is_dir() else 'the directory itself'}).\n"
            "Usage: python tools/verify_forge.py /path/to/stable-diffusion-webui-forge"
        )
    return root


class Forge:
    """Forge's own backend modules, imported from a checkout."""

    def __init__(self, root: Path) -> None:
        if "backend" in sys.modules:
            _die("verify_forge: a module named 'backend' is already imported; run this script in a fresh process")
        for p in (str(root / "packages_3rdparty"), str(root)):
            if p not in sys.path:
                sys.path.insert(0, p)
        if "--always-cpu" not in sys.argv:
            sys.argv.append("--always-cpu")
        try:
            from backend import memory_management
            from backend.modules import k_prediction
            from backend.nn import flux, mmditx
            from backend.patcher.unet import UnetPatcher
            from backend.sampling import condition, sampling_function
        except ImportError as exc:
            _die(f"verify_forge: cannot import Forge's backend from {root}: {exc!r} (install its dependencies)")
        self.root = root
        self.mm = memory_management
        self.k_prediction = k_prediction
        self.flux = flux
        self.mmditx = mmditx
        self.UnetPatcher = UnetPatcher
        self.condition = condition
        self.sf = sampling_function
        self.simple_scheduler = self._load_function("modules/sd_schedulers.py", "simple_scheduler")
        self.chroma = None  # backend/nn/chroma.py (Forge main since 2025-05); older checkouts: Chroma is skipped
        if (root / "backend/nn/chroma.py").exists():
            from backend.nn import chroma

            self.chroma = chroma

    def _load_function(self, relpath: str, name: str) -> Callable:
        """One top-level function of a Forge file that cannot be imported without the webui (modules.shared):
        compiled from the checkout's own source, not copied."""
        path = self.root / relpath
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
        namespace: dict[str, Any] = {"torch": torch}
        exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
        return namespace[name]

    def commit(self) -> str:
        try:
            out = subprocess.run(
                ["git", "-C", str(self.root), "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            return out.stdout.strip()[:12]
        except (OSError, subprocess.SubprocessError):
            return "unknown (not a git work tree)"

    # --- models, wrapped as backend/diffusion_engine/{flux,sd35}.py and backend/loader.py do ---------------------
    def _unet(self, model: torch.nn.Module, predictor: torch.nn.Module):
        model = model.float().eval()
        device = self.mm.get_torch_device()
        model.storage_dtype = model.computation_dtype = torch.float32
        model.load_device = device
        model.offload_device = self.mm.unet_offload_device()
        model.initial_device = device
        return self.UnetPatcher.from_model(model=model, diffusers_scheduler=None, config=None, k_predictor=predictor)

    def flux_unet(self, seed: int = 0):
        torch.manual_seed(seed)
        model = self.flux.IntegratedFluxTransformer2DModel(
            in_channels=16,
            vec_in_dim=16,
            context_in_dim=32,
            hidden_size=64,
            mlp_ratio=4.0,
            num_heads=2,
            depth=2,
            depth_single_blocks=2,
            axes_dim=[8, 12, 12],
            theta=10000,
            qkv_bias=True,
            guidance_embed=True,
        )
        return self._unet(model, self.k_prediction.PredictionFlux())

    def chroma_unet(self, seed: int = 0):
        """backend/loader.py: IntegratedChromaTransformer2DModel(**config); backend/diffusion_engine/chroma.py:
        UnetPatcher.from_model(..., k_predictor=PredictionFlux(mu=1.0))."""
        torch.manual_seed(seed)
        model = self.chroma.IntegratedChromaTransformer2DModel(
            in_channels=16,
            vec_in_dim=16,
            context_in_dim=32,
            hidden_size=64,
            mlp_ratio=4.0,
            num_heads=2,
            depth=2,
            depth_single_blocks=2,
            axes_dim=[8, 12, 12],
            theta=10000,
            qkv_bias=True,
            guidance_out_dim=64,  # = hidden_size (the modulation vectors), as 3072 is for the real model
            guidance_hidden_dim=32,
            guidance_n_layers=2,
        )
        return self._unet(model, self.k_prediction.PredictionFlux(mu=1.0))

    def sd3_unet(self, seed: int = 0):
        torch.manual_seed(seed)
        depth = 3  # MMDiTX: hidden_size = 64 * depth, num_heads = depth
        model = self.mmditx.MMDiTX(
            input_size=None,
            patch_size=2,
            in_channels=16,
            depth=depth,
            adm_in_channels=16,
            context_embedder_config={
                "target": "torch.nn.Linear",
                "params": {"in_features": 32, "out_features": 64 * depth},
            },
            pos_embed_max_size=8,
            num_patches=64,
        )
        with torch.no_grad():
            model.pos_embed.normal_(0, 0.02)
        return self._unet(model, self.k_prediction.PredictionDiscreteFlow(shift=3.0))


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


class Scenario:
    """One model (Flux or SD3) with its fixed inputs; runs Forge's sampling_function_inner."""

    def __init__(
        self,
        forge: Forge,
        name: str,
        unet,
        ctx_len: int,
        unctx_len: int,
        guidance: bool,
        *,
        tensor_text: bool = False,
    ) -> None:
        self.forge, self.name, self.unet = forge, name, unet
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(B, 16, 8, 8, generator=g)

        def text(length: int) -> dict | torch.Tensor:
            # One prompt for the whole batch, as Forge's engines return it: B identical rows.
            if tensor_text:  # Chroma's get_learned_conditioning: the T5 tensor alone
                return torch.randn(1, length, 32, generator=g).repeat(B, 1, 1)
            d = {
                "crossattn": torch.randn(1, length, 32, generator=g).repeat(B, 1, 1),
                "vector": torch.randn(1, 16, generator=g).repeat(B, 1),
            }
            if guidance:
                d["guidance"] = torch.FloatTensor([3.5] * B)
            return d

        self.cond_text = [text(ctx_len), text(ctx_len)]  # the second one is an AND sub-prompt
        self.uncond_text = text(unctx_len)
        self.uncond_short = text(max(1, ctx_len // 2))  # for (e): Forge repeats it to the lcm length when batching

    @staticmethod
    def text_len(text: dict | torch.Tensor) -> int:
        return int((text if isinstance(text, torch.Tensor) else text["crossattn"]).shape[1])

    def sample(
        self, unet, sigma: float, cfg: float, *, prompts: int = 1, low_vram: bool = False, short_uncond: bool = False
    ) -> torch.Tensor:
        f = self.forge
        cond = []
        for t in self.cond_text[:prompts]:
            cond += f.condition.compile_conditions(t)
        uncond = f.condition.compile_conditions(self.uncond_short if short_uncond else self.uncond_text)
        timestep = torch.full((B,), sigma)
        if low_vram:
            # Only as seen from backend/sampling/sampling_function.py (the attention code asks for free memory too).
            f.sf.memory_management = _NoFreeMemory(f.mm)
        try:
            with torch.inference_mode(), contextlib.redirect_stdout(io.StringIO()):  # Forge's "Moving model(s)" lines
                f.sf.sampling_prepare(unet, self.x)
                out = f.sf.sampling_function_inner(unet.model, self.x, timestep, uncond, cond, cfg, unet.model_options)
                f.sf.sampling_cleanup(unet)
        finally:
            f.sf.memory_management = f.mm
        return out

    def patched(self, config: RepulsionConfig = CONFIG):
        job = ForgeRepulsion(config, record_stats=True)
        clone = self.unet.clone()
        if not job.patch(clone):
            raise RuntimeError(f"ForgeRepulsion.patch returned False for {type(self.unet.model.diffusion_model)}")
        spy = Spy(clone, self.unet.model.diffusion_model)
        return job, clone, spy


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


def stats_summary(job: ForgeRepulsion) -> str:
    stats = job.engine.stats
    blocks = sorted({s.block for s in stats})
    rows = sorted({s.rows for s in stats})
    return f"{len(stats)} stats, blocks {blocks}, branches {[s.branch for s in stats]}, rows {rows}"


def verify_model(
    forge: Forge, sc: Scenario, check: Checks, *, hooked_blocks: int, expect_blocks: set[str], single_blocks: int = 0
) -> None:
    unet = sc.unet
    dm = unet.model.diffusion_model
    options_before = copy.deepcopy(unet.model_options)
    print(f"\n== {sc.name}: {type(dm).__name__}, predictor {type(unet.model.predictor).__name__}, B={B} ==")

    def common(tag: str, job, spy, out, base, inside: bool) -> None:
        check(
            f"{tag}: no forward hook left on the diffusion model",
            forward_hooks(dm) == 0 and job.attached_hooks == 0,
            f"{forward_hooks(dm)} hooks",
        )
        if inside:
            check(
                f"{tag}: output differs from the plain patcher",
                not torch.allclose(out, base),
                f"max |diff| {float((out - base).abs().max()):.3e}",
            )
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

    def groups_ok(job, order: list[str]) -> tuple[bool, str]:
        """Stats per block come in chunk order; every group has B rows; blocks are the expected ones."""
        stats = job.engine.stats
        by_block: dict[str, list[str]] = {}
        for s in stats:
            by_block.setdefault(s.block, []).append(s.branch)
        ok = (
            set(by_block) == expect_blocks
            and all(branches == order for branches in by_block.values())
            and all(s.rows == B for s in stats)
        )
        return ok, stats_summary(job)

    # (a) cond only, CFG 1 --------------------------------------------------------------------------------------------
    for sigma in (SIGMA_IN, SIGMA_OUT):
        inside = sigma == SIGMA_IN
        tag = f"(a) cond only, cfg 1, sigma {sigma}"
        base = sc.sample(unet, sigma, 1.0)
        job, clone, spy = sc.patched()
        out = sc.sample(clone, sigma, 1.0)
        check(f"{tag}: wrapper saw cond_or_uncond [[0]]", spy.calls == [[0]], spy.calls)
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

    # (c) low VRAM: the same chunks in separate calls -------------------------------------------------------------
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
                f"max |diff| {float((out - batched_in).abs().max()):.3e}" if batched_in is not None else "",
            )

    # (d) two AND sub-prompts + uncond ----------------------------------------------------------------------------
    tag = f"(d) 2 AND prompts + uncond, cfg 3.5, sigma {SIGMA_IN}"
    base = sc.sample(unet, SIGMA_IN, 3.5, prompts=2)
    job, clone, spy = sc.patched()
    out = sc.sample(clone, SIGMA_IN, 3.5, prompts=2)
    check(f"{tag}: wrapper saw [[1, 0, 0]]", spy.calls == [[1, 0, 0]], spy.calls)
    common(tag, job, spy, out, base, True)
    ok, detail = groups_ok(job, ["uncond", "cond", "cond"])
    check(f"{tag}: stats: uncond, cond, cond per block, {B} rows each", ok, detail)

    # (e) cond and uncond texts of different lengths (Flux: T5 chunks), single blocks on their text tokens only -----
    if single_blocks:
        tag = f"(e) uncond text half as long, single_blocks='text', cfg 3.5, sigma {SIGMA_IN}"
        base = sc.sample(unet, SIGMA_IN, 3.5, short_uncond=True)
        job, clone, spy = sc.patched(RepulsionConfig(strength=0.5, iterations=4, single_blocks="text"))
        out = sc.sample(clone, SIGMA_IN, 3.5, short_uncond=True)
        length = sc.text_len(sc.cond_text[0])
        check(
            f"{tag}: one batched call [[1, 0]], c_crossattn padded to {length} tokens",
            spy.calls == [[1, 0]] and spy.text_lens == [length],
            f"{spy.calls}, lengths {spy.text_lens}",
        )
        common(tag, job, spy, out, base, True)
        ok, detail = groups_ok(job, ["uncond", "cond"])
        check(f"{tag}: stats: uncond then cond per block, {B} rows each", ok, detail)

    # chained wrapper ---------------------------------------------------------------------------------------------
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
    job.patch(clone)
    out = sc.sample(clone, SIGMA_IN, 1.0)
    check(f"{tag}: chained (called in both runs) and repelled", seen == [B, B] and not torch.allclose(out, base), seen)

    # the shared patcher ------------------------------------------------------------------------------------------
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

    class ScheduleLinker:  # k_diffusion/external.py ForgeScheduleLinker: .sigmas is predictor.sigmas
        sigmas = predictor.sigmas

    sigmas = forge.simple_scheduler(STEPS, None, None, ScheduleLinker, torch.device("cpu"))[:-1].tolist()
    progress = [window.progress(s) for s in sigmas]
    shown = [round(s, 4) for s in sigmas[:3]]
    print(f"      simple-schedule sigmas[:3] {shown} -> progress {[round(p, 4) for p in progress[:3]]}")
    check(
        f"PredictorWindow on Forge's simple schedule ({STEPS} steps): only the first step < 0.05",
        progress[0] == 0.0 and [p < 0.05 - 1e-9 for p in progress].count(True) == 1 and progress == sorted(progress),
        f"progress[:3] {[round(p, 4) for p in progress[:3]]}",
    )
    check(
        "predictor.percent_to_sigma(p) == 1 - p (flow)",
        all(math.isclose(predictor.percent_to_sigma(p), 1 - p) for p in (0.05, 0.3, 0.9)),
    )


# --------------------------------------------------------------------------------------------------------------------
# Flux Kontext: DenOfEquity/forge2_flux_kontext, executed from the given path
# --------------------------------------------------------------------------------------------------------------------
KONTEXT_FILE = "scripts/kontext.py"
#: Top-level modules of the extension's imports that are executed here (the rest need the running webui).
KONTEXT_IMPORTABLE = ("torch", "numpy", "einops")


def kontext_file_or_exit(path: str) -> Path:
    file = Path(path).expanduser().resolve() / KONTEXT_FILE
    if not file.is_file():
        _die(
            f"verify_forge: {path!r} is not a forge2_flux_kontext checkout (no {KONTEXT_FILE}).\n"
            "Usage: python tools/verify_forge.py /path/to/forge [--kontext /path/to/forge2_flux_kontext]"
        )
    return file


class KontextState:
    """Stands for the extension's ``class forgeKontext(scripts.Script)`` as ``patched_flux_forward`` sees it: the
    class attributes ``latent`` / ``ids`` (set by ``process_before_every_sampling``, cleared by ``postprocess``) and
    ``original_forward`` (set by ``__init__``). ``ids`` is read once per forward when a reference is set: counted."""

    def __init__(self) -> None:
        self.latent: torch.Tensor | None = None
        self._ids: torch.Tensor | None = None
        self.original_forward: Callable | None = None
        self.ids_reads = 0

    @property
    def ids(self) -> torch.Tensor | None:
        self.ids_reads += 1
        return self._ids

    @ids.setter
    def ids(self, value: torch.Tensor | None) -> None:
        self._ids = value


class KontextExtension:
    """The extension's own ``patched_flux_forward``, compiled from its ``scripts/kontext.py`` at run time.

    The file cannot be imported outside the webui (``from modules import scripts``, ``gradio``, ``modules.api``), so
    it is parsed with ``ast``: its top-level imports of torch / numpy / einops are executed, then its function
    ``patched_flux_forward`` is compiled and executed from that file, with ``forgeKontext`` bound to a
    ``KontextState``. Every global name the function reads is checked to be bound (``symtable``).
    """

    def __init__(self, file: Path) -> None:
        self.file = file
        self.root = file.parent.parent
        source = file.read_text(encoding="utf-8")
        tree = ast.parse(source, str(file))
        node = next(
            (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "patched_flux_forward"), None
        )
        if node is None:
            _die(f"verify_forge: {file} has no top-level function patched_flux_forward")
        imports = [
            n
            for n in tree.body
            if (isinstance(n, ast.Import) and all(a.name.split(".")[0] in KONTEXT_IMPORTABLE for a in n.names))
            or (isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] in KONTEXT_IMPORTABLE)
        ]
        self.state = KontextState()
        namespace: dict[str, Any] = {"__name__": "forge2_flux_kontext_kontext", "__file__": str(file)}
        exec(compile(ast.Module(body=[*imports, node], type_ignores=[]), str(file), "exec"), namespace)  # noqa: S102
        namespace["forgeKontext"] = self.state
        self.forward: Callable = namespace["patched_flux_forward"]
        table = symtable.symtable(ast.get_source_segment(source, node) or "", str(file), "exec").get_children()[0]
        self.unbound = sorted(n for n in table.get_globals() if n not in namespace and not hasattr(builtins, n))
        self.statements = {ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Assign)}
        self.imports_flux_class = any(
            isinstance(n, ast.ImportFrom)
            and n.module == "backend.nn.flux"
            and any(a.name == "IntegratedFluxTransformer2DModel" for a in n.names)
            for n in tree.body
        )

    def commit(self) -> str:
        try:
            out = subprocess.run(
                ["git", "-C", str(self.root), "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            return out.stdout.strip()[:12]
        except (OSError, subprocess.SubprocessError):
            return "unknown (not a git work tree)"

    def set_reference(self, seed: int = 3, latent_hw: tuple[int, int] = (8, 12)) -> int:
        """A random reference latent (batch 1), packed and given ids as process_before_every_sampling does: 2x2
        patches into tokens, ids (1, h, w) for one reference image. Returns the number of reference tokens."""
        from einops import rearrange, repeat

        g = torch.Generator().manual_seed(seed)
        k_latent = torch.randn(1, 16, *latent_hw, generator=g)
        kh, kw = latent_hw[0] // 2, latent_hw[1] // 2
        k_id = torch.zeros((kh, kw, 3))
        k_id[:, :, 0] = 1
        k_id[:, :, 1] += torch.linspace(0, kh - 1, steps=kh)[:, None]
        k_id[:, :, 2] += torch.linspace(0, kw - 1, steps=kw)[None, :]
        self.state.latent = rearrange(k_latent, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)
        self.state.ids = repeat(k_id, "h w c -> b (h w) c", b=1)
        return kh * kw

    @contextlib.contextmanager
    def installed(self, flux_class: type) -> Iterator[None]:
        """forgeKontext.__init__ keeps the original forward; process_before_every_sampling does
        ``IntegratedFluxTransformer2DModel.forward = patched_flux_forward``; postprocess restores it."""
        self.state.original_forward = flux_class.forward
        flux_class.forward = self.forward
        try:
            yield
        finally:
            self.state.latent = None
            self.state.ids = None
            flux_class.forward = self.state.original_forward


def observe_blocks(sc: Scenario, config: RepulsionConfig, cfg: float = 1.0) -> dict[str, tuple[Any, Any]]:
    """One repelled run recording every block's output before repulsion (a hook prepended ahead of ForgeRepulsion's)
    and after it (a hook behind it). The observers are attached inside the model call only, after ForgeRepulsion's
    own hooks, and removed before it returns."""
    dm = sc.unet.model.diffusion_model
    job = ForgeRepulsion(config)
    clone = sc.unet.clone()
    job.patch(clone)
    previous = clone.model_options["model_function_wrapper"]
    seen: dict[str, list[Any]] = {}

    def snapshot(out: Any) -> Any:
        return tuple(t.clone() for t in out) if isinstance(out, tuple) else out.clone()

    def observing(apply_model, args):
        def observed_apply_model(*a, **k):
            handles = []
            for kind, blocks in (("double", dm.double_blocks), ("single", dm.single_blocks)):
                for i, block in enumerate(blocks):
                    slot = seen.setdefault(f"{kind}.{i}", [None, None])

                    def before(m, a_, out, slot=slot):
                        slot[0] = snapshot(out)

                    def after(m, a_, out, slot=slot):
                        slot[1] = snapshot(out)

                    handles.append(block.register_forward_hook(before, prepend=True))
                    handles.append(block.register_forward_hook(after))
            try:
                return apply_model(*a, **k)
            finally:
                for h in handles:
                    h.remove()

        return previous(observed_apply_model, args)

    clone.model_options["model_function_wrapper"] = observing
    sc.sample(clone, SIGMA_IN, cfg)
    return {name: (b, a) for name, (b, a) in seen.items()}


def verify_kontext(forge: Forge, ext: KontextExtension, check: Checks) -> None:
    flux_class = forge.flux.IntegratedFluxTransformer2DModel
    original = flux_class.forward
    print(f"\n== Flux Kontext: {ext.root} (commit {ext.commit()}), patched_flux_forward from {ext.file.name} ==")
    check(
        "extension file installs class-level forward and restores it (as mirrored here)",
        ext.imports_flux_class
        and "IntegratedFluxTransformer2DModel.forward = patched_flux_forward" in ext.statements
        and "IntegratedFluxTransformer2DModel.forward = forgeKontext.original_forward" in ext.statements,
    )
    check(
        "patched_flux_forward: every global it reads is bound (torch, rearrange, repeat, forgeKontext)",
        not ext.unbound,
        f"unbound: {ext.unbound}" if ext.unbound else "",
    )

    def params(fn: Callable) -> list[str]:
        return [str(p) for p in inspect.signature(fn).parameters.values()]

    check(
        "patched_flux_forward has Forge's IntegratedFluxTransformer2DModel.forward signature",
        params(ext.forward) == params(original),
        f"{params(ext.forward)} vs {params(original)}",
    )

    sc = Scenario(forge, "Flux Kontext", forge.flux_unet(seed=5), ctx_len=8, unctx_len=8, guidance=True)
    dm = sc.unet.model.diffusion_model
    plain = sc.sample(sc.unet, SIGMA_IN, 1.0)
    n_ref = ext.set_reference()
    n_img = (sc.x.shape[2] // 2) * (sc.x.shape[3] // 2)
    print(f"      target {tuple(sc.x.shape)} = {n_img} image tokens, reference {n_ref} tokens (index 1), B={B}")

    def still_extension(tag: str) -> None:
        check(
            f"{tag}: IntegratedFluxTransformer2DModel.forward is still the extension's (none on the instance)",
            flux_class.forward is ext.forward and "forward" not in vars(dm) and dm.forward.__func__ is ext.forward,
            getattr(flux_class.forward, "__qualname__", flux_class.forward),
        )

    def run(tag: str, unet, cfg: float, sigma: float) -> torch.Tensor:
        reads = ext.state.ids_reads
        out = sc.sample(unet, sigma, cfg)
        calls = ext.state.ids_reads - reads
        check(
            f"{tag}: output {tuple(out.shape)} = the target's (reference tokens cropped), extension forward ran",
            out.shape == sc.x.shape and calls == 1 and bool(torch.isfinite(out).all()),
            f"{calls} forward(s) with the reference",
        )
        return out

    with ext.installed(flux_class):
        check(
            "installed: the class forward is the extension's function, compiled from its file",
            flux_class.forward is ext.forward and ext.forward.__code__.co_filename == str(ext.file),
            ext.forward.__code__.co_filename,
        )
        base = run("plain patcher with Kontext", sc.unet, 1.0, SIGMA_IN)
        check(
            "plain patcher with Kontext: reference tokens change the output",
            not torch.allclose(base, plain),
            f"max |diff| {float((base - plain).abs().max()):.3e}",
        )
        blocks = {"double.0", "double.1", "single.0", "single.1"}
        for single in ("all", "text"):
            tag = f"Kontext cond only, cfg 1, sigma {SIGMA_IN}, single_blocks={single!r}"
            job, clone, spy = sc.patched(RepulsionConfig(strength=0.5, iterations=4, single_blocks=single))
            out = run(tag, clone, 1.0, SIGMA_IN)
            check(f"{tag}: wrapper saw [[0]]", spy.calls == [[0]], spy.calls)
            check(
                f"{tag}: output differs from the plain patcher with Kontext",
                not torch.allclose(out, base),
                f"max |diff| {float((out - base).abs().max()):.3e}",
            )
            stats = job.engine.stats
            check(
                f"{tag}: stats: double and single blocks repelled, branch cond, {B} rows",
                {s.block for s in stats} == blocks
                and len(stats) == len(blocks)
                and all(s.branch == "cond" and s.rows == B for s in stats),
                stats_summary(job),
            )
            check(f"{tag}: hooks attached during the call", spy.hooks_during == [len(blocks)], spy.hooks_during)
            check(
                f"{tag}: no forward hook left",
                forward_hooks(dm) == 0 and job.attached_hooks == 0,
                f"{forward_hooks(dm)} hooks",
            )
            still_extension(tag)
            job.close()

        # Which tokens are repelled: text always; target image tokens in single blocks with "all"; never the reference
        n_txt = sc.text_len(sc.cond_text[0])
        for single, repelled in (("all", n_txt + n_img), ("text", n_txt)):
            tag = f"Kontext single_blocks={single!r}: tokens changed in the blocks"
            seen = observe_blocks(sc, RepulsionConfig(strength=0.5, iterations=4, single_blocks=single))
            doubles = [seen[f"double.{i}"] for i in range(len(dm.double_blocks))]
            singles = [seen[f"single.{i}"] for i in range(len(dm.single_blocks))]
            check(
                f"{tag}: double blocks: text stream repelled, image stream ({n_img} + {n_ref} reference) untouched",
                all(not torch.equal(b[1], a[1]) and torch.equal(b[0], a[0]) for b, a in doubles),
            )
            ok = all(
                not torch.equal(b[:, :repelled], a[:, :repelled]) and torch.equal(b[:, repelled:], a[:, repelled:])
                for b, a in singles
            )
            first_b, first_a = singles[0]
            changed = (first_b != first_a).any(dim=-1).any(dim=0).nonzero().flatten().tolist()
            check(
                f"{tag}: single blocks: first {repelled} tokens (text {n_txt}"
                + (f" + image {n_img}" if single == "all" else "")
                + f") repelled, the {n_txt + n_img + n_ref - repelled} after them (incl. {n_ref} reference) untouched",
                ok,
                f"single.0 changed tokens {changed[:3]}..{changed[-3:]} of {first_b.shape[1]}"
                if changed
                else "single.0 unchanged",
            )
            check(f"{tag}: observers removed, no hook left", forward_hooks(dm) == 0)
            still_extension(tag)

        tag = f"Kontext cond+uncond, cfg 3.5, sigma {SIGMA_IN}"
        base_cfg = run(f"{tag} (plain)", sc.unet, 3.5, SIGMA_IN)
        job, clone, spy = sc.patched()
        out = run(tag, clone, 3.5, SIGMA_IN)
        stats = job.engine.stats
        check(
            f"{tag}: one batched call [[1, 0]], repelled per branch, {B} rows each",
            spy.calls == [[1, 0]]
            and not torch.allclose(out, base_cfg)
            and {s.block for s in stats} == blocks
            and all(s.rows == B for s in stats)
            and [s.branch for s in stats if s.block == "double.0"] == ["uncond", "cond"],
            f"{spy.calls}; {stats_summary(job)}",
        )
        check(f"{tag}: no forward hook left", forward_hooks(dm) == 0 and job.attached_hooks == 0)
        still_extension(tag)

        tag = f"Kontext cond only, cfg 1, sigma {SIGMA_OUT} (outside the window)"
        base_out = run(f"{tag} (plain)", sc.unet, 1.0, SIGMA_OUT)
        job, clone, spy = sc.patched()
        out = run(tag, clone, 1.0, SIGMA_OUT)
        check(f"{tag}: bit-identical to the plain patcher", torch.equal(out, base_out))
        check(
            f"{tag}: nothing attached, no repulsion recorded",
            spy.hooks_during == [0] and not job.engine.stats and forward_hooks(dm) == 0,
            f"{spy.hooks_during}; {stats_summary(job)}",
        )
        still_extension(tag)

        tag = f"Kontext enabled=False, sigma {SIGMA_IN}"
        _, clone, _ = sc.patched(RepulsionConfig(enabled=False))
        check(f"{tag}: bit-identical to the plain patcher", torch.equal(run(tag, clone, 1.0, SIGMA_IN), base))
        still_extension(tag)

    check(
        "after the extension's postprocess: original forward restored, output as before Kontext",
        flux_class.forward is original and torch.equal(sc.sample(sc.unet, SIGMA_IN, 1.0), plain),
    )


def verify_standins(forge: Forge, check: Checks) -> list[str]:
    """Compare tests/forge_standins.py with the real Forge: checks where the adapter relies on it, notes elsewhere."""
    print("\n== tests/forge_standins.py vs the real Forge ==")
    notes: list[str] = []
    try:
        from tests import forge_standins as st
    except ImportError as exc:
        print(f"  (skipped: cannot import tests.forge_standins: {exc})")
        return notes
    kp = forge.k_prediction
    for name, real, fake in (
        ("PredictionFlux()", kp.PredictionFlux(), st.PredictionFlux()),
        ("PredictionFlux(mu=1.0) (Chroma, schnell)", kp.PredictionFlux(mu=1.0), st.PredictionFlux(mu=1.0)),
        ("PredictionDiscreteFlow(shift=3.0)", kp.PredictionDiscreteFlow(shift=3.0), st.PredictionDiscreteFlow(3.0)),
    ):
        s = torch.tensor([1.0, 0.5, 0.1])
        same = (
            real.sigmas.shape == fake.sigmas.shape
            and torch.allclose(real.sigmas.float(), fake.sigmas.float(), rtol=1e-6, atol=1e-7)
            and torch.allclose(real.timestep(s), fake.timestep(s))
            and all(math.isclose(real.percent_to_sigma(p), fake.percent_to_sigma(p)) for p in (0.0, 0.05, 0.5, 1.0))
        )
        check(f"stand-in {name}: same sigma table, timestep() and percent_to_sigma()", same)

    def params(fn) -> list[str]:
        return [
            (p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}")
            for p in inspect.signature(fn).parameters.values()
        ]

    pairs = (
        (
            "IntegratedFluxTransformer2DModel.forward",
            forge.flux.IntegratedFluxTransformer2DModel.forward,
            st.IntegratedFluxTransformer2DModel.forward,
            "backend/nn/flux.py",
        ),
        (
            "DoubleStreamBlock.forward",
            forge.flux.DoubleStreamBlock.forward,
            st.DoubleStreamBlock.forward,
            "backend/nn/flux.py",
        ),
        (
            "SingleStreamBlock.forward",
            forge.flux.SingleStreamBlock.forward,
            st.SingleStreamBlock.forward,
            "backend/nn/flux.py",
        ),
        ("MMDiTX.forward", forge.mmditx.MMDiTX.forward, st.MMDiTX.forward, "backend/nn/mmditx.py"),
        (
            "KModel.apply_model",
            sys.modules["backend.modules.k_model"].KModel.apply_model,
            st.KModel.apply_model,
            "backend/modules/k_model.py",
        ),
    )
    for name, real, fake, where in pairs:
        rp, fp = params(real), params(fake)
        if rp != fp:
            notes.append(f"{name}: Forge {where} has ({', '.join(rp)}), stand-in has ({', '.join(fp)})")
    for note in notes:
        print(f"  [NOTE] {note}")
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("forge", help="path to a stable-diffusion-webui-forge checkout")
    parser.add_argument(
        "--kontext",
        metavar="PATH",
        help="path to a DenOfEquity/forge2_flux_kontext checkout: also verify Flux Kontext through that extension",
    )
    ns = parser.parse_args(argv)
    root = forge_root_or_exit(ns.forge)
    kontext_file = kontext_file_or_exit(ns.kontext) if ns.kontext else None
    forge = Forge(root)
    torch.set_grad_enabled(False)
    print(
        f"Forge at {root} (commit {forge.commit()}), torch {torch.__version__}, device {forge.mm.get_torch_device()}"
    )
    check = Checks()

    flux = Scenario(forge, "Flux (dev-like, guidance embed)", forge.flux_unet(), ctx_len=8, unctx_len=8, guidance=True)
    verify_model(
        forge,
        flux,
        check,
        hooked_blocks=4,
        expect_blocks={"double.0", "double.1", "single.0", "single.1"},
        single_blocks=2,
    )

    sd3 = Scenario(forge, "SD3 (MMDiT-X, depth 3)", forge.sd3_unet(), ctx_len=8, unctx_len=8, guidance=False)
    verify_model(forge, sd3, check, hooked_blocks=3, expect_blocks={"double.0", "double.1"})
    check(
        "MMDiTX: the last (pre_only) joint block is never repelled",
        sd3.unet.model.diffusion_model.joint_blocks[-1].context_block.pre_only,
    )

    if forge.chroma is not None:
        chroma = Scenario(
            forge,
            "Chroma (T5 only, real CFG)",
            forge.chroma_unet(),
            ctx_len=8,
            unctx_len=8,
            guidance=False,
            tensor_text=True,
        )
        verify_model(
            forge,
            chroma,
            check,
            hooked_blocks=4,
            expect_blocks={"double.0", "double.1", "single.0", "single.1"},
            single_blocks=2,
        )
    else:
        print("\n== Chroma: skipped (this checkout has no backend/nn/chroma.py) ==")

    if kontext_file is not None:
        verify_kontext(forge, KontextExtension(kontext_file), check)
    else:
        print("\n== Flux Kontext: skipped (no --kontext /path/to/forge2_flux_kontext given) ==")

    verify_standins(forge, check)

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
