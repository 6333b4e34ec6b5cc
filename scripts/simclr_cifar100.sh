#!/usr/bin/env bash
# SupContrast table, cifar100, SimCLR (unsupervised contrastive), ResNet-50: 70.7% linear top-1.
# Pretraining (1000 epochs, batch 1024, lr 0.5, temperature 0.5, cosine, warm-up, syncBN), then linear evaluation.
set -euo pipefail
source "$(dirname "$0")/common.sh"

launch main_supcon.py --dataset cifar100 --data_folder "$DATA" --method SimCLR --batch_size 1024 --learning_rate 0.5 \
    --temp 0.5 --cosine --syncBN
launch main_linear.py --dataset cifar100 --data_folder "$DATA" --batch_size 512 --learning_rate 1 \
    --ckpt save/SupCon/cifar100_models/SimCLR_cifar100_resnet50_lr_0.5_decay_0.0001_bsz_1024_temp_0.5_trial_0_cosine_warm/last.pth
