"""The peers' side of bench_jax_peers.PeerProcess: one JSON request per stdin line -> the peer's method of the
request's "op" -> one JSON answer per stdout line ({"error": ...} where the method raised)."""

import json
import sys
import time


def serve(peer) -> None:
    """Answer requests until stdin closes."""
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = getattr(peer, request["op"])(request)
        except Exception as error:  # the bench reports it
            answer = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(answer), flush=True)


class TimedSampler:
    """A peer's "sample" request: R timed calls of the sampler its "sampler" request built (``self.call``)."""

    call = None

    def sample(self, request):
        seconds = []
        for _ in range(request["repeats"]):
            start = time.perf_counter()
            self.call()
            seconds.append(time.perf_counter() - start)
        return {"seconds": seconds}


def versions(peer_package: str) -> dict:
    """The installed versions of jax, jaxlib, flax and the peer's own package."""
    import importlib.metadata as md

    return {name: md.version(name) for name in ("jax", "jaxlib", "flax", peer_package)}
