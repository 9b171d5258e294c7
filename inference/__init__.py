"""The model path, owned in one place: which version a model URI names, how it is loaded, the runtime that runs
it, its test-time views, the prediction records it produces, and the one call from image bytes to those records
(:mod:`inference.classifier`).

The API, the nightly batch job (both engines), drift evaluation, training's evaluation and the benchmarks all go
through this package; it imports only ``common`` and ``data_processing`` (the one bytes-to-model-input path), never
a stage that uses it. Modules import TensorFlow, ONNX Runtime or LiteRT lazily, inside the functions that need them.
"""
