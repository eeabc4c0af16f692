"""Every private Dagster API the project relies on, in one module (checked on dagster 1.13.27).

Dagster keeps no compatibility promise for ``dagster._*``; ``tests/test_dagster_internals.py``
imports each name below and checks the attributes and signatures we use, so an upgrade that
moves or reshapes one fails there, by name, instead of inside a production run. Nothing else
in the project (code or tests) imports ``dagster._*``: that test checks this too.

Used by :mod:`mmc4_assets.deploy.executors` (device placement wraps the step handler of a
step-delegating executor: the ECS and Kubernetes executors have no public hook for it) and by
the deploy-config tests (validating instance YAML and executor config without a cluster),
and by the killed-run test (one pass of the run-monitoring daemon's loop).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import dagster as dg
from dagster._config import process_config
from dagster._core.definitions.executor_definition import multiple_process_executor_requirements
from dagster._core.executor.step_delegating import (
    CheckStepHealthResult,
    StepDelegatingExecutor,
    StepHandler,
    StepHandlerContext,
)
from dagster._core.instance.config import dagster_instance_config, pg_config
from dagster._daemon.monitoring import run_monitoring
from dagster._serdes import ConfigurableClassData

__all__ = [
    "CheckStepHealthResult",
    "ConfigurableClassData",
    "StepDelegatingExecutor",
    "StepHandler",
    "StepHandlerContext",
    "adopt_context_state",
    "dagster_instance_config",
    "executor_config_fields",
    "multiple_process_executor_requirements",
    "pg_config",
    "run_monitoring",
    "process_config",
    "with_executor_config",
    "wrap_step_handler",
]


def executor_config_fields(executor: dg.ExecutorDefinition) -> dict[str, dg.Field]:
    """The fields of an executor's config schema (to extend them with our own)."""
    return dict(executor.config_schema.as_field().config_type.fields)


def with_executor_config(init_context: dg.InitExecutorContext, config: Mapping[str, Any]) -> dg.InitExecutorContext:
    """The same init context with another executor config (it is a NamedTuple)."""
    return init_context._replace(executor_config=dict(config))


def wrap_step_handler(executor: StepDelegatingExecutor, wrap: Callable[[StepHandler], StepHandler]) -> None:
    """Replace the step handler a step-delegating executor launches steps with by ``wrap(it)``."""
    executor._step_handler = wrap(executor._step_handler)


def adopt_context_state(target: StepHandlerContext, source: StepHandlerContext) -> None:
    """Make ``target`` (a StepHandlerContext subclass) see all that ``source`` holds.

    StepHandlerContext keeps its state in instance attributes and computes ``step_tags``
    from them, so a subclass can override ``step_tags`` on a copy of another context.
    """
    target.__dict__.update(source.__dict__)
