"""The one place that imports mmaction2; the rest of the CSA app goes through the accessors here.

The PyPI wheel of mmaction2 1.2.0 cannot be imported as it is, for two reasons this module works
around without editing the installed package:

1. ``mmaction/models/localizers/__init__.py`` runs ``from .drn.drn import DRN`` but the wheel ships
   no ``drn`` folder (open-mmlab/mmaction2#2714, "ModuleNotFoundError: No module named
   'mmaction.models.localizers.drn'", open upstream). When that folder is missing we register two
   placeholder modules, ``mmaction.models.localizers.drn`` and ``mmaction.models.localizers.drn.drn``,
   in ``sys.modules`` before mmaction is imported; their ``DRN`` raises a clear error if built. A
   wheel that has the real module is left alone.
2. ``mmaction.models.multimodal`` imports the VindLU models whenever ``transformers>=4.28`` is
   installed, and VindLU imports helpers (``apply_chunking_to_forward``, ...) from
   ``transformers.modeling_utils`` that transformers 5 no longer has. With transformers 5 or newer we
   turn off mmaction's own ``WITH_MULTIMODAL`` switch, so mmaction registers its placeholders for the
   VindLU models instead (this app uses none of them).

mmcv-lite also warns on import that ``MultiScaleDeformableAttention`` (a compiled op of full mmcv)
is unavailable; BMN does not use it, so exactly that warning is filtered during the import.

Everything used from mmaction2 (all public 1.2.0 API):

- ``mmaction.models.localizers.BMN`` — the model, its sub-modules, ``generate_labels(gt_bbox)``
  (training targets) and ``bm_mask``.
- ``mmaction.models.losses.BMNLoss`` — the BMN loss.
- ``mmaction.models.localizers.utils.post_processing`` / ``soft_nms`` / ``temporal_iou`` — proposal
  post-processing.
- ``mmaction.evaluation.average_recall_at_avg_proposals`` (AR@AN, AUC),
  ``mmaction.evaluation.average_precision_at_temporal_iou`` (class-agnostic AP) and
  ``mmaction.evaluation.functional.eval_detection.compute_average_precision_detection`` (per-class AP
  of ActivityNet detection, averaged into mAP by the caller).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import sys
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DRN_PACKAGE = "mmaction.models.localizers.drn"
DRN_MODULE = "mmaction.models.localizers.drn.drn"
_MSDA_WARNING = r"Fail to import ``MultiScaleDeformableAttention``"

_mmaction: types.ModuleType | None = None


class DRN:
    """Placeholder for mmaction2's DRN, which the 1.2.0 wheel does not ship (open-mmlab/mmaction2#2714)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise ImportError(
            "mmaction.models.localizers.DRN is a placeholder registered by apps.csa.mm: the mmaction2 "
            "1.2.0 wheel lacks mmaction/models/localizers/drn (open-mmlab/mmaction2#2714); install "
            "mmaction2 from source to use DRN"
        )


def _mmaction_root() -> Path:
    spec = importlib.util.find_spec("mmaction")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("mmaction2 is not installed: pip install mmaction2==1.2.0 mmcv-lite==2.1.0")
    return Path(next(iter(spec.submodule_search_locations)))


def drn_is_missing() -> bool:
    """Whether the installed mmaction2 lacks ``models/localizers/drn`` (found without importing it)."""
    folder = _mmaction_root() / "models" / "localizers" / "drn"
    return not ((folder / "drn.py").is_file() or (folder / "drn").is_dir())


def register_drn_placeholder() -> bool:
    """Put placeholder ``drn`` modules in ``sys.modules`` if the wheel lacks them; True if registered.

    Idempotent: does nothing when the real module exists or the placeholders are already there.
    """
    if DRN_MODULE in sys.modules or not drn_is_missing():
        return False
    package = types.ModuleType(DRN_PACKAGE, "Placeholder: missing from the mmaction2 1.2.0 wheel.")
    package.__path__ = []
    module = types.ModuleType(DRN_MODULE, "Placeholder: missing from the mmaction2 1.2.0 wheel.")
    module.DRN = DRN
    package.drn = module
    sys.modules[DRN_PACKAGE] = package
    sys.modules[DRN_MODULE] = module
    log.debug("registered placeholder %s (open-mmlab/mmaction2#2714)", DRN_MODULE)
    return True


