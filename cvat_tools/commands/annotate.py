"""``cvat-tools annotate``: pre-label a CVAT task through cvat-sdk with the Pipeline.

Credentials come from the environment, never from the command line (which shell history and
``ps`` show): ``CVAT_ACCESS_TOKEN`` (a personal access token), else ``CVAT_USER`` and
``CVAT_PASSWORD``. They are never printed.
"""
from __future__ import annotations

import os
from pathlib import Path

import click

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


def probe(host: str, timeout: float = 5.0) -> None:
    """Fail fast (one TCP connect, no SDK retries) when nothing listens at ``host``."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(host if "://" in host else f"https://{host}")
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        with socket.create_connection((parts.hostname or "localhost", port), timeout=timeout):
            pass
    except OSError as exc:
        raise CvatToolsError(
            f"cannot reach CVAT at {host} ({exc.strerror or type(exc).__name__}); check --host "
            "(scheme, host and port) and that the server is up"
        ) from None


def connect(host: str, login: dict):
    """A logged-in cvat-sdk client, or CvatToolsError saying what went wrong."""
    import urllib3
    from cvat_sdk import make_client
    from cvat_sdk.exceptions import ApiException

    probe(host)
    try:
        return make_client(host, **login)
    except urllib3.exceptions.HTTPError as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CvatToolsError(
            f"cannot reach CVAT at {host} ({type(reason).__name__}); check --host (scheme, "
            "host and port) and that the server is up"
        ) from None
    except ApiException as exc:
        if exc.status in (400, 401, 403):
            raise CvatToolsError(
                f"CVAT at {host} refused the login (HTTP {exc.status}); check "
                f"{ENV_TOKEN} or {ENV_USER}/{ENV_PASSWORD}"
            ) from None
        raise CvatToolsError(f"CVAT at {host} answered HTTP {exc.status} ({exc.reason})") from None


@click.command()
@click.option("--host", required=True, help="CVAT URL, e.g. http://localhost:8080")
@click.option("--task", "task_id", required=True, type=click.IntRange(min=1), help="Task ID.")
@click.option("--clear-existing", is_flag=True, help="Remove the task's annotations first.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Minimum detection score of a cell.")
@click.option("--conv-mask-to-poly", is_flag=True,
              help="Send polygons instead of masks (for tasks whose labels are polygons).")
@click.option("--allow-unmatched-labels", is_flag=True,
              help="Skip our labels/attributes the task lacks instead of stopping.")
@click.option("--weights", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder with segmenter/ classifier/ refiner/ bundles (default: shipped).")
@click.option("--segmenter", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--classifier", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--refiner", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@scale_options
def annotate(host, task_id, clear_existing, threshold, conv_mask_to_poly, allow_unmatched_labels,
             weights, segmenter, classifier, refiner, device, cell_size, um_per_px):
    """Pre-label every frame of a CVAT task with masks, cell types and review flags.

    Credentials: CVAT_ACCESS_TOKEN, or CVAT_USER and CVAT_PASSWORD, in the environment.
    The task's labels must be ours (cvat-tools predict writes them as labels.json for
    CVAT's label constructor), or pass --allow-unmatched-labels.
    """
    from cvat_sdk.auto_annotation import BadFunctionError, annotate_task
    from cvat_sdk.core.helpers import DeferredTqdmProgressReporter
    from cvat_sdk.exceptions import ApiException

    from ..cvat_function import create

    scale_args = checked(cell_size, um_per_px)
    login = credentials_from_env()
    client = connect(host, login)
    with client:
        function = create(weights=weights, segmenter=segmenter, classifier=classifier,
                          refiner=refiner, device=device, **scale_args)
        try:
            annotate_task(client, task_id, function, pbar=DeferredTqdmProgressReporter(),
                          clear_existing=clear_existing, conf_threshold=threshold,
                          conv_mask_to_poly=conv_mask_to_poly,
                          allow_unmatched_labels=allow_unmatched_labels)
        except BadFunctionError as exc:
            raise CvatToolsError(
                f"task {task_id} does not fit the function: {exc}; create the task's labels "
                "from labels.json (cvat-tools predict) or pass --allow-unmatched-labels"
            ) from None
        except ApiException as exc:
            raise CvatToolsError(f"CVAT refused a request for task {task_id} (HTTP {exc.status}: "
                                 f"{exc.reason})") from None
    click.echo(f"task {task_id}: annotated (threshold {threshold})")
