"""Attribute values of configuration elements, checked as dbus-daemon does: booleans, fd counts, users, groups."""

from __future__ import annotations

import grp
import pwd

from .errors import Reject
from .model import MAX_MESSAGE_UNIX_FDS


def lookup_uid(user: str) -> int | None:
    """The uid of a user name or decimal uid; None if there is no such user."""
    if user.isascii() and user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def lookup_gid(group: str) -> int | None:
    """The gid of a group name or decimal gid; None if there is no such group."""
    if group.isascii() and group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None


def wildcard(value: str | None) -> str | None:
    """In a rule "*" means any value, which the model spells None."""
    return None if value == "*" else value


def true_false(attrs: dict[str, str], name: str) -> bool | None:
    """A "true"/"false" attribute; None when it is absent."""
    value = attrs.get(name)
    if value is None:
        return None
    if value not in ("true", "false"):
        raise Reject(f'Bad value "{value}" for {name} attribute, must be true or false')
    return value == "true"


def yes_no(attrs: dict[str, str], name: str) -> bool:
    """A "yes"/"no" attribute, "no" when absent."""
    value = attrs.get(name, "no")
    if value not in ("yes", "no"):
        raise Reject(f'{name} attribute must have value "yes" or "no"')
    return value == "yes"


def fd_count(attrs: dict[str, str], name: str, default: int) -> int:
    """A max_fds/min_fds attribute: a number of fds a message may carry."""
    value = attrs.get(name)
    if value is None:
        return default
    try:
        number = int(value.strip(), 10)
    except ValueError:
        number = -1
    if not 0 <= number <= MAX_MESSAGE_UNIX_FDS:
        raise Reject(f'Bad value "{value}" for {name} attribute, '
                      f"must be an integer in range 0 to {MAX_MESSAGE_UNIX_FDS} inclusive")
    return number


def message_type(value: str | None) -> str | None:
    """A send_type/receive_type value; None for any type."""
    value = wildcard(value)
    if value is not None and value not in ("method_call", "method_return", "error", "signal"):
        raise Reject(f'Bad message type "{value}"')
    return value


def check_attributes(element: str, attrs: dict[str, str], allowed: tuple[str, ...] = ()) -> None:
    """Reject an attribute the element does not take."""
    for name in attrs:
        if name not in allowed:
            raise Reject(f'Attribute "{name}" is invalid on <{element}> element in this context')
