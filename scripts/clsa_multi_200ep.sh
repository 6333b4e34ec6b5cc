#!/usr/bin/env bash
# CLSA (Wang & Qi 2021) on ImageNet (DATA = folder with train/ and val/), the README's command: ResNet-50,
# 200 epochs, multi crop: weak and strong 224 192 160 128 96, --sym 0; then CLSA's linear protocol on ImageNet
# (published top-1 73.3).
set -euo pipefail
source "$(dirname "$0")/common.sh"

launch main_clsa.py --data="$DATA" --workers=32 --epochs=200 --start_epoch=0 --batch_size=256 --lr=0.03 \
    --weight_decay=1e-4 --print_freq=100 --world_size=1 --rank=0 --dist_url=tcp://localhost:10001 \
    --moco_dim=128 --moco_k=65536 --moco_m=0.999 --moco_t=0.2 --alpha=1 --aug_times=5 \
    --nmb_crops 1 1 1 1 1 --size_crops 224 192 160 128 96 \
    --min_scale_crops 0.2 0.172 0.143 0.114 0.086 --max_scale_crops 1.0 0.86 0.715 0.571 0.429 \
    --pick_strong 0 1 2 3 4 --pick_weak 0 1 2 3 4 --clsa_t 0.2 --sym 0 \
    --output_dir save/CLSA/clsa_multi_200ep
launch main_linear.py --protocol clsa --dataset imagenet --data_folder "$DATA" --batch_size 256 \
    --ckpt save/CLSA/clsa_multi_200ep/last.pth
