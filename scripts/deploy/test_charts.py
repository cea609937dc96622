#!/usr/bin/env python3
"""The charts, checked without a cluster (run by `make test-deploy`, part of `make test`).

For every function under functions/ and for the platform chart:
  1. values come from function.toml through `zerofn values` (the same path `make render/deploy` take);
  2. real Helm renders the chart (helm_render.py);
  3. every object validates: core kinds with kubernetes-validate (Kubernetes 1.32, strict), CRDs with JSON
     Schema from the vendored upstream CRDs in helm/schemas/;
  4. policies hold over everything rendered: no container as root, probes and limits on every pod, no
     secret value in any manifest, a dead-letter topic for every event topic;
  5. golden checks: function.toml (read here independently, with tomllib) -> rendered ScaledObject /
     Knative Service fields, and a snapshot of each function's full manifest (UPDATE_GOLDEN=1 rewrites it).
"""
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
ZEROFN = os.environ.get("ZEROFN_BIN", str(ROOT / "target" / "debug" / "zerofn"))
RENDER = [sys.executable, str(ROOT / "scripts" / "deploy" / "helm_render.py")]
SCHEMAS = ROOT / "helm" / "schemas"
GOLDEN = ROOT / "helm" / "testdata"
K8S_VERSION = "1.32"
CRDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject.crd.yaml",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda-triggerauthentication.crd.yaml",
    ("keda.sh/v1alpha1", "ClusterTriggerAuthentication"): "keda-clustertriggerauthentication.crd.yaml",
    ("dapr.io/v1alpha1", "Component"): "dapr-component.crd.yaml",
    ("dapr.io/v1alpha1", "Resiliency"): "dapr-resiliency.crd.yaml",
    ("dapr.io/v2alpha1", "Subscription"): "dapr-subscription.crd.yaml",
    ("serving.knative.dev/v1", "Service"): "knative-serving-service.crd.yaml",
    ("sources.knative.dev/v1", "KafkaSource"): "knative-kafkasource.crd.yaml",
    ("postgresql.cnpg.io/v1", "Cluster"): "cnpg-cluster.crd.yaml",
    ("kafka.strimzi.io/v1", "KafkaTopic"): "strimzi-kafkatopic.crd.yaml",
    ("kafka.strimzi.io/v1", "Kafka"): "strimzi-kafka.crd.yaml",
    ("kafka.strimzi.io/v1", "KafkaNodePool"): "strimzi-kafkanodepool.crd.yaml",
    ("kafka.strimzi.io/v1", "KafkaUser"): "strimzi-kafkauser.crd.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "prometheus-servicemonitor.crd.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheus-prometheusrule.crd.yaml",
}
CORE_GROUPS = ("v1", "apps/v1", "policy/v1", "networking.k8s.io/v1", "autoscaling/v2")
# The TLS listener of the Kafka cluster the platform chart declares in its namespace (the renders' "zerofn").
PLATFORM_BOOTSTRAP = "zerofn-kafka-bootstrap.zerofn.svc:9093"
# The platform's zerofn scaler, where a function with [scaling] push points KEDA.
PLATFORM_SCALER = "zerofn-scaler.zerofn.svc:9600"
SECRET_NAME = re.compile(r"(TOKEN|PASSWORD|SECRET|PASSWD|CREDENTIALS?)$", re.I)
failures = []
quiet = False


def fail(msg):
    failures.append(msg)
    if not quiet:
        print(f"FAIL {msg}", file=sys.stderr)


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))}: exit {r.returncode}\n{r.stderr}")
    return r.stdout


def render(chart, *values):
    with tempfile.TemporaryDirectory() as d:
        files = []
        for i, v in enumerate(values):
            p = Path(d) / f"values{i}.json"
            p.write_text(json.dumps(v))
            files.append(str(p))
        text = run(RENDER + [str(ROOT / "helm" / chart)] + files)
    return text, [doc for doc in yaml.safe_load_all(text) if doc]


def crd_schema(file, version):
    crd = yaml.safe_load((SCHEMAS / file).read_text())
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise KeyError(f"{file} has no version {version}")


def validate(where, docs):
    for doc in docs:
        api, kind, name = doc.get("apiVersion"), doc.get("kind"), doc.get("metadata", {}).get("name")
        label = f"{where}: {kind}/{name}"
        if (api, kind) in CRDS:
            schema = crd_schema(CRDS[(api, kind)], api.split("/")[1])
            errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
            for e in errors:
                fail(f"{label}: {'/'.join(map(str, e.path))}: {e.message}")
        elif api in CORE_GROUPS:
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                fail(f"{label}: {e.message}")
        else:
            fail(f"{label}: no schema to validate {api} {kind} against")


