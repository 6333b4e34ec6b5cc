# Sourced by the reproduction scripts. launch SCRIPT ARGS... runs one stage:
#   NGPU=N (default 1)  processes, through torchrun when N > 1 (one per GPU)
#   inside a SLURM job  srun starts the job's tasks instead (one per GPU, all nodes); SRUN=0 opts out
#   DATA=DIR            dataset root, passed as --data_folder (default ./datasets/)
#   DRY_RUN=1           print the commands instead of running them
cd "$(dirname "${BASH_SOURCE[0]}")/.."
NGPU=${NGPU:-1}
DATA=${DATA:-./datasets/}

srun_launches() { [ -n "${SLURM_JOB_ID:-}" ] && [ "${SRUN:-1}" = 1 ]; }

# bn_splits N: --bn_splits N when a stage runs as one process (BatchNorm in N groups, the released
# run's GPUs); several processes shuffle keys across them and take no --bn_splits
bn_splits() {
    local processes=$NGPU
    if srun_launches; then processes=${SLURM_NTASKS:-1}; fi
    if [ "$processes" = 1 ]; then echo "--bn_splits $1"; fi
}

launch() {
    local cmd=(python "$@")
    if srun_launches; then
        cmd=(srun --kill-on-bad-exit=1 python "$@")
    elif [ "$NGPU" -gt 1 ]; then
        cmd=(torchrun --nproc_per_node "$NGPU" "$@")
    fi
    if [ "${DRY_RUN:-0}" = 1 ]; then
        printf "%q " "${cmd[@]}"; echo
    else
        "${cmd[@]}"
    fi
}
