"""The server's log settings in the shape of Triton's logging extension (``GET``/``POST
/v2/logging``, gRPC ``LogSettings``; ``tritonclient``'s ``get_log_settings`` and
``update_log_settings``), so an operator can turn verbose logging on and off without a restart.

ModelYard logs with Python's ``logging`` to standard error (the root logger, at
``MODELYARD_LOG_LEVEL`` from the start). The settings map onto the root logger's level:

* ``log_verbose_level`` > 0: ``DEBUG``;
* else the lowest of ``log_info`` (``INFO``), ``log_warning`` (``WARNING``), ``log_error``
  (``ERROR``) that is on; all off: nothing is logged.

Reading them back gives what the level lets through (``log_info`` is true when the level is
``INFO`` or lower, and so on). ``log_file`` is always ``""`` (standard error; a file is the
process manager's job) and ``log_format`` is ``"default"``: other values are refused. Anyone who
may read the server's metadata reads them; only administrators change them (``server:manage``):
the log is every tenant's.
"""

from __future__ import annotations

import logging
from typing import Any

from modelyard.core.principal import Principal
from modelyard.errors import InvalidInput

__all__ = ["LogSettings"]

#: the level below which nothing is logged when every kind is off
_OFF = logging.CRITICAL + 10
_FLAGS = (("log_info", logging.INFO), ("log_warning", logging.WARNING), ("log_error", logging.ERROR))
_KNOWN = ("log_file", "log_info", "log_warning", "log_error", "log_verbose_level", "log_format")


class LogSettings:
    """See the module. ``logger``: the one whose level the settings are (the root by default)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger()

    def get(self, principal: Principal) -> dict[str, Any]:
        principal.require("server:read")
        return self._current()

    def update(self, principal: Principal, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply ``changes`` (any of the settings) and return all of them; nothing changes when
        one is refused (:class:`InvalidInput` naming it)."""
        principal.require("server:manage")
        unknown = sorted(set(changes) - set(_KNOWN))
        if unknown:
            raise InvalidInput(
                f"unknown log setting(s) {', '.join(unknown)}; expected {', '.join(_KNOWN)}",
                details={"param": unknown[0]},
            )
        wanted = {**self._current(), **changes}
        for name, _ in _FLAGS:
            if not isinstance(wanted[name], bool):
                raise InvalidInput(f"{name} must be true or false", details={"param": name})
        verbose = wanted["log_verbose_level"]
        if isinstance(verbose, bool) or not isinstance(verbose, int) or verbose < 0:
            raise InvalidInput("log_verbose_level must be a whole number >= 0", details={"param": "log_verbose_level"})
        if wanted["log_file"] != "":
            raise InvalidInput(
                'ModelYard logs to standard error: log_file must be "" (redirect the server\'s output to keep a file)',
                details={"param": "log_file"},
            )
        if wanted["log_format"] != "default":
            raise InvalidInput('log_format must be "default"', details={"param": "log_format"})
        if verbose > 0:
            level = logging.DEBUG
        else:
            level = next((lvl for name, lvl in _FLAGS if wanted[name]), _OFF)
        self._logger.setLevel(level)
        return self._current()

    def _current(self) -> dict[str, Any]:
        level = self._logger.getEffectiveLevel()
        return {
            "log_file": "",
            **{name: level <= lvl for name, lvl in _FLAGS},
            "log_verbose_level": 1 if level <= logging.DEBUG else 0,
            "log_format": "default",
        }