def pod_specs(docs):
    for doc in docs:
        if doc["kind"] == "Deployment" or (doc["kind"] == "Service" and doc["apiVersion"].startswith("serving.knative.dev")):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def policies(where, docs, text):
    for label, spec in pod_specs(docs):
        pod = spec.get("securityContext", {})
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            who = f"{where}: {label} container {c['name']}"
            if not (sc.get("runAsNonRoot") or pod.get("runAsNonRoot")) or 0 in (sc.get("runAsUser"), pod.get("runAsUser")):
                fail(f"{who} may run as root")
            if sc.get("allowPrivilegeEscalation") is not False:
                fail(f"{who} allows privilege escalation")
            if sc.get("readOnlyRootFilesystem") is not True:
                fail(f"{who} has a writable root filesystem")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                fail(f"{who} keeps capabilities")
            if (sc.get("seccompProfile") or pod.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
                fail(f"{who} has no RuntimeDefault seccomp profile")
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in c:
                    fail(f"{who} has no {probe}")
            limits = c.get("resources", {}).get("limits", {})
            if not {"cpu", "memory"} <= limits.keys():
                fail(f"{who} has no cpu and memory limits")
            for env in c.get("env", []):
                if "value" in env and SECRET_NAME.search(env["name"]):
                    fail(f"{who}: secret {env['name']} is a literal value, not a secretKeyRef")
                if "value" in env and re.search(r"://[^/\s:@]+:[^/\s@]+@", str(env["value"])):
                    fail(f"{who}: {env['name']} carries credentials in a URL")
    for doc in docs:
        if doc["kind"] == "Secret":
            fail(f"{where}: a Secret is rendered ({doc['metadata']['name']}): secrets are referenced, never shipped")
        if doc["kind"] == "Component":
            for m in doc["spec"].get("metadata", []):
                if "value" in m and SECRET_NAME.search(m["name"]):
                    fail(f"{where}: component {doc['metadata']['name']} has {m['name']} as a literal value")
    if "PLACEHOLDER-SECRET" in text:
        fail(f"{where}: the planted secret value leaked into the manifest")


def one(docs, kind, api_prefix=""):
    found = [d for d in docs if d["kind"] == kind and d["apiVersion"].startswith(api_prefix)]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def golden_fields(fn, manifest, docs):
    """function.toml, read here, against what was rendered."""
    f = manifest.get("function", {})
    name = f.get("name", fn)
    s = manifest.get("scaling", {})
    cooldown = s.get("cooldown", "120s")
    cooldown_s = int(cooldown[:-1]) * {"s": 1, "m": 60, "h": 3600}[cooldown[-1]]
    subs = [x["topic"] for x in manifest.get("subscriptions", [])]
    if subs:
        so = one(docs, "ScaledObject")
        dep = one(docs, "Deployment")
        ann = dep["spec"]["template"]["metadata"]["annotations"]
        expect = {
            # A function that schedules Dapr jobs (or has schedules) keeps one replica: nothing in a
            # cluster wakes it for a job.
            "minReplicaCount": max(s.get("min", 0), 1 if manifest.get("jobs") or manifest.get("schedules") else 0),
            "maxReplicaCount": s.get("max", 4), "cooldownPeriod": cooldown_s,
        }
        for k, v in expect.items():
            if so["spec"].get(k) != v:
                fail(f"{fn}: ScaledObject {k} = {so['spec'].get(k)}, function.toml says {v}")
        if so["spec"]["scaleTargetRef"]["name"] != dep["metadata"]["name"]:
            fail(f"{fn}: ScaledObject does not target the Deployment")
        topics = sorted(t["metadata"]["topic"] for t in so["spec"]["triggers"])
        if topics != sorted(subs):
            fail(f"{fn}: trigger topics {topics} != subscriptions {sorted(subs)}")
        for t in so["spec"]["triggers"]:
            md = t["metadata"]
            if md["consumerGroup"] != ann["dapr.io/app-id"] or md["consumerGroup"] != name:
                fail(f"{fn}: consumer group {md['consumerGroup']} != Dapr app id {ann['dapr.io/app-id']}")
            if md["lagThreshold"] != str(s.get("lag_threshold", 100)):
                fail(f"{fn}: lagThreshold {md['lagThreshold']} != {s.get('lag_threshold', 100)}")
            if md["activationLagThreshold"] != str(s.get("activation_lag_threshold", 0)):
                fail(f"{fn}: activationLagThreshold {md['activationLagThreshold']}")
            if md["offsetResetPolicy"] != "earliest":
                fail(f"{fn}: offsetResetPolicy {md['offsetResetPolicy']}: must pair with Dapr's initialOffset oldest")
    elif "http" in manifest:
        ks = one(docs, "Service", "serving.knative.dev")
        ann = ks["spec"]["template"]["metadata"]["annotations"]
        h = manifest["http"]
        timeout = h.get("timeout", "60s")
        expect = {
            "autoscaling.knative.dev/target": str(h.get("concurrency", 10)),
            "autoscaling.knative.dev/min-scale": str(s.get("min", 0)),
            "autoscaling.knative.dev/max-scale": str(s.get("max", 4)),
            "autoscaling.knative.dev/metric": "concurrency",
        }
        for k, v in expect.items():
            if ann.get(k) != v:
                fail(f"{fn}: {k} = {ann.get(k)}, function.toml says {v}")
        if ks["spec"]["template"]["spec"]["timeoutSeconds"] != int(timeout[:-1]):
            fail(f"{fn}: timeoutSeconds != [http] timeout {timeout}")
        # An HTTP function that emits events publishes through a Dapr sidecar; one that does not has none.
        env = {e["name"]: e.get("value") for e in ks["spec"]["template"]["spec"]["containers"][0]["env"]}
        publishes = bool(manifest.get("publishes"))
        if publishes != (ann.get("dapr.io/enabled") == "true") or env["ZEROFN_TRANSPORT"] != ("dapr" if publishes else "http"):
            fail(f"{fn}: publishes={publishes} but dapr.io/enabled={ann.get('dapr.io/enabled')}, ZEROFN_TRANSPORT={env['ZEROFN_TRANSPORT']}")
        if publishes and ann.get("dapr.io/app-id") != name:
            fail(f"{fn}: Dapr app id {ann.get('dapr.io/app-id')} != {name}")


def kafka_auth(fn, docs):
    """KEDA's kafka triggers: SCRAM-SHA-512 over TLS to the platform's cluster, as its read-only user."""
    so = one(docs, "ScaledObject")
    ta = {d["metadata"]["name"]: d for d in docs if d["kind"] == "TriggerAuthentication"}
    cms = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    for t in so["spec"]["triggers"]:
        md = t["metadata"]
        if md.get("sasl") != "scram_sha512" or md.get("tls") != "enable" or md["bootstrapServers"] != PLATFORM_BOOTSTRAP:
            fail(f"{fn}: trigger {t['name']} does not reach {PLATFORM_BOOTSTRAP} with SCRAM over TLS: {md}")
        auth = ta.get(t.get("authenticationRef", {}).get("name"))
        if not auth:
            fail(f"{fn}: trigger {t['name']} has no TriggerAuthentication")
            continue
        refs = {r["parameter"]: r for r in auth["spec"].get("secretTargetRef", []) + auth["spec"].get("configMapTargetRef", [])}
        user = refs.get("username", {})
        if cms.get(user.get("name"), {}).get("data", {}).get(user.get("key")) != "zerofn-keda":
            fail(f"{fn}: KEDA's username is not the platform's read-only user zerofn-keda")
        if (refs.get("password", {}).get("name"), refs.get("password", {}).get("key")) != ("zerofn-keda", "password"):
            fail(f"{fn}: KEDA's password is not read from the KafkaUser's Secret: {refs.get('password')}")
        if (refs.get("ca", {}).get("name"), refs.get("ca", {}).get("key")) != ("zerofn-cluster-ca-cert", "ca.crt"):
            fail(f"{fn}: KEDA does not trust the cluster CA: {refs.get('ca')}")


def env_of(docs):
    """The function container's env of the one pod spec rendered, by name."""
    specs = list(pod_specs(docs))
    assert len(specs) == 1, f"expected one pod spec, got {len(specs)}"
    return {e["name"]: e for e in specs[0][1]["containers"][0].get("env", [])}


def render_fails(chart, expected, *values):
    try:
        render(chart, *values)
    except RuntimeError as e:
        if expected not in str(e):
            fail(f"{chart}: render failed without saying {expected!r}: {e}")
        return
    fail(f"{chart}: rendered although it should fail with {expected!r}")


def shared_store(fn, manifest, values):
    """An event function, or one with [store] sql = true, gets the platform's shared store by default;
    without one it does not render."""
    defaults = yaml.safe_load((ROOT / "helm" / "zerofn-function" / "values.yaml").read_text())["store"]
    _, docs = render("zerofn-function", values)
    env = env_of(docs)
    if not manifest.get("subscriptions") and not manifest.get("store", {}).get("sql"):
        if "ZEROFN_STORE" in env:
            fail(f"{fn}: an HTTP function without SQL was given the store")
        return
    ref = env.get("ZEROFN_STORE", {}).get("valueFrom", {}).get("secretKeyRef")
    if ref != {"name": defaults["secretName"], "key": defaults["key"]}:
        fail(f"{fn}: ZEROFN_STORE is not the platform's shared store: {env.get('ZEROFN_STORE')}")
    render_fails("zerofn-function", "store.secretName is required for an event function or one with [store] sql = true", values, {"store": {"secretName": ""}})
    _, docs = render("zerofn-function", values, {"store": {"ephemeralForDemoOnly": True}})
    env = env_of(docs)
    if "ZEROFN_STORE" in env or env.get("ZEROFN_ALLOW_EPHEMERAL_STORE", {}).get("value") != "true":
        fail(f"{fn}: the demo opt-out does not render as ZEROFN_ALLOW_EPHEMERAL_STORE=true without a store")
    return defaults


def snapshot(fn, text):
    path = GOLDEN / f"{fn}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    elif not path.exists() or path.read_text() != text:
        fail(f"{fn}: rendered manifest differs from {path.relative_to(ROOT)} (UPDATE_GOLDEN=1 make test-deploy to accept)")


def checks_can_fail(docs, text):
    """The validators and policies reject what they should (a check that cannot fail checks nothing)."""
    global failures, quiet
    bad = copy.deepcopy(docs)
    for d in bad:
        if d["kind"] == "ScaledObject":
            d["spec"]["minReplicaCount"] = "zero"
        if d["kind"] == "Deployment":
            d["spec"]["replicas"] = "two"
            c = d["spec"]["template"]["spec"]["containers"][0]
            c["securityContext"]["runAsUser"] = 0
            del c["readinessProbe"]
            c["env"].append({"name": "DAPR_API_TOKEN", "value": "PLACEHOLDER-SECRET"})
    kept, failures, quiet = failures, [], True
    validate("self-check", bad)
    policies("self-check", bad, text + "PLACEHOLDER-SECRET")
    caught, failures, quiet = failures, kept, False
    expected = ["minReplicaCount", "'two'", "may run as root", "no readinessProbe", "literal value", "leaked"]
    for e in expected:
        if not any(e in c for c in caught):
            fail(f"self-check: a broken manifest was not caught ({e!r} not in {caught})")


def deploy_without_a_cluster():
    """`make deploy` with no cluster reachable fails fast, says so, and builds, pushes and changes nothing."""
    import shutil
    import socket
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    with tempfile.TemporaryDirectory() as d:
        kubeconfig = Path(d) / "kubeconfig"
        kubeconfig.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: gone, cluster: {{server: "https://127.0.0.1:{port}"}}}}]
