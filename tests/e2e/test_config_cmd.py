"""`heddle config check` and `heddle config schema` as real processes, and every example config in
the repository (docs, docker, bench, the embedded default) valid under the schema and its JSON Schema."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

try:  # tomllib is new in 3.11; on 3.10 the tomli package is the same parser
    import tomllib
except ModuleNotFoundError:
    import tomli as tomllib
from pathlib import Path

import jsonschema
import pytest
from server_fixtures import REPO_ROOT, TESTS_DIR, heddle_cache_dir  # noqa: F401  (fixture found by name)
from test_config import GOOD

from heddle.server.config.default import default_config_document
from heddle.server.config.schema import json_schema, validate_document

DOCS = ["README.md", "docs/CONFIG.md", "docs/LLM.md", "docs/POWER.md", "docs/MULTIBOX.md", "docker/README.md"]
TOML_FILES = ["docker/heddle-compose.toml", "docker/heddle-compose-gpu.toml", "bench/echo.toml"]


def example_configs() -> dict[str, dict]:
    """Every ```toml block of the docs and every config file, by where it is."""
    found = {}
    for doc in DOCS:
        text = (REPO_ROOT / doc).read_text()
        for i, block in enumerate(re.finditer(r"^( *)```toml\n(.*?)^\1```", text, re.S | re.M)):
            found[f"{doc} block {i}"] = tomllib.loads(textwrap.dedent(block.group(2)))
    for name in TOML_FILES:
        found[name] = tomllib.loads((REPO_ROOT / name).read_text())
    return found


EXAMPLES = example_configs()


def heddle(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "heddle.server.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(TESTS_DIR), **(env or {})})


def test_the_docs_hold_the_examples_this_test_reads():
    """The block finder still finds the docs' examples (CONFIG.md's, LLM.md's two, POWER.md's three)."""
    assert len([k for k in EXAMPLES if k.startswith("docs/")]) >= 7, sorted(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_configs_are_valid_under_the_schema(name: str):
    """Every example the docs show, and every config file shipped, passes the schema heddle loads with."""
    validate_document(EXAMPLES[name], name)


@pytest.mark.slow
def test_json_schema_accepts_the_examples_and_the_default_and_refuses_typos():
    """`heddle config schema` prints a JSON Schema (draft 2020-12) that editors can trust: it accepts
    every example and the embedded default, and refuses the misspellings heddle refuses."""
    done = heddle("config", "schema")
    assert done.returncode == 0, done.stderr
    schema = json.loads(done.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for name, doc in {**EXAMPLES, "embedded default": default_config_document()}.items():
        assert not list(validator.iter_errors(doc)), name
    good = tomllib.loads(GOOD)
    assert not list(validator.iter_errors(good))
    for table, typo in [("devices", "slot"), ("models", "isolaton"), ("pipelines", "descripton")]:
        bad = tomllib.loads(GOOD)
        bad[table][0][typo] = 1
        assert list(validator.iter_errors(bad)), typo
    bad = tomllib.loads(GOOD)
    bad["pipelines"][0]["stages"][0]["priorty"] = 1
    assert list(validator.iter_errors(bad))


@pytest.mark.slow
def test_config_check_says_ok_in_one_line(tmp_path: Path):
    """`heddle config check FILE` on a good config: exit 0 and one summary line."""
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    done = heddle("config", "check", str(good))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{good}: ok: 1 device (py0), 2 models, 1 pipeline, policy priority\n"


@pytest.mark.slow
def test_config_check_of_the_embedded_default(heddle_cache_dir: Path):
    """`heddle config check` with no file checks the embedded default config."""
    done = heddle("config", "check", env={"HEDDLE_CACHE_DIR": str(heddle_cache_dir)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("<embedded default>: ok: ") and "6 pipelines" in done.stdout


@pytest.mark.slow
def test_config_check_exits_2_with_the_error(tmp_path: Path):
    """`heddle config check FILE` on a misspelled key: exit 2, the error on stderr, no traceback."""
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace('backend = "python"', 'backend = "python"\ncpu_afinity = [0]', 1))
    done = heddle("config", "check", str(bad))
    assert done.returncode == 2 and not done.stdout
    assert done.stderr == (f"heddle: config error: {bad}: devices[0] ('py0'): unknown key 'cpu_afinity' "
                           f"(did you mean 'cpu_affinity'? that is a key of onnxruntime devices; "
                           f"this device is python)\n")


def test_json_schema_is_the_same_in_process():
    """The CLI prints json_schema() itself (what a test or a tool can call without a process)."""
    assert json.loads(json_schema())["title"] == "heddle config"
