"""Small stand-ins of exactly the ComfyUI API the nodes use, written from ComfyUI's source.

Source: the pip-installable fork hiddenswitch/pip-and-uv-installable-ComfyUI 0.12.1 (upstream comfyanonymous/ComfyUI
merged 2026-02), whose ``comfy/model_patcher.py``, ``comfy/samplers.py``, ``comfy/patcher_extension.py``,
``comfy/model_sampling.py``, ``comfy/model_base.py`` and ``comfy/ldm/*`` have upstream's paths; line numbers are the
fork's. No ComfyUI code is copied (ComfyUI is GPL): each piece below is a minimal equivalent of the behaviour of the
lines it names. Shapes, patch points and calling conventions are ComfyUI's; the maths inside the blocks is a small
stand-in (joint attention over [txt; img] with linear layers), so the text stream and the image stream depend on each
other as in the real blocks, and the time step reaches every block.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn


# --- comfy/patcher_extension.py -----------------------------------------------------------------------------------
def get_all_wrappers(wrapper_type: str, options: dict, is_model_options: bool = False) -> list[Callable]:
    """Mirrors ``get_all_wrappers`` (:82-89): every wrapper of a type, over all keys, from
    ``transformer_options["wrappers"]``."""
    if is_model_options:
        options = options.get("transformer_options", {})
    return [w for ws in options.get("wrappers", {}).get(wrapper_type, {}).values() for w in ws]


class WrapperExecutor:
    """Mirrors ``WrapperExecutor`` (:91-129): ``execute`` calls the first wrapper as ``wrapper(executor, *args,
    **kwargs)``; a wrapper continues with ``executor(*args, **kwargs)``, which runs the next one, and the original
    function after the last."""

    def __init__(self, original: Callable, wrappers: list[Callable], idx: int = 0) -> None:
        self.original, self.wrappers, self.idx = original, list(wrappers), idx

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return WrapperExecutor(self.original, self.wrappers, self.idx + 1).execute(*args, **kwargs)

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        if self.idx == len(self.wrappers):
            return self.original(*args, **kwargs)
        return self.wrappers[self.idx](self, *args, **kwargs)


def copy_nested_dicts(input_dict: dict) -> dict:
    """Mirrors ``copy_nested_dicts`` (:136-143): dicts copied recursively, lists copied, everything else shared."""
    out = input_dict.copy()
    for key, value in input_dict.items():
        if isinstance(value, dict):
            out[key] = copy_nested_dicts(value)
        elif isinstance(value, list):
            out[key] = value.copy()
    return out


def merge_nested_dicts(dict1: dict, dict2: dict, copy_dict1: bool = True) -> dict:
    """Mirrors ``merge_nested_dicts`` (:145-158): dicts merged recursively, lists extended, other values replaced."""
    merged = copy_nested_dicts(dict1) if copy_dict1 else dict1
    for key, value in dict2.items():
        if isinstance(value, dict):
            merged[key] = merge_nested_dicts(merged.setdefault(key, {}), value)
        elif isinstance(value, list):
            merged.setdefault(key, []).extend(value)
        else:
            merged[key] = value
    return merged


# --- comfy/model_sampling.py --------------------------------------------------------------------------------------
class ModelSamplingFlux(nn.Module):
    """Mirrors ``ModelSamplingFlux`` (:367-405) with ``CONST`` (:81-95), as ``model_sampling()`` combines them for
    Flux: ``sigmas`` tabulates ``flux_time_shift(shift, 1, t)`` over 10000 evenly spaced t (ascending); the model
    gets ``timestep(sigma) = sigma``; x0 = x - out * sigma; noise_scaling blends noise and latent."""

    def __init__(self, shift: float = 1.15, timesteps: int = 10000) -> None:
        super().__init__()
        self.shift = shift
        self.register_buffer("sigmas", self.sigma(torch.arange(1, timesteps + 1, 1) / timesteps))

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return math.exp(self.shift) / (math.exp(self.shift) + (1 / timestep - 1))

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma

    def calculate_input(self, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor, model_input: torch.Tensor):
        return model_input - model_output * sigma.reshape(-1, *[1] * (model_output.ndim - 1))

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        sigma = sigma.reshape(-1, *[1] * (noise.ndim - 1))
        return sigma * noise + (1.0 - sigma) * latent_image

    def inverse_noise_scaling(self, sigma, latent):
        return latent / (1.0 - sigma.reshape(-1, *[1] * (latent.ndim - 1)))


class ModelSamplingDiscreteFlow(ModelSamplingFlux):
    """Mirrors ``ModelSamplingDiscreteFlow`` (:275-310) with ``CONST``: ``sigmas`` = ``time_snr_shift(shift, t)``
    over 1000 steps; ``timestep(sigma) = sigma * multiplier`` (SD3: shift 3, multiplier 1000; Z-Image: shift 3,
    multiplier 1)."""

    def __init__(self, shift: float = 3.0, multiplier: float = 1000.0, timesteps: int = 1000) -> None:
        nn.Module.__init__(self)
        self.shift, self.multiplier = shift, multiplier
        t = torch.arange(1, timesteps + 1, 1) / timesteps
        self.register_buffer("sigmas", shift * t / (1 + (shift - 1) * t))

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma * self.multiplier


# --- comfy/latent_formats.py --------------------------------------------------------------------------------------
class LatentFormat:
    """Mirrors ``LatentFormat`` (:4-18) and ``SD3`` / ``Flux`` (:126-166): ``latent_channels``;
    ``process_in(x) = (x - shift_factor) * scale_factor`` and its inverse ``process_out``."""

    def __init__(self, latent_channels: int, scale_factor: float = 0.3611, shift_factor: float = 0.1159) -> None:
        self.latent_channels, self.scale_factor, self.shift_factor = latent_channels, scale_factor, shift_factor

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        return (latent - self.shift_factor) * self.scale_factor

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        return latent / self.scale_factor + self.shift_factor


# --- comfy/model_base.py ------------------------------------------------------------------------------------------
class BaseModel(nn.Module):
    """Mirrors ``BaseModel`` (:141-345): ``diffusion_model``, ``model_sampling``, ``latent_format``;
    ``apply_model(x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs)`` turns
    sigma into the model's timestep, calls ``diffusion_model(xc, t, context=c_crossattn, control=control,
    transformer_options=transformer_options, **extra_conds)`` and returns the denoised prediction (:185-236);
    ``extra_conds`` as ``Flux.extra_conds`` (:941-951: ``reference_latents`` -> ``ref_latents``, through
    ``process_latent_in``) and ``Lumina2.extra_conds`` (:1224-1257: ``num_tokens`` = the context length);
    ``memory_required`` (:382-406) grows with the rows of a call."""

    def __init__(self, diffusion_model: nn.Module, model_sampling: nn.Module, latent_format: LatentFormat) -> None:
        super().__init__()
        self.diffusion_model, self.model_sampling, self.latent_format = diffusion_model, model_sampling, latent_format
        self.current_patcher: ModelPatcher | None = None
        self.num_tokens = type(diffusion_model).__name__ == "NextDiT"  # Lumina2 / ZImage model_base classes

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):  # noqa: B006
        sigma = t
        xc = self.model_sampling.calculate_input(sigma, x)
        timestep = self.model_sampling.timestep(t).float()
        out = self.diffusion_model(xc, timestep, context=c_crossattn, control=control,
                                   transformer_options=transformer_options, **kwargs)  # fmt: skip
        return self.model_sampling.calculate_denoised(sigma, out.float(), x)

    def extra_conds(self, cross_attn: torch.Tensor, **kwargs: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"c_crossattn": cross_attn}
        if self.num_tokens:
            out["num_tokens"] = cross_attn.shape[1]
        if kwargs.get("reference_latents") is not None:
            out["ref_latents"] = [self.process_latent_in(r) for r in kwargs["reference_latents"]]
        return out

    def memory_required(self, input_shape: list[int]) -> float:
        return input_shape[0] * math.prod(input_shape[2:]) * 0.15 * 1024 * 1024

    def process_latent_in(self, latent: torch.Tensor) -> torch.Tensor:
        return self.latent_format.process_in(latent)

    def process_latent_out(self, latent: torch.Tensor) -> torch.Tensor:
        return self.latent_format.process_out(latent)


# --- comfy/model_patcher.py ---------------------------------------------------------------------------------------
class ModelPatcher:
    """Mirrors ``ModelPatcher`` (:272-318, :374-442, :491-513, :1248-1268): ``model_options`` starts as
    ``{"transformer_options": {}}``; ``clone()`` shares ``model`` and DEEP-COPIES ``model_options`` (:388:
    functions and closures survive as themselves, callable objects are copied) and copies each wrappers list;
    ``set_model_unet_function_wrapper`` fills one slot; ``set_model_patch`` appends to
    ``transformer_options["patches"][name]`` (in place, :506-510); ``set_model_patch_replace`` goes through
    ``set_model_options_patch_replace`` (:58-77: copies ``transformer_options``, ``patches_replace`` and
    ``patches_replace[name]``, then sets one slot per ``(block_name, number)``);
    ``set_model_sampler_post_cfg_function`` appends to a list (:80-84); ``add_wrapper_with_key`` appends to
    ``wrappers[type][key]``."""

    def __init__(self, model: BaseModel) -> None:
        self.model = model
        self.model_options: dict = {"transformer_options": {}}
        self.wrappers: dict[str, dict[Any, list[Callable]]] = {}

    def clone(self) -> ModelPatcher:
        n = ModelPatcher(self.model)
        n.model_options = copy.deepcopy(self.model_options)
        n.wrappers = {k: {k1: w1.copy() for k1, w1 in w.items()} for k, w in self.wrappers.items()}
        return n

    def get_free_memory(self, device: Any = None) -> float:
        """``model_management.get_free_memory`` (:374-375): plenty here; see :func:`no_free_memory`."""
        return float(1 << 40)

    def get_model_object(self, name: str) -> Any:
        return getattr(self.model, name)

    def pre_run(self) -> None:
        """:1350-1352: the model learns which patcher runs it (``calc_cond_batch`` asks it for free memory)."""
        self.model.current_patcher = self

    def set_model_unet_function_wrapper(self, unet_wrapper_function: Callable) -> None:
        self.model_options["model_function_wrapper"] = unet_wrapper_function

    def set_model_patch(self, patch: Callable, name: str) -> None:
        to = self.model_options["transformer_options"]
        if "patches" not in to:
            to["patches"] = {}
        to["patches"][name] = to["patches"].get(name, []) + [patch]

    def set_model_patch_replace(self, patch, name, block_name, number, transformer_index=None) -> None:
        to = self.model_options["transformer_options"].copy()
        to["patches_replace"] = dict(to.get("patches_replace", {}))
        to["patches_replace"][name] = dict(to["patches_replace"].get(name, {}))
        key = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
        to["patches_replace"][name][key] = patch
        self.model_options["transformer_options"] = to

    def set_model_sampler_post_cfg_function(self, post_cfg_function, disable_cfg1_optimization=False) -> None:
        options = self.model_options
        options["sampler_post_cfg_function"] = options.get("sampler_post_cfg_function", []) + [post_cfg_function]
        if disable_cfg1_optimization:
            options["disable_cfg1_optimization"] = True

    def add_wrapper_with_key(self, wrapper_type: str, key: Any, wrapper: Callable) -> None:
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)


@contextlib.contextmanager
def no_free_memory() -> Iterator[None]:
    """ComfyUI reports no free memory (what tools/verify_comfyui.py does to the real ``ModelPatcher``), so
    ``calc_cond_batch`` runs each chunk (cond, uncond) in a call of its own."""
    original = ModelPatcher.get_free_memory
    ModelPatcher.get_free_memory = lambda self, device=None: 0.0
    try:
        yield
    finally:
        ModelPatcher.get_free_memory = original


# --- comfy/samplers.py, comfy/conds.py ----------------------------------------------------------------------------
def _batched(value: Any, rows: int) -> Any:
    """``CONDRegular`` / ``CONDList.process_cond`` (conds.py:18-19, :106-111): a tensor repeated to the latent
    batch; ``CONDConstant`` (:84-96) as it is."""
    if isinstance(value, torch.Tensor):
        return value.repeat(rows // value.shape[0], *[1] * (value.ndim - 1))
    if isinstance(value, list):
        return [v.repeat(rows // v.shape[0], *[1] * (v.ndim - 1)) for v in value]
    return value


def _size(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, list):
        return [tuple(v.shape) for v in value]
    return value


def _concat(values: list) -> Any:
    """``cond_cat`` (samplers.py:161-174) with each cond type's ``concat`` (conds.py:29-33, :95-96, :122-130)."""
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(values)
    if isinstance(first, list):
        return [torch.cat([v[i] for v in values]) for i in range(len(first))]
    return first


