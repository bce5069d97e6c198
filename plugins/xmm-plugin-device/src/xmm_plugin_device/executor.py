"""Where validated commands go: the :class:`Executor` protocol and the default :class:`DryRunExecutor`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from xmm_plugin_device.commands import DeviceCommand

log = logging.getLogger(__name__)


@dataclass
class ExecutionResult:
    """What an executor did with one command. ``ok`` False means the device refused or failed it."""

    command: DeviceCommand
    ok: bool
    message: str = ""
    dry_run: bool = False
    data: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Executor(Protocol):
    """Carries out a validated :class:`DeviceCommand` on a real device (ADB, MDM, a home-automation API...)."""

    def execute(self, command: DeviceCommand) -> ExecutionResult:
        """Apply ``command``; report failures in the result rather than raising for device-side refusals."""
        ...


class DryRunExecutor:
    """The default executor: logs each command and records it in :attr:`history`; touches no device."""

    def __init__(self, *, logger: logging.Logger | None = None) -> None:
        self.log = logger or log
        self.history: list[DeviceCommand] = []

    def execute(self, command: DeviceCommand) -> ExecutionResult:
        self.history.append(command)
        self.log.info("dry run: would execute %s", command.to_text())
        return ExecutionResult(command, ok=True, message=f"dry run: {command.to_text()}", dry_run=True)
