"""``DeviceCommand``: the actions an LLM may ask a device to take, their canonical text form and the parser.

The canonical text form is a call, ``set_brightness(level=30)``, ``toggle_wifi(on=true)``, ``close_app(name="game")``,
``no_action()``: short, unambiguous and easy for a small LLM to emit. :func:`parse_command` also accepts the JSON
form ``{"action": "set_brightness", "level": 30}``. Anything else - an unknown action, a missing or out-of-range
argument, trailing prose - raises :class:`CommandError`; an invalid command is never executed.

New actions: subclass :class:`DeviceCommand` with an ``action: Literal["name"] = "name"`` field; the subclass is
registered by its action name when the class is created.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, ValidationError
from xmm.errors import SchemaError

from xmm_plugin_device.loading import describe_error

COMMANDS: dict[str, type[DeviceCommand]] = {}

_CALL = re.compile(r"^([a-z_][a-z0-9_]*)\s*\((.*)\)$", re.DOTALL)
_FENCE = re.compile(r"^```[a-z]*\s*(.*?)\s*```$", re.DOTALL)
_FIND = re.compile(r"\b([a-z_][a-z0-9_]*)\s*\(")


class CommandError(SchemaError):
    """The LLM's answer is not a valid device command; the message says which part is wrong."""

    def __init__(self, message: str, *, text: str | None = None, field: str | None = None) -> None:
        self.text = text
        self.field = field
        shown = text if text is None or len(text) <= 80 else text[:77] + "..."
        super().__init__(message, source=shown, modality="device command")


