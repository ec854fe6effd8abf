"""The peers' side of bench_jax_peers.PeerProcess: one JSON request per stdin line -> the peer's method of the
request's "op" -> one JSON answer per stdout line ({"error": ...} where the method raised). The op "profile"
runs its request's "inner" request under ``jax.profiler`` (experiments/profile_step.py --peer)."""

import json
import sys
import time


def serve(peer) -> None:
    """Answer requests until stdin closes."""
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = profiled(peer, request) if request["op"] == "profile" else getattr(peer, request["op"])(request)
        except Exception as error:  # the bench reports it
            answer = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(answer), flush=True)


def profiled(peer, request) -> dict:
    """The answer to ``request["inner"]``, run under a ``jax.profiler`` trace written to ``request["trace_dir"]``
    (Perfetto JSON too), with the wall seconds it took under the profiler."""
    import jax

    with jax.profiler.trace(request["trace_dir"], create_perfetto_trace=True):
        start = time.perf_counter()
        answer = getattr(peer, request["inner"]["op"])(request["inner"])
        seconds = time.perf_counter() - start
    return {**answer, "profiled_seconds": seconds}


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
