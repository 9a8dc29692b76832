"""Multi-subject consistency metrics on masked crops, judged by the trained `SubjectClassifier`.

For scene p and subject i, the reference crop is reference i inside its box and the target crop is
the generated scene inside subject i's target box (both resized to the classifier's crop size):

- `pattern_consistency`: the classifier's pattern (the attribute the caption does not name) agrees
  between reference and target crop; chance is 1 / number of patterns.
- `feature_similarity`: cosine of the classifier's features of the two crops.
- `colour_similarity`: histogram intersection of the two crops' RGB histograms (4 bins per channel)
  over foreground pixels (pixels that differ from the crop's border colour).
- `caption_alignment`: the classifier's identity of the target crop is the identity the caption names.
- `leakage`: mean probability the classifier gives the *other* subjects' identities on the target
  crop of subject i (lower is better).
- `subjects_drawn`: subject i's target box holds foreground (pixels that differ from the image's
  border colour) on at least `DRAWN_FRACTION` of its area, judged on the pipeline's boxes whatever
  `tighten` is. No judge involved: it tells a scene whose subject was left out (nothing can leak from
  it) from one where it was drawn. Ground-truth scenes cover at least 0.47 of every box.

Each is averaged over the subjects of a scene; tables report mean +- std over scenes. Since every
variant is generated from the same seeds, `paired_differences` also compares variants scene by
scene: the mean of the per-scene differences with its standard error, and how many scenes are
better, worse or tied, which separates small effects that the spread over scenes hides.

`tighten=True` judges crops whose boxes are first shrunk to the foreground pixels inside them
(`tighten_boxes`, plain-background scenes only). The classifier is trained on tight ground-truth
crops and is not robust to loose ones (on real single-subject scenes its identity accuracy falls
from 1.00 to 0.48 when the box is enlarged 1.25 times and to 0.04, chance being 1/36, on the whole
image), so with loose pipeline boxes the identity metrics measure the box rather than the subject.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

METRICS = ("pattern_consistency", "feature_similarity", "colour_similarity", "caption_alignment", "leakage")
DRAWN_FRACTION = 0.2  # of a target box's pixels in the foreground: the subject was drawn


def tighten_boxes(images: Tensor, boxes: Tensor, threshold: float = 0.12) -> Tensor:
    """Shrink normalised `boxes (B, S, 4)` of `images (B, 3, H, W)` in [0, 1] to the foreground inside them.

    Foreground as in `pipeline.foreground_segmenter` (differs from the border's median colour by more
    than `threshold`); a box without foreground pixels is kept as it is.
    """
    from apps.irdiffusion.pipeline import box_masks, boxes_from_masks, foreground_segmenter

    h, w = images.shape[-2:]
    inside = box_masks(boxes, h, w) & foreground_segmenter(images, threshold)[:, None]  # (B, S, H, W)
    tight = boxes_from_masks(inside)
    empty = ~inside.flatten(-2).any(-1)
    return torch.where(empty[..., None], boxes, tight)


def drawn_fraction(images: Tensor, boxes: Tensor, threshold: float = 0.12) -> Tensor:
    """Share `(B, S)` of each normalised box `(B, S, 4)` of `images (B, 3, H, W)` in [0, 1] that is
    foreground (`pipeline.foreground_segmenter`); 0 for an empty box."""
    from apps.irdiffusion.pipeline import box_masks, foreground_segmenter

    h, w = images.shape[-2:]
    inside = box_masks(boxes, h, w)  # (B, S, H, W)
    fg = inside & foreground_segmenter(images, threshold)[:, None]
    return fg.flatten(-2).sum(-1) / inside.flatten(-2).sum(-1).clamp_min(1)


def pixel_boxes(boxes: Tensor, h: int, w: int) -> Tensor:
    return boxes * torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)


def colour_histograms(crops: Tensor, bins: int = 4, threshold: float = 0.12) -> Tensor:
    """Normalised joint RGB histograms `(B, bins ** 3)` of crops `(B, 3, c, c)` in [0, 1], foreground only."""
    b = crops.shape[0]
    border = torch.cat([crops[..., 0, :], crops[..., -1, :], crops[..., :, 0], crops[..., :, -1]], dim=-1)
    background = border.median(dim=-1).values[..., None, None]
    foreground = (crops - background).abs().amax(dim=1) > threshold  # (B, c, c)
    q = (crops.clamp(0, 1) * bins).long().clamp_max(bins - 1)
    index = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]  # (B, c, c)
    hist = torch.zeros(b, bins**3, device=crops.device)
    hist.scatter_add_(1, index.flatten(1), foreground.flatten(1).float())
    return hist / hist.sum(dim=1, keepdim=True).clamp_min(1.0)


@torch.no_grad()
def subject_metrics(
    classifier: torch.nn.Module,
    references: Tensor,
    ref_boxes: Tensor,
    images: Tensor,
    target_boxes: Tensor,
    identity: Tensor,
    tighten: bool = False,
) -> dict[str, Tensor]:
    """Per-scene metrics `(P,)` for references `(P, S, 3, H, W)` and target images `(P, 3, H, W)` in [0, 1].

    Boxes are normalised `(P, S, 4)`; `identity (P, S)` are the captioned identities; `tighten`
    shrinks every box to the foreground inside it first (`tighten_boxes`).
    """
    p, s, _, h, w = references.shape
    drawn = drawn_fraction(images, target_boxes) >= DRAWN_FRACTION  # (P, S), on the untightened boxes
    if tighten:
        ref_boxes = tighten_boxes(references.flatten(0, 1), ref_boxes.reshape(p * s, 1, 4)).view(p, s, 4)
        target_boxes = tighten_boxes(images, target_boxes)
    ref_crops = classifier.crop(
        references.flatten(0, 1) * 2 - 1, pixel_boxes(ref_boxes, h, w).reshape(p * s, 1, 4)
    )  # (P*S, 3, c, c)
    target_crops = classifier.crop(images * 2 - 1, pixel_boxes(target_boxes, h, w))  # (P*S, 3, c, c)
    ref_id, ref_pattern, ref_feat = classifier(ref_crops)
    tgt_id, tgt_pattern, tgt_feat = classifier(target_crops)
    pattern = (ref_pattern.argmax(-1) == tgt_pattern.argmax(-1)).float()
    feature = (ref_feat * tgt_feat).sum(-1)
    colour = torch.minimum(
        colour_histograms((ref_crops + 1) / 2), colour_histograms((target_crops + 1) / 2)
    ).sum(-1)
    ids = identity.reshape(-1).long()
    alignment = (tgt_id.argmax(-1) == ids).float()
    probs = F.softmax(tgt_id, dim=-1).view(p, s, -1)
    others = torch.gather(probs, 2, identity.long()[:, None, :].expand(p, s, s))  # (P, S_i, S_j)
    off_diagonal = ~torch.eye(s, dtype=torch.bool)
    leakage = (others * off_diagonal).sum(-1) / max(s - 1, 1)
    per_subject = {
        "pattern_consistency": pattern.view(p, s),
        "feature_similarity": feature.view(p, s),
        "colour_similarity": colour.view(p, s),
        "caption_alignment": alignment.view(p, s),
        "leakage": leakage,
        "reference_alignment": (ref_id.argmax(-1) == ids).float().view(p, s),
        "subjects_drawn": drawn.float(),
    }
    return {name: value.mean(dim=1) for name, value in per_subject.items()}


def summarise(values: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, tuple[float, float]]]:
    """variant -> metric -> per-scene values  ==>  variant -> metric -> (mean, std)."""
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for variant, metrics in values.items():
        table[variant] = {}
        for name, vals in metrics.items():
            t = torch.tensor(vals, dtype=torch.float64)
            std = float(t.std(unbiased=True)) if t.numel() > 1 else 0.0
            table[variant][name] = (float(t.mean()), std)
    return table


def markdown_table(table: dict[str, dict[str, tuple[float, float]]], names: tuple[str, ...] = METRICS) -> str:
    header = "| variant | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    rows = [
        f"| {variant} | " + " | ".join(f"{m[n][0]:.3f} ± {m[n][1]:.3f}" for n in names) + " |"
        for variant, m in table.items()
    ]
    return header + "\n".join(rows) + "\n"


# the comparisons of the target: the full method against vanilla and against each part alone
PAIRS = (
    ("both", "vanilla"),
    ("both", "isolation"),
    ("both", "reposition"),
    ("isolation", "vanilla"),
    ("reposition", "vanilla"),
    ("mutual", "vanilla"),
    ("extended", "vanilla"),
)


def paired_differences(
    values: dict[str, dict[str, list[float]]],
    pairs: tuple[tuple[str, str], ...] = PAIRS,
    where: str | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """`"a - b"` -> metric -> {mean, se, better, worse, tied, n} over scenes, for the pairs present.

    `values` holds per-scene values in the same scene order for every variant (the same seeds);
    `better` counts scenes where `a` is higher (for `leakage` lower is better: it counts lower).
    `where` names a per-scene metric: only scenes where it is 1 in both variants are compared (e.g.
    `subjects_drawn`: every subject drawn in both images).
    """
    out: dict[str, dict[str, dict[str, float]]] = {}
    for a, b in pairs:
        if a not in values or b not in values:
            continue
        keep = None
        if where is not None:
            if where not in values[a] or where not in values[b]:
                continue
            keep = (torch.tensor(values[a][where]) == 1) & (torch.tensor(values[b][where]) == 1)
        out[f"{a} - {b}"] = {}
        for name in values[a]:
            if name not in values[b]:
                continue
            x = torch.tensor(values[a][name], dtype=torch.float64)
            y = torch.tensor(values[b][name], dtype=torch.float64)
            if x.shape != y.shape:
                raise ValueError(f"{a} and {b} have different numbers of scenes for {name}")
            if keep is not None:
                x, y = x[keep], y[keep]
            d = x - y
            n = d.numel()
            se = float(d.std(unbiased=True)) / n**0.5 if n > 1 else 0.0
            gain = -d if "leakage" in name else d  # leakage, leakage_fg, dino_leakage
            out[f"{a} - {b}"][name] = {
                "mean": float(d.mean()) if n else 0.0,
                "se": se,
                "better": int((gain > 0).sum()),
                "worse": int((gain < 0).sum()),
                "tied": int((gain == 0).sum()),
                "n": n,
            }
    return out


def paired_markdown(paired: dict[str, dict[str, dict[str, float]]], names: tuple[str, ...] = METRICS) -> str:
    """Rows `a - b`, cells `mean ± se (better/worse)` for the metrics `names` present."""
    names = tuple(n for n in names if any(n in m for m in paired.values()))
    header = "| difference | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    rows = []
    for pair, metrics in paired.items():
        cells = []
        for n in names:
            m = metrics.get(n)
            cells.append(f"{m['mean']:+.3f} ± {m['se']:.3f} ({m['better']}/{m['worse']})" if m else "–")
        rows.append(f"| {pair} | " + " | ".join(cells) + " |")
    return header + "\n".join(rows) + "\n"
