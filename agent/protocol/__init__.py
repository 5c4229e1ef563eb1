"""The wire: topics, uplink envelopes and signed downlink commands.

Shared by the agent, the county console and the simulator so that both ends of the link can never
disagree about what goes over it (contract sections 3-5).
"""
