#!/usr/bin/env bash
# MoCo v2 on ImageNet (DATA = folder with train/ and val/): ResNet-50, 200 epochs, lr 0.03, batch 256,
# MLP head, T 0.2, MoCo v2 augmentation, cosine; then MoCo's linear protocol (published: 67.5 top-1).
set -euo pipefail
source "$(dirname "$0")/common.sh"

launch main_moco.py --dataset imagenet --data_folder "$DATA" --mlp --moco_t 0.2 --aug_plus --cos \
    --output_dir save/MoCo/mocov2_imagenet_200ep
launch main_linear.py --protocol moco --dataset imagenet --data_folder "$DATA" --batch_size 256 \
    --ckpt save/MoCo/mocov2_imagenet_200ep/last.pth
