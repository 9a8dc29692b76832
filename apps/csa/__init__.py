"""CSA app: class-semantics attention on BMN (mmaction2) for temporal action localisation."""