def _transformers_major() -> int | None:
    try:
        return int(importlib.metadata.version("transformers").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


def _disable_multimodal_if_incompatible() -> None:
    """Turn off mmaction's VindLU import when the installed transformers (5+) cannot serve it."""
    major = _transformers_major()
    if major is None or major < 5:
        return
    import mmaction.utils.dependency as dependency

    if dependency.WITH_MULTIMODAL:
        dependency.WITH_MULTIMODAL = False
        log.debug(
            "mmaction2 multimodal (VindLU) models disabled: transformers %d.x lacks their imports", major
        )


def _numpy2_aliases() -> None:
    """mmaction2 1.2.0's ``average_recall_at_avg_proposals`` calls ``np.trapz``, removed in NumPy 2.4
    (renamed ``np.trapezoid`` in 2.0): alias it back when missing so its AR@AN/AUC runs."""
    import numpy as np

    if not hasattr(np, "trapz") and hasattr(np, "trapezoid"):
        np.trapz = np.trapezoid  # type: ignore[attr-defined]


def import_mmaction() -> types.ModuleType:
    """Import mmaction2 (models, losses, evaluation) once, with the workarounds above; returns ``mmaction``."""
    global _mmaction
    if _mmaction is not None:
        return _mmaction
    register_drn_placeholder()
    _numpy2_aliases()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_MSDA_WARNING, category=UserWarning)
        _disable_multimodal_if_incompatible()
        import mmaction
        import mmaction.evaluation
        import mmaction.evaluation.functional.eval_detection
        import mmaction.models
        import mmaction.models.localizers.utils
    _mmaction = mmaction
    return mmaction


def bmn_class() -> type:
    """``mmaction.models.localizers.BMN``."""
    import_mmaction()
    from mmaction.models.localizers import BMN

    return BMN


def bmn_loss_class() -> type:
    """``mmaction.models.losses.BMNLoss``: ``loss(pred_bm (B, 2, D, T), pred_start (B, T), pred_end (B, T),
    gt_iou_map (B, D, T), gt_start (B, T), gt_end (B, T), bm_mask (D, T)) -> (loss, tem, pem_reg, pem_cls)``."""
    import_mmaction()
    from mmaction.models.losses import BMNLoss

    return BMNLoss


def post_processing_fn() -> Callable[..., list[dict[str, Any]]]:
    """``mmaction.models.localizers.utils.post_processing(result, video_info, soft_nms_alpha,
    soft_nms_low_threshold, soft_nms_high_threshold, post_process_top_k, feature_extraction_interval)``.

    ``result`` is ``(N, 7)``: ``tmin, tmax, tmin_score, tmax_score, cls_score, reg_score, score`` with
    ``tmin, tmax`` in [0, 1]; ``video_info`` needs ``duration_frame`` and ``duration_second``. Returns
    ``[{"score": float, "segment": [start_s, end_s]}, ...]`` after soft-NMS, best first.
    """
    import_mmaction()
    from mmaction.models.localizers.utils import post_processing

    return post_processing


def soft_nms_fn() -> Callable[..., Any]:
    """``mmaction.models.localizers.utils.soft_nms(proposals (N, >=3), alpha, low_threshold,
    high_threshold, top_k) -> (M, 3)`` of ``start, end, score``."""
    import_mmaction()
    from mmaction.models.localizers.utils import soft_nms

    return soft_nms


def temporal_iou_fn() -> Callable[..., Any]:
    """``mmaction.models.localizers.utils.temporal_iou(proposal_min, proposal_max, gt_min, gt_max)``."""
    import_mmaction()
    from mmaction.models.localizers.utils import temporal_iou

    return temporal_iou


def average_recall_at_avg_proposals_fn() -> Callable[..., Any]:
    """``mmaction.evaluation.average_recall_at_avg_proposals(ground_truth, proposals,
    total_num_proposals, max_avg_proposals=None, temporal_iou_thresholds=np.linspace(0.5, 0.95, 10))``.

    ``ground_truth``: ``{video_id: (G, 2) array of [start, end]}``; ``proposals``: ``{video_id: (P, 3)
    array of [start, end, score]}`` (same ids, same time unit). Returns ``(recall (thresholds, 100),
    average_recall (100,), proposals_per_video (100,), auc)``; ActivityNet reports AR@1/5/10/100 as
    ``recall[:, k - 1].mean()`` with ``max_avg_proposals=100``, and AUC (in %).
    """
    import_mmaction()
    from mmaction.evaluation import average_recall_at_avg_proposals

    return average_recall_at_avg_proposals


def average_precision_at_temporal_iou_fn() -> Callable[..., Any]:
    """``mmaction.evaluation.average_precision_at_temporal_iou(ground_truth, prediction,
    temporal_iou_thresholds=np.linspace(0.5, 0.95, 10)) -> (thresholds,) AP``, one class at a time.

    ``ground_truth``: ``{video_id: (G, 2) array}``; ``prediction``: rows ``[video_id, class_id,
    t_start, t_end, score]``.
    """
    import_mmaction()
    from mmaction.evaluation import average_precision_at_temporal_iou

    return average_precision_at_temporal_iou


def average_precision_detection_fn() -> Callable[..., Any]:
    """``mmaction.evaluation.functional.eval_detection.compute_average_precision_detection(ground_truth,
    prediction, tiou_thresholds=np.linspace(0.5, 0.95, 10)) -> (thresholds,) AP`` for one class.

    ``ground_truth``: list of ``{"video-id", "t-start", "t-end"}``; ``prediction``: list of
    ``{"video-id", "t-start", "t-end", "score"}`` (sorted in place). ActivityNet mAP at each threshold
    is the mean of this over classes; "average mAP" the mean over thresholds.
    """
    import_mmaction()
    from mmaction.evaluation.functional.eval_detection import compute_average_precision_detection

    return compute_average_precision_detection
