"""Scoring a run's checkpoint: a fine-tuning run on its task, a pre-training run with the alignment probes or the
frozen-feature layer probes (the `slam-eval` command: `slam_jax/cli/eval.py`).

Scores and predictions are written under `model_dir/eval/`: `<split>_step<N>[_<decoding>].json` / `.tsv` for a
task, `probes_<mixture>_<split>_step<N>.json` for the probes,
`layer_probes_<mixture>_<split>_step<N>[_random_init].json` for the layer probes.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys

import jax

from slam_jax import checkpointing, config, health
from slam_jax.trainer import TrainConfig, Trainer
from slam_jax.data import converter, mixtures
from slam_jax.evaluation import layer_probes, probes
from slam_jax.finetune import run as finetune_run


def run_config(model_dir: str) -> str:
    import tensorflow as tf
    path = os.path.join(model_dir, "config.gin")
    if not tf.io.gfile.exists(path):
        raise config.ConfigError(f"{path} does not exist: --model_dir must be a slam-train or slam-finetune run")
    return path


def is_finetune_run(config_path: str) -> bool:
    import tensorflow as tf
    with tf.io.gfile.GFile(config_path) as f:
        return any(line.startswith("FinetuneConfig.task") for line in f)


def _eval_train_config(eval_batches: int) -> TrainConfig:
    """The run's TrainConfig with slam-eval's batch count (0 = the whole split; several processes need a count)."""
    return dataclasses.replace(TrainConfig(), eval_batches=eval_batches)


def evaluate_task(model_dir: str, split: str | None, step: int | None, eval_batches: int = 0) -> dict:
    """The fine-tuning task's scores on `split` (default `TrainConfig.eval_split`), over every example of it: an
    utterance the run's rows cannot hold fails the evaluation, naming the binding to raise."""
    train_cfg = _eval_train_config(eval_batches)
    task = finetune_run.make_task(config.ModelConfig(), finetune_run.FinetuneConfig(), config.StreamConfig())
    trainer = finetune_run.make_trainer(task, config.OptimizerConfig(), config.MeshConfig(), train_cfg)
    params, step = checkpointing.restore_params(model_dir, trainer.abstract_params, step)
    split = split or train_cfg.eval_split
    scores = task.evaluate(trainer, params, split, step, model_dir, strict=True)
    return {"task": task.name, "split": split, "step": step, **scores}


def evaluate_probes(model_dir: str, split: str | None, step: int | None, mixture: str | None,
                    eval_batches: int = 0) -> dict:
    """Alignment probes of a pre-training run on the paired examples of `mixture` (default: the run's own)."""
    train_cfg = _eval_train_config(eval_batches)
    objective_cfg = config.ObjectiveConfig()
    trainer = Trainer.for_pretraining(
        model_cfg=config.ModelConfig(), objective_cfg=objective_cfg, optimizer_cfg=config.OptimizerConfig(),
        mesh_cfg=config.MeshConfig(), train_cfg=train_cfg)
    params, step = checkpointing.restore_params(model_dir, trainer.abstract_params, step)
    stream_cfg = config.StreamConfig()
    split = split or train_cfg.eval_split
    cfg = dataclasses.replace(stream_cfg, mixture=mixture or stream_cfg.mixture, split=split, shuffle=False)
    if "paired" not in mixtures.kind_children(cfg.mixture):
        raise ValueError(f"mixture {cfg.mixture!r} has no paired data to probe; pass --mixture=<a paired task>")
    stream = converter.eval_stream(cfg, shard_index=jax.process_index(), num_shards=jax.process_count())
    result = probes.alignment_probes(trainer, params, stream)
    out = {"probes": True, "mixture": cfg.mixture, "split": split, "step": step, "stm_trained": objective_cfg.stm,
           **dataclasses.asdict(result)}
    if jax.process_index() == 0:
        import tensorflow as tf
        folder = os.path.join(model_dir, "eval")
        tf.io.gfile.makedirs(folder)
        with tf.io.gfile.GFile(os.path.join(folder, f"probes_{cfg.mixture}_{split}_step{step}.json"), "w") as f:
            json.dump(out, f, indent=1)
    return out


