"""Small stand-ins of exactly the Forge API the extension uses, written from Forge main's source (dfdcbab6).

No Forge code is copied; each class names the Forge file whose behaviour it reproduces. Shapes and call conventions
are Forge's; the maths inside the blocks is a small stand-in (joint attention over [txt; img] with linear layers), so
the text stream depends on the image stream as in the real MM-DiT blocks.
"""

from __future__ import annotations

import copy
import math
import re

import torch
from einops import rearrange
from torch import nn


# --- backend/modules/k_prediction.py: PredictionFlux / PredictionDiscreteFlow -------------------------------------
class PredictionFlux(nn.Module):
    """Mirrors ``PredictionFlux``: a table of sigmas over 10000 evenly spaced times, shifted by mu; the model gets
    ``timestep(sigma) = sigma``; ``percent_to_sigma(p) = 1 - p``."""

    def __init__(self, mu: float = 1.15, pseudo_timestep_range: int = 10000) -> None:
        super().__init__()
        t = torch.arange(1, pseudo_timestep_range + 1, 1) / pseudo_timestep_range
        self.register_buffer("sigmas", math.exp(mu) / (math.exp(mu) + (1 / t - 1)))  # diffusers' time_shift

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma

    def percent_to_sigma(self, percent: float) -> float:
        return 1.0 if percent <= 0.0 else 0.0 if percent >= 1.0 else 1.0 - percent

    def calculate_input(self, sigma, x):
        return x

    def calculate_denoised(self, sigma, model_output, model_input):
        return model_input - model_output * sigma.reshape(-1, *[1] * (model_input.ndim - 1))


class PredictionDiscreteFlow(PredictionFlux):
    """Mirrors ``PredictionDiscreteFlow(shift=3.0)`` (SD3): sigma table over 1000 steps; timestep = sigma * 1000."""

    def __init__(self, shift: float = 3.0) -> None:
        nn.Module.__init__(self)
        t = torch.arange(1, 1001, 1) / 1000.0
        self.register_buffer("sigmas", shift * t / (1 + (shift - 1) * t))

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma * 1000


