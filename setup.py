"""slam_jax: a JAX/Flax reproduction of SLAM (speech-text joint pre-training)."""
import setuptools

setuptools.setup(
    name="slam_jax",
    version="0.1.0",
    description="JAX/Flax NNX reproduction of SLAM: joint speech-text pre-training of one Conformer encoder.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["slam_jax", "slam_jax.*", "tasks", "tasks.*"]),
    package_data={"slam_jax": ["gin/**/*.gin", "assets/**/*"]},
    include_package_data=True,
    install_requires=[
        "jax>=0.10,<0.11",
        "jaxlib>=0.10,<0.11",
        "flax>=0.12,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12,<0.13",
        "tensorflow>=2.21,<2.22",
        "tensorflow-text>=2.21,<2.22",
        "tensorflow-datasets>=4.9,<4.10",
        "seqio==0.0.20",
        "sentencepiece>=0.2,<0.3",
        "gin-config>=0.5,<0.6",
        "soundfile>=0.12",
        "clu>=0.0.12",
        "tensorboard>=2.15",
        "tqdm>=4.60",
        "numpy>=2.0",
        "jiwer>=3.0,<5",
        # n-gram LM shallow fusion in CTC beam search; builds from source (a C++ compiler, as on any Linux CI).
        "kenlm>=0.2",
        "flashlight-text>=0.0.7,<0.1",  # the CTC beam search with a word LM (C++, KenLM; decoding/ctc.py)
        "sacrebleu>=2.3,<3",
        "scikit-learn>=1.3",
        "matplotlib>=3.7",  # plots of experiments/toy_reproduction.py (docs/)
        "safetensors>=0.4",  # slam-export's parameter files
        "onnx>=1.16,<2",  # slam-export --onnx (slam_jax/onnx_export.py)
    ],
    extras_require={
        # libtpu (Linux only) lets the tests compile for TPU topologies on CPU (slam-aot); no TPU is used.
        "test": ["pytest>=8", "pytest-xdist>=3.2",  # --dist worksteal (pytest.ini)
                 "librosa>=0.10",
                 "importlib_resources>=6",  # TFDS writes the GLUE test set with it (tests/test_glue.py)
                 "onnxruntime>=1.20",  # runs the ONNX export beside JAX (tests/test_onnx_export.py)
                 "jax[tpu]>=0.10,<0.11; sys_platform == 'linux'"],
        "gpu": ["jax[cuda12]>=0.10,<0.11"],
        "tpu": ["jax[tpu]>=0.10,<0.11"],
        "bench": ["torch", "transformers"],
    },
    entry_points={
        "console_scripts": [
            "slam-train=slam_jax.cli.train:main",
            "slam-finetune=slam_jax.cli.finetune:main",
            "slam-eval=slam_jax.cli.eval:main",
            "slam-info=slam_jax.cli.info:main",
            "slam-bench=slam_jax.cli.bench:main",
            "slam-aot=slam_jax.cli.aot:main",
            "slam-data=slam_jax.cli.data:main",
            "slam-prepare=slam_jax.cli.prepare:main",
            "slam-transcribe=slam_jax.cli.transcribe:main",
            "slam-translate=slam_jax.cli.translate:main",
            "slam-export=slam_jax.cli.export:main",
        ]
    },
)
