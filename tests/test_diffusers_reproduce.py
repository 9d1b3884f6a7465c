"""Reproducing one image of a batch-coupled job (lib_ctxrep.integrations.diffusers_reproduce), on real diffusers
pipelines built from tiny configs: bit-identical regeneration from a record, and the record's plain-data form."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("diffusers")

from lib_ctxrep import RepulsionConfig  # noqa: E402
from lib_ctxrep.evaluation.diffusers_tiny import (  # noqa: E402
    prompt_embeddings,
    tiny_flux_pipeline,
    tiny_flux_transformer,
    tiny_sd3_pipeline,
)
from lib_ctxrep.integrations.diffusers import apply_contextual_repulsion, attached_handle  # noqa: E402
from lib_ctxrep.integrations.diffusers_reproduce import (  # noqa: E402
    BatchRecord,
    records,
    reproduce,
    run_job,
    seed_batches,
)
from lib_ctxrep.integrations.diffusers_spell import apply_spell, attached_spell  # noqa: E402
from lib_ctxrep.spell import ReferenceSet, SpellConfig  # noqa: E402

STRONG = RepulsionConfig(strength=0.5, window=0.3, iterations=5)
MEMORY = RepulsionConfig(strength=0.5, window=0.3, iterations=5, memory=True)
SPELL = SpellConfig(relative_radius=2.0)
FLUX_CALL = dict(height=16, width=16, num_inference_steps=4, output_type="latent")


def flux_rows(batch: int, seeds: tuple[int, ...]) -> dict:
    """One prompt's embeddings, one row per image of the batch (what a prompt string gives)."""
    embeds, pooled = prompt_embeddings(len(seeds), 12, 32, 32)
    return dict(prompt_embeds=embeds, pooled_prompt_embeds=pooled)


def sd3_rows(batch: int, seeds: tuple[int, ...]) -> dict:
    """One prompt's and one negative prompt's embeddings for SD3, one row per image."""
    embeds, pooled = prompt_embeddings(len(seeds), 10, 32, 64, seed=3)
    neg, neg_pooled = prompt_embeddings(len(seeds), 10, 32, 64, seed=4)
    return dict(
        prompt_embeds=embeds,
        pooled_prompt_embeds=pooled,
        negative_prompt_embeds=neg,
        negative_pooled_prompt_embeds=neg_pooled,
    )


#: The base of the tests' random draws: fixed, so a run is repeatable; CTXREP_TEST_SEED=<int> draws other seeds.
TEST_SEED = int(os.environ.get("CTXREP_TEST_SEED", "20250815"))
_DRAWS: dict[str, itertools.count] = {}


