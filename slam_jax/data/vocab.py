"""`slam-data vocab`: train a SentencePiece model on transcripts, for an ASR head's word pieces.

  slam-data vocab --text_file=/data/LibriSpeech/train-clean-100 --text_file=... --vocab_size=1024 \
      --output_prefix=/data/spm/ls1024
  slam-data vocab --text_file=slam_jax/assets/mini_corpus/train --vocab_size=128 --output_prefix=/tmp/mini128

SLAM §4.1 fine-tunes its RNN-T ASR models with 1024 word pieces. An `--input` is a LibriSpeech-layout folder (every
`*.trans.txt` below it: "<utterance id> <TRANSCRIPT>" lines), or a text file of one transcript per line; local or
gs://. Writes `<out>.model` and `<out>.vocab` with the project's ids (PAD = 0, which RNN-T and CTC use as the blank,
EOS = 1, UNK = 2, no BOS) and prints the pieces per transcript. Ours, not the paper's (which used WordPiece): a
SentencePiece unigram model with full character coverage of the transcripts, no normalization beyond removing U+FEFF
(transcripts are already normalized; identity keeps decode(encode(x)) == x; see `NORMALIZATION_RULES`).

Use it by registering the paired task with this vocabulary (`--gin.DataConfig.spm_model="'<out>.model'"` for a
fine-tuning run, or the task factory's `vocabulary=`); the RNN-T head sizes itself from it
(`TransducerConfig.vocab_size = 0`).
"""
from __future__ import annotations

import os
import tempfile
from typing import Iterable, Iterator, Sequence


# The normalization of our SentencePiece models (this command's, and the bundled corpora's): identity, except that
# U+FEFF (a byte-order mark, or zero-width no-break space, that editors leave in text files) is removed. Our choice
# over SentencePiece's plain "identity" rule: the same pieces for any text without U+FEFF, and the model carries a
# non-empty precompiled charsmap, without which tensorflow_text's SentencePiece op (the one seqio runs) logs
# "precompiled_charsmap is empty. use identity normalization." at every load, with no log level to turn it off.
NORMALIZATION_RULES = "FEFF\t\n"   # SentencePiece's rule TSV: source code points (hex), tab, target (none)


def write_normalization_rules(folder: str) -> str:
    """Writes `NORMALIZATION_RULES` to `<folder>/normalization.tsv` (for `normalization_rule_tsv=`); returns the
    path relative to `folder` when it is the working directory (a trained model records the path), else absolute."""
    path = os.path.join(folder, "normalization.tsv")
    with open(path, "w", encoding="utf-8") as f:
        f.write(NORMALIZATION_RULES)
    return "normalization.tsv" if os.path.abspath(folder) == os.getcwd() else path


def read_transcripts(path: str) -> Iterator[str]:
    """Transcripts of a LibriSpeech-layout folder (`*.trans.txt`, the id column dropped) or a text file."""
    import tensorflow as tf
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"--input={path}: no such file or folder")
    if not tf.io.gfile.isdir(path):
        with tf.io.gfile.GFile(path) as f:
            for line in f:
                if line.strip():
                    yield line.strip()
        return
    found = 0
    for root, _, files in tf.io.gfile.walk(path):
        for name in sorted(files):
            if not name.endswith(".trans.txt"):
                continue
            found += 1
            with tf.io.gfile.GFile(os.path.join(root, name)) as f:
                for line in f:
                    text = line.strip().partition(" ")[2].strip()
                    if text:
                        yield text
    if not found:
        raise FileNotFoundError(f"--input={path}: no *.trans.txt below this folder (LibriSpeech layout expected)")


