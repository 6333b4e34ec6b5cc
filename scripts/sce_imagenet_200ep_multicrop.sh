#!/usr/bin/env bash
# SCE (Denize et al., WACV 2023), ResNet-50 on ImageNet (DATA = folder with train/ and val/): 200 epochs, 2x224 + 192 + 160 + 128 + 96 crops.
# Released configuration resnet50_imagenet_multi_crop: batch 4096 over 16 GPUs (a SLURM job of 2 nodes x 8:
# this script then runs srun), LARS lr 0.3 per 256 images,
# sync-BN, mixed precision, symmetric loss, queue 65536. Published linear top-1: 75.4.
# Then SCE's linear protocol (MoCo v3's: SGD lr 0.1 per 256 images, 90 epochs, cosine).
set -euo pipefail
source "$(dirname "$0")/common.sh"

launch main_sce.py --dataset imagenet --data_folder "$DATA" --recipe imagenet --syncBN --amp fp16 --num_workers 8 \
    --epochs 200 \
    --nmb_crops 2 1 1 1 1 --size_crops 224 192 160 128 96 --min_scale_crops 0.2 0.172 0.143 0.114 0.086 \
    --max_scale_crops 1.0 0.86 0.715 0.571 0.429 --output_dir save/SCE/sce_imagenet_200ep_multicrop
launch main_linear.py --protocol sce --dataset imagenet --data_folder "$DATA" --batch_size 1024 --num_workers 8 \
    --ckpt save/SCE/sce_imagenet_200ep_multicrop/last.pth
