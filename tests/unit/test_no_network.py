"""The unit layer's own guard: a connection attempt fails the test instead of reaching anything."""

from __future__ import annotations

import socket

import pytest

from tests.unit.conftest import NetworkUsed


def test_a_socket_cannot_connect() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock, pytest.raises(NetworkUsed):
        sock.connect(("127.0.0.1", 5432))


def test_create_connection_is_refused() -> None:
    with pytest.raises(NetworkUsed):
        socket.create_connection(("127.0.0.1", 6379), timeout=0.1)


def test_a_name_cannot_be_looked_up() -> None:
    with pytest.raises(NetworkUsed):
        socket.getaddrinfo("example.com", 443)
