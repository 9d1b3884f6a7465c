"""Verify the extension through a real Forge Neo webui API server (``launch.py --api --nowebui --cpu``), on CPU.

Usage::

    python tools/verify_forge_neo_api.py /path/to/forge-neo [--keep DIR] [--extension DIR] [--port N]
        [--family NAME ...]

The path must be a Forge Neo work tree (release 2.26: ``modules_forge/forge_version.py`` says ``release = "2.26"``;
e.g. ``webui/`` of exo101/sd-webui-forge-neo-v3). Run it with a Python that has Neo's requirements: a CPU torch,
``gradio==4.40.0 gradio_rangeslider==0.0.8`` (what Neo's launcher installs first) and then Neo's ``requirements.txt``
(see docs/verification.md for the exact commands); the server runs under the same interpreter. Nothing from Neo is
copied into this repository: the script copies the Neo tree into a temporary folder (``--keep DIR`` keeps it), never
touches the original, and in the copy changes only model sizes:

- component configs under ``backend/huggingface/``: FLUX.1-dev's CLIP-L and T5 (``text_encoder``, ``text_encoder_2``)
  and VAE, Z-Image-Turbo's VAE and Qwen3 text encoder, ERNIE-Image's (Flux.2) VAE, Krea-2-Raw's (Wan) VAE and PiD's
  Gemma 2 text encoder: hidden sizes, layers and heads (every VAE keeps its levels, so its down-scaling and latent
  channels; the LLM configs are rewritten where Neo asserts that they equal its own);
- ``backend/nn/llm/llama.py``: the hard-coded sizes of ``Qwen3_4BConfig`` (Z-Image), ``Qwen3VL_4BConfig`` (Krea 2;
  its 36 layers are kept, Neo's Krea engine taps layers 2 to 35), ``Ministral3_3BConfig`` (Ernie-Image) and
  ``Gemma2_2B_Config`` (PiD), and ``backend/nn/llm/qwen35.py``'s ``QWEN3VL_VISION`` (Krea's unused vision tower);
  ``backend/loader.py`` picks the Qwen3 class by hidden size (``== 2560`` for the 4B): the tiny 4B's size instead;
- ``modules_forge/packages/huggingface_guess``: Z-Image is detected by ``dim == 3840`` with 30 heads (detection.py)
  and matched by ``"dim": 3840`` (model_list.py): the tiny dim and head count instead; for Ernie-Image and PiD
  detection.py derives no size at all (every size is the class default: 4096 x 36 layers, 1536 x 14 blocks), so their
  branches are given the tiny sizes (and PiD's ``lq_interval``, derived from its 14 blocks, the tiny block count).
  Flux.1 and Krea 2 need no change there: detection reads their sizes from the shapes (head size 128).

A subprocess then builds one single-file checkpoint per family with Neo's own classes, random with a fixed seed
(``IntegratedFluxTransformer2DModel``, ``NextDiT``, ``SingleStreamDiT``, ``ErnieImageModel``, ``PidNet``; Neo's
``IntegratedCLIP``, ``IntegratedT5``, ``Qwen3_4B``, ``Qwen3VL``, ``Ministral3_3B``, ``Gemma2_2B``;
``IntegratedAutoencoderKL``, ``AutoencoderKLFlux2``, ``WanVAE``), with every component under the key prefix Neo's
loader splits on, so that Neo's own loader (``huggingface_guess`` detection, ``backend/loader.py``) detects and loads
each. Every component is built under Neo's ``using_forge_operations`` (as the loader builds it), whose layers leave
their weights to the checkpoint (``torch.empty``): vectors are filled with ``1 + 0.1 N(0, 1)``, biases with
``0.02 N(0, 1)``, other weights with ``N(0, 1 / fan_in)`` (so that every block, and the text stream, moves the
output); each VAE's last decoder convolution is scaled so that images span about [-1, 1]. Every DiT has 3
text-stream blocks, so every block third is non-empty.

Everything else is Neo's real code: ``launch.py --api --nowebui --cpu`` on 127.0.0.1 (a free port), the API and its
``"infotext"`` field, ``init_script_args``, the script runner, the loader, the text engines, sampling, the VAE, the
infotext, and the extension itself, installed as ``<data dir>/extensions/sd-ctxrep``, a symbolic link to this working
tree (or ``--extension DIR``). A second extension written into the data dir, ``ctxrep-verify-split``, only adds the
route ``POST /ctxrep-verify/split`` that makes ``get_free_memory`` report 0 as seen from
``backend/sampling/sampling_function.py`` (as ``tools/verify_forge_neo.py`` does for the low-VRAM case), so that Neo
sends the cond and uncond chunks to the model in separate calls; with the switch off it passes every call through.

Per family (64 x 64, batch 4, 4 Euler steps, Simple schedule, fixed seed, ``"styles": []``), images compared by
decoded pixels (PIL + numpy), never as base64 (the PNGs embed the infotext):

1. the model loads through ``/sdapi/v1/options`` and Neo's loader (no missing or unexpected key in the server log);
   after a first request (which loads the model; a note when Neo's own output of it differs from the next one's),
   two plain requests are pixel-identical, the batch's images differ and are not flat;
2. the extension off (``[{"enabled": false}]``) gives the plain pixels and no CtxRep entry;
3. on (``[{"enabled": true, "step_strength": 4.0}]``, and the README's repulsion examples verbatim): HTTP 200,
   ``CtxRep: True``, no ``CtxRep error``, ``CtxRep model`` names the family, and the batch differs from plain; on the
   first family also: the key ``strength`` is refused (plain images, an error naming both strengths);
4. a plain request after the on-requests is pixel-identical to the first plain one;
5. a pasted image's infotext reproduces it: image 3 of a repelled batch, pasted back through the API's
   ``"infotext"`` (with ``"styles": []``) at batch size and count 1 (``verify_forge_api.round_trip``), is
   pixel-identical, with the note ``regenerated <n> images to reproduce 1``;
6. cond and uncond joint or split (CFG 3, negative prompt): the split route's counter shows that only the split
   requests saw no free memory; with repulsion on, the batch Neo samples with cond and uncond in one model call is
   pixel-identical to the one it samples with them in separate calls; the same for plain requests; on differs from
   plain.

PiD (a pixel-space refiner) goes through ``/sdapi/v1/img2img`` with a fixed 64 x 64 init image and denoising strength
0.5 (Neo refuses txt2img with PiD: processing.py "PiD does not support txt2img"), and at batch size 1 with a batch
count of 4: Neo 2.26 itself fails on any PiD model call of more than one row (its low-quality latent has one row;
HTTP 500 "Sizes of tensors must match", without the extension), so batch sizes of 2+ and CFG > 1 (cond and uncond in
one call) cannot run; the cross-batch memory (on by default) is what repulsion acts on there: batch 1 stays plain,
batches 2-4 change, and without memory nothing changes. Section 6 is then a note. Its paste (5) is an img2img request
with the init image and the fields that Neo's API-only img2img does not take from an infotext (size, CFG scale,
denoising strength), and the img2img record has a 6th key (its source).

It prints one line per check, a table of the requests, notes where a family cannot be checked (with the reason), and
ends with ``VERIFIED: <n> checks passed`` (exit 0) or the list of failures (exit 1); exit 2 when a path is not what
is expected, a size edit finds other text than expected, or the server does not come up (with the server log's tail).
The server is stopped in every case.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

import numpy as np  # noqa: E402
from forge_verify_common import REPO_ROOT, Checks, die, shrink_configs  # noqa: E402
from PIL import Image  # noqa: E402
from verify_forge_api import (  # noqa: E402  # noqa: E402
    BASE_REQUEST,
    HOST,
    TINY_CLIP,
    TINY_T5,
    TINY_VAE,
    Result,
    Server,
    alwayson,
    check_enabled,
    copy_tree,
    free_port,
    infotext_params,
    paste_request,
    readme_examples,
    round_trip,
)
from verify_forge_api import Session as ForgeSession  # noqa: E402

from lib_ctxrep.integrations.forge_args import ARCHITECTURE_KEY  # noqa: E402

NEO_RELEASE = "2.26"
HF = Path("backend/huggingface")
FLUX_DEV = HF / "black-forest-labs/FLUX.1-dev"
ZIMAGE = HF / "Tongyi-MAI/Z-Image-Turbo"
KREA = HF / "krea/Krea-2-Raw"
ERNIE = HF / "baidu/ERNIE-Image"
PID = HF / "nvidia/PiD"
GUESS = Path("modules_forge/packages/huggingface_guess")

#: The tiny LLM text encoders (Neo hard-codes their sizes in backend/nn/llm/llama.py's config dataclasses). Head sizes
#: stay (128; Gemma 256): the rope sections depend on them. Krea's Qwen3-VL keeps 36 layers (Neo taps 2, 5, ..., 35);
#: its hidden size is Krea 2's text width, which must divide by the DiT's 20 text-fusion heads.
TINY_QWEN3 = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=1, num_key_value_heads=1
)
TINY_QWEN3VL = dict(hidden_size=40, intermediate_size=128, num_attention_heads=1, num_key_value_heads=1)
TINY_MINISTRAL = dict(TINY_QWEN3)
TINY_GEMMA = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1, num_key_value_heads=1
)
LLM_CONFIGS = {
    "Qwen3_4BConfig": TINY_QWEN3,
    "Qwen3VL_4BConfig": TINY_QWEN3VL,
    "Ministral3_3BConfig": TINY_MINISTRAL,
    "Gemma2_2B_Config": TINY_GEMMA,
}
#: Qwen3-VL's vision tower (unused by text prompts, but built by Neo's Qwen3VL).
TINY_VISION = dict(num_heads=1, hidden_size=32, intermediate_size=64, depth=3, deepstack_visual_indexes=[0, 1, 2])
#: Krea 2's Wan VAE (3 levels of 2x down-scaling kept).
TINY_WAN_VAE = dict(base_dim=16, num_res_blocks=1)
#: Component configs rewritten in the copy (the keys must be there).
TINY_CONFIGS: dict[Path, dict[str, Any]] = {
    FLUX_DEV / "text_encoder": TINY_CLIP,
    FLUX_DEV / "text_encoder_2": TINY_T5,
    FLUX_DEV / "vae": TINY_VAE,
    ZIMAGE / "vae": TINY_VAE,
    ZIMAGE / "text_encoder": TINY_QWEN3,
    KREA / "vae": TINY_WAN_VAE,
    ERNIE / "vae": TINY_VAE,
    PID / "text_encoder": TINY_GEMMA,
}
#: Z-Image's tiny DiT width and heads (detection.py tells Z-Image from Lumina 2 by the width).
ZIMAGE_DIM, ZIMAGE_HEADS = 256, 2
#: Sizes given to detection.py's Ernie-Image and PiD branches (which derive none).
TINY_ERNIE = dict(
    hidden_size=128,
    num_attention_heads=1,
    num_layers=3,
    ffn_hidden_size=256,
    text_in_dim=TINY_MINISTRAL["hidden_size"],
)
TINY_PID = dict(
    hidden_size=128, num_groups=2, patch_depth=3, pixel_depth=1, pixel_hidden_size=16, pixel_attn_hidden_size=72,
    pixel_num_groups=1, txt_embed_dim=TINY_GEMMA["hidden_size"], lq_hidden_dim=16, lq_num_res_blocks=1,
)  # fmt: skip

SPLIT_ROUTE = "/ctxrep-verify/split"
SPLIT_EXTENSION = '''"""Written by lib_ctxrep's tools/verify_forge_neo_api.py (a test harness, not part of Neo).

