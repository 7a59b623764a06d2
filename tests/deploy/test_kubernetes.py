"""The Kubernetes manifests: every object validates against the Kubernetes schemas (strict: an
unknown field is an error, as with ``kubectl apply --validate=strict``), the KEDA objects against
KEDA's CRD schema, the overlays render, and the pieces fit together (scalers, queues, secrets,
grace periods, probes)."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from actors.services import SERVICES
from service.settings import Settings
from tests.deploy.manifests import (
    BASE,
    CRDS,
    KUBERNETES,
    OVERLAYS,
    Obj,
    actors_of,
    by_name,
    containers,
    dockerfile_instructions,
    kind,
    load_all,
    manifest_files,
    pod_spec,
    render,
    transport_grace,
)

KUBERNETES_VERSIONS = ("1.30", "1.33")
"""The oldest Kubernetes minor we target (AKS and the KEDA 2.16 range), and a recent one."""
KEDA_GROUP = "keda.sh/v1alpha1"
GRACE = transport_grace()
"""How long a stopping role lets in-flight handlers finish."""
QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?\d+))?$")


@cache
def crd_schemas() -> dict[str, Obj]:
    """kind -> JSON Schema of the KEDA CRDs we ship, strict like the API server's field
    validation: an object schema with properties admits no other property."""
    schemas: dict[str, Obj] = {}
    for path in sorted(CRDS.glob("*.yaml")):
        (crd,) = load_all(path)
        (version,) = crd["spec"]["versions"]
        schemas[crd["spec"]["names"]["kind"]] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas


def _strict(schema: Any) -> Any:
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def validate(obj: Obj, where: str) -> None:
    """Kubernetes schema for built-in kinds, the CRD schema for KEDA's; anything else fails."""
    name = f"{where}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    if obj.get("apiVersion") == KEDA_GROUP:
        schema = crd_schemas().get(obj["kind"])
        assert schema is not None, f"{name}: no KEDA CRD schema for this kind in {CRDS}"
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(obj), key=str)
        assert not errors, f"{name}: " + "; ".join(
            f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
        )
        return
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            raise AssertionError(f"{name} (Kubernetes {version}): {path}: {exc.message}") from None
        except kubernetes_validate.SchemaNotFoundError as exc:
            raise AssertionError(f"{name}: {exc.message}") from None
    for c in containers(obj) if obj.get("kind") == "Deployment" else []:
        for bound in ("requests", "limits"):
            for resource, value in c.get("resources", {}).get(bound, {}).items():
                assert QUANTITY.match(str(value)), f"{name}: {resource} {bound} {value!r}"


class TestSchemas:
    def test_every_manifest_file_validates(self) -> None:
        """Each file as written (base, overlays' own resources, the example Secrets)."""
        files = manifest_files()
        assert files
        for path in files:
            for obj in load_all(path):
                validate(obj, str(path.relative_to(KUBERNETES)))

    @pytest.mark.parametrize("name", ["base", *OVERLAYS])
    def test_every_rendered_object_validates(self, name: str) -> None:
        """What ``kustomize build`` produces, patches applied."""
        objects = render(BASE if name == "base" else OVERLAYS[name])
        assert objects
        for obj in objects:
            validate(obj, name)

    def test_the_crd_copies_are_valid_crds(self) -> None:
        for path in sorted(CRDS.glob("*.yaml")):
            for obj in load_all(path):
                validate(obj, str(path.relative_to(KUBERNETES)))
        assert set(crd_schemas()) == {"ScaledObject", "TriggerAuthentication"}

    def test_the_crd_schema_rejects_what_keda_rejects(self) -> None:
        """The schema is not vacuous: a missing trigger type, a string where an integer goes,
        an unknown field and an unknown pod identity provider each fail."""
        (good,) = [o for o in render(OVERLAYS["rabbitmq"]) if o["kind"] == "ScaledObject"][:1]
        validate(good, "rabbitmq")
        bad_values: list[tuple[str, Any]] = [
            ("triggers", [{"metadata": {}}]),
            ("maxReplicaCount", "10"),
            ("maxReplicas", 10),
        ]
        for field, value in bad_values:
            broken = {**good, "spec": {**good["spec"], field: value}}
            with pytest.raises(AssertionError):
                validate(broken, "mutated")
        auth = {"apiVersion": KEDA_GROUP, "kind": "TriggerAuthentication",
                "metadata": {"name": "x"}, "spec": {"podIdentity": {"provider": "azure"}}}
        with pytest.raises(AssertionError):
            validate(auth, "mutated")


