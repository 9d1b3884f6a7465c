"""The reference model's data: the generator, the analytic classifier, the text encoder and the metrics agree."""

from __future__ import annotations

import pytest
import torch

from lib_ctxrep.evaluation.reference import data, metrics, text


@pytest.fixture(scope="module")
def dataset():
    return data.make_dataset(4000, seed=123)


def test_classifier_recovers_every_generated_mode(dataset):
    images, classes, modes = dataset
    assert images.shape == (4000, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    r = data.classify(images)
    assert r.valid.all()
    assert torch.equal(r.class_id, classes)
    assert torch.equal(r.modes, modes)
    assert torch.equal(r.mode, data.mode_index(modes))
    # the sample covers every class and every value of every attribute
    assert set(classes.tolist()) == set(range(len(data.CLASSES)))
    for a, size in enumerate(data.ATTRIBUTE_SIZES):
        assert set(modes[:, a].tolist()) == set(range(size))
    assert r.iou.min() == 1.0 and r.margin.min() > 0.3


def test_classifier_recovers_all_canonical_modes():
    classes = torch.arange(len(data.CLASSES)).repeat_interleave(data.NUM_MODES)
    modes = data.mode_tuple(torch.arange(data.NUM_MODES).repeat(len(data.CLASSES)))
    r = data.classify(data.render(classes, modes, jitter=False))
    assert r.valid.all() and torch.equal(r.class_id, classes) and torch.equal(r.modes, modes)


def test_mode_index_round_trip_and_probabilities():
    idx = torch.arange(data.NUM_MODES)
    assert torch.equal(data.mode_index(data.mode_tuple(idx)), idx)
    assert data.MODE_PROBS.shape == (len(data.CLASSES), data.NUM_MODES)
    assert torch.allclose(data.MODE_PROBS.sum(1), torch.ones(len(data.CLASSES), dtype=torch.float64))
    # unequal: the most frequent mode is far more probable than the rarest, and it differs between classes
    assert (data.MODE_PROBS.max(1).values / data.MODE_PROBS.min(1).values > 1000).all()
    assert len(set(data.MODE_PROBS.argmax(1).tolist())) == len(data.CLASSES)
    assert data.mode_name(0, (0, 0, 0, 0)) == "square large red top-left dark"


@pytest.mark.parametrize("class_id", [0, 3])
def test_sample_modes_match_declared_probabilities(class_id):
    n = 20000
    modes = data.sample_modes(n, class_id, torch.Generator().manual_seed(class_id))
    for a, probs in enumerate(data.attribute_probs(class_id)):
        freq = torch.bincount(modes[:, a], minlength=len(probs)).double() / n
        sigma = (probs * (1 - probs) / n).sqrt()
        assert ((freq - probs).abs() <= 4 * sigma + 1e-9).all(), (a, freq, probs)
    # joint: the empirical mode distribution is close to MODE_PROBS (total variation)
    freq = torch.bincount(data.mode_index(modes), minlength=data.NUM_MODES).double() / n
    assert 0.5 * (freq - data.MODE_PROBS[class_id]).abs().sum() < 0.04


def test_sample_modes_is_deterministic_and_checks_shapes():
    a = data.sample_modes(50, torch.arange(50) % 4, torch.Generator().manual_seed(1))
    b = data.sample_modes(50, torch.arange(50) % 4, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    with pytest.raises(ValueError):
        data.sample_modes(5, torch.zeros(4).long())
    x1, c1, m1 = data.make_dataset(10, seed=5)
    x2, c2, m2 = data.make_dataset(10, seed=5)
    assert torch.equal(x1, x2) and torch.equal(c1, c2) and torch.equal(m1, m2)


def test_garbage_is_invalid(dataset):
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(500, 3, 16, 16, generator=g) * 2 - 1
    assert not data.classify(noise).valid.any()
    gaussian = (torch.randn(500, 3, 16, 16, generator=g) * 0.5).clamp(-1, 1)
    assert not data.classify(gaussian).valid.any()
    assert not data.classify(data.BACKGROUND_IMAGES).valid.any()  # no shape
    assert not data.classify(torch.zeros(3, 3, 16, 16)).valid.any()
    images = dataset[0][:500]
    noisy = (images + 0.5 * torch.randn(images.shape, generator=g)).clamp(-1, 1)
    assert data.classify(noisy).valid.float().mean() < 0.05
    # two shapes of different colours (one image's shape pasted beside another's) are not one clean instance
    two = images[:200].clone()
    two[:, :, :, :8] = images[200:400, :, :, 8:]
    r = data.classify(two)
    assert r.valid.float().mean() < 0.5


def test_text_encoder_is_deterministic_and_ignores_case():
    embeds, pooled = text.encode(["square", "", "A Cross"])
    assert embeds.shape == (3, text.SEQ_LEN, text.TEXT_DIM) and pooled.shape == (3, text.POOLED_DIM)
    again, _ = text.encode(["square", "", "a cross"])
    assert torch.equal(embeds, again)
    assert not torch.equal(embeds[0], embeds[1])
    e2, p2 = text.encode_classes(torch.tensor([0, 0]), drop=torch.tensor([False, True]))
    assert torch.equal(e2[0], embeds[0]) and torch.equal(e2[1], embeds[1]) and torch.equal(p2[1], pooled[1])


def test_text_encoder_refuses_unknown_words_naming_them():
    with pytest.raises(ValueError, match="'red'.*square"):
        text.encode(["a red square"])
    with pytest.raises(ValueError, match="at most"):
        text.encode(["a " * text.SEQ_LEN + "square"])


def test_prompts_are_padded_like_t5_and_the_mask_marks_their_words_and_end_token():
    prompts = ["square", "", "a picture of a cross"]
    mask = text.token_mask(prompts)
    assert mask.shape == (3, text.SEQ_LEN) and mask.sum(1).tolist() == [2, 1, 6]
    assert all(bool(row[: int(row.sum())].all()) for row in mask)  # real tokens first, then padding


def test_the_padding_carries_the_prompt_but_never_reaches_the_real_tokens():
    """As in T5 with its attention mask: the real tokens' outputs do not depend on how much padding follows (the
    padding is masked out of the keys), while the padding outputs differ from prompt to prompt, as Flux sees them."""
    square, cross = text.encode(["square", "cross"])[0]
    assert not torch.allclose(square[5:], cross[5:])  # padding differs with the prompt
    ids, mask = text._ids(["a square"])
    wider = text._encode_ids(ids, mask)
    longer_mask = mask.clone()
    longer_mask[0, 3] = True  # one more position counted as real: the real tokens' outputs change
    assert not torch.allclose(text._encode_ids(ids, longer_mask)[0, :3], wider[0, :3])
    shorter = ids.clone()
    shorter[0, 5:] = len(text.VOCABULARY) - 1  # other words in the padded positions: the real tokens do not see them
    torch.testing.assert_close(text._encode_ids(shorter, mask)[0, :3], wider[0, :3], rtol=0, atol=0)


def test_every_training_template_names_its_class_and_fits():
    for k in range(len(data.CLASSES)):
        for t in range(len(text.TEMPLATES)):
            prompt = text.class_prompt(k, t)
            assert data.CLASSES[k] in prompt.split() and len(text.tokenize(prompt)) <= text.SEQ_LEN


def test_metrics_on_the_data_itself(dataset):
    images, classes, _ = dataset
    r = data.classify(images)
    assert metrics.fidelity(r) == 1.0
    assert metrics.class_accuracy(r, classes) == 1.0
    assert metrics.class_accuracy(r, (classes + 1) % 4) == 0.0
    assert metrics.mode_recall(r, classes) == 1.0
    share, data_share = metrics.top_mode_share(r, classes)
    assert abs(share - data_share) < 0.03
    assert metrics.total_variation(r, classes) < 0.15
    for sample_p, data_p in metrics.attribute_shares(r, classes).values():
        assert abs(sample_p - data_p) < 0.05
    assert 0 < metrics.expected_mode_recall(8) < 0.3 < metrics.expected_mode_recall(256) <= 1
    # one mode repeated: recall of one mode out of those counted
    one = data.render(torch.zeros(8).long(), torch.zeros(8, 4).long())
    eligible = int((data.MODE_PROBS[0] >= metrics.DEFAULT_MIN_PROB).sum())
    assert metrics.mode_recall(one, 0) == pytest.approx(1 / eligible)
    assert metrics.batch_mode_recall(one, 0, batch=4) == pytest.approx(1 / eligible)
