"""API behaviours judged by the Python `kubernetes` client.

Run by tests/apiserver_python.rs against a fresh `ferrokube server` (embedded store and
real etcd): python client_conformance.py KUBECONFIG. Prints one line per case and a
closing "N passed, N failed" line; exits non-zero on any failure.
"""

import sys
import threading
import time
import traceback

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(sys.argv[1])
core = client.CoreV1Api()
apps = client.AppsV1Api()
DEADLINE = 30


def wait_until(what, check, timeout=DEADLINE):
    end = time.time() + timeout
    while time.time() < end:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting for " + what)


def status_of(fn):
    try:
        fn()
    except ApiException as e:
        return e.status
    return 200


def ns(name):
    core.create_namespace({"metadata": {"name": name}})
    return name


def cm(name, labels=None, data=None):
    return {"metadata": {"name": name, "labels": labels or {}}, "data": data or {"k": "v"}}


def test_crud():
    n = ns("crud")
    created = core.create_namespaced_config_map(n, cm("a", data={"x": "1"}))
    assert created.metadata.uid and created.metadata.resource_version
    got = core.read_namespaced_config_map("a", n)
    assert got.data == {"x": "1"}
    got.data["x"] = "2"
    replaced = core.replace_namespaced_config_map("a", n, got)
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)
    patched = core.patch_namespaced_config_map("a", n, {"data": {"y": "3"}})
    assert patched.data == {"x": "2", "y": "3"}
    assert status_of(lambda: core.create_namespaced_config_map(n, cm("a"))) == 409
    core.delete_namespaced_config_map("a", n)
    assert status_of(lambda: core.read_namespaced_config_map("a", n)) == 404


def test_list_selectors_and_pagination():
    n = ns("lists")
    for i in range(25):
        core.create_namespaced_config_map(n, cm("cm-%02d" % i, labels={"idx": str(i), "parity": "even" if i % 2 == 0 else "odd"}))
    picked = core.list_namespaced_config_map(n, label_selector="idx in (1,2,3)")
    assert sorted(i.metadata.name for i in picked.items) == ["cm-01", "cm-02", "cm-03"]
    odd = core.list_namespaced_config_map(n, label_selector="parity=odd,idx!=1")
    assert len(odd.items) == 11
    by_name = core.list_namespaced_config_map(n, field_selector="metadata.name=cm-05")
    assert [i.metadata.name for i in by_name.items] == ["cm-05"]
    first = core.list_namespaced_config_map(n, limit=10)
    assert len(first.items) == 10 and first.metadata._continue
    assert first.metadata.remaining_item_count == 15
    # Writes between pages do not show up: the list is consistent at its revision.
    core.create_namespaced_config_map(n, cm("cm-99"))
    names = [i.metadata.name for i in first.items]
    token = first.metadata._continue
    while token:
        page = core.list_namespaced_config_map(n, limit=10, _continue=token)
        assert page.metadata.resource_version == first.metadata.resource_version
        names += [i.metadata.name for i in page.items]
        token = page.metadata._continue
    assert names == ["cm-%02d" % i for i in range(25)], names
    assert status_of(lambda: core.list_namespaced_config_map(n, label_selector="a in b")) == 400


def test_watch_from_version_and_restart():
    n = ns("watching")
    rv = core.list_namespaced_config_map(n).metadata.resource_version
    core.create_namespaced_config_map(n, cm("w"))
    core.patch_namespaced_config_map("w", n, {"data": {"k": "v2"}})
    core.delete_namespaced_config_map("w", n)
    seen = []
    for event in watch.Watch().stream(core.list_namespaced_config_map, n, resource_version=rv, timeout_seconds=2):
        seen.append((event["type"], event["object"].metadata.name, event["object"].metadata.resource_version))
        if len(seen) == 3:
            break
    assert [s[0] for s in seen] == ["ADDED", "MODIFIED", "DELETED"], seen
    # Restart from the last version seen: exactly what came after it.
    last = seen[1][2]
    core.create_namespaced_config_map(n, cm("after"))
    again = []
    for event in watch.Watch().stream(core.list_namespaced_config_map, n, resource_version=last, timeout_seconds=2):
        again.append((event["type"], event["object"].metadata.name))
        if len(again) == 2:
            break
    assert again == [("DELETED", "w"), ("ADDED", "after")], again


def test_concurrent_watches_see_one_order():
    n = ns("order")
    rv = core.list_namespaced_config_map(n).metadata.resource_version
    results = [[], []]

    def follow(out):
        for event in watch.Watch().stream(core.list_namespaced_config_map, n, resource_version=rv, timeout_seconds=10):
            out.append((event["type"], event["object"].metadata.name, event["object"].metadata.resource_version))
            if len(out) == 30:
                return

    threads = [threading.Thread(target=follow, args=(r,)) for r in results]
    for t in threads:
        t.start()
    writers = []
    for w in range(3):
        def write(w=w):
            for i in range(10):
                core.create_namespaced_config_map(n, cm("w%d-%d" % (w, i)))
        writers.append(threading.Thread(target=write))
    for t in writers:
        t.start()
    for t in writers + threads:
        t.join(DEADLINE)
    assert len(results[0]) == 30 and results[0] == results[1], results
    versions = [int(r[2]) for r in results[0]]
    assert versions == sorted(versions)