# --- backend/nn/flux.py: DoubleStreamBlock, SingleStreamBlock, IntegratedFluxTransformer2DModel ------------------
class _Joint(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        att = torch.softmax(self.q(seq) @ self.k(seq).transpose(1, 2) / math.sqrt(seq.shape[-1]), dim=-1)
        return att @ self.v(seq)


class DoubleStreamBlock(nn.Module):
    """``forward(self, img, txt, vec, pe)`` returns ``(img, txt)`` (image first); not in place."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.joint = _Joint(dim)
        self.txt_mlp, self.img_mlp = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, img, txt, vec, pe):
        mixed = self.joint(torch.cat((txt, img), 1) + vec[:, None])
        txt = txt + self.txt_mlp(mixed[:, : txt.shape[1]])
        img = img + self.img_mlp(mixed[:, txt.shape[1] :])
        return img, txt


class SingleStreamBlock(nn.Module):
    """``forward(self, x, vec, pe)`` on ``x = cat((txt, img), 1)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.joint = _Joint(dim)

    def forward(self, x, vec, pe):
        return x + self.joint(x + vec[:, None])


class IntegratedFluxTransformer2DModel(nn.Module):
    """``forward(self, x, timestep, context, y, guidance=None, **kwargs)``: ``transformer_options`` arrives in kwargs
    and is dropped; blocks are called with keywords; single blocks run on ``cat((txt, img), 1)``."""

    def __init__(self, channels: int = 4, dim: int = 32, context_dim: int = 16, depth: int = 3, depth_single: int = 2):
        super().__init__()
        self.img_in, self.txt_in = nn.Linear(4 * channels, dim), nn.Linear(context_dim, dim)
        self.time_in = nn.Linear(1, dim)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(dim) for _ in range(depth))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(dim) for _ in range(depth_single))
        self.final = nn.Linear(dim, 4 * channels)

    def inner_forward(self, img, txt, timesteps):
        img, txt = self.img_in(img), self.txt_in(txt)
        vec = self.time_in(timesteps.reshape(-1, 1).to(img.dtype))
        for block in self.double_blocks:
            img, txt = block(img=img, txt=txt, vec=vec, pe=None)
        img = torch.cat((txt, img), 1)
        for block in self.single_blocks:
            img = block(img, vec=vec, pe=None)
        return self.final(img[:, txt.shape[1] :])

    def forward(self, x, timestep, context, y=None, guidance=None, **kwargs):
        b, c, h, w = x.shape
        x = torch.nn.functional.pad(x, (0, w % 2, 0, h % 2))  # Forge pads to a multiple of the 2 x 2 patch
        img = rearrange(x, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)
        out = self.inner_forward(img, context, timestep)
        out = rearrange(out, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=(h + 1) // 2, ph=2, pw=2)
        return out[:, :, :h, :w]


def kontext_forward(reference: torch.Tensor):
    """Mirrors DenOfEquity/forge2_flux_kontext ``patched_flux_forward`` (scripts/kontext.py), which replaces
    ``IntegratedFluxTransformer2DModel.forward``: the reference latent's tokens (batch 1, repeated over the batch) are
    appended after the noisy image's tokens, and the output is cropped back to the image tokens."""

    def forward(self, x, timestep, context, y=None, guidance=None, **kwargs):
        b, c, h, w = x.shape
        img = rearrange(x, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)
        img_tokens = img.shape[1]
        img = torch.cat([img, reference.repeat(b, 1, 1)], dim=1)
        out = self.inner_forward(img, context, timestep)[:, :img_tokens]
        return rearrange(out, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=h // 2, ph=2, pw=2)

    return forward


# --- backend/nn/mmditx.py: JointBlock (block_mixing), MMDiTX ------------------------------------------------------
class JointBlock(nn.Module):
    """``forward(context, x, c=...)`` returns ``(context, x)`` (text first); ``context`` is None when ``pre_only``."""

    def __init__(self, dim: int, pre_only: bool) -> None:
        super().__init__()
        self.pre_only = pre_only
        self.joint = _Joint(dim)
        self.context_mlp, self.x_mlp = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, context, x, c):
        mixed = self.joint(torch.cat((context, x), 1) + c[:, None])
        x = x + self.x_mlp(mixed[:, context.shape[1] :])
        context = None if self.pre_only else context + self.context_mlp(mixed[:, : context.shape[1]])
        return context, x


class MMDiTX(nn.Module):
    """``forward(self, x, t, y=None, context=None, control=None, transformer_options={}, **kwargs)``; loops
    ``context, x = block(context, x, c=c_mod)``; the last block is ``pre_only``."""

    def __init__(self, channels: int = 4, dim: int = 32, context_dim: int = 16, depth: int = 4) -> None:
        super().__init__()
        self.x_in, self.context_in, self.t_in = (
            nn.Linear(channels, dim),
            nn.Linear(context_dim, dim),
            nn.Linear(1, dim),
        )
        self.joint_blocks = nn.ModuleList(JointBlock(dim, pre_only=i == depth - 1) for i in range(depth))
        self.final = nn.Linear(dim, channels)

    def forward(self, x, t, y=None, context=None, control=None, transformer_options={}, **kwargs):  # noqa: B006
        b, ch, h, w = x.shape
        tokens = self.x_in(x.reshape(b, ch, h * w).transpose(1, 2))
        context = self.context_in(context)
        c_mod = self.t_in((t / 1000.0).reshape(-1, 1).to(tokens.dtype))
        for block in self.joint_blocks:
            context, tokens = block(context, tokens, c=c_mod)
        return self.final(tokens).transpose(1, 2).reshape(b, ch, h, w)


# --- backend/modules/k_model.py: KModel.apply_model -------------------------------------------------------------
class KModel(nn.Module):
    """``apply_model(x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs)``:
    sigma -> model timestep through the predictor, calls the diffusion model, returns the denoised prediction."""

    def __init__(self, diffusion_model: nn.Module, predictor: nn.Module) -> None:
        super().__init__()
        self.diffusion_model = diffusion_model
        self.predictor = predictor

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):  # noqa: B006
        sigma = t
        xc = self.predictor.calculate_input(sigma, x)
        timestep = self.predictor.timestep(t).float()
        out = self.diffusion_model(xc, timestep, context=c_crossattn, control=control,
                                   transformer_options=transformer_options)  # fmt: skip
        return self.predictor.calculate_denoised(sigma, out, x)


