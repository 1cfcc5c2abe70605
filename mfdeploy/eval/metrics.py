"""Zero-shot classification accuracy, retrieval recall@k, and retention: pure numpy functions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

RETRIEVAL_KEYS = ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5")
_ROW_CHUNK = 1024  # rows of a similarity matrix held at once: bounded memory on large pair files


def zero_shot_accuracy(image_embeds: np.ndarray, class_embeds: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of zero-shot classification.

    The predicted class of an image is the argmax of the cosine similarity
    between its embedding and the embeddings of the class prompts (the
    embeddings are L2-normalised, so a dot product is the cosine). Every
    family's score is increasing in the cosine: CLIP's softmax of
    `exp(logit_scale) * cos` and SigLIP's per-pair sigmoid of
    `exp(logit_scale) * cos + logit_bias` both rank the classes as the cosine
    does, so the accuracy (and retrieval recall) is the family's own.

    Args:
        image_embeds: `[N, D]` L2-normalised image embeddings.
        class_embeds: `[C, D]` L2-normalised embeddings of one prompt per class.
        labels: `[N]` true class index of every image.

    Returns:
        The fraction of images whose predicted class is the true one, in [0, 1]. Where the true class
        ties for the top score with others, the image counts as the chance of picking it among them, the
        expected accuracy when ties are broken at random (a tower that gives every input one embedding
        scores chance, not the share of class 0).
    """
    labels = np.asarray(labels)
    if image_embeds.shape[0] != labels.shape[0]:
        raise ValueError(f"{image_embeds.shape[0]} images but {labels.shape[0]} labels")
    if image_embeds.shape[0] == 0:
        raise ValueError("no images to classify")
    scores = image_embeds @ class_embeds.T  # [N, C]
    true = np.take_along_axis(scores, labels[:, None], axis=1)  # [N, 1]
    above = (scores > true).sum(axis=1)
    tied = (scores == true).sum(axis=1)  # the true class included
    # a tie is broken at random: an image whose true class shares the top score with t others counts 1 / (t + 1)
    return float(np.where(above == 0, 1.0 / tied, 0.0).mean())


def _recall_rows(sim: np.ndarray, positives: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Recall@k over the rows of `sim`: a row is a hit when a positive column ranks within k.

    Ties are broken at random and a row counts its chance of a hit (the
    expected recall): with `a` negatives strictly above the best positive
    score and `t` negatives and `m` positives at that score, the positives
    of the tie fall at random among its `t + m` places, and the row is a hit
    when fewer than `k - a` negatives come before the first of them. A
    degenerate tower that gives every caption one embedding thus scores
    chance (k / N), not 100%. Captions equal as text are one column with
    several positives (`eval.datasets`), so they need no tie rule.
    """
    if not positives.any(axis=1).all():
        raise ValueError("every query needs at least one positive")
    hits = dict.fromkeys(ks, 0.0)
    for start in range(0, sim.shape[0], _ROW_CHUNK):
        s = sim[start:start + _ROW_CHUNK]  # [R, M]
        p = positives[start:start + _ROW_CHUNK]
        best_pos = np.where(p, s, -np.inf).max(axis=1, keepdims=True)  # [R, 1]
        above = ((s > best_pos) & ~p).sum(axis=1)  # [R] negatives strictly above the best positive
        tied = ((s == best_pos) & ~p).sum(axis=1)  # [R] negatives level with it
        level = ((s == best_pos) & p).sum(axis=1)  # [R] positives at the best score (at least 1)
        for k in ks:
            hits[k] += float(_tie_hit(k - above, tied, level).sum())
    return {k: hits[k] / sim.shape[0] for k in ks}


def _tie_hit(slots: np.ndarray, tied: np.ndarray, level: np.ndarray) -> np.ndarray:
    """The chance that fewer than `slots` of `tied` negatives precede the first of `level` positives when the
    `tied + level` items are ordered at random: 1 - C(tied, slots) / C(tied + level, slots), 0 for no slot."""
    slots, tied, level = (np.asarray(a, dtype=np.int64) for a in (slots, tied, level))
    all_negative = np.ones(slots.shape)  # P(the first `slots` places of the tie all hold negatives)
    for j in range(int(slots.max(initial=0))):
        left = tied + level - j  # places left; past `tied` places the product is already 0
        step = np.divide(np.clip(tied - j, 0, None), left, out=np.zeros(left.shape), where=left > 0)
        all_negative = np.where(j < slots, all_negative * step, all_negative)
    return np.where(slots <= 0, 0.0, 1.0 - all_negative)


def retrieval_recall(similarity: np.ndarray, positives: np.ndarray | None = None,
                     ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Image->text and text->image recall@k.

    Image->text: for every image (row), a hit when one of its captions ranks
    within the top k of all captions; text->image: for every caption
    (column), a hit when one of its images ranks within the top k of all
    images. Several positives per query (a caption shared by several images,
    several captions of one image) are allowed, as in the COCO protocol.

    Args:
        similarity: `[N_images, N_texts]` image-text similarities.
        positives: `[N_images, N_texts]` bool, True where the pair matches;
            default: the identity (image i is paired with caption i).
        ks: the k of recall@k.

    Returns:
        `{"i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"}` (for the default `ks`), each in [0, 1].
    """
    similarity = np.asarray(similarity)
    if positives is None:
        if similarity.shape[0] != similarity.shape[1]:
            raise ValueError("a non-square similarity matrix needs an explicit positives matrix")
        positives = np.eye(similarity.shape[0], dtype=bool)
    positives = np.asarray(positives, dtype=bool)
    if positives.shape != similarity.shape:
        raise ValueError(f"positives {positives.shape} do not match similarity {similarity.shape}")
    i2t = _recall_rows(similarity, positives, ks)
    t2i = _recall_rows(similarity.T, positives.T, ks)
    out = {f"i2t_r{k}": v for k, v in i2t.items()}
    out.update({f"t2i_r{k}": v for k, v in t2i.items()})
    return out


def _ratio(pruned: float | None, dense: float | None) -> float | None:
    if pruned is None or dense is None or dense <= 0:
        return None  # undefined: nothing to retain
    return float(pruned) / float(dense)


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def retention(pruned: Mapping, dense: Mapping) -> dict:
    """How much of the dense model's quality a pruned model keeps: pruned / dense, per metric.

    Args:
        pruned: an evaluation result (`{"tasks": {...}, "retrieval": {...}}`).
        dense: the dense model's result on the same data.

    Returns:
        `{"tasks": {task: ratio}, "retrieval": {metric: ratio},
        "mean_task_retention": mean over tasks, "mean_retention": mean over
        tasks and retrieval metrics}`. A ratio is None when the dense value is
        0 (undefined) and is left out of the means; a mean is None when it has
        no values. Only metrics present in both results are compared.
    """
    out: dict = {"tasks": {}, "retrieval": {}}
    for section in ("tasks", "retrieval"):
        p, d = pruned.get(section) or {}, dense.get(section) or {}
        for name in p:
            if name in d:
                out[section][name] = _ratio(p[name], d[name])
    out["mean_task_retention"] = _mean(list(out["tasks"].values()))
    out["mean_retention"] = _mean(list(out["tasks"].values()) + list(out["retrieval"].values()))
    return out
