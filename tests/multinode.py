"""The service on a real three-node Ray cluster on this machine (``python -m tests.multinode``).

Run in its own process by tests/integration/test_multinode.py: a process has one Ray
session, and the integration tier's shared cluster may already hold this one's.

Each node is a separate raylet with its own data directory (``WHISPERX_SERVE_DATA_DIR``)
and a custom resource; the Ingress, the TaskRunner and the model deployments are pinned
to different nodes, and the audio is decoded by a Ray task on yet another CPU slot, so an
upload only completes if its audio is readable from wherever the work lands. Checked:

1. Serve hands a replica a top-level ``ObjectRef`` argument as a read-only numpy array
   (plain and streaming handle calls): what the pipeline relies on to pass audio once.
2. A node-local blob store (the local directory, not declared shared) is refused at
   startup by the Ingress and the TaskRunner constructors on this cluster; and the nodes'
   directories really are apart (a decoder on the runner node does not find a file in
   the ingress node's local store), so a node-local read cannot pass unnoticed.
3. With the database as the blob store (PostgreSQL, as a cluster needs), a real speech
   clip uploaded over HTTP completes, progress arriving over the WebSocket; the file lives
   in the ``blobs`` table, not on the ingress node's disk; the page's audio route streams
   it back; deleting the task deletes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import sqlalchemy as sa

from tests.conftest import JFK, MODELS_DIR, normalise
from tests.integration.conftest import pg_schema
from tests.ports import free_port
from tests.serving import OFFLINE_ENV, bundle_args
from tests.streams import assert_well_ordered, collect, submit
from tests.waiting import wait_until

APP = "whisperx-multinode"
PHRASE = "ask not what your country can do for you"
NODES = {
    # role: (CPUs, custom resource); the head node hosts the Serve controller and proxy
    "ingress": (1, "node_ingress"),
    "runner": (2, "node_runner"),
    "models": (2, "node_models"),
}
PIN = 0.001  # a sliver of a node's custom resource: pins a replica there, any number fit


def log(message: str) -> None:
    print(f"[multinode {time.strftime('%H:%M:%S')}] {message}", flush=True)


def pinned(role: str, num_cpus: float, **extra: Any) -> dict[str, Any]:
    return {"num_cpus": num_cpus, "resources": {NODES[role][1]: PIN}, **extra}


def start_cluster(root: Path) -> Any:
    from ray.cluster_utils import Cluster

    def node(role: str) -> dict[str, Any]:
        cpus, resource = NODES[role]
        data = root / role
        data.mkdir(parents=True)
        # raylet environment: every worker on this node sees its own data directory
        return {
            "include_dashboard": False,
            "num_cpus": cpus,
            "resources": {resource: 1},
            "env_vars": {"WHISPERX_SERVE_DATA_DIR": str(data)},
        }

    cluster = Cluster(initialize_head=True, head_node_args=node("ingress"))
    cluster.add_node(**node("runner"))
    cluster.add_node(**node("models"))
    cluster.wait_for_nodes()
    return cluster


def check_object_refs_resolved() -> None:
    """A top-level ObjectRef argument of a DeploymentHandle call arrives as the array."""
    import ray
    from ray import serve

    @serve.deployment(ray_actor_options=pinned("models", 0))
    class ArrayProbe:
        def describe(self, audio: Any) -> dict[str, Any]:
            return _describe(audio)

        def describe_streaming(self, audio: Any) -> Any:
            yield 50.0
            yield _describe(audio)

    handle = serve.run(ArrayProbe.bind(), name="probe", route_prefix=None)
    ref = ray.put(np.arange(16_000, dtype=np.float32))
    plain = handle.describe.remote(ref).result(timeout_s=60)
    streamed = list(handle.options(stream=True).describe_streaming.remote(ref))[-1]
    expected = {"type": "ndarray", "dtype": "<f4", "size": 16_000, "writeable": False}
    assert plain == expected, plain
    assert streamed == expected, streamed
    serve.delete("probe")
    log(f"ObjectRef argument resolved in the replica: {plain}")


def _describe(audio: Any) -> dict[str, Any]:
    return {
        "type": type(audio).__name__,
        "dtype": getattr(audio, "dtype", np.dtype("O")).str,
        "size": int(getattr(audio, "size", -1)),
        "writeable": bool(audio.flags.writeable) if isinstance(audio, np.ndarray) else None,
    }


def check_local_store_refused(app_env: dict[str, str]) -> None:
    """The Ingress and the TaskRunner refuse the node-local directory on three nodes."""
    from ray import serve

    from common.config import IngressConfig, RunnerConfig
    from deployments.runner import TaskRunner
    from ingress.app import Ingress

    local = {"runtime_env": {"env_vars": {**app_env, "WHISPERX_SERVE_BLOB_STORE": "local"}}}
    candidates: list[tuple[str, Any]] = [
        (
            "Ingress",
            Ingress.options(ray_actor_options=pinned("ingress", 0.1, **local)).bind(  # type: ignore[attr-defined]
                None, tracker=None, app_name="refused", config=IngressConfig()
            ),
        ),
        (
            "TaskRunner",
            TaskRunner.options(ray_actor_options=pinned("runner", 0.1, **local)).bind(  # type: ignore[attr-defined]
                None, None, None, tracker=None, config=RunnerConfig()
            ),
        ),
    ]
    for name, app in candidates:
        app_name = f"refused-{name.lower()}"
        try:
            serve.run(app, name=app_name, route_prefix=None)
        except Exception as exc:  # Serve: the deployment failed to start
            status = serve.status().applications[app_name].deployments[name]
            message = f"{exc}\n{status.status.value}: {status.message}"
        else:
            raise AssertionError(f"{name} started on a node-local blob store on 3 nodes")
        assert "alive nodes but the blob store is the node-local" in message, message
        assert "WHISPERX_SERVE_BLOB_STORE=database" in message, message
        serve.delete(app_name)
        log(f"{name} refused the node-local store at startup")


def check_node_local_dirs_are_distinct(app_env: dict[str, str], root: Path) -> None:
    """What makes this cluster a fair test: a file in the ingress node's local store is
    not there for a decoder on the runner node, as on separate machines."""
    import ray

    from common.errors import InvalidAudioError
    from deployments.audio import decode_blob
    from storage.blobs import LocalBlobStore, put_file

    put_file(LocalBlobStore(root / "ingress" / "uploads"), "probe.flac", JFK)
    local = {"env_vars": {**app_env, "WHISPERX_SERVE_BLOB_STORE": "local"}}
    decode: Any = ray.remote(decode_blob)

    def on(role: str) -> Any:
        task = decode.options(num_cpus=0, resources={NODES[role][1]: PIN}, runtime_env=local)
        return task.remote("probe.flac")

    samples, duration = ray.get(on("ingress"), timeout=120)
    assert duration > 10 and samples.dtype == np.float32, duration
    try:
        ray.get(on("runner"), timeout=120)
    except InvalidAudioError as exc:  # RayTaskError(InvalidAudioError)
        assert "not found" in str(exc), exc
    else:
        raise AssertionError("the runner node read the ingress node's local directory")
    log("a node-local file is readable on its own node only")


def deploy(app_env: dict[str, str], port: int) -> str:
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    args = bundle_args(APP, MODELS_DIR)
    config = ServeDeploySchema.model_validate(
        {
            "proxy_location": "HeadOnly",
            "http_options": {"host": "127.0.0.1", "port": port},
            "applications": [
                {
                    "name": APP,
                    "route_prefix": "/",
                    "import_path": "ingress.builder:build_app",
                    "runtime_env": {"env_vars": app_env},
                    "args": args,
                    # test-only pinning of each deployment to its node
                    "deployments": [
                        {"name": "Ingress", "ray_actor_options": pinned("ingress", 0.1)},
                        {"name": "TaskRunner", "ray_actor_options": pinned("runner", 0.1)},
                        *(
                            {"name": name, "ray_actor_options": pinned("models", 0.25)}
                            for name in (
                                "AsrDeployment",
                                "AlignmentDeployment",
                                "DiarizationDeployment",
                            )
                        ),
                    ],
                }
            ],
        }
    )
    _get_global_client().deploy_apps(config)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/health/ready", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout=600, interval=1.0, what="/health/ready on the cluster")
    return base


def check_placement() -> None:
    """Ingress, TaskRunner and the model replicas run on three different nodes."""
    from ray._private import state

    nodes: dict[str, set[str]] = {}
    for actor in state.actors().values():  # the GCS's table: no dashboard needed
        name = actor["Name"] or ""
        if actor["State"] != "ALIVE" or not name.startswith(f"SERVE_REPLICA::{APP}#"):
            continue
        deployment = name.split("#")[1]
        nodes.setdefault(deployment, set()).add(actor["Address"]["NodeID"])
    ingress, runner, asr, align, diarize = (
        nodes.get(d, set())
        for d in (
            "Ingress",
            "TaskRunner",
            "AsrDeployment",
            "AlignmentDeployment",
            "DiarizationDeployment",
        )
    )
    assert len(ingress) == len(runner) == len(asr) == 1, nodes
    assert len(ingress | runner | asr) == 3 and align == diarize == asr, nodes
    log("Ingress, TaskRunner and the models run on three different nodes")


def check_upload(base: str, ws: str, db_url: str, root: Path) -> None:
    task_id = submit(base, JFK)
    stream = asyncio.run(collect(ws, task_id, after_seq=0, timeout=600))
    assert_well_ordered(stream)
    last = stream.events[-1]
    assert last["status"] == "completed", last
    assert any(e["type"] == "progress" for e in stream.events), stream.events
    task = httpx.get(f"{base}/task/{task_id}", timeout=30).json()
    text = normalise(" ".join(s["text"] for s in task["result"]["segments"]))
    assert PHRASE in text, text
    log(f"task {task_id} completed over the WebSocket: {text!r}")

    # the file is in the database, on no node's disk
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        key = conn.execute(sa.text("SELECT audio_key FROM tasks WHERE id = :id"), {"id": task_id})
        audio_key = key.scalar_one()
        size = conn.execute(
            sa.text("SELECT size FROM blobs WHERE key = :k"), {"k": audio_key}
        ).scalar_one()
    assert audio_key == f"{task_id}.flac" and size == JFK.stat().st_size, (audio_key, size)
    on_disk = [p for p in root.rglob("*") if p.is_file() and task_id in p.name]
    assert on_disk == [], f"audio left on a node's disk: {on_disk}"

    played = httpx.get(f"{base}/task/{task_id}/audio", timeout=30)
    assert played.status_code == 200, played.text
    assert hashlib.sha256(played.content).digest() == hashlib.sha256(JFK.read_bytes()).digest()
    ranged = httpx.get(f"{base}/task/{task_id}/audio", headers={"Range": "bytes=100-199"})
    assert ranged.status_code == 206 and ranged.content == JFK.read_bytes()[100:200]

    assert httpx.delete(f"{base}/task/{task_id}/delete", timeout=30).status_code == 200
    with engine.connect() as conn:
        left = conn.execute(
            sa.text("SELECT count(*) FROM blob_chunks WHERE key = :k"), {"k": audio_key}
        ).scalar_one()
    engine.dispose()
    assert left == 0, left
    log("the audio was stored in the database, played back, and deleted with its task")


def main() -> int:
    import ray
    from ray import serve

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="wxs-multinode-") as tmp, pg_schema() as db_url:
        root = Path(tmp)
        app_env = {
            **OFFLINE_ENV,
            "WHISPERX_SERVE_DATABASE_URL": db_url,
            "WHISPERX_SERVE_BLOB_STORE": "database",
        }
        cluster = start_cluster(root)
        try:
            ray.init(address=cluster.address, runtime_env={"env_vars": app_env})
            alive = [n for n in ray.nodes() if n["Alive"]]
            assert len(alive) == 3, alive
            log(f"cluster up: {len(alive)} nodes, each with its own data directory")
            port = free_port()
            serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
            check_object_refs_resolved()
            check_local_store_refused(app_env)
            check_node_local_dirs_are_distinct(app_env, root)
            base = deploy(app_env, port)
            log("app deployed on the cluster")
            check_placement()
            check_upload(base, f"ws://127.0.0.1:{port}", db_url, root)
        finally:
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
                cluster.shutdown()
    log(f"all checks passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