# --- backend/patcher/base.py ModelPatcher / backend/patcher/unet.py UnetPatcher -----------------------------------
class UnetPatcher:
    """``clone()`` shares the model and deep-copies ``model_options``; ``set_model_unet_function_wrapper`` fills the
    single ``model_options["model_function_wrapper"]`` slot."""

    def __init__(self, model: KModel) -> None:
        self.model = model
        self.model_options: dict = {"transformer_options": {}}

    def clone(self) -> UnetPatcher:
        n = UnetPatcher(self.model)
        n.model_options = copy.deepcopy(self.model_options)
        return n

    def set_model_unet_function_wrapper(self, unet_wrapper_function) -> None:
        self.model_options["model_function_wrapper"] = unet_wrapper_function

    def set_model_sampler_post_cfg_function(self, post_cfg_function, disable_cfg1_optimization=False) -> None:
        # base.py set_model_options_post_cfg_function: appends to a list
        fns = self.model_options.get("sampler_post_cfg_function", []) + [post_cfg_function]
        self.model_options["sampler_post_cfg_function"] = fns
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True


# --- backend/sampling/sampling_function.py: calc_cond_uncond_batch ---------------------------------------------
def calc_cond_uncond_batch(model: KModel, cond: list, uncond: list | None, x_in, timestep, model_options: dict,
                           max_chunks_per_call: int | None = None):  # fmt: skip
    """Forge's chunk batching: one chunk of all B rows per cond entry (AND sub-prompt) and one for uncond; chunks are
    popped highest index first, so when they fit together uncond comes first; ``max_chunks_per_call`` imitates low
    VRAM (Forge's ``memory_required(...) < free_memory`` loop) by splitting chunks over separate calls. Conditions
    are dicts with ``c_crossattn`` (all conditions have the same text length here)."""
    to_run = [(x, 0) for x in cond] + ([(x, 1) for x in uncond] if uncond is not None else [])
    out_cond, out_uncond = torch.zeros_like(x_in), torch.zeros_like(x_in)
    while to_run:
        to_batch = list(range(len(to_run)))
        to_batch.reverse()
        if max_chunks_per_call is not None:
            to_batch = to_batch[:max_chunks_per_call]
        picked = [to_run.pop(i) for i in to_batch]
        cond_or_uncond = [kind for _, kind in picked]
        chunks = len(picked)
        input_x = torch.cat([x_in] * chunks)
        c = {"c_crossattn": torch.cat([cond_["c_crossattn"] for cond_, _ in picked])}
        timestep_ = torch.cat([timestep] * chunks)
        transformer_options = model_options.get("transformer_options", {}).copy()
        transformer_options["cond_or_uncond"] = cond_or_uncond[:]
        transformer_options["sigmas"] = timestep
        transformer_options["cond_indices"] = [i for i, k in enumerate(cond_or_uncond) if k == 0]
        transformer_options["uncond_indices"] = [i for i, k in enumerate(cond_or_uncond) if k == 1]
        c["transformer_options"] = transformer_options
        if "model_function_wrapper" in model_options:
            args = {"input": input_x, "timestep": timestep_, "c": c, "cond_or_uncond": cond_or_uncond}
            output = model_options["model_function_wrapper"](model.apply_model, args).chunk(chunks)
        else:
            output = model.apply_model(input_x, timestep_, **c).chunk(chunks)
        for o, kind in zip(output, cond_or_uncond, strict=True):
            if kind == 0:
                out_cond += o
            else:
                out_uncond += o
    return out_cond, out_uncond


def sampling_function_inner(model: KModel, x, timestep, uncond, cond, cond_scale: float, model_options: dict,
                            max_chunks_per_call: int | None = None):  # fmt: skip
    """``sampling_function_inner``: CFG 1 skips the uncond rows (unless ``disable_cfg1_optimization``); then the
    post-CFG functions, each ``fn(args) -> denoised`` with ``args["denoised"]``, ``["sigma"]``, ``["input"]``, ..."""
    uncond_ = None if math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization") else uncond
    cond_pred, uncond_pred = calc_cond_uncond_batch(model, cond, uncond_, x, timestep, model_options,
                                                    max_chunks_per_call)  # fmt: skip
    cfg_result = cond_pred if uncond_ is None else uncond_pred + (cond_pred - uncond_pred) * cond_scale
    for fn in model_options.get("sampler_post_cfg_function", []):
        args = {"denoised": cfg_result, "cond": cond, "uncond": uncond, "model": model, "uncond_denoised": uncond_pred,
                "cond_denoised": cond_pred, "sigma": timestep, "model_options": model_options, "input": x}  # fmt: skip
        cfg_result = fn(args)
    return cfg_result


