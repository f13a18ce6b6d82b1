"""Package definition for `distill`: Distilling Step-by-Step in JAX/Flax.

The accelerator half (model, decoding, partitioning, trainer) needs only the
`install_requires` below minus TensorFlow/seqio; the input pipeline needs the
rest. The top-level `gin_configs/` folder ships inside the package as
`distill.gin_configs`, so entry points find `experiments/svamp/...` from any
working directory (see `distill.gin_paths`).
"""
import os

import setuptools

HERE = os.path.dirname(os.path.abspath(__file__))


setuptools.setup(
    name="distill",
    version="0.1.0",
    description="Distilling Step-by-Step! (Hsieh et al., 2023) in JAX/Flax with SeqIO, gin and orbax",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["distill", "distill.*"]) + ["distill.gin_configs"],
    package_dir={"distill.gin_configs": "gin_configs"},
    package_data={
        "distill": ["teacher/exemplars/*.json"],
        "distill.gin_configs": ["*.gin", "**/*.gin"],
    },
    install_requires=[
        "numpy>=1.26",
        "jax>=0.10.2,<0.12",
        "flax>=0.12,<0.13",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "gin-config>=0.5",
        "absl-py>=2.0",
        "sentencepiece>=0.2",
        "safetensors>=0.4",
        "tensorboardX>=2.6",
        "filelock>=3.12",  # the compilation cache's size bound (distill/compilation_cache.py)
        "httpx>=0.27",
        "sniffio>=1.3",  # httpcore retries a missing sniffio import on every request
        "matplotlib>=3.8",
        "starlette>=0.37",  # distill serve
        "uvicorn>=0.30",
        "httptools>=0.6",  # uvicorn's C HTTP parser: h11 (pure Python) costs more per request than routing
        "uvloop>=0.19; sys_platform != 'win32'",
        # Input pipeline (not needed by the accelerator half).
        "seqio>=0.0.19",
        "tensorflow>=2.18,<2.22",
        "tensorflow-text>=2.18,<2.22",
        "tensorflow-datasets>=4.9",
        "importlib_resources>=6",  # tensorflow-datasets needs it and does not declare it
    ],
    extras_require={
        "hf": ["torch>=2.1,<3", "transformers>=4.40,<6"],
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "torch>=2.1,<3",
            "transformers>=4.40,<6",
            "nbclient>=0.10",
            "nbformat>=5.9",
            "ipykernel>=6.29",
            "openai>=1.40",
        ],
        "tpu": ["jax[tpu]>=0.10.2,<0.12"],
        "gpu": ["jax[cuda12]>=0.10.2,<0.12"],
    },
    entry_points={"console_scripts": ["distill=distill.cli:main"]},
)
