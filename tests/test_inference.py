"""The Python inference API and slam-transcribe on a fine-tuned tiny run: the same hypotheses as slam-eval, per-layer
features, and bad files reported and skipped."""
import csv
import json
import os
import shutil
import subprocess
import sys

import pytest

from train_utils import env, in_process, slam_finetune


@pytest.fixture(scope="module")
def ctc_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ctc_run")
    slam_finetune(run, "--gin.TRAIN_STEPS=2", "--gin.TrainConfig.eval_every=2")
    return run


def _eval_rows(run) -> list[list[str]]:
    tsv = next((run / "eval").glob("*_validation_step2.tsv"))
    with open(tsv) as f:
        return list(csv.reader(f, delimiter="\t"))[1:]


def test_transcribe_returns_what_slam_eval_wrote_and_encode_gives_every_layer(ctc_run):
    from slam_jax import inference
    rows = _eval_rows(ctc_run)
    paths, hyps = [r[0] for r in rows], [r[2] if len(r) > 2 else "" for r in rows]
    assert sum(bool(h) for h in hyps) > 10   # the untrained model emits text: the comparison is not trivial
    model = inference.load(str(ctc_run))
    assert model.step == 2 and model.task.name == "asr_ctc"
    assert model.transcribe(paths) == hyps
    # A waveform at another sample rate is resampled (same words as the file, up to resampling noise: not exact).
    from slam_jax.data import audio
    wave = audio.load_audio(paths[0])
    assert isinstance(model.transcribe([wave[::2]], sample_rate=8000)[0], str)
    features = model.encode(paths[:2])
    assert list(features[0]) == ["z", "speech_1", "shared_1"]
    frames = -(-model.features(paths[0]).shape[0] // 4)
    assert features[0]["shared_1"].shape == (frames, model.task.model_cfg.d_model)
    with pytest.raises(inference.InferenceError, match="unknown layer"):
        model.encode(paths[:1], layers=["speech_9"])
    with pytest.raises(inference.InferenceError, match="beam_width"):
        model.transcribe(paths[:1], beam_width=3)
    # CTC emissions: log-probabilities per subsampled frame whose best path is the greedy transcript.
    import numpy as np
    from slam_jax.decoding import ctc
    emissions = model.emissions(paths[:3])
    for path, hyp, lp in zip(paths, hyps, emissions):
        assert lp.shape == (-(-model.features(path).shape[0] // 4), model.task.model_cfg.vocab_size)
        np.testing.assert_allclose(np.exp(lp).sum(-1), 1.0, rtol=1e-4)
        assert model.task.text(ctc.greedy_decode(lp.argmax(-1), lp.shape[0])) == hyp


def test_slam_transcribe_skips_bad_files_names_them_and_fails(ctc_run, tmp_path):
    rows = _eval_rows(ctc_run)
    folder = tmp_path / "audio"
    folder.mkdir()
    for r in rows[:3]:
        shutil.copy(r[0], folder / os.path.basename(r[0]))
    (folder / "corrupt.flac").write_bytes(b"this is not audio")
    (folder / "empty.wav").write_bytes(b"")
    out = tmp_path / "out.jsonl"
    result = in_process("slam_jax.cli.transcribe", [f"--model_dir={ctc_run}", str(folder), f"--output={out}"])
    assert result.returncode == 1, result.stderr
    assert "corrupt.flac" in result.stderr and "empty.wav" in result.stderr and "Traceback" not in result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [os.path.basename(x["path"]) for x in lines] == sorted(os.path.basename(r[0]) for r in rows[:3])
    want = {os.path.basename(r[0]): (r[2] if len(r) > 2 else "") for r in rows[:3]}
    assert all(x["text"] == want[os.path.basename(x["path"])] for x in lines)

    missing = in_process("slam_jax.cli.transcribe", [f"--model_dir={tmp_path}", str(folder)])
    assert missing.returncode == 2 and "config.gin does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_export_loads_without_orbax_or_gin_and_transcribes_the_same(ctc_run, tmp_path):
    rows = _eval_rows(ctc_run)[:6]
    out = tmp_path / "export"
    result = in_process("slam_jax.cli.export", [f"--model_dir={ctc_run}", f"--output_dir={out}"])
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "params.safetensors", "vocabulary.model"]
    script = (
        "import json, sys\n"
        "from slam_jax import inference\n"
        f"model = inference.load({str(out)!r})\n"
        f"texts = model.transcribe({[r[0] for r in rows]!r})\n"
        "print(json.dumps({'texts': texts, 'step': model.step, 'modules': sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('gin', 'orbax'))}))\n")
    run = subprocess.run([sys.executable, "-c", script], env=env(1), capture_output=True, text=True, timeout=600,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["modules"] == [] and got["step"] == 2
    assert got["texts"] == [r[2] if len(r) > 2 else "" for r in rows]


def test_onnx_export_runs_in_onnxruntime_as_jax_does(ctc_run, tmp_path):
    """slam-export --onnx: onnxruntime on padded real log-mel gives the JAX model's CTC log-probabilities (<= 1e-4)."""
    import numpy as np
    import onnxruntime

    from slam_jax import inference
    paths = [r[0] for r in _eval_rows(ctc_run)[:2]]
    model = inference.load(str(ctc_run))
    feats = [model.features(p) for p in paths]
    frames = max(f.shape[0] for f in feats) + 37                       # every row padded
    out = tmp_path / "export"
    result = in_process("slam_jax.cli.export", [f"--model_dir={ctc_run}", f"--output_dir={out}", "--onnx",
                                                "--onnx_batch=2", f"--onnx_frames={frames}"])
    assert result.returncode == 0, result.stderr
    assert "onnxruntime vs JAX" in result.stdout
    with open(out / "config.json") as f:
        assert json.load(f)["onnx"]["inputs"]["features"] == [2, frames, 80]
    features = np.zeros((2, frames, 80), np.float32)
    segment_ids = np.zeros((2, frames), np.int32)
    for row, f in enumerate(feats):
        features[row, :len(f)], segment_ids[row, :len(f)] = f, 1
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    log_probs, lengths = session.run(None, {"features": features, "segment_ids": segment_ids})
    want = model.emissions(paths)
    assert lengths.tolist() == [w.shape[0] for w in want]
    for row, w in enumerate(want):
        np.testing.assert_allclose(log_probs[row, :len(w)], w, atol=1e-4, rtol=0)
    assert inference.load(str(out)).transcribe(paths) == model.transcribe(paths)   # the rest of the export intact


def test_onnx_export_of_a_translation_run_is_a_one_line_error(tmp_path):
    from slam_jax import export
    with pytest.raises(ValueError, match="ONNX export is of CTC ASR"):
        export.export(type("M", (), {"task": type("T", (), {"name": "translate"})(), "model_dir": "d"})(),
                      str(tmp_path), onnx_shape=(1, 10))
