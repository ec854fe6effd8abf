"""The sections of an experiment config: which model, which data, how to train, how feedback is
collected, how the policy is trained against the reward. Every default lives here, once."""

from __future__ import annotations

import dataclasses
from typing import Any

from rlhf_jax.config.core import field, require, require_positive_ints
from rlhf_jax.config.lora import LoraConfig
from rlhf_jax.config.model import HEADS, MeshConfig
from rlhf_jax.losses import OFFLINE_LOSSES
from rlhf_jax.rl.algorithms import ALGORITHMS
from rlhf_jax.scoring import ENSEMBLE_COMBINES

FEEDBACK_KINDS = ("preferences", "ratings", "language")
TASK_HEADS = {"classification": "classification", "causal_lm": "causal_lm", "masked_lm": "masked_lm",
              "reward_pairwise": "scalar", "reward_grouped": "scalar", "reward_best_of_n": "scalar",
              "reward_regression": "scalar", **dict.fromkeys(OFFLINE_LOSSES, "causal_lm")}
"""The supervised tasks and the head each trains: the names of ``rlhf_jax.tasks.TASKS``, which says how each
task turns rows into arrays and what its loss is."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which model to train."""

    source: str | None = field(None, "asset name, transformers directory or .gguf file; None: a random model "
                                     "of model.config")
    tokenizer: str | None = field(None, "asset name or directory of the tokenizer; None: the source's")
    head: str = field("causal_lm", "'causal_lm', 'masked_lm', 'classification' or 'scalar' (the task's head)")
    config: tuple[tuple[str, Any], ...] = field((), "ModelConfig fields: overrides of the pretrained config, or "
                                                    "the whole config of a random model")
    seed: int = field(0, "initialisation of new parameters (a new head, a random model)")
    lora: tuple[tuple[str, Any], ...] = field((), "LoRA adapters ({'rank': 8, 'alpha': 16, 'quantize': 'nf4'}, "
                                                  "rlhf_jax.config.lora.LoraConfig): only they and a new head "
                                                  "train; (): full fine-tuning")

    @property
    def adapters(self) -> LoraConfig | None:
        return LoraConfig.of(self.lora, "model")

    def __post_init__(self):
        self.adapters  # noqa: B018 (validates the lora field at start)
        require(self.head in HEADS, "model.head", f"{self.head!r} is not one of {HEADS}")
        require(self.source is not None or self.tokenizer is not None, "model.tokenizer",
                "a model without a pretrained source needs a tokenizer (asset name or path)")
        require(self.source is not None or "family" in dict(self.config), "model.config",
                "a model without a pretrained source needs model.config.family")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The supervised data."""

    dataset: str = field("rotten_tomatoes", "a builder of rlhf_jax.data.builders (rotten_tomatoes, text_corpus, "
                                            "preferences, unpaired_preferences, ratings, language_feedback, "
                                            "prompts)")
    source: str | tuple[str, ...] = field("rotten-tomatoes", "asset name or local file(s): JSONL, Parquet or an "
                                                             "Arrow directory (rlhf_jax.data.formats)")
    chat_template: bool | None = field(None, "conversational rows: rendered by the tokenizer's chat template "
                                             "(None: when it has one; True: it must; False: plain text)")
    max_length: int = field(64, "tokens per example (padded and truncated to it)")
    text_field: str = field("text", "the example field holding the text")
    label_field: str = field("label", "the example field holding the class label")
    prompt_field: str | None = field(None, "causal LM: the field of a prompt the loss skips")
    max_response_length: int | None = field(None, "offline preference tasks: response tokens kept (EOS "
                                                  "included; the rest cut), and the LM head run at those "
                                                  "positions alone; None: whole, head at every position")
    labels: tuple[int, ...] | None = field(None, "keep only examples with these labels (e.g. (1,): fresh reviews)")
    max_train_examples: int | None = field(None, "keep the first N training examples; None: all")
    max_eval_examples: int | None = field(None, "keep the first N examples of each held-out split; None: all")
    root: str | None = field(None, "where datasets are written; None: $RLHF_JAX_CACHE/datasets")

    def __post_init__(self):
        require(self.max_length >= 4, "data.max_length", f"must be >= 4, got {self.max_length}")
        require(self.max_response_length is None or self.max_response_length < self.max_length,
                "data.max_response_length", f"must be < data.max_length ({self.max_length}): the prompt takes "
                f"at least one position, got {self.max_response_length}")
        for name in ("max_train_examples", "max_eval_examples", "max_response_length"):
            value = getattr(self, name)
            require(value is None or value > 0, f"data.{name}", f"must be positive or None, got {value}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping of the supervised trainer (AdamW; linear warm-up, then cosine decay to 0
    over ``steps``)."""

    task: str = field("classification", "a name in TASK_HEADS (rlhf_jax.tasks.TASKS says how each trains)")
    steps: int = field(100, "optimiser steps")
    batch_size: int = field(32, "examples per step (groups for reward_grouped)")
    eval_batch_size: int = field(64, "examples per evaluation batch")
    learning_rate: float = field(5e-5, "peak learning rate")
    warmup_steps: int = field(10, "linear warm-up steps")
    weight_decay: float = field(0.01, "AdamW weight decay")
    grad_clip: float = field(1.0, "global gradient-norm clip")
    fused_optimizer: bool = field(False, "clip + AdamW in one pass per parameter (faster on CPU; a clipped "
                                         "step rounds differently from optax's: rlhf_jax/optim.py)")
    mlm_probability: float = field(0.15, "masked LM: share of tokens masked (BERT's 80/10/10)")
    beta: float = field(0.1, "dpo / ipo / kto: the KL strength beta of the preference loss; simpo: the scale of "
                             "the length-normalised margin (about 2 in its paper)")
    label_smoothing: float = field(0.0, "dpo: the share of labels taken to be wrong (conservative DPO)")
    simpo_gamma: float = field(0.5, "simpo: the target margin gamma")
    orpo_lambda: float = field(0.1, "orpo: the weight lambda of the odds-ratio term beside the SFT loss")
    kto_desirable_weight: float = field(1.0, "kto: the weight of the desirable (chosen) examples' term")
    kto_undesirable_weight: float = field(1.0, "kto: the weight of the undesirable (rejected) examples' term")
    seed: int = field(0, "batch order and the PRNG of each step")
    log_every: int = field(10, "steps per logged training row")
    eval_every: int = field(0, "steps between validation evaluations; 0: at the start and end only")
    checkpoint_every: int = field(100, "steps between checkpoints")
    keep_checkpoints: int = field(2, "checkpoints kept")

    def __post_init__(self):
        require(self.task in TASK_HEADS, "train.task", f"{self.task!r} is not one of {sorted(TASK_HEADS)}")
        require_positive_ints(self, ("steps", "batch_size", "eval_batch_size", "log_every", "checkpoint_every",
                                     "keep_checkpoints"), "train.")
        require(self.learning_rate >= 0, "train.learning_rate", f"must be >= 0, got {self.learning_rate}")
        require(
            0 <= self.warmup_steps <= self.steps,
            "train.warmup_steps",
            f"must be in [0, steps], got {self.warmup_steps}",
        )
        require(0 < self.mlm_probability < 1, "train.mlm_probability", f"must be in (0, 1), got {self.mlm_probability}")
        require(self.eval_every >= 0, "train.eval_every", f"must be >= 0, got {self.eval_every}")
        require(self.beta > 0, "train.beta", f"must be > 0, got {self.beta}")
        for name in ("orpo_lambda", "kto_desirable_weight", "kto_undesirable_weight"):
            require(getattr(self, name) >= 0, f"train.{name}", f"must be >= 0, got {getattr(self, name)}")
        require(isinstance(self.fused_optimizer, bool), "train.fused_optimizer",
                f"must be True or False, got {self.fused_optimizer!r}")
        require(
            0 <= self.label_smoothing < 0.5, "train.label_smoothing", f"must be in [0, 0.5), got {self.label_smoothing}"
        )