POST __ROUTE__ with {"split": true} makes get_free_memory report 0 as seen from backend/sampling/sampling_function.py,
so that calc_cond_uncond_batch sends every cond / uncond chunk to the model in a call of its own; {"split": false}
passes every call through to backend.memory_management again.
"""

from backend import memory_management
from backend.sampling import sampling_function
from modules import script_callbacks

STATE = {"split": False, "zeros": 0}


class _Memory:
    def __getattr__(self, name):
        return getattr(memory_management, name)

    def get_free_memory(self, *args, **kwargs):
        if STATE["split"]:
            STATE["zeros"] += 1
            return 0
        return memory_management.get_free_memory(*args, **kwargs)


sampling_function.memory_management = _Memory()


def _routes(demo, app):
    def split(body: dict):
        STATE["split"] = bool(body.get("split"))
        return dict(STATE)

    app.add_api_route("__ROUTE__", split, methods=["POST"])


script_callbacks.on_app_started(_routes)
'''.replace("__ROUTE__", SPLIT_ROUTE)


@dataclass(frozen=True)
class Family:
    """One model family: the name the infotext's ``CtxRep model`` gives it, its checkpoint and how it is requested."""

    name: str
    checkpoint: str
    endpoint: str = "txt2img"
    request: dict[str, Any] = field(default_factory=dict)


