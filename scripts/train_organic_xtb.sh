#!/usr/bin/env bash
# Train the shipped pretrained model 'organic-xtb' from the GFN2-xTB data set and copy it into the
# package. Resumable: run it again after an interruption and it continues from the last epoch.
#   bash scripts/train_organic_xtb.sh [DATA_DIR] [RUN_DIR]
# DATA_DIR is built by: python datasets/organic_xtb.py --out data/organic_xtb  (25-50 min on 2 cores)
set -euo pipefail
data=${1:-data/organic_xtb}
run=${2:-runs/organic_xtb}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [ ! -f "$data/train.extxyz" ]; then
    echo "no $data/train.extxyz: build it first with: python datasets/organic_xtb.py --out $data" >&2
    exit 2
fi
if [ -f "$run/checkpoints/last.pt" ] && [ ! -f "$run/model.molequi" ]; then
    molequi train --resume --out "$run" --no-progress
else
    molequi train --config molequi/pretrained/organic_xtb.yaml --data "$data/train.extxyz" \
        --test-data "$data/test.extxyz" --out "$run" --no-progress
fi
python scripts/ship_pretrained.py "$run" --data "$data"
