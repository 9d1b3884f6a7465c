"""Contextual Repulsion for Stable Diffusion WebUI Forge: the accordion, infotext, XYZ axes, API arguments, Settings.

UI and wiring only. The arguments are converted and validated by ``lib_ctxrep.integrations.forge_args``. Both
methods are installed on a clone of ``p.sd_model.forge_objects.unet`` before every sampling (Forge discards the clone
afterwards): contextual repulsion (``ForgeRepulsion``: block hooks that exist only during in-window model calls) on
text-stream DiTs (the block map's Forge / Neo families), SPELL (``ForgeSpell``: a post-CFG function) on any model.
Nothing stays on the shared model after a generation, an error or an interrupt. Protected sets are read only inside
the folder configured in Settings (``lib_ctxrep.protected``).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Callable
from typing import Any

import gradio as gr
from modules import script_callbacks, scripts, shared
from modules.ui_components import InputAccordion

from lib_ctxrep import families
from lib_ctxrep.integrations import forge_args, forge_reproduce
from lib_ctxrep.integrations.forge import ForgeRepulsion, ForgeSpell
from lib_ctxrep.protected import ProtectedSetError, forge_latent_space, load_protected_set
from lib_ctxrep.settings import SETTINGS
from lib_ctxrep.spell import DEFAULT_EXACT_LIMIT, DEFAULT_NPROBE

logger = logging.getLogger("lib_ctxrep")
PREFIX = "[Contextual Repulsion]"

#: Attributes an XYZ axis sets on ``p``; each overrides the UI value of the same argument.
XYZ_FIELDS = {
    "step_strength": "ctxrep_step_strength",
    "window": "ctxrep_window",
    "blocks": "ctxrep_blocks",
    "spell_radius": "ctxrep_spell_radius",
}
#: Settings (Settings > Contextual Repulsion). The root cannot be changed through the API (restrict_api).
ROOT_OPTION = "ctxrep_protected_root"
NPROBE_OPTION = "ctxrep_spell_nprobe"
#: Settings: the most images a rebuild of a pasted image's batch may generate (its batch and the earlier ones).
REBUILD_MAX_OPTION = "ctxrep_rebuild_max_images"
REBUILD_MAX_DEFAULT = 32
#: The batch size slider's maximum (modules/ui.py:318 and :708); a ui-config.json maximum replaces it when the slider
#: was created (``show`` asks Forge for it).
BATCH_SIZE_MAX = 8
#: The largest nprobe in Settings: a quarter of the sqrt(K) = 1000 cells of a million-latent set; searching more cells
#: approaches the cost of an exact scan.
NPROBE_MAX = 256


#: What the accordion and the console say on a webui without Forge's backend (AUTOMATIC1111's): the extension patches
#: Forge's UNet patcher (``p.sd_model.forge_objects``), which only Forge main and Forge Neo have.
NEEDS_FORGE = (
    "needs Forge (main or Neo): this webui has no Forge backend (no modules_forge, no sd_model.forge_objects), so "
    "the extension does nothing here and writes nothing into the infotext"
)


def _on_forge() -> bool:
    """Whether this webui is Forge main or Forge Neo (both ship the ``modules_forge`` package; A1111 does not)."""
    if "modules_forge" in sys.modules:
        return sys.modules["modules_forge"] is not None
    try:
        return importlib.util.find_spec("modules_forge") is not None
    except (ImportError, ValueError):
        return False


def _makes_video(p: Any) -> bool:
    """Whether Forge Neo runs a video model (Wan), whose batch is one video's frames: its engine sets ``is_wan`` and
    its loader ``backend.args.dynamic_args.wan`` (modules/processing.py). Neo's Krea 2 engine also sets ``is_wan``,
    for its latent layout only, and makes images."""
    if not getattr(getattr(p, "sd_model", None), "is_wan", False):
        return False
    try:
        from backend.args import dynamic_args
    except ImportError:
        return True  # a Neo before dynamic_args.wan: is_wan meant Wan
    return bool(getattr(dynamic_args, "wan", True))


def _on_webui_with_forge(p: Any) -> bool:
    """Whether this generation runs on Forge's backend: Forge main or Neo, whose ``sd_model`` has ``forge_objects``
    (AUTOMATIC1111's LatentDiffusion has none, and its modules/scripts.py never calls
    process_before_every_sampling)."""
    return _on_forge() and hasattr(getattr(p, "sd_model", None), "forge_objects")


#: The accordion's opening paragraph.
INTRO = (
    "Makes the images of one batch differ in composition, pose and style. **Contextual repulsion** "
    f"({', '.join(families.families('forge'))}): during the first steps, the "
    "batch's text-stream tokens are pushed apart after each block. **SPELL** (any model): a sample whose "
    "predicted image comes too close to another sample, an earlier batch or a protected image is pushed "
    "away."
)


def _control(kind: Callable, name: str, d: dict[str, Any], eid: Callable[[str], str], **kwargs: Any) -> Any:
    """A gradio control for setting ``name``: its label (and range or choices) from ``lib_ctxrep.settings``, its
    value from ``d``; the tooltip is set from the same definition (javascript/ctxrep_hints.js)."""
    setting = SETTINGS[name]
    if setting.bounds is not None and kind is gr.Slider:
        low, high, step = setting.bounds
        kwargs.update(minimum=low, maximum=high, step=step)
    if setting.choices is not None:
        kwargs["choices"] = list(setting.choices)
    return kind(value=d[name], label=setting.label, elem_id=eid(name), **kwargs)


def _repulsion_controls(d: dict[str, Any], eid: Callable[[str], str]) -> dict[str, Any]:
    """Contextual repulsion's main controls (strength, window, blocks, memory, hires), by argument name."""
    controls = {"repulsion": _control(gr.Checkbox, "repulsion", d, eid)}
    with gr.Row():
        controls["step_strength"] = _control(gr.Slider, "step_strength", d, eid)
        controls["window"] = _control(gr.Slider, "window", d, eid)
    with gr.Row():
        controls["blocks"] = _control(gr.Dropdown, "blocks", d, eid)
        controls["custom_blocks"] = _control(gr.Textbox, "custom_blocks", d, eid, placeholder="6:13", visible=False)
        controls["single_blocks"] = _control(gr.Radio, "single_blocks", d, eid)
    with gr.Row():
        controls["memory"] = _control(gr.Checkbox, "memory", d, eid)
        controls["hires"] = _control(gr.Checkbox, "hires", d, eid)
    return controls


