"""<allow> and <deny>: which kind of rule the attributes make, with dbus-daemon's checks, and the rule's fields."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .attributes import fd_count, lookup_gid, lookup_uid, message_type, true_false, wildcard
from .errors import Reject
from .model import MAX_MESSAGE_UNIX_FDS

_SEND_ATTRIBUTES = ("send_interface", "send_member", "send_error", "send_destination", "send_destination_prefix",
                    "send_path", "send_type", "send_broadcast", "send_requested_reply")
_RECEIVE_ATTRIBUTES = ("receive_interface", "receive_member", "receive_error", "receive_sender", "receive_path",
                       "receive_type", "receive_requested_reply")
RULE_ATTRIBUTES = (*_SEND_ATTRIBUTES, *_RECEIVE_ATTRIBUTES, "eavesdrop", "max_fds", "min_fds",
                   "own", "own_prefix", "user", "group", "log")


def rule_kind(element: str, attrs: dict[str, str]) -> str:
    """Which kind of rule the attributes make, with dbus-daemon's combination checks."""
    has = attrs.__contains__
    any_send = any(map(has, _SEND_ATTRIBUTES))
    # <allow eavesdrop="true"/> alone is a receive rule; with send_ attributes it stays a send rule.
    any_receive = any(map(has, _RECEIVE_ATTRIBUTES)) or (not any_send and has("eavesdrop"))
    any_message = any_send or any_receive or has("eavesdrop") or has("max_fds") or has("min_fds")
    others = [name for name in ("own", "own_prefix", "user", "group") if has(name)]
    if not (any_send or any_receive or others):
        raise Reject(f"Element <{element}> must have one or more attributes")
    if (has("send_member") and not (has("send_interface") or has("send_path"))) or \
            (has("receive_member") and not (has("receive_interface") or has("receive_path"))):
        raise Reject(f"On element <{element}>, if you specify a member you must specify an interface or a path. "
                      "Keep in mind that not all messages have an interface field.")
    if any_message + len(others) > 1:
        raise Reject(f"Invalid combination of attributes on element <{element}>: own, own_prefix, user, group "
                      "and the message-related attributes cannot be combined")
    if any_send and any_receive:
        raise Reject(f"Invalid combination of attributes on element <{element}>: "
                      "send and receive attributes cannot be combined")
    if (has("send_member") or has("send_interface")) and has("send_error"):
        raise Reject(f"Invalid combination of attributes on element <{element}>: "
                      "send_error cannot be combined with send_member or send_interface")
    if has("send_destination") and has("send_destination_prefix"):
        raise Reject(f"Invalid combination of attributes on element <{element}>: "
                      "send_destination cannot be combined with send_destination_prefix")
    if (has("receive_member") or has("receive_interface")) and has("receive_error"):
        raise Reject(f"Invalid combination of attributes on element <{element}>: "
                      "receive_error cannot be combined with receive_member or receive_interface")
    if any_send:
        return "send"
    if any_receive:
        return "receive"
    return others[0].removesuffix("_prefix")


def _send_fields(attrs: dict[str, str]) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "send_type": message_type(attrs.get("send_type")),
        "eavesdrop": bool(true_false(attrs, "eavesdrop")),
        "send_broadcast": true_false(attrs, "send_broadcast"),
    }
    if fields["send_broadcast"] and wildcard(attrs.get("send_destination")) is not None:
        raise Reject(f'Rule with send_broadcast="true" and send_destination="{attrs["send_destination"]}" '
                      "cannot match anything")
    fields["send_requested_reply"] = true_false(attrs, "send_requested_reply")
    fields["max_fds"] = fd_count(attrs, "max_fds", MAX_MESSAGE_UNIX_FDS)
    fields["min_fds"] = fd_count(attrs, "min_fds", 0)
    fields["log"] = attrs.get("log") == "true"
    for name in ("send_interface", "send_member", "send_error", "send_destination", "send_path"):
        fields[name] = wildcard(attrs.get(name))
    fields["send_destination_prefix"] = attrs.get("send_destination_prefix")
    return fields


def _receive_fields(attrs: dict[str, str]) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "receive_type": message_type(attrs.get("receive_type")),
        "eavesdrop": bool(true_false(attrs, "eavesdrop")),
        "receive_requested_reply": true_false(attrs, "receive_requested_reply"),
        "max_fds": fd_count(attrs, "max_fds", MAX_MESSAGE_UNIX_FDS),
        "min_fds": fd_count(attrs, "min_fds", 0),
    }
    for name in ("receive_interface", "receive_member", "receive_error", "receive_sender", "receive_path"):
        fields[name] = wildcard(attrs.get(name))
    return fields


def _own_fields(attrs: dict[str, str]) -> dict[str, Any]:
    if "own" in attrs:
        return {"own": wildcard(attrs["own"])}
    return {"own_prefix": attrs["own_prefix"]}


def _identity_fields(attr: str, id_attr: str, lookup: Callable[[str], int | None]) -> Callable[..., Any]:
    def fields(attrs: dict[str, str]) -> dict[str, Any] | None:
        name = wildcard(attrs[attr])
        if name is None:
            return {}
        number = lookup(name)
        return None if number is None else {attr: name, id_attr: number}
    return fields


# rule kind -> the PolicyRule fields from the attributes (None: an unknown user or group, the rule is ignored)
RULE_FIELDS: dict[str, Callable[[dict[str, str]], dict[str, Any] | None]] = {
    "send": _send_fields,
    "receive": _receive_fields,
    "own": _own_fields,
    "user": _identity_fields("user", "uid", lookup_uid),
    "group": _identity_fields("group", "gid", lookup_gid),
}
