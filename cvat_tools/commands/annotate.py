"""``cvat-tools annotate``: pre-label a CVAT task through cvat-sdk with the Pipeline.

Credentials come from the environment, never from the command line (which shell history and
``ps`` show): ``CVAT_ACCESS_TOKEN`` (a personal access token), else ``CVAT_USER`` and
``CVAT_PASSWORD``. They are never printed, and neither is a user:password written into
``--host`` (every message shows the URL redacted). Every network call gives up after
``--timeout`` seconds (60 by default) without an answer.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import click

from ..devices import device_option
from ..errors import CvatToolsError
from .scale_options import checked, scale_options

ENV_TOKEN = "CVAT_ACCESS_TOKEN"
ENV_USER = "CVAT_USER"
ENV_PASSWORD = "CVAT_PASSWORD"


def credentials_from_env() -> dict:
    """``make_client`` keyword arguments from the environment, or a clear error."""
    token = os.environ.get(ENV_TOKEN)
    if token:
        return {"access_token": token}
    user, password = os.environ.get(ENV_USER), os.environ.get(ENV_PASSWORD)
    if user and password:
        return {"credentials": (user, password)}
    missing = [name for name, value in ((ENV_USER, user), (ENV_PASSWORD, password)) if not value]
    raise CvatToolsError(
        f"no CVAT credentials: set {ENV_TOKEN} (a personal access token), or {ENV_USER} and "
        f"{ENV_PASSWORD} ({' and '.join(missing)} missing)"
    )


DEFAULT_TIMEOUT = 60.0  # s per network call: a server that accepts and never answers


def redact(url: str) -> str:
    """``url`` without its user:password part (never print credentials, whatever the URL)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url if "://" in url else f"https://{url}")
        if "@" not in (parts.netloc or ""):
            return url
        host = parts.netloc.rsplit("@", 1)[1]
        clean = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
        return clean if "://" in url else clean.split("://", 1)[1]
    except ValueError:
        return "<the --host URL>"


def probe(host: str, timeout: float = 5.0) -> None:
    """Fail fast (one TCP connect, no SDK retries) when nothing listens at ``host``."""
    import socket
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(host if "://" in host else f"https://{host}")
        port = parts.port or (80 if parts.scheme == "http" else 443)
    except ValueError:
        raise CvatToolsError(f"--host {redact(host)} is not a URL (http://HOST:PORT)") from None
    try:
        with socket.create_connection((parts.hostname or "localhost", port), timeout=timeout):
            pass
    except OSError as exc:
        raise CvatToolsError(
            f"cannot reach CVAT at {redact(host)} ({exc.strerror or type(exc).__name__}); check "
            "--host (scheme, host and port) and that the server is up"
        ) from None


@contextmanager
def network_timeouts(seconds: float):
    """Every cvat-sdk HTTP call inside gives up after ``seconds`` without an answer, once.

    cvat-sdk passes no timeout to urllib3 (it waits forever on a server that accepts and
    never answers) and urllib3 retries reads of GETs 3 times: both are bounded here, for
    the duration of the command only.
    """
    import urllib3
    from cvat_sdk.api_client import rest

    timeout = (min(10.0, seconds), seconds)  # (connect, read): the form rest.py understands
    no_retry = urllib3.Retry(total=10, connect=0, read=0, status=0, other=0, redirect=5)
    original = rest.RESTClientObject.request

    def request(self, *args, _request_timeout=None, **kwargs):
        manager = self.pool_manager
        if not getattr(manager, "_cvat_tools_bounded", False):
            plain = manager.request

            def bounded(method, url, *a, **k):
                k.setdefault("retries", no_retry)
                return plain(method, url, *a, **k)

            manager.request = bounded
            manager._cvat_tools_bounded = True
        return original(self, *args, _request_timeout=_request_timeout or timeout, **kwargs)

    rest.RESTClientObject.request = request
    try:
        yield
    finally:
        rest.RESTClientObject.request = original


def _ours(exc: BaseException) -> bool:
    """True when ``exc`` was raised in cvat_tools' own code (a bug or a model error to show as
    it is), not while cvat-sdk read the server's answer."""
    package = str(Path(__file__).resolve().parents[1])
    tb, last = exc.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and last.tb_frame.f_code.co_filename.startswith(package)