# --- modules/api/api.py: how /sdapi/v1/txt2img and img2img build the scripts' arguments ----------------------------
class HTTPException(Exception):
    """The ``fastapi.HTTPException`` the API raises: an HTTP status and a detail."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code, self.detail = status_code, detail


def script_name_to_index(name: str, scripts: list) -> int:
    """Mirrors ``script_name_to_index``: a script is named by its title, case-insensitively; else HTTP 422."""
    try:
        return [script.title().lower() for script in scripts].index(name.lower())
    except Exception as e:
        raise HTTPException(status_code=422, detail=f"Script '{name}' not found") from e


def init_default_script_args(script_runner) -> list:
    """Mirrors ``Api.init_default_script_args``: position 0 is the selectable script's index, then the UI default
    (each component's ``.value``) of every argument of every script, built inside a ``gr.Blocks()``."""
    import gradio as gr

    last_arg_index = 1
    for script in script_runner.scripts:
        if last_arg_index < script.args_to:
            last_arg_index = script.args_to
    script_args = [None] * last_arg_index
    script_args[0] = 0
    with gr.Blocks():
        for script in script_runner.scripts:
            if script.ui(script.is_img2img):
                ui_default_values = []
                for elem in script.ui(script.is_img2img):
                    ui_default_values.append(elem.value)
                script_args[script.args_from : script.args_to] = ui_default_values
    return script_args


def init_script_args(request, default_script_args: list, selectable_scripts, selectable_idx, script_runner, *,
                     input_script_args: dict | None = None) -> list:  # fmt: skip
    """Mirrors ``Api.init_script_args``: start from the UI defaults, put the values pasted from ``infotext``
    (``input_script_args``) in their positions, then overwrite only the first ``len(args)`` positions of each
    always-on script named in ``alwayson_scripts``; every other position keeps its default."""
    script_args = default_script_args.copy()
    if input_script_args is not None:
        for index, value in input_script_args.items():
            script_args[index] = value
    if selectable_scripts:
        script_args[selectable_scripts.args_from : selectable_scripts.args_to] = request.script_args
        script_args[0] = selectable_idx + 1
    if request.alwayson_scripts:
        for alwayson_script_name in request.alwayson_scripts.keys():
            alwayson_script = script_runner.scripts[script_name_to_index(alwayson_script_name, script_runner.scripts)]
            if alwayson_script.alwayson is False:
                raise HTTPException(
                    status_code=422, detail="Cannot have a selectable script in the always on scripts params"
                )
            if "args" in request.alwayson_scripts[alwayson_script_name]:
                given = request.alwayson_scripts[alwayson_script_name]["args"]
                for idx in range(0, min((alwayson_script.args_to - alwayson_script.args_from), len(given))):
                    script_args[alwayson_script.args_from + idx] = given[idx]
    return script_args


def api_pasted_value(function, component, params: dict):
    """Mirrors ``Api.apply_infotext``'s ``get_field_value`` for a script's infotext field: the field's function reads
    the pasted ``params``; the value is cast to the type of the component's default value, and dropped (None) when
    that default is None."""
    value = function(params)
    if value is None:
        return None
    target_type = type(component.value)
    if target_type is type(None):
        return None
    if isinstance(value, dict) and value.get("__type__") == "generic_update":
        value = value.get("value")
    if value is not None and not isinstance(value, target_type):
        value = target_type(value)
    return value


# --- modules/processing.py: process_images, create_infotext, Processed; modules/scripts.py: ScriptRunner ------------
class ScriptRunner:
    """Mirrors ``ScriptRunner``'s always-on hooks (modules/scripts.py:832-838 before_process, :840 process,
    :912-918 postprocess_batch_list, ...): each script gets ``p.script_args[args_from:args_to]``; a hook that raises
    is reported and the generation goes on (``errors.report``); the reports are kept in ``errors``."""

    def __init__(self, scripts: list) -> None:
        self.scripts = scripts
        self.errors: list[str] = []

    def _run(self, hook: str, p, *args, **kwargs) -> None:
        for script in self.scripts:
            try:
                getattr(script, hook)(p, *args, *p.script_args[script.args_from : script.args_to], **kwargs)
            except Exception as error:  # noqa: BLE001 - Forge: errors.report(f"Error running {hook}: ...")
                self.errors.append(f"{hook}: {error!r}")

    def __getattr__(self, hook: str):
        return lambda p, *args, **kwargs: self._run(hook, p, *args, **kwargs)


def image_noise(seeds: list[int], subseeds: list[int], subseed_strength: float, shape=(4, 3, 3)) -> torch.Tensor:
    """Mirrors ``rng.ImageRNG`` (modules/rng.py:114-170): one generator per image, seeded by that image's seed; with
    a variation strength the image's subseed noise is blended in (Forge: slerp; here a linear blend)."""
    rows = []
    for seed, subseed in zip(seeds, subseeds, strict=True):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)))
        if subseed_strength != 0:
            sub = torch.randn(shape, generator=torch.Generator().manual_seed(int(subseed)))
            x = (1 - subseed_strength) * x + subseed_strength * sub
        rows.append(x)
    return torch.stack(rows)


