"""Live config reload: what changed between the running config and a new one, what cannot change
while serving, and the reload itself (load what is new in the background, then swap).

What reloads live: [[models]] and [[pipelines]], added, changed or removed. A changed model keeps
its name and must keep its inputs and outputs (new weights, a new file, other options): requests
already queued for it then run on the new version, which takes their tensors as the old one did.
Everything else (devices, [server], [power], [admission], [tracing], LLM models) needs a restart;
a config that changes any of it is refused whole, naming each difference, and nothing changes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from heddle.scheduler import DeviceSpec, ModelSpec
from heddle.scheduler.profiles import compatible
from heddle.server.config.load import Config
from heddle.server.observe.logs import get_logger

__all__ = ["PINNED_SERVER_KEYS", "ConfigDiff", "NotServed", "ReloadError", "ReloadTarget", "Reloader", "diff_configs",
           "fingerprint", "without"]

log = get_logger("heddle.reload")

# [server] keys the command line can set: a reload keeps the running values (the file's take effect
# at the next start), so `heddle serve --grpc-port 9000` survives a reload of a file saying 8001.
PINNED_SERVER_KEYS = ("grpc_host", "grpc_port", "metrics_host", "metrics_port", "http_host", "http_port", "policy",
                      "log_level", "trace_file", "insecure_admin")
UNLOAD_POLL_S = 0.5  # how often a removed model's last requests are looked for


class ReloadError(Exception):
    """The new config cannot be served (`fixed` False), or changes what cannot change live
    (`fixed` True); nothing changed."""

    def __init__(self, message: str, *, fixed: bool = False) -> None:
        super().__init__(message)
        self.fixed = fixed


class NotServed(ReloadError):
    """An unload named no model or pipeline being served."""


@dataclass(frozen=True, slots=True)
class ConfigDiff:
    models_added: tuple[str, ...] = ()
    models_changed: tuple[str, ...] = ()
    models_removed: tuple[str, ...] = ()
    pipelines_added: tuple[str, ...] = ()
    pipelines_changed: tuple[str, ...] = ()
    pipelines_removed: tuple[str, ...] = ()

    @property
    def to_load(self) -> tuple[str, ...]:
        return self.models_added + self.models_changed


def fingerprint(model: ModelSpec) -> tuple[int, int] | None:
    """(size, mtime) of the model's file, so a file rewritten in place counts as a change."""
    try:
        st = os.stat(model.artifact)
    except (OSError, ValueError, TypeError):
        return None  # not a file: a python function, a Triton model name, builtin:...
    return (st.st_size, st.st_mtime_ns)


