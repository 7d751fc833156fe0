"""`slam-bench`: train-step time, throughput, model FLOPs, MFU, compile time and peak memory of a gin model.

    slam-bench --gin_file=models/base.gin [--gin.NAME=VALUE ...] [--mode full|speech] [--speech_rows 8
               --speech_frames 1000 --text_tokens 64] [--steps 10] [--json]
    slam-bench --gin_file=models/base.gin --compile_scaling [--depths 4,8,16,24] [--json]

`full` mode: `--speech_rows` speech rows of `--speech_frames` log-mel frames, `--text_rows` text rows of
`--text_tokens` tokens, `--paired_rows` paired rows of `--paired_frames` frames and `--paired_tokens` tokens; `speech`
mode: the speech rows only. What is measured: `slam_jax/bench.py`.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from slam_jax import config
from slam_jax.cli import common


def build_parser() -> argparse.ArgumentParser:
    p = common.new_parser("slam-bench", __doc__, gin=True)
    p.add_argument("--mode", choices=["full", "speech"], default="full",
                   help="full: the SLAM-TLM-STM objectives on speech, text and paired rows; speech: contrastive only")
    p.add_argument("--speech_rows", type=int, default=8, help="speech rows per step")
    p.add_argument("--text_rows", type=int, default=None, help="text rows (full mode; default speech_rows / 2)")
    p.add_argument("--paired_rows", type=int, default=None, help="paired rows (full mode; default speech_rows / 2)")
    common.add_flags(p, "speech_frames", "text_tokens", "paired_frames", "paired_tokens")
    p.set_defaults(speech_frames=1000, text_tokens=64)
    p.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--no_peak", action="store_true", help="skip the CPU matmul-peak measurement (MFU = NaN)")
    p.add_argument("--no_tune_malloc", action="store_true",
                   help="keep glibc's default allocator settings on CPU (see bench.tune_cpu_allocator)")
    p.add_argument("--profile_dir", default=None,
                   help="after the timed steps, trace --profile_steps more with jax.profiler into this folder "
                        "(TensorBoard / Perfetto) and report the ops that took the most time")
    p.add_argument("--profile_steps", type=int, default=3, help="traced steps with --profile_dir")
    p.add_argument("--compile_scaling", action="store_true",
                   help="report lower + compile time of the speech step at each of --depths instead")
    p.add_argument("--depths", default="4,8,16,24", help="comma-separated speech-layer depths for --compile_scaling")
    common.add_flags(p, "json")
    return p


def _human(result: dict[str, Any]) -> str:
    b = result["batch"]
    lines = [
        f"slam-bench mode={result['mode']} on {result['num_devices']} x {result['device']} ({result['backend']}); "
        f"d={result['d_model']} layers={result['speech_layers']}+{result['shared_layers']} dtype={result['dtype']} "
        f"remat={result['remat']} scan={result['scan_layers']} conv={result['conv_impl']} "
        f"attention={result['attention_impl'] or 'auto'}",
        f"  batch: speech {b['speech_rows']}x{b['speech_frames']} log-mel frames "
        f"({result['conformer_frames']} Conformer positions), text {b['text_rows']}x{b['text_tokens']}, "
        f"paired {b['paired_rows']}x{b['paired_frames']}/{b['paired_tokens']}; objectives {result['objectives']}",
        f"  step: median {result['step_time_s'] * 1e3:.1f} ms (min {result['step_time_min_s'] * 1e3:.1f}, "
        f"max {result['step_time_max_s'] * 1e3:.1f}) over {result['steps']} steps; {result['steps_per_s']:.2f} steps/s",
        f"  throughput: {result['speech_seconds_per_s']:.1f} s of speech/s, {result['tokens_per_s']:.0f} tokens/s",
        f"  FLOPs/step: model {result['model_flops_per_step'] / 1e9:.1f} G (hardware incl. remat "
        f"{result['hardware_flops_per_step'] / 1e9:.1f} G, "
        f"traced dots {result['traced_matmul_flops_per_step'] / 1e9:.1f} G, "
        f"XLA cost analysis {result['xla_flops_per_step'] / 1e9:.1f} G); "
        f"{result['model_tflops_per_s_per_device']:.3f} TFLOP/s/device",
        f"  MFU {100 * result['mfu']:.1f}% of {result['peak_flops_per_device'] / 1e12:.3f} TFLOP/s "
        f"({result['peak_source']})",
        f"  compile {result['compile_s']:.1f} s (+ lowering {result['lower_s']:.1f} s); peak memory "
        f"{result['peak_memory_bytes'] / 2 ** 20:.0f} MiB ({result['peak_memory_source']})",
    ]
    for key, what in (("profile_top_kinds", "kinds of op"), ("profile_top_ops", "ops")):
        if result.get(key):
            lines.append(f"  profile ({result['profile_steps']} steps in {result['profile_dir']}; ops summed "
                         f"{result['profile_op_ms_per_step']:.1f} ms/step): the {what} taking the most time, ms/step "
                         "and share")
            lines += [f"    {op['ms_per_step']:9.2f}  {100 * op['share']:5.1f}%  {op['name'][:100]}"
                      for op in result[key]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, files, bindings = common.parse_gin_args(parser, argv, example_gin_file="models/base.gin")
    if min(args.speech_rows, args.speech_frames, args.text_tokens, args.steps, args.warmup, args.profile_steps) < 1:
        parser.error("--speech_rows, --speech_frames, --text_tokens, --steps, --warmup and --profile_steps must be "
                     ">= 1")
    import jax
    from slam_jax import bench
    cfgs: dict[str, Any] = {}

    def parse():
        head = ["objectives/slam_tlm_stm.gin"] if args.mode == "full" and not args.compile_scaling else []
        config.parse(head + files, bindings)
        cfgs.update(model=config.ModelConfig(), optimizer=config.OptimizerConfig(), mesh=config.MeshConfig())
        try:
            cfgs["depths"] = [int(d) for d in args.depths.split(",") if d.strip()]
        except ValueError:
            raise config.ConfigError(f"--depths wants comma-separated integers, got {args.depths!r}") from None

    code = common.run_guarded(parser.prog, parse)
    if code:
        return code
    tuned = jax.default_backend() == "cpu" and not args.no_tune_malloc and bench.tune_cpu_allocator()
    shapes = bench.bench_shapes(args.mode, speech_rows=args.speech_rows, speech_frames=args.speech_frames,
                                text_rows=args.text_rows, text_tokens=args.text_tokens, paired_rows=args.paired_rows,
                                paired_frames=args.paired_frames, paired_tokens=args.paired_tokens)

    def run():
        model_cfg = cfgs["model"]
        if args.compile_scaling:
            rows = bench.compile_scaling(model_cfg, cfgs["depths"], shapes)
            if args.json:
                print(json.dumps({"compile_scaling": rows, "backend": jax.default_backend(),
                                  "d_model": model_cfg.d_model, "speech_rows": args.speech_rows,
                                  "speech_frames": args.speech_frames}))
            else:
                print("layers  lower_s  compile_s  total_s")
                for r in rows:
                    print(f"{r['layers']:>6}  {r['lower_s']:7.2f}  {r['compile_s']:9.2f}  {r['total_s']:7.2f}")
            return
        result = bench.benchmark(model_cfg, args.mode, shapes, steps=args.steps, warmup=args.warmup,
                                 optimizer_cfg=cfgs["optimizer"], measure_peak=not args.no_peak,
                                 mesh_cfg=cfgs["mesh"], profile_dir=args.profile_dir,
                                 profile_steps=args.profile_steps)
        result["malloc_tuned"] = bool(tuned)
        print(json.dumps(result) if args.json else _human(result))

    return common.run_guarded(parser.prog, run, errors=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
