"""`busdctl policy check/dump --config-file=FILE`: a configuration's policy asked offline, as busd would load it.

The file is read by busd's own loader (includes, includedirs, FILE:LINE
errors) and compiled by the launcher, so the answer is the one a busd started
on that file gives through dev.busd.Policy1; no bus is needed.
"""

from __future__ import annotations

from typing import Any

from ..bus.policy import ConfigPolicy
from ..bus.policy_query import PolicyQuery, PolicyQueryError, check, dump
from ..config.errors import ConfigError
from ..config.loader import load_config
from .policy import policy_mode, policy_rules


class PolicyFileError(Exception):
    """The configuration cannot be read or is invalid: FILE:LINE: reason."""


def _load(path: str) -> tuple[ConfigPolicy, str]:
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise PolicyFileError(str(exc)) from None
    except OSError as exc:
        raise PolicyFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    return ConfigPolicy(policy_rules(config)), policy_mode(config)


def check_file(path: str, query: PolicyQuery) -> dict[str, Any]:
    """What a busd on `path` decides for `query` (the receiver's names: only the destination)."""
    policy, mode = _load(path)
    answer = check(policy, query)
    answer["mode"] = mode if policy.enforced else "none"
    return answer


def dump_file(path: str) -> list[dict[str, Any]]:
    return dump(_load(path)[0])


__all__ = ["PolicyFileError", "PolicyQuery", "PolicyQueryError", "check_file", "dump_file"]
