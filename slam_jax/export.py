"""A fine-tuned ASR or speech-translation model as plain files: parameters in safetensors, configuration in JSON, the
SentencePiece model(s).

    slam-export --model_dir=/tmp/slam_ft --output_dir=/tmp/slam_ft_export [--step=N] [--onnx]   # slam_jax/cli/export.py

```
<out>/params.safetensors   every parameter, named by its path in the model ("encoder/speech_stack/.../kernel")
<out>/config.json          {"format", "task", "step", "model", "finetune", "decoding", "batch_size", "vocabulary"}
<out>/vocabulary.model     the targets' SentencePiece model
<out>/source_vocabulary.model   speech translation with an auxiliary source CTC head only: the transcripts' model
<out>/model.onnx           with --onnx, CTC ASR only: log-mel in, CTC log-probabilities out (`slam_jax.onnx_export`)
```
`inference.load(<out>)` reads it back without orbax, gin or a registered seqio task (the run's data need not exist
where the export is used). Parameters are stored in float32 as trained.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

FORMAT = "slam_jax.export/1"
PARAMS, CONFIG, VOCABULARY = "params.safetensors", "config.json", "vocabulary.model"
SOURCE_VOCABULARY = "source_vocabulary.model"


def flatten(params: Any) -> dict[str, np.ndarray]:
    """A parameter tree -> {path: array}, paths joined with "/" (as checkpoints and the warm-start table name
    them)."""
    import jax

    from slam_jax.optim import param_path
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {param_path(path): np.asarray(leaf) for path, leaf in leaves}


def unflatten(abstract: Any, arrays: dict[str, np.ndarray], where: str) -> Any:
    """`arrays` in the structure of `abstract` (a tree with shaped leaves); a missing or reshaped name is an error
    naming it."""
    import jax

    from slam_jax.optim import param_path
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    out, bad = [], []
    for path, leaf in leaves:
        name = param_path(path)
        value = arrays.get(name)
        if value is None or tuple(value.shape) != tuple(leaf.shape):
            bad.append(f"{name} {tuple(leaf.shape)}: " + ("missing" if value is None else f"has {value.shape}"))
            continue
        out.append(value)
    if bad:
        raise ValueError(f"{where}: {len(bad)} parameter(s) do not match the model: " + "; ".join(bad[:5]))
    return jax.tree_util.tree_unflatten(treedef, out)


def export(model, out_dir: str, *, onnx_shape: tuple[int, int] | None = None) -> str:
    """Writes `model` (an `inference.Model` loaded from a run) to `out_dir`; returns the config path.

    onnx_shape: (batch, log-mel frames) of an ONNX graph to write too (CTC ASR runs; `slam_jax.onnx_export`)."""
    import tensorflow as tf
    from safetensors.numpy import save_file
    from slam_jax import inference
    task = model.task
    exportable = [name for names in inference.TASKS_OF.values() for name in names]   # what inference.load can use
    if task.name not in exportable:
        raise ValueError(f"{model.model_dir} is a {task.name!r} run: slam-export writes {', '.join(exportable)} models")
    if onnx_shape is not None and task.name != "asr_ctc":
        raise ValueError(f"{model.model_dir} is a {task.name!r} run: the ONNX export is of CTC ASR (asr_ctc) models")
    tf.io.gfile.makedirs(out_dir)
    local = out_dir if "://" not in out_dir else None
    flat = flatten(model.params)
    if local:
        save_file(flat, os.path.join(out_dir, PARAMS))
    else:  # safetensors writes local files: stage, then copy
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            save_file(flat, os.path.join(tmp, PARAMS))
            tf.io.gfile.copy(os.path.join(tmp, PARAMS), os.path.join(out_dir, PARAMS), overwrite=True)
    tf.io.gfile.copy(task.vocabulary.sentencepiece_model_file, os.path.join(out_dir, VOCABULARY), overwrite=True)
    decoding = task.decode_cfg
    if task.name == "translate":   # the run's default length comes from its stream config, which is not exported
        decoding = dataclasses.replace(decoding, max_decode_length=task.max_length)
    config = {"format": FORMAT, "task": task.name, "step": model.step, "source": model.model_dir,
              "model": dataclasses.asdict(task.model_cfg), "finetune": dataclasses.asdict(task.cfg),
              "decoding": dataclasses.asdict(decoding), "batch_size": model.batch_size,
              "vocabulary": VOCABULARY}
    if getattr(task, "source_vocabulary", None) is not None:
        tf.io.gfile.copy(task.source_vocabulary.sentencepiece_model_file, os.path.join(out_dir, SOURCE_VOCABULARY),
                         overwrite=True)
        config["source_vocabulary"] = SOURCE_VOCABULARY
    if onnx_shape is not None:
        from slam_jax import onnx_export
        batch, frames = onnx_shape
        config["onnx"] = onnx_export.export_ctc(model, os.path.join(out_dir, onnx_export.ONNX_FILE),
                                                batch_size=batch, frames=frames)
    path = os.path.join(out_dir, CONFIG)
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(config, f, indent=1)
    return path


def is_export(directory: str) -> bool:
    path = os.path.join(directory, CONFIG)
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return json.load(f).get("format") == FORMAT


def load_export(directory: str, batch_size: int | None = None):
    """An `inference.Model` from an export folder (no orbax, gin or seqio task registration involved)."""
    import jax
    import seqio
    from flax import nnx
    from safetensors.numpy import load_file

    from slam_jax import inference
    from slam_jax.finetune import TASKS
    from slam_jax.finetune.base import FinetuneConfig
    from slam_jax.model import ModelConfig
    with open(os.path.join(directory, CONFIG)) as f:
        config = json.load(f)
    task_class = TASKS.get(config["task"])
    if task_class is None or task_class.decode_config_class is None:
        raise inference.InferenceError(f"{directory}: unknown task {config['task']!r}")
    vocabularies = {"vocabulary": seqio.SentencePieceVocabulary(os.path.join(directory, config["vocabulary"]))}
    if config.get("source_vocabulary"):
        vocabularies["source_vocabulary"] = seqio.SentencePieceVocabulary(
            os.path.join(directory, config["source_vocabulary"]))
    task = task_class(ModelConfig(**config["model"]), FinetuneConfig(**config["finetune"]), None,
                      task_class.decode_config_class(**config["decoding"]), **vocabularies)
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0)))
    graphdef, abstract_params = nnx.split(abstract)
    params = unflatten(abstract_params, load_file(os.path.join(directory, PARAMS)), directory)
    params = jax.device_put(params)

    def predict_fn(fn):
        jitted = jax.jit(lambda p, batch: fn(nnx.merge(graphdef, p), batch))
        return lambda p, batch: jax.tree.map(np.asarray, jitted(p, batch))

    return inference.Model(model_dir=directory, step=config["step"], task=task, predict_fn=predict_fn,
                           params=params, batch_size=batch_size or config["batch_size"])
