"""What the load and soak scripts share: starting the mock, the gateway and LiteLLM on
loopback ports, running `oha`, reading a process's memory and the gateway's /metrics."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RELEASE = os.path.join(ROOT, "target", "release")
HERE = os.path.dirname(os.path.abspath(__file__))

CHAT = {
    "model": "mock-model",
    "messages": [{"role": "user", "content": "Say hello in five words."}],
    "max_tokens": 32,
}


def chat_body(stream):
    body = dict(CHAT)
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body)


def die(message):
    sys.exit(f"{os.path.basename(sys.argv[0])}: {message}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, what, timeout=60.0, proc=None):
    """Waits until `url` answers (any status), or dies naming `what`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            die(f"{what} exited with {proc.returncode} before answering {url}; see its log")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except urllib.error.HTTPError:
            return
        except Exception:
            time.sleep(0.2)
    die(f"{what} did not answer {url} within {timeout:.0f} s")


def pinned(cpus, argv):
    """`argv` under `taskset -c CPUS` when CPUS is set and taskset exists."""
    if cpus and shutil.which("taskset"):
        return ["taskset", "-c", cpus] + argv
    return argv


def repin(pid, cpus):
    """Moves every thread of the running `pid` onto CPUS (a taskset list), when set."""
    if cpus and shutil.which("taskset"):
        subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], check=True,
                       stdout=subprocess.DEVNULL)


class Proc:
    """A child process with its log in `logdir`, stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, name, argv, logdir, env=None):
        self.name = name
        self.log_path = os.path.join(logdir, f"{name}.log")
        self.log = open(self.log_path, "w")
        self.p = subprocess.Popen(
            argv, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    @property
    def pid(self):
        return self.p.pid

    def poll(self):
        return self.p.poll()

    def stop(self, timeout=15.0):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                # The whole session: LiteLLM's workers too.
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        self.log.close()
        with open(self.log_path) as f:
            return f.read()


def rss_kb(pid):
    """Resident memory of `pid` and its children (LiteLLM forks workers), in KB."""
    total = 0
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        pids += [int(p) for p in out.split()]
    except FileNotFoundError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def open_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        return 0


def start_mock(logdir, port, cpus, extra=()):
    argv = pinned(
        cpus,
        [os.path.join(RELEASE, "nexus-mock"), "--listen", f"127.0.0.1:{port}", "--threads", "1"]
        + list(extra),
    )
    mock = Proc("mock", argv, logdir)
    wait_http(f"http://127.0.0.1:{port}/v1/models", "nexus-mock", proc=mock)
    return mock


def mock_tally(output):
    """The JSON line nexus-mock prints when it stops."""
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    die("nexus-mock printed no tally when it stopped")


def start_gateway(logdir, config, port, cpus, name="gateway", exe=None, log_level="error"):
    """`nexus serve` in a folder of its own (`logdir/name`) holding a copy of `config` and
    its log, as an operator would lay them out. A gateway watches its config's folder, so
    sharing one with another gateway's log would let each line written by one wake the
    other (builds from before 24 Nov were woken by every write in that folder)."""
    home = os.path.join(logdir, name)
    os.makedirs(home, exist_ok=True)
    own_config = os.path.join(home, os.path.basename(config))
    shutil.copyfile(config, own_config)
    argv = pinned(
        cpus,
        [
            exe or os.path.join(RELEASE, "nexus"),
            "serve",
            "--config",
            own_config,
            "--listen",
            f"127.0.0.1:{port}",
            "--log-level",
            log_level,
        ],
    )
    gw = Proc(name, argv, home)
    wait_http(f"http://127.0.0.1:{port}/health", "nexus serve", proc=gw)
    return gw


def start_passthrough(logdir, exe, upstream_port, port, cpus, name="floor"):
    """The gateway's HTTP stack with nothing in between (`crates/gateway/examples/passthrough.rs`),
    forwarding to the mock: the floor any proxy on hyper's HTTP/1.1 pays."""
    argv = pinned(cpus, [exe, "--listen", f"127.0.0.1:{port}", "--upstream", f"http://127.0.0.1:{upstream_port}"])
    floor = Proc(name, argv, logdir)
    wait_http(f"http://127.0.0.1:{port}/v1/models", "passthrough", proc=floor)
    return floor


