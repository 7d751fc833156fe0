"""CoVoST 2 task factory on a fixture folder (TSV + MP3 clips, a missing clip, bad rows) and the bundled mini set."""
import os

import numpy as np
import pytest
import seqio
import soundfile as sf

import tasks  # noqa: F401  (registers mini_st_de)
from slam_jax.data import converter, covost, schema, sources

ST_DE = os.path.join(sources.MINI_CORPUS, "st_de")
DE_VOCAB = seqio.SentencePieceVocabulary(os.path.join(ST_DE, "spm.model"))
HEADER = "path\tsentence\ttranslation\tclient_id\n"


def tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wav = 0.2 * np.sin(2 * np.pi * 300 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return np.stack([wav] * channels, 1) if channels > 1 else wav


@pytest.fixture
def covost_dir(tmp_path):
    """covost/covost_v2.en_de.train.tsv + clips/: two good MP3 clips (48 kHz mono, 32 kHz stereo), a row whose clip
    is missing, a row with too few fields, a row with an empty translation."""
    clips = tmp_path / "clips"
    clips.mkdir()
    sf.write(clips / "clip_a.mp3", tone(1.0, 48000), 48000, format="MP3")
    sf.write(clips / "clip_b.mp3", tone(0.5, 32000, channels=2), 32000, format="MP3")
    rows = ['clip_a.mp3\tHE SAID "HI"\tEr sagte Hallo.\tc1',  # quotes are text (fields are never quoted)
            "clip_b.mp3\tGOOD MORNING\tGuten Morgen.\tc2",
            "clip_missing.mp3\tWHERE IS IT\tWo ist es?\tc3",
            "clip_c.mp3\tONLY TWO FIELDS",
            "clip_d.mp3\tEMPTY\t\tc4"]
    folder = tmp_path / "covost"
    folder.mkdir()
    (folder / "covost_v2.en_de.train.tsv").write_text(HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    return str(folder), str(clips)


def test_listing_reads_rows_and_flags_bad_ones(covost_dir):
    folder, clips = covost_dir
    tsv = covost.tsv_path(folder, "en", "de", "train")
    records = covost.list_covost(tsv, clips)
    assert len(records) == 5
    assert records[0] == {"id": f"{clips}/clip_a.mp3", "audio_path": f"{clips}/clip_a.mp3",
                          "transcript": 'HE SAID "HI"', "translation": "Er sagte Hallo.", "error": ""}
    assert [r["error"] for r in records[:3]] == ["", "", ""]  # a missing clip is found when it is read
    assert records[3]["error"] == f"{tsv}:5: expected 4 tab-separated fields, got 2"
    assert records[4]["error"] == f"{tsv}:6: empty translation for clip_d.mp3"


def test_missing_tsv_and_bad_header(tmp_path):
    with pytest.raises(FileNotFoundError, match="covost_v2.en_tr.dev.tsv: CoVoST 2 TSV not found"):
        covost.list_covost(covost.tsv_path(str(tmp_path), "en", "tr", "dev"), str(tmp_path))
    bad = tmp_path / "covost_v2.en_ca.train.tsv"
    bad.write_text("path\tsentence\tclient_id\nx.mp3\tHI\tc\n")
    with pytest.raises(ValueError, match=r"lacks the CoVoST 2 columns \['translation'\]"):
        covost.list_covost(str(bad), str(tmp_path))


def _register(covost_dir, name="test_covost_en_de", target="translation", vocabulary=DE_VOCAB):
    folder, clips = covost_dir
    covost.add_covost_task(name, covost_dir=folder, clips_dir=clips, target_lang="de", splits={"train": "train"},
                           target=target, vocabulary=vocabulary)
    return name


def _rows(name, on_error):
    # max_unk_fraction=1: the fixture's sentences hold characters outside the mini English vocabulary; the rows are
    # what these tests read (the UNK threshold has its own test in test_data_errors.py).
    cfg = schema.StreamConfig(mixture=name, split="train", batch_size=2, paired_frames=128, paired_tokens=24,
                                 on_error=on_error, max_unk_fraction=1.0)
    stream = converter.eval_stream(cfg)
    rows = []
    for batch in stream:
        sub = batch["paired"]
        for i in np.nonzero(sub["segment_ids"].any(1))[0]:
            rows.append({k: v[i] for k, v in sub.items()})
    return rows, stream.stats()


def test_task_decodes_mp3_resamples_and_counts_skips(covost_dir):
    name = _register(covost_dir)
    rows, stats = _rows(name, "skip")
    texts = [DE_VOCAB.decode(r["tokens"][(r["token_segment_ids"] > 0) & (r["tokens"] != 1)].tolist()) for r in rows]
    assert texts == ["Er sagte Hallo.", "Guten Morgen."]
    frames = [int(r["segment_ids"].sum()) for r in rows]
    assert 97 <= frames[0] <= 101 and 47 <= frames[1] <= 51  # 1.0 s and 0.5 s at 100 frames/s after resampling
    assert stats["paired"]["skipped"] == {name: 3}  # the missing clip and the two bad rows
    assert any("empty translation for clip_d.mp3" in m for m in stats["messages"])


def test_bad_input_raises_naming_the_file(covost_dir):
    name = _register(covost_dir)
    with pytest.raises(schema.DataError, match="clip_missing.mp3: audio file not found"):
        _rows(name, "raise")
    folder, _ = covost_dir
    tsv = covost.tsv_path(folder, "en", "de", "train")
    with open(tsv, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    with open(tsv, "w", encoding="utf-8") as fh:  # the bad row first
        fh.write("\n".join([lines[0], lines[4], lines[1]]) + "\n")
    with pytest.raises(schema.DataError, match=r"covost_v2.en_de.train.tsv:2: expected 4 tab-separated fields"):
        _rows(name, "raise")


def test_transcript_target(covost_dir):
    vocab = sources.default_vocabulary()  # the mini corpus' English model
    name = _register(covost_dir, "test_covost_en_asr", target="transcript", vocabulary=vocab)
    rows, _ = _rows(name, "skip")
    assert vocab.decode(rows[1]["tokens"][(rows[1]["token_segment_ids"] > 0)].tolist()[:-1]) == "GOOD MORNING"


def test_bundled_mini_st_de_set():
    """Every row of the bundled set has its clip and its hand-written translation."""
    translations = {}
    with open(os.path.join(os.path.dirname(__file__), "..", "scripts", "mini_st_de_translations.tsv"),
              encoding="utf-8") as fh:
        for line in fh:
            if not line.startswith("#"):
                english, german = line.rstrip("\n").split("\t")
                translations[german] = english
    records = {split: covost.list_covost(covost.tsv_path(ST_DE, "en", "de", split), sources.MINI_CORPUS)
               for split in ("train", "dev", "dev_new_voices")}
    for rs in records.values():
        for r in rs:
            assert not r["error"] and os.path.exists(r["audio_path"]), r
            assert r["translation"] in translations
    assert {k: len(v) for k, v in records.items()} == {"train": 406, "dev": 64, "dev_new_voices": 64}
    sentences = {k: {r["transcript"] for r in v} for k, v in records.items()}
    voices = {k: {os.path.basename(r["audio_path"]).split("-")[0] for r in v} for k, v in records.items()}
    assert not sentences["dev"] & sentences["train"] and sentences["dev_new_voices"] <= sentences["train"]
    assert not voices["dev_new_voices"] & (voices["train"] | voices["dev"]) and not voices["dev"] & voices["train"]
    assert set(seqio.get_mixture_or_task("mini_st_de").splits) == {"train", "validation", "validation_new_voices"}
    assert seqio.get_mixture_or_task("mini_st_de").output_features["text"].vocabulary.vocab_size == 256
