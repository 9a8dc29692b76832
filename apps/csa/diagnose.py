"""Diagnostics of a trained BMN(+CSA) run: ``python -m apps.csa.diagnose RUN_DIR [RUN_DIR ...]``.

For each run folder (``config.yaml``, ``metrics.json`` and checkpoints, as ``apps.train`` writes them)
it prints, on the test split:

- CSA's gates (when the run has CSA): mean, spread over videos of the channel weights (0 means the
  channel branch gives every video the same weights), and the temporal weights inside and outside
  the ground-truth segments;
- the average recall of the top 100 proposals over tIoU 0.5:0.05:0.95 by ground-truth length
  (short < 10 % of the video, medium < 40 %, long), with the ceiling that proposals on BMN's
  ``T``-snippet grid can reach (the best grid interval for every segment);
- the class-agnostic average precision of the top 100 proposals of every video pooled over the
  test videos (tIoU 0.5:0.05:0.95, mmaction2's detection AP with one class), with the proposals'
  own scores and with each video's scores divided by that video's highest: detection mAP ranks
  proposals *across* videos while AR@AN counts them per video, so a model can lead on AR and trail
  on mAP when its scores are less comparable between videos, which the second number removes;
- once per dataset: how well one snippet of the input features tells action from background
  (logistic regression fitted on the training snippets).

Used for the README's analysis of why CSA does not beat BMN on the default dataset.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

TIOU = np.arange(0.5, 0.96, 0.05)
LENGTHS = (("short", 0.1), ("medium", 0.4), ("long", float("inf")))


def length_bin(fraction: float) -> str:
    """``short`` / ``medium`` / ``long`` for a segment covering ``fraction`` of the video."""
    return next(name for name, limit in LENGTHS if fraction < limit)


def best_iou(proposals: np.ndarray, segment: tuple[float, float]) -> float:
    """Highest tIoU of ``proposals (N, 2)`` with ``segment``; 0 without proposals."""
    if len(proposals) == 0:
        return 0.0
    start, end = segment
    inter = np.clip(np.minimum(proposals[:, 1], end) - np.maximum(proposals[:, 0], start), 0, None)
    union = np.maximum(proposals[:, 1], end) - np.minimum(proposals[:, 0], start)
    return float((inter / union).max())


def grid_intervals(temporal_dim: int) -> np.ndarray:
    """All intervals ``[i, j] / T`` (``i < j``) of the snippet grid, ``(T (T + 1) / 2, 2)``."""
    i, j = np.triu_indices(temporal_dim + 1, k=1)
    return np.stack([i, j], axis=1) / temporal_dim


def recall_by_length(
    segments: list[tuple[float, float]], proposals: list[np.ndarray]
) -> dict[str, tuple[float, int]]:
    """Mean over segments of the fraction of tIoU thresholds met, per length bin: ``{bin: (AR, n)}``.

    ``segments[k]``: normalised ``(start, end)``; ``proposals[k]``: that video's normalised ``(N, 2)``.
    """
    hits: dict[str, list[float]] = {name: [] for name, _ in LENGTHS}
    for segment, props in zip(segments, proposals):
        hits[length_bin(segment[1] - segment[0])].append(float((best_iou(props, segment) >= TIOU).mean()))
    return {name: (float(np.mean(v)) if v else float("nan"), len(v)) for name, v in hits.items()}


def class_agnostic_ap(
    segments: list[list[tuple[float, float]]], proposals: list[list[tuple[float, float, float]]]
) -> dict[str, float]:
    """Average precision over tIoU 0.5:0.05:0.95 of all videos' proposals pooled, one class.

    ``segments[k]``: video k's ground truth ``(start, end)``; ``proposals[k]``: its ``(start, end,
    score)``. ``raw`` ranks by the scores as given, ``per_video_max`` by each score over the highest
    of its video (every video's best proposal then scores 1).
    """
    from apps.csa import mm

    ap_fn = mm.average_precision_detection_fn()
    gts = [
        {"video-id": str(k), "t-start": s, "t-end": e} for k, video in enumerate(segments) for s, e in video
    ]
    report = {}
    for name in ("raw", "per_video_max"):
        preds = []
        for k, video in enumerate(proposals):
            top = max((score for _, _, score in video), default=1.0) or 1.0
            scale = 1.0 / top if name == "per_video_max" else 1.0
            preds += [{"video-id": str(k), "t-start": s, "t-end": e, "score": c * scale} for s, e, c in video]
        report[name] = float(np.mean(ap_fn(gts, preds, TIOU))) if gts and preds else 0.0
    return report


def _inside(boxes: np.ndarray, temporal_dim: int) -> np.ndarray:
    centres = (np.arange(temporal_dim) + 0.5) / temporal_dim
    mask = np.zeros(temporal_dim, dtype=bool)
    for start, end in boxes:
        mask |= (centres >= start) & (centres < end)
    return mask


def _load(run: Path) -> tuple[Any, Any, Any]:
    import hydra
    from omegaconf import OmegaConf

    from apps.common.config import register_resolvers
    from apps.common.module import model_state_dict

    register_resolvers()
    cfg = OmegaConf.load(run / "config.yaml")
    datamodule = hydra.utils.instantiate(cfg.app.data)
    datamodule.setup("test")
    model = hydra.utils.instantiate(cfg.app.model)
    metrics = json.loads((run / "metrics.json").read_text())
    checkpoint = metrics.get("best_checkpoint") or str(run / "checkpoints" / "last.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model.load_state_dict(model_state_dict(state), strict=False)
    return cfg, datamodule, model.eval()


def snippet_probe(datamodule: Any, temporal_dim: int) -> float:
    """Test accuracy of a logistic regression telling action from background on single snippets."""
    from sklearn.linear_model import LogisticRegression

    from apps.csa.data import normalised_boxes

    def snippets(split: str) -> tuple[np.ndarray, np.ndarray]:
        data = datamodule.splits[split]
        x = np.concatenate([f.T for f in data.features])
        y = np.concatenate([_inside(normalised_boxes(v), temporal_dim) for v in data.videos])
        return x, y

    probe = LogisticRegression(max_iter=2000).fit(*snippets("train"))
    return float(probe.score(*snippets("test")))


def diagnose(run: Path, probe: bool = False) -> dict[str, Any]:
    from apps.csa.data import normalised_boxes

    cfg, datamodule, model = _load(run)
    T = int(cfg.app.model.temporal_dim)
    split = datamodule.splits["test"]
    features = torch.as_tensor(np.stack(split.features))
    with torch.no_grad():
        out = model.forward_with_attention(features)
    infos = [{"duration_frame": v.duration_frame, "duration_second": v.duration_second} for v in split.videos]
    proposals = model.proposals(out.confidence_map, out.start, out.end, infos)
    segments, props, grid = [], [], grid_intervals(T)
    per_video_segments, per_video_props = [], []
    for video, video_props in zip(split.videos, proposals):
        span = video.feature_frame / video.duration_frame * video.duration_second
        normalised = np.array([p["segment"] for p in video_props[:100]]).reshape(-1, 2) / span
        boxes = [(float(box[0]), float(box[1])) for box in normalised_boxes(video)]
        for box in boxes:
            segments.append(box)
            props.append(normalised)
        per_video_segments.append(boxes)
        per_video_props.append(
            [(float(a), float(b), float(p["score"])) for (a, b), p in zip(normalised, video_props[:100])]
        )
    report: dict[str, Any] = {
        "run": str(run),
        "recall_by_length": recall_by_length(segments, props),
        "grid_ceiling": recall_by_length(segments, [grid] * len(segments)),
        "class_agnostic_ap": class_agnostic_ap(per_video_segments, per_video_props),
    }
    csa: dict[str, float] = {}
    if out.channel_weights is not None:
        csa["channel_mean"] = float(out.channel_weights.mean())
        csa["channel_std_over_videos"] = float(out.channel_weights.std(dim=0).mean())
    if out.temporal_weights is not None:
        inside = np.stack([_inside(normalised_boxes(v), T) for v in split.videos])
        temporal = out.temporal_weights.numpy()
        csa["temporal_inside"] = float(temporal[inside].mean())
        csa["temporal_outside"] = float(temporal[~inside].mean())
    if csa:
        report["csa"] = csa
    if probe:
        report["snippet_probe_acc"] = snippet_probe(datamodule, T)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--probe", action="store_true", help="also fit the single-snippet probe")
    args = parser.parse_args(argv)
    for index, run in enumerate(args.runs):
        print(json.dumps(diagnose(run, probe=args.probe and index == 0)))


if __name__ == "__main__":
    main()
