"""Code shared by ``tools/verify_forge.py`` (Forge main) and ``tools/verify_forge_neo.py`` (Forge Neo).

Not a script: both verification scripts put this directory on ``sys.path`` and import it. It holds the check
recorder, the scenario that runs the backend's ``sampling_function_inner`` on fixed inputs, hook counting, and the
checks every backend runs on a model (cases (a)-(e), a chained ``model_function_wrapper``, the shared patcher left
untouched, ``PredictorWindow`` on the backend's "simple" schedule).

It imports torch and ``lib_ctxrep`` only (it puts the repository root on ``sys.path`` for the latter), never Forge's
or Neo's ``backend``: each script puts its own backend on ``sys.path`` first and hands the imported modules in (any
object with the attributes ``condition``, ``sf`` and ``mm``: ``backend.sampling.condition``,
``backend.sampling.sampling_function`` and ``backend.memory_management``).
"""

from __future__ import annotations

import ast
import contextlib
import copy
import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from lib_ctxrep import RepulsionConfig  # noqa: E402
from lib_ctxrep.integrations.forge import ForgeRepulsion, ForgeSpell, PredictorWindow  # noqa: E402
from lib_ctxrep.spell import ReferenceSet, SpellConfig  # noqa: E402

B = 4  # rows per chunk (batch size)
STEPS = 20
SIGMA_IN, SIGMA_OUT = 1.0, 0.5
#: The blocks of the tiny Flux-like models (2 double-stream, 2 single-stream), by the engine's block names.
FLUX_BLOCKS = frozenset({"double.0", "double.1", "single.0", "single.1"})


def repulsion(**kwargs: Any) -> RepulsionConfig:
    """The repulsion settings of every case (strength 0.5, 4 iterations), with ``kwargs`` on top."""
    return RepulsionConfig(strength=0.5, iterations=4, **kwargs)


CONFIG = repulsion()


def tiny_flux_config() -> dict[str, Any]:
    """Constructor arguments shared by the tiny Flux-like models (hidden 64 = 2 heads x 32 = sum(axes_dim))."""
    return dict(
        in_channels=16,
        vec_in_dim=16,
        context_in_dim=32,
        hidden_size=64,
        mlp_ratio=4.0,
        num_heads=2,
        depth=2,
        depth_single_blocks=2,
        axes_dim=[8, 12, 12],
        theta=10000,
        qkv_bias=True,
    )


# --------------------------------------------------------------------------------------------------------------------
# Loading a backend
# --------------------------------------------------------------------------------------------------------------------
def die(message: str) -> None:
    print(message, file=sys.stderr)
    raise SystemExit(2)


def shrink_configs(tree: Path, configs: dict[str, dict]) -> None:
    """Overwrite sizes in the ``config.json`` of each component folder of ``configs`` (relative to ``tree``), refusing
    a config that lacks one of them (another version than the tool was written against)."""
    for component, sizes in configs.items():
        path = tree / component / "config.json"
        config = json.loads(path.read_text())
        missing = set(sizes) - set(config)
        if missing:
            die(f"{path}: no {sorted(missing)}; not the config this script was written against")
        path.write_text(json.dumps({**config, **sizes}, indent=2))


def load_function(path: Path, source: str, name: str) -> Callable:
    """One top-level function ``name`` of a backend file (``path``, text ``source``) that cannot be imported without
    the webui: compiled from the checkout's own source, not copied."""
    tree = ast.parse(source, str(path))
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    namespace: dict[str, Any] = {"torch": torch}
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    return namespace[name]


def git(root: Path, *args: str) -> str | None:
    """``git -C root args`` output, or None where git fails (not a git work tree, no git)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit(root: Path) -> str:
    out = git(root, "rev-parse", "HEAD")
    return out.strip()[:12] if out is not None else "unknown (not a git work tree)"


def prepare_model(model: torch.nn.Module, mm: Any, initial_device: torch.device) -> None:
    """What the backend's loader sets on a model before ``UnetPatcher.from_model`` (float32 throughout)."""
    model.storage_dtype = model.computation_dtype = torch.float32
    model.load_device = mm.get_torch_device()
    model.offload_device = mm.unet_offload_device()
    model.initial_device = initial_device