@dataclasses.dataclass(frozen=True)
class FeedbackConfig:
    """Simulated (or human) feedback on policy samples: the first stage of ``rlhf-jax run``. The simulated
    human prefers A to B with P = sigmoid((g(A) - g(B)) / temperature), g the gold labeler's score; every
    one of a prompt's n (n - 1) / 2 pairs is labelled, and all pairs of a prompt land in one split."""

    policy: str = field("smollm2-135m-instruct", "asset or directory of the model whose continuations are compared")
    labeler: str = field("vader", "gold scorer: 'vader' or 'classifier' (a trained sentiment classifier)")
    temperature: float = field(0.1, "the simulated human's preference temperature T (0: always the gold order)")
    tie_margin: float = field(0.0, "gold-score differences below this are ties (dropped)")
    prompts: int = field(512, "how many prompts (Rotten Tomatoes openings)")
    samples_per_prompt: int = field(2, "continuations of each prompt; all their pairs are labelled")
    prompt_tokens: int = field(8, "tokens of each opening")
    response_tokens: int = field(24, "tokens of each continuation")
    sampling_temperature: float = field(1.0, "sampling temperature of the continuations")
    top_k: int = field(0, "top-k sampling; 0: off")
    top_p: float = field(1.0, "nucleus sampling; 1: off")
    batch_size: int = field(32, "prompts per sampling batch")
    seed: int = field(0, "sampling keys and the simulated human's draws")
    classifier_config: str | None = field(None, "labeler 'classifier': the classifier's config")
    classifier_workdir: str | None = field(None, "labeler 'classifier': the classifier's training workdir")
    kind: str = field("preferences", "what the reward model learns from: 'preferences' (labelled pairs), 'ratings' "
                                     "(1-7 per sample) or 'language' (a scored comment per sample)")
    comment_scorer: str = field("vader", "'vader' or 'classifier': what turns a comment into a number")
    labels_from: str = field("simulated", "who labels in rlhf-jax loop: 'simulated' or 'app' (people)")
    source: str | None = field(None, "preferences from a file (JSONL, Parquet or an Arrow directory, any form of "
                                     "rlhf_jax.data.formats) instead of collected ones: nothing is sampled or "
                                     "labelled; the gold labeler still scores the evaluation")

    def __post_init__(self):
        require(self.kind in FEEDBACK_KINDS, "feedback.kind", f"{self.kind!r} is not one of {FEEDBACK_KINDS}")
        require(self.source is None or self.kind == "preferences", "feedback.source",
                f"a file of preferences is read with feedback.kind='preferences', got {self.kind!r}")
        require(self.comment_scorer in ("vader", "classifier"), "feedback.comment_scorer",
                f"{self.comment_scorer!r} is not 'vader' or 'classifier'")
        require(self.labels_from in ("simulated", "app"), "feedback.labels_from",
                f"{self.labels_from!r} is not 'simulated' or 'app'")
        require(self.labels_from == "simulated" or self.kind == "preferences", "feedback.labels_from",
                f"the labeling app's export feeds the loop preference pairs; kind={self.kind!r} needs 'simulated'")
        require(self.labeler in ("vader", "classifier"), "feedback.labeler",
                f"{self.labeler!r} is not one of ('vader', 'classifier')")
        require(
            "classifier" not in (self.labeler, self.comment_scorer)
            or (self.classifier_config and self.classifier_workdir),
            "feedback.classifier_workdir",
            "the 'classifier' labeler or comment scorer needs classifier_config and classifier_workdir",
        )
        require(self.temperature >= 0, "feedback.temperature", f"must be >= 0, got {self.temperature}")
        require_positive_ints(self, ("prompts", "prompt_tokens", "response_tokens", "batch_size"), "feedback.")
        require(
            self.samples_per_prompt >= 2, "feedback.samples_per_prompt", f"must be >= 2, got {self.samples_per_prompt}"
        )


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """Policy-gradient RL of a causal LM against a reward (Ziegler et al. 2019; Stiennon et al. 2020), by any
    algorithm of ``rlhf_jax.rl.algorithms`` (PPO, the GRPO and REINFORCE families). One iteration: sample
    ``rollout_prompts`` x ``samples_per_prompt`` continuations, score them, compute the per-token
    KL(policy || reference), the algorithm's advantages, then ``epochs`` x ``minibatches`` Adam steps on its
    loss. The section was called ``ppo`` before; that name still loads."""

    policy: str = field("smollm2-135m-instruct", "asset or directory of the policy; its frozen copy is the reference")
    reference: str | None = field(None, "asset or directory of the frozen reference; None: the policy's own weights")
    value: str = field("shared", "'shared': a zero-initialised value head on the policy's trunk; 'separate': "
                                 "its own trunk")
    iterations: int = field(20, "rollout + update iterations")
    rollout_prompts: int = field(32, "prompts per iteration")
    samples_per_prompt: int = field(1, "continuations of each prompt per iteration (k: the group of RLOO and GRPO); "
                                       "a rollout has rollout_prompts x k rows")
    epochs: int = field(4, "passes over each rollout")
    minibatches: int = field(4, "Adam steps per pass")
    learning_rate: float = field(1e-5, "Adam learning rate")
    grad_clip: float = field(1.0, "global gradient-norm clip")
    fused_optimizer: bool = field(False, "clip + Adam in one pass per parameter (faster on CPU; a clipped "
                                         "step rounds differently from optax's: rlhf_jax/optim.py)")
    prompt_tokens: int = field(8, "tokens of each prompt (left-padded)")
    response_tokens: int = field(24, "tokens sampled per response")
    temperature: float = field(1.0, "sampling temperature; the log-probs use the same")
    kl_estimator: str = field("k1", "per-token KL in the reward: 'k1' (log ratio) or 'k3'")
    kl_coef: float = field(0.05, "initial KL coefficient beta")
    kl_target: float | None = field(6.0, "adaptive controller's target KL, nats per sequence; None: fixed beta")
    kl_horizon: float = field(10000.0, "adaptive controller's horizon")
    gamma: float = field(1.0, "discount")
    lam: float = field(0.95, "GAE lambda")
    clip_ratio: float = field(0.2, "policy ratio clip epsilon (eps_low: the ratio's floor is 1 - eps_low)")
    clip_ratio_high: float | None = field(None, "eps_high, the ratio's ceiling 1 + eps_high (DAPO's clip-higher); "
                                                "None: eps_low")
    dynamic_sampling: bool = field(False, "drop from the loss the groups whose k scores are all equal (DAPO): "
                                          "masked, the batch keeps its shape; group algorithms only")
    mask_truncated: bool = field(False, "drop from the loss the responses that ran out of tokens without "
                                        "an EOS (DAPO's overlong filter)")
    clip_value: float = field(0.2, "value clip epsilon")
    value_coef: float = field(0.1, "weight of the value loss")
    entropy_coef: float = field(0.0, "weight of the entropy bonus")
    whiten_rewards: bool = field(False, "scale per-token rewards to unit variance before GAE")
    eval_prompts: int = field(256, "held-out (test-split) prompts of the final evaluation")
    eval_batch_size: int = field(64, "prompts per evaluation batch")
    checkpoint_every: int = field(5, "iterations between checkpoints")
    log_samples: int = field(4, "continuations written to samples.jsonl per iteration")
    seed: int = field(0, "prompt order, sampling keys, value-head initialisation")
    algorithm: str = field("ppo", "a name in rlhf_jax.rl.algorithms.ALGORITHMS: 'ppo', 'reinforce', 'rloo', "
                                  "'grpo', 'dr_grpo', 'dapo', 'gspo', 'gspo_token', 'cispo', 'reinforce_pp'")
    reward: str = field("reward_model", "'reward_model'; 'language': a simulated human's scored comment; "
                                         "'arithmetic': generated problems for prompts, an exact-match grader for "
                                         "reward and gold (rlhf_jax.feedback.arithmetic)")
    prompts: str | None = field(None, "a file of prompts (JSONL, Parquet or an Arrow directory, any form of "
                                      "rlhf_jax.data.formats: its train split for training, its test split held "
                                      "out; conversations by the policy's chat template); None: the task's own")
    reward_models: int = field(1, "reward_model: K reward models, member j trained with model.seed + j and "
                                  "train.seed + j on the same feedback; K > 1 is an ensemble")
    ensemble: str = field("mean", "how an ensemble's K normalised scores become one: 'mean', 'pessimistic' "
                                  "(mean - ensemble_lambda std) or 'min' (Coste et al. 2023)")
    ensemble_lambda: float = field(1.0, "the weight of the members' std in the 'pessimistic' combination")
    arithmetic_max_operand: int = field(20, "arithmetic: operands are drawn from [0, this)")
    arithmetic_operations: str = field("+-", "arithmetic: the operations asked, of '+-*'")
    loss_aggregation: str = field("sequence_mean", "how GRPO averages its per-token loss: 'sequence_mean' (GRPO), "
                                                   "'token_mean' (as DAPO) or 'constant' (as Dr. GRPO); the other "
                                                   "algorithms fix their own and refuse another value")
    model_config: tuple[tuple[str, Any], ...] = field((), "ModelConfig overrides of the policy, its reference and "
                                                          "value model: {'dtype': 'bfloat16', 'remat': 'full'}")
    lora: tuple[tuple[str, Any], ...] = field((), "LoRA adapters on the policy ({'rank': 8, 'alpha': 16}, "
                                                  "rlhf_jax.config.lora.LoraConfig): the frozen base with them "
                                                  "off is the reference; (): full fine-tuning")

    @property
    def adapters(self) -> LoraConfig | None:
        return LoraConfig.of(self.lora, "rl")

    @property
    def rollout_rows(self) -> int:
        """Sequences per rollout: rollout_prompts x samples_per_prompt."""
        return self.rollout_prompts * self.samples_per_prompt

    def __post_init__(self):
        self.adapters  # noqa: B018 (validates the lora field at start)
        require(self.reference is None or self.adapters is None, "rl.reference",
                "with rl.lora the reference is the policy's own base with the adapters off; set one or the other")
        require(self.algorithm in ALGORITHMS, "rl.algorithm", f"{self.algorithm!r} is not one of {sorted(ALGORITHMS)}")
        unsuited = ALGORITHMS[self.algorithm].check(self)
        require(unsuited is None, *(unsuited or ("", "")))
        require(self.reward in ("reward_model", "language", "arithmetic"), "rl.reward",
                f"{self.reward!r} is not 'reward_model', 'language' or 'arithmetic'")
        require(self.reward_models >= 1, "rl.reward_models", f"must be >= 1, got {self.reward_models}")
        require(self.prompts is None or self.reward != "arithmetic", "rl.prompts",
                "the arithmetic task makes its own prompts: set rl.prompts=None")
        require(self.reward_models == 1 or self.reward == "reward_model", "rl.reward_models",
                f"an ensemble is of reward models: rl.reward is {self.reward!r}")
        require(self.ensemble in ENSEMBLE_COMBINES, "rl.ensemble",
                f"{self.ensemble!r} is not one of {ENSEMBLE_COMBINES}")
        require(self.ensemble_lambda >= 0, "rl.ensemble_lambda", f"must be >= 0, got {self.ensemble_lambda}")
        require(self.arithmetic_max_operand >= 2, "rl.arithmetic_max_operand",
                f"must be >= 2, got {self.arithmetic_max_operand}")
        require(bool(self.arithmetic_operations) and set(self.arithmetic_operations) <= set("+-*"),
                "rl.arithmetic_operations", f"{self.arithmetic_operations!r} is not a string of '+', '-', '*'")
        require(self.value in ("shared", "separate"), "rl.value", f"{self.value!r} is not 'shared' or 'separate'")
        require(self.kl_estimator in ("k1", "k3"), "rl.kl_estimator", f"{self.kl_estimator!r} is not 'k1' or 'k3'")
        require_positive_ints(self, ("iterations", "rollout_prompts", "epochs", "minibatches", "prompt_tokens",
                                     "response_tokens", "eval_prompts", "eval_batch_size", "checkpoint_every"), "rl.")
        require(self.rollout_rows % self.minibatches == 0, "rl.minibatches",
                f"{self.minibatches} minibatches do not divide the rollout's {self.rollout_rows} rows")
        require(self.samples_per_prompt >= 1, "rl.samples_per_prompt", f"must be >= 1, got {self.samples_per_prompt}")
        require(self.loss_aggregation in ("token_mean", "sequence_mean", "constant"), "rl.loss_aggregation",
                f"{self.loss_aggregation!r} is not 'token_mean', 'sequence_mean' or 'constant'")
        own = ALGORITHMS[self.algorithm]  # the field is GRPO's choice; the others fix their own average
        require(own.aggregation is None or self.loss_aggregation in ("sequence_mean", own.aggregation),  # or default
                "rl.loss_aggregation",
                f"{own.title} averages its loss as {own.aggregation!r}, not {self.loss_aggregation!r}: the field is "
                "GRPO's option, leave it at its default")
        require(self.learning_rate >= 0, "rl.learning_rate", f"must be >= 0, got {self.learning_rate}")
        require(self.temperature > 0, "rl.temperature", f"must be > 0, got {self.temperature}")
        require(self.clip_ratio_high is None or self.clip_ratio_high > 0, "rl.clip_ratio_high",
                f"must be > 0 or None, got {self.clip_ratio_high}")
        require(
            self.kl_target is None or self.kl_target > 0, "rl.kl_target", f"must be > 0 or None, got {self.kl_target}"
        )
        require(isinstance(self.fused_optimizer, bool), "rl.fused_optimizer",
                f"must be True or False, got {self.fused_optimizer!r}")
        require(0 <= self.gamma <= 1 and 0 <= self.lam <= 1, "rl.gamma", "gamma and lam must be in [0, 1]")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """An experiment. What ``model`` / ``data`` / ``train`` are depends on the driver ``rlhf-jax run`` picks
    (``rlhf_jax.runs.DRIVERS``, printed at start):

      rlhf        an rl section and a reward-model task: they are the reward model, trained on the
                  feedback; rl is the policy trained against it
      preference  train.task 'dpo' / 'ipo': they are the policy and its preference training; rl gives the
                  reference and the evaluation
      supervised  no rl section: they are the one model trained (rlhf-jax train; run: a reward model)
      comparison  a compare section: as rlhf, each arm changing the sections it names
    """

    model: ModelSpec = field(doc="which model to train")
    data: DataConfig = field(doc="the supervised data")
    train: TrainConfig = field(doc="the supervised trainer")
    mesh: MeshConfig = field(MeshConfig(), "the device mesh and sharding rules")
    feedback: FeedbackConfig | None = field(None, "feedback collection (rlhf-jax run / loop)")
    rl: RLConfig | None = field(None, "RL of the policy (rlhf-jax run / loop; formerly 'ppo')")

    def __post_init__(self):
        head = TASK_HEADS[self.train.task]
        require(self.model.head == head, "model.head", f"task {self.train.task!r} needs head {head!r}, "
                f"got {self.model.head!r}")
        require(self.data.max_response_length is None or self.train.task in OFFLINE_LOSSES,
                "data.max_response_length", f"applies to the offline preference tasks {OFFLINE_LOSSES}, "
                f"not {self.train.task!r}")


SECTIONS = {"model": ModelSpec, "data": DataConfig, "train": TrainConfig, "mesh": MeshConfig,
            "feedback": FeedbackConfig, "rl": RLConfig}
