"""dopd_jax: on-policy distillation (DOPD, MOPD, OPD, GKD, OPSD) in JAX/Flax NNX."""

import setuptools

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorflow-datasets==4.9.10",
    "grain==0.2.18",
    "sentencepiece==0.2.3",
    "ml-collections==1.1.0",
    "numpy==2.4.6",
    "absl-py==2.5.1",
    "tqdm==4.70.1",
    "tensorboardX==2.6.5",
    "tokenizers==0.23.3",
    "jinja2==3.1.6",  # chat templates of Hugging Face checkpoints (models/chat.py)
    "safetensors==0.8.0",
    "matplotlib==3.11.2",  # dopd_jax.sweep figures
]

EXTRAS = {
    # pytest-xdist: the suite runs on 2 workers, one test file per worker at a time.
    "test": [
        "pytest==9.2.0",
        "pytest-xdist==3.8.0",
        "execnet==2.1.2",
        "chex==0.1.92",
        "ruff==0.14.0",
    ],
    "notebooks": ["jupytext==1.19.6"],
    # PyTorch CPU build (lies on the CI disk); an unpinned torch pulls CUDA. TRL and
    # its own requirements: the peers of benchmarks.compare.
    "compare": [
        "torch==2.13.0",
        "transformers==5.23.0",
        "safetensors==0.8.0",
        "trl==1.16.0",
        "accelerate==1.15.0",
        "datasets==5.2.0",
        "pandas==3.1.1",
        "pyarrow==26.0.1",
    ],
}

setuptools.setup(
    name="dopd_jax",
    version="0.1.0",
    description=__doc__,
    packages=setuptools.find_packages(include=["dopd_jax", "dopd_jax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
