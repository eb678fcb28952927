"""heddle's pure scheduling core: DAGs, request state, policies and the step function."""

from heddle.scheduler.core import Core
from heddle.scheduler.dag import Pipeline, PipelineError, validate_pipeline
from heddle.scheduler.plan import CoreStats, Dispatch, Finished, Freeze, Migrate, Plan, Unfreeze
from heddle.scheduler.policies import POLICIES, make_policy
from heddle.scheduler.specs import DeviceSpec, ModelSpec, PipelineSpec, StageSpec, TensorSpec
from heddle.scheduler.state import Outcome, Request, RunState, StageRun

__all__ = [
    "Core", "CoreStats", "DeviceSpec", "Dispatch", "Finished", "Freeze", "Migrate", "ModelSpec", "Outcome",
    "POLICIES", "Pipeline", "PipelineError", "PipelineSpec", "Plan", "Request", "RunState",
    "StageRun", "StageSpec", "TensorSpec", "Unfreeze", "make_policy", "validate_pipeline",
]
