"""plug_jax: JAX/Flax training and inference for the AliceMind / X-PLUG model families."""
import glob
import os

from setuptools import find_packages, setup

# Pinned, known-good set on Python 3.11 (see docs/decisions.md). Newer jaxlib CPU
# releases have known slowdowns on small-op workloads, so JAX is pinned exactly.
JAX_VERSION = "0.10.2"

INSTALL_REQUIRES = [
    f"jax=={JAX_VERSION}",
    f"jaxlib=={JAX_VERSION}",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    # plug-export's serving SavedModel (jax2tf native serialization; TensorFlow is already
    # required by the data layer). 0.0.8 works with jax 0.10.2 / orbax-checkpoint 0.12.8
    # (tests/test_export.py); see docs/decisions.md.
    "orbax-export==0.0.8",
    "numpy==2.4.6",
    # Trainer, CLI and metrics.
    "gin-config==0.5.0",
    "clu==0.0.12",
    "tensorboard==2.21.0",
    # Data layer (TensorFlow is imported only by plug_jax.data, tasks/ and main).
    "seqio==0.0.20",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorflow-datasets==4.9.10",
    "importlib_resources==7.1.0",  # tensorflow-datasets imports it when preparing a builder
    "sentencepiece==0.2.3",
    "pillow==13.0.0",  # plug_jax.data.media: images / videos named by prompts (no TensorFlow)
    # Index-based input (plug_jax.data.indexed): grain's index_shuffle, a keyed permutation
    # evaluated per index (docs/decisions.md).
    "grain==0.2.18",
    # ChatPLUG's local knowledge retriever (plug_jax/families/chatplug/retrieval.py): BM25
    # on sparse matrices, numpy only; saves its index as .npy (allow_pickle=False) + JSON
    # (docs/decisions.md).
    "bm25s==0.3.11",
]

EXTRAS = {
    # Checkpoint conversion from / to PyTorch layouts (CPU torch wheel).
    # pyyaml: ModelScope mPLUG dirs keep their config in config.yaml (read with safe_load);
    # already required by flax / transformers, pinned here because plug_jax reads it itself.
    "convert": ["torch==2.13.0", "transformers==5.23.0", "safetensors==0.8.0", "pyyaml==6.0.4"],
    "test": ["pytest==9.2.0", "pytest-xdist==3.8.0"],
    # CIDEr / BLEU-4 of generated captions (plug_jax/metrics/captions.py): the COCO caption
    # scorers (pure Python; their Java tokenizer and METEOR / SPICE are not used).
    "captions": ["pycocoevalcap==1.2", "pycocotools==2.0.11"],
    # colabs/*.ipynb executed by `make notebooks` (part of `make test`) and on Colab.
    "notebooks": ["nbclient==0.11.0", "nbformat==5.11.1", "ipykernel==7.4.0",
                  "matplotlib==3.11.2"],
    "gpu": [f"jax[cuda12]=={JAX_VERSION}"],
    "tpu": [f"jax[tpu]=={JAX_VERSION}"],
}


def _gin_data_files():
    """gin_configs/ ships as <prefix>/share/plug_jax/gin_configs for non-editable installs."""
    out = {}
    for path in sorted(glob.glob("gin_configs/**/*.gin", recursive=True)):
        folder = os.path.join("share", "plug_jax", os.path.dirname(path))
        out.setdefault(folder, []).append(path)
    return sorted(out.items())


setup(
    name="plug_jax",
    version="0.1.0",
    description="JAX/Flax codebase for Alibaba's AliceMind / X-PLUG model families",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    # tasks/ (seqio registrations) installs as plug_jax.tasks: a top-level "tasks" package
    # would collide with other projects' folders of the same name.
    packages=find_packages(include=["plug_jax", "plug_jax.*"]) + ["plug_jax.tasks"],
    package_dir={"plug_jax.tasks": "tasks"},
    data_files=_gin_data_files(),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "plug-convert=plug_jax.convert.cli:main",
            "plug-train=plug_jax.main:train_main",
            "plug-eval=plug_jax.main:eval_main",
            "plug-infer=plug_jax.main:infer_main",
            "plug-plan=plug_jax.main:plan_main",
            "plug-export=plug_jax.export:main",
            "plug-tasks=plug_jax.data.registry:main",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "License :: OSI Approved :: Apache Software License",
    ],
)
