"""The labeling app in a real browser: Debian's headless Chromium driven by Playwright labels items by
keyboard and by mouse (with an undo), and the export holds exactly those answers; a login link clicked on
another site signs in; forms posted from another origin are refused; a login link planted by another
site does not switch the annotator silently."""

import http.server
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
    {
        "id": "i5",
        "prompt": "Credits <i>roll</i>",
        "responses": ["<script>window.pwned = 1</script>", "<b>bold</b> claims"],
    },
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


@pytest.fixture
def other_site():
    """Another web server on 127.0.0.1 (a chat page, or an attacker's): ``pages[path] = html`` sets what it
    serves. Reached as 127.0.0.1:PORT it is the same site as the app but another origin; as localhost:PORT
    it is another site."""
    pages: dict[str, str] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = pages.get(self.path, "not found").encode()
            self.send_response(200 if self.path in pages else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    yield pages, site.server_address[1]
    site.shutdown()


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def test_a_login_link_clicked_on_another_site_signs_in(server, other_site, browser):
    store, url, token = server
    pages, port = other_site
    pages["/chat"] = f'<p>Your labeling link: <a id="link" href="{url}/?token={token}">start labeling</a></p>'
    page = browser.new_page()
    page.goto(f"http://localhost:{port}/chat")                  # another site than 127.0.0.1
    with page.expect_navigation():
        page.click("#link")
    assert page.url == url + "/"
    assert page.locator("#annotator").inner_text() == "alice"
    assert page.locator("input[name=item_id]").get_attribute("value") == "i0"
    assert page.reload().status == 200 and page.locator("#annotator").inner_text() == "alice"


@pytest.mark.parametrize("target", ["answer", "undo"])
def test_forms_posted_from_another_origin_are_refused(server, other_site, browser, target):
    store, url, token = server
    pages, port = other_site
    page = browser.new_page()
    page.goto(f"{url}/?token={token}")
    with page.expect_navigation():
        page.keyboard.press("1")                                 # one real answer, on i0
    before = store.answers(include_undone=True)
    fields = {"answer": {"item_id": "i5", "verdict": "0", "request_id": "forged"}, "undo": {"request_id": "forged"}}
    inputs = "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in fields[target].items())
    pages["/attack"] = (f'<form id="f" method="post" action="{url}/{target}">{inputs}</form>'
                        '<script>document.getElementById("f").submit()</script>')
    with page.expect_navigation():
        page.goto(f"http://127.0.0.1:{port}/attack")             # same site, other origin: the cookie is sent
    assert page.url == f"{url}/{target}"
    assert "refused" in page.locator("#message").inner_text()
    assert store.answers(include_undone=True) == before


def test_a_login_link_planted_by_another_site_asks_before_switching(server, other_site, browser):
    store, url, token = server
    carol = store.add_annotator("carol")
    pages, port = other_site
    pages["/planted"] = f'<script>location.href = "{url}/?token={carol}"</script>'
    page = browser.new_page()
    page.goto(f"{url}/?token={token}")
    page.goto(f"http://localhost:{port}/planted")
    page.wait_for_selector("#switch")
    assert page.locator("#current").inner_text() == "alice" and page.locator("#other").inner_text() == "carol"
    page.goto(url + "/")
    assert page.locator("#annotator").inner_text() == "alice"   # nothing switched
    page.goto(f"{url}/?token={carol}")
    with page.expect_navigation():
        page.click("#switch")                                    # only the person can switch
    assert page.locator("#annotator").inner_text() == "carol"


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
        assert page.locator("#progress").inner_text() == "you: 5 answered · 4/6 items complete"  # a skip completes none
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
