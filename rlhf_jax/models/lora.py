"""LoRA and QLoRA adapters on a model's backbone, by Google's qwix.

On each projection whose module path matches ``LoraConfig.modules`` (a kernel W: [D_in, D_out]),

    y = x W + (alpha / r) (x A) B,      A: [D_in, r] (He-uniform), B: [r, D_out] (zeros),

so the adapted model equals the base at initialisation. qwix intercepts the backbone's ``dot_general``
calls and holds A and B on the projection as ``<w>_lora_a`` / ``<w>_lora_b`` (``nnx.LoRAParam``), sharded
along W's own axes. With ``quantize`` 'int8' / 'nf4' (QLoRA) W itself is replaced by its quantised
values and per-block scales, and the forward uses those.

Only the adapters (and a new classification / scalar head, and a policy's value head) train: the
``Trainable`` filter picks them out of a model's state; optimiser state and checkpoints hold them alone.
The frozen base with every B zeroed is the base model exactly (``adapters_off``): the reference of RL and
DPO without a second copy of the weights.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlhf_jax.config import ConfigError
from rlhf_jax.config.lora import LoraConfig
from rlhf_jax.models.heads import Model


def apply(model: Model, cfg: LoraConfig, seed: int = 0) -> Model:
    """``model`` with adapters on its backbone's matching projections (and, with ``cfg.quantize``, that
    base quantised). The head is left as it is. Adapters are created by one eager call of the backbone."""
    import qwix

    mcfg = model.config
    if mcfg.scan_layers and cfg.quantize != "none":
        raise ConfigError("config field 'lora.quantize': a quantised base (QLoRA) on scanned layers "
                          "(model.scan_layers) is not supported yet; set scan_layers False or quantize 'none'")
    quantize = None if cfg.quantize == "none" else cfg.quantize
    provider = lora_provider(module_path=cfg.modules, rank=cfg.rank, alpha=float(cfg.alpha),
                                 weight_qtype=quantize, tile_size=cfg.tile_size if quantize else None)
    backbone = model.backbone
    if mcfg.scan_layers:  # qwix cannot create parameters inside lax.scan's trace: the stacked ones made here
        adapted = qwix.apply_lora_to_model(backbone, provider, None, skip_nnx_init=True, rngs=nnx.Rngs(seed))
        _stacked_adapters(adapted, cfg, nnx.Rngs(seed))
    else:
        backbone.cfg = mcfg.replace(remat="none")  # created in an eager call: not inside jax.checkpoint's trace
        ids_1x2 = jnp.zeros((1, 2), jnp.int32)
        mask_1x2 = jnp.ones((1, 2), jnp.int32)
        try:
            adapted = qwix.apply_lora_to_model(backbone, provider, ids_1x2, mask_1x2, rngs=nnx.Rngs(seed))
        finally:
            backbone.cfg = mcfg
        adapted.cfg = mcfg
    if not nnx.state(adapted, nnx.LoRAParam):
        paths = sorted("/".join(map(str, p)) for p, m in nnx.iter_modules(backbone) if isinstance(m, nnx.Linear))
        raise ConfigError(f"config field 'lora.modules': {cfg.modules!r} matches none of the backbone's "
                          f"projections ({', '.join(paths[:4])}, ...)")
    model.backbone = adapted
    return model


def _lora_provider_class():
    import qwix

    class ComputeDtypeLora(qwix.LoraProvider):
        """qwix's LoRA with the projection's output in the dtype the plain projection gives: float32
        adapters on a bfloat16 computation would otherwise promote the residual stream to float32 (and
        break the scan's carry)."""

        def dot_general(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                        out_sharding=None):
            out = super().dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type,
                                      out_sharding=out_sharding)
            rhs_dtype = rhs.dtype if isinstance(rhs, jax.Array) else lhs.dtype  # a quantised base: lhs's
            return out.astype(preferred_element_type or jnp.result_type(lhs.dtype, rhs_dtype))

    return ComputeDtypeLora


def lora_provider(**kwargs):  # qwix is imported on first use
    return _lora_provider_class()(**kwargs)


