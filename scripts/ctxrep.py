"""Contextual Repulsion for Stable Diffusion WebUI Forge: the accordion, infotext, XYZ axes and API arguments.

UI and wiring only. The arguments are converted and validated by ``lib_ctxrep.integrations.forge_args``; the
repulsion itself is ``lib_ctxrep.integrations.forge.ForgeRepulsion``, installed on a clone of
``p.sd_model.forge_objects.unet`` before every sampling (Forge discards the clone afterwards). Block hooks exist only
during in-window model calls, so nothing stays on the shared model after a generation, an error or an interrupt.
"""

from __future__ import annotations

import logging

import gradio as gr
from modules import script_callbacks, scripts
from modules.ui_components import InputAccordion

from lib_ctxrep.integrations import forge_args
from lib_ctxrep.integrations.forge import ForgeRepulsion

logger = logging.getLogger("lib_ctxrep")
PREFIX = "[Contextual Repulsion]"

#: Attributes an XYZ axis sets on ``p``; each overrides the UI value of the same argument.
XYZ_FIELDS = {"strength": "ctxrep_strength", "window": "ctxrep_window", "blocks": "ctxrep_blocks"}


class ContextualRepulsionScript(scripts.Script):
    """Always-on script: one accordion in txt2img and img2img, off by default."""

    sorting_priority = 14

    def title(self) -> str:
        return forge_args.TITLE

    def show(self, is_img2img: bool):
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list:
        tab = "img2img" if is_img2img else "txt2img"
        d = forge_args.DEFAULTS

        def eid(name: str) -> str:
            return f"ctxrep_{tab}_{name}"

        with InputAccordion(False, label=self.title(), elem_id=eid("enabled")) as enabled:
            gr.Markdown(
                "Makes the images of one batch differ in composition, pose and style (Flux, Chroma, SD3/SD3.5, "
                "Flux Kontext): during the first steps, the batch's text-stream tokens are pushed apart after each "
                "dual-stream block."
            )
            with gr.Row():
                strength = gr.Slider(
                    0.0, 0.5, step=0.005, value=d["strength"], label="Strength", elem_id=eid("strength")
                )
                window = gr.Slider(0.01, 1.0, step=0.01, value=d["window"], label="Window", elem_id=eid("window"))
            with gr.Row():
                blocks = gr.Dropdown(
                    list(forge_args.BLOCK_PRESETS), value=d["blocks"], label="Blocks", elem_id=eid("blocks")
                )
                custom_blocks = gr.Textbox(
                    value=d["custom_blocks"], label="Block range", placeholder="6:13", visible=False,
                    elem_id=eid("custom_blocks"),
                )  # fmt: skip
                single_blocks = gr.Radio(
                    list(forge_args.SINGLE_MODES), value=d["single_blocks"], label="Flux single blocks",
                    elem_id=eid("single_blocks"),
                )  # fmt: skip
            with gr.Row():
                memory = gr.Checkbox(value=d["memory"], label="Cross-batch memory", elem_id=eid("memory"))
                hires = gr.Checkbox(value=d["hires"], label="Apply on the hires pass", elem_id=eid("hires"))
            with gr.Accordion("Advanced: the paper's parameters", open=False, elem_id=eid("advanced")):
                with gr.Row():
                    eta = gr.Number(value=d["eta"], label="Raw eta (0 = use strength)", elem_id=eid("eta"))
                    iterations = gr.Slider(
                        1, 100, step=1, value=d["iterations"], label="Inner iterations M", elem_id=eid("iterations")
                    )
        blocks.change(
            fn=lambda value: gr.update(visible=value == "custom"), inputs=[blocks], outputs=[custom_blocks],
            show_progress=False,
        )  # fmt: skip

        components = [enabled, strength, window, blocks, custom_blocks, single_blocks, memory, hires, eta, iterations]
        self.infotext_fields = [
            (component, lambda params, name=name: forge_args.from_infotext(params)[name])
            for name, component in zip(forge_args.ARG_NAMES, components, strict=True)
        ]
        self.paste_field_names = list(forge_args.INFOTEXT_KEYS.values())
        return components

    # ---- per generation -------------------------------------------------------------------------------------------
    def process(self, p, *args) -> None:
        """Read and validate the settings once per generation; a new job (and cross-batch memory) per generation."""
        p._ctxrep_settings = None
        p._ctxrep_job = None
        values = forge_args.normalise(list(args))
        for name, field in XYZ_FIELDS.items():
            if hasattr(p, field):
                values[name] = getattr(p, field)
        if getattr(p, "ctxrep_enabled", False):
            values["enabled"] = True
        if not values["enabled"]:
            return
        try:
            settings = forge_args.parse(values)
        except forge_args.ArgumentError as error:
            self._report(p, f"{error}; the generation continues without it")
            return
        p._ctxrep_settings = settings
        p._ctxrep_job = ForgeRepulsion(settings.config)

    def before_process_batch(self, p, *args, **kwargs) -> None:
        job = getattr(p, "_ctxrep_job", None)
        if job is not None and kwargs.get("batch_number", 0) > 0:
            job.engine.new_batch()  # the previous batch of this job becomes memory

    def process_before_every_sampling(self, p, *args, **kwargs) -> None:
        job = getattr(p, "_ctxrep_job", None)
        settings = getattr(p, "_ctxrep_settings", None)
        if job is None or settings is None:
            return
        if getattr(p, "is_hr_pass", False) and not settings.hires:
            return
        unet = p.sd_model.forge_objects.unet.clone()
        if not job.patch(unet):
            model = type(unet.model.diffusion_model).__name__
            self._report(
                p,
                f"{model} is not supported (it works on MM-DiT models: Flux, Chroma, SD3/SD3.5, Flux Kontext); "
                "the generation continues unmodified",
                info=True,
            )
            return
        p.sd_model.forge_objects.unet = unet
        p.extra_generation_params.update(forge_args.infotext(settings))

    def postprocess(self, p, processed, *args) -> None:
        job = getattr(p, "_ctxrep_job", None)
        if job is not None:
            job.close()
        p._ctxrep_job = None

    def _report(self, p, message: str, info: bool = False) -> None:
        text = f"{PREFIX} {message}"
        print(text)
        p.extra_generation_params["CtxRep note" if info else "CtxRep error"] = message
        try:
            (gr.Info if info else gr.Warning)(text)
        except Exception:  # outside a UI event (API calls): the console and the infotext carry the message
            pass


