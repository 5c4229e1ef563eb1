"""The box's status LED (profile `[status_led]`): steady while the county link is up, blinking while not."""

from drivers.led.status import GpioStatusLed, StatusLight

__all__ = ["GpioStatusLed", "StatusLight"]
