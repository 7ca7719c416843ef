"""The deployment files: deploy/kubernetes/ (validated against Kubernetes' OpenAPI schemas, offline,
and checked against llama-host's own options), deploy/nginx/nginx.conf (``nginx -t``, then two live
replicas behind it: session affinity, balancing, streaming, failover), and the images' Dockerfile,
Dockerfile.cuda and .dockerignore (static checks always; a real ``docker build`` only on request:
LLAMA_HOST_DOCKER_TEST=1, where a Docker daemon answers).

nginx: Debian's (``apt-get install nginx-light``); where there is none, its tests are skipped."""

from __future__ import annotations

import copy
import http.server
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from live import Server
from llama_host import cli, metrics, vendor

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
NGINX_CONF = DEPLOY / "nginx" / "nginx.conf"
BUILD_STAGE = DEPLOY / "docker" / "build-stage.sh"
DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx") if os.access(p, os.X_OK)), None)
needs_nginx = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (Debian: apt-get install nginx-light): deploy/nginx/nginx.conf "
                          "is not tested")

# The oldest Kubernetes the manifests claim (policy/v1, autoscaling/v2, startup probes are older),
# and the newest whose schemas kubernetes-validate bundles.
K8S_OLDEST = "1.27"


# --- Kubernetes -------------------------------------------------------------------------------


def _manifests() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.rglob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                docs.append((f"{path.relative_to(K8S)}#{i}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}", doc))
    return docs


MANIFESTS = _manifests()


