#!/usr/bin/env bash
# make demo: run what skygrade can do end to end on a simulated night and say where the output is.
set -euo pipefail
BIN=${1:-.venv/bin}
OUT=${2:-demo-output}
NIGHT=2026-11-24
rm -rf "$OUT"
mkdir -p "$OUT"

echo "== 1. simulated MegaCam telescope: one night of small exposures (4 CCDs of 512x1152)"
"$BIN/skygrade" simulate --out "$OUT/archive" --nights "$NIGHT" --exposures 10 --geometry small --seed 1
echo
echo "   ground truth (labels.csv):"
sed 's/^/     /' "$OUT/archive/labels.csv"
echo
echo "== 2. the configuration the run used (documented defaults): $OUT/skygrade.yaml"
"$BIN/skygrade" config show > "$OUT/skygrade.yaml"
"$BIN/skygrade" config check "$OUT/skygrade.yaml"
echo
echo "demo done. Output:"
echo "  $OUT/archive/$NIGHT/*.fits   simulated exposures (MEF, uint16, SIMCLASS = truth)"
echo "  $OUT/archive/labels.csv      exposure_id,label"
echo "  $OUT/skygrade.yaml           effective configuration"
