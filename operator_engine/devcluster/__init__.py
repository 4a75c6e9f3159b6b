"""
An embedded Kubernetes "cluster" for tests, ``operator-engine dev`` and ``operator-engine demo``.

No real Kubernetes can run where this project is tested, so this package
serves a Kubernetes API over real HTTP (built on KMock) with the API-server
behaviour operators rely on, plus the controllers of a cluster (garbage
collector, Job controller with a pluggable pod runtime). kopf, kubectl and
the ``kubernetes`` client talk to it exactly as to a real cluster
(``kubectl get`` gets server-side printed Tables; ``kubectl apply`` finds the
OpenAPI it needs for validation).

Pod runtimes: :class:`ScriptedRuntime` (tests decide each outcome) and
:class:`ProcessRuntime`, which runs each pod's command as a LOCAL PROCESS
without container isolation, for trying and developing only.
"""

from operator_engine.devcluster.apiserver import (
    BYPASS_FAULTS_HEADER,
    ApiError,
    ApiServer,
    FaultInjector,
    RequestRecord,
    WatchEvent,
    request_attributes,
)
from operator_engine.devcluster.cluster import EmbeddedCluster, ThreadedCluster, kubeconfig
from operator_engine.devcluster.controllers import GarbageCollector, JobController
from operator_engine.devcluster.process import PathMapper, PodSetupError, ProcessRuntime
from operator_engine.devcluster.resources import DEFAULT_RESOURCES, ResourceSpec
from operator_engine.devcluster.runtime import Outcome, Result, Runtime, ScriptedRuntime
from operator_engine.devcluster.selectors import FieldSelector, LabelSelector

__all__ = [
    "ApiError",
    "ApiServer",
    "BYPASS_FAULTS_HEADER",
    "DEFAULT_RESOURCES",
    "EmbeddedCluster",
    "FaultInjector",
    "FieldSelector",
    "GarbageCollector",
    "JobController",
    "LabelSelector",
    "Outcome",
    "PathMapper",
    "PodSetupError",
    "ProcessRuntime",
    "RequestRecord",
    "request_attributes",
    "ResourceSpec",
    "Result",
    "Runtime",
    "ScriptedRuntime",
    "ThreadedCluster",
    "WatchEvent",
    "kubeconfig",
]