class DeviceCommand(BaseModel):
    """Base of every command. ``action`` names it; the other fields are its arguments."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: str
    description: ClassVar[str] = ""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        default = cls.model_fields["action"].default
        if not isinstance(default, str) or not default:
            raise TypeError(f"{cls.__name__} must declare `action: Literal['name'] = 'name'`")
        if default in COMMANDS and COMMANDS[default].__qualname__ != cls.__qualname__:
            raise TypeError(f"device command action '{default}' is already defined by {COMMANDS[default].__name__}")
        COMMANDS[default] = cls

    def arguments(self) -> dict[str, Any]:
        return self.model_dump(exclude={"action"})

    def to_text(self) -> str:
        """The canonical call form, arguments in declaration order: ``set_brightness(level=30)``."""
        args = ", ".join(f"{k}={_literal(v)}" for k, v in self.arguments().items())
        return f"{self.action}({args})"

    def __str__(self) -> str:
        return self.to_text()


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number 0-100, not true/false")
    return value


Level = Annotated[int, BeforeValidator(_no_bool), Field(ge=0, le=100, description="percent")]


class SetBrightness(DeviceCommand):
    action: Literal["set_brightness"] = "set_brightness"
    level: Level
    description: ClassVar[str] = "set the screen brightness to `level` percent"


class SetVolume(DeviceCommand):
    action: Literal["set_volume"] = "set_volume"
    level: Level
    description: ClassVar[str] = "set the media volume to `level` percent"


class ToggleWifi(DeviceCommand):
    action: Literal["toggle_wifi"] = "toggle_wifi"
    on: StrictBool
    description: ClassVar[str] = "turn Wi-Fi on or off"


class ToggleBluetooth(DeviceCommand):
    action: Literal["toggle_bluetooth"] = "toggle_bluetooth"
    on: StrictBool
    description: ClassVar[str] = "turn Bluetooth on or off"


class StartPowerSaving(DeviceCommand):
    action: Literal["start_power_saving"] = "start_power_saving"
    description: ClassVar[str] = "switch on the power-saving mode"


class ReducePerformance(DeviceCommand):
    action: Literal["reduce_performance"] = "reduce_performance"
    description: ClassVar[str] = "throttle the CPU/GPU to cool the device down"


class EnableCooling(DeviceCommand):
    action: Literal["enable_cooling"] = "enable_cooling"
    description: ClassVar[str] = "switch on active cooling (fan, cooling profile)"


class CloseApp(DeviceCommand):
    action: Literal["close_app"] = "close_app"
    name: str = Field(min_length=1, max_length=64)
    description: ClassVar[str] = "close the app called `name`"


class ClearCache(DeviceCommand):
    action: Literal["clear_cache"] = "clear_cache"
    description: ClassVar[str] = "delete cached files to free storage"


class NoAction(DeviceCommand):
    action: Literal["no_action"] = "no_action"
    description: ClassVar[str] = "nothing needs to be done"


def command_from_dict(data: dict[str, Any], *, text: str | None = None) -> DeviceCommand:
    """Validate ``{"action": ..., **arguments}`` against the registered command classes."""
    action = data.get("action")
    if not isinstance(action, str):
        raise CommandError("a command needs an 'action' string", text=text, field="action")
    cls = COMMANDS.get(action)
    if cls is None:
        raise CommandError(f"unknown action '{action}'; known: {', '.join(sorted(COMMANDS))}", text=text, field="action")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "action"
        msg = "is not an argument of this action" if err["type"] == "extra_forbidden" else describe_error(err)
        raise CommandError(f"{action}: argument '{field}' {msg}", text=text, field=field) from e


def parse_command(text: str) -> DeviceCommand:
    """Parse one command in canonical call form or JSON (optionally in a code fence, with a trailing period)."""
    if not isinstance(text, str):
        raise CommandError(f"expected command text, got {type(text).__name__}")
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    body = body.rstrip(".;").strip()
    if not body:
        raise CommandError("the answer is empty", text=text)
    if body.startswith("{"):
        try:
            data = json.loads(body)
        except json.JSONDecodeError as e:
            raise CommandError(f"invalid JSON command: {e.msg} at column {e.colno}", text=text) from e
        if not isinstance(data, dict):
            raise CommandError("a JSON command must be an object", text=text)
        return command_from_dict(data, text=text)
    m = _CALL.match(body)
    if not m:
        raise CommandError("not a command; expected e.g. set_brightness(level=30) or no_action()", text=text)
    action, arg_text = m.group(1), m.group(2)
    return command_from_dict({"action": action, **_parse_args(arg_text, text)}, text=text)


def find_command(text: str) -> DeviceCommand:
    """Lenient: the first ``name(...)`` call with a known action anywhere in ``text``; invalid -> CommandError."""
    for m in _FIND.finditer(text):
        if m.group(1) not in COMMANDS:
            continue
        close = text.find(")", m.end())
        if close < 0:
            break
        return parse_command(text[m.start() : close + 1])
    return parse_command(text)  # no known call: the strict parser says what is wrong


_TRUE_FALSE = {"true": True, "false": False}


def _parse_args(arg_text: str, text: str) -> dict[str, Any]:
    """``level=30, on=true, name="game"`` -> dict, with Python-literal values (true/false accepted)."""
    if not arg_text.strip():
        return {}
    try:
        call = ast.parse(f"f({arg_text})", mode="eval").body
    except SyntaxError as e:
        raise CommandError(f"cannot read the arguments '{arg_text}': {e.msg}", text=text) from e
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "f"):
        # e.g. "a(x=1) and b(y=2)": the parenthesised part is not one argument list
        raise CommandError("expected exactly one command and nothing else", text=text)
    if call.args:
        raise CommandError("arguments must be named, e.g. level=30", text=text)
    out: dict[str, Any] = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise CommandError("'**' arguments are not allowed", text=text)
        node = kw.value
        if isinstance(node, ast.Name) and node.id.lower() in _TRUE_FALSE:
            out[kw.arg] = _TRUE_FALSE[node.id.lower()]
            continue
        try:
            # literal_eval evaluates constants only: no names, calls or attribute access can run
            out[kw.arg] = ast.literal_eval(node)
        except ValueError as e:
            raise CommandError(f"argument '{kw.arg}' must be a literal (number, true/false or a quoted string)", text=text, field=kw.arg) from e
    return out