def _one(kind: str, name: str | None = None) -> dict:
    found = [d for _, d in MANIFESTS if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/kubernetes/, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def kv():
    return pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed (the test "
                                                             "extra: pip install -e '.[test]')")


def _versions() -> list[str]:
    try:
        from kubernetes_validate.utils import latest_version
    except ImportError:
        return [K8S_OLDEST]
    return [K8S_OLDEST, ".".join(latest_version().split(".")[:2])]


def test_there_are_manifests():
    kinds = sorted(d["kind"] for _, d in MANIFESTS)
    for kind in ("StatefulSet", "Service", "Deployment", "ConfigMap", "HorizontalPodAutoscaler"):
        assert kind in kinds


@pytest.mark.parametrize("version", _versions())
@pytest.mark.parametrize("doc", [d for _, d in MANIFESTS], ids=[i for i, _ in MANIFESTS])
def test_manifest_matches_the_kubernetes_schema(kv, doc, version):
    # strict: a field the API does not know (a typo, a wrong level) fails too
    kv.validate(doc, version, strict=True)


def test_the_schema_check_bites(kv):
    statefulset = _one("StatefulSet")
    wrong_type = copy.deepcopy(statefulset)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError, match="not of type 'integer'"):
        kv.validate(wrong_type, K8S_OLDEST, strict=True)
    misplaced = copy.deepcopy(statefulset)
    misplaced["spec"]["template"]["spec"]["containers"][0]["probe"] = {"httpGet": {"path": "/health"}}
    with pytest.raises(kv.ValidationError, match="'probe' was unexpected"):
        kv.validate(misplaced, K8S_OLDEST, strict=True)
    deployment = _one("Deployment")
    bad_port = copy.deepcopy(deployment)
    bad_port["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad_port, K8S_OLDEST, strict=True)


def test_the_schemas_are_bundled_not_fetched(kv, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("kubernetes-validate tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for _, doc in MANIFESTS:
        kv.validate(doc, K8S_OLDEST, strict=True)


def _container(workload: dict) -> dict:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def _port(container: dict, name: str) -> int:
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name)


def _serve_params(args: list[str]) -> dict:
    """The container's args as llama-host's command line parses them (an unknown option or a bad
    value raises, as it would stop the server)."""
    import typer

    app = typer.Typer(add_completion=False)
    app.command()(cli.serve)
    command = typer.main.get_command(app)
    with command.make_context("llama-host", list(args)) as ctx:
        return dict(ctx.params)


def test_replica_args_are_llama_host_options():
    statefulset = _one("StatefulSet", "llama-host")
    container = _container(statefulset)
    params = _serve_params(container["args"])
    host, port = cli.parse_socket_addr(params["socket_addr"], params["port"])
    assert (host, port) == ("0.0.0.0", _port(container, "http"))
    (preload,) = params["nn_preload"]
    name, encoding, target, path = preload.split(":", 3)
    assert (name, encoding, params["model_alias"]) == ("default", "GGML", "default")
    assert target in ("CPU", "GPU", "AUTO") and path.startswith("/models/")
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"].get("readOnly") is True, "the models are mounted read-only"
    # as many threads as CPUs granted
    assert params["threads"] == int(container["resources"]["requests"]["cpu"])
    # the host prompt cache fits in the memory limit (the server sizes it by the node's memory)
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Gi") and params["cache_ram"] < int(limit[:-2]) * 1024


def test_termination_grace_outlasts_llama_hosts_shutdown():
    statefulset = _one("StatefulSet", "llama-host")
    pod, container = statefulset["spec"]["template"]["spec"], _container(statefulset)
    params = _serve_params(container["args"])
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # SIGTERM after preStop; running requests get --shutdown-grace, the ended ones' errors the drain
    needed = float(pre_stop[1]) + params["shutdown_grace"] + cli.SHUTDOWN_DRAIN_S
    assert pod["terminationGracePeriodSeconds"] > needed
    assert params["shutdown_grace"] > 10, "longer than the default: answers take a while"


def test_probes_wait_for_a_slow_model_load():
    container = _container(_one("StatefulSet", "llama-host"))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "a large GGUF takes minutes to load"
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 30
    assert liveness["timeoutSeconds"] >= 3


def test_prometheus_scrapes_each_replica():
    statefulset = _one("StatefulSet", "llama-host")
    annotations = statefulset["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == _port(_container(statefulset), "http")


def test_services_select_the_pods_they_serve():
    workloads = [d for _, d in MANIFESTS if d["kind"] in ("StatefulSet", "Deployment")]
    for _, service in MANIFESTS:
        if service["kind"] != "Service":
            continue
        selector = service["spec"]["selector"]
        (workload,) = [w for w in workloads
                       if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert workload["spec"]["selector"]["matchLabels"].items() <= workload["spec"]["template"]["metadata"]["labels"].items()
        names = {p["name"] for p in _container(workload)["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, (service["metadata"]["name"], port)


def _replica_regions(text: str) -> list[list[str]]:
    regions = re.findall(r"# BEGIN replicas\n(.*?)# END replicas", text, flags=re.S)
    return [[line.strip() for line in region.splitlines() if line.strip()] for region in regions]


def test_nginx_names_every_replica():
    """nginx hashes over server *names*: one per StatefulSet pod, in the headless Service's DNS."""
    statefulset = _one("StatefulSet", "llama-host")
    headless = _one("Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    port = _port(_container(statefulset), "http")
    regions = _replica_regions(NGINX_CONF.read_text())
    assert len(regions) == 2 and regions[0] == regions[1], "both upstreams list the same replicas"
    servers = [line.split()[1] for line in regions[0] if line.startswith("server ")]
    namespace = statefulset["metadata"].get("namespace", "default")
    assert servers == [f"{statefulset['metadata']['name']}-{i}.{headless['metadata']['name']}.{namespace}"
                       f".svc.cluster.local:{port}" for i in range(statefulset["spec"]["replicas"])]
    assert all(" resolve" in line for line in regions[0] if line.startswith("server "))
    assert any(line.startswith("resolver ") for line in regions[0])


def test_the_proxys_configmap_is_nginx_conf():
    config_map = _one("ConfigMap", "llama-proxy-nginx")
    assert config_map["data"]["nginx.conf"] == NGINX_CONF.read_text(), (
        "deploy/kubernetes/nginx.yaml's ConfigMap must hold deploy/nginx/nginx.conf verbatim "
        "(indent the file by 4 spaces under `nginx.conf: |`)")
    deployment = _one("Deployment", "llama-proxy")
    container = _container(deployment)
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/nginx/nginx.conf")
    assert mount["subPath"] == "nginx.conf"
    image, _, tag = container["image"].rpartition(":")
    assert image.endswith("nginx") and tuple(int(x) for x in tag.split("-")[0].split(".")) >= (1, 27, 3), \
        "`resolve` in an upstream needs nginx 1.27.3 or later"
    listen = re.search(r"^\s*listen (\d+);", NGINX_CONF.read_text(), flags=re.M)
    assert listen and int(listen.group(1)) == _port(container, "http")
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/nginx-health"


def test_the_autoscaler_example_uses_real_metrics():
    hpa = _one("HorizontalPodAutoscaler")
    statefulset = _one("StatefulSet", "llama-host")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                             "name": statefulset["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] <= statefulset["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    source = Path(metrics.__file__).read_text()
    for metric in hpa["spec"]["metrics"]:
        assert f'"{metric["pods"]["metric"]["name"]}"' in source


def test_the_readme_names_real_metrics():
    source = Path(metrics.__file__).read_text()
    named = set(re.findall(r"\bllama_host_[a-z_]+", (DEPLOY / "README.md").read_text()))
    assert named
    for name in named:
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        assert f'"{base}"' in source, f"deploy/README.md names {name}, which metrics.py does not export"


# --- nginx ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render_nginx_conf(directory: Path, listen: int, replicas: list[int], text: str | None = None) -> Path:
    """deploy/nginx/nginx.conf for local replicas: each upstream's BEGIN/END region gets one
    ``server 127.0.0.1:PORT`` line per replica, with the original lines' parameters but ``resolve``
    (and without the cluster's resolver); nginx listens on ``listen``; its pid and temporary files go
    to ``directory``, its logs to files there."""
    text = NGINX_CONF.read_text() if text is None else text

    def local(match: re.Match) -> str:
        lines = [line for line in match.group(1).splitlines() if line.strip().startswith("server ")]
        params = [p for p in lines[0].strip().rstrip(";").split()[2:] if p != "resolve"]
        return "\n".join(f"        server 127.0.0.1:{port} {' '.join(params)};" for port in replicas) + "\n"

    text, n = re.subn(r"# BEGIN replicas\n(.*?)# END replicas\n", local, text, flags=re.S)
    assert n == 2
    text, n = re.subn(r"^(\s*)listen 8080;", rf"\g<1>listen 127.0.0.1:{listen};", text, flags=re.M)
    assert n == 1
    text = text.replace("/tmp/", f"{directory}/")
    text = text.replace("/dev/stdout", f"{directory}/access.log").replace("/dev/stderr", f"{directory}/error.log")
    (directory / "nginx").mkdir(exist_ok=True)
    path = directory / "nginx.conf"
    path.write_text(text)
    return path


@pytest.fixture
def nginx_dir():
    # world-readable: nginx's workers run as another user where the test runs as root
    directory = Path(tempfile.mkdtemp(prefix="llama-nginx-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def nginx_test(conf: Path) -> subprocess.CompletedProcess:
    return subprocess.run([NGINX, "-t", "-q", "-c", str(conf), "-e", str(conf.parent / "error.log")],
                          capture_output=True, text=True, timeout=30)


class Nginx:
    def __init__(self, conf: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.dir = conf.parent
        self.proc = subprocess.Popen([NGINX, "-c", str(conf), "-e", str(self.dir / "error.log"), "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.log('error.log')}")
            try:
                if httpx.get(self.url + "/nginx-health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nginx did not answer: {self.log('error.log')}")
            time.sleep(0.05)

    def log(self, name: str) -> str:
        try:
            return (self.dir / name).read_text()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@needs_nginx
def test_nginx_accepts_the_configuration(nginx_dir):
    conf = render_nginx_conf(nginx_dir, _free_port(), [_free_port(), _free_port()])
    done = nginx_test(conf)
    assert done.returncode == 0, done.stderr


@needs_nginx
def test_nginx_check_bites(nginx_dir):
    broken = NGINX_CONF.read_text().replace("proxy_buffering off;", "proxy_buffering of;")
    done = nginx_test(render_nginx_conf(nginx_dir, _free_port(), [_free_port()], broken))
    assert done.returncode != 0 and "proxy_buffering" in done.stderr


REPLICA_ARGS = ["--ctx-size", "512", "--parallel", "2", "--cache-ram", "64", "default", "auto"]


def _replica(model_path) -> Server:
    return Server([f"--nn-preload=default:GGML:CPU:{model_path('tiny')}", *REPLICA_ARGS])


@pytest.fixture(scope="module")
def cluster(model_path):
    """Two llama-host replicas behind nginx configured by deploy/nginx/nginx.conf."""
    if NGINX is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light)")
    directory = Path(tempfile.mkdtemp(prefix="llama-nginx-"))
    directory.chmod(0o755)
    replicas = [_replica(model_path), _replica(model_path)]
    port = _free_port()
    proxy = None
    try:
        proxy = Nginx(render_nginx_conf(directory, port, [r.port for r in replicas]), port)
        yield proxy, replicas
    finally:
        if proxy is not None:
            proxy.stop()
        for r in replicas:
            r.stop()
        shutil.rmtree(directory, ignore_errors=True)


def chats_answered(replica: Server) -> int:
    text = httpx.get(replica.url + "/metrics").text
    match = re.search(r'^llama_host_requests_total\{route="/v1/chat/completions",status="200"\} (\S+)$', text, re.M)
    return int(float(match.group(1))) if match else 0


def _chat(proxy: Nginx, session: str | None = None, **extra) -> httpx.Response:
    headers = {"X-Session-Id": session} if session is not None else {}
    return httpx.post(proxy.url + "/v1/chat/completions", headers=headers, timeout=60,
                      json={"model": "default", "max_tokens": 4, "temperature": 0,
                            "messages": [{"role": "user", "content": "hello"}], **extra})


def _counting(replicas: list[Server]):
    before = [chats_answered(r) for r in replicas]
    return lambda: [chats_answered(r) - b for r, b in zip(replicas, before)]


def test_a_session_stays_on_one_replica(cluster):
    proxy, replicas = cluster
    for session in ("conversation-a", "conversation-b"):
        served = _counting(replicas)
        for _ in range(5):
            r = _chat(proxy, session)
            assert r.status_code == 200, r.text
            assert r.json()["object"] == "chat.completion"
        assert sorted(served()) == [0, 5], f"{session}: answers per replica {served()}"


def test_sessions_spread_over_the_replicas(cluster):
    proxy, replicas = cluster
    served = _counting(replicas)
    for i in range(16):
        assert _chat(proxy, f"user-{i}").status_code == 200
    assert all(n > 0 for n in served()), f"16 sessions, answers per replica {served()}"


def test_requests_without_a_session_are_balanced(cluster):
    proxy, replicas = cluster
    served = _counting(replicas)
    for _ in range(6):
        assert _chat(proxy).status_code == 200
    assert all(n > 0 for n in served()), f"answers per replica {served()}"


def test_the_openai_sdk_sets_the_session_header(cluster):
    import openai

    proxy, replicas = cluster
    served = _counting(replicas)
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="none", max_retries=0,
                           default_headers={"X-Session-Id": "sdk-conversation"})
    for _ in range(3):
        reply = client.chat.completions.create(model="default", max_tokens=4,
                                               messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content is not None
    assert sorted(served()) == [0, 3]


def test_a_stream_passes_through(cluster):
    proxy, _ = cluster
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", headers={"X-Session-Id": "streamed"}, timeout=60,
                      json={"model": "default", "max_tokens": 8, "temperature": 0, "stream": True,
                            "messages": [{"role": "user", "content": "hello"}]}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert "content-length" not in r.headers
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert len(chunks) >= 2 and all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_the_proxy_answers_its_own_routes(cluster):
    proxy, _ = cluster
    r = httpx.get(proxy.url + "/metrics")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert httpx.get(proxy.url + "/health").json() == {"status": "ok"}  # (a replica's)
    r = httpx.post(proxy.url + "/v1/chat/completions", content=b"x" * (17 << 20),
                   headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert _chat(proxy, "logged").status_code == 200
    line = r'session="logged" upstream=127\.0\.0\.1:\d+ upstream_status=200'
    deadline = time.monotonic() + 10  # (nginx writes the line once the answer is out: the client may be first)
    while not re.search(line, proxy.log("access.log")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert re.search(line, proxy.log("access.log")), proxy.log("access.log")


def test_a_session_moves_when_its_replica_goes(model_path, nginx_dir):
    """A replica that stops (refused connections) is skipped: the session's next replica answers;
    with none left, the proxy answers a 502 in OpenAI's error shape."""
    if NGINX is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light)")
    replicas = [_replica(model_path), _replica(model_path)]
    port = _free_port()
    proxy = Nginx(render_nginx_conf(nginx_dir, port, [r.port for r in replicas]), port)
    try:
        served = _counting(replicas)
        assert _chat(proxy, "moving").status_code == 200
        home = served().index(1)
        replicas[home].stop()
        for _ in range(3):
            r = _chat(proxy, "moving")
            assert r.status_code == 200, r.text
        assert chats_answered(replicas[1 - home]) >= 3
        replicas[1 - home].stop()
        r = _chat(proxy, "moving")
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "bad_gateway"
    finally:
        proxy.stop()
        for r in replicas:
            r.stop()


class _SlowStream(http.server.BaseHTTPRequestHandler):
    """An upstream that streams two events a second apart (and says nothing of buffering, unlike
    llama-host's X-Accel-Buffering: no, so that only nginx.conf decides), recording what it got."""

    protocol_version = "HTTP/1.1"
    seen: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.seen.append({"version": self.request_version, "connection": self.headers.get("Connection")})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i, event in enumerate((b"data: first\n\n", b"data: second\n\n")):
            if i:
                time.sleep(1.5)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_upstream():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowStream)
    _SlowStream.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _first_event_delay(proxy_url: str) -> tuple[float, float]:
    started = time.monotonic()
    first = None
    with httpx.stream("POST", proxy_url + "/v1/chat/completions", json={"stream": True}, timeout=30) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line == "data: first" and first is None:
                first = time.monotonic() - started
    return first, time.monotonic() - started


@needs_nginx
def test_the_proxy_does_not_buffer_streams(nginx_dir, slow_upstream):
    port = _free_port()
    proxy = Nginx(render_nginx_conf(nginx_dir, port, [slow_upstream]), port)
    try:
        first, total = _first_event_delay(proxy.url)
    finally:
        proxy.stop()
    assert total >= 1.5
    assert first < 1.0, f"the first event came after {first:.2f} s, with the last: nginx buffered the stream"
    # upstream connections are HTTP/1.1 and kept alive (no "Connection: close")
    assert _SlowStream.seen == [{"version": "HTTP/1.1", "connection": None}]


@needs_nginx
def test_the_buffering_check_bites(nginx_dir, slow_upstream):
    """The timing check catches a proxy that holds a stream back: nginx with proxy_buffering on
    and gzip on keeps the events until the last. (Either alone still passes this stream on as it
    comes in nginx 1.22: unbuffered, each write upstream reaches gzip as a flush; buffered, nginx
    sends what it has read. So `off` is checked as text too: what it guards against is also a client
    slower than the replica, whose stream would pile up in nginx's buffers and temporary files.)"""
    text = NGINX_CONF.read_text()
    location = text[text.index("location / {"):]
    assert re.search(r"^\s*proxy_buffering off;", location, re.M) and re.search(r"^\s*gzip off;", location, re.M)
    holding = text.replace("gzip off;", "gzip on; gzip_types text/event-stream; gzip_min_length 1;").replace(
        "proxy_buffering off;", "proxy_buffering on;")
    port = _free_port()
    proxy = Nginx(render_nginx_conf(nginx_dir, port, [slow_upstream], holding), port)
    try:
        first, total = _first_event_delay(proxy.url)
    finally:
        proxy.stop()
    assert first >= 1.4, f"a compressing proxy passed the first event on after {first:.2f} s"


# --- the images -------------------------------------------------------------------------------


def parse_dockerfile(path: Path) -> list[list[tuple[str, str]]]:
    """The stages of a Dockerfile, each a list of (INSTRUCTION, arguments), with line continuations
    joined and comments dropped; the ARGs before the first FROM are stage 0's."""
    stages: list[list[tuple[str, str]]] = [[]]
    logical = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if logical and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        instruction, _, args = logical.partition(" ")
        logical = ""
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), args.strip()))
    return stages


def _args(stage: list[tuple[str, str]], instruction: str) -> list[str]:
    return [a for i, a in stage if i == instruction]


def _copy_parts(args: str) -> tuple[dict[str, str], list[str], str]:
    words = shlex.split(args)
    flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--"))
    paths = [w for w in words if not w.startswith("--")]
    return flags, paths[:-1], paths[-1]


# Where build.sh's outputs are: what the final stage copies from the build stage besides sources.
BUILD_OUTPUTS = {".venv", str(vendor.guest_wasm().relative_to(vendor.REPO_ROOT))}


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile(name):
    path = ROOT / name
    preamble, build, final = parse_dockerfile(path)
    build_from, final_from = build[0][1].split(), final[0][1].split()
    assert build_from[1:] == ["AS", "build"] and len(final_from) == 1, "two stages, the first named build"
    if name == "Dockerfile":
        assert build_from[0] == final_from[0] == "${PYTHON_IMAGE}", "one base image for both stages"
        assert any(a.startswith("PYTHON_IMAGE=python:3.") for a in _args(preamble, "ARG"))
    else:
        assert re.fullmatch(r"nvidia/cuda:\$\{CUDA_VERSION\}-devel-ubuntu\$\{UBUNTU_VERSION\}", build_from[0])
        assert re.fullmatch(r"nvidia/cuda:\$\{CUDA_VERSION\}-runtime-ubuntu\$\{UBUNTU_VERSION\}", final_from[0])
    for stage in (build, final):
        assert _args(stage, "WORKDIR") == ["/app"], "the venv is made and used at /app/.venv"

    # the build stage: the whole context, then the repository's own build.sh for the backend
    assert ". ." in _args(build, "COPY")
    (run,) = [a for a in _args(build, "RUN") if "build-stage.sh" in a]
    assert f"LLAMA_HOST_BACKEND={'cuda' if name.endswith('cuda') else 'cpu'}" in run
    assert "deploy/docker/build-stage.sh" in run
    assert re.search(r"^\./build\.sh$", BUILD_STAGE.read_text(), re.M)

    # the final stage: build outputs and sources, each at the path it had
    copied = []
    for args in _args(final, "COPY"):
        flags, sources, dest = _copy_parts(args)
        assert flags == {"from": "build"}, args
        for source in sources:
            assert source == dest, f"{args}: copied to another path (a venv is not relocatable)"
            if source.startswith("/app/"):
                rel = source[len("/app/"):]
                assert rel in BUILD_OUTPUTS or (ROOT / rel).exists(), f"{source}: neither in the repository nor built"
            copied.append(source)
    for needed in ("/app/.venv", "/app/host", "/app/templates", f"/app/{vendor.guest_wasm().relative_to(vendor.REPO_ROOT)}"):
        assert needed in copied
    vendor_dir = re.search(r"^VENDOR=\$\{VENDOR:-(\S+)\}$", BUILD_STAGE.read_text(), re.M).group(1)
    assert vendor_dir in copied
    env = " ".join(_args(final, "ENV"))
    assert f"LLAMA_HOST_LLAMA_CPP_SRC={vendor_dir}" in env and "PATH=/app/.venv/bin:$PATH" in env
    assert not any(".gguf" in a or "/models" in a for a in _args(final, "COPY")), "models are mounted, not baked in"

    (user,) = _args(final, "USER")
    assert user.split(":")[0] not in ("root", "0") and user.split(":")[0].isdigit(), \
        "a numeric non-root USER (Kubernetes' runAsNonRoot can check only a number)"
    assert _args(final, "EXPOSE") == ["8080"]
    (healthcheck,) = _args(final, "HEALTHCHECK")
    assert "/health" in healthcheck and "--start-period=" in healthcheck
    assert json.loads(_args(final, "ENTRYPOINT")[0]) == ["llama-host"]


def test_the_images_run_as_the_kubernetes_user():
    (user,) = _args(parse_dockerfile(ROOT / "Dockerfile")[-1], "USER")
    pod = _one("StatefulSet", "llama-host")["spec"]["template"]["spec"]
    assert str(pod["securityContext"]["runAsUser"]) == user.split(":")[0]
    mounts = {m["mountPath"] for m in _container(_one("StatefulSet", "llama-host"))["volumeMounts"]}
    assert "/home/llama/.cache" in mounts, "the server's only writable place, under a read-only root"
    assert "--home-dir /home/llama" in " ".join(_args(parse_dockerfile(ROOT / "Dockerfile")[-1], "RUN"))


def test_the_build_stage_script_parses():
    done = subprocess.run(["bash", "-n", str(BUILD_STAGE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert os.access(BUILD_STAGE, os.X_OK), "the Dockerfiles run it directly"


def _dockerignore_excludes(rel: str) -> bool:
    """Docker's .dockerignore matching, for the patterns used here: a pattern excludes the paths it
    matches and everything under them; ``**`` spans folders; a later ``!pattern`` re-includes."""
    excluded = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        rx, i = "", 0
        pattern = pattern.lstrip("/")
        while i < len(pattern):
            if pattern.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif pattern[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif pattern[i] == "?":
                rx, i = rx + "[^/]", i + 1
            else:
                rx, i = rx + re.escape(pattern[i]), i + 1
        if re.fullmatch(rx + r"(?:/.*)?", rel):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_built_and_downloaded_files_out():
    for rel in (".venv/bin/python", ".cache/models/x.gguf", "bench/out/results.json",
                "guest/zig-out/bin/llama-host-guest.wasm", ".git/HEAD", "host/llama_host/__pycache__/cli.pyc",
                "models/x.gguf"):
        assert _dockerignore_excludes(rel), rel


def test_dockerignore_keeps_what_build_sh_needs():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    needed = [f for f in tracked.stdout.splitlines()
              if f.startswith(("host/", "guest/", "templates/", "deploy/docker/"))
              or f in ("build.sh", "pyproject.toml", "constraints.txt", "README.md", "tests/realmodel.py")]
    needed += ["deploy/docker/build-stage.sh", "host/llama_host/engine/amx.py"]
    assert not [f for f in needed if _dockerignore_excludes(f)]


DOCKER_TEST = os.environ.get("LLAMA_HOST_DOCKER_TEST", "")


def _docker_ready() -> str | None:
    if not DOCKER_TEST or DOCKER_TEST == "0":
        return "set LLAMA_HOST_DOCKER_TEST=1 to build the image (many minutes; =cuda builds Dockerfile.cuda too)"
    if shutil.which("docker") is None:
        return "no docker command"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if info.returncode != 0:
        return f"no Docker daemon answers: {info.stderr.strip()[-200:]}"
    return None


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
def test_docker_build_and_run():
    why = _docker_ready()
    if why:
        pytest.skip(why)
    tag = "llama-host:test-deploy"
    subprocess.run(["docker", "build", "-t", tag, "."], cwd=ROOT, check=True, timeout=3 * 3600)
    port = _free_port()
    # no arguments: the demo model (the image needs no model to start)
    container = subprocess.run(["docker", "run", "-d", "--rm", "-p", f"127.0.0.1:{port}:8080", tag],
                               capture_output=True, text=True, check=True).stdout.strip()
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, subprocess.run(["docker", "logs", container], capture_output=True,
                                                               text=True).stdout[-3000:]
            time.sleep(1)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=120,
                       json={"model": "default", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
        user = subprocess.run(["docker", "exec", container, "id", "-u"], capture_output=True, text=True).stdout.strip()
        assert user == "10001"
    finally:
        subprocess.run(["docker", "stop", container], capture_output=True)
    if DOCKER_TEST == "cuda":
        subprocess.run(["docker", "build", "-f", "Dockerfile.cuda", "-t", "llama-host:test-deploy-cuda", "."],
                       cwd=ROOT, check=True, timeout=4 * 3600)
