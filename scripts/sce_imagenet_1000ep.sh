#!/usr/bin/env bash
# SCE (Denize et al., WACV 2023), ResNet-50 on ImageNet (DATA = folder with train/ and val/): 1000 epochs, 2x224 crops, weight decay 1.5e-6.
# Released configuration resnet50_imagenet: batch 4096 over 8 GPUs (NGPU=8), LARS lr 0.3 per 256 images,
# sync-BN, mixed precision, symmetric loss, queue 65536. Published linear top-1: 74.1.
# Then SCE's linear protocol (MoCo v3's: SGD lr 0.1 per 256 images, 90 epochs, cosine).
set -euo pipefail
source "$(dirname "$0")/common.sh"

launch main_sce.py --dataset imagenet --data_folder "$DATA" --recipe imagenet --syncBN --amp fp16 --num_workers 8 \
    --epochs 1000 --weight_decay 1.5e-6 --output_dir save/SCE/sce_imagenet_1000ep
launch main_linear.py --protocol sce --dataset imagenet --data_folder "$DATA" --batch_size 1024 --num_workers 8 \
    --ckpt save/SCE/sce_imagenet_1000ep/last.pth
