"""A calm terminal: TensorFlow's and LiteRT's start-up notices are dropped, and nothing else written to stderr is."""

from __future__ import annotations

import subprocess
import sys

NOTICE_WORDS = ("oneDNN custom operations", "absl::InitializeLog", "XNNPACK delegate", "rebuild TensorFlow")


def _stderr_of(code: str) -> str:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_tensorflow_starts_without_its_notices_once_logging_is_set_up():
    quiet = _stderr_of(
        "from common.logging import setup_logging; setup_logging()\n"
        "import tensorflow as tf\n"
        "assert int(tf.constant(1) + 1) == 2\n"
    )
    assert not any(word in quiet for word in NOTICE_WORDS), quiet
    loud = _stderr_of("import tensorflow as tf\n")  # the same import without the set-up: the notices are real
    assert "oneDNN custom operations" in loud


def test_only_the_known_notices_are_dropped_from_native_output():
    err = _stderr_of(
        "import os\n"
        "from common.logging import native_notices_dropped\n"
        "with native_notices_dropped():\n"
        "    os.write(2, b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n')\n"
        "    os.write(2, b'E0000 a real native error\\n')\n"
        "    print('a python warning', file=__import__('sys').stderr)\n"
        "print('after', file=__import__('sys').stderr)\n"
    )
    assert err.splitlines() == ["E0000 a real native error", "a python warning", "after"]
