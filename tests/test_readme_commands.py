"""Every `rlhf-jax ...` command in README.md and docs/ parses with the CLI's own parser, and every
config it names resolves with its overrides: the documentation cannot drift from the CLI.

Commands are read from indented code lines (a line, or a segment after `&&`, that starts with
`rlhf-jax`, optionally behind environment assignments, `/usr/bin/time` or a path such as
`.venv/bin/`; a trailing `\\` joins the next line) and from inline code spans. `[...]` marks optional
arguments: kept, unless they hold `...` or a `|` choice. `$VAR` stands for a number (a rank); a
command inside a wrapper's quotes (`ssh --command='...'`, `srun bash -c '...'`) ends at its quote.
"""

import glob
import os
import re
import shlex

import pytest

from rlhf_jax import cli
from rlhf_jax.config import load_config, load_run_config

ROOT = os.path.join(os.path.dirname(__file__), "..")
DOCS = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
_START = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(?:/usr/bin/time\s+(?:-v\s+)?)?(?:\S*/)?rlhf-jax\s+(.*)$")


def _optional(match: re.Match) -> str:
    inner = match.group(1)
    return "" if "..." in inner or "|" in inner else inner


def _clean(command: str) -> str:
    command = command.split("  #")[0].split(" # ")[0].strip()
    if command.count("'") % 2:  # the closing quote of a wrapper (ssh --command='...', bash -c '...')
        command = command[:command.rindex("'")]
    command = re.sub(r"\[([^\[\]]*)\]", _optional, command)
    return re.sub(r"\$[A-Z_]+", "0", command).strip()


def documented_commands() -> list[tuple[str, str]]:
    """(where, the command after `rlhf-jax`) for every command in the documentation."""
    found = []
    for path in DOCS:
        name = os.path.relpath(path, ROOT)
        text = open(path, encoding="utf-8").read()
        lines = text.splitlines()
        i = 0
        while i < len(lines):
            line, number = lines[i], i + 1
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            i += 1
            if not line.startswith("    "):
                continue
            for segment in line.split("&&"):
                match = _START.match(segment.strip())
                if match:
                    found.append((f"{name}:{number}", _clean(match.group(1))))
        for span in re.finditer(r"`([^`\n]*(?:\n[^`\n]*)?)`", text):
            match = _START.match(" ".join(span.group(1).split()))
            if match:
                number = text.count("\n", 0, span.start()) + 1
                found.append((f"{name}:{number} (inline)", _clean(match.group(1))))
    return found


COMMANDS = documented_commands()


def test_the_documentation_has_commands():
    where = {w.split(":")[0] for w, _ in COMMANDS}
    assert "README.md" in where and len(COMMANDS) >= 20, COMMANDS


def _parse(argv: list[str]):
    args, unknown = cli.build_parser().parse_known_args(argv)
    overrides = [u for u in unknown if u.startswith("--config.")]
    rest = [u for u in unknown if not u.startswith("--config.")]
    assert not rest, f"unrecognised arguments {rest}"
    return args, overrides


@pytest.mark.parametrize("where,command", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_parses_and_its_config_resolves(where, command):
    argv = shlex.split(command)
    subcommands = {a.dest: a for a in cli.build_parser()._subparsers._group_actions}["command"].choices
    words = [w for w in argv if not w.startswith("-")]
    if len(argv) == len(words) and len(words) <= 2:  # prose naming a command: `rlhf-jax plan`, `rlhf-jax assets list`
        assert words[0] in subcommands, f"{where}: no command {words[0]!r}"
        return
    try:
        args, overrides = _parse(argv)
        if args.command == "launch":
            launched = [w for w in args.launched if w != "--"]
            assert launched, f"{where}: launch without a command"
            args, overrides = _parse(launched)
    except SystemExit as exit_:
        pytest.fail(f"{where}: `rlhf-jax {command}` does not parse (exit {exit_.code})")
    config = getattr(args, "config", None)
    if config is not None:
        (load_run_config if args.command == "run" else load_config)(os.path.join(ROOT, config), overrides)


def test_ci_runs_the_readmes_test_command_verbatim():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read().splitlines()
    start = next(i for i, line in enumerate(readme) if line.startswith("Tests ("))
    command = next(line.strip() for line in readme[start:] if line.startswith("    "))
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read().splitlines()
    assert command in ci, f"README's test command is not a line of .ci/run: {command}"


@pytest.mark.slow
def test_the_readmes_code_example_runs(capsys):
    """The README's Python example, as written: SmolLM2's loss and gradient on two reviews."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(blocks) == 1
    namespace = {"__name__": "readme_example"}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert "perplexity" in capsys.readouterr().out
    import jax
    import numpy as np

    loss, grads = float(namespace["loss"]), jax.tree.leaves(namespace["grads"])
    assert 0 < loss < np.log(namespace["model"].config.vocab_size), loss  # better than uniform, not zero
    assert all(np.isfinite(g).all() for g in grads) and any(np.abs(g).max() > 0 for g in grads)