def _split(old: Mapping[str, Any], new: Mapping[str, Any],
           same: Callable[[str], bool]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    added = tuple(sorted(set(new) - set(old)))
    removed = tuple(sorted(set(old) - set(new)))
    changed = tuple(sorted(n for n in set(old) & set(new) if not same(n)))
    return added, changed, removed


def _fixed(old: Config, new: Config) -> list[str]:
    """What differs that cannot change while serving."""
    fixed = []
    if old.devices != new.devices:
        fixed.append("[[devices]]")
    fixed += [f"[server] {f.name}" for f in dataclasses.fields(old.server)
              if getattr(old.server, f.name) != getattr(new.server, f.name)]
    fixed += [f"[{table}]" for table in ("power", "admission", "tracing") if getattr(old, table) != getattr(new, table)]
    return fixed


def diff_configs(old: Config, new: Config, prints: Mapping[str, tuple[int, int] | None]) -> ConfigDiff:
    """The changes from old to new; ReloadError naming everything that cannot change live.
    `prints`: each running model's file fingerprint, taken when it was loaded."""
    fixed = _fixed(old, new)
    added, changed, removed = _split(old.models, new.models, lambda n: old.models[n] == new.models[n]
                                     and prints.get(n) == fingerprint(new.models[n]))
    for name in added + changed + removed:
        if (new.models.get(name) or old.models[name]).kind == "llm":
            fixed.append(f"LLM model {name!r}")
    for name in changed:
        a, b = old.models[name], new.models[name]
        if a.kind != "llm" and (a.inputs != b.inputs or a.outputs != b.outputs):
            fixed.append(f"model {name!r}'s inputs or outputs (requests in flight were checked against them; "
                         "serve the new version under a new name)")
    if fixed:
        raise ReloadError("cannot change while serving (restart to apply): " + "; ".join(fixed), fixed=True)
    p_added, p_changed, p_removed = _split(old.pipelines, new.pipelines,
                                           lambda n: old.pipelines[n] == new.pipelines[n])
    return ConfigDiff(added, changed, removed, p_added, p_changed, p_removed)


def eligible_devices(model: ModelSpec, devices: Mapping[str, DeviceSpec], op_types: frozenset[str]) -> list[str]:
    """Where a model will be placed, as the core decides it (scheduler/view.py), health aside."""
    named = model.devices or [d for d, s in devices.items() if s.backend == model.backend]
    return [d for d in named if d in devices and compatible(op_types, devices[d])]


class ReloadTarget(Protocol):
    """What a reload needs of the runtime (server/runtime/runtime.py), without importing it."""

    config: Config
    executors: Mapping[str, Any]

    def op_types(self, model: ModelSpec) -> frozenset[str]: ...

    def models_in_flight(self) -> set[str]: ...

    def swap_config(self, config: Config, diff: ConfigDiff) -> None: ...


def without(config: Config, names: set[str]) -> Config:
    """The config less the named models (a bare name: all its versions) and pipelines, and less
    every pipeline that runs a model it drops (KServe's RepositoryModelUnload)."""
    if not names:
        return config
    models = {k: m for k, m in config.models.items() if k not in names and k.partition("@")[0] not in names}

    def keeps(p: Any) -> bool:
        return p.name not in names and all(s.model in models for s in p.stages)

    pipelines = {n: p for n, p in config.pipelines.items() if keeps(p)}
    variants = {n: v for n, v in config.variants.items()
                if n in pipelines and all(keeps(p) for p, _ in v)}
    return dataclasses.replace(config, models=models, pipelines=pipelines, variants=variants)


class Reloader:
    """One reload at a time: load the config, diff it, load new and changed models on their
    devices off the event loop, then swap the runtime (and what `on_swap` rebuilds) in one step."""

    def __init__(self, runtime: ReloadTarget, load: Callable[[str], Config],
                 on_swap: tuple[Callable[[Config], None], ...] = ()) -> None:
        self.runtime = runtime
        self.read = load  # path -> Config, with the running command-line values pinned
        self.on_swap = on_swap
        self.prints = {n: fingerprint(m) for n, m in runtime.config.models.items()}
        self.unloaded: set[str] = set()  # models and pipelines KServe unloaded: left out of every reload
        self._lock = asyncio.Lock()
        self._unloads: set[asyncio.Task[None]] = set()

    async def unload(self, name: str) -> ConfigDiff:
        """KServe RepositoryModelUnload: serve the running config less `name` (a model, all its
        versions, or a pipeline) and the pipelines that run it, until load(name)."""
        if name not in self.runtime.config.models and name not in self.runtime.config.pipelines and not any(
                k.partition("@")[0] == name for k in self.runtime.config.models):
            raise NotServed(f"no model or pipeline {name!r} is served")
        self.unloaded.add(name)
        return (await self._reload_with(lambda: without(self.runtime.config, {name})))[0]

    async def load(self, name: str, path: str = "") -> ConfigDiff:
        """KServe RepositoryModelLoad: reload the config file with `name` no longer left out."""
        self.unloaded.discard(name)
        return (await self.reload(path))[0]

    async def reload(self, path: str) -> tuple[ConfigDiff, Config, float]:
        """(the changes, the config now served, seconds it took); ReloadError when nothing changed."""
        return await self._reload_with(None, path)

    async def _reload_with(self, build: Callable[[], Config] | None,
                           path: str = "") -> tuple[ConfigDiff, Config, float]:
        async with self._lock:
            t0 = time.perf_counter()
            loop = asyncio.get_running_loop()
            try:  # parsing resolves models (reads ONNX files, builds demo models): off the loop
                new = build() if build is not None else await loop.run_in_executor(None, self.read, path)
            except ReloadError:
                raise
            except Exception as exc:  # ConfigError and any other reason the file cannot be served
                raise ReloadError(f"config not reloaded: {exc}") from None
            new = without(new, self.unloaded)
            diff = diff_configs(self.runtime.config, new, self.prints)
            await self._load_models(new, diff)
            self.runtime.swap_config(new, diff)
            for hook in self.on_swap:
                hook(new)
            self.prints.update({n: fingerprint(new.models[n]) for n in diff.to_load})
            for name in diff.models_removed:
                self.prints.pop(name, None)
                task = loop.create_task(self._unload_when_unused(name), name=f"heddle-unload-{name}")
                self._unloads.add(task)
                task.add_done_callback(self._unloads.discard)
            elapsed = time.perf_counter() - t0
            log.info("config reloaded", config=new.source, load_s=round(elapsed, 3),
                     **{k: v for k, v in dataclasses.asdict(diff).items() if v})
            return diff, new, elapsed

    async def _load_models(self, new: Config, diff: ConfigDiff) -> None:
        """Added models are loaded beside the running ones; a changed one replaces its old version
        on each device as it loads (same inputs and outputs, so either serves a queued run)."""
        devices = {d.id: d for d in new.devices}
        loop = asyncio.get_running_loop()
        jobs = []
        for name in diff.to_load:
            model = new.models[name]
            for device in eligible_devices(model, devices, self.runtime.op_types(model)):
                ex = self.runtime.executors[device]
                load = getattr(ex, "replace", ex.load) if name in diff.models_changed else ex.load
                jobs.append((name, device, loop.run_in_executor(ex.pool, load, model)))
        results = await asyncio.gather(*(j for _, _, j in jobs), return_exceptions=True)
        failed = [f"model {name!r} on device {device}: {r}" for (name, device, _), r in zip(jobs, results, strict=True)
                  if isinstance(r, BaseException)]
        if failed:
            for name in diff.models_added:  # never served: leave nothing behind
                for ex in self.runtime.executors.values():
                    _unload(ex, name)
            replaced = sorted({n for (n, _, _), r in zip(jobs, results, strict=True)
                               if n in diff.models_changed and not isinstance(r, BaseException)})
            note = f" (already replaced, same inputs and outputs: {replaced})" if replaced else ""
            raise ReloadError("config not reloaded: " + "; ".join(failed) + note)

    async def _unload_when_unused(self, name: str) -> None:
        """A removed model stays loaded until the requests that arrived before the reload end."""
        while name in self.runtime.models_in_flight():
            await asyncio.sleep(UNLOAD_POLL_S)
        if name in self.runtime.config.models:  # added back by a later reload meanwhile
            return
        for ex in self.runtime.executors.values():
            _unload(ex, name)
        log.info("removed model unloaded", model=name)

    def close(self) -> None:
        for task in self._unloads:
            task.cancel()


def _unload(executor: Any, model: str) -> None:
    unload = getattr(executor, "unload", None)
    if unload is not None:
        unload(model)
