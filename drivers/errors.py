"""Errors of the hardware drivers."""

from __future__ import annotations

from clln.controller.errors import CllnError, UserError


class DriverError(CllnError):
    """A hardware driver failed (communication, device fault)."""


class FrameError(DriverError):
    """A serial frame is not valid COBS, has a bad length, or fails its CRC."""


class PotBankTimeout(DriverError):
    """The potentiometer controller did not answer within the timeout, after all retries."""


class FirmwareError(DriverError):
    """The potentiometer controller answered with an error status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ReadbackMismatch(DriverError):
    """Taps read back from the potentiometers differ from those written, after all retries."""


class IncompatibleFirmware(UserError):
    """The potentiometer controller speaks another major protocol version."""


class DeviceNotFound(UserError):
    """A serial port, DAQ device or instrument named in the bench file is not there."""


class DaqError(DriverError):
    """The DAQ driver reported an error."""


class DeviceLost(DriverError):
    """A device that was connected went away (unplugged, powered off)."""


class FirmwareParked(DriverError):
    """The potentiometer controller parked its pots (its watchdog tripped) behind the host's
    back: the network is not the one the host set, so nothing more is measured on it."""


class FirmwareReset(FirmwareParked):
    """The potentiometer controller restarted after the handshake (a BOOT packet, or a
    status without handshake, arrived mid-run)."""


class ControllerSilent(UserError):
    """The potentiometer controller never answered the handshake on the bench file's port."""
