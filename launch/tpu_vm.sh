#!/usr/bin/env bash
# Launch slam-train on a Cloud TPU VM slice (every host runs the identical command), with spot/queued auto-resume.
#
#   launch/tpu_vm.sh up --name=slam-v4 --type=v4-64 --zone=us-central2-b --project=my-proj --queued --spot \
#       --gin_file=runs/slam_600m_stage1.gin --gin_file=slices/v4_64.gin --model_dir=gs://my-bucket/slam_600m/stage1 \
#       --env=SLAM_SPM_MODEL=gs://my-bucket/spm/spm32k.model --env=TFDS_DATA_DIR=gs://my-bucket/tfds \
#       --env=SLAM_LIBRILIGHT_DIR=gs://my-bucket/librilight
#
# Run with --help for every command and flag; --dry-run prints every gcloud command (and the script the workers
# run) instead of running anything, so nothing here needs gcloud to be installed to be inspected.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$SCRIPT_DIR")"
REMOTE_DIR='$HOME/slam_run'   # expanded on the workers

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh COMMAND [FLAGS] [--gin_file=F ...] [--gin.NAME=VALUE ...]

Commands
  create    create the TPU VM (or, with --queued, a queued resource holding it)
  install   install slam_jax and jax[tpu] on every worker (--worker=all)
  run       start `slam-train --distributed ...` on every worker (detached; log in ~/slam_run/train.log)
  logs      follow the training log of one worker (--log_worker, default 0)
  status    print the resource state and whether training runs, finished or failed
  delete    delete the queued resource (with its TPU VM) or the TPU VM
  up        create + install + run, then watch: when a spot/preemptible slice is preempted (queued resource
            SUSPENDED or FAILED, TPU VM PREEMPTED/TERMINATED) it is deleted, re-created and the same command runs
            again; slam-train resumes from the latest checkpoint in the gs:// model_dir. Ends when slam-train
            exits 0 (trained to TrainConfig.train_steps) or fails on a healthy slice (its exit code).

