"""ASR fine-tuning with an RNN-T decoder (SLAM §4.1's LibriSpeech recipe), scored by WER / CER like CTC.

```
log-mel [B, T, 80] -(SpecAugment)-> ConvSubsampling -> N speech layers -> M shared layers -> h [B, T', d]
labels [B, U] -> [blank, y_1 .. y_U] -> PredictionNetwork (2-layer LSTM, 640) -> g [B, U + 1, 640]
JointNetwork: out(tanh(W_h h_t + W_g g_u)) -> logits [B, T', U + 1, V] -> RNN-T loss (blank = id 0, the PAD id)
```
SLAM §4.1 (after BigSSL / w2v-BERT): a 2-layer LSTM prediction network of 640 units, 1024 word pieces and
SpecAugment. Ours (not reported): the joint size (640), the prediction network's embedding size (640), the loss
normalized per label (as our CTC), decoding options (`TransducerConfig`). The targets, the warm start, the freezing
and optimizer options and the row checks are the CTC task's (`asr_ctc`): the task differs only in its head.

Rows RNN-T cannot learn from are skipped and counted (`transducer_feasible`): transcripts with UNK pieces, and
transcripts with more labels than the decoder can emit from the audio (`max_symbols_per_frame` per encoder frame).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slam_jax.data import converter
from slam_jax.decoding import rnnt as rnnt_decoding
from slam_jax.finetune.asr_ctc import BLANK_ID, AsrCtcTask, CtcStream, ctc_labels, row_reasons
from slam_jax.finetune.base import SpecAugment, encode_speech
from slam_jax.layers.subsampling import subsampled_length
from slam_jax.layers.transducer import JointNetwork, PredictionNetwork
from slam_jax.model import ModelConfig, SlamEncoder
from slam_jax.objectives import rnnt

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TransducerConfig:
    """The RNN-T head and its decoding (gin: `TransducerConfig.*`).

    vocab_size: the output layer's labels (blank = id 0 included); 0 = the paired task's vocabulary size. The head
      need not share the pre-training text vocabulary (`ModelConfig.vocab_size`, the encoder's text embedding): SLAM
      §4.1 fine-tunes with 1024 word pieces (`slam-data vocab`) on an encoder pre-trained with a larger vocabulary.
    predictor_layers / predictor_units: SLAM §4.1's 2-layer LSTM of 640 units. predictor_embed_dim, joint_dim: ours
      (640, the LSTM's width).
    loss_time_chunk: frames of the joint network evaluated at once in the loss (0: all); each chunk is recomputed
      in the backward pass (`rnnt.chunked_lattice_log_probs`), so the joint tensor [B, chunk, U + 1, V] bounds memory.
    beam_size: 1 = greedy search, > 1 = modified beam search (at most one label per frame).
    max_symbols_per_frame: greedy search's cap on labels per encoder frame (icefall's default 1: a 40 ms frame
      rarely holds two word pieces); also the training rows' limit (`transducer_feasible`).
    """

    DECODING_FIELDS = ("beam_size", "max_symbols_per_frame")   # in result file names (`base.decode_tag`)

    vocab_size: int = 0
    predictor_layers: int = 2
    predictor_units: int = 640
    predictor_embed_dim: int = 640
    joint_dim: int = 640
    loss_time_chunk: int = 0
    beam_size: int = 1
    max_symbols_per_frame: int = 1

    def __post_init__(self):
        if self.beam_size < 1 or self.max_symbols_per_frame < 1 or self.loss_time_chunk < 0 or self.vocab_size < 0:
            raise ValueError("TransducerConfig: beam_size and max_symbols_per_frame must be >= 1, loss_time_chunk and "
                             f"vocab_size >= 0, got {self.beam_size} / {self.max_symbols_per_frame} / "
                             f"{self.loss_time_chunk} / {self.vocab_size}")


class RnntAsrModel(nnx.Module):
    """The SLAM encoder, an LSTM prediction network and the joint network (speech runs alone through both stacks)."""

    def __init__(self, cfg: ModelConfig, head: TransducerConfig, vocab_size: int, *, rngs: nnx.Rngs):
        self.cfg, self.head = cfg, head
        self.encoder = SlamEncoder(cfg, rngs=rngs)
        self.predictor = PredictionNetwork(vocab_size, head.predictor_embed_dim, head.predictor_units,
                                           head.predictor_layers, rngs=rngs)
        self.joint = JointNetwork(cfg.d_model, head.predictor_units, head.joint_dim, vocab_size, rngs=rngs)

    def encode(self, features: Array, segment_ids: Array, *, key: Array | None = None,
               augment: SpecAugment | None = None) -> tuple[Array, Array]:
        """Log-mel [B, T, 80] + ids [B, T] -> (joint-projected encoder output [B, T/4, J], frame ids [B, T/4])."""
        h, seg = encode_speech(self.encoder, features, segment_ids, key, augment)
        return self.joint.project_encoder(h), seg

    def predict_step(self, tokens: Array, state) -> tuple[Array, tuple]:
        """One label per row (any leading shape) -> (joint-projected prediction output [..., J], new state)."""
        out, state = self.predictor.step(tokens, state)
        return self.joint.project_predictor(out), state

    def lattices(self, encoder: Array, labels: Array) -> tuple[Array, Array]:
        """Projected encoder [B, T', J] + labels [B, U] (0 past the end) -> RNN-T lattices [B, T', U + 1] /
        [B, T', U] (`rnnt.lattice_log_probs`)."""
        history = jnp.pad(labels, ((0, 0), (1, 0)), constant_values=BLANK_ID)   # the blank starts the history
        pred = self.joint.project_predictor(self.predictor(history))            # [B, U + 1, J]
        return rnnt.chunked_lattice_log_probs(self.joint.lattice, encoder, pred, labels, BLANK_ID,
                                              self.head.loss_time_chunk)


def transducer_feasible(frames: np.ndarray, labels: np.ndarray, label_valid: np.ndarray, unk_id: int | None,
                        max_symbols_per_frame: int) -> list[str]:
    """Why RNN-T cannot train on each row ("" when it can): UNK pieces, or more labels than the decoder can emit
    (`max_symbols_per_frame` per encoder frame). frames: int [B] log-mel frames (0 = padding row)."""
    def rule(n: int, lab: np.ndarray) -> str:
        most = subsampled_length(n) * max_symbols_per_frame
        return "" if lab.size <= most else (
            f"transcript too long for the audio: {lab.size} labels but {n / 100:.2f} s gives {subsampled_length(n)} "
            f"encoder frames of at most {max_symbols_per_frame} label(s) each (TransducerConfig.max_symbols_per_frame)")

    return row_reasons(frames, labels, label_valid, unk_id, rule)


class AsrRnntTask(AsrCtcTask):
    """RNN-T ASR on any registered paired task or mixture (`StreamConfig.mixture`), scored by WER / CER."""

    name = "asr_rnnt"
    loss_names = ("asr/rnnt_loss",)
    decode_config_class = TransducerConfig
    output_binding = "TransducerConfig.vocab_size"

    def output_size(self, model_cfg: ModelConfig) -> int:
        return self.decode_cfg.vocab_size or self.vocabulary.vocab_size

    def build_model(self, rngs: nnx.Rngs) -> RnntAsrModel:
        return RnntAsrModel(self.model_cfg, self.decode_cfg, self.output_size(self.model_cfg), rngs=rngs)

    def losses(self, model: RnntAsrModel, batch: dict, step: Array, key: Array, train: bool):
        sub = batch["paired"]
        encoder, seg = model.encode(sub["features"], sub["segment_ids"], key=key if train else None,
                                    augment=self.augment if train else None)
        labels, valid = ctc_labels(sub["tokens"], sub["token_segment_ids"], self.vocabulary.eos_id)
        labels = jnp.where(valid, labels, BLANK_ID)
        loss, m = rnnt.rnnt_loss(*model.lattices(encoder, labels), seg > 0, valid)
        return loss, {"loss": loss, "asr/rnnt_loss": loss, "asr/utterances": m["count"]}

    def train_stream(self, shard_index: int, num_shards: int) -> CtcStream:
        stream = converter.make_stream(self.stream_cfg, shard_index=shard_index, num_shards=num_shards)
        unk, cap = self.vocabulary.unk_id, self.decode_cfg.max_symbols_per_frame
        return CtcStream(stream, self.vocabulary.eos_id, unk,
                         feasible=lambda frames, labels, valid: transducer_feasible(frames, labels, valid, unk, cap))

    def decoder(self):
        """(predict, transcribe) as `AsrCtcTask.decoder`: greedy or modified beam search on the device, per
        `TransducerConfig`."""
        cfg = self.decode_cfg

        def predict(model: RnntAsrModel, batch: dict) -> dict[str, Array]:
            encoder, seg = model.encode(batch["paired"]["features"], batch["paired"]["segment_ids"])
            lengths = (seg > 0).sum(1)
            batch_size = encoder.shape[0]
            if cfg.beam_size == 1:
                hyp = rnnt_decoding.greedy_search(
                    model.joint, model.predict_step, model.predictor.initial_state((batch_size,)), encoder, lengths,
                    max_symbols=cfg.max_symbols_per_frame, blank_id=BLANK_ID)
            else:
                hyp = rnnt_decoding.modified_beam_search(
                    model.joint, model.predict_step, model.predictor.initial_state((batch_size, cfg.beam_size)),
                    encoder, lengths, beam_size=cfg.beam_size, blank_id=BLANK_ID)
            return {"tokens": hyp.tokens, "lengths": hyp.lengths}

        def transcribe(outputs: dict[str, np.ndarray]) -> list[str]:
            return [self.text(outputs["tokens"][row, :int(n)].tolist()) for row, n in enumerate(outputs["lengths"])]

        return predict, transcribe
