"""The reference model: committed weights load deterministically, the sampler is deterministic per seed and
batch-invariant, its hooks work, and training is deterministic for a seed."""

from __future__ import annotations

import pytest
import torch

from lib_ctxrep.evaluation.reference import data, metrics, model, text
from lib_ctxrep.evaluation.reference.train import train


@pytest.fixture(scope="module")
def reference():
    return model.load_reference_model()


def test_committed_weights_load_deterministically(reference):
    assert model.WEIGHTS_PATH.exists()
    assert model.WEIGHTS_PATH.stat().st_size < 8e6
    other = model.load_reference_model()
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())
    for (ka, a), (kb, b) in zip(reference.state_dict().items(), other.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(a, b)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    embeds, pooled = text.encode(["square", ""])
    v1 = model.velocity(reference, x, 0.5, embeds, pooled)
    v2 = model.velocity(other, x, 0.5, embeds, pooled)
    assert torch.equal(v1, v2)


def test_the_committed_weights_load_into_the_documented_architecture_with_both_block_kinds(reference):
    built = {key: reference.config[key] for key in model.REFERENCE_CONFIG}
    assert {**built, "axes_dims_rope": list(built["axes_dims_rope"])} == model.REFERENCE_CONFIG
    assert len(reference.transformer_blocks) >= 1 and len(reference.single_transformer_blocks) >= 1


def test_the_committed_model_draws_clean_instances_of_the_prompted_class(reference):
    """What the benchmark rests on (docs/benchmark.md: at CFG 4, 98 % of reference model v2's samples are clean
    instances of the prompted class, as the current data's classifier judges them)."""
    classes = torch.arange(16) % len(data.CLASSES)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: intra-op threads only cost barrier waits, seconds on busy cores
    try:
        samples = model.sample(reference, classes.tolist(), list(range(16)))
    finally:
        torch.set_num_threads(threads)
    assert metrics.class_accuracy(data.classify(samples), classes) >= 0.8


def test_pack_unpack_and_ids():
    images = data.make_dataset(3, seed=0)[0]
    tokens = model.pack(images)
    assert tokens.shape == (3, 64, 12)
    assert torch.equal(model.unpack(tokens), images)
    ids = model.image_ids()
    assert ids.shape == (64, 3) and ids[9].tolist() == [0.0, 1.0, 1.0]
    assert model.text_ids().shape == (text.SEQ_LEN, 3)


def test_timesteps():
    ts = model.timesteps(4)
    assert ts == [1.0, 0.75, 0.5, 0.25, 0.0]
    shifted = model.timesteps(4, shift=3.0)
    assert shifted[0] == 1.0 and shifted[-1] == 0.0 and shifted[2] == pytest.approx(0.75)
    assert all(a > b for a, b in zip(shifted, shifted[1:], strict=False))


def test_sampler_deterministic_and_batch_invariant(reference):
    prompts, seeds = ["square", "diamond", 2, "cross"], [11, 12, 13, 14]
    a = model.sample(reference, prompts, seeds, steps=2)
    b = model.sample(reference, prompts, seeds, steps=2)
    assert a.shape == (4, 3, 16, 16) and torch.equal(a, b)
    alone = model.sample(reference, [2], [13], steps=2)
    torch.testing.assert_close(alone[0], a[2], atol=1e-4, rtol=0)
    other_seed = model.sample(reference, [2], [99], steps=2)
    assert not torch.allclose(other_seed[0], a[2])
    with pytest.raises(ValueError, match="seed"):
        model.sample(reference, prompts, seeds[:2], steps=2)
    with pytest.raises(ValueError, match="unknown word 'dog'"):
        model.sample(reference, ["a dog"], [0], steps=2)


def test_sampler_hooks(reference):
    seen_t, seen_steps, calls = [], [], []

    def x0_fn(x0, t, step):
        seen_steps.append(step)
        return x0

    def cond_fn(embeds, pooled, t):
        seen_t.append(t)
        assert embeds.shape == (2, text.SEQ_LEN, text.TEXT_DIM) and pooled.shape == (2, text.POOLED_DIM)
        return embeds, pooled

    plain = model.sample(reference, [0, 1], [1, 2], steps=3)
    hooked = model.sample(
        reference, [0, 1], [1, 2], steps=3, x0_fn=x0_fn, cond_fn=cond_fn, callback=lambda *a: calls.append(a[0])
    )
    torch.testing.assert_close(hooked, plain, atol=1e-5, rtol=0)
    assert seen_t == model.timesteps(3)[:-1] and seen_steps == [0, 1, 2] and calls == [0, 1, 2]
    # a modified x0 changes the result; at the last step the output is x0 itself
    target = torch.zeros(2, 3, 16, 16)
    pulled = model.sample(reference, [0, 1], [1, 2], steps=3, x0_fn=lambda x0, t, i: target if i == 2 else x0)
    assert torch.equal(pulled, target)


TINY = dict(model.REFERENCE_CONFIG, num_attention_heads=2, num_layers=1, num_single_layers=1)


def test_a_training_run_is_reproduced_from_the_settings_it_saves(tmp_path):
    a = train(tmp_path / "a.safetensors", seed=3, steps=2, batch=4, config=TINY, quiet=True)
    meta = model.read_metadata(tmp_path / "a.safetensors")
    b = train(None, seed=meta["seed"], steps=meta["schedule_steps"], batch=meta["batch"], config=meta["config"],
              quiet=True)  # fmt: skip
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], model.build_model(TINY, seed=3).state_dict()[k]) for k in a)  # it trained
    loaded = model.load_reference_model(tmp_path / "a.safetensors")
    assert all(torch.equal(loaded.state_dict()[k], a[k]) for k in a)