def calc_cond_batch(model: BaseModel, conds: list, x_in: torch.Tensor, timestep: torch.Tensor, model_options: dict):
    """Mirrors ``_calc_cond_batch`` (samplers.py:236-368). Each cond entry becomes a chunk of ``x_in.shape[0]`` rows
    (0 = the positive, 1 = the negative); entries whose conditioning has the same sizes share a call, taken in reverse
    (``cond_or_uncond == [1, 0]``), as many as ``model.memory_required(...) * 1.5 < free memory`` allows, else one
    per call; ``transformer_options`` is merged from ``model_options["transformer_options"]`` with
    ``cond_or_uncond``, ``uuids`` and ``sigmas``; the call goes through ``model_options["model_function_wrapper"](
    model.apply_model, {"input", "timestep", "c", "cond_or_uncond"})`` when there is one."""
    rows = x_in.shape[0]
    out_conds = [torch.zeros_like(x_in) for _ in conds]
    to_run = [({k: _batched(v, rows) for k, v in entry.items()}, i) for i, cond in enumerate(conds) if cond
              for entry in cond]  # fmt: skip
    while to_run:
        first = {k: _size(v) for k, v in to_run[0][0].items()}
        same = [x for x in range(len(to_run)) if {k: _size(v) for k, v in to_run[x][0].items()} == first]
        same.reverse()
        to_batch = same[:1]
        free_memory = model.current_patcher.get_free_memory(x_in.device)
        for i in range(1, len(same) + 1):
            amount = same[: len(same) // i]
            if model.memory_required([len(amount) * rows, *x_in.shape[1:]]) * 1.5 < free_memory:
                to_batch = amount
                break
        picked = [to_run.pop(x) for x in to_batch]
        cond_or_uncond = [i for _, i in picked]
        chunks = len(picked)
        c = {k: _concat([p[k] for p, _ in picked]) for k in picked[0][0]}
        timestep_ = torch.cat([timestep] * chunks)
        transformer_options = merge_nested_dicts({}, model_options.get("transformer_options", {}), copy_dict1=False)
        transformer_options["cond_or_uncond"] = cond_or_uncond[:]
        transformer_options["uuids"] = [None] * chunks
        transformer_options["sigmas"] = timestep
        c["transformer_options"] = transformer_options
        input_x = torch.cat([x_in] * chunks)
        if "model_function_wrapper" in model_options:
            args = {"input": input_x, "timestep": timestep_, "c": c, "cond_or_uncond": cond_or_uncond}
            output = model_options["model_function_wrapper"](model.apply_model, args).chunk(chunks)
        else:
            output = model.apply_model(input_x, timestep_, **c).chunk(chunks)
        for o, kind in zip(output, cond_or_uncond, strict=True):
            out_conds[kind] += o
    return out_conds


def sampling_function(model: BaseModel, x, timestep, uncond, cond, cond_scale: float, model_options: dict):
    """Mirrors ``sampling_function`` + ``cfg_function`` (samplers.py:375-415): CFG 1 drops the negative (unless
    ``disable_cfg1_optimization``); ``uncond + (cond - uncond) * scale``; then each post-CFG function
    ``fn(args) -> denoised`` with ``args["denoised"]``, ``["sigma"]``, ``["input"]``, ``["model"]``, ..."""
    skip = math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False)
    uncond_ = None if skip else uncond
    cond_pred, uncond_pred = calc_cond_batch(model, [cond, uncond_], x, timestep, model_options)
    result = uncond_pred + (cond_pred - uncond_pred) * cond_scale
    for fn in model_options.get("sampler_post_cfg_function", []):
        args = {"denoised": result, "cond": cond, "uncond": uncond_, "cond_scale": cond_scale, "model": model,
                "uncond_denoised": uncond_pred, "cond_denoised": cond_pred, "sigma": timestep,
                "model_options": model_options, "input": x}  # fmt: skip
        result = fn(args)
    return result