def start_litellm(logdir, venv, mock_port, port, cpus):
    exe = os.path.join(venv, "bin", "litellm")
    if not os.path.exists(exe):
        return None
    config = os.path.join(logdir, "litellm.yaml")
    with open(config, "w") as f:
        f.write(
            "model_list:\n"
            "  - model_name: mock-model\n"
            "    litellm_params:\n"
            "      model: openai/mock-model\n"
            f"      api_base: http://127.0.0.1:{mock_port}/v1\n"
            "      api_key: none\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
            "  drop_params: true\n"
        )
    # No authentication on either proxy (the gateway has no API keys configured either);
    # the local copy of the model price map instead of fetching it.
    env = dict(
        os.environ,
        LITELLM_LOG="ERROR",
        LITELLM_TELEMETRY="False",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY="true",
        NO_DOCS="True",
    )
    argv = pinned(cpus, [exe, "--config", config, "--port", str(port), "--num_workers", "1"])
    proc = Proc("litellm", argv, logdir, env=env)
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", "litellm", timeout=180, proc=proc)
    return proc


def oha_json_flag():
    out = subprocess.run(["oha", "--help"], capture_output=True, text=True).stdout
    return ["--output-format", "json"] if "--output-format" in out else ["-j"]


def oha(url, body, cpus, duration=None, rate=None, connections=32, requests=None, timeout_s=None):
    """Runs oha against `url` (POST `body`) and returns its JSON summary."""
    argv = ["oha", "--no-tui", *oha_json_flag(), "-m", "POST", "-T", "application/json", "-d", body]
    argv += ["-c", str(connections)]
    if duration:
        argv += ["-z", f"{duration}s"]
    if requests:
        argv += ["-n", str(requests)]
    if rate:
        # Open loop: requests are due at a fixed rate, and latency counts from when each
        # was due, so a slow answer cannot hide the ones queued behind it.
        argv += ["-q", str(rate), "--latency-correction"]
    if timeout_s:
        argv += ["-t", f"{timeout_s}s"]
    argv.append(url)
    done = subprocess.run(pinned(cpus, argv), capture_output=True, text=True)
    if done.returncode != 0:
        die(f"oha failed ({done.returncode}): {done.stderr.strip()[:500]}")
    return json.loads(done.stdout)


def summary(result):
    """p50 and p99 in microseconds, the rate, and the count of answers that were not 200."""
    lat = result.get("latencyPercentiles", {})
    first = result.get("firstBytePercentiles", {}) or {}
    codes = result.get("statusCodeDistribution", {}) or {}
    # A timed run (-z) cancels what is in flight when time is up: not a failure.
    errors = {k: v for k, v in (result.get("errorDistribution", {}) or {}).items()
              if k != "aborted due to deadline"}
    ok = int(codes.get("200", 0))
    bad = sum(int(v) for k, v in codes.items() if k != "200") + sum(int(v) for v in errors.values())
    return {
        "p50_us": (lat.get("p50") or 0) * 1e6,
        "p99_us": (lat.get("p99") or 0) * 1e6,
        "first_p50_us": (first.get("p50") or 0) * 1e6,
        "first_p99_us": (first.get("p99") or 0) * 1e6,
        "rps": result.get("summary", {}).get("requestsPerSec", 0.0),
        "ok": ok,
        "failed": bad,
        "codes": codes,
        "errors": errors,
    }


def metrics(port):
    """The gateway's /metrics as {name{labels}: value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            pass
    return out


def uptime():
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        return "?"


def write_report(path, lines):
    """Writes the markdown `lines` to `path` (creating its directory) and prints them."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
