#!/usr/bin/env bash
# Run slam-train as one process per GPU host of a multi-node job (each process drives all GPUs of its host).
#
# Under SLURM (one task per node, see launch/slurm_example.sbatch) the coordinator and ranks come from SLURM_*:
#   srun --ntasks-per-node=1 launch/gpu_multinode.sh --gin_file=runs/slam_600m_stage1.gin --gin_file=slices/v4_64.gin --model_dir=/shared/run
# Anywhere else, start it on every host with the same coordinator and a distinct --process_id:
#   launch/gpu_multinode.sh --coordinator=10.0.0.1:12345 --num_processes=4 --process_id=I \
#       --gin_file=... --model_dir=/shared/run
# Every argument that is not one of the flags below goes to slam-train unchanged (--gin_file, --gin.NAME=VALUE).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/gpu_multinode.sh [FLAGS] --gin_file=F [--gin.NAME=VALUE ...] --model_dir=DIR

Sets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (read by slam-train, which then calls
jax.distributed.initialize) and runs slam-train on this host.

  --coordinator=HOST:PORT   address of process 0 (default under SLURM: first host of SLURM_JOB_NODELIST, --port)
  --port=PORT               coordinator port under SLURM (default 12355)
  --num_processes=N         number of processes = hosts (default under SLURM: SLURM_NTASKS)
  --process_id=I            this process' rank, 0..N-1 (default under SLURM: SLURM_PROCID)
  --compilation_cache=DIR   JAX persistent compilation cache on a shared file system (default <model_dir>/jax_cache)
  --dry-run                 print the environment and the command instead of running them
  -h, --help                this text

The model_dir must be on a file system every host sees (NFS, Lustre, gs://), since all processes write their
shards of each checkpoint there. Run one process per host: JAX uses every local GPU of a process.
EOF
}

die() { echo "gpu_multinode.sh: $*" >&2; exit 2; }

COORDINATOR="" PORT=12355 NUM="" PID="" CACHE_DIR="" DRY_RUN=0 MODEL_DIR=""
TRAIN_ARGS=()
while (($#)); do
  case "$1" in
    --coordinator=*) COORDINATOR="${1#*=}" ;;
    --port=*) PORT="${1#*=}" ;;
    --num_processes=*) NUM="${1#*=}" ;;
    --process_id=*) PID="${1#*=}" ;;
    --compilation_cache=*) CACHE_DIR="${1#*=}" ;;
    --coordinator|--port|--num_processes|--process_id|--compilation_cache)
      die "write $1=VALUE (with '=')" ;;
    --dry-run|--dry_run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --model_dir=*) MODEL_DIR="${1#*=}"; TRAIN_ARGS+=("$1") ;;
    *) TRAIN_ARGS+=("$1") ;;
  esac
  shift
done
[[ -n "$MODEL_DIR" ]] || die "give --model_dir=DIR (on a file system shared by all hosts)"
[[ " ${TRAIN_ARGS[*]} " == *" --gin_file"* ]] || die "give at least one --gin_file=F"

first_slurm_host() {  # the first host name of SLURM_JOB_NODELIST (e.g. "gpu[003-010,012],cpu7" -> gpu003)
  if command -v scontrol > /dev/null 2>&1; then
    scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1
    return
  fi
  local list="$SLURM_JOB_NODELIST"
  if [[ "$list" =~ ^([^,\[]+)\[([0-9]+) ]]; then
    echo "${BASH_REMATCH[1]}${BASH_REMATCH[2]}"
  else
    echo "${list%%,*}"
  fi
}

if [[ -n "${SLURM_JOB_NODELIST:-}" && -n "${SLURM_PROCID:-}" ]]; then
  [[ -n "$COORDINATOR" ]] || COORDINATOR="$(first_slurm_host):$PORT"
  [[ -n "$NUM" ]] || NUM="${SLURM_NTASKS:?SLURM_NTASKS is not set}"
  [[ -n "$PID" ]] || PID="$SLURM_PROCID"
  if [[ -n "${SLURM_NTASKS_PER_NODE:-}" && "${SLURM_NTASKS_PER_NODE%%(*}" != 1 ]]; then
    die "run one task per node (srun --ntasks-per-node=1), got SLURM_NTASKS_PER_NODE=$SLURM_NTASKS_PER_NODE"
  fi
fi
[[ -n "$COORDINATOR" && -n "$NUM" && -n "$PID" ]] || \
  die "need --coordinator, --num_processes and --process_id (or run under SLURM with srun)"
[[ "$COORDINATOR" == *:* ]] || die "--coordinator must be HOST:PORT, got '$COORDINATOR'"
[[ "$NUM" =~ ^[0-9]+$ && "$PID" =~ ^[0-9]+$ ]] || die "process count and id must be integers ($NUM, $PID)"
((PID < NUM)) || die "process id $PID is not below the number of processes $NUM"

export JAX_COORDINATOR_ADDRESS="$COORDINATOR"
export JAX_NUM_PROCESSES="$NUM"
export JAX_PROCESS_ID="$PID"
export JAX_COMPILATION_CACHE_DIR="${CACHE_DIR:-${MODEL_DIR%/}/jax_cache}"
# Overlap collectives with compute (XLA's latency-hiding scheduler); callers may add their own XLA_FLAGS.
export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_latency_hiding_scheduler=true"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"

if command -v slam-train > /dev/null 2>&1; then
  CMD=(slam-train)
else
  CMD=(python3 -m slam_jax.cli.train)
fi
CMD+=("${TRAIN_ARGS[@]}")

if ((DRY_RUN)); then
  for v in JAX_COORDINATOR_ADDRESS JAX_NUM_PROCESSES JAX_PROCESS_ID JAX_COMPILATION_CACHE_DIR XLA_FLAGS \
           XLA_PYTHON_CLIENT_MEM_FRACTION; do
    echo "export $v=${!v}"
  done
  echo "+ ${CMD[*]}"
  exit 0
fi
echo "process $PID of $NUM on $(hostname), coordinator $COORDINATOR" >&2
exec "${CMD[@]}"