def train_sentencepiece(lines: Iterable[str], out_prefix: str, vocab_size: int, *, hard_vocab_limit: bool = True,
                        character_coverage: float = 1.0, input_sentence_size: int = 0, threads: int = 1,
                        nfkc: bool = False) -> int:
    """Trains a SentencePiece unigram model on `lines` (one text each) and writes `<out_prefix>.model` / `.vocab`
    (local or gs://): the project's ids (PAD = 0, the CTC / RNN-T blank; EOS = 1; UNK = 2; no BOS) and normalization
    (`NORMALIZATION_RULES`). Every SentencePiece model of the project comes from here: `slam-data vocab`, the bundled
    corpora's scripts, `scripts/make_covost_spm.py`. Returns the number of lines.

    hard_vocab_limit: exactly `vocab_size` pieces (False: at most, for a corpus with few distinct words);
    input_sentence_size: train on a random sample of that many lines (0: all, in order); threads: 1 makes the model
    byte-reproducible (the bundled ones are); nfkc: SentencePiece's NFKC normalization (`nmt_nfkc`) instead of ours,
    for raw multilingual text. ValueError when there is no line or SentencePiece refuses the size.
    """
    import sentencepiece as spm
    import tensorflow as tf
    if vocab_size < 4:
        raise ValueError(f"vocab_size must be at least 4 (PAD, EOS, UNK and one piece), got {vocab_size}")
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        count = 0
        with open(os.path.join(tmp, "corpus.txt"), "w", encoding="utf-8") as f:   # before the chdir below: `lines`
            for line in lines:                                                    # may read relative paths
                f.write(line + "\n")
                count += 1
        if not count:
            raise ValueError(f"no text to train {out_prefix}.model on")
        # Relative names: a model records its input file and prefix, which must not depend on the temp folder.
        os.chdir(tmp)
        try:
            spm.SentencePieceTrainer.train(
                input="corpus.txt", model_prefix="spm", vocab_size=vocab_size, model_type="unigram",
                character_coverage=character_coverage, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                num_threads=threads, input_sentence_size=input_sentence_size,
                shuffle_input_sentence=input_sentence_size > 0, hard_vocab_limit=hard_vocab_limit,
                minloglevel=2, **({"normalization_rule_name": "nmt_nfkc"} if nfkc else
                                  {"normalization_rule_tsv": write_normalization_rules(tmp)}))
        except RuntimeError as e:  # e.g. "Vocabulary size is too high" for a small corpus
            raise ValueError(f"SentencePiece could not train {vocab_size} pieces on {count} lines: {e}") from None
        finally:
            os.chdir(cwd)
        folder = os.path.dirname(out_prefix)
        if folder:
            tf.io.gfile.makedirs(folder)
        for ext in (".model", ".vocab"):
            tf.io.gfile.copy(os.path.join(tmp, "spm" + ext), out_prefix + ext, overwrite=True)
    return count


def train_vocabulary(inputs: Sequence[str], vocab_size: int, out_prefix: str) -> dict[str, float]:
    """Trains `<out_prefix>.model` / `.vocab` on the transcripts of `inputs`; returns counts for the report."""
    import sentencepiece as spm
    import tensorflow as tf
    texts = (text for path in inputs for text in read_transcripts(path))
    try:
        lines = train_sentencepiece(texts, out_prefix, vocab_size, input_sentence_size=5_000_000,
                                    threads=os.cpu_count() or 1)
    except ValueError as e:
        if str(e).startswith("no text"):
            raise ValueError(f"no transcript found in {', '.join(inputs)}") from None
        raise ValueError(f"--vocab_size: {e}") from None
    with tf.io.gfile.GFile(out_prefix + ".model", "rb") as f:
        processor = spm.SentencePieceProcessor(model_proto=f.read())
    sample = [text for _, text in zip(range(10000), (t for path in inputs for t in read_transcripts(path)))]
    pieces = sum(len(ids) for ids in processor.encode(sample))
    words = sum(len(t.split()) for t in sample)
    return {"transcripts": lines, "vocab_size": processor.get_piece_size(),
            "pieces_per_transcript": pieces / len(sample), "pieces_per_word": pieces / max(words, 1)}