def simple_scheduler(model_sampling: nn.Module, steps: int) -> torch.Tensor:
    """Mirrors ``simple_scheduler`` (samplers.py:437-444): evenly spaced entries of the sigma table, then 0."""
    s, stride = model_sampling.sigmas, len(model_sampling.sigmas) / steps
    return torch.FloatTensor([float(s[-(1 + int(x * stride))]) for x in range(steps)] + [0.0])


def sample_euler(model: Callable, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict) -> torch.Tensor:
    """Mirrors ``sample_euler`` (k_diffusion/sampling.py:219-241) without churn: x += (x - denoised) / sigma * dt."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    return x


class CFGGuider:
    """Mirrors ``CFGGuider`` (samplers.py:983-1113). ``sample`` works on a ``copy_nested_dicts`` copy of the
    patcher's ``model_options`` into which ``prepare_model_patcher`` (sampler_helpers.py:166-175) merges the
    patcher's ``wrappers``, and runs ``outer_sample`` through the ``outer_sample`` wrappers; ``inner_sample``
    (:1013-1029) takes a non-empty latent into the model's space, encodes the conds (``extra_conds``), sets
    ``transformer_options["sample_sigmas"]`` on another copy, and runs the KSAMPLER (:780-799: noise_scaling, the
    sampler, inverse_noise_scaling) before ``process_latent_out``."""

    def __init__(self, model_patcher: ModelPatcher) -> None:
        self.model_patcher = model_patcher
        self.model_options = model_patcher.model_options
        self.cfg = 1.0

    def set_conds(self, positive: list, negative: list) -> None:
        self.original_conds = {"positive": positive, "negative": negative}

    def set_cfg(self, cfg: float) -> None:
        self.cfg = cfg

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006
        return sampling_function(self.inner_model, x, timestep, self.conds["negative"], self.conds["positive"],
                                 self.cfg, model_options)  # fmt: skip

    def inner_sample(self, noise, latent_image, sigmas, seed):
        if torch.count_nonzero(latent_image) > 0:
            latent_image = self.inner_model.process_latent_in(latent_image)
        self.conds = {k: [self.inner_model.extra_conds(t, **extra) for t, extra in v]
                      for k, v in self.original_conds.items()}  # fmt: skip
        options = copy_nested_dicts(self.model_options)
        options.setdefault("transformer_options", {})["sample_sigmas"] = sigmas
        model_sampling = self.inner_model.model_sampling
        x = model_sampling.noise_scaling(sigmas[0], noise, latent_image)
        x = sample_euler(lambda x, sigma, **kw: self.predict_noise(x, sigma, **kw), x, sigmas,
                         {"model_options": options, "seed": seed})  # fmt: skip
        samples = model_sampling.inverse_noise_scaling(sigmas[-1], x)
        return self.inner_model.process_latent_out(samples.to(torch.float32))

    def outer_sample(self, noise, latent_image, sigmas, seed=None):
        self.inner_model = self.model_patcher.model
        self.model_patcher.pre_run()
        try:
            return self.inner_sample(noise, latent_image, sigmas, seed)
        finally:
            del self.inner_model

    def sample(self, noise, latent_image, sigmas, seed=None):
        original = self.model_options
        try:
            self.model_options = copy_nested_dicts(self.model_options)
            wrappers = self.model_options["transformer_options"].setdefault("wrappers", {})
            merge_nested_dicts(wrappers, self.model_patcher.wrappers, copy_dict1=False)
            executor = WrapperExecutor(self.outer_sample, get_all_wrappers("outer_sample", self.model_options, True))
            return executor.execute(noise, latent_image, sigmas, seed=seed)
        finally:
            self.model_options = original


def ksampler(model: ModelPatcher, seed: int, steps: int, cfg: float, positive: list, negative: list,
             latent: dict) -> torch.Tensor:  # fmt: skip
    """The KSampler node with "euler" and "simple": ``common_ksampler`` (nodes.py) -> ``prepare_noise``
    (comfy/sample.py:25-37: one ``torch.manual_seed(seed)`` generator for the whole batch) -> ``comfy.sample.sample``
    (:71-76) -> ``KSampler.sample`` (samplers.py:1185-1197: sigmas from the model's ``model_sampling``) -> a
    ``CFGGuider``. ``positive`` / ``negative`` are CONDITIONING: ``[[tensor [1, L, D], {extra}], ...]``. Runs under
    ``torch.inference_mode()``, as ComfyUI executes a prompt (comfy/cmd/execution.py:864)."""
    with torch.inference_mode():
        return _ksampler(model, seed, steps, cfg, positive, negative, latent)


def _ksampler(model, seed, steps, cfg, positive, negative, latent) -> torch.Tensor:
    latent_image = latent["samples"]
    noise = torch.randn(latent_image.size(), generator=torch.manual_seed(seed))
    sigmas = simple_scheduler(model.get_model_object("model_sampling"), steps)
    guider = CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider.sample(noise, latent_image, sigmas, seed=seed)


# --- the blocks' maths (a stand-in) ----------------------------------------------------------------------------
class _Joint(nn.Module):
    """Single-head attention over one sequence plus a time shift: every token depends on every other one."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, seq: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        seq = seq + vec[:, None]
        att = torch.softmax(self.q(seq) @ self.k(seq).transpose(1, 2) / math.sqrt(seq.shape[-1]), dim=-1)
        return self.out(att @ self.v(seq))


def _patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] (padded to the patch: ``pad_to_patch_size``) -> [B, (H/p)(W/p), C p p], rows first."""
    b, c, h, w = x.shape
    x = nn.functional.pad(x, (0, (-w) % p, 0, (-h) % p))
    h, w = x.shape[-2:]
    return x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)


def _unpatchify(tokens: torch.Tensor, c: int, h: int, w: int, p: int) -> torch.Tensor:
    b, hp, wp = tokens.shape[0], -(-h // p), -(-w // p)
    x = tokens.reshape(b, hp, wp, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, hp * p, wp * p)
    return x[:, :, :h, :w]


# --- comfy/ldm/flux/model.py, layers.py: Flux ---------------------------------------------------------------------
class DoubleStreamBlock(nn.Module):
    """``DoubleStreamBlock.forward(img, txt, vec, pe, attn_mask=None, transformer_options={})`` -> ``(img, txt)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.joint = _Joint(dim)
        self.txt_mlp, self.img_mlp = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, img, txt, vec, pe, attn_mask=None, transformer_options={}):  # noqa: B006
        mixed = self.joint(torch.cat((txt, img), 1), vec)
        return img + self.img_mlp(mixed[:, txt.shape[1] :]), txt + self.txt_mlp(mixed[:, : txt.shape[1]])