users: [{{name: gone, user: {{token: x}}}}]
contexts: [{{name: gone, context: {{cluster: gone, user: gone}}}}]
current-context: gone
""")
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "ZEROFN_BIN": ZEROFN}
        if shutil.which("kubectl"):
            started = time.monotonic()
            r = subprocess.run([str(ROOT / "scripts/deploy/deploy.sh"), "deploy", "notify"], env=env, capture_output=True, text=True, timeout=60)
            took = time.monotonic() - started
            if r.returncode != 3 or "no Kubernetes cluster reachable (context: gone)" not in r.stderr or "nothing was built, pushed or changed" not in r.stderr:
                fail(f"deploy without a cluster: exit {r.returncode}, stderr {r.stderr!r}")
            if "building" in r.stderr or "helm upgrade" in r.stderr:
                fail(f"deploy without a cluster went on: {r.stderr!r}")
            print(f"ok   deploy without a cluster: exit 3 after {took:.1f} s, nothing built", file=sys.stderr)
        else:
            print("skip deploy without a cluster: kubectl is not installed here (the missing-tool check below runs)", file=sys.stderr)
        # Without kubectl: the tool is named, with where to get it.
        bare = Path(d) / "bin"
        bare.mkdir()
        for tool in ("bash", "git", "dirname", "mktemp", "rm", "cat", "env"):
            found = shutil.which(tool)
            if found:
                (bare / tool).symlink_to(found)
        r = subprocess.run([str(ROOT / "scripts/deploy/deploy.sh"), "deploy", "notify"], env={**env, "PATH": str(bare)}, capture_output=True, text=True, timeout=60)
        if r.returncode != 2 or "kubectl is not installed" not in r.stderr:
            fail(f"deploy without kubectl: exit {r.returncode}, stderr {r.stderr!r}")


def kafka_platform(docs, topics, pub, sub):
    """The Kafka side as shipped: a KRaft cluster of 3 nodes with the TLS+SCRAM listener only and ACLs on, the
    topics, users and clients all pointing at it, and each principal's ACLs no wider than the pub/sub scopes."""
    k = one(docs, "Kafka")
    name, spec = k["metadata"]["name"], k["spec"]["kafka"]
    pools = [d for d in docs if d["kind"] == "KafkaNodePool" and d["metadata"]["labels"].get("strimzi.io/cluster") == name]
    if sum(p["spec"]["replicas"] for p in pools) != 3 or not all({"controller", "broker"} <= set(p["spec"]["roles"]) for p in pools):
        fail(f"platform: the Kafka cluster is not 3 KRaft nodes: {[(p['spec']['replicas'], p['spec']['roles']) for p in pools]}")
    if [(l["port"], l["tls"], l.get("authentication", {}).get("type")) for l in spec["listeners"]] != [(9093, True, "scram-sha-512")]:
        fail(f"platform: Kafka listens other than TLS + SCRAM-SHA-512 only: {spec['listeners']}")
    if spec.get("authorization", {}).get("type") != "simple" or spec["config"].get("auto.create.topics.enable") is not False:
        fail("platform: Kafka without ACLs, or creating topics on first use")
    if spec["config"].get("min.insync.replicas") != 2 or spec["config"].get("offsets.topic.replication.factor") != 3:
        fail("platform: Kafka's own defaults are not replication 3 / min ISR 2")
    # One cluster, one namespace: topics and users carry its name, the clients its TLS bootstrap in the release namespace.
    for d in docs:
        if d["kind"] in ("KafkaTopic", "KafkaUser") and d["metadata"]["labels"].get("strimzi.io/cluster") != name:
            fail(f"platform: {d['kind']}/{d['metadata']['name']} belongs to another Kafka cluster")
    comp = next(d for d in docs if d["kind"] == "Component" and d["metadata"]["name"] == "kafka-pubsub")
    md = {m["name"]: m for m in comp["spec"]["metadata"]}
    if md["brokers"]["value"] != PLATFORM_BOOTSTRAP or not PLATFORM_BOOTSTRAP.startswith(f"{name}-kafka-bootstrap."):
        fail(f"platform: Dapr connects to {md['brokers']['value']}, not the declared cluster's TLS listener")
    users = {d["metadata"]["name"]: d for d in docs if d["kind"] == "KafkaUser"}
    dapr_user = md.get("saslUsername", {}).get("value")
    if md.get("authType", {}).get("value") != "password" or md.get("saslMechanism", {}).get("value") != "SHA-512" \
            or md.get("saslPassword", {}).get("secretKeyRef") != {"name": dapr_user, "key": "password"} \
            or md.get("caCert", {}).get("secretKeyRef") != {"name": f"{name}-cluster-ca-cert", "key": "ca.crt"} or "disableTls" in md:
        fail(f"platform: the Dapr component does not authenticate with SCRAM over TLS as a KafkaUser: {comp['spec']['metadata']}")
    if set(users) != {dapr_user, "zerofn-keda"} or any(u["spec"]["authentication"]["type"] != "scram-sha-512" for u in users.values()):
        fail(f"platform: KafkaUsers {sorted(users)}, expected the Dapr component's and KEDA's, SCRAM-SHA-512")
        return
    def acls(user):
        out = {}
        for a in users[user]["spec"]["authorization"]["acls"]:
            r = a["resource"]
            if a.get("type", "allow") != "allow" or r.get("patternType", "literal") != "literal":
                fail(f"platform: {user} has a non-literal or deny ACL: {a}")
            out.setdefault((r["type"], r.get("name")), set()).update(a["operations"])
        return out
    dapr, keda = acls(dapr_user), acls("zerofn-keda")
    writes = set().union(*pub.values())
    reads = set().union(*sub.values())
    for (kind, res), ops in dapr.items():
        if kind == "topic" and ("Write" in ops) != (res in writes):
            fail(f"platform: Dapr's Write on {res} does not mirror the publishing scopes")
        if kind == "topic" and ("Read" in ops) != (res in reads):
            fail(f"platform: Dapr's Read on {res} does not mirror the subscription scopes")
        if kind == "topic" and res not in topics:
            fail(f"platform: Dapr has rights on {res}, which no KafkaTopic declares")
        if kind not in ("topic", "group") or not ops <= {"Read", "Write", "Describe"}:
            fail(f"platform: Dapr's ACL on {kind} {res} is too wide: {sorted(ops)}")
    if {t for (k_, t), ops in dapr.items() if k_ == "topic" and "Write" in ops} != writes:
        fail("platform: Dapr may not write every topic the scopes let an app publish")
    if any(t.startswith("async.") and "Write" in ops for (_, t), ops in dapr.items()):
        fail("platform: the Dapr principal may write an async.* topic")
    if any(ops != {"Describe"} for ops in keda.values()) or {t for (k_, t) in keda if k_ == "topic"} != reads:
        fail(f"platform: KEDA's principal may do more than describe the subscribed topics and groups: {keda}")
    groups = set(comp.get("scopes", []))
    if {g for (k_, g) in dapr if k_ == "group"} != groups or {g for (k_, g) in keda if k_ == "group"} != groups:
        fail("platform: the consumer-group ACLs are not the apps' (group = Dapr app id)")
    # The push scaler: reachable where function charts point KEDA, reading as KEDA's user over TLS.
    scaler = next((d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "zerofn-scaler"), None)
    service = next((d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "zerofn-scaler"), None)
    if not scaler or not service or f"{service['metadata']['name']}.zerofn.svc:{service['spec']['ports'][0]['port']}" != PLATFORM_SCALER:
        fail(f"platform: no zerofn scaler at {PLATFORM_SCALER}")
    else:
        c = scaler["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in c.get("env", [])}
        if c["args"][0] != "scaler" or "--kafka-setting=sasl.username=zerofn-keda" not in c["args"] \
                or env.get("ZEROFN_SCALER_SASL_PASSWORD", {}).get("valueFrom", {}).get("secretKeyRef") != {"name": "zerofn-keda", "key": "password"}:
            fail(f"platform: the scaler does not read the lag as zerofn-keda over SASL: {c['args']}")
        policy = next((d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "zerofn-scaler"), None)
        if not policy or policy["spec"]["ingress"][0]["from"] != [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}}]:
            fail("platform: the scaler is open to more than KEDA's operator")
    redis = {m["name"]: m.get("value") for m in next(d for d in docs if d["kind"] == "Component" and d["metadata"]["name"] == "statestore")["spec"]["metadata"]}
    if redis.get("enableTLS") != "true":
        fail("platform: Dapr's Redis state store is not on TLS")


