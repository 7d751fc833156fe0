"""Use a trained model outside a seqio split: load a slam-finetune run, transcribe audio files or waveforms, and
read per-layer encoder features.

```python
from slam_jax import inference
model = inference.load("/tmp/slam_ft")                 # a slam-finetune run, or a slam-export folder
texts = model.transcribe(["a.flac", "b.wav"])          # or float waveforms; beam_size=4 for beam search
german = inference.load("/tmp/slam_st").translate(["a.flac"])   # a speech-translation run
layers = model.encode(["a.flac"], layers=["shared_2"])   # [{"shared_2": float32 [frames, d]}]
```

The run's own `config.gin` fixes the model, the task (CTC or RNN-T ASR, speech translation) and its decoding
options; keyword arguments override the decoding. Audio goes through the training pipeline's front end
(`audio.load_audio`, resampled to 16 kHz when needed, then `features.log_mel`), so a file transcribes as slam-eval
transcribes it from a split.
Utterances are batched by length into padded buckets of `BUCKET_FRAMES` log-mel frames: one compile per bucket length
(and decoding setting), reused for every later batch of that length.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import numpy as np

from slam_jax.data import audio as audio_lib
from slam_jax.data import features as features_lib
from slam_jax.data import schema

BUCKET_FRAMES = 256          # bucket lengths are multiples of this (2.56 s); ours, as the mini configs' rows
Audio = str | os.PathLike | np.ndarray


# What each decoding method runs on (`FinetuneConfig.task`).
TASKS_OF = {"transcribe": ("asr_ctc", "asr_rnnt"), "translate": ("translate",)}


class InferenceError(ValueError):
    """A model directory or input that cannot be used; the message names it."""


@dataclasses.dataclass
class Model:
    """A loaded fine-tuned model: `transcribe` for ASR runs, `translate` for speech-translation runs, `encode` for
    every run with a speech encoder."""

    model_dir: str
    step: int
    task: Any          # the run's `FinetuneTask`
    predict_fn: Callable[[Callable], Callable]   # fn(model, batch) -> run(params, host batch) -> NumPy outputs
    params: Any
    batch_size: int
    _compiled: dict = dataclasses.field(default_factory=dict)

    # ------------------------------------------------------------------------------------------ inputs
    def features(self, item: Audio, sample_rate: int = features_lib.SAMPLE_RATE) -> np.ndarray:
        """One input -> normalized log-mel float32 [frames, 80]: a path (any format libsndfile reads, local or
        gs://), or a mono float waveform at `sample_rate` (resampled to 16 kHz)."""
        if isinstance(item, (str, os.PathLike)):
            wave = audio_lib.load_audio(os.fspath(item), sample_rate=features_lib.SAMPLE_RATE, resample=True)
            name = os.fspath(item)
        else:
            wave = np.asarray(item, np.float32)
            name = f"waveform of shape {wave.shape}"
            if wave.ndim != 1:
                raise InferenceError(f"{name}: expected a mono waveform [samples]")
            if sample_rate != features_lib.SAMPLE_RATE:
                wave = audio_lib.resample_waveform(wave, sample_rate, features_lib.SAMPLE_RATE)
        if features_lib.num_frames(wave.shape[0]) < 1:
            raise audio_lib.AudioError(f"{name}: too short for one log-mel frame ({wave.shape[0]} samples)")
        return features_lib.log_mel_np(wave)

    def _batches(self, feats: list[np.ndarray]):
        """(indices, host batch) per padded batch: utterances sorted by length, each batch padded to its longest
        utterance's bucket and to `batch_size` rows."""
        order = sorted(range(len(feats)), key=lambda i: feats[i].shape[0])
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            frames = -(-max(feats[i].shape[0] for i in idx) // BUCKET_FRAMES) * BUCKET_FRAMES
            x = np.zeros((self.batch_size, frames, schema.NUM_MEL_BINS), np.float32)
            seg = np.zeros((self.batch_size, frames), np.int32)
            for row, i in enumerate(idx):
                n = feats[i].shape[0]
                x[row, :n], seg[row, :n] = feats[i], 1
            tokens = np.zeros((self.batch_size, 1), np.int32)
            yield idx, {"paired": {"features": x, "segment_ids": seg, "tokens": tokens,
                                   "token_segment_ids": tokens}}

    def _run(self, key: tuple, make_predict) -> Any:
        if key not in self._compiled:
            self._compiled[key] = self.predict_fn(make_predict())
        return self._compiled[key]

    # ------------------------------------------------------------------------------------------ tasks
    def transcribe(self, inputs: Sequence[Audio], *, sample_rate: int = features_lib.SAMPLE_RATE,
                   **decoding: Any) -> list[str]:
        """Texts of `inputs` (paths or waveforms), in order, from an ASR run. `decoding` overrides the run's decoding
        options by name (CTC: `beam_size`, `lm` (an ARPA file; any KenLM file with `lm_decoder='prefix_beam'`),
        `lm_decoder`, `lm_alpha`, `lm_beta`, `prune_top_k`;
        RNN-T: `beam_size`, `max_symbols_per_frame`). A bad input raises `audio.AudioError` naming it."""
        task = self.decoding_task("transcribe", **decoding)   # bad options fail before any audio is read
        return self._decode(task, [self.features(x, sample_rate) for x in inputs], decoding)

    def translate(self, inputs: Sequence[Audio], *, sample_rate: int = features_lib.SAMPLE_RATE,
                  **decoding: Any) -> list[str]:
        """Target-language texts of `inputs` (paths or waveforms), in order, from a speech-translation run.
        `decoding` overrides `beam_size`, `length_penalty` or `max_decode_length` (tokens, EOS included)."""
        task = self.decoding_task("translate", **decoding)
        return self._decode(task, [self.features(x, sample_rate) for x in inputs], decoding)

    def decode_features(self, method: str, feats: Sequence[np.ndarray], **decoding: Any) -> list[str]:
        """`transcribe` or `translate` (`method`) of log-mel features made by `features` (the CLIs check every file
        first)."""
        return self._decode(self.decoding_task(method, **decoding), list(feats), decoding)

    def decoding_task(self, method: str, **decoding: Any):
        """The task with `decoding` applied to its decoding options; InferenceError names a task that cannot do
        `method` or an option that is not a decoding option of this task."""
        if self.task.name not in TASKS_OF[method]:
            raise InferenceError(f"{self.model_dir} is a {self.task.name!r} run: {method} needs a run of "
                                 f"{' or '.join(repr(t) for t in TASKS_OF[method])}")
        if "lm" in decoding:
            decoding["lm_path"] = decoding.pop("lm")
        if not decoding:
            return self.task
        cfg = self.task.decode_cfg
        options = getattr(type(cfg), "DECODING_FIELDS", None) or [f.name for f in dataclasses.fields(cfg)]
        unknown = sorted(set(decoding) - set(options))
        if unknown:
            raise InferenceError(f"{unknown} not decoding option(s) of a {self.task.name} run; it has "
                                 f"{', '.join(options)}")
        import copy
        task = copy.copy(self.task)
        try:
            task.decode_cfg = dataclasses.replace(cfg, **decoding)
        except (TypeError, ValueError) as e:
            raise InferenceError(f"decoding options {decoding} for {self.task.name}: {e}") from None
        return task

    def _decode(self, task, feats: list[np.ndarray], decoding: dict) -> list[str]:
        predict, to_text = task.decoder()
        run = self._run(("decode", tuple(sorted((k, str(v)) for k, v in decoding.items()))), lambda: predict)
        out = [""] * len(feats)
        for idx, batch in self._batches(feats):
            texts = to_text(run(self.params, batch))
            for row, i in enumerate(idx):
                out[i] = texts[row]
        return out

    def emissions(self, inputs: Sequence[Audio], *, sample_rate: int = features_lib.SAMPLE_RATE
                  ) -> list[np.ndarray]:
        """CTC log-probabilities float32 [frames, vocab] per input (frames 4x subsampled; id 0 is the blank), from a
        CTC ASR run: for a decoder of your own (e.g. flashlight-text's, benchmarks/slam_ctc_decoder_bench.py)."""
        if self.task.name != "asr_ctc":
            raise InferenceError(f"{self.model_dir} is a {self.task.name!r} run: emissions need an 'asr_ctc' run")
        task = self.decoding_task("transcribe", beam_size=2, lm_path=None)   # its predict returns the log-softmax
        predict, _ = task.decoder()
        run = self._run(("emissions",), lambda: predict)
        feats = [self.features(x, sample_rate) for x in inputs]
        out: list[np.ndarray] = [np.zeros(0)] * len(feats)
        for idx, batch in self._batches(feats):
            result = run(self.params, batch)
            for row, i in enumerate(idx):
                out[i] = np.asarray(result["log_probs"][row, :int(result["lengths"][row])], np.float32)
        return out

    def encode(self, inputs: Sequence[Audio], *, layers: Sequence[str] | None = None,
               sample_rate: int = features_lib.SAMPLE_RATE) -> list[dict[str, np.ndarray]]:
        """Frame features of every encoder layer (or `layers`) per input: {name: float32 [frames, d]}, names as
        `slam-eval --layer_probes` (`z`, `speech_1` .. `speech_N`, `shared_1` .. `shared_M`; z and the layers run
        at 4x subsampled frames). Eval mode: no masking, no dropout."""
        import jax.numpy as jnp

        from slam_jax.evaluation import layer_probes
        from slam_jax.layers.subsampling import subsampled_length
        cfg = self.task.model_cfg
        names = ["z", *layer_probes.layer_names(cfg.speech_layers, cfg.shared_layers)]
        wanted = list(layers) if layers is not None else names
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise InferenceError(f"unknown layer(s) {unknown}; this model has {names}")

        def predict(model, batch):
            stacked, _ = model.encoder.speech_representations(batch["paired"]["features"],
                                                              batch["paired"]["segment_ids"])   # [L, B, T', d]
            return {n: stacked[names.index(n)].astype(jnp.float32) for n in wanted}

        run = self._run(("encode", tuple(wanted)), lambda: predict)
        feats = [self.features(x, sample_rate) for x in inputs]
        out: list[dict[str, np.ndarray]] = [{} for _ in feats]
        for idx, batch in self._batches(feats):
            result = run(self.params, batch)
            for row, i in enumerate(idx):
                n = subsampled_length(feats[i].shape[0])
                out[i] = {name: result[name][row, :n] for name in wanted}
        return out


def load(model_dir: str, *, step: int | None = None, batch_size: int | None = None) -> Model:
    """A fine-tuned ASR or speech-translation model: a slam-finetune run (its `config.gin` and checkpoint `step`,
    default the latest) or a `slam-export` folder (safetensors + JSON: no orbax, gin or registered seqio task needed).

    batch_size: utterances per batch (default: the run's `StreamConfig.batch_size`). Raises InferenceError for a
    folder that is neither, FileNotFoundError when a run has no checkpoint.
    """
    from slam_jax import export
    if export.is_export(model_dir):
        return export.load_export(model_dir, batch_size)
    import tensorflow as tf

    from slam_jax import checkpointing, config, partitioning
    from slam_jax.finetune import run as finetune_run
    from slam_jax.trainer import TrainConfig
    path = os.path.join(model_dir, "config.gin")
    if not tf.io.gfile.exists(path):
        raise InferenceError(f"{path} does not exist: load() takes a slam-finetune run or a slam-export folder")
    with tf.io.gfile.GFile(path) as f:
        if not any(line.startswith("FinetuneConfig.task") for line in f):
            raise InferenceError(f"{model_dir} is a pre-training run; load() takes a slam-finetune run")
    config.parse([path], [])
    config.register_tasks()
    stream_cfg = config.StreamConfig()
    task = finetune_run.make_task(config.ModelConfig(), finetune_run.FinetuneConfig(), stream_cfg)
    trainer = finetune_run.make_trainer(task, config.OptimizerConfig(), config.MeshConfig(), TrainConfig())
    params, step = checkpointing.restore_params(model_dir, trainer.abstract_params, step)
    rows = batch_size or stream_cfg.batch_size
    devices = partitioning.batch_axis_size(trainer.mesh)
    rows = -(-rows // devices) * devices                   # whole rows per device of the batch axes
    return Model(model_dir=model_dir, step=step, task=task, predict_fn=trainer.predict_fn, params=params,
                 batch_size=rows)
