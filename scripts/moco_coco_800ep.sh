#!/usr/bin/env bash
# Revisiting Contrastive Methods (Van Gansbeke et al. 2021), Model Zoo row "MoCo, 800 epochs" on COCO train2017:
# MoCo v2 baseline, ResNet-50, lr 0.3, batch 256, 224-px crops. DATA = the train2017 folder of images.
# Published: VOC SVM 81.0, VOC mIoU 71.1. Followed by the VOC07 linear SVM (VOC=VOCdevkit/VOC2007).
set -euo pipefail
source "$(dirname "$0")/common.sh"
VOC=${VOC:-./datasets/VOCdevkit/VOC2007}

# Revisiting trained on 2 GPUs x 128 images: one process keeps 2 BatchNorm groups of 128
launch main_moco.py -a resnet50 --epochs 800 --lr 0.3 --workers 16 --batch-size 256 --dataset path "$DATA" \
    --mlp --moco-t 0.2 --cos --size_crops 224 --min_scale_crops 0.2 --max_scale_crops 1.0 --num_crops 2 \
    --output_dir save/MoCo/moco_coco_800ep $(bn_splits 2)
launch main_svm.py --data_folder "$VOC" --ckpt save/MoCo/moco_coco_800ep/last.pth
