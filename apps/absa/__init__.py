"""ABSA app: progressive self-supervised attention learning (PSSA) and attention adversarial training."""
