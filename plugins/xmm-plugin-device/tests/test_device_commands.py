"""Device commands: canonical text, parsing, validation, the decoder and executors."""

from __future__ import annotations

from typing import Literal

import pytest
from xmm.errors import SchemaError
from xmm_plugin_device.commands import (
    COMMANDS,
    CloseApp,
    CommandError,
    DeviceCommand,
    NoAction,
    SetBrightness,
    ToggleWifi,
    find_command,
    parse_command,
)
from xmm_plugin_device.decoder import DeviceCommandDecoder
from xmm_plugin_device.executor import DryRunExecutor, ExecutionResult, Executor


@pytest.mark.parametrize(
    "command",
    [SetBrightness(level=30), ToggleWifi(on=False), CloseApp(name='my "quoted" app'), NoAction()],
)
def test_canonical_text_roundtrips(command):
    text = command.to_text()
    assert parse_command(text) == command
    assert parse_command(command.model_dump_json()) == command  # the JSON form parses too


def test_every_builtin_action_roundtrips():
    samples = {"level": 42, "on": True, "name": "game"}
    for action, cls in COMMANDS.items():
        args = {k: samples[k] for k in cls.model_fields if k != "action"}
        cmd = cls(**args)
        assert cmd.action == action and parse_command(cmd.to_text()) == cmd


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("set_brightness(level=30)", "set_brightness(level=30)"),
        ("  toggle_wifi(on=true).\n", "toggle_wifi(on=true)"),
        ("toggle_wifi( on = True )", "toggle_wifi(on=true)"),
        ("```\nno_action()\n```", "no_action()"),
        ('{"action": "set_volume", "level": 20}', "set_volume(level=20)"),
        ("set_volume(level=20.0)", "set_volume(level=20)"),
    ],
)
def test_accepted_forms(text, expected):
    assert parse_command(text).to_text() == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("set_brightness(level=130)", "argument 'level' must be <= 100"),
        ("set_brightness()", "argument 'level' is required"),
        ("set_brightness(level=true)", "not true/false"),
        ("toggle_wifi(on=1)", "argument 'on'"),
        ("launch_rockets()", "unknown action 'launch_rockets'"),
        ("no_action(force=true)", "'force' is not an argument"),
        ("set_brightness(30)", "arguments must be named"),
        ("set_brightness(level=__import__('os'))", "must be a literal"),
        ("Sure! set_brightness(level=30)", "not a command"),
        ("set_brightness(level=30) and toggle_wifi(on=true)", "exactly one command"),
        ('{"level": 3}', "needs an 'action'"),
        ("{broken", "invalid JSON"),
        ("", "empty"),
    ],
)
def test_invalid_commands_raise_typed_errors(text, words):
    with pytest.raises(CommandError, match="device command") as info:
        parse_command(text)
    assert words in str(info.value)
    assert isinstance(info.value, SchemaError)


def test_lenient_search_finds_the_first_known_call():
    assert find_command("Sure, I will run close_app(name=\"game\") now.") == CloseApp(name="game")
    with pytest.raises(CommandError, match="must be <= 100"):
        find_command("ok: set_brightness(level=300)")
    with pytest.raises(CommandError, match="not a command"):
        find_command("print(1) and nothing else")


class _Recorder:
    def __init__(self):
        self.seen = []

    def execute(self, command: DeviceCommand) -> ExecutionResult:
        self.seen.append(command)
        return ExecutionResult(command, ok=command.action != "close_app", message="done")


def test_decoder_executes_valid_commands_only():
    rec = _Recorder()
    assert isinstance(rec, Executor)
    dec = DeviceCommandDecoder(executor=rec)
    out = dec(text=["set_brightness(level=30)", "set_brightness(level=300)", "rm -rf /", 'close_app(name="game")'])
    assert out.modality == "device" and len(out.outputs) == 4
    ok, too_bright, junk, refused = out.outputs
    assert ok.ok and ok.executed and ok.command == SetBrightness(level=30)
    assert too_bright.command is None and not too_bright.executed and "level" in str(too_bright.error)
    assert junk.error is not None and not junk.executed
    assert refused.executed and not refused.ok
    assert rec.seen == [SetBrightness(level=30), CloseApp(name="game")]
    assert out.info == {"valid": 2, "executed": 2}


def test_default_executor_is_a_logging_dry_run(caplog):
    dec = DeviceCommandDecoder()
    assert isinstance(dec.executor, DryRunExecutor) and dec.input_kind == "text"
    with caplog.at_level("INFO", logger="xmm_plugin_device.executor"):
        res = dec(text="start_power_saving()").outputs[0]
    assert res.result.dry_run and res.result.ok
    assert "would execute start_power_saving()" in caplog.text
    assert [c.action for c in dec.executor.history] == ["start_power_saving"]
    parse_only = DeviceCommandDecoder(execute=False)
    assert not parse_only(text=["no_action()"]).outputs[0].executed
    with pytest.raises(TypeError, match="execute"):
        DeviceCommandDecoder(executor=object())
    with pytest.raises(TypeError, match="text="):
        dec()


def test_users_add_commands_by_subclassing():
    class SetRefreshRate(DeviceCommand):
        action: Literal["set_refresh_rate"] = "set_refresh_rate"
        hz: int

    try:
        assert parse_command("set_refresh_rate(hz=120)") == SetRefreshRate(hz=120)
        assert SetRefreshRate(hz=60).to_text() == "set_refresh_rate(hz=60)"
        with pytest.raises(TypeError, match="already defined"):
            type("Dup", (DeviceCommand,), {"__annotations__": {"action": Literal["no_action"]}, "action": "no_action"})
    finally:
        COMMANDS.pop("set_refresh_rate", None)
