"""``LoraConfig``: low-rank adapters on a model's projections, and QLoRA's quantised frozen base."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from rlhf_jax.config.core import field, require

QUANTIZATIONS = ("none", "int8", "nf4")
ALL_PROJECTIONS = r".*(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """W x -> W x + (alpha / rank) B A x on every projection whose module path matches ``modules``."""

    rank: int = field(8, "adapter rank r")
    alpha: float = field(16.0, "scale numerator: the update is (alpha / rank) B A x")
    modules: str = field(ALL_PROJECTIONS, "regex over the backbone's module paths (e.g. 'layers/0/attn/q_proj') "
                                          "of the projections that get adapters")
    quantize: str = field("none", "the frozen base's storage: 'none', 'int8' or 'nf4' (QLoRA)")
    tile_size: int | None = field(64, "quantisation block along the input axis (one scale per block); "
                                      "None: one scale per output channel")

    def __post_init__(self):
        require(isinstance(self.rank, int) and not isinstance(self.rank, bool) and self.rank > 0, "lora.rank",
                f"must be a positive integer, got {self.rank!r}")
        require(isinstance(self.alpha, (int, float)) and self.alpha > 0, "lora.alpha",
                f"must be positive, got {self.alpha!r}")
        require(self.quantize in QUANTIZATIONS, "lora.quantize", f"{self.quantize!r} is not one of {QUANTIZATIONS}")
        require(self.tile_size is None or (isinstance(self.tile_size, int) and self.tile_size > 0), "lora.tile_size",
                f"must be a positive integer or None, got {self.tile_size!r}")
        try:
            re.compile(self.modules)
        except re.error as error:
            require(False, "lora.modules", f"{self.modules!r} is not a regular expression ({error})")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def of(cls, values: Mapping[str, Any] | tuple, section: str) -> LoraConfig | None:
        """The adapters a config section's ``lora`` field asks for; None for () / {} (full fine-tuning)."""
        values = dict(values)
        if not values:
            return None
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        require(not unknown, f"{section}.lora", f"unknown field(s) {unknown}; fields: {sorted(known)}")
        return cls(**values)
