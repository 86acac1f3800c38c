"""docker-compose.yml, checked without Docker: the services and how they connect, images and build contexts, each
command parsed by the CLI it calls, volumes, healthchecks and loopback-only ports."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from flows.cli import main
from tasks.config import load_config
from tests.conftest import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP = "/app"  # the image's WORKDIR, where the Dockerfile copies the checkout


def _mounts(service: dict) -> dict[str, str]:
    """container path -> volume name for a service's named-volume mounts."""
    found = {}
    for spec in service.get("volumes", []):
        source, target = spec.split(":")[:2]
        found[target] = source
    return found


def _env(service: dict) -> dict[str, str]:
    return service.get("environment") or {}


def _in_repo(path: str) -> Path:
    assert path.startswith(APP + "/"), path
    return REPO / path[len(APP) + 1:]


def test_the_services_are_there_and_each_has_an_image_and_a_healthcheck():
    assert set(SERVICES) == {"postgres", "prefect-server", "pipeline", "dashboard", "docs-site"}
    for name, service in SERVICES.items():
        assert service.get("image") or service.get("build"), name
        if "build" in service:
            context = REPO / service["build"]
            assert (context / "Dockerfile").is_file()
        test = service["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
    assert SERVICES["postgres"]["image"].startswith("postgres:")


def test_the_dockerfile_copies_what_exists_and_installs_the_cpu_torch_it_pins():
    dockerfile = (REPO / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (\S+)", dockerfile, re.M):
        assert (REPO / source).exists(), source
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in dockerfile
    assert "torch==2.13.0" in (REPO / "pyproject.toml").read_text()
    assert re.search(r"^WORKDIR /app$", dockerfile, re.M)


def test_ports_are_bound_to_loopback_only():
    published = [(name, p) for name, s in SERVICES.items() for p in s.get("ports", [])]
    assert {name for name, _ in published} == {"prefect-server", "dashboard"}
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), (name, port)


def test_named_volumes_hold_the_data_and_the_warehouse_and_are_declared():
    declared = set(COMPOSE["volumes"])
    for name, service in SERVICES.items():
        for target, source in _mounts(service).items():
            assert source in declared, (name, source)
    cfg = load_config(REPO / "configs" / "compose.toml")
    pipeline, dashboard = _mounts(SERVICES["pipeline"]), _mounts(SERVICES["dashboard"])
    assert pipeline[str(cfg.work_dir)] == "data" and pipeline[str(cfg.warehouse_path.parent)] == "warehouse"
    # the dashboard reads the same paths (the warehouse, and training's metrics.jsonl under the data), read-only
    assert dashboard == {str(cfg.work_dir): "data", str(cfg.warehouse_path.parent): "warehouse"}
    assert all(spec.endswith(":ro") for spec in SERVICES["dashboard"]["volumes"])
    assert _mounts(SERVICES["postgres"]) == {"/var/lib/postgresql/data": "pgdata"}


def test_the_server_runs_on_postgres_and_the_others_find_it():
    server, pg = SERVICES["prefect-server"], _env(SERVICES["postgres"])
    url = _env(server)["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert url == (f"postgresql+asyncpg://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/"
                   f"{pg['POSTGRES_DB']}")
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert server["command"][:3] == ["prefect", "server", "start"] and "0.0.0.0" in server["command"]
    port = server["command"][server["command"].index("--port") + 1]
    assert _env(SERVICES["pipeline"])["PREFECT_API_URL"] == f"http://prefect-server:{port}/api"
    assert SERVICES["pipeline"]["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    assert _env(SERVICES["dashboard"])["PREFECT_UI_URL"] == f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("service", ["pipeline", "dashboard"])
def test_crucible_commands_parse_and_name_files_that_exist(service):
    command = SERVICES[service]["command"]
    assert command[0] == "crucible"
    args = command[1:]
    sub = main.commands[args[0]]
    ctx = sub.make_context(args[0], [a if not a.startswith(APP + "/") else str(_in_repo(a)) for a in args[1:]])
    if service == "pipeline":
        assert args[0] == "serve" and ctx.params["cron"] == "0 3 * * *"
        cfg = load_config(ctx.params["config"])
        seed_host = re.match(r"https?://([^/]+)/", cfg.crawl.seeds[0]).group(1)
        assert seed_host.split(":")[0] == "docs-site" and seed_host in cfg.crawl.private_hosts
        assert SERVICES["pipeline"]["depends_on"]["docs-site"]["condition"] == "service_healthy"
        site = SERVICES["docs-site"]["command"]
        assert site[site.index("-p") + 1] == seed_host.split(":")[1] and SERVICES["docs-site"]["stdin_open"]
        assert "crucible-scheduled-pipeline/compose" in SERVICES["pipeline"]["healthcheck"]["test"]
    else:
        assert args[0] == "dashboard" and ctx.params["public"] and ctx.params["host"] == "0.0.0.0"
        assert ctx.params["warehouse_path"] == str(load_config(REPO / "configs" / "compose.toml").warehouse_path)
        port = SERVICES["dashboard"]["ports"][0].rsplit(":", 1)[1]
        assert str(ctx.params["port"]) == port and f":{port}/healthz" in " ".join(
            SERVICES["dashboard"]["healthcheck"]["test"])
