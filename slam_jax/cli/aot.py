"""`slam-aot`: compiles a run's train step ahead of time for a TPU topology, on any machine (no TPU needed).

    slam-aot --gin_file=runs/slam_600m_stage1.gin --gin_file=slices/v5p_64.gin [--topology=v5p:2x4x4] [--gin.NAME=VALUE ...] [--json]

Prints per-chip memory against HBM, FLOPs and compile time (`slam_jax/aot.py`); exits 1 when the step does not fit
in HBM. The topology defaults to the gin `TOPOLOGY` macro of the slice file (gin/slices/).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from slam_jax import config
from slam_jax.cli import common


def build_parser() -> argparse.ArgumentParser:
    parser = common.new_parser("slam-aot", __doc__, gin=True)
    parser.add_argument("--topology", default=None,
                        help="TPU topology in chips, e.g. v5p:2x4x4 (v5p-64) (default: the gin TOPOLOGY macro)")
    common.add_flags(parser, "json", "module_import")
    return parser


def _human(r: dict[str, Any]) -> str:
    m = r["memory_per_chip"]
    gib = lambda b: f"{b / 2 ** 30:.2f} GiB"
    return "\n".join([
        f"slam-aot {r['topology']}: {r['chips']} x {r['device_kind']} chips on {r['hosts']} hosts, mesh {r['mesh']}; "
        f"mixture {r['mixture']!r} rows {r['rows']}; objectives {r['objectives']}; {r['parameters'] / 1e6:.1f}M "
        "parameters",
        f"  memory per chip: arguments {gib(m['argument'])}, outputs {gib(m['output'])} (aliased to donated "
        f"arguments {gib(m['alias'])}), temporaries {gib(m['temp'])}, code {gib(m['generated_code'])}",
        f"  total {gib(m['total'])} of {gib(r['hbm_per_chip'])} HBM: headroom {gib(r['headroom_per_chip'])}"
        f" -> {'fits' if r['fits'] else 'DOES NOT FIT'}",
        f"  FLOPs: XLA {r['xla_flops_per_chip'] / 1e12:.2f} TFLOP per chip per step "
        f"({r['xla_flops_per_chip'] * r['chips'] / 1e15:.2f} PFLOP over the slice); model "
        + (f"{r['model_flops_per_step'] / 1e15:.2f} PFLOP per step (slam_jax.flops)"
           if r["model_flops_per_step"] is not None else "FLOPs not modelled for fine-tuning"),
        f"  lowering {r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, files, bindings = common.parse_gin_args(parser, argv, example_gin_file="runs/slam_600m_stage1.gin --gin_file=slices/v5p_64.gin")
    from slam_jax import aot
    reports: list[dict[str, Any]] = []

    def run():
        config.parse(files, bindings)
        config.register_tasks(args.module_import)
        topology = args.topology or config.macro("TOPOLOGY")
        if not topology:
            raise config.ConfigError(f"no --topology and no TOPOLOGY macro in {', '.join(files)}")
        reports.append(aot.compile_run(topology))

    code = common.run_guarded(parser.prog, run)
    if code:
        return code
    report = reports[0]
    print(json.dumps(report) if args.json else _human(report), flush=True)
    if not report["fits"]:
        print(f"slam-aot: the step needs {report['memory_per_chip']['total'] / aot.GIB:.2f} GiB per chip but "
              f"{report['topology']} chips have {report['hbm_per_chip'] / aot.GIB:.0f} GiB", file=sys.stderr)
        return common.EXIT_FAILED
    return common.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
