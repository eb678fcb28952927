"""Process-wide structured logging: structlog and stdlib records rendered as JSON lines or for a console."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Hashable
from typing import Any, TextIO

import structlog

__all__ = ["SampledLog", "configure_logging", "get_logger"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# Libraries (grpc, asyncio, onnxruntime) log through stdlib; below WARNING they are noise to an operator.
_FOREIGN_LEVEL = logging.WARNING
_ROOT_NAME = "heddle"
# Marks the one handler this module owns, so reconfiguring replaces it instead of stacking a second.
_HANDLER_MARK = "_heddle_handler"

# Run on every record, ours and stdlib's, before rendering.
_SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.PositionalArgumentsFormatter(),
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
]


def _parse_level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    try:
        return _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(_LEVELS)}") from None


def _renderers(json_output: bool, stream: TextIO) -> list[Any]:
    if json_output:
        return [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    # The console renderer formats exceptions itself, so format_exc_info must not run before it.
    colors = bool(getattr(stream, "isatty", lambda: False)())
    return [structlog.dev.ConsoleRenderer(colors=colors)]


def _install_handler(handler: logging.Handler) -> None:
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(_FOREIGN_LEVEL)


def configure_logging(
    level: str | int = "info",
    json_output: bool | None = None,
    *,
    stream: TextIO | None = None,
) -> None:
    """Route structlog and stdlib logging to one handler on `stream` (stderr by default).

    JSON lines unless `stream` is a terminal (or `json_output` says otherwise); heddle loggers
    at `level`, every other stdlib logger at WARNING. Calling it again reconfigures in place.
    """
    heddle_level = _parse_level(level)
    stream = stream if stream is not None else sys.stderr
    if json_output is None:
        json_output = not bool(getattr(stream, "isatty", lambda: False)())
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *_SHARED_PROCESSORS,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED_PROCESSORS,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    *_renderers(json_output, stream)],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    _install_handler(handler)
    logging.getLogger(_ROOT_NAME).setLevel(heddle_level)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger under the `heddle` stdlib logger, so `configure_logging`'s level applies."""
    if name != _ROOT_NAME and not name.startswith(_ROOT_NAME + "."):
        name = f"{_ROOT_NAME}.{name}"
    return structlog.stdlib.get_logger(name)


class SampledLog:
    """At most one line per key per period_s, carrying how many were left out since the last.

    For events that come once per request and can come thousands of times a second (a refusal
    under overload): a rendered JSON line costs ~100 us, which an overloaded server would spend
    on each request it turns away, reading the next call that much later."""

    def __init__(self, logger: structlog.stdlib.BoundLogger, period_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._period_s = period_s
        self._clock = clock
        self._last: dict[Hashable, tuple[float, int]] = {}  # key -> (when logged, left out since)

    def info(self, key: Hashable, event: str, **fields: Any) -> None:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self._period_s:
            self._last[key] = (last[0], last[1] + 1)
            return
        if len(self._last) > 4096:  # keys are bounded (names, codes), but never let them grow
            self._last.clear()
        self._last[key] = (now, 0)
        self._logger.info(event, **fields, **({"left_out": last[1]} if last and last[1] else {}))
