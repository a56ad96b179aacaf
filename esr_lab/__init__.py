"""esr-lab: reproduce and extend Early Stopping Rollout (ESR) for on-policy distillation."""

__version__ = "0.1.0"