def fresh_job(batch_count: int, batch_size: int) -> tuple[tuple[tuple[int, ...], ...], random.Random, str]:
    """Random seeds for a job (Forge's "seed + i"), a generator for picking members, the draw for messages; drawn
    from ``TEST_SEED``, the test's name and the call's number in the test, so every run (and ``-k`` selection)
    repeats, and two jobs of one test differ."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    draw = next(_DRAWS.setdefault(test, itertools.count()))
    rng = random.Random(f"{TEST_SEED}-{test}-{draw}")
    first = rng.randrange(2**32)
    return seed_batches(first, batch_size, batch_count), rng, f"first seed {first} (CTXREP_TEST_SEED={TEST_SEED})"


def stored(record: BatchRecord) -> BatchRecord:
    """The record as PNG metadata would bring it back: through JSON text."""
    return BatchRecord.from_dict(json.loads(json.dumps(record.to_dict())))


@pytest.fixture(scope="module")
def flux_pipe():
    return tiny_flux_pipeline(tiny_flux_transformer(layers=2, single_layers=1))


def test_member_of_a_repelled_batch_is_reproduced_bit_identically_and_its_seed_alone_differs(flux_pipe):
    batches, rng, drawn = fresh_job(1, 4)
    job = run_job(flux_pipe, batches, repulsion=STRONG, per_batch=flux_rows, **FLUX_CALL)
    k = rng.randrange(4)
    again = reproduce(flux_pipe, stored(job.records[k]), per_batch=flux_rows, **FLUX_CALL)
    alone = run_job(flux_pipe, [[batches[0][k]]], repulsion=STRONG, per_batch=flux_rows, **FLUX_CALL).images[0]
    assert torch.equal(again, job.images[k]), f"{drawn}, member {k}"
    assert not torch.allclose(alone, job.images[k]), f"{drawn}: the batch does not change member {k}"
    assert attached_handle(flux_pipe) is None and attached_spell(flux_pipe) is None


def test_with_memory_an_image_of_the_third_batch_is_reproduced_and_its_batch_alone_differs(flux_pipe):
    batches, rng, drawn = fresh_job(3, 2)
    job = run_job(flux_pipe, batches, repulsion=MEMORY, per_batch=flux_rows, **FLUX_CALL)
    k = rng.randrange(2)
    record = stored(job.records[4 + k])
    assert (record.batch, record.index, record.seed, record.regenerated) == (2, k, batches[2][k], (0, 1, 2))
    again = reproduce(flux_pipe, record, per_batch=flux_rows, **FLUX_CALL)
    alone = run_job(flux_pipe, batches[2:], repulsion=MEMORY, per_batch=flux_rows, **FLUX_CALL).images[k]
    assert torch.equal(again, job.images[4 + k]), f"{drawn}, member {k} of batch 2"
    assert not torch.allclose(alone, job.images[4 + k]), f"{drawn}: the earlier batches do not change batch 2"


def test_reproducing_twice_after_other_jobs_gives_the_same_image(flux_pipe):
    batches, rng, drawn = fresh_job(2, 2)
    job = run_job(flux_pipe, batches, repulsion=MEMORY, per_batch=flux_rows, **FLUX_CALL)
    i = 2 + rng.randrange(2)
    run_job(flux_pipe, seed_batches(7, 2, 2), repulsion=MEMORY, per_batch=flux_rows, **FLUX_CALL)  # another job
    first = reproduce(flux_pipe, job.records[i], per_batch=flux_rows, **FLUX_CALL)
    second = reproduce(flux_pipe, job.records[i], per_batch=flux_rows, **FLUX_CALL)
    assert torch.equal(first, job.images[i]) and torch.equal(second, job.images[i]), f"{drawn}, image {i}"


def test_without_memory_only_the_images_own_batch_is_regenerated(flux_pipe):
    batches, rng, drawn = fresh_job(3, 2)
    job = run_job(flux_pipe, batches, repulsion=STRONG, per_batch=flux_rows, **FLUX_CALL)
    i = 2 + rng.randrange(4)
    record = job.records[i]
    rows: list[int] = []
    hook = flux_pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["hidden_states"].shape[0]), with_kwargs=True
    )
    try:
        again = reproduce(flux_pipe, record, per_batch=flux_rows, **FLUX_CALL)
    finally:
        hook.remove()
    assert record.regenerated == (record.batch,) and rows == [2] * FLUX_CALL["num_inference_steps"]
    assert torch.equal(again, job.images[i]), f"{drawn}, image {i}"


def test_sd3_with_batched_cfg_and_memory_reproduces_a_later_batch_and_its_seed_alone_differs():
    pipe = tiny_sd3_pipeline()
    call = dict(guidance_scale=3.5, height=16, width=16, num_inference_steps=3, output_type="np")
    batches, rng, drawn = fresh_job(2, 3)
    job = run_job(pipe, batches, repulsion=MEMORY, per_batch=sd3_rows, **call)
    i = 3 + rng.randrange(3)
    again = reproduce(pipe, stored(job.records[i]), per_batch=sd3_rows, **call)
    alone = run_job(pipe, [[job.records[i].seed]], repulsion=STRONG, per_batch=sd3_rows, **call).images[0]
    assert torch.equal(torch.from_numpy(again), torch.from_numpy(job.images[i])), f"{drawn}, image {i}"
    assert not torch.allclose(torch.from_numpy(alone), torch.from_numpy(job.images[i])), drawn


@pytest.mark.parametrize("repulsion", [None, MEMORY], ids=["spell", "spell+repulsion"])
def test_spell_image_of_a_later_batch_is_reproduced_and_its_batch_alone_differs(flux_pipe, repulsion):
    batches, rng, drawn = fresh_job(2, 2)
    job = run_job(flux_pipe, batches, repulsion=repulsion, spell=SPELL, per_batch=flux_rows, **FLUX_CALL)
    i = 2 + rng.randrange(2)
    record = stored(job.records[i])
    assert record.spell == SPELL and record.regenerated == (0, 1)
    again = reproduce(flux_pipe, record, per_batch=flux_rows, **FLUX_CALL)
    alone = run_job(flux_pipe, batches[1:], repulsion=repulsion, spell=SPELL, per_batch=flux_rows, **FLUX_CALL)
    assert torch.equal(again, job.images[i]), f"{drawn}, image {i}"
    assert not torch.allclose(alone.images[i - 2], job.images[i]), f"{drawn}: batch 0 does not change batch 1"


def test_spell_protected_set_is_required_again_and_then_reproduces(flux_pipe):
    protected = ReferenceSet(torch.randn(3, 64, 4))
    batches, rng, drawn = fresh_job(1, 2)
    job = run_job(flux_pipe, batches, spell=SPELL, protected=protected, per_batch=flux_rows, **FLUX_CALL)
    k = rng.randrange(2)
    record = stored(job.records[k])
    assert record.protected_size == 3
    with pytest.raises(ValueError, match="protected set had 3 samples, got none"):
        reproduce(flux_pipe, record, per_batch=flux_rows, **FLUX_CALL)
    again = reproduce(flux_pipe, record, protected=protected, per_batch=flux_rows, **FLUX_CALL)
    assert torch.equal(again, job.images[k]), f"{drawn}, member {k}"


def test_a_pipeline_with_a_handle_attached_is_refused_and_a_removed_handle_gives_its_settings(flux_pipe):
    batches = seed_batches(0, 2, 1)
    with apply_contextual_repulsion(flux_pipe, MEMORY) as handle:
        with pytest.raises(RuntimeError, match=r"already has contextual repulsion attached.*handle.remove\(\)"):
            run_job(flux_pipe, batches, repulsion=handle, per_batch=flux_rows, **FLUX_CALL)
    with apply_spell(flux_pipe, SPELL) as spell:
        with pytest.raises(RuntimeError, match="already has SPELL attached"):
            reproduce(flux_pipe, records(batches)[0], per_batch=flux_rows, **FLUX_CALL)
    job = run_job(flux_pipe, batches, repulsion=handle, spell=spell, per_batch=flux_rows, **FLUX_CALL)
    assert job.records[1].repulsion == MEMORY and job.records[1].spell == SPELL


def test_each_batch_is_one_call_with_one_generator_per_seed_and_one_image_per_prompt():
    calls: list[dict] = []

    def pipe(**kwargs):
        calls.append(kwargs)
        return SimpleNamespace(images=[f"image {g.initial_seed()}" for g in kwargs["generator"]])

    job = run_job(pipe, [[5, 6, 7], [8]], prompt="a cat", num_inference_steps=20)
    assert job.images == ["image 5", "image 6", "image 7", "image 8"]
    assert [(c["num_images_per_prompt"], c["prompt"], c["num_inference_steps"]) for c in calls] == [
        (3, "a cat", 20),
        (1, "a cat", 20),
    ]
    assert [r.seed for r in job.records] == [5, 6, 7, 8] and job.records[3] == BatchRecord(((5, 6, 7), (8,)), 1, 0)
    assert seed_batches(10, 4, 2) == ((10, 11, 12, 13), (14, 15, 16, 17))


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(batches=((1, 2, 3, 4),), batch=0, index=4), r"index must be a member of batch 0 in \[0, 4\)"),
        (dict(batches=((1, 2), (3, 4)), batch=1, index=-1), r"index must be a member of batch 1 in \[0, 2\)"),
        (dict(batches=((1, 2), (3, 4)), batch=2, index=0), r"batch must be a batch number in \[0, 2\)"),
        (dict(batches=(), batch=0, index=0), "batches must be a non-empty sequence of batches"),
        (dict(batches=((1, 2), ()), batch=0, index=0), r"batches\[1\] must be a non-empty sequence of seeds"),
        (dict(batches=((1, "2"),), batch=0, index=0), r"batches\[0\]: seeds must be integers.*'2'"),
        (dict(batches=((2**64,),), batch=0, index=0), r"seeds must be integers in \[0, 2\*\*64\)"),
        (dict(batches=((1,),), batch=0, index=0, protected_size=2), "protected_size.*0 without SPELL"),
        (dict(batches=((1,),), batch=0, index=0, generator_device="gpu9"), "generator_device must name a torch"),
    ],
    ids=["index", "negative-index", "batch", "no-batches", "empty-batch", "seed-type", "seed-range", "protected",
         "device"],
)  # fmt: skip
def test_a_record_out_of_range_or_without_seeds_is_refused_naming_the_field(arguments, message):
    with pytest.raises(ValueError, match=message):
        BatchRecord(**arguments)


def test_call_arguments_that_override_the_seeds_or_mismatch_them_are_refused(flux_pipe):
    batches = seed_batches(0, 2, 1)
    with pytest.raises(ValueError, match=r"\['generator'\] must not be passed"):
        run_job(flux_pipe, batches, per_batch=flux_rows, generator=torch.Generator(), **FLUX_CALL)
    with pytest.raises(ValueError, match=r"\['latents'\] must not be passed"):
        reproduce(flux_pipe, records(batches)[0], per_batch=flux_rows, latents=torch.zeros(2, 64, 4), **FLUX_CALL)
    with pytest.raises(ValueError, match=r"generators of length 2.*batch size of 3"):  # diffusers' own check
        run_job(flux_pipe, batches, per_batch=lambda b, seeds: flux_rows(b, (0, 1, 2)), **FLUX_CALL)
    with pytest.raises(ValueError, match=r"\['prompt_embeds'\] given both"):
        run_job(flux_pipe, batches, per_batch=flux_rows, prompt_embeds=torch.zeros(2, 12, 32), **FLUX_CALL)
    assert attached_handle(flux_pipe) is None  # a refused job leaves nothing attached


def test_record_round_trips_through_json_with_its_settings():
    batches, rng, drawn = fresh_job(3, 4)
    settings = RepulsionConfig(memory=True, blocks=(0, 3), branches=("cond",), step_strength=rng.uniform(0.1, 5))
    job_records = records(batches, repulsion=settings, spell=SPELL, generator_device="cuda")
    for record in job_records:
        assert stored(record) == record, drawn
    assert job_records[-1].to_dict()["seed"] == batches[2][3] and job_records[-1].generator_device == "cuda"


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("index"), r"missing key\(s\) \['index'\]"),
        (lambda d: d.update(batch_size=4), r"unknown key\(s\) \['batch_size'\]"),
        (lambda d: d["batches"][1].__setitem__(0, 99), r"seed 6 does not match batches\[1\]\[0\] = 99"),
        (lambda d: d.update(index=3), r"index must be a member of batch 1 in \[0, 2\)"),
        (lambda d: d.update(version=2), "version 2 is not this library's"),
        (lambda d: d["repulsion"].update(strenght=0.5), r"'repulsion' has unknown RepulsionConfig field\(s\)"),
        (lambda d: d["spell"].update(radius=-1.0), "SpellConfig.radius must be"),
        (lambda d: d.update(batches="5,6"), "batches must be a non-empty sequence of batches"),
    ],
    ids=["missing", "unknown", "seed", "index", "version", "repulsion-field", "spell-value", "batches-type"],
)
def test_a_hand_edited_record_is_refused_naming_what_is_wrong(edit, message):
    data = json.loads(json.dumps(BatchRecord(((4, 5), (6, 7)), 1, 0, MEMORY, SPELL).to_dict()))
    edit(data)
    with pytest.raises(ValueError, match=message):
        BatchRecord.from_dict(data)
    with pytest.raises(ValueError, match="expected the dict that to_dict wrote, got list"):
        BatchRecord.from_dict([data])


def test_the_reproduce_module_imports_no_evaluation_code():
    code = (
        "import sys, lib_ctxrep.integrations.diffusers_reproduce\n"
        "print(sorted(m for m in sys.modules if m.startswith('lib_ctxrep.evaluation')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
