"""KeNet (Li et al., ICASSP 2024): knowledge-enhanced doc-label attention for multi-label text classification."""