Resource flags
  --name=NAME               TPU VM name (the queued resource is NAME-qr)                      [required]
  --type=TYPE               accelerator type, e.g. v4-64, v5p-64, v5litepod-64, v6e-64        [create, up]
  --zone=ZONE               e.g. us-central2-b (v4), us-east5-a (v5p)                          [required]
  --project=PROJECT         GCP project (default: gcloud's configured project)
  --runtime-version=V       TPU software version (default from --type: v4 tpu-ubuntu2204-base, v5p v2-alpha-tpuv5,
                            v5litepod v2-alpha-tpuv5-lite, v6e v2-alpha-tpuv6e)
  --spot | --reserved       provisioning model (default: on-demand)
  --queued                  use `gcloud compute tpus queued-resources` (recommended for pods and spot capacity)
  --iap                     reach the workers through IAP (`--tunnel-through-iap`), for VMs without external IPs

Training flags
  --model_dir=gs://...      run directory shared by all hosts (checkpoints, config.gin, metrics)  [run, up]
  --gin_file=F              repeatable; a packaged name (runs/slam_600m_stage1.gin) or a local file, which
                            is copied to every worker
  --gin.NAME=VALUE          repeatable gin binding passed to slam-train (quote string values: "'gs://b/x'")
  --env=NAME=VALUE          repeatable environment variable for slam-train (data locations: SLAM_SPM_MODEL,
                            TFDS_DATA_DIR, SLAM_LIBRILIGHT_DIR, SLAM_LIBRILIGHT_PREPARED, ...)
  --compilation_cache=DIR   JAX persistent compilation cache (default gs://<model_dir bucket>/jax_cache)
  --package=SPEC            what to pip-install on the workers: a pip spec or git URL
                            (git+https://github.com/ORG/slam_jax.git@REF), or a local .tar.gz/.whl (copied to the
                            workers). Default: an sdist built from this checkout (python3 setup.py sdist).

Other flags
  --log_worker=N            worker whose log `logs` follows (default 0)
  --poll=SECONDS            `up`: seconds between state checks (default 60)
  --max_restarts=N          `up`: give up after N re-creations (default 100)
  --delete                  with `up`: delete the slice when training has finished; alone: same as `delete`
  --dry-run                 print the commands (and the worker script) instead of running them
  -h, --help                this text

Queued-resource states (`gcloud compute tpus queued-resources describe`, field state.state):
  WAITING_FOR_RESOURCES  queued, waiting for capacity          PROVISIONING  capacity found, VMs being created
  ACTIVE                 the TPU VMs exist: install and run    FAILED        the request could not be fulfilled
  SUSPENDING/SUSPENDED   a spot slice was preempted: it is never restarted, only deleted and re-created
  (also ACCEPTED, CREATING, DELETING). `up` re-creates on FAILED/SUSPENDED and waits on the transitional states.
EOF
}

die() { echo "tpu_vm.sh: $*" >&2; exit 2; }

# ------------------------------------------------------------------------------------------------ arguments
COMMAND="" NAME="" TYPE="" ZONE="" PROJECT="" RUNTIME="" PROVISIONING="" QUEUED=0 IAP=0 DRY_RUN=0
MODEL_DIR="" CACHE_DIR="" PACKAGE="" LOG_WORKER=0 POLL=60 MAX_RESTARTS=100 DELETE_AFTER=0
GIN_FILES=() GIN_BINDINGS=() ENVS=()

need_value() { [[ -n "${2:-}" ]] || die "$1 needs a value"; }

while (($#)); do
  arg="$1"; shift
  value=""
  if [[ "$arg" == --*=* && "$arg" != --gin.* ]]; then
    value="${arg#*=}"; arg="${arg%%=*}"
  elif [[ "$arg" =~ ^--(name|type|zone|project|runtime-version|model_dir|gin_file|env|compilation_cache|package|log_worker|poll|max_restarts)$ ]]; then
    (($#)) || die "$arg needs a value"
    value="$1"; shift
  fi
  case "$arg" in
    create|install|run|logs|status|delete|up)
      [[ -z "$COMMAND" ]] || die "two commands given: $COMMAND and $arg"; COMMAND="$arg" ;;
    --name) need_value "$arg" "$value"; NAME="$value" ;;
    --type) need_value "$arg" "$value"; TYPE="$value" ;;
    --zone) need_value "$arg" "$value"; ZONE="$value" ;;
    --project) need_value "$arg" "$value"; PROJECT="$value" ;;
    --runtime-version) need_value "$arg" "$value"; RUNTIME="$value" ;;
    --spot) [[ "$PROVISIONING" != reserved ]] || die "--spot and --reserved exclude each other"; PROVISIONING=spot ;;
    --reserved) [[ "$PROVISIONING" != spot ]] || die "--spot and --reserved exclude each other"; PROVISIONING=reserved ;;
    --queued) QUEUED=1 ;;
    --iap) IAP=1 ;;
    --model_dir) need_value "$arg" "$value"; MODEL_DIR="$value" ;;
    --gin_file) need_value "$arg" "$value"; GIN_FILES+=("$value") ;;
    --gin.*=*) GIN_BINDINGS+=("$arg") ;;
    --gin.*) die "gin binding $arg has no =VALUE" ;;
    --env) [[ "$value" == ?*=* ]] || die "--env wants NAME=VALUE, got '$value'"; ENVS+=("$value") ;;
    --compilation_cache) need_value "$arg" "$value"; CACHE_DIR="$value" ;;
    --package) need_value "$arg" "$value"; PACKAGE="$value" ;;
    --log_worker) [[ "$value" =~ ^[0-9]+$ ]] || die "--log_worker wants a worker index"; LOG_WORKER="$value" ;;
    --poll) [[ "$value" =~ ^[0-9]+$ ]] || die "--poll wants seconds"; POLL="$value" ;;
    --max_restarts) [[ "$value" =~ ^[0-9]+$ ]] || die "--max_restarts wants a number"; MAX_RESTARTS="$value" ;;
    --delete) DELETE_AFTER=1 ;;
    --dry-run|--dry_run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$arg' (see --help)" ;;
  esac
done

if [[ -z "$COMMAND" ]]; then
  ((DELETE_AFTER)) && COMMAND=delete || { usage >&2; die "no command given"; }
fi
[[ -n "$NAME" ]] || die "--name is required"
[[ -n "$ZONE" ]] || die "--zone is required"
QR_NAME="${NAME}-qr"
if ((!DRY_RUN)) && ! command -v gcloud > /dev/null 2>&1; then
  die "gcloud is not installed (https://cloud.google.com/sdk); --dry-run prints the commands without it"
