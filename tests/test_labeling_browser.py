"""The labeling app in a real browser: Debian's headless Chromium driven by Playwright labels items by
keyboard and by mouse (with an undo), and the export holds exactly those answers."""

import json
import os
import shutil
import threading

import pytest

from rlhf_jax.labeling.app import create_app
from rlhf_jax.labeling.export import export
from rlhf_jax.labeling.store import LabelStore

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    if os.environ.get("RLHF_JAX_REQUIRE_BROWSER"):
        raise RuntimeError("RLHF_JAX_REQUIRE_BROWSER is set but Chromium is missing: apt-get install chromium")
    pytest.skip("no Chromium (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

ITEMS = [
    {"id": "i0", "prompt": "The film opens with", "responses": ["a dull scene.", "a wonderful scene."]},
    {"id": "i1", "prompt": "Its lead actor", "responses": ["shines brightly.", "is wooden."]},
    {"id": "i2", "prompt": "The plot", "responses": ["meanders.", "twists.", "is fine."]},
    {"id": "i3", "prompt": "Music by", "responses": ["the usual.", "nobody."]},
    {"id": "i4", "prompt": "In the end", "responses": ["it fails.", "it works."]},
    {"id": "i5", "prompt": "Credits <i>roll</i>", "responses": ["<script>window.pwned = 1</script>", "<b>bold</b> claims"]},
]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture
def server(tmp_path):
    import waitress

    store = LabelStore(str(tmp_path / "labels.sqlite"))
    store.add_items(ITEMS)
    token = store.add_annotator("alice")
    app_server = waitress.create_server(create_app(store, k=1), host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=app_server.run, daemon=True)
    thread.start()
    yield store, f"http://127.0.0.1:{app_server.effective_port}", token
    app_server.close()


def test_label_by_keyboard_and_mouse_then_export(server, tmp_path):
    store, url, token = server
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        assert page.goto(url + "/").status == 401  # no token, no page
        page.goto(f"{url}/?token={token}")
        assert "token=" not in page.url  # moved into an HttpOnly cookie

        def shown_item() -> str:
            return page.locator("input[name=item_id]").get_attribute("value")

        def act(action) -> None:
            with page.expect_navigation():
                action()

        assert shown_item() == "i0"
        act(lambda: page.keyboard.press("2"))                      # i0: keyboard, response 2 is better
        assert shown_item() == "i1"
        page.select_option("#rating-0", "5")                       # i1: mouse, ratings and a comment
        page.select_option("#rating-1", "2")
        page.fill("#comment", "great, more like this")
        act(lambda: page.click("#choose-0"))
        assert shown_item() == "i2"
        assert page.locator(".response").count() == 3
        act(lambda: page.keyboard.press("t"))                      # i2: keyboard tie
        act(lambda: page.click("#skip"))                           # i3: mouse skip
        assert shown_item() == "i4"
        act(lambda: page.keyboard.press("1"))                      # i4: a slip...
        assert shown_item() == "i5"
        act(lambda: page.keyboard.press("u"))                      # ...undone: i4 is shown again
        assert shown_item() == "i4"
        page.click("#comment")
        page.keyboard.type("too negative <b>")                     # typing in the box is not a shortcut
        page.keyboard.press("Escape")
        act(lambda: page.keyboard.press("2"))                      # i4: response 2
        assert shown_item() == "i5"
        # Hostile text is shown as text: no script ran, no element was made from it.
        assert page.evaluate("window.pwned") is None
        assert page.locator("#response-0 .text").inner_text() == "<script>window.pwned = 1</script>"
        assert page.locator("#response-1 .text b").count() == 0
        assert page.locator("#prompt").inner_text() == "Credits <i>roll</i>"
        assert page.locator("#progress").inner_text() == "you: 5 answered · 5/6 items complete"
        page.screenshot(path=str(tmp_path / "label.png"))
        browser.close()

    summary = export(store, str(tmp_path / "out"), votes="all")

    def read(name):
        with open(tmp_path / "out" / f"{name}.jsonl") as f:
            return [json.loads(line) for line in f]

    pairs = {(r["prompt"], r["chosen"], r["rejected"]) for r in read("preferences")}
    assert pairs == {("The film opens with", "a wonderful scene.", "a dull scene."),
                     ("Its lead actor", "shines brightly.", "is wooden."),
                     ("In the end", "it works.", "it fails.")}
    assert {(r["response"], r["score"]) for r in read("ratings")} == {("shines brightly.", 5.0), ("is wooden.", 2.0)}
    assert {(r["response"], r["feedback"]) for r in read("language")} == {
        ("shines brightly.", "great, more like this"), ("it works.", "too negative <b>")}
    assert summary["answers"] == 5 and summary["ties"] == 1 and summary["skips"] == 1
    assert len(store.answers(include_undone=True)) == 6  # the undone answer stays on record
