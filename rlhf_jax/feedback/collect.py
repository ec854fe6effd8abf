"""Collect feedback on policy samples: prompts -> n continuations each (jitted KV-cache sampler) ->
labels from a labeler -> preference JSONL that the tfds ``preferences`` builder reads."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from rlhf_jax import assets
from rlhf_jax.config import FeedbackConfig
from rlhf_jax.data import records
from rlhf_jax.feedback.labelers import simulated_human
from rlhf_jax.feedback.language import comment_ratings, comment_scorer
from rlhf_jax.files import write_jsonl
from rlhf_jax.sampling import SamplingConfig, decode_responses, generate, left_pad

PROMPT_CHUNK = 256


def sentiment_prompts(
    count: int | None, prompt_tokens: int, tokenizer, split: str = "train", seed: int = 0
) -> list[str]:
    """The first ``prompt_tokens`` tokens of Rotten Tomatoes snippets (of one split), as text; ``count``
    None: every snippet of the split that is long enough."""
    rows = [r for r in records.read_rotten_tomatoes(str(assets.asset_path("rotten-tomatoes"))) if r["split"] == split]
    order = np.random.default_rng(seed).permutation(len(rows))
    prompts = []
    for start in range(0, len(order), PROMPT_CHUNK):  # a chunk at a time, in the seeded order, each text alone
        chunk = [rows[index]["text"] for index in order[start:start + PROMPT_CHUNK]]
        for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
            if len(ids) > prompt_tokens:  # something left to continue
                prompts.append(tokenizer.decode(ids[:prompt_tokens]))
            if len(prompts) == count:
                return prompts
    if count is None and prompts:
        return prompts
    raise ValueError(f"only {len(prompts)} {split} snippets are longer than {prompt_tokens} tokens")


def sample_continuations(policy, tokenizer, prompts: Sequence[str], config: SamplingConfig, rng: jax.Array,
                         batch_size: int = 32, progress: bool = True) -> list[str]:
    """One continuation per prompt (repeat a prompt to get several); fixed-shape batches, left padding."""
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(ids) for ids in encoded)
    texts = []
    for start in tqdm(range(0, len(prompts), batch_size), disable=not progress, desc="sampling"):
        chunk = encoded[start:start + batch_size]
        chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))  # keep one compiled shape
        ids, mask = left_pad(chunk, width, config.pad_token_id)
        out = generate(policy, ids, mask, jax.random.fold_in(rng, start), config)
        texts += decode_responses(tokenizer, out.tokens_BxN, out.response_mask_BxN)[:len(prompts) - start]
    return texts


def label_pairs(prompts: Sequence[str], samples: Sequence[Sequence[str]], labeler, annotator: str, source: str,
                id_prefix: str) -> list[dict]:
    """Preference rows for every pair (i < j) of the samples of each prompt; ties and empty responses are
    dropped, the gold scores kept for evaluation. ``samples[k]`` holds the continuations of ``prompts[k]``;
    all pairs of one prompt share a split (keyed by the prompt's id), so no response is in two splits."""
    keys = [(k, i, j) for k, group in enumerate(samples) for i in range(len(group)) for j in range(i + 1, len(group))]
    pair_prompts = [prompts[k] for k, _, _ in keys]
    out = labeler.prefer(pair_prompts, [samples[k][i] for k, i, _ in keys], [samples[k][j] for k, _, j in keys])
    rows = []
    for n, (k, i, j) in enumerate(keys):
        a, b, label = samples[k][i], samples[k][j], int(out["labels"][n])
        if label == -1 or not a.strip() or not b.strip():
            continue
        first, second = (0, 1) if label == 0 else (1, 0)
        responses, gold = (a, b), (out["gold_a"][n], out["gold_b"][n])
        rows.append({"id": f"{id_prefix}{k}-{i}{j}", "split": records.hash_split(f"{id_prefix}{k}"),
                     "prompt": prompts[k], "chosen": responses[first], "rejected": responses[second],
                     "annotator": annotator, "source": source, "gold_chosen": float(gold[first]),
                     "gold_rejected": float(gold[second])})
    return rows


def sample_groups(fb: FeedbackConfig, progress: bool = True) -> tuple[list[str], list[list[str]]]:
    """Prompts, and ``fb.samples_per_prompt`` continuations of each from ``fb.policy``."""
    from rlhf_jax.models import from_pretrained, load_tokenizer, pad_token_id

    policy = from_pretrained(fb.policy, head="causal_lm")
    tokenizer = load_tokenizer(fb.policy)
    prompts = sentiment_prompts(fb.prompts, fb.prompt_tokens, tokenizer, split="train", seed=fb.seed)
    sampling = SamplingConfig(max_new_tokens=fb.response_tokens, temperature=fb.sampling_temperature, top_k=fb.top_k,
                              top_p=fb.top_p, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad_token_id(tokenizer))
    n = fb.samples_per_prompt
    responses = sample_continuations(policy, tokenizer, prompts * n, sampling, jax.random.PRNGKey(fb.seed),
                                     fb.batch_size, progress)
    return prompts, [responses[k::len(prompts)] for k in range(len(prompts))]


def collect_queue(fb: FeedbackConfig, path: str, progress: bool = True) -> dict:
    """Sample as ``collect_preferences`` does but label nothing: a queue for the labeling app."""
    from rlhf_jax.labeling.queue import queue_rows

    prompts, samples = sample_groups(fb, progress)
    rows = queue_rows(prompts, samples, source=fb.policy, id_prefix=f"s{fb.seed}-")
    write_jsonl(rows, path)
    return {"rows": len(rows), "prompts": len(prompts), "feedback": dataclasses.asdict(fb)}


# What a reward model trains on, per ``feedback.kind``: (file in the feedback directory, record kind).
TRAINING_FEEDBACK = {"preferences": ("preferences.jsonl", "preference"),
                     "ratings": ("ratings.jsonl", "rating"),  # the human's 1-7 rating of each sample
                     "language": ("comment_scores.jsonl", "rating")}  # its comment on each sample, scored


def training_feedback(fb: FeedbackConfig, directory: str) -> tuple[str, str]:
    """(path, record kind) of the rows a reward model on ``fb``'s feedback trains on."""
    name, kind = TRAINING_FEEDBACK[fb.kind]
    return os.path.join(directory, name), kind


def collect_preferences(fb: FeedbackConfig, path: str, progress: bool = True) -> dict:
    """Sample ``fb.samples_per_prompt`` continuations per prompt from ``fb.policy``, label every pair of
    them with the simulated human, write the preference JSONL atomically; returns a summary (rows,
    measured label noise). The pairs are always written (they evaluate any reward model against gold).
    With ``fb.kind='ratings'`` the human also rates every sample 1-7: ``ratings.jsonl`` beside ``path``;
    with ``fb.kind='language'`` it comments on every sample: ``language.jsonl``, and
    ``comment_scores.jsonl``, the comments' scalar scores as rating rows. Both are fitted by regression."""
    prompts, samples = sample_groups(fb, progress)
    human = simulated_human(fb)
    annotator = f"simulated-{fb.labeler}-T{fb.temperature}"
    prefix = f"s{fb.seed}-"
    rows = label_pairs(prompts, samples, human, annotator=annotator, source=fb.policy, id_prefix=prefix)
    summary = {"rows": len(rows), "prompts": len(prompts), "feedback": dataclasses.asdict(fb), **label_noise(rows)}
    directory = os.path.dirname(os.path.abspath(path))
    if fb.kind == "ratings":
        ratings = rating_rows(prompts, samples, human, annotator, fb.policy, prefix)
    elif fb.kind == "language":
        language_rows = comment_rows(prompts, samples, human, annotator, fb.policy, prefix)
        ratings = comment_ratings(language_rows, comment_scorer(fb))
        write_jsonl(language_rows, os.path.join(directory, "language.jsonl"))
    if fb.kind != "preferences":
        write_jsonl(ratings, training_feedback(fb, directory)[0])
        summary["rating_rows"] = len(ratings)
    write_jsonl(rows, path)
    return summary


def rating_rows(prompts: Sequence[str], samples: Sequence[Sequence[str]], human, annotator: str, source: str,
                id_prefix: str) -> list[dict]:
    """Rating rows: the simulated human's 1-7 rating (``score``) of every non-empty sample."""
    def rate(p, r):
        return [float(x) for x in human.rate(p, r)["ratings"]]

    return _per_sample_rows(prompts, samples, rate, "score", "r", annotator, source, id_prefix)


def comment_rows(prompts: Sequence[str], samples: Sequence[Sequence[str]], human, annotator: str, source: str,
                 id_prefix: str) -> list[dict]:
    """Language rows: the simulated human's comment (``feedback``) on every non-empty sample."""
    def comment(p, r):
        return human.comment(p, r)["comments"]

    return _per_sample_rows(prompts, samples, comment, "feedback", "c", annotator, source, id_prefix)


def _per_sample_rows(prompts, samples, judge, field: str, tag: str, annotator: str, source: str,
                     id_prefix: str) -> list[dict]:
    """A row per non-empty sample with ``field = judge(prompts, responses)``; a prompt's rows share the
    split of its preference pairs (keyed by the prompt's id)."""
    keys = [(k, i) for k, group in enumerate(samples) for i, text in enumerate(group) if text.strip()]
    values = judge([prompts[k] for k, _ in keys], [samples[k][i] for k, i in keys])
    return [{"id": f"{id_prefix}{k}-{tag}{i}", "split": records.hash_split(f"{id_prefix}{k}"), "prompt": prompts[k],
             "response": samples[k][i], field: value, "annotator": annotator, "source": source}
            for (k, i), value in zip(keys, values)]


def label_noise(rows: list[dict]) -> dict:
    """How often the labels disagree with the gold order, over the pairs whose gold scores differ."""
    gold_chosen = np.asarray([r["gold_chosen"] for r in rows])
    gold_rejected = np.asarray([r["gold_rejected"] for r in rows])
    differ = gold_chosen != gold_rejected
    return {
        "gold_differs": int(differ.sum()),
        "label_disagrees_with_gold": float(np.mean(gold_chosen[differ] < gold_rejected[differ]))
        if differ.any()
        else None,
    }
