"""Why an image cannot become model input: the refusals of THE preprocessing (:mod:`data_processing.preprocessing`),
each with the API's error code and HTTP status.

Their own module so that the decode sandbox's parent side (:mod:`data_processing.sandbox`) can raise and rebuild them
without importing the preprocessing that calls it; ``preprocessing`` re-exports every one (``pp.ImageError``).
"""

from __future__ import annotations


class ImageError(ValueError):
    """An upload that cannot become model input. ``code`` and ``http_status`` feed the API's JSON errors.

    The message is a short reason safe to show a client; ``detail`` (the decoder's own words, if any) is for logs.
    """

    code = "invalid_image"
    http_status = 400

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


class EmptyImage(ImageError):
    code = "empty_image"


class InvalidImage(ImageError):
    code = "invalid_image"


class UnsupportedFormat(ImageError):
    code = "unsupported_format"
    http_status = 415


class ImageTooLarge(ImageError):
    code = "image_too_large"
    http_status = 413


class PixelBudgetExceeded(ImageTooLarge):
    """The images of one request together would decode more pixels than its budget."""

    code = "pixel_budget_exceeded"


class DecodeTimeExceeded(ImageTooLarge):
    """One request's decoding has used up its time budget."""

    code = "decode_time_exceeded"


class DecodeWorkExceeded(ImageTooLarge):
    """The image's container announces more decoding work than allowed (scans, chunks, run-length codes)."""

    code = "decode_work_exceeded"
