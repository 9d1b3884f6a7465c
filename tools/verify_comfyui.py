"""Verify the ComfyUI nodes on a real ComfyUI, on CPU: tiny models of every supported family from ComfyUI's own
classes, patched through the nodes, sampled with ComfyUI's own ``comfy.sample`` (the KSampler's path).

Usage::

    OMP_NUM_THREADS=1 python tools/verify_comfyui.py /path/to/ComfyUI [--family NAME ...] [--no-server]

The path is a ComfyUI tree: upstream comfyanonymous/ComfyUI (checked on 0.29.0, the silveroxides/ComfyUI fork that
tracks it, 2026-07-29) or the pip-installable fork hiddenswitch/pip-and-uv-installable-ComfyUI (0.12.1, upstream
merged 2026-02, which this was first written against). Run it with a Python that has ComfyUI's requirements and a CPU
torch; nothing from ComfyUI is copied into this repository. The nodes are loaded the way ComfyUI loads a custom node
pack: this repository's root ``__init__.py`` as a package (first, to show that it imports no ``comfy`` module), then
ComfyUI itself with ``--cpu`` (upstream parses its command line only after ``comfy.options.enable_args_parsing()``,
which the tool calls; the pip fork parses it on import).

Each family is built from ``comfy.supported_models.<Family>(unet_config).get_model({})`` with tiny sizes and weights
drawn with a fixed seed (ComfyUI's ops leave them uninitialised), wrapped in ``comfy.model_patcher.ModelPatcher`` and
sampled with ``comfy.sample.sample`` (Euler, "simple", 4 steps, CFG 3, a batch of 4, fixed noise): Flux.1, Flux.1
Kontext (a reference latent), Chroma, Flux.2 (a reference latent), Qwen-Image, Qwen-Image-Edit (a reference latent),
Z-Image, SD3, and, where the tree has them (upstream, not 0.12.1: a note says they are skipped), Krea 2, Krea 2 with a
reference latent and ``reference_latents_method`` "index", and Ernie-Image. Checks, for each:

1. the node at strength 0, or absent, gives output bit-identical to plain (twice, deterministic);
2. on (step strength 8, window 0.5), the batch changes;
3. the original model is untouched: no patch or wrapper in its options, the same weights, and plain sampling after the
   patched one is bit-identical to before;
4. cond and uncond are repelled separately: one call holds both (a probe wrapper that the node chains, never drops,
   sees ``cond_or_uncond`` [1, 0] or [0, 1]) and every repulsion group is one branch of 4 rows; with ComfyUI's free
   memory reported as 0 (``ModelPatcher.get_free_memory``) they come in separate calls, and the result equals the
   batched one (to 1e-4);
5. the window on ComfyUI's sigmas: repulsion acts at exactly the steps whose trajectory fraction is below the window
   (window 0.5 of 4 steps: the first two);
6. another node's block patch (a replace patch on a block, or a post-block patch) is chained, never dropped;
7. edit reference tokens are never repelled: an outer probe patch compares the node's output of a single-stream block
   with the plain block's (run first, on copies of the streams: upstream's Flux blocks update their inputs in place):
   the text and the target's tokens move, the reference's not; on Qwen-Image-Edit (dual-stream only) the image
   stream, reference included, is never changed;
8. cross-batch memory: a second run of the same patched model differs from a fresh model's first run; its first
   equals it.

Krea 2 and Ernie-Image have no block patch point in ComfyUI: the node hooks their blocks for the duration of each
in-window call, so 6 and 7 are replaced by:

- the node sets no block patch, and no forward hook stays on the shared diffusion model after a run;
- a block observation: an inner model-function wrapper (chained inside the node's, so it runs while the node's hooks
  are on) puts a forward hook ahead of the node's on every block and one behind it, and compares, per token: the
  node's hooks are on all blocks during the two in-window calls and on none outside; the blocks' sequence has the
  expected layout; the prompt's tokens move at every hooked block; nothing else ever moves. Krea 2: [text; image],
  ComfyUI's 5-D latent [B, 16, 1, H, W], the 5 chat-template suffix tokens and the image tokens never move; with a
  reference ("index", and again with "index_timestep_zero"), [text; target; reference] and the reference tokens never
  move. Ernie-Image: [image; text], the image tokens never move;
- an exception raised inside the model (a block's forward, in an in-window call, with the node's hooks on) reaches
  the caller, no forward hook stays on the shared diffusion model, and plain sampling afterwards is bit-identical.

Then SPELL (on Flux.1 and on an unsupported model): a protected LATENT (the plain run's output) is escaped (every
output lands farther than the shield radius from each protected latent); a LATENT of another channel count or size
gives a message and the same output as SPELL without it. An unsupported model (AuraFlow) passes the Contextual
Repulsion node unpatched with one message; SPELL works on it.

Last, ComfyUI's own server (``--cpu``, 127.0.0.1, a temporary base directory; ``--no-server`` skips it): a tiny
Flux.1-dev diffusion model that ``UNETLoader`` recognises from its shapes, this repository linked into
``custom_nodes/`` as a user installs it, and a stand-in conditioning node next to it (ComfyUI fixes the sizes of its
text encoders and VAEs, so none loads tiny; the VAE decode is replaced by ``SaveLatent``). The server lists both nodes
under ``model_patches`` with tooltips; every example workflow uses only nodes it has; the Flux.1-dev example POSTed to
``/prompt`` runs, changes the batch, and at strength 0 equals the node bypassed bit for bit; out-of-range and invalid
inputs are refused at queue time.

Results (2026-12-07, CPU, ``OMP_NUM_THREADS=1``, 2 shared cores): ComfyUI 0.29.0 (silveroxides/ComfyUI 4f874c5e,
torch 2.13.0) 250 checks pass in 62 s (92 of them Krea 2, Krea 2 with a reference, Ernie-Image); the pip fork
0.12.1 158 pass in 57 s (Krea 2 and Ernie-Image skipped: it has neither). Timings vary by a third with the load.

Prints one line per check and ends with ``VERIFIED: <n> checks passed`` (exit 0) or the failures (exit 1); exit 2
when the path is not a ComfyUI tree.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.util
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

TOOLS = Path(__file__).resolve().parent
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

import torch  # noqa: E402
from forge_verify_common import REPO_ROOT, Checks, die, removing  # noqa: E402

#: The name ComfyUI gives this repository's package (its folder name under custom_nodes/).
PACKAGE = "ctxrep-nodes"
CTX = 32  # the text feature width of every tiny model
BATCH, STEPS, CFG = 4, 4, 3.0
ON = {"step_strength": 8.0, "window": 0.5}
SPELL_RADIUS = 0.5


class Hooked(NamedTuple):
    """A family whose ComfyUI model has no block patch point (the node hooks its blocks for the duration of each
    in-window call): its block list, the order of its one sequence, and the text tokens after the prompt that are
    never repelled (Krea 2's chat-template suffix)."""

    attr: str
    text_first: bool
    suffix: int = 0


class Spec(NamedTuple):
    """How to build and sample one tiny family: the ``comfy.supported_models`` class, its unet_config, the latent
    [C, H, W], the extra conditioning, whether it holds reference tokens; for a hooked family, its layout; for a
    family that older trees lack, when ComfyUI got it; the spread of its random weights."""

    cls: str
    config: dict[str, Any]
    latent: tuple[int, ...]
    extra: Callable[[], dict]
    references: bool = False
    hooked: Hooked | None = None
    since: str = ""
    #: The weights' spread: at 0.02 a tiny Ernie-Image's text barely reaches its output (another prompt moves it by
    #: 4e-5), so what repulsion does to the text could not show in the images.
    std: float = 0.02


def _flux(**extra: Any) -> dict[str, Any]:
    return dict(
        image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=CTX, hidden_size=64,
        mlp_ratio=2.0, num_heads=2, depth=3, depth_single_blocks=2, axes_dim=[8, 12, 12], theta=10000, patch_size=2,
        qkv_bias=True, guidance_embed=True, txt_ids_dims=[], **extra,
    )  # fmt: skip


def _qwen() -> dict[str, Any]:
    return dict(
        image_model="qwen_image", in_channels=64, out_channels=16, num_layers=3, attention_head_dim=32,
        num_attention_heads=2, joint_attention_dim=CTX, axes_dims_rope=(8, 12, 12), patch_size=2,
    )  # fmt: skip


def _krea2() -> dict[str, Any]:
    """Krea 2's SingleStreamDiT: head dim 32 (rope axes [8, 12, 12]); its text is txtlayers x txtdim = CTX wide."""
    return dict(
        image_model="krea2", features=64, heads=2, kvheads=1, multiplier=2, layers=3, patch=2, channels=16, tdim=32,
        txtdim=16, txtlayers=2, txtheads=2, txtkvheads=2, theta=1000,
    )  # fmt: skip


FAMILIES: dict[str, Spec] = {
    "Flux.1": Spec("Flux", _flux(), (16, 8, 8), lambda: {"pooled_output": torch.randn(1, 32), "guidance": 3.5}, False),
    "Flux.1 Kontext": Spec(
        "Flux",
        _flux(),
        (16, 8, 8),
        lambda: {
            "pooled_output": torch.randn(1, 32),
            "guidance": 2.5,
            "reference_latents": [torch.randn(1, 16, 6, 10)],
        },
        True,
    ),
    "Chroma": Spec(
        "Chroma",
        dict(
            image_model="chroma",
            in_channels=64,
            out_channels=64,
            context_in_dim=CTX,
            hidden_size=64,
            mlp_ratio=2.0,
            num_heads=2,
            depth=3,
            depth_single_blocks=2,
            axes_dim=[8, 12, 12],
            theta=10000,
            patch_size=2,
            qkv_bias=True,
            in_dim=64,
            out_dim=64,
            hidden_dim=64,
            n_layers=1,
            txt_ids_dims=[],
            vec_in_dim=None,
        ),  # fmt: skip
        (16, 8, 8),
        lambda: {"pooled_output": None},
        False,
    ),
    "Flux.2 (edit)": Spec(
        "Flux2",
        dict(
            image_model="flux2",
            in_channels=128,
            out_channels=128,
            vec_in_dim=None,
            context_in_dim=CTX,
            hidden_size=64,
            mlp_ratio=3.0,
            num_heads=2,
            depth=3,
            depth_single_blocks=2,
            axes_dim=[8, 8, 8, 8],
            theta=2000,
            patch_size=1,
            qkv_bias=False,
            guidance_embed=True,
            txt_ids_dims=[3],
            global_modulation=True,
            mlp_silu_act=True,
            ops_bias=False,
            default_ref_method="index",
            ref_index_scale=10.0,
        ),  # fmt: skip
        (128, 4, 4),
        lambda: {"pooled_output": None, "guidance": 4.0, "reference_latents": [torch.randn(1, 128, 3, 5)]},
        True,
    ),
    "Qwen-Image": Spec("QwenImage", _qwen(), (16, 8, 8), dict, False),
    "Qwen-Image-Edit": Spec(
        "QwenImage",
        _qwen(),
        (16, 8, 8),
        lambda: {"reference_latents": [torch.randn(1, 16, 1, 6, 10)]},
        True,
    ),
    "Z-Image": Spec(
        "ZImage",
        dict(
            image_model="lumina2",
            patch_size=2,
            in_channels=16,
            dim=256,
            cap_feat_dim=CTX,
            n_layers=3,
            n_refiner_layers=1,
            n_heads=8,
            n_kv_heads=8,
            axes_dims=[8, 12, 12],
            axes_lens=[300, 512, 512],
            qk_norm=True,
            rope_theta=256.0,
            ffn_dim_multiplier=(8.0 / 3.0),
            z_image_modulation=True,
            time_scale=1000.0,
            pad_tokens_multiple=32,
        ),  # fmt: skip
        (16, 8, 8),
        dict,
        False,
    ),
    "SD3": Spec(
        "SD3",
        dict(
            in_channels=16,
            out_channels=16,
            patch_size=2,
            depth=3,
            input_size=None,
            adm_in_channels=32,
            context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": CTX, "out_features": 192}},
            num_patches=256,
            pos_embed_max_size=16,
            pos_embed_scaling_factor=None,
            qk_norm="rms",
            x_block_self_attn_layers=[],
        ),  # fmt: skip
        (16, 8, 8),
        lambda: {"pooled_output": torch.randn(1, 32)},
        False,
    ),
    "Krea 2": Spec(
        "Krea2", _krea2(), (16, 8, 8), dict, hooked=Hooked("blocks", text_first=True, suffix=5), since="2026-06"
    ),
    "Krea 2 (edit)": Spec(
        "Krea2",
        _krea2(),
        (16, 8, 8),
        lambda: {"reference_latents": [torch.randn(1, 16, 1, 6, 10)], "reference_latents_method": "index"},
        True,
        Hooked("blocks", text_first=True, suffix=5),
        "2026-06",
    ),
    "Ernie-Image": Spec(
        "ErnieImage",
        dict(
            image_model="ernie",
            hidden_size=64,
            num_attention_heads=2,
            num_layers=3,
            ffn_hidden_size=128,
            in_channels=128,
            out_channels=128,
            patch_size=1,
            text_in_dim=CTX,
            rope_theta=256,
            rope_axes_dim=(8, 12, 12),
        ),  # fmt: skip
        (128, 4, 4),
        dict,
        hooked=Hooked("layers", text_first=False),
        since="2026-04",
        std=0.1,
    ),
}
UNSUPPORTED = Spec(
    "AuraFlow",
    dict(
        cond_seq_dim=CTX,
        in_channels=4,
        out_channels=4,
        patch_size=2,
        dim=64,
        n_layers=2,
        n_double_layers=1,
        n_heads=2,
        global_conddim=64,
        max_seq=64,
    ),  # fmt: skip
    (4, 8, 8),
    dict,
    False,
)


# --------------------------------------------------------------------------------------------------------------------
# Loading: the node pack as ComfyUI loads it, then ComfyUI
# --------------------------------------------------------------------------------------------------------------------
def load_node_pack(check: Checks) -> Any:
    """This repository's root ``__init__.py`` imported as a package, as ComfyUI's custom-node loader does."""
    spec = importlib.util.spec_from_file_location(
        PACKAGE, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    comfy = sorted(m for m in sys.modules if m == "comfy" or m.startswith("comfy."))
    check("the node pack imports without ComfyUI and imports no comfy module", not comfy, comfy[:3] or "")
    names = set(module.NODE_CLASS_MAPPINGS)
    check("NODE_CLASS_MAPPINGS has both nodes", names == {"ContextualRepulsion", "SPELLRepellency"}, sorted(names))
    return module


def load_comfy(path: Path) -> Any:
    """ComfyUI's ``comfy`` package from ``path``, on CPU."""
    if not (path / "comfy" / "model_patcher.py").is_file() or not (path / "comfy" / "ldm" / "flux").is_dir():
        die(f"{path} is not a ComfyUI tree (no comfy/model_patcher.py, comfy/ldm/flux)")
    sys.path.insert(0, str(path))
    argv, sys.argv = sys.argv, [sys.argv[0], "--cpu"]
    try:
        # Upstream ComfyUI parses its command line only once asked to (comfy/options.py: args_parsing = False; its
        # main.py calls enable_args_parsing() first): without this, comfy.cli_args parses [] and --cpu is lost. The
        # pip fork (0.12.1) parses sys.argv on import; its enable_args_parsing, where there is one, changes nothing.
        options = importlib.import_module("comfy.options")
        if hasattr(options, "enable_args_parsing"):
            options.enable_args_parsing()
        for name in ("comfy.model_management", "comfy.model_patcher", "comfy.sample", "comfy.supported_models"):
            importlib.import_module(name)
    finally:
        sys.argv = argv
    return sys.modules["comfy"]


# --------------------------------------------------------------------------------------------------------------------
# Tiny models and sampling
# --------------------------------------------------------------------------------------------------------------------
class Family:
    """One tiny model of a family in ComfyUI, and how to sample it."""

    def __init__(self, comfy: Any, name: str, spec: Spec) -> None:
        self.comfy, self.name, self.spec = comfy, name, spec
        self.latent, self.extra, self.references, self.hooked = spec.latent, spec.extra, spec.references, spec.hooked
        model = getattr(comfy.supported_models, spec.cls)(dict(spec.config)).get_model({})
        torch.manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, spec.std)
            for b in model.diffusion_model.buffers():  # not model_sampling's sigma table
                if b.is_floating_point() and b.numel():
                    b.normal_(0, spec.std)
        model.eval()
        cpu = torch.device("cpu")
        self.model = comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)

    def conds(self, update: dict | None = None) -> tuple[list, list]:
        """Cond and uncond, 7 tokens each; ``update`` changes their extra conditioning."""
        torch.manual_seed(1)
        pos = [[torch.randn(1, 7, CTX), {**self.extra(), **(update or {})}]]
        neg = [[torch.randn(1, 7, CTX), {**self.extra(), **(update or {})}]]
        return pos, neg

    def sample(self, model: Any, *, seed: int = 42, update: dict | None = None) -> torch.Tensor:
        pos, neg = self.conds(update)
        latent = self.comfy.sample.fix_empty_latent_channels(model, torch.zeros(BATCH, *self.latent))
        noise = self.comfy.sample.prepare_noise(latent, seed)
        return self.comfy.sample.sample(
            model, noise, STEPS, CFG, "euler", "simple", pos, neg, latent, seed=seed, disable_pbar=True
        ).float()


