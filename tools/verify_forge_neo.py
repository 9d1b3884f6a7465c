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

Neo's other DiTs, where the Neo version has them (otherwise a note), each built tiny from Neo's own class with the
constructor arguments ``huggingface_guess/detection.py`` gives the real checkpoint, and wrapped as its diffusion engine
wraps it (``UnetPatcher.from_model`` with the engine's predictor and the ``model_list`` entry as ``estimated_config``;
a note if the engine's source no longer says so): Qwen-Image (``backend/nn/qwen.py``, dual-stream
``transformer_blocks`` returning (text, image), [B, 16, 1, H, W] latents, ``PredictionDiscreteFlow``), Qwen-Image-Edit
(the same with ``dynamic_args["ref_latents"]``, appended to the image stream), Z-Image (``backend/nn/lumina.py``
``NextDiT`` with ``pad_tokens_multiple`` 32 and a caption that is not a multiple of it: one [caption + cap_pad_token
padding; image + x_pad_token padding] sequence through ``layers``, ``PredictionDiscreteFlow`` with the engine's shift
3) and Chroma (``backend/nn/chroma.py``, Flux's Neo blocks, ``PredictionFlux(mu=1.0)``). For each: cases (a)-(e), in
and out of the window at the first two sigmas of Neo's "simple" schedule of that predictor (w), ``enabled=False``
bit-identical, and an observation of every block in every model call (its output before ForgeRepulsion's hook, after
it, and what the next block receives; the streams told apart by token count, not by the block map): at hooked
dual-stream blocks the image stream is exactly what the block computed and every text token changes, blocks not
selected by ``blocks`` are untouched (o); Qwen-Image-Edit's reference tokens never change (r); Z-Image's selected
layers change exactly the valid caption tokens, never caption padding or image tokens, also with a negative caption of
another length in a call of its own (z). An exception raised inside an in-window call (a block's forward pre-hook, a
``patches_replace["dit"]`` block patch) propagates, leaves no hook attached and the engine inactive, and the job then
repels as a fresh one; the shared patcher's ``model_options`` stay untouched.

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
import importlib
import inspect
import io
import math
import re
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
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
    STEPS,
    B,
    Checks,
    ModelChecks,
    Seen,
    die,
    forward_hooks,
    git,
    keep,
    load_function,
    max_diff,
    observe,
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


@dataclass(frozen=True)
class OtherModel:
    """One of Neo's other DiTs: where Neo has it and how its engine wraps it. ``config`` is a tiny version of what
    huggingface_guess/detection.py gives the real checkpoints (the loader passes it to the class as keyword
    arguments, and to the model_list entry ``guess`` to make the engine's ``estimated_config``)."""

    family: str
    module: str  # backend/nn/<module>.py
    cls: str
    guess: str  # huggingface_guess model_list entry
    engine: str  # backend/diffusion_engine/<engine>.py
    predictor: str  # how the engine makes its k_predictor (checked against the engine's source: a note if it differs)
    config: dict
    fill: tuple[str, ...] = ()  # parameters the class leaves to the checkpoint (torch.empty)
    frames: bool = False  # latents [B, C, T, H, W] (engines with is_wan = True: the Wan VAE)


#: Qwen-Image (ComfyUI's port): 3 dual-stream transformer_blocks returning (text, image), 2 heads x 32.
QWEN = OtherModel(
    "Qwen-Image",
    "qwen",
    "QwenImageTransformer2DModel",
    "QwenImage",
    "qwen",
    "PredictionDiscreteFlow(estimated_config)",
    dict(
        patch_size=2,
        in_channels=64,
        out_channels=16,
        num_layers=3,
        attention_head_dim=32,
        num_attention_heads=2,
        joint_attention_dim=32,
        axes_dims_rope=(8, 12, 12),
    ),
    frames=True,
)
#: Z-Image: NextDiT with detection.py's Z-Image flags (z_image_modulation, which needs dim >= 256; time scale 1000;
#: pad_tokens_multiple 32, set when the checkpoint has cap_pad_token), 3 layers after 1 noise / 1 context refiner.
ZIMAGE = OtherModel(
    "Z-Image",
    "lumina",
    "NextDiT",
    "ZImage",
    "zimage",
    "PredictionDiscreteFlow(estimated_config)",
    dict(
        patch_size=2,
        in_channels=16,
        dim=256,
        n_layers=3,
        n_refiner_layers=1,
        n_heads=4,
        n_kv_heads=4,
        multiple_of=64,
        ffn_dim_multiplier=8.0 / 3.0,
        norm_eps=1e-5,
        qk_norm=True,
        cap_feat_dim=32,
        axes_dims=[16, 24, 24],
        axes_lens=[1536, 512, 512],
        rope_theta=256.0,
        z_image_modulation=True,
        time_scale=1000.0,
        pad_tokens_multiple=32,
    ),
    fill=("x_pad_token", "cap_pad_token"),
)
#: Chroma: Flux's Neo blocks (2 double, 2 single) without modulation, fed by the distilled guidance approximator.
CHROMA = OtherModel(
    "Chroma",
    "chroma",
    "IntegratedChromaTransformer2DModel",
    "Chroma",
    "chroma",
    "PredictionFlux(mu=1.0)",
    dict(
        tiny_flux_config(),
        in_channels=64,
        out_channels=64,
        patch_size=2,
        in_dim=64,
        out_dim=64,
        hidden_dim=64,
        n_layers=2,
        txt_ids_dims=[],
        vec_in_dim=None,
    ),  # fmt: skip
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
        models = []
        for spec in (QWEN, ZIMAGE, CHROMA):
            path = self.root / f"backend/nn/{spec.module}.py"
            text = _read(path) if path.exists() else None
            models.append(
                f"{spec.module}.py " + (hashlib.sha256(text.encode()).hexdigest()[:12] if text else "absent")
            )
        return f"{where}; backend fingerprint {digest.hexdigest()[:12]}; models: {', '.join(models)}"

    # --- dynamic_args: a dict in some Neo versions, a class with __getitem__/__setitem__ in others -----------------
    def get_dynamic(self, key: str) -> Any:
        return self.args.dynamic_args[key]

    def set_dynamic(self, key: str, value: Any) -> None:
        self.args.dynamic_args[key] = value

    # --- the model, built as backend/loader.py and backend/diffusion_engine/flux.py do -------------------------------
    def build_model(self, cls: type, config: dict, seed: int = 0, fill: tuple[str, ...] = ()) -> torch.nn.Module:
        """``cls(**config)`` as backend/loader.py makes it: constructed under ``using_forge_operations`` (float32, CPU)
        and loaded from a state dict, here of random weights made by plain torch.nn (seeded). Parameters whose names
        end with one of ``fill`` (made by ``torch.empty`` and left to the checkpoint, e.g. NextDiT's pad tokens) get
        seeded normal values instead."""
        torch.manual_seed(seed)
        weights = {k: v.clone() for k, v in cls(**config).state_dict().items()}  # random init by plain torch.nn
        for k in weights:
            if k.endswith(fill):
                weights[k] = torch.randn(weights[k].shape, generator=torch.Generator().manual_seed(seed + 1))
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
        return model

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
        model = self.build_model(cls, config, seed)
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

    def other_unet(self, spec: OtherModel, seed: int = 0):
        """A tiny ``spec`` model wrapped as its diffusion engine wraps it (``UnetPatcher.from_model`` with the engine's
        predictor), or None (and a note) if this Neo version does not have it."""
        try:
            module = importlib.import_module(f"backend.nn.{spec.module}")
        except ImportError as exc:
            self.notes.append(f"no {spec.family} in this Neo version (backend/nn/{spec.module}.py: {exc!r})")
            return None
        cls = getattr(module, spec.cls, None)
        guess = getattr(self.model_list, spec.guess, None)
        if cls is None or guess is None:
            what = f"backend/nn/{spec.module}.py has no {spec.cls}" if cls is None else f"no model_list.{spec.guess}"
            self.notes.append(f"no {spec.family} in this Neo version ({what})")
            return None
        params = inspect.signature(cls.__init__).parameters
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            unknown = [k for k in spec.config if k not in params]
            if unknown:
                self.notes.append(f"no {spec.family} in this Neo version ({spec.cls} lacks {unknown})")
                return None
        engine = self.root / f"backend/diffusion_engine/{spec.engine}.py"
        if not engine.exists() or spec.predictor not in _read(engine):
            self.notes.append(
                f"{spec.family}: backend/diffusion_engine/{spec.engine}.py does not say {spec.predictor} (this script "
                "wraps the model so): check how this Neo version wraps it"
            )
        model = self.build_model(cls, dict(spec.config), seed, spec.fill)
        estimated_config = guess(dict(spec.config))  # what huggingface_guess hands the engine
        if spec.predictor.startswith("PredictionDiscreteFlow"):
            predictor = self.k_prediction.PredictionDiscreteFlow(estimated_config)
            if spec.engine == "zimage" and hasattr(predictor, "set_parameters"):
                # zimage.py get_learned_conditioning: shift = the "distilled CFG" slider, 3.0 by default
                predictor.set_parameters(shift=3.0)
        else:
            prediction_flux = self.k_prediction.PredictionFlux
            if "mu" in inspect.signature(prediction_flux.__init__).parameters:
                predictor = prediction_flux(mu=1.0)
            else:
                predictor = prediction_flux(estimated_config)
        with contextlib.redirect_stdout(io.StringIO()):
            return self.UnetPatcher.from_model(
                model=model, diffusers_scheduler=None, config=estimated_config, k_predictor=predictor
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
            process_runs = job.engine.process_runs

            def recording_process(block, runs, process_runs=process_runs, spans=spans):
                if block.startswith("single."):
                    spans.extend(token_spans(run.parts) for run in runs)
                return process_runs(block, runs)

            job.engine.process_runs = recording_process
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
        process_runs = job.engine.process_runs

        def recording_process(block_name, runs, process_runs=process_runs, returned=returned):
            changes = process_runs(block_name, runs)
            if changes and changes[0]:  # the first run's text rows, with every changed group in its place
                text = runs[0].parts[0].clone()
                for start, new in changes[0]:
                    text[start : start + new[0].shape[0]] = new[0]
                returned[block_name] = text
            return changes

        job.engine.process_runs = recording_process
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


# --------------------------------------------------------------------------------------------------------------------
# Neo's other DiTs: Qwen-Image (and Edit), Z-Image, Chroma
# --------------------------------------------------------------------------------------------------------------------
WRAPPER_SEEN = "model_function_wrapper called by Neo, cond_or_uncond"
RAISED = "raised on purpose by verify_forge_neo"


class DiTScenario(BaseScenario):
    """One of Neo's other DiTs with its fixed inputs: the text as one tensor (``c_crossattn`` alone: Neo's Qwen,
    Qwen3 and T5 engines return a tensor) of ``ctx_len`` tokens, on [B, 16, 8, 8] latents, or [B, 16, 1, 8, 8]
    with ``frames`` (engines with ``is_wan``). Conditions are cut to the rows of the batch sampled."""

    def __init__(
        self, neo: Neo, name: str, unet, ctx_len: int = 6, unctx_len: int | None = None, frames: bool = False
    ) -> None:
        super().__init__(neo, name, unet, ctx_len, unctx_len, tensor_text=True)
        self.neo = neo
        if frames:
            self.x = self.x.unsqueeze(2)

    def conditioning(self, text: torch.Tensor, rows: int) -> torch.Tensor:
        return text[:rows]


def changed_tokens(before: torch.Tensor, after: torch.Tensor) -> list[int]:
    """Token positions ([rows, tokens, dim] tensors) where any row differs."""
    return (before != after).any(dim=-1).any(dim=0).nonzero().flatten().tolist()


def untouched(before: Any, after: Any) -> bool:
    """A block's output (a tensor or a tuple) is what the block computed."""
    if isinstance(before, tuple):
        return len(before) == len(after) and all(untouched(a, b) for a, b in zip(before, after, strict=True))
    if isinstance(before, torch.Tensor):
        return isinstance(after, torch.Tensor) and torch.equal(before, after)
    return before is after


def show(tokens: list[int]) -> str:
    """Changed token positions, briefly: '0..5 (6)', 'none'."""
    if not tokens:
        return "none"
    if tokens == list(range(tokens[0], tokens[-1] + 1)):
        return f"{tokens[0]}..{tokens[-1]} ({len(tokens)})"
    return f"{tokens[:8]}{'...' if len(tokens) > 8 else ''} ({len(tokens)})"


def streams(out: tuple, text_len: int) -> tuple[int, int]:
    """(text index, image index) in a dual-stream block's output, told apart by their token counts (this script's
    own reading, not the block map's)."""
    lengths = [t.shape[1] if isinstance(t, torch.Tensor) else None for t in out]
    text = [i for i, n in enumerate(lengths) if n == text_len]
    image = [i for i, n in enumerate(lengths) if n is not None and n != text_len]
    if len(text) != 1 or len(image) != 1:
        raise RuntimeError(f"cannot tell the text and image streams apart (lengths {lengths}, text {text_len})")
    return text[0], image[0]


def check_dual(check: Checks, tag: str, seen: dict[str, list[Seen]], hooked: list[str], image_tokens: int) -> None:
    """Dual-stream blocks: the hooked ones keep their image stream exactly as computed and change every text token;
    the others are left exactly as computed."""
    detail, image_ok, text_ok = [], True, True
    for name in hooked:
        for n, call in enumerate(seen[name]):
            t, i = streams(call.before, call.text_len)
            image_ok &= call.before[i].shape[1] == image_tokens and torch.equal(call.before[i], call.after[i])
            text = changed_tokens(call.before[t], call.after[t])
            text_ok &= text == list(range(call.text_len))
            image = changed_tokens(call.before[i], call.after[i])
            detail.append(f"{name}/{n}: text {show(text)} of {call.text_len}, image {show(image)}")
    calls = len(seen[hooked[0]])
    check(
        f"{tag}: {', '.join(hooked)} ({calls} call{'s' if calls > 1 else ''}): image stream ({image_tokens} tokens) "
        "exactly what the block computed",
        image_ok and calls > 0,
        "; ".join(detail),
    )
    check(f"{tag}: {', '.join(hooked)}: every text token changed", text_ok and calls > 0, "; ".join(detail))
    others = [name for name in seen if name.startswith("double.") and name not in hooked]
    if others:
        check(
            f"{tag}: {', '.join(others)} (not selected): output exactly what the block computed",
            all(untouched(c.before, c.after) for n in others for c in seen[n]),
        )


def check_passed_on(check: Checks, tag: str, seen: dict[str, list[Seen]], chain: list[str]) -> None:
    """Each block of ``chain`` gets what the previous one returned (after ForgeRepulsion's hook): every tensor of
    the previous output is one of its inputs, or (dual -> single stream) their concatenation in the model's order is
    its first input."""
    bad = []
    for prev, nxt in zip(chain, chain[1:], strict=False):
        if len(seen[prev]) != len(seen[nxt]) or not seen[prev]:
            bad.append(f"{prev} ran in {len(seen[prev])} calls, {nxt} in {len(seen[nxt])}")
        for n, (p, q) in enumerate(zip(seen[prev], seen[nxt], strict=False)):
            outs = [t for t in (p.after if isinstance(p.after, tuple) else (p.after,)) if isinstance(t, torch.Tensor)]
            inputs = q.inputs
            ok = all(any(x.shape == y.shape and torch.equal(x, y) for y in inputs) for x in outs)
            if not ok and len(outs) == 2 and inputs:
                t, i = streams(p.after, p.text_len)
                ok = torch.equal(inputs[0], torch.cat((p.after[t], p.after[i]), 1))  # Neo's cat((txt, img), 1)
            if not ok:
                bad.append(f"{prev} -> {nxt} in call {n}")
    check(f"{tag}: each block gets the previous block's output as repelled", not bad, "; ".join(bad))


def schedule_steps(neo: Neo, model: ModelChecks) -> None:
    """Inside and outside the window at the first two sigmas of Neo's "simple" schedule of the model's predictor."""
    predictor = model.unet.model.predictor

    class ScheduleLinker:  # what Neo hands its schedulers (k_diffusion/external.py ForgeScheduleLinker)
        sigmas = predictor.sigmas

    sigmas = neo.simple_scheduler(STEPS, None, None, ScheduleLinker, torch.device("cpu")).tolist()
    for step in (0, 1):
        tag = f"(w) step {step} of Neo's {STEPS}-step simple schedule (sigma {sigmas[step]:.4f}), cfg 3.5"
        job, spy, base, out = model.compare(sigmas[step], 3.5)
        model.after_run(tag, job, spy, out, base, step == 0)


def verify_raising(sc: BaseScenario, check: Checks, blocks: dict[str, torch.nn.Module], patch: str | None) -> None:
    """An exception inside an in-window model call, raised by the last block's forward pre-hook and (``patch``:
    Neo's ``patches_replace["dit"]`` block name) by another extension's block patch: it propagates, the wrapper's
    ``finally`` detaches every hook, the engine ends the call, and the job goes on as a fresh one would."""
    dm = sc.unet.model.diffusion_model
    options = repr(sc.unet.model_options)
    name, last = list(blocks.items())[-1]
    index = int(name.rsplit(".", 1)[1])

    def raising(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(RAISED)

    ways = [(f"{name}'s forward pre-hook raises", None)]
    if patch is not None:
        ways.append((f"patches_replace['dit'] ({patch!r}, {index}) raises", patch))
    for how, block_name in ways:
        tag = f"exception inside an in-window call ({how})"
        job, clone, spy = sc.patched()
        handles = []
        if block_name is None:
            handles.append(last.register_forward_pre_hook(raising))
        else:
            clone.set_model_patch_replace(raising, "dit", block_name, index)
        message = ""
        with removing(handles):
            try:
                sc.sample(clone, SIGMA_IN, 3.5)
            except RuntimeError as exc:
                message = str(exc)
        check(
            f"{tag}: propagates from inside the call, no forward hook left, engine inactive",
            message == RAISED
            and spy.hooks_during
            and spy.hooks_during[0] > 0
            and forward_hooks(dm) == 0
            and job.attached_hooks == 0
            and not job.engine.active,
            f"{message or 'nothing raised'}; hooks during the call {spy.hooks_during}, after {forward_hooks(dm)}",
        )
        again = sc.unet.clone()
        job.patch(again)
        _, fresh, _ = sc.patched()
        check(
            f"{tag}: the same job then repels a new call as a fresh job does",
            torch.equal(sc.sample(again, SIGMA_IN, 3.5), sc.sample(fresh, SIGMA_IN, 3.5)),
        )
    check("after the exceptions: the shared patcher's model_options untouched", repr(sc.unet.model_options) == options)


def finish(neo: Neo, model: ModelChecks) -> None:
    model.chained_wrapper()
    model.shared_patcher()
    window = model.schedule_window(neo.simple_scheduler, "Neo")
    model.check(
        "PredictorWindow reads Neo's predictor sigma table (not the 1 - sigma fallback)", window._table is not None
    )


def verify_qwen(neo: Neo, unet, check: Checks) -> None:
    dm = unet.model.diffusion_model
    blocks = {f"double.{i}": b for i, b in enumerate(dm.transformer_blocks)}
    sc = DiTScenario(neo, f"Qwen-Image (tiny: {len(blocks)} dual-stream blocks, [B, 16, 1, 8, 8] latents)", unet,
                     frames=True)  # fmt: skip
    model = ModelChecks(sc, check, hooked_blocks=len(blocks), expect_blocks=set(blocks), check_finite=True)
    model.cases(WRAPPER_SEEN)
    schedule_steps(neo, model)
    image_tokens = (8 // dm.patch_size) ** 2
    for low_vram in (False, True):
        tag = f"(o) blocks='1:3', cfg 3.5, {'split by low VRAM' if low_vram else 'one batched call'}, sigma {SIGMA_IN}"
        seen = observe(sc, repulsion(blocks="1:3"), 3.5, blocks, low_vram=low_vram)
        check_dual(check, tag, seen, ["double.1", "double.2"], image_tokens)
        check_passed_on(check, tag, seen, list(blocks))
        check(f"{tag}: no forward hook left", forward_hooks(dm) == 0)
    verify_raising(sc, check, blocks, "double_block")
    finish(neo, model)


def verify_qwen_edit(neo: Neo, unet, check: Checks) -> None:
    """Qwen-Image-Edit: the engine puts the reference latents in dynamic_args["ref_latents"]; Neo's
    QwenImageTransformer2DModel.forward appends their tokens to the image stream, which is never repelled."""
    dm = unet.model.diffusion_model
    blocks = {f"double.{i}": b for i, b in enumerate(dm.transformer_blocks)}
    sc = DiTScenario(neo, "Qwen-Image-Edit (the Qwen-Image model + one reference latent)", unet, frames=True)
    model = ModelChecks(sc, check, hooked_blocks=len(blocks), expect_blocks=set(blocks), check_finite=True)
    one = torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    plain = sc.sample(unet, SIGMA_IN, 1.0)
    # Neo's flux.py expands a one-image reference to the call's rows; its qwen.py (Feb 2026) concatenates it as it is,
    # so Neo itself only runs calls of as many rows as the reference has. Use such a reference then.
    with kontext_reference(neo, one):
        try:
            sc.sample(unet, SIGMA_IN, 3.5)
            expands = True
        except RuntimeError as exc:
            expands = False
            neo.notes.append(
                "Qwen-Image-Edit: Neo's QwenImageTransformer2DModel.forward does not expand a one-image reference to "
                f"a call of {2 * B} rows ({str(exc).splitlines()[0]}): Neo itself fails on any call of more than one "
                f"row (batch size > 1, or cond and uncond batched); checked here with a {B}-row reference, on calls "
                f"of {B} rows (cfg 1, and cfg 3.5 split by low VRAM)"
            )
    ref = one if expands else one.repeat(B, 1, 1, 1, 1)
    image_tokens = (8 // dm.patch_size) ** 2
    with kontext_reference(neo, ref):
        base = sc.sample(unet, SIGMA_IN, 1.0)
        check(
            "Qwen-Image-Edit: the reference changes the output", not torch.allclose(base, plain), max_diff(base, plain)
        )
        model.case_cond_only(WRAPPER_SEEN)
        if expands:
            model.case_batched()
            model.case_low_vram()
        else:
            for tag, sigma, inside in window_sigmas("(c) cond+uncond split by low VRAM"):
                job, spy, base, out = model.compare(sigma, 3.5, low_vram=True)
                check(f"{tag}: wrapper saw separate calls [[1], [0]]", spy.calls == [[1], [0]], spy.calls)
                model.after_run(tag, job, spy, out, base, inside)
                if inside:
                    branches = [s.branch for s in job.engine.stats]
                    check(
                        f"{tag}: stats: all uncond blocks, then all cond blocks, {B} rows each",
                        {s.block for s in job.engine.stats} == set(blocks)
                        and branches == ["uncond"] * len(blocks) + ["cond"] * len(blocks)
                        and all(s.rows == B for s in job.engine.stats),
                        stats_summary(job),
                    )
        for cfg, low_vram in ((1.0, False), (3.5, True)) if not expands else ((1.0, False), (3.5, False), (3.5, True)):
            what = "cond only" if cfg == 1.0 else ("split by low VRAM" if low_vram else "one batched call")
            tag = f"(r) reference, cfg {cfg}, {what}, sigma {SIGMA_IN}"
            seen = observe(sc, CONFIG, cfg, blocks, low_vram=low_vram)
            check_dual(check, tag, seen, list(blocks), 2 * image_tokens)
            calls = [c for name in blocks for c in seen[name]]
            reference = [
                changed_tokens(c.before[i][:, image_tokens:], c.after[i][:, image_tokens:])
                for c in calls
                for _, i in [streams(c.before, c.text_len)]
            ]
            check(
                f"{tag}: reference tokens ({image_tokens}..{2 * image_tokens - 1} of the image stream) never change",
                calls and not any(reference),
                f"{len(calls)} block calls",
            )
            check_passed_on(check, tag, seen, list(blocks))
            check(f"{tag}: no forward hook left", forward_hooks(dm) == 0)
    check("Qwen-Image-Edit: dynamic_args['ref_latents'] restored", neo.get_dynamic("ref_latents") == [])


def verify_zimage(neo: Neo, unet, check: Checks) -> None:
    """Z-Image: one [caption (padded with cap_pad_token to a multiple of pad_tokens_multiple); image (padded with
    x_pad_token)] sequence through ``layers``; only the valid caption tokens of the selected layers are repelled."""
    dm = unet.model.diffusion_model
    blocks = {f"single.{i}": b for i, b in enumerate(dm.layers)}
    multiple = dm.pad_tokens_multiple
    sc = DiTScenario(neo, f"Z-Image (NextDiT, {len(blocks)} layers, pad_tokens_multiple {multiple})", unet)
    model = ModelChecks(sc, check, hooked_blocks=len(blocks), expect_blocks=set(blocks), check_finite=True)
    check(
        f"Z-Image: the caption ({sc.ctx_len} tokens) is padded: not a multiple of pad_tokens_multiple {multiple}",
        isinstance(multiple, int) and multiple > 1 and sc.ctx_len % multiple != 0,
    )
    model.cases(WRAPPER_SEEN)
    schedule_steps(neo, model)

    def padded(n: int) -> int:
        return n + (-n) % multiple

    image = padded((8 // dm.patch_size) ** 2)

    def caption_only(tag: str, seen: dict[str, list[Seen]], selected: list[str]) -> None:
        detail, ok = [], True
        for name, calls in seen.items():
            for n, c in enumerate(calls):
                tokens = changed_tokens(c.before, c.after)
                want = list(range(c.text_len)) if name in selected else []
                ok &= tokens == want and c.before.shape[1] == padded(c.text_len) + image
                detail.append(f"{name}/{n}: {show(tokens)} of {c.before.shape[1]}")
        texts = sorted({c.text_len for calls in seen.values() for c in calls})
        check(
            f"{tag}: {', '.join(selected)} change exactly the valid caption tokens "
            f"({', '.join(f'{t} of {padded(t)}' for t in texts)}): no caption padding, no image token "
            f"({image} incl. padding); the other layers nothing",
            ok and all(seen.values()),
            "; ".join(detail),
        )

    for low_vram in (False, True):
        tag = f"(z) blocks='0:2', cfg 3.5, {'split by low VRAM' if low_vram else 'one batched call'}, sigma {SIGMA_IN}"
        seen = observe(sc, repulsion(blocks="0:2"), 3.5, blocks, low_vram=low_vram)
        caption_only(tag, seen, ["single.0", "single.1"])
        check_passed_on(check, tag, seen, list(blocks))
        check(f"{tag}: no forward hook left", forward_hooks(dm) == 0)
    # A negative caption longer than pad_tokens_multiple: texts too different to batch (Neo's ConditionCrossAttn
    # repeats to their lcm only up to 4x), so each call has its own caption length and padding.
    long = multiple + 3
    other = DiTScenario(neo, "Z-Image, negative caption of another length", unet, unctx_len=long)
    tag = f"(z) negative caption of {long} tokens, cfg 3.5, sigma {SIGMA_IN}"
    seen = observe(other, CONFIG, 3.5, blocks)
    lengths = [c.text_len for c in seen["single.0"]]
    check(f"{tag}: two calls with their own caption lengths", sorted(lengths) == sorted([sc.ctx_len, long]), lengths)
    caption_only(tag, seen, list(blocks))
    verify_raising(sc, check, blocks, None)
    finish(neo, model)


def verify_chroma(neo: Neo, unet, check: Checks) -> None:
    dm = unet.model.diffusion_model
    doubles = {f"double.{i}": b for i, b in enumerate(dm.double_blocks)}
    singles = {f"single.{i}": b for i, b in enumerate(dm.single_blocks)}
    blocks = {**doubles, **singles}
    sc = DiTScenario(neo, "Chroma (tiny: 2 double + 2 single blocks, T5 text only)", unet)
    model = ModelChecks(sc, check, hooked_blocks=len(blocks), expect_blocks=set(blocks), check_finite=True)
    model.cases(WRAPPER_SEEN)
    schedule_steps(neo, model)
    image_tokens = (8 // dm.patch_size) ** 2
    for low_vram in (False, True):
        tag = (
            f"(o) blocks='first', single_blocks='text', cfg 3.5, "
            f"{'split by low VRAM' if low_vram else 'one batched call'}, sigma {SIGMA_IN}"
        )
        seen = observe(sc, repulsion(blocks="first", single_blocks="text"), 3.5, blocks, low_vram=low_vram)
        check_dual(check, tag, seen, ["double.0"], image_tokens)
        single = [(changed_tokens(c.before, c.after), c) for name in singles for c in seen[name]]
        check(
            f"{tag}: single blocks change exactly the {sc.ctx_len} text tokens of {sc.ctx_len + image_tokens}",
            single and all(t == list(range(c.text_len)) for t, c in single),
            "; ".join(show(t) for t, _ in single),
        )
        check_passed_on(check, tag, seen, list(blocks))
        check(f"{tag}: no forward hook left", forward_hooks(dm) == 0)
    verify_raising(sc, check, blocks, "single_block")
    finish(neo, model)


OTHER_MODELS: tuple[tuple[OtherModel, Callable[[Neo, Any, Checks], None]], ...] = (
    (QWEN, verify_qwen),
    (QWEN, verify_qwen_edit),
    (ZIMAGE, verify_zimage),
    (CHROMA, verify_chroma),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("neo", help="path to a Forge Neo work tree (sd-webui-forge-classic, branch neo)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the memory=True checks")
    ns = parser.parse_args(argv)
    root = neo_root_or_exit(ns.neo)
    neo = Neo(root)
    torch.set_grad_enabled(False)
    # The models are tiny: one thread is fastest, and keeps the run short on a busy machine (with two threads, each
    # small matmul waits for a second core: 60x slower per model call when the cores are shared).
    torch.set_num_threads(1)
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
    built: dict[str, Any] = {}
    for spec, verify in OTHER_MODELS:
        if spec.family not in built:
            built[spec.family] = neo.other_unet(spec)
        if built[spec.family] is not None:
            verify(neo, built[spec.family], check)
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
