"""The ``rlhf-jax label`` commands: serve a labeling queue to annotators, export their answers as the
project's feedback rows (``--format``: JSONL, or trl's forms as Parquet or an Arrow directory)."""

from __future__ import annotations

import os


def _serve(args) -> int:
    from rlhf_jax.labeling.server import serve

    serve(args.db, args.queue, args.annotator, host=args.host, port=args.port, k=args.labels_per_item,
          threads=args.threads, token_file=args.token_file, rotate_tokens=args.rotate_tokens)
    return 0


def _export(args) -> int:
    from rlhf_jax.labeling.export import export
    from rlhf_jax.labeling.store import LabelStore

    if not os.path.isfile(args.db):
        raise FileNotFoundError(f"--db {args.db}: no such file")
    summary = export(LabelStore(args.db), args.out, votes=args.votes, file_format=args.format)
    agreement = summary["agreement"]
    print(f"{summary['answers']} answers on {summary['items_answered']} items -> {summary['rows']} rows in {args.out}; "
          f"pairwise agreement {agreement['pairwise_agreement']} (Fleiss' kappa {agreement['fleiss_kappa']}) over "
          f"{agreement['items']} items with 2+ votes")
    return 0


def add(commands) -> None:
    """Register ``label serve`` and ``label export`` on the command line's subparsers."""
    label = commands.add_parser("label", help="the labeling web app for human feedback, and its export")
    label_sub = label.add_subparsers(dest="label_command", required=True)
    serve = label_sub.add_parser("serve", help="serve a labeling queue to named, token-authenticated annotators")
    serve.add_argument("--db", required=True, help="SQLite file (created if missing; WAL)")
    serve.add_argument("--queue", action="append", default=[], help="queue or preference JSONL to import (repeatable)")
    serve.add_argument("--annotator", action="append", default=[], metavar="NAME[=TOKEN]",
                       help="an annotator (repeatable); without =TOKEN an existing one keeps its token, a new one "
                            "gets a random one")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--labels-per-item", type=int, default=1, help="k: annotators per item")
    serve.add_argument("--threads", type=int, default=8)
    serve.add_argument("--token-file", default=None,
                       help="{name: token} JSON (mode 600): read for the links of existing annotators, then rewritten")
    serve.add_argument("--rotate-tokens", action="store_true",
                       help="new tokens for the named annotators (all, if none is named): old links stop working")
    serve.set_defaults(run=_serve)
    export = label_sub.add_parser("export", help="write preference / rating / language rows and an agreement summary")
    export.add_argument("--db", required=True)
    export.add_argument("--out", required=True, help="directory")
    export.add_argument("--votes", default="majority", choices=["majority", "all"])
    export.add_argument("--format", default="jsonl", choices=["jsonl", "parquet", "arrow"],
                        help="jsonl: the project's rows; parquet / arrow: trl's standard form (rlhf_jax.data.formats)")
    export.set_defaults(run=_export)