def alerts_fire_as_documented(rule):
    """Evaluate the PrometheusRule with promtool on synthetic series: each alert fires when its story
    happens (for as long as its `for`), and not on the near miss beside it."""
    promtool = run([str(ROOT / "scripts" / "deploy" / "promtool.sh")]).strip()
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}

    def alert(name, **labels):
        r = rules[name]
        fill = lambda t: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], t)
        return {"exp_labels": {**labels, **r.get("labels", {})},
                "exp_annotations": {k: fill(v) for k, v in r.get("annotations", {}).items()}}

    def counter(series, per_minute, minutes=40):
        return {"series": series, "values": f"0+{per_minute}x{minutes}"}

    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {   # 10 % of budget's deliveries fail (paged after 2 minutes); 3 % of notify's do not.
                "interval": "1m",
                "input_series": [
                    counter('zerofn_events_handled_total{function="budget",outcome="success"}', 90),
                    counter('zerofn_events_handled_total{function="budget",outcome="retry"}', 10),
                    counter('zerofn_events_handled_total{function="notify",outcome="success"}', 97),
                    counter('zerofn_events_handled_total{function="notify",outcome="dead_letter"}', 3),
                    counter('zerofn_gateway_requests_total{function="ledger",status="503"}', 10),
                    counter('zerofn_gateway_requests_total{function="ledger",status="200"}', 90),
                    counter('zerofn_gateway_requests_total{function="tasks",status="500"}', 1),
                    counter('zerofn_gateway_requests_total{function="tasks",status="200"}', 99),
                ],
                "alert_rule_test": [
                    {"eval_time": "2m", "alertname": "ZerofnFunctionErrorRate", "exp_alerts": []},
                    {"eval_time": "10m", "alertname": "ZerofnFunctionErrorRate", "exp_alerts": [alert("ZerofnFunctionErrorRate", function="budget")]},
                    {"eval_time": "10m", "alertname": "ZerofnGatewayErrorRate", "exp_alerts": [alert("ZerofnGatewayErrorRate", function="ledger")]},
                ],
            },
            {   # A dead letter at minute 5: an alert at once, gone ten minutes later.
                "interval": "1m",
                "input_series": [{"series": 'zerofn_dead_letters_total{function="notify",kind="schema_violation"}', "values": "0 0 0 0 0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1"}],
                "alert_rule_test": [
                    {"eval_time": "4m", "alertname": "ZerofnDeadLetters", "exp_alerts": []},
                    {"eval_time": "6m", "alertname": "ZerofnDeadLetters", "exp_alerts": [alert("ZerofnDeadLetters", function="notify", kind="schema_violation")]},
                    {"eval_time": "20m", "alertname": "ZerofnDeadLetters", "exp_alerts": []},
                ],
            },
            {   # budget's lag grows at its max replicas (paged after 15 minutes); notify's grows below it.
                "interval": "1m",
                "input_series": [
                    counter('keda_scaler_metrics_value{namespace="zerofn",scaledObject="budget",metric="s0-kafka"}', 50),
                    {"series": 'kube_horizontalpodautoscaler_status_current_replicas{namespace="zerofn",horizontalpodautoscaler="keda-hpa-budget"}', "values": "4x40"},
                    {"series": 'kube_horizontalpodautoscaler_spec_max_replicas{namespace="zerofn",horizontalpodautoscaler="keda-hpa-budget"}', "values": "4x40"},
                    counter('keda_scaler_metrics_value{namespace="zerofn",scaledObject="notify",metric="s0-kafka"}', 50),
                    {"series": 'kube_horizontalpodautoscaler_status_current_replicas{namespace="zerofn",horizontalpodautoscaler="keda-hpa-notify"}', "values": "2x40"},
                    {"series": 'kube_horizontalpodautoscaler_spec_max_replicas{namespace="zerofn",horizontalpodautoscaler="keda-hpa-notify"}', "values": "4x40"},
                ],
                "alert_rule_test": [
                    {"eval_time": "10m", "alertname": "ZerofnLagGrowingAtMaxReplicas", "exp_alerts": []},
                    {"eval_time": "30m", "alertname": "ZerofnLagGrowingAtMaxReplicas", "exp_alerts": [alert("ZerofnLagGrowingAtMaxReplicas", namespace="zerofn", scaledObject="budget")]},
                ],
            },
            {   # The push scaler fails every read of one group for 5 minutes (paged); another's fail now and then (not).
                "interval": "1m",
                "input_series": [
                    counter('zerofn_scaler_reads_total{consumer_group="budget",topic="finance.transaction.created",outcome="error"}', 600),
                    counter('zerofn_scaler_reads_total{consumer_group="notify",topic="finance.budget.exceeded",outcome="error"}', 1),
                    counter('zerofn_scaler_reads_total{consumer_group="notify",topic="finance.budget.exceeded",outcome="ok"}', 599),
                ],
                "alert_rule_test": [
                    {"eval_time": "4m", "alertname": "ZerofnScalerCannotReadLag", "exp_alerts": []},
                    {"eval_time": "12m", "alertname": "ZerofnScalerCannotReadLag", "exp_alerts": [alert("ZerofnScalerCannotReadLag", consumer_group="budget", topic="finance.transaction.created")]},
                ],
            },
            {   # A function's container in CrashLoopBackOff for 5 minutes; the Dapr sidecar's does not count.
                "interval": "1m",
                "input_series": [
                    {"series": 'kube_pod_container_status_waiting_reason{namespace="zerofn",pod="budget-7d9f",container="function",reason="CrashLoopBackOff"}', "values": "1x20"},
                    {"series": 'kube_pod_container_status_waiting_reason{namespace="zerofn",pod="notify-5c2a",container="daprd",reason="CrashLoopBackOff"}', "values": "1x20"},
                ],
                "alert_rule_test": [
                    {"eval_time": "3m", "alertname": "ZerofnFunctionCannotStart", "exp_alerts": []},
                    {"eval_time": "10m", "alertname": "ZerofnFunctionCannotStart", "exp_alerts": [alert("ZerofnFunctionCannotStart", namespace="zerofn", pod="budget-7d9f")]},
                ],
            },
        ],
    }
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        (Path(d) / "tests.yaml").write_text(yaml.safe_dump(tests))
        r = subprocess.run([promtool, "check", "rules", "rules.yaml"], cwd=d, capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"platform: promtool check rules: {r.stdout}{r.stderr}")
        r = subprocess.run([promtool, "test", "rules", "tests.yaml"], cwd=d, capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"platform: the alerts do not fire as documented (promtool test rules):\n{r.stdout}{r.stderr}")