def test_stale_update_is_409():
    n = ns("stale")
    core.create_namespaced_config_map(n, cm("s"))
    old = core.read_namespaced_config_map("s", n)
    core.patch_namespaced_config_map("s", n, {"data": {"k": "newer"}})
    old.data["k"] = "lost"
    assert status_of(lambda: core.replace_namespaced_config_map("s", n, old)) == 409
    assert core.read_namespaced_config_map("s", n).data["k"] == "newer"


def test_expired_watch_is_410():
    n = ns("expired")
    old = core.list_namespaced_config_map(n).metadata.resource_version
    for i in range(5):
        core.create_namespaced_config_map(n, cm("e%d" % i))

    def expired():
        # The server compacts every second (to the revision seen a second earlier).
        core.create_namespaced_config_map(n, cm("tick-%f" % time.time()))
        try:
            for _ in watch.Watch().stream(core.list_namespaced_config_map, n, resource_version=old, timeout_seconds=1):
                pass
        except ApiException as e:
            assert e.status == 410, e
            return True
        return False

    wait_until("a 410 Expired for an old resourceVersion", expired)


def test_strict_field_validation():
    n = ns("strict")
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "f"}, "data": {"a": "1"}, "bogus": True}
    assert status_of(lambda: core.create_namespaced_config_map(n, body, field_validation="Strict")) == 400
    assert status_of(lambda: core.read_namespaced_config_map("f", n)) == 404
    core.create_namespaced_config_map(n, body, field_validation="Ignore")
    assert core.read_namespaced_config_map("f", n).data == {"a": "1"}


def test_configmap_and_secret_lifecycle_and_empty_keys():
    n = ns("lifecycle")
    assert status_of(lambda: core.create_namespaced_config_map(n, cm("bad", data={"": "x"}))) == 422
    assert status_of(lambda: core.create_namespaced_secret(n, {"metadata": {"name": "bad"}, "data": {"": "eA=="}})) == 422
    secret = core.create_namespaced_secret(n, {"metadata": {"name": "s"}, "stringData": {"user": "admin"}})
    assert secret.data == {"user": "YWRtaW4="} and secret.type == "Opaque"
    secret.data["pass"] = "cHc="
    core.replace_namespaced_secret("s", n, secret)
    assert sorted(core.read_namespaced_secret("s", n).data) == ["pass", "user"]
    core.delete_namespaced_secret("s", n)
    assert status_of(lambda: core.read_namespaced_secret("s", n)) == 404


def workload(name):
    labels = {"app": name}
    return {"metadata": {"name": name}, "spec": {"replicas": 2, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}}


def test_status_subresources():
    n = ns("status")
    for kind, create, replace_status, read in [
        ("Deployment", apps.create_namespaced_deployment, apps.patch_namespaced_deployment_status, apps.read_namespaced_deployment),
        ("ReplicaSet", apps.create_namespaced_replica_set, apps.patch_namespaced_replica_set_status, apps.read_namespaced_replica_set),
    ]:
        name = kind.lower()
        created = create(n, workload(name))
        assert created.metadata.generation == 1
        # The status endpoint changes status only.
        replace_status(name, n, {"spec": {"replicas": 9}, "status": {"replicas": 2, "readyReplicas": 1}})
        got = read(name, n)
        assert got.spec.replicas == 2 and got.status.replicas == 2 and got.status.ready_replicas == 1
        assert got.metadata.generation == 1
    # The main endpoint ignores status and bumps generation on spec changes.
    apps.patch_namespaced_deployment("deployment", n, {"spec": {"replicas": 3}, "status": {"replicas": 7}})
    got = apps.read_namespaced_deployment("deployment", n)
    assert got.spec.replicas == 3 and got.status.replicas == 2 and got.metadata.generation == 2


def test_namespace_deletion_removes_objects():
    n = ns("doomed")
    core.create_namespaced_config_map(n, cm("c"))
    apps.create_namespaced_deployment(n, workload("d"))
    core.delete_namespace(n)
    wait_until("the namespace to go", lambda: status_of(lambda: core.read_namespace(n)) == 404)
    assert status_of(lambda: core.read_namespaced_config_map("c", n)) == 404
    assert core.list_namespaced_config_map(n).items == []
    assert apps.list_namespaced_deployment(n).items == []
    assert status_of(lambda: core.create_namespaced_config_map(n, cm("late"))) == 404


CASES = [v for k, v in sorted(globals().items()) if k.startswith("test_")]

passed = failed = 0
for case in CASES:
    try:
        case()
        passed += 1
        print("ok   " + case.__name__, flush=True)
    except Exception:
        failed += 1
        print("FAIL " + case.__name__, flush=True)
        traceback.print_exc()
print("%d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
