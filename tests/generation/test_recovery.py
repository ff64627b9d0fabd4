"""Which abandoned replies a restarted process marks interrupted."""

import socket
import subprocess

from generation.recovery import is_dead_worker


def test_own_slot_name_is_a_dead_predecessor():
    assert is_dead_worker("daphne-1", own_name="daphne-1")


def test_other_stable_names_are_left_alone():
    assert not is_dead_worker("daphne-2", own_name="daphne-1")


def test_default_names_are_judged_by_their_pid():
    gone = subprocess.Popen(["true"])
    gone.wait()
    host = socket.gethostname()
    assert is_dead_worker(f"{host}:{gone.pid}", own_name="me")
    assert not is_dead_worker(f"{host}:1", own_name="me")  # pid 1 always runs
    assert not is_dead_worker(f"elsewhere:{gone.pid}", own_name="me")
