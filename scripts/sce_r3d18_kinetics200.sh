#!/usr/bin/env bash
# SCE for images and videos (MVAP 2023, eztorch), R3D-18 pretrained on Kinetics-200 (8 frames, 200 epochs; 2 A100s in the
# paper's run), then SCE's video linear protocol on Kinetics-200 (lr 4.0, 60 epochs, validation on
# one view per video every 5 epochs) and the 10 clips x 3 crops test of its best checkpoint.
# DATA = the Kinetics-200 root: train/ and val/ (videos or frame folders) listed by train.csv / val.csv.
set -euo pipefail
source "$(dirname "$0")/common.sh"

launch main_sce.py --recipe r3d18_kinetics200 --dataset kinetics --data_folder "$DATA" --syncBN --amp bf16 \
    --num_workers 4 --seed 42 --output_dir save/SCE/r3d18_kinetics200
linear=(main_linear.py --ckpt save/SCE/r3d18_kinetics200/last.pth --dataset kinetics --data_folder "$DATA"
        --num_workers 4 --seed 42)
launch "${linear[@]}"
launch "${linear[@]}" --test best --batch_size_val 480
