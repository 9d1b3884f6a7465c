"""Verify the Forge front end (``lib_ctxrep.integrations.forge``) against a real Forge Neo backend, on CPU.

Usage::

    python tools/verify_forge_neo.py /path/to/forge-neo

The path must be a work tree of Forge Neo (Haoming02/sd-webui-forge-classic, branch ``neo``, or a verbatim copy of
it, e.g. the ``webui/`` of a Neo 2.26 bundle); the script refuses Forge main and Forge Classic (``backend/nn/flux.py``
and ``backend/args.py`` must know Kontext's ``ref_latents``). Nothing from Neo is copied here: the script imports
Neo's own backend from that path at run time (``backend.nn.*``, ``backend.operations``, ``backend.modules.k_model``,
``backend.modules.k_prediction``, ``backend.patcher.unet``, ``backend.sampling``) and compiles the few statements it
needs from Neo's own sources (the engines' predictor rule, the "simple" scheduler). Every model is built tiny with
random float32 weights the way Neo's ``backend/loader.py`` builds it (constructed under ``using_forge_operations``,
weights loaded from a state dict; ``estimated_config`` = the ``huggingface_guess`` model_list entry with its
``model_type`` resolved), wrapped as its diffusion engine wraps it (``UnetPatcher.from_model`` with the predictor the
engine makes: the ``k_predictor = ...`` statement of the engine whose ``matched_guesses`` names the entry, run from the
tree's source, and where it calls ``self._get_predictor()``, base.py's rule, model_type FLOW ->
``PredictionDiscreteFlow``, else ``PredictionFlux``; an engine with ``use_shift`` re-tabulated at the UI's Shift; a
note, and the predictor the script was written against, where the rule cannot be read), and sampled through Neo's
``sampling_function_inner`` with conditions compiled by Neo's ``compile_conditions``.

Flux (``backend/nn/flux.py``; Flux.1-dev-like, and a Flux.2-Klein-like one where the Neo version has it): (a) cond
only at CFG 1, (b) cond + uncond at CFG 3.5 in one batched call, (c) the same split into separate calls by the
low-VRAM path (``get_free_memory`` made to report 0 as seen from ``sampling_function``), (d) two AND sub-prompts +
uncond, (e) an uncond text of another length with ``single_blocks="text"``, (k) a Flux Kontext reference latent
(``dynamic_args["ref_latents"]``, appended to the image tokens; of one row where flux.py expands it to the call's rows,
of as many rows as the call where it does not, with a note), (s) ``single_blocks="all"`` with and without a reference
(text + target image tokens repelled, reference tokens not); at sigma 1.0 (inside the window) and 0.5 (outside), with
and without repulsion. (f) The repelled text is what the next block receives (and, where Neo's blocks work in place,
``txt += ...``, that they do: a note where they do not), (g) a ``patches_replace["dit"]`` block patch of another
extension does not hide the blocks from the hooks (a note where flux.py has no block patches), ``UnetPatcher.clone()``
keeps ``model_options`` (and so the wrapper), and the cross-batch memory (``memory=True``) stores what the blocks
output, not what later blocks make of it.

Neo's other DiTs, where the Neo version has them (otherwise a note), each with cases (a)-(e) ((e) where Neo batches
texts of different lengths: not Krea 2's [B, 1, L, D]), in and out of the window
at the first two sigmas of Neo's "simple" schedule of its predictor (w), ``enabled=False`` bit-identical, and an
observation of every block in every model call (its output before ForgeRepulsion's hook, after it, and what the next
block receives; the streams told apart by token count, not by the block map):

- Qwen-Image (``backend/nn/qwen.py``, dual-stream ``transformer_blocks`` returning (text, image), [B, 16, 1, H, W]
  latents): at hooked blocks the image stream is exactly what the block computed and every text token changes, blocks
  not selected are untouched (o); Qwen-Image-Edit, the same with ``dynamic_args["ref_latents"]``, whose tokens never
  change (r);
- Z-Image (``backend/nn/lumina.py`` ``NextDiT``, ``pad_tokens_multiple`` 32, a caption that is not a multiple of it):
  the selected layers change exactly the valid caption tokens, never caption padding or image tokens, also with a
  negative caption of another length in a call of its own (z);
- Chroma (``backend/nn/chroma.py``, built from its own constructor's parameters): hooked dual blocks as (o), single
  blocks change exactly the text tokens;
- Krea 2 (``backend/nn/krea.py`` ``SingleStreamDiT``, one [text; image] sequence through ``blocks``, latents
  [B, 16, 1, h, w] as the engine's ``is_wan`` makes them): ``c_crossattn`` in both forms Neo trees produce, [B, L, D]
  and [B, 1, L, D]; the selected blocks change exactly the prompt's tokens, never the 5 chat-template suffix tokens
  (<|im_end|>\\n<|im_start|>assistant\\n) nor an image token, the others nothing, also with a negative prompt of
  another length (its own call) and, with [B, L, D], one that Neo tiles to the prompt's length (each copy's suffix
  never to move) (t);
- Ernie-Image (``backend/nn/ernie.py`` ``ErnieImageModel``, one [image; text] sequence through ``layers``, patch 1):
  the selected layers change exactly the text tokens, never an image token, also with negative prompts Neo tiles or
  runs apart (i);
- PiD (``backend/nn/pixeldit/pid.py`` ``PidNet``, [B, 3, H, W] pixels, ``dynamic_args.lq_latent`` as Neo's img2img
  sets it, repeated to each call's rows where PidNet does not expand it, with a note): ``patch_blocks`` return (image,
  text); at the selected ones the image stream is exactly as computed and every text token changes, the text being the
  first ``txt_max_length`` tokens (also with a longer text), ``pixel_blocks`` untouched, each block receiving the
  repelled text (p);
- for each of these three, ``ForgeRepulsion(...).architecture.family`` (the infotext's model name) is "Krea 2",
  "Ernie-Image", "PiD"; and Anima (``backend/nn/anima.py``, text by cross-attention only) is refused:
  ``ForgeRepulsion.patch`` returns False and installs nothing, ``lib_ctxrep.families.unsupported_reason`` says so in
  one line.

An exception raised inside an in-window call (a block's forward pre-hook, a ``patches_replace["dit"]`` block patch
where the model has them) propagates, leaves no hook attached and the engine inactive, and the job then repels as a
fresh one; the shared patcher's ``model_options`` stay untouched. SPELL runs through Neo's sampler on Flux.1.

Results (2026-12-07, CPU, torch 2.13.0, Python 3.11.7, /work/hosts/venv-neo):

- Neo 2.26 (exo101/sd-webui-forge-neo-v3 5692d2d1, ``webui/``): 890 checks, 889 pass. The one failure is the
  library's: Krea 2 with [B, L, D] text and a negative prompt Neo tiles to the prompt's length (6 tokens -> 12): in
  the uncond rows the first copy's 5 suffix tokens are repelled (the reader takes the last 5 of the tiled 12 as the
  suffix). Notes: Qwen-Image-Edit's reference and PiD's LQ latent are not expanded to a call's rows.
- Neo 283cb2c4 (Haoming, 2025-11-29; ivanuser/stable-diffusion-webui-Nukem): VERIFIED, 392 checks. Notes: Kontext
  reference not expanded (checked with 8 rows), blocks out of place (f), no block patches in flux.py and chroma.py
  (g), no Flux.2, Krea 2, Ernie-Image, PiD or Anima.

Environment: Python 3.11+ (Neo recommends 3.13) with torch (CPU), numpy, einops, psutil, rich, safetensors,
diffusers, transformers, huggingface_hub (Neo's requirements.txt pins); Neo 2.26 also imports comfy-kitchen (flux.py,
krea.py, ernie.py, anima.py) and torchvision (anima.py); no GPU, no network, no model files, no webui. The script puts
the Neo root and its ``modules_forge/packages/`` (bundled ``gguf``, ``huggingface_guess``) on ``sys.path`` and, in
``sys.argv``, the CPU flags that tree's ``backend/args.py`` declares (``--cpu`` in 2.26, ``--always-cpu`` in
283cb2c4) before the first ``backend`` import (``backend/args.py`` and ``backend/memory_management.py`` read them at
import). ``backend/sampling/condition.py`` imports ``modules.shared`` in some versions (which needs gradio and the
webui) without using it; when that import fails and the file never uses ``shared.``, an empty stand-in module is
registered for it.

It prints one line per check and ends with ``VERIFIED: <n> checks passed`` (exit 0) or the list of failures (exit 1);
exit 2 when the path is not a Forge Neo work tree or Neo's backend cannot be imported.
"""

