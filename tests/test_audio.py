"""Audio decoding (slam_jax.data.audio) on real files written to tmp_path, and the bundled mini corpus."""
import collections
import glob
import os

import numpy as np
import pytest
import sentencepiece as spm
import soundfile as sf

from slam_jax.data import audio

MINI = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "slam_jax", "assets", "mini_corpus")
MAX_CORPUS_BYTES = 15_000_000


def _tone(seconds: float, rate: int = 16000, channels: int = 1) -> np.ndarray:
    """A 440 Hz tone at half scale, float32 [samples] or [samples, channels] (channel k scaled by 1 / (k + 1))."""
    t = np.arange(int(round(seconds * rate))) / rate
    x = 0.5 * np.sin(2 * np.pi * 440.0 * t)
    if channels == 1:
        return x.astype(np.float32)
    return np.stack([x / (k + 1) for k in range(channels)], axis=1).astype(np.float32)


def _write(path, data: np.ndarray, rate: int = 16000) -> str:
    sf.write(str(path), data, rate, subtype="PCM_16")
    return str(path)


# ------------------------------------------------------------------------------------------------ good input
@pytest.mark.parametrize("suffix", [".flac", ".wav"])
def test_reads_16k_mono(tmp_path, suffix):
    ref = _tone(0.5)
    wav = audio.load_audio(_write(tmp_path / f"a{suffix}", ref))
    assert wav.dtype == np.float32 and wav.shape == (8000,)
    np.testing.assert_allclose(wav, ref, atol=1.0 / 32768)


def test_decode_audio_bytes_matches_load_audio(tmp_path):
    path = _write(tmp_path / "a.flac", _tone(0.3))
    with open(path, "rb") as fh:
        data = fh.read()
    np.testing.assert_array_equal(audio.decode_audio_bytes(data, name="mem"), audio.load_audio(path))


def test_resample_8k_to_16k(tmp_path):
    path = _write(tmp_path / "low.wav", _tone(1.0, rate=8000), rate=8000)
    wav = audio.load_audio(path, resample=True)
    assert wav.shape == (16000,)
    np.testing.assert_allclose(wav[200:-200], _tone(1.0)[200:-200], atol=2e-3)  # edges: filter transients


def test_multichannel_averaged_when_allowed(tmp_path):
    path = _write(tmp_path / "stereo.flac", _tone(0.5, channels=2))
    wav = audio.load_audio(path, allow_multichannel=True)
    np.testing.assert_allclose(wav, 0.75 * _tone(0.5), atol=2.0 / 32768)


