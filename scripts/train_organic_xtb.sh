#!/usr/bin/env bash
# Train the shipped pretrained model 'organic-xtb' from the GFN2-xTB data set and copy it into the
# package. Two stages: molequi/pretrained/organic_xtb.yaml from scratch into RUN_DIR, then
# molequi/pretrained/organic_xtb.stage2.yaml started from it (molequi train --init) into
# RUN_DIR_stage2. Resumable: run it again after an interruption and it continues from the last
# epoch of the stage it was in.
#   bash scripts/train_organic_xtb.sh [--gpu] [DATA_DIR] [RUN_DIR]
# --gpu: the GPU recipe (organic_xtb.gpu.yaml, organic_xtb.gpu.stage2.yaml: a larger model, far
# more epochs) into runs/organic_xtb_gpu by default.
# DATA_DIR is built by: python datasets/organic_xtb.py --out data/organic_xtb  (25-50 min on 2 cores)
set -euo pipefail
recipe=organic_xtb
if [ "${1:-}" = "--gpu" ]; then
    recipe=organic_xtb.gpu
    shift
fi
data=${1:-data/organic_xtb}
run=${2:-runs/${recipe/./_}}
second=${run}_stage2
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [ ! -f "$data/train.extxyz" ]; then
    echo "no $data/train.extxyz: build it first with: python datasets/organic_xtb.py --out $data" >&2
    exit 2
fi
# stage_done RUN: the run wrote its model (a finished stage is not run again)
stage_done() { [ -f "$1/model.molequi" ] && [ ! -f "$1/checkpoints/last.pt" -o "$1/model.molequi" -nt "$1/checkpoints/last.pt" ]; }
if ! stage_done "$run"; then
    if [ -f "$run/checkpoints/last.pt" ]; then
        molequi train --resume --out "$run" --no-progress
    else
        molequi train --config molequi/pretrained/$recipe.yaml --data "$data/train.extxyz" \
            --test-data "$data/test.extxyz" --out "$run" --no-progress
    fi
fi
if ! stage_done "$second"; then
    if [ -f "$second/checkpoints/last.pt" ]; then
        molequi train --resume --out "$second" --no-progress
    else
        molequi train --config molequi/pretrained/$recipe.stage2.yaml --init "$run/model.molequi" \
            --data "$data/train.extxyz" --test-data "$data/test.extxyz" --out "$second" --no-progress
    fi
fi
python scripts/ship_pretrained.py "$run" "$second" --data "$data" --recipe "$recipe"
