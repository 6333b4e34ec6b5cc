#!/usr/bin/env bash
# CLSA (Wang & Qi 2021) on ImageNet (DATA = folder with train/ and val/), the README's command: ResNet-50,
# 200 epochs, single crop: weak 224, strong 96, --sym 1; then CLSA's linear protocol on ImageNet
# (the authors mark --sym 1 "not verified" and publish no figure).
set -euo pipefail
source "$(dirname "$0")/common.sh"

launch main_clsa.py --data="$DATA" --workers=32 --epochs=200 --start_epoch=0 --batch_size=256 --lr=0.03 \
    --weight_decay=1e-4 --print_freq=100 --world_size=1 --rank=0 --dist_url=tcp://localhost:10001 \
    --moco_dim=128 --moco_k=65536 --moco_m=0.999 --moco_t=0.2 --alpha=1 --aug_times=5 \
    --nmb_crops 1 1 --size_crops 224 96 --min_scale_crops 0.2 0.086 --max_scale_crops 1.0 0.429 \
    --pick_strong 1 --pick_weak 0 --clsa_t 0.2 --sym 1 \
    --output_dir save/CLSA/clsa_single_sym_200ep
launch main_linear.py --protocol clsa --dataset imagenet --data_folder "$DATA" --batch_size 256 \
    --ckpt save/CLSA/clsa_single_sym_200ep/last.pth
