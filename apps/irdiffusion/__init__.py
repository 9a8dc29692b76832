"""IR-Diffusion (He et al., 2024): Isolation and Reposition Attention for multi-subject consistency."""
