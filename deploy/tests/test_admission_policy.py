"""The ValidatingAdmissionPolicy's CEL, evaluated with cel-python against sample pods.

The expressions are read from deploy/admission-policy.yaml, never copied here, so a
change to the policy is what gets tested. The harness follows the API server's order:
the binding's namespace selector and the policy's match constraints decide whether the
policy applies; variables are evaluated, then every validation; a false validation
denies and its messageExpression is the message. Known gap: cel-python does not run
Kubernetes' type checker or cost estimator; `join` (from Kubernetes' strings
extension library) is supplied below with the same meaning.
"""

import copy
from pathlib import Path

import celpy
import pytest
from celpy import celtypes

from conftest import DEPLOY, find, load_docs

DIGEST = "sha256:" + "0123456789abcdef" * 4


def _join(items, sep=celtypes.StringType("")):
    # Kubernetes' strings library: list(string).join(separator)
    return celtypes.StringType(str(sep).join(str(i) for i in items))


class Policy:
    """A compiled ValidatingAdmissionPolicy and its binding."""

    def __init__(self, policy: dict, binding: dict):
        self.policy = policy
        self.binding = binding
        self.env = celpy.Environment()
        spec = policy["spec"]
        self.variables = [
            (v["name"], self._compile(v["expression"])) for v in spec.get("variables", [])
        ]
        self.validations = []
        for v in spec["validations"]:
            msg = self._compile(v["messageExpression"]) if "messageExpression" in v else None
            self.validations.append((v, self._compile(v["expression"]), msg))

    def _compile(self, expr: str):
        ast = self.env.compile(expr)
        return self.env.program(ast, functions={"join": _join})

    def applies(self, namespace_labels: dict, operation: str, resource: str) -> bool:
        selector = self.binding["spec"]["matchResources"].get("namespaceSelector", {})
        assert set(selector) <= {"matchLabels"}, "harness understands matchLabels only"
        if any(namespace_labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
            return False
        for rule in self.policy["spec"]["matchConstraints"]["resourceRules"]:
            if operation in rule["operations"] and resource in rule["resources"]:
                return True
        return False

    def evaluate(self, pod: dict) -> list:
        """Messages of the failed validations (empty: admitted)."""
        activation = {"object": celpy.json_to_cel(pod)}
        values = {}
        for name, prog in self.variables:
            activation["variables"] = celtypes.MapType(values)
            values[celtypes.StringType(name)] = prog.evaluate(activation)
        activation["variables"] = celtypes.MapType(values)
        denied = []
        for spec, prog, msg in self.validations:
            result = prog.evaluate(activation)
            assert isinstance(result, celtypes.BoolType), f"{spec['expression']!r} gave {result!r}"
            if not result:
                denied.append(str(msg.evaluate(activation)) if msg else spec.get("message", ""))
        return denied

    def admit(self, pod: dict, namespace_labels: dict, operation="CREATE", resource="pods"):
        if not self.applies(namespace_labels, operation, resource):
            return []
        return self.evaluate(pod)


CONFIDENTIAL = {"cloak.dev/confidential": "true"}


@pytest.fixture(scope="module")
def policy() -> Policy:
    vap = find("ValidatingAdmissionPolicy")
    binding = find("ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == vap["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    return Policy(vap, binding)


def good_pod() -> dict:
    """A pod as the API server sees it at admission, passing every rule."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "ok", "namespace": "payments"},
        "spec": {
            "runtimeClassName": "kata-tdx",
            "initContainers": [
                {"name": "setup", "image": f"registry.local:5000/tools/init@{DIGEST}"}
            ],
            "containers": [
                {
                    "name": "app",
                    "image": f"registry.local:5000/app:1.2@{DIGEST}",
                    "env": [
                        {"name": "PLAIN", "value": "x"},
                        {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}},
                        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    ],
                    "envFrom": [{"configMapRef": {"name": "c"}}],
                },
                {"name": "sidecar", "image": f"ghcr.io/org/sidecar@{DIGEST}"},
            ],
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {"name": "cfg", "configMap": {"name": "c"}},
                {
                    "name": "kube-api-access",
                    "projected": {
                        "sources": [
                            {"serviceAccountToken": {"path": "token"}},
                            {"configMap": {"name": "kube-root-ca.crt"}},
                            {"downwardAPI": {"items": []}},
                        ]
                    },
                },
            ],
        },
    }


def test_example_pod_from_deploy_is_admitted(policy):
    (pod,) = load_docs(DEPLOY / "confidential-pod.yaml")
    (ns,) = load_docs(DEPLOY / "namespace.yaml")
    assert pod["metadata"]["namespace"] == ns["metadata"]["name"]
    assert policy.applies(ns["metadata"]["labels"], "CREATE", "pods")
    assert policy.admit(pod, ns["metadata"]["labels"]) == []


def test_good_pod_with_all_container_kinds_is_admitted(policy):
    assert policy.admit(good_pod(), CONFIDENTIAL) == []


def test_minimal_pod_without_volumes_or_env_is_admitted(policy):
    pod = {
        "metadata": {"name": "m"},
        "spec": {"runtimeClassName": "kata-snp", "containers": [{"name": "a", "image": f"r/a@{DIGEST}"}]},
    }
    assert policy.admit(pod, CONFIDENTIAL) == []


def test_namespace_without_label_is_not_policed(policy):
    pod = good_pod()
    del pod["spec"]["runtimeClassName"]
    pod["spec"]["containers"][0]["image"] = "nginx:latest"
    assert policy.admit(pod, {}) == []
    assert policy.admit(pod, {"cloak.dev/confidential": "false"}) == []
    assert policy.admit(pod, CONFIDENTIAL) != []


def only_denial(policy, pod, operation="CREATE", resource="pods") -> str:
    denied = policy.admit(pod, CONFIDENTIAL, operation, resource)
    assert len(denied) == 1, denied
    return denied[0]


@pytest.mark.parametrize("runtime_class", [None, "runc", "gvisor", "", "kata", "Kata-snp", "my-kata-snp"])
def test_non_kata_runtime_class_is_refused(policy, runtime_class):
    pod = good_pod()
    if runtime_class is None:
        del pod["spec"]["runtimeClassName"]
    else:
        pod["spec"]["runtimeClassName"] = runtime_class
    msg = only_denial(policy, pod)
    assert "runtimeClassName must be a Kata class" in msg
    assert ("none" in msg) if runtime_class is None else (f'"{runtime_class}"' in msg)


@pytest.mark.parametrize(
    "image",
    [
        "registry.local:5000/app:1.2",
        "registry.local:5000/app",
        "app@sha256:" + "0" * 63,
        "app@sha256:" + "A" * 64,
        "app@sha512:" + "0" * 128,
        "app@sha256:" + "0" * 64 + "x",
        "@sha256:" + "0" * 64,
        "app @sha256:" + "0" * 64,
        "app:sha256:" + "0" * 64,
    ],
)
def test_container_image_not_pinned_by_digest_is_refused(policy, image):
    pod = good_pod()
    pod["spec"]["containers"][1]["image"] = image
    msg = only_denial(policy, pod)
    assert "pinned by digest" in msg
    assert msg.endswith("not pinned: sidecar"), msg


def test_init_container_by_tag_is_refused(policy):
    pod = good_pod()
    pod["spec"]["initContainers"][0]["image"] = "busybox:1.36"
    assert only_denial(policy, pod).endswith("not pinned: setup")


def test_ephemeral_debug_container_by_tag_is_refused(policy):
    # `kubectl debug` adds an ephemeral container through the subresource (UPDATE).
    pod = good_pod()
    pod["spec"]["ephemeralContainers"] = [{"name": "debugger", "image": "busybox"}]
    msg = only_denial(policy, pod, "UPDATE", "pods/ephemeralcontainers")
    assert msg.endswith("not pinned: debugger")


def test_ephemeral_container_pinned_is_admitted(policy):
    pod = good_pod()
    pod["spec"]["ephemeralContainers"] = [{"name": "debugger", "image": f"busybox@{DIGEST}"}]
    assert policy.admit(pod, CONFIDENTIAL, "UPDATE", "pods/ephemeralcontainers") == []


def test_image_swapped_on_update_is_refused(policy):
    pod = good_pod()
    pod["spec"]["containers"][0]["image"] = "registry.local:5000/app:1.3"
    assert "not pinned: app" in only_denial(policy, pod, "UPDATE", "pods")


def test_container_without_image_is_refused(policy):
    pod = good_pod()
    del pod["spec"]["containers"][1]["image"]
    assert only_denial(policy, pod).endswith("not pinned: sidecar")


def test_secret_volume_is_refused(policy):
    pod = good_pod()
    pod["spec"]["volumes"].append({"name": "tls", "secret": {"secretName": "payments-tls"}})
    msg = only_denial(policy, pod)
    assert "Secret volumes are not allowed" in msg
    assert msg.endswith("Offending volumes: tls")


def test_projected_secret_source_is_refused(policy):
    pod = good_pod()
    pod["spec"]["volumes"][2]["projected"]["sources"].append({"secret": {"name": "db"}})
    msg = only_denial(policy, pod)
    assert msg.endswith("Offending volumes: kube-api-access")


def test_env_secret_key_ref_is_refused(policy):
    pod = good_pod()
    pod["spec"]["containers"][1]["env"] = [
        {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}
    ]
    msg = only_denial(policy, pod)
    assert "environment from Secrets" in msg
    assert msg.endswith("Offending containers: sidecar")


def test_env_from_secret_ref_is_refused(policy):
    pod = good_pod()
    pod["spec"]["containers"][0]["envFrom"].append({"secretRef": {"name": "db"}})
    assert only_denial(policy, pod).endswith("Offending containers: app")


def test_env_from_secret_in_init_container_is_refused(policy):
    pod = good_pod()
    pod["spec"]["initContainers"][0]["envFrom"] = [{"prefix": "DB_", "secretRef": {"name": "db"}}]
    assert only_denial(policy, pod).endswith("Offending containers: setup")


def test_every_violation_is_reported_at_once(policy):
    pod = good_pod()
    del pod["spec"]["runtimeClassName"]
    pod["spec"]["containers"][0]["image"] = "app:latest"
    pod["spec"]["volumes"].append({"name": "s", "secret": {"secretName": "x"}})
    pod["spec"]["containers"][0]["env"].append(
        {"name": "T", "valueFrom": {"secretKeyRef": {"name": "x", "key": "t"}}}
    )
    denied = policy.admit(pod, CONFIDENTIAL)
    assert len(denied) == 4, denied


def test_policy_covers_create_update_and_debug_containers(policy):
    assert policy.applies(CONFIDENTIAL, "CREATE", "pods")
    assert policy.applies(CONFIDENTIAL, "UPDATE", "pods")
    assert policy.applies(CONFIDENTIAL, "UPDATE", "pods/ephemeralcontainers")
    assert policy.policy["spec"]["failurePolicy"] == "Fail"


def test_harness_refuses_a_pod_the_policy_would_break_on():
    # The harness itself must be able to fail: a policy whose validation is always
    # false denies the good pod.
    vap = copy.deepcopy(find("ValidatingAdmissionPolicy"))
    vap["spec"]["validations"].append({"expression": "false", "message": "always"})
    p = Policy(vap, find("ValidatingAdmissionPolicyBinding"))
    assert p.admit(good_pod(), CONFIDENTIAL) == ["always"]


def test_policy_file_has_exactly_the_policy_and_binding():
    docs = load_docs(DEPLOY / "admission-policy.yaml")
    assert [d["kind"] for d in docs] == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    assert all(d["apiVersion"] == "admissionregistration.k8s.io/v1" for d in docs)
