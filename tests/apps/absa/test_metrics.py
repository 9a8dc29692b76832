"""Agreement between attention and importance: Kendall τ-b, weighted τ, Pearson r, top-1."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

from apps.absa.metrics import AGREEMENT, agreement, agreement_rows, classification_report


def test_identical_and_reversed_rankings():
    x = np.array([0.7, 0.1, 0.15, 0.05])
    same = agreement(x, 3.0 * x + 1.0)
    assert same == {
        "kendall_tau": pytest.approx(1.0),
        "weighted_tau": pytest.approx(1.0),
        "pearson": pytest.approx(1.0),
        "top1_agreement": 1.0,
    }
    reverse = agreement(x, -x)
    assert reverse["kendall_tau"] == pytest.approx(-1.0) and reverse["top1_agreement"] == 0.0


def test_kendall_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 4, 12).astype(float), rng.normal(size=12)
    assert agreement(x, y)["kendall_tau"] == pytest.approx(kendalltau(x, y).statistic)


def test_weighted_tau_counts_a_swap_at_the_top_more_than_one_in_the_tail():
    x = np.arange(8, 0, -1).astype(float)  # ranks the words 0..7
    top_swapped = x.copy()
    top_swapped[[0, 1]] = top_swapped[[1, 0]]
    tail_swapped = x.copy()
    tail_swapped[[6, 7]] = tail_swapped[[7, 6]]
    top, tail = agreement(x, top_swapped), agreement(x, tail_swapped)
    assert top["kendall_tau"] == pytest.approx(tail["kendall_tau"])  # one discordant pair each
    assert top["weighted_tau"] < tail["weighted_tau"]
    assert top["top1_agreement"] == 0.0 and tail["top1_agreement"] == 1.0


def test_undefined_cases_are_nan():
    out = agreement(np.array([0.5]), np.array([1.0]))
    assert all(math.isnan(v) for v in out.values())
    constant = agreement(np.array([0.2, 0.2, 0.2]), np.array([1.0, 2.0, 3.0]))
    assert math.isnan(constant["kendall_tau"]) and math.isnan(constant["pearson"])


def test_rows_respect_the_mask_and_report_means_over_defined_rows():
    weights = torch.tensor([[0.6, 0.3, 0.1, 0.9], [0.5, 0.5, 0.0, 0.0]])
    importance = torch.tensor([[3.0, 2.0, 1.0, -5.0], [1.0, 2.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    rows = agreement_rows(weights, importance, mask)
    assert set(rows) == set(AGREEMENT)
    assert rows["kendall_tau"][0] == pytest.approx(1.0)  # the masked last word would break it
    assert math.isnan(rows["kendall_tau"][1])  # one context word: undefined
    report = classification_report(torch.tensor([0, 1]), torch.tensor([0, 1]), agreement=rows)
    assert report["kendall_tau"] == pytest.approx(1.0) and report["top1_agreement"] == pytest.approx(1.0)
