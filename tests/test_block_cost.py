"""What a hooked block costs inside the window: one device-to-host transfer for all of its groups, a Gram matrix
accurate on near-identical low-precision samples, and no copy of a single block's whole sequence."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lib_ctxrep import blockmap, repulsion
from lib_ctxrep.blockmap import Blocks, CallTokens
from lib_ctxrep.config import RepulsionConfig
from lib_ctxrep.engine import RepulsionEngine

WIDTH = 16
SINGLE = Blocks("single_blocks")  # one [rows, text + image, width] sequence, text first (Forge's Flux single blocks)


class Recorder(TorchDispatchMode):
    """Records, for every torch operation run inside it, the bytes of each output that got new memory (not a view
    or an in-place result of an input), the destination (dtype, elements) of every copy into existing memory, and every
    read of a tensor's value by the host (``item()``, ``bool()``, ``float()``: on a GPU each is a synchronisation)."""

    def __init__(self) -> None:
        super().__init__()
        self.allocations: list[tuple[str, int]] = []
        self.copies: list[tuple[torch.dtype, int]] = []
        self.scalar_reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten.copy_.default:
            self.copies.append((args[0].dtype, args[0].numel()))
        if func is torch.ops.aten._local_scalar_dense.default:
            self.scalar_reads += 1
        out = func(*args, **kwargs)
        taken = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs))}
        for t in _tensors(out):
            if t.untyped_storage().data_ptr() not in taken:
                self.allocations.append((str(func), t.untyped_storage().nbytes()))
        return out


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)


