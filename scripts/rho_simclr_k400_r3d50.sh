#!/usr/bin/env bash
# rhoSimCLR (Feichtenhofer et al., CVPR 2021), after PySlowFast's configs/contrastive_ssl/SimCLR_SlowR50_8x8.yaml:
# R3D-50 pretrained on Kinetics-400 with 2 clips of 8 frames x sampling rate 8 per video (the clips are
# SimCLR's two views), 200 epochs, 8 GPUs, LARS, sync-BN, then the video linear protocol on Kinetics-400 and
# its 10 clips x 3 crops test. The paper's Slow-only R50 (a trunk this project does not have) reaches 61.5
# K400 linear top-1 (rho 2); see the README for what differs.
# DATA = the Kinetics-400 root (train/, val/, train.csv, val.csv).
set -euo pipefail
source "$(dirname "$0")/common.sh"

# batch 64 (TRAIN.BATCH_SIZE's default), LARS lr 1.2, weight decay 1e-6, T 0.1, a 3-layer MLP to 128-d;
# 35 warm-up epochs from lr 0.001 (WARMUP_EPOCHS, WARMUP_START_LR)
launch main_supcon.py --method SimCLR --dataset kinetics --data_folder "$DATA" --model r3d50 --size 224 \
    --num_frames 8 --clip_duration 2.13 --num_clips 2 --batch_size 64 --learning_rate 1.2 --optimizer lars \
    --weight_decay 1e-6 --temp 0.1 --feat_dim 128 --mlp_layers 3 --cosine --warm --warm_epochs 35 --warmup_from 0.001 \
    --epochs 200 --syncBN --amp bf16 --knn_freq 10 \
    --save_freq 10 --num_workers 10 --seed 0
CKPT=save/SupCon/kinetics_models/SimCLR_kinetics_r3d50_lr_1.2_decay_1e-06_bsz_64_temp_0.1_trial_0_clips_2_frames_8_lars_mlp3_cosine_warm_35_from_0.001/last.pth
linear=(main_linear.py --ckpt "$CKPT" --dataset kinetics --data_folder "$DATA" --num_workers 10 --seed 0)
launch "${linear[@]}"
launch "${linear[@]}" --test best --batch_size_val 480
