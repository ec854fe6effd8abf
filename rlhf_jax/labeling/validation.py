"""What the label store accepts: the error it raises (with the HTTP status the app answers with), and
the checks of names, text fields and answers, each naming the field at fault."""

from __future__ import annotations

import hashlib

VERDICTS = ("choice", "tie", "skip")
MAX_COMMENT_CHARS = 2000
MAX_ID_CHARS = 128  # request ids
MAX_ITEM_ID_CHARS = 8 * MAX_ID_CHARS
RATING_RANGE = (1, 7)


class LabelError(ValueError):
    """A request, file or argument the store refuses; ``status`` is the HTTP status the app answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_text(field: str, value, max_chars: int, status_if_long: int = 400) -> str:
    """``value`` if it is a string of at most ``max_chars`` that SQLite can store (UTF-8: no lone
    surrogates), else LabelError naming ``field``."""
    if not isinstance(value, str):
        raise LabelError(f"{field}: a string is required, got {type(value).__name__}")
    if len(value) > max_chars:
        raise LabelError(f"{field}: {len(value)} characters, at most {max_chars} allowed", status_if_long)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise LabelError(f"{field}: not valid text (a lone surrogate such as \\ud800)") from None
    return value


def check_request_id(request_id) -> str:
    """A client request id: a non-empty string of at most MAX_ID_CHARS, else LabelError."""
    check_text("request_id", request_id, MAX_ID_CHARS)
    if not request_id:
        raise LabelError(f"request_id: a non-empty string of at most {MAX_ID_CHARS} characters is required")
    return request_id


def check_annotator_name(name: str) -> str:
    letters = name.replace("-", "").replace("_", "")
    if not name or len(name) > 64 or not (letters.isascii() and letters.isalnum()):
        raise LabelError(f"annotator name {name!r}: use 1-64 letters, digits, '-' or '_'")
    return name


def validate_answer(verdict: str, choice, ratings, comment, n_responses: int):
    """The answer in canonical form, or LabelError naming the bad field."""
    if verdict not in VERDICTS:
        raise LabelError(f"verdict: {verdict!r} is not one of {VERDICTS}")
    if verdict == "choice":
        if not isinstance(choice, int) or isinstance(choice, bool) or not 0 <= choice < n_responses:
            raise LabelError(f"choice: must be a response index in [0, {n_responses}), got {choice!r}")
    else:
        choice = None
    ratings = list(ratings or [])
    if len(ratings) not in (0, n_responses):
        raise LabelError(f"ratings: give none or one per response ({n_responses}), got {len(ratings)}")
    lo, hi = RATING_RANGE
    for rating in ratings:
        if rating is not None and (not isinstance(rating, int) or isinstance(rating, bool) or not lo <= rating <= hi):
            raise LabelError(f"ratings: each must be an integer {lo}-{hi} or null, got {rating!r}")
    comment = check_text("comment", comment, MAX_COMMENT_CHARS, status_if_long=413)
    return verdict, choice, ratings, comment.strip()