# --------------------------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------------------------
class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failures: list[str] = []

    def __call__(self, name: str, ok: bool, detail: Any = "") -> bool:
        ok = bool(ok)
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}" + (f"  ({detail})" if detail != "" else ""))
        if ok:
            self.passed += 1
        else:
            self.failures.append(f"{name}" + (f" ({detail})" if detail != "" else ""))
        return ok

    def report(self) -> int:
        """Print the verdict; the exit code (0: all passed, 1: failures)."""
        print()
        if self.failures:
            print(f"FAILED: {len(self.failures)} of {self.passed + len(self.failures)} checks")
            for f in self.failures:
                print(f"  - {f}")
            return 1
        print(f"VERIFIED: {self.passed} checks passed")
        return 0


def forward_hooks(diffusion_model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in diffusion_model.modules())


@contextlib.contextmanager
def removing(handles: Iterable[Any]) -> Iterator[None]:
    """Remove the hook ``handles`` when the block ends, however it ends."""
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def keep(store: dict, key: str, value: Any) -> None:
    """Record the first value seen for key (hooks must return None to leave the call alone)."""
    store.setdefault(key, value)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> str:
    return f"max |diff| {float((a - b).abs().max()):.3e}"


def stats_summary(job: ForgeRepulsion) -> str:
    stats = job.engine.stats
    blocks = sorted({s.block for s in stats})
    rows = sorted({s.rows for s in stats})
    return f"{len(stats)} stats, blocks {blocks}, branches {[s.branch for s in stats]}, rows {rows}"


