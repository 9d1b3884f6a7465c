"""Verify the extension through a real Forge webui API server: ``/sdapi/v1/txt2img`` with ``alwayson_scripts``, on CPU.

Usage::

    python tools/verify_forge_api.py /path/to/stable-diffusion-webui-forge --hf-guess /path/to/huggingface_guess \
        [--keep DIR] [--extension DIR] [--port N]

The first path must be a checkout (or an exported work tree) of lllyasviel/stable-diffusion-webui-forge, written
against main at dfdcbab6; ``--hf-guess`` a checkout of lllyasviel/huggingface_guess (Forge pins 84826248). Run it with
a Python that has Forge's requirements (``requirements_versions.txt``, a CPU torch, PIL, numpy, and sentencepiece
0.2.0: later ones need protobuf 5, and Forge pins 3.20, which breaks SD3's T5 tokenizer): the server runs under the
same interpreter. Nothing from Forge is copied into this repository.

The script exports both checkouts into a temporary folder (``--keep DIR`` keeps it there) and never touches the
originals. In that copy only, model sizes are shrunk: the CLIP-L, CLIP-G, T5 and VAE configs under
``backend/huggingface/black-forest-labs/FLUX.1-dev/`` and ``.../stabilityai/stable-diffusion-3-medium-diffusers/`` are
rewritten to tiny sizes (the VAE keeps 4 levels, so 8x down-scaling and 16 latent channels), and the Flux branch of
``huggingface_guess/detection.py``, which hard-codes FLUX.1's sizes, reads them from the state dict's shapes instead. A
subprocess then builds the weights with Forge's own classes (``IntegratedFluxTransformer2DModel``: hidden 64, 2 heads,
3 double + 2 single blocks so that every block third is non-empty, guidance embedding on, i.e. the FLUX.1-dev path;
``IntegratedCLIP``, ``IntegratedT5``, ``IntegratedAutoencoderKL``), random with a fixed seed, and saves one single-file
checkpoint with the prefixes Forge's Flux loader splits on; and a second one for SD3 (``MMDiTX`` depth 3, i.e. hidden
192 and 3 heads, whose sizes huggingface_guess reads from the shapes as it is; CLIP-L, CLIP-G, T5, which Forge loads
but leaves unused by default). Everything else is Forge's real code: ``launch.py`` with ``--api --nowebui
--always-cpu`` on 127.0.0.1, the API, ``init_script_args``, the script runner, the loader, text encoders, sampling,
VAE, infotext, and the extension itself, installed as ``<data dir>/extensions/sd-ctxrep``, a symbolic link to this
working tree (or to ``--extension DIR``, e.g. an export of an older commit, to show what that one does). A data dir
holds the model, the settings (live previews off: no network) and the SPELL protected folder that the README names,
``my_portraits``, filled with the images of the first plain request (so SPELL, on the same seeds, has something to push
away from).

Requests (64x64, batch 4, 4 Euler steps, CFG 1, fixed seed, ``"styles": []``) go to 127.0.0.1 only. Images are compared
by decoded pixels (PIL + numpy), never as base64 (the PNGs embed the infotext). Checks:

1. every README example with ``"alwayson_scripts"`` (the ```json blocks, wrapped in ``{}``), verbatim: (a) pixel-
   identical to the equivalent positional ``args`` (``forge_args.ARG_NAMES`` order, ``DEFAULTS`` elsewhere, enabled);
   (b) different from the plain images (for a SPELL-only example: when SPELL reports pushes; otherwise it says why it
   cannot differ); (c) its infotext has ``CtxRep: True`` and no ``CtxRep error``;
2. shapes of the dict form as Forge pads them: some keys only, no ``enabled`` (true by default in the dict form), and
   positional values after the dict (the dict's keys win), SPELL only at relative radius 2 (beyond the UI slider;
   the smallest shield at which SPELL pushes the random model's samples), each pixel-identical to its positional form;
   ``args`` as a bare dict, not in a list, is reported as Forge answers it;
3. off after on: plain requests after the on-requests are pixel-identical to the plain request made first;
4. an unknown key: plain images, and a ``CtxRep error`` naming the key and every known key;
5. Forge main's own ``"infotext"`` request field: without ``"styles"`` (HTTP 500, ``isinstance() argument 2 cannot be
   a parameterized generic``) and with ``"styles": []`` (works: the pasted infotext of a repelled run gives its
   images);
6. pasting one image of a coupled batch (issue 15), ``"infotext"`` at batch size and count 1: image 3 of a repelled
   batch of 4, image 3 of the third batch of 4 x 3 with memory, image 3 of a SPELL batch each come back
   pixel-identical with a note of what was regenerated; with ``reproduce`` off the image differs and the note says
   why; a hand-edited batch seed and a missing key give a note and the plain single image;
7. the tiny SD3 checkpoint with true CFG (CFG 3, a negative prompt): repulsion changes the batch, image 3 pasted back
   is pixel-identical, and with ``reproduce`` off it differs.

Defaults that Forge pads the script's arguments with (``/sdapi/v1/script-info``) are printed. The script prints one
line per check, a table of the requests, and ends with ``VERIFIED: <n> checks passed`` (exit 0) or the list of failures
(exit 1); exit 2 when a path is not what is expected or the server does not come up (with the server log's tail).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

import numpy as np  # noqa: E402
from forge_verify_common import REPO_ROOT, Checks, die, shrink_configs  # noqa: E402
from PIL import Image  # noqa: E402

from lib_ctxrep.integrations.forge_args import ARG_NAMES, DEFAULTS  # noqa: E402

HOST = "127.0.0.1"
SCRIPT = "contextual repulsion"
CHECKPOINT = "tiny-flux.safetensors"
SD3_CHECKPOINT = "tiny-sd3.safetensors"
#: The README's SPELL example names the protected set "my_portraits"; the settings make "protected" the root.
PROTECTED = Path("protected/my_portraits")
FLUX_DEV = Path("backend/huggingface/black-forest-labs/FLUX.1-dev")
BASE_REQUEST: dict[str, Any] = {
    "prompt": "a cat",
    "negative_prompt": "",
    "steps": 4,
    "width": 64,
    "height": 64,
    "batch_size": 4,
    "n_iter": 1,
    "cfg_scale": 1,
    "sampler_name": "Euler",
    "scheduler": "Simple",
    "seed": 1234,
    "styles": [],
    "save_images": False,
    "send_images": True,
}
#: Tiny sizes of the text encoders and VAE (CLIP-L, CLIP-G, T5), written over the component configs of the exported
#: copy: FLUX.1-dev's and SD3-medium's.
TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2, projection_dim=32)
TINY_T5 = dict(d_model=32, d_ff=64, d_kv=16, num_heads=2, num_layers=2, num_decoder_layers=2)
TINY_VAE = dict(block_out_channels=[32, 32, 32, 32], layers_per_block=1, norm_num_groups=32)
SD3_MEDIUM = Path("backend/huggingface/stabilityai/stable-diffusion-3-medium-diffusers")
TINY_CONFIGS: dict[Path, dict[str, Any]] = {
    FLUX_DEV / "text_encoder": TINY_CLIP,
    FLUX_DEV / "text_encoder_2": TINY_T5,
    FLUX_DEV / "vae": TINY_VAE,
    SD3_MEDIUM / "text_encoder": TINY_CLIP,
    SD3_MEDIUM / "text_encoder_2": TINY_CLIP,
    SD3_MEDIUM / "text_encoder_3": TINY_T5,
    SD3_MEDIUM / "vae": TINY_VAE,
}
#: The FLUX.1 sizes that huggingface_guess's Flux branch hard-codes, and what the copy reads instead (``sd``: the
#: state dict, ``p``: the key prefix, ``c``: the config built so far).
FLUX_GUESS = {
    "in_channels": "sd[p + 'img_in.weight'].shape[1] // 4",
    "vec_in_dim": "sd[p + 'vector_in.in_layer.weight'].shape[1]",
    "context_in_dim": "sd[p + 'txt_in.weight'].shape[1]",
    "hidden_size": "sd[p + 'img_in.weight'].shape[0]",
    "num_heads": "c['hidden_size'] // sd[p + 'double_blocks.0.img_attn.norm.key_norm.scale'].shape[0]",
    "depth": "count_blocks(state_dict_keys, p + 'double_blocks.{}.')",
    "depth_single_blocks": "count_blocks(state_dict_keys, p + 'single_blocks.{}.')",
    "axes_dim": "(lambda d: [16, 56, 56] if d == 128 else [d // 4, 3 * d // 8, 3 * d // 8])"
    "(c['hidden_size'] // c['num_heads'])",
}

# Run by the current interpreter with the exported Forge tree as working directory: only backend.nn.* is imported
# (backend.loader would import the text engines, which read the webui's opts at import).
BUILD_WEIGHTS = r"""
import json, sys
sys.argv = [sys.argv[0], "--always-cpu"]
sys.path[:0] = [".", "packages_3rdparty"]
import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel
from backend.nn.clip import IntegratedCLIP
from backend.nn.flux import IntegratedFluxTransformer2DModel
from backend.nn.mmditx import MMDiTX
from backend.nn.t5 import IntegratedT5
from backend.nn.vae import IntegratedAutoencoderKL