def _stacked_adapters(backbone, cfg: LoraConfig, rngs: nnx.Rngs) -> None:
    """Adapters on the scanned blocks' projections (kernels [L, D_in, D_out]), made as qwix makes them per
    layer: A [L, D_in, r] He-uniform, B [L, r, D_out] zeros, sharded along the kernel's layer, input and
    output axes; qwix then finds each layer's slice on the projection inside the scan."""
    import re

    for path, module in nnx.iter_modules(backbone.layers):
        name = "/".join(map(str, ("layers", *path)))
        if not isinstance(module, nnx.Linear) or not re.fullmatch(cfg.modules, name):
            continue
        kernel = module.kernel
        layers, d_in, d_out = kernel.shape
        axes = kernel.get_metadata().get("out_sharding") or (None, None, None)
        keys = jax.random.split(rngs.params(), layers)
        a = jax.vmap(lambda key: jax.nn.initializers.he_uniform()(key, (d_in, cfg.rank), kernel.dtype))(keys)
        with nnx.use_eager_sharding(False):  # placed by the layout's rules, as every parameter
            module.kernel_lora_a = nnx.LoRAParam(a, out_sharding=(axes[0], axes[1], None))
            module.kernel_lora_b = nnx.LoRAParam(jnp.zeros((layers, cfg.rank, d_out), kernel.dtype),
                                                 out_sharding=(axes[0], None, axes[2]))


def abstract_adapted(cfg, adapters: LoraConfig | None) -> Model:
    """``heads.abstract_model`` with the adapters (and quantised base) ``adapters`` asks for: shapes, dtypes
    and logical axes without memory, for planning."""
    from rlhf_jax.models.heads import abstract_model

    if adapters is None:
        return abstract_model(cfg)
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: apply(Model(cfg, rngs=nnx.Rngs(0)), adapters))


def has_adapters(model_or_state) -> bool:
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state)
    return bool(nnx.filter_state(state, nnx.LoRAParam))


@dataclasses.dataclass(frozen=True)
class Trainable:
    """An NNX filter of the parameters that train: every ``nnx.LoRAParam``, and every parameter under one of
    ``prefixes`` (state paths: ('head',) a new classification head, ('value_head',) a policy's value head)."""

    prefixes: tuple[tuple, ...] = ()

    def __call__(self, path, value) -> bool:
        return isinstance(value, nnx.LoRAParam) or any(tuple(path[:len(p)]) == p for p in self.prefixes)


def split(params: nnx.State, trainable: Trainable | None) -> tuple[nnx.State, nnx.State]:
    """(trainable, frozen) parts of a model's state; with ``trainable`` None, (everything, empty)."""
    if trainable is None:
        return params, nnx.State({})
    return nnx.split_state(params, trainable, ...)


def merge(trainable: nnx.State, frozen: nnx.State) -> nnx.State:
    return nnx.merge_state(frozen, trainable) if frozen else trainable


def adapters_off(params: nnx.State) -> nnx.State:
    """``params`` with every adapter zeroed: B = 0 makes each update exactly 0, so this is the base model
    (bit for bit without quantisation: x W + 0). Inside a jitted step, only the small adapters are new."""
    return jax.tree.map(lambda v: jnp.zeros_like(v) if isinstance(v, nnx.LoRAParam) else v, params,
                        is_leaf=lambda v: isinstance(v, nnx.Variable))


def adapted_projections(model: Model):
    """(module path, projection) of each projection that carries adapters."""
    return [(path, module) for path, module in nnx.iter_modules(model) if hasattr(module, "kernel_lora_a")]


def base_kernel(projection) -> jax.Array:
    """A projection's frozen W [D_in, D_out], dequantised when the base is held quantised."""
    import qwix

    kernel = projection.kernel
    array = getattr(kernel, "array", None)  # qwix's WithAux around a QArray
    if array is not None:
        return qwix.dequantize(array)
    return kernel[...]


def delta(projection, scale: float) -> jax.Array:
    """(alpha / r) A B: the adapters' update of W, [D_in, D_out]."""
    return scale * (projection.kernel_lora_a[...] @ projection.kernel_lora_b[...])


def merged(model: Model, cfg: LoraConfig) -> Model:
    """A plain model (no adapters, nothing quantised) with each W replaced by W + (alpha / r) A B."""
    from rlhf_jax.models.heads import abstract_model

    plain = nnx.merge(*nnx.split(abstract_model(model.config)))
    adapted = {tuple(path): projection for path, projection in adapted_projections(model)}
    source = {tuple(p): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    flat = []
    for path, variable in nnx.to_flat_state(nnx.state(plain, nnx.Param)):
        path = tuple(path)
        if path[-1] == "kernel" and path[:-1] in adapted:
            projection = adapted[path[:-1]]
            value = base_kernel(projection) + delta(projection, cfg.scale)
        elif path in source:  # neither adapted nor quantised
            value = source[path][...]
        else:  # a quantised projection without adapters
            value = base_kernel(_module_at(model, path[:-1]))
        flat.append((path, variable.replace(value=jnp.asarray(value, variable.get_value().dtype))))
    nnx.update(plain, nnx.from_flat_state(flat))
    return plain


def _module_at(root, path):
    for key in path:
        root = root[key] if isinstance(key, int) else getattr(root, key)
    return root


def parameter_count(state: nnx.State) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))