class SingleStreamBlock(nn.Module):
    """``SingleStreamBlock.forward(x, vec, pe, attn_mask=None, transformer_options={})`` on ``cat((txt, img), 1)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.joint = _Joint(dim)

    def forward(self, x, vec, pe, attn_mask=None, transformer_options={}):  # noqa: B006
        return x + self.joint(x, vec)


class Flux(nn.Module):
    """Mirrors ``Flux`` (comfy/ldm/flux/model.py). ``_forward`` (:313-362): the latent patchified by
    ``patch_size``, each ``ref_latents`` entry's tokens appended AFTER the target's (Kontext, Flux.2 edits), the
    output cropped to the target's tokens. ``forward_orig`` (:133-270): for each of ``double_blocks``, a
    ``patches_replace["dit"][("double_block", i)]`` is called as ``patch({"img", "txt", "vec", "pe", "attn_mask",
    "transformer_options"}, {"original_block": f})`` and its ``out["txt"]``, ``out["img"]`` read back; then
    ``img = cat((txt, img), 1)`` and each of ``single_blocks`` likewise with ``("single_block", i)``, args
    ``{"img", ...}``, reading ``out["img"]``; the text is dropped after the last one."""

    def __init__(self, in_channels=4, hidden_size=32, context_in_dim=16, depth=3, depth_single_blocks=2, patch_size=2):
        super().__init__()
        self.patch_size, self.in_channels = patch_size, in_channels
        self.img_in = nn.Linear(in_channels * patch_size**2, hidden_size)
        self.txt_in, self.time_in = nn.Linear(context_in_dim, hidden_size), nn.Linear(1, hidden_size)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(hidden_size) for _ in range(depth))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(hidden_size) for _ in range(depth_single_blocks))
        self.final_layer = nn.Linear(hidden_size, in_channels * patch_size**2)

    def forward_orig(self, img, txt, timesteps, transformer_options):
        patches_replace = transformer_options.get("patches_replace", {})
        img, txt = self.img_in(img), self.txt_in(txt)
        vec = self.time_in(timesteps.reshape(-1, 1).to(img.dtype))
        blocks_replace = patches_replace.get("dit", {})
        for i, block in enumerate(self.double_blocks):
            transformer_options["block_index"] = i
            if ("double_block", i) in blocks_replace:

                def block_wrap_1(args, block=block):
                    out = {}
                    out["img"], out["txt"] = block(img=args["img"], txt=args["txt"], vec=args["vec"], pe=args["pe"],
                                                   attn_mask=args.get("attn_mask"),
                                                   transformer_options=args.get("transformer_options"))  # fmt: skip
                    return out

                out = blocks_replace[("double_block", i)](
                    {"img": img, "txt": txt, "vec": vec, "pe": None, "attn_mask": None,
                     "transformer_options": transformer_options},
                    {"original_block": block_wrap_1},
                )  # fmt: skip
                txt, img = out["txt"], out["img"]
            else:
                img, txt = block(img=img, txt=txt, vec=vec, pe=None, attn_mask=None,
                                 transformer_options=transformer_options)  # fmt: skip
        img = torch.cat((txt, img), 1)
        for i, block in enumerate(self.single_blocks):
            transformer_options["block_index"] = i
            if ("single_block", i) in blocks_replace:

                def block_wrap_2(args, block=block):
                    return {"img": block(args["img"], vec=args["vec"], pe=args["pe"], attn_mask=args.get("attn_mask"),
                                         transformer_options=args.get("transformer_options"))}  # fmt: skip

                out = blocks_replace[("single_block", i)](
                    {
                        "img": img,
                        "vec": vec,
                        "pe": None,
                        "attn_mask": None,
                        "transformer_options": transformer_options,
                    },
                    {"original_block": block_wrap_2},
                )
                img = out["img"]
            else:
                img = block(img, vec=vec, pe=None, attn_mask=None, transformer_options=transformer_options)
        return self.final_layer(img[:, txt.shape[1] :])

    def forward(self, x, timestep, context, y=None, guidance=None, ref_latents=None, control=None,
                transformer_options=None, **kwargs):  # fmt: skip
        transformer_options = {} if transformer_options is None else transformer_options
        b, c, h, w = x.shape
        img = _patchify(x, self.patch_size)
        img_tokens = img.shape[1]
        for ref in ref_latents or []:
            img = torch.cat([img, _patchify(ref, self.patch_size)], dim=1)
        out = self.forward_orig(img, context, timestep, transformer_options)[:, :img_tokens]
        return _unpatchify(out, c, h, w, self.patch_size)


# --- comfy/ldm/lumina/model.py: NextDiT (Z-Image, Lumina 2) -------------------------------------------------------
class JointTransformerBlock(nn.Module):
    """``JointTransformerBlock.forward(x, x_mask, freqs_cis, adaln_input, ...)`` on the [caption; image] sequence."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.joint = _Joint(dim)

    def forward(self, x, x_mask, freqs_cis, adaln_input=None, timestep_zero_index=None, transformer_options={}):  # noqa: B006
        return x + self.joint(x, adaln_input)