flux_out, sd3_out = sys.stdin.readline().split()


def clip(base):
    return IntegratedCLIP(CLIPTextModel, CLIPTextConfig.from_pretrained(base), add_text_projection=True)


def t5(base):
    model = IntegratedT5(json.load(open(base + "/config.json")))
    for name, param in model.named_parameters():
        if name.endswith("layer_norm.weight"):  # allocated with torch.empty by Forge
            param.data.fill_(1.0)
    return model


def vae(base):
    model = IntegratedAutoencoderKL.from_config(IntegratedAutoencoderKL.load_config(base))
    with torch.no_grad():  # scale the random decoder's output to about [-1, 1], so that images are not flat or clipped
        for _ in range(3):
            std = float(model.decoder(torch.randn(2, 16, 8, 8)).std())
            model.decoder.conv_out.weight.mul_(0.5 / std)
            model.decoder.conv_out.bias.mul_(0.5 / std)
    return model


def save(parts, out):
    sd = {}
    for prefix, model in parts:
        for key, value in model.state_dict().items():
            sd[prefix + key] = value.detach().float().contiguous()
    bad = [k for k, v in sd.items() if not torch.isfinite(v).all()]
    assert not bad, bad
    save_file(sd, out)
    print(f"{out}: {len(sd)} tensors, {sum(v.numel() for v in sd.values())} parameters")


