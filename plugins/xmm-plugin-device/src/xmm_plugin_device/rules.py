"""Ground truth for device questions: deterministic rules over a :class:`DeviceWindow`.

The synthetic generator labels its examples with these functions, and users can reuse them as a rule-based
baseline. Thresholds are module constants so that the data, the docs and the tests agree.
"""

from __future__ import annotations

from xmm_plugin_device.commands import (
    ClearCache,
    CloseApp,
    DeviceCommand,
    NoAction,
    ReducePerformance,
    SetBrightness,
    SetVolume,
    StartPowerSaving,
    ToggleWifi,
)
from xmm_plugin_device.schema import DeviceStatus, DeviceWindow

BATTERY_LOW = 20.0  # percent: "is the battery low?" is yes below this
BATTERY_CRITICAL = 15.0  # percent: below this, unplugged -> start power saving
OVERHEAT_C = 45.0  # degrees Celsius: "is it overheating?" is yes above this
DRAIN_POINTS = 3.0  # the battery is "draining" when it fell by at least this many points across the window
STORAGE_FREE_MIN = 5.0  # percent free: below this -> clear the cache
MEMORY_HIGH = 90.0  # percent: above this with an app in front -> close that app
BRIGHT = 80.0  # percent: brighter than this on a weak unplugged battery -> dim the screen
BRIGHT_BATTERY = 30.0  # percent: "weak battery" for the dimming rule
DIM_TO = 30  # brightness level the dimming rule sets
LOUD = 90.0  # percent: louder than this -> lower the volume
QUIET_TO = 50  # volume level the volume rule sets
IDLE_APPS = frozenset({"home"})  # a launcher in front is not an app to close


def battery_low(s: DeviceStatus) -> bool:
    return s.battery is not None and s.battery.level < BATTERY_LOW


def charging(s: DeviceStatus) -> bool:
    return s.battery is not None and s.battery.charging


def network_type(s: DeviceStatus) -> str:
    return s.network.type if s.network is not None else "none"


def overheating(s: DeviceStatus) -> bool:
    return s.temperature is not None and s.temperature > OVERHEAT_C


def draining(w: DeviceWindow) -> bool:
    """The battery fell by at least ``DRAIN_POINTS`` from the first to the latest snapshot that report it."""
    levels = [s.battery.level for s in w.snapshots if s.battery is not None]
    return len(levels) >= 2 and levels[0] - levels[-1] >= DRAIN_POINTS


def recommended_action(w: DeviceWindow) -> DeviceCommand:
    """The one command to run now, by the first rule that fires on the latest snapshot (in priority order):

    1. overheating -> ``reduce_performance()``; 2. battery < 15 % and not charging -> ``start_power_saving()``;
    3. no network -> ``toggle_wifi(on=true)``; 4. < 5 % storage free -> ``clear_cache()``; 5. memory > 90 % with
    an app in front -> ``close_app(name=...)``; 6. screen on and brighter than 80 % with battery < 30 % and not
    charging -> ``set_brightness(level=30)``; 7. volume > 90 % -> ``set_volume(level=50)``; else ``no_action()``.
    """
    s = w.latest
    unplugged = s.battery is not None and not s.battery.charging
    if overheating(s):
        return ReducePerformance()
    if unplugged and s.battery.level < BATTERY_CRITICAL:
        return StartPowerSaving()
    if s.network is not None and s.network.type == "none":
        return ToggleWifi(on=True)
    if s.storage is not None and s.storage.free_percent < STORAGE_FREE_MIN:
        return ClearCache()
    if s.memory_load is not None and s.memory_load > MEMORY_HIGH and s.foreground_app and s.foreground_app not in IDLE_APPS:
        return CloseApp(name=s.foreground_app)
    screen_bright = s.screen is not None and s.screen.on and (s.screen.brightness or 0.0) > BRIGHT
    if screen_bright and unplugged and s.battery.level < BRIGHT_BATTERY:
        return SetBrightness(level=DIM_TO)
    if s.volume is not None and s.volume > LOUD:
        return SetVolume(level=QUIET_TO)
    return NoAction()


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def answer(task: str, w: DeviceWindow) -> str:
    """The expected answer text for ``task`` (see ``TASKS`` in :mod:`xmm_plugin_device.synthetic`)."""
    s = w.latest
    if task == "battery_low":
        return yes_no(battery_low(s))
    if task == "charging":
        return yes_no(charging(s))
    if task == "network":
        return network_type(s)
    if task == "overheating":
        return yes_no(overheating(s))
    if task == "draining":
        return yes_no(draining(w))
    if task == "action":
        return recommended_action(w).to_text()
    raise ValueError(f"unknown device task '{task}'")


def caption(w: DeviceWindow) -> str:
    """A short qualitative description of the window (the alignment-stage target): every fact the questions need."""
    s = w.latest
    parts = []
    if s.battery is not None:
        level = "low" if battery_low(s) else "ok"
        parts.append(f"battery {level}, {'charging' if s.battery.charging else 'not charging'}"
                     + (", draining" if draining(w) else ""))
    if s.temperature is not None:
        parts.append("overheating" if overheating(s) else "temperature normal")
    parts.append(f"network {network_type(s)}")
    if s.storage is not None:
        parts.append("storage full" if s.storage.free_percent < STORAGE_FREE_MIN else "storage ok")
    if s.memory_load is not None:
        parts.append("memory high" if s.memory_load > MEMORY_HIGH else "memory ok")
    if s.foreground_app:
        parts.append(f"app {s.foreground_app}")
    if s.screen is not None:
        parts.append("screen off" if not s.screen.on else ("screen bright" if (s.screen.brightness or 0) > BRIGHT else "screen dim"))
    if s.volume is not None:
        parts.append("volume loud" if s.volume > LOUD else "volume normal")
    return "; ".join(parts)
