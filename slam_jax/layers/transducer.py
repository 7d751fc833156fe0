"""The RNN-T decoder's two networks: an LSTM prediction network over the emitted labels and the joint network.

SLAM §4.1 (following w2v-BERT / BigSSL) fine-tunes ASR with an RNN-T decoder whose prediction network is a 2-layer
LSTM of 640 units over 1024 word pieces. The joint network (Graves 2012; the additive form of He et al. 2019, "Streaming
end-to-end speech recognition for mobile devices") projects both sides to `joint_dim`, adds, applies tanh and maps to
the vocabulary, whose id 0 (the PAD id) is the blank. The prediction network starts from the blank's embedding (our
choice, as ESPnet and icefall: no extra start symbol).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from slam_jax.layers import common

Array = jax.Array
LstmState = tuple[tuple[Array, Array], ...]   # per layer (c, h), each [..., units]


class PredictionNetwork(nnx.Module):
    """Embedding + stacked LSTMs over label ids: [B, U] -> [B, U, units]; `step` advances one label."""

    def __init__(self, vocab_size: int, embed_dim: int, units: int, num_layers: int, *, rngs: nnx.Rngs):
        self.units = units
        self.embedding = nnx.Embed(
            vocab_size, embed_dim, param_dtype=jnp.float32,
            embedding_init=nnx.with_partitioning(jax.nn.initializers.normal(1.0), ("vocab", None)), rngs=rngs)
        self.layers = nnx.List([
            nnx.OptimizedLSTMCell(embed_dim if i == 0 else units, units, param_dtype=jnp.float32, rngs=rngs)
            for i in range(num_layers)])

    def initial_state(self, batch_shape: tuple[int, ...]) -> LstmState:
        zeros = jnp.zeros((*batch_shape, self.units), jnp.float32)
        return tuple((zeros, zeros) for _ in self.layers)

    def step(self, tokens: Array, state: LstmState) -> tuple[Array, LstmState]:
        """tokens int [...] + state -> (output [..., units], new state)."""
        x = self.embedding(tokens).astype(jnp.float32)
        new_state = []
        for cell, carry in zip(self.layers, state):
            carry, x = cell(carry, x)
            new_state.append(carry)
        return x, tuple(new_state)

    def __call__(self, tokens: Array) -> Array:
        """Teacher forcing: tokens int [B, U] (the blank first, then the labels) -> outputs [B, U, units]."""
        def body(state, token):
            out, state = self.step(token, state)
            return state, out

        _, outs = jax.lax.scan(body, self.initial_state(tokens.shape[:1]), tokens.T)
        return outs.swapaxes(0, 1)


class JointNetwork(nnx.Module):
    """logits = out(tanh(enc_proj(encoder) + pred_proj(predictor))); the projections are applied once per side
    (`project_*`) and combined per lattice node (`__call__`), so chunked losses and decoders reuse them."""

    def __init__(self, encoder_dim: int, predictor_dim: int, joint_dim: int, vocab_size: int, *, rngs: nnx.Rngs):
        self.encoder_proj = common.dense(encoder_dim, joint_dim, ("embed", "mlp"), dtype=jnp.float32, rngs=rngs)
        self.predictor_proj = common.dense(predictor_dim, joint_dim, (None, "mlp"), dtype=jnp.float32,
                                           use_bias=False, rngs=rngs)
        self.out = common.dense(joint_dim, vocab_size, ("mlp", "vocab"), dtype=jnp.float32, rngs=rngs)

    def project_encoder(self, h: Array) -> Array:
        return self.encoder_proj(h.astype(jnp.float32))

    def project_predictor(self, p: Array) -> Array:
        return self.predictor_proj(p.astype(jnp.float32))

    def __call__(self, enc: Array, pred: Array) -> Array:
        """Projected encoder and predictor outputs of broadcastable shapes [..., J] -> logits [..., V]."""
        return self.out(jnp.tanh(enc + pred))

    def lattice(self, enc: Array, pred: Array) -> Array:
        """Every pair: projected encoder [B, T, J] and predictor [B, U, J] -> logits [B, T, U, V]."""
        return self(enc[:, :, None], pred[:, None])