FAMILIES = (
    Family("Flux.1", "tiny-neo-flux1.safetensors"),
    Family("Z-Image", "tiny-neo-zimage.safetensors"),
    Family("Krea 2", "tiny-neo-krea2.safetensors"),
    Family("Ernie-Image", "tiny-neo-ernie.safetensors"),
    # PiD is a pixel-space refiner: Neo runs it in img2img only (processing.py: "PiD does not support txt2img"); its
    # denoising strength is the degradation level it is told (Neo then samples from pure noise at strength 1).
    Family("PiD", "tiny-neo-pid.safetensors", "img2img", {"denoising_strength": 0.5}),
)
#: The repulsion every family runs (the README's first example's strength).
ON = {"enabled": True, "step_strength": 4.0}
#: True CFG with a negative prompt: cond and uncond rows go through the model.
CFG = {"cfg_scale": 3.0, "negative_prompt": "blurry"}


# --------------------------------------------------------------------------------------------------------------------
# The tiny checkpoints (run by the current interpreter in the copy of Neo, with only backend.nn.* imported)
# --------------------------------------------------------------------------------------------------------------------
BUILD_WEIGHTS = r"""
import json, sys
sys.argv = [sys.argv[0], "--cpu"]
sys.path[:0] = [".", "modules_forge/packages"]
import torch
from safetensors.torch import save_file

spec = json.loads(sys.stdin.readline())
HF = "backend/huggingface/"
_empty = torch.empty


def filled_empty(*args, **kwargs):
    # Neo's classes allocate norm scales, modulations and pad tokens with torch.empty and leave them to the
    # checkpoint: give them values (nn.Linear and the like overwrite theirs in reset_parameters).
    t = _empty(*args, **kwargs)
    if t.is_floating_point() and t.device.type != "meta":
        with torch.no_grad():
            if t.dim() <= 1:
                t.copy_(1.0 + 0.1 * torch.randn(t.shape))
            else:  # variance-preserving, so that every block (and the text stream) moves the output
                t.copy_(torch.randn(t.shape) / (t[0].numel() ** 0.5))
    return t


def build(make):
    # Under Neo's operations, as backend/loader.py builds every component (Neo's LLMs need its RMSNorm); their
    # reset_parameters do nothing, so every weight comes from torch.empty: biases are then made small.
    from backend.operations import using_forge_operations
    torch.empty = filled_empty
    try:
        with using_forge_operations(device=torch.device("cpu"), dtype=torch.float32, manual_cast_enabled=False):
            model = make()
    finally:
        torch.empty = _empty
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.copy_(0.02 * torch.randn(param.shape))
    return model


def config(path):
    return json.load(open(HF + path + "/config.json"))


def scaled_vae(model, latent):
    # Scale the random decoder's last convolution so that its output spans about [-1, 1] (not flat, not clipped).
    convs = [m for m in model.decoder.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    with torch.no_grad():
        for _ in range(3):
            out = model.decode(torch.randn(latent))
            out = out if isinstance(out, torch.Tensor) else out[0]
            std = float(out.float().std())
            convs[-1].weight.mul_(0.5 / std)
            if convs[-1].bias is not None:
                convs[-1].bias.mul_(0.5 / std)
    return model


def kl_vae(path, channels):
    from backend.nn.vae import IntegratedAutoencoderKL
    model = build(lambda: IntegratedAutoencoderKL.from_config(IntegratedAutoencoderKL.load_config(HF + path)))
    return scaled_vae(model, (2, channels, 8, 8))


def save(parts, out):
    sd = {}
    for prefix, model in parts:
        for key, value in model.state_dict().items():
            sd[prefix + key] = value.detach().float().contiguous()
    bad = [k for k, v in sd.items() if not torch.isfinite(v).all()]
    assert not bad, bad
    save_file(sd, out)
    print(f"{out}: {len(sd)} tensors, {sum(v.numel() for v in sd.values())} parameters", flush=True)


def flux1(out):
    from transformers import CLIPTextConfig, CLIPTextModel
    from backend.nn.clip import IntegratedCLIP
    from backend.nn.flux import IntegratedFluxTransformer2DModel
    from backend.nn.t5 import IntegratedT5
    base = "black-forest-labs/FLUX.1-dev/"
    # hidden 128 = 1 head of 128 (detection.py's Flux.1 axes [16, 56, 56]), 3 double + 2 single blocks
    dit = build(lambda: IntegratedFluxTransformer2DModel(
        in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=32, hidden_size=128, mlp_ratio=4.0, num_heads=1,
        depth=3, depth_single_blocks=2, axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True,
        guidance_embed=True))
    clip = build(lambda: IntegratedCLIP(CLIPTextModel, CLIPTextConfig.from_pretrained(HF + base + "text_encoder"),
                                        add_text_projection=True))
    t5 = build(lambda: IntegratedT5(config(base + "text_encoder_2")))
    save([("model.diffusion_model.", dit), ("vae.", kl_vae(base + "vae", 16)), ("text_encoders.clip_l.", clip),
          ("text_encoders.t5xxl.", t5)], out)


def zimage(out):
    from backend.nn.llm.llama import Qwen3_4B
    from backend.nn.lumina import NextDiT
    base = "Tongyi-MAI/Z-Image-Turbo/"
    text = build(lambda: Qwen3_4B(config(base + "text_encoder")))
    width = text.model.embed_tokens.weight.shape[1]
    dit = build(lambda: NextDiT(
        patch_size=2, in_channels=16, dim=spec["zimage_dim"], n_layers=3, n_heads=spec["zimage_heads"],
        n_kv_heads=spec["zimage_heads"], ffn_dim_multiplier=8.0 / 3.0, norm_eps=1e-5, qk_norm=True, cap_feat_dim=width,
        axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512], rope_theta=256.0, z_image_modulation=True,
        time_scale=1000.0, pad_tokens_multiple=32))
    save([("model.diffusion_model.", dit), ("vae.", kl_vae(base + "vae", 16)),
          ("text_encoders.qwen3_4b.transformer.", text)], out)


def krea2(out):
    from backend.nn.krea import SingleStreamDiT
    from backend.nn.llm.llama import Qwen3VL
    from backend.nn.wan_vae import WanVAE
    base = "krea/Krea-2-Raw/"
    text = build(lambda: Qwen3VL(config(base + "text_encoder")))
    width = text.model.embed_tokens.weight.shape[1]
    # detection.py reads every size from the shapes with a head size of 128; 12 text layers (the taps)
    dit = build(lambda: SingleStreamDiT(features=128, heads=1, kvheads=1, layers=3, patch=2, channels=16,
                                        txtlayers=12, txtdim=width))
    vae = build(lambda: WanVAE.from_config(WanVAE.load_config(HF + base + "vae")))
    save([("model.diffusion_model.", dit), ("vae.", scaled_vae(vae, (1, 16, 1, 8, 8))),
          ("text_encoders.qwen3vl_4b.transformer.", text)], out)


def ernie(out):
    from backend.nn.ernie import ErnieImageModel
    from backend.nn.llm.llama import Ministral3_3B
    from backend.nn.vae import AutoencoderKLFlux2
    base = "baidu/ERNIE-Image/"
    text = build(lambda: Ministral3_3B(config(base + "text_encoder")))
    dit = build(lambda: ErnieImageModel(in_channels=128, out_channels=128, patch_size=1, rope_axes_dim=(32, 48, 48),
                                        **spec["ernie"]))
    vae = build(lambda: AutoencoderKLFlux2.from_config(AutoencoderKLFlux2.load_config(HF + base + "vae")))
    save([("model.diffusion_model.", dit), ("vae.", scaled_vae(vae, (2, 128, 4, 4))),
          ("text_encoders.ministral3_3b.transformer.", text)], out)


def pid(out):
    from backend.nn.llm.llama import Gemma2_2B
    from backend.nn.pixeldit.pid import PidNet
    text = build(lambda: Gemma2_2B(config("nvidia/PiD/text_encoder")))
    dit = build(lambda: PidNet(lq_latent_channels=16, lq_interval=2, **spec["pid"]))
    # PiD's VAE encodes the low-quality input; with 16 latent channels Neo's loader builds it from FLUX.1-dev's config
    save([("model.diffusion_model.", dit), ("vae.", kl_vae("black-forest-labs/FLUX.1-dev/vae", 16)),
          ("text_encoders.gemma2_2b.transformer.", text)], out)


for name, out in spec["build"]:
    torch.manual_seed(0)
    globals()[name](out)
"""
#: The build script's function per family.
BUILDERS = {"Flux.1": "flux1", "Z-Image": "zimage", "Krea 2": "krea2", "Ernie-Image": "ernie", "PiD": "pid"}


