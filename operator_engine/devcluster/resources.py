"""The resources the embedded cluster serves, with the discovery data kubectl and kopf need."""

from __future__ import annotations

import dataclasses

__all__ = ["ResourceSpec", "DEFAULT_RESOURCES", "WORKFLOWS", "JOBS", "PODS", "NAMESPACES"]

ALL_VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")


@dataclasses.dataclass(frozen=True)
class ResourceSpec:
    """One served resource: its REST coordinates and what discovery says about it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    singular: str = ""
    shortnames: tuple[str, ...] = ()
    has_status: bool = False  # whether it has the `status` subresource
    builtin: bool = True  # built-in kinds accept strategic merge patches, custom ones do not

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.group, self.version, self.plural)


NAMESPACES = ResourceSpec(
    "", "v1", "namespaces", "Namespace", namespaced=False, singular="namespace", shortnames=("ns",), has_status=True
)
PODS = ResourceSpec("", "v1", "pods", "Pod", singular="pod", shortnames=("po",), has_status=True)
JOBS = ResourceSpec("batch", "v1", "jobs", "Job", singular="job", has_status=True)
WORKFLOWS = ResourceSpec(
    "oceanprotocol.com",
    "v1alpha",
    "workflows",
    "WorkFlow",
    singular="workflow",
    shortnames=("wf",),
    has_status=True,
    builtin=False,
)

DEFAULT_RESOURCES: tuple[ResourceSpec, ...] = (
    NAMESPACES,
    ResourceSpec("", "v1", "events", "Event", singular="event", shortnames=("ev",)),
    ResourceSpec("", "v1", "configmaps", "ConfigMap", singular="configmap", shortnames=("cm",)),
    ResourceSpec("", "v1", "secrets", "Secret", singular="secret"),
    ResourceSpec(
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        singular="persistentvolumeclaim",
        shortnames=("pvc",),
        has_status=True,
    ),
    PODS,
    JOBS,
    ResourceSpec(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
        singular="customresourcedefinition",
        shortnames=("crd", "crds"),
        has_status=True,
    ),
    ResourceSpec("events.k8s.io", "v1", "events", "Event", singular="event", shortnames=("ev",)),
    WORKFLOWS,
    # Leader election of the operator's replicas (operator_engine/leader.py).
    ResourceSpec("coordination.k8s.io", "v1", "leases", "Lease", singular="lease"),
)
