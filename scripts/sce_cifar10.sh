#!/usr/bin/env bash
# SCE (WACV 2023) CIFAR-10 recipe: ResNet-18 (CIFAR stem), SGD lr 0.06, weight decay 5e-4, 5 warm-up epochs,
# cosine, 200 epochs, batch 256, queue 4096, momentum 0.99, weak view -> target, strong view -> online.
# Then SCE's linear protocol on CIFAR-10.
set -euo pipefail
source "$(dirname "$0")/common.sh"

launch main_sce.py --dataset cifar10 --data_folder "$DATA" --recipe cifar --num_workers 8 \
    --output_dir save/SCE/sce_cifar10
launch main_linear.py --protocol sce --dataset cifar10 --data_folder "$DATA" --batch_size 256 --num_workers 8 \
    --ckpt save/SCE/sce_cifar10/last.pth
