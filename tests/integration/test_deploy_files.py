"""The container and compose files, checked without a Docker engine.

Docker cannot run here, so these tests read the Dockerfile, docker-compose.yml and deploy/ the way
Docker, Prometheus, Grafana and HAProxy would, and hold them to what the app actually accepts: its
flags, its settings, its metric names. promtool and haproxy validate their configs when installed
(Debian packages `prometheus` and `haproxy`), and the load balancer is run for real against stand-in
replicas to show that a namespace sticks to one replica.
"""

from __future__ import annotations

import ast
import contextlib
import fnmatch
import json
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from tests.conftest import free_port, require_tool

yaml = pytest.importorskip("yaml", reason="pyyaml reads the compose and Prometheus files (dev extra)")

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_GPU = REPO / "deploy" / "compose.gpu.yml"
PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
HAPROXY = REPO / "deploy" / "haproxy" / "haproxy.cfg"
DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
GRAFANA_PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"

# The metric families of the service's contract, by type.
CONTRACT_METRICS = {
    "reward_requests_total": "counter",
    "reward_request_duration_seconds": "histogram",
    "reward_queue_wait_seconds": "histogram",
    "reward_forward_duration_seconds": "histogram",
    "reward_batch_size": "histogram",
    "reward_batch_tokens": "histogram",
    "reward_batch_padding_ratio": "histogram",
    "reward_queue_depth": "gauge",
    "reward_inflight_requests": "gauge",
    "reward_shed_total": "counter",
    "reward_value": "histogram",
    "reward_model_info": "info",
    "reward_model_load_seconds": "histogram",
    "reward_reloads_total": "counter",
    "reward_last_reload_timestamp_seconds": "gauge",
}
DASHBOARD_MUST_SHOW = {
    "reward_requests_total", "reward_request_duration_seconds", "reward_batch_size", "reward_queue_depth",
    "reward_value", "reward_model_info", "reward_reloads_total",
}  # fmt: skip
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s", "$instance": ".*"}


# --- reading the files ---


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def compose_services() -> dict:
    return load_yaml(COMPOSE)["services"]


def interpolation_default(value: str) -> str:
    """'${VAR:-default}' -> 'default', as compose resolves it when VAR is unset."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", value)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def exec_form(arguments: str) -> list[str]:
    """The JSON array of a CMD/HEALTHCHECK CMD/VOLUME in exec form."""
    assert arguments.lstrip().startswith("["), f"use the exec (JSON array) form: {arguments}"
    return json.loads(arguments)


def image_command() -> list[str]:
    [cmd] = [args for name, args in final_stage() if name == "CMD"]
    return exec_form(cmd)


def flag_value(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides; '!' re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated, pattern = pattern.startswith("!"), pattern.lstrip("!").rstrip("/")
        if any(_dockerignore_match(prefix, pattern) for prefix in prefixes):
            excluded = not negated
    return excluded


def _dockerignore_match(path: str, pattern: str) -> bool:
    if pattern.startswith("**/"):
        tail = pattern[3:]
        return any(
            fnmatch.fnmatchcase("/".join(path.split("/")[i:]), tail) for i in range(path.count("/") + 1)
        )
    return path.count("/") == pattern.count("/") and fnmatch.fnmatchcase(path, pattern)


def dashboard_expressions() -> list[str]:
    exprs = []
    for path in DASHBOARDS.glob("*.json"):
        dashboard = json.loads(path.read_text())
        exprs += [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
        exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def metric_family(series: str) -> str:
    """'reward_batch_size_bucket' -> 'reward_batch_size' for histograms; other names are their family."""
    for suffix in HISTOGRAM_SERIES:
        base = series.removesuffix(suffix)
        if base != series and CONTRACT_METRICS.get(base) == "histogram":
            return base
    return series


def families_in(expr: str) -> set[str]:
    return {metric_family(name) for name in re.findall(r"\breward_[a-z_]+\b", expr)}


def names_exported_by_metrics_module() -> set[str]:
    """Family names app/metrics.py can export: its string literals, with prometheus-client's suffixes."""
    tree = ast.parse((REPO / "app" / "metrics.py").read_text())
    literals = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return {name + suffix for name in literals for suffix in ("", "_total", "_info")}


