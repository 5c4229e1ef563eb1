"""The loudspeaker amplifier's power relay (村村响 boxes switch the PA amplifier with a GPIO relay)."""

from drivers.amp.relay import AmpError, AmpRelay, GpioAmpRelay

__all__ = ["AmpError", "AmpRelay", "GpioAmpRelay"]
