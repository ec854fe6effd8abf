"""The labeling web app: Flask, server-rendered HTML, a little JavaScript for keyboard shortcuts.

Pages (a browser, signed in by a cookie set from the ``?token=`` link printed at start-up):

  GET  /?token=TOKEN     sign in: the token moves into a cookie and the page reloads without it; if this
                         browser is signed in as someone else, it asks before switching
  GET  /                 the next item: prompt, responses side by side, choose / tie / skip,
                         optional 1-7 ratings and a comment; progress and agreement on top
  POST /answer           record the answer (committed before the 303 that moves the page on)
  POST /undo             withdraw the last answer and show its item again
  POST /login            switch this browser to another annotator's token (from the confirmation page)
  POST /logout           forget the cookie

JSON API (``Authorization: Bearer TOKEN`` only; the cookie is not accepted there), for scripts:

  GET  /api/next         {"item": {...}} or {"item": null}
  POST /api/answers      {"request_id", "item_id", "verdict", "choice"?, "ratings"?, "comment"?}
                         -> 201 {"answer_id"} (new) or 200 (a retry of a request already recorded)
  POST /api/undo         {"request_id", "item_id"?}: the answer on item_id (default: the latest);
                         a retry with the same request_id undoes nothing more
  GET  /api/progress     counts and agreement
  GET  /healthz          no token needed

Security model. A token is the annotator: whoever holds it reads the queue and answers as that
annotator, nothing more (no admin pages, no other annotators' answers). The cookie is HttpOnly,
SameSite=Lax (so a login link clicked in a chat or webmail page works) and lasts ``SESSION_SECONDS``.
Every state-changing request signed in by the cookie must come from this origin (``Sec-Fetch-Site`` /
``Origin``) and carry the form's CSRF token (an HMAC of the session token), else 403: a page on
another port of the same host cannot answer or undo for you. Every response carries a strict
Content-Security-Policy (no inline script) on top of Jinja's escaping; bodies over
``max_request_bytes`` get 413 (and the server refuses them before reading them). Plain HTTP: beyond
localhost, tokens and answers cross the network in clear, so put TLS in front.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid

from flask import Flask, Response, g, jsonify, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from rlhf_jax.labeling.store import LabelStore
from rlhf_jax.labeling.validation import MAX_COMMENT_CHARS, LabelError, check_text

COOKIE = "rlhf_label_token"
INVALID_LINK = "this login link is not valid (any more): ask for a new one"
SESSION_SECONDS = 14 * 24 * 3600  # how long a browser stays signed in
MAX_REQUEST_BYTES = 16 * 1024
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the login link carries a token
    "Cache-Control": "no-store",
}
_SMALL_INT = re.compile(r"[0-9]{1,4}")  # ASCII digits only: "²".isdigit() is True, int("²") fails


def csrf_token(session_token: str) -> str:
    """The CSRF token of a session: an HMAC of its (secret, HttpOnly) token, so a page of another origin,
    which cannot read the cookie, cannot forge it; stateless, so it survives a server restart."""
    return hmac.new(session_token.encode("utf-8"), b"rlhf_jax labeling csrf", hashlib.sha256).hexdigest()


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (the scheme is case-insensitive, RFC 7235)."""
    scheme, _, value = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def create_app(store: LabelStore, k: int = 1, max_request_bytes: int = MAX_REQUEST_BYTES) -> Flask:
    """The app over ``store``; each item is labelled by up to ``k`` annotators."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_request_bytes

    def is_api() -> bool:
        return request.path.startswith("/api/")

    def fail(message: str, status: int):
        if is_api():
            return jsonify({"error": message}), status
        return render_template("message.html", message=message), status

    def sign_in(token: str, response: Response) -> Response:
        response.set_cookie(COOKIE, token, max_age=SESSION_SECONDS, httponly=True, samesite="Lax",
                            secure=request.is_secure)
        return response

    def login_link(token: str):
        """GET /?token=: sign in, unless this browser is signed in as someone else (then ask: a page of
        another site must not switch the annotator silently)."""
        annotator = store.authenticate(token)
        if annotator is None:
            return fail(INVALID_LINK, 401)
        current_token = request.cookies.get(COOKIE)
        current = store.authenticate(current_token)
        if current is not None and current != annotator:
            return render_template("switch.html", current=current, annotator=annotator, token=token,
                                   csrf_token=csrf_token(current_token))
        rest = {key: value for key, value in request.args.items() if key != "token"}
        return sign_in(token, redirect(url_for("page", **rest), 303))

    def cross_origin_refusal() -> str | None:
        """Why a state-changing request signed in by the cookie is refused as cross-origin, or None."""
        site = request.headers.get("Sec-Fetch-Site")  # set by the browser, cannot be forged by a page
        origin = request.headers.get("Origin")  # "null" under our no-referrer policy, so only a fallback
        if site is not None and site not in ("same-origin", "none"):
            return f"refused: this request came from another site or origin (Sec-Fetch-Site: {site})"
        if site is None and origin not in (None, "null", f"{request.scheme}://{request.host}"):
            return f"refused: this request came from another origin ({origin})"
        sent = request.form.get("csrf_token", "")
        if not hmac.compare_digest(sent.encode("utf-8", "replace"), csrf_token(g.token).encode()):
            return "csrf_token: missing or wrong; reload the page and try again"
        return None

    @app.before_request
    def authenticate():
        if request.endpoint in ("static", "healthz"):
            return None
        token = bearer_token(request.headers.get("Authorization"))
        by_cookie = token is None
        if by_cookie and is_api():
            return fail("the API needs an 'Authorization: Bearer TOKEN' header", 401)
        if by_cookie and request.method == "GET" and "token" in request.args:
            return login_link(request.args["token"])
        if by_cookie:
            token = request.cookies.get(COOKIE)
        annotator = store.authenticate(token)
        if annotator is None:
            return fail("a valid annotator token is required: open the link printed by 'rlhf-jax label serve'", 401)
        g.annotator, g.token = annotator, token
        if by_cookie and request.method not in SAFE_METHODS:
            refusal = cross_origin_refusal()
            if refusal:
                return fail(refusal, 403)
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
        body, status = fail(f"{error.name}: {error.description}", error.code or 500)
        response = app.make_response((body, status))
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.get("/healthz")
    def healthz():
        return "ok"

    @app.get("/")
    def page():
        annotator = g.annotator
        item = store.next_item(annotator, k, prefer=request.args.get("item"))
        return render_template("label.html", annotator=annotator, item=item, progress=store.progress(annotator, k),
                               request_id=uuid.uuid4().hex, undo_request_id=uuid.uuid4().hex,
                               csrf_token=csrf_token(g.token), max_comment=MAX_COMMENT_CHARS)

    @app.post("/answer")
    def answer_form():
        verdict, choice, ratings = _form_answer(request.form)
        store.submit(g.annotator, request.form.get("request_id", ""), request.form.get("item_id", ""),
                     verdict, choice, ratings, request.form.get("comment", ""), k=k)
        return redirect(url_for("page"), 303)

    @app.post("/undo")
    def undo_form():
        item_id = store.undo(g.annotator, request.form.get("request_id", ""))
        return redirect(url_for("page", item=item_id) if item_id else url_for("page"), 303)

    @app.post("/login")
    def login_form():
        token = request.form.get("token", "")
        if store.authenticate(token) is None:
            return fail(INVALID_LINK, 401)
        return sign_in(token, redirect(url_for("page"), 303))

    @app.post("/logout")
    def logout_form():
        response = app.make_response(render_template(
            "message.html", message=f"Signed out ({g.annotator}). Open your login link to sign in again."))
        response.delete_cookie(COOKIE, httponly=True, samesite="Lax")
        return response

    @app.get("/api/next")
    def api_next():
        return jsonify({"item": store.next_item(g.annotator, k)})

    @app.post("/api/answers")
    def api_answer():
        body = _json_object({"request_id", "item_id", "verdict", "choice", "ratings", "comment"})
        if not isinstance(body.get("ratings", []), list):
            raise LabelError("ratings: must be a list")
        answer_id, new = store.submit(g.annotator, _text(body, "request_id"), _text(body, "item_id"),
                                      _text(body, "verdict"), body.get("choice"), body.get("ratings", []),
                                      body.get("comment", ""), k=k)
        return jsonify({"answer_id": answer_id, "new": new}), 201 if new else 200

    @app.post("/api/undo")
    def api_undo():
        body = _json_object({"request_id", "item_id"})
        item_id = None if body.get("item_id") is None else _text(body, "item_id")
        return jsonify({"item_id": store.undo(g.annotator, _text(body, "request_id"), item_id)})

    @app.get("/api/progress")
    def api_progress():
        return jsonify(store.progress(g.annotator, k))

    return app


def _json_object(fields: set[str]) -> dict:
    """The request's JSON object body with only ``fields``, else LabelError (400) saying what is wrong."""
    if not request.is_json:
        raise LabelError("the body must be a JSON object (Content-Type: application/json)")
    try:
        body = json.loads(request.get_data())
    except RecursionError:
        raise LabelError("body: JSON nested too deeply") from None
    except ValueError as error:  # includes bad UTF-8 and integers of more than 4,300 digits
        raise LabelError(f"body: not valid JSON ({str(error)[:200]})") from None
    if not isinstance(body, dict):
        raise LabelError("the body must be a JSON object (Content-Type: application/json)")
    unknown = sorted(set(body) - fields)
    if unknown:
        raise LabelError(f"unknown field(s) {unknown}")
    return body


def _text(body: dict, field: str) -> str:
    return check_text(field, body.get(field), 100_000)


def _small_int(field: str, text: str) -> int:
    if not _SMALL_INT.fullmatch(text):
        raise LabelError(f"{field}: {text[:20]!r} is not a number 0-9999")
    return int(text)


def _form_answer(form) -> tuple[str, int | None, list[int | None]]:
    """(verdict, choice, ratings) of the labeling form: ``verdict`` is a response index, 'tie' or 'skip';
    ``rating_J`` is response J's rating or empty."""
    verdict = form.get("verdict", "")
    choice = None
    if verdict not in ("tie", "skip"):
        choice, verdict = _small_int("verdict", verdict), "choice"
    given = {_small_int(key, key[len("rating_"):]): (_small_int(key, value) if value else None)
             for key, value in form.items() if key.startswith("rating_")}
    ratings = [given.get(j) for j in range(max(given) + 1)] if given else []
    return verdict, choice, ratings if any(r is not None for r in ratings) else []
