"""Ground-truth metrics on the reference model's samples: fidelity, class accuracy, mode recall, typicality bias.

What it is for: every sample is mapped to its mode by the analytic classifier (:func:`.data.classify`), and the sample
distribution over modes is compared with the data distribution (:data:`.data.MODE_PROBS`), which is known exactly. Each
function takes images ``[N, 3, 16, 16]`` or an already computed :class:`.data.ClassifierResult`, plus the class each
sample was prompted with. Only *accepted* samples (valid and of the prompted class) count towards modes.
"""

from __future__ import annotations

import torch

from .data import CLASSES, MODE_PROBS, NUM_MODES, ClassifierResult, classify

DEFAULT_MIN_PROB = 0.01
"""Modes at least this probable in the data (26 of 96 per class, 78 % of the mass) are the ones recall counts."""


def _result(images_or_result: torch.Tensor | ClassifierResult) -> ClassifierResult:
    if isinstance(images_or_result, ClassifierResult):
        return images_or_result
    return classify(images_or_result)


def _classes(class_ids: torch.Tensor | list[int] | int, n: int) -> torch.Tensor:
    c = torch.as_tensor(class_ids).long()
    return c.expand(n) if c.ndim == 0 else c.reshape(-1)


def accepted(
    images_or_result: torch.Tensor | ClassifierResult, class_ids: torch.Tensor | list[int] | int
) -> torch.Tensor:
    """Bool ``[N]``: the sample is a valid instance of the class it was prompted with."""
    r = _result(images_or_result)
    return r.valid & (r.class_id == _classes(class_ids, r.valid.shape[0]))


def fidelity(images_or_result: torch.Tensor | ClassifierResult) -> float:
    """Share of samples the classifier finds valid (a clean, recognisable instance of some mode)."""
    r = _result(images_or_result)
    return float(r.valid.float().mean()) if r.valid.numel() else float("nan")


def class_accuracy(
    images_or_result: torch.Tensor | ClassifierResult, class_ids: torch.Tensor | list[int] | int
) -> float:
    """Share of samples that are valid *and* of the prompted class."""
    ok = accepted(images_or_result, class_ids)
    return float(ok.float().mean()) if ok.numel() else float("nan")


def mode_counts(
    images_or_result: torch.Tensor | ClassifierResult, class_ids: torch.Tensor | list[int] | int
) -> torch.Tensor:
    """Counts ``[4, 96]`` of accepted samples per (prompted class, mode)."""
    r = _result(images_or_result)
    classes = _classes(class_ids, r.valid.shape[0])
    ok = accepted(r, classes)
    flat = classes[ok] * NUM_MODES + r.mode[ok]
    return torch.bincount(flat, minlength=len(CLASSES) * NUM_MODES).reshape(len(CLASSES), NUM_MODES)


def mode_recall(
    images_or_result: torch.Tensor | ClassifierResult,
    class_ids: torch.Tensor | list[int] | int,
    min_prob: float = DEFAULT_MIN_PROB,
) -> float:
    """Share of the data's modes with probability >= ``min_prob`` hit by at least one accepted sample.

    Over the classes present in ``class_ids``: (modes hit) / (modes counted). Compare with
    :func:`expected_mode_recall`, the recall of as many samples drawn from the data itself.
    """
    r = _result(images_or_result)
    classes = _classes(class_ids, r.valid.shape[0])
    counts = mode_counts(r, classes)
    present = torch.unique(classes)
    eligible = MODE_PROBS[present] >= min_prob
    hit = (counts[present] > 0) & eligible
    return float(hit.sum() / eligible.sum().clamp(min=1))


def expected_mode_recall(n: int, min_prob: float = DEFAULT_MIN_PROB, class_id: int = 0) -> float:
    """Expected :func:`mode_recall` of ``n`` independent samples of one class drawn from the data distribution."""
    p = MODE_PROBS[class_id]
    p = p[p >= min_prob]
    return float((1 - (1 - p) ** n).mean())


