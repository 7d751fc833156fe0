"""Bad input: every problem either raises an error naming the file and the problem, or (on_error="skip") is skipped
and counted in the stream's statistics. Nothing is dropped silently."""
from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
import seqio

from slam_jax.data import converter, schema, sources

from data_helpers import MINI_SPM, librispeech_folder, write_utterance

VOCAB = seqio.SentencePieceVocabulary(MINI_SPM)


def _corrupt(chapter: pathlib.Path) -> tuple[str, str]:
    path = chapter / "100-1-0001.flac"
    path.write_bytes(b"fLaC" + bytes(range(256)) * 4)
    return str(path), "cannot decode audio"


def _empty_transcript(chapter: pathlib.Path) -> tuple[str, str]:
    trans = chapter / "100-1.trans.txt"
    lines = trans.read_text().splitlines()
    lines[1] = "100-1-0001 "
    trans.write_text("\n".join(lines) + "\n")
    return f"{trans}:2", "empty transcript for '100-1-0001'"


def _eight_khz(chapter: pathlib.Path) -> tuple[str, str]:
    path = write_utterance(chapter, "100-1-0001", rate=8000)
    return str(path), "sample rate 8000 Hz, expected 16000 Hz"


def _stereo(chapter: pathlib.Path) -> tuple[str, str]:
    path = write_utterance(chapter, "100-1-0001", channels=2)
    return str(path), "2 channels, expected mono"


def _missing_file(chapter: pathlib.Path) -> tuple[str, str]:
    path = chapter / "100-1-0001.flac"
    path.unlink()
    os.symlink(chapter / "gone.flac", path)  # listed by the directory walk, gone when read
    return str(path), "audio file not found"


def _line_without_audio(chapter: pathlib.Path) -> tuple[str, str]:
    trans = chapter / "100-1.trans.txt"
    trans.write_text(trans.read_text() + "100-1-0042 A LINE WITH NO AUDIO\n")
    return f"{trans}:5", "transcript line for '100-1-0042' has no audio file"


def _audio_without_line(chapter: pathlib.Path) -> tuple[str, str]:
    path = write_utterance(chapter, "100-1-0043")
    return str(path), "audio file has no transcript line"


CASES = {"corrupt_flac": _corrupt, "empty_transcript": _empty_transcript, "8khz": _eight_khz, "stereo": _stereo,
         "missing_file": _missing_file, "line_without_audio": _line_without_audio,
         "audio_without_line": _audio_without_line}


def _config(name: str, on_error: str) -> schema.StreamConfig:
    return schema.StreamConfig(name, split="train", batch_size=2, speech_frames=256, paired_frames=128,
                                  paired_tokens=32, text_tokens=32, on_error=on_error)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_paired_input_raises_or_is_skipped_and_counted(tmp_path, case):
    chapter = librispeech_folder(tmp_path, utterances=4)
    where, problem = CASES[case](chapter)
    name = f"t_bad_{case}"
    sources.add_librispeech_folder_task(name, str(tmp_path), kind="paired", splits={"train": "train"},
                                        vocabulary=VOCAB)
    with pytest.raises(schema.DataError) as info:
        list(converter.eval_stream(_config(name, "raise")))
    assert str(info.value).startswith(where) and problem in str(info.value)

    stream = converter.eval_stream(_config(name, "skip"))
    batches = list(stream)
    stats = stream.stats()["paired"]
    good = 3 if case not in ("line_without_audio", "audio_without_line") else 4
    assert stats["skipped"] == {name: 1} and stats["examples"] == {name: good}
    assert sum(int(b["paired"]["segment_ids"].any(1).sum()) for b in batches) == good
    assert len(stream.stats()["messages"]) == 1 and problem in stream.stats()["messages"][0]


