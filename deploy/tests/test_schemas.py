"""Every YAML file in deploy/ is checked: Kubernetes objects against the OpenAPI schemas
bundled in kubernetes-validate (offline, strict: unknown fields fail), the
PrometheusRule (a CRD, not in those schemas) against a JSON schema of its structure,
and the cloak-kbs examples against the shape cloak-kbs's serde types accept."""

import base64
import gzip
import tomllib

import jsonschema
import kubernetes_validate
import pytest

from conftest import DEPLOY, load_docs, manifest_files

# The oldest release with admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy
# (GA in 1.30) and the newest the package bundles.
K8S_VERSIONS = ["1.30", kubernetes_validate.latest_version()]

CONFIG_FILES = {"kbs/kbs.yaml", "kbs/policy.yaml", "guest/pull-policy.yaml"}
CRD_KINDS = {"PrometheusRule"}


def k8s_objects():
    for path in manifest_files():
        rel = str(path.relative_to(DEPLOY))
        if rel in CONFIG_FILES:
            continue
        for i, doc in enumerate(load_docs(path)):
            if doc.get("kind") not in CRD_KINDS:
                yield pytest.param(doc, id=f"{rel}#{i}:{doc.get('kind')}")


def test_every_yaml_file_is_covered():
    files = {str(p.relative_to(DEPLOY)) for p in manifest_files()}
    assert CONFIG_FILES <= files
    for path in manifest_files():
        rel = str(path.relative_to(DEPLOY))
        docs = load_docs(path)
        assert docs, f"{rel} has no YAML document"
        if rel not in CONFIG_FILES:
            for doc in docs:
                assert "apiVersion" in doc and "kind" in doc, f"{rel}: not a Kubernetes object"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("doc", list(k8s_objects()))
def test_kubernetes_schema(doc, version):
    kubernetes_validate.validate(doc, version, strict=True)


def test_schema_validation_can_fail():
    bad = {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "x"},
           "handler": "kata-qemu-snp", "overhead": {"podFixed": {"memory": "2Gi"}}, "shceduling": {}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_runtime_classes():
    docs = {d["metadata"]["name"]: d for d in load_docs(DEPLOY / "runtimeclasses.yaml")}
    assert set(docs) == {"kata-snp", "kata-tdx"}
    for name, tee, handler in [("kata-snp", "snp", "kata-qemu-snp"), ("kata-tdx", "tdx", "kata-qemu-tdx")]:
        rc = docs[name]
        assert rc["handler"] == handler
        assert rc["overhead"]["podFixed"]["memory"]
        assert rc["scheduling"]["nodeSelector"]["cloak.dev/tee"] == tee
        assert {"key": "cloak.dev/tee", "operator": "Equal", "value": tee, "effect": "NoSchedule"} in rc[
            "scheduling"
        ]["tolerations"]


def test_node_taint_matches_runtime_class_toleration():
    node = load_docs(DEPLOY / "nodes.yaml")[0]
    rc = {d["metadata"]["name"]: d for d in load_docs(DEPLOY / "runtimeclasses.yaml")}["kata-snp"]
    for taint in node["spec"]["taints"]:
        assert any(
            t["key"] == taint["key"] and t.get("value") == taint.get("value") and t["effect"] == taint["effect"]
            for t in rc["scheduling"]["tolerations"]
        ), f"taint {taint} not tolerated by kata-snp"
    for k, v in rc["scheduling"]["nodeSelector"].items():
        assert node["metadata"]["labels"].get(k) == v


def test_confidential_pod_init_data_annotation_decodes_to_initdata_toml():
    pod = load_docs(DEPLOY / "confidential-pod.yaml")[0]
    value = pod["metadata"]["annotations"]["io.katacontainers.config.hypervisor.cc_init_data"]
    raw = gzip.decompress(base64.b64decode(value, validate=True))
    assert raw == (DEPLOY / "initdata.toml").read_bytes()
    initdata = tomllib.loads(raw.decode())
    assert initdata["algorithm"] == "sha384"
    kbs_urls = {
        tomllib.loads(initdata["data"]["aa.toml"])["token_configs"]["kbs"]["url"],
        tomllib.loads(initdata["data"]["cdh.toml"])["kbc"]["url"],
    }
    assert len(kbs_urls) == 1, kbs_urls
    assert pod["spec"]["runtimeClassName"] in {"kata-snp", "kata-tdx"}
    assert pod["spec"]["automountServiceAccountToken"] is False


