"""`cvat-tools annotate` against servers that misbehave: bounded waits, one-line errors, no
credentials echoed; and the task's label types checked before any frame (issues 19, 23)."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from cli_run import run_cli
from cvat_tools import labels
from cvat_tools.commands import annotate as annotate_cmd
from cvat_tools.cvat_function import shape_type_for
from cvat_tools.errors import CvatToolsError


class _Server:
    """A TCP server on 127.0.0.1 answering every request with ``answer`` (None: accept and
    never answer). It stops by itself after ``lifetime`` seconds, whatever the test does."""

    def __init__(self, answer: bytes | None, lifetime: float = 20.0):
        self.answer = answer
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.deadline = time.monotonic() + lifetime
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while time.monotonic() < self.deadline:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            if self.answer is None:
                self.held.append(conn)  # never answered
                continue
            conn.settimeout(2)
            try:
                conn.recv(65536)
                conn.sendall(self.answer)
            except OSError:
                pass
            finally:
                conn.close()
        for conn in self.held:
            conn.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.deadline = 0
        self.thread.join(timeout=5)


def _http(body: bytes, content_type: str) -> bytes:
    head = (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    return head + body


def _annotate(monkeypatch, *args):
    for name in ("CVAT_USER", "CVAT_PASSWORD", "CVAT_ACCESS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CVAT_ACCESS_TOKEN", "tok-s3cret")
    code, out, err = run_cli("annotate", *args)
    return code, out + err


def test_silent_server_gives_up_within_the_timeout(monkeypatch):
    with _Server(None) as server:
        start = time.monotonic()
        code, text = _annotate(monkeypatch, "--host", f"http://127.0.0.1:{server.port}",
                               "--task", "3", "--timeout", "1")
        elapsed = time.monotonic() - start
    assert code == 2, text
    assert "did not answer within 1 s" in text and "Traceback" not in text
    assert len(text.strip().splitlines()) == 1
    assert elapsed < 8  # one attempt per call, no silent retries


def test_default_timeout_is_60_seconds():
    option = next(p for p in annotate_cmd.annotate.params if p.name == "timeout")
    assert option.default == 60.0 == annotate_cmd.DEFAULT_TIMEOUT


@pytest.mark.parametrize("answer", [
    _http(b"<!DOCTYPE html><html><body>Sign in to the proxy</body></html>", "text/html"),
    _http(b"\xff\xfe\x00garbage\x80\x81", "application/json"),
    _http(b"\xff\xfe\x00garbage\x80\x81", "application/octet-stream"),
])
def test_non_api_answers_are_one_line(monkeypatch, answer):
    with _Server(answer) as server:
        code, text = _annotate(monkeypatch, "--host", f"http://127.0.0.1:{server.port}",
                               "--task", "3", "--timeout", "5")
    assert code == 2, text
    assert text.startswith("error: ") and len(text.strip().splitlines()) == 1, text
    assert "Traceback" not in text and "s3cret" not in text


def test_password_in_host_is_never_printed(monkeypatch):
    answer = _http(b"<html>nope</html>", "text/html")
    with _Server(answer) as server:
        host = f"http://alice:pa55-s3cret@127.0.0.1:{server.port}"
        code, text = _annotate(monkeypatch, "--host", host, "--task", "3", "--timeout", "5")
    assert code == 2
    assert "pa55-s3cret" not in text and "alice" not in text
    assert f"127.0.0.1:{server.port}" in text


def test_password_in_unreachable_host_is_never_printed(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, text = _annotate(monkeypatch, "--host", f"http://bob:pw-s3cret@127.0.0.1:{port}",
                           "--task", "3")
    assert code == 2 and "cannot reach CVAT" in text
    assert "pw-s3cret" not in text and "bob" not in text


@pytest.mark.parametrize("url, clean", [
    ("http://u:p@host:8080/x", "http://host:8080/x"),
    ("u:p@host", "host"),
    ("https://host", "https://host"),
    ("http://token@host", "http://host"),
])
def test_redact(url, clean):
    assert annotate_cmd.redact(url) == clean


# -- the task's label types, before any frame ----------------------------------------------


def _task(kind="any", names=None):
    return [(name, kind) for name in (names or labels.ALL_CLASSES)]


@pytest.mark.parametrize("kind, asked, expected", [
    ("polygon", None, True),
    ("mask", None, False),
    ("any", None, False),
    ("any", True, True),
    ("polygon", True, True),
    ("mask", False, False),
])
def test_shape_type_follows_the_task(kind, asked, expected):
    assert shape_type_for(_task(kind), asked) is expected


@pytest.mark.parametrize("task, asked, fix", [
    (_task("mask"), True, "drop --conv-mask-to-poly"),
    (_task("polygon"), False, "drop --no-conv-mask-to-poly"),
    (_task("rectangle"), None, "change their type to mask, polygon or any"),
    ([*_task("mask")[:3], *_task("polygon")[3:]], None, "mixes mask and polygon"),
    ([("car", "mask"), ("person", "mask")], None, "none of our labels"),
    (_task("mask")[:4], None, "--allow-unmatched-labels"),
])
def test_incompatible_task_labels_name_the_fix(task, asked, fix):
    with pytest.raises(CvatToolsError, match=fix.replace("-", "\\-")):
        shape_type_for(task, asked)


def test_missing_labels_allowed_when_asked():
    assert shape_type_for(_task("polygon")[:4], None, allow_unmatched_labels=True) is True


# -- a web server that is not CVAT (issue 21) ----------------------------------------------


def _answer(status: str, body: bytes, content_type: str) -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}"
            "\r\nConnection: close\r\n\r\n").encode()
    return head + body


NGINX_404 = b"<html><head><title>404 Not Found</title></head><body><h1>404 Not Found</h1></body></html>"


@pytest.mark.parametrize("answer, says", [
    (_answer("404 Not Found", NGINX_404, "text/html"), "answered HTTP 404 (text/html)"),
    (_answer("200 OK", b"<!DOCTYPE html><html>Grafana</html>", "text/html; charset=utf-8"),
     "answered text/html that is not CVAT's"),
    (_answer("200 OK", b'{"status": "ok"}', "application/json"),
     "answered application/json that is not CVAT's"),
], ids=["404-html", "200-html", "200-json-not-cvat"])
def test_a_server_that_is_not_cvat_is_named_in_one_line(monkeypatch, answer, says):
    with _Server(answer) as server:
        host = f"http://127.0.0.1:{server.port}"
        code, text = _annotate(monkeypatch, "--host", host, "--task", "3", "--timeout", "5")
    assert code == 2, text
    assert len(text.strip().splitlines()) == 1, text  # no HTML page dumped
    assert text.startswith(f"error: {host}/api/server/about {says}"), text
    assert "check --host" in text and "proxy" in text
    assert "<html" not in text.lower() and "task 3" not in text  # the task is not blamed


def test_cvat_is_recognised_by_its_about_page():
    about = b'{"name": "Computer Vision Annotation Tool", "version": "2.42.0"}'
    with _Server(_answer("200 OK", about, "application/json")) as server:
        assert annotate_cmd.check_is_cvat(f"http://127.0.0.1:{server.port}", 5) is None
