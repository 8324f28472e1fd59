"""plug_jax: JAX/Flax training and inference for the AliceMind / X-PLUG model families."""
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
    "numpy==2.4.6",
]

EXTRAS = {
    # Checkpoint conversion from / to PyTorch layouts (CPU torch wheel).
    "convert": ["torch==2.13.0", "transformers==5.23.0", "safetensors==0.8.0"],
    "test": ["pytest==9.2.0", "pytest-xdist==3.8.0"],
    "gpu": [f"jax[cuda12]=={JAX_VERSION}"],
    "tpu": [f"jax[tpu]=={JAX_VERSION}"],
}

setup(
    name="plug_jax",
    version="0.1.0",
    description="JAX/Flax codebase for Alibaba's AliceMind / X-PLUG model families",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["plug_jax", "plug_jax.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "plug-convert=plug_jax.convert.cli:main",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "License :: OSI Approved :: Apache Software License",
    ],
)
