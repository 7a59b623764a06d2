"""The workflows that ship with ai-apps, each a short declarative definition."""

from saga.workflows.campaign import CAMPAIGN_STEPS, campaign_workflow
from saga.workflows.quality import QUALITY_STEPS, quality_workflow
from saga.workflows.support import SUPPORT_STEPS, support_workflow

__all__ = [
    "CAMPAIGN_STEPS",
    "QUALITY_STEPS",
    "SUPPORT_STEPS",
    "campaign_workflow",
    "quality_workflow",
    "support_workflow",
]
