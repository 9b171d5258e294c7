"""Image bytes the stages write: one lossless PNG encoding for acquire, processing's local copy and the simulated
nights, below every stage so none of them has to reach into another's package for it."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode_png(image: np.ndarray) -> bytes:
    """A 2-D uint8 array as PNG bytes (lossless, so a round trip is exact)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()