def explain(exc: BaseException, host: str, timeout: float, doing: str) -> CvatToolsError | None:
    """A one-line error for what the network or the server did, or None (not ours to explain)."""
    import urllib3
    from cvat_sdk.exceptions import ApiException

    where = redact(host)
    timeouts = (urllib3.exceptions.TimeoutError, TimeoutError)
    if isinstance(exc, timeouts) or isinstance(getattr(exc, "reason", None), timeouts):
        return CvatToolsError(f"CVAT at {where} did not answer within {timeout:g} s while "
                              f"{doing}; check the server, or raise --timeout")
    if isinstance(exc, ApiException):
        if exc.status in (401, 403):
            return CvatToolsError(f"CVAT at {where} refused the login (HTTP {exc.status}) while "
                                  f"{doing}; check {ENV_TOKEN} or {ENV_USER}/{ENV_PASSWORD}")
        if exc.status == 0 or exc.status is None:
            return CvatToolsError(f"CVAT at {where}: request failed while {doing} "
                                  f"({str(exc.reason)[:120]})")
        return CvatToolsError(f"CVAT at {where} answered HTTP {exc.status} "
                              f"({str(exc.reason)[:80]}) while {doing}")
    if isinstance(exc, urllib3.exceptions.HTTPError):
        reason = getattr(exc, "reason", None) or exc
        return CvatToolsError(f"cannot reach CVAT at {where} ({type(reason).__name__}) while "
                              f"{doing}; check --host (scheme, host and port) and that the "
                              "server is up")
    if isinstance(exc, (ValueError, TypeError, KeyError, AttributeError)) and not _ours(exc):
        # HTML (a proxy or login page), non-UTF-8 or other non-API answers end up here
        return CvatToolsError(f"CVAT at {where} answered something that is not CVAT's API "
                              f"while {doing} ({type(exc).__name__}); check --host: it must "
                              "be the CVAT server itself (e.g. http://localhost:8080)")
    return None


ABOUT = "/api/server/about"  # public in every CVAT (no login): the cheapest "are you CVAT?"


def check_is_cvat(host: str, timeout: float) -> None:
    """One GET of ``/api/server/about``: a web server that is not CVAT (another app, a proxy's
    login or error page) is named here in one line, before cvat-sdk dumps its HTML and the
    task gets the blame."""
    import json
    import ssl
    import urllib.error
    import urllib.request

    base = host if "://" in host else f"https://{host}"
    url = base.rstrip("/") + ABOUT
    cause = ("check --host: it must be CVAT itself (e.g. http://localhost:8080), not another "
             "web server or a proxy's page")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 (the user's host)
            kind, body = answer.headers.get("Content-Type", "?"), answer.read(1 << 20)
    except urllib.error.HTTPError as exc:
        kind = exc.headers.get("Content-Type", "?") if exc.headers else "?"
        raise CvatToolsError(f"{redact(url)} answered HTTP {exc.code} ({kind.split(';')[0]}), "
                             f"not CVAT's API; {cause}") from None
    except (urllib.error.URLError, ssl.SSLError, OSError, ValueError) as exc:
        if isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError):
            raise CvatToolsError(f"CVAT at {redact(host)} did not answer within {timeout:g} s "
                                 "while asking for its version; check the server, or raise "
                                 "--timeout") from None
        return  # TLS, redirects, proxies: cvat-sdk meets them next and says what it finds
    try:
        about = json.loads(body.decode("utf-8"))
        is_cvat = isinstance(about, dict) and "version" in about
    except (UnicodeDecodeError, ValueError):
        is_cvat = False
    if not is_cvat:
        raise CvatToolsError(f"{redact(url)} answered {kind.split(';')[0]} that is not CVAT's "
                             f"server description; {cause}")


def connect(host: str, login: dict, timeout: float = DEFAULT_TIMEOUT):
    """A logged-in cvat-sdk client, or CvatToolsError saying what went wrong."""
    import cvat_sdk

    probe(host)
    check_is_cvat(host, timeout)
    return cvat_sdk.make_client(host, **login)


