"""Stage 1: find every WBC in a field and give its mask (classical watershed or Mask R-CNN)."""