@contextlib.contextmanager
def no_free_memory(comfy: Any) -> Iterator[None]:
    """ComfyUI sees no free memory, so ``calc_cond_batch`` runs cond and uncond in separate calls."""
    cls = comfy.model_patcher.ModelPatcher
    original = cls.get_free_memory
    cls.get_free_memory = lambda self, *args, **kwargs: 0
    try:
        yield
    finally:
        cls.get_free_memory = original


def probe_wrapper(model: Any, calls: list) -> Any:
    """A clone with a model-function wrapper that records each call's ``cond_or_uncond`` (another node's wrapper)."""
    clone = model.clone()

    def other_node_wrapper(apply_model: Callable, args: dict) -> torch.Tensor:
        calls.append(list(args["cond_or_uncond"]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    clone.set_model_unet_function_wrapper(other_node_wrapper)
    return clone


def options_clean(model: Any) -> bool:
    options = model.model_options
    transformer = options.get("transformer_options", {})
    return (
        "model_function_wrapper" not in options
        and not options.get("sampler_post_cfg_function")
        and not transformer.get("patches_replace")
        and not transformer.get("patches")
    )


def differs(a: torch.Tensor, b: torch.Tensor) -> tuple[bool, str]:
    d = float((a - b).abs().max())
    return d > 1e-4, f"max |diff| {d:.3g}"


# --------------------------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------------------------
def repulsion_node(pack: Any, model: Any, **inputs: Any) -> Any:
    values = {"step_strength": 2.85, "window": 0.05, "blocks": "all", "custom_blocks": ""}
    values.update({"single_blocks": "all tokens", "memory": False, **inputs})
    return pack.NODE_CLASS_MAPPINGS["ContextualRepulsion"]().patch(model, **values)[0]


def check_family(comfy: Any, pack: Any, family: Family, check: Checks) -> None:
    name, base = family.name, family.model
    frontend = importlib.import_module(f"{PACKAGE}.lib_ctxrep.integrations.comfyui")
    config_cls = importlib.import_module(f"{PACKAGE}.lib_ctxrep.config").RepulsionConfig
    weights = {k: v.clone() for k, v in base.model.state_dict().items()}
    plain = family.sample(base)
    check(f"{name}: plain twice is bit-identical", torch.equal(plain, family.sample(base)))
    off = repulsion_node(pack, base, step_strength=0.0)
    check(f"{name}: strength 0 returns the model itself", off is base)
    patched = repulsion_node(pack, base, **ON)
    on = family.sample(patched)
    changed, detail = differs(on, plain)
    check(f"{name}: on, the batch changes", changed, detail)
    if family.hooked:
        transformer = patched.model_options.get("transformer_options", {})
        check(
            f"{name}: the node sets no block patch (the model has no patch point: its blocks are hooked)",
            not transformer.get("patches_replace") and not transformer.get("patches"),
        )
        left = hooks_on(base.model.diffusion_model)
        check(f"{name}: no forward hook stays on the shared diffusion model after the run", left == 0, f"{left} left")
    check(f"{name}: the original model's options hold no patch", options_clean(base))
    same = all(torch.equal(v, weights[k]) for k, v in base.model.state_dict().items())
    check(f"{name}: the original model's weights are untouched", same)
    check(f"{name}: plain after the patched run is bit-identical", torch.equal(family.sample(base), plain))

    calls: list = []
    repulsion = frontend.ComfyRepulsion(
        config_cls(step_strength=ON["step_strength"], window=ON["window"]), record_stats=True
    )
    batched = family.sample(repulsion.patch(probe_wrapper(base, calls)))
    check(f"{name}: the node chains another node's wrapper", len(calls) > 0, f"{len(calls)} calls seen")
    both = any(sorted(c) == [0, 1] for c in calls)
    check(f"{name}: cond and uncond come in one call", both, calls[:2])
    stats = repulsion.engine.stats
    branches = {s.branch for s in stats}
    rows = {s.rows for s in stats}
    check(
        f"{name}: every repulsion group is one branch of {BATCH} rows",
        branches == {"cond", "uncond"} and rows == {BATCH},
        f"branches {sorted(branches)}, rows {sorted(rows)}",
    )
    steps = sorted({round(s.progress, 4) for s in stats})
    check(f"{name}: repulsion acts at the first two steps of 4 (window 0.5)", steps == [0.0, 0.25], steps)
    calls.clear()
    with no_free_memory(comfy):
        split = family.sample(repulsion_node(pack, probe_wrapper(base, calls), **ON))
    check(f"{name}: with no free memory, cond and uncond come in separate calls", calls and max(map(len, calls)) == 1)
    close = float((split - batched).abs().max())
    check(f"{name}: separate calls give the batched result (to 1e-4)", close < 1e-4, f"max |diff| {close:.2g}")

    if family.hooked:  # no block patch point: nothing for another node's block patch to chain with
        check_blocks(pack, family, check)
        if family.references:
            check_blocks(pack, family, check, {"reference_latents_method": "index_timestep_zero"})
        check_exception(pack, family, check, plain)
    else:
        check_chaining(pack, family, check, plain)
        if family.references:
            check_references(pack, family, check)
    check_memory(pack, family, check)


def hooks_on(module: torch.nn.Module) -> int:
    """Forward hooks and pre-hooks on ``module`` and everything in it."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def image_tokens(shape: tuple[int, ...], patch: int) -> int:
    """Tokens of a latent [..., H, W] patchified ``patch`` x ``patch`` (padded up, as Krea 2 pads)."""
    return -(-shape[-2] // patch) * -(-shape[-1] // patch)


def check_blocks(pack: Any, family: Family, check: Checks, update: dict | None = None) -> None:
    """What the node does at each hooked block of a sampled run (a model with no block patch point, whose blocks
    the node hooks during each in-window call). An inner model-function wrapper (chained inside the node's, so it
    runs while the node's hooks are on) puts a forward hook ahead of the node's on every block (it keeps the plain
    output) and one behind it (it measures what moved, per token), and removes both before the call returns."""
    layout, base = family.hooked, family.model
    name = family.name + (f" [{update['reference_latents_method']}]" if update else "")
    diffusion_model = base.model.diffusion_model
    blocks = list(getattr(diffusion_model, layout.attr))
    patch = int(getattr(diffusion_model, "patch", None) or getattr(diffusion_model, "patch_size", 1))
    calls: list[dict] = []

    def observer(apply_model: Callable, args: dict) -> torch.Tensor:
        x = args["input"]
        call = {"input": tuple(x.shape), "text": int(args["c"]["c_crossattn"].shape[1]), "moved": {}}
        call["hooks"] = [len(b._forward_hooks) for b in blocks]  # the node's, before ours
        plain: dict[int, torch.Tensor] = {}

        def before(i: int) -> Callable:
            def keep_plain(module: Any, inputs: Any, output: torch.Tensor) -> None:
                plain[i] = output.detach().clone()

            return keep_plain

        def after(i: int) -> Callable:
            def measure(module: Any, inputs: Any, output: torch.Tensor) -> None:
                call["moved"][i] = (output - plain[i]).abs().amax(dim=(0, 2))  # per token, over rows and features

            return measure

        handles = [b.register_forward_hook(before(i), prepend=True) for i, b in enumerate(blocks)]
        handles += [b.register_forward_hook(after(i)) for i, b in enumerate(blocks)]
        with removing(handles):
            out = apply_model(x, args["timestep"], **args["c"])
        calls.append(call)
        return out

    probe = base.clone()
    probe.set_model_unet_function_wrapper(observer)
    family.sample(repulsion_node(pack, probe, **ON), update=update)
    left = hooks_on(diffusion_model)

    conds = {**family.extra(), **(update or {})}
    references = [image_tokens(r.shape, patch) for r in conds.get("reference_latents", [])]
    hooked = [c for c in calls if any(c["hooks"])]
    n = len(blocks)
    pattern = ["all" if c["hooks"] == [1] * n else "none" if not any(c["hooks"]) else c["hooks"] for c in calls]
    check(
        f"{name}: the node's hooks are on all {n} blocks during the in-window calls only (2 of {STEPS})",
        pattern == ["all", "all"] + ["none"] * (STEPS - 2),
        pattern,
    )
    check(f"{name}: ... and none stays on the shared diffusion model after the run", left == 0, f"{left} left")
    spans: dict[str, list[float]] = {}
    lengths = set()
    for c in calls:
        text, target = c["text"], image_tokens(c["input"], patch)
        for moved in c["moved"].values():
            lengths.add(len(moved))
            if layout.text_first:  # [text (prompt; suffix); target; references]
                parts = {"prompt": (0, text - layout.suffix), "suffix": (text - layout.suffix, text)}
                parts |= {"target": (text, text + target), "reference": (text + target, len(moved))}
            else:  # [image; text]
                parts = {"image": (0, target), "prompt": (target, len(moved))}
            for part, (a, b) in parts.items():
                if b > a:
                    value = float(moved[a:b].max())
                    spans.setdefault(f"{part} {'in' if any(c['hooks']) else 'out'}", []).append(value)
    text, target = calls[0]["text"], image_tokens(calls[0]["input"], patch)
    if layout.text_first:
        expected = text + target + sum(references)
        what = f"[text {text} ({text - layout.suffix} + {layout.suffix} suffix); target {target}" + (
            f"; reference {sum(references)}]" if references else "]"
        )
        dims = {len(c["input"]) for c in calls}
        check(f"{name}: the model gets ComfyUI's 5-D latent [B, 16, 1, H, W]", dims == {5}, calls[0]["input"])
    else:
        expected, what = target + text, f"[image {target}; text {text}]"
    check(f"{name}: every block's sequence is {what} = {expected}", lengths == {expected}, sorted(lengths))
    prompt = spans.get("prompt in", [0.0])
    check(
        f"{name}: the prompt's tokens move at every hooked block ({len(prompt)} = {len(hooked)} calls x {n})",
        len(prompt) == len(hooked) * n and min(prompt) > 0,
        f"least max |change| {min(prompt):.3g}",
    )
    fixed = ["suffix", "target", "reference"] if layout.text_first else ["image"]
    labels = {
        "suffix": f"the {layout.suffix} chat-template suffix tokens",
        "target": "the image (target) tokens",
        "reference": "the reference tokens",
        "image": "the image tokens",
    }
    for part in fixed:
        if part == "reference" and not references:
            continue
        values = spans.get(f"{part} in", [])
        biggest = max(values, default=float("nan"))
        check(f"{name}: {labels[part]} never move", values and biggest == 0, f"max |change| {biggest:.3g}")
    outside = [v for k, vs in spans.items() if k.endswith(" out") for v in vs]
    check(f"{name}: outside the window no block output changes", outside and max(outside) == 0)


class RaisedInsideTheModel(Exception):
    """Raised by :func:`check_exception` from a block's forward."""


def check_exception(pack: Any, family: Family, check: Checks, plain: torch.Tensor) -> None:
    """An exception raised inside the model (a block's forward, during an in-window call, with the node's hooks on)
    reaches the caller, and no hook stays on the shared diffusion model."""
    name, base = family.name, family.model
    diffusion_model = base.model.diffusion_model
    blocks = list(getattr(diffusion_model, family.hooked.attr))
    hooked: list[int] = []

    def raising(apply_model: Callable, args: dict) -> torch.Tensor:
        def fail(module: Any, inputs: Any) -> None:
            hooked.append(sum(len(b._forward_hooks) for b in blocks))
            raise RaisedInsideTheModel(f"raised by {type(module).__name__} 1")

        with removing([blocks[1].register_forward_pre_hook(fail)]):
            return apply_model(args["input"], args["timestep"], **args["c"])

    probe = base.clone()
    probe.set_model_unet_function_wrapper(raising)
    try:
        family.sample(repulsion_node(pack, probe, **ON))
        raised = "nothing raised"
    except RaisedInsideTheModel as error:
        raised = str(error)
    check(f"{name}: an exception raised inside the model (block 1) reaches the caller", "raised by" in raised, raised)
    check(f"{name}: ... it was raised with the node's hooks on the blocks", hooked == [len(blocks)], hooked)
    left = hooks_on(diffusion_model)
    check(f"{name}: ... and no forward hook stays on the shared diffusion model", left == 0, f"{left} left")
    check(f"{name}: ... plain sampling afterwards is bit-identical", torch.equal(family.sample(base), plain))


def check_chaining(pack: Any, family: Family, check: Checks, plain: torch.Tensor) -> None:
    """Another node's block patch stays in place: it runs, and the node's repulsion still acts."""
    name, base = family.name, family.model
    seen: list[int] = []
    other = base.clone()
    if family.name == "Z-Image":

        def other_post_patch(args: dict) -> dict:
            seen.append(args["block_index"])
            return {}

        other.set_model_patch(other_post_patch, "double_block")
    else:

        def other_replace_patch(args: dict, extra: dict) -> dict:
            seen.append(0)
            return extra["original_block"](args)

        other.set_model_patch_replace(other_replace_patch, "dit", "double_block", 0)
    on = family.sample(repulsion_node(pack, other, **ON))
    check(f"{name}: another node's block patch still runs", len(seen) > 0, f"{len(seen)} calls")
    changed, detail = differs(on, plain)
    check(f"{name}: with it, repulsion still acts", changed, detail)


def check_references(pack: Any, family: Family, check: Checks) -> None:
    """The node's block output against the plain block's: what moved, per token span."""
    name = family.name
    patched = repulsion_node(pack, family.model, **ON)
    key = ("double_block", 0) if family.name == "Qwen-Image-Edit" else ("single_block", 0)
    ours = patched.model_options["transformer_options"]["patches_replace"]["dit"][key]
    moved: dict[str, list[float]] = {"text": [], "target": [], "reference": [], "image": []}
    patch = patched.model.diffusion_model.patch_size
    tokens = [-(-h // patch) * -(-w // patch) for h, w in [family.latent[-2:]]]
    tokens += [-(-r.shape[-2] // patch) * -(-r.shape[-1] // patch) for r in family.extra()["reference_latents"]]
    target, references = tokens[0], sum(tokens[1:])

    def outer_probe(args: dict, extra: dict) -> dict:
        # The plain block first, on copies of the streams: upstream Flux blocks update their inputs in place
        # (SingleStreamBlock: x += ..., DoubleStreamBlock: img += ..., txt += ...), so a block run after ours on the
        # same args would see its own output.
        fresh = {k: (v.clone() if k in ("img", "txt") and isinstance(v, torch.Tensor) else v) for k, v in args.items()}
        original = extra["original_block"](fresh)
        out = ours(args, extra)
        if "txt" in out:  # dual-stream: the whole image stream
            moved["text"].append(float((out["txt"] - original["txt"]).abs().max()))
            moved["image"].append(float((out["img"] - original["img"]).abs().max()))
        else:  # one sequence: [text; target; references]
            delta = (out["img"] - original["img"]).abs()
            text = delta.shape[1] - target - references
            moved["text"].append(float(delta[:, :text].max()))
            moved["target"].append(float(delta[:, text : text + target].max()))
            moved["reference"].append(float(delta[:, text + target :].max()))
        return out

    patched.set_model_patch_replace(outer_probe, "dit", *key)
    family.sample(patched)
    if family.name == "Qwen-Image-Edit":
        check(f"{name}: the text stream moves", max(moved["text"]) > 0, moved["text"][:2])
        check(f"{name}: the image stream (target and reference) never changes", max(moved["image"]) == 0)
    else:
        check(f"{name}: text and target tokens move", max(moved["text"]) > 0 and max(moved["target"]) > 0)
        refs = max(moved["reference"])
        check(f"{name}: reference tokens never change", refs == 0, f"max |change| {refs:.3g}")


def check_memory(pack: Any, family: Family, check: Checks) -> None:
    """A second queue run of the same patched model is also pushed from the first."""
    name = family.name
    remembering = repulsion_node(pack, family.model, memory=True, **ON)
    first, second = family.sample(remembering, seed=7), family.sample(remembering, seed=8)
    fresh = repulsion_node(pack, family.model, memory=True, **ON)
    check(f"{name}: memory: the first run equals a fresh model's", torch.equal(first, family.sample(fresh, seed=7)))
    fresh = repulsion_node(pack, family.model, memory=True, **ON)
    changed, detail = differs(second, family.sample(fresh, seed=8))
    check(f"{name}: memory: the second run is pushed from the first", changed, detail)


def check_spell(pack: Any, flux: Family, aura: Family, check: Checks) -> None:
    spell = pack.NODE_CLASS_MAPPINGS["SPELLRepellency"]()
    spell_cfg = importlib.import_module(f"{PACKAGE}.lib_ctxrep.spell")
    plain = flux.sample(flux.model)
    protected = {"samples": plain.clone()}
    settings = {"radius": SPELL_RADIUS, "overcompensation": 1.6, "within_batch": False, "earlier_runs": False}
    shielded = flux.sample(spell.patch(flux.model, protected=protected, **settings)[0])
    inside = flux.model.model.process_latent_in
    radius = spell_cfg.SpellConfig(relative_radius=SPELL_RADIUS).absolute_radius(tuple(plain.shape[1:]))
    ours, theirs = inside(shielded).flatten(1), inside(plain).flatten(1)
    nearest = float(torch.cdist(ours, theirs).min())
    check(
        "SPELL: every output lands outside the shields of the protected LATENT",
        nearest > radius,
        f"nearest {nearest:.2f}, radius {radius:.2f}",
    )
    alone = flux.sample(spell.patch(flux.model, **settings)[0])
    for label, samples in (("another channel count", torch.zeros(2, 4, 8, 8)), ("another size", plain[:, :, :4, :4])):
        with captured_log() as log:
            result = flux.sample(spell.patch(flux.model, protected={"samples": samples}, **settings)[0])
        said = " | ".join(log)
        check(f"SPELL: a protected LATENT of {label} gets a message", "protected" in said, said[:160])
        check("SPELL: ... and SPELL runs without it", torch.equal(result, alone))
    check("SPELL: the original model's options hold no patch", options_clean(flux.model))

    with captured_log() as log:
        same = repulsion_node(pack, aura.model, **ON)
    said = " | ".join(log)
    check("an unsupported model (AuraFlow) is returned unpatched", same is aura.model)
    check("... with one message naming it", len(log) == 1 and "not supported" in said, said[:160])
    plain_aura = aura.sample(aura.model)
    pushed = aura.sample(spell.patch(aura.model, radius=4.0, overcompensation=1.6, within_batch=True)[0])
    changed, detail = differs(pushed, plain_aura)
    check("SPELL works on the unsupported model (radius 4 pushes)", changed, detail)


@contextlib.contextmanager
def captured_log() -> Iterator[list[str]]:
    """Messages the library logs (and warns) while the block runs."""
    import warnings

    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Keep()
    logger = logging.getLogger("lib_ctxrep")
    logger.addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield messages
        finally:
            logger.removeHandler(handler)
            messages.extend(str(w.message) for w in caught)


# --------------------------------------------------------------------------------------------------------------------
# ComfyUI's server: an example workflow POSTed to /prompt
# --------------------------------------------------------------------------------------------------------------------
WORKFLOW = REPO_ROOT / "example_workflows" / "flux_dev_contextual_repulsion.json"
#: A stand-in text encoder (no tiny text encoder can be loaded: ComfyUI fixes their sizes), installed next to the
#: node pack in the server's custom_nodes only.
CONDITIONING_PACK = """
import torch


class VerifyConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 1000})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, seed):
        g = torch.Generator().manual_seed(seed)
        return ([[torch.randn(1, 7, 32, generator=g), {"pooled_output": torch.randn(1, 32, generator=g)}]],)


NODE_CLASS_MAPPINGS = {"CtxRepVerifyConditioning": VerifyConditioning}
"""


def build_tiny_flux(comfy: Any, path: Path) -> None:
    """A tiny Flux.1-dev diffusion model that ComfyUI's UNETLoader recognises from its shapes (hidden 128 = one head
    of sum(axes_dim); model_detection fixes the MLP ratio at 4)."""
    from safetensors.torch import save_file

    config = dict(_flux(), hidden_size=128, num_heads=1, mlp_ratio=4.0, axes_dim=[16, 56, 56], depth=2)
    model = comfy.supported_models.Flux(config).get_model({})
    torch.manual_seed(0)
    state = {k: torch.randn_like(v) * 0.02 for k, v in model.diffusion_model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))


class Server:
    """ComfyUI's own server (``--cpu``, 127.0.0.1) on a base directory with the tiny model and the node pack."""

    def __init__(self, comfyui: Path, base: Path, log: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        if (comfyui / "comfy" / "cmd" / "main.py").is_file():  # the pip-installable fork
            command = [sys.executable, "-c", "from comfy.cmd.main import entrypoint; entrypoint()"]
        else:
            command = [sys.executable, str(comfyui / "main.py")]
        command += ["--cpu", "--listen", "127.0.0.1", "--port", str(self.port), "--base-directory", str(base)]
        command += ["--disable-auto-launch"]
        env = {**os.environ, "PYTHONPATH": str(comfyui)}
        self.log = log
        self.process = subprocess.Popen(command, cwd=base, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:
                return answer.status, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                die(f"ComfyUI's server exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                if self.call("GET", "/object_info/KSampler")[0] == 200:
                    return
            time.sleep(1)
        die(f"ComfyUI's server did not come up in {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def run(self, prompt: dict, timeout: float = 120) -> tuple[int, Any]:
        """Queue ``prompt``; (200, its history entry) once done, or (status, the error answer)."""
        status, answer = self.call("POST", "/prompt", {"prompt": prompt})
        if status != 200:
            return status, answer
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, history = self.call("GET", f"/history/{answer['prompt_id']}")
            if status == 200 and history:
                return 200, next(iter(history.values()))
            time.sleep(0.2)
        return 504, "timed out"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def api_prompt(workflow: dict, info: dict) -> dict:
    """A UI-format workflow as an API prompt: each node's widget values named by its inputs' order in
    ``/object_info`` (a seed's control_after_generate value skipped), links as [node id, output slot]; bypassed
    nodes (mode 4) removed, their consumers linked to the bypassed node's matching input."""
    links = {link[0]: link for link in workflow["links"]}
    nodes = {str(n["id"]): n for n in workflow["nodes"]}
    prompt = {}
    for nid, node in nodes.items():
        spec = info[node["type"]]["input"]
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values, inputs = list(node.get("widgets_values", [])), {}
        for name, (kind, *options) in [*spec.get("required", {}).items(), *spec.get("optional", {}).items()]:
            if name in linked:
                inputs[name] = [str(linked[name][1]), linked[name][2]]
            elif values and (kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO") or isinstance(kind, list)):
                inputs[name] = values.pop(0)
                if options and options[0].get("control_after_generate") and values:
                    values.pop(0)
        prompt[nid] = {"class_type": node["type"], "inputs": inputs, "mode": node.get("mode", 0)}
    for nid in [n for n, node in prompt.items() if node.pop("mode") == 4]:
        through = next(v for v in prompt[nid]["inputs"].values() if isinstance(v, list))
        del prompt[nid]
        for node in prompt.values():
            for name, value in node["inputs"].items():
                if isinstance(value, list) and value[0] == nid:
                    node["inputs"][name] = through
    return prompt


def tiny_prompt(workflow: dict, info: dict, prefix: str, **repulsion: Any) -> dict:
    """The example workflow on the tiny model: the stand-in conditioning for the text encoder, 64 x 64, 4 steps,
    a fixed seed, the latents saved (no VAE of a tiny size can be loaded either); ``repulsion`` overrides the
    Contextual Repulsion node's inputs (``mode=4``: bypassed)."""
    workflow = copy.deepcopy(workflow)
    for node in workflow["nodes"]:
        if node["type"] == "ContextualRepulsion" and "mode" in repulsion:
            node["mode"] = repulsion.pop("mode")
    prompt = api_prompt(workflow, info)
    for nid, node in list(prompt.items()):
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "UNETLoader":
            inputs["unet_name"] = "tiny_flux.safetensors"
        elif kind == "CLIPTextEncode":
            prompt[nid] = {"class_type": "CtxRepVerifyConditioning", "inputs": {"seed": int(nid)}}
        elif kind in ("DualCLIPLoader", "VAELoader", "VAEDecode", "SaveImage"):
            del prompt[nid]
        elif kind == "EmptySD3LatentImage":
            inputs.update(width=64, height=64, batch_size=BATCH)
        elif kind == "KSampler":
            inputs.update(seed=42, steps=STEPS)
            sampler = nid
        elif kind == "ContextualRepulsion":
            inputs.update(repulsion)
    prompt["save"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 0], "filename_prefix": prefix}}
    return prompt


def saved_latent(base: Path, entry: dict) -> torch.Tensor | None:
    from safetensors.torch import load_file

    for output in entry.get("outputs", {}).values():
        for item in output.get("latents", []):
            return load_file(str(base / "output" / item.get("subfolder", "") / item["filename"]))["latent_tensor"]
    return None


def check_server(comfy: Any, comfyui: Path, check: Checks) -> None:
    """The example workflow through ComfyUI's server: the node is listed, runs, and is refused at queue time."""
    base = Path(tempfile.mkdtemp(prefix="ctxrep-comfyui-"))
    try:
        build_tiny_flux(comfy, base / "models" / "diffusion_models" / "tiny_flux.safetensors")
        nodes = base / "custom_nodes"
        (nodes / "ctxrep_verify_conditioning").mkdir(parents=True)
        (nodes / "ctxrep_verify_conditioning" / "__init__.py").write_text(CONDITIONING_PACK)
        (nodes / "sd-ctxrep").symlink_to(REPO_ROOT, target_is_directory=True)
        server = Server(comfyui, base, base / "server.log")
        try:
            server.wait_ready()
            server_checks(server, base, check)
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def server_checks(server: Server, base: Path, check: Checks) -> None:
    status, info = server.call("GET", "/object_info")
    ours = {k: info.get(k, {}) for k in ("ContextualRepulsion", "SPELLRepellency")}
    check(
        "the server lists both nodes under model_patches",
        all(v.get("category") == "model_patches" for v in ours.values()),
    )
    inputs = [spec for v in ours.values() for group in v.get("input", {}).values() for spec in group.values()]
    check("every input of both nodes has a tooltip", all(len(s) > 1 and s[1].get("tooltip") for s in inputs))
    for path in sorted(WORKFLOW.parent.glob("*.json")):
        example = json.loads(path.read_text())
        missing = sorted({n["type"] for n in example["nodes"]} - set(info))
        check(f"every node of {path.name} exists in this ComfyUI", not missing, missing)
        if not missing:
            prompt = api_prompt(example, info)
            widgets = [i for n in prompt.values() if n["class_type"] in ours for i in n["inputs"].items()]
            unset = [k for n in prompt.values() if n["class_type"] in ours for k in ours[n["class_type"]]["input"]
                     ["required"] if k not in n["inputs"]]  # fmt: skip
            check(f"{path.name}: every input of our nodes is set", not unset and widgets, unset)
    workflow = json.loads(WORKFLOW.read_text())
    runs = {}
    cases = (("on", {"step_strength": 8.0}), ("bypassed", {"mode": 4}), ("strength 0", {"step_strength": 0.0}))
    for label, repulsion in cases:
        status, entry = server.run(tiny_prompt(workflow, info, f"ctxrep/{label}", **repulsion))
        runs[label] = saved_latent(base, entry) if status == 200 else None
        check(
            f"{WORKFLOW.name} ({label}) runs through /prompt", runs[label] is not None, status if status != 200 else ""
        )
    if all(v is not None for v in runs.values()):
        changed, detail = differs(runs["on"].float(), runs["bypassed"].float())
        check("the workflow's node changes the batch", changed, detail)
        check("strength 0 is bit-identical to the node bypassed", torch.equal(runs["strength 0"], runs["bypassed"]))
    for label, repulsion, error in (
        ("step strength 20 (above the range)", {"step_strength": 20.0}, "value_bigger_than_max"),
        ("a custom block range 'x'", {"blocks": "custom", "custom_blocks": "x"}, "custom_validation_failed"),
    ):
        status, answer = server.call(
            "POST", "/prompt", {"prompt": tiny_prompt(workflow, info, "ctxrep/bad", **repulsion)}
        )
        said = json.dumps(answer)
        errors = [e for n in (answer or {}).get("node_errors", {}).values() for e in n.get("errors", [])]
        detail = "; ".join(f"{e.get('type')}: {e.get('details')}" for e in errors) or said[:200]
        check(f"{label} is refused at queue time ({error})", status == 400 and error in said, detail[:240])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("comfyui", type=Path, help="a ComfyUI tree (upstream or the pip-installable fork)")
    parser.add_argument("--family", action="append", help="only these families (default: all)")
    parser.add_argument("--no-server", action="store_true", help="skip the server round trip (about 1 minute)")
    args = parser.parse_args(argv)
    comfyui = args.comfyui.expanduser().resolve()
    started = time.monotonic()
    check = Checks()
    print("== Loading ==")
    pack = load_node_pack(check)
    comfy = load_comfy(comfyui)
    torch.set_num_threads(min(4, torch.get_num_threads()))
    skipped = []
    for name, spec in FAMILIES.items():
        if args.family and name not in args.family:
            continue
        print(f"\n== {name} ==")
        if not hasattr(comfy.supported_models, spec.cls):
            skipped.append(name)
            print(f"  [NOTE] no comfy.supported_models.{spec.cls} here (upstream since {spec.since}): skipped")
            continue
        family = Family(comfy, name, spec)
        print(f"  {type(family.model.model.diffusion_model).__name__}, latent {family.latent}")
        check_family(comfy, pack, family, check)
    print("\n== SPELL, and an unsupported model ==")
    flux, aura = Family(comfy, "Flux.1", FAMILIES["Flux.1"]), Family(comfy, "AuraFlow", UNSUPPORTED)
    check_spell(pack, flux, aura, check)
    if not args.no_server:
        print("\n== ComfyUI's server: an example workflow through /prompt ==")
        check_server(comfy, comfyui, check)
    print(f"\nwall time {time.monotonic() - started:.0f} s")
    if skipped:
        print(f"not in this ComfyUI, skipped: {', '.join(skipped)}")
    return check.report()


if __name__ == "__main__":
    sys.exit(main())