class TestShape:
    @pytest.mark.parametrize("name", ["base", *OVERLAYS])
    def test_every_actor_runs_in_exactly_one_worker_group(self, name: str) -> None:
        objects = render(BASE if name == "base" else OVERLAYS[name])
        served = [a for d in kind(objects, "Deployment") for a in actors_of(d)]
        assert sorted(served) == sorted(SERVICES), served

    def test_roles(self) -> None:
        """A gateway, two coordinators, one Deployment per actor group."""
        deployments = by_name(render(BASE), "Deployment")
        assert deployments["ai-apps-gateway"]
        assert deployments["ai-apps-coordinator"]["spec"]["replicas"] == 2
        groups = {n.removeprefix("ai-apps-worker-"): actors_of(d) for n, d in deployments.items()
                  if actors_of(d)}
        assert groups == {"vision": ["vision"], "language-translation": ["language", "translation"],
                          "responder": ["responder"], "speech": ["speech"]}

    def test_gateway_probes_and_service(self) -> None:
        objects = render(BASE)
        deployment = by_name(objects, "Deployment")["ai-apps-gateway"]
        (gateway,) = containers(deployment)
        assert gateway["livenessProbe"]["httpGet"]["path"] == "/health"
        assert gateway["readinessProbe"]["httpGet"]["path"] == "/ready"
        port = gateway["ports"][0]
        assert port["containerPort"] == 3000
        service = by_name(objects, "Service")["ai-apps-gateway"]
        assert service["spec"]["ports"][0]["targetPort"] == port["name"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()

    @pytest.mark.parametrize("name", ["base", *OVERLAYS])
    def test_every_container_has_requests_and_limits(self, name: str) -> None:
        objects = render(BASE if name == "base" else OVERLAYS[name])
        for deployment in kind(objects, "Deployment"):
            for c in containers(deployment):
                resources = c.get("resources", {})
                for bound in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(resources.get(bound, {})), (
                        f"{deployment['metadata']['name']}/{c['name']}: {bound}"
                    )

    def test_grace_period_covers_the_in_flight_grace(self) -> None:
        """The kubelet SIGKILLs after terminationGracePeriodSeconds: it must leave the bus
        consumers their whole grace to finish in-flight messages, plus time to disconnect."""
        for deployment in kind(render(BASE), "Deployment"):
            name = deployment["metadata"]["name"]
            period = pod_spec(deployment).get("terminationGracePeriodSeconds", 30)
            if name == "ai-apps-gateway":
                continue
            assert period >= GRACE + 10, f"{name}: {period}s < {GRACE}s grace + 10s"

    def test_pods_run_as_the_images_non_root_user(self) -> None:
        users = [a for i, a in dockerfile_instructions() if i == "USER"]
        uid = int(users[-1].split(":")[0])
        for deployment in kind(render(BASE), "Deployment"):
            security = pod_spec(deployment)["securityContext"]
            assert security["runAsNonRoot"] is True
            assert security["runAsUser"] == uid
            for c in containers(deployment):
                assert c["securityContext"]["allowPrivilegeEscalation"] is False
                assert c["securityContext"]["readOnlyRootFilesystem"] is True
                mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
                assert "/tmp" in mounts, "a read-only root needs a writable /tmp"

    def test_every_deployment_has_a_disruption_budget(self) -> None:
        objects = render(BASE)
        budgets = kind(objects, "PodDisruptionBudget")
        for deployment in kind(objects, "Deployment"):
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            matching = [b for b in budgets
                        if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
            assert len(matching) == 1, deployment["metadata"]["name"]

    def test_settings_in_the_configmap_exist(self) -> None:
        """Every AIAPPS_* key names a real setting (a typo would be silently ignored)."""
        configmap = by_name(render(BASE), "ConfigMap")["ai-apps-settings"]
        settings = Settings()
        for key in configmap["data"]:
            if not key.startswith("AIAPPS_"):
                continue
            target: Any = settings
            for part in key.removeprefix("AIAPPS_").lower().split("__"):
                assert hasattr(target, part), (
                    f"ConfigMap key {key}: Settings has no {part!r} (service/settings.py)"
                )
                target = getattr(target, part)

    @pytest.mark.parametrize("name", ["base", *OVERLAYS])
    def test_secret_references_exist_in_the_example(self, name: str) -> None:
        """The Secrets and keys the pods and KEDA read are the ones documented."""
        example = {s["metadata"]["name"]: set(s["stringData"])
                   for s in load_all(KUBERNETES / "secrets.example.yaml")}
        objects = render(BASE if name == "base" else OVERLAYS[name])
        for deployment in kind(objects, "Deployment"):
            for c in containers(deployment):
                for env in c.get("env", []):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["key"] in example.get(ref["name"], set()), ref
                for source in c.get("envFrom", []):
                    if "secretRef" in source:
                        assert source["secretRef"]["name"] in example
        for auth in kind(objects, "TriggerAuthentication"):
            for ref in auth["spec"].get("secretTargetRef", []):
                assert ref["key"] in example.get(ref["name"], set()), ref


class TestScaling:
    def test_every_worker_group_has_one_scaled_object(self) -> None:
        objects = render(BASE)
        targets = [s["spec"]["scaleTargetRef"]["name"] for s in kind(objects, "ScaledObject")]
        workers = [d["metadata"]["name"] for d in kind(objects, "Deployment") if actors_of(d)]
        assert sorted(targets) == sorted(workers)
        for deployment in kind(objects, "Deployment"):
            if actors_of(deployment):
                assert "replicas" not in deployment["spec"], "KEDA owns the replica count"

    def test_rabbitmq_triggers_follow_each_groups_queues(self) -> None:
        """One rabbitmq trigger per actor of the group, on `<exchange>.actor.<service>`."""
        objects = render(OVERLAYS["rabbitmq"])
        exchange = by_name(objects, "ConfigMap")["ai-apps-settings"]["data"]["AIAPPS_BUS_EXCHANGE"]
        auths = by_name(objects, "TriggerAuthentication")
        deployments = by_name(objects, "Deployment")
        for scaled in kind(objects, "ScaledObject"):
            actors = actors_of(deployments[scaled["spec"]["scaleTargetRef"]["name"]])
            queues = [t for t in scaled["spec"]["triggers"] if t["type"] == "rabbitmq"]
            assert sorted(t["metadata"]["queueName"] for t in queues) == sorted(
                f"{exchange}.actor.{a}" for a in actors
            )
            for trigger in queues:
                assert trigger["metadata"]["mode"] == "QueueLength"
                assert float(trigger["metadata"]["value"]) > 0
                auth = auths[trigger["authenticationRef"]["name"]]
                assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {"host"}

    def test_servicebus_triggers_follow_each_groups_subscriptions(self) -> None:
        """One azure-servicebus trigger per actor, on topic ai-apps, subscription actor.<service>."""
        from bus.servicebus_admin import subscription_name

        objects = render(OVERLAYS["servicebus"])
        auths = by_name(objects, "TriggerAuthentication")
        deployments = by_name(objects, "Deployment")
        for scaled in kind(objects, "ScaledObject"):
            actors = actors_of(deployments[scaled["spec"]["scaleTargetRef"]["name"]])
            subs = [t for t in scaled["spec"]["triggers"] if t["type"] == "azure-servicebus"]
            assert sorted(t["metadata"]["subscriptionName"] for t in subs) == sorted(
                subscription_name(f"actor.{a}") for a in actors
            )
            for trigger in subs:
                assert trigger["metadata"]["topicName"] == "ai-apps"
                assert int(trigger["metadata"]["messageCount"]) > 0
                auth = auths[trigger["authenticationRef"]["name"]]
                if "podIdentity" in auth["spec"]:
                    assert auth["spec"]["podIdentity"]["provider"] == "azure-workload"
                    assert trigger["metadata"]["namespace"], "pod identity needs the namespace"
        assert {a["spec"].get("podIdentity", {}).get("provider") for a in auths.values()} >= {
            "azure-workload"
        }
        connection = [a for a in auths.values() if "secretTargetRef" in a["spec"]]
        assert [r["parameter"] for a in connection for r in a["spec"]["secretTargetRef"]] == [
            "connection"
        ]

    def test_servicebus_pods_use_workload_identity(self) -> None:
        objects = render(OVERLAYS["servicebus"])
        (account,) = kind(objects, "ServiceAccount")
        assert "azure.workload.identity/client-id" in account["metadata"]["annotations"]
        for deployment in kind(objects, "Deployment"):
            assert pod_spec(deployment)["serviceAccountName"] == account["metadata"]["name"]
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert labels["azure.workload.identity/use"] == "true"
        data = by_name(objects, "ConfigMap")["ai-apps-settings"]["data"]
        flags = {k: v for k, v in data.items() if k.endswith("__USE_ENTRA_ID")}
        assert flags
        assert set(flags.values()) == {"true"}

    @pytest.mark.parametrize("name", list(OVERLAYS))
    def test_every_overlay_gives_every_scaler_a_trigger_on_its_backlog(self, name: str) -> None:
        for scaled in kind(render(OVERLAYS[name]), "ScaledObject"):
            types = {t["type"] for t in scaled["spec"]["triggers"]}
            assert types - {"cpu", "memory"}, scaled["metadata"]["name"]


def test_the_kubernetes_readme_names_every_overlay() -> None:
    readme = (KUBERNETES / "README.md").read_text()
    for name in OVERLAYS:
        assert f"overlays/{name}" in readme
    assert "azure.workload.identity/use" in readme
    assert "DefaultAzureCredential" in readme
