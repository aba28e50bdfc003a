"""The logging bridge: records made inside tasks name their task and node key."""

from __future__ import annotations

import logging

import pytest

from daglite import evaluate, task
from daglite.plugins.hooks import hook_impl


class Watcher:
    """A node hook: nodes then run one call per element (no bulk slices)."""

    def __init__(self) -> None:
        self.started: list[str] = []

    @hook_impl
    def before_node_execute(self, key):
        self.started.append(key)


@task(name="say")
def say(word: str) -> str:
    logging.getLogger("bridge.test").warning("said %s", word)
    return word


@task(name="shout")
def shout(words: list[str]) -> str:
    logging.getLogger("bridge.test").warning("shouting %d", len(words))
    return " ".join(words).upper()


@pytest.mark.parametrize("watched", [False, True], ids=["unwatched", "watched"])
def test_records_carry_task_name_and_key_of_nodes_and_elements(backend, caplog, watched):
    dag = shout([say("x"), say("y")])
    fanned = say.product(word=["p", "q"])
    plugins = [Watcher()] if watched else []
    with caplog.at_level(logging.WARNING, logger="bridge.test"):
        assert evaluate([dag, fanned], backend=backend, plugins=plugins) == ["X Y", ["p", "q"]]
    seen = {
        r.getMessage(): (r.daglite_task, r.daglite_key)
        for r in caplog.records
        if r.name == "bridge.test"
    }
    assert seen == {
        "said x": ("say", "say"),
        "said y": ("say", "say-2"),
        "shouting 2": ("shout", "shout"),
        "said p": ("say", "say-3[0]"),
        "said q": ("say", "say-3[1]"),
    }


def test_a_record_made_outside_any_task_has_no_task_attributes(caplog):
    with caplog.at_level(logging.WARNING, logger="bridge.test"):
        logging.getLogger("bridge.test").warning("outside")
    (record,) = [r for r in caplog.records if r.name == "bridge.test"]
    assert not hasattr(record, "daglite_task")
