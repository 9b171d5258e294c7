"""The 10 Fashion-MNIST categories, in label order."""

from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)


def class_slug(label: int) -> str:
    """A folder-safe name for a class: ``T-shirt/top`` -> ``T-shirt_top``, ``Ankle boot`` -> ``Ankle_boot``."""
    return CLASS_NAMES[label].replace("/", "_").replace(" ", "_")


SLUG_TO_LABEL: dict[str, int] = {class_slug(i): i for i in range(NUM_CLASSES)}
