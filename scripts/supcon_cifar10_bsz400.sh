#!/usr/bin/env bash
# SupContrast README, CIFAR-10 SupCon with ResNet-50, batch 400, 300 epochs (the README's first run).
# tensorboard --logdir=./save/SupCon/cifar10_tensorboard/SupCon_cifar10_resnet50_lr_0.5_decay_0.0001_bsz_400_temp_0.1_trial_0_cosine_warm
set -euo pipefail
source "$(dirname "$0")/common.sh"

launch main_supcon.py --dataset cifar10 --data_folder "$DATA" --method SupCon --batch_size 400 --learning_rate 0.5 \
    --temp 0.1 --cosine --epochs 300
launch main_linear.py --dataset cifar10 --data_folder "$DATA" --batch_size 256 --learning_rate 5 --epochs 100 \
    --ckpt save/SupCon/cifar10_models/SupCon_cifar10_resnet50_lr_0.5_decay_0.0001_bsz_400_temp_0.1_trial_0_cosine_warm/ckpt_epoch_300.pth
