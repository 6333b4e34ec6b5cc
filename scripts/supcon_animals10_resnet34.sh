#!/usr/bin/env bash
# SupContrast README, animals10 at 300x300 (ImageFolder train/ and test/ under $DATA,
# default ./datasets/animals10_300x300), SupCon with Resnet34, batch 30, 500 epochs, then linear evaluation.
set -euo pipefail
source "$(dirname "$0")/common.sh"

ROOT=${DATA%/}
[ "$ROOT" = ./datasets ] && ROOT=./datasets/animals10_300x300
NORM=(--mean "(0.3837, 0.3704, 0.3072)" --std "(0.3268, 0.3187, 0.3051)")
launch main_supcon.py --dataset path --data_folder "$ROOT/train/" --learning_rate 0.5 --temp 0.1 --cosine \
    --model resnet34 --epochs 500 --size 300 --batch_size 30 --method SupCon "${NORM[@]}"
launch main_linear.py --batch_size 30 --batch_size_val 30 --epochs 100 --learning_rate 1 --model resnet34 --dataset path \
    "${NORM[@]}" --data_folder "$ROOT/train/" --test_folder "$ROOT/test/" --size 300 --num_classes 10 \
    --ckpt save/SupCon/path_models/SupCon_path_resnet34_lr_0.5_decay_0.0001_bsz_30_temp_0.1_trial_0_cosine/ckpt_epoch_500.pth