def main():
    functions = sorted(p.parent.name for p in (ROOT / "functions").glob("*/function.toml"))
    all_manifests = {}
    store_default = None
    for fn in functions:
        manifest = tomllib.loads((ROOT / "functions" / fn / "function.toml").read_text())
        all_manifests[fn] = manifest
        values = json.loads(run([ZEROFN, "values", str(ROOT / "functions" / fn), "--image", f"registry.test/zerofn/{fn}:test"]))
        text, docs = render("zerofn-function", values)
        validate(fn, docs)
        policies(fn, docs, text)
        if fn == "notify":
            checks_can_fail(docs, text)
        golden_fields(fn, manifest, docs)
        store_default = shared_store(fn, manifest, values) or store_default
        snapshot(fn, text)
        # `make render fn=NAME` (render.sh) gives exactly this.
        via_make = run([str(ROOT / "scripts/deploy/render.sh"), fn], env={**os.environ, "REGISTRY": "registry.test/zerofn", "TAG": "test", "ZEROFN_BIN": ZEROFN})
        if via_make != text:
            fail(f"{fn}: make render differs from the checked rendering")
        # KEDA reads the lag over TLS with SCRAM as the platform's read-only KafkaUser, by default.
        if manifest.get("subscriptions"):
            kafka_auth(fn, docs)
            _, plain = render("zerofn-function", values, {"kafka": {"insecurePlaintextDevOnly": True}})
            so = one(plain, "ScaledObject")
            if any(k in t["metadata"] for t in so["spec"]["triggers"] for k in ("sasl", "tls")) or any(d["kind"] == "TriggerAuthentication" for d in plain) \
                    or not all(t["metadata"]["bootstrapServers"].endswith(":9092") for t in so["spec"]["triggers"]):
                fail(f"{fn}: kafka.insecurePlaintextDevOnly still renders SASL/TLS for KEDA")
            # [scaling] push: KEDA's external-push trigger to the platform's scaler, the same metadata.
            _, pushed = render("zerofn-function", values, {"scaling": {"push": True}})
            validate(f"{fn} (push)", pushed)
            kafka_triggers = one(docs, "ScaledObject")["spec"]["triggers"]
            push_triggers = one(pushed, "ScaledObject")["spec"]["triggers"]
            for k, p_ in zip(kafka_triggers, push_triggers):
                same = {key: v for key, v in k["metadata"].items() if key not in ("sasl", "tls")}
                if p_["type"] != "external-push" or p_["metadata"] != {**same, "scalerAddress": PLATFORM_SCALER}:
                    fail(f"{fn}: scaling.push renders {p_}, not an external-push trigger to {PLATFORM_SCALER} with {same}")
            if any(d["kind"] in ("TriggerAuthentication", "ConfigMap") for d in pushed):
                fail(f"{fn}: scaling.push still renders KEDA's Kafka credentials (the scaler has its own)")
        # Every option that renders more: a secret store URL by reference.
        extra = {"secretEnv": {"ZEROFN_STORE": {"name": f"{fn}-store", "key": "url"}}}
        text, docs = render("zerofn-function", values, extra)
        validate(f"{fn} (secret store)", docs)
        policies(f"{fn} (secret store)", docs, text)
        # Egress: DNS, Kafka, the store, Dapr, OTLP and the gateway only (and on request no egress rule).
        np = next(d for d in docs if d["kind"] == "NetworkPolicy")
        if np["spec"]["policyTypes"] != ["Ingress", "Egress"] or len(np["spec"]["egress"]) != 6:
            fail(f"{fn}: the NetworkPolicy does not close egress to DNS, Kafka, the store, Dapr, OTLP and the gateway")
        _, open_docs = render("zerofn-function", values, {"networkPolicy": {"egress": {"enabled": False}}})
        if next(d for d in open_docs if d["kind"] == "NetworkPolicy")["spec"]["policyTypes"] != ["Ingress"]:
            fail(f"{fn}: networkPolicy.egress.enabled=false still restricts egress")
        # The function's own settings, plain and from a Secret; never a runtime key by that door.
        _, docs = render("zerofn-function", values, {"settings": {"MY_FN_URL": "http://x"}, "secretSettings": {"MY_FN_KEY": {"name": "s", "key": "k"}}})
        env = env_of(docs)
        if env.get("MY_FN_URL", {}).get("value") != "http://x" or env.get("MY_FN_KEY", {}).get("valueFrom", {}).get("secretKeyRef") != {"name": "s", "key": "k"}:
            fail(f"{fn}: settings/secretSettings do not render as the function's environment")
        render_fails("zerofn-function", "invalid propertyName 'ZEROFN_STORE'", values, {"settings": {"ZEROFN_STORE": "memory"}})
        print(f"ok   {fn}: {len(docs)} objects rendered and validated", file=sys.stderr)

    # A function with schedules only (the tests' ticker): a Deployment of at least one replica
    # with a Dapr sidecar (its Jobs API), the shared store, and no ScaledObject (no topic for KEDA).
    ticker = tomllib.loads((ROOT / "tests" / "ticker" / "function.toml").read_text())
    values = json.loads(run([ZEROFN, "values", str(ROOT / "tests" / "ticker"), "--image", "registry.test/zerofn/ticker:test"]))
    if values["function"]["kind"] != "scheduled":
        fail(f"ticker: kind {values['function']['kind']}, expected scheduled")
    text, docs = render("zerofn-function", values)
    validate("ticker", docs)
    policies("ticker", docs, text)
    if any(d["kind"] == "ScaledObject" for d in docs):
        fail("ticker: a function with schedules only rendered a ScaledObject")
    dep = one(docs, "Deployment")
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    if dep["spec"]["replicas"] < 1 or ann.get("dapr.io/enabled") != "true" or ann.get("dapr.io/app-id") != "ticker":
        fail(f"ticker: replicas {dep['spec']['replicas']}, dapr {ann.get('dapr.io/enabled')}, app id {ann.get('dapr.io/app-id')}")
    shared_store("ticker", ticker, values)
    snapshot("ticker", text)
    print(f"ok   ticker (scheduled): {len(docs)} objects rendered and validated", file=sys.stderr)

    # A missing required value is a render error naming it.
    try:
        render("zerofn-function", {"image": {"repository": "r", "tag": "t"}})
        fail("rendering without function.name succeeded")
    except RuntimeError as e:
        if "function/name" not in str(e) and "function.name" not in str(e):
            fail(f"unclear error without function.name: {e}")

    platform = json.loads(run([ZEROFN, "values", "--platform", "--functions-dir", str(ROOT / "functions")]))
    gateway_config = (ROOT / "helm" / "testdata" / "gateway.toml").read_text()
    image = {"gateway": {"image": {"repository": "registry.test/zerofn/zerofn", "tag": "test"}, "config": gateway_config}}
    text, docs = render("zerofn-platform", platform, image)
    validate("platform", docs)
    policies("platform", docs, text)
    snapshot("platform", text)
    topics = {d["spec"]["topicName"]: d for d in docs if d["kind"] == "KafkaTopic"}
    for fn, m in all_manifests.items():
        dlq = m.get("delivery", {}).get("dead_letter_topic", f"deadletter.{m.get('function', {}).get('name', fn)}")
        if dlq not in topics or topics[dlq]["metadata"]["labels"]["zerofn.dev/dead-letter"] != "true":
            fail(f"platform: {fn}'s dead-letter topic {dlq} is not created")
        for s in m.get("subscriptions", []):
            if s["topic"] not in topics:
                fail(f"platform: topic {s['topic']} ({fn}) is not created")
            if m.get("scaling", {}).get("max", 4) > topics[s["topic"]]["spec"]["partitions"]:
                fail(f"platform: {fn} scales beyond the partitions of {s['topic']}")
    for t, d in topics.items():
        spec = d["spec"]
        if spec["replicas"] != 3 or spec["config"]["min.insync.replicas"] != 2 or spec["config"]["retention.ms"] != 604800000:
            fail(f"platform: topic {t} is not replication 3 / min ISR 2 / 7 days")
        # Headroom: gateway (1 MiB) < Kafka (topic and producer) < runtime (2 MiB) - Dapr's envelope.
        if not (1 << 20) < spec["config"].get("max.message.bytes", 0) <= (2 << 20) - 65536:
            fail(f"platform: topic {t} max.message.bytes {spec['config'].get('max.message.bytes')} leaves no headroom")
    # The chart's Dapr components are contracts/dapr's.
    # (the pub/sub component adds the scopes generated from every function.toml)
    scope_keys = {"publishingScopes", "subscriptionScopes"}
    for f in ("pubsub-kafka.yaml", "statestore-redis.yaml", "secretstore-kubernetes.yaml", "resiliency.yaml"):
        want = yaml.safe_load((ROOT / "contracts" / "dapr" / f).read_text())
        got = [d for d in docs if d["kind"] == want["kind"] and d["metadata"]["name"] == want["metadata"]["name"]]
        spec = dict(got[0]["spec"]) if got else None
        if spec and "metadata" in spec:
            spec["metadata"] = [m for m in spec["metadata"] if m["name"] not in scope_keys]
        if not got or spec != want["spec"]:
            fail(f"platform: {want['kind']}/{want['metadata']['name']} differs from contracts/dapr/{f}")
    # Pub/sub scopes: each app publishes and subscribes to its own topics only.
    kafka = next(d for d in docs if d["kind"] == "Component" and d["metadata"]["name"] == "kafka-pubsub")
    md = {m["name"]: m.get("value", "") for m in kafka["spec"]["metadata"]}
    def scopes(text):
        out = {}
        for part in text.split(";"):
            app, _, topics_ = part.partition("=")
            out[app] = set(t for t in topics_.split(",") if t)
        return out
    pub, sub = scopes(md.get("publishingScopes", "")), scopes(md.get("subscriptionScopes", ""))
    gw_id = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "zerofn-gateway")["spec"]["template"]["metadata"]["annotations"]["dapr.io/app-id"]
    names_by_fn = {fn: m.get("function", {}).get("name", fn) for fn, m in all_manifests.items()}
    if sorted(kafka.get("scopes", [])) != sorted([*names_by_fn.values(), gw_id]) or set(pub) != set(kafka["scopes"]) or set(sub) != set(kafka["scopes"]):
        fail(f"platform: the pub/sub component's scopes {kafka.get('scopes')} are not the functions and the gateway")
    for fn, m in all_manifests.items():
        name = names_by_fn[fn]
        dlq = m.get("delivery", {}).get("dead_letter_topic", f"deadletter.{name}")
        for p in m.get("publishes", []):
            if p.get("topic", p["type"]) not in pub.get(name, set()):
                fail(f"platform: {name} may not publish {p['type']}, which its function.toml declares")
        for s_ in m.get("subscriptions", []):
            if s_["topic"] not in sub.get(name, set()):
                fail(f"platform: {name} may not subscribe to {s_['topic']}")
        writers = sorted(app for app, ts in pub.items() if dlq in ts)
        if writers != [name]:
            fail(f"platform: {dlq} is writable by {writers}, not by {name} alone")
    if sorted(app for app, ts in pub.items() if "deadletter.gateway" in ts) != [gw_id] or sub.get(gw_id):
        fail("platform: the gateway alone writes deadletter.gateway, and subscribes to nothing")
    if any(t.startswith("async.") for ts in pub.values() for t in ts):
        fail("platform: an app may publish to an async.* topic")
    kafka_platform(docs, topics, pub, sub)
    _, plain = render("zerofn-platform", platform, image, {"kafka": {"insecurePlaintextDevOnly": True}, "redis": {"insecurePlaintextDevOnly": True}})
    md = {m["name"]: m.get("value") for m in next(d for d in plain if d["kind"] == "Component" and d["metadata"]["name"] == "kafka-pubsub")["spec"]["metadata"]}
    listeners = one(plain, "Kafka")["spec"]["kafka"]["listeners"]
    redis = {m["name"]: m.get("value") for m in next(d for d in plain if d["kind"] == "Component" and d["metadata"]["name"] == "statestore")["spec"]["metadata"]}
    if md.get("authType") != "none" or md.get("disableTls") != "true" or not md["brokers"].endswith(":9092") or any(d["kind"] == "KafkaUser" for d in plain) \
            or [(l["port"], l["tls"], "authentication" in l) for l in listeners] != [(9092, False, False)] or redis.get("enableTLS") != "false":
        fail("platform: the insecure opt-outs do not render plaintext Kafka and Redis")
    _, own = render("zerofn-platform", platform, image, {"kafka": {"create": False, "bootstrapServers": "kafka.example:9093"}})
    if any(d["kind"] in ("Kafka", "KafkaNodePool") for d in own) or not any(d["kind"] == "KafkaTopic" for d in own):
        fail("platform: kafka.create=false still declares a Kafka cluster, or drops the topics")
    pubsub = next(d for d in docs if d["kind"] == "Component" and d["spec"]["type"] == "pubsub.kafka")
    if {m["name"]: m.get("value") for m in pubsub["spec"]["metadata"]}.get("initialOffset") != "oldest":
        fail("platform: the Kafka component must start new groups at the oldest offset (KEDA: earliest)")
    # The dashboard only queries metrics the runtime and the gateway export.
    names = set(re.findall(r'"(zerofn_[a-z_]+)"', (ROOT / "runtime" / "src" / "instruments.rs").read_text()))
    board = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "zerofn-dashboard")
    for expr in re.findall(r"zerofn_[a-z_]+", board["data"]["zerofn.json"]):
        base = re.sub(r"_(bucket|sum|count)$", "", expr)
        if base not in names:
            fail(f"platform: the dashboard queries {expr}, which nothing exports")
    # The alerts: valid against the Prometheus Operator's CRD (above), on metrics something exports, and
    # the seeds' numbers (5 % for 2 minutes).
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    for expr in re.findall(r"zerofn_[a-z_]+", json.dumps(rule)):
        if re.sub(r"_(bucket|sum|count)$", "", expr) not in names:
            fail(f"platform: the alerts query {expr}, which nothing exports")
    for name in ("ZerofnFunctionErrorRate", "ZerofnGatewayErrorRate", "ZerofnDeadLetters", "ZerofnLagGrowingAtMaxReplicas", "ZerofnFunctionCannotStart", "ZerofnScalerCannotReadLag"):
        if name not in rules:
            fail(f"platform: no {name} alert")
    for name in ("ZerofnFunctionErrorRate", "ZerofnGatewayErrorRate"):
        if rules[name]["for"] != "2m" or "> 0.05" not in rules[name]["expr"]:
            fail(f"platform: {name} is not 5 % for 2 minutes: {rules[name]}")
    alerts_fire_as_documented(rule)
    _, quiet_docs = render("zerofn-platform", platform, image, {"alerts": {"enabled": False}})
    if any(d["kind"] == "PrometheusRule" for d in quiet_docs):
        fail("platform: alerts.enabled=false still renders the PrometheusRule")
    # The platform provides the store the function charts read by default, and insists on one.
    clusters = [d for d in docs if d["kind"] == "Cluster" and d["apiVersion"].startswith("postgresql.cnpg.io/")]
    if len(clusters) != 1 or store_default is None or f"{clusters[0]['metadata']['name']}-app" != store_default["secretName"] or store_default["key"] != "uri":
        fail(f"platform: no CloudNativePG Cluster whose app Secret is the functions' default store ({store_default})")
    external = {"store": {"cloudnativepg": {"enabled": False}, "external": {"secretName": "neon", "key": "url"}}}
    _, ext_docs = render("zerofn-platform", platform, image, external)
    if any(d["kind"] == "Cluster" for d in ext_docs):
        fail("platform: store.external still renders an in-cluster database")
    render_fails("zerofn-platform", "the functions need a shared, durable store", platform, image, {"store": {"cloudnativepg": {"enabled": False}}})
    render_fails("zerofn-platform", "choose one", platform, image, {"store": {"external": {"secretName": "neon"}}})
    # The gateway: its configuration mounted and passed, /metrics and probes on the internal port only,
    # and no rendering of an open gateway unless asked for by name.
    cm = next((d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "zerofn-gateway-config"), None)
    if cm is None or cm["data"]["gateway.toml"].strip() != gateway_config.strip():
        fail("platform: the gateway's configuration is not rendered as its ConfigMap")
    gw = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "zerofn-gateway")
    c = gw["spec"]["template"]["spec"]["containers"][0]
    ann = gw["spec"]["template"]["metadata"]["annotations"]
    if "--config=/etc/zerofn/gateway.toml" not in c["args"] or "--insecure-open" in c["args"]:
        fail(f"platform: gateway args {c['args']}")
    internal = next((p["containerPort"] for p in c["ports"] if p["name"] == "internal"), None)
    if internal is None or ann["prometheus.io/port"] != str(internal) or c["readinessProbe"]["httpGet"]["port"] != "internal":
        fail("platform: Prometheus and the probes must use the gateway's internal port")
    svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "zerofn-gateway")
    if [p["targetPort"] for p in svc["spec"]["ports"]] != ["http"]:
        fail("platform: the gateway's Service (behind the Ingress) must expose the public port only")
    # The gateway's NetworkPolicy: in from the Ingress controller and the release's namespace on 8080 only,
    # Prometheus on the internal port; out to a closed list (DNS first).
    nps = [d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "zerofn-gateway"]
    if len(nps) != 1 or sorted(nps[0]["spec"]["policyTypes"]) != ["Egress", "Ingress"]:
        fail("platform: the gateway has no Ingress+Egress NetworkPolicy")
    else:
        public = [r for r in nps[0]["spec"]["ingress"] if {"protocol": "TCP", "port": 8080} in r["ports"]]
        if len(public) != 1 or any("ipBlock" in f or "namespaceSelector" not in f for f in public[0]["from"]):
            fail("platform: the gateway's public port is open beyond the Ingress controller and the functions")
        if 53 not in [p["port"] for p in nps[0]["spec"]["egress"][0]["ports"]]:
            fail("platform: the gateway's egress does not start with DNS")
    no_config = {"gateway": {"config": ""}}
    render_fails("zerofn-platform", "gateway.config is required", platform, image, no_config)
    _, open_docs = render("zerofn-platform", platform, image, {"gateway": {"config": "", "insecureOpen": True}})
    open_gw = next(d for d in open_docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "zerofn-gateway")
    if "--insecure-open" not in open_gw["spec"]["template"]["spec"]["containers"][0]["args"]:
        fail("platform: gateway.insecureOpen does not render --insecure-open")
    print(f"ok   platform: {len(docs)} objects rendered and validated", file=sys.stderr)

    # Cluster-level manifests in keda/ and knative/.
    for path in sorted([*(ROOT / "keda").glob("*.yaml"), *(ROOT / "knative").glob("*.yaml")]):
        if path.name == "values.yaml":
            continue  # Helm values for KEDA's own chart, not a manifest
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        validate(str(path.relative_to(ROOT)), docs)
        print(f"ok   {path.relative_to(ROOT)}: {len(docs)} object(s) validated", file=sys.stderr)

    deploy_without_a_cluster()

    if failures:
        sys.exit(f"{len(failures)} chart check(s) failed")


if __name__ == "__main__":
    main()
