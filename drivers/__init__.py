"""Hardware drivers: sans-I/O codecs, thin transport adapters and the Protocols they satisfy.

Never imports agent/. Each driver's twin lives in sim/ behind the same Protocol.
"""
