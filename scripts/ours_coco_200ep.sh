#!/usr/bin/env bash
# Revisiting Contrastive Methods (Van Gansbeke et al. 2021), Model Zoo row "Ours, 200 epochs" on COCO train2017:
# MoCo + multi-scale constrained cropping (2x160 + 4x96), AutoAugment on crops 0 2 3 4 5, kNN loss (top-20, weight 0.4).
# Published: VOC SVM 85.1, VOC mIoU 71.9. Followed by the VOC07 linear SVM (VOC=VOCdevkit/VOC2007).
set -euo pipefail
source "$(dirname "$0")/common.sh"
VOC=${VOC:-./datasets/VOCdevkit/VOC2007}

# Revisiting trained on 2 GPUs x 128 images: one process keeps 2 BatchNorm groups of 128
launch main_moco.py -a resnet50 --epochs 200 --lr 0.3 --workers 16 --batch-size 256 --dataset path "$DATA" \
    --mlp --moco-t 0.2 --cos --moco-m 0.995 --size_crops 160 96 --min_scale_crops 0.2 0.05 \
    --max_scale_crops 1.0 0.14 --num_crops 2 4 --constrained-cropping --auto-augment 0 2 3 4 5 \
    --aux-topk 20 --aux-weight 0.4 --output_dir save/MoCo/ours_coco_200ep $(bn_splits 2)
launch main_svm.py --data_folder "$VOC" --ckpt save/MoCo/ours_coco_200ep/last.pth