def test_a_training_run_resumed_from_its_state_equals_one_uninterrupted_run(tmp_path):
    stopped = tmp_path / "resumed.safetensors"
    train(stopped, seed=2, steps=4, batch=4, config=TINY, quiet=True, stop_after=2)
    resumed = train(stopped, seed=2, steps=4, batch=4, config=TINY, quiet=True, resume=True)
    whole = train(tmp_path / "whole.safetensors", seed=2, steps=4, batch=4, config=TINY, quiet=True)
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)
    assert model.read_metadata(stopped)["steps"] == 4


def test_resuming_with_other_settings_is_refused_naming_them(tmp_path):
    path = tmp_path / "w.safetensors"
    train(path, seed=2, steps=4, batch=4, config=TINY, quiet=True, stop_after=1)
    with pytest.raises(ValueError, match="lr"):
        train(path, seed=2, steps=4, batch=4, config=TINY, quiet=True, resume=True, lr=1e-2)
    with pytest.raises(FileNotFoundError, match="training state"):
        train(tmp_path / "none.safetensors", seed=2, steps=4, batch=4, config=TINY, quiet=True, resume=True)


def test_every_prompt_gets_the_same_pooled_vector_so_the_prompt_reaches_the_model_through_its_tokens(tmp_path):
    path = tmp_path / "w.safetensors"
    train(path, seed=1, steps=1, batch=4, config=TINY, quiet=True)
    seen = []
    loaded = model.load_reference_model(path)
    loaded.register_forward_pre_hook(lambda m, a, kw: seen.append(kw), with_kwargs=True)
    prompts = ["square", "diamond", "triangle"]
    model.sample(loaded, prompts, [0, 1, 2], steps=2)
    null = text.encode([""] * 3)
    for call in seen:  # each call: [uncond rows; cond rows]
        assert torch.equal(call["pooled_projections"], torch.cat([null[1], null[1]]))
        assert torch.equal(call["encoder_hidden_states"][:3], null[0])
        assert not torch.equal(call["encoder_hidden_states"][3:], null[0])
    assert len(seen) == 2


def test_commitment_reads_each_steps_prediction_and_the_last_one_is_the_final_image(reference):
    from lib_ctxrep.evaluation.reference.evaluate import commitment

    steps = 3
    profile = commitment(reference, n_per_class=2, steps=steps)
    assert [row["t"] for row in profile] == [round(t, 4) for t in model.timesteps(steps)[:-1]]
    assert all(0 <= row[k] <= 1 for row in profile for k in ("mode", "position", "colour") if row[k] == row[k])
    last = profile[-1]
    assert last["mode"] != last["mode"] or last["mode"] == last["position"] == last["colour"] == 1.0


def test_the_evaluate_command_prints_its_json_keys(capsys, tmp_path):
    import json

    from lib_ctxrep.evaluation.reference.evaluate import main as evaluate

    evaluate(["--guidance", "4", "--n", "8", "--steps", "2", "--threads", "1", "--json", str(tmp_path / "e.json")])
    (report,) = json.loads((tmp_path / "e.json").read_text())
    printed = json.loads(capsys.readouterr().out)
    assert printed == report
    for key in ("fidelity", "mode_recall_batch8", "data_mode_recall_batch8", "top5_mode_share", "top5_mode_data"):
        assert isinstance(report[key], float)
    from lib_ctxrep.evaluation.reference.evaluate import sample_classes

    images, classes = sample_classes(model.load_reference_model(), 8, 4.0, steps=2)
    valid = data.classify(images).valid
    assert report["fidelity_per_class"] == {
        name: float(valid[classes == k].float().mean()) for k, name in enumerate(data.CLASSES)
    }
