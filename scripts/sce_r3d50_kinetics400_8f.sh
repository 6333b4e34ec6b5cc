#!/usr/bin/env bash
# SCE for images and videos (MVAP 2023, eztorch), R3D-50 pretrained on Kinetics-400 with 8 frames (200 epochs; 8 A100s in
# the paper's run), row "8 frames" of its table: Kinetics-400 linear 67.6, UCF101 fine-tuning 94.1 /
# retrieval R@1 81.5, HMDB51 fine-tuning 70.5 / retrieval R@1 43.0 (split SPLIT, default 1).
# Every evaluation trains fast (one view per video every 5 epochs, best.pth kept), then tests
# best.pth on 10 clips x 3 crops per video.
# DATA = the Kinetics-400 root (train/, val/, train.csv, val.csv); UCF101 and HMDB51 = their video
# folders (<class>/<video>.avi) with ucfTrainTestlist/ or testTrainMulti_7030_splits/ in or beside them.
set -euo pipefail
source "$(dirname "$0")/common.sh"
UCF101=${UCF101:-./datasets/ucf101}
HMDB51=${HMDB51:-./datasets/hmdb51}
SPLIT=${SPLIT:-1}
CKPT=save/SCE/r3d50_kinetics400_8f/last.pth

launch main_sce.py --recipe r3d50_kinetics400 --num_frames 8 --dataset kinetics --data_folder "$DATA" --syncBN \
    --amp bf16 --num_workers 4 --seed 42 --output_dir save/SCE/r3d50_kinetics400_8f
linear=(main_linear.py --ckpt "$CKPT" --dataset kinetics --data_folder "$DATA" --num_workers 4 --seed 42)
launch "${linear[@]}"
launch "${linear[@]}" --test best --batch_size_val 480
for dataset in ucf101 hmdb51; do
    if [ "$dataset" = ucf101 ]; then folder=$UCF101; else folder=$HMDB51; fi
    finetune=(main_ce.py --pretrained "$CKPT" --dataset "$dataset" --data_folder "$folder" --split_id "$SPLIT"
              --syncBN --num_workers 4 --seed 42)
    launch "${finetune[@]}"
    launch "${finetune[@]}" --test best --batch_size_val 60
    launch main_retrieval.py --ckpt "$CKPT" --dataset "$dataset" --data_folder "$folder" --split_id "$SPLIT" \
        --batch_size 60 --num_workers 3 --features_dir "save/SCE/r3d50_kinetics400_8f/features_${dataset}_split${SPLIT}"
done