# --------------------------------------------------------------------------------------------------------------------
# The Neo copy: only model sizes change
# --------------------------------------------------------------------------------------------------------------------
def check_paths(neo: Path, extension: Path) -> str:
    """Exit 2 unless the paths are a Forge Neo tree and the extension's tree; Neo's release."""
    neo_files = (
        "launch.py",
        "webui.py",
        "modules/api/api.py",
        "backend/loader.py",
        "backend/nn/llm/llama.py",
        "backend/sampling/sampling_function.py",
        str(GUESS / "detection.py"),
        "modules_forge/forge_version.py",
    )
    for root, files, what in (
        (neo, neo_files, "a Forge Neo tree"),
        (extension, ("scripts/ctxrep.py", "lib_ctxrep/integrations/forge_args.py"), "the extension's tree"),
    ):
        missing = [f for f in files if not (root / f).is_file()]
        if missing:
            die(f"{root} is not {what}: missing {missing}")
    version = (neo / "modules_forge/forge_version.py").read_text()
    if 'version = "neo"' not in version:
        die(f"{neo} is not Forge Neo (modules_forge/forge_version.py: {version.strip()!r})")
    match = re.search(r'release = "([^"]+)"', version)
    return match.group(1) if match else "unknown"


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    """Replace ``old`` (exactly ``count`` times) in the copy's ``path``; exit 2 where the text is not as expected."""
    text = path.read_text()
    found = text.count(old)
    if found != count:
        die(f"{path}: {old!r} found {found} times, expected {count}: not the Neo this script was written against")
    path.write_text(text.replace(old, new))


