"""The review page in a real headless Chromium against the real API: a person labels 10 items with the keyboard;
the labels are in the store, each item counted once, and the next retraining's warehouse set holds them.

Debian's ``chromium`` driven by Playwright, as in tests/model_serving/test_dashboard_browser.py (skips only when it
is absent).
"""

from __future__ import annotations

import pytest

from common.settings import PROJECT_ROOT, split_shares
from common.storage import storage_from_settings
from model_serving.factory import create_app
from model_training.warehouse import build_warehouse
from monitoring.label_store import LabelStore
from tests.support.api import serving_settings
from tests.support.dashboard import CHROMIUM, chromium, collect_console_errors, dashboard_predictor, serve
from tests.support.loop import write_night

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent: `apt-get install -y chromium`"),
]

TOKEN = "review-token-for-the-browser"
SCREENSHOT = PROJECT_ROOT / "test-artifacts" / "review.png"


def test_a_person_labels_ten_items_with_the_keyboard() -> None:
    settings = serving_settings(review_token=TOKEN)
    storage = storage_from_settings(settings)
    _, review, audit, truth = write_night(storage, review=6, audit=6)
    app = create_app(dashboard_predictor(), settings=settings, background=False, reference_loader=lambda info: None)
    items = review + audit
    with chromium() as browser, serve(app) as base:
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        page.set_default_timeout(20_000)
        errors = collect_console_errors(page)
        page.goto(base + "/review")
        page.fill("#who", "Ann")
        page.fill("#token", TOKEN)
        page.press("#token", "Enter")
        page.wait_for_function("() => !document.getElementById('item').hidden")
        assert page.inner_text("#item-title") == "Item 1 of 12"
        assert page.locator("#item-top3 li").count() == 3
        page.wait_for_function("() => document.getElementById('item-input').naturalWidth === 28")

        # Ten items, one key each: the model's answer (Enter), classes by number, "not one of the 10", "unusable".
        keys = ["Enter", "3", "Enter", "o", "u", "9", "1", "Enter", "2", "7"]
        for n, key in enumerate(keys, start=1):
            page.wait_for_function(f"() => document.getElementById('item-title').textContent === 'Item {n} of 12'")
            page.keyboard.press(key)
        page.wait_for_function("() => document.getElementById('progress-text').dataset.saved === '10'")
        # A change of mind: back to the tenth item, another answer. The later label wins; it is still one item.
        page.keyboard.press("ArrowLeft")
        page.wait_for_function("() => document.getElementById('item-title').textContent === 'Item 10 of 12'")
        page.keyboard.press("5")
        page.wait_for_function("() => document.getElementById('progress-text').dataset.saved === '11'")
        assert page.inner_text("#progress-text").startswith("10 of 12 labelled")
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        assert errors == []

    labels = LabelStore(storage)
    current = labels.current()
    expected = [items[0]["class_name"], "Dress", items[2]["class_name"], "other", "unusable", "Ankle boot",
                "Trouser", items[7]["class_name"], "Pullover", "Sandal"]  # fmt: skip
    assert [current[(r["key"], r["sha256"])].label for r in items[:10]] == expected
    assert len(current) == 10 and len(labels.history()) == 11
    assert {lab.who for lab in current.values()} == {"Ann"} and {lab.how for lab in current.values()} == {"review-page"}
    # The next retraining reads these: 8 class answers become warehouse photos (other/unusable teach no class).
    warehouse = build_warehouse(storage, current, split_shares(settings.learning.warehouse_split))
    assert len(warehouse) == 8 and warehouse.counts["not_a_class"] == 2
    assert truth  # the night's photos have true classes (unused here: the person is the truth)
