#!/usr/bin/env python3
"""make profile: where the engine's time goes, end to end. Starts `zerofn dev` (profiling build: release code
with symbols and line tables) with the probe function at zero, posts N events (batches of 500, 64 keys) through
the gateway and records every CPU on the machine with `perf record -e cpu-clock -g -a` until all are handled and
committed. Writes target/profile/perf.data, a report by process and by symbol (perf.txt), and, when
inferno-flamegraph is on PATH (cargo install inferno), flamegraph.svg.

    make profile [N=20000] [ARGS="--store memory"]     # ARGS: extra `zerofn dev` arguments
"""
import json, os, shutil, socket, subprocess, sys, time, urllib.request, uuid

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
bins = os.path.join(target, "profiling")
out = os.path.join(target, "profile")
n = int(os.environ.get("N", "20000"))
extra = sys.argv[1:]
os.makedirs(out, exist_ok=True)
if not shutil.which("perf"):
    sys.exit("profile: perf is not installed (Debian: apt-get install linux-perf)")

s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
state = os.path.join(out, f"state-{uuid.uuid4()}")
engine = subprocess.Popen(
    [os.path.join(bins, "zerofn"), "dev", "--listen", f"127.0.0.1:{port}", "--state-dir", state,
     "--fn", f"{root}/tests/function.toml={bins}/probe"] + extra,
    env=dict(os.environ, ZEROFN_LOG="warn"), stdout=subprocess.DEVNULL)
url = f"http://127.0.0.1:{port}"

def get(path):
    return json.loads(urllib.request.urlopen(url + path, timeout=30).read())

try:
    for _ in range(200):
        try:
            get("/healthz"); break
        except OSError:
            time.sleep(0.05)
    data = {"task_id": "0193a7c2-8000-7000-8000-000000000001", "user_id": "u-7", "title": "fine",
            "priority": "high", "created_at": "2026-11-22T10:00:00Z"}
    perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-g", "-a", "-o",
                             os.path.join(out, "perf.data")], stderr=subprocess.DEVNULL)
    started = time.time()
    for b in range(n // 500):
        events = [{"specversion": "1.0", "id": f"profile-{b * 500 + i}", "source": "/profile",
                   "type": "todo.task.created", "partitionkey": f"k{(b * 500 + i) % 64}", "data": data}
                  for i in range(500)]
        req = urllib.request.Request(url + "/events", data=json.dumps(events).encode(),
                                     headers={"content-type": "application/cloudevents-batch+json"})
        assert urllib.request.urlopen(req, timeout=300).status == 202
    while True:
        f = get("/_zerofn/status")["functions"][0]
        if f["processed"] >= n and f["total_lag"] == 0:
            break
        if time.time() - started > 600:
            sys.exit(f"profile: not done in 10 min: {f}")
        time.sleep(0.05)
    took = time.time() - started
    perf.send_signal(2); perf.wait(60)
finally:
    engine.terminate(); engine.wait(60)
    shutil.rmtree(state, ignore_errors=True)

data = os.path.join(out, "perf.data")
with open(os.path.join(out, "perf.txt"), "w") as report:
    report.write(f"{n} events end to end in {took:.2f} s ({n / took:.0f} events/s), engine args {extra}\n\n")
    report.flush()
    for sort in ("comm,dso", "dso,sym"):
        subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", sort, "--stdio",
                        "--percent-limit", "0.5", "-g", "none"], stdout=report, stderr=subprocess.DEVNULL)
if shutil.which("inferno-flamegraph") and shutil.which("inferno-collapse-perf"):
    script = subprocess.run(["perf", "script", "-i", data], capture_output=True).stdout
    folded = subprocess.run(["inferno-collapse-perf"], input=script, capture_output=True).stdout
    with open(os.path.join(out, "flamegraph.svg"), "wb") as svg:
        subprocess.run(["inferno-flamegraph"], input=folded, stdout=svg)
print(f"profile: {n} events in {took:.2f} s ({n / took:.0f} events/s); {out}/perf.txt"
      + (f", {out}/flamegraph.svg" if shutil.which("inferno-flamegraph") else ""))
