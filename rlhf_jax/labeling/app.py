"""The labeling web app: Flask, server-rendered HTML, a little JavaScript for keyboard shortcuts.

Pages (a browser, authenticated by a cookie set from the ``?token=`` link printed at start-up):

  GET  /                 the next item: prompt, responses side by side, choose / tie / skip,
                         optional 1-7 ratings and a comment; progress and agreement on top
  POST /answer           record the answer (committed before the 303 that moves the page on)
  POST /undo             withdraw the last answer and show its item again

JSON API (``Authorization: Bearer TOKEN``), for scripts and the load test:

  GET  /api/next         {"item": {...}} or {"item": null}
  POST /api/answers      {"request_id", "item_id", "verdict", "choice"?, "ratings"?, "comment"?}
                         -> 201 {"answer_id"} (new) or 200 (a retry of a request already recorded)
  POST /api/undo         {"item_id"} or {"item_id": null}
  GET  /api/progress     counts and agreement
  GET  /healthz          no token needed

Every response carries a strict Content-Security-Policy (no inline script), so even text that slipped
past Jinja's autoescaping could not run; bodies over ``max_request_bytes`` get 413.
"""

from __future__ import annotations

import uuid

from flask import Flask, Response, g, jsonify, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from rlhf_jax.labeling.store import MAX_COMMENT_CHARS, LabelError, LabelStore

COOKIE = "rlhf_label_token"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the login link carries a token
    "Cache-Control": "no-store",
}


def create_app(store: LabelStore, k: int = 1, max_request_bytes: int = 16 * 1024) -> Flask:
    """The app over ``store``; each item is labelled by up to ``k`` annotators."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_request_bytes

    def is_api() -> bool:
        return request.path.startswith("/api/")

    def fail(message: str, status: int):
        if is_api():
            return jsonify({"error": message}), status
        return render_template("message.html", message=message), status

    @app.before_request
    def authenticate():
        if request.endpoint in ("static", "healthz"):
            return None
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else request.args.get("token") or request.cookies.get(COOKIE)
        annotator = store.authenticate(token)
        if annotator is None:
            return fail("a valid annotator token is required: open the link printed by 'rlhf-jax label serve'", 401)
        g.annotator = annotator
        if "token" in request.args:  # move the token from the URL into an HttpOnly cookie
            response = redirect(url_for("page", **{k: v for k, v in request.args.items() if k != "token"}), 303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
            return response
        return None

    @app.after_request
    def secure(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.errorhandler(LabelError)
    def label_error(error: LabelError):
        return fail(str(error), error.status)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        if error.code == 413:
            return fail(f"request body too large: at most {max_request_bytes} bytes", 413)
        return fail(f"{error.name}: {error.description}", error.code or 500)

    @app.get("/healthz")
    def healthz():
        return "ok"

    @app.get("/")
    def page():
        annotator = g.annotator
        item = store.next_item(annotator, k, prefer=request.args.get("item"))
        return render_template("label.html", annotator=annotator, item=item, progress=store.progress(annotator, k),
                               request_id=uuid.uuid4().hex, max_comment=MAX_COMMENT_CHARS)

    @app.post("/answer")
    def answer_form():
        form = request.form
        verdict = form.get("verdict", "")
        choice = int(verdict) if verdict.isdigit() else None
        ratings = []
        for key in sorted((k for k in form if k.startswith("rating_")), key=lambda k: int(k[7:]) if k[7:].isdigit() else -1):
            value = form[key]
            if value and not value.isdigit():
                raise LabelError(f"{key}: {value!r} is not a rating 1-7")
            ratings.append(int(value) if value else None)
        if all(r is None for r in ratings):
            ratings = []
        store.submit(g.annotator, form.get("request_id", ""), form.get("item_id", ""),
                     "choice" if choice is not None else verdict, choice, ratings, form.get("comment", ""), k=k)
        return redirect(url_for("page"), 303)

    @app.post("/undo")
    def undo_form():
        item_id = store.undo_last(g.annotator)
        return redirect(url_for("page", item=item_id) if item_id else url_for("page"), 303)

    @app.get("/api/next")
    def api_next():
        return jsonify({"item": store.next_item(g.annotator, k)})

    @app.post("/api/answers")
    def api_answer():
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise LabelError("the body must be a JSON object (Content-Type: application/json)")
        unknown = sorted(set(body) - {"request_id", "item_id", "verdict", "choice", "ratings", "comment"})
        if unknown:
            raise LabelError(f"unknown field(s) {unknown}")
        if not isinstance(body.get("ratings", []), list):
            raise LabelError("ratings: must be a list")
        answer_id, new = store.submit(g.annotator, _text(body, "request_id"), _text(body, "item_id"),
                                      _text(body, "verdict"), body.get("choice"), body.get("ratings", []),
                                      body.get("comment", ""), k=k)
        return jsonify({"answer_id": answer_id, "new": new}), 201 if new else 200

    @app.post("/api/undo")
    def api_undo():
        return jsonify({"item_id": store.undo_last(g.annotator)})

    @app.get("/api/progress")
    def api_progress():
        return jsonify(store.progress(g.annotator, k))

    return app


def _text(body: dict, field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str):
        raise LabelError(f"{field}: a string is required, got {type(value).__name__}")
    return value


def serve(db_path: str, queue_paths: list[str], annotators: list[str], host: str = "127.0.0.1", port: int = 8765,
          k: int = 1, threads: int = 8, token_file: str | None = None) -> None:
    """Open (or create) the store, import the queue(s), register the annotators, print their links, serve."""
    import json
    import os

    import waitress

    from rlhf_jax.labeling.queue import read_queue

    queues = {path: read_queue(path) for path in queue_paths}  # a bad queue stops us before the db is touched
    store = LabelStore(db_path)
    for path, items in queues.items():
        print(f"{path}: {store.add_items(items)} new items")
    tokens = {}
    for spec in annotators:
        name, _, token = spec.partition("=")
        tokens[name] = store.add_annotator(name, token or None)
    if token_file:
        with open(os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            json.dump(tokens, f)
    for name, token in tokens.items():
        print(f"{name}: http://{host}:{port}/?token={token}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {host}, reachable beyond this machine; tokens travel in clear over plain HTTP")
    print(f"serving {db_path} on http://{host}:{port} ({k} annotator(s) per item)", flush=True)
    waitress.serve(create_app(store, k=k), host=host, port=port, threads=threads, ident="rlhf_jax")
