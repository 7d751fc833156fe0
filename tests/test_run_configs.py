"""Every run config in gin/runs/, composed with each slice it names, must resolve, build its model abstractly and
fit its data to its slice.

A production run (`runs/slam_600m_stage1.gin` + `slices/v4_64.gin`, ...) is only exercised on a pod, so these checks are what stands
between a typo and a failed pod launch: gin parses and every configurable resolves; the model builds abstractly
(no weight allocated) with the paper's size and its parameters shard over the slice's mesh; the mixture exists,
its tasks share one output-feature schema, every kind it yields is used by an active objective (and vice versa),
and every kind's rows divide the mesh's data x fsdp axes and the slice's hosts; finally the stream yields a real
batch (scaled down to a few rows) from mocked TFDS data and a tiny Libri-Light folder.

A pod run's slices are the ones its header's `slam-aot` lines compose it with; the slice is read from the slice file's
name: `slices/v4_64.gin` / `slices/v5p_64.gin` (TensorCores: 2 per chip, 4 chips per host); `cpu_smoke.gin` runs on one
device.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from pathlib import Path

import jax
import numpy as np
import pytest

import tasks  # registers the seqio tasks and mixtures
from slam_jax import config, model, partitioning
import slam_jax.finetune.run  # noqa: F401  (registers FinetuneConfig)
from slam_jax.data import converter, mixtures, schema
from slam_jax.trainer import TrainConfig

GIN_DIR = Path(config.GIN_DIR)
RUN_FILES = sorted((GIN_DIR / "runs").glob("*.gin"))
SLICE_FILES = sorted((GIN_DIR / "slices").glob("*.gin"))


def slices_named_by(run: Path) -> list[Path]:
    """The slice files a pod run's header composes it with, in its `slam-aot` lines."""
    found = re.findall(rf"slam-aot --gin_file=runs/{run.name} --gin_file=(slices/\w+\.gin)", run.read_text())
    return [GIN_DIR / name for name in found]


# A case: the run file alone (cpu_smoke) or a pod run and one of its slices.
RUNS = [(run,) if run.stem == "cpu_smoke" else (run, sl) for run in RUN_FILES
        for sl in ([None] if run.stem == "cpu_smoke" else slices_named_by(run))]
MACROS = ("STAGE1_MODEL_DIR = 'gs://test-bucket/stage1'", "STAGE2_MODEL_DIR = 'gs://test-bucket/stage2'")
MSLAM_ROWS = {"speech": 2048, "text": 8192, "paired": 256}  # mSLAM (arXiv 2202.01374): 2048 speech + 8192 text + 256 paired sequences per step
HBM_GIB = {"v4": 32, "v5p": 95}


@dataclasses.dataclass(frozen=True)
class Slice:
    generation: str
    chips: int
    hosts: int


