"""HuBERT with HuBERTopic's auxiliary topic head (Maekaku et al., 2023), on torchaudio's HuBERT.

The backbone is `torchaudio.models.hubert_pretrain_model` (convolutional front end, 20 ms frames;
Transformer encoder; masked prediction over k-means units with cosine-similarity logits). The
Transformer's self-attention is the swappable site: a factory from `conf/attention/` replaces
torchaudio's modules with the core's layers, weights carried over
(`shared_attention.swap_torchaudio`).

Forward pass (training): waveform `(B, T)` → conv features `(B, F, C)` → projection, span masking
(`mask_prob`, `mask_length`) → Transformer layers `h_1..h_N (B, F, D)`; the masked-prediction logits
come from the last layer, and the topic head reads layer `topic_layer`:
`z = Σ_f m_f h_f / Σ_f m_f` (mean over valid frames), `topic_logits = W z + b` `(B, T_topics)`.

Two options of the topic head are ours (defaults keep the plain head above):
- `topic_pool=unmasked`: `m_f` also excludes the frames masked for the masked prediction. With
  HuBERT's `mask_prob = 0.8` (spans of 10) about half the input frames are replaced by the mask
  embedding, so half of a mean over every frame is the model's guess of what was said; over the
  unmasked frames it is what was heard, which is what an utterance-level label (theme, speaker) is
  about.
- `topic_norm=batch`: `z` is standardised per dimension (`BatchNorm1d`, running statistics at
  evaluation) before `W`. Mean-pooled Transformer features differ little from one utterance to the
  next beside their common part; the linear probes standardise them for that reason, and without
  it the head learns slowly what separates utterances.
- `topic_grad_from=k`: the topic heads' gradient trains Transformer layers `k..topic_layer` only, not
  the layers below `k` nor the front end. Layers `k..max(topic_layer, topic_layer2)` run a second
  time, for the heads alone, on the detached input of layer `k` (same dropped layers; the extra
  pass costs those layers' forward and backward once more). Masked prediction keeps the whole
  model. `0` (default): the gradient reaches every layer and the front end, as in the paper.

The frame loop mirrors `torchaudio`'s `HuBERTPretrainModel.forward` (which returns only the last
layer) so that an intermediate layer is available to the head; it calls torchaudio's components.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torchaudio
from torch import Tensor, nn
from torchaudio.models.wav2vec2 import components

from apps.common.export import ExportGraph
from shared_attention.swap_torchaudio import swap_torchaudio_attention


def conv_config(channels: int, layers: int = 7) -> list[tuple[int, int, int]]:
    """wav2vec2's front end (kernel/stride 10/5, 4 × 3/2, 2 × 2/2: a 20 ms hop) with `channels` wide convs."""
    spec = [(channels, 10, 5), *[(channels, 3, 2)] * 4, *[(channels, 2, 2)] * 2]
    if layers != 7:
        raise ValueError("the 20 ms frame rate of the pseudo-labels needs wav2vec2's 7 conv layers")
    return spec


TOPIC_POOLS = ("all", "unmasked")
TOPIC_NORMS = ("none", "batch")


