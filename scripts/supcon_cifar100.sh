#!/usr/bin/env bash
# SupContrast table, cifar100, SupContrast (supervised contrastive), ResNet-50: 76.5% linear top-1.
# Pretraining (1000 epochs, batch 1024, lr 0.5, temperature 0.1, cosine, warm-up), then linear evaluation.
set -euo pipefail
source "$(dirname "$0")/common.sh"

launch main_supcon.py --dataset cifar100 --data_folder "$DATA" --method SupCon --batch_size 1024 --learning_rate 0.5 \
    --temp 0.1 --cosine
launch main_linear.py --dataset cifar100 --data_folder "$DATA" --batch_size 512 --learning_rate 5 \
    --ckpt save/SupCon/cifar100_models/SupCon_cifar100_resnet50_lr_0.5_decay_0.0001_bsz_1024_temp_0.1_trial_0_cosine_warm/last.pth
