"""`edgekit deploy`: measure a recipe's models on a target, here or on a device over SSH.

transport (Local, Ssh: run, put, fetch, clear), checks (`[check]`), plan (jobs.json), bundle (what
travels) and flow (the steps, one code path for every transport). The device runs the plan with
`edgekit run-jobs` (edgekit.device.jobs). Host side, but torch-free and Python 3.8 clean.
"""

from .flow import Reached, deploy, device_python, reach, transport_for

__all__ = ["Reached", "deploy", "device_python", "reach", "transport_for"]