flux = "backend/huggingface/black-forest-labs/FLUX.1-dev/"
torch.manual_seed(0)
model = IntegratedFluxTransformer2DModel(
    in_channels=16, vec_in_dim=32, context_in_dim=32, hidden_size=64, mlp_ratio=4.0, num_heads=2, depth=3,
    depth_single_blocks=2, axes_dim=[8, 12, 12], theta=10000, qkv_bias=True, guidance_embed=True,
)
save([("model.diffusion_model.", model), ("vae.", vae(flux + "vae")),
      ("text_encoders.clip_l.", clip(flux + "text_encoder")), ("text_encoders.t5xxl.", t5(flux + "text_encoder_2"))],
     flux_out)

# SD3 (huggingface_guess reads every size from the shapes): hidden 64 * depth, heads = depth; the pooled vector is
# CLIP-L's and CLIP-G's projections (32 + 32); Forge pads the CLIP context to 4096 wide (sd35.py), T5 off by default.
sd3 = "backend/huggingface/stabilityai/stable-diffusion-3-medium-diffusers/"
torch.manual_seed(0)
depth = 3
model = MMDiTX(
    input_size=None, patch_size=2, in_channels=16, out_channels=16, depth=depth, adm_in_channels=64,
    context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 64 * depth}},
    pos_embed_max_size=8, num_patches=64,
)
with torch.no_grad():
    model.pos_embed.normal_(0, 0.02)
save([("model.diffusion_model.", model), ("first_stage_model.", vae(sd3 + "vae")),
      ("text_encoders.clip_l.", clip(sd3 + "text_encoder")), ("text_encoders.clip_g.", clip(sd3 + "text_encoder_2")),
      ("text_encoders.t5xxl.", t5(sd3 + "text_encoder_3"))], sd3_out)
