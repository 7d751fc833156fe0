"""RNN-T loss beside torchaudio's `rnnt_loss`: value and gradient parity, step time and peak memory, in one run.

    python benchmarks/slam_rnnt_loss_bench.py [--batch 8 --frames 250 --labels 60 --vocab 1024] [--steps 5]
        [--torch_python /path/to/python-with-torchaudio] [--json]

Every implementation runs in its own subprocess on the same seeded inputs (random logits [B, T, U + 1, V], labels,
and lengths down to 80% of the maxima) and reports the per-utterance NLL, the gradient of their sum with respect to
the logits, the median time of value + gradient over `--steps` (after one warm-up call that compiles), and the
process's peak resident memory above its baseline after the inputs were made:

- `torchaudio`: `torchaudio.functional.rnnt_loss` (its fused log-softmax CPU kernel), in `--torch_python`'s
  interpreter (a separate environment: `pip install torch torchaudio`; torchaudio <= 2.11 still ships the op).
- `jax_autodiff`: slam_jax's recursion (`objectives.rnnt.transducer_log_likelihood`) on a plain `log_softmax` and
  gathers, differentiated by JAX (keeps the [B, T, U + 1, V] log-softmax for the backward pass).
- `jax_fused`: the same recursion on `rnnt.lattice_log_probs` (its custom VJP keeps only the log-normalizer).

and, with the joint network inside the measured step (encoder [B, T, 640] and predictor [B, U + 1, 640] outputs,
tanh, a 640 x V output layer; no torch peer), `jax_joint` with `rnnt.chunked_lattice_log_probs` at
`--chunks` frames per chunk (0 = unchunked), where XLA's temporary memory for the compiled step is also reported.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def inputs(args) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    b, t, u, v = args.batch, args.frames, args.labels, args.vocab
    return {
        "logits": rng.normal(size=(b, t, u + 1, v)).astype(np.float32),
        "labels": rng.integers(1, v, size=(b, u)).astype(np.int32),
        "frame_lengths": np.linspace(t, int(0.8 * t), b).astype(np.int32),
        "label_lengths": np.linspace(u, int(0.8 * u), b).astype(np.int32),
    }


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(fn, steps: int) -> tuple[list[float], object]:
    out = fn()  # warm-up (JAX: compile)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return times, out


def run_torchaudio(args, x, base) -> dict:
    import torch
    import torchaudio.functional as F
    torch.set_num_threads(args.threads)
    logits = torch.from_numpy(x["logits"]).requires_grad_(True)
    labels, fl, ll = (torch.from_numpy(x[k]) for k in ("labels", "frame_lengths", "label_lengths"))

    def step():
        logits.grad = None
        nll = F.rnnt_loss(logits, labels, fl, ll, blank=0, reduction="none")
        nll.sum().backward()
        return nll.detach().numpy(), logits.grad.numpy()

    times, (nll, grad) = timed(step, args.steps)
    return {"times": times, "nll": nll, "grad": grad, "peak_rss": peak_rss_bytes() - base,
            "version": f"torch {torch.__version__}"}


def run_jax(args, x, base, fused: bool) -> dict:
    import jax
    import jax.numpy as jnp
    sys.path.insert(0, os.path.dirname(HERE))
    from slam_jax.objectives import rnnt
    labels, fl, ll = (jnp.asarray(x[k]) for k in ("labels", "frame_lengths", "label_lengths"))

    def nll_fn(logits):
        if fused:
            blank, emit = rnnt.lattice_log_probs(logits, labels, 0)
        else:
            lp = jax.nn.log_softmax(logits, -1)
            blank = lp[..., 0]
            emit = jnp.take_along_axis(lp[:, :, :-1], labels[:, None, :, None], -1)[..., 0]
        nll = -rnnt.transducer_log_likelihood(blank, emit, fl, ll)
        return nll.sum(), nll

    step = jax.jit(jax.value_and_grad(nll_fn, has_aux=True))
    logits = jnp.asarray(x["logits"])
    compiled = step.lower(logits).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes

    def run():
        (_, nll), grad = compiled(logits)
        return np.asarray(nll), np.asarray(grad)

    times, (nll, grad) = timed(run, args.steps)
    return {"times": times, "nll": nll, "grad": grad, "peak_rss": peak_rss_bytes() - base, "xla_temp": temp,
            "version": f"jax {jax.__version__}"}


def run_joint(args, chunk: int, base) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx
    sys.path.insert(0, os.path.dirname(HERE))
    from slam_jax.layers.transducer import JointNetwork
    from slam_jax.objectives import rnnt
    x = inputs(argparse.Namespace(**{**vars(args), "vocab": 2}))  # lengths only (a [B, T, U + 1, 2] array)
    rng = np.random.default_rng(1)
    enc = jnp.asarray(rng.normal(size=(args.batch, args.frames, 640)), jnp.float32)
    pred = jnp.asarray(rng.normal(size=(args.batch, args.labels + 1, 640)), jnp.float32)
    labels = jnp.asarray(np.random.default_rng(2).integers(1, args.vocab, size=(args.batch, args.labels)), jnp.int32)
    fl, ll = jnp.asarray(x["frame_lengths"]), jnp.asarray(x["label_lengths"])
    with nnx.use_eager_sharding(False):
        joint = JointNetwork(640, 640, 640, args.vocab, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(joint)

    def loss(params, enc, pred):
        j = nnx.merge(graphdef, params)
        lattices = rnnt.chunked_lattice_log_probs(j.lattice, j.project_encoder(enc), j.project_predictor(pred),
                                                  labels, 0, chunk)
        return -rnnt.transducer_log_likelihood(*lattices, fl, ll).sum()

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    compiled = step.lower(params, enc, pred).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes

    def run():
        value, grads = compiled(params, enc, pred)
        jax.block_until_ready(grads)
        return float(value)

    times, value = timed(run, args.steps)
    return {"times": times, "value": value, "peak_rss": peak_rss_bytes() - base, "xla_temp": temp}


def child(args) -> None:
    if args.impl == "torchaudio":  # the framework's own start-up is not the loss's memory
        import torchaudio.functional  # noqa: F401
    else:
        import jax.numpy as jnp
        jnp.zeros(1).block_until_ready()
    if args.impl.startswith("jax_joint"):  # no [B, T, U + 1, V] input: the joint network makes it
        r = run_joint(args, int(args.impl.rsplit("_", 1)[1]), peak_rss_bytes())
        print(json.dumps(r))
        return
    x = inputs(args)
    base = peak_rss_bytes()
    if args.impl == "torchaudio":
        r = run_torchaudio(args, x, base)
    else:
        r = run_jax(args, x, base, fused=args.impl == "jax_fused")
    arrays = {k: r.pop(k) for k in ("nll", "grad") if k in r}
    if arrays:
        np.savez(args.out_npz, **arrays)
    print(json.dumps(r))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--labels", type=int, default=60)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--chunks", default="0,25", help="frames per chunk of the jax_joint runs (0 = unchunked)")
    parser.add_argument("--torch_python", default=sys.executable, help="a Python with torch and torchaudio")
    parser.add_argument("--only", default="", help="comma-separated implementations to run (default: all)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--out_npz", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.impl:
        child(args)
        return 0
    shape = ["--batch", str(args.batch), "--frames", str(args.frames), "--labels", str(args.labels),
             "--vocab", str(args.vocab), "--steps", str(args.steps), "--threads", str(args.threads)]
    impls = ["torchaudio", "jax_autodiff", "jax_fused"] + [f"jax_joint_{c}" for c in args.chunks.split(",") if c]
    if args.only:
        impls = [i for i in impls if i in args.only.split(",")]
    results, arrays = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for impl in impls:
            npz = os.path.join(tmp, impl + ".npz")
            python = args.torch_python if impl == "torchaudio" else sys.executable
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TF_CPP_MIN_LOG_LEVEL": "3"}
            proc = subprocess.run([python, os.path.abspath(__file__), *shape, "--impl", impl, "--out_npz", npz],
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"{impl} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
                return 1
            results[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
            if os.path.exists(npz):
                arrays[impl] = dict(np.load(npz))
    ref = arrays.get("torchaudio")
    for impl, a in arrays.items() if ref is not None else ():
        results[impl]["nll_max_abs_diff_vs_torchaudio"] = float(np.abs(a["nll"] - ref["nll"]).max())
        results[impl]["grad_max_abs_diff_vs_torchaudio"] = float(np.abs(a["grad"] - ref["grad"]).max())
    for r in results.values():
        r["median_s"] = statistics.median(r.pop("times"))
    if args.json:
        print(json.dumps({"shape": vars(args), "results": results}))
        return 0
    print(f"B={args.batch} T={args.frames} U={args.labels} V={args.vocab}, {args.threads} threads, median of "
          f"{args.steps} value+gradient calls")
    print(f"{'implementation':<16} {'median s':>9} {'peak RSS GiB':>13} {'XLA temp GiB':>13} {'|dNLL| max':>11} "
          f"{'|dgrad| max':>11}")
    for impl, r in results.items():
        temp = f"{r['xla_temp'] / 2**30:.2f}" if "xla_temp" in r else "-"
        dn = f"{r['nll_max_abs_diff_vs_torchaudio']:.1e}" if "nll_max_abs_diff_vs_torchaudio" in r else "-"
        dg = f"{r['grad_max_abs_diff_vs_torchaudio']:.1e}" if "grad_max_abs_diff_vs_torchaudio" in r else "-"
        print(f"{impl:<16} {r['median_s']:>9.3f} {r['peak_rss'] / 2**30:>13.2f} {temp:>13} {dn:>11} {dg:>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