class _NoFreeMemory:
    """backend.memory_management as seen by calc_cond_uncond_batch under low VRAM: no free memory at all, so every
    cond/uncond chunk goes to the model in a call of its own."""

    def __init__(self, module: Any) -> None:
        self._module = module

    def get_free_memory(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


class Spy:
    """Wraps the clone's model_function_wrapper: records cond_or_uncond, c keys, and hooks attached inside the call."""

    def __init__(self, clone, diffusion_model: torch.nn.Module) -> None:
        self.calls: list[list[int]] = []
        self.c_keys: list[list[str]] = []
        self.text_lens: list[int] = []
        self.hooks_during: list[int] = []
        previous = clone.model_options["model_function_wrapper"]

        def spy(apply_model, args):
            self.calls.append(list(args["cond_or_uncond"]))
            self.c_keys.append(sorted(args["c"]))
            self.text_lens.append(int(args["c"]["c_crossattn"].shape[1]))

            def counting_apply_model(*a, **k):
                self.hooks_during.append(forward_hooks(diffusion_model))
                return apply_model(*a, **k)

            return previous(counting_apply_model, args)

        clone.model_options["model_function_wrapper"] = spy


# --------------------------------------------------------------------------------------------------------------------
# Scenario: one model with its fixed inputs
# --------------------------------------------------------------------------------------------------------------------
class Scenario:
    """One model with its fixed inputs; runs the backend's sampling_function_inner.

    Texts are one prompt for the whole batch, as the backend's engines return it (B identical rows): a dict of the
    T5 tensor (``crossattn``), the pooled CLIP vector (``vector``, unless ``vector=False``) and the distilled guidance
    (``guidance``, unless ``guidance=False``), or, with ``tensor_text=True``, the T5 tensor alone; text tokens are
    ``text_dim`` wide (32 unless said). ``reference=True`` also draws a Kontext reference latent (``self.ref``, batch
    1) right after the noise.
    """

    def __init__(
        self,
        backend: Any,
        name: str,
        unet,
        ctx_len: int = 8,
        unctx_len: int | None = None,
        *,
        guidance: bool = True,
        vector: bool = True,
        tensor_text: bool = False,
        reference: bool = False,
        text_dim: int = 32,
    ) -> None:
        self.backend, self.name, self.unet = backend, name, unet
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(B, 16, 8, 8, generator=g)
        self.ref = torch.randn(1, 16, 8, 8, generator=g) if reference else None

        def text(length: int) -> dict | torch.Tensor:
            if tensor_text:
                return torch.randn(1, length, text_dim, generator=g).repeat(B, 1, 1)
            d = {"crossattn": torch.randn(1, length, text_dim, generator=g).repeat(B, 1, 1)}
            if vector:
                d["vector"] = torch.randn(1, 16, generator=g).repeat(B, 1)
            if guidance:
                d["guidance"] = torch.FloatTensor([3.5] * B)
            return d

        self.ctx_len = ctx_len
        self.cond_text = [text(ctx_len), text(ctx_len)]  # the second one is an AND sub-prompt
        self.uncond_text = text(ctx_len if unctx_len is None else unctx_len)
        self.uncond_short = text(max(1, ctx_len // 2))  # for (e): repeated to the lcm length when batching

    @staticmethod
    def text_len(text: dict | torch.Tensor) -> int:
        return int((text if isinstance(text, torch.Tensor) else text["crossattn"]).shape[1])

    def conditioning(self, text: dict | torch.Tensor, rows: int) -> dict | torch.Tensor:
        """What ``compile_conditions`` gets for ``text`` in a batch of ``rows``."""
        return text

    def sample(
        self,
        unet,
        sigma: float,
        cfg: float,
        *,
        prompts: int = 1,
        low_vram: bool = False,
        short_uncond: bool = False,
        x: torch.Tensor | None = None,
        no_grad: bool = False,
    ) -> torch.Tensor:
        f = self.backend
        x = self.x if x is None else x
        cond = []
        for t in self.cond_text[:prompts]:
            cond += f.condition.compile_conditions(self.conditioning(t, x.shape[0]))
        uncond_text = self.uncond_short if short_uncond else self.uncond_text
        uncond = f.condition.compile_conditions(self.conditioning(uncond_text, x.shape[0]))
        timestep = torch.full((x.shape[0],), sigma)
        if low_vram:
            # Only as seen from backend/sampling/sampling_function.py (the attention code asks for free memory too).
            f.sf.memory_management = _NoFreeMemory(f.mm)
        # The webui samples under torch.inference_mode(); no_grad covers the callers that do not.
        mode = torch.no_grad() if no_grad else torch.inference_mode()
        try:
            with mode, contextlib.redirect_stdout(io.StringIO()):  # the backend's "Moving model(s)" lines
                f.sf.sampling_prepare(unet, x)
                out = f.sf.sampling_function_inner(unet.model, x, timestep, uncond, cond, cfg, unet.model_options)
                f.sf.sampling_cleanup(unet)
        finally:
            f.sf.memory_management = f.mm
        return out

    def patched(self, config: RepulsionConfig = CONFIG, unet=None):
        """A clone of ``unet`` (default: the scenario's) patched by a ForgeRepulsion that records stats, with a Spy."""
        job = ForgeRepulsion(config, record_stats=True)
        clone = (unet or self.unet).clone()
        if not job.patch(clone):
            raise RuntimeError(f"ForgeRepulsion.patch returned False for {type(self.unet.model.diffusion_model)}")
        spy = Spy(clone, self.unet.model.diffusion_model)
        return job, clone, spy


def window_sigmas(prefix: str) -> Iterator[tuple[str, float, bool]]:
    """(tag, sigma, inside the window) for a case run at SIGMA_IN and then at SIGMA_OUT."""
    for sigma in (SIGMA_IN, SIGMA_OUT):
        yield f"{prefix}, sigma {sigma}", sigma, sigma == SIGMA_IN


# --------------------------------------------------------------------------------------------------------------------
# The checks every backend runs on a model
# --------------------------------------------------------------------------------------------------------------------
class ModelChecks:
    """The common checks on one scenario: after every patched run (``after_run``), per-block stats (``groups``),
    cases (a)-(e), a chained ``model_function_wrapper``, the shared patcher, and the window on the real schedule.

    ``hooked_blocks``: forward hooks attached inside a repelled model call; ``expect_blocks``: the blocks repelled;
    ``check_finite``: also check every patched output is finite.
    """

    def __init__(
        self,
        sc: Scenario,
        check: Checks,
        *,
        hooked_blocks: int,
        expect_blocks: Set[str],
        check_finite: bool = False,
    ) -> None:
        self.sc, self.check, self.unet = sc, check, sc.unet
        self.dm = sc.unet.model.diffusion_model
        self.hooked_blocks, self.expect_blocks, self.check_finite = hooked_blocks, expect_blocks, check_finite
        self.options_before = copy.deepcopy(self.unet.model_options)
        self.batched_in: torch.Tensor | None = None  # (b) inside the window, compared with (c)
        predictor = type(self.unet.model.predictor).__name__
        print(f"\n== {sc.name}: {type(self.dm).__name__}, predictor {predictor}, B={B} ==")

    def compare(self, sigma: float, cfg: float, config: RepulsionConfig = CONFIG, **kwargs: Any):
        """The plain patcher's output, then a patched clone's: (job, spy, base, out)."""
        base = self.sc.sample(self.unet, sigma, cfg, **kwargs)
        job, clone, spy = self.sc.patched(config)
        return job, spy, base, self.sc.sample(clone, sigma, cfg, **kwargs)

    def after_run(self, tag: str, job, spy, out: torch.Tensor, base: torch.Tensor, inside: bool) -> None:
        check, dm = self.check, self.dm
        check(
            f"{tag}: no forward hook left on the diffusion model",
            forward_hooks(dm) == 0 and job.attached_hooks == 0,
            f"{forward_hooks(dm)} hooks",
        )
        if self.check_finite:
            check(f"{tag}: output finite", bool(torch.isfinite(out).all()))
        if inside:
            check(f"{tag}: output differs from the plain patcher", not torch.allclose(out, base), max_diff(out, base))
            check(
                f"{tag}: hooks attached during each call",
                spy.hooks_during == [self.hooked_blocks] * len(spy.calls),
                spy.hooks_during,
            )
        else:
            check(f"{tag}: bit-identical to the plain patcher", torch.equal(out, base))
            check(
                f"{tag}: nothing attached during the call", spy.hooks_during == [0] * len(spy.calls), spy.hooks_during
            )
            check(f"{tag}: no repulsion recorded", not job.engine.stats, stats_summary(job))

    def groups(self, name: str, job, order: list[str]) -> None:
        """Stats per block come in chunk order; every group has B rows; blocks are the expected ones."""
        stats = job.engine.stats
        by_block: dict[str, list[str]] = {}
        for s in stats:
            by_block.setdefault(s.block, []).append(s.branch)
        ok = (
            set(by_block) == self.expect_blocks
            and all(branches == order for branches in by_block.values())
            and all(s.rows == B for s in stats)
        )
        self.check(name, ok, stats_summary(job))

    def disabled_is_plain(self, tag: str, sigma: float, cfg: float, base: torch.Tensor) -> None:
        _, dclone, _ = self.sc.patched(RepulsionConfig(enabled=False))
        self.check(f"{tag}: enabled=False is bit-identical", torch.equal(self.sc.sample(dclone, sigma, cfg), base))

    def cases(self, wrapper_seen: str, *, short_uncond: bool = True) -> None:
        """Cases (a)-(d), and (e) with ``short_uncond``; ``wrapper_seen`` names (a)'s first check."""
        self.case_cond_only(wrapper_seen)
        self.case_batched()
        self.case_low_vram()
        self.case_and_prompts()
        if short_uncond:
            self.case_short_uncond()

    def case_cond_only(self, wrapper_seen: str) -> None:
        """(a) cond only, CFG 1."""
        for tag, sigma, inside in window_sigmas("(a) cond only, cfg 1"):
            job, spy, base, out = self.compare(sigma, 1.0)
            self.check(f"{tag}: {wrapper_seen} [[0]]", spy.calls == [[0]], spy.calls)
            self.after_run(tag, job, spy, out, base, inside)
            if inside:
                print(f"      c keys given to the wrapper: {spy.c_keys[0]}")
                self.groups(f"{tag}: stats: branch cond, {B} rows, blocks {sorted(self.expect_blocks)}", job, ["cond"])
                self.check(
                    f"{tag}: Vendi score rises in every group",
                    all(s.vendi_after > s.vendi_before for s in job.engine.stats),
                )
                self.disabled_is_plain(tag, sigma, 1.0, base)

    def case_batched(self) -> None:
        """(b) cond + uncond, CFG 3.5, one batched call."""
        for tag, sigma, inside in window_sigmas("(b) cond+uncond, cfg 3.5"):
            job, spy, base, out = self.compare(sigma, 3.5)
            self.check(f"{tag}: wrapper saw one batched call, uncond first [[1, 0]]", spy.calls == [[1, 0]], spy.calls)
            self.after_run(tag, job, spy, out, base, inside)
            if inside:
                self.batched_in = out
                self.groups(f"{tag}: stats: uncond then cond per block, {B} rows each", job, ["uncond", "cond"])
                self.disabled_is_plain(tag, sigma, 3.5, base)

    def case_low_vram(self) -> None:
        """(c) low VRAM: the chunks of (b) in separate calls."""
        for tag, sigma, inside in window_sigmas("(c) cond+uncond split by low VRAM"):
            job, spy, base, out = self.compare(sigma, 3.5, low_vram=True)
            self.check(f"{tag}: wrapper saw separate calls [[1], [0]]", spy.calls == [[1], [0]], spy.calls)
            self.after_run(tag, job, spy, out, base, inside)
            if inside:
                stats = job.engine.stats
                half = len(stats) // 2
                ok = (
                    {s.block for s in stats} == self.expect_blocks
                    and [s.branch for s in stats] == ["uncond"] * half + ["cond"] * half
                    and all(s.rows == B for s in stats)
                )
                self.check(
                    f"{tag}: stats: all uncond blocks, then all cond blocks, {B} rows each", ok, stats_summary(job)
                )
                batched_in = self.batched_in
                self.check(
                    f"{tag}: same result as the batched call (b)",
                    batched_in is not None and torch.allclose(out, batched_in, rtol=1e-4, atol=1e-5),
                    max_diff(out, batched_in) if batched_in is not None else "",
                )

    def case_and_prompts(self) -> None:
        """(d) two AND sub-prompts + uncond."""
        tag = f"(d) 2 AND prompts + uncond, cfg 3.5, sigma {SIGMA_IN}"
        job, spy, base, out = self.compare(SIGMA_IN, 3.5, prompts=2)
        self.check(f"{tag}: wrapper saw [[1, 0, 0]]", spy.calls == [[1, 0, 0]], spy.calls)
        self.after_run(tag, job, spy, out, base, True)
        self.groups(f"{tag}: stats: uncond, cond, cond per block, {B} rows each", job, ["uncond", "cond", "cond"])

    def case_short_uncond(self) -> None:
        """(e) cond and uncond texts of different lengths (T5 chunks), single blocks on their text tokens only."""
        tag = f"(e) uncond text half as long, single_blocks='text', cfg 3.5, sigma {SIGMA_IN}"
        job, spy, base, out = self.compare(SIGMA_IN, 3.5, repulsion(single_blocks="text"), short_uncond=True)
        length = self.sc.text_len(self.sc.cond_text[0])
        self.check(
            f"{tag}: one batched call [[1, 0]], c_crossattn padded to {length} tokens",
            spy.calls == [[1, 0]] and spy.text_lens == [length],
            f"{spy.calls}, lengths {spy.text_lens}",
        )
        self.after_run(tag, job, spy, out, base, True)
        self.groups(f"{tag}: stats: uncond then cond per block, {B} rows each", job, ["uncond", "cond"])

    def chained_wrapper(self, *, check_clone: bool = False) -> None:
        """An already installed model_function_wrapper is chained; with ``check_clone``, also check that
        ``UnetPatcher.clone()`` keeps it."""
        tag = "existing model_function_wrapper"
        seen: list[int] = []

        def other_wrapper(apply_model, args):
            seen.append(args["input"].shape[0])
            return apply_model(args["input"], args["timestep"], **args["c"])

        host = self.unet.clone()
        host.set_model_unet_function_wrapper(other_wrapper)
        base = self.sc.sample(host, SIGMA_IN, 1.0)
        job = ForgeRepulsion(CONFIG)
        clone = host.clone()
        if check_clone:
            self.check(
                f"{tag}: UnetPatcher.clone() keeps model_options (the wrapper survives a clone)",
                clone.model_options.get("model_function_wrapper") is other_wrapper,
                f"clone keys {sorted(clone.model_options)}",
            )
        job.patch(clone)
        out = self.sc.sample(clone, SIGMA_IN, 1.0)
        self.check(
            f"{tag}: chained (called in both runs) and repelled",
            seen == [B, B] and not torch.allclose(out, base),
            seen,
        )

    def shared_patcher(self) -> None:
        """The scenario's own UnetPatcher is left as it was."""
        unet = self.unet
        self.check(
            "original UnetPatcher.model_options unchanged",
            unet.model_options == self.options_before,
            f"keys {sorted(unet.model_options)}",
        )
        again = self.sc.sample(unet, SIGMA_IN, 3.5)
        self.check(
            "plain patcher still bit-identical after all patched runs",
            torch.equal(again, self.sc.sample(unet.clone(), SIGMA_IN, 3.5)),
        )

    def schedule_window(self, simple_scheduler: Callable, backend_name: str) -> PredictorWindow:
        """PredictorWindow on the backend's own "simple" schedule of the real predictor; returns the window."""
        predictor = self.unet.model.predictor
        window = PredictorWindow(predictor)

        # What the backend hands its schedulers (Forge: k_diffusion/external.py ForgeScheduleLinker): .sigmas is
        # predictor.sigmas.
        class ScheduleLinker:
            sigmas = predictor.sigmas

        sigmas = simple_scheduler(STEPS, None, None, ScheduleLinker, torch.device("cpu"))[:-1].tolist()
        progress = [window.progress(s) for s in sigmas]
        shown = [round(s, 4) for s in sigmas[:3]]
        print(f"      simple-schedule sigmas[:3] {shown} -> progress {[round(p, 4) for p in progress[:3]]}")
        self.check(
            f"PredictorWindow on {backend_name}'s simple schedule ({STEPS} steps): only the first step < 0.05",
            progress[0] == 0.0
            and [p < 0.05 - 1e-9 for p in progress].count(True) == 1
            and progress == sorted(progress),
            f"progress[:3] {[round(p, 4) for p in progress[:3]]}",
        )
        return window


# --------------------------------------------------------------------------------------------------------------------
# SPELL: ForgeSpell's post-CFG function through Forge's sampling_function_inner, on a UNet and on Flux
# --------------------------------------------------------------------------------------------------------------------
SPELL_STEPS = 6


def euler(backend: Any, sc: Scenario, unet, noise: torch.Tensor, cfg: float) -> torch.Tensor:
    """A whole generation: Forge's "simple" schedule of the model's own predictor, k-diffusion's ``sample_euler``
    step (d = (x - denoised) / sigma; x += d * (sigma_next - sigma); written out here because Forge's
    ``k_diffusion/sampling.py`` imports torchvision), each denoised prediction from ``sampling_function_inner``;
    ``backend`` has the backend's ``simple_scheduler`` (modules/sd_schedulers.py)."""
    predictor = unet.model.predictor

    class ScheduleLinker:
        sigmas = predictor.sigmas

    sigmas = backend.simple_scheduler(SPELL_STEPS, None, None, ScheduleLinker, torch.device("cpu"))
    x = noise * sigmas[0]
    for sigma, nxt in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        denoised = sc.sample(unet, sigma, cfg, x=x)
        x = x + (x - denoised) / sigma * (nxt - sigma)
    return x


def verify_spell(
    backend: Any,
    cases: list[tuple[str, Any, int, dict]],
    check: Checks,
    scenario: Callable[[str, Any, dict], Scenario],
) -> None:
    """SPELL on any model of the backend: the post-CFG function sees [B, ...] guided predictions, its corrections reach
    the final samples (outside every shield of a protected set made of the baseline's outputs), nothing is left on the
    shared patcher, no reference within the radius is bit-identical, and cross-batch memory repels batch 2.

    ``cases``: (name, unet patcher, latent channels, scenario keyword arguments); ``scenario(name, unet, kwargs)``
    builds the backend's :class:`Scenario` for it."""
    for name, unet, channels, text in cases:
        print(f"\n== SPELL on {name}: {SPELL_STEPS} Euler steps, CFG 3 ==")
        sc = scenario(name, unet, text)
        noise = torch.randn(B, channels, 8, 8, generator=torch.Generator().manual_seed(11))
        base = euler(backend, sc, unet, noise, 3.0)
        options = repr(unet.model_options)

        def run(config: SpellConfig, protected: ReferenceSet | None = None, job: ForgeSpell | None = None, *,
                unet=unet, sc=sc, noise=noise):  # fmt: skip
            job = job or ForgeSpell(config, protected)
            clone = unet.clone()
            job.patch(clone)
            return job, euler(backend, sc, clone, noise, 3.0)

        far, out = run(SpellConfig(radius=1e-6))
        check(f"{name}: no reference within the radius -> bit-identical to SPELL off", torch.equal(out, base))
        check(
            f"{name}: the post-CFG function ran once per step on the [B, ...] guided prediction",
            far.engine.stats.calls == SPELL_STEPS and far.engine.stats.batch_size == B,
            far.engine.stats.summary(),
        )
        flat = base.flatten(1)
        gaps = torch.cdist(flat, flat) + torch.eye(B) * 1e9
        radius = 0.45 * float(gaps.min())  # disjoint shields around the baseline's outputs
        job, out = run(
            SpellConfig(radius=radius, intra_batch=False, cross_batch=False), ReferenceSet(base), None
        )  # fmt: skip
        nearest = float(torch.cdist(out.flatten(1).double(), flat.double()).min())
        check(
            f"{name}: protected set = the baseline's outputs -> every output farther than r = {radius:.3g} from all",
            nearest >= radius * (1 - 1e-4) and torch.isfinite(out).all(),
            f"nearest {nearest:.4g}; pushed {job.engine.stats.summary()}",
        )
        check(f"{name}: the pushes are counted (sparsity statistics)", 0 < job.engine.stats.samples_pushed)
        check(f"{name}: the shared patcher's model_options untouched", repr(unet.model_options) == options)
        memory = ForgeSpell(SpellConfig(radius=radius, intra_batch=False))
        memory.end_batch(base)  # batch 1's final latents (Forge: post_sample's ps.samples)
        _, second = run(memory.engine.config, None, memory)
        check(
            f"{name}: cross-batch memory -> batch 2 (same seeds) lands outside batch 1's shields",
            float(torch.cdist(second.flatten(1).double(), flat.double()).min()) >= radius * (1 - 1e-4),
        )


# --------------------------------------------------------------------------------------------------------------------
# Observing what each block hands on
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class Seen:
    """One block in one model call: its output as the block computed it (``before``) and as the model goes on with it
    (``after`` ForgeRepulsion's hook), its tensor inputs, and the call's text length (``c_crossattn`` tokens)."""

    text_len: int
    before: Any = None
    after: Any = None
    inputs: tuple[torch.Tensor, ...] = ()


def snapshot(out: Any) -> Any:
    if isinstance(out, tuple):
        return tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in out)
    return out.clone()


def observe(
    sc: Scenario,
    config: RepulsionConfig,
    cfg: float,
    blocks: dict[str, torch.nn.Module],
    *,
    low_vram: bool = False,
    text_len: Callable[[torch.Tensor], int] | None = None,
) -> dict[str, list[Seen]]:
    """One repelled run at SIGMA_IN recording, per model call, every block's inputs (a pre-hook) and its output
    before ForgeRepulsion's hook (a hook prepended ahead of it) and after it (a hook behind it). The observers are
    attached inside each model call, after ForgeRepulsion's own hooks, and removed before the call returns.
    ``text_len(c_crossattn)`` gives a call's text tokens in the blocks (default: ``c_crossattn.shape[1]``)."""
    job = ForgeRepulsion(config)
    clone = sc.unet.clone()
    job.patch(clone)
    previous = clone.model_options["model_function_wrapper"]
    seen: dict[str, list[Seen]] = {name: [] for name in blocks}

    def observing(apply_model, args):
        text = args["c"]["c_crossattn"]
        length = int(text.shape[1]) if text_len is None else int(text_len(text))

        def observed_apply_model(*a, **k):
            handles = []
            for name, block in blocks.items():
                slot = Seen(length)
                seen[name].append(slot)

                def inputs(m, a_, k_, slot=slot):
                    slot.inputs = tuple(t.clone() for t in (*a_, *k_.values()) if isinstance(t, torch.Tensor))

                def before(m, a_, out, slot=slot):
                    slot.before = snapshot(out)

                def after(m, a_, out, slot=slot):
                    slot.after = snapshot(out)

                handles.append(block.register_forward_pre_hook(inputs, with_kwargs=True))
                handles.append(block.register_forward_hook(before, prepend=True))
                handles.append(block.register_forward_hook(after))
            with removing(handles):
                return apply_model(*a, **k)

        return previous(observed_apply_model, args)

    clone.model_options["model_function_wrapper"] = observing
    sc.sample(clone, SIGMA_IN, cfg, low_vram=low_vram)
    return seen
