"""GENERATION_TORCH_THREADS=auto: the thread count is measured once per
machine and model, kept in the model cache folder, and reused.

The measurements are real (the tiny model's engine at each candidate count);
`time_engine` is wrapped only to count how often the engine was timed.
"""

import json
import logging
import threading
import types

import pytest
import torch
from django.core.management import call_command

from generation.runtime import threads, threadstore
from generation.runtime.loading import shared_model
from generation.runtime.registry import configured_model_loader

from .test_service import ready


@pytest.fixture
def calibration(tiny_model, settings, tmp_path, monkeypatch):
    """Settings for "auto" on the tiny model with an empty cache folder, a
    fresh process's memory of picks, a count of the engine timings, and
    torch's thread count put back to the suite's one afterwards."""
    settings.GENERATION_TORCH_THREADS = "auto"
    settings.GENERATION_CACHE_DIR = tmp_path
    monkeypatch.setattr(threads, "_settled", {})
    timed = []
    real = threads.time_engine

    def counted(model, strategy, count, give_up_ms=None):
        timed.append(count)
        return real(model, strategy, count, give_up_ms)

    monkeypatch.setattr(threads, "time_engine", counted)
    # The machine's load is not the tests' to choose: a quiet machine unless
    # a test says otherwise.
    monkeypatch.setattr(threads, "machine_load", lambda: 0.0)
    yield types.SimpleNamespace(timed=timed, store=tmp_path / threadstore.STORE_NAME, folder=tmp_path)
    torch.set_num_threads(1)


def new_process(monkeypatch):
    """What a later start sees: the file, but none of this process's memory."""
    monkeypatch.setattr(threads, "_settled", {})


def stored_entries(path) -> list[dict]:
    return list(json.loads(path.read_text())["entries"].values())


async def test_auto_measures_in_the_model_thread_before_ready_and_stores_the_pick(
    calibration, make_service, caplog
):
    caplog.set_level(logging.INFO, logger="generation.runtime.threads")
    load, seen = configured_model_loader(), {}

    def load_and_look():
        loaded = load()
        # OpenMP's thread count belongs to the thread that set it: read it
        # in the model thread, where the forward passes run.
        seen["threads"] = torch.get_num_threads()
        return loaded

    service = await ready(await make_service(load=load_and_look))
    cores = threadstore.usable_cores()
    expected = threads.candidates(cores)
    # Every candidate timed (up to ROUNDS times: one cut short is not tried
    # again), before the service said ready.
    assert sorted(set(calibration.timed)) == expected
    assert len(calibration.timed) <= threads.ROUNDS * len(expected)
    [entry] = stored_entries(calibration.store)
    assert entry["key"]["cores"] == cores and entry["key"]["strategy"] == "batched"
    assert entry["threads"] in expected
    assert sorted(int(n) for n in entry["timings"]) == expected
    assert seen["threads"] == entry["threads"]
    picked = [r for r in caplog.records if "picked" in r.getMessage()]
    assert picked and all(r.threadName == "generation-model" for r in picked)
    assert f"picked {entry['threads']}" in picked[0].getMessage()
    service.stop()


def test_a_later_start_reuses_the_stored_pick_without_measuring(calibration, monkeypatch, caplog):
    load = configured_model_loader()
    load()
    first_timings = len(calibration.timed)
    assert first_timings > 0
    picked = torch.get_num_threads()
    torch.set_num_threads(1 if picked != 1 else 2)  # so that the reuse must set it again
    new_process(monkeypatch)
    caplog.set_level(logging.INFO, logger="generation.runtime.threads")
    load()
    assert len(calibration.timed) == first_timings
    assert torch.get_num_threads() == picked
    assert any("as measured" in r.getMessage() for r in caplog.records)


def test_starts_at_the_same_time_measure_once(calibration, tiny_model_dir, caplog):
    """Two model threads starting together (as two processes would: the lock
    is an flock on a file) measure once; the later one reads the first's pick."""
    caplog.set_level(logging.INFO, logger="generation.runtime.threads")
    loaded = shared_model(str(tiny_model_dir), "cpu", calibration.folder)
    results = []
    starts = [
        threading.Thread(
            target=lambda: results.append(threads.calibrate(loaded, calibration.folder, "batched"))
        )
        for _ in range(2)
    ]
    for start in starts:
        start.start()
    for start in starts:
        start.join(60)
    assert len(results) == 2 and results[0].threads == results[1].threads
    assert sorted(result.reused for result in results) == [False, True]
    assert len(calibration.timed) <= threads.ROUNDS * len(threads.candidates(threadstore.usable_cores()))
    assert sum("calibrating" in r.getMessage() for r in caplog.records) == 1


