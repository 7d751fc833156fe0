"""Hugging Face peer benchmark: a Wav2Vec2-BERT Conformer encoder train step (fwd + bwd + Adam) in PyTorch.

    python benchmarks/slam_hf_peer_bench.py [--batch 8 --frames 250 --d_model 512 --heads 8 --ffn 2048 --layers 6 --kernel 5]
                                 [--threads 2] [--steps 10] [--warmup 3] [--position_embeddings none] [--json]

Builds `transformers.Wav2Vec2BertModel` from a config with the given shapes (random init: nothing downloads) and
times `loss.backward(); adam.step()` on random `[batch, frames, 160]` input features (Wav2Vec2-BERT's stacked
log-mel input: its feature projection maps 160 -> d_model, then `layers` Conformer blocks run over `frames`
positions). The loss is the mean square of the last hidden state, so the step is encoder fwd + bwd + Adam and
nothing else. `--position_embeddings none` (default) matches slam_jax, which has no relative attention
(w2v-BERT: "Relative Attention: N"); `relative_key` is Hugging Face's default.

Prints the median step time (and a JSON object with `--json`). Needs `pip install torch transformers`
(the `bench` extra); not imported by slam_jax.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Sequence


def build(args: argparse.Namespace):
    """Returns (model, optimizer, inputs [batch, frames, 160], attention_mask [batch, frames])."""
    import torch
    from transformers import Wav2Vec2BertConfig, Wav2Vec2BertModel

    pos = None if args.position_embeddings == "none" else args.position_embeddings
    cfg = Wav2Vec2BertConfig(
        hidden_size=args.d_model, num_attention_heads=args.heads, intermediate_size=args.ffn,
        num_hidden_layers=args.layers, conv_depthwise_kernel_size=args.kernel, position_embeddings_type=pos,
        feature_projection_input_dim=160, hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0,
        feat_proj_dropout=0.0, conformer_conv_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0,
        apply_spec_augment=False, add_adapter=False)
    cfg._attn_implementation = args.attention
    torch.manual_seed(0)
    model = Wav2Vec2BertModel(cfg).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
    x = torch.randn(args.batch, args.frames, 160)
    mask = torch.ones(args.batch, args.frames, dtype=torch.long)
    return model, opt, x, mask


def run(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    model, opt, x, mask = build(args)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        out = model(input_features=x, attention_mask=mask).last_hidden_state
        loss = out.square().mean()
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in model.parameters())
    median = statistics.median(times)
    return {"framework": f"torch {torch.__version__}", "model": "transformers.Wav2Vec2BertModel",
            "batch": args.batch, "frames": args.frames, "d_model": args.d_model, "layers": args.layers,
            "position_embeddings": args.position_embeddings, "attention": args.attention,
            "threads": torch.get_num_threads(), "params": params, "steps": args.steps,
            "median_step_s": median, "min_step_s": min(times), "max_step_s": max(times),
            "speech_seconds_per_s": args.batch * args.frames * 0.04 / median}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="slam_hf_peer_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=250, help="Conformer positions (after subsampling)")
    p.add_argument("--d_model", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--ffn", type=int, default=2048)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--kernel", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--position_embeddings", default="none", choices=["none", "relative_key", "relative", "rotary"])
    p.add_argument("--attention", default="sdpa", choices=["sdpa", "eager"],
                   help="transformers attention implementation")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['model']} ({result['framework']}, {result['threads']} threads): batch {args.batch} x "
              f"{args.frames} frames, d {args.d_model}, {args.layers} layers, {result['params'] / 1e6:.1f}M params: "
              f"median fwd+bwd+Adam step {result['median_step_s']:.3f} s over {args.steps} steps "
              f"(min {result['min_step_s']:.3f}, max {result['max_step_s']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
