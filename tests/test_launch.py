"""Launch scripts: their --dry-run output is the contract (no gcloud, no SLURM, no accelerator needed)."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
TPU = LAUNCH / "tpu_vm.sh"
GPU = LAUNCH / "gpu_multinode.sh"
SMOKE = LAUNCH / "local_smoke.sh"
GIN_DIR = REPO / "slam_jax" / "gin"


@pytest.fixture(scope="module")
def fake_bin(tmp_path_factory) -> Path:
    """A `gcloud` that fails loudly: a dry run must never execute one (nor reach Google from a test)."""
    path = tmp_path_factory.mktemp("bin")
    (path / "gcloud").write_text("#!/bin/sh\necho 'gcloud was executed during a dry run' >&2\nexit 99\n")
    (path / "gcloud").chmod(0o755)
    return path


@pytest.fixture(autouse=True)
def _guard_gcloud(fake_bin, monkeypatch):
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")


def run(script: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_"))}
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=60,
                          env={**base, **(env or {})}, cwd=REPO)


def commands(out: str, prefix: str) -> list[str]:
    """The printed command lines (`+ ...`) that start with `prefix`."""
    return [line[2:] for line in out.splitlines() if line.startswith("+ " + prefix)]


def worker_script(out: str) -> str:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# worker script"))
    body = []
    for line in lines[start + 1:]:
        if not line.startswith("#   "):
            break
        body.append(line[4:])
    return "\n".join(body) + "\n"


@pytest.mark.parametrize("script", sorted(LAUNCH.glob("*.sh")) + sorted(LAUNCH.glob("*.sbatch")),
                         ids=lambda p: p.name)
def test_scripts_are_valid_strict_bash(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert "set -euo pipefail" in script.read_text()
    assert os.access(script, os.X_OK), f"{script} is not executable"


def test_tpu_help_documents_commands_and_queued_states():
    res = run(TPU, "--help")
    assert res.returncode == 0
    for word in ("create", "install", "run", "logs", "delete", "up", "--dry-run", "--spot", "--reserved",
                 "--queued", "WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE", "FAILED", "SUSPENDED"):
        assert word in res.stdout, word


QUEUED_ARGS = ("up", "--dry-run", "--name=slam-pod", "--type=v5p-64", "--zone=us-east5-a", "--project=proj",
               "--queued", "--spot", "--gin_file=runs/slam_600m_stage2_tlm_stm.gin", "--gin_file=slices/v5p_64.gin",
               "--gin.STAGE1_MODEL_DIR='gs://bkt/slam/stage1'", "--model_dir=gs://bkt/slam/stage2",
               "--env=SLAM_SPM_MODEL=gs://bkt/spm/spm32k.model", "--delete")


def test_tpu_up_dry_run_queued_spot():
    res = run(TPU, *QUEUED_ARGS)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    (create,) = commands(out, "gcloud compute tpus queued-resources create")
    for part in ("slam-pod-qr", "--node-id=slam-pod", "--accelerator-type=v5p-64", "--zone=us-east5-a",
                 "--project=proj", "--runtime-version=v2-alpha-tpuv5", "--spot"):
        assert part in create.split(), (part, create)
    ssh = commands(out, "gcloud compute tpus tpu-vm ssh slam-pod")
    scp = commands(out, "gcloud compute tpus tpu-vm scp")
    assert ssh and scp
    # installing and starting go to every worker; each ssh/scp names the zone
    assert all("--zone=us-east5-a" in c.split() for c in ssh + scp)
    assert any("--worker=all" in c and "pip install" in c and "jax[tpu]" in c for c in ssh)
    assert any("--worker=all" in c and "setsid nohup bash run.sh" in c for c in ssh)
    assert all("--worker=all" in c for c in scp)
    script = worker_script(out)
    assert re.search(r"^slam-train --distributed --gin_file=runs/slam_600m_stage2_tlm_stm.gin --gin_file=slices/v5p_64.gin "
                     r"'--gin.STAGE1_MODEL_DIR='\\''gs://bkt/slam/stage1'\\''' --model_dir=gs://bkt/slam/stage2$",
                     script, re.M), script
    assert "export JAX_COMPILATION_CACHE_DIR=gs://bkt/jax_cache" in script
    assert "export SLAM_SPM_MODEL=gs://bkt/spm/spm32k.model" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    (delete,) = commands(out, "gcloud compute tpus queued-resources delete")
    assert "slam-pod-qr" in delete and "--force" in delete


def test_tpu_worker_script_quoting_round_trips(tmp_path):
    """The worker script, executed with a fake slam-train, passes every argument through unchanged."""
    res = run(TPU, *QUEUED_ARGS)
    script = worker_script(res.stdout)
    home = tmp_path / "home"
    (home / "slam_run").mkdir(parents=True)
    (home / ".local" / "bin").mkdir(parents=True)
    fake = home / ".local" / "bin" / "slam-train"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$HOME/args"\necho "$SLAM_SPM_MODEL" >> '
                    '"$HOME/args"\n')
    fake.chmod(0o755)
    (home / "slam_run" / "run.sh").write_text(script)
    subprocess.run(["bash", str(home / "slam_run" / "run.sh")], env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
                   check=True, timeout=30)
    assert (home / "args").read_text().splitlines() == [
        "--distributed", "--gin_file=runs/slam_600m_stage2_tlm_stm.gin", "--gin_file=slices/v5p_64.gin",
        "--gin.STAGE1_MODEL_DIR='gs://bkt/slam/stage1'", "--model_dir=gs://bkt/slam/stage2",
        "gs://bkt/spm/spm32k.model"]
    assert (home / "slam_run" / "rc").read_text().strip() == "0"


def test_tpu_vm_without_queue_reserved_v4_and_local_gin_file(tmp_path):
    extra = tmp_path / "my_overrides.gin"
    extra.write_text("TrainConfig.log_every = 7\n")
    res = run(TPU, "up", "--dry-run", "--name=tpu1", "--type", "v4-64", "--zone", "us-central2-b", "--reserved",
              "--gin_file=runs/slam_600m_stage1.gin", "--gin_file=slices/v4_64.gin", f"--gin_file={extra}",
              "--model_dir=gs://b2/runs/s1", "--compilation_cache=gs://cache/jax")
    assert res.returncode == 0, res.stderr
    (create,) = commands(res.stdout, "gcloud compute tpus tpu-vm create tpu1")
    for part in ("--accelerator-type=v4-64", "--zone=us-central2-b", "--version=tpu-ubuntu2204-base", "--reserved"):
        assert part in create.split(), (part, create)
    assert "--project" not in create
    # a local gin file outside the package is copied to every worker and referenced relative to ~/slam_run
    assert any(str(extra) in c and "tpu1:slam_run/gin/" in c and "--worker=all" in c
               for c in commands(res.stdout, "gcloud compute tpus tpu-vm scp"))
    script = worker_script(res.stdout)
    assert "--gin_file=runs/slam_600m_stage1.gin --gin_file=slices/v4_64.gin --gin_file=gin/my_overrides.gin" in script
    assert "export JAX_COMPILATION_CACHE_DIR=gs://cache/jax" in script
    assert not commands(res.stdout, "gcloud compute tpus tpu-vm delete")  # no --delete given


def test_tpu_other_commands_dry_run():
    scope = ("--dry-run", "--name=n1", "--zone=europe-west4-a")
    out = run(TPU, "delete", *scope).stdout
    assert commands(out, "gcloud compute tpus tpu-vm delete n1 --zone=europe-west4-a")
    assert commands(run(TPU, "--delete", "--queued", *scope).stdout,
                    "gcloud compute tpus queued-resources delete n1-qr --zone=europe-west4-a")
    logs = commands(run(TPU, "logs", "--log_worker=3", *scope).stdout, "gcloud compute tpus tpu-vm ssh n1")
    assert len(logs) == 1 and "--worker=3" in logs[0] and "train.log" in logs[0]
    install = run(TPU, "install", *scope, "--package=git+https://example.com/slam_jax.git@v1").stdout
    (pip,) = commands(install, "gcloud compute tpus tpu-vm ssh n1")
    assert "--worker=all" in pip and "git+https://example.com/slam_jax.git@v1" in pip
    assert not commands(install, "gcloud compute tpus tpu-vm scp")


@pytest.mark.parametrize("args, message", [
    (("up", "--name=a", "--zone=z", "--type=v4-64", "--gin_file=runs/cpu_smoke.gin", "--model_dir=/tmp/x"),
     "gs://"),
    (("run", "--name=a", "--zone=z", "--model_dir=gs://b/x"), "--gin_file"),
    (("run", "--name=a", "--zone=z", "--gin_file=runs/no_such_run.gin", "--model_dir=gs://b/x"), "no_such_run"),
    (("create", "--name=a", "--zone=z", "--type=v9-8"), "--runtime-version"),
    (("create", "--name=a", "--zone=z"), "--type"),
    (("create", "--name=a", "--zone=z", "--type=v4-8", "--spot", "--reserved"), "exclude"),
    (("create", "--zone=z", "--type=v4-8"), "--name"),
    (("create", "--name=a", "--zone=z", "--type=v4-8", "--bogus"), "--bogus"),
    (("run", "--name=a", "--zone=z", "--gin_file=runs/cpu_smoke.gin", "--model_dir=gs://b/x", "--gin.X"), "=VALUE"),
])
def test_tpu_bad_arguments_fail_clearly(args, message):
    res = run(TPU, "--dry-run", *args)
    assert res.returncode == 2
    assert message in res.stderr, res.stderr


SLURM = {"SLURM_JOB_NODELIST": "gpu[007-010,012],cpu3", "SLURM_PROCID": "3", "SLURM_NTASKS": "5",
         "SLURM_NTASKS_PER_NODE": "1"}


def exports(out: str) -> dict[str, str]:
    return dict(line[len("export "):].split("=", 1) for line in out.splitlines() if line.startswith("export "))


def test_gpu_dry_run_under_slurm_derives_the_process_layout():
    res = run(GPU, "--dry-run", "--gin_file=runs/slam_600m_stage1.gin", "--gin_file=slices/v4_64.gin", "--gin.TRAIN_STEPS=10",
              "--model_dir=/shared/run", env={**SLURM, "PATH": "/usr/bin:/bin"})  # no scontrol on PATH
    assert res.returncode == 0, res.stderr
    env = exports(res.stdout)
    assert env["JAX_COORDINATOR_ADDRESS"] == "gpu007:12355"
    assert env["JAX_NUM_PROCESSES"] == "5" and env["JAX_PROCESS_ID"] == "3"
    assert env["JAX_COMPILATION_CACHE_DIR"] == "/shared/run/jax_cache"
    (cmd,) = [line for line in res.stdout.splitlines() if line.startswith("+ ")]
    assert cmd.endswith("--gin_file=runs/slam_600m_stage1.gin --gin_file=slices/v4_64.gin --gin.TRAIN_STEPS=10 "
                        "--model_dir=/shared/run")


def test_gpu_dry_run_with_explicit_flags_overrides_slurm():
    res = run(GPU, "--dry-run", "--coordinator=10.0.0.1:9999", "--num_processes=2", "--process_id=1",
              "--gin_file=a.gin", "--model_dir=gs://b/r", env=SLURM)
    env = exports(res.stdout)
    assert (env["JAX_COORDINATOR_ADDRESS"], env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"]) == \
        ("10.0.0.1:9999", "2", "1")


@pytest.mark.parametrize("args, env, message", [
    (("--gin_file=a", "--model_dir=/r"), {}, "--coordinator"),
    (("--coordinator=h:1", "--num_processes=2", "--process_id=2", "--gin_file=a", "--model_dir=/r"), {}, "below"),
    (("--coordinator=h", "--num_processes=2", "--process_id=0", "--gin_file=a", "--model_dir=/r"), {}, "HOST:PORT"),
    (("--gin_file=a", "--model_dir=/r"), {**SLURM, "SLURM_NTASKS_PER_NODE": "8"}, "one task per node"),
    (("--gin_file=a",), SLURM, "--model_dir"),
])
def test_gpu_bad_layouts_fail_clearly(args, env, message):
    res = run(GPU, "--dry-run", *args, env=env)
    assert res.returncode == 2 and message in res.stderr, res.stderr


def test_slurm_example_uses_the_gpu_launcher_one_task_per_node():
    text = (LAUNCH / "slurm_example.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=1" in text
    assert re.search(r"srun .*launch/gpu_multinode\.sh", text)


def test_local_smoke_dry_run():
    res = run(SMOKE, "--dry-run", "--model_dir=/tmp/smk", "--gin.TRAIN_STEPS=5")
    assert res.returncode == 0
    assert "JAX_PLATFORMS=cpu" in res.stdout
    assert "--gin_file=runs/cpu_smoke.gin --gin.TRAIN_STEPS=5 --model_dir=/tmp/smk" in res.stdout


def test_referenced_run_configs_exist():
    """Every `runs/*.gin` or `slices/*.gin` named by a launch script, the scaling guide or a run's header exists."""
    texts = [p.read_text() for p in LAUNCH.iterdir()] + [(REPO / "docs" / "scaling.md").read_text()]
    texts += [p.read_text() for p in (GIN_DIR / "runs").glob("*.gin")]
    names = {m for t in texts for m in re.findall(r"(?:runs|slices)/[\w/]+\.gin", t)}
    assert names
    missing = sorted(n for n in names if not (GIN_DIR / n).is_file())
    assert not missing, missing
