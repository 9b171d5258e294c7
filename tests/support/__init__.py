"""What the tests and the benchmarks share: real-process launchers (free ports, moto, mlflow server, the API),
generated images, a tiny real model and how it is registered, hand-written fakes, and helpers per stage.

Fixtures live in ``tests/conftest.py`` only; this package holds plain functions and classes.

* :mod:`tests.support.processes` -- free ports, waiting for HTTP, stopping processes, moto and mlflow servers
* :mod:`tests.support.models` -- generated 28x28 items, small real Keras models, logging and registering them
* :mod:`tests.support.fakes` -- :class:`FakePredictor` (a hand-written model with a fixed rule)
* :mod:`tests.support.api` -- images, the bad-upload corpus, the real API server process
* :mod:`tests.support.batch`, ``data``, ``dashboard``, ``decode``, ``drift``, ``inference``, ``training`` -- per stage
"""
