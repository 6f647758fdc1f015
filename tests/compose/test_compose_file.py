"""docker-compose.yaml and the Dockerfile, checked without a Docker engine.

Two independent validators: Debian's ``docker-compose config`` (v1; resolves anchors, variables and
env files the way Compose does) and the Compose specification's JSON schema (``compose-spec.json``,
copied from the project's shared reference folder). Then the rendered stack is checked for what
makes it work: one image, the Celery topology, the execution API URL, one JWT secret, and an Adobe
connection that reaches the emulator service over verified TLS, switchable with one env file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aep_emulator.connection import airflow_connection

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = Path(__file__).with_name("compose-spec.json")
CONN_VAR = "AIRFLOW_CONN_ADOBE_EXPERIENCE_PLATFORM_DEFAULT"
AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
    "airflow-init",
)


def _docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("CI must have docker-compose (Debian package docker-compose; .ci/run installs it)")
    pytest.skip("docker-compose (v1) is not installed: apt-get install -y docker-compose")


def _render(**env: str) -> dict:
    """``docker-compose config`` of the repository's file, parsed."""
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("CJA_AUDIENCES", "AIRFLOW", "COMPOSE_"))
    }
    result = subprocess.run(
        [_docker_compose(), "--project-directory", str(ROOT), "-f", "docker-compose.yaml", "config"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def stack() -> dict:
    return _render()


@pytest.mark.parametrize("document", ["source", "rendered"])
def test_valid_against_the_compose_specification(document, tmp_path):
    path = ROOT / "docker-compose.yaml"
    if document == "rendered":
        path = tmp_path / "rendered.yaml"
        path.write_text(yaml.safe_dump(_render()))
    checker = Path(sys.executable).with_name("check-jsonschema")
    result = subprocess.run(
        [str(checker), "--schemafile", str(SCHEMA), str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_celery_topology_on_one_image(stack):
    services = stack["services"]
    assert set(AIRFLOW_SERVICES) | {"postgres", "redis", "aep-emulator"} <= set(services)
    image = services["airflow-worker"]["image"]
    for name in (*AIRFLOW_SERVICES, "aep-emulator"):
        assert services[name]["image"] == image and services[name]["build"]["context"] == str(ROOT), name
    commands = {name: _words(services[name].get("command")) for name in AIRFLOW_SERVICES}
    assert commands["airflow-apiserver"] == ["api-server"] and commands["airflow-worker"] == [
        "celery",
        "worker",
    ]
    assert commands["airflow-triggerer"] == ["triggerer"] and commands["airflow-dag-processor"] == [
        "dag-processor"
    ]

    envs = {name: services[name]["environment"] for name in AIRFLOW_SERVICES}
    for name, env in envs.items():
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:@redis:6379"), name
        assert "@postgres/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], name
        # Tasks call the execution API of the api-server service, on the port it listens on.
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/", (
            name
        )
    assert services["airflow-apiserver"]["ports"][0]["target"] == 8080
    assert (
        len({env["AIRFLOW__API_AUTH__JWT_SECRET"] for env in envs.values()}) == 1
    )  # signs and checks tokens
    assert len({env["AIRFLOW__API_AUTH__JWT_ISSUER"] for env in envs.values()}) == 1

    worker = services["airflow-worker"]["depends_on"]
    assert (
        worker["aep-emulator"]["condition"] == worker["airflow-apiserver"]["condition"] == "service_healthy"
    )
    init = " ".join(services["airflow-init"]["command"])
    assert (
        "pools set cja_audiences_query_service" in init
        and envs["airflow-init"]["_AIRFLOW_DB_MIGRATE"] == "true"
    )


def _words(command: str | list[str] | None) -> list[str]:
    return command.split() if isinstance(command, str) else list(command or [])


def _mounts(service: dict) -> list[dict]:
    """Volumes as {source, target, read_only}, from the short ("src:dst:ro") or the long syntax."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            mounts.append({"source": source, "target": target, "read_only": mode == ["ro"]})
        else:
            mounts.append(
                {
                    "source": volume.get("source"),
                    "target": volume["target"],
                    "read_only": bool(volume.get("read_only")),
                }
            )
    return mounts


def _emulator_args(stack: dict) -> dict[str, str]:
    command = stack["services"]["aep-emulator"]["command"][-1]
    assert "-m aep_emulator" in command
    return dict(re.findall(r"--([a-z-]+) (\S+)", command))


def test_the_connection_reaches_the_emulator_over_verified_tls(stack):
    services = stack["services"]
    args = _emulator_args(stack)
    conn = json.loads(services["airflow-worker"]["environment"][CONN_VAR])
    for name in AIRFLOW_SERVICES:
        assert json.loads(services[name]["environment"][CONN_VAR]) == conn, name

    # The certificate names the service the connection uses; the CA bundle is where the emulator
    # writes it (<state dir>/tls/ca.pem), on the volume the Airflow services mount.
    assert args["tls-hostname"] == "aep-emulator" and args["host"] == "0.0.0.0"
    state_dir = args["state-dir"]
    emulator_volume = next(m for m in _mounts(services["aep-emulator"]) if m["target"] == state_dir)
    assert not emulator_volume["read_only"]
    for name in ("airflow-worker", "airflow-triggerer"):
        mount = next(m for m in _mounts(services[name]) if m["source"] == emulator_volume["source"])
        assert mount["target"] == state_dir and mount["read_only"], name
    assert conn["extra"]["ca_bundle"] == f"{state_dir}/tls/ca.pem"
    assert "verify" not in json.dumps(conn).lower()

    # Same connection as demo and tests build for an emulator (airflow_connection), seen from the
    # compose network; only the UI links point at the port published on the host.
    ready = {
        "base_url": "https://0.0.0.0:8443",
        "org_id": "EMULATOR0000000000000000@AdobeOrg",
        "sandbox": "prod",
        "client_id": args["client-id"],
        "ca_bundle": f"{state_dir}/tls/ca.pem",
        "pg_host": "aep-emulator",
        "pg_port": int(args["pg-port"]),
    }
    expected = airflow_connection(
        ready, args["client-secret"], public_base_url=f"https://aep-emulator:{args['port']}"
    )
    expected["extra"]["ui_url"] = f"https://localhost:{args['port']}/emulator/ui"
    assert conn == expected
    published = {p["published"] for p in services["aep-emulator"]["ports"]}
    assert int(args["port"]) in {int(p) for p in published}


def test_real_adobe_is_one_env_file():
    stack = _render(CJA_AUDIENCES_ENV_FILE=".env.adobe.example")
    conns = {
        json.dumps(json.loads(stack["services"][n]["environment"][CONN_VAR]), sort_keys=True)
        for n in AIRFLOW_SERVICES
    }
    assert len(conns) == 1
    conn = json.loads(conns.pop())
    assert conn["conn_type"] == "adobe_experience_platform" and conn["extra"]["org_id"].endswith("@AdobeOrg")
    assert (
        "aep-emulator" not in json.dumps(conn) and "ca_bundle" not in conn["extra"]
    )  # Adobe's URLs, system CAs


def test_dockerfile_installs_this_package_pinned_on_the_matching_image():
    dockerfile = (ROOT / "Dockerfile").read_text()
    base = re.search(
        r"^FROM apache/airflow:(?P<airflow>[\d.]+)-python(?P<python>[\d.]+)\s*$", dockerfile, re.M
    )
    assert base, "the base image must be apache/airflow:<version>-python<version>"
    pinned = re.search(
        r"^apache-airflow==([\d.]+)$", (ROOT / "requirements/constraints.txt").read_text(), re.M
    )
    assert pinned and pinned.group(1) == base["airflow"], "Dockerfile base image and the lock disagree"
    assert base["python"] == "3.11"  # the lock is made on 3.11 (requirements/constraints.txt)
    install = dockerfile[dockerfile.index("RUN pip install") :]
    assert "--constraint" in install and "requirements/constraints.txt" in install
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in install and "[emulator,celery]" in install
    # The emulator is its own distribution (aep-emulator/): copied whole and installed in the same pip
    # call as the provider, so the [emulator] extra's pin resolves to that copy, not to an index.
    copies = dict(re.findall(r"^COPY (?:--\S+ )*(.+?) (\S+)$", dockerfile, re.MULTILINE))
    emulator_dir = copies.get("aep-emulator/pyproject.toml aep-emulator/README.md", "").rstrip("/")
    assert emulator_dir and copies.get("aep-emulator/aep_emulator") == f"{emulator_dir}/aep_emulator", copies
    run = install[: install.index("\n", install.index("[emulator,celery]"))]
    assert re.search(rf"\s{re.escape(emulator_dir)}\s", run), run


def test_what_the_first_real_up_needed(stack):
    """Static guards for the defects ``test_compose_up.py`` found when the stack first ran."""
    services = stack["services"]
    # The init fails when any step fails (without -e only the last command's status counted) and
    # migrates once: the commands after the first run with the migration switched off.
    script = services["airflow-init"]["command"][-1]
    assert script.splitlines()[0].startswith("set -e"), script
    later = [line for line in script.splitlines() if "/entrypoint airflow" in line][1:]
    assert later and all("_AIRFLOW_DB_MIGRATE= " in line for line in later), later
    # The connection test (UI button, REST) is on in every Airflow service.
    for name in AIRFLOW_SERVICES:
        assert services[name]["environment"]["AIRFLOW__CORE__TEST_CONNECTION"] == "Enabled", name
    # CLI health checks get time for the CLI's start-up on a small machine.
    for name in ("airflow-dag-processor", "airflow-triggerer", "airflow-worker"):
        assert _seconds(services[name]["healthcheck"]["timeout"]) >= 30, name
    # Published ports can move (and stay on loopback) without editing the file.
    moved = _render(AIRFLOW_API_PORT="127.0.0.1:18080", EMULATOR_PORT="127.0.0.1:18443")["services"]
    for name, port, target in (("airflow-apiserver", 18080, 8080), ("aep-emulator", 18443, 8443)):
        (published,) = moved[name]["ports"]
        if isinstance(published, str):  # docker-compose v1 renders a port with a host IP as "ip:port:target"
            host_ip, host_port, container = published.split("/")[0].split(":")
            published = {"host_ip": host_ip, "published": host_port, "target": int(container)}
        assert (published["host_ip"], int(published["published"]), published["target"]) == (
            "127.0.0.1",
            port,
            target,
        ), published


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    number, unit = re.fullmatch(r"([\d.]+)(ms|s|m|h)", duration).groups()
    return float(number) * units[unit]