def test_an_integer_setting_forces_the_count_without_measuring(calibration, settings):
    settings.GENERATION_TORCH_THREADS = 2
    configured_model_loader()()
    assert calibration.timed == []
    assert torch.get_num_threads() == 2
    assert not calibration.store.exists()


def test_a_different_core_count_measures_again(calibration, monkeypatch):
    load = configured_model_loader()
    load()
    cores = threadstore.usable_cores()
    new_process(monkeypatch)
    calibration.timed.clear()
    # As under `taskset -c 0` or a smaller container: one usable core.
    monkeypatch.setattr(threadstore, "usable_cores", lambda: 1)
    load()
    assert calibration.timed == [1] * threads.ROUNDS
    assert torch.get_num_threads() == 1
    entries = stored_entries(calibration.store)
    assert sorted(e["key"]["cores"] for e in entries) == sorted({1, cores})


def test_a_corrupt_file_is_ignored_with_a_warning_and_rewritten(calibration, caplog):
    calibration.folder.mkdir(exist_ok=True)
    calibration.store.write_text('{"format": 1, "entries": {"abc": ')  # cut short
    caplog.set_level(logging.WARNING)
    configured_model_loader()()
    assert any("Ignoring the torch thread calibration file" in r.getMessage() for r in caplog.records)
    assert calibration.timed
    [entry] = stored_entries(calibration.store)
    assert torch.get_num_threads() == entry["threads"]


def test_the_pick_prefers_fewer_threads_within_five_percent():
    assert threads.pick({1: 100.0, 2: 96.0}) == 1
    assert threads.pick({1: 100.0, 2: 90.0, 4: 88.0}) == 2
    assert threads.pick({1: 50.0, 2: 60.0}) == 1


def test_candidates_stay_few_on_large_machines():
    assert threads.candidates(1) == [1]
    assert threads.candidates(2) == [1, 2]
    assert threads.candidates(6) == [1, 2, 3, 4, 6]
    assert threads.candidates(64) == [1, 2, 3, 4, 8]


def test_a_cuda_device_is_not_calibrated(calibration):
    loaded = types.SimpleNamespace(device=torch.device("cuda"))
    assert threads.calibrate(loaded, calibration.folder, "batched") is None
    assert calibration.timed == []
    assert not calibration.store.exists()


def test_calibrate_threads_command_measures_again_and_prints_json(calibration, tiny_model_dir, capsys):
    loaded = shared_model(str(tiny_model_dir), "cpu", calibration.folder)
    threads.calibrate(loaded, calibration.folder, "batched")
    calibration.timed.clear()
    call_command("calibrate_threads", "--json")
    entry = json.loads(capsys.readouterr().out)
    # Measured again although an entry was stored: that is what the command is for.
    assert calibration.timed
    assert str(entry["threads"]) in entry["timings"]
    [stored] = stored_entries(calibration.store)
    assert stored["measured_at"] == entry["measured_at"]
    call_command("calibrate_threads")
    table = capsys.readouterr().out
    assert "<- picked" in table and "ms/step" in table


def test_a_pick_measured_on_a_busy_machine_applies_but_is_not_kept(calibration, monkeypatch, caplog):
    """Measured while other programs held the cores, the pick is used by this
    process only; the next start (on a quiet machine) measures again and
    keeps its own."""
    monkeypatch.setattr(threads, "machine_load", lambda: 3.0)
    caplog.set_level(logging.WARNING, logger="generation.runtime.threads")
    configured_model_loader()()
    busy_timings = len(calibration.timed)
    assert busy_timings > 0
    assert not calibration.store.exists()
    assert any("busy" in r.getMessage() and "not stored" in r.getMessage() for r in caplog.records)

    new_process(monkeypatch)
    monkeypatch.setattr(threads, "machine_load", lambda: 0.2)
    configured_model_loader()()
    assert len(calibration.timed) > busy_timings  # measured again
    [entry] = stored_entries(calibration.store)
    assert entry["load"] == 0.2
