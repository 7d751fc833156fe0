"""CTC beam search with a word n-gram LM: slam_jax's prefix beam search beside flashlight-text's lexicon decoder,
on the same emissions, in one run.

    python benchmarks/slam_ctc_decoder_bench.py --model_dir=FINETUNED_CTC_RUN --audio_dir=LIBRISPEECH_LAYOUT_SPLIT \
        (--lm=LM.arpa | --lm_text=TEXT_FILE) [--beam_size 8] [--prune_top_k 16] [--lm_alpha 0.5] [--lm_beta 1.0]
        [--limit N] [--json]

The fine-tuned model's CTC log-probabilities (`inference.Model.emissions`) are computed once; each decoder then
decodes every utterance with the same beam size, per-frame candidate count, LM weight and word bonus, and the run
prints each one's WER / CER against the transcripts, its decoding time (median over `--repeats` passes after the
scoring pass) as milliseconds per utterance and as a real-time factor (decoding seconds per audio second), and how
often the two agree on the whole hypothesis; `--lm_alpha` / `--lm_beta` take comma-separated grids (both decoders
run at every point; greedy decoding is the LM-free reference):

- `prefix_beam`: `slam_jax.decoding.ctc.prefix_beam_search` with `WordLM` (KenLM via the `kenlm` package), pure
  Python: lexicon-free, the LM scores each word as it is completed (unknown words get KenLM's <unk> probability).
- `flashlight`: `slam_jax.decoding.ctc.LexiconDecoder`, flashlight-text's lexicon decoder (C++), CTC criterion with
  log-add over alignments, KenLM; its lexicon is every word of the LM spelled in the model's SentencePiece pieces,
  so it emits only LM words, and the silence token is the never-emitted EOS id (fairseq's choice for sub-word
  units). Both are `CtcDecodeConfig(lm_decoder=...)`, as slam-eval and slam-transcribe decode; both read the same
  `--lm` file.

`--lm_text` writes a word bigram ARPA of the file's lines first (absolute discounting 0.75 with back-off to the
unigrams, Ney et al. 1994), for corpora without a KenLM-built LM: KenLM's `lmplz` is not part of the `kenlm` pip
package. docs/PERFORMANCE.md has a measured run.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import statistics
import sys
import tempfile
import time

EOS_ID = 1   # the CTC head's never-emitted EOS: flashlight's silence token for sub-word units


def write_bigram_arpa(lines: list[str], path: str, discount: float = 0.75) -> int:
    """A word bigram ARPA of `lines` (upper-cased words as the transcripts): absolute discounting, back-off to ML
    unigrams (with <unk> given one count). Returns the vocabulary size."""
    uni, bi = collections.Counter(), collections.Counter()
    for line in lines:
        words = ["<s>", *line.split(), "</s>"]
        uni.update(words[1:])
        bi.update(zip(words, words[1:]))
    uni["<unk>"] += 1
    total = sum(uni.values())
    p_uni = {w: c / total for w, c in uni.items()}
    followers: dict[str, list[str]] = collections.defaultdict(list)
    for (h, w) in bi:
        followers[h].append(w)
    history_count = collections.Counter()
    for (h, _), c in bi.items():
        history_count[h] += c
    backoff, p_bi = {}, {}
    for h, ws in followers.items():
        n = history_count[h]
        for w in ws:
            p_bi[(h, w)] = (bi[(h, w)] - discount) / n
        left = 1.0 - sum(p_bi[(h, w)] for w in ws)
        backoff[h] = left / max(1e-12, 1.0 - sum(p_uni.get(w, 0.0) for w in ws))
    vocab = ["<s>", *sorted(uni)]
    with open(path, "w") as f:
        f.write(f"\\data\\\nngram 1={len(vocab)}\nngram 2={len(p_bi)}\n\n\\1-grams:\n")
        for w in vocab:
            logp = -99.0 if w == "<s>" else math.log10(p_uni[w])
            bow = f"\t{math.log10(backoff[w]):.6f}" if w in backoff else ""
            f.write(f"{logp:.6f}\t{w}{bow}\n")
        f.write("\n\\2-grams:\n")
        for (h, w), p in sorted(p_bi.items()):
            f.write(f"{math.log10(p):.6f}\t{h} {w}\n")
        f.write("\n\\end\\\n")
    return len(vocab)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", required=True, help="a fine-tuned CTC run (or its slam-export folder)")
    p.add_argument("--audio_dir", required=True, help="a LibriSpeech-layout split: audio + *.trans.txt")
    lm = p.add_mutually_exclusive_group(required=True)
    lm.add_argument("--lm", help="ARPA or KenLM binary word LM (the transcripts' case)")
    lm.add_argument("--lm_text", help="text file, one sentence per line: a bigram ARPA of it is written and used")
    p.add_argument("--beam_size", type=int, default=8)
    p.add_argument("--prune_top_k", type=int, default=16, help="labels per frame considered (both decoders)")
    floats = lambda text: [float(x) for x in text.split(",")]  # noqa: E731
    p.add_argument("--lm_alpha", type=floats, default=[0.5], help="LM weight(s), comma-separated")
    p.add_argument("--lm_beta", type=floats, default=[1.0], help="word insertion bonus(es), comma-separated")
    p.add_argument("--limit", type=int, default=0, help="first N utterances only (0: all)")
    p.add_argument("--repeats", type=int, default=2,
                   help="timed passes per decoder (median) after the scoring pass; 0 times the scoring pass")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    args = p.parse_args(argv)

    from slam_jax import inference
    from slam_jax.data import listing
    from slam_jax.decoding import ctc
    from slam_jax.evaluation.asr import error_counts

    records = [r for r in listing.list_librispeech(args.audio_dir, need_transcripts=True) if not r["error"]]
    records = records[:args.limit] if args.limit else records
    model = inference.load(args.model_dir)
    started = time.perf_counter()
    emissions = model.emissions([r["audio_path"] for r in records])
    emission_s = time.perf_counter() - started
    audio_s = sum(e.shape[0] for e in emissions) * 0.04   # 4 x 10 ms per subsampled frame
    refs = [r["transcript"] for r in records]

    lm_path = args.lm
    if args.lm_text:
        lm_path = os.path.join(tempfile.mkdtemp(prefix="slam_ctc_decoder_bench_"), "bigram.arpa")
        with open(args.lm_text) as f:
            vocab = write_bigram_arpa([line.strip() for line in f if line.strip()], lm_path)
        print(f"wrote {lm_path}: word bigram ARPA, {vocab} unigrams", file=sys.stderr)

    tokenizer = model.task.vocabulary.tokenizer
    pieces = [tokenizer.id_to_piece(i) for i in range(tokenizer.get_piece_size())]

    def run(name: str, decode) -> dict:
        """Scores one decoder; its time is the median over `--repeats` timed passes (0: the scoring pass's)."""
        t0 = time.perf_counter()
        hyps = [decode(e) for e in emissions]
        times = [time.perf_counter() - t0]
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for e in emissions:
                decode(e)
            times.append(time.perf_counter() - t0)
        seconds = statistics.median(times[1:] or times)
        counts = error_counts(refs, hyps)
        return {"decoder": name, "wer": counts.wer, "cer": counts.cer,
                "ms_per_utterance": 1e3 * seconds / len(emissions), "rtf": seconds / audio_s, "hypotheses": hyps}

    rows = [{**run("greedy", lambda e: model.task.text(ctc.greedy_decode(e.argmax(-1), e.shape[0]))),
             "lm_alpha": None, "lm_beta": None}]
    for alpha in args.lm_alpha:
        for beta in args.lm_beta:
            pair = []
            for name in ("prefix_beam", "flashlight"):
                cfg = ctc.CtcDecodeConfig(beam_size=args.beam_size, prune_top_k=args.prune_top_k, lm_path=lm_path,
                                          lm_alpha=alpha, lm_beta=beta, lm_decoder=name)
                decode = cfg.decoder(pieces, silence_id=EOS_ID, encode=tokenizer.encode_as_ids)
                pair.append(run(name, lambda e, d=decode: model.task.text(d(e, e.shape[0]))))
            agree = sum(a == b for a, b in zip(pair[0]["hypotheses"], pair[1]["hypotheses"])) / len(emissions)
            rows += [{**r, "lm_alpha": alpha, "lm_beta": beta, "agreement": agree} for r in pair]
    for r in rows:
        del r["hypotheses"]
    out = {"utterances": len(emissions), "audio_seconds": round(audio_s, 1), "emission_seconds": emission_s,
           "beam_size": args.beam_size, "prune_top_k": args.prune_top_k, "lm": lm_path, "results": rows}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{len(emissions)} utterances, {audio_s:.0f} s of audio; emissions in {emission_s:.1f} s; beam "
              f"{args.beam_size}, top-{args.prune_top_k} labels per frame")
        print(f"{'decoder':12s} {'alpha':>6s} {'beta':>5s} {'WER %':>7s} {'CER %':>7s} {'ms/utt':>9s} {'RTF':>9s} "
              f"{'same hyp.':>9s}")
        for r in rows:
            settings = "" if r["lm_alpha"] is None else f"{r['lm_alpha']:6.2f} {r['lm_beta']:5.1f}"
            agree = f"{100 * r['agreement']:8.1f}%" if "agreement" in r else ""
            print(f"{r['decoder']:12s} {settings:>12s} {100 * r['wer']:7.2f} {100 * r['cer']:7.2f} "
                  f"{r['ms_per_utterance']:9.2f} {r['rtf']:9.5f} {agree:>9s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
