"""The workflows that ship with ai-apps, each a short declarative definition."""

from saga.workflows.support import SUPPORT_STEPS, support_workflow

__all__ = ["SUPPORT_STEPS", "support_workflow"]