# --- Dockerfile ---


def test_image_runs_the_service_as_the_tests_start_it() -> None:
    command = image_command()
    assert command[0] == "reward-serve"
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'reward-serve = "app.__main__:main"' in pyproject, "reward-serve must be `python -m app`"
    assert flag_value(command, "--host") == "0.0.0.0", "the app binds 127.0.0.1 unless told otherwise"
    assert flag_value(command, "--port").isdigit()
    assert flag_value(command, "--model-store") in exec_form(dict(final_stage())["VOLUME"])


def test_image_command_flags_are_accepted_by_the_app() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "app", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    for flag in (word for word in image_command() if word.startswith("--")):
        assert f"{flag} " in help_text, f"`python -m app --help` does not list {flag}"


def test_healthcheck_asks_readiness_on_the_served_port() -> None:
    [healthcheck] = [args for name, args in final_stage() if name == "HEALTHCHECK"]
    probe = exec_form(healthcheck[healthcheck.index("CMD") + 3 :])
    port = flag_value(image_command(), "--port")
    assert probe[:2] == ["python", "-c"], "slim images have no curl: probe with python"
    assert f"http://127.0.0.1:{port}/readyz" in probe[2]
    compile(probe[2], "<healthcheck>", "exec")


def test_image_keeps_running_statistics_in_a_volume() -> None:
    env = dict(
        pair.split("=", 1) for name, args in final_stage() if name == "ENV" for pair in shlex.split(args)
    )
    assert {key for key in env if key.startswith("REWARD_")} <= {
        f"REWARD_{f.upper()}" for f in Settings.model_fields
    }
    stats_dir = str(Path(env["REWARD_STATS_PATH"]).parent)
    assert stats_dir in exec_form(dict(final_stage())["VOLUME"]), "snapshots must outlive the container"


def test_image_is_multi_stage_and_runs_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions()
    assert sum(name == "FROM" for name, _ in instructions) >= 2
    users = [args for name, args in final_stage() if name == "USER"]
    assert users and users[-1] not in ("root", "0"), "the final stage must switch to a non-root user"
    assert any(name == "COPY" and "--from=builder" in args for name, args in final_stage())


def test_torch_build_is_chosen_by_build_argument_and_defaults_to_cpu() -> None:
    args = dict(
        args.split("=", 1) for name, args in dockerfile_instructions() if name == "ARG" and "=" in args
    )
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    torch_install = next(a for n, a in dockerfile_instructions() if n == "RUN" and "torch==" in a)
    assert "--index-url" in torch_install and "${TORCH_INDEX_URL}" in torch_install
    for service in compose_services().values():
        build_args = service.get("build", {}).get("args", {})
        assert set(build_args) <= set(args), f"compose passes build args the Dockerfile lacks: {build_args}"


def test_image_installs_the_project_without_dev_extras() -> None:
    installs = [a for n, a in dockerfile_instructions() if n == "RUN" and "pip install" in a]
    assert any(re.search(r"pip install \.(\s|$)", a) for a in installs), "install from pyproject.toml"
    assert not any("[dev]" in a or "-e " in a for a in installs)


def test_image_installs_the_locked_versions() -> None:
    [install] = [
        a for n, a in dockerfile_instructions() if n == "RUN" and re.search(r"pip install \.(\s|$)", a)
    ]
    constraints = re.search(r"-c (\S+)", install)
    assert constraints, "the project is installed without the lock's versions as constraints"
    assert f"requirements.lock > {constraints[1]}" in install and "grep -v '^torch=='" in install


