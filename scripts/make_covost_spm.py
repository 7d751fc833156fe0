#!/usr/bin/env python
"""Trains the CoVoST 2 target vocabulary: one SentencePiece model over the train translations of every En->X pair.

  python scripts/make_covost_spm.py --covost_dir=gs://BUCKET/covost2 [--pairs de ca ar tr] [--vocab_size 8192]

SLAM §4 uses an 8192-token multilingual subword vocabulary for its four CoVoST 2 targets. Writes
`<covost_dir>/spm.model` (+ .vocab), the default of $SLAM_COVOST_SPM in tasks/covost.py: unigram, PAD=0 EOS=1 UNK=2,
no BOS (the seqio / T5 ids), character coverage 0.9999 (our choice, for the Arabic script's rare characters), NFKC.
"""
from __future__ import annotations

import argparse
import os
import posixpath
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from slam_jax.data import covost  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--covost_dir", required=True, help="folder of covost_v2.en_<xx>.train.tsv (local or gs://)")
    parser.add_argument("--pairs", nargs="+", default=["de", "ca", "ar", "tr"], help="target languages")
    parser.add_argument("--vocab_size", type=int, default=8192)
    args = parser.parse_args(argv)
    import sentencepiece as spm
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as out:
            for lang in args.pairs:
                tsv = covost.tsv_path(args.covost_dir, "en", lang, "train")
                records = covost.list_covost(tsv, clips_dir="")
                good = [r["translation"] for r in records if not r["error"]]
                print(f"{tsv}: {len(good)} translations ({len(records) - len(good)} bad rows skipped)")
                out.writelines(t + "\n" for t in good)
        spm.SentencePieceTrainer.train(
            input=corpus, model_prefix=os.path.join(tmp, "spm"), vocab_size=args.vocab_size, model_type="unigram",
            character_coverage=0.9999, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, input_sentence_size=2_000_000,
            shuffle_input_sentence=True, minloglevel=1)
        for name in ("spm.model", "spm.vocab"):
            tf.io.gfile.copy(os.path.join(tmp, name), posixpath.join(args.covost_dir, name), overwrite=True)
    print(f"wrote {posixpath.join(args.covost_dir, 'spm.model')}")


if __name__ == "__main__":
    main()
