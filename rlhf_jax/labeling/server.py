"""``rlhf-jax label serve``: check everything, bind the port, and only then touch the database.

The order matters. Arguments, annotator tokens, the token file and the queues are checked first; then the
port is bound (a port in use stops here, the database untouched and the running server's annotators
still signed in); then the database is opened (checked read-only first), the queues imported, the
annotators registered (one transaction) and the token file written; then waitress serves, refusing
bodies over the app's limit before reading them.

Tokens. An annotator already in the database keeps their token across restarts (only its digest is
stored, so its link can be printed again only from ``--token-file`` or ``NAME=TOKEN``);
``--rotate-tokens`` issues new ones. A new annotator gets the token from the token file if it has one,
else a random one.
"""

from __future__ import annotations

import json
import os
import socket

from rlhf_jax.files import write_json
from rlhf_jax.labeling.app import MAX_REQUEST_BYTES, create_app
from rlhf_jax.labeling.store import LabelStore
from rlhf_jax.labeling.validation import LabelError, check_annotator_name

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def parse_annotators(specs: list[str]) -> dict[str, str | None]:
    """``NAME`` or ``NAME=TOKEN`` specs -> {name: token or None}; a name twice or one token for two names
    is refused."""
    wanted: dict[str, str | None] = {}
    for spec in specs:
        name, has_token, token = spec.partition("=")
        check_annotator_name(name)
        if name in wanted:
            raise LabelError(f"--annotator {name}: given twice")
        if has_token and not token:
            raise LabelError(f"--annotator {name}=: the token is empty")
        for other, other_token in wanted.items():
            if token and token == other_token:
                raise LabelError(f"--annotator {other} and {name}: the same token; give each its own")
        wanted[name] = token or None
    return wanted


def read_token_file(path: str | None) -> dict[str, str]:
    """{name: token} from a token file this command wrote before; {} when there is none yet."""
    if not path or not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            tokens = json.load(f)
    except (OSError, ValueError) as error:
        raise LabelError(f"--token-file {path}: not readable as JSON ({error})") from None
    if not isinstance(tokens, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tokens.items()):
        raise LabelError(f"--token-file {path}: expected a JSON object of annotator name -> token")
    return tokens


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), or LabelError saying why not (the port in use, a bad address)."""
    if not 0 <= port <= 65535:
        raise LabelError(f"--port {port}: must be 0-65535 (0: any free port)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as error:
        raise LabelError(f"--host {host}: cannot listen there ({error})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise LabelError(f"cannot listen on {host}:{port} ({error.strerror or error}); is another server using "
                         "it? Pick another --port") from None
    return sock


def serve(db_path: str, queue_paths: list[str], annotators: list[str], host: str = "127.0.0.1", port: int = 8765,
          k: int = 1, threads: int = 8, token_file: str | None = None, rotate_tokens: bool = False) -> None:
    """Check, bind, open the store, import the queue(s), register the annotators, print their links, serve."""
    import waitress

    from rlhf_jax.labeling.queue import read_queue

    if k < 1:
        raise LabelError(f"--labels-per-item must be >= 1, got {k}")
    if not 1 <= threads <= 1024:
        raise LabelError(f"--threads {threads}: must be 1-1024")
    wanted = parse_annotators(annotators)
    known = read_token_file(token_file)
    queues = {path: read_queue(path) for path in queue_paths}
    sock = bind(host, port)
    try:
        store = LabelStore(db_path)
        for path, items in queues.items():
            print(f"{path}: {store.add_items(items)} new items")
        if rotate_tokens and not wanted:  # rotate everyone's
            wanted = dict.fromkeys(store.annotators())
        tokens = store.register_annotators(wanted, rotate=rotate_tokens, known=known)
        links = {name: token for name, token in known.items() if store.authenticate(token) == name}
        links.update({name: token for name, token in tokens.items() if token is not None})
        if token_file:
            write_json(token_file, links, mode=0o600)
        port = sock.getsockname()[1]
        for name in store.annotators():
            if name in links:
                print(f"{name}: http://{host}:{port}/?token={links[name]}")
            elif name in tokens:
                print(f"{name}: token unchanged (its link is not known here: pass --token-file, {name}=TOKEN, "
                      "or --rotate-tokens for a new one)")
        if host not in LOOPBACK:
            print(f"warning: listening on {host}, reachable beyond this machine; tokens travel in clear over plain "
                  "HTTP (put TLS in front)")
        server = waitress.create_server(create_app(store, k=k), sockets=[sock], threads=threads, ident="rlhf_jax",
                                        max_request_body_size=MAX_REQUEST_BYTES + 1)  # waitress refuses >= this
    except BaseException:
        sock.close()
        raise
    print(f"serving {db_path} on http://{host}:{port} ({k} annotator(s) per item, "
          f"{len(store.annotators())} annotator(s))", flush=True)
    server.run()
