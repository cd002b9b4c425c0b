"""`reward-serve` / `python -m app`: flags -> Settings -> uvicorn. Every setting has a flag; flags
override REWARD_* environment variables, which override the defaults."""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import resource
import signal
import sys

import uvicorn
from pydantic import ValidationError

from app.api.connections import ProtocolUnavailable, bounded_protocol
from app.config import Settings
from app.logs import logging_config
from app.main import create_app

log = logging.getLogger("app")
# file descriptors beyond the connections: the model store, snapshots, logs, torch's and Python's own
SPARE_FILE_DESCRIPTORS = 256


def flag_of(field: str) -> str:
    return "--" + field.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reward-serve", description="Serve hybrid rewards over HTTP (see also REWARD_* variables)."
    )
    for name, info in Settings.model_fields.items():
        default = "from env" if info.default_factory else info.default
        parser.add_argument(flag_of(name), dest=name, default=None, metavar=name.upper(),
                            help=f"env REWARD_{name.upper()} (default: {default})")  # fmt: skip
    return parser


def settings_from_args(argv: list[str] | None = None) -> Settings:
    """Settings from flags (given ones only, as strings pydantic validates) over env and defaults."""
    args = vars(build_parser().parse_args(argv))
    return Settings(**{name: value for name, value in args.items() if value is not None})


def exit_after_graceful_shutdown(signum: int, frame: object) -> None:
    """uvicorn re-raises SIGTERM once its graceful shutdown is done; a finished shutdown is a success."""
    sys.exit(0)


def raise_file_limit(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE towards `needed` (never above the hard limit): a default soft limit
    of 1024 would run out before max_connections does, and then the watcher and snapshots fail too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning("open-file limit %d is below the %d that max_connections needs; lower it", soft, needed)


def main(argv: list[str] | None = None) -> None:
    try:
        settings = settings_from_args(argv)
        protocol = bounded_protocol(settings)
    except ValidationError as exc:
        sys.exit(f"reward-serve: invalid settings:\n{exc}")
    except ProtocolUnavailable as exc:
        sys.exit(f"reward-serve: {exc}")
    logging.config.dictConfig(logging_config(settings.log_level))  # uvicorn applies it again, unchanged
    log.info("HTTP protocol: %s (http_protocol=%s)", protocol.__name__, settings.http_protocol)
    # oneDNN caches a compiled kernel per input shape (default 1024 entries); with varying batch shapes
    # RSS reached 2.1 GiB under load. 64 entries keep it near 1.1 GiB at the same throughput.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
    logging.captureWarnings(True)  # library warnings get the log format (and request id) too
    signal.signal(signal.SIGTERM, exit_after_graceful_shutdown)  # exit 0, not -15, for orchestrators
    raise_file_limit(settings.max_connections + SPARE_FILE_DESCRIPTORS)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=logging_config(settings.log_level),
        access_log=False,  # one line per request would cost more than scoring it
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        http=protocol,
        h11_max_incomplete_event_size=settings.max_header_bytes,  # the header size limit with h11
    )


if __name__ == "__main__":
    main()
