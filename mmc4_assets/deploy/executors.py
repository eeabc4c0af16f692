"""Step-per-container executors that place steps by their ``mmc4/device`` op tag.

A shard's run is launched in its own container by the instance's run launcher
(``EcsRunLauncher`` / ``K8sRunLauncher``, see ``dagster_home/deploy/``). With
``MMC4_EXECUTOR=ecs`` or ``k8s`` that run container only orchestrates: every step
(``raw_c4`` ... ``published_shards``) becomes its own ECS task / Kubernetes Job, so only
``clip_scores`` (op tag ``mmc4/device: gpu``) needs a GPU task or node.

The mapping from device to placement is configuration, not code: ``device_tags`` maps a
device name to the launcher's own step tags, which are added to every step carrying
``mmc4/device: <name>``::

    device_tags:
      gpu:
        dagster-k8s/config: {container_config: {resources: {limits: {nvidia.com/gpu: 1}}}}
        # or, on ECS:
        ecs/container_overrides: {resourceRequirements: [{type: GPU, value: "1"}]}
        ecs/run_task_kwargs: {capacityProviderStrategy: [{capacityProvider: gpu, weight: 1}]}

Tags an op sets itself win over the mapping. ``MMC4_EXECUTOR_CONFIG`` names a YAML file
with the executor's whole config (the stock ``ecs_executor`` / ``k8s_job_executor`` fields
plus ``device_tags``); it becomes the executor's fixed configuration.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from mmc4_assets.deploy.dagster_internals import (
    CheckStepHealthResult,
    StepDelegatingExecutor,
    StepHandler,
    StepHandlerContext,
    adopt_context_state,
    executor_config_fields,
    multiple_process_executor_requirements,
    with_executor_config,
    wrap_step_handler,
)

DEVICE_TAG = "mmc4/device"
EXECUTOR_KINDS = ("multiprocess", "in_process", "k8s", "ecs")


def device_step_tags(tags: Mapping[str, str], device_tags: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """``tags`` plus the launcher tags configured for its ``mmc4/device``; the op's own tags win."""
    extra = device_tags.get(tags.get(DEVICE_TAG, ""), {})
    encoded = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in extra.items()}
    return {**encoded, **tags}


class _DeviceTaggedContext(StepHandlerContext):
    """The same step handler context whose step tags include the device placement."""

    def __init__(self, inner: StepHandlerContext, device_tags: Mapping[str, Mapping[str, Any]]):
        adopt_context_state(self, inner)
        self._device_tags = device_tags

    @property
    def step_tags(self) -> Mapping[str, Mapping[str, str]]:
        return {key: device_step_tags(tags, self._device_tags) for key, tags in super().step_tags.items()}


class DevicePlacementStepHandler(StepHandler):
    """Wraps a launcher's step handler (ECS, Kubernetes) and adds device tags to what it sees."""

    def __init__(self, inner: StepHandler, device_tags: Mapping[str, Mapping[str, Any]]):
        super().__init__()
        self.inner, self.device_tags = inner, dict(device_tags)

    @property
    def name(self) -> str:
        return f"{self.inner.name} (device placement: {', '.join(sorted(self.device_tags)) or 'none'})"

    def launch_step(self, step_handler_context: StepHandlerContext) -> Iterator[dg.DagsterEvent]:
        return self.inner.launch_step(_DeviceTaggedContext(step_handler_context, self.device_tags))

    def check_step_health(self, step_handler_context: StepHandlerContext) -> CheckStepHealthResult:
        return self.inner.check_step_health(_DeviceTaggedContext(step_handler_context, self.device_tags))

    def terminate_step(self, step_handler_context: StepHandlerContext) -> Iterator[dg.DagsterEvent]:
        return self.inner.terminate_step(_DeviceTaggedContext(step_handler_context, self.device_tags))


def with_device_placement(base: dg.ExecutorDefinition, name: str) -> dg.ExecutorDefinition:
    """``base`` (a step-delegating executor) with a ``device_tags`` config field."""
    fields = executor_config_fields(base)
    fields["device_tags"] = dg.Field(
        dg.Map(str, dg.Permissive()),
        is_required=False,
        default_value={},
        description="device name (the mmc4/device op tag) -> launcher step tags for those steps",
    )

    @dg.executor(name=name, config_schema=fields, requirements=multiple_process_executor_requirements())
    def _executor(init_context: dg.InitExecutorContext) -> StepDelegatingExecutor:
        config = dict(init_context.executor_config)
        device_tags = config.pop("device_tags", {}) or {}
        executor = base.executor_creation_fn(with_executor_config(init_context, config))
        wrap_step_handler(executor, lambda inner: DevicePlacementStepHandler(inner, device_tags))
        return executor

    _executor.__doc__ = f"{base.name} executor whose steps are placed by their {DEVICE_TAG} tag."
    return _executor


def load_executor_config(path: str | os.PathLike | None) -> dict[str, Any]:
    if not path:
        return {}
    config = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: executor config must be a mapping")
    # a file may hold the run-config shape ({execution: {config: ...}}) or the config itself
    return config.get("execution", {}).get("config", config) if "execution" in config else config


def executor_for(kind: str, config: Mapping[str, Any] | None = None) -> dg.ExecutorDefinition | None:
    """The executor for ``MMC4_EXECUTOR``; None keeps Dagster's default (multiprocess, one container)."""
    kind = (kind or "multiprocess").strip().lower()
    if kind not in EXECUTOR_KINDS:
        raise ValueError(f"MMC4_EXECUTOR must be one of {', '.join(EXECUTOR_KINDS)}, not {kind!r}")
    if kind == "multiprocess":
        return dg.multiprocess_executor.configured(dict(config)) if config else None
    if kind == "in_process":
        return dg.in_process_executor.configured(dict(config)) if config else dg.in_process_executor
    if kind == "k8s":
        from dagster_k8s import k8s_job_executor  # optional: installed in the k8s image only

        executor = with_device_placement(k8s_job_executor, "k8s_by_device")
    else:
        from dagster_aws.ecs import ecs_executor

        executor = with_device_placement(ecs_executor, "ecs_by_device")
    return executor.configured(dict(config), name=executor.name) if config else executor


def executor_from_env(default: str = "multiprocess") -> dg.ExecutorDefinition | None:
    """``MMC4_EXECUTOR`` (with ``MMC4_EXECUTOR_CONFIG``), or ``default`` when it is unset."""
    return executor_for(
        os.environ.get("MMC4_EXECUTOR") or default, load_executor_config(os.environ.get("MMC4_EXECUTOR_CONFIG"))
    )