class Processing:
    """The ``StableDiffusionProcessing`` fields process_images reads and writes (modules/processing.py:146-260).
    ``do_not_save_grid`` is True as in an API call (its ``save_images`` defaults to False, api.py:459); an img2img
    job is one with ``init_images`` (StableDiffusionProcessingImg2Img)."""

    def __init__(self, sd_model, script_args: list, **kw) -> None:
        self.sd_model, self.script_args = sd_model, script_args
        self.prompt, self.negative_prompt, self.styles = "a cat", "", []
        self.batch_size, self.n_iter, self.seed, self.subseed, self.subseed_strength = 1, 1, -1, -1, 0.0
        self.width = self.height = 64
        self.sd_model_hash = None
        self.extra_generation_params: dict = {}
        self.override_settings: dict = {}
        self.override_settings_restore_afterwards = True
        self.do_not_save_grid = True
        self.is_hr_pass = False
        self.firstpass_image = None  # a dataclass field (processing.py:169); txt2img_upscale is set only by txt2img.py
        self.__dict__.update(kw)

    def setup_prompts(self) -> None:
        """``setup_prompts`` (processing.py:398-417): one prompt per image of the job."""
        self.all_prompts = self.batch_size * self.n_iter * [self.prompt]
        self.all_negative_prompts = [self.negative_prompt] * len(self.all_prompts)


def get_fixed_seed(seed) -> int:
    """``get_fixed_seed`` (processing.py:638-650): "" and None are -1, a string an int (-1 when it is none), -1 a
    random seed."""
    if seed == "" or seed is None:
        seed = -1
    elif isinstance(seed, str):
        try:
            seed = int(seed)
        except ValueError:
            seed = -1
    return int(torch.randint(0, 4294967294, ()).item()) if seed == -1 else seed


def _opts():
    """The stand-in ``modules.shared.opts`` (tests/forge_modules), which Forge's processing.py reads as ``opts``."""
    from modules import shared

    return shared.opts


def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0,
                    use_main_prompt=False, index=None, all_negative_prompts=None) -> dict:  # fmt: skip
    """``create_infotext`` (processing.py:668-796) as the dict Forge joins into the last infotext line: the index is
    0 for the grid (``use_main_prompt``) or ``position_in_batch + iteration * p.batch_size`` when not given
    (:713-716); "Seed" is ``all_seeds[index]``, "Model hash" only with ``opts.add_model_hash_to_info`` (:752),
    "Variation seed" only with a variation strength, "Size" WxH, then ``p.extra_generation_params``; a list value
    becomes ``value[index]``, a callable is called with the function's locals, None drops the key, and a value that
    raises is reported and dropped (:782-790)."""
    if use_main_prompt:
        index = 0
    elif index is None:
        index = position_in_batch + iteration * p.batch_size
    generation_params = {
        "Seed": p.all_seeds[0] if use_main_prompt else all_seeds[index],
        "Size": f"{p.width}x{p.height}",
        "Model hash": p.sd_model_hash if _opts().add_model_hash_to_info else None,
        "Variation seed": (
            None if p.subseed_strength == 0 else (p.all_subseeds[0] if use_main_prompt else all_subseeds[index])
        ),
        "Variation seed strength": None if p.subseed_strength == 0 else p.subseed_strength,
        **p.extra_generation_params,
    }
    for key, value in generation_params.items():
        try:
            if isinstance(value, list):
                generation_params[key] = value[index]
            elif callable(value):
                generation_params[key] = value(**locals())
        except Exception:  # noqa: BLE001 - Forge: errors.report(f'Error creating infotext for key "{key}"')
            generation_params[key] = None
    return {k: v for k, v in generation_params.items() if v is not None}


