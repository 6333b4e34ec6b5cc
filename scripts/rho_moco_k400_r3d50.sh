#!/usr/bin/env bash
# rhoMoCo (Feichtenhofer et al., CVPR 2021, "A Large-Scale Study on Unsupervised Spatiotemporal Representation
# Learning"), after PySlowFast's configs/contrastive_ssl/MoCo_SlowR50_8x8.yaml: R3D-50 pretrained on Kinetics-400
# with RHO clips (default 4) of 8 frames x sampling rate 8 per video, 200 epochs, 8 GPUs, then the video linear
# protocol on Kinetics-400 and its 10 clips x 3 crops test. The paper's Slow-only R50 (a trunk this project does
# not have) reaches 66.6 (rho 2) and 71.0 (rho 4) K400 linear top-1; see the README for what differs.
# DATA = the Kinetics-400 root (train/, val/, train.csv, val.csv).
set -euo pipefail
source "$(dirname "$0")/common.sh"
RHO=${RHO:-4}
OUT=save/MoCo/rho${RHO}_moco_k400_r3d50

# 8 frames x sampling rate 8 at 30 fps: clips of 64 / 30 = 2.13 s; batch 64 and lr 0.1 on one machine
# (BASE_LR_SCALE_NUM_SHARDS: x machines); 35 warm-up epochs from lr 0.001; a 3-layer MLP; T 0.1;
# momentum 0.994 annealed to 1; queue 65536 of every key clip
launch main_moco.py --dataset kinetics --data_folder "$DATA" --model r3d50 --size 224 --num_frames 8 \
    --clip_duration 2.13 --num_clips "$RHO" --batch_size 64 --lr 0.1 --cos --warm --warm_epochs 35 \
    --warmup_from 0.001 --epochs 200 --weight_decay 1e-4 \
    --mlp --mlp_layers 3 --moco_dim 128 --moco_k 65536 --moco_t 0.1 --moco_m 0.994 --moco_m_cos $(bn_splits 8) \
    --amp bf16 --knn_freq 10 --save_freq 5 --num_workers 8 --seed 0 --output_dir "$OUT"
linear=(main_linear.py --ckpt "$OUT/last.pth" --dataset kinetics --data_folder "$DATA" --num_workers 8 --seed 0)
launch "${linear[@]}"
launch "${linear[@]}" --test best --batch_size_val 480
