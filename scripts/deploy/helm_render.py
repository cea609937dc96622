#!/usr/bin/env python3
"""Render a Helm chart with real Helm (helm-sdkpy embeds Helm v4's Go library) and no cluster.

helm-sdkpy has no `template` call, so this runs `install` against a discovery-only Kubernetes API stub on
127.0.0.1 with the in-memory release driver: Helm renders, maps every kind through discovery, "creates"
the objects in the stub, and returns the rendered manifest, which goes to stdout.

usage: helm_render.py CHART VALUES.json [VALUES.json ...]   (later files override earlier ones)
"""
import asyncio
import json
import os
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Every kind the charts render, by group/version: what the stub's discovery answers.
RESOURCES = {
    "v1": [("services", "Service"), ("configmaps", "ConfigMap"), ("secrets", "Secret"),
           ("serviceaccounts", "ServiceAccount"), ("namespaces", "Namespace")],
    "apps/v1": [("deployments", "Deployment")],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget")],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy"), ("ingresses", "Ingress")],
    "autoscaling/v2": [("horizontalpodautoscalers", "HorizontalPodAutoscaler")],
    "keda.sh/v1alpha1": [("scaledobjects", "ScaledObject"), ("triggerauthentications", "TriggerAuthentication"),
                         ("clustertriggerauthentications", "ClusterTriggerAuthentication")],
    "serving.knative.dev/v1": [("services", "Service")],
    "sources.knative.dev/v1": [("kafkasources", "KafkaSource")],
    "dapr.io/v1alpha1": [("components", "Component"), ("resiliencies", "Resiliency")],
    "dapr.io/v2alpha1": [("subscriptions", "Subscription")],
    "kafka.strimzi.io/v1": [("kafkatopics", "KafkaTopic"), ("kafkas", "Kafka"), ("kafkanodepools", "KafkaNodePool"), ("kafkausers", "KafkaUser")],
    "monitoring.coreos.com/v1": [("servicemonitors", "ServiceMonitor"), ("prometheusrules", "PrometheusRule")],
    "postgresql.cnpg.io/v1": [("clusters", "Cluster")],
}
CLUSTER_SCOPED = {"namespaces", "clustertriggerauthentications"}


class Stub(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?")[0].rstrip("/")
        if path == "/version":
            return self.reply(200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0", "platform": "linux/amd64"})
        if path == "/api":
            return self.reply(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        if path == "/apis":
            groups = {}
            for gv in RESOURCES:
                if "/" in gv:
                    g, v = gv.split("/")
                    groups.setdefault(g, []).append({"groupVersion": gv, "version": v})
            return self.reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": vs, "preferredVersion": vs[-1]} for g, vs in groups.items()]})
        gv = path[len("/api/"):] if path.startswith("/api/") else path[len("/apis/"):]
        if gv in RESOURCES:
            return self.reply(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": [
                {"name": n, "singularName": "", "namespaced": n not in CLUSTER_SCOPED, "kind": k,
                 "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
                for n, k in RESOURCES[gv]]})
        return self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        try:
            return self.reply(201, json.loads(body))
        except ValueError:
            return self.reply(201, {})

    do_PUT = do_POST
    do_PATCH = do_POST


def merge(base, extra):
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v
    return base


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    if os.environ.get("HELM_DRIVER") != "memory":
        # The Go runtime reads its environment once, at start: re-exec with it set.
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, "HELM_DRIVER": "memory"})
    import helm_sdkpy as helm

    chart = sys.argv[1]
    values = {}
    for f in sys.argv[2:]:
        with open(f) as fh:
            merge(values, json.load(fh))
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as kc:
        kc.write(f"""apiVersion: v1
kind: Config
clusters: [{{name: stub, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: stub, user: {{token: stub}}}}]
contexts: [{{name: stub, context: {{cluster: stub, user: stub, namespace: zerofn}}}}]
current-context: stub
""")
    try:
        name = values.get("function", {}).get("name") or os.path.basename(os.path.normpath(chart))
        cfg = helm.Configuration(namespace="zerofn", kubeconfig=kc.name)
        result = asyncio.run(helm.Install(cfg).run(name, chart, values=values, wait=False, timeout=30))
    except Exception as e:  # Helm's error text: the template, line and reason
        sys.exit(f"helm render of {chart} failed: {e}")
    finally:
        os.unlink(kc.name)
        server.shutdown()
    sys.stdout.write(result["manifest"])


if __name__ == "__main__":
    main()
