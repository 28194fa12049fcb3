"""The Dagster UI as a user starts it: ``dagster-webserver -w workspace.yaml`` on 127.0.0.1 with a
temporary DAGSTER_HOME. GraphQL must list every asset, asset check, job and sensor of the
Definitions object (and the 488 area partitions once ``area_datasets`` exists); then the server
is stopped by its pid and must really exit, children included."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 240

# Signals a non-interactive parent may have set to "ignore" survive exec; dagster maps SIGTERM
# onto its SIGINT handler, so reset both before exec (spec/FEASIBILITY.md section 7).
RESET_AND_EXEC = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                  "signal.signal(signal.SIGTERM, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])")

QUERY = """
{
  workspaceOrError { __typename ... on Workspace { locationEntries {
      name loadStatus
      locationOrLoadError { __typename ... on PythonError { message } } } } }
  repositoriesOrError { __typename ... on RepositoryConnection { nodes {
      name jobs { name } sensors { name } } } }
  assetNodes {
    assetKey { path }
    isExecutable
    groupName
    partitionKeys
    assetChecksOrError { __typename ... on AssetChecks { checks { name } } }
  }
}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _graphql(base: str, query: str) -> dict:
    request = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        payload = json.loads(response.read())
    assert "errors" not in payload, payload["errors"]
    return payload["data"]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture()
def webserver(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    port = _free_port()
    env = dict(os.environ, DAGSTER_HOME=str(home), AREACAL_HOME=str(tmp_path / "store"),
               PYTHONUNBUFFERED="1")
    exe = str(Path(sys.executable).parent / "dagster-webserver")
    log = open(tmp_path / "webserver.log", "wb")
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", RESET_AND_EXEC, exe, "-w", "workspace.yaml",
         "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"webserver exited with {proc.returncode}: "
                            + (tmp_path / "webserver.log").read_text()[-3000:])
            try:
                info = json.loads(_get(f"{base}/server_info"))
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                if time.monotonic() - started > START_TIMEOUT_S:
                    pytest.fail("webserver did not answer /server_info: "
                                + (tmp_path / "webserver.log").read_text()[-3000:])
                time.sleep(0.5)
        print(f"webserver answered /server_info after {time.monotonic() - started:.1f} s")
        yield base, info, proc
    finally:
        stopping = time.monotonic()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # our own session only
            proc.wait(timeout=30)
            pytest.fail("webserver ignored SIGTERM")
        deadline = time.monotonic() + 60
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        alive = _group_alive(proc.pid)
        print(f"webserver and children gone {time.monotonic() - stopping:.1f} s after SIGTERM")
        if alive:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        assert not alive, "webserver children (code server) outlived it"


def test_ui_lists_every_asset_check_job_and_partition(webserver):
    base, info, proc = webserver
    assert info["dagster_webserver_version"] == dg.__version__

    from definitions import defs

    graph = defs.resolve_asset_graph()
    repo = defs.get_repository_def()

    data = {}
    for _ in range(60):  # the code location may still be loading right after start
        data = _graphql(base, QUERY)
        entries = data["workspaceOrError"]["locationEntries"]
        if entries and entries[0]["loadStatus"] == "LOADED":
            break
        time.sleep(1)
    (entry,) = data["workspaceOrError"]["locationEntries"]
    assert entry["name"] == "areacal" and entry["loadStatus"] == "LOADED"
    assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry

    nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
    expected = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert set(nodes) == expected
    executable = {k.to_user_string() for k in graph.get_all_asset_keys()
                  if graph.get(k).is_executable}
    assert {k for k, n in nodes.items() if n["isExecutable"]} == executable
    for key in executable:
        assert nodes[key]["groupName"] == graph.get(dg.AssetKey.from_user_string(key)).group_name

    checks = {f"{key}:{c['name']}" for key, n in nodes.items()
              if n["assetChecksOrError"]["__typename"] == "AssetChecks"
              for c in n["assetChecksOrError"]["checks"]}
    assert checks == {k.to_user_string() for k in graph.asset_check_keys}

    (repository,) = data["repositoriesOrError"]["nodes"]
    jobs = {j["name"] for j in repository["jobs"] if not j["name"].startswith("__")}
    assert jobs == {j.name for j in repo.get_all_jobs() if not j.name.startswith("__")}
    assert {"build_all", "rebuild_areas", "refit", "stage_release", "promote"} <= jobs
    assert {s["name"] for s in repository["sensors"]} == {s.name for s in defs.sensors}

    print(f"GraphQL lists {len(nodes)} assets, {len(checks)} checks, {len(jobs)} jobs")

    area = dg.AssetKey("area_datasets")
    if graph.has(area) and graph.get(area).is_executable:
        from calibration_core.areas import all_area_keys, load_city_catalog

        assert nodes["area_datasets"]["partitionKeys"] == all_area_keys()
        assert len(nodes["area_datasets"]["partitionKeys"]) == 487 + len(load_city_catalog())
