"""Who gets to a Ray task first: its worker, or the caller stopping it (``backends._claims``)."""

from __future__ import annotations

import os

from daglite.backends._claims import claim, forget, stop_or_find


def test_a_task_its_worker_claimed_is_found_with_that_workers_pid(tmp_path):
    assert claim(str(tmp_path), "k")
    assert stop_or_find(str(tmp_path), "k") == os.getpid()
    assert os.listdir(tmp_path) == ["k"]  # no draft left behind


def test_a_task_stopped_first_cannot_be_claimed(tmp_path):
    assert stop_or_find(str(tmp_path), "k") is None
    assert not claim(str(tmp_path), "k")
    assert stop_or_find(str(tmp_path), "k") is None  # stopped twice: still not started
    assert os.listdir(tmp_path) == ["k"]


def test_each_task_has_its_own_claim(tmp_path):
    assert stop_or_find(str(tmp_path), "a") is None
    assert claim(str(tmp_path), "b")


def test_a_worker_that_cannot_use_the_directory_runs_its_task_unclaimed(tmp_path):
    # The caller then finds no claim for a task that ran, and stops using claims.
    assert claim(str(tmp_path / "not here"), "k")
    assert not (tmp_path / "not here").exists()


def test_a_forgotten_claim_is_gone_and_forgetting_twice_is_harmless(tmp_path):
    assert claim(str(tmp_path), "k")
    assert forget(str(tmp_path), "k")
    assert not forget(str(tmp_path), "k")
    assert os.listdir(tmp_path) == []