def _advanced_controls(d: dict[str, Any], eid: Callable[[str], str]) -> dict[str, Any]:
    """The paper's own parameters (per-block strength, raw eta, inner iterations), by argument name."""
    with gr.Row():
        return {
            "block_strength": _control(
                gr.Textbox, "block_strength", d, eid, placeholder="empty: the step strength, shared out"
            ),
            "eta": _control(gr.Number, "eta", d, eid),
            "iterations": _control(gr.Slider, "iterations", d, eid),
        }


def _spell_controls(d: dict[str, Any], eid: Callable[[str], str]) -> dict[str, Any]:
    """SPELL's controls (switch, radius, overcompensation, protected set), by argument name."""
    with gr.Row():
        controls = {name: _control(kind, name, d, eid) for kind, name in SPELL_CONTROLS}
    controls["spell_protected"] = _control(
        gr.Textbox, "spell_protected", d, eid,
        placeholder="a folder of images or a .safetensors latent set, inside the folder set in Settings",
    )  # fmt: skip
    return controls


SPELL_CONTROLS = ((gr.Checkbox, "spell"), (gr.Slider, "spell_radius"), (gr.Slider, "spell_overcompensation"))


class ContextualRepulsionScript(scripts.Script):
    """Always-on script: one accordion in txt2img and img2img, off by default."""

    #: Forge orders always-on scripts by this: 14 places the accordion among Forge's own sampling tweaks (Perturbed
    #: Attention 13, Kohya HRFix 14, Latent Modifier 15).
    sorting_priority = 14

    def title(self) -> str:
        return forge_args.TITLE

    def show(self, is_img2img: bool) -> Any:
        tab = "img2img" if is_img2img else "txt2img"
        if hasattr(self, "on_after_component"):  # the batch size slider, for its (ui-config) maximum
            self.on_after_component(self._remember_batch_size, elem_id=f"{tab}_batch_size")
        return scripts.AlwaysVisible

    def _remember_batch_size(self, created: Any) -> None:
        self._batch_size_slider = created.component

    def _max_batch_size(self) -> int:
        """The largest batch size the UI allows (its slider's maximum), Forge's default when there is no UI."""
        slider = getattr(self, "_batch_size_slider", None)
        maximum = forge_reproduce.as_int(getattr(slider, "maximum", None))
        return maximum if maximum is not None and maximum >= 1 else BATCH_SIZE_MAX

    def ui(self, is_img2img: bool) -> list:
        tab = "img2img" if is_img2img else "txt2img"
        d = forge_args.DEFAULTS

        def eid(name: str) -> str:
            return f"ctxrep_{tab}_{name}"

        with InputAccordion(False, label=self.title(), elem_id=eid("enabled")) as enabled:
            gr.Markdown(INTRO if _on_forge() else f"**Contextual Repulsion {NEEDS_FORGE}.**")
            controls = {"enabled": enabled, **_repulsion_controls(d, eid)}
            with gr.Accordion("Advanced: the paper's parameters", open=False, elem_id=eid("advanced")):
                controls.update(_advanced_controls(d, eid))
            with gr.Accordion("SPELL: sparse repellency (any model)", open=False, elem_id=eid("spell_group")):
                controls.update(_spell_controls(d, eid))
            controls["reproduce"] = _control(gr.Checkbox, "reproduce", d, eid)
            controls["pasted_batch"] = gr.Textbox(
                value=d["pasted_batch"], visible=False, label="Pasted batch", elem_id=eid("pasted_batch")
            )
        blocks, custom_blocks = controls["blocks"], controls["custom_blocks"]
        blocks.change(
            fn=lambda value: gr.update(visible=value == "custom"), inputs=[blocks], outputs=[custom_blocks],
            show_progress=False,
        )  # fmt: skip

        components = [controls[name] for name in forge_args.ARG_NAMES]
        # "reproduce" is the user's choice, not a property of the image: a paste leaves it as it is. The hidden
        # "pasted batch" record is filled on every paste ("" clears a stale one); it is not copied between tabs.
        self.infotext_fields = [
            (component, lambda params, name=name: forge_args.from_infotext(params)[name])
            for name, component in zip(forge_args.ARG_NAMES, components, strict=True)
            if name != "reproduce"
        ]
        self.paste_field_names = [*forge_args.INFOTEXT_KEYS.values(), *forge_args.OLD_INFOTEXT_KEYS]
        return components

    # ---- reproducing one pasted image of a coupled batch ------------------------------------------------------------
    def before_process(self, p: Any, *args: Any) -> None:
        """Before Forge computes seeds and prompts: a pasted image of a coupled batch, at batch size and count 1 with
        its own seed, becomes its batch again (and the earlier batches its memory needs) (``forge_reproduce``).
        Nothing is rebuilt when the settings are invalid or both methods are off (process() says so)."""
        p._ctxrep_rebuild = None
        if not _on_webui_with_forge(p):
            return  # process() says that the extension needs Forge
        try:
            values = self._values(p, args)
            if not forge_args.is_enabled(values) or not str(values["pasted_batch"] or "").strip():
                return
            settings = forge_args.parse(values)
        except forge_args.ArgumentError:
            return  # process() reports invalid arguments
        if not settings.repulsion and settings.spell is None:
            return  # process() reports that both methods are off
        try:
            pasted = forge_args.parse_pasted_batch(str(values["pasted_batch"]))
        except forge_args.ArgumentError as error:
            if forge_reproduce.own_seed_or_none(p) is not None and forge_reproduce.is_single(p):
                message = f"the pasted image's batch cannot be rebuilt: {error}; it runs alone as a plain image"
                self._report(p, message, info=True)
            return
        limit = int(getattr(shared.opts, REBUILD_MAX_OPTION, REBUILD_MAX_DEFAULT))
        problem = forge_reproduce.rebuild_problem(p, pasted, limit, self._max_batch_size(), video=_makes_video(p))
        if problem == "":
            return  # not this image any more (another seed, an upscale of a gallery image, ...): nothing to say
        if problem is not None:
            self._report(p, f"{problem}; the pasted image runs alone, so it will differ from the original", info=True)
            return
        if not settings.values["reproduce"]:
            self._report(
                p,
                f"'Reproduce pasted batch images' is off: the pasted image runs alone, without the "
                f"{pasted.images - 1} image(s) it was generated with, so it will differ from the original",
                info=True,
            )
            return
        p._ctxrep_rebuild = forge_reproduce.Rebuild.start(p, pasted)
        print(f"{PREFIX} rebuilding the pasted image's batch: {pasted.images} images, batch size {pasted.size}")

    def postprocess_batch_list(self, p: Any, pp: Any, *args: Any, **kwargs: Any) -> None:
        """A rebuild keeps only the pasted image: earlier batches give none, the last batch gives image k; the
        note says whether it was reproduced (not when a batch was interrupted or skipped)."""
        rebuild = getattr(p, "_ctxrep_rebuild", None)
        if rebuild is None:
            return
        if len(pp.images) != rebuild.pasted.size:
            self._report(
                p,
                f"another script changed the batch to {len(pp.images)} images; the images of this batch are kept, "
                "so the pasted image was not reproduced",
            )
            p._ctxrep_rebuild = None
            return
        number = kwargs.get("batch_number", 0)
        pp.images = rebuild.keep(p, pp.images, number, _cut_short(final=number >= rebuild.pasted.earlier))
        if rebuild.cut is not None or rebuild.kept:
            self._report(p, rebuild.outcome(getattr(p, "enable_hr", False)), info=True)

    # ---- per generation -------------------------------------------------------------------------------------------
    def process(self, p: Any, *args: Any) -> None:
        """Read and validate the settings once per generation; a new job (and cross-batch memory) per generation."""
        p._ctxrep_settings = None
        p._ctxrep_job = None
        p._ctxrep_spell = None
        p._ctxrep_batch = None
        settings = self._settings(p, args)
        if settings is not None and not _on_webui_with_forge(p):
            print(f"{PREFIX} {NEEDS_FORGE}")
            return
        self._check_rebuild(p, settings)
        if settings is None:
            return
        p._ctxrep_settings = settings
        p._ctxrep_batch = forge_reproduce.BatchKeys.start(p)
        if p._ctxrep_batch is not None:
            for key in forge_args.BATCH_KEYS.values():
                p.extra_generation_params[key] = forge_reproduce.batch_key(key)
        if settings.repulsion:
            p._ctxrep_job = ForgeRepulsion(settings.config)
        if settings.spell is not None:
            p._ctxrep_spell = ForgeSpell(settings.spell)
            p._ctxrep_protected_tried = False

    @staticmethod
    def _values(p: Any, args: Any) -> dict[str, Any]:
        """The normalised script arguments with the X/Y/Z axes' values on ``p`` applied."""
        values = forge_args.normalise(list(args))
        for name, field in XYZ_FIELDS.items():
            if hasattr(p, field):
                values[name] = getattr(p, field)
        if getattr(p, "ctxrep_enabled", False):
            values["enabled"] = True
        if hasattr(p, XYZ_FIELDS["spell_radius"]):
            values["spell"] = True
        return values

    def _settings(self, p: Any, args: Any) -> forge_args.ScriptSettings | None:
        """The generation's settings; None (and an error or note saying why) when off, invalid or with no method."""
        try:
            values = self._values(p, args)
            if not forge_args.is_enabled(values):
                return None
            settings = forge_args.parse(values)
        except forge_args.ArgumentError as error:
            self._report(p, f"{error}; the generation continues without it")
            return None
        if not settings.repulsion and settings.spell is None:
            self._report(p, "both methods are off (contextual repulsion and SPELL); nothing was changed", info=True)
            return None
        return settings

    def before_process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        job = getattr(p, "_ctxrep_job", None)
        if job is not None and kwargs.get("batch_number", 0) > 0:
            job.engine.new_batch()  # the previous batch of this job becomes memory

    def process_before_every_sampling(self, p: Any, *args: Any, **kwargs: Any) -> None:
        settings = getattr(p, "_ctxrep_settings", None)
        if settings is None:
            return
        job = getattr(p, "_ctxrep_job", None)
        spell = getattr(p, "_ctxrep_spell", None)
        hires = getattr(p, "is_hr_pass", False)
        if hires:
            spell = None  # SPELL shapes the first pass; the hires pass refines it
            if not settings.hires:
                job = None
        if job is None and spell is None:
            return
        unet = p.sd_model.forge_objects.unet.clone()
        repulsion_on = job is not None and job.patch(unet)
        if job is not None and not repulsion_on:
            alternative = "SPELL still runs" if spell is not None else "SPELL (in this accordion) works on every model"
            reason = families.unsupported_reason(unet.model.diffusion_model, "forge")
            self._report(p, f"{reason}; {alternative}; the generation continues", info=True)
        if spell is not None:
            sample = kwargs.get("x")
            if settings.protected and not p._ctxrep_protected_tried:
                p._ctxrep_protected_tried = True
                self._load_protected(p, spell, settings.protected, sample)
            spell.patch(unet)
            if sample is not None:
                radius = spell.radius(sample.shape[1:])
                p.extra_generation_params[forge_args.SPELL_RADIUS_ABS_KEY] = float(f"{radius:.4g}")
        if not repulsion_on and spell is None:
            return
        p.sd_model.forge_objects.unet = unet
        record = getattr(p, "_ctxrep_batch", None)
        if record is not None and not hires:
            record.coupled = True
            record.cross_batch = record.cross_batch or spell is not None or (repulsion_on and settings.config.memory)
        info = forge_args.infotext(settings, repulsion=repulsion_on, spell=spell is not None)
        if repulsion_on:
            info[forge_args.ARCHITECTURE_KEY] = job.architecture.family
        p.extra_generation_params.update(info)

    def _load_protected(self, p: Any, spell: ForgeSpell, path: str, sample: Any) -> None:
        """Load the protected set once per generation; on failure SPELL runs without it and the message says why."""
        if sample is None:
            self._report(p, "the protected set needs the latent shape, which this Forge did not pass; not used")
            return
        sd_model = p.sd_model

        def encode(images: Any) -> Any:
            return sd_model.encode_first_stage(images)

        def progress(done: int, total: int) -> None:
            print(f"{PREFIX} indexing the protected set: {done}/{total}", end="\r" if done < total else "\n")

        try:
            loaded = load_protected_set(
                path,
                getattr(shared.opts, ROOT_OPTION, ""),
                latent_space=forge_latent_space(sd_model),
                sample_shape=tuple(sample.shape[1:]),
                width=p.width,
                height=p.height,
                encode=encode,
                nprobe=int(getattr(shared.opts, NPROBE_OPTION, DEFAULT_NPROBE)),
                progress=progress,
            )
        except (ProtectedSetError, ImportError) as error:
            self._report(p, f"SPELL protected set: {error}; SPELL runs without it")
            return
        spell.engine.protected = loaded.references
        kind = "approximate (faiss) search" if loaded.references.approximate else "exact search"
        print(f"{PREFIX} SPELL protected set {loaded.source!r}: {len(loaded)} latents, {kind}")
        for note in loaded.notes:
            self._report(p, f"SPELL protected set: {note}", info=True)

    def post_sample(self, p: Any, ps: Any, *args: Any) -> None:
        """After each batch's sampling: SPELL remembers the batch and reports its sparsity."""
        spell = getattr(p, "_ctxrep_spell", None)
        if spell is None or getattr(ps, "samples", None) is None:
            return
        stats = spell.end_batch(ps.samples)
        if stats.calls:
            print(f"{PREFIX} SPELL pushed {stats.summary()}")
            p.extra_generation_params[forge_args.SPELL_PUSHED_KEY] = stats.summary()

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        for name in ("_ctxrep_job", "_ctxrep_spell"):
            job = getattr(p, name, None)
            if job is not None:
                job.close()
            setattr(p, name, None)
        p._ctxrep_batch = None  # later infotexts of this p (the X/Y/Z grid's) are no batch image's
        rebuild = getattr(p, "_ctxrep_rebuild", None)
        p._ctxrep_rebuild = None
        if rebuild is not None:
            if not rebuild.kept and rebuild.cut is None:  # stopped between batches: no hook saw it
                self._report(p, rebuild.outcome(), info=True)
            rebuild.finish(p, processed)

    def _check_rebuild(self, p: Any, settings: forge_args.ScriptSettings | None) -> None:
        """In process(), once Forge has loaded the model: a rebuild without settings to run (before_process checked
        the same arguments; another script may change them), or on another model than the pasted image's, would not
        give that image, so it goes back to a plain single image."""
        rebuild = getattr(p, "_ctxrep_rebuild", None)
        if rebuild is None:
            return
        pasted, current = rebuild.pasted, getattr(p, "sd_model_hash", None)
        if settings is not None and (pasted.model_hash is None or not current or current == pasted.model_hash):
            return
        rebuild.cancel(p)
        p._ctxrep_rebuild = None
        if settings is None:
            return  # _settings said why
        self._report(
            p,
            f"the pasted image was made with model {pasted.model_hash}, this run uses {current}: its batch was not "
            "rebuilt; the image runs alone, so it will differ from the original",
            info=True,
        )

    def _report(self, p: Any, message: str, info: bool = False) -> None:
        text = f"{PREFIX} {message}"
        print(text)
        key = "CtxRep note" if info else "CtxRep error"
        previous = p.extra_generation_params.get(key)
        if previous and message in previous:
            return
        p.extra_generation_params[key] = f"{previous}; {message}" if previous else message
        try:
            (gr.Info if info else gr.Warning)(text)
        except Exception:  # outside a UI event (API calls): the console and the infotext carry the message
            pass


