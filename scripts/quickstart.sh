#!/usr/bin/env bash
# Offline quick start on the embedded digits dataset (scikit-learn's 8x8 digits, no download):
# SupCon pretraining of a narrow ResNet-18, then linear evaluation of its frozen trunk.
# A few minutes on a 2-core CPU; the kNN monitor prints the random trunk's accuracy (epoch 0)
# and the pretrained one's. Sets up .venv first if needed (scripts/setup.sh); a second run replaces
# the first (--overwrite).
set -euo pipefail
source "$(dirname "$0")/setup.sh"
source "$(dirname "$0")/common.sh"

launch main_supcon.py --dataset digits --model resnet18 --width 16 --batch_size 128 --learning_rate 0.1 \
    --temp 0.1 --cosine --epochs 10 --knn_freq 5 --num_workers 2 --print_freq 5 --seed 0 --overwrite
launch main_linear.py --dataset digits --batch_size 128 --learning_rate 0.5 --cosine --epochs 10 --num_workers 2 --seed 0 --overwrite \
    --print_freq 100 --ckpt save/SupCon/digits_models/SupCon_digits_resnet18_lr_0.1_decay_0.0001_bsz_128_temp_0.1_trial_0_cosine_width_16/last.pth
