"""Orbax checkpoints holding everything an exact resume needs: the TrainState (parameters,
optimizer state, step, PRNG key) plus JSON metadata (data position, the config that made it)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil

import jax
import orbax.checkpoint as ocp

from rlhf_jax import sharding
from rlhf_jax.distributed import barrier, is_main_process
from rlhf_jax.models import lora
from rlhf_jax.models.convert import CheckpointError

log = logging.getLogger(__name__)
COMMIT_MARKER = "commit_success.txt"  # orbax writes it into a step directory last, just before the rename


def _first_line(error: Exception) -> str:
    """The gist of orbax's or tensorstore's message (which can run to pages)."""
    text = str(error).split(" See full TensorStore details")[0]
    return text.splitlines()[0][:300] if text else ""


class Checkpointer:
    """``trainable`` (a ``lora.Trainable``): only those parameters are saved (adapters and heads; the
    frozen base is the config's pointer to its weights) and restored into the given state's base."""

    def __init__(self, directory: str, keep: int = 2, trainable=None):
        self.directory = os.path.abspath(directory)
        self.trainable = trainable
        self.saved_step = None
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
        """Asynchronous save; orbax finalises a step directory only when it is complete. A failed write (a
        full disk) raises CheckpointError here or at the next ``wait``; the steps saved before stay."""
        if self.trainable is not None:
            state = state.replace(params=lora.split(state.params, self.trainable)[0])
        with self._writing(step):
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            meta=ocp.args.JsonSave(meta)), force=True)
        self.saved_step = step

    def save_now(self, step: int, state, meta: dict) -> None:
        """``step`` saved (unless it already was) and final on return: the checkpoint a preempted run leaves."""
        if self.saved_step != step:
            self.save(step, state, meta)
        self.wait()

    @contextlib.contextmanager
    def _writing(self, step):
        """A failed write (a full disk: OSError here, or orbax's error from its writing thread) named."""
        try:
            yield
        except Exception as error:
            raise CheckpointError(f"{self.directory}/{step}: cannot write this checkpoint ({type(error).__name__}: "
                                  f"{str(error)[:300]}); the checkpoints before it are untouched") from error

    def restore_latest(self, target, shardings, check_meta=None):
        """(step, state, meta) of the newest intact checkpoint, or None when there is none.

        A damaged step (no commit marker, unreadable metadata or arrays, or ``check_meta(meta, step)``
        raising CheckpointError) is named in a warning and the one before it is tried. Once one restores, the
        damaged steps are moved to ``<directory>.damaged/``: kept for a person to look at, and out of the
        way of the steps the run saves again. With no intact step, CheckpointError names each one and
        nothing is moved. A ConfigError of ``check_meta`` (another run's checkpoint) is raised as it is.
        """
        damaged = []
        for step in reversed(self.steps()):
            try:
                if check_meta is not None:
                    meta = self.meta(step)
                    try:
                        check_meta(meta, step)
                    except CheckpointError as error:
                        raise CheckpointError(f"{self.directory}/{step}: {error}") from error
                state, meta = self.restore(step, target, shardings)
            except CheckpointError as error:
                log.warning("damaged checkpoint skipped: %s", error)
                damaged.append((step, error))
                continue
            if damaged:
                self._set_aside([s for s, _ in damaged])
            return step, state, meta
        if damaged:
            raise CheckpointError(f"{self.directory}: no intact checkpoint ({'; '.join(str(e) for _, e in damaged)}); "
                                  "move the directory away to start afresh")
        return None

    def _set_aside(self, steps: list[int]) -> None:
        barrier("damaged checkpoints")  # every process has read past them
        aside = self.directory + ".damaged"
        if is_main_process():
            os.makedirs(aside, exist_ok=True)
            for step in steps:
                target = os.path.join(aside, str(step))
                suffix = 1
                while os.path.exists(target):
                    target, suffix = os.path.join(aside, f"{step}.{suffix}"), suffix + 1
                shutil.move(os.path.join(self.directory, str(step)), target)
                log.warning("moved the damaged %s/%d to %s", self.directory, step, target)
        barrier("damaged checkpoints moved")
        self.manager.reload()

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
        if not os.path.exists(os.path.join(self.directory, str(step), COMMIT_MARKER)):
            raise CheckpointError(f"{self.directory}/{step}: no {COMMIT_MARKER}: orbax never finished writing this "
                                  "checkpoint")
        try:
            return self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as error:  # orbax/tensorstore raise many types for a damaged or foreign checkpoint
            raise CheckpointError(f"{self.directory}/{step}: cannot restore this checkpoint, a file in it is missing, "
                                  f"cut short or not orbax's ({type(error).__name__}: {_first_line(error)})") from error

    def wait(self) -> None:
        with self._writing(self.saved_step):
            self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