def add_settings() -> None:
    """Settings > Contextual Repulsion: the folder protected sets are read from (not settable through the API, so a
    webui exposed with --listen cannot be made to read elsewhere) and faiss's nprobe for large sets."""
    section = ("ctxrep", "Contextual Repulsion")
    shared.opts.add_option(
        ROOT_OPTION,
        shared.OptionInfo(
            "",
            "Folder that SPELL protected sets are read from (empty: protected sets off; nothing outside it is read)",
            section=section,
            restrict_api=True,
        ),
    )
    shared.opts.add_option(
        NPROBE_OPTION,
        shared.OptionInfo(
            DEFAULT_NPROBE,
            f"SPELL: cells searched per query in protected sets above {DEFAULT_EXACT_LIMIT // 1000}k latents "
            "(faiss nprobe)",
            gr.Slider,
            {"minimum": 1, "maximum": NPROBE_MAX, "step": 1},
            section=section,
        ),
    )
    shared.opts.add_option(
        REBUILD_MAX_OPTION,
        shared.OptionInfo(
            REBUILD_MAX_DEFAULT,
            "Reproducing a pasted batch image: the most images its rebuild may generate (its batch and the earlier "
            "batches its memory needs); above it, the image runs alone",
            gr.Slider,
            {"minimum": 1, "maximum": 512, "step": 1},
            section=section,
        ),
    )


