"""The peers' side of bench_jax_peers.PeerProcess: one JSON request per stdin line -> the peer's method of the
request's "op" -> one JSON answer per stdout line ({"error": ...} where the method raised)."""

import json
import sys


def serve(peer) -> None:
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = getattr(peer, request["op"])(request)
        except Exception as error:  # the bench reports it
            answer = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(answer), flush=True)