"""


# --------------------------------------------------------------------------------------------------------------------
# The Forge copy, the model and the data dir
# --------------------------------------------------------------------------------------------------------------------
def check_paths(forge: Path, hf_guess: Path, extension: Path) -> None:
    """Exit 2 unless the paths are a Forge main tree, a huggingface_guess tree and an extension tree."""
    forge_files = (
        "launch.py",
        "webui.py",
        "modules/api/api.py",
        "backend/nn/flux.py",
        str(FLUX_DEV / "vae/config.json"),
    )
    for root, files, what in (
        (forge, forge_files, "a stable-diffusion-webui-forge (main) tree"),
        (hf_guess, ("huggingface_guess/detection.py", "huggingface_guess/model_list.py"), "a huggingface_guess tree"),
        (extension, ("scripts/ctxrep.py", "lib_ctxrep/integrations/forge_args.py"), "the extension's tree"),
    ):
        missing = [f for f in files if not (root / f).is_file()]
        if missing:
            die(f"{root} is not {what}: missing {missing}")


def copy_tree(source: Path, target: Path) -> None:
    """A copy of a checkout without its git data, user data or installed extensions."""
    skip = {".git", "venv", "models", "outputs", "output", "extensions", "repositories", "log", "cache", "tmp"}
    shutil.copytree(
        source,
        target,
        symlinks=True,
        ignore=lambda folder, names: [
            n for n in names if n == "__pycache__" or (Path(folder) == source and n in skip)
        ],
    )


def shrink(tree: Path) -> None:
    """Tiny component configs and a huggingface_guess that reads the Flux sizes from the state dict (copy only)."""
    shrink_configs(tree, TINY_CONFIGS)
    detection = tree / "repositories/huggingface_guess/huggingface_guess/detection.py"
    lines = detection.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if "double_blocks.0.img_attn.norm.key_norm.scale" in line), None)
    if start is None:
        die(f"{detection}: no Flux branch (double_blocks.0.img_attn.norm.key_norm.scale)")
    indent = " " * 8
    replaced = set()
    for i in range(start + 1, min(start + 20, len(lines))):
        match = re.fullmatch(r"\s*dit_config\[\"(\w+)\"\] = .*", lines[i])
        if match and match.group(1) in FLUX_GUESS:
            key = match.group(1)
            lines[i] = f'{indent}dit_config["{key}"] = {FLUX_GUESS[key]}'
            replaced.add(key)
    if replaced != set(FLUX_GUESS):
        die(f"{detection}: the Flux branch does not set {sorted(set(FLUX_GUESS) - replaced)} as expected")
    lines.insert(start + 1, f"{indent}sd, p, c = state_dict, key_prefix, None")
    lines.insert(start + 3, f"{indent}c = dit_config")  # after `dit_config = {}`
    detection.write_text("\n".join(lines) + "\n")


def build_checkpoints(tree: Path, models: Path) -> None:
    """The tiny Flux and SD3 single-file checkpoints, built with Forge's own classes in a subprocess."""
    result = subprocess.run(
        [sys.executable, "-c", BUILD_WEIGHTS],
        cwd=tree,
        input=f"{models / CHECKPOINT} {models / SD3_CHECKPOINT}\n",
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        die(f"building the tiny checkpoints failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    for line in result.stdout.strip().splitlines()[-2:]:
        print(f"tiny checkpoint {line}")


def prepare(forge: Path, hf_guess: Path, extension: Path, work: Path) -> tuple[Path, Path]:
    """The exported, shrunk Forge tree and the data dir (model, settings, extension link, protected folder)."""
    tree, data = work / "forge", work / "data"
    for path in (tree, data):
        if path.exists():
            shutil.rmtree(path)
    copy_tree(forge, tree)
    (tree / "repositories").mkdir()
    copy_tree(hf_guess, tree / "repositories/huggingface_guess")
    shrink(tree)
    models = data / "models/Stable-diffusion"
    models.mkdir(parents=True)
    build_checkpoints(tree, models)
    (data / "extensions").mkdir()
    (data / "extensions/sd-ctxrep").symlink_to(extension, target_is_directory=True)
    (data / PROTECTED).mkdir(parents=True)
    settings = {"live_previews_enable": False, "ctxrep_protected_root": str(data / "protected")}
    (data / "config.json").write_text(json.dumps(settings))
    return tree, data


# --------------------------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Server:
    """Forge's launch.py as an API-only server on 127.0.0.1, in its own process group; stopped on exit."""

    def __init__(self, tree: Path, data: Path, port: int, log: Path) -> None:
        self.url, self.log = f"http://{HOST}:{port}", log
        flags = [
            "--always-cpu", "--skip-prepare-environment", "--skip-install", "--skip-version-check",
            "--skip-python-version-check", "--skip-torch-cuda-test", "--no-download-sd-model", "--api", "--nowebui",
            "--server-name", HOST, "--port", str(port), "--data-dir", str(data),
        ]  # fmt: skip
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        env["PYTHONUNBUFFERED"] = "1"
        env["NO_PROXY"] = env["no_proxy"] = HOST
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "launch.py", *flags],
            cwd=tree,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # Requests never go through a proxy (the address is 127.0.0.1 anyway).
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                status, _ = self.call("GET", "/sdapi/v1/samplers", timeout=5)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(2)
        state = f"exited with {self.process.returncode}" if self.process.poll() is not None else "timed out"
        self.stop()
        die(f"the Forge server did not come up ({state}); last lines of {self.log}:\n{self.tail()}")

    def call(self, method: str, path: str, body: Any = None, timeout: float = 600) -> tuple[int, Any]:
        """(HTTP status, decoded JSON or text) of one request."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(request, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log_file.close()


# --------------------------------------------------------------------------------------------------------------------
# Requests and their results
# --------------------------------------------------------------------------------------------------------------------
INFOTEXT_PARAM = re.compile(r'\s*(\w[\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def infotext_params(infotext: str) -> dict[str, str]:
    """The ``key: value`` pairs of an infotext's last line (quoted values unquoted)."""
    params = {}
    for key, value in INFOTEXT_PARAM.findall(infotext.strip().splitlines()[-1] if infotext.strip() else ""):
        params[key.strip()] = json.loads(value) if value.startswith('"') else value.strip()
    return params


class Result:
    """One txt2img answer: status, decoded images (uint8 arrays), infotexts and their CtxRep entries."""

    def __init__(self, label: str, status: int, body: Any, expected: int = BASE_REQUEST["batch_size"]) -> None:
        self.label, self.status, self.expected = label, status, expected
        self.images: list[np.ndarray] = []
        self.infotexts: list[str] = []
        self.error = ""
        self.seconds = 0.0
        if status == 200 and isinstance(body, dict):
            self.images = [
                np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB")) for b in body["images"]
            ]
            self.infotexts = json.loads(body["info"]).get("infotexts", [])
        else:
            self.error = json.dumps(body)[:300] if not isinstance(body, str) else body[:300]
        self.params = infotext_params(self.infotexts[0]) if self.infotexts else {}
        self.ctxrep = {k: v for k, v in self.params.items() if k.startswith("CtxRep")}

    @property
    def ok(self) -> bool:
        return self.status == 200 and len(self.images) == self.expected

    def pixels(self) -> np.ndarray:
        return np.stack(self.images) if self.images else np.zeros((0,), np.uint8)

    def same_pixels(self, other: Result) -> bool:
        return self.ok and other.ok and np.array_equal(self.pixels(), other.pixels())

    def diff(self, other: Result) -> str:
        if not (self.ok and other.ok):
            return f"HTTP {self.status} / {other.status}"
        d = np.abs(self.pixels().astype(np.int16) - other.pixels().astype(np.int16))
        return f"max |pixel diff| {int(d.max())}, {int((d.max(axis=-1) > 0).sum())} pixels differ"

    def errors(self) -> str:
        return "; ".join(self.params.get(k, "") for k in ("CtxRep error",) if k in self.params)


class Session:
    """Sends txt2img requests, keeps every answer for the summary table."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.results: list[Result] = []

    def txt2img(self, label: str, extra: dict[str, Any] | None = None, *, base: bool = True) -> Result:
        body = {**(BASE_REQUEST if base else {}), **(extra or {})}
        started = time.monotonic()
        status, answer = self.server.call("POST", "/sdapi/v1/txt2img", body)
        result = Result(label, status, answer, int(body.get("batch_size", 1)) * int(body.get("n_iter", 1)))
        result.seconds = time.monotonic() - started
        self.results.append(result)
        return result

    def table(self) -> None:
        print("\n== Requests ==")
        print(f"  {'request':<44} {'HTTP':>4} {'s':>5}  infotext CtxRep entries (or the error)")
        for r in self.results:
            entries = ", ".join(f"{k}: {v}" for k, v in r.ctxrep.items()) or ("-" if r.status == 200 else r.error)
            if len(entries) > 240:
                entries = entries[:237] + "..."
            print(f"  {r.label:<44} {r.status:>4} {r.seconds:5.1f}  {entries}")


def pushes(entry: str) -> int:
    """Samples pushed, from a 'CtxRep SPELL pushed' entry ("3/4 samples in ..."); 0 when absent."""
    match = re.match(r"\s*(\d+)/", entry)
    return int(match.group(1)) if match else 0


def alwayson(args: Any) -> dict[str, Any]:
    return {"alwayson_scripts": {SCRIPT: {"args": args}}}


def positional(values: dict[str, Any]) -> list[Any]:
    """The positional ``args`` equal to a dict form: its values in their positions, enabled, defaults elsewhere."""
    merged = {**DEFAULTS, "enabled": True, **values}
    return [merged[name] for name in ARG_NAMES]


def readme_examples(readme: Path) -> list[dict[str, Any]]:
    """The README's ```json blocks that contain ``"alwayson_scripts"``, each parsed as ``{`` + block + ``}``."""
    blocks = re.findall(r"```json\n(.*?)```", readme.read_text(), flags=re.S)
    examples = []
    for block in blocks:
        if '"alwayson_scripts"' in block:
            text = block.strip()
            examples.append(json.loads(text if text.startswith("{") else "{" + text + "}"))
    return examples


# --------------------------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------------------------
def check_enabled(check: Checks, tag: str, result: Result, expect: dict[str, str] | None = None) -> None:
    """A dict-form answer: HTTP 200 with the batch, ``CtxRep: True``, no ``CtxRep error``, the expected entries."""
    check(f"{tag}: HTTP 200 with {BASE_REQUEST['batch_size']} images", result.ok, result.error or "")
    check(
        f"{tag}: infotext has 'CtxRep: True' and no 'CtxRep error'",
        result.ctxrep.get("CtxRep") == "True" and "CtxRep error" not in result.ctxrep,
        result.errors() or "",
    )
    for key, value in (expect or {}).items():
        check(f"{tag}: infotext '{key}: {value}'", result.ctxrep.get(key) == value, result.ctxrep.get(key, "absent"))


def script_defaults(server: Server, check: Checks) -> None:
    """What Forge pads the script's arguments with: each ui() component's ``.value`` (``/sdapi/v1/script-info``)."""
    status, info = server.call("GET", "/sdapi/v1/script-info")
    scripts = [s for s in info if s.get("name") == SCRIPT and not s.get("is_img2img")] if status == 200 else []
    check(
        "the extension is loaded as an always-on txt2img script", len(scripts) == 1 and scripts[0].get("is_alwayson")
    )
    if not scripts:
        return
    args = scripts[0].get("args", [])
    check(f"Forge lists {len(ARG_NAMES)} script arguments", len(args) == len(ARG_NAMES), len(args))
    print("  Forge pads the script's args with these UI defaults (component .value, as JSON):")
    for name, arg in zip(ARG_NAMES, args, strict=False):
        value = arg.get("value")
        same = value == DEFAULTS[name] and type(value) is type(DEFAULTS[name])
        print(f"    {name:<24} {json.dumps(value):<12} {arg.get('label')!r}" + ("" if same else "  (!= DEFAULTS)"))


def run_checks(server: Server, check: Checks, examples: list[dict[str, Any]], protected: Path) -> Session:
    """All the checks; ``protected``: the README's protected folder, filled with the plain run's images."""
    session = Session(server)
    status, answer = server.call("POST", "/sdapi/v1/options", {"sd_model_checkpoint": CHECKPOINT})
    check("model selected through /sdapi/v1/options", status == 200, "" if status == 200 else answer)
    script_defaults(server, check)

    print("\n== Plain ==")
    plain = session.txt2img("plain (first)")
    check("plain request: HTTP 200 with the batch", plain.ok, plain.error)
    if not plain.ok:
        return session
    check("plain request: no CtxRep entry in the infotext", not plain.ctxrep, plain.ctxrep or "")
    check("plain request: the batch's images differ from each other", len({im.tobytes() for im in plain.images}) > 1)
    spread = f"pixel values {int(plain.pixels().min())}..{int(plain.pixels().max())}"
    check("plain request: images are not flat", int(plain.pixels().std()) > 0, spread)
    plain_again = session.txt2img("plain (again)")
    check(
        "plain twice: pixel-identical (deterministic on CPU)", plain_again.same_pixels(plain), plain_again.diff(plain)
    )
    # The plain images as the protected set: a SPELL run of the same seeds starts right on top of it and must move.
    for i, image in enumerate(plain.images):
        Image.fromarray(image).save(protected / f"plain_{i}.png")

    print("\n== 1. README examples, verbatim ==")
    if not examples:
        check('README has ```json examples with "alwayson_scripts"', False)
    for n, example in enumerate(examples, 1):
        args = example["alwayson_scripts"][SCRIPT]["args"]
        values = args[0]
        tag = f"README example {n} {json.dumps(values)}"
        print(f"  -- {tag}")
        dict_form = session.txt2img(f"README {n}: dict form (verbatim)", example)
        pos = session.txt2img(f"README {n}: positional", alwayson(positional(values)))
        check_enabled(check, f"README {n} dict form", dict_form)
        check_enabled(check, f"README {n} positional", pos)
        check(
            f"README {n}: dict form pixel-identical to the positional form",
            dict_form.same_pixels(pos),
            dict_form.diff(pos),
        )
        repulsion_on = positional(values)[ARG_NAMES.index("repulsion")] is True
        pushed = dict_form.ctxrep.get("CtxRep SPELL pushed", "")
        accepted = dict_form.ctxrep.get("CtxRep") == "True"  # otherwise the checks above already failed
        if repulsion_on or pushes(pushed) > 0 or not accepted:
            check(
                f"README {n}: dict form differs from plain",
                dict_form.ok and not dict_form.same_pixels(plain),
                f"{dict_form.diff(plain)}" + (f"; SPELL pushed {pushed}" if pushed else ""),
            )
        else:
            # SPELL only changes the samples it pushes; with no push the images are the plain ones by design.
            print(
                f"  [NOTE] README {n} cannot differ from plain here ({dict_form.diff(plain)}): SPELL only, and it "
                f"pushed nothing ({pushed or 'no CtxRep SPELL pushed entry'}): no predicted image came within the "
                f"shield (relative radius {values.get('spell_radius')}, "
                f"{dict_form.ctxrep.get('CtxRep SPELL radius abs', '?')} latent units) of another sample or of the "
                "protected set; the random model's samples lie farther apart, and its random VAE does not map the "
                "protected (plain) images back onto their latents. Section 2 checks SPELL through the dict form "
                "with a radius at which it pushes."
            )
        if values.get("spell"):
            spell_entry = dict_form.ctxrep.get("CtxRep SPELL", "absent")
            check(f"README {n}: SPELL ran (infotext 'CtxRep SPELL: True')", spell_entry == "True", spell_entry)

    print("\n== 2. Shapes of the dict form ==")
    strong = positional({"enabled": True, "block_strength": 0.3})
    pos = session.txt2img("strength 0.3: positional", alwayson(strong))
    check_enabled(check, "positional strength 0.3", pos, {"CtxRep block strength": "0.3"})
    check("positional strength 0.3 differs from plain", pos.ok and not pos.same_pixels(plain), pos.diff(plain))
    for label, args in (
        ("some keys", [{"enabled": True, "block_strength": 0.3}]),
        ("no 'enabled' key", [{"block_strength": 0.3}]),
        ("positional values after it", [{"enabled": True, "block_strength": 0.3}, 0.01, DEFAULTS["window"]]),
    ):
        result = session.txt2img(f"dict form, {label}", alwayson(args))
        tag = f"dict form, {label} {json.dumps(args)}"
        check_enabled(check, tag, result, {"CtxRep block strength": "0.3"})
        check(f"{tag}: pixel-identical to the positional form", result.same_pixels(pos), result.diff(pos))
    window = session.txt2img("dict form + window 0.5 after it", alwayson([{"block_strength": 0.3}, 0.01, 0.5]))
    expected = {"CtxRep block strength": "0.3", "CtxRep window": "0.5"}
    check_enabled(check, "dict form + window 0.5 after it", window, expected)
    window_pos = session.txt2img(
        "positional strength 0.3 window 0.5", alwayson(positional({"block_strength": 0.3, "window": 0.5}))
    )
    check(
        "dict form + window 0.5 after it: pixel-identical to the positional form",
        window.same_pixels(window_pos),
        window.diff(window_pos),
    )
    # Radius 2 (beyond the UI slider, accepted through the API): the random model's predicted images lie farther apart
    # than the typical distance of unit-variance latents, so SPELL pushes only with a shield that wide.
    spell_values = {"repulsion": False, "spell": True, "spell_radius": 2.0}
    spell = session.txt2img("dict form, SPELL only, radius 2", alwayson([spell_values]))
    spell_pos = session.txt2img("positional, SPELL only, radius 2", alwayson(positional(spell_values)))
    tag = f"dict form, SPELL only {json.dumps([spell_values])}"
    check_enabled(check, tag, spell, {"CtxRep SPELL": "True", "CtxRep repulsion": "False"})
    pushed = spell.ctxrep.get("CtxRep SPELL pushed", "")
    check(f"{tag}: SPELL pushed samples", pushes(pushed) > 0, pushed or "no 'CtxRep SPELL pushed'")
    check(f"{tag}: pixel-identical to the positional form", spell.same_pixels(spell_pos), spell.diff(spell_pos))
    check(f"{tag}: differs from plain", spell.ok and not spell.same_pixels(plain), spell.diff(plain))
    bare = session.txt2img("args as a bare dict (not in a list)", alwayson({"enabled": True, "block_strength": 0.3}))
    print(
        f"  [INFO] 'args' as a bare dict, not in a list: HTTP {bare.status} {bare.error[:160]}"
        f"{'; CtxRep ' + str(bare.ctxrep) if bare.ok else ''}"
    )

    print("\n== 4. An unknown key ==")
    unknown = session.txt2img("unknown key 'colour'", alwayson([{"enabled": True, "colour": 1}]))
    check("unknown key: HTTP 200 with the batch (the generation goes on)", unknown.ok, unknown.error)
    check("unknown key: images equal plain", unknown.same_pixels(plain), unknown.diff(plain))
    message = unknown.ctxrep.get("CtxRep error", "")
    check("unknown key: a 'CtxRep error' naming 'colour'", "colour" in message, message or "no CtxRep error")
    missing = [name for name in ARG_NAMES if name not in message]
    check(
        "unknown key: the error lists every known key",
        message and not missing,
        f"missing {missing}" if missing else "",
    )
    check("unknown key: no 'CtxRep: True'", "CtxRep" not in unknown.ctxrep)

    ambiguous = session.txt2img("the ambiguous key 'strength'", alwayson([{"strength": 1.0}]))
    message = ambiguous.ctxrep.get("CtxRep error", "")
    check("key 'strength': HTTP 200, images equal plain", ambiguous.same_pixels(plain), ambiguous.diff(plain))
    check(
        "key 'strength': refused, naming 'step_strength' and 'block_strength'",
        "ambiguous" in message and "'step_strength'" in message and "'block_strength'" in message,
        message or "no CtxRep error",
    )
    old_paste = session.txt2img(
        "infotext written before 0.3 ('CtxRep strength: 0.3')",
        {"infotext": "a cat\nSteps: 4, Seed: 1, CtxRep: True, CtxRep strength: 0.3"},
    )
    check(
        "an infotext written before 0.3: 'CtxRep strength' keeps its per-block meaning",
        old_paste.ctxrep.get("CtxRep block strength") == "0.3",
        old_paste.ctxrep,
    )

    print("\n== 3. Off after on ==")
    after = session.txt2img("plain (after the on-requests)")
    check(
        "plain after the on-requests: pixel-identical to the first plain request",
        after.same_pixels(plain),
        after.diff(plain),
    )
    check("plain after the on-requests: no CtxRep entry", not after.ctxrep, after.ctxrep or "")

    print("\n== 5. The 'infotext' request field ==")
    repelled = session.results[next(i for i, r in enumerate(session.results) if r.label == "strength 0.3: positional")]
    pasted = repelled.infotexts[0] if repelled.infotexts else ""
    no_styles = {k: v for k, v in BASE_REQUEST.items() if k != "styles"}
    without = session.txt2img("infotext, no 'styles'", {**no_styles, "infotext": pasted}, base=False)
    observed = f"HTTP {without.status}: {without.error[:200]}" if not without.ok else "HTTP 200"
    check(
        "'infotext' without 'styles': HTTP 500 'isinstance() argument 2 cannot be a parameterized generic' (Forge's "
        "apply_infotext)",
        without.status == 500 and "parameterized generic" in without.error,
        observed,
    )
    with_styles = session.txt2img("infotext + 'styles': [] (repelled run's)", {"infotext": pasted})
    check("'infotext' with 'styles': []: HTTP 200", with_styles.ok, with_styles.error)
    check(
        "pasted infotext of the strength 0.3 run (no alwayson_scripts): its images",
        with_styles.same_pixels(repelled),
        with_styles.diff(repelled),
    )
    check(
        "pasted infotext: 'CtxRep block strength: 0.3', no 'CtxRep error'",
        with_styles.ctxrep.get("CtxRep block strength") == "0.3" and "CtxRep error" not in with_styles.ctxrep,
        with_styles.ctxrep,
    )
    reproduce_checks(session, check)
    sd3_checks(session, check)
    return session


#: Issue 15's round trips: (label, script arguments, batch size and count, the image pasted back, images rebuilt).
REPRODUCE_CASES = (
    ("repulsion", {"block_strength": 0.3}, {"batch_size": 4, "n_iter": 1}, 2, 4),
    ("memory, 3rd batch", {"block_strength": 0.3, "memory": True}, {"batch_size": 4, "n_iter": 3}, 10, 12),
    ("SPELL", {"repulsion": False, "spell": True, "spell_radius": 2.0}, {"batch_size": 4, "n_iter": 1}, 2, 4),
)


def paste_request(infotext: str, **extra: Any) -> dict[str, Any]:
    """Only a pasted infotext at batch size and count 1 (Forge fills prompt, seed, size, steps, ... from it)."""
    return {"infotext": infotext, "styles": [], "batch_size": 1, "n_iter": 1, "send_images": True, **extra}


def round_trip(
    session: Session, check: Checks, case: tuple[str, dict[str, Any], dict[str, Any], int, int], **extra: Any
) -> tuple[Result, str] | None:
    """Generate a coupled batch, paste one image's infotext back at batch size 1: the same pixels and a cost note.

    Returns the batch and the pasted infotext, or None when the batch itself failed."""
    label, values, shape, index, cost = case
    batch = session.txt2img(
        f"{label}: {shape['batch_size']}x{shape['n_iter']}", {**shape, **extra, **alwayson([values])}
    )
    check(f"{label}: HTTP 200 with {batch.expected} images", batch.ok, batch.error)
    if not batch.ok:
        return None
    pasted = batch.infotexts[index]
    record = {k: v for k, v in infotext_params(pasted).items() if k.startswith("CtxRep batch") or "earlier" in k}
    check(f"{label}: image {index + 1}'s infotext records its batch", len(record) == 5, record)
    again = session.txt2img(f"{label}: image {index + 1} pasted", paste_request(pasted), base=False)
    check(f"{label}: pasted image {index + 1} gives HTTP 200 with 1 image", again.ok, again.error)
    same = again.ok and np.array_equal(again.images[0], batch.images[index])
    check(f"{label}: pasted image {index + 1} is pixel-identical to it", same, again.ctxrep)
    note = again.ctxrep.get("CtxRep note", "")
    check(f"{label}: the note says 'regenerated {cost} images to reproduce 1'", f"{cost} images to" in note, note)
    return batch, pasted


def reproduce_checks(session: Session, check: Checks) -> None:
    """6. A pasted image of a coupled batch comes back pixel for pixel; the option off and bad records say why."""
    print("\n== 6. Pasting one image of a coupled batch (issue 15) ==")
    for case in REPRODUCE_CASES:
        done = round_trip(session, check, case)
        if done is None or case[0] != "repulsion":
            continue
        batch, pasted = done
        index = case[3]
        off = session.txt2img("reproduce off", paste_request(pasted, **alwayson([{"reproduce": False}])), base=False)
        differs = off.ok and not np.array_equal(off.images[0], batch.images[index])
        check("reproduce off: HTTP 200 with 1 image, different from the original", differs, off.error)
        note = off.ctxrep.get("CtxRep note", "")
        check("reproduce off: the note says it ran alone and differs", "is off" in note and "differ" in note, note)
        bad_records(session, check, pasted, off)


#: SD3 with true CFG: the prompt and the negative prompt run through the model side by side (cond and uncond rows).
SD3_CFG = {"cfg_scale": 3.0, "negative_prompt": "blurry"}
#: Stronger than the Flux cases: the random SD3's images move little at strength 0.3 over the first step only.
SD3_REPULSION = {"block_strength": 1.0, "window": 0.5}


def sd3_checks(session: Session, check: Checks) -> None:
    """7. The tiny SD3 checkpoint with true CFG: repulsion changes the batch, a pasted image comes back exactly, and
    alone (the option off) it differs."""
    print("\n== 7. SD3 with true CFG (issue 15) ==")
    status, answer = session.server.call("POST", "/sdapi/v1/options", {"sd_model_checkpoint": SD3_CHECKPOINT})
    check("SD3 model selected through /sdapi/v1/options", status == 200, "" if status == 200 else answer)
    plain = session.txt2img("SD3 plain, CFG 3", SD3_CFG)
    check("SD3 plain: HTTP 200 with the batch", plain.ok, plain.error)
    model = plain.params.get("Model", "")
    check("SD3 plain: the infotext names the SD3 checkpoint", model == Path(SD3_CHECKPOINT).stem, model)
    case = ("SD3 repulsion", SD3_REPULSION, {"batch_size": 4, "n_iter": 1}, 2, 4)
    done = round_trip(session, check, case, **SD3_CFG)
    if done is None:
        return
    batch, pasted = done
    check_enabled(check, "SD3 repulsion", batch, {"CtxRep model": "SD3"})
    cfg = batch.params.get("CFG scale", "absent")
    check("SD3 repulsion: true CFG (infotext 'CFG scale: 3.0')", cfg == str(SD3_CFG["cfg_scale"]), cfg)
    check("SD3 repulsion differs from plain", not batch.same_pixels(plain), batch.diff(plain))
    off = session.txt2img("SD3 reproduce off", paste_request(pasted, **alwayson([{"reproduce": False}])), base=False)
    differs = off.ok and not np.array_equal(off.images[0], batch.images[2])
    check("SD3 reproduce off: 1 image, different from the original", differs, off.error)


def bad_records(session: Session, check: Checks, pasted: str, alone: Result) -> None:
    """A hand-edited value and a missing key: a clear note and the plain single image (= the image run alone)."""
    edited = re.sub(r"CtxRep batch seed: \d+", "CtxRep batch seed: 99", pasted)
    missing = re.sub(r"CtxRep batch size: \d+, ", "", pasted)
    for label, text, expect in (
        ("hand-edited batch seed", edited, "'CtxRep batch seed: 99' does not match"),
        ("missing batch size", missing, "no 'CtxRep batch size'"),
    ):
        bad = session.txt2img(f"{label}", paste_request(text), base=False)
        note = bad.ctxrep.get("CtxRep note", "")
        check(f"{label}: HTTP 200 with 1 image", bad.ok, bad.error)
        check(f"{label}: a note saying why ({expect!r})", expect in note and "runs alone" in note, note)
        plain = bad.ok and alone.ok and np.array_equal(bad.images[0], alone.images[0])
        check(f"{label}: the plain single image (the image run alone)", plain, bad.ctxrep)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("forge", type=Path, help="a stable-diffusion-webui-forge (main) checkout or exported tree")
    parser.add_argument("--hf-guess", type=Path, required=True, help="a lllyasviel/huggingface_guess checkout")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (Forge copy, data dir, server log)")
    parser.add_argument(
        "--extension", type=Path, default=REPO_ROOT, help="the extension tree to install (default: this)"
    )
    parser.add_argument("--port", type=int, default=0, help="server port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for the server")
    args = parser.parse_args(argv)
    forge, hf_guess, extension = (p.expanduser().resolve() for p in (args.forge, args.hf_guess, args.extension))
    check_paths(forge, hf_guess, extension)
    examples = readme_examples(REPO_ROOT / "README.md")
    work = args.keep.expanduser().resolve() if args.keep else Path(tempfile.mkdtemp(prefix="ctxrep-forge-api-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"Forge {forge}, huggingface_guess {hf_guess}, extension {extension}; work folder {work}")
    try:
        tree, data = prepare(forge, hf_guess, extension, work)
        server = Server(tree, data, args.port or free_port(), work / "server.log")
        try:
            server.wait_ready(args.startup_timeout)
            print(f"server up at {server.url} after {time.monotonic() - started:.0f} s (log: {work / 'server.log'})")
            check = Checks()
            session = run_checks(server, check, examples, data / PROTECTED)
        finally:
            server.stop()
        session.table()
        print(f"\nwall time {time.monotonic() - started:.0f} s")
        return check.report()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
