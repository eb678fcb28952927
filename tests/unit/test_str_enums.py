"""The enums whose values travel as text (stage status, admission action, power action kind, power
source) write exactly their old strings everywhere text leaves the server: str(), f-strings, JSON,
a Prometheus label and a proto string field."""

from __future__ import annotations

import json

import prometheus_client
import pytest

from heddle.scheduler.admission import Action
from heddle.scheduler.plan import PowerActionKind
from heddle.scheduler.power_settings import PowerSource
from heddle.scheduler.str_enum import StrEnum
from heddle.server.runtime.jobs import StageStatus
from heddle.v1 import heddle_pb2 as pb

MEMBERS = [m for enum in (StageStatus, Action, PowerActionKind, PowerSource) for m in enum]


@pytest.mark.parametrize("member", MEMBERS, ids=lambda m: f"{type(m).__name__}.{m.name}")
def test_a_member_is_its_value_as_text(member: StrEnum) -> None:
    """str(), format, %-format and json.dumps of a member give its value, and it equals that string."""
    value = member.value
    assert member == value and hash(member) == hash(value)
    assert str(member) == f"{member}" == f"{member:s}" == "%s" % member == value  # noqa: UP031 (the %-form is checked)
    assert type(str(member)) is str
    assert json.dumps({member: member}) == json.dumps({value: value})


def test_a_member_as_a_metrics_label_and_a_proto_field_is_its_value() -> None:
    """A Prometheus label and a proto string field set from a member read as the value (PowerSource
    labels heddle_power_watts; StageStatus labels heddle_stage_runs_total)."""
    registry = prometheus_client.CollectorRegistry()
    gauge = prometheus_client.Gauge("g", "g", ["source", "status"], registry=registry)
    gauge.labels(PowerSource.ESTIMATED, StageStatus.OK).set(1.0)
    assert 'g{source="estimated",status="OK"} 1.0' in prometheus_client.generate_latest(registry).decode()
    assert pb.DevicePower(source=PowerSource.MEASURED).SerializeToString() == \
        pb.DevicePower(source="measured").SerializeToString()


def test_stage_statuses_are_the_proto_stage_statuses() -> None:
    """Every StageStatus has the heddle.v1 StageResult status of its name, and no other exists."""
    proto = {n.removeprefix("STAGE_STATUS_") for n, _ in pb.StageStatus.items()} - {"UNSPECIFIED"}
    assert {s.value for s in StageStatus} == proto


def test_no_source_is_falsy_and_the_others_are_not() -> None:
    """PowerSource.NONE ("", nothing metered) is falsy, as the empty string it replaces was."""
    assert not PowerSource.NONE and all(s for s in PowerSource if s is not PowerSource.NONE)
