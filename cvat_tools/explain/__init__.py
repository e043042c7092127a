"""Review aids: Grad-CAM heat maps per cell (gradcam, cells, panels) and embedding plots of
labs (embedding)."""
