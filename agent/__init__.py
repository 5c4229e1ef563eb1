"""village-edge: the agent that runs on a village box."""

__version__ = "0.1.0"
