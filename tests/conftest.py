import os

import pytest

# Two shared cores: one torch thread per test process keeps timings sane and results exact.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _single_thread():
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture
def straight_and_resumed(tmp_path):
    """run(algorithm, agent, env_kwargs) -> (summary, summary): a short two-rooms-discrete run of 40
    steps uninterrupted (tmp_path/straight) and the same run stopped at 20 and resumed to 40
    (tmp_path/resumed), checkpoints every 20 steps, for tests that resume changes nothing."""
    from dataclasses import replace

    from wmlab.runs.config import TrainConfig
    from wmlab.runs.directory import RunSpec
    from wmlab.train.loop import Trainer

    train = TrainConfig(
        steps=40,
        learning_starts=10,
        train_ratio=10.0,
        batch_size=2,
        sequence_length=4,
        eval_every=0,
        eval_episodes=1,
        checkpoint_every=20,
        log_every=20,
        progress=False,
        tensorboard=False,
    )

    def run(algorithm, agent, env_kwargs):
        def spec(steps):
            return RunSpec(
                algorithm, "two-rooms-discrete", train=replace(train, steps=steps), agent=agent, env_kwargs=env_kwargs
            )

        straight = Trainer(spec(40), tmp_path / "straight").run()
        Trainer(spec(20), tmp_path / "resumed").run()
        return straight, Trainer(spec(40), tmp_path / "resumed", resume=True).run()

    return run
