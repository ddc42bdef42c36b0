"""Launchers: where the trainer ranks, the inference engines and the rollout manager run.

:mod:`agentrl.launch.placement` plans and reserves the GPUs (or CPUs) of a Ray launch. Ray is an
optional extra (``pip install agentrl[ray]``); nothing here imports it at module import.
"""
