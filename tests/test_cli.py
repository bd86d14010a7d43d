"""`steel-seg` itself: before a command that may download encoder weights, a machine whose hub cannot be
reached works offline from the cache at once (a classifier run waited ~30 s on huggingface_hub's retries).
The probe is tried against this machine's own loopback only (tests never touch the network)."""

from __future__ import annotations

import os
import socket

import pytest

from steel_seg import cli


@pytest.fixture
def no_offline_flag(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    yield
    os.environ["HF_HUB_OFFLINE"] = "1"  # conftest's setting, for the tests after this one


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


def test_an_unreachable_hub_means_offline_from_the_cache(no_offline_flag, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    assert cli.offline_unless_hub_reachable("train") is True
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert "the Hugging Face hub (127.0.0.1) cannot be reached: working offline" in capsys.readouterr().err


def test_a_reachable_hub_leaves_online_use_alone(no_offline_flag, monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert cli.offline_unless_hub_reachable("encoder-weights") is False
    assert "HF_HUB_OFFLINE" not in os.environ


def test_no_probe_when_the_user_decided_or_the_command_never_downloads(no_offline_flag, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("probed")

    monkeypatch.setattr(socket, "create_connection", refuse)
    assert cli.offline_unless_hub_reachable("score") is False
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # insists on the hub
    assert cli.offline_unless_hub_reachable("train") is False and os.environ["HF_HUB_OFFLINE"] == "0"
