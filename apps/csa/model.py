"""Class Semantics-based Attention (CSA; Sridhar et al., ICCV 2021) on mmaction2's BMN.

BMN (Lin et al., ICCV 2019) encodes snippet features ``R (B, C_in, T)`` (TSN features, ``C_in = 400``,
``T = 100``) with its base module into ``F (B, C_f, T)`` (``C_f = 256``) and feeds ``F`` to its
temporal-evaluation heads (start / end probabilities ``(B, T)``) and its proposal-evaluation head
(boundary-matching layer + 3-D/2-D convolutions → confidence map ``(B, 2, D, T)``, channel 0 the
regression score, channel 1 the classification score, ``D = T`` durations, ``[d, t]`` the proposal
``[t, t + d + 1] / T``). CSA sits between the base module and the heads: it learns, from the
class-semantics-rich *input* features ``R``, importance scores for the *encoded* features ``F``
along channels and along time, fuses the two and re-weights ``F``. It is trained with the BMN loss.

The paper gives no equations we could use and there is no official code, so the following design
is ours (``ClassSemanticsAttention``; ``σ`` the logistic sigmoid):

- channel logits ``a_c = W₂ ReLU(W₁ mean_t R)`` — ``(B, C_f)``; an MLP on the temporally pooled input
  features with ``C_in / reduction`` hidden units;
- temporal logits ``a_t = conv₁ₓ₁(ReLU(conv_k(R)))`` — ``(B, T)``; a 1-D convolution over time
  (kernel ``temporal_kernel_size``, ``C_in / reduction`` channels) then a per-snippet projection;
  with ``temporal_context=video`` the convolution reads ``[R ; R ⊙ mean_t R]`` (``2 C_in``
  channels) instead: each snippet's semantics beside their agreement, channel by channel, with the
  video's average semantics, so a moment can be scored by how well it matches the classes the
  whole video is about (a short run of another class in the background does not) — the "temporal
  distribution of semantics of action classes present in an input video" the paper learns from;
- gating ``g(X, w) = X + X ⊙ w`` when ``residual`` (default) or ``X ⊙ w`` otherwise; with
  ``centered`` ``g(X, w) = X ⊙ w / w₀`` instead, ``w₀`` the fused weight at zero logits (½, or ¼ for
  ``parallel_mul``'s product), so a branch's gate is ``2σ(a) = 1 + tanh(a / 2)`` in (0, 2): the exact
  identity at ``a = 0``, where the sigmoid is steepest, and able to suppress as well as amplify;
- fusion:
  ``sequential`` (default) — channel then time, ``F' = g(g(F, σ(a_c)), σ(a_t))``;
  ``parallel_mul`` — ``F' = g(F, σ(a_c) ⊗ σ(a_t))`` (outer product over ``C_f × T``);
  ``parallel_sum`` — ``F' = g(F, σ(a_c ⊕ a_t))`` (logits summed with broadcasting, as in BAM);
  ``parallel_outputs`` — ``F' = ½ (g(F, σ(a_c)) + g(F, σ(a_t)))``: each branch's attention applied to
  ``F`` on its own, then the two attention-applied outputs fused by their mean. This is the closest
  reading of the paper's Figure 1 as publicly summarised (attention applied to ``F`` along channels
  and, separately, along time, then the two re-weighted outputs fused); the fusing operator is ours. With
  ``centered`` it is ``F ⊙ (σ(a_c) + σ(a_t))``: one branch can raise a moment or channel the other
  leaves alone, but neither can silence it alone (each contributes at most half the gain).
  Without the residual, ``sequential`` and ``parallel_mul`` coincide (products commute); with it
  they differ: ``F (1 + σ(a_c))(1 + σ(a_t))`` versus ``F (1 + σ(a_c) σ(a_t))``;
- near-identity start: the last layer of each branch has its weights scaled by 0.1 and its bias set
  so the gate starts at ``σ(−init_logit) ≈ 0.018`` (residual: ``F' ≈ F (1 + 0.018)``) or at
  ``σ(init_logit) ≈ 0.982`` (no residual: ``F' ≈ 0.98 F``) for ``init_logit = 4``; in
  ``parallel_sum`` each branch takes half of the bias. So CSA starts within a few per cent of the
  identity (BMN's behaviour is kept at the start) while every parameter still gets a gradient at
  the first step; ``init_logit=None`` keeps PyTorch's default initialisation. With ``centered`` the
  last layers' weights are scaled by 0.1 and their biases set to 0 (the gate starts at the identity
  up to the small weights); ``init_logit`` is then unused.

Why ``centered`` exists (measured, see the app README): at ``σ(−4)`` the gates' gradients are 0.018
of the sigmoid's steepest, and with Adam and coupled L2 weight decay a parameter whose loss gradient
is much smaller than its decay term moves by about ``lr`` per step towards zero. In the default
configuration the channel branch's first layer collapsed that way during training (its output became
the same constant for every video), so CSA degenerated to a learned temporal gate. The centered gate
together with ``app.module.attention_weight_decay=0`` (no decay on CSA's parameters) keeps it alive.

``SqueezeExcitation1d`` is the paper's comparison: a squeeze-and-excitation block (Hu et al., CVPR
2018) whose channel weights come from ``F`` itself, ``F' = F ⊙ σ(W₂ ReLU(W₁ mean_t F))``, with the
standard initialisation. In ``csa_se`` SE runs first and CSA second: SE's weights are then computed
from the encoded features ``F`` exactly as in the ``se`` ablation, and CSA's scores (the ones
plotted) act on what the heads finally see.

``csa_heads`` (ours, an ablation) chooses which of BMN's heads see CSA's output: ``all`` (default),
only the ``boundary`` heads (start / end) or only the ``proposal`` head (confidence map); the others
see ``F`` as it was before CSA.

``BMNCSA`` owns an mmaction2 ``BMN`` (built through its public constructor) and runs BMN's own
sub-modules in BMN's order with the attention inserted; its targets and loss are mmaction2's
(``BMN.generate_labels`` and ``BMNLoss``), and proposals are decoded with BMN's candidate rule and
mmaction2's soft-NMS ``post_processing``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from apps.common.export import ExportGraph
from apps.csa import mm

log = logging.getLogger(__name__)

ATTENTIONS = ("none", "se", "csa", "csa_se")
SAMPLE_MASK = "bmn.sample_mask"


def _drop_sample_mask(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    state_dict.pop(prefix + SAMPLE_MASK, None)


FUSIONS = ("sequential", "parallel_sum", "parallel_mul", "parallel_outputs")
BRANCHES = ("both", "channel", "temporal")
TEMPORAL_CONTEXTS = ("none", "video")
HEADS = ("all", "boundary", "proposal")
LAST_LAYER_WEIGHT_SCALE = 0.1


def _near_identity_init(layer: nn.Linear | nn.Conv1d, bias: float) -> None:
    with torch.no_grad():
        layer.weight.mul_(LAST_LAYER_WEIGHT_SCALE)
        layer.bias.fill_(bias)


class ClassSemanticsAttention(nn.Module):
    """CSA: channel and temporal importance of encoded features ``F`` computed from input features ``R``.

    See the module docstring for the equations (our design).

    Args:
        input_dim: channels ``C_in`` of the input features ``R``.
        feature_dim: channels ``C_f`` of the encoded features ``F``.
        reduction: hidden width of both branches is ``max(1, C_in // reduction)``.
        temporal_kernel_size: odd kernel of the temporal branch's convolution over snippets.
        fusion: ``sequential`` (default), ``parallel_sum``, ``parallel_mul`` or ``parallel_outputs``.
        residual: ``F + F ⊙ w`` (default) instead of ``F ⊙ w``.
        init_logit: magnitude of the last layers' initial bias (near-identity start); None keeps the
            default initialisation.
        centered: gate ``X ⊙ w / w₀`` (identity at zero logits; ``residual`` and ``init_logit`` are
            then unused, the last layers start with zero bias and weights scaled by 0.1).
        branches: ``both`` (default), or only the ``channel`` or the ``temporal`` branch (the
            ablation of each; the other branch is not built, its weights are ``None`` and ``fusion``
            is moot: the one gate is applied alone).
        temporal_context: ``none`` (default: the temporal branch sees ``R`` alone) or ``video``
            (it sees ``[R ; R ⊙ mean_t R]``, each snippet against the video's average semantics).
    """

    def __init__(
        self,
        input_dim: int = 400,
        feature_dim: int = 256,
        reduction: int = 16,
        temporal_kernel_size: int = 3,
        fusion: str = "sequential",
        residual: bool = True,
        init_logit: float | None = 4.0,
        centered: bool = False,
        branches: str = "both",
        temporal_context: str = "none",
    ) -> None:
        super().__init__()
        if temporal_context not in TEMPORAL_CONTEXTS:
            raise ValueError(
                f"app.model.temporal_context must be one of {TEMPORAL_CONTEXTS}, got {temporal_context!r}"
            )
        if fusion not in FUSIONS:
            raise ValueError(f"app.model.fusion must be one of {FUSIONS}, got {fusion!r}")
        if branches not in BRANCHES:
            raise ValueError(f"app.model.branches must be one of {BRANCHES}, got {branches!r}")
        if reduction < 1:
            raise ValueError(f"app.model.reduction must be >= 1, got {reduction}")
        if temporal_kernel_size < 1 or temporal_kernel_size % 2 == 0:
            raise ValueError(
                f"app.model.temporal_kernel_size must be odd (keeps T snippets), got {temporal_kernel_size}"
            )
        self.fusion = fusion if branches == "both" else "sequential"
        self.branches = branches
        self.temporal_context = temporal_context
        self.residual = residual
        self.centered = centered
        # fused weight at zero logits: the centered gate divides by it (identity at the start)
        self.neutral_weight = 0.25 if self.fusion == "parallel_mul" else 0.5
        hidden = max(1, input_dim // reduction)
        self.channel_mlp = (
            nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, feature_dim))
            if branches in ("both", "channel")
            else None
        )
        self.temporal_conv = (
            nn.Sequential(
                nn.Conv1d(
                    input_dim * (2 if temporal_context == "video" else 1),
                    hidden,
                    temporal_kernel_size,
                    padding=temporal_kernel_size // 2,
                ),
                nn.ReLU(inplace=True),
                nn.Conv1d(hidden, 1, kernel_size=1),
            )
            if branches in ("both", "temporal")
            else None
        )
        last_layers = [b[-1] for b in (self.channel_mlp, self.temporal_conv) if b is not None]
        if centered:
            for layer in last_layers:
                _near_identity_init(layer, 0.0)
        elif init_logit is not None:
            bias = -init_logit if residual else init_logit
            if self.fusion == "parallel_sum":
                bias = bias / 2
            for layer in last_layers:
                _near_identity_init(layer, bias)

    def logits(self, semantics: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """Channel logits ``(B, C_f)`` and temporal logits ``(B, T)`` from ``semantics (B, C_in, T)``
        (``None`` for a branch that is not built)."""
        channel = None if self.channel_mlp is None else self.channel_mlp(semantics.mean(dim=2))
        if self.temporal_conv is None:
            return channel, None
        temporal_input = semantics
        if self.temporal_context == "video":
            temporal_input = torch.cat([semantics, semantics * semantics.mean(dim=2, keepdim=True)], dim=1)
        return channel, self.temporal_conv(temporal_input).squeeze(1)

    def _gate(self, features: Tensor, weights: Tensor, neutral: float = 0.5) -> Tensor:
        if self.centered:
            return features * (weights / neutral)
        return features + features * weights if self.residual else features * weights

    def forward(self, semantics: Tensor, features: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``R (B, C_in, T)``, ``F (B, C_f, T)`` → ``F' (B, C_f, T)``, channel weights ``(B, C_f)``,
        temporal weights ``(B, T)`` (the sigmoid of each branch's logits, in (0, 1); ``None`` for a
        branch that is not built)."""
        channel_logits, temporal_logits = self.logits(semantics)
        channel_weights = None if channel_logits is None else torch.sigmoid(channel_logits)
        temporal_weights = None if temporal_logits is None else torch.sigmoid(temporal_logits)
        if self.fusion == "sequential":  # also the one-branch case: only that gate is applied
            attended = features
            if channel_weights is not None:
                attended = self._gate(attended, channel_weights.unsqueeze(2))
            if temporal_weights is not None:
                attended = self._gate(attended, temporal_weights.unsqueeze(1))
        elif self.fusion == "parallel_mul":
            fused = channel_weights.unsqueeze(2) * temporal_weights.unsqueeze(1)
            attended = self._gate(features, fused, self.neutral_weight)
        elif self.fusion == "parallel_outputs":
            channel_applied = self._gate(features, channel_weights.unsqueeze(2))
            temporal_applied = self._gate(features, temporal_weights.unsqueeze(1))
            attended = 0.5 * (channel_applied + temporal_applied)
        else:
            fused = torch.sigmoid(channel_logits.unsqueeze(2) + temporal_logits.unsqueeze(1))
            attended = self._gate(features, fused)
        return attended, channel_weights, temporal_weights


class SqueezeExcitation1d(nn.Module):
    """Squeeze-and-excitation over the channels of ``F (B, C, T)``, weights from ``F`` itself.

    ``F' = F ⊙ σ(W₂ ReLU(W₁ mean_t F))`` (Hu et al., CVPR 2018), hidden width ``max(1, C // reduction)``.
    """

    def __init__(self, channels: int = 256, reduction: int = 16) -> None:
        super().__init__()
        if reduction < 1:
            raise ValueError(f"app.model.se_reduction must be >= 1, got {reduction}")
        hidden = max(1, channels // reduction)
        self.excitation = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid()
        )

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``F (B, C, T)`` → ``F' (B, C, T)`` and the channel weights ``(B, C)``."""
        weights = self.excitation(features.mean(dim=2))
        return features * weights.unsqueeze(2), weights


class BMNCSAOutput(NamedTuple):
    """What ``BMNCSA.forward_with_attention`` returns; the first three are ``forward``'s outputs."""

    confidence_map: Tensor  # (B, 2, D, T): [:, 0] regression, [:, 1] classification score
    start: Tensor  # (B, T)
    end: Tensor  # (B, T)
    channel_weights: Tensor | None  # (B, C_f), CSA's channel branch
    temporal_weights: Tensor | None  # (B, T), CSA's temporal branch
    se_weights: Tensor | None  # (B, C_f), SE's channel weights


class BMNCSA(nn.Module):
    """BMN with optional SE / CSA between its base module and its heads; see the module docstring.

    Args:
        attention: ``none`` (plain BMN), ``se``, ``csa`` or ``csa_se`` (SE then CSA).
        temporal_dim: snippets ``T`` per video (BMN's ``temporal_dim``, 100 on ActivityNet); fixed by
            BMN's sampling mask, so inputs must have exactly ``T`` snippets.
        feat_dim: input channels ``C_in`` (400 for the TSN features).
        fusion, residual, reduction, temporal_kernel_size, init_logit, centered, branches,
            temporal_context: CSA's options
            (``ClassSemanticsAttention``).
        csa_heads: which of BMN's heads see CSA's re-weighted features: ``all`` (default), only the
            ``boundary`` heads (temporal evaluation: start and end) or only the ``proposal`` head
            (proposal evaluation: boundary-matching confidence map); the others get the features
            before CSA (after SE in ``csa_se``). Ours, an ablation; moot without CSA.
        se_reduction: SE's reduction ratio.
        boundary_ratio, num_samples, num_samples_per_bin: BMN's boundary-matching sampling.
        soft_nms_alpha, soft_nms_low_threshold, soft_nms_high_threshold, post_process_top_k,
            feature_extraction_interval: BMN's proposal post-processing (mmaction2's defaults for
            ActivityNet).
        hidden_dim_1d, hidden_dim_2d, hidden_dim_3d: BMN's widths (``C_f = hidden_dim_1d``; both
            ``feat_dim`` and ``hidden_dim_1d`` must be divisible by 4, BMN's group convolutions).
    """

    def __init__(
        self,
        attention: str = "csa",
        temporal_dim: int = 100,
        feat_dim: int = 400,
        fusion: str = "sequential",
        residual: bool = True,
        reduction: int = 16,
        temporal_kernel_size: int = 3,
        init_logit: float | None = 4.0,
        centered: bool = False,
        branches: str = "both",
        temporal_context: str = "none",
        csa_heads: str = "all",
        se_reduction: int = 16,
        boundary_ratio: float = 0.5,
        num_samples: int = 32,
        num_samples_per_bin: int = 3,
        soft_nms_alpha: float = 0.4,
        soft_nms_low_threshold: float = 0.5,
        soft_nms_high_threshold: float = 0.9,
        post_process_top_k: int = 100,
        feature_extraction_interval: int = 16,
        hidden_dim_1d: int = 256,
        hidden_dim_2d: int = 128,
        hidden_dim_3d: int = 512,
    ) -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"app.model.attention must be one of {ATTENTIONS}, got {attention!r}")
        for name, value in (("feat_dim", feat_dim), ("hidden_dim_1d", hidden_dim_1d)):
            if value % 4:
                raise ValueError(
                    f"app.model.{name} must be divisible by 4 (BMN's grouped convs), got {value}"
                )
        if temporal_dim < 3:
            raise ValueError(f"app.model.temporal_dim must be >= 3, got {temporal_dim}")
        if csa_heads not in HEADS:
            raise ValueError(f"app.model.csa_heads must be one of {HEADS}, got {csa_heads!r}")
        self.attention = attention
        self.csa_heads = csa_heads
        self.temporal_dim = temporal_dim
        self.feat_dim = feat_dim
        self.bmn = mm.bmn_class()(
            temporal_dim=temporal_dim,
            boundary_ratio=boundary_ratio,
            num_samples=num_samples,
            num_samples_per_bin=num_samples_per_bin,
            feat_dim=feat_dim,
            soft_nms_alpha=soft_nms_alpha,
            soft_nms_low_threshold=soft_nms_low_threshold,
            soft_nms_high_threshold=soft_nms_high_threshold,
            post_process_top_k=post_process_top_k,
            feature_extraction_interval=feature_extraction_interval,
            loss_cls={"type": "BMNLoss"},
            hidden_dim_1d=hidden_dim_1d,
            hidden_dim_2d=hidden_dim_2d,
            hidden_dim_3d=hidden_dim_3d,
        )
        self.se = SqueezeExcitation1d(hidden_dim_1d, se_reduction) if attention in ("se", "csa_se") else None
        self.csa = (
            ClassSemanticsAttention(
                feat_dim,
                hidden_dim_1d,
                reduction,
                temporal_kernel_size,
                fusion,
                residual,
                init_logit,
                centered,
                branches,
                temporal_context,
            )
            if attention in ("csa", "csa_se")
            else None
        )
        # BMN's boundary-matching sampling mask is a frozen parameter rebuilt identically by its
        # constructor (128 MB at T = 100): keep it out of checkpoints, restore it on load
        self._register_state_dict_hook(_drop_sample_mask)
        self._register_load_state_dict_pre_hook(self._restore_sample_mask)
        log.debug(
            "BMNCSA(attention=%s, T=%d, C_in=%d): %d trainable parameters",
            attention,
            temporal_dim,
            feat_dim,
            sum(p.numel() for p in self.parameters() if p.requires_grad),
        )

    def _restore_sample_mask(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        state_dict.setdefault(prefix + SAMPLE_MASK, self.bmn.sample_mask.detach().clone())

    def _check_features(self, features: Tensor) -> None:
        if torch.jit.is_tracing():  # shapes are fixed in a trace; torch.export checks them itself
            return
        if (
            features.dim() != 3
            or features.shape[1] != self.feat_dim
            or features.shape[2] != self.temporal_dim
        ):
            raise ValueError(
                f"BMNCSA expects features (B, {self.feat_dim}, {self.temporal_dim}) (feat_dim, "
                f"temporal_dim), got {tuple(features.shape)}"
            )

    def forward_with_attention(self, features: Tensor) -> BMNCSAOutput:
        """``features (B, C_in, T)`` → maps ``(B, 2, D, T)``, ``(B, T)``, ``(B, T)`` and the attention terms.

        BMN's order: base module → (SE, CSA) → start head, end head, proposal 1-D convs →
        boundary-matching layer ``(B, C_f, N, D, T)`` → 3-D conv → 2-D convs. With ``csa_heads``
        other than ``all``, the heads it does not name get the features before CSA.
        """
        self._check_features(features)
        encoded = self.bmn.x_1d_b(features)
        channel_weights = temporal_weights = se_weights = None
        if self.se is not None:
            encoded, se_weights = self.se(encoded)
        boundary_input = proposal_input = encoded
        if self.csa is not None:
            gated, channel_weights, temporal_weights = self.csa(features, encoded)
            if self.csa_heads != "proposal":
                boundary_input = gated
            if self.csa_heads != "boundary":
                proposal_input = gated
        start = self.bmn.x_1d_s(boundary_input).squeeze(1)
        end = self.bmn.x_1d_e(boundary_input).squeeze(1)
        sampled = self.bmn._boundary_matching_layer(self.bmn.x_1d_p(proposal_input))
        confidence_map = self.bmn.x_2d_p(self.bmn.x_3d_p(sampled).squeeze(2))
        return BMNCSAOutput(confidence_map, start, end, channel_weights, temporal_weights, se_weights)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``features (B, C_in, T)`` → ``confidence_map (B, 2, D, T)``, ``start (B, T)``, ``end (B, T)``
        (BMN's output convention; all probabilities)."""
        outputs = self.forward_with_attention(features)
        return outputs.confidence_map, outputs.start, outputs.end

    def targets(self, gt_bbox: Sequence[Any]) -> tuple[Tensor, Tensor, Tensor]:
        """mmaction2's BMN targets: ``gt_iou_map (B, D, T)``, ``gt_start (B, T)``, ``gt_end (B, T)`` (CPU).

        ``gt_bbox``: per video, a ``(N_i, 2)`` tensor / array of ``[start, end]`` normalised to the
        ``T``-snippet window, in [0, 1] (mmaction2's ``GenerateLocalizationLabels``: seconds divided
        by the feature-covered duration, clipped to [0, 1]); at least one box per video. Converted
        to float64 on the CPU, as mmaction2's pipeline delivers them.
        """
        boxes = []
        for index, box in enumerate(gt_bbox):
            box = torch.as_tensor(box).detach().to("cpu", torch.float64)
            if box.dim() != 2 or box.shape[1] != 2 or box.shape[0] == 0:
                raise ValueError(
                    f"gt_bbox[{index}] must be a non-empty (N, 2) array of normalised [start, end], "
                    f"got shape {tuple(box.shape)}"
                )
            boxes.append(box)
        return self.bmn.generate_labels(boxes)

    def loss(
        self, outputs: Sequence[Tensor], gt_bbox: Sequence[Any], targets: Sequence[Tensor] | None = None
    ) -> dict[str, Tensor]:
        """BMN's loss (mmaction2's ``BMNLoss`` on ``BMN.generate_labels`` targets, as ``BMN.loss``).

        ``outputs``: ``forward``'s ``(confidence_map, start, end)`` or a ``BMNCSAOutput``;
        ``gt_bbox``: see ``targets`` (ignored when precomputed ``targets`` are given). Returns
        ``loss`` (``tem + 10·pem_reg + pem_cls``), ``tem_loss``, ``pem_reg_loss``, ``pem_cls_loss``.
        The regression term samples medium / low IoU entries with ``torch.rand_like`` (BMN's
        balancing), so it is random unless the generator is seeded.
        """
        confidence_map, start, end = outputs[0], outputs[1], outputs[2]
        gt_iou_map, gt_start, gt_end = targets if targets is not None else self.targets(gt_bbox)
        device = confidence_map.device
        total, tem, pem_reg, pem_cls = self.bmn.loss_cls(
            confidence_map,
            start,
            end,
            gt_iou_map.to(device),
            gt_start.to(device),
            gt_end.to(device),
            self.bmn.bm_mask,
        )
        return {"loss": total, "tem_loss": tem, "pem_reg_loss": pem_reg, "pem_cls_loss": pem_cls}

    def candidates(self, confidence_map: Tensor, start: Tensor, end: Tensor) -> list[np.ndarray]:
        """BMN's candidate proposals per video, ``(N, 7)``: ``tmin, tmax, tmin_score, tmax_score,
        cls_score, reg_score, score`` (``tmin, tmax`` in [0, 1]), in BMN's order (duration-major).

        Starts (ends) are snippets that are local maxima or above half the video's maximum, plus the
        first (last) snippet; a proposal pairs a start ``t`` with an end ``t + d + 1 < T`` and scores
        ``start · end · cls[d, t] · reg[d, t]``.
        """
        T = self.temporal_dim
        results = []
        maps = confidence_map.detach().float().cpu().numpy()
        starts, ends = start.detach().float().cpu().numpy(), end.detach().float().cpu().numpy()
        for reg, cls, start_scores, end_scores in zip(maps[:, 0], maps[:, 1], starts, ends):
            start_bins, end_bins = np.zeros(T, dtype=bool), np.zeros(T, dtype=bool)
            start_bins[0], end_bins[-1] = True, True
            for scores, bins in ((start_scores, start_bins), (end_scores, end_bins)):
                inner = scores[1:-1]
                peak = (inner > scores[2:]) & (inner > scores[:-2])
                bins[1:-1] |= peak | (inner > 0.5 * scores.max())
            duration, begin = np.nonzero(start_bins[None, :] & np.ones((T, 1), dtype=bool))
            finish = begin + duration + 1
            keep = finish < T
            duration, begin, finish = duration[keep], begin[keep], finish[keep]
            keep = end_bins[finish]
            duration, begin, finish = duration[keep], begin[keep], finish[keep]
            tmin_score, tmax_score = start_scores[begin], end_scores[finish]
            cls_score, reg_score = cls[duration, begin], reg[duration, begin]
            results.append(
                np.stack(
                    [
                        begin / T,
                        finish / T,
                        tmin_score,
                        tmax_score,
                        cls_score,
                        reg_score,
                        tmin_score * tmax_score * cls_score * reg_score,
                    ],
                    axis=1,
                )
            )
        return results

    def proposals(
        self,
        confidence_map: Tensor,
        start: Tensor,
        end: Tensor,
        video_infos: Sequence[Mapping[str, Any]],
    ) -> list[list[dict[str, Any]]]:
        """Proposals per video after mmaction2's soft-NMS ``post_processing``, best first.

        ``video_infos[i]`` needs ``duration_frame`` and ``duration_second``. Each proposal is
        ``{"score": float, "segment": [start_s, end_s]}`` in seconds (at most ``post_process_top_k``;
        Python floats, JSON-ready). ``video_infos`` must have one entry per video of the batch.
        """
        post_processing = mm.post_processing_fn()
        bmn = self.bmn
        results = []
        for candidates, info in zip(self.candidates(confidence_map, start, end), video_infos):
            kept = post_processing(
                candidates,
                dict(info),
                bmn.soft_nms_alpha,
                bmn.soft_nms_low_threshold,
                bmn.soft_nms_high_threshold,
                bmn.post_process_top_k,
                bmn.feature_extraction_interval,
            )
            results.append(
                [{"score": float(p["score"]), "segment": [float(t) for t in p["segment"]]} for p in kept]
            )
        return results

    def export_graphs(self, batch: Mapping[str, Tensor] | Tensor) -> list[ExportGraph]:
        """One graph: ``features (B, C_in, T)`` → ``confidence_map, start, end``; dynamic batch, static T.

        ``batch`` is a data-module batch (key ``features``) or the feature tensor. A batch of one is
        doubled (torch.export specialises a dimension of size 1); checked on a batch of 1 and of 3.
        """
        features = batch["features"] if isinstance(batch, Mapping) else batch
        self._check_features(features)
        features = features.detach()
        if features.shape[0] < 2:
            features = torch.cat([features, features.flip(2)])
        checks = [(features[:1],), (torch.cat([features, features[:1] * 0.5])[:3],)]
        return [
            ExportGraph(
                name="bmn_csa",
                module=self,
                inputs=(features,),
                input_names=["features"],
                output_names=["confidence_map", "start", "end"],
                dynamic_dims=[{0: "batch"}],
                check_inputs=checks,
            )
        ]
