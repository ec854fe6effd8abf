"""Frozen, validated configuration dataclasses.

Experiment configs are ml_collections ``ConfigDict`` files (``configs/*.py``); where they meet the
code they become these frozen dataclasses, so a bad value fails at start with a message that names
the field instead of deep inside a jitted function.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

FAMILIES = ("gpt2", "llama", "bert")
HEADS = ("causal_lm", "masked_lm", "classification", "scalar")
POOLINGS = ("cls", "mean", "last", "none")
DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the field."""


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config field '{field}': {message}")


def _require_positive_ints(config, names: tuple[str, ...], prefix: str = "") -> None:
    for name in names:
        value = getattr(config, name)
        _require(isinstance(value, int) and not isinstance(value, bool) and value > 0, prefix + name,
                 f"must be a positive integer, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One transformer, three families, four heads.

    family: 'gpt2' (learned positions, pre-LayerNorm, GELU MLP), 'llama' (RoPE, RMSNorm, SwiGLU,
      grouped-query attention) or 'bert' (bidirectional, token types, post-LayerNorm).
    head: 'causal_lm', 'masked_lm' (BERT transform + decoder tied to the embedding),
      'classification' (num_labels logits from a pooled state) or 'scalar' (one score: reward/value).
    pooling: how classification/scalar heads read the sequence: 'cls' (BERT pooler on the first
      token), 'mean' (masked mean of the real tokens: how sentence encoders such as all-MiniLM
      were trained), 'last' (last non-pad token, for causal trunks) or 'none' (a score per token,
      e.g. a PPO value head). None picks 'cls' for bert and 'last' otherwise.
    """

    family: str
    head: str = "causal_lm"
    vocab_size: int = 256
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int | None = None  # None: same as num_heads (no grouped-query attention)
    head_dim: int | None = None  # None: hidden_size // num_heads
    intermediate_size: int = 256
    max_position_embeddings: int = 512
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    type_vocab_size: int = 2  # bert only
    hidden_act: str | None = None  # None: the family's own (gelu_new, silu, gelu)
    attention_bias: bool | None = None  # None: True for gpt2/bert, False for llama
    num_labels: int = 2
    pooling: str | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    dtype: str = "float32"  # computation dtype
    param_dtype: str = "float32"

    def __post_init__(self):
        _require(self.family in FAMILIES, "family", f"{self.family!r} is not one of {FAMILIES}")
        _require(self.head in HEADS, "head", f"{self.head!r} is not one of {HEADS}")
        if self.head == "causal_lm":
            _require(self.is_causal, "head", f"'causal_lm' needs a causal family, not {self.family!r}")
        if self.head == "masked_lm":
            _require(not self.is_causal, "head", f"'masked_lm' needs the bidirectional 'bert' family, not {self.family!r}")
        _require_positive_ints(self, ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                                      "max_position_embeddings", "num_labels"))
        _require(self.head_dim is not None or self.hidden_size % self.num_heads == 0, "num_heads",
                 f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        _require(self.num_heads % self.kv_heads == 0, "num_kv_heads",
                 f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.kv_heads}")
        _require(self.kv_heads == self.num_heads or self.family == "llama", "num_kv_heads",
                 "grouped-query attention is only supported for the 'llama' family")
        _require(self.pooling is None or self.pooling in POOLINGS, "pooling", f"{self.pooling!r} is not one of {POOLINGS}")
        _require(self.pooled_by != "cls" or self.family == "bert", "pooling", "'cls' pooling needs the 'bert' family")
        _require(self.dtype in DTYPES, "dtype", f"{self.dtype!r} is not one of {DTYPES}")
        _require(self.param_dtype in DTYPES, "param_dtype", f"{self.param_dtype!r} is not one of {DTYPES}")
        _require(self.norm_eps > 0, "norm_eps", f"must be positive, got {self.norm_eps}")
        _require(self.activation in ("gelu_new", "gelu", "silu", "relu"), "hidden_act",
                 f"{self.activation!r} is not supported")

    # Derived properties: the family decides the architecture switches.
    @property
    def is_causal(self) -> bool:
        return self.family in ("gpt2", "llama")

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def uses_rope(self) -> bool:
        return self.family == "llama"

    @property
    def uses_rmsnorm(self) -> bool:
        return self.family == "llama"

    @property
    def post_norm(self) -> bool:
        return self.family == "bert"

    @property
    def gated_mlp(self) -> bool:
        return self.family == "llama"

    @property
    def activation(self) -> str:
        return self.hidden_act or {"gpt2": "gelu_new", "llama": "silu", "bert": "gelu"}[self.family]

    @property
    def use_attention_bias(self) -> bool:
        return self.attention_bias if self.attention_bias is not None else self.family != "llama"

    @property
    def pooled_by(self) -> str:
        return self.pooling or ("cls" if self.family == "bert" else "last")

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        _require(not unknown, unknown[0] if unknown else "", f"unknown model config field(s) {unknown}")
        return cls(**dict(values))


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh shape and the logical-axis rules that map parameter/batch axes onto it.

    shape: sizes of the mesh axes ('data', 'fsdp', 'tensor'); -1 in one place takes the remaining
      devices. rules: logical axis name -> mesh axis (or a tuple of mesh axes, or None).
    """

    shape: tuple[tuple[str, int], ...] = (("data", -1), ("fsdp", 1), ("tensor", 1))
    rules: tuple[tuple[str, Any], ...] = (
        ("batch", ("data", "fsdp")),
        ("vocab", "tensor"),
        ("embed", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("labels", None),
        ("positions", None),
        ("norm", None),
    )

    def __post_init__(self):
        axes = [name for name, _ in self.shape]
        _require(len(set(axes)) == len(axes), "mesh.shape", f"repeated mesh axis in {axes}")
        _require(sum(size == -1 for _, size in self.shape) <= 1, "mesh.shape", "at most one axis may be -1")
        for name, size in self.shape:
            _require(isinstance(size, int) and (size > 0 or size == -1), "mesh.shape",
                     f"axis {name!r} has size {size!r}; use a positive integer or -1")
        for logical, mesh_axes in self.rules:
            targets = mesh_axes if isinstance(mesh_axes, tuple) else (mesh_axes,)
            for target in targets:
                _require(target is None or target in axes, "mesh.rules",
                         f"logical axis {logical!r} maps to unknown mesh axis {target!r} (mesh axes: {axes})")


# ----------------------------------------------------------------------------------------------
# Experiment configs: configs/*.py define get_config() -> ConfigDict; these dataclasses validate it.

@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which model to train. source: asset name or transformers directory / .gguf (None: random init
    from ``config``). tokenizer: asset/path (default: the source). config: ModelConfig fields, as
    overrides of the pretrained config or the whole config of a random model."""

    source: str | None = None
    tokenizer: str | None = None
    head: str = "causal_lm"
    config: tuple[tuple[str, Any], ...] = ()
    seed: int = 0

    def __post_init__(self):
        _require(self.head in HEADS, "model.head", f"{self.head!r} is not one of {HEADS}")
        _require(self.source is not None or self.tokenizer is not None, "model.tokenizer",
                 "a model without a pretrained source needs a tokenizer (asset name or path)")
        _require(self.source is not None or "family" in dict(self.config), "model.config",
                 "a model without a pretrained source needs model.config.family")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """dataset: a builder of rlhf_jax.data.builders; source: asset name or local file(s)."""

    dataset: str = "rotten_tomatoes"
    source: str | tuple[str, ...] = "rotten-tomatoes"
    max_length: int = 64
    text_field: str = "text"
    label_field: str = "label"
    prompt_field: str | None = None
    labels: tuple[int, ...] | None = None  # keep only examples with these labels (e.g. (1,): fresh reviews)
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    root: str | None = None  # where datasets are written (default: $RLHF_JAX_CACHE/datasets)

    def __post_init__(self):
        _require(self.max_length >= 4, "data.max_length", f"must be >= 4, got {self.max_length}")
        for name in ("max_train_examples", "max_eval_examples"):
            value = getattr(self, name)
            _require(value is None or value > 0, f"data.{name}", f"must be positive or None, got {value}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping. Schedules: linear warm-up then cosine decay to 0 over ``steps``."""

    task: str = "classification"
    steps: int = 100
    batch_size: int = 32
    eval_batch_size: int = 64
    learning_rate: float = 5e-5
    warmup_steps: int = 10
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    mlm_probability: float = 0.15
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate at the end only
    checkpoint_every: int = 100
    keep_checkpoints: int = 2

    def __post_init__(self):
        from rlhf_jax.tasks import TASKS

        _require(self.task in TASKS, "train.task", f"{self.task!r} is not one of {sorted(TASKS)}")
        _require_positive_ints(self, ("steps", "batch_size", "eval_batch_size", "log_every", "checkpoint_every",
                                      "keep_checkpoints"), "train.")
        _require(self.learning_rate >= 0, "train.learning_rate", f"must be >= 0, got {self.learning_rate}")
        _require(0 <= self.warmup_steps <= self.steps, "train.warmup_steps", f"must be in [0, steps], got {self.warmup_steps}")
        _require(0 < self.mlm_probability < 1, "train.mlm_probability", f"must be in (0, 1), got {self.mlm_probability}")
        _require(self.eval_every >= 0, "train.eval_every", f"must be >= 0, got {self.eval_every}")


FEEDBACK_KINDS = ("preferences", "ratings", "language")


@dataclasses.dataclass(frozen=True)
class FeedbackConfig:
    """Collecting simulated feedback on policy samples (the first stage of ``rlhf-jax run``).

    policy: asset/path of the model whose continuations are compared. labeler: the gold scorer, 'vader'
    or 'classifier' (a trained sentiment classifier), under a simulated human with preference
    ``temperature``: P(A > B) = sigmoid((g(A) - g(B)) / T).
    prompts: how many prompts; samples_per_prompt: n continuations of each, and every one of their
    n (n - 1) / 2 pairs is labelled (all pairs of a prompt land in one split); prompt_tokens: the first
    tokens of a Rotten Tomatoes snippet; response_tokens: continuation length.
    kind: what the reward model learns from: 'preferences' (the labelled pairs), 'ratings' (the
    simulated human's 1-7 rating of each sample) or 'language' (its free-text comment on each sample,
    scored by ``comment_scorer``); ratings and scored comments are fitted by regression, and the
    labelled pairs are still written, for evaluation against gold.
    labels_from: who labels in ``rlhf-jax loop``: 'simulated' (reproducible) or 'app' (people, through
    ``rlhf-jax label serve``; the loop waits for their export).
    """

    policy: str = "smollm2-135m-instruct"
    labeler: str = "vader"
    temperature: float = 0.1
    tie_margin: float = 0.0
    prompts: int = 512
    samples_per_prompt: int = 2
    prompt_tokens: int = 8
    response_tokens: int = 24
    sampling_temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    batch_size: int = 32
    seed: int = 0
    classifier_config: str | None = None  # labeler 'classifier': the classifier's config and training workdir
    classifier_workdir: str | None = None
    kind: str = "preferences"
    comment_scorer: str = "vader"  # 'vader' or 'classifier' (the labeler's classifier reads the comment)
    labels_from: str = "simulated"

    def __post_init__(self):
        _require(self.kind in FEEDBACK_KINDS, "feedback.kind", f"{self.kind!r} is not one of {FEEDBACK_KINDS}")
        _require(self.comment_scorer in ("vader", "classifier"), "feedback.comment_scorer",
                 f"{self.comment_scorer!r} is not 'vader' or 'classifier'")
        _require(self.labels_from in ("simulated", "app"), "feedback.labels_from",
                 f"{self.labels_from!r} is not 'simulated' or 'app'")
        _require(self.labels_from == "simulated" or self.kind == "preferences", "feedback.labels_from",
                 f"the labeling app's export feeds the loop preference pairs; kind={self.kind!r} needs 'simulated'")
        _require(self.labeler in ("vader", "classifier"), "feedback.labeler",
                 f"{self.labeler!r} is not one of ('vader', 'classifier')")
        _require("classifier" not in (self.labeler, self.comment_scorer) or (self.classifier_config and self.classifier_workdir),
                 "feedback.classifier_workdir",
                 "the 'classifier' labeler or comment scorer needs classifier_config and classifier_workdir")
        _require(self.temperature >= 0, "feedback.temperature", f"must be >= 0, got {self.temperature}")
        _require_positive_ints(self, ("prompts", "prompt_tokens", "response_tokens", "batch_size"), "feedback.")
        _require(self.samples_per_prompt >= 2, "feedback.samples_per_prompt", f"must be >= 2, got {self.samples_per_prompt}")


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO of a causal LM against a reward model (Ziegler et al. 2019; Stiennon et al. 2020).

    One iteration: sample ``rollout_prompts`` continuations of ``response_tokens`` tokens, score them
    with the reward model (normalised), subtract beta * KL(policy || reference) per token, GAE, then
    ``epochs`` x ``minibatches`` Adam steps on the clipped objective.
    """

    policy: str = "smollm2-135m-instruct"  # asset or directory; its frozen copy is the reference
    value: str = "shared"  # 'shared': a zero-initialised value head on the policy's trunk; 'separate': own trunk
    iterations: int = 20
    rollout_prompts: int = 32
    epochs: int = 4
    minibatches: int = 4
    learning_rate: float = 1e-5
    grad_clip: float = 1.0
    prompt_tokens: int = 8
    response_tokens: int = 24
    temperature: float = 1.0  # sampling temperature; log-probs use the same
    kl_estimator: str = "k1"  # per-token KL in the reward: 'k1' (log ratio) or 'k3'
    kl_coef: float = 0.05  # initial beta
    kl_target: float | None = 6.0  # adaptive controller target (nats per sequence); None: fixed beta
    kl_horizon: float = 10000.0
    gamma: float = 1.0
    lam: float = 0.95
    clip_ratio: float = 0.2
    clip_value: float = 0.2
    value_coef: float = 0.1
    entropy_coef: float = 0.0
    whiten_rewards: bool = False
    eval_prompts: int = 256  # held-out (test-split) prompts for the final evaluation
    eval_batch_size: int = 64
    checkpoint_every: int = 5
    log_samples: int = 4  # continuations written to samples.jsonl per iteration
    seed: int = 0
    algorithm: str = "ppo"  # a name in rlhf_jax.algorithms.ALGORITHMS ('ppo', 'reinforce')
    reward: str = "reward_model"  # 'reward_model', or 'language': the scored comment of a simulated human

    def __post_init__(self):
        from rlhf_jax.algorithms import ALGORITHMS

        _require(self.algorithm in ALGORITHMS, "ppo.algorithm", f"{self.algorithm!r} is not one of {sorted(ALGORITHMS)}")
        unsuited = ALGORITHMS[self.algorithm].check(self)
        _require(unsuited is None, *(unsuited or ("", "")))
        _require(self.reward in ("reward_model", "language"), "ppo.reward",
                 f"{self.reward!r} is not 'reward_model' or 'language'")
        _require(self.value in ("shared", "separate"), "ppo.value", f"{self.value!r} is not 'shared' or 'separate'")
        _require(self.kl_estimator in ("k1", "k3"), "ppo.kl_estimator", f"{self.kl_estimator!r} is not 'k1' or 'k3'")
        _require_positive_ints(self, ("iterations", "rollout_prompts", "epochs", "minibatches", "prompt_tokens",
                                      "response_tokens", "eval_prompts", "eval_batch_size", "checkpoint_every"), "ppo.")
        _require(self.rollout_prompts % self.minibatches == 0, "ppo.minibatches",
                 f"{self.minibatches} minibatches do not divide rollout_prompts={self.rollout_prompts}")
        _require(self.learning_rate >= 0, "ppo.learning_rate", f"must be >= 0, got {self.learning_rate}")
        _require(self.temperature > 0, "ppo.temperature", f"must be > 0, got {self.temperature}")
        _require(self.kl_target is None or self.kl_target > 0, "ppo.kl_target", f"must be > 0 or None, got {self.kl_target}")
        _require(0 <= self.gamma <= 1 and 0 <= self.lam <= 1, "ppo.gamma", "gamma and lam must be in [0, 1]")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    model: ModelSpec
    data: DataConfig
    train: TrainConfig
    mesh: MeshConfig = MeshConfig()
    feedback: FeedbackConfig | None = None
    ppo: PPOConfig | None = None

    def __post_init__(self):
        from rlhf_jax.tasks import TASKS

        head = TASKS[self.train.task].head
        _require(self.model.head == head, "model.head", f"task {self.train.task!r} needs head {head!r}, "
                 f"got {self.model.head!r}")


def _tupled(value):
    if isinstance(value, (list, tuple)):
        return tuple(_tupled(v) for v in value)
    return value


def _section(cls, values: Mapping[str, Any], prefix: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    _require(not unknown, f"{prefix}.{unknown[0]}" if unknown else prefix, f"unknown field (known: {sorted(known)})")
    return cls(**{k: _tupled(v) for k, v in values.items()})


def experiment_from_dict(values: Mapping[str, Any]) -> ExperimentConfig:
    """Validate a (ConfigDict-converted) plain dict into an ExperimentConfig."""
    values = dict(values)
    unknown = sorted(set(values) - {"model", "data", "train", "mesh", "feedback", "ppo"})
    _require(not unknown, unknown[0] if unknown else "",
             "unknown section (sections: model, data, train, mesh, feedback, ppo)")
    model = dict(values.get("model", {}))
    model["config"] = tuple(sorted(dict(model.get("config", {})).items()))
    mesh = dict(values.get("mesh", {}))
    if "shape" in mesh:
        mesh["shape"] = tuple((k, v) for k, v in dict(mesh["shape"]).items())
    if "rules" in mesh:
        mesh["rules"] = tuple((k, _tupled(v)) for k, v in dict(mesh["rules"]).items())
    try:
        return ExperimentConfig(model=_section(ModelSpec, model, "model"),
                                data=_section(DataConfig, values.get("data", {}), "data"),
                                train=_section(TrainConfig, values.get("train", {}), "train"),
                                mesh=_section(MeshConfig, mesh, "mesh"),
                                feedback=_section(FeedbackConfig, values["feedback"], "feedback")
                                if values.get("feedback") is not None else None,
                                ppo=_section(PPOConfig, values["ppo"], "ppo") if values.get("ppo") is not None else None)
    except TypeError as error:  # e.g. a wrong argument type inside a dataclass
        raise ConfigError(f"config: {error}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """'--config.train.steps=10' -> ('train.steps', 10); values are Python literals, else strings."""
    import ast

    body = text[len("--config."):] if text.startswith("--config.") else text
    _require("=" in body, text, "an override looks like --config.section.field=value")
    key, raw = body.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key, value


def load_config(path: str, overrides: list[str] = ()) -> ExperimentConfig:
    """Run ``get_config()`` of a configs/*.py file, apply --config.x.y=v overrides, validate."""
    import importlib.util
    import os

    _require(os.path.isfile(path), "--config", f"no such file {path!r}")
    spec = importlib.util.spec_from_file_location(f"_rlhf_jax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _require(hasattr(module, "get_config"), "--config", f"{path} has no get_config()")
    config = module.get_config()
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    for override in overrides:
        key, value = parse_override(override)
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            _require(isinstance(node.get(part), dict), key, f"no section {part!r}")
            node = node[part]
        node[leaf] = value
    return experiment_from_dict(config)


def to_dict(config) -> dict:
    """A JSON-friendly dict of any of these dataclasses (for logs and checkpoints)."""
    return json_ready(dataclasses.asdict(config))


def json_ready(value):
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value