fi

default_runtime() {
  case "$1" in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) return 1 ;;
  esac
}

if [[ "$COMMAND" == create || "$COMMAND" == up ]]; then
  [[ -n "$TYPE" ]] || die "--type is required to create a slice (e.g. --type=v4-64)"
  if [[ -z "$RUNTIME" ]]; then
    RUNTIME="$(default_runtime "$TYPE")" || die "no default runtime for --type=$TYPE; pass --runtime-version"
  fi
fi
if [[ "$COMMAND" == run || "$COMMAND" == up ]]; then
  ((${#GIN_FILES[@]})) || die "give at least one --gin_file (e.g. --gin_file=runs/slam_600m_stage1.gin --gin_file=slices/v4_64.gin)"
  [[ "$MODEL_DIR" == gs://* ]] || die "--model_dir must be a gs:// path that every host can reach (got '${MODEL_DIR}')"
  if [[ -z "$CACHE_DIR" ]]; then
    bucket="${MODEL_DIR#gs://}"; bucket="${bucket%%/*}"
    CACHE_DIR="gs://${bucket}/jax_cache"
  fi
fi

# ------------------------------------------------------------------------------------------------ helpers
quote() {  # shell-quotes each argument only where needed, for readable and copy-pasteable output
  local out=() a
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}

do_cmd() {  # runs a command, or prints it under --dry-run
  if ((DRY_RUN)); then echo "+ $(quote "$@")"; else "$@"; fi
}

GCLOUD_SCOPE=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && GCLOUD_SCOPE+=(--project="$PROJECT")
SSH_EXTRA=()
((IAP)) && SSH_EXTRA+=(--tunnel-through-iap)

ssh_workers() {  # ssh_workers WORKER COMMAND
  do_cmd gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_SCOPE[@]}" "--worker=$1" "${SSH_EXTRA[@]}" \
    --command="$2"
}

scp_workers() {  # scp_workers LOCAL_FILE REMOTE_PATH
  do_cmd gcloud compute tpus tpu-vm scp "$1" "$NAME:$2" "${GCLOUD_SCOPE[@]}" --worker=all "${SSH_EXTRA[@]}"
}

# ------------------------------------------------------------------------------------------------ commands
create() {
  local model=()
  [[ -n "$PROVISIONING" ]] && model=("--$PROVISIONING")
  if ((QUEUED)); then
    do_cmd gcloud compute tpus queued-resources create "$QR_NAME" --node-id="$NAME" "${GCLOUD_SCOPE[@]}" \
      --accelerator-type="$TYPE" --runtime-version="$RUNTIME" "${model[@]}"
  else
    do_cmd gcloud compute tpus tpu-vm create "$NAME" "${GCLOUD_SCOPE[@]}" --accelerator-type="$TYPE" \
      --version="$RUNTIME" "${model[@]}"
  fi
}

delete() {
  if ((QUEUED)); then
    do_cmd gcloud compute tpus queued-resources delete "$QR_NAME" "${GCLOUD_SCOPE[@]}" --force --quiet
  else
    do_cmd gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_SCOPE[@]}" --quiet
  fi
}

resource_state() {  # prints the queued-resource state (or TPU VM state), NOT_FOUND when there is none
  local state
  if ((QUEUED)); then
    state="$(gcloud compute tpus queued-resources describe "$QR_NAME" "${GCLOUD_SCOPE[@]}" \
      --format='value(state.state)' 2>/dev/null)" || state=NOT_FOUND
  else
    state="$(gcloud compute tpus tpu-vm describe "$NAME" "${GCLOUD_SCOPE[@]}" --format='value(state)' \
      2>/dev/null)" || state=NOT_FOUND
  fi
  echo "${state:-NOT_FOUND}"
}

install() {
  local version tarball remote_pkg
  case "$PACKAGE" in
    "")
      version="$(sed -n 's/^ *version="\([^"]*\)".*/\1/p' "$REPO_DIR/setup.py" | head -n1)"
      [[ -n "$version" ]] || die "cannot read the version from $REPO_DIR/setup.py"
      tarball="$REPO_DIR/dist/slam_jax-$version.tar.gz"
      if ((DRY_RUN)); then
        echo "+ (cd $(quote "$REPO_DIR") && python3 setup.py -q sdist --dist-dir dist)"
      else
        (cd "$REPO_DIR" && python3 setup.py -q sdist --dist-dir dist)
      fi
      scp_workers "$tarball" "."
      remote_pkg="\$HOME/$(basename "$tarball")" ;;
    *.tar.gz|*.whl)
      if [[ "$PACKAGE" == *://* ]]; then
        remote_pkg="$PACKAGE"
      else
        ((DRY_RUN)) || [[ -f "$PACKAGE" ]] || die "--package=$PACKAGE: no such file"
        scp_workers "$PACKAGE" "."
        remote_pkg="\$HOME/$(basename "$PACKAGE")"
      fi ;;
    *) remote_pkg="$PACKAGE" ;;
  esac
  # jax[tpu] pulls libtpu from PyPI; keep jax in setup.py's range so every worker runs the same stack.
  ssh_workers all "python3 -m pip install --quiet --upgrade pip && python3 -m pip install --quiet \
'jax[tpu]>=0.10,<0.11' \"$remote_pkg\" && echo \"slam_jax installed on \$(hostname)\""
}

# Gin files: packaged names are passed through; local files outside the package are copied to every worker.
REMOTE_GIN_FILES=()
LOCAL_GIN_COPIES=()
resolve_gin_files() {
  local f rel
  for f in "${GIN_FILES[@]}"; do
    if [[ -f "$REPO_DIR/slam_jax/gin/$f" ]]; then
      REMOTE_GIN_FILES+=("$f")
    elif [[ -f "$f" ]]; then
      rel="$(cd "$(dirname "$f")" && pwd)/$(basename "$f")"
      if [[ "$rel" == "$REPO_DIR/slam_jax/gin/"* ]]; then
        REMOTE_GIN_FILES+=("${rel#"$REPO_DIR/slam_jax/gin/"}")
      elif [[ "$rel" == "$REPO_DIR/gin/"* ]]; then
        REMOTE_GIN_FILES+=("${rel#"$REPO_DIR/gin/"}")
      else
        LOCAL_GIN_COPIES+=("$f")
        REMOTE_GIN_FILES+=("gin/$(basename "$f")")  # relative to ~/slam_run, where the worker script runs
      fi
    else
      die "gin file '$f' is neither in the package ($REPO_DIR/slam_jax/gin) nor a local file"
    fi
  done
}

write_worker_script() {  # the script every worker runs (same command on every host)
  local e
  echo '#!/usr/bin/env bash'
  echo '# Written by launch/tpu_vm.sh: runs slam-train on this host of the slice.'
  echo 'set -uo pipefail'
  echo 'cd "$HOME/slam_run"'
  echo 'export PATH="$HOME/.local/bin:$PATH"'
  echo "export JAX_COMPILATION_CACHE_DIR=$(quote "$CACHE_DIR")"
  echo 'export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=1'
  for e in "${ENVS[@]}"; do
    echo "export ${e%%=*}=$(quote "${e#*=}")"
  done
  local args=(slam-train --distributed)
  for e in "${REMOTE_GIN_FILES[@]}"; do args+=("--gin_file=$e"); done
  args+=("${GIN_BINDINGS[@]}" "--model_dir=$MODEL_DIR")
  quote "${args[@]}"
  echo 'echo $? > "$HOME/slam_run/rc"'
}

start_run() {
  resolve_gin_files
  local script
  script="$(mktemp "${TMPDIR:-/tmp}/slam_worker.XXXXXX.sh")"
  write_worker_script > "$script"
  if ((DRY_RUN)); then
    echo "# worker script ($REMOTE_DIR/run.sh, identical on every host):"
    sed 's/^/#   /' "$script"
  fi
  ssh_workers all "mkdir -p $REMOTE_DIR/gin"
  scp_workers "$script" "slam_run/run.sh"
  local f
  for f in "${LOCAL_GIN_COPIES[@]}"; do scp_workers "$f" "slam_run/gin/"; done
  rm -f "$script"
  # Detached so that a dropped ssh session does not stop training; a running job is never started twice.
  ssh_workers all "cd $REMOTE_DIR && if [ -f pid ] && kill -0 \"\$(cat pid)\" 2>/dev/null; then \
echo \"already running on \$(hostname)\"; else rm -f rc; setsid nohup bash run.sh > train.log 2>&1 < /dev/null & \
echo \$! > pid; echo \"started on \$(hostname)\"; fi"
}

remote_status() {  # worker 0: an exit code once slam-train ended, else "running" or "stopped"
  ssh_workers 0 "cd $REMOTE_DIR 2>/dev/null && { cat rc 2>/dev/null || \
{ [ -f pid ] && kill -0 \"\$(cat pid)\" 2>/dev/null && echo running; } || echo stopped; } || echo stopped"
}

logs() {
  ssh_workers "$LOG_WORKER" "tail -n 200 -F $REMOTE_DIR/train.log"
}

status() {
  if ((DRY_RUN)); then
    if ((QUEUED)); then
      do_cmd gcloud compute tpus queued-resources describe "$QR_NAME" "${GCLOUD_SCOPE[@]}" --format='value(state.state)'
    else
      do_cmd gcloud compute tpus tpu-vm describe "$NAME" "${GCLOUD_SCOPE[@]}" --format='value(state)'
    fi
    remote_status
    return
  fi
  local state; state="$(resource_state)"
  echo "resource: $state"
  if [[ "$state" == ACTIVE || "$state" == READY ]]; then echo "training: $(remote_status 2>/dev/null || echo unreachable)"; fi
}

up() {
  if ((DRY_RUN)); then  # one pass of the loop below, printed
    create
    echo "# wait until the state is ACTIVE (queued resource) / READY (TPU VM):"
    status
    install
    start_run
    echo "# every --poll seconds: the state, and on worker 0 the exit code of slam-train (or running/stopped)"
    echo "# on SUSPENDED / FAILED / PREEMPTED / TERMINATED: delete, re-create, install and run again"
    ((DELETE_AFTER)) && delete
    return 0
  fi
  local restarts=0 installed=0 state rs
  while :; do
    state="$(resource_state)"
    case "$state" in
      NOT_FOUND)
        echo "$(date -u +%FT%TZ) creating $TYPE ($NAME)"; create; installed=0 ;;
      ACTIVE|READY)
        if ((!installed)); then install; installed=1; fi
        rs="$(remote_status 2>/dev/null | tail -n1)" || rs=unreachable
        case "$rs" in
          running) sleep "$POLL" ;;
          stopped) echo "$(date -u +%FT%TZ) starting slam-train on every worker"; start_run ;;
          0) echo "$(date -u +%FT%TZ) slam-train finished (exit 0); model_dir: $MODEL_DIR"; break ;;
          [0-9]*)
            sleep "$POLL"
            state="$(resource_state)"
            if [[ "$state" == ACTIVE || "$state" == READY ]]; then
              echo "slam-train exited with $rs on a healthy slice; last lines of worker 0's log:" >&2
              ssh_workers 0 "tail -n 50 $REMOTE_DIR/train.log" >&2 || true
              exit "$rs"
            fi ;;
          *) sleep "$POLL" ;;  # unreachable: the slice may be going down; the state tells on the next pass
        esac ;;
      SUSPENDING|SUSPENDED|FAILED|PREEMPTED|TERMINATED|STOPPED)
        restarts=$((restarts + 1))
        ((restarts <= MAX_RESTARTS)) || die "slice $state after $MAX_RESTARTS re-creations; giving up"
        echo "$(date -u +%FT%TZ) slice is $state: deleting and re-creating (restart $restarts/$MAX_RESTARTS)"
        delete; installed=0 ;;
      WAITING_FOR_RESOURCES|PROVISIONING|ACCEPTED|CREATING|STARTING|RESTARTING|REPAIRING|DELETING)
        echo "$(date -u +%FT%TZ) state $state"; sleep "$POLL" ;;
      *)
        echo "$(date -u +%FT%TZ) unknown state '$state'; waiting" >&2; sleep "$POLL" ;;
    esac
  done
  if ((DELETE_AFTER)); then delete; fi
}

case "$COMMAND" in
  create) create ;;
  install) install ;;
  run) start_run ;;
  logs) logs ;;
  status) status ;;
  delete) delete ;;
  up) up ;;
esac
