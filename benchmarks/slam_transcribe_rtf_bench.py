"""Real-time factor of transcription on this machine: slam_jax (the `slam-transcribe` path) beside Hugging Face's
`Wav2Vec2BertForCTC` of the same size, on the same audio files, in one run.

    python benchmarks/slam_transcribe_rtf_bench.py --model_dir=/tmp/slam_ft [AUDIO ...] [--batch_size 8]
        [--threads N] [--repeats 2] [--no_cli] [--json]

AUDIO: files, folders or .txt lists as `slam-transcribe` takes them (default: the bundled mini corpus' dev audio), 16 kHz
mono (both sides then decode the same samples).
`--model_dir`: a fine-tuned CTC run or a `slam-export` folder.

What each side runs, per pass over the files (batched by length, `--batch_size` utterances per batch):
- slam_jax: `inference.load(model_dir).transcribe(files)`: read + resample, log-mel, padded length buckets, the jitted
  encoder + CTC head, greedy decoding to text (what `slam-transcribe` runs per file list). The first pass includes
  XLA compilation (one program per bucket length), later passes reuse it. Also, unless `--no_cli`, one cold
  `slam-transcribe` process end to end (Python start-up, imports, loading, compilation, transcription, output).
- Hugging Face: `Wav2Vec2BertForCTC` built from a config of the same width, heads, FFN size, depth (speech + shared
  layers), convolution kernel and vocabulary as the run, random weights (nothing downloads; WER is not the point),
  eval mode, `torch.inference_mode`: soundfile read, `SeamlessM4TFeatureExtractor` (80 log-mel bins stacked in pairs
  to 160 at 50 Hz), the model, argmax. Its Conformer runs at 50 Hz where slam_jax's runs at 25 Hz (4x conv
  subsampling of 100 Hz frames): same parameter count per layer, twice the positions; that is the peer's design.

RTF = wall time of a pass / seconds of audio (below 1: faster than real time). Prints a table (a JSON object with
`--json`). Needs `pip install torch transformers` (the `bench` extra); neither is imported by slam_jax.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Sequence


MINI_DEV = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "slam_jax", "assets",
                        "mini_corpus", "dev")


def audio_seconds(files: Sequence[str]) -> float:
    import soundfile as sf
    return float(sum(sf.info(f).duration for f in files))


def time_slam(model_dir: str, files: list[str], batch_size: int, repeats: int) -> dict:
    from slam_jax import inference
    t0 = time.perf_counter()
    model = inference.load(model_dir, batch_size=batch_size)
    load_s = time.perf_counter() - t0
    passes = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        texts = model.transcribe(files)
        passes.append(time.perf_counter() - t0)
    import jax
    params = sum(int(x.size) for x in jax.tree.leaves(model.params))
    return {"load_s": load_s, "passes_s": passes, "texts": texts, "config": model.task.model_cfg, "params": params}


def build_hf(cfg):
    import torch
    from transformers import Wav2Vec2BertConfig, Wav2Vec2BertForCTC
    hf_cfg = Wav2Vec2BertConfig(
        hidden_size=cfg.d_model, num_attention_heads=cfg.num_heads, intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.speech_layers + cfg.shared_layers, conv_depthwise_kernel_size=cfg.conv_kernel,
        vocab_size=cfg.vocab_size, feature_projection_input_dim=160, position_embeddings_type=None,
        add_adapter=False, pad_token_id=0)
    torch.manual_seed(0)
    return hf_cfg, Wav2Vec2BertForCTC(hf_cfg).eval()


def time_hf(cfg, files: list[str], batch_size: int, repeats: int) -> dict:
    import soundfile as sf
    import torch
    from transformers import SeamlessM4TFeatureExtractor
    hf_cfg, model = build_hf(cfg)
    extractor = SeamlessM4TFeatureExtractor()   # defaults: 16 kHz, 80 bins, stride 2 -> 160 features
    params = sum(p.numel() for p in model.parameters())
    infos = [sf.info(f) for f in files]
    odd = [f for f, i in zip(files, infos) if i.samplerate != 16000 or i.channels != 1]
    if odd:   # the peer is fed the waveform as read; slam_jax would resample, so the two would not compare
        raise SystemExit(f"{len(odd)} file(s) are not 16 kHz mono, which this benchmark compares on, e.g. {odd[0]}")
    lengths = [i.frames for i in infos]
    order = sorted(range(len(files)), key=lambda i: lengths[i])
    passes = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        best = [None] * len(files)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            waves = [sf.read(files[i], dtype="float32")[0] for i in idx]
            inputs = extractor(waves, sampling_rate=16000, return_tensors="pt", padding=True)
            with torch.inference_mode():
                logits = model(inputs["input_features"], attention_mask=inputs["attention_mask"]).logits
            ids = logits.argmax(-1).numpy()
            for row, i in enumerate(idx):
                best[i] = ids[row]
        passes.append(time.perf_counter() - t0)
    return {"passes_s": passes, "params": params, "frames_per_second": 50}


def time_cli(model_dir: str, files: list[str], batch_size: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        listing = os.path.join(tmp, "files.txt")
        with open(listing, "w") as f:
            f.write("\n".join(files) + "\n")
        cmd = [sys.executable, "-m", "slam_jax.cli.transcribe", f"--model_dir={model_dir}", listing,
               f"--output={os.path.join(tmp, 'out.tsv')}", f"--batch_size={batch_size}"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return {"wall_s": wall, "command": " ".join(cmd[1:])}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", help="audio files, folders or .txt lists (default: the mini corpus' dev)")
    p.add_argument("--model_dir", required=True, help="a fine-tuned CTC run or a slam-export folder")
    p.add_argument("--batch_size", type=int, default=8, help="utterances per batch, both sides")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch intra-op threads")
    p.add_argument("--repeats", type=int, default=2, help="passes over the files per side (>= 2: warm passes)")
    p.add_argument("--no_cli", action="store_true", help="skip the cold slam-transcribe process")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.repeats < 2 or args.batch_size < 1:
        p.error("--repeats must be >= 2 and --batch_size >= 1")
    import torch
    torch.set_num_threads(args.threads)
    from slam_jax.cli.transcribe import expand_inputs
    files = expand_inputs(args.inputs or [MINI_DEV])
    if not files:
        p.error("no audio files found")
    seconds = audio_seconds(files)

    slam = time_slam(args.model_dir, files, args.batch_size, args.repeats)
    hf = time_hf(slam["config"], files, args.batch_size, args.repeats)
    cli = None if args.no_cli else time_cli(args.model_dir, files, args.batch_size)
    cfg = slam["config"]
    warm = lambda passes: statistics.median(passes[1:])   # noqa: E731  (pass 1 of slam_jax compiles)
    result = {
        "files": len(files), "audio_s": seconds, "batch_size": args.batch_size, "cpu_count": os.cpu_count(),
        "torch_threads": args.threads, "model_dir": args.model_dir,
        "model": {"d_model": cfg.d_model, "heads": cfg.num_heads, "ffn": cfg.ffn_dim,
                  "layers": cfg.speech_layers + cfg.shared_layers, "vocab": cfg.vocab_size},
        "slam_params": slam["params"], "hf_params": hf["params"],
        "slam_load_s": slam["load_s"], "slam_first_pass_s": slam["passes_s"][0], "slam_warm_pass_s": warm(slam["passes_s"]),
        "slam_rtf_first": slam["passes_s"][0] / seconds, "slam_rtf_warm": warm(slam["passes_s"]) / seconds,
        "hf_first_pass_s": hf["passes_s"][0], "hf_warm_pass_s": warm(hf["passes_s"]),
        "hf_rtf_warm": warm(hf["passes_s"]) / seconds,
        "cli_wall_s": cli and cli["wall_s"], "cli_rtf": cli and cli["wall_s"] / seconds,
        "empty_transcripts": sum(not t for t in slam["texts"]),
    }
    if args.json:
        print(json.dumps(result))
    else:
        m = result["model"]
        print(f"{result['files']} files, {seconds:.1f} s of audio, batch {args.batch_size}, {os.cpu_count()} CPUs; "
              f"model d={m['d_model']} x {m['layers']} layers, vocab {m['vocab']}: slam_jax {slam['params'] / 1e6:.2f}M "
              f"parameters, HF peer {hf['params'] / 1e6:.2f}M")
        print(f"  slam_jax: load {result['slam_load_s']:.1f} s; first pass (compiles) {result['slam_first_pass_s']:.2f} s "
              f"RTF {result['slam_rtf_first']:.4f}; warm pass {result['slam_warm_pass_s']:.2f} s "
              f"RTF {result['slam_rtf_warm']:.4f}")
        print(f"  Hugging Face Wav2Vec2BertForCTC: warm pass {result['hf_warm_pass_s']:.2f} s "
              f"RTF {result['hf_rtf_warm']:.4f}")
        if cli:
            print(f"  slam-transcribe, one cold process end to end: {cli['wall_s']:.1f} s RTF {result['cli_rtf']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
