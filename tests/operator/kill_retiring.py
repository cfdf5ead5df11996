"""Make an inference actor die while it retires, deterministically (a subprocess of the chain
tests: the test process itself must not connect to the local cluster).

    python kill_retiring.py RUN_ID RAY_ADDRESS NAMESPACE

Once the run has two running inference actors, it pauses both processes (SIGSTOP: every node
is on this machine) and prints `paused`; the test then asks for fewer actors. A paused actor
keeps the batches it was handed, so the one the pool marks retiring is holding frames when it
is SIGKILLed; the other is resumed (SIGCONT). Prints one JSON line: the killed actor's id and
its node (the pod name). Pausing stands in for an actor busy on its last batches: the window
in which a real retiring actor dies is otherwise a few milliseconds on small frames.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

TIMEOUT_S = 120.0
POLL_S = 0.1  # both states it waits for last: the actors are paused (each poll is two Ray calls)


def wait_state(control, want, what: str) -> dict:
    import ray

    deadline = time.monotonic() + TIMEOUT_S
    while True:
        actors = ray.get(control.pool_state.remote()).get("actors", {})
        found = want(actors)
        if found:
            return found
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}: {actors}")
        time.sleep(POLL_S)


def main(run_id: str, address: str, namespace: str) -> None:
    import ray

    from peaknet_pipeline.control import control_name

    ray.init(address=address, namespace=namespace, logging_level="ERROR", log_to_driver=False)
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            control = ray.get_actor(control_name(run_id))
            break
        except ValueError:
            if time.monotonic() > deadline:
                sys.exit(f"no control actor for run {run_id}")
            time.sleep(0.1)

    def running_pair(actors: dict) -> dict | None:
        running = {k: a for k, a in actors.items() if a["state"] == "running"}
        return running if len(running) == 2 else None

    running = wait_state(control, running_pair, "two running inference actors")
    for actor in running.values():
        os.kill(actor["pid"], signal.SIGSTOP)
    print("paused", flush=True)

    def retiring(actors: dict) -> dict | None:
        return {k: a for k, a in actors.items() if a["state"] == "retiring"} or None

    ((actor_id, actor),) = wait_state(control, retiring, "a retiring actor").items()
    os.kill(actor["pid"], signal.SIGKILL)
    for other in running.values():
        if other["pid"] != actor["pid"]:
            os.kill(other["pid"], signal.SIGCONT)
    print(json.dumps({"actor": actor_id, "node": actor["node"]}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