# ---- PrometheusRule ---------------------------------------------------------------

PROMETHEUS_RULE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "rules": {
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "type": "object",
                                    "required": ["alert", "expr"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                        "annotations": {
                                            "type": "object",
                                            "additionalProperties": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def test_prometheusrule_structure():
    rule = load_docs(DEPLOY / "prometheusrule.yaml")[0]
    jsonschema.validate(rule, PROMETHEUS_RULE_SCHEMA)
    names = [g["name"] for g in rule["spec"]["groups"]]
    assert len(names) == len(set(names)), "group names must be unique"


def test_prometheusrule_schema_can_fail():
    rule = load_docs(DEPLOY / "prometheusrule.yaml")[0]
    rule["spec"]["groups"][0]["rules"][0]["experssion"] = "up"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rule, PROMETHEUS_RULE_SCHEMA)


# ---- cloak-kbs examples -----------------------------------------------------------
# Mirrors kbs/server/src/config.rs (ServeConfig, deny_unknown_fields) and
# kbs/server/src/policy.rs (PolicyFile): the broker refuses unknown keys, so must this.

HEX48 = {"type": "string", "pattern": "^[0-9a-fA-F]{96}$"}
HEX16 = {"type": "string", "pattern": "^[0-9a-fA-F]{32}$"}
U8 = {"type": "integer", "minimum": 0, "maximum": 255}
MEASUREMENT = {"type": "string", "pattern": "^([0-9a-fA-F]{64}|[0-9a-fA-F]{96}|[0-9a-fA-F]{128})$"}

KBS_CONFIG_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "listen": {"type": "string", "pattern": r"^[^\s:]+:[0-9]{1,5}$"},
        # The broker on TLS (issue 25): both files, or plain HTTP said out loud.
        "tls_cert": {"type": "string"},
        "tls_key": {"type": "string"},
        "insecure_http": {"type": "boolean"},
        "policy": {"type": "string"},
        "resources": {"type": "string"},
        "admin_public_key": {"type": "string"},
        "admin_issuer": {"type": "string"},
        "admin_audience": {"type": "string"},
        "session_ttl_secs": {"type": "integer", "minimum": 0},
        "token_ttl_secs": {"type": "integer", "minimum": 0},
        "attestation_cache_secs": {"type": "integer", "minimum": 0},
        "body_limit_bytes": {"type": "integer", "minimum": 0},
        "policy_poll_ms": {"type": "integer", "minimum": 0},
        "snp": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"ark": {"type": "string"}, "ask": {"type": "string"}, "vcek": {"type": "string"}},
        },
        # config.rs CcaConfig (issue 26)
        "cca": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"trust_anchors": {"type": "string"}},
        },
    },
}

# policy.rs SnpSpec, TdxSpec: shared by their own sections and the Azure vTPM ones.
SNP_POLICY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "measurement": {"oneOf": [HEX48, {"type": "array", "items": HEX48}]},
        "tcb_min": {
            "type": "object",
            "additionalProperties": False,
            "properties": {k: U8 for k in ["bootloader", "tee", "snp", "microcode"]},
        },
        "family_id": HEX16,
        "image_id": HEX16,
        "max_vmpl": {"type": "integer", "minimum": 0},
        "allow_debug": {"type": "boolean"},
    },
}
TDX_POLICY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "mr_td": {"type": "array", "items": HEX48},
        "tcb_svn_min": HEX16,
        "allow_debug": {"type": "boolean"},
        "tcb_status": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "deny_advisories": {"type": "array", "items": {"type": "string"}},
    },
}
# vTPM PCR index ("0" to "23") -> one allowed SHA-256 value or a list of them.
HEX32 = {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}
PCR_POLICY = {
    "type": "object",
    "additionalProperties": False,
    "patternProperties": {"^([0-9]|1[0-9]|2[0-3])$": {"oneOf": [HEX32, {"type": "array", "items": HEX32}]}},
}