from __future__ import annotations

import argparse
import ast
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

from lib_ctxrep import families  # noqa: E402
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
#: Source text that only Neo has (Forge main's flux.py has no Kontext references and its args.py no ref_latents; Forge
#: Classic has no backend/ at all). Neo versions differ beyond that (2.26's flux.py has block patches and
#: ``forward_orig``, 283cb2c4's of Nov 2025 neither): the checks that depend on such a difference test for it.
NEO_SIGNATURES = {
    "backend/nn/flux.py": ("ref_latents",),
    "backend/args.py": ("dynamic_args", "ref_latents"),
}
#: The flags that make Neo's backend/args.py run everything on the CPU, in one version or another ("--cpu" in 2.26,
#: "--always-cpu" in 283cb2c4): each one the tree's args.py declares is passed.
CPU_FLAGS = ("--cpu", "--always-cpu")
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
    module: str  # backend/nn/<module>.py (a dotted name: a subpackage, backend/nn/pixeldit/pid.py)
    cls: str
    guess: str  # huggingface_guess model_list entry
    engine: str  # backend/diffusion_engine/<engine>.py
    #: The k_predictor used only where the engine's own rule cannot be read (Neo.engine_predictor; with a note): an
    #: expression over backend/modules/k_prediction.py's names and ``estimated_config``.
    predictor: str
    config: dict
    fill: tuple[str, ...] = ()  # parameters the class leaves to the checkpoint (torch.empty)
    frames: bool = False  # latents [B, C, T, H, W] (engines with is_wan = True: the Wan VAE)
    optional: tuple[str, ...] = ()  # config keys that older Neo versions' constructors lack (then left out)
    #: The Shift an engine with ``use_shift`` re-tabulates the predictor with before sampling (the UI's default).
    shift: float | None = None