def sequence(rows: int, text: int, image: int, seed: int, spread: float = 0.1) -> torch.Tensor:
    """A single block's output: one shared random sequence plus small per-row differences."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, text + image, WIDTH, generator=g)
    return base + spread * torch.randn(rows, text + image, WIDTH, generator=g)


# --- one transfer per hooked block -----------------------------------------------------------------------------------


def test_a_single_block_with_two_branches_two_prompts_and_memory_is_one_transfer(transfers):
    # uncond and cond of other text lengths (two runs of chunks), two prompts of two images each (group_size 2), every
    # token repelled, and a memory of the text (the image tokens are repelled within the batch by a second flow)
    config = RepulsionConfig(
        strength=0.5, iterations=4, branches=("uncond", "cond"), group_size=2, memory=True, single_blocks="all"
    )
    engine = RepulsionEngine(config, record_stats=True)
    call = CallTokens(text_len=10, text_valid=(7, 10), image_len=6)
    for batch in range(2):  # the second batch repels against the first one's memory
        engine.begin_call(0.0, ("uncond", "cond"))
        output = sequence(8, 10, 6, seed=batch)
        transfers["calls"] = 0
        engine.stats.clear()
        with Recorder() as recorder:
            new = blockmap.repel_block(engine, "single.0", SINGLE, output, call, "all", inputs=())
        engine.end_call()
        engine.new_batch()
        assert transfers["calls"] == 1
        assert recorder.scalar_reads == 0
        assert len(engine.stats) == 4  # 2 branches x 2 prompts
        assert all(s.memory_rows == (2 if batch else 0) for s in engine.stats)
        changed = (new != sequence(8, 10, 6, seed=batch)).flatten(1).any(dim=1)
        assert changed.all()


def test_sd3_pipeline_makes_one_transfer_per_hooked_block_call_with_two_branches_and_two_prompts(transfers):
    pytest.importorskip("diffusers")
    from lib_ctxrep.evaluation.diffusers_tiny import prompt_embeddings, tiny_sd3_pipeline, tiny_sd3_transformer
    from lib_ctxrep.integrations.diffusers import apply_contextual_repulsion

    pipe = tiny_sd3_pipeline(tiny_sd3_transformer(layers=3))
    first, first_pooled = prompt_embeddings(2, 10, 32, 64, seed=3)
    second, second_pooled = prompt_embeddings(2, 10, 32, 64, seed=5)
    neg, neg_pooled = prompt_embeddings(4, 10, 32, 64, seed=4)
    config = RepulsionConfig(strength=0.5, window=0.3, iterations=3, branches=("uncond", "cond"), group_size=2)
    with apply_contextual_repulsion(pipe, config, record_stats=True) as handle:
        pipe(
            prompt_embeds=torch.cat([first, second]),
            pooled_prompt_embeds=torch.cat([first_pooled, second_pooled]),
            negative_prompt_embeds=neg,
            negative_pooled_prompt_embeds=neg_pooled,
            guidance_scale=3.5,
            height=16,
            width=16,
            num_inference_steps=3,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
        )
    block_calls = {(s.block, s.progress) for s in handle.stats}
    assert len(block_calls) >= 2
    assert transfers["calls"] == len(block_calls)
    for block, progress in block_calls:
        groups = [s for s in handle.stats if (s.block, s.progress) == (block, progress)]
        assert sorted(s.branch for s in groups) == ["cond", "cond", "uncond", "uncond"]


# --- the Gram matrix -------------------------------------------------------------------------------------------------


def one_minus_cosine(gram: torch.Tensor) -> torch.Tensor:
    norms = gram.diagonal().sqrt()
    return 1 - gram / (norms[:, None] * norms[None, :])


@pytest.mark.parametrize("memory", [0, 2], ids=["batch", "with-memory"])  # a plain float32 X X^T: 7e-2
def test_gram_of_near_identical_bf16_samples_matches_float64(memory):
    # 4 (+ memory) bf16 samples at cosine 0.999 of 2^20 values each: 1 - K within 1e-3 of its float64 value
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 2**20, generator=g) + 3.0
    spread = (1e-3 * base.pow(2).mean()).sqrt()  # 1 - cos(x + a, x + b) ~ |a - b|^2 / (2 |x|^2) = 1e-3
    rows = (base + spread * torch.randn(4 + memory, 2**20, generator=g)).to(torch.bfloat16)
    exact = rows.double() @ rows.double().T
    (centred,) = repulsion.to_host([repulsion.centred_gram([rows[:4]], [rows[4:]] if memory else None)])
    got = torch.from_numpy(repulsion.uncentre_gram(centred))
    want = one_minus_cosine(exact)
    off = ~torch.eye(4 + memory, dtype=torch.bool)
    assert want[off].min() > 5e-4 and want[off].max() < 2e-3  # cosine about 0.999
    relative = ((one_minus_cosine(got) - want)[off].abs() / want[off]).max().item()
    assert relative < 1e-3


def test_gram_is_computed_in_chunks_without_a_float32_copy_of_the_rows():
    rows = torch.randn(4, 3 * repulsion.GRAM_CHUNK // 4 + 5).to(torch.bfloat16)
    with Recorder() as recorder:
        repulsion.centred_gram([rows])
    largest = max(size for _, size in recorder.allocations)
    assert largest <= repulsion.GRAM_CHUNK * 4  # one float32 chunk, not the whole [4, P] in float32 (3x as large)


# --- no copy of a single block's sequence ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["text", "all"])
def test_single_block_hook_makes_no_full_sequence_copy(mode):
    engine = RepulsionEngine(RepulsionConfig(strength=0.5, iterations=4, single_blocks=mode))
    call = CallTokens(text_len=12, text_valid=(9,), image_len=40)  # 3 padding text tokens: no group is whole
    output = sequence(4, 12, 40, seed=1)
    full = output.untyped_storage().nbytes()
    engine.begin_call(0.0, ("cond",))
    with Recorder() as recorder:
        new = blockmap.repel_block(engine, "single.0", SINGLE, output, call, mode, inputs=(torch.zeros(1),))
    assert new is output  # written in place
    assert max(size for _, size in recorder.allocations) < full
    # what is left: the new repelled rows (the combination's output) and the Gram's float32 working chunk
    repelled = 4 * (9 + (40 if mode == "all" else 0)) * WIDTH * 4
    chunk = 4 * (40 if mode == "all" else 9) * WIDTH * 4
    assert sum(size for _, size in recorder.allocations) < repelled + chunk + 1024


def test_a_block_output_that_shares_memory_with_its_input_is_copied_once_and_the_input_kept():
    engine = RepulsionEngine(RepulsionConfig(strength=0.5, iterations=4, single_blocks="text"))
    call = CallTokens(text_len=12, text_valid=(9,), image_len=40)
    output = sequence(4, 12, 40, seed=2)
    before = output.clone()
    engine.begin_call(0.0, ("cond",))
    with Recorder() as recorder:
        new = blockmap.repel_block(engine, "single.0", SINGLE, output, call, "text", inputs=((output,), {}))
    assert torch.equal(output, before)  # a block that returned its input: the input is not touched
    assert not torch.equal(new, before)
    full = output.untyped_storage().nbytes()
    assert sorted(size for _, size in recorder.allocations if size >= full) == [full]  # one copy of the sequence


def test_writing_in_place_gives_the_same_output_as_writing_into_a_copy():
    config = RepulsionConfig(strength=0.5, iterations=4, single_blocks="all", chunks=("uncond", "cond"))
    call = CallTokens(text_len=12, text_valid=(9, 12), image_len=40)
    results = []
    for inputs in (None, ()):
        engine = RepulsionEngine(config)
        engine.begin_call(0.0, ("uncond", "cond"))
        results.append(
            blockmap.repel_block(engine, "single.0", SINGLE, sequence(8, 12, 40, seed=3), call, "all", inputs)
        )
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0], sequence(8, 12, 40, seed=3))


def test_single_block_of_a_real_flux_transformer_is_repelled_without_a_full_sequence_copy(monkeypatch):
    pytest.importorskip("diffusers")
    from lib_ctxrep.evaluation.diffusers_tiny import prompt_embeddings, tiny_flux_transformer
    from lib_ctxrep.integrations.diffusers import apply_contextual_repulsion

    transformer = tiny_flux_transformer(layers=1, single_layers=1)
    embeds, pooled = prompt_embeddings(4, 12, 32, 32)
    inputs = dict(
        hidden_states=torch.randn(4, 64, 4, generator=torch.Generator().manual_seed(0)),
        encoder_hidden_states=embeds,
        pooled_projections=pooled,
        timestep=torch.ones(4),
        img_ids=torch.zeros(64, 3),
        txt_ids=torch.zeros(12, 3),
        return_dict=False,
    )
    profiles = []
    original = blockmap.repel_block

    def profiled(engine, name, where, output, *args, **kwargs):
        with Recorder() as recorder:
            new = original(engine, name, where, output, *args, **kwargs)
        if name.startswith("single"):
            streams = output if isinstance(output, tuple) else (output,)
            profiles.append(
                (recorder, sum(t.untyped_storage().nbytes() for t in {id(s): s for s in streams}.values()))
            )
        return new

    monkeypatch.setattr(blockmap, "repel_block", profiled)
    with torch.no_grad(), apply_contextual_repulsion(transformer, RepulsionConfig(strength=0.5, single_blocks="text")):
        transformer(**inputs)
    ((recorder, full),) = profiles
    assert recorder.allocations and max(size for _, size in recorder.allocations) < full / 2


def test_a_block_output_that_needs_gradients_is_not_written_in_place():
    engine = RepulsionEngine(RepulsionConfig(strength=0.5, iterations=4, single_blocks="text"))
    call = CallTokens(text_len=12, text_valid=(9,), image_len=40)
    weight = torch.ones((), requires_grad=True)
    output = sequence(4, 12, 40, seed=4) * weight  # made by a block under autograd
    before = output.detach().clone()
    engine.begin_call(0.0, ("cond",))
    new = blockmap.repel_block(engine, "single.0", SINGLE, output, call, "text", inputs=())
    assert torch.equal(output.detach(), before) and new is not output
    new.sum().backward()
    assert weight.grad is not None and torch.isfinite(weight.grad)


def test_an_expanded_block_output_is_copied_not_written_in_place():
    engine = RepulsionEngine(RepulsionConfig(strength=0.5, iterations=4, single_blocks="text"))
    call = CallTokens(text_len=12, text_valid=(9,), image_len=40)
    shared = sequence(1, 12, 40, seed=5)
    output = shared.expand(4, -1, -1)  # four rows on one row's memory: writing into it is an error
    engine.begin_call(0.0, ("cond",))
    new = blockmap.repel_block(engine, "single.0", SINGLE, output, call, "text", inputs=())
    assert new is not output and new.shape == output.shape
    assert torch.equal(shared, sequence(1, 12, 40, seed=5))
