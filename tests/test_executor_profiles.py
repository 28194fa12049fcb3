"""Executor profiles (jobs/executors.py): multiprocess by default, Dask and Kubernetes by
``AREACAL_EXECUTOR``. The Kubernetes profile cannot run here (no cluster): its configuration
loads, validates against ``k8s_job_executor``'s schema and the project's jobs, and the Job that
the executor would create for a weight fit requests a GPU on a GPU node."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest

from jobs.executors import DEFAULT_PROFILE, PROFILES, build_executor, load_profile_config

FIT_STEPS = ("regional_weights", "national_weights")


def test_default_profile_is_multiprocess_with_one_step_per_core(monkeypatch):
    monkeypatch.delenv("AREACAL_EXECUTOR", raising=False)
    monkeypatch.delenv("AREACAL_MAX_CONCURRENT", raising=False)
    assert DEFAULT_PROFILE == "multiprocess"
    executor = build_executor()
    assert executor.name == "multiprocess"
    job = dg.Definitions(assets=[_noop], executor=executor).resolve_implicit_global_asset_job_def()
    config = dg.validate_run_config(job, {})["execution"]
    assert config["multiprocess"]["max_concurrent"] == (os.cpu_count() or 1)
    # step processes forked from a server that imported policyengine-us once
    assert config["multiprocess"]["start_method"] == {
        "forkserver": {"preload_modules": ["jobs.step_preload"]}}


def test_spawn_start_method_and_a_bad_one(monkeypatch):
    monkeypatch.delenv("AREACAL_EXECUTOR", raising=False)
    monkeypatch.setenv("AREACAL_START_METHOD", "spawn")
    job = dg.Definitions(assets=[_noop], executor=build_executor()) \
        .resolve_implicit_global_asset_job_def()
    assert dg.validate_run_config(job, {})["execution"]["multiprocess"]["start_method"] == {
        "spawn": {}}
    monkeypatch.setenv("AREACAL_START_METHOD", "fork")
    with pytest.raises(ValueError, match="AREACAL_START_METHOD='fork'"):
        build_executor()


def test_definitions_take_the_profile_named_in_the_environment(monkeypatch):
    monkeypatch.setenv("AREACAL_EXECUTOR", "dask")
    assert build_executor().name == "dask"
    monkeypatch.setenv("AREACAL_DASK_SCHEDULER", "tcp://127.0.0.1:8786")
    job = dg.Definitions(assets=[_noop], executor=build_executor()) \
        .resolve_implicit_global_asset_job_def()
    assert dg.validate_run_config(job, {})["execution"] == {
        "dask": {"cluster": {"existing": {"address": "tcp://127.0.0.1:8786"}},
                 "retries": {"enabled": {}}}}  # a failed step retries under its RetryPolicy
    monkeypatch.setenv("AREACAL_EXECUTOR", "celery")
    with pytest.raises(ValueError, match="AREACAL_EXECUTOR='celery'"):
        build_executor()
    assert set(PROFILES) == {"multiprocess", "dask", "k8s", "in_process"}


def test_dask_local_cluster_config_stays_on_the_loopback():
    cluster = load_profile_config("dask")["cluster"]["local"]
    assert cluster["host"] == "127.0.0.1" and cluster["threads_per_worker"] == 1


@dg.asset
def _noop():
    return None


def test_k8s_profile_validates_against_the_executor_and_the_jobs(monkeypatch):
    pytest.importorskip("dagster_k8s")
    from dagster._config import process_config
    from dagster_k8s import k8s_job_executor

    import definitions

    monkeypatch.setenv("AREACAL_IMAGE", "registry.example/areacal:1.2.3")
    config = load_profile_config("k8s")
    assert config["job_image"] == "registry.example/areacal:1.2.3"
    result = process_config(k8s_job_executor.config_schema.config_type, config)
    assert result.success, result.errors
    # the steps it names are ops of the graph (ops are named after their assets)
    graph = definitions.defs.resolve_asset_graph()
    names = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert set(config["per_step_k8s_config"]) == set(FIT_STEPS) <= names
    # every job of the project accepts it as its executor
    defs = dg.Definitions(assets=definitions.defs.assets,
                          asset_checks=definitions.defs.asset_checks,
                          jobs=definitions.defs.jobs, resources=definitions.defs.resources,
                          executor=build_executor("k8s"))
    for job in defs.resolve_all_job_defs():
        execution = dg.validate_run_config(job, {})["execution"]
        assert set(execution) == {"k8s"}, job.name


@pytest.mark.parametrize("step", FIT_STEPS)
def test_k8s_fit_step_requests_a_gpu_on_a_gpu_node(step, monkeypatch):
    pytest.importorskip("dagster_k8s")
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import UserDefinedDagsterK8sConfig, construct_dagster_k8s_job

    config = load_profile_config("k8s")
    for name in config["env_vars"]:  # passed through from the run's environment
        monkeypatch.setenv(name, f"value-of-{name}")

    def job_for(op_name):
        # as K8sStepHandler does: the executor's step config, then the step's own override
        context = K8sContainerContext(
            namespace=config["job_namespace"], env_vars=config["env_vars"],
            env_secrets=config["env_secrets"],
            run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(config["step_k8s_config"]),
        ).merge(K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(
            config["per_step_k8s_config"].get(op_name, {}))))
        # what the Helm chart's K8sRunLauncher holds (the step pods share the run's instance)
        launcher = SimpleNamespace(dagster_home="/opt/dagster/dagster_home", job_image=None,
                                   instance_config_map="dagster-instance",
                                   postgres_password_secret="dagster-postgresql-secret")
        job_config = context.get_k8s_job_config(config["job_image"], launcher)
        return construct_dagster_k8s_job(
            job_config=job_config, args=["dagster", "api", "execute_step"],
            job_name=f"dagster-step-{op_name}", pod_name=f"dagster-step-{op_name}",
            component="step_worker", user_defined_k8s_config=context.run_k8s_config)

    pod = job_for(step).spec.template.spec
    limits = pod.containers[0].resources.limits
    assert str(limits["nvidia.com/gpu"]) == "1"
    assert pod.node_selector == {"nvidia.com/gpu.present": "true"}
    assert any(t.key == "nvidia.com/gpu" for t in pod.tolerations)
    env = {e.name: e.value for e in pod.containers[0].env}
    assert env.get("AREACAL_FIT_DEVICE") == "cuda"
    assert env.get("AREACAL_HOME") == "value-of-AREACAL_HOME"
    # any other step: CPU only, on any node
    other = job_for("area_datasets").spec.template.spec
    assert "nvidia.com/gpu" not in (other.containers[0].resources.limits or {})
    assert not other.node_selector
    assert other.containers[0].resources.requests["cpu"] == "2"


def test_a_warning_check_does_not_fail_the_build(dagster_instance):
    """materialize_graph (python -m jobs.build_cli): a failed check of severity WARN is a
    diagnostic; a failed ERROR check fails the build."""
    from jobs.partitioned import materialize_graph

    outcome = {}

    @dg.asset(name="thing")
    def thing():
        return None

    @dg.asset_check(asset=thing)
    def warns():
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN)

    @dg.asset_check(asset=thing)
    def gate():
        return dg.AssetCheckResult(passed=outcome["gate"])

    defs = dg.Definitions(assets=[thing], asset_checks=[warns, gate])
    outcome["gate"] = True
    assert materialize_graph(defs, dagster_instance, "*", executor="in_process")
    outcome["gate"] = False
    assert not materialize_graph(defs, dagster_instance, "*", executor="in_process")


def _restrictions_seen(scheduler):
    """A Dask scheduler plugin, added to ``scheduler``, that records each task's resource
    restrictions as it starts processing (``.seen``: task key -> ``{"GPU": 1}`` or None)."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class RestrictionsSeen(SchedulerPlugin):
        name = "areacal-restrictions-seen"

        def __init__(self):
            self.seen: dict[str, dict | None] = {}

        def transition(self, key, start, finish, *args, **kwargs):
            if finish == "processing":
                self.seen[str(key)] = scheduler.tasks[key].resource_restrictions

    plugin = RestrictionsSeen()
    scheduler.add_plugin(plugin)
    return plugin


