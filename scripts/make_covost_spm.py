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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from slam_jax.data import covost  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--covost_dir", required=True, help="folder of covost_v2.en_<xx>.train.tsv (local or gs://)")
    parser.add_argument("--pairs", nargs="+", default=["de", "ca", "ar", "tr"], help="target languages")
    parser.add_argument("--vocab_size", type=int, default=8192)
    args = parser.parse_args(argv)
    from slam_jax.data import vocab

    def translations():
        for lang in args.pairs:
            tsv = covost.tsv_path(args.covost_dir, "en", lang, "train")
            records = covost.list_covost(tsv, clips_dir="")
            good = [r["translation"] for r in records if not r["error"]]
            print(f"{tsv}: {len(good)} translations ({len(records) - len(good)} bad rows skipped)")
            yield from good

    vocab.train_sentencepiece(translations(), posixpath.join(args.covost_dir, "spm"), args.vocab_size,
                              character_coverage=0.9999, input_sentence_size=2_000_000, threads=os.cpu_count() or 1,
                              nfkc=True)
    print(f"wrote {posixpath.join(args.covost_dir, 'spm.model')}")


if __name__ == "__main__":
    main()