def slice_of(case: tuple[Path, ...]) -> Slice:
    if len(case) == 1:
        return Slice("cpu", 1, 1)
    found = re.fullmatch(r"(v4|v5p)_(\d+)", case[1].stem)
    if not found:
        raise AssertionError(f"{case[1].name}: name a slice file after its TPU type (e.g. v4_64, v5p_64) so the test "
                             "knows its chip count")
    chips = int(found.group(2)) // 2
    return Slice(found.group(1), chips, max(1, chips // 4))


@dataclasses.dataclass(frozen=True)
class Resolved:
    model: model.ModelConfig
    objective: object
    stream: schema.StreamConfig
    optimizer: object
    mesh: partitioning.MeshConfig
    train: object
    topology: str | None


@functools.lru_cache(maxsize=None)
def resolve(case: tuple[Path, ...]) -> Resolved:
    config.parse([str(p) for p in case], MACROS)
    return Resolved(config.ModelConfig(), config.ObjectiveConfig(), config.StreamConfig(), config.OptimizerConfig(),
                    config.MeshConfig(), TrainConfig(), config.macro("TOPOLOGY"))


def ids(cases):
    return ["+".join(p.stem for p in case) for case in cases]


POD_RUNS = [case for case in RUNS if len(case) == 2]


def test_slice_files_hold_only_the_mesh_and_the_topology():
    """A slice file is what differs between slices; everything else lives in the run file, once."""
    assert [p.stem for p in SLICE_FILES] == ["v4_64", "v5p_64"]
    for sl in SLICE_FILES:
        lines = [l for l in sl.read_text().splitlines() if l and not l.startswith("#")]
        assert lines[0] == "include 'runs/common/mesh_32_chips.gin'" and lines[1].startswith("TOPOLOGY = "), lines
        assert len(lines) == 2, lines


def test_the_paper_runs_exist_on_their_slices():
    cases = set(ids(RUNS))
    for stage in ("stage1", "stage2_tlm", "stage2_tlm_stm", "stage3_w2v_bert", "tlm_one_stage"):
        for sl in ("v4_64", "v5p_64"):
            assert f"slam_600m_{stage}+{sl}" in cases
    assert "mslam_2b+v5p_64" in cases  # 58 GiB per chip (docs/scaling.md): v5p only


@pytest.mark.parametrize("case", RUNS, ids=ids(RUNS))
def test_run_resolves(case):
    r = resolve(case)
    assert r.train.train_steps > 0
    assert r.stream.speech_frames % schema.SPEECH_ALIGN == 0
    assert r.stream.paired_frames % schema.SPEECH_ALIGN == 0
    if r.objective.ctc:  # CTC needs at least as many (4x subsampled) frames as transcript tokens
        assert r.stream.paired_frames // 4 >= r.stream.paired_tokens


@pytest.mark.parametrize("case", POD_RUNS, ids=ids(POD_RUNS))
def test_pod_run_follows_the_paper(case):
    """mSLAM / w2v-BERT optimizer: Adam b2 0.98, Transformer schedule (600M 6e-4 / 40k warm-up, 2B 3.6e-4); bf16 with remat."""
    r, path = resolve(case), case[0]
    assert r.model.dtype == "bfloat16" and r.model.remat != "none"
    assert (r.optimizer.b1, r.optimizer.b2) == (0.9, 0.98)
    assert r.optimizer.warmup_steps == 40_000
    expected_lr = {1024: 6e-4, 1408: 3.6e-4}[r.model.d_model]
    assert r.optimizer.peak_learning_rate == pytest.approx(expected_lr)
    text = path.read_text()
    assert re.search(rf"--gin_file=runs/{path.name} --gin_file=slices/\w+\.gin", text), \
        "the launch command in the header names another file, or no slice"
    sl = slice_of(case)
    assert r.topology == {"v4": "v4:2x4x4", "v5p": "v5p:2x4x4"}[sl.generation]  # 32 chips: v4-64 / v5p-64
    assert math.prod(int(n) for n in r.topology.split(":")[1].split("x")) == sl.chips
    if "stage2" in path.stem:
        assert r.train.init_from == "gs://test-bucket/stage1"
    elif "stage3" in path.stem:
        assert r.train.init_from == "gs://test-bucket/stage2"
    else:
        assert r.train.init_from is None


STAGED = [case for case in RUNS if "--gin.STAGE" in case[0].read_text()]


@pytest.mark.parametrize("case", STAGED, ids=ids(STAGED))
def test_later_stages_require_the_previous_run(case):
    macro = re.search(r"--gin\.(STAGE\d_MODEL_DIR)", case[0].read_text()).group(1)
    with pytest.raises(config.ConfigError, match=macro):  # at parse time, before any work
        config.parse([str(p) for p in case])


@functools.lru_cache(maxsize=None)
def abstract_state(cfg: model.ModelConfig):
    from flax import nnx
    return nnx.split(model.abstract_model(cfg))[1]


@pytest.mark.parametrize("case", RUNS, ids=ids(RUNS))
def test_model_builds_abstractly_and_shards_over_the_slice(case):
    r, sl = resolve(case), slice_of(case)
    state = abstract_state(r.model)
    leaves = jax.tree.leaves(state)
    params = sum(math.prod(x.shape) for x in leaves)
    expected = {1024: 620.5e6, 1408: 1848.4e6}.get(r.model.d_model)
    if expected:
        assert params == pytest.approx(expected, rel=0.01)
    shape = r.mesh.shape(sl.chips)
    mesh = jax.sharding.AbstractMesh(shape, partitioning.MESH_AXES)
    shardings = jax.tree.leaves(partitioning.logical_shardings(state, mesh, r.mesh.rules))
    per_chip = sum(math.prod(s.shard_shape(x.shape)) for x, s in zip(leaves, shardings))
    if sl.generation in HBM_GIB:
        # fp32 params + Adam moments + fp32 gradients: the sharded state must leave most of HBM to activations
        assert per_chip * 16 < 0.25 * HBM_GIB[sl.generation] * 2**30
        assert per_chip < params / 8, "parameters are mostly replicated: check MeshConfig / logical rules"


@pytest.mark.parametrize("case", RUNS, ids=ids(RUNS))
def test_mixture_fits_objectives_and_mesh(case):
    r, sl, path = resolve(case), slice_of(case), case[0]
    mixture = r.stream.mixture
    children = mixtures.kind_children(mixture)  # raises when the mixture is not registered
    mixtures.all_tasks(mixture)  # raises unless every task shares one output-feature schema
    assert set(children) == r.objective.kinds, (
        f"{path.name}: mixture {mixture!r} yields {sorted(children)} but the objectives use "
        f"{sorted(r.objective.kinds)}")
    rows = mixtures.kind_batch_sizes(mixture, r.stream.batch_size, num_shards=sl.hosts)
    data, fsdp, _ = r.mesh.shape(sl.chips)
    assert all(n % (data * fsdp) == 0 for n in rows.values()), (rows, data, fsdp)
    if path.stem != "cpu_smoke":
        assert rows == {k: MSLAM_ROWS[k] for k in rows}, f"{path.name}: rows per step {rows}, mSLAM's mix is " \
                                                          f"{MSLAM_ROWS}"


# ------------------------------------------------------------------------------ one real batch from mocked data
def _librispeech_example(i: int, rng: np.random.Generator) -> dict:
    samples = int(16000 * (1.0 + (i % 3) * 0.5))
    return {"speech": (rng.normal(size=samples) * 3000).astype(np.int16), "text": f"HELLO WORLD NUMBER {i}",
            "speaker_id": np.int64(i), "chapter_id": np.int64(1), "id": f"{i}-1-{i:04d}"}


def _mock_as_dataset(builder, split, decoders=None, read_config=None, **kwargs):
    """Plausible records for the TFDS datasets the Libri tasks read (random audio, short sentences)."""
    import tensorflow as tf
    if builder.name == "librispeech":
        rng = np.random.default_rng(0)
        rows = [_librispeech_example(i, rng) for i in range(6)]
        return tf.data.Dataset.from_generator(lambda: iter(rows), output_signature={
            "speech": tf.TensorSpec([None], tf.int16), "text": tf.TensorSpec([], tf.string),
            "speaker_id": tf.TensorSpec([], tf.int64), "chapter_id": tf.TensorSpec([], tf.int64),
            "id": tf.TensorSpec([], tf.string)})
    if builder.name in ("librispeech_lm", "c4"):
        texts = [" ".join(["the speech model learns"] * (1 + i % 5)) for i in range(20)]
        extra = {k: [""] * len(texts) for k in ("url", "content-type", "content-length", "timestamp")}
        return tf.data.Dataset.from_tensor_slices({"text": texts, **(extra if builder.name == "c4" else {})})
    raise AssertionError(f"the run configs read an unexpected TFDS dataset {builder.name!r}")


@pytest.fixture
def libri_light_folder(tmp_path):
    """A two-file Libri-Light `large/` tree, registered as `librilight_large` for the duration of a test."""
    import soundfile
    rng = np.random.default_rng(1)
    book = tmp_path / "large" / "100" / "book"
    book.mkdir(parents=True)
    for i in range(2):
        soundfile.write(book / f"clip{i}.flac", (rng.normal(size=16000 * 3) * 0.1).astype(np.float32), 16000)
        (book / f"clip{i}.json").write_text(json.dumps({"speaker": "100"}))
    tasks.register(config.DataConfig(librilight_dir=str(tmp_path)))
    yield
    tasks.register(config.DataConfig())


def _distinct_streams():
    """One pod run per distinct (mixture, row lengths): the stream check needs no more. A run that does not resolve
    is kept (its test then fails with the gin error) rather than breaking collection."""
    seen, out = set(), []
    for case in POD_RUNS:
        try:
            s = resolve(case).stream
            key = (s.mixture, s.speech_frames, s.text_tokens, s.paired_frames, s.paired_tokens)
        except Exception:  # noqa: BLE001  (reported by the test itself)
            key = case
        if key not in seen:
            seen.add(key)
            out.append(case)
    return out


STREAM_RUNS = _distinct_streams()


@pytest.mark.parametrize("case", STREAM_RUNS, ids=ids(STREAM_RUNS))
def test_stream_yields_a_batch_from_mocked_data(case, libri_light_folder):
    import tensorflow_datasets as tfds
    r = resolve(case)
    full = mixtures.kind_batch_sizes(r.stream.mixture, r.stream.batch_size)
    scale = math.gcd(*full.values())
    # The mocked sentences are lowercase, the test vocabulary (the mini corpus') uppercase: UNK pieces are expected.
    small = dataclasses.replace(r.stream, batch_size=r.stream.batch_size // scale, on_error="raise", pack_bins=2,
                                max_unk_fraction=1.0)
    with tfds.testing.mock_data(as_dataset_fn=_mock_as_dataset):
        stream = converter.make_stream(small)
        batch = next(stream)
    schema.validate(batch)
    assert set(batch) == set(full)
    for kind, sub in batch.items():
        assert sub["segment_ids"].shape[0] == full[kind] // scale
        assert (sub["segment_ids"] > 0).any(), f"{kind} rows hold no data"
    if "speech" in batch:
        assert batch["speech"]["features"].shape[1:] == (r.stream.speech_frames, schema.NUM_MEL_BINS)
    if "text" in batch:
        assert batch["text"]["tokens"].shape[1] == r.stream.text_tokens
    if "paired" in batch:
        assert batch["paired"]["features"].shape[1] == r.stream.paired_frames
        assert batch["paired"]["tokens"].shape[1] == r.stream.paired_tokens


# ------------------------------------------------------------------------------------------ bindings vs defaults
_LITERAL_BINDING = re.compile(r"^([A-Za-z_][\w.]*)\.(\w+)\s*=\s*(.+?)\s*(#.*)?$")


def _effective_config(text: str, name: str) -> dict[tuple[str, str], str]:
    """Every field of every dataclass configurable after parsing `text` (as gin file `name`): bound or default."""
    import gin
    registry = gin.config._REGISTRY
    gin.clear_config()
    gin.add_config_file_search_path(str(GIN_DIR))
    gin.parse_config(text)
    values = {}
    for _, configurable in registry.items():
        if dataclasses.is_dataclass(configurable.wrapped):
            for field in dataclasses.fields(configurable.wrapped):
                if field.default is not dataclasses.MISSING:
                    values[(configurable.selector, field.name)] = repr(field.default)
    for (_, selector), params in gin.config._CONFIG.items():
        match = registry.get_match(selector)
        for key, value in params.items():
            values[(match.selector if match else selector, key)] = repr(value)
    gin.clear_config()
    return values


@pytest.mark.parametrize("path", sorted(GIN_DIR.rglob("*.gin")), ids=lambda p: str(p.relative_to(GIN_DIR)))
def test_no_binding_restates_what_is_already_in_effect(path):
    """A binding equal to the dataclass default is kept only where it overrides an included file's value."""
    import ast
    import gin
    lines = path.read_text().splitlines(keepends=True)
    full = _effective_config("".join(lines), path.name)
    for i, line in enumerate(lines):
        m = _LITERAL_BINDING.match(line.rstrip("\n"))
        if not m:
            continue
        try:
            value = ast.literal_eval(m[3])
        except (ValueError, SyntaxError):
            continue
        configurable = gin.config._REGISTRY.get_match(m[1])
        if configurable is None or not dataclasses.is_dataclass(configurable.wrapped):
            continue
        default = {f.name: f.default for f in dataclasses.fields(configurable.wrapped)}.get(m[2], dataclasses.MISSING)
        if default is dataclasses.MISSING or repr(default) != repr(value):
            continue
        without = _effective_config("".join(lines[:i] + lines[i + 1:]), path.name)
        assert without != full, f"{path.relative_to(GIN_DIR)}:{i + 1}: `{line.strip()}` restates the default"
