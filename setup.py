"""Packaging for attention-ops: fused Triton attention kernels for PyTorch."""

from setuptools import find_packages, setup

# The lowest transformers the integration supports and CI tests (.ci/run reads this line);
# the newest release is tested too, so there is no upper bound.
TRANSFORMERS_LOWEST = "5.5.0"

setup(
    name="attention-ops",
    version="0.1.0",
    description="Fused causal attention for PyTorch, forward and backward, written in Triton.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The repository's kernels/ folder (Triton code only) installs as `attention_ops.kernels`:
    # the top-level name `kernels` belongs to Hugging Face's kernels distribution.
    packages=[*find_packages(include=["attention_ops", "attention_ops.*"]),
              "attention_ops.kernels"],
    package_dir={"attention_ops.kernels": "kernels"},
    install_requires=["torch>=2.5", "triton>=3.2"],
    extras_require={
        "transformers": [f"transformers>={TRANSFORMERS_LOWEST}"],
        # numpy: the Triton interpreter (TRITON_INTERPRET=1) runs kernels on it.
        # kernels: Hugging Face's distribution of that import name, installed beside ours
        # to test that both import. pytest-xdist: bench/gpu_session.sh runs the suite on
        # eight workers (`pytest -n 8`).
        "test": ["pytest", "pytest-benchmark", "pytest-xdist", "numpy",
                 f"transformers>={TRANSFORMERS_LOWEST}", "kernels"],
        "bench": ["matplotlib", "tqdm", "pytest-benchmark"],
    },
)
