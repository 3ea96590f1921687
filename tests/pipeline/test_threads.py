"""ThreadTuner: the CPU threads of the pose network follow the measured batch times."""

from __future__ import annotations

import pytest

from pipeline.pose.threads import ThreadTuner


def run(tuner: ThreadTuner, seconds_per_pixel: dict[int, float], batches: int) -> list[int]:
    """``batches`` batches of 1,000 pixels timed as ``seconds_per_pixel`` says for each thread count: the counts."""
    used = []
    for _ in range(batches):
        threads = tuner.threads()
        used.append(threads)
        tuner.record(threads, seconds_per_pixel[threads] * 1000, 1000)
    return used


def test_an_idle_machine_keeps_every_thread_and_probes_once_a_period():
    tuner = ThreadTuner(4, period=10)
    used = run(tuner, {4: 1.0, 2: 1.7}, 60)
    assert used[:4] == [4, 4, 4, 4] and tuner.current == 4
    assert 4 <= used.count(2) <= 6 and tuner.switches == 0  # one probe batch per period of 10


def test_a_loaded_machine_moves_to_fewer_threads_and_back_when_the_load_ends():
    tuner = ThreadTuner(2, period=8)
    loaded = run(tuner, {2: 2.8, 1: 1.0}, 30)
    assert tuner.current == 1 and loaded[-10:].count(1) >= 8
    run(tuner, {2: 1.0, 1: 1.7}, 30)
    assert tuner.current == 2 and tuner.switches == 2


def test_a_difference_within_the_margin_does_not_switch():
    tuner = ThreadTuner(2, period=4, margin=0.1)
    run(tuner, {2: 1.0, 1: 0.95}, 40)
    assert tuner.current == 2 and tuner.switches == 0


@pytest.mark.parametrize("most", [1, None])
def test_one_thread_leaves_nothing_to_choose(most):
    tuner = ThreadTuner(most or 1)
    assert not tuner.active and run(tuner, {1: 1.0}, 10) == [1] * 10


def test_the_reference_backend_on_the_cpu_times_its_batches_and_restores_the_threads():
    import numpy as np
    import torch

    from pipeline.pose import create_backend

    backend = create_backend("ultralytics", device="cpu", torch_threads=2, batch_size=2)
    assert backend.tuner is not None and (backend.tuner.most, backend.tuner.fewer) == (2, 1)
    torch.set_num_threads(1)
    backend.predict([np.full((96, 64, 3), 114, np.uint8)] * 8)  # 4 calls of 2 images
    assert backend.tuner.recorded == 4 and torch.get_num_threads() == 2
    assert create_backend("ultralytics", device="cpu", batch_size=2).tuner is None  # no thread count given


def test_the_fast_backend_on_the_cpu_times_its_network_calls_and_restores_the_threads(tmp_path):
    import cv2
    import numpy as np
    import torch

    from pipeline.pose.fast import FastBackend

    paths = []
    for k in range(12):
        paths.append(tmp_path / f"{k}.jpg")
        cv2.imwrite(str(paths[-1]), np.full((96, 64, 3), 20 * k, np.uint8))
    backend = FastBackend(device="cpu", batch_size=2, read_threads=2, torch_threads=2)
    assert backend.tuner is not None and (backend.tuner.most, backend.tuner.fewer) == (2, 1)
    torch.set_num_threads(1)
    assert sum(len(b.read) for b in backend.choose_files(paths)) == 12
    assert backend.tuner.recorded == 6 and torch.get_num_threads() == 2  # 6 calls of 2 images
    assert FastBackend(device="cpu").tuner is None  # no thread count given
