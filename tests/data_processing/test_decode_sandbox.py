"""A decoding that runs past its budget cannot hold a worker hostage (issue 28): under a time budget, images that
are not trivially small are decoded in a child process (``data_processing.sandbox``) that is killed when the
budget runs out. Tested with real child processes; the budgets are tiny or huge, never a bound on speed."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import psutil
import pytest
from PIL import Image, ImageFile

from data_processing.preprocessing import INLINE_WORK, DecodeBudget, ImageError, preprocess_bytes
from data_processing.sandbox import DecodeSandbox, shared_sandbox
from model_serving.factory import create_app
from tests.support.api import serving_settings
from tests.support.decode import flat_png
from tests.support.fakes import FakePredictor

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def photo() -> bytes:
    """A 2400x1800 photo-like PNG: above the in-line work, a few tens of ms to decode."""
    rng = np.random.default_rng(5)
    img = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).resize((2400, 1800))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def sandbox():
    box = DecodeSandbox()
    yield box
    box.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_child_answers_what_the_preprocessing_answers_in_line(sandbox, photo):
    assert INLINE_WORK < 2400 * 1800
    out = sandbox.preprocess(photo, max_pixels=50_000_000, max_image_pixels=4096 * 4096, timeout=300)
    np.testing.assert_array_equal(out, preprocess_bytes(photo))
    with pytest.raises(ImageError) as exc:  # a refusal in the child comes back as the same error
        sandbox.preprocess(photo[: len(photo) // 3], max_pixels=50_000_000, max_image_pixels=4096**2, timeout=300)
    assert exc.value.code == "invalid_image"


def test_a_decoding_past_its_budget_is_killed_and_the_next_image_gets_a_new_child(sandbox, photo):
    sandbox.start()
    # A budget far below what decoding 4.3 MP takes: the caller stops waiting and the child is killed.
    with pytest.raises(ImageError) as exc:
        sandbox.preprocess(photo, max_pixels=50_000_000, max_image_pixels=4096**2, timeout=1e-4)
    assert exc.value.code == "decode_time_exceeded" and exc.value.http_status == 413
    first = sandbox.pid
    assert first is None  # killed and reaped
    out = sandbox.preprocess(photo, max_pixels=50_000_000, max_image_pixels=4096**2, timeout=300)
    np.testing.assert_array_equal(out, preprocess_bytes(photo))


def test_a_child_that_died_while_idle_is_replaced(sandbox, photo):
    sandbox.start()
    pid = sandbox.pid
    os.kill(pid, 9)
    while psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:  # gone (not reaped yet: it is our child)
        time.sleep(0.01)
    out = sandbox.preprocess(photo, max_pixels=50_000_000, max_image_pixels=4096**2, timeout=300)
    assert sandbox.pid != pid and not _alive(pid)
    np.testing.assert_array_equal(out, preprocess_bytes(photo))


def test_under_a_time_budget_a_large_image_is_decoded_in_the_child_a_small_one_in_line(monkeypatch, photo):
    decoded_here = []
    original = ImageFile.ImageFile.load

    def counting_load(self):
        if getattr(self, "tile", None):  # pixels still to decode (load() is called again once they are)
            decoded_here.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    budget = DecodeBudget(max_seconds=300)
    preprocess_bytes(photo, budget=budget)
    assert decoded_here == []  # the 4.3 MP photo: decoded where it can be stopped
    assert budget.decoded_pixels == 2400 * 1800  # and charged here
    preprocess_bytes(flat_png(28, 28, value=40), budget=budget)
    assert decoded_here == [(28, 28)]  # a 28x28 item: in line (the child's round trip would cost more)
    preprocess_bytes(photo)  # no time budget (training's trusted data): in line
    assert decoded_here[-1] == (2400, 1800)


def test_an_api_request_whose_decoding_overruns_is_stopped_and_the_worker_answers_the_next(monkeypatch, photo):
    from model_serving import routes

    # The request's checks before decoding pass (a clock that stands still); the child then gets 1 ms of real time,
    # far less than decoding 4.3 MP takes.
    monkeypatch.setattr(routes, "request_decode_budget", lambda serving: DecodeBudget(max_seconds=1e-3, clock=float))
    app = create_app(FakePredictor(), settings=serving_settings(), background=False)
    client = app.test_client()
    shared_sandbox().start()
    before = shared_sandbox().pid
    r = client.post("/predict", data={"file": (io.BytesIO(photo), "big.png")})
    assert r.status_code == 413 and r.get_json()["error"] == "decode_time_exceeded", r.get_json()
    assert "(stopped)" in r.get_json()["message"]
    assert not _alive(before)  # the decoding was killed, not waited for
    small = client.post("/predict", data={"file": (io.BytesIO(flat_png(28, 28, value=60)), "small.png")})
    assert small.status_code == 200
