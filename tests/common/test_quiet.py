"""A calm terminal: TensorFlow's and LiteRT's start-up notices are dropped, and nothing else written to stderr is.

TensorFlow's notices differ by CPU (oneDNN's on CPUs where it is on by default, the instruction-set notice elsewhere),
so no test here asserts on their text: with the set-up, stderr is empty on every path TensorFlow can take."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _stderr_of(code: str, **extra_env: str) -> str:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", **extra_env}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


# The default path, oneDNN forced off (what TensorFlow does by itself on a CPU without AVX-512 VNNI/BF16 or AMX,
# e.g. AMD Zen 1-3), and oneDNN held to AVX2 kernels: each prints a different set of start-up notices.
CPU_PATHS = {"default": {}, "onednn-off": {"TF_ENABLE_ONEDNN_OPTS": "0"}, "avx2-isa": {"ONEDNN_MAX_CPU_ISA": "AVX2"}}


@pytest.mark.parametrize("path", sorted(CPU_PATHS))
def test_tensorflow_and_litert_start_silently_once_logging_is_set_up(path):
    quiet = _stderr_of(
        "from common.logging import setup_logging; setup_logging()\n"
        "import tensorflow as tf\n"
        "assert int(tf.constant(1) + 1) == 2\n"
        "from ai_edge_litert.interpreter import Interpreter\n",
        **CPU_PATHS[path],
    )
    assert quiet == "", quiet


def test_only_the_known_notices_are_dropped_from_native_output():
    err = _stderr_of(
        "import os\n"
        "from common.logging import native_notices_dropped\n"
        "with native_notices_dropped():\n"
        "    os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called'\n"
        "             b' are written to STDERR\\n')\n"
        "    os.write(2, b'I0000 00:00:1.2 7 cpu_feature_guard.cc:227] This TensorFlow binary is optimized'\n"
        "             b' to use x\\n')\n"
        "    os.write(2, b'To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow'\n"
        "             b' with the appropriate compiler flags.\\n')\n"
        "    os.write(2, b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n')\n"
        "    os.write(2, b'E0000 a real native error\\n')\n"
        "    print('a python warning', file=__import__('sys').stderr)\n"
        "print('after', file=__import__('sys').stderr)\n"
    )
    assert err.splitlines() == ["E0000 a real native error", "a python warning", "after"]