def shrink_dataclass(text: str, name: str, sizes: dict[str, Any], where: Path) -> str:
    """``sizes`` as the defaults of the config dataclass ``name`` (fields it inherits are added to it)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(f"class {name}")), None)
    if start is None:
        die(f"{where}: no class {name}")
    end = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i][0].isspace()), len(lines))
    for key, value in sizes.items():
        pattern = re.compile(rf"(\s+){key}(: \w+)? = .*")
        hit = next((i for i in range(start + 1, end) if pattern.fullmatch(lines[i])), None)
        if hit is None:
            lines.insert(start + 1, f"    {key}: int = {value!r}")
            end += 1
        else:
            lines[hit] = f"    {key}: int = {value!r}"
    return "\n".join(lines) + "\n"


def shrink(tree: Path) -> None:
    """Tiny model sizes in the copy (and nothing else): see the module's docstring."""
    shrink_configs(tree, TINY_CONFIGS)
    llama = tree / "backend/nn/llm/llama.py"
    text = llama.read_text()
    for name, sizes in LLM_CONFIGS.items():
        text = shrink_dataclass(text, name, sizes, llama)
    llama.write_text(text)
    vision = tree / "backend/nn/llm/qwen35.py"
    text = vision.read_text()
    for key, value in TINY_VISION.items():
        text, n = re.subn(rf"(QWEN3VL_VISION = dict\(.*?\b){key}=(\[[^\]]*\]|[^,)]+)", rf"\g<1>{key}={value!r}", text)
        if n != 1:
            die(f"{vision}: QWEN3VL_VISION has no {key}=")
    vision.write_text(text)
    qwen3_4b = TINY_QWEN3["hidden_size"]
    edit(tree / "backend/loader.py", 'config["hidden_size"] == 2560', f'config["hidden_size"] == {qwen3_4b}')
    detection = tree / GUESS / "detection.py"
    edit(detection, 'dit_config["dim"] == 3840:', f'dit_config["dim"] == {ZIMAGE_DIM}:')
    edit(detection, 'dit_config["n_heads"] = 30', f'dit_config["n_heads"] = {ZIMAGE_HEADS}')
    edit(detection, 'dit_config["n_kv_heads"] = 30', f'dit_config["n_kv_heads"] = {ZIMAGE_HEADS}')
    edit(tree / GUESS / "model_list.py", '"dim": 3840,', f'"dim": {ZIMAGE_DIM},')
    edit(
        detection,
        'dit_config = {"image_model": "ernie"}',
        f'dit_config = {{"image_model": "ernie", **{TINY_ERNIE!r}}}',
    )
    edit(detection, 'dit_config = {"image_model": "pid"}', f'dit_config = {{"image_model": "pid", **{TINY_PID!r}}}')
    edit(detection, "(14 + num_gates - 1) // num_gates", f"({TINY_PID['patch_depth']} + num_gates - 1) // num_gates")


