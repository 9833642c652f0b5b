"""The `policy` verb: which rule of a bus's policy decides a message, and the rules in evaluation order.

`policy check` asks a running busd (dev.busd.Policy1.Check: root or the bus's
own user only) or, with --config-file, the configuration itself with busd's
own loader and compiler (no bus needed); `policy dump` prints the effective
rules per context. The answer names the deciding rule as written with its
file:line; exit status 0 when the message would pass, 1 when it would be
denied, so scripts can test a policy.
"""

from __future__ import annotations

import argparse
from typing import Any

from busd.launcher.policy_query import PolicyFileError, PolicyQuery, PolicyQueryError, check_file, dump_file
from busd.wire.wellknown import DRIVER_NAME, DRIVER_PATH

from .context import Context
from .errors import EXIT_FAILURE, EXIT_OK, NOT_SUPPORTED, BusError, CommandError, UsageError
from .output import Column

POLICY_INTERFACE = "dev.busd.Policy1"
USAGE = ("policy check --uid=UID [--gid=GID...] [--type=TYPE] [--destination=NAME] [--interface=I] [--member=M] "
         "[--path=P] [--error-name=E] [--receiver-uid=UID] [--config-file=FILE]\n"
         "       busdctl policy dump [--config-file=FILE]")
RULE_COLUMNS = (Column("CONTEXT"), Column("KIND"), Column("RULE"), Column("FILE:LINE"))


def offline(options: argparse.Namespace) -> bool:
    """--config-file: the verb reads the file and needs no bus."""
    return bool(options.config_file)


def query_of(options: argparse.Namespace) -> PolicyQuery:
    if options.uid is None:
        raise UsageError(f"policy check needs --uid=UID (the sender's user).\nUsage: busdctl {USAGE}")
    return PolicyQuery(uid=options.uid, gids=tuple(options.gid) if options.gid else None,
                       type=options.type or "method_call", destination=options.destination,
                       interface=options.interface, member=options.member, path=options.path or "/",
                       error_name=options.error_name, receiver_uid=options.receiver_uid)


def _variant_query(query: PolicyQuery) -> dict[str, Any]:
    """The query as dev.busd.Policy1.Check's a{sv} (dbus-next Variants), None fields left out."""
    from dbus_next import Variant

    types = {"uid": "u", "gids": "au", "type": "s", "destination": "s", "interface": "s", "member": "s",
             "path": "s", "error_name": "s", "receiver_uid": "u"}
    return {key: Variant(signature, list(value) if signature == "au" else value)
            for key, signature in types.items() if (value := getattr(query, key)) is not None}


async def _ask_bus(ctx: Context, member: str, signature: str = "", body: list | None = None) -> list[Any]:
    bus = ctx.bus
    try:
        return await bus.call_body(DRIVER_NAME, DRIVER_PATH, POLICY_INTERFACE, member, signature, body or [],
                                   action=f"Failed to call {POLICY_INTERFACE}.{member}")
    except BusError as error:
        if error.error_name in NOT_SUPPORTED:
            raise CommandError(f"{bus.choice.label[0].upper()}{bus.choice.label[1:]} cannot be asked about its "
                               f"policy ({POLICY_INTERFACE} is missing: {error.error_name}): only busd serves "
                               "it.\nHint: ask the configuration instead: busdctl policy check "
                               "--config-file=FILE ...") from None
        if error.error_name == "org.freedesktop.DBus.Error.AccessDenied":
            raise CommandError(f"{error}\nHint: only root and the bus's own user may ask a bus about its policy, "
                               "and its policy must let them, e.g. in system.d: <policy user=\"root\"><allow "
                               "send_destination=\"org.freedesktop.DBus\" send_interface=\"dev.busd.Policy1\"/>"
                               "</policy>; or ask the configuration: --config-file=FILE") from None
        raise


def _plain(value: Any) -> Any:
    value = getattr(value, "value", value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


async def policy(ctx: Context, args: list[str]) -> int:
    if not args or args[0] not in ("check", "dump") or len(args) > 1:
        raise UsageError(f"Usage: busdctl {USAGE}")
    options = ctx.options
    try:
        if args[0] == "dump":
            contexts = dump_file(options.config_file) if offline(options) else [
                {"context": c, "applies_to": whom, "rules": [{"kind": k, "rule": r, "origin": o} for k, r, o in rules]}
                for c, whom, rules in _plain((await _ask_bus(ctx, "Dump"))[0])]
            return _print_dump(ctx, contexts)
        query = query_of(options)
        if offline(options):
            answer = check_file(options.config_file, query)
        else:
            [reply] = await _ask_bus(ctx, "Check", "a{sv}", [_variant_query(query)])
            answer = _nest({key: _plain(value) for key, value in reply.items()})
    except PolicyFileError as error:
        raise CommandError(f"Invalid configuration: {error}") from None
    except PolicyQueryError as error:
        raise UsageError(f"{str(error)[:1].upper()}{str(error)[1:]}.") from None
    return _print_answer(ctx, query, answer)


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """Check's flat a{sv} (send_rule, ...) back into the offline answer's shape ({"send": {"rule": ...}})."""
    answer: dict[str, Any] = {}
    for key, value in flat.items():
        side, _, field = key.partition("_")
        if side in ("send", "receive") and field:
            answer.setdefault(side, {})[field] = value
        else:
            answer[key] = value
    return answer


def _print_answer(ctx: Context, query: PolicyQuery, answer: dict[str, Any]) -> int:
    output = ctx.output
    status = EXIT_OK if answer["allowed"] else EXIT_FAILURE
    if output.is_json:
        output.json(answer)
        return status
    verdict = "allow" if answer["allowed"] else "deny"
    output.line(output.highlight(verdict) if answer["allowed"] else output.red(verdict))
    if not answer.get("enforced", True):
        output.line("The policy allows everything: no rule is checked.")
        return status
    for side in ("send", "receive"):
        facts = answer.get(side)
        if facts is None:
            continue
        rule = f"{facts['rule'].rsplit(' (', 1)[0]} at {facts['origin']}" if facts["rule"] else \
            "no rule matches: denied by default"
        mark = "*" if answer.get("decided_by") == side else " "
        output.line(f"{mark} {side:<7}: {'allowed' if facts['allowed'] else 'denied'} by {rule}")
    if "receive" not in answer and answer["allowed"]:
        output.line("  receive: not checked (nobody receives it: give --receiver-uid=UID, or ask a running bus "
                    "where the destination has an owner)")
    if answer.get("mode") == "audit":
        output.line(output.red("Audit mode is on: this bus logs denials and delivers the message anyway."))
    return status


def _print_dump(ctx: Context, contexts: list[dict[str, Any]]) -> int:
    output = ctx.output
    if output.is_json:
        output.json(contexts)
        return EXIT_OK
    rows = [[context["context"], rule["kind"], rule["rule"], rule["origin"]]
            for context in contexts for rule in context["rules"]]
    with output.paged():
        output.table(RULE_COLUMNS, rows)
        if output.legend:
            output.line()
            output.line("Contexts in evaluation order; within the rules of a connection the last that matches a "
                        "message decides, and none matching denies.")
    return EXIT_OK


__all__ = ["USAGE", "offline", "policy"]
