"""Configuration at the edges: the vocabulary must match ModelConfig.vocab_size exactly, `--module_import` brings a
user's corpus module (seeing the gin-bound DataConfig paths), `slam-data inspect --gin_file` reads the exact stream
of a run, every CLI lists its flags (the gin flags where it takes them), and a flag name means the same in every
command."""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import subprocess
import sys

import jax
import pytest

import tasks  # noqa: F401
from slam_jax import config, train
from slam_jax.cli import common, data as data_cli
from slam_jax.data import sources
from train_utils import env, in_process, slam_train

MINI_SPM = os.path.join(sources.MINI_CORPUS, "spm.model")


def test_commands_cache_compiled_programs_under_xdg_cache_home(monkeypatch, tmp_path):
    before = jax.config.jax_compilation_cache_dir
    try:
        monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
        common.use_compilation_cache()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "slam_jax" / "jax")
        # A JAX_COMPILATION_CACHE_DIR in the environment wins (JAX read it at import): the command leaves it.
        jax.config.update("jax_compilation_cache_dir", before)
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
        common.use_compilation_cache()
        assert jax.config.jax_compilation_cache_dir == before
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


@pytest.mark.parametrize("vocab_size", [256, 1024])
def test_vocabulary_size_mismatch_in_either_direction_is_an_error(vocab_size):
    with pytest.raises(config.ConfigError) as e:
        train.check_vocabulary("mini_slam", vocab_size)
    message = str(e.value)
    assert "has 512 pieces" in message and f"ModelConfig.vocab_size = {vocab_size}" in message
    assert MINI_SPM in message and "DataConfig.spm_model" in message
    assert train.check_vocabulary("mini_slam", 512) == MINI_SPM