#: Qwen-Image (ComfyUI's port): 3 dual-stream transformer_blocks returning (text, image), 2 heads x 32.
QWEN = OtherModel(
    "Qwen-Image",
    "qwen",
    "QwenImageTransformer2DModel",
    "QwenImage",
    "qwen",
    "PredictionDiscreteFlow(estimated_config)",  # 283cb2c4's engine; 2.26: _get_predictor, PredictionFlux
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
    shift=3.0,  # zimage.py get_learned_conditioning / set_shift: the "Shift" (distilled CFG) slider, 3.0
)
#: Chroma: Flux's Neo blocks (2 double, 2 single) without modulation, fed by the distilled guidance approximator.
CHROMA = OtherModel(
    "Chroma",
    "chroma",
    "IntegratedChromaTransformer2DModel",
    "Chroma",
    "chroma",
    "PredictionFlux(mu=1.0)",  # 283cb2c4's engine; 2.26: _get_predictor, PredictionDiscreteFlow
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
    optional=("txt_ids_dims", "vec_in_dim"),  # 283cb2c4's own Chroma blocks: neither
)
#: Krea 2 (backend/nn/krea.py SingleStreamDiT): 3 single-stream blocks over [text; image], head dim 64 (RoPE axes
#: 16, 24, 24); the text fusion of 2 tapped layers of 40 (the real one: 12 x 2560, 20 heads) -> c_crossattn 80 wide.
KREA2 = OtherModel(
    "Krea 2",
    "krea",
    "SingleStreamDiT",
    "Krea2",
    "krea",
    "PredictionFlux(estimated_config)",
    dict(features=64, heads=1, kvheads=1, layers=3, patch=2, channels=16, txtlayers=2, txtdim=40),
    fill=(".scale", ".lin"),  # RMSNorm scales and the shared modulations (torch.empty)
    frames=True,  # diffusion_engine/krea.py: is_wan = True
)
#: Ernie-Image (backend/nn/ernie.py ErnieImageModel): 3 single-stream layers over [image; text], patch 1, head dim 64.
ERNIE = OtherModel(
    "Ernie-Image",
    "ernie",
    "ErnieImageModel",
    "ErnieImage",
    "ernie",
    "PredictionDiscreteFlow(estimated_config)",
    dict(
        hidden_size=64,
        num_attention_heads=1,
        num_layers=3,
        ffn_hidden_size=128,
        in_channels=16,
        out_channels=16,
        patch_size=1,
        text_in_dim=32,
        rope_axes_dim=(16, 24, 24),
    ),
    shift=3.0,  # presets.py SHIFT["ernie"]: the Shift slider's default
)
#: PiD (backend/nn/pixeldit/pid.py PidNet): 3 dual-stream patch_blocks (image, text) over 4 x 4 pixel patches, 1
#: text-free pixel block, text cut to txt_max_length 8 (the real one: 300), LQ gates before blocks 0 and 2.
PID = OtherModel(
    "PiD",
    "pixeldit.pid",
    "PidNet",
    "PiD",
    "pid",
    "PredictionDiscreteFlow(estimated_config)",
    dict(
        lq_latent_channels=16,
        lq_hidden_dim=8,
        lq_num_res_blocks=1,
        lq_interval=2,
        rope_ref_h=64,
        rope_ref_w=64,
        in_channels=3,
        num_groups=2,
        hidden_size=64,
        pixel_hidden_size=8,
        pixel_attn_hidden_size=16,
        pixel_num_groups=2,
        patch_depth=3,
        pixel_depth=1,
        patch_size=4,
        txt_embed_dim=32,
        txt_max_length=8,
    ),
    fill=("y_pos_embedding", "log_alpha"),
    shift=1.5,  # presets.py SHIFT["pid"] = -1.5: slider hidden, 1.5
)
#: Anima (backend/nn/anima.py): text by cross-attention only; built to check that it is refused.
ANIMA = OtherModel(
    "Anima",
    "anima",
    "Anima",
    "Anima",
    "anima",
    "PredictionDiscreteFlow(estimated_config)",
    dict(
        in_channels=16,
        out_channels=16,
        patch_spatial=2,
        patch_temporal=1,
        model_channels=64,
        crossattn_emb_channels=32,
        adaln_lora_dim=16,
        num_blocks=2,
        num_heads=2,
    ),
    frames=True,
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


def module_path(spec: OtherModel) -> str:
    return f"backend/nn/{spec.module.replace('.', '/')}.py"


def describe_predictor(predictor: Any) -> str:
    """'PredictionFlux (shift 1.15, 10000 sigmas)'."""
    parts = [
        f"{k} {getattr(predictor, k):g}"
        for k in ("shift", "multiplier", "mu")
        if isinstance(getattr(predictor, k, None), (int, float))
    ]
    sigmas = getattr(predictor, "sigmas", None)
    if isinstance(sigmas, torch.Tensor):
        parts.append(f"{sigmas.numel()} sigmas")
    return f"{type(predictor).__name__} ({', '.join(parts)})"


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
        # Neo's backend/args.py parses sys.argv at import (strictly in some versions): leave it only the CPU flags it
        # declares
        args_source = _read(root / "backend/args.py")
        self.cpu_flags = [f for f in CPU_FLAGS if re.search(rf"add_argument\(\s*[\"']{f}[\"']", args_source)]
        if not self.cpu_flags:
            die(f"verify_forge_neo: {root}/backend/args.py declares none of {', '.join(CPU_FLAGS)}")
        sys.argv[1:] = list(self.cpu_flags)
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
        except Exception as exc:  # ImportError, or a backend that took another device at import (an unseen flag)
            die(f"verify_forge_neo: cannot import Neo's backend from {root}: {exc!r} (install its dependencies)")
        if not any(getattr(neo_args.args, f[2:].replace("-", "_"), False) for f in self.cpu_flags):
            die(f"verify_forge_neo: Neo's backend.args did not see {' / '.join(self.cpu_flags)}")
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

    def context_handler(self) -> Any:
        """What Neo's PiD engine installs in ``dynamic_args.context_handler`` (None where this Neo has none)."""
        try:
            from backend.misc.context_windows import IndexListContextHandler
        except ImportError:
            return None
        return IndexListContextHandler()

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
        for spec in (QWEN, ZIMAGE, CHROMA, KREA2, ERNIE, PID, ANIMA):
            path = self.root / module_path(spec)
            text = _read(path) if path.exists() else None
            models.append(
                f"{spec.module.replace('.', '/')}.py "
                + (hashlib.sha256(text.encode()).hexdigest()[:12] if text else "absent")
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
        guess_name = "Flux" if variant == "flux1" else "Flux2K4B"
        guess = getattr(self.model_list, guess_name, None)
        if guess is None:
            self.notes.append(f"no Flux.2 in this Neo version (huggingface_guess has no {guess_name})")
            return None
        model = self.build_model(cls, config, seed)
        estimated_config = self.estimate(guess, config, model)
        predictor, how, _ = self.engine_predictor(guess_name, estimated_config)
        if predictor is None:
            # What the engines said when this script was written: diffusion_engine/flux.py, from the model config in
            # newer Neo versions (base.py _get_predictor), from Flux-dev's shift parameters in older ones; flux2.py,
            # PredictionFlux2(estimated_config) or PredictionFlux(estimated_config).
            prediction_flux = self.k_prediction.PredictionFlux
            if "model_config" in inspect.signature(prediction_flux.__init__).parameters:
                predictor = prediction_flux(estimated_config)
            elif variant == "flux2":
                predictor = self.k_prediction.PredictionFlux2(estimated_config)
            else:
                predictor = prediction_flux(
                    seq_len=4096, base_seq_len=256, max_seq_len=4096, base_shift=0.5, max_shift=1.15
                )
            self.notes.append(
                f"{guess_name}: cannot tell how this Neo's engine makes its predictor ({how}); wrapped with "
                f"{describe_predictor(predictor)}"
            )
            how = f"fallback: {describe_predictor(predictor)}"
        print(f"  {guess_name} predictor: {how}")
        with contextlib.redirect_stdout(io.StringIO()):
            return self.UnetPatcher.from_model(
                model=model, diffusers_scheduler=None, config=estimated_config, k_predictor=predictor
            )

    def estimate(self, guess: type, config: dict, model: torch.nn.Module) -> Any:
        """The engine's ``estimated_config`` as backend/loader.py makes it: the model_list entry of the detected
        unet_config, with ``model_type`` replaced by its value for the state dict (``guess.model_type =
        guess.model_type(sd)``; base.py's ``_get_predictor`` reads it)."""
        estimated_config = guess(dict(config))
        if callable(getattr(estimated_config, "model_type", None)):
            estimated_config.model_type = estimated_config.model_type(model.state_dict())
        return estimated_config

    def engine_predictor(self, guess_name: str, estimated_config: Any) -> tuple[Any, str, bool]:
        """The k_predictor that the diffusion engine of ``model_list.<guess_name>`` (the class in
        backend/diffusion_engine/ whose ``matched_guesses`` names it) makes for ``estimated_config``: the statement of
        its ``__init__`` that assigns ``k_predictor``, compiled from the tree's own source and run with
        k_prediction's names, and base.py's ``ForgeDiffusionEngine._get_predictor`` where it calls that. Returns
        (predictor, how it was made, whether the engine sets ``use_shift``: its ``set_shift`` then re-tabulates the
        predictor before each sampling), or (None, why it cannot be told, False)."""
        folder = self.root / "backend/diffusion_engine"
        for path in sorted(folder.glob("*.py")):
            source = _read(path)
            if f"model_list.{guess_name}" not in source:
                continue
            for cls in (n for n in ast.parse(source, str(path)).body if isinstance(n, ast.ClassDef)):
                if not any(
                    isinstance(n, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "matched_guesses" for t in n.targets)
                    and any(isinstance(a, ast.Attribute) and a.attr == guess_name for a in ast.walk(n.value))
                    for n in cls.body
                ):
                    continue
                return self._run_engine_rule(path, cls, estimated_config)
        return None, f"no class in backend/diffusion_engine/ has model_list.{guess_name} in its matched_guesses", False

    def _run_engine_rule(self, path: Path, cls: ast.ClassDef, estimated_config: Any) -> tuple[Any, str, bool]:
        where = f"backend/diffusion_engine/{path.name} {cls.name}"
        init = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
        statements = [
            stmt
            for stmt in (init.body if init is not None else [])
            if any(
                isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "k_predictor" for t in n.targets)
                for n in ast.walk(stmt)
            )
        ]
        if not statements:
            return None, f"{where}.__init__ assigns no k_predictor", False
        namespace: dict[str, Any] = dict(vars(self.k_prediction))
        engine = types.SimpleNamespace(model_config=estimated_config)
        rule = self._base_get_predictor()
        if rule is not None:
            engine._get_predictor = lambda: rule(engine)
        namespace.update(self=engine, estimated_config=estimated_config)
        code = " ".join(" ".join(ast.unparse(stmt).split()) for stmt in statements)
        try:
            exec(compile(ast.Module(body=statements, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
        except Exception as exc:
            return None, f"{where}: `{code}` raised {exc!r}", False
        predictor = namespace.get("k_predictor")
        if predictor is None or not hasattr(predictor, "sigmas"):
            return None, f"{where}: `{code}` made {predictor!r}", False
        how = f"{where}: `{code}`"
        if "_get_predictor" in code:
            model_type = getattr(getattr(estimated_config, "model_type", None), "name", "?")
            how += f" (base.py _get_predictor, model_type {model_type})"
        use_shift = any(
            isinstance(n, ast.Assign)
            and any(isinstance(t, ast.Attribute) and t.attr == "use_shift" for t in n.targets)
            and isinstance(n.value, ast.Constant)
            and n.value.value is True
            for n in ast.walk(cls)
        )
        return predictor, f"{how} -> {describe_predictor(predictor)}", use_shift

    def _base_get_predictor(self) -> Callable | None:
        """base.py's ``ForgeDiffusionEngine._get_predictor`` (the engines' rule in newer Neo versions), compiled from
        the tree's source with k_prediction's names; None where base.py has none."""
        path = self.root / "backend/diffusion_engine/base.py"
        if not path.exists():
            return None
        for cls in (n for n in ast.parse(_read(path), str(path)).body if isinstance(n, ast.ClassDef)):
            for fn in cls.body:
                if isinstance(fn, ast.FunctionDef) and fn.name == "_get_predictor":
                    fn.decorator_list = []
                    namespace: dict[str, Any] = dict(vars(self.k_prediction))
                    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
                    return namespace["_get_predictor"]
        return None

    def other_unet(self, spec: OtherModel, seed: int = 0):
        """A tiny ``spec`` model wrapped as its diffusion engine wraps it (``UnetPatcher.from_model`` with the engine's
        predictor), or None (and a note) if this Neo version does not have it."""
        if not (self.root / module_path(spec)).exists():
            self.notes.append(f"no {spec.family} in this Neo version ({module_path(spec)} absent)")
            return None
        try:
            module = importlib.import_module(f"backend.nn.{spec.module}")
        except ImportError as exc:
            self.notes.append(f"no {spec.family} in this Neo version ({module_path(spec)}: {exc!r})")
            return None
        cls = getattr(module, spec.cls, None)
        guess = getattr(self.model_list, spec.guess, None)
        if cls is None or guess is None:
            what = f"backend/nn/{spec.module}.py has no {spec.cls}" if cls is None else f"no model_list.{spec.guess}"
            self.notes.append(f"no {spec.family} in this Neo version ({what})")
            return None
        config = dict(spec.config)
        params = inspect.signature(cls.__init__).parameters
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            dropped = [k for k in spec.optional if k not in params]
            config = {k: v for k, v in config.items() if k not in dropped}
            unknown = [k for k in config if k not in params]
            if unknown:
                self.notes.append(f"no {spec.family} in this Neo version ({spec.cls} lacks {unknown})")
                return None
            if dropped:
                print(f"  {spec.family}: {spec.cls}'s constructor has no {', '.join(dropped)} (left out)")
        model = self.build_model(cls, config, seed, spec.fill)
        estimated_config = self.estimate(guess, config, model)  # what huggingface_guess hands the engine
        predictor, how, use_shift = self.engine_predictor(spec.guess, estimated_config)
        if predictor is None:
            predictor = eval(spec.predictor, {**vars(self.k_prediction), "estimated_config": estimated_config})  # noqa: S307
            self.notes.append(
                f"{spec.family}: cannot tell how this Neo's engine makes its predictor ({how}); wrapped with "
                f"{spec.predictor} -> {describe_predictor(predictor)}"
            )
            how, use_shift = f"fallback {spec.predictor}", spec.shift is not None
        if use_shift and spec.shift is not None and hasattr(predictor, "set_parameters"):
            predictor.set_parameters(shift=spec.shift)  # the engine's set_shift before each sampling
            how += f"; use_shift: set_shift({spec.shift}) -> {describe_predictor(predictor)}"
        print(f"  {spec.family} predictor: {how}")
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


def reference_for_calls(neo: Neo, sc: BaseScenario, ref: torch.Tensor, rows: int, what: str) -> torch.Tensor:
    """The reference latent to hand Neo for model calls of ``rows`` rows: ``ref`` (one row) where the model expands it
    to the call's rows (Neo 2.26's flux.py), else ``ref`` repeated to ``rows`` rows (283cb2c4's flux.py, and qwen.py,
    concatenate it as it is: Neo itself then runs only calls of as many rows as its reference has), with a note."""
    with kontext_reference(neo, ref):
        try:
            sc.sample(sc.unet, SIGMA_IN, 3.5)
            return ref
        except RuntimeError as exc:
            neo.notes.append(
                f"{what}: Neo's {type(sc.unet.model.diffusion_model).__name__}.forward does not expand a one-row "
                f"reference to a call of {rows} rows ({str(exc).splitlines()[0]}): Neo itself fails on any call of "
                f"more rows than its reference has; checked here with a {rows}-row reference"
            )
    return ref.repeat(rows, *([1] * (ref.ndim - 1)))


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
    # (k) and (s) run cond + uncond in one call of 2B rows.
    kontext = reference_for_calls(neo, sc, sc.ref, 2 * B, f"{sc.name.split(' ')[0]} Kontext")
    for tag, sigma, inside in window_sigmas(
        f"(k) Kontext reference latent ({kontext.shape[0]} row{'s' * (kontext.shape[0] > 1)}), cfg 3.5"
    ):
        plain = sc.sample(unet, sigma, 3.5)
        seq: list[int] = []
        probe = dm.single_blocks[0].register_forward_pre_hook(
            lambda m, a, k, seq=seq: seq.append(a[0].shape[1]), with_kwargs=True
        )
        with removing([probe]), kontext_reference(neo, kontext):
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
        ctx = kontext_reference(neo, kontext) if with_ref else contextlib.nullcontext()
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
    if block_patches(neo, "flux"):
        verify_block_patches(sc, check)
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


def block_patches(neo: Neo, module: str) -> bool:
    """Whether backend/nn/<module>.py calls ``patches_replace["dit"]`` block patches (2.26's flux.py and qwen.py;
    not 283cb2c4's flux.py or chroma.py, nor lumina.py): a note where it does not."""
    if "blocks_replace" in _read(neo.root / f"backend/nn/{module}.py"):
        return True
    note(
        neo,
        f"backend/nn/{module}.py calls no patches_replace['dit'] block patches (no blocks_replace): the checks "
        "with another extension's block patch do not apply to this Neo",
    )
    return False


def note(neo: Neo, text: str) -> None:
    """A note for the end of the run, once."""
    if text not in neo.notes:
        neo.notes.append(text)


def verify_block_patches(sc: Scenario, check: Checks) -> None:
    """(g) another extension's ``patches_replace["dit"]`` block patches do not hide the blocks from the hooks."""
    unet = sc.unet
    dm = unet.model.diffusion_model
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


def verify_in_place(neo: Neo, sc: Scenario, check: Checks) -> None:
    """Neo's DoubleStreamBlock does ``txt += ...`` and SingleStreamBlock ``x += ...`` on their inputs (2.26; a note
    where this Neo's blocks work out of place, as 283cb2c4's do): the repelled text is what the next block gets."""
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
    if "out" in seen_out and seen_out["out"][1] is seen_in.get("txt"):
        check(f"{tag}: Neo's DoubleStreamBlock returns its input txt tensor, updated in place", True)
    else:
        note(
            neo,
            "(f): this Neo's DoubleStreamBlock returns a new txt tensor (out of place, not `txt += ...`): the "
            "in-place check does not apply; the checks that the next block receives the repelled text still do",
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
    print("\n== cross-batch memory (memory=True) with Neo's blocks (in place in 2.26) ==")
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
        self,
        neo: Neo,
        name: str,
        unet,
        ctx_len: int = 6,
        unctx_len: int | None = None,
        frames: bool = False,
        *,
        text_dim: int = 32,
        four_d: bool = False,
    ) -> None:
        super().__init__(neo, name, unet, ctx_len, unctx_len, tensor_text=True, text_dim=text_dim)
        self.neo = neo
        self.four_d = four_d  # c_crossattn [B, 1, L, D], as exo101's 2.26 Krea 2 text engine gives it
        if frames:
            self.x = self.x.unsqueeze(2)

    def conditioning(self, text: torch.Tensor, rows: int) -> torch.Tensor:
        return text[:rows].unsqueeze(1) if self.four_d else text[:rows]


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
    verify_raising(sc, check, blocks, "double_block" if block_patches(neo, "qwen") else None)
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
    verify_raising(sc, check, blocks, "single_block" if block_patches(neo, "chroma") else None)
    finish(neo, model)


# --------------------------------------------------------------------------------------------------------------------
# Neo 2.26's new families: Krea 2, Ernie-Image, PiD; and Anima, which cannot be repelled
# --------------------------------------------------------------------------------------------------------------------
#: Krea 2's text ends in the chat template's suffix, <|im_end|>\n<|im_start|>assistant\n: 5 tokens that Neo's
#: backend/text_processing/qwen3vl_engine.py (strip_template) keeps after the prompt; each prompt is encoded alone,
#: without padding.
KREA2_SUFFIX = 5


def check_family(check: Checks, sc: BaseScenario, family: str) -> None:
    """ForgeRepulsion recognises the model; ``architecture.family`` (the infotext's model name) is ``family``."""
    job = ForgeRepulsion(CONFIG)
    patched = job.patch(sc.unet.clone())
    name = getattr(job.architecture, "family", None)
    check(
        f"{family}: ForgeRepulsion.patch hooks Neo's {type(sc.unet.model.diffusion_model).__name__}, "
        f"architecture.family (the infotext's name) {family!r}",
        patched and name == family,
        f"patch -> {patched}, family {name!r}",
    )


def check_sequence(
    check: Checks,
    tag: str,
    seen: dict[str, list[Seen]],
    selected: list[str],
    want: Callable[[Seen], list[int]],
    length: Callable[[Seen], int],
    what: str,
) -> None:
    """Single-stream blocks: the selected ones change exactly the tokens ``want(call)`` of a sequence of
    ``length(call)`` tokens, the others nothing."""
    detail, ok = [], True
    for name, calls in seen.items():
        for n, c in enumerate(calls):
            tokens = changed_tokens(c.before, c.after)
            ok &= tokens == (want(c) if name in selected else []) and c.before.shape[1] == length(c)
            detail.append(f"{name}/{n}: {show(tokens)} of {c.before.shape[1]}")
    check(
        f"{tag}: {', '.join(selected)} change exactly {what}; the other blocks nothing",
        ok and all(seen.values()),
        "; ".join(detail),
    )


def verify_krea2(neo: Neo, unet, check: Checks) -> None:
    """Krea 2: one [text; image] sequence through ``blocks``; the text is the prompt then the 5 template suffix
    tokens (no padding); c_crossattn [B, L, D] (upstream Neo) or [B, 1, L, D] (exo101's 2.26), latents [B, 16, 1, h,
    w] (the engine's is_wan)."""
    dm = unet.model.diffusion_model
    blocks = {f"single.{i}": b for i, b in enumerate(dm.blocks)}
    width = dm.txtlayers * dm.txtdim
    image = (8 // dm.patch) ** 2

    def text_len(t: torch.Tensor) -> int:
        return int(t.shape[-2])

    def prompt_only(c: Seen) -> list[int]:
        return list(range(c.text_len - KREA2_SUFFIX))

    def whole(c: Seen) -> int:
        return c.text_len + image

    what = f"the prompt's tokens (text first; not the {KREA2_SUFFIX} suffix tokens, no image token of {image})"
    for four_d in (False, True):
        form = "[B, 1, L, D]" if four_d else "[B, L, D]"

        # A prompt of 12 tokens, so that (e)'s negative of half its length is 6: Neo's shortest Krea text (" " and
        # the 5 template suffix tokens).
        def scenario(name: str, ctx_len: int = 12, unctx_len: int | None = None, four_d: bool = four_d):
            return DiTScenario(neo, name, unet, ctx_len, unctx_len, frames=True, text_dim=width, four_d=four_d)

        sc = scenario(
            f"Krea 2 (tiny SingleStreamDiT: {len(blocks)} blocks, c_crossattn {form} of {width}, "
            "[B, 16, 1, 8, 8] latents)"
        )
        if not four_d:
            check_family(check, sc, "Krea 2")
        model = ModelChecks(sc, check, hooked_blocks=len(blocks), expect_blocks=set(blocks), check_finite=True)
        # (e) needs cond and uncond of different lengths in one call: Neo batches 4-D conds only of equal lengths.
        model.cases(WRAPPER_SEEN, short_uncond=not four_d)
        schedule_steps(neo, model)
        for low_vram in (False, True):
            tag = (
                f"(t) c_crossattn {form}, blocks='0:2', cfg 3.5, "
                f"{'split by low VRAM' if low_vram else 'one batched call'}, sigma {SIGMA_IN}"
            )
            seen = observe(sc, repulsion(blocks="0:2"), 3.5, blocks, low_vram=low_vram, text_len=text_len)
            check_sequence(check, tag, seen, ["single.0", "single.1"], prompt_only, whole, what)
            check_passed_on(check, tag, seen, list(blocks))
            check(f"{tag}: no forward hook left", forward_hooks(dm) == 0)
        # A negative prompt whose length Neo cannot batch with the prompt's (4-D: any other length; 3-D: a ratio
        # beyond 4): each chunk in a call of its own, with its own text length.
        other = scenario("Krea 2, negative prompt of another length", unctx_len=7)
        tag = f"(t) c_crossattn {form}, negative prompt of 7 tokens (prompt 12), cfg 3.5, sigma {SIGMA_IN}"
        seen = observe(other, CONFIG, 3.5, blocks, text_len=text_len)
        lengths = [c.text_len for c in seen["single.0"]]
        check(f"{tag}: two calls with their own text lengths", sorted(lengths) == [7, 12], lengths)
        check_sequence(check, tag, seen, list(blocks), prompt_only, whole, what)
        if not four_d:
            verify_krea2_tiled(check, scenario("Krea 2, negative prompt tiled by Neo", 12, 6), blocks, text_len)
        verify_raising(sc, check, blocks, None)
        finish(neo, model)


def verify_krea2_tiled(check: Checks, sc: DiTScenario, blocks: dict, text_len: Callable) -> None:
    """3-D c_crossattn, a prompt of 12 tokens and a negative prompt of 6 (an empty one is " " and the suffix): Neo's
    ConditionCrossAttn batches them, the negative one repeated twice (its tokens attended twice, no padding). Each
    copy ends in the 5 suffix tokens, which are never to move; only the prompt tokens of each copy are text."""
    tag = f"(t) c_crossattn [B, L, D], negative prompt of 6 tokens tiled to 12 by Neo, cfg 3.5, sigma {SIGMA_IN}"
    seen = observe(sc, repulsion(), 3.5, blocks, text_len=text_len)
    calls = seen["single.0"]
    check(
        f"{tag}: one batched call of 12 text tokens", [c.text_len for c in calls] == [12], [c.text_len for c in calls]
    )
    suffix = {"uncond": [1, 2, 3, 4, 5, 7, 8, 9, 10, 11], "cond": [7, 8, 9, 10, 11]}
    moved: dict[str, set[int]] = {"uncond": set(), "cond": set()}
    for name in blocks:
        for c in seen[name]:
            for branch, rows in (("uncond", slice(0, B)), ("cond", slice(B, 2 * B))):  # cond_or_uncond [1, 0]
                moved[branch] |= set(changed_tokens(c.before[rows], c.after[rows]))
    for branch in ("cond", "uncond"):
        hit = sorted(moved[branch] & set(suffix[branch]))
        check(
            f"{tag}: {branch} rows: no suffix token moves (suffix positions {suffix[branch]})",
            calls and not hit,
            f"changed {show(sorted(moved[branch]))}; suffix tokens moved: {hit or 'none'}",
        )


def verify_ernie(neo: Neo, unet, check: Checks) -> None:
    """Ernie-Image: one [image; text] sequence through ``layers``; every text token is real (<s> and the prompt)."""
    dm = unet.model.diffusion_model
    blocks = {f"single.{i}": b for i, b in enumerate(dm.layers)}
    image = (8 // dm.patch_size) ** 2
    sc = DiTScenario(neo, f"Ernie-Image (tiny ErnieImageModel: {len(blocks)} layers, patch {dm.patch_size})", unet)
    check_family(check, sc, "Ernie-Image")
    model = ModelChecks(sc, check, hooked_blocks=len(blocks), expect_blocks=set(blocks), check_finite=True)
    model.cases(WRAPPER_SEEN)
    schedule_steps(neo, model)

    def text_only(c: Seen) -> list[int]:
        return list(range(image, image + c.text_len))

    def whole(c: Seen) -> int:
        return image + c.text_len

    what = f"the text tokens (after the {image} image tokens, none of which moves)"
    for low_vram in (False, True):
        tag = f"(i) blocks='0:2', cfg 3.5, {'split by low VRAM' if low_vram else 'one batched call'}, sigma {SIGMA_IN}"
        seen = observe(sc, repulsion(blocks="0:2"), 3.5, blocks, low_vram=low_vram)
        check_sequence(check, tag, seen, ["single.0", "single.1"], text_only, whole, what)
        check_passed_on(check, tag, seen, list(blocks))
        check(f"{tag}: no forward hook left", forward_hooks(dm) == 0)
    for unctx, how in ((3, "tiled to 6 by Neo, one call"), (7, "separate calls")):
        other = DiTScenario(neo, f"Ernie-Image, negative prompt of {unctx} tokens", unet, unctx_len=unctx)
        tag = f"(i) negative prompt of {unctx} tokens (prompt 6: {how}), cfg 3.5, sigma {SIGMA_IN}"
        seen = observe(other, CONFIG, 3.5, blocks)
        lengths = sorted(c.text_len for c in seen["single.0"])
        check(f"{tag}: text lengths per call {lengths}", lengths == ([6] if unctx == 3 else [6, 7]), lengths)
        check_sequence(check, tag, seen, list(blocks), text_only, whole, what)
    verify_raising(sc, check, blocks, None)
    finish(neo, model)


class PidScenario(DiTScenario):
    """PiD: pixels [B, 3, 16, 16] as the sample, the text [B, L, 32] alone, and what Neo's img2img sets for it:
    ``dynamic_args.lq_latent`` = [the input images' VAE latents, the denoising strength] (processing.py) and the
    engine's ``context_handler`` (context windows along the height: not used at this size). ``match_rows``: the LQ
    latent repeated to each model call's rows (see verify_pid)."""

    def __init__(self, neo: Neo, name: str, unet, ctx_len: int = 6, unctx_len: int | None = None) -> None:
        super().__init__(neo, name, unet, ctx_len, unctx_len)
        g = torch.Generator().manual_seed(7)
        self.x = torch.randn(B, 3, 16, 16, generator=g)
        self.lq = torch.randn(B, 16, 2, 2, generator=g)
        self.strength = torch.tensor([0.6])
        self.match_rows = False

    def sample(self, unet, sigma: float, cfg: float, **kwargs: Any) -> torch.Tensor:
        neo, dm = self.neo, unet.model.diffusion_model
        x = kwargs.get("x")
        rows = (self.x if x is None else x).shape[0]
        lq = self.lq[:rows]

        def rows_of_call(module, args, kw):
            neo.set_dynamic("lq_latent", [lq.repeat(args[0].shape[0] // rows, 1, 1, 1), self.strength])

        saved = neo.get_dynamic("lq_latent"), neo.get_dynamic("context_handler")
        neo.set_dynamic("lq_latent", [lq, self.strength])
        neo.set_dynamic("context_handler", neo.context_handler())
        handles = [dm.register_forward_pre_hook(rows_of_call, with_kwargs=True)] if self.match_rows else []
        try:
            with removing(handles):
                return super().sample(unet, sigma, cfg, **kwargs)
        finally:
            neo.set_dynamic("lq_latent", saved[0])
            neo.set_dynamic("context_handler", saved[1])


def verify_pid(neo: Neo, unet, check: Checks) -> None:
    """PiD: ``patch_blocks`` return (image, text); the text is cut to ``txt_max_length``; ``pixel_blocks`` carry no
    text. Neo's PidNet gates the image stream with the LQ features before blocks 0, 2, ..."""
    dm = unet.model.diffusion_model
    patch = {f"double.{i}": b for i, b in enumerate(dm.patch_blocks)}
    pixel = {f"pixel.{i}": b for i, b in enumerate(dm.pixel_blocks)}
    image = (16 // dm.patch_size) ** 2
    limit = dm.txt_max_length

    def text_len(t: torch.Tensor) -> int:
        return min(int(t.shape[1]), limit)

    probe = PidScenario(neo, "PiD probe", unet)
    try:
        probe.sample(unet, SIGMA_IN, 3.5)
        match_rows = False
    except RuntimeError as exc:
        match_rows = True
        neo.notes.append(
            f"PiD: Neo's PidNet does not expand the LQ latent ({B} rows, dynamic_args.lq_latent) to a call of "
            f"{2 * B} rows ({str(exc).splitlines()[0]}): Neo itself fails whenever cond and uncond share a call "
            "(CFG > 1 without low VRAM; its own PiD script runs CFG 1, batch 1); checked here with the LQ latent "
            "repeated to each call's rows"
        )
    for ctx_len in (6, 12):
        sc = PidScenario(
            neo,
            f"PiD (tiny PidNet: {len(patch)} patch blocks + {len(pixel)} pixel block, text of {ctx_len} tokens, "
            f"txt_max_length {limit}, [B, 3, 16, 16] pixels)",
            unet,
            ctx_len,
        )
        sc.match_rows = match_rows
        kept = min(ctx_len, limit)
        if ctx_len == 6:
            check_family(check, sc, "PiD")
        model = ModelChecks(sc, check, hooked_blocks=len(patch), expect_blocks=set(patch), check_finite=True)
        model.cases(WRAPPER_SEEN)
        schedule_steps(neo, model)
        for low_vram in (False, True):
            tag = (
                f"(p) text {ctx_len} -> {kept} tokens, blocks='1:3', cfg 3.5, "
                f"{'split by low VRAM' if low_vram else 'one batched call'}, sigma {SIGMA_IN}"
            )
            seen = observe(sc, repulsion(blocks="1:3"), 3.5, {**patch, **pixel}, low_vram=low_vram, text_len=text_len)
            check(
                f"{tag}: the text stream is the first {kept} of {ctx_len} tokens",
                all(c.text_len == kept for c in seen["double.0"]) and seen["double.0"],
            )
            check_dual(check, tag, seen, ["double.1", "double.2"], image)
            check(
                f"{tag}: pixel_blocks (no text) exactly what they computed",
                all(seen[n] for n in pixel) and all(untouched(c.before, c.after) for n in pixel for c in seen[n]),
            )
            check_pid_passed_on(check, tag, seen, list(patch), dm.lq_proj.interval)
            check(f"{tag}: no forward hook left", forward_hooks(dm) == 0)
        if ctx_len == 6:
            verify_raising(sc, check, patch, None)
        finish(neo, model)


def check_pid_passed_on(check: Checks, tag: str, seen: dict[str, list[Seen]], chain: list[str], interval: int) -> None:
    """Each patch block gets the previous one's text as repelled, and its image stream as computed, except where
    PidNet's LQ gate changes the image stream in between (before blocks 0, interval, 2 interval, ...)."""
    bad = []
    for i, (prev, nxt) in enumerate(zip(chain, chain[1:], strict=False)):
        for n, (p, q) in enumerate(zip(seen[prev], seen[nxt], strict=True)):
            t, im = streams(p.after, p.text_len)
            want = [p.after[t]] + ([p.after[im]] if (i + 1) % interval else [])
            if not all(any(x.shape == y.shape and torch.equal(x, y) for y in q.inputs) for x in want):
                bad.append(f"{prev} -> {nxt} in call {n}")
    check(
        f"{tag}: each patch block gets the previous text as repelled (and its image where no LQ gate is between)",
        not bad and all(seen[name] for name in chain),
        "; ".join(bad),
    )


def verify_anima(neo: Neo, unet, check: Checks) -> None:
    """Anima: its text enters every block by cross-attention only, so there is no text stream to repel: refused."""
    dm = unet.model.diffusion_model
    print(f"\n== Anima (tiny {type(dm).__name__}: {len(dm.blocks)} blocks, cross-attention only) ==")
    job = ForgeRepulsion(CONFIG)
    clone = unet.clone()
    options = repr(clone.model_options)
    patched = job.patch(clone)
    check(
        "Anima: ForgeRepulsion.patch returns False and installs nothing (supports() False too)",
        patched is False and repr(clone.model_options) == options and not job.supports(unet),
        f"patch -> {patched}, model_options keys {sorted(clone.model_options)}",
    )
    reason = families.unsupported_reason(dm, "forge")
    check(
        "Anima: unsupported_reason says, in one line, that its text enters by cross-attention only",
        "\n" not in reason and "cross-attention only" in reason,
        reason,
    )


OTHER_MODELS: tuple[tuple[OtherModel, Callable[[Neo, Any, Checks], None]], ...] = (
    (QWEN, verify_qwen),
    (QWEN, verify_qwen_edit),
    (ZIMAGE, verify_zimage),
    (CHROMA, verify_chroma),
    (KREA2, verify_krea2),
    (ERNIE, verify_ernie),
    (PID, verify_pid),
    (ANIMA, verify_anima),
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
    print(
        f"torch {torch.__version__}, python {sys.version.split()[0]}, device {neo.mm.get_torch_device()} "
        f"(backend/args.py given {' '.join(neo.cpu_flags)})"
    )
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
