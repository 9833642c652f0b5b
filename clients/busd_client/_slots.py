"""Slots: call a user function with a signal's arguments, converted by its type hints."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

from ._router import Router
from .dbus_types import is_message_info, message_info, resolve_hints

log = logging.getLogger("busd_client")


class SlotInvoker:
    """Calls one slot with a signal's arguments, converted by the slot's (or the interface's) type hints."""

    def __init__(self, router: Router, slot: Callable[..., Any], interface_hints: Sequence[Any] = ()) -> None:
        if not callable(slot):
            raise TypeError(f"a slot must be callable, got {slot!r}")
        self.router = router
        self.slot = slot
        self.info_parameter: str | None = None
        self.positional_limit: int | None = None
        hints = list(interface_hints)
        try:
            parameters = list(inspect.signature(slot).parameters.values())
        except (TypeError, ValueError):  # some builtins have no signature: pass everything
            parameters = []
            self.positional_limit = None
        else:
            try:
                resolved = resolve_hints(slot)
            except TypeError:
                resolved = {}
            positional = []
            variadic = False
            for parameter in parameters:
                annotation = resolved.get(parameter.name, parameter.annotation)
                if is_message_info(annotation):
                    self.info_parameter = parameter.name
                elif parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
                    positional.append(resolved.get(parameter.name))
                elif parameter.kind is parameter.VAR_POSITIONAL:
                    variadic = True
            # Like Qt, a slot may take fewer arguments than the signal carries.
            self.positional_limit = None if variadic else len(positional)
            for index, hint in enumerate(positional):
                if hint is not None:
                    if index < len(hints):
                        hints[index] = hint
                    else:
                        hints.extend([None] * (index - len(hints)) + [hint])
        self.hints = tuple(hints)
        self._codec = router.codec
        self._decoders: dict[str, Any] = {}

    def __call__(self, message: Any) -> None:
        signature = message.signature
        try:
            try:
                decode = self._decoders[signature]
            except KeyError:
                decode = self._decoders[signature] = self._codec.body_decoder(signature, self.hints)
            args = decode(message.body, message.unix_fds) if decode else message.body
        except Exception:
            log.exception("cannot convert the arguments of %s.%s for slot %r",
                          message.interface, message.member, self.slot)
            return
        if self.positional_limit is not None and len(args) > self.positional_limit:
            args = args[:self.positional_limit]
        try:
            if self.info_parameter is None:
                result = self.slot(*args)
            else:
                result = self.slot(*args, **{self.info_parameter: message_info(message)})
        except Exception:
            log.exception("slot %r raised on %s.%s", self.slot, message.interface, message.member)
            return
        if result is not None and inspect.isawaitable(result):
            self.router.spawn(result)