def test_skipped_speech_is_counted_by_the_packer(tmp_path):
    chapter = librispeech_folder(tmp_path, utterances=4)
    _corrupt(chapter)
    stereo_path = write_utterance(chapter, "100-1-0002", channels=2)
    sources.add_librispeech_folder_task("t_bad_speech", str(tmp_path), kind="speech", splits={"train": "train"},
                                        vocabulary=VOCAB)
    stream = converter.make_stream(_config("t_bad_speech", "skip"))
    for _ in range(3):
        batch = next(stream)
    stats = stream.stats()["speech"]
    assert stats["skipped"]["t_bad_speech"] > 0
    # 2 good : 2 bad files; examples are counted when their row is emitted, so up to pack_bins (4) rows of 2
    # utterances may still be open
    assert abs(stats["examples"]["t_bad_speech"] - stats["skipped"]["t_bad_speech"]) <= 4 * 2 + 2
    assert batch["speech"]["features"].shape == (2, 256, 80)
    assert any(str(stereo_path) in m for m in stream.stats()["messages"])
    with pytest.raises(schema.DataError, match="cannot decode audio|2 channels"):
        stream = converter.make_stream(_config("t_bad_speech", "raise"))
        for _ in range(3):
            next(stream)


def test_blank_text_line_is_counted(tmp_path):
    (tmp_path / "a.txt").write_text("THE CAT SAT\n\nA DOG RAN\n")
    sources.add_text_files_task("t_blank", {"train": str(tmp_path / "*.txt")}, vocabulary=VOCAB)
    stream = converter.eval_stream(_config("t_blank", "skip"))
    batches = list(stream)
    assert stream.stats()["text"]["skipped"] == {"t_blank": 1}
    assert stream.stats()["messages"] == [f"{tmp_path / 'a.txt'}:2: empty line"]
    assert sum(int(b["text"]["segment_ids"].max(initial=0)) for b in batches) == 2
    with pytest.raises(schema.DataError, match=r"a\.txt:2: empty line"):
        list(converter.eval_stream(_config("t_blank", "raise")))


def test_missing_split_directory_names_the_path(tmp_path):
    sources.add_librispeech_folder_task("t_no_dir", str(tmp_path), kind="speech", splits={"train": "nowhere"},
                                        vocabulary=VOCAB)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/nowhere: LibriSpeech split directory does not exist"):
        converter.make_stream(_config("t_no_dir", "raise"))


def test_too_long_pairs_are_counted_not_cut(tmp_path):
    librispeech_folder(tmp_path, utterances=3, seconds=2.0)  # 198 frames > paired_frames 128
    sources.add_librispeech_folder_task("t_long", str(tmp_path), kind="paired", splits={"train": "train"},
                                        vocabulary=VOCAB)
    stream = converter.eval_stream(_config("t_long", "raise"))
    batches = list(stream)
    assert stream.stats()["paired"]["too_long"] == {"t_long": 3}
    assert all(not b["paired"]["segment_ids"].any() for b in batches)
    np.testing.assert_equal(stream.stats()["paired"]["examples"], {"t_long": 0})


def test_unk_pieces_are_counted_and_a_transcript_over_the_threshold_is_bad(tmp_path):
    chapter = librispeech_folder(tmp_path, utterances=4)
    trans = chapter / "100-1.trans.txt"
    lines = trans.read_text().splitlines()
    lines[1] = "100-1-0001 ΑΒΓΔ ΕΖΗΘ"  # Greek: every piece is UNK in the mini corpus' English vocabulary
    lines[2] = lines[2] + " ж"  # one stray letter: one UNK piece, below the threshold set below
    trans.write_text("\n".join(lines) + "\n")
    sources.add_librispeech_folder_task("t_unk", str(tmp_path), kind="paired", splits={"train": "train"},
                                        vocabulary=VOCAB)
    with pytest.raises(schema.DataError, match=r"100-1-0001.*pieces are UNK .*max_unk_fraction = 0.05"):
        list(converter.eval_stream(_config("t_unk", "raise")))
    import dataclasses
    stream = converter.eval_stream(dataclasses.replace(_config("t_unk", "skip"), max_unk_fraction=0.35))
    batches = list(stream)
    stats = stream.stats()["paired"]
    assert stats["skipped"] == {"t_unk": 1} and stats["examples"] == {"t_unk": 3}
    assert "2 of 5 pieces are UNK" in stream.stats()["messages"][0]
    unk = sum(int(((b["paired"]["tokens"] == VOCAB.unk_id) & (b["paired"]["token_segment_ids"] > 0)).sum())
              for b in batches)
    assert unk >= 1 and stats["unk_tokens"] == unk and 0 < stats["unk_fraction"] < 0.35
    from slam_jax.trainer import stream_scalars
    assert stream_scalars(stream.stats())["data/paired/unk_fraction"] == stats["unk_fraction"]