#: infotext_utils.py:20 ``re_imagesize``.
RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")


def parse_generation_parameters(infotext: dict) -> dict:
    """What ``parse_generation_parameters`` (modules/infotext_utils.py:251-330) gives back for an infotext line
    (here the dict :func:`create_infotext` returns, so no quoting): every value as text, and every "NxM" value, not
    only "Size", split into "<key>-1" and "<key>-2" (:311-314)."""
    params = {}
    for key, value in infotext.items():
        match = RE_IMAGESIZE.match(str(value))
        if match is not None:
            params[f"{key}-1"], params[f"{key}-2"] = match.group(1), match.group(2)
        else:
            params[key] = str(value)
    return params


class Processed:
    """``Processed.__init__`` (processing.py:519-571): the result's seed and lists default to the job's;
    ``infotext(p, index)`` (:612-613) is the params.txt / no-image infotext."""

    def __init__(self, p, images_list, seed=-1, info="", subseed=None, index_of_first_image=0, infotexts=None):
        self.images, self.seed, self.subseed, self.info = images_list, seed, subseed, info
        self.batch_size, self.index_of_first_image = p.batch_size, index_of_first_image
        self.extra_generation_params = p.extra_generation_params
        self.all_prompts, self.all_negative_prompts = p.all_prompts, p.all_negative_prompts
        self.all_seeds, self.all_subseeds = p.all_seeds, p.all_subseeds
        self.infotexts = infotexts or [info] * len(images_list)

    def infotext(self, p, index: int) -> dict:
        position, iteration = index % self.batch_size, index // self.batch_size
        return create_infotext(
            p, self.all_prompts, self.all_seeds, self.all_subseeds, [], iteration=iteration, position_in_batch=position
        )


class PostprocessBatchListArgs:
    """``PostprocessBatchListArgs`` (modules/scripts.py:43-45)."""

    def __init__(self, images) -> None:
        self.images = images


def process_images(p: Processing, sample) -> Processed:
    """``process_images`` (processing.py:815-848): before_process (:817), the options in ``p.override_settings``
    applied through the API's set_config (:820-829) and restored afterwards unless
    ``p.override_settings_restore_afterwards`` is False (:846-847), around :func:`process_images_inner`."""
    from modules import shared

    p.scripts.before_process(p)
    opts = shared.opts
    stored = {k: opts.data[k] for k in p.override_settings if k in opts.data}  # (Forge's get_default is unreachable)
    try:
        for key, value in p.override_settings.items():
            if key in opts.data_labels:
                opts.set(key, value, is_api=True)
        return process_images_inner(p, sample)
    finally:
        if p.override_settings_restore_afterwards:
            for key, value in stored.items():
                opts.set(key, value)


