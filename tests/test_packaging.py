"""The installed distribution: its Triton code imports as ``attention_ops.kernels``, so it lives
beside Hugging Face's ``kernels`` distribution (the top-level name ``kernels``)."""

import subprocess
import sys


def test_hugging_face_kernels_and_ours_both_import(tmp_path):
    # Run from an empty directory: from the repository root, its kernels/ folder would shadow
    # whatever is installed under the name `kernels`.
    script = (
        "import kernels, attention_ops.kernels as ours\n"
        "from importlib.metadata import distribution\n"
        "files = {str(f) for f in distribution('kernels').files}\n"
        "assert any(f.startswith('kernels/') for f in files), 'kernels is not HF kernels'\n"
        "assert kernels.__file__ != ours.__file__\n"
        "assert callable(ours.attention_forward) and callable(kernels.get_kernel)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
