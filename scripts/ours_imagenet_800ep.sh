#!/usr/bin/env bash
# Revisiting Contrastive Methods (Van Gansbeke et al. 2021), the "Ours" configuration pretrained on ImageNet
# (DATA = folder with train/ and val/) for 800 epochs, then MoCo's linear protocol on ImageNet.
set -euo pipefail
source "$(dirname "$0")/common.sh"

launch main_moco.py -a resnet50 --epochs 800 --lr 0.3 --workers 16 --batch-size 256 --dataset imagenet "$DATA" \
    --mlp --moco-t 0.2 --cos --moco-m 0.995 --size_crops 160 96 --min_scale_crops 0.2 0.05 \
    --max_scale_crops 1.0 0.14 --num_crops 2 4 --constrained-cropping --auto-augment 0 2 3 4 5 \
    --aux-topk 20 --aux-weight 0.4 --output_dir save/MoCo/ours_imagenet_800ep
launch main_linear.py --protocol moco --dataset imagenet --data_folder "$DATA" --batch_size 256 \
    --ckpt save/MoCo/ours_imagenet_800ep/last.pth