class NextDiT(nn.Module):
    """Mirrors ``NextDiT`` (comfy/ldm/lumina/model.py). ``embed_cap`` / ``embed_all`` (:652-712): the caption
    embedded and padded with ``cap_pad_token`` to a multiple of ``pad_tokens_multiple``, the image tokens with
    ``x_pad_token``. ``patchify_and_embed`` (:714-812): the sequence is [captions; image]; an edit (omni) call's
    ``ref_latents`` each add a caption slot (pad tokens when it has no ``ref_contexts``) BEFORE the main caption and
    their image tokens BEFORE the main image, so both lie in the caption part ``cap_size = len - img_len``.
    ``_forward`` (:822-872): ``t = 1 - timesteps``; after each of ``layers``, each ``patches["double_block"]``
    function gets ``{"img": img[:, cap:], "txt": img[:, :cap], "block_index": i, ...}`` and its ``out["img"]`` /
    ``out["txt"]`` (each optional) are written back in place; the output is negated."""

    def __init__(self, patch_size=2, in_channels=4, dim=32, cap_feat_dim=16, n_layers=3, pad_tokens_multiple=8):
        super().__init__()
        self.patch_size, self.in_channels, self.pad_tokens_multiple = patch_size, in_channels, pad_tokens_multiple
        self.cap_embedder, self.t_embedder = nn.Linear(cap_feat_dim, dim), nn.Linear(1, dim)
        self.x_embedder = nn.Linear(in_channels * patch_size**2, dim)
        self.cap_pad_token, self.x_pad_token = nn.Parameter(torch.randn(1, dim)), nn.Parameter(torch.randn(1, dim))
        self.layers = nn.ModuleList(JointTransformerBlock(dim) for _ in range(n_layers))
        self.final_layer = nn.Linear(dim, in_channels * patch_size**2)

    def _pad(self, feats: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        extra = (-feats.shape[1]) % self.pad_tokens_multiple
        return torch.cat((feats, token.to(feats.dtype).unsqueeze(0).repeat(feats.shape[0], extra, 1)), dim=1)

    def forward(self, x, timesteps, context, num_tokens, attention_mask=None, ref_latents=None, **kwargs):
        ref_latents, transformer_options = ref_latents or [], kwargs.get("transformer_options", {})
        b, c, h, w = x.shape
        adaln_input = self.t_embedder((1.0 - timesteps).reshape(-1, 1).to(x.dtype))
        caps, images = [], []
        for ref in ref_latents:
            caps.append(self.cap_pad_token.unsqueeze(0).repeat(b, self.pad_tokens_multiple, 1))
            images.append(self._pad(self.x_embedder(_patchify(ref, self.patch_size)), self.x_pad_token))
        caps.append(self._pad(self.cap_embedder(context), self.cap_pad_token))
        image = self._pad(self.x_embedder(_patchify(x, self.patch_size)), self.x_pad_token)
        img = torch.cat([*caps, *images, image], dim=1)
        cap_size = img.shape[1] - image.shape[1]
        patches = transformer_options.get("patches", {})
        for i, layer in enumerate(self.layers):
            transformer_options["block_index"] = i
            img = layer(img, None, None, adaln_input, transformer_options=transformer_options)
            for p in patches.get("double_block", []):
                out = p({"img": img[:, cap_size:], "txt": img[:, :cap_size], "vec": adaln_input, "x": x,
                         "block_index": i, "transformer_options": transformer_options})  # fmt: skip
                if "img" in out:
                    img[:, cap_size:] = out["img"]
                if "txt" in out:
                    img[:, :cap_size] = out["txt"]
        tokens = -(-h // self.patch_size) * -(-w // self.patch_size)
        out = self.final_layer(img[:, cap_size : cap_size + tokens])
        return -_unpatchify(out, c, h, w, self.patch_size)


# --- comfy/ldm/modules/diffusionmodules/mmdit.py: SD3 -------------------------------------------------------------
class JointBlock(nn.Module):
    """``JointBlock.forward(context, x, c=..., transformer_options=...)`` -> ``(context, x)``; ``context`` is None
    from the last block (its ``context_block.pre_only``: ``_block_mixing``, :613-650)."""

    def __init__(self, dim: int, pre_only: bool) -> None:
        super().__init__()
        self.pre_only = pre_only
        self.joint = _Joint(dim)
        self.context_mlp, self.x_mlp = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, context, x, c, use_checkpoint=False, transformer_options={}):  # noqa: B006
        mixed = self.joint(torch.cat((context, x), 1), c)
        x = x + self.x_mlp(mixed[:, context.shape[1] :])
        return (None if self.pre_only else context + self.context_mlp(mixed[:, : context.shape[1]])), x


class OpenAISignatureMMDITWrapper(nn.Module):
    """Mirrors ``OpenAISignatureMMDITWrapper`` / ``MMDiT.forward_core_with_concat`` (mmdit.py:943-1045): for each
    of ``joint_blocks``, a ``patches_replace["dit"][("double_block", i)]`` is called as ``patch({"img", "txt",
    "vec", "transformer_options"}, {"original_block": f})`` (f returns ``{"txt", "img"}``, txt None after the last
    block) and ``out["txt"]``, ``out["img"]`` read back."""

    def __init__(self, in_channels=4, hidden_size=32, context_dim=16, depth=3, patch_size=2) -> None:
        super().__init__()
        self.patch_size, self.in_channels = patch_size, in_channels
        self.x_embedder = nn.Linear(in_channels * patch_size**2, hidden_size)
        self.context_embedder, self.t_embedder = nn.Linear(context_dim, hidden_size), nn.Linear(1, hidden_size)
        self.joint_blocks = nn.ModuleList(JointBlock(hidden_size, pre_only=i == depth - 1) for i in range(depth))
        self.final_layer = nn.Linear(hidden_size, in_channels * patch_size**2)

    def forward(self, x, timesteps, context=None, y=None, control=None, transformer_options=None, **kwargs):
        transformer_options = {} if transformer_options is None else transformer_options
        b, c, h, w = x.shape
        tokens = self.x_embedder(_patchify(x, self.patch_size))
        context = self.context_embedder(context)
        c_mod = self.t_embedder((timesteps / 1000.0).reshape(-1, 1).to(tokens.dtype))
        blocks_replace = transformer_options.get("patches_replace", {}).get("dit", {})
        for i, block in enumerate(self.joint_blocks):
            if ("double_block", i) in blocks_replace:

                def block_wrap(args, block=block):
                    out = {}
                    out["txt"], out["img"] = block(args["txt"], args["img"], c=args["vec"],
                                                   transformer_options=args["transformer_options"])  # fmt: skip
                    return out

                out = blocks_replace[("double_block", i)](
                    {"img": tokens, "txt": context, "vec": c_mod, "transformer_options": transformer_options},
                    {"original_block": block_wrap},
                )
                context, tokens = out["txt"], out["img"]
            else:
                context, tokens = block(context, tokens, c=c_mod, transformer_options=transformer_options)
        return _unpatchify(self.final_layer(tokens), c, h, w, self.patch_size)


# --- comfy/ldm/krea2/model.py: SingleStreamDiT (Krea 2, ComfyUI 0.29) ----------------------------------------------
class Krea2Block(nn.Module):
    """``SingleStreamBlock.forward(x, vec, freqs, mask=None, timestep_zero_index=None, transformer_options={})`` on
    the [text; target; references] sequence, out of place."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.joint = _Joint(dim)

    def forward(self, x, vec, freqs, mask=None, timestep_zero_index=None, transformer_options={}):  # noqa: B006
        return x + self.joint(x, vec)


class SingleStreamDiT(nn.Module):
    """Mirrors ``SingleStreamDiT`` (comfy/ldm/krea2/model.py): ``forward(x, timesteps, context, attention_mask=None,
    ref_latents=None, transformer_options={}, **kwargs)`` on a 5-D latent [B, C, 1, H, W] (``latent_formats.Wan21``;
    frames folded into the batch), patchified ``patch`` x ``patch``; reference latents (used only with a reference
    method) appended after the target's tokens; ``combined = cat((context, img), 1)`` through ``self.blocks``, each
    called ``block(combined, tvec, freqs, None, timestep_zero_index=..., transformer_options=...)``; the target's
    tokens read back. No block patch point (only the model wrappers)."""

    def __init__(self, features=32, channels=4, txtdim=16, layers=3, patch=2, default_ref_method="index"):
        super().__init__()
        self.patch, self.channels, self.default_ref_method = patch, channels, default_ref_method
        self.first = nn.Linear(channels * patch * patch, features)
        self.txtmlp, self.tmlp = nn.Linear(txtdim, features), nn.Linear(1, features)
        self.blocks = nn.ModuleList(Krea2Block(features) for _ in range(layers))
        self.last = nn.Linear(features, channels * patch * patch)

    def forward(self, x, timesteps, context, attention_mask=None, ref_latents=None, transformer_options={}, **kw):  # noqa: B006
        b, c, t, h, w = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        img = self.first(_patchify(x, self.patch))
        tokens = img.shape[1]
        if ref_latents and self.default_ref_method is not None:
            refs = [self.first(_patchify(r.reshape(r.shape[0], c, *r.shape[-2:]), self.patch)) for r in ref_latents]
            img = torch.cat([img] + [r.expand(img.shape[0], -1, -1) for r in refs], dim=1)
        context = self.txtmlp(context)
        tvec = self.tmlp(timesteps.reshape(-1, 1).to(img.dtype))
        combined = torch.cat((context, img), dim=1)
        for block in self.blocks:
            combined = block(combined, tvec, None, None, timestep_zero_index=None,
                             transformer_options=transformer_options)  # fmt: skip
        out = self.last(combined[:, context.shape[1] : context.shape[1] + tokens])
        return _unpatchify(out, c, h, w, self.patch).reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)


# --- comfy/ldm/ernie/model.py: ErnieImageModel (Ernie-Image, ComfyUI 0.29) -----------------------------------------
class ErnieBlock(nn.Module):
    """``ErnieImageSharedAdaLNBlock.forward(x, rotary_pos_emb, temb, attention_mask=None)`` on the [image; text]
    sequence, batch-first, out of place."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.joint = _Joint(dim)

    def forward(self, x, rotary_pos_emb, temb, attention_mask=None):
        return x + self.joint(x, temb)


class ErnieImageModel(nn.Module):
    """Mirrors ``ErnieImageModel`` (comfy/ldm/ernie/model.py): ``forward(x, timesteps, context, **kwargs)``, the
    latent embedded per ``patch_size`` (1) patch, ``cat([image, text], 1)`` through ``self.layers``, each called
    ``layer(hidden_states, rotary_pos_emb, temb)``; the image tokens read back. No patch point inside the model, not
    even a DIFFUSION_MODEL wrapper."""

    def __init__(self, in_channels=4, hidden_size=32, text_in_dim=16, num_layers=3) -> None:
        super().__init__()
        self.patch_size = 1
        self.x_embedder = nn.Linear(in_channels, hidden_size)
        self.text_proj, self.time = nn.Linear(text_in_dim, hidden_size), nn.Linear(1, hidden_size)
        self.layers = nn.ModuleList(ErnieBlock(hidden_size) for _ in range(num_layers))
        self.final_linear = nn.Linear(hidden_size, in_channels)

    def forward(self, x, timesteps, context, **kwargs):
        b, c, h, w = x.shape
        img = self.x_embedder(_patchify(x, self.patch_size))
        hidden_states = torch.cat([img, self.text_proj(context)], dim=1)
        temb = self.time((timesteps / 1000.0).reshape(-1, 1).to(img.dtype))
        for layer in self.layers:
            hidden_states = layer(hidden_states, None, temb)
        return _unpatchify(self.final_linear(hidden_states[:, : img.shape[1]]), c, h, w, self.patch_size)


# --- comfy/ldm/aura/mmdit.py: AuraFlow's class (named MMDiT), which contextual repulsion does not support ----------
class MMDiT(nn.Module):
    """A diffusion model of another family: ``forward(x, timestep, context, transformer_options={}, **kwargs)``."""

    def __init__(self, in_channels=4, context_dim=16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 1)
        self.context_in = nn.Linear(context_dim, in_channels)

    def forward(self, x, timestep, context, transformer_options={}, **kwargs):  # noqa: B006
        return self.conv(x) + self.context_in(context).mean(1)[:, :, None, None] * timestep.reshape(-1, 1, 1, 1)
