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

SPELL (``ForgeSpell``, a post-CFG function) runs whole 6-step Euler generations through ``sampling_function_inner``
at CFG 3 on a tiny SD1.5-like UNet (Forge's ``backend/nn/unet.py`` ``IntegratedUNet2DConditionModel`` with the eps
predictor SD1.5's scheduler maps to) and on Flux: no reference in range is bit-identical, a protected set made of the
baseline's outputs pushes every output out of its shields, cross-batch memory repels the next batch.

It prints one line per check and ends with ``VERIFIED: <n> checks passed`` (exit 0) or the list of failures (exit 1);
exit 2 when the path is not a Forge checkout or Forge's backend cannot be imported.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import contextlib
import inspect
import math
import symtable
import sys
from collections.abc import Callable, Iterator, Set
from pathlib import Path
from typing import Any

# tools/ for forge_verify_common, which puts the repository root on sys.path (lib_ctxrep, tests/) and never imports
# Forge's backend (Forge() below puts it on sys.path first).
TOOLS = Path(__file__).resolve().parent
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

import torch  # noqa: E402
from forge_verify_common import (  # noqa: E402
    FLUX_BLOCKS,
    SIGMA_IN,
    SIGMA_OUT,
    B,
    Checks,
    ModelChecks,
    Scenario,
    die,
    forward_hooks,
    git_commit,
    load_function,
    max_diff,
    observe,
    prepare_model,
    repulsion,
    stats_summary,
    tiny_flux_config,
    verify_spell,
)

from lib_ctxrep import RepulsionConfig  # noqa: E402

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


# --------------------------------------------------------------------------------------------------------------------
# Loading Forge
# --------------------------------------------------------------------------------------------------------------------
def forge_root_or_exit(path: str) -> Path:
    root = Path(path).expanduser().resolve()
    missing = [m for m in FORGE_MARKERS if not (root / m).exists()]
    if not root.is_dir() or missing:
        die(
            f"verify_forge: {path!r} is not a stable-diffusion-webui-forge checkout "
            f"(missing: {', '.join(missing) if root.is_dir() else 'the directory itself'}).\n"
            "Usage: python tools/verify_forge.py /path/to/stable-diffusion-webui-forge"
        )
    return root


class Forge:
    """Forge's own backend modules, imported from a checkout."""

    def __init__(self, root: Path) -> None:
        if "backend" in sys.modules:
            die("verify_forge: a module named 'backend' is already imported; run this script in a fresh process")
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
            die(f"verify_forge: cannot import Forge's backend from {root}: {exc!r} (install its dependencies)")
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
        return load_function(path, path.read_text(encoding="utf-8"), name)

    def commit(self) -> str:
        return git_commit(self.root)

    # --- models, wrapped as backend/diffusion_engine/{flux,sd35}.py and backend/loader.py do ---------------------
    def _unet(self, model: torch.nn.Module, predictor: torch.nn.Module):
        model = model.float().eval()
        prepare_model(model, self.mm, initial_device=self.mm.get_torch_device())
        return self.UnetPatcher.from_model(model=model, diffusers_scheduler=None, config=None, k_predictor=predictor)

    def flux_unet(self, seed: int = 0):
        torch.manual_seed(seed)
        model = self.flux.IntegratedFluxTransformer2DModel(**tiny_flux_config(), guidance_embed=True)
        return self._unet(model, self.k_prediction.PredictionFlux())

    def chroma_unet(self, seed: int = 0):
        """backend/loader.py: IntegratedChromaTransformer2DModel(**config); backend/diffusion_engine/chroma.py:
        UnetPatcher.from_model(..., k_predictor=PredictionFlux(mu=1.0))."""
        torch.manual_seed(seed)
        model = self.chroma.IntegratedChromaTransformer2DModel(
            **tiny_flux_config(),
            guidance_out_dim=64,  # = hidden_size (the modulation vectors), as 3072 is for the real model
            guidance_hidden_dim=32,
            guidance_n_layers=2,
        )
        return self._unet(model, self.k_prediction.PredictionFlux(mu=1.0))

    def sd15_unet(self, seed: int = 0):
        """A tiny SD1.5-like UNet: backend/loader.py builds ``IntegratedUNet2DConditionModel`` from the checkpoint's
        config; backend/diffusion_engine/sd15.py wraps it with the predictor that ``k_prediction_from_diffusers_
        scheduler`` makes of SD1.5's scheduler (eps, "scaled_linear" betas 0.00085..0.012 -> Prediction(linear))."""
        from backend.nn.unet import IntegratedUNet2DConditionModel

        torch.manual_seed(seed)
        model = IntegratedUNet2DConditionModel(
            in_channels=4, model_channels=32, out_channels=4, num_res_blocks=1, channel_mult=(1, 2),
            num_head_channels=16, use_spatial_transformer=True, transformer_depth=[1, 1],
            transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1, context_dim=32,
            use_linear_in_transformer=True,
        )  # fmt: skip
        predictor = self.k_prediction.Prediction(
            prediction_type="epsilon", beta_schedule="linear", linear_start=0.00085, linear_end=0.012
        )
        return self._unet(model, predictor)

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
def verify_model(
    forge: Forge,
    sc: Scenario,
    check: Checks,
    *,
    hooked_blocks: int,
    expect_blocks: Set[str],
    single_blocks: int = 0,
) -> None:
    """Cases (a)-(d), (e) with single blocks, a chained wrapper, the shared patcher, the window on Forge's schedule."""
    model = ModelChecks(sc, check, hooked_blocks=hooked_blocks, expect_blocks=expect_blocks)
    model.cases("wrapper saw cond_or_uncond", short_uncond=bool(single_blocks))
    model.chained_wrapper()
    model.shared_patcher()
    model.schedule_window(forge.simple_scheduler, "Forge")
    predictor = sc.unet.model.predictor
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
        die(
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
            die(f"verify_forge: {file} has no top-level function patched_flux_forward")
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
        return git_commit(self.root)

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
    """One repelled run recording every block's output before repulsion and after it (``observe``), for the last
    model call: {block name: (before, after)}."""
    dm = sc.unet.model.diffusion_model
    blocks = {f"double.{i}": b for i, b in enumerate(dm.double_blocks)}
    blocks.update({f"single.{i}": b for i, b in enumerate(dm.single_blocks)})
    seen = observe(sc, config, cfg, blocks)
    return {name: (calls[-1].before, calls[-1].after) for name, calls in seen.items() if calls}


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

    def compare(tag: str, cfg: float, sigma: float):
        """The plain patcher with Kontext, then a patched clone: (job, spy, base, out)."""
        base = run(f"{tag} (plain)", sc.unet, cfg, sigma)
        job, clone, spy = sc.patched()
        return job, spy, base, run(tag, clone, cfg, sigma)

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
            max_diff(base, plain),
        )
        blocks = FLUX_BLOCKS
        for single in ("all", "text"):
            tag = f"Kontext cond only, cfg 1, sigma {SIGMA_IN}, single_blocks={single!r}"
            job, clone, spy = sc.patched(repulsion(single_blocks=single))
            out = run(tag, clone, 1.0, SIGMA_IN)
            check(f"{tag}: wrapper saw [[0]]", spy.calls == [[0]], spy.calls)
            check(
                f"{tag}: output differs from the plain patcher with Kontext",
                not torch.allclose(out, base),
                max_diff(out, base),
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
            seen = observe_blocks(sc, repulsion(single_blocks=single))
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
        job, spy, base_cfg, out = compare(tag, 3.5, SIGMA_IN)
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
        job, spy, base_out, out = compare(tag, 1.0, SIGMA_OUT)
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
    verify_model(forge, flux, check, hooked_blocks=4, expect_blocks=FLUX_BLOCKS, single_blocks=2)

    sd3 = Scenario(forge, "SD3 (MMDiT-X, depth 3)", forge.sd3_unet(), ctx_len=8, unctx_len=8, guidance=False)
    # the last joint block outputs no text stream: the block map does not hook it
    verify_model(forge, sd3, check, hooked_blocks=2, expect_blocks={"double.0", "double.1"})
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
        verify_model(forge, chroma, check, hooked_blocks=4, expect_blocks=FLUX_BLOCKS, single_blocks=2)
    else:
        print("\n== Chroma: skipped (this checkout has no backend/nn/chroma.py) ==")

    if kontext_file is not None:
        verify_kontext(forge, KontextExtension(kontext_file), check)
    else:
        print("\n== Flux Kontext: skipped (no --kontext /path/to/forge2_flux_kontext given) ==")

    verify_spell(
        forge,
        [
            ("SD1.5-like UNet (IntegratedUNet2DConditionModel, eps)", forge.sd15_unet(), 4, dict(tensor_text=True)),
            ("Flux (dev-like)", forge.flux_unet(), 16, dict(guidance=True)),
        ],
        check,
        lambda name, unet, kw: Scenario(forge, name, unet, ctx_len=8, unctx_len=8, **kw),
    )
    verify_standins(forge, check)
    return check.report()


if __name__ == "__main__":
    sys.exit(main())