KBS_POLICY_SCHEMA = {
    "type": "object",
    "required": ["default_policy"],
    "additionalProperties": False,
    "properties": {
        "default_policy": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "required_attestation": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "sev_snp": SNP_POLICY,
                        "tdx": TDX_POLICY,
                        # policy.rs AzSnpSpec / AzTdxSpec (issue 26): the hardware section and vTPM PCRs
                        "az_snp_vtpm": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"sev_snp": SNP_POLICY, "pcrs": PCR_POLICY},
                        },
                        "az_tdx_vtpm": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"tdx": TDX_POLICY, "pcrs": PCR_POLICY},
                        },
                        # policy.rs CcaSpec (issue 26)
                        "cca": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "rim": {"type": "array", "items": MEASUREMENT},
                                "rem": {
                                    "type": "array",
                                    "items": {"type": "array", "items": MEASUREMENT, "minItems": 4, "maxItems": 4},
                                },
                                "implementation_id": {
                                    "type": "array",
                                    "items": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
                                },
                                "lifecycle": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                            },
                        },
                        "sample": {
                            "type": "object",
                            "required": ["allow"],
                            "additionalProperties": False,
                            "properties": {"allow": {"type": "boolean"}},
                        },
                    },
                },
                "released_resources": {
                    "type": "array",
                    # relative, no empty or ".." segment (policy.rs validate_glob)
                    "items": {"type": "string", "pattern": r"^(?!/)(?!.*(^|/)\.\.(/|$))(?!.*//)[^/].*[^/]$|^[^/]$"},
                },
                # policy.rs InitdataSpec (issue 25)
                "initdata": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "required": {"type": "boolean"},
                        "digests": {"type": "array", "items": {"type": "string", "pattern": "^([0-9a-fA-F]{64}|[0-9a-fA-F]{96}|[0-9a-fA-F]{128})$"}},
                        "data": {"type": "object"},
                        "resources": {"type": "object"},
                    },
                },
            },
        }
    },
}


def test_kbs_config_example_shape():
    (cfg,) = load_docs(DEPLOY / "kbs/kbs.yaml")
    jsonschema.validate(cfg, KBS_CONFIG_SCHEMA)
    assert cfg["policy"].endswith("policy.yaml")
    # Listening beyond loopback: TLS, or an explicit insecure_http behind a TLS proxy.
    assert ("tls_cert" in cfg and "tls_key" in cfg) != bool(cfg.get("insecure_http"))


def test_kbs_policy_example_shape_and_safety():
    (pol,) = load_docs(DEPLOY / "kbs/policy.yaml")
    jsonschema.validate(pol, KBS_POLICY_SCHEMA)
    req = pol["default_policy"]["required_attestation"]
    # The production example must never accept sample evidence or debug guests.
    assert req["sample"]["allow"] is False
    assert req["sev_snp"]["allow_debug"] is False and req["tdx"]["allow_debug"] is False
    assert "default/image-kek/*" in pol["default_policy"]["released_resources"]
    # The example binds init-data: its cdh.toml must name the broker deploy/initdata.toml names.
    ini = pol["default_policy"]["initdata"]
    assert ini["required"] is True
    assert "url = \"" + ini["data"]["cdh.toml"]["kbc.url"][0] + "\"" in (DEPLOY / "initdata.toml").read_text()


@pytest.mark.parametrize(
    "bad",
    [
        {"default_policy": {"required_attestation": {"sev_snp": {"measurement": "abcd"}}}},
        {"default_policy": {"required_attestation": {"sample": {"allow": True, "x": 1}}}},
        {"default_policy": {"released_resources": ["/abs/path"]}},
        {"default_policy": {"released_resources": ["default/../x"]}},
        {"default_policy": {"released_resources": ["default//x"]}},
        {"default_policy": {}, "extra": 1},
        {"default_policy": {"required_attestation": {"az_snp_vtpm": {"pcrs": {"24": "00" * 32}}}}},
        {"default_policy": {"required_attestation": {"az_snp_vtpm": {"pcrs": {"11": "abcd"}}}}},
        {"default_policy": {"required_attestation": {"az_tdx_vtpm": {"sev_snp": {}}}}},
    ],
)
def test_kbs_policy_schema_refuses_what_the_broker_refuses(bad):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, KBS_POLICY_SCHEMA)