def mode_distribution(
    images_or_result: torch.Tensor | ClassifierResult, class_ids: torch.Tensor | list[int] | int
) -> torch.Tensor:
    """Empirical mode distribution ``[4, 96]`` of accepted samples per prompted class (absent classes: zeros)."""
    counts = mode_counts(images_or_result, class_ids).double()
    return counts / counts.sum(1, keepdim=True).clamp(min=1)


def top_mode_share(
    images_or_result: torch.Tensor | ClassifierResult, class_ids: torch.Tensor | list[int] | int, k: int = 1
) -> tuple[float, float]:
    """(share of accepted samples in each class's ``k`` most probable data modes, those modes' data probability).

    Both averaged over the classes present; a first number well above the second is typicality bias.
    """
    r = _result(images_or_result)
    classes = _classes(class_ids, r.valid.shape[0])
    dist = mode_distribution(r, classes)
    present = torch.unique(classes)
    top = MODE_PROBS[present].topk(k, dim=1).indices
    sample_share = dist[present].gather(1, top).sum(1)
    data_share = MODE_PROBS[present].gather(1, top).sum(1)
    return float(sample_share.mean()), float(data_share.mean())


def attribute_shares(
    images_or_result: torch.Tensor | ClassifierResult, class_ids: torch.Tensor | list[int] | int
) -> dict[str, tuple[float, float]]:
    """Per attribute: (share of accepted samples with the class's most frequent value, its data probability)."""
    from .data import ATTRIBUTES, attribute_probs

    r = _result(images_or_result)
    classes = _classes(class_ids, r.valid.shape[0])
    ok = accepted(r, classes)
    out = {}
    for a, name in enumerate(ATTRIBUTES):
        hits, total, data_p = 0.0, 0, []
        for k in torch.unique(classes).tolist():
            probs = attribute_probs(k)[a]
            top = int(probs.argmax())
            sel = ok & (classes == k)
            hits += float((r.modes[sel, a] == top).sum())
            total += int(sel.sum())
            data_p.append(float(probs[top]))
        out[name] = (hits / max(total, 1), sum(data_p) / max(len(data_p), 1))
    return out


def total_variation(
    images_or_result: torch.Tensor | ClassifierResult, class_ids: torch.Tensor | list[int] | int
) -> float:
    """Total-variation distance between the accepted samples' mode distribution and the data's, mean over classes.

    Classes without an accepted sample are left out (``nan`` if there is none at all).
    """
    r = _result(images_or_result)
    classes = _classes(class_ids, r.valid.shape[0])
    counts = mode_counts(r, classes)
    present = [k for k in torch.unique(classes).tolist() if counts[k].sum() > 0]
    if not present:
        return float("nan")
    dist = mode_distribution(r, classes)[present]
    return float(0.5 * (dist - MODE_PROBS[present]).abs().sum(1).mean())


def batch_mode_recalls(
    images_or_result: torch.Tensor | ClassifierResult,
    class_ids: torch.Tensor | list[int] | int,
    batch: int = 8,
    min_prob: float = DEFAULT_MIN_PROB,
) -> list[float]:
    """:func:`mode_recall` of each consecutive chunk of ``batch`` samples (each chunk should be one class)."""
    r = _result(images_or_result)
    n = r.valid.shape[0]
    classes = _classes(class_ids, n)
    values = []
    for i in range(0, n - batch + 1, batch):
        sl = slice(i, i + batch)
        part = ClassifierResult(*(getattr(r, f)[sl] for f in ClassifierResult.__dataclass_fields__))
        values.append(mode_recall(part, classes[sl], min_prob))
    return values


def batch_mode_recall(
    images_or_result: torch.Tensor | ClassifierResult,
    class_ids: torch.Tensor | list[int] | int,
    batch: int = 8,
    min_prob: float = DEFAULT_MIN_PROB,
) -> float:
    """Mean :func:`mode_recall` over consecutive chunks of ``batch`` samples (each chunk should be one class)."""
    values = batch_mode_recalls(images_or_result, class_ids, batch, min_prob)
    return sum(values) / len(values) if values else float("nan")