def test_crop_start_random_none(tmp_path):
    ref = np.linspace(-0.9, 0.9, 16000).astype(np.float32)  # 1 s ramp: each position has a distinct value
    path = _write(tmp_path / "ramp.flac", ref)
    start = audio.load_audio(path, max_seconds=0.25)
    np.testing.assert_allclose(start, ref[:4000], atol=1.0 / 32768)
    a = audio.load_audio(path, max_seconds=0.25, crop="random", rng=np.random.default_rng(3))
    b = audio.load_audio(path, max_seconds=0.25, crop="random", rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    offset = int(np.argmin(np.abs(ref - a[0])))
    np.testing.assert_allclose(a, ref[offset:offset + 4000], atol=1.0 / 32768)
    assert audio.load_audio(path, max_seconds=2.0, crop="none").shape == (16000,)
    with pytest.raises(audio.AudioError, match=r"ramp\.flac: audio too long"):
        audio.load_audio(path, max_seconds=0.25, crop="none")
    with pytest.raises(ValueError, match="needs rng"):
        audio.load_audio(path, max_seconds=0.25, crop="random")


# ------------------------------------------------------------------------------------------------ bad input
def test_corrupt_flac(tmp_path):
    path = tmp_path / "x.flac"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(audio.AudioError, match=r"x\.flac: cannot decode audio"):
        audio.load_audio(str(path))


def test_truncated_flac(tmp_path):
    good = _write(tmp_path / "good.flac", _tone(1.0))
    with open(good, "rb") as fh:
        head = fh.read(30)  # cut inside the STREAMINFO block
    path = tmp_path / "cut.flac"
    path.write_bytes(head)
    with pytest.raises(audio.AudioError, match=r"cut\.flac: cannot decode audio"):
        audio.load_audio(str(path))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(audio.AudioError, match=r"empty\.wav: cannot decode audio \(the file is empty\)"):
        audio.load_audio(str(path))


def test_wrong_sample_rate(tmp_path):
    path = _write(tmp_path / "low.flac", _tone(0.5, rate=8000), rate=8000)
    with pytest.raises(audio.AudioError, match=r"low\.flac: sample rate 8000 Hz, expected 16000 Hz"):
        audio.load_audio(path)


def test_stereo(tmp_path):
    path = _write(tmp_path / "stereo.wav", _tone(0.5, channels=2))
    with pytest.raises(audio.AudioError, match=r"stereo\.wav: 2 channels, expected mono"):
        audio.load_audio(path)


def test_missing_file(tmp_path):
    path = str(tmp_path / "nowhere" / "gone.flac")
    with pytest.raises(audio.AudioError, match=r"gone\.flac: audio file not found \(FileNotFoundError"):
        audio.load_audio(path)


def test_too_short(tmp_path):
    path = _write(tmp_path / "short.flac", _tone(0.2))
    with pytest.raises(audio.AudioError, match=r"short\.flac: audio too short \(0\.20 s < min_seconds 0\.50 s\)"):
        audio.load_audio(path, min_seconds=0.5)
    assert audio.load_audio(path, min_seconds=0.1).shape == (3200,)


def test_non_finite_float_wav(tmp_path):
    data = _tone(0.1)
    data[10] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(str(path), data, 16000, subtype="FLOAT")
    with pytest.raises(audio.AudioError, match=r"nan\.wav: audio contains NaN or infinite samples"):
        audio.load_audio(str(path))


def test_bad_crop_option(tmp_path):
    path = _write(tmp_path / "a.flac", _tone(0.1))
    with pytest.raises(ValueError, match="crop must be one of"):
        audio.load_audio(path, crop="middle")


# ------------------------------------------------------------------------------------------------ mini corpus
def _transcripts(split: str) -> dict[str, str]:
    out = {}
    for path in glob.glob(os.path.join(MINI, split, "*", "*", "*.trans.txt")):
        speaker, chapter = os.path.relpath(os.path.dirname(path), os.path.join(MINI, split)).split(os.sep)
        assert os.path.basename(path) == f"{speaker}-{chapter}.trans.txt", path
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                utt, _, text = line.rstrip("\n").partition(" ")
                assert utt.startswith(f"{speaker}-{chapter}-"), f"{path}:{n}: id {utt!r} not in this chapter"
                assert text and text == text.upper() and "  " not in text, f"{path}:{n}: bad transcript {text!r}"
                assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ' "), f"{path}:{n}: unexpected characters"
                assert utt not in out, f"{path}:{n}: duplicate id {utt}"
                out[utt] = os.path.join(os.path.dirname(path), utt + ".flac")
    return out


@pytest.mark.parametrize("split,min_utts", [("train", 400), ("dev", 60)])
def test_mini_corpus_layout(split, min_utts):
    lines = _transcripts(split)
    flacs = {os.path.splitext(os.path.basename(p))[0]: p
             for p in glob.glob(os.path.join(MINI, split, "**", "*.flac"), recursive=True)}
    assert len(lines) >= min_utts
    assert sorted(set(lines) - set(flacs)) == [], "transcript lines without a flac"
    assert sorted(set(flacs) - set(lines)) == [], "flac files without a transcript line"
    assert all(lines[u] == flacs[u] for u in lines), "flac not in its transcript's folder"
    for path in flacs.values():
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16"), path
        assert 1.5 <= info.duration <= 6.0, f"{path}: {info.duration:.2f} s"


def test_mini_corpus_splits_disjoint():
    def speakers_and_texts(split):
        speakers = set(os.listdir(os.path.join(MINI, split)))
        texts = set()
        for path in glob.glob(os.path.join(MINI, split, "*", "*", "*.trans.txt")):
            with open(path, encoding="utf-8") as fh:
                texts |= {line.rstrip("\n").partition(" ")[2] for line in fh}
        return speakers, texts

    train_speakers, train_texts = speakers_and_texts("train")
    dev_speakers, dev_texts = speakers_and_texts("dev")
    assert not train_speakers & dev_speakers
    assert not train_texts & dev_texts
    with open(os.path.join(MINI, "text.txt"), encoding="utf-8") as fh:
        text_lines = [line.rstrip("\n") for line in fh]
    assert len(text_lines) >= 2000 and all(text_lines)
    assert not set(text_lines) & dev_texts, "text.txt leaks dev transcripts"


def test_mini_corpus_audio_decodes():
    path = sorted(glob.glob(os.path.join(MINI, "dev", "*", "*", "*.flac")))[0]
    wav = audio.load_audio(path, min_seconds=1.5)
    assert 0.05 < np.abs(wav).max() <= 1.0


def test_mini_corpus_sentencepiece():
    sp = spm.SentencePieceProcessor(model_file=os.path.join(MINI, "spm.model"))
    assert sp.get_piece_size() == 512
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    ids = sp.encode("THE OLD FERRY CROSSED THE RIVER TWICE")
    assert 2 not in ids and sp.decode(ids) == "THE OLD FERRY CROSSED THE RIVER TWICE"
    with open(os.path.join(MINI, "spm.vocab"), encoding="utf-8") as fh:
        assert sum(1 for _ in fh) == 512


def test_mini_corpus_size():
    sizes = collections.Counter()
    for dirpath, _, files in os.walk(MINI):
        for f in files:
            sizes[os.path.relpath(dirpath, MINI).split(os.sep)[0]] += os.path.getsize(os.path.join(dirpath, f))
    total = sum(sizes.values())
    assert total < MAX_CORPUS_BYTES, f"mini corpus is {total / 1e6:.2f} MB ({dict(sizes)}), limit 15 MB"
