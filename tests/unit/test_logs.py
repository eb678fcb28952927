"""Tests for heddle.server.observe.logs: JSON or console lines, request ids from contextvars, stdlib routing, levels."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import structlog

from heddle.server.observe.logs import SampledLog, configure_logging, get_logger


class TerminalStream(io.StringIO):
    """A stream that says it is a terminal, as stderr does in an interactive shell."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Put the process-wide logging state back after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    heddle_level = logging.getLogger("heddle").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("heddle").setLevel(heddle_level)
    structlog.reset_defaults()


def _json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_line_carries_request_id_and_utc_timestamp() -> None:
    """A line logged inside bound_contextvars is one JSON object with the request id, level, logger and a UTC time."""
    out = io.StringIO()
    configure_logging("info", json_output=True, stream=out)
    with structlog.contextvars.bound_contextvars(request_id="req-42"):
        get_logger("heddle.server.test").info("stage done", stage="backbone")
    [line] = _json_lines(out)
    assert line["event"] == "stage done"
    assert line["stage"] == "backbone"
    assert line["request_id"] == "req-42"
    assert line["level"] == "info"
    assert line["logger"] == "heddle.server.test"
    stamp = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
    assert stamp.utcoffset() == timedelta(0)


def test_request_id_leaves_with_the_context() -> None:
    """Once the bound_contextvars block ends, later lines have no request id."""
    out = io.StringIO()
    configure_logging("info", json_output=True, stream=out)
    log = get_logger("heddle.server.test")
    with structlog.contextvars.bound_contextvars(request_id="req-1"):
        log.info("inside")
    log.info("outside")
    inside, outside = _json_lines(out)
    assert inside["request_id"] == "req-1"
    assert "request_id" not in outside


def test_stdlib_records_are_routed_at_warning() -> None:
    """grpc's stdlib warnings come out as JSON with the request id; its info records are dropped."""
    out = io.StringIO()
    configure_logging("debug", json_output=True, stream=out)
    grpc_log = logging.getLogger("grpc._cython.cygrpc")
    with structlog.contextvars.bound_contextvars(request_id="req-7"):
        grpc_log.info("chatty detail")
        grpc_log.warning("channel %s lost", "ch-1")
    [line] = _json_lines(out)
    assert line["event"] == "channel ch-1 lost"
    assert line["level"] == "warning"
    assert line["logger"] == "grpc._cython.cygrpc"
    assert line["request_id"] == "req-7"


def test_level_filters_heddle_loggers() -> None:
    """At level warning, heddle's info lines are dropped and its warnings kept."""
    out = io.StringIO()
    configure_logging("warning", json_output=True, stream=out)
    log = get_logger("heddle.server.test")
    log.info("quiet")
    log.warning("loud")
    assert [line["event"] for line in _json_lines(out)] == ["loud"]


def test_short_names_live_under_heddle() -> None:
    """get_logger with a name outside the heddle tree still obeys the configured level."""
    out = io.StringIO()
    configure_logging("debug", json_output=True, stream=out)
    get_logger("bench").debug("detail")
    [line] = _json_lines(out)
    assert line["logger"] == "heddle.bench"


def test_configuring_twice_keeps_one_handler() -> None:
    """Calling configure_logging again replaces its handler, so each event is written once."""
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", json_output=True, stream=first)
    configure_logging("info", json_output=True, stream=second)
    get_logger("heddle.server.test").info("once")
    assert first.getvalue() == ""
    assert [line["event"] for line in _json_lines(second)] == ["once"]


def test_terminal_gets_console_lines_and_pipes_get_json() -> None:
    """With json_output unset, a terminal stream gets console text and a plain stream gets JSON."""
    tty = TerminalStream()
    configure_logging("info", stream=tty)
    get_logger("heddle.server.test").info("to a person", model="resnet")
    text = tty.getvalue()
    assert "to a person" in text and "model" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])

    pipe = io.StringIO()
    configure_logging("info", stream=pipe)
    get_logger("heddle.server.test").info("to a machine")
    assert _json_lines(pipe)[0]["event"] == "to a machine"


def test_exception_is_rendered_into_the_json_line() -> None:
    """log.exception puts the traceback into the line's exception field."""
    out = io.StringIO()
    configure_logging("info", json_output=True, stream=out)
    try:
        raise RuntimeError("backend fell over")
    except RuntimeError:
        get_logger("heddle.server.test").exception("stage failed")
    [line] = _json_lines(out)
    assert "RuntimeError: backend fell over" in line["exception"]


def test_unknown_level_is_refused() -> None:
    """A level name that is not a logging level raises ValueError listing the valid ones."""
    with pytest.raises(ValueError, match="verbose.*debug"):
        configure_logging("verbose")


def test_a_sampled_log_writes_one_line_per_key_and_period_with_the_count_left_out() -> None:
    """100 refusals in the same second give one line; the first after the period says 99 were left
    out; another key has its own line; a key quiet for a period logs without a count."""
    stream = io.StringIO()
    configure_logging("info", json_output=True, stream=stream)
    now = [10.0]
    sampled = SampledLog(get_logger("heddle.test"), period_s=1.0, clock=lambda: now[0])
    for _ in range(100):
        sampled.info(("tiny", "RESOURCE_EXHAUSTED"), "request refused", model="tiny")
    sampled.info(("tiny", "INVALID_ARGUMENT"), "request refused", model="tiny")
    now[0] += 1.0
    sampled.info(("tiny", "RESOURCE_EXHAUSTED"), "request refused", model="tiny")
    now[0] += 5.0
    sampled.info(("tiny", "RESOURCE_EXHAUSTED"), "request refused", model="tiny")
    lines = _json_lines(stream)
    assert [line.get("left_out") for line in lines] == [None, None, 99, None]
    assert all(line["event"] == "request refused" and line["model"] == "tiny" for line in lines)