def check_task_labels(client, task_id: int, conv_mask_to_poly: bool | None,
                      allow_unmatched_labels: bool) -> bool:
    """conv_mask_to_poly for the task's labels, checked before any frame is processed."""
    from ..cvat_function import shape_type_for

    task = client.tasks.retrieve(task_id)
    task_labels = [(label.name, str(getattr(label.type, "value", label.type) or "any"))
                   for label in task.get_labels()]
    return shape_type_for(task_labels, conv_mask_to_poly, allow_unmatched_labels,
                          task=f"task {task_id}")


@click.command()
@click.option("--host", required=True, help="CVAT URL, e.g. http://localhost:8080")
@click.option("--task", "task_id", required=True, type=click.IntRange(min=1), help="Task ID.")
@click.option("--clear-existing", is_flag=True, help="Remove the task's annotations first.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Minimum detection score of a cell.")
@click.option("--conv-mask-to-poly/--no-conv-mask-to-poly", default=None,
              help="Send polygons instead of masks (default: what the task's label types need).")
@click.option("--allow-unmatched-labels", is_flag=True,
              help="Skip our labels/attributes the task lacks instead of stopping.")
@click.option("--weights", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder with segmenter/ classifier/ refiner/ bundles (default: shipped).")
@click.option("--segmenter", type=click.Path(file_okay=False, path_type=Path),
              help="Segmenter bundle, or 'classical' for the watershed segmenter.")
@click.option("--classifier", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--refiner", type=click.Path(file_okay=False, path_type=Path),
              help="DANN refiner bundle (default: shipped), or 'none': the classifier's answer "
                   "is final.")
@click.option("--device", default="cpu", show_default=True, callback=device_option,
              help="cpu, cuda or cuda:N.")
@click.option("--timeout", type=click.FloatRange(1.0, 3600.0), default=DEFAULT_TIMEOUT,
              show_default=True, help="Seconds to wait for each answer of the CVAT server.")
@scale_options
def annotate(host, task_id, clear_existing, threshold, conv_mask_to_poly, allow_unmatched_labels,
             weights, segmenter, classifier, refiner, device, timeout, cell_size, um_per_px):
    """Pre-label every frame of a CVAT task with masks, cell types and review flags (a bar
    per frame on stderr when it is a terminal).

    Credentials: CVAT_ACCESS_TOKEN, or CVAT_USER and CVAT_PASSWORD, in the environment.
    The task's labels must be ours (cvat-tools predict writes them as labels.json for
    CVAT's label constructor), or pass --allow-unmatched-labels. Masks or polygons follow
    the task's label types.
    """
    from cvat_sdk.auto_annotation import BadFunctionError, annotate_task
    from cvat_sdk.core.helpers import DeferredTqdmProgressReporter

    from ..cvat_function import create
    from ..progress import tqdm_args

    scale_args = checked(cell_size, um_per_px)
    login = credentials_from_env()
    host = redact(host)  # credentials come from the environment only, never from the URL
    doing = "logging in"
    with network_timeouts(timeout):
        try:
            client = connect(host, login, timeout)
            with client:
                doing = f"reading task {task_id}"
                conv = check_task_labels(client, task_id, conv_mask_to_poly,
                                         allow_unmatched_labels)
                function = create(weights=weights, segmenter=segmenter, classifier=classifier,
                                  refiner=refiner, device=device, **scale_args)
                doing = f"annotating task {task_id}"
                annotate_task(client, task_id, function, pbar=DeferredTqdmProgressReporter(tqdm_args()),
                              clear_existing=clear_existing, conf_threshold=threshold,
                              conv_mask_to_poly=conv,
                              allow_unmatched_labels=allow_unmatched_labels)
        except CvatToolsError:
            raise
        except BadFunctionError as exc:
            raise CvatToolsError(
                f"task {task_id} does not fit the function: {exc}; create the task's labels "
                "from labels.json (cvat-tools predict) or pass --allow-unmatched-labels"
            ) from None
        except Exception as exc:  # network and server answers: one line, host redacted
            error = explain(exc, host, timeout, doing)
            if error is None:
                raise
            raise error from None
    click.echo(f"task {task_id}: annotated (threshold {threshold}, "
               f"{'polygons' if conv else 'masks'})")