def evaluate_layer_probes(model_dir: str, split: str | None, step: int | None, mixture: str | None, *,
                          train_split: str, train_seconds: float, probe_steps: int, random_init: bool) -> dict:
    """Frozen-feature probes of every layer of a pre-training run (`layer_probes`): character CTC trained on
    `train_seconds` of `train_split` and scored on `split`, speaker identification within `split`. `random_init`
    probes a freshly initialized encoder of the run's configuration instead (the baseline)."""
    import jax.numpy as jnp
    import numpy as np
    train_cfg = _eval_train_config(0)
    model_cfg = config.ModelConfig()
    trainer = Trainer.for_pretraining(
        model_cfg=model_cfg, objective_cfg=config.ObjectiveConfig(), optimizer_cfg=config.OptimizerConfig(),
        mesh_cfg=config.MeshConfig(), train_cfg=train_cfg)
    if jax.process_count() > 1:
        raise config.ConfigError("--layer_probes runs in one process")
    if random_init:
        params, step = trainer.init_params(), 0
    else:
        params, step = checkpointing.restore_params(model_dir, trainer.abstract_params, step)
    stream_cfg = config.StreamConfig()
    split = split or train_cfg.eval_split
    mixture = mixture or stream_cfg.mixture
    if "paired" not in mixtures.kind_children(mixture):
        raise ValueError(f"mixture {mixture!r} has no paired data to probe; pass --mixture=<a paired task>")
    names = layer_probes.layer_names(model_cfg.speech_layers, model_cfg.shared_layers)
    vocabulary = mixtures.vocabulary_for(mixture)

    def features(split_name, seconds):
        cfg = dataclasses.replace(stream_cfg, mixture=mixture, split=split_name, shuffle=False)
        return layer_probes.extract(trainer, params, converter.eval_stream(cfg), vocabulary, names, seconds)

    train_set, eval_set = features(train_split, train_seconds), features(split, None)
    layers, speakers = {}, {}
    for name in ["logmel", *names]:
        ctc = layer_probes.ctc_probe(train_set.layers[name], train_set.texts, eval_set.layers[name],
                                     eval_set.texts, steps=probe_steps)
        pooled = np.stack([x.mean(0) for x in eval_set.layers[name]])
        frames = jnp.asarray(np.concatenate(eval_set.layers[name]))
        every = jnp.ones(frames.shape[0], bool)
        speakers = layer_probes.speaker_probe(pooled, eval_set.speakers)
        layers[name] = {"cer": ctc.cer, "degenerate": ctc.degenerate, "distinct_fraction": ctc.distinct_fraction,
                        "empty_fraction": ctc.empty_fraction, "top_char_share": ctc.top_char_share,
                        "effective_rank": float(health.effective_rank(frames, every)),
                        "mean_cosine": float(health.mean_pairwise_cosine(frames, every)),
                        "example": ctc.hypotheses[0], "utterance_cer": ctc.utterance_cer,
                        "speaker_accuracy": speakers["accuracy"]}
        speaker = "n/a (fewer than two speakers with two utterances)" if speakers["accuracy"] is None \
            else f"{speakers['accuracy']:.3f}"
        print(f"{name}: CER {ctc.cer:.3f}{' (degenerate)' if ctc.degenerate else ''} speaker accuracy {speaker} "
              f"effective rank {layers[name]['effective_rank']:.1f}", file=sys.stderr, flush=True)
    out = {"layer_probes": True, "mixture": mixture, "train_split": train_split, "split": split, "step": step,
           "random_init": random_init, "train_seconds": train_set.seconds, "train_utterances": len(train_set.ids),
           "eval_utterances": len(eval_set.ids), "speakers": speakers["speakers"],
           "speaker_chance": speakers["chance"], "reference_example": eval_set.texts[0], "layers": layers}
    import tensorflow as tf
    folder = os.path.join(model_dir, "eval")
    tf.io.gfile.makedirs(folder)
    name = f"layer_probes_{mixture}_{split}_step{step}{'_random_init' if random_init else ''}.json"
    out["file"] = os.path.join(folder, name)
    with tf.io.gfile.GFile(out["file"], "w") as f:
        json.dump(out, f, indent=1)
    return out
