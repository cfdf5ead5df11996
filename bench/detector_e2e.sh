#!/usr/bin/env bash
# End to end at 1691x1691 (issue 22's method): `peaknet-pipeline push` sends 256 frames of 30
# peaks in messages of 8 to a socket source, the threshold oracle (model.kind=threshold) stands
# in for the model, batch 8, Q1 and Q2 of 8 items; one ingest, inference and writer actor each.
# Prints frames/s (frames inferred over the streaming time, as the run's console summary does),
# the writer's busy ms per event and per hit from the run's report.json, and the load average
# (the cores are shared: read the figures next to it).
#
#   bench/detector_e2e.sh [FRAMES] [SIDE]        # defaults: 256 1691
#
# Uses Ray (a local cluster) and takes about a minute on 2 cores. Not a *_bench.py: `make bench`
# does not run it. The last line is one JSON object {"bench": "detector_e2e", ...}.
set -euo pipefail
cd "$(dirname "$0")/.."
FRAMES=${1:-256}
SIDE=${2:-1691}
PY=${PY:-.venv/bin/python}
PN=${PN:-.venv/bin/peaknet-pipeline}
PORT=${PORT:-12391}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/detector-e2e-XXXXXX")
trap 'kill "$PUSHER" 2>/dev/null || true; rm -rf "$OUT"' EXIT

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
# The pusher starts first and connects (zmq retries until the source binds), so its messages
# are encoded and waiting when the pipeline starts streaming.
"$PN" push --address "tcp://127.0.0.1:$PORT" --shape 1 "$SIDE" "$SIDE" --peaks-per-frame 30 \
    --num-frames "$FRAMES" --batch-size 8 --pool 2 >"$OUT/push.log" 2>&1 &
PUSHER=$!
"$PN" run --config examples/configs/socket.yaml \
    --set model.kind=threshold --set runtime.service=false \
    --set "inference.frame_shape=[1,$SIDE,$SIDE]" \
    --set "source.socket.addresses=[tcp://127.0.0.1:$PORT]" \
    --set "source.socket.max_frames=$FRAMES" \
    --set queue.q1.capacity_items=8 --set queue.q2.capacity_items=8 \
    --set "writer.output_dir=$OUT/run" \
    >"$OUT/run.log" 2>&1 || { tail -30 "$OUT/run.log"; exit 1; }
wait "$PUSHER" || true
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
grep -E "^run |frames ingested|events written" "$OUT/run.log" || true
"$PY" - "$OUT/run/report.json" "$SIDE" <<'EOF'
import json
import os
import sys

report = json.load(open(sys.argv[1]))
acc = report["accounting"]
frames_per_s = acc["frames_inferred"] / max(report["streaming_s"], 1e-9)
writers = report["writer"]
busy_s = sum(w["busy_s"] for w in writers)
events = sum(w["frames_out"] for w in writers)
hits = sum(w["hits"] for w in writers)
doc = {
    "bench": "detector_e2e",
    "frame": [1, int(sys.argv[2]), int(sys.argv[2])],
    "frames_inferred": acc["frames_inferred"],
    "streaming_s": report["streaming_s"],
    "frames_per_s": round(frames_per_s, 1),
    "writer_busy_ms_per_event": round(busy_s * 1e3 / max(events, 1), 1),
    "writer_busy_ms_per_hit": round(busy_s * 1e3 / max(hits, 1), 1),
    "hits": hits,
    "exit_code": report["exit_code"],
    "load_average_1min": round(os.getloadavg()[0], 2),
}
print(
    f"{doc['frames_per_s']} frames/s end to end ({acc['frames_inferred']} frames in "
    f"{report['streaming_s']:.1f} s streaming); writer busy {doc['writer_busy_ms_per_event']} ms "
    f"an event, {doc['writer_busy_ms_per_hit']} ms a hit ({hits} hits of {events})"
)
print(json.dumps(doc))
EOF
