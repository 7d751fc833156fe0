"""`slam-info`: parameter table of a gin-configured model, by abstract evaluation (no weight is allocated).

    slam-info --gin_file=models/slam_600m.gin [--gin.ModelConfig.d_model=768] [--depth 2]
"""
from __future__ import annotations

import argparse
import collections
import sys
from typing import Sequence

import jax
import numpy as np
from flax import nnx

from slam_jax import config
import slam_jax.finetune.run  # noqa: F401  (registers FinetuneConfig: slam-info reads fine-tuning files too)
from slam_jax.cli import common
from slam_jax.model import SlamModel, abstract_model


def parameter_counts(model: SlamModel, depth: int = 2) -> dict[str, int]:
    """Parameter count per module path truncated to `depth` components, e.g. 'encoder/speech_stack'."""
    counts: dict[str, int] = collections.OrderedDict()
    for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param)):
        keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        keys = [k for k in keys if k != "value"]
        name = "/".join(keys[:depth])
        counts[name] = counts.get(name, 0) + int(np.prod(leaf.shape))
    return counts


def format_table(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    width = max(len(k) for k in counts) + 2
    lines = [f"{'module':<{width}}{'params':>14}{'share':>8}"]
    lines += [f"{k:<{width}}{v:>14,}{100 * v / total:>7.1f}%" for k, v in counts.items()]
    lines.append(f"{'total':<{width}}{total:>14,}  ({total / 1e6:.1f}M)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = common.new_parser("slam-info", __doc__, gin=True)
    parser.add_argument("--depth", type=int, default=2, help="module path depth of the table rows")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, files, bindings = common.parse_gin_args(parser, argv, example_gin_file="models/slam_600m.gin")
    cfgs = []
    code = common.run_guarded(parser.prog, lambda: (config.parse(files, bindings), cfgs.append(config.ModelConfig())))
    if code:
        return code
    print(f"# {', '.join(files)}")
    print(format_table(parameter_counts(abstract_model(cfgs[0]), args.depth)))
    return common.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