def build_checkpoints(tree: Path, models: Path, families: tuple[Family, ...]) -> None:
    """The tiny single-file checkpoints, built with Neo's own classes in a subprocess."""
    spec = {
        "build": [(BUILDERS[f.name], str(models / f.checkpoint)) for f in families],
        "zimage_dim": ZIMAGE_DIM,
        "zimage_heads": ZIMAGE_HEADS,
        "ernie": TINY_ERNIE,
        "pid": TINY_PID,
    }
    result = subprocess.run(
        [sys.executable, "-c", BUILD_WEIGHTS],
        cwd=tree,
        input=json.dumps(spec) + "\n",
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        die(f"building the tiny checkpoints failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    for line in result.stdout.strip().splitlines():
        if line.startswith(str(models)):
            print(f"tiny checkpoint {Path(line).name}")


def prepare(neo: Path, extension: Path, work: Path, families: tuple[Family, ...]) -> tuple[Path, Path]:
    """The shrunk copy of Neo and the data dir (models, settings, the extensions, the init image)."""
    tree, data = work / "neo", work / "data"
    for path in (tree, data):
        if path.exists():
            shutil.rmtree(path)
    copy_tree(neo, tree)
    shrink(tree)
    models = data / "models/Stable-diffusion"
    models.mkdir(parents=True)
    build_checkpoints(tree, models, families)
    (data / "extensions").mkdir()
    (data / "extensions/sd-ctxrep").symlink_to(extension, target_is_directory=True)
    split = data / "extensions/ctxrep-verify-split/scripts"
    split.mkdir(parents=True)
    (split / "ctxrep_verify_split.py").write_text(SPLIT_EXTENSION)
    (data / "protected").mkdir()
    # Neo asks "Press Enter to Continue..." at start unless the settings carry its VERSION_UID (a fresh install's do).
    uid = re.search(r'VERSION_UID: Final\[str\] = "([^"]+)"', (tree / "modules/launch_utils.py").read_text())
    settings = {"live_previews_enable": False, "ctxrep_protected_root": str(data / "protected")}
    settings.update({"VERSION_UID": uid.group(1)} if uid else {})
    (data / "config.json").write_text(json.dumps(settings))
    return tree, data


class NeoServer(Server):
    """Neo's launch.py as an API-only server on 127.0.0.1 (``--cpu``: Neo's flag for Forge main's ``--always-cpu``),
    in its own process group; stopped on exit."""

    def __init__(self, tree: Path, data: Path, port: int, log: Path) -> None:
        import urllib.request

        self.url, self.log = f"http://{HOST}:{port}", log
        flags = [
            "--cpu", "--skip-prepare-environment", "--skip-install", "--skip-version-check",
            "--skip-python-version-check", "--skip-torch-cuda-test", "--api", "--nowebui",
            "--server-name", HOST, "--port", str(port), "--data-dir", str(data),
        ]  # fmt: skip
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        env["PYTHONUNBUFFERED"] = "1"
        env["NO_PROXY"] = env["no_proxy"] = HOST
        env.pop("COMMANDLINE_ARGS", None)
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "launch.py", *flags],
            cwd=tree,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --------------------------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------------------------
def init_image() -> str:
    """A fixed 64 x 64 gradient as a base64 PNG: PiD's low-quality input."""
    y, x = np.mgrid[0:64, 0:64]
    pixels = np.stack([x * 4, y * 4, (x + y) * 2], -1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class NeoSession(ForgeSession):
    """Requests to one family's endpoint (``txt2img``, or ``img2img`` with the init image), labelled by family."""

    def __init__(self, server: Server, family: Family, shape: dict[str, int]) -> None:
        super().__init__(server)
        self.family, self.shape = family, shape
        self.init = init_image() if family.endpoint == "img2img" else None

    def txt2img(self, label: str, extra: dict[str, Any] | None = None, *, base: bool = True) -> Result:
        """One request to the family's endpoint (named as the base class's, so that verify_forge_api's round trip
        reuses it): the base request with the family's batch shape unless ``base`` is False."""
        body = {**(BASE_REQUEST | self.shape | self.family.request if base else {}), **(extra or {})}
        if self.init is not None:
            body.setdefault("init_images", [self.init])
        started = time.monotonic()
        status, answer = self.server.call("POST", f"/sdapi/v1/{self.family.endpoint}", body)
        expected = int(body.get("batch_size", 1)) * int(body.get("n_iter", 1))
        result = Result(f"{self.family.name}: {label}", status, answer, expected)
        result.seconds = time.monotonic() - started
        self.results.append(result)
        return result

    def split(self, on: bool) -> int:
        """The split switch on or off; how often it has reported no free memory so far."""
        status, answer = self.server.call("POST", SPLIT_ROUTE, {"split": on})
        if status != 200 or not isinstance(answer, dict):
            raise RuntimeError(f"{SPLIT_ROUTE}: HTTP {status} {answer}")
        return int(answer["zeros"])


def loader_log(server: Server, checkpoint: str) -> str:
    """The server log from the last 'Loading Model:' of ``checkpoint`` on (Neo's loader prints missing and unexpected
    keys there)."""
    text = server.log.read_text(errors="replace")
    start = text.rfind("Loading Model:", 0, text.rfind(checkpoint) + 1)
    return text[start:] if start >= 0 else ""


# --------------------------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class Notes:
    """What could not be checked, and why (printed as [NOTE] lines and at the end)."""

    lines: list[str] = field(default_factory=list)

    def __call__(self, text: str) -> None:
        print(f"  [NOTE] {text}")
        self.lines.append(text)


#: Fields Neo 2.26's API-only server does not fill from an img2img request's "infotext": its ``apply_infotext``
#: (modules/api/api.py) fills only paste fields that have an ``api`` name, and img2img's (modules/ui.py
#: ``img2img_paste_fields``) have none, so the prompt, the negative prompt, the size, CFG and denoising strength stay
#: at the request's defaults: the pasted request gives them.
IMG2IMG_PASTE_GIVEN = ("prompt", "negative_prompt", "width", "height", "cfg_scale", "denoising_strength")


def img2img_round_trip(
    session: NeoSession, check: Checks, case: tuple[str, dict[str, Any], dict[str, Any], int, int]
) -> None:
    """verify_forge_api's round trip through ``/sdapi/v1/img2img``: an img2img record has 6 keys (its source too);
    the pasted request carries the init image and what Neo's img2img API does not take from the infotext
    (``IMG2IMG_PASTE_GIVEN``)."""
    label, values, shape, index, cost = case
    batch = session.txt2img(f"{label}: {shape['batch_size']}x{shape['n_iter']}", {**shape, **alwayson([values])})
    check(f"{label}: HTTP 200 with {batch.expected} images", batch.ok, batch.error)
    if not batch.ok:
        return
    pasted = batch.infotexts[index]
    record = {k: v for k, v in infotext_params(pasted).items() if k.startswith("CtxRep batch") or "earlier" in k}
    check(
        f"{label}: image {index + 1}'s infotext records its batch (6 keys, source img2img)", len(record) == 6, record
    )
    given = {key: {**BASE_REQUEST, **session.family.request}[key] for key in IMG2IMG_PASTE_GIVEN}
    again = session.txt2img(f"{label}: image {index + 1} pasted", paste_request(pasted, **given), base=False)
    check(f"{label}: pasted image {index + 1} gives HTTP 200 with 1 image", again.ok, again.error)
    same = again.ok and np.array_equal(again.images[0], batch.images[index])
    original = infotext_params(pasted)
    differ = {k: (original.get(k), v) for k, v in again.params.items() if original.get(k) != v and "CtxRep" not in k}
    check(
        f"{label}: pasted image {index + 1} is pixel-identical to it", same, f"infotext (original, pasted): {differ}"
    )
    note = again.ctxrep.get("CtxRep note", "")
    check(f"{label}: the note says 'regenerated {cost} images to reproduce 1'", f"{cost} images to" in note, note)
    if not same and again.ok:
        # What the rebuild runs, as a plain request: the batches up to the pasted one. Neo's img2img VAE encode
        # (backend/nn/vae.py posterior.sample()) draws from the global RNG that the previous request's last noise
        # left seeded, so compare only requests that follow the same one.
        rebuilt = {**shape, "n_iter": cost // shape["batch_size"], **alwayson([values])}
        twice = [session.txt2img(f"{label}: the rebuilt job, {n}", rebuilt) for n in ("once", "again")]
        if all(r.ok for r in twice):
            print(
                f"  [INFO] {label}: the job the paste rebuilds, sent as a request ({rebuilt['n_iter']} batches): its "
                f"image {cost} vs the original {np.abs(twice[0].images[-1].astype(int) - batch.images[index]).max()}"
                f" max |pixel diff|; the same request twice: {twice[0].diff(twice[1])}"
            )


def family_checks(
    server: Server, check: Checks, note: Notes, family: Family, examples: list[dict[str, Any]], first: bool
) -> NeoSession:
    """Sections 1-6 of the module's docstring on one family."""
    # PiD: Neo 2.26 keeps the low-quality latent of one image only (backend/diffusion_engine/pid.py
    # encode_first_stage is called per image and overwrites dynamic_args.lq_latent[0]), so its own sampling fails on
    # any model call of more than one row: batch size 1 and CFG 1 only. A batch count of 4 with the cross-batch
    # memory is what the extension can act on there.
    pid = family.name == "PiD"
    shape = {"batch_size": 1, "n_iter": 4} if pid else {"batch_size": 4, "n_iter": 1}
    session = NeoSession(server, family, shape)
    print(f"\n== {family.name} ({family.checkpoint}, /sdapi/v1/{family.endpoint}) ==")
    status, answer = server.call("POST", "/sdapi/v1/options", {"sd_model_checkpoint": family.checkpoint})
    check(f"{family.name}: model selected through /sdapi/v1/options", status == 200, "" if status == 200 else answer)
    # Neo 2.26's img2img encodes the init image with posterior.sample() (backend/nn/vae.py) on the global RNG, which
    # the previous request's last noise left seeded: a first request after the start differs from the next identical
    # one (no extension involved). A first request loads the model, and the checks compare later ones.
    warm = session.txt2img("plain (loads the model)")
    plain = session.txt2img("plain (first)")
    check(f"{family.name}: plain request: HTTP 200 with {plain.expected} images", plain.ok, plain.error)
    log = loader_log(server, family.checkpoint)
    bad = [line.strip() for line in log.splitlines() if re.search(r"Missing:|Unexpected:|Skipping \"", line)]
    check(
        f"{family.name}: Neo's loader detected and loaded every component ('Loading Model:' ... no missing or "
        "unexpected key, no skipped component)",
        "Model loaded in" in log and not bad,
        "; ".join(bad)[:400] or ("" if "Model loaded in" in log else "no 'Model loaded in' in the log"),
    )
    if not plain.ok:
        note(f"{family.name}: the plain request failed ({plain.error[:200]}); its other checks are skipped")
        return session
    if not warm.same_pixels(plain):
        note(
            f"{family.name}: Neo's first request after loading the model differs from the next, identical one "
            f"({warm.diff(plain)}): Neo's own state, no extension involved; the checks compare later requests"
        )
    model = plain.params.get("Model", "")
    check(f"{family.name}: the infotext names the tiny checkpoint", model == Path(family.checkpoint).stem, model)
    check(f"{family.name}: plain request: no CtxRep entry", not plain.ctxrep, plain.ctxrep or "")
    check(
        f"{family.name}: plain request: the images differ from each other",
        len({im.tobytes() for im in plain.images}) > 1,
    )
    spread = f"pixel values {int(plain.pixels().min())}..{int(plain.pixels().max())}, std {plain.pixels().std():.1f}"
    check(f"{family.name}: plain request: images are not flat", float(plain.pixels().std()) > 1.0, spread)
    again = session.txt2img("plain (again)")
    check(f"{family.name}: plain twice: pixel-identical", again.same_pixels(plain), again.diff(plain))

    off = session.txt2img("off [{enabled: false}]", alwayson([{"enabled": False}]))
    check(f"{family.name}: extension off: pixel-identical to no extension", off.same_pixels(plain), off.diff(plain))
    check(f"{family.name}: extension off: no CtxRep entry", not off.ctxrep, off.ctxrep or "")

    expect = {ARCHITECTURE_KEY: family.name}
    on_values = ON
    on = session.txt2img(f"on {json.dumps([on_values])}", alwayson([on_values]))
    tag = f"{family.name}: on {json.dumps([on_values])}"
    check_enabled(check, tag, on, expect)
    check(f"{tag}: the batch differs from plain", on.ok and not on.same_pixels(plain), on.diff(plain))
    if pid:
        alone = session.txt2img("on, memory off", alwayson([{**ON, "memory": False}]))
        check(
            f"{tag} without memory: each batch of 1 is alone, so pixel-identical to plain (nothing to repel)",
            alone.same_pixels(plain),
            alone.diff(plain),
        )
        first_same = on.ok and np.array_equal(on.images[0], plain.images[0])
        later = on.ok and all(not np.array_equal(a, b) for a, b in zip(on.images[1:], plain.images[1:], strict=True))
        check(f"{tag}: batch 1 as plain, batches 2-4 pushed from the earlier ones (memory)", first_same and later)
    for n, example in enumerate(examples, 1):
        values = example["alwayson_scripts"]["contextual repulsion"]["args"][0]
        readme = session.txt2img(f"README example {n}", example)
        tag = f"{family.name}: README example {n} {json.dumps(values)} (verbatim)"
        check_enabled(check, tag, readme, expect)
        check(f"{tag}: differs from plain", readme.ok and not readme.same_pixels(plain), readme.diff(plain))
    if first:
        refused = session.txt2img("the key 'strength'", alwayson([{"enabled": True, "strength": 1.0}]))
        message = refused.ctxrep.get("CtxRep error", "")
        check(f"{family.name}: the key 'strength': plain images", refused.same_pixels(plain), refused.diff(plain))
        check(
            f"{family.name}: the key 'strength' is refused, naming 'step_strength' and 'block_strength'",
            "'step_strength'" in message and "'block_strength'" in message,
            message or "no CtxRep error",
        )

    after = session.txt2img("plain (after the on-requests)")
    check(
        f"{family.name}: plain after on: pixel-identical to the first plain",
        after.same_pixels(plain),
        after.diff(plain),
    )
    check(f"{family.name}: plain after on: no CtxRep entry", not after.ctxrep, after.ctxrep or "")

    # 5. Image 3 of a coupled batch, pasted back through the API's "infotext" (verify_forge_api's round trip; its
    # record check counts txt2img's 5 batch keys, an img2img record has a 6th, its source).
    cost = 3 if pid else 4  # PiD: the 3rd batch of 1 needs the 2 earlier ones (memory); otherwise its batch of 4
    case = (f"{family.name}: repulsion", on_values, shape, 2, cost)
    if family.endpoint == "txt2img":
        round_trip(session, check, case)
    else:
        img2img_round_trip(session, check, case)

    # 6. Cond and uncond in one call or split (the route makes get_free_memory report 0 to the sampling function).
    if pid:
        joint = session.txt2img("plain, CFG 3 (one call)", CFG)
        note(
            f"PiD: cond and uncond cannot be compared joint vs split: Neo 2.26 itself fails on any PiD call of more "
            f"than one row (plain request at CFG 3, no extension: HTTP {joint.status} {joint.error[:160]}), as its "
            "low-quality latent has one row (backend/diffusion_engine/pid.py encode_first_stage overwrites "
            "dynamic_args.lq_latent[0] per image); for the same reason PiD runs at batch size 1 here (a batch count "
            "of 4 with the cross-batch memory)"
        )
        return session
    cfg = {**CFG}
    zeros = session.split(False)
    joint_plain = session.txt2img("plain, CFG 3, cond+uncond in one call", cfg)
    joint_on = session.txt2img("on, CFG 3, cond+uncond in one call", {**cfg, **alwayson([ON])})
    unsplit = session.split(True)
    try:
        split_plain = session.txt2img("plain, CFG 3, cond and uncond split", cfg)
        split_on = session.txt2img("on, CFG 3, cond and uncond split", {**cfg, **alwayson([ON])})
    finally:
        split = session.split(False)
    check(
        f"{family.name}: joint requests never saw the split switch, split requests did (get_free_memory = 0 "
        f"{split - unsplit} times)",
        unsplit == zeros and split > unsplit,
    )
    check_enabled(check, f"{family.name}: on, CFG 3, joint", joint_on, expect)
    check_enabled(check, f"{family.name}: on, CFG 3, split", split_on, expect)
    check(
        f"{family.name}: CFG 3 plain: split pixel-identical to joint (Neo itself)",
        split_plain.same_pixels(joint_plain),
        split_plain.diff(joint_plain),
    )
    check(
        f"{family.name}: CFG 3 on: split pixel-identical to joint",
        split_on.same_pixels(joint_on),
        split_on.diff(joint_on),
    )
    check(
        f"{family.name}: CFG 3 on differs from CFG 3 plain",
        joint_on.ok and not joint_on.same_pixels(joint_plain),
        joint_on.diff(joint_plain),
    )
    return session


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("neo", type=Path, help="a Forge Neo tree (release 2.26)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (Neo copy, data dir, server log)")
    parser.add_argument(
        "--extension", type=Path, default=REPO_ROOT, help="the extension tree to install (default: this)"
    )
    parser.add_argument("--port", type=int, default=0, help="server port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for the server")
    names = [f.name for f in FAMILIES]
    parser.add_argument("--family", action="append", choices=names, help="check only these (default: all)")
    args = parser.parse_args(argv)
    neo, extension = (p.expanduser().resolve() for p in (args.neo, args.extension))
    release = check_paths(neo, extension)
    families = tuple(f for f in FAMILIES if not args.family or f.name in args.family)
    examples = [
        e
        for e in readme_examples(REPO_ROOT / "README.md")
        if e["alwayson_scripts"]["contextual repulsion"]["args"][0].get("repulsion", True) is not False
    ]
    work = args.keep.expanduser().resolve() if args.keep else Path(tempfile.mkdtemp(prefix="ctxrep-neo-api-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"Forge Neo {release} at {neo}, extension {extension}; work folder {work}")
    if release != NEO_RELEASE:
        print(f"  [NOTE] written against Neo {NEO_RELEASE}; this tree says {release}")
    check, note = Checks(), Notes()
    sessions: list[NeoSession] = []
    try:
        tree, data = prepare(neo, extension, work, families)
        server = NeoServer(tree, data, args.port or free_port(), work / "server.log")
        try:
            server.wait_ready(args.startup_timeout)
            print(f"server up at {server.url} after {time.monotonic() - started:.0f} s (log: {work / 'server.log'})")
            for n, family in enumerate(families):
                sessions.append(family_checks(server, check, note, family, examples, n == 0))
        finally:
            server.stop()
        for session in sessions:
            session.table()
        if note.lines:
            print("\nNotes (not checked, and why):")
            for line in note.lines:
                print(f"  - {line}")
        print(f"\nwall time {time.monotonic() - started:.0f} s")
        return check.report()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
