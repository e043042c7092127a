#!/usr/bin/env bash
# Segmentation accuracy of the shipped Mask R-CNN and the classical segmenter, side by side:
# BCCD test split (55 fields, never used in training or selection) and JTSC (300 single cells
# from another lab, never used in training).
#   bash benchmarks/segment_accuracy.sh [OUT_DIR]   (default /tmp/segment_accuracy)
set -euo pipefail
DATA="${CVAT_TOOLS_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}"
OUT="${1:-/tmp/segment_accuracy}"
mkdir -p "$OUT"
BUNDLE="$(python -c 'from cvat_tools.bundle import shipped_bundle; print(shipped_bundle("segmenter") or "")')"
ARGS=(--classical)
[ -n "$BUNDLE" ] && ARGS=(--bundle "$BUNDLE" --classical)
cvat-tools evaluate segmenter --data "$DATA/bccd_wbc" --split test "${ARGS[@]}" \
    --json "$OUT/bccd_test.json" --overlays "$OUT/overlays_bccd" 2> /dev/null
cvat-tools evaluate segmenter --data "$DATA/jtsc_wbc" "${ARGS[@]}" \
    --json "$OUT/jtsc.json" --overlays "$OUT/overlays_jtsc" 2> /dev/null