@contextmanager
def _gpu_worker(scheduler: str, repo: Path):
    """A ``dask worker`` process on 127.0.0.1 that declares one unit of the resource ``GPU``
    (no GPU needed: Dask only counts the resource), stopped afterwards."""
    import subprocess
    import sys

    worker = subprocess.Popen(
        [str(Path(sys.executable).parent / "dask"), "worker", scheduler, "--nthreads", "1",
         "--resources", "GPU=1", "--host", "127.0.0.1", "--no-dashboard", "--no-nanny"],
        cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield worker
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def test_gpu_step_tags_name_a_dask_worker_resource():
    from jobs.executors import gpu_step_tags

    assert gpu_step_tags({}) == {} and gpu_step_tags({"AREACAL_DASK_GPU_RESOURCE": " "}) == {}
    tags = gpu_step_tags({"AREACAL_DASK_GPU_RESOURCE": "GPU"})
    from dagster_dask.executor import get_dask_resource_requirements

    assert get_dask_resource_requirements(tags) == {"GPU": 1}
    with pytest.raises(ValueError, match="AREACAL_DASK_GPU_RESOURCE='GPU=1'"):
        gpu_step_tags({"AREACAL_DASK_GPU_RESOURCE": "GPU=1"})
    # the project's two fits carry it when the variable is set where the definitions load
    import subprocess
    import sys

    script = ("from definitions import defs\n"
              "for key in ('regional_weights', 'national_weights', 'area_datasets'):\n"
              "    print(key, defs.resolve_assets_def(key).op.tags.get("
              "'dagster-dask/resource_requirements'))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1],
                          env={**os.environ, "AREACAL_DASK_GPU_RESOURCE": "GPU"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:3] == ['regional_weights {"GPU": 1}',
                                           'national_weights {"GPU": 1}', "area_datasets None"]


def test_dask_profile_runs_steps_on_a_local_cluster(tmp_path, monkeypatch):
    """Three steps, one in a concurrency pool, and a graph asset fanning out into three
    dynamic steps, through the dask profile on a ``distributed.LocalCluster`` on 127.0.0.1 with
    one worker and a second worker started as ``dask worker --resources GPU=1``: every step
    runs in a worker, the step that asks for the GPU resource (``AREACAL_DASK_GPU_RESOURCE``, as
    the weight fits) runs on the GPU worker, and the dynamic step that fails once is retried
    alone (the fast companion of tests/test_dask_executor.py, which builds the tiny preset)."""
    pytest.importorskip("dagster_dask")
    from dagster._core.definitions.reconstruct import ReconstructableRepository
    from dask.distributed import Client, LocalCluster

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("AREACAL_TEST_MARKERS", str(tmp_path))
    monkeypatch.setenv("AREACAL_DASK_GPU_RESOURCE", "GPU")
    monkeypatch.syspath_prepend(str(repo))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client, \
            _gpu_worker(cluster.scheduler_address, repo):
        client.wait_for_workers(2, timeout=120)
        pid_of = client.run(os.getpid)  # worker address -> pid
        workers = set(pid_of.values())
        gpu_pids = {pid_of[address] for address, worker in
                    client.scheduler_info()["workers"].items()
                    if worker.get("resources", {}).get("GPU")}
        assert len(workers) == 2 and len(gpu_pids) == 1, (pid_of, gpu_pids)
        restrictions = _restrictions_seen(cluster.scheduler)  # what each task asked for
        monkeypatch.setenv("AREACAL_DASK_SCHEDULER", cluster.scheduler_address)
        job = ReconstructableRepository.for_module(
            "tests.dask_small_defs", "defs", working_directory=str(repo)
        ).get_reconstructable_job("__ASSET_JOB")
        with dg.DagsterInstance.get() as instance, \
                dg.execute_job(job, instance) as result:
            assert result.success
            # a retried step starts again as STEP_RESTARTED
            starts = [e for e in result.all_events
                      if e.event_type_value in ("STEP_START", "STEP_RESTARTED")]
            retried = [e.step_key for e in result.all_events
                       if e.event_type_value == "STEP_UP_FOR_RETRY"]
            materialized = {e.asset_key.to_user_string() for e in result.all_events
                            if e.event_type_value == "ASSET_MATERIALIZATION"}
    pids = {e.pid for e in starts}
    assert len(pids) >= 1 and pids <= workers, (pids, workers)
    assert {e.pid for e in starts if e.step_key == "fitted"} == gpu_pids
    asked = {key.split(".")[1]: value for key, value in restrictions.seen.items()}
    assert asked["fitted"] == {"GPU": 1} and asked["first"] is None, asked
    started = sorted(e.step_key for e in starts)
    # the three dynamic steps ran; only the one that failed ran twice
    assert [k for k in started if k.startswith("fanned.run_part")] == [
        "fanned.run_part[c00]", "fanned.run_part[c01]", "fanned.run_part[c01]",
        "fanned.run_part[c02]"]
    assert retried == ["fanned.run_part[c01]"]
    assert started.count("fanned.plan_parts") == 1 and "fanned.collect_parts" in started
    assert materialized == {"first", "fitted", "last", "fanned"}
