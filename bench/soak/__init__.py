"""The chaos soak (issue 8): real mosquitto, the real agent, twins for load, seeded faults, a county-side verdict.

`python -m bench.soak --minutes N --seed S [--short]`; docs/reliability.md explains what it checks and
holds the figures of the last long run.
"""