def test_kbs_policy_schema_takes_the_azure_sections():
    pol = {
        "default_policy": {
            "required_attestation": {
                "az_snp_vtpm": {"sev_snp": {"measurement": ["ab" * 48]}, "pcrs": {"11": ["cd" * 32], "4": "ef" * 32}},
                "az_tdx_vtpm": {"tdx": {"mr_td": ["ab" * 48], "tcb_status": ["UpToDate"]}, "pcrs": {}},
            },
            "released_resources": ["default/*"],
        }
    }
    jsonschema.validate(pol, KBS_POLICY_SCHEMA)


# ---- cloak-kbs on Kubernetes --------------------------------------------------------


def _kbs_objects() -> dict:
    return {d["kind"]: d for d in load_docs(DEPLOY / "kbs/cloak-kbs.yaml")}


def test_kbs_configmap_carries_the_example_files_verbatim():
    cm = _kbs_objects()["ConfigMap"]
    assert cm["data"]["kbs.yaml"] == (DEPLOY / "kbs/kbs.yaml").read_text()
    assert cm["data"]["policy.yaml"] == (DEPLOY / "kbs/policy.yaml").read_text()


def test_kbs_config_paths_are_mounted_by_the_deployment():
    objs = _kbs_objects()
    (cfg,) = load_docs(DEPLOY / "kbs/kbs.yaml")
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) == set(volumes)

    def mounted_by(path: str) -> str:
        names = [n for n, m in mounts.items() if path.startswith(m.rstrip("/") + "/") or path == m]
        assert len(names) == 1, f"{path} is under {len(names)} mounts"
        return names[0]

    assert volumes[mounted_by(cfg["policy"])]["configMap"]["name"] == objs["ConfigMap"]["metadata"]["name"]
    assert mounted_by(cfg["admin_public_key"]) == "admin-key"
    assert mounted_by(cfg["snp"]["ark"]) == "amd-certs"
    assert "persistentVolumeClaim" in volumes[mounted_by(cfg["resources"] + "/x")]
    config_arg = container["args"][container["args"].index("--config") + 1]
    assert mounted_by(config_arg) == mounted_by(cfg["policy"])
    assert config_arg.endswith("/kbs.yaml")
    # Probes hit the endpoints the broker serves.
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    port = int(cfg["listen"].rsplit(":", 1)[1])
    assert container["ports"][0]["containerPort"] == port


def test_kbs_service_pins_a_guest_to_one_replica_and_matches_init_data_url():
    objs = _kbs_objects()
    svc = objs["Service"]
    assert svc["spec"]["sessionAffinity"] == "ClientIP"
    assert svc["spec"]["selector"].items() <= objs["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
    initdata = tomllib.loads((DEPLOY / "initdata.toml").read_text())
    url = tomllib.loads(initdata["data"]["cdh.toml"])["kbc"]["url"]
    host_port = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc:{svc['spec']['ports'][0]['port']}"
    assert url == f"http://{host_port}"


# ---- cloak-pull policy ----------------------------------------------------------------
# Mirrors guest-puller/src/policy.rs (Policy, deny_unknown_fields).

PULL_POLICY_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "require_digest": {"type": "boolean"},
        "require_encrypted_layers": {"type": "boolean"},
        "allowed_registries": {"type": "array", "items": {"type": "string", "pattern": r"^[^/\s]+$"}},
        "allowed_key_schemes": {
            "type": "array",
            "items": {"type": "string", "pattern": r"^(jwe|provider\.(\*|[A-Za-z0-9_.-]+))$"},
        },
    },
}


def test_guest_pull_policy_is_strict():
    (pol,) = load_docs(DEPLOY / "guest/pull-policy.yaml")
    jsonschema.validate(pol, PULL_POLICY_SCHEMA)
    # The example is the production stance: pinned, encrypted, attested keys only.
    assert pol["require_digest"] is True
    assert pol["require_encrypted_layers"] is True
    assert "provider.attestation-agent" in pol["allowed_key_schemes"]


def test_guest_pull_policy_registries_cover_the_example_pod():
    (pol,) = load_docs(DEPLOY / "guest/pull-policy.yaml")
    (pod,) = load_docs(DEPLOY / "confidential-pod.yaml")
    for c in pod["spec"]["containers"]:
        assert c["image"].split("/", 1)[0] in pol["allowed_registries"], c["image"]


def test_guest_pull_policy_schema_refuses_typos():
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"require_digests": True}, PULL_POLICY_SCHEMA)
