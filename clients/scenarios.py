"""Load-test scenarios: apps with a pipeline, priority, deadline and arrival process; the shipped set.

A scenario is TOML (a file, or one of the shipped SCENARIOS in clients/shipped_scenarios.py, which
double as examples of the format):

    name = "my_scenario"
    description = "what it stands for"

    [[apps]]
    name = "segmentation 30 FPS"   # what the app stands for; reports are keyed by it
    pipeline = "multihead"         # a pipeline the server runs
    priority = 4                   # 0 = server default; else 1..levels, higher is more urgent
    deadline_ms = 33               # end-to-end deadline sent with each request; omit for none
    arrival = "periodic"           # poisson | periodic | burst | closed
    rate_hz = 30                   # poisson: mean rate; periodic: frames/s per stream; burst: bursts/s
    jitter_ms = 2                  # periodic: each frame moves by up to +-jitter_ms
    streams = 1                    # periodic: independent streams (cameras), random phases
    burst_size = 1                 # burst: requests sent at once per burst
    concurrency = 1                # closed: requests kept in flight
    think_ms = 0                   # closed: pause after each response
    stream = false                 # true: InferStream, so the first token's arrival is timed by the client
    max_new_tokens = 0             # LLM pipelines: tokens to generate (0 = the model's default)
"""

from __future__ import annotations

try:  # tomllib is new in 3.11; on 3.10 the tomli package is the same parser
    import tomllib
except ModuleNotFoundError:
    import tomli as tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from heddle.clients.shipped_scenarios import DEFAULT_SCENARIO, SCENARIOS

# DEFAULT_SCENARIO and SCENARIOS are re-exported: this module is where their callers have found them.
__all__ = [
    "ARRIVALS", "DEFAULT_SCENARIO", "SCENARIOS", "App", "Scenario", "ScenarioError",
    "load_scenario", "parse_scenario",
]

ARRIVALS = ("poisson", "periodic", "burst", "closed")


class ScenarioError(ValueError):
    """A scenario that cannot be used; the message names the scenario, the app and the field."""


@dataclass(frozen=True, slots=True)
class App:
    """One application of a scenario: what it runs, how urgent it is, and when it sends."""

    name: str
    pipeline: str
    arrival: str
    priority: int = 0
    deadline_ms: float | None = None
    rate_hz: float = 0.0
    jitter_ms: float = 0.0
    streams: int = 1
    burst_size: int = 1
    concurrency: int = 1
    think_ms: float = 0.0
    stream: bool = False
    max_new_tokens: int = 0

    @property
    def open_loop(self) -> bool:
        return self.arrival != "closed"

    @property
    def offered_rps(self) -> float | None:
        """Requests per second the arrival process offers; None for closed loop (set by the server)."""
        if self.arrival == "periodic":
            return self.rate_hz * self.streams
        if self.arrival == "burst":
            return self.rate_hz * self.burst_size
        return self.rate_hz if self.arrival == "poisson" else None


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named mix of apps run together."""

    name: str
    apps: tuple[App, ...]
    description: str = ""

    def scaled(self, factor: float) -> Scenario:
        """The same scenario with every open-loop rate multiplied by factor (closed loops unchanged)."""
        if factor <= 0:
            raise ScenarioError(f"rate scale must be positive, got {factor}")
        apps = tuple(replace(a, rate_hz=a.rate_hz * factor) if a.open_loop else a for a in self.apps)
        return replace(self, apps=apps)


_APP_FIELDS = set(App.__dataclass_fields__)
_INT_FIELDS = {"priority", "streams", "burst_size", "concurrency", "max_new_tokens"}
_BOOL_FIELDS = {"stream"}
_STR_FIELDS = {"name", "pipeline", "arrival"}


def _app_from_dict(raw: Mapping[str, Any], where: str) -> App:
    unknown = set(raw) - _APP_FIELDS
    if unknown:
        raise ScenarioError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(_APP_FIELDS)}")
    for key in ("name", "pipeline", "arrival"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ScenarioError(f"{where}: {key!r} must be a non-empty string")
    for key, value in raw.items():
        if key in _BOOL_FIELDS:
            if not isinstance(value, bool):
                raise ScenarioError(f"{where}: {key} must be true or false, got {value!r}")
        elif key in _INT_FIELDS and (not isinstance(value, int) or isinstance(value, bool)):
            raise ScenarioError(f"{where}: {key} must be an integer, got {value!r}")
        elif key not in _INT_FIELDS and key not in _STR_FIELDS and not (
                isinstance(value, (int, float)) and not isinstance(value, bool)):
            raise ScenarioError(f"{where}: {key} must be a number, got {value!r}")
    numeric = _APP_FIELDS - _INT_FIELDS - _BOOL_FIELDS - _STR_FIELDS
    app = App(**{k: float(v) if k in numeric else v for k, v in raw.items()})
    _check_app(app, f"{where} ({app.name!r})")
    return app


def _check_app(app: App, where: str) -> None:
    if app.arrival not in ARRIVALS:
        raise ScenarioError(f"{where}: arrival {app.arrival!r} is not one of {', '.join(ARRIVALS)}")
    if app.open_loop and app.rate_hz <= 0:
        raise ScenarioError(f"{where}: {app.arrival} arrivals need rate_hz > 0")
    if app.arrival == "closed" and app.concurrency < 1:
        raise ScenarioError(f"{where}: closed loop needs concurrency >= 1")
    if app.priority < 0:
        raise ScenarioError(f"{where}: priority must be >= 0 (0 = server default)")
    if app.deadline_ms is not None and app.deadline_ms <= 0:
        raise ScenarioError(f"{where}: deadline_ms must be positive (omit it for no deadline)")
    if min(app.jitter_ms, app.think_ms) < 0 or min(app.streams, app.burst_size) < 1:
        raise ScenarioError(f"{where}: jitter_ms/think_ms must be >= 0, streams/burst_size >= 1")
    if app.max_new_tokens < 0:
        raise ScenarioError(f"{where}: max_new_tokens must be >= 0 (0 = the model's default)")


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    """Parse scenario TOML; raises ScenarioError saying what is wrong and where."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(f"{source}: not valid TOML: {err}") from None
    unknown = set(raw) - {"name", "description", "apps"}
    if unknown:
        raise ScenarioError(f"{source}: unknown top-level field(s) {sorted(unknown)}")
    apps_raw = raw.get("apps")
    if not isinstance(apps_raw, list) or not apps_raw:
        raise ScenarioError(f"{source}: a scenario needs at least one [[apps]] table")
    apps = tuple(_app_from_dict(a, f"{source}: apps[{i}]") for i, a in enumerate(apps_raw))
    names = [a.name for a in apps]
    if len(set(names)) != len(names):
        raise ScenarioError(f"{source}: app names must be unique, got {names}")
    name = raw.get("name") or Path(source).stem
    return Scenario(name=str(name), apps=apps, description=str(raw.get("description", "")))


def load_scenario(name_or_path: str | None) -> Scenario:
    """A shipped scenario by name (None = the default mix), or a TOML file by path."""
    key = name_or_path or DEFAULT_SCENARIO
    if key in SCENARIOS:
        return parse_scenario(SCENARIOS[key], key)
    path = Path(key)
    if path.suffix == ".toml" or path.exists():
        try:
            return parse_scenario(path.read_text(), str(path))
        except OSError as err:
            raise ScenarioError(f"cannot read scenario file {path}: {err}") from None
    raise ScenarioError(f"unknown scenario {key!r}: give a .toml file or one of {sorted(SCENARIOS)}")