def _cut_short(final: bool) -> str | None:
    """Why the batch that just sampled was cut short (Forge's shared.state: interrupt, skip), None when it ran in
    full; for an earlier batch of a rebuild (``final`` False) also "Stop generating", which ends the job before the
    pasted image's batch."""
    state = getattr(shared, "state", None)
    flags = (("interrupted", "interrupted"), ("skipped", "skipped"), ("stopping_generation", "stopped"))
    for flag, word in flags[:2] if final else flags:
        if getattr(state, flag, False):
            return f"the generation was {word}"
    return None


script_callbacks.on_ui_settings(add_settings)


# ---- XYZ plot --------------------------------------------------------------------------------------------------
def _xyz_module() -> Any:
    for data in scripts.scripts_data:
        if data.script_class.__module__ in ("xyz_grid.py", "scripts.xyz_grid") and hasattr(data, "module"):
            return data.module
    return None


def _apply(field: str) -> Callable:
    def apply(p: Any, value: Any, values: Any) -> None:
        setattr(p, field, value)
        p.ctxrep_enabled = True

    return apply


def _confirm(name: str) -> Callable:
    def confirm(p: Any, values: Any) -> None:
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
                    "[CtxRep] Step strength",
                    float,
                    _apply(XYZ_FIELDS["step_strength"]),
                    confirm=_confirm("step_strength"),
                ),
                xyz.AxisOption("[CtxRep] Window", float, _apply(XYZ_FIELDS["window"]), confirm=_confirm("window")),
                xyz.AxisOption(
                    "[CtxRep] Block preset",
                    str,
                    _apply(XYZ_FIELDS["blocks"]),
                    confirm=_confirm("blocks"),
                    choices=lambda: list(forge_args.BLOCK_PRESETS)[:-1],
                ),  # fmt: skip
                xyz.AxisOption(
                    "[CtxRep] SPELL radius",
                    float,
                    _apply(XYZ_FIELDS["spell_radius"]),
                    confirm=_confirm("spell_radius"),
                ),  # fmt: skip
            ]
        )
    except Exception as error:  # a broken X/Y/Z plot must never break the extension
        print(f"{PREFIX} X/Y/Z plot axes not registered: {error}")


script_callbacks.on_before_ui(register_xyz_axes)
