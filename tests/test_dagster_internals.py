"""The private Dagster APIs we use, checked where they are isolated (mmc4_assets/deploy/dagster_internals.py).

A Dagster upgrade that moves or reshapes one of them fails here, naming it, instead of in a
production run on ECS or Kubernetes. No other module of the project may import ``dagster._*``.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from types import SimpleNamespace

import dagster as dg

from mmc4_assets.deploy import dagster_internals as di

ROOT = Path(__file__).resolve().parents[1]


class _Recorder(di.StepHandler):
    name = "recorder"

    def launch_step(self, step_handler_context):
        return iter(())

    def check_step_health(self, step_handler_context):
        return di.CheckStepHealthResult.healthy()

    def terminate_step(self, step_handler_context):
        return iter(())


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_step_handler_has_exactly_the_methods_our_wrapper_forwards():
    # DevicePlacementStepHandler forwards these four; a new abstract one would go unforwarded.
    assert di.StepHandler.__abstractmethods__ == {"name", "launch_step", "check_step_health", "terminate_step"}
    for method in ("launch_step", "check_step_health", "terminate_step"):
        assert _params(getattr(di.StepHandler, method)) == ["self", "step_handler_context"], method
    assert di.CheckStepHealthResult.healthy().is_healthy
    assert not di.CheckStepHealthResult.unhealthy("gone").is_healthy


def test_a_step_handler_context_subclass_sees_the_adopted_state():
    assert _params(di.StepHandlerContext.__init__)[:5] == [
        "self",
        "instance",
        "plan_context",
        "steps",
        "execute_step_args",
    ]
    assert isinstance(di.StepHandlerContext.step_tags, property)
    steps = [SimpleNamespace(key="clip_scores", tags={"mmc4/device": "gpu"})]
    inner = di.StepHandlerContext(instance=None, plan_context=None, steps=steps, execute_step_args=None)

    class Tagged(di.StepHandlerContext):
        def __init__(self, source):
            di.adopt_context_state(self, source)

        @property
        def step_tags(self):
            return {key: {**tags, "extra": "1"} for key, tags in super().step_tags.items()}

    assert Tagged(inner).step_tags == {"clip_scores": {"mmc4/device": "gpu", "extra": "1"}}


def test_the_step_handler_of_a_step_delegating_executor_can_be_wrapped():
    retries = inspect.signature(di.StepDelegatingExecutor.__init__).parameters["retries"].annotation
    first = _Recorder()
    executor = di.StepDelegatingExecutor(step_handler=first, retries=retries.DISABLED)
    seen = []
    di.wrap_step_handler(executor, lambda inner: seen.append(inner) or _Recorder())
    assert seen == [first]
    assert executor._step_handler is not first and isinstance(executor._step_handler, _Recorder)


def test_executor_definitions_and_init_context_have_the_shape_we_use():
    fields = di.executor_config_fields(dg.multiprocess_executor)
    assert {"max_concurrent", "retries"} <= set(fields) and all(isinstance(f, dg.Field) for f in fields.values())
    assert callable(dg.multiprocess_executor.executor_creation_fn)
    # with_executor_config relies on InitExecutorContext being a NamedTuple with this field
    assert "executor_config" in dg.InitExecutorContext._fields and hasattr(dg.InitExecutorContext, "_replace")
    requirements = di.multiple_process_executor_requirements()
    assert requirements and all(isinstance(r, dg.ExecutorRequirement) for r in requirements)


def test_config_helpers_used_by_the_deploy_tests():
    assert _params(di.process_config) == ["config_type", "config_dict"]
    assert _params(di.dagster_instance_config)[:2] == ["base_dir", "config_filename"]
    assert di.process_config(di.pg_config(), {"postgres_url": "postgresql://x@127.0.0.1/d"}).success
    assert di.ConfigurableClassData._fields == ("module_name", "class_name", "config_yaml")


def test_run_monitoring_pass_used_by_the_killed_run_test():
    # tests/test_killed_runs.py runs one pass of the daemon's check on a run stuck STARTING
    assert _params(di.run_monitoring.monitor_starting_run)[:3] == ["instance", "run_record", "logger"]
    assert callable(di.run_monitoring.get_current_timestamp)


def _private_dagster_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.level == 0
            else []
        )
        found += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.startswith("dagster._")]
    return found


def test_no_other_module_imports_private_dagster():
    allowed = ROOT / "mmc4_assets" / "deploy" / "dagster_internals.py"
    files = [p for d in ("mmc4_assets", "tests", "benchmarks") for p in sorted((ROOT / d).rglob("*.py"))]
    offenders = [hit for p in files if p != allowed for hit in _private_dagster_imports(p)]
    assert offenders == [], "import private Dagster APIs through mmc4_assets/deploy/dagster_internals.py"
    assert _private_dagster_imports(allowed)  # the scan itself finds imports
