"""SIGKILL a real training process at 5 random points, rerun the same command each time: the
final parameters are bit-identical to an uninterrupted run.

Kill points are drawn afresh every run (the seed is printed and in every failure message;
VRL_KILL_SEED=<seed> replays one). Each point is one of:
  save     the moment a checkpoint directory is being written (Orbax's temporary directory
           exists): the save is torn, the restart must ignore it and resume from the one before
  step     a random 0-300 ms after a given checkpoint completed: mid-step, mid-save or between
  startup  a random 0.2-4 s after launch: during imports, restore or compilation
At least one kill lands during a save, and the test checks it did (the torn directory is still
there after the kill, and the next run names it in its log).
"""

import random
import signal
import time

import pytest
import runs

KILLS = 5


def kill_plan(rng: random.Random) -> list[tuple[str, int]]:
    """(kind, step) for each kill: steps increase, so every relaunch has work left to lose."""
    steps = sorted(rng.sample(range(2, runs.STEPS), KILLS))
    kinds = [rng.choice(["save", "step", "startup"]) for _ in steps]
    kinds[rng.randrange(KILLS)] = "save"
    return list(zip(kinds, steps))


def kill_at(run: runs.Run, kind: str, step: int, rng: random.Random) -> dict:
    """Kills `run` at the planned point; returns what the workdir held at that moment.

    `step` is raised past what the workdir already held at launch, so every kill of kind
    save or step comes after this process made progress of its own.
    """
    workdir = run.workdir
    step = max(step, max(runs.complete_steps(workdir), default=0) + 1)
    stale = set(runs.saves_in_flight(workdir))  # torn by an earlier kill; removed at start-up
    if kind == "startup":
        time.sleep(rng.uniform(0.2, 4.0))
    elif kind == "save":
        run.until(
            lambda: (
                any(
                    int(n.split(".")[0]) >= step and n not in stale
                    for n in runs.saves_in_flight(workdir)
                )
                and not stale & set(runs.saves_in_flight(workdir))
            )
        )
    else:
        run.until(lambda: max(runs.complete_steps(workdir), default=0) >= step - 1)
        time.sleep(rng.uniform(0.0, 0.3))
    in_flight = runs.saves_in_flight(workdir)
    run.signal(signal.SIGKILL)
    code = run.wait()
    return {
        "kind": kind,
        "step": step,
        "code": code,
        "complete": runs.complete_steps(workdir),
        "torn": [n for n in runs.saves_in_flight(workdir) if n in in_flight and n not in stale],
    }


@pytest.mark.slow
def test_five_random_sigkills_resume_bit_identical(tmp_path):
    seed = runs.seed("VRL_KILL_SEED", 0)
    print(f"kill seed {seed}")
    rng = random.Random(seed)
    plan = kill_plan(rng)
    version = runs.code_version()
    runs.reference_digest()  # made first, so a failure below is about the killed run
    workdir = str(tmp_path / "run")

    kills, launches = [], []
    for kind, step in plan:
        launches.append(runs.Run(workdir))
        kill = kill_at(launches[-1], kind, step, rng)
        assert kill["code"] == -signal.SIGKILL, (seed, kill)
        kills.append(kill)
    launches.append(runs.finish(workdir))
    print("kills:", kills)

    context = f"seed {seed}, kills {kills}"
    assert any(k["torn"] for k in kills), f"no kill landed during a save ({context})"
    for i, kill in enumerate(kills):
        later = "".join(run.output() for run in launches[i + 1 :])
        for name in kill["torn"]:  # a later run named the torn save it threw away
            assert f"{name}: a checkpoint save that was interrupted" in later, (name, context)
    assert runs.complete_steps(workdir)[-1] == runs.STEPS, context
    assert not runs.saves_in_flight(workdir), context
    runs.assert_same_run(workdir, version, context=context)


def test_kill_plan_has_five_increasing_points_and_a_torn_save():
    for seed in range(20):
        plan = kill_plan(random.Random(seed))
        assert len(plan) == KILLS
        steps = [step for _, step in plan]
        assert steps == sorted(set(steps)) and steps[0] >= 2 and steps[-1] < runs.STEPS
        assert any(kind == "save" for kind, _ in plan)
