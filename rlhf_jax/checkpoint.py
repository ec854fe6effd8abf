"""Orbax checkpoints holding everything an exact resume needs: the TrainState (parameters,
optimizer state, step, PRNG key) plus JSON metadata (data position, the config that made it)."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from rlhf_jax import sharding
from rlhf_jax.models import lora
from rlhf_jax.models.convert import CheckpointError


class Checkpointer:
    """``trainable`` (a ``lora.Trainable``): only those parameters are saved (adapters and heads; the
    frozen base is the config's pointer to its weights) and restored into the given state's base."""

    def __init__(self, directory: str, keep: int = 2, trainable=None):
        self.directory = os.path.abspath(directory)
        self.trainable = trainable
        self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def steps(self) -> list[int]:
        """Every finished step kept, in order."""
        return sorted(self.manager.all_steps())

    def delete(self, step: int) -> None:
        self.manager.delete(step)

    def save(self, step: int, state, meta: dict) -> None:
        """Asynchronous save; orbax finalises a step directory only when it is complete."""
        if self.trainable is not None:
            state = state.replace(params=lora.split(state.params, self.trainable)[0])
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, step: int, target, shardings):
        """(state, meta) at ``step``, placed with ``shardings`` (the current mesh: resharding is fine)."""
        frozen = None
        if self.trainable is not None:
            trained, frozen = lora.split(target.params, self.trainable)
            target = target.replace(params=trained)
            shardings = shardings.replace(params=lora.split(shardings.params, self.trainable)[0])
        restored = self._restore(step, state=ocp.args.StandardRestore(sharding.abstract(target, shardings)),
                                 meta=ocp.args.JsonRestore())
        state = restored.state
        if frozen is not None:
            state = state.replace(params=lora.merge(state.params, frozen))
        return state, restored.meta

    def meta(self, step: int) -> dict:
        """The JSON metadata saved with ``step`` (its config, data position...), without the state."""
        return self._restore(step, meta=ocp.args.JsonRestore()).meta

    def restore_params(self, step: int, abstract_params):
        """Only the ``params`` of the state saved at ``step`` (no optimiser state is read), into the
        structure, dtypes and shardings of ``abstract_params`` (jax.ShapeDtypeStruct leaves)."""
        restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, dtype=x.dtype), abstract_params)
        return self._restore(
            step,
            state=ocp.args.PyTreeRestore(
                item={"params": abstract_params}, restore_args={"params": restore_args}, partial_restore=True
            ),
        ).state["params"]

    def _restore(self, step: int, **items):
        try:
            return self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as error:  # orbax/tensorstore raise many types for a damaged or foreign checkpoint
            raise CheckpointError(f"{self.directory}/{step}: cannot restore this checkpoint ({type(error).__name__}: "
                                  f"{str(error)[:500]})") from error

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
