"""A training run's checkpoints: where it starts from, when it saves, and waiting for saves.

The loop asks three things of it: the state to start from (`start_state`: resume > initial
weights > fresh init, in that order and in this one place), whether a step is saved
(`should_save`), and to save. Everything about incomplete or damaged steps, restoring the data
iterator from any process layout and strict restores lives below it in `vrl.checkpoint`.
"""

import json

import jax
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from vrl import checkpoint as ckpt_lib
from vrl import resume, state, weights
from vrl.objectives.base import Objective


class Checkpointer:
    """Opens the run's checkpoint directory (setting aside incomplete and damaged steps)."""

    def __init__(self, workdir: str, cfg: ckpt_lib.CheckpointConfig, every_steps: int):
        self.workdir = workdir
        self.every_steps = every_steps
        if jax.process_index() == 0:
            ckpt_lib.clear_incomplete(workdir)
            ckpt_lib.set_aside_damaged(workdir)  # resume from the newest step that verifies
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("vrl: incomplete checkpoints cleared")
        self.mngr = ckpt_lib.manager(workdir, cfg)
        self.latest = self.mngr.latest_step()
        self.saved_config = None

    def check_resume(self, config: dict, allow_change: bool) -> None:
        """Refuses to resume with a config that breaks exact resumption (see vrl/resume.py)."""
        if self.latest is None:
            return
        self.saved_config = ckpt_lib.load_meta(self.workdir, self.latest)[0]["config"]
        resume.check_config(self.saved_config, config, self.workdir, self.latest, allow_change)

    def restore_data(self, data_iter) -> None:
        """Moves the data iterator to the resumed step, from any saved process count.

        Each process's iterator counts global batches (every process takes its slice of each
        one), so the saved per-process states are identical and any of them continues the run;
        they are checked to be identical before one is used.
        """
        if self.latest is None:
            return
        saved = epath.Path(ckpt_lib.directory(self.workdir)) / str(self.latest) / ckpt_lib.DATA
        own = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if not saved.is_dir() or (saved / own).exists():
            ckpt_lib.restore_data(self.mngr, self.latest, data_iter)
            return
        states = {
            path.name: json.loads(path.read_text())
            for path in sorted(saved.glob("process_*-of-*.json"))
        }
        if not states or any(v != next(iter(states.values())) for v in states.values()):
            raise ckpt_lib.CheckpointError(
                f"cannot resume the data iterator of {saved} on {jax.process_count()} "
                f"process(es): the saved per-process states {sorted(states)} differ or are missing"
            )
        data_iter.set_state(next(iter(states.values())))
        logging.info(
            "Data iterator of step %d restored from %d saved process(es) on %d.",
            self.latest,
            len(states),
            jax.process_count(),
        )

    def start_state(self, objective: Objective, tx, init_batch: dict, mesh, rules, seed, config):
        """(state, shardings): the resumed state, else a fresh init with the weights the
        objective takes from other runs placed in."""
        fresh, shardings = state.init_state(objective, tx, init_batch, mesh, rules, seed)
        if self.latest is not None:
            abstract = state.abstract_state(shardings, fresh)
            resume.check_same_model(
                self.mngr, self.latest, abstract, self.saved_config, config, self.workdir
            )
            restored = ckpt_lib.restore_state(self.mngr, self.latest, abstract)
            logging.info("Resumed from step %d in %s.", self.latest, self.workdir)
            return restored, shardings
        if not objective.initial_weights():
            return fresh, shardings
        params, extra = weights.initial_variables(objective, fresh.params, fresh.extra)
        return fresh.replace(
            params=jax.device_put(params, shardings.params),
            extra=jax.device_put(extra, shardings.extra),
        ), shardings

    def should_save(self, step: int, total_steps: int) -> bool:
        """Every `every_steps` and at the last step (a preemption saves too: see the loop)."""
        return step % self.every_steps == 0 or step == total_steps

    def reached_preemption(self, step: int) -> bool:
        """Orbax's preemption notice (Cloud TPU). Every process calls this every step: it is
        the multi-process sync point of preemption notices."""
        return self.mngr.reached_preemption(step)

    def save(self, step: int, train_state, data_iter, meta: dict) -> None:
        ckpt_lib.save(self.mngr, step, train_state, data_iter, meta, force=True)

    def wait(self) -> None:
        ckpt_lib.wait(self.mngr, self.workdir)

    def close(self) -> None:
        self.mngr.close()

    def settle(self) -> None:
        """On the way out with an error: lets the save in flight (the last good step) complete."""
        try:
            self.mngr.wait_until_finished()
            self.mngr.close()
        except Exception as e:  # noqa: BLE001 - the original error is the one to report
            logging.warning("The checkpoint writer stopped with an error too: %s", e)