def test_slam_train_refuses_a_larger_model_vocabulary_before_training(tmp_path):
    result = slam_train(tmp_path / "run", "--gin.ModelConfig.vocab_size=1000", check=False, timeout=300)
    assert result.returncode == 2
    assert "has 512 pieces but ModelConfig.vocab_size = 1000" in result.stderr, result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_module_import_registers_a_user_corpus_that_sees_the_gin_data_paths(tmp_path, monkeypatch, capsys):
    (tmp_path / "sentences.txt").write_text("THE CAT SAT ON THE MAT\nHE SAID THAT IT WAS GOOD\n" * 20)
    # The module's task takes the default vocabulary: DataConfig.spm_model, which the command sets from the gin
    # binding (tasks.register) before it imports the module; the environment variable names a missing file.
    (tmp_path / "my_corpus_h13.py").write_text(
        "from slam_jax.data import sources\n"
        f"sources.add_text_files_task('my_sentences', {{'train': {str(tmp_path / 'sentences.txt')!r}}},\n"
        "                             vocabulary=sources.default_vocabulary())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(config.DATA_ENV["spm_model"], "/nonexistent/spm.model")  # restored after the test
    rc = data_cli.main(["inspect", "--module_import=my_corpus_h13", "--mixture=my_sentences", "--num_batches=1",
                           "--show=1", "--batch_size=2", "--text_tokens=16",
                           f"--gin.DataConfig.spm_model='{MINI_SPM}'"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "my_sentences" in out and "{'text': 2}" in out
    assert "THE CAT SAT ON THE MAT" in out or "HE SAID THAT IT WAS GOOD" in out


def test_module_import_of_a_missing_module_names_it(capsys):
    rc = data_cli.main(["inspect", "--module_import=no_such_corpus_module", "--mixture=mini_slam"])
    assert rc == 2
    assert "--module_import=no_such_corpus_module: cannot import it" in capsys.readouterr().err


def test_slam_data_inspect_gin_file_reads_the_runs_stream(capsys):
    rc = data_cli.main(["inspect", "--gin_file=runs/cpu_smoke.gin", "--gin.StreamConfig.batch_size=8",
                           "--num_batches=2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    # cpu_smoke.gin: mixture mini_slam, 512 / 64 / 640 / 64 row lengths; the binding sets 8 rows (4 / 2 / 2).
    assert "mixture 'mini_slam' split 'train': 2 batches of 8 rows {'speech': 4, 'text': 2, 'paired': 2}" in out
    assert "[speech] 4 rows/batch" in out and "[paired] 2 rows/batch" in out


def test_slam_data_inspect_shows_a_translation_pairs_source(capsys):
    """The ST config's stream carries the English transcript beside the German target; --show decodes both."""
    rc = data_cli.main(["inspect", "--gin_file=finetune/mini_st_de.gin", "--batch_size=2", "--num_batches=1",
                           "--show=1", "--split=validation"])
    out = capsys.readouterr().out
    assert rc == 0, out
    target, source = out.split("row 0: ")[1].splitlines()[:2]
    english = {line.split("\t")[2]: line.split("\t")[1] for line in open(os.path.join(
        sources.MINI_CORPUS, "st_de", "covost_v2.en_de.dev.tsv"), encoding="utf-8").read().splitlines()[1:]}
    german = target.split("tokens real: ")[1].strip("'")
    assert source.strip() == f"source: {english[german]!r}"


def _command_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every installed slam-* command's parser (`slam-data inspect` and `slam-data vocab` separately)."""
    out = {}
    for ep in importlib.metadata.entry_points(group="console_scripts"):
        if ep.name.startswith("slam-"):
            parser = importlib.import_module(ep.module).build_parser()
            subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            out.update({f"{ep.name} {n}": p for a in subparsers for n, p in a.choices.items()} if subparsers
                       else {ep.name: parser})
    return out


GIN_COMMANDS = {"slam-train", "slam-finetune", "slam-eval", "slam-info", "slam-bench", "slam-aot", "slam-data inspect"}


def test_every_command_documents_every_flag_and_the_gin_flags_where_it_takes_them():
    parsers = _command_parsers()
    others = {"slam-prepare", "slam-transcribe", "slam-translate", "slam-export", "slam-data vocab"}
    assert GIN_COMMANDS | others <= set(parsers)
    for name, parser in parsers.items():
        text = parser.format_help()
        assert ("--gin_file=FILE" in text and "--gin.NAME=VALUE" in text) == (name in GIN_COMMANDS), name
        for action in parser._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help text"
    out = in_process("slam_jax.cli.eval", ["--help"])
    assert out.returncode == 0 and "--gin.NAME=VALUE" in out.stdout, out.stderr


def test_a_flag_name_means_the_same_in_every_command():
    """A flag that several commands take has one definition (cli/common.FLAGS): the same help, kind and choices."""
    uses: dict[str, dict[str, tuple]] = {}
    for name, parser in _command_parsers().items():
        for action in parser._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    uses.setdefault(flag, {})[name] = (action.help, type(action).__name__, action.type,
                                                       action.choices)
    shared = {flag: by_command for flag, by_command in uses.items() if len(by_command) > 1}
    assert {"--model_dir", "--step", "--split", "--mixture", "--on_error", "--batch_size", "--paired_frames",
            "--json", "--verbose", "--module_import"} <= set(shared)
    for flag, by_command in shared.items():
        assert flag[2:] in common.FLAGS, f"{flag} is taken by {sorted(by_command)} but not defined in FLAGS"
        assert len(set(by_command.values())) == 1, (flag, by_command)


def test_tensorflow_start_up_is_quiet():
    """Importing the package (every CLI does) and tokenizing with the bundled SentencePiece models the way the input
    pipeline does (tensorflow_text's op: "precompiled_charsmap is empty" for an identity model) prints none of
    TensorFlow's native start-up lines, unless asked to."""
    quiet = {k: v for k, v in env().items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    code = ("import os, slam_jax.data.converter, tasks, seqio\n"   # TensorFlow, tf.data, seqio and the task registry
            "from slam_jax.data import sources\n"
            "for path in (os.path.join(sources.MINI_CORPUS, 'spm.model'), "
            "os.path.join(sources.MINI_CORPUS, 'st_de', 'spm.model')):\n"
            "    assert len(seqio.SentencePieceVocabulary(path).encode_tf('the cat').numpy()) > 0\n")
    out = subprocess.run([sys.executable, "-c", code], env=quiet, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    verbose = subprocess.run([sys.executable, "-c", code], env={**quiet, "TF_CPP_MIN_LOG_LEVEL": "0"},
                             capture_output=True, text=True, timeout=120)
    assert verbose.returncode == 0 and verbose.stderr.strip()   # the silencing is ours, not a quiet build


def test_slam_finetune_without_gin_file_suggests_a_finetuning_config(capsys, tmp_path):
    from slam_jax.cli import finetune
    with pytest.raises(SystemExit) as info:
        finetune.main([f"--model_dir={tmp_path}"])
    assert info.value.code == 2 and "--gin_file=finetune/mini_ctc.gin" in capsys.readouterr().err