def test_build_context_keeps_out_local_state_but_not_what_the_image_copies() -> None:
    copied = [
        word
        for name, args in dockerfile_instructions()
        if name == "COPY" and "--from=" not in args
        for word in shlex.split(args)[:-1]
        if not word.startswith("--")
    ]
    assert copied
    for source in copied:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert not dockerignore_excludes(source.rstrip("/")), (
            f".dockerignore drops {source}, which COPY needs"
        )
    for local in (
        ".venv/bin/python",
        ".git/HEAD",
        "app/__pycache__/x.pyc",
        ".pytest_cache/v",
        "data/x.jsonl",
    ):
        assert dockerignore_excludes(local), f"{local} would be sent to the Docker daemon"


def test_bundled_default_model_is_complete() -> None:
    store = REPO / "model_store"
    if not (store / "CURRENT").is_file():
        pytest.skip("no default model published in model_store/ yet")
    version = (store / "CURRENT").read_text().strip()
    assert (store / version / "manifest.json").is_file(), f"CURRENT names {version}, which has no manifest"


# --- docker-compose.yml ---


def test_compose_mounts_only_files_that_exist() -> None:
    for path in (COMPOSE, COMPOSE_GPU):
        for name, service in load_yaml(path)["services"].items():
            for volume in service.get("volumes", []):
                source = interpolation_default(volume).split(":")[0]
                if source.startswith("./"):
                    assert (REPO / source).exists(), f"{path.name}: {name} mounts missing {source}"
            if "build" in service and "context" in service["build"]:
                assert (REPO / service["build"]["context"] / "Dockerfile").is_file()


def test_compose_sets_only_settings_the_service_knows() -> None:
    known = {f"REWARD_{field.upper()}" for field in Settings.model_fields}
    for path in (COMPOSE, COMPOSE_GPU):
        for name, service in load_yaml(path)["services"].items():
            env = service.get("environment", [])
            keys = {item.split("=")[0] for item in env} if isinstance(env, list) else set(env)
            unknown = {key for key in keys if key.startswith("REWARD_")} - known
            assert not unknown, f"{path.name}: {name} sets {unknown}, which app/config.py does not read"


def test_compose_mounts_the_model_store_read_only_where_the_image_serves_it() -> None:
    store = flag_value(image_command(), "--model-store")
    for name in ("reward", "reward-pool"):
        mounts = [interpolation_default(v).split(":") for v in compose_services()[name]["volumes"]]
        assert ["./model_store", store, "ro"] in mounts, (
            f"{name} must mount ./model_store read-only at {store}"
        )