def process_images_inner(p: Processing, sample) -> Processed:
    """``process_images_inner`` (processing.py:851-1157) in Forge's order: the fixed seeds, prompts and the job's
    seed lists (:870-899); process (:906); per batch n (:924): "Skip" cleared and "Interrupt" / "Stop generating"
    ending the job (:927-931), the forge_objects reset (:937), the batch slices (:938-941), before_process_batch
    (:946), process_batch (:960), params.txt's infotext for n == 0 (:966-973), ``p.sample`` (:991), which calls
    process_before_every_sampling, then post_sample (:998-1001), then :func:`_finish_batch`; the no-image
    infotext (:1117-1118), the grid (:1122-1137), Processed with the job's first seed (:1144-1152); postprocess
    (:1155). ``sample(p, noise)`` is the sampler; images are its samples. Records every sampled row in
    ``p.sampled`` (what the run cost) and params.txt's infotext in ``p.params_txt``."""
    from modules import shared

    runner, state = p.scripts, shared.state
    seed, subseed = get_fixed_seed(p.seed), get_fixed_seed(p.subseed)
    p.setup_prompts()
    p.all_seeds = [int(seed) + (x if p.subseed_strength == 0 else 0) for x in range(len(p.all_prompts))]
    p.all_subseeds = [int(subseed) + x for x in range(len(p.all_prompts))]
    runner.process(p)
    infotexts, output_images, p.sampled = [], [], 0
    original = p.sd_model.forge_objects.unet
    for n in range(p.n_iter):
        p.iteration = n
        state.skipped = False
        if state.interrupted or state.stopping_generation:
            break
        p.sd_model.forge_objects.unet = original
        batch = slice(n * p.batch_size, (n + 1) * p.batch_size)
        p.prompts, p.negative_prompts = p.all_prompts[batch], p.all_negative_prompts[batch]
        p.seeds, p.subseeds = p.all_seeds[batch], p.all_subseeds[batch]
        runner.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
        if len(p.prompts) == 0:
            break
        runner.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
        if n == 0:
            p.params_txt = Processed(p, []).infotext(p, 0)
        samples = sample(p, image_noise(p.seeds, p.subseeds, p.subseed_strength))  # process_before_every_sampling
        p.sampled += len(samples)
        ps = _post_sample_args(samples)
        runner.post_sample(p, ps)
        _finish_batch(p, ps.samples, n, infotexts, output_images)
    if not infotexts:
        infotexts.append(Processed(p, []).infotext(p, 0))
    index_of_first_image = 0
    wanted = len(output_images) >= 2 or not shared.opts.grid_only_if_multiple
    if shared.opts.return_grid and not p.do_not_save_grid and wanted:
        infotexts.insert(0, create_infotext(p, p.prompts, p.seeds, p.subseeds, use_main_prompt=True,
                                            all_negative_prompts=p.negative_prompts))  # fmt: skip
        output_images.insert(0, torch.stack(output_images).mean(0))  # the grid: a stand-in image
        index_of_first_image = 1
    res = Processed(p, output_images, seed=p.all_seeds[0], info=infotexts[0], subseed=p.all_subseeds[0],
                    index_of_first_image=index_of_first_image, infotexts=infotexts)  # fmt: skip
    p.scripts.postprocess(p, res)
    p.sd_model.forge_objects.unet = original
    return res


def _finish_batch(p: Processing, samples, n: int, infotexts: list, output_images: list) -> None:
    """The end of batch n (processing.py:1022-1097): postprocess_batch (:1022), the prompts re-sliced (:1024-1025,
    seeds not), postprocess_batch_list (:1027-1029), then per image left: postprocess_image with the index
    ``i + p.iteration * p.batch_size`` (:1054-1055) and its infotext (:1031-1032, :1094-1097)."""
    runner, batch = p.scripts, slice(n * p.batch_size, (n + 1) * p.batch_size)
    runner.postprocess_batch(p, images=samples, batch_number=n)
    p.prompts, p.negative_prompts = p.all_prompts[batch], p.all_negative_prompts[batch]
    batch_params = PostprocessBatchListArgs(list(samples))
    runner.postprocess_batch_list(p, batch_params, batch_number=n)
    for i, image in enumerate(batch_params.images):
        p.batch_index = i
        pp = _postprocess_image_args(image, i + p.iteration * p.batch_size)
        runner.postprocess_image(p, pp)
        infotexts.append(create_infotext(p, p.prompts, p.seeds, p.subseeds, index=i,
                                         all_negative_prompts=p.negative_prompts))  # fmt: skip
        output_images.append(pp.image)


def _postprocess_image_args(image, index: int):
    """``scripts.PostprocessImageArgs(image, index)`` (processing.py:1054)."""
    from modules.scripts import PostprocessImageArgs

    return PostprocessImageArgs(image, index)


def _post_sample_args(samples):
    """``scripts.PostSampleArgs(samples_ddim)`` (processing.py:999)."""
    from modules.scripts import PostSampleArgs  # the stand-in modules package (tests/forge_modules)

    return PostSampleArgs(samples)
