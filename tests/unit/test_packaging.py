"""The container files, checked as far as a machine without a Docker engine can: hadolint on the
Dockerfile, the compose-spec JSON schema on docker-compose.yml (both shipped by PyPI packages,
dev dependencies), and the structure the README's "Containers" section promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from energy_engine.app import create_app
from energy_engine.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the virtualenv's console scripts (hadolint, check-jsonschema)


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    done = _run(str(BIN / "hadolint"), "--no-color", "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_file_is_valid_by_the_compose_spec_schema() -> None:
    done = _run(
        str(BIN / "check-jsonschema"),
        "--builtin-schema",
        "vendor.compose-spec",
        "docker-compose.yml",
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dockerfile_is_multi_stage_slim_unprivileged_and_checks_health() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert stages == ["python:3.11-slim", "python:3.11-slim"]
    assert "COPY --from=build /opt/engine /opt/engine" in text
    (user,) = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert not user.startswith(("root", "0"))
    (check,) = re.findall(r"^HEALTHCHECK .*\n\s+CMD (.+)$", text, re.MULTILINE)
    assert '"python"' in check and "curl" not in check and "/health/live" in check


def test_compose_runs_the_engine_on_a_healthy_postgres_16_with_named_volumes() -> None:
    compose = _compose()
    db, engine = compose["services"]["db"], compose["services"]["engine"]
    assert db["image"] == "postgres:16"
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert engine["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert engine["environment"]["DATABASE_URL"].startswith("postgresql://energy:")
    assert "@db:5432/energy" in engine["environment"]["DATABASE_URL"]
    probe = " ".join(engine["healthcheck"]["test"])
    assert probe.startswith("CMD python") and "/health/ready" in probe
    mounts = {
        volume.split(":")[1]: volume.split(":")[0] for volume in db["volumes"] + engine["volumes"]
    }
    # The database and the engine's data directory (where admin.key is written) are kept.
    assert mounts["/var/lib/postgresql/data"] in compose["volumes"]
    assert mounts[engine["environment"]["ENERGY_DATA_DIR"]] in compose["volumes"]


def test_the_health_probes_name_routes_the_engine_serves() -> None:
    app = create_app(Settings(_env_file=None))
    paths = {getattr(route, "path", None) for route in app.routes}
    assert {"/health/live", "/health/ready"} <= paths


def test_the_build_context_holds_what_the_image_needs_and_no_local_state() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ignored[ignored.index("*") :][:4] == ["*", "!pyproject.toml", "!README.md", "!src/"]
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", (ROOT / "Dockerfile").read_text(), re.M)
    assert copied == ["pyproject.toml README.md", "src"]