def test_compose_waits_for_the_service_to_drain_before_killing_it() -> None:
    grace = compose_services()["reward"]["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) > Settings().shutdown_grace_s


def test_prometheus_scrapes_every_replica_on_the_served_port() -> None:
    built = {name for name, service in compose_services().items() if "build" in service}
    [job] = load_yaml(PROMETHEUS)["scrape_configs"]
    [dns] = job["dns_sd_configs"]
    assert set(dns["names"]) == built
    assert str(dns["port"]) == flag_value(image_command(), "--port")
    assert job.get("metrics_path", "/metrics") == "/metrics"


def test_gpu_variant_builds_cuda_torch_and_reserves_an_nvidia_gpu() -> None:
    built = {name for name, service in compose_services().items() if "build" in service}
    gpu = load_yaml(COMPOSE_GPU)["services"]
    assert set(gpu) == built
    for name, service in gpu.items():
        assert "/whl/cu" in interpolation_default(service["build"]["args"]["TORCH_INDEX_URL"]), name
        [device] = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"], name
        assert service["image"] != compose_services()[name]["image"], "CPU and CUDA images need distinct tags"


def test_scale_profile_puts_the_pool_behind_the_load_balancer() -> None:
    services = compose_services()
    assert services["reward-pool"]["profiles"] == ["scale"] and services["lb"]["profiles"] == ["scale"]
    assert "ports" not in services["reward-pool"], "replicas are reached through the load balancer only"
    assert "reward-pool" in services["lb"]["depends_on"]
    assert any(v.startswith("./deploy/haproxy/haproxy.cfg:") for v in services["lb"]["volumes"])
    assert f"reward-pool:{flag_value(image_command(), '--port')}" in HAPROXY.read_text()


def test_load_balancer_hashes_consistently_on_the_namespace_header() -> None:
    config = HAPROXY.read_text()
    assert re.search(r"^\s*balance hdr\(X-Namespace\)\s*$", config, re.MULTILINE)
    assert re.search(r"^\s*hash-type consistent\b", config, re.MULTILINE)


# --- Grafana ---


def test_dashboard_queries_use_only_contract_metrics() -> None:
    used = set().union(*map(families_in, dashboard_expressions()))
    assert used <= set(CONTRACT_METRICS), f"not in the metrics contract: {used - set(CONTRACT_METRICS)}"
    assert used >= DASHBOARD_MUST_SHOW, f"dashboard lacks {DASHBOARD_MUST_SHOW - used}"


def test_dashboard_metrics_are_defined_by_the_service() -> None:
    if not (REPO / "app" / "metrics.py").is_file():
        pytest.skip("app/metrics.py does not exist yet")
    used = set().union(*map(families_in, dashboard_expressions()))
    missing = used - names_exported_by_metrics_module()
    assert not missing, f"the dashboard queries metrics app/metrics.py never defines: {missing}"


def test_grafana_provisioning_points_at_the_dashboards_and_the_datasource_they_use() -> None:
    [datasource] = load_yaml(GRAFANA_PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    [provider] = load_yaml(GRAFANA_PROVISIONING / "dashboards" / "reward.yml")["providers"]
    grafana_mounts = dict(v.split(":")[:2] for v in compose_services()["grafana"]["volumes"])
    assert grafana_mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert grafana_mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert datasource["url"] == "http://prometheus:9090"
    for path in DASHBOARDS.glob("*.json"):
        uids = {p["datasource"]["uid"] for p in json.loads(path.read_text())["panels"]}
        assert uids == {datasource["uid"]}, f"{path.name} refers to datasources {uids}"


# --- real validators, when installed ---


DEBIAN_PACKAGE = {"promtool": "prometheus", "haproxy": "haproxy"}


def run_tool(*command: str) -> subprocess.CompletedProcess:
    program = require_tool(command[0], DEBIAN_PACKAGE[command[0]])
    return subprocess.run([program, *command[1:]], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_prometheus_config() -> None:
    result = run_tool("promtool", "check", "config", str(PROMETHEUS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    def concrete(expr: str) -> str:
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        return re.sub(r"label_values\((\w+), \w+\)", r"\1", expr)

    rules = [
        {"record": f"dashboard:query{i}", "expr": concrete(e)} for i, e in enumerate(dashboard_expressions())
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_tool("promtool", "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_haproxy_accepts_the_load_balancer_config() -> None:
    result = run_tool("haproxy", "-c", "-f", str(HAPROXY))
    assert result.returncode == 0, result.stdout + result.stderr


# --- the load balancer, for real, in front of stand-in replicas ---


class ReplicaStandIn(BaseHTTPRequestHandler):
    """Answers every request with the replica's name and what it received."""

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps(
            {"replica": self.server.name, "namespace": self.headers.get("X-Namespace")}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def replica_stand_ins(count: int) -> Iterator[dict[str, int]]:
    servers = []
    for i in range(1, count + 1):
        server = ThreadingHTTPServer(("127.0.0.1", 0), ReplicaStandIn)
        server.name = f"reward{i}"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    try:
        yield {s.name: s.server_address[1] for s in servers}
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def local_haproxy_config(replicas: dict[str, int], port: int) -> str:
    """The real config with Docker's service discovery swapped for fixed loopback replicas."""
    config = HAPROXY.read_text()
    swaps = {
        "bind :8080": f"bind 127.0.0.1:{port}",
        " resolvers docker resolve-prefer ipv4 init-addr none": "",
        "server-template reward 10 reward-pool:8000": "\n    ".join(
            f"server {name} 127.0.0.1:{p}" for name, p in replicas.items()
        ),
    }
    for old, new in swaps.items():
        assert old in config, f"haproxy.cfg changed shape: update this test's swap of {old!r}"
        config = config.replace(old, new)
    return config


@contextlib.contextmanager
def running_haproxy(config: str, port: int, tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    haproxy = require_tool("haproxy", "haproxy")
    process = subprocess.Popen([haproxy, "-db", "-f", str(path)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            assert process.poll() is None, "haproxy exited at start-up"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_load_balancer_sends_each_namespace_to_one_replica(tmp_path: Path) -> None:
    port = free_port()
    with (
        replica_stand_ins(3) as replicas,
        running_haproxy(local_haproxy_config(replicas, port), port, tmp_path) as url,
        httpx.Client(base_url=url, timeout=5) as client,
    ):
        served_by: dict[str, set[str]] = {}
        for namespace in [f"run-{i}" for i in range(12)] * 3 + ["team a"] * 3:
            response = client.post("/score", headers={"X-Namespace": namespace}, json={})
            assert response.headers["X-Reward-Replica"] == response.json()["replica"]
            served_by.setdefault(namespace, set()).add(response.json()["replica"])
        assert all(len(replica) == 1 for replica in served_by.values()), served_by
        assert len(set().union(*served_by.values())) > 1, "every namespace landed on one replica"

        # /v1/stats/<namespace> carries no header, yet reaches the replica that holds the statistics
        for namespace in ("run-3", "team a"):
            stats = client.get(f"/v1/stats/{namespace}").json()
            assert {stats["replica"]} == served_by[namespace] and stats["namespace"] == namespace

        # trainers that cannot set headers name the namespace in the URL (OpenRLHF's remote_url)
        for namespace in [f"run-{i}" for i in range(12)] + ["team a"]:
            answer = client.post("/get_reward", params={"namespace": namespace}, json={}).json()
            assert answer["replica"] in served_by[namespace] and answer["namespace"] == namespace

        # requests without a namespace are spread instead of piling onto one replica
        anonymous = {client.post("/score", json={}).json()["replica"] for _ in range(6)}
        assert len(anonymous) > 1

        for admin_path in ("/admin/reload", "/%61dmin/reload", "/admin%2Freload"):  # decoded before matching
            refused = client.post(admin_path)
            assert refused.status_code == 403 and refused.json()["error"]["type"] == "forbidden", admin_path


def test_time_since_last_reload_is_empty_until_a_replica_reloads(tmp_path: Path) -> None:
    """The gauge is 0 until the first reload: the panel must show no value, not time() (56 years)."""
    [expr] = [e for e in dashboard_expressions() if "reward_last_reload_timestamp_seconds" in e]
    expr = expr.replace("$instance", ".*")
    (tmp_path / "rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "panel", "rules": [{"record": "since_reload", "expr": expr}]}]})
    )
    series = "reward_last_reload_timestamp_seconds{instance='a'}"
    fresh = {"interval": "1m", "input_series": [{"series": series, "values": "0x5"}]}
    fresh["promql_expr_test"] = [{"expr": expr, "eval_time": "5m", "exp_samples": []}]
    reloaded = {"interval": "1m", "input_series": [{"series": series, "values": "60x5"}]}
    reloaded["promql_expr_test"] = [
        {"expr": expr, "eval_time": "5m", "exp_samples": [{"labels": "{}", "value": 240}]}
    ]
    (tmp_path / "test.yml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yml"], "tests": [fresh, reloaded]})
    )
    result = run_tool("promtool", "test", "rules", str(tmp_path / "test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
