"""A driver for test_cluster_faults: a 3-node Ray cluster on loopback (a head that runs nothing, two
2-CPU workers), `colorize --engine ray` over ROOT/src into ROOT/dst, and the node that hosts the model
actor killed once OUTPUTS_BEFORE_KILL photos are written. Prints one JSON line: what colorize
returned, when the cluster saw the node dead, and how long the job took after the kill.

Usage: python tests/ray_node_loss.py ROOT OUTPUTS_BEFORE_KILL"""

import json
import logging
import sys
import threading
import time
from pathlib import Path

from colorizer.runtime import setup_process

setup_process()

import ray  # noqa: E402
from ray._private import state as ray_state  # noqa: E402  (actors and their nodes, without the dashboard)
from ray.cluster_utils import Cluster  # noqa: E402

from colorizer.colorize.bulk import colorize  # noqa: E402
from colorizer.config import ColorizeOptions  # noqa: E402
from colorizer.training.checkpoints import PRETRAINED_DIR  # noqa: E402


def main(root: Path, outputs_before_kill: int) -> None:
    # a node is declared dead after 3 missed 1-second health checks (Ray's default waits ~30 s)
    checks = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": checks})
    nodes = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
    result: dict = {}

    def run() -> None:
        try:
            result["rows"] = [
                row._asdict()
                for row in colorize(
                    root / "src", root / "dst", PRETRAINED_DIR, ColorizeOptions(engine="ray", batch_size=4)
                )
            ]
        except BaseException as e:  # reported, not raised: the test reads it
            result["error"] = repr(e)

    job = threading.Thread(target=run)
    job.start()
    while len(list((root / "dst").glob("*.png"))) < outputs_before_kill and job.is_alive():
        time.sleep(0.1)
    hosts = {
        a["Address"]["NodeID"]
        for a in ray_state.actors().values()
        if a.get("State") == "ALIVE" and "ModelActor" in a.get("ActorClassName", "")
    }
    victim = next((node for node in nodes if node.node_id in hosts), nodes[0])
    written_before = len(list((root / "dst").glob("*.png")))
    killed = time.monotonic()
    cluster.remove_node(victim, allow_graceful=False)
    seen_dead = None
    while job.is_alive():
        if seen_dead is None and not any(n["Alive"] for n in ray.nodes() if n["NodeID"] == victim.node_id):
            seen_dead = time.monotonic() - killed
        time.sleep(0.2)
    job.join()
    print(
        "RESULT "
        + json.dumps(
            {
                "killed_the_model_actors_node": victim.node_id in hosts,
                "written_before_kill": written_before,
                "seconds_to_see_it_dead": seen_dead,
                "seconds_after_kill": time.monotonic() - killed,
                **result,
            }
        ),
        flush=True,
    )
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
