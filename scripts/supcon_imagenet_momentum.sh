#!/usr/bin/env bash
# SupContrast README, ImageNet row: SupCon with ResNet-50, 79.1% linear top-1 "(MoCo trick)", i.e. a
# "small batch size with the trick of the momentum encoder" (DATA = folder with train/ and val/).
# Where each value comes from:
#   --model resnet50, --dataset imagenet    the README's ImageNet table row
#   --size 224                              ImageNet's crop (the README's commands are CIFAR's 32)
#   --batch_size 1024 --learning_rate 0.5
#   --temp 0.1 --cosine                     the README's SupCon pretraining command (its warm-up too: batch > 256)
#   --epochs 200                            MoCo's default (the README states no ImageNet schedule)
#   --moco_k 65536 --moco_m 0.999           MoCo's queue size and momentum (the README states neither)
#   linear: --batch_size 512 --learning_rate 5   the README's SupCon linear evaluation command
set -euo pipefail
source "$(dirname "$0")/common.sh"

launch main_supcon.py --dataset imagenet --data_folder "$DATA" --model resnet50 --size 224 --method SupCon \
    --batch_size 1024 --learning_rate 0.5 --temp 0.1 --cosine --epochs 200 \
    --momentum_encoder --moco_k 65536 --moco_m 0.999
launch main_linear.py --dataset imagenet --data_folder "$DATA" --batch_size 512 --learning_rate 5 \
    --ckpt save/SupCon/imagenet_models/SupCon_imagenet_resnet50_lr_0.5_decay_0.0001_bsz_1024_temp_0.1_trial_0_momentum_k_65536_m_0.999_cosine_warm/last.pth