# ---- XYZ plot --------------------------------------------------------------------------------------------------
def _xyz_module():
    for data in scripts.scripts_data:
        if data.script_class.__module__ in ("xyz_grid.py", "scripts.xyz_grid") and hasattr(data, "module"):
            return data.module
    return None


def _apply(field: str):
    def apply(p, value, values):
        setattr(p, field, value)
        p.ctxrep_enabled = True

    return apply


def _confirm(name: str):
    def confirm(p, values):
        for value in values:
            forge_args.parse({"enabled": True, name: value})

    return confirm


def register_xyz_axes() -> None:
    """Add the "[CtxRep]" axes to the X/Y/Z plot script (Forge: scripts/xyz_grid.py; Neo: scripts.xyz_grid)."""
    try:
        xyz = _xyz_module()
        if xyz is None or any(str(o.label).startswith("[CtxRep]") for o in xyz.axis_options):
            return
        xyz.axis_options.extend(
            [
                xyz.AxisOption(
                    "[CtxRep] Strength", float, _apply(XYZ_FIELDS["strength"]), confirm=_confirm("strength")
                ),
                xyz.AxisOption("[CtxRep] Window", float, _apply(XYZ_FIELDS["window"]), confirm=_confirm("window")),
                xyz.AxisOption(
                    "[CtxRep] Block preset",
                    str,
                    _apply(XYZ_FIELDS["blocks"]),
                    confirm=_confirm("blocks"),
                    choices=lambda: list(forge_args.BLOCK_PRESETS)[:-1],
                ),  # fmt: skip
            ]
        )
    except Exception as error:  # a broken X/Y/Z plot must never break the extension
        print(f"{PREFIX} X/Y/Z plot axes not registered: {error}")


script_callbacks.on_before_ui(register_xyz_axes)
