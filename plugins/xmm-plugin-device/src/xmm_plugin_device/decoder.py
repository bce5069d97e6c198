"""``device-command``: a text decoder that turns the LLM's answer into a validated :class:`DeviceCommand`.

Valid commands go to the executor (a :class:`DryRunExecutor` that only logs, unless the user passes their own);
an invalid answer yields a :class:`CommandResult` with ``error`` set and is never executed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from xmm.decoder import Decoder, DecoderOutput

from xmm_plugin_device.commands import CommandError, DeviceCommand, find_command, parse_command
from xmm_plugin_device.executor import DryRunExecutor, ExecutionResult, Executor


@dataclass
class CommandResult:
    """One answer: the parsed ``command`` (``None`` when invalid), the ``error`` and the executor's ``result``."""

    text: str
    command: DeviceCommand | None = None
    error: CommandError | None = None
    result: ExecutionResult | None = None

    @property
    def ok(self) -> bool:
        return self.command is not None and (self.result is None or self.result.ok)

    @property
    def executed(self) -> bool:
        return self.result is not None


class DeviceCommandDecoder(Decoder):
    """Parses answers (``text=[...]``) into commands, validates them and, when ``execute`` is on, runs them.

    ``strict``: the whole answer must be one command (default); otherwise the first known ``name(...)`` call in it
    is taken. ``executor``: any object with ``execute(command) -> ExecutionResult`` (default: dry run).
    """

    id = "xmm-device-command"
    modality = "device"
    input_kind: ClassVar[Literal["conditioning", "text"]] = "text"
    output_kind: ClassVar[Literal["media", "result"]] = "result"
    signal_prefix = "dev"

    def __init__(self, *, executor: Executor | None = None, execute: bool = True, strict: bool = True) -> None:
        super().__init__()
        if executor is not None and not isinstance(executor, Executor):
            raise TypeError(f"executor must have an execute(command) method, got {type(executor).__name__}")
        self.executor: Executor = executor if executor is not None else DryRunExecutor()
        self.execute_commands = execute
        self.strict = strict

    def parse(self, text: str) -> DeviceCommand:
        """One answer -> command; raises :class:`CommandError` when it is not a valid command."""
        return parse_command(text) if self.strict else find_command(text)

    def decode_one(self, text: str) -> CommandResult:
        try:
            command = self.parse(text)
        except CommandError as e:
            return CommandResult(text=text, error=e)
        result = self.executor.execute(command) if self.execute_commands else None
        return CommandResult(text=text, command=command, result=result)

    def produced(self, output: Any) -> bool:
        """An answer that is not a command yields a result without one: nothing was produced."""
        return isinstance(output, CommandResult) and output.command is not None

    def describe_output(self, output: CommandResult) -> dict[str, Any]:
        """``{"modality", "kind", "text", "command": {"action", ...arguments} | None, "error", "executed", "ok",
        "result": {"ok", "message", "dry_run"} | None}``."""
        result = output.result
        return {
            "modality": self.modality, "kind": self.output_kind, "text": output.text,
            "command": None if output.command is None else output.command.model_dump(mode="json"),
            "error": None if output.error is None else str(output.error), "executed": output.executed, "ok": output.ok,
            "result": None if result is None else {"ok": result.ok, "message": result.message, "dry_run": result.dry_run},
        }

    def forward(self, conditioning: torch.Tensor | None = None, *, text: list[str] | str | None = None, **kwargs: Any) -> DecoderOutput:
        """``text``: the LLM's answers -> ``DecoderOutput(modality="device", outputs=[CommandResult, ...])``."""
        if text is None:
            raise TypeError("DeviceCommandDecoder decodes answer text: call it with text=[...]")
        texts = [text] if isinstance(text, str) else list(text)
        results = [self.decode_one(t) for t in texts]
        info = {"valid": sum(r.command is not None for r in results), "executed": sum(r.executed for r in results)}
        return DecoderOutput(modality=self.modality, outputs=results, info=info)
