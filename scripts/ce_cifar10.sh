#!/usr/bin/env bash
# SupContrast table, cifar10, cross-entropy baseline, ResNet-50: 95.0% top-1.
# 500 epochs, batch 1024, lr 0.8, cosine, warm-up, syncBN.
set -euo pipefail
source "$(dirname "$0")/common.sh"

launch main_ce.py --dataset cifar10 --data_folder "$DATA" --batch_size 1024 --learning_rate 0.8 --cosine --syncBN