class NormalisedLinear(nn.Module):
    """`BatchNorm1d` then `Linear` on `(B, D)`; a training batch of one uses the running statistics."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(in_features)
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, z: Tensor) -> Tensor:
        if self.training and z.shape[0] == 1:
            norm = self.norm
            z = nn.functional.batch_norm(
                z, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps
            )
        else:
            z = self.norm(z)
        return self.linear(z)


class HuBERTopic(nn.Module):
    """HuBERT pretraining model plus an utterance-level topic classifier.

    Args:
        num_classes: pseudo-label units `K` (k-means clusters).
        num_topics: LDA topics (0: no topic head, plain HuBERT).
        topic_layer: Transformer layer (1-based; negative counts from the end, -1 = last)
            whose mean-pooled output feeds the topic head.
        conv_channels, embed_dim, num_layers, num_heads, ff_dim: sizes (HuBERT Base: 512, 768, 12,
            12, 3072; Large: 512, 1024, 24, 16, 4096 with `layer_norm_first`).
        pos_conv_kernel, pos_conv_groups: convolutional positional embedding (Base: 128, 16).
        final_dim: projection of the logit generator (Base: 256).
        mask_prob, mask_length: span masking of frames (HuBERT: 0.8, 10).
        attention: factory of our attention layer (`attention(embed_dim=, num_heads=, dropout=)`),
            or None to keep torchaudio's.
        topic_pool: `all` valid frames (default) or only the `unmasked` ones feed the topic head.
        topic_norm: `none` (default) or `batch`: `BatchNorm1d` on the pooled features before the
            topic head's linear layer.
        num_topics2: topics of a second topic model (`app.data.topics.second`; 0: none). Its head
            has the same options as the first.
        topic_layer2: Transformer layer whose pooled output feeds the second head (1-based,
            negative from the end; None: `topic_layer`, the same pooled features as the first).
        topic_grad_from: lowest Transformer layer (1-based) that the topic heads' gradient trains;
            0: every layer and the front end.
    """

    def __init__(
        self,
        num_classes: int = 100,
        num_topics: int = 0,
        topic_layer: int = -1,
        conv_channels: int = 128,
        embed_dim: int = 128,
        num_layers: int = 4,
        num_heads: int = 4,
        ff_dim: int = 256,
        pos_conv_kernel: int = 32,
        pos_conv_groups: int = 8,
        final_dim: int = 64,
        extractor_mode: str = "group_norm",
        layer_norm_first: bool = False,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        layer_drop: float = 0.0,
        mask_prob: float = 0.8,
        mask_length: int = 10,
        feature_grad_mult: float | None = 0.1,
        attention: Callable[..., nn.Module] | None = None,
        topic_pool: str = "all",
        topic_norm: str = "none",
        num_topics2: int = 0,
        topic_layer2: int | None = None,
        topic_grad_from: int = 0,
    ) -> None:
        super().__init__()
        if topic_pool not in TOPIC_POOLS:
            raise ValueError(f"app.model.topic_pool must be one of {TOPIC_POOLS}, got {topic_pool!r}")
        if topic_norm not in TOPIC_NORMS:
            raise ValueError(f"app.model.topic_norm must be one of {TOPIC_NORMS}, got {topic_norm!r}")
        self.topic_pool = topic_pool
        self.num_classes = num_classes
        self.num_topics = num_topics
        self.num_topics2 = num_topics2
        self.num_layers = num_layers
        self.embed_dim = embed_dim
        self.topic_layer = topic_layer if topic_layer > 0 else num_layers + topic_layer + 1
        if not 1 <= self.topic_layer <= num_layers:
            raise ValueError(f"topic_layer {topic_layer} is outside the {num_layers} Transformer layers")
        layer2 = topic_layer if topic_layer2 is None else topic_layer2
        self.topic_layer2 = layer2 if layer2 > 0 else num_layers + layer2 + 1
        if not 1 <= self.topic_layer2 <= num_layers:
            raise ValueError(
                f"app.model.topic_layer2 {topic_layer2} is outside the {num_layers} Transformer layers"
            )
        top = max(self.topic_layer, self.topic_layer2)
        if not 0 <= topic_grad_from <= top:
            raise ValueError(
                f"app.model.topic_grad_from must be 0 (no limit) or a layer from 1 to the topic heads' "
                f"highest layer {top}, got {topic_grad_from}"
            )
        self.topic_grad_from = topic_grad_from
        self.hubert = torchaudio.models.hubert_pretrain_model(
            extractor_mode=extractor_mode,
            extractor_conv_layer_config=conv_config(conv_channels),
            extractor_conv_bias=extractor_mode == "layer_norm",
            encoder_embed_dim=embed_dim,
            encoder_projection_dropout=dropout,
            encoder_pos_conv_kernel=pos_conv_kernel,
            encoder_pos_conv_groups=pos_conv_groups,
            encoder_num_layers=num_layers,
            encoder_num_heads=num_heads,
            encoder_attention_dropout=attention_dropout,
            encoder_ff_interm_features=ff_dim,
            encoder_ff_interm_dropout=0.0,
            encoder_dropout=dropout,
            encoder_layer_norm_first=layer_norm_first,
            encoder_layer_drop=layer_drop,
            mask_prob=mask_prob,
            mask_selection="static",
            mask_other=0.0,
            mask_length=mask_length,
            no_mask_overlap=False,
            mask_min_space=1,
            mask_channel_prob=0.0,
            mask_channel_selection="static",
            mask_channel_other=0.0,
            mask_channel_length=10,
            no_mask_channel_overlap=False,
            mask_channel_min_space=1,
            skip_masked=False,
            skip_nomask=False,
            num_classes=num_classes,
            final_dim=final_dim,
            feature_grad_mult=feature_grad_mult,
        )
        self.swapped_attention = (
            swap_torchaudio_attention(self.hubert, attention) if attention is not None else []
        )
        self.topic_head: nn.Module | None = None
        if num_topics > 0:
            linear = nn.Linear(embed_dim, num_topics)
            self.topic_head = NormalisedLinear(embed_dim, num_topics) if topic_norm == "batch" else linear
        self.topic_head2: nn.Module | None = None
        if num_topics2 > 0:
            self.topic_head2 = (
                NormalisedLinear(embed_dim, num_topics2)
                if topic_norm == "batch"
                else nn.Linear(embed_dim, num_topics2)
            )

    # ------------------------------------------------------------------ shared pieces
    def _front_end(self, waveforms: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
        x, frame_lengths = self.hubert.wav2vec2.feature_extractor(waveforms, lengths)
        return x, frame_lengths

    def _layers(
        self, x: Tensor, attention_mask: Tensor | None, trace: dict[str, Any] | None = None
    ) -> list[Tensor]:
        return transformer_layers(
            self.hubert.wav2vec2.encoder.transformer, x, attention_mask, self.training, trace=trace
        )

    def _topic_hidden(
        self, hidden: list[Tensor], attention_mask: Tensor | None, trace: dict[str, Any]
    ) -> list[Tensor]:
        """The layer outputs the topic heads read. With `topic_grad_from = k > 0`, layers
        `k..max(topic_layer, topic_layer2)` again on the detached input of layer `k`; entries below
        `k` are detached copies."""
        k = self.topic_grad_from
        top = max(self.topic_layer, self.topic_layer2)
        transformer = self.hubert.wav2vec2.encoder.transformer
        ran = trace["ran"]
        x = (trace["input"] if k == 1 else hidden[k - 2]).detach()
        out = [h.detach() for h in hidden]
        for index in range(k - 1, top):
            if ran[index]:
                x, _ = transformer.layers[index](x, attention_mask)
            out[index] = x
        if top == len(hidden) and not transformer.layer_norm_first:
            out[-1] = transformer.layer_norm(out[-1])
        return out

    @staticmethod
    def valid_frames(frame_lengths: Tensor | None, batch: int, frames: int, device: torch.device) -> Tensor:
        """`(B, F)` bool, True on frames inside each utterance."""
        if frame_lengths is None:
            return torch.ones(batch, frames, dtype=torch.bool, device=device)
        return torch.arange(frames, device=device)[None, :] < frame_lengths[:, None]

    def pool(self, hidden: Tensor, valid: Tensor) -> Tensor:
        """Mean over valid frames: `(B, F, D)`, `(B, F)` → `(B, D)`."""
        weights = valid.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)

    # ------------------------------------------------------------------ training forward
    def forward(self, waveforms: Tensor, labels: Tensor, lengths: Tensor | None = None) -> dict[str, Any]:
        """Masked prediction and topic logits.

        Args: `waveforms (B, T)`, `labels (B, F)` units at the model's frames, `lengths (B,)` samples.
        Returns a dict: `logit_m (M, K+1)` / `logit_u (U, K+1)` (column 0 is the target, as in
        torchaudio), `feature_penalty` (scalar), `topic_logits (B, T_topics)` or None,
        `topic_logits2 (B, T_topics2)` or None (the second topic head), `valid (B, F)`, `mask (B, F)`
        (masked frames).
        """
        x, frame_lengths = self._front_end(waveforms, lengths)
        if self.hubert.feature_grad_mult is not None and self.hubert.feature_grad_mult < 1.0:
            x = components.GradMultiply.apply(x, self.hubert.feature_grad_mult)
        feature_penalty = x.float().pow(2).mean()
        padding = components._get_padding_mask(x, frame_lengths) if frame_lengths is not None else None
        x, attention_mask = self.hubert.wav2vec2.encoder._preprocess(x, frame_lengths)
        x, mask = self.hubert.mask_generator(x, padding)
        trace: dict[str, Any] = {}
        hidden = self._layers(x, attention_mask, trace)
        if hidden[-1].shape[1] != labels.shape[1]:
            raise ValueError(
                f"labels have {labels.shape[1]} frames but the model gives {hidden[-1].shape[1]}"
            )
        valid = self.valid_frames(frame_lengths, x.shape[0], x.shape[1], x.device)
        mask_m = mask & valid
        mask_u = valid & ~mask_m
        logit_m, logit_u = self.hubert.logit_generator(hidden[-1], labels, mask_m, mask_u)
        topic_logits = topic_logits2 = None
        if self.topic_head is not None or self.topic_head2 is not None:
            frames = valid & ~mask_m if self.topic_pool == "unmasked" else valid
            topic_hidden = (
                self._topic_hidden(hidden, attention_mask, trace) if self.topic_grad_from else hidden
            )
            pooled = self.pool(topic_hidden[self.topic_layer - 1], frames)
            if self.topic_head is not None:
                topic_logits = self.topic_head(pooled)
            if self.topic_head2 is not None:
                if self.topic_layer2 != self.topic_layer:
                    pooled = self.pool(topic_hidden[self.topic_layer2 - 1], frames)
                topic_logits2 = self.topic_head2(pooled)
        return {
            "logit_m": logit_m,
            "logit_u": logit_u,
            "feature_penalty": feature_penalty,
            "topic_logits": topic_logits,
            "topic_logits2": topic_logits2,
            "valid": valid,
            "mask": mask_m,
        }

    # ------------------------------------------------------------------ features for probes / export
    def extract_features(
        self, waveforms: Tensor, lengths: Tensor | None = None
    ) -> tuple[list[Tensor], Tensor]:
        """Unmasked layer outputs `[(B, F, D)] * num_layers` and the valid-frame mask `(B, F)`."""
        x, frame_lengths = self._front_end(waveforms, lengths)
        x, attention_mask = self.hubert.wav2vec2.encoder._preprocess(x, frame_lengths)
        hidden = self._layers(x, attention_mask)
        return hidden, self.valid_frames(frame_lengths, x.shape[0], x.shape[1], x.device)

    def export_graphs(self, batch: dict[str, Tensor], layer: int = -1) -> list[ExportGraph]:
        """One graph: waveform `(B, T)` → features of Transformer `layer` `(B, F, D)`, dynamic B and T.

        Example: the batch's first two utterances cut to the shorter one's length; checked on one
        utterance cut to several lengths and on a batch of three.
        """
        waveforms, lengths = batch["waveforms"], batch["lengths"]
        rows = [0, 1] if len(lengths) > 1 else [0, 0]
        total = int(min(lengths[r] for r in rows))
        # batch 2 (torch.export specialises a batch of 1), no padding: the graph takes no lengths
        example = waveforms[rows, :total]
        graph = FeatureExtractorGraph(self, layer).eval()
        cuts = sorted({max(400, total // 3), max(400, total // 2), max(400, (3 * total) // 4)} - {total})
        checks = [(example[:1, :n],) for n in cuts]
        checks.append((torch.cat([example[:, : cuts[0]], example[:1, : cuts[0]]], dim=0),))
        return [
            ExportGraph(
                "hubertopic_features",
                graph,
                (example,),
                ("waveform",),
                ("features",),
                ({0: "batch", 1: "samples"},),
                check_inputs=checks,
            )
        ]


def transformer_layers(
    transformer: nn.Module,
    x: Tensor,
    attention_mask: Tensor | None,
    training: bool,
    trace: dict[str, Any] | None = None,
) -> list[Tensor]:
    """Outputs of every layer of torchaudio's `Transformer` `[(B, F, D)]` (its `forward`, keeping
    the intermediate layers; the final layer norm of post-norm models applies to the last one).

    `trace`, if given, receives `input`: the first layer's input (after the positional
    convolution), and `ran`: one bool per layer (False: skipped by layer drop)."""
    x = transformer._preprocess(x)
    first_input = x
    hidden, ran = [], []
    for layer in transformer.layers:
        keep = not (
            training and transformer.layer_drop > 0 and torch.rand(1).item() <= transformer.layer_drop
        )
        if keep:
            x, _ = layer(x, attention_mask)
        ran.append(keep)
        hidden.append(x)
    if trace is not None:
        trace.update(input=first_input, ran=ran)
    if not transformer.layer_norm_first:
        hidden[-1] = transformer.layer_norm(hidden[-1])
    return hidden


class FeatureExtractorGraph(nn.Module):
    """Export wrapper: `waveform (B, T)` → layer features `(B, F, D)` (no padding, no masking)."""

    def __init__(self, model: HuBERTopic, layer: int = -1) -> None:
        super().__init__()
        # the parts, not torchaudio's Wav2Vec2Model: its `@torch.jit.export` method would make
        # tracing script every submodule, ours included
        self.feature_extractor = model.hubert.wav2vec2.feature_extractor
        self.encoder = model.hubert.wav2vec2.encoder
        self.layer = layer

    def forward(self, waveform: Tensor) -> Tensor:
        x, _ = self.feature_extractor(waveform, None)
        x, attention_mask = self.encoder._preprocess(x, None)
        return transformer_layers(self.encoder.transformer, x, attention_mask, False)[self.layer]
