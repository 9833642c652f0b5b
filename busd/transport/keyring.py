"""The DBUS_COOKIE_SHA1 keyrings in ~/.dbus-keyrings: reading, adding and expiring cookies, as dbus-daemon does.

busd.wire's SASL machines touch no files; they reach these through the
CookieStore interface, which KeyringDirectory provides for one user's keyrings.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import stat
import time
from collections.abc import Callable, Iterator

from ..wire.sasl import DEFAULT_COOKIE_CONTEXT, Cookie, KeyringError, hex_decode, validate_cookie_context


def default_keyring_dir(uid: int | None = None) -> str:
    """~/.dbus-keyrings of `uid` (default: the effective user), from the password database like dbus."""
    uid = os.geteuid() if uid is None else uid
    try:
        home = pwd.getpwuid(uid).pw_dir
    except KeyError:
        home = os.path.expanduser("~")
    return os.path.join(home, ".dbus-keyrings")


class CookieKeyring:
    """The DBUS_COOKIE_SHA1 secrets of one context: the file <directory>/<context>.

    Clients only read it. A server adds a cookie when none is recent, under the
    lock file <context>.lock, dropping expired ones; the timings are dbus-daemon's.
    """

    NEW_COOKIE_AFTER = 5 * 60            # a cookie older than this is not offered in new challenges
    EXPIRE_AFTER = NEW_COOKIE_AFTER + 2 * 60  # ...and is removed after this
    MAX_CLOCK_SKEW = 5 * 60              # cookies dated further in the future are dropped
    MAX_COOKIES = 256
    LOCK_ATTEMPTS = 32                   # dbus-daemon waits 32 x 250 ms, then takes the lock as stale
    LOCK_RETRY_SECONDS = 0.25
    SECRET_BYTES = 24

    def __init__(self, directory: str, context: str = DEFAULT_COOKIE_CONTEXT,
                 clock: Callable[[], float] = time.time):
        validate_cookie_context(context)
        self.directory = directory
        self.path = os.path.join(directory, context)
        self.lock_path = self.path + ".lock"
        self._clock = clock

    def _now(self) -> int:
        return int(self._clock())

    def check_directory(self) -> None:
        """Raise KeyringError unless the directory is ours and private (no access for group or others)."""
        try:
            info = os.stat(self.directory)
        except OSError as error:
            raise KeyringError(f"cannot use keyring directory {self.directory}: {error.strerror}") from None
        if not stat.S_ISDIR(info.st_mode):
            raise KeyringError(f"keyring {self.directory} is not a directory")
        if info.st_uid != os.geteuid():
            raise KeyringError(f"keyring directory {self.directory} belongs to uid {info.st_uid}, "
                               f"not to us (uid {os.geteuid()}); remove it or fix its owner")
        if info.st_mode & 0o077:
            raise KeyringError(f"keyring directory {self.directory} is open to other users "
                               f"(mode {stat.S_IMODE(info.st_mode):03o}); run chmod 700 {self.directory}")

    def cookies(self) -> list[Cookie]:
        """The valid, unexpired cookies in the file (none if it does not exist)."""
        self.check_directory()
        try:
            with open(self.path, "rb") as keyring_file:
                contents = keyring_file.read()
        except FileNotFoundError:
            return []
        except OSError as error:
            raise KeyringError(f"cannot read keyring {self.path}: {error.strerror}") from None
        return self._parse(contents)

    def _parse(self, contents: bytes) -> list[Cookie]:
        if not contents.isascii():
            return []  # dbus-daemon ignores a keyring with non-ASCII content entirely
        now = self._now()
        cookies: list[Cookie] = []
        for line in contents.decode("ascii").splitlines():
            if len(cookies) >= self.MAX_COOKIES:
                break
            fields = line.split()
            if len(fields) != 3 or not fields[0].isdigit() or not re.fullmatch(r"-?[0-9]+", fields[1]):
                continue  # malformed lines are skipped, as dbus-daemon does
            cookie_id, created, secret = int(fields[0]), int(fields[1]), hex_decode(fields[2])
            if cookie_id >= 2**31 or not secret:
                continue
            if created < 0 or created > now + self.MAX_CLOCK_SKEW or created < now - self.EXPIRE_AFTER:
                continue
            cookies.append(Cookie(cookie_id, created, secret.hex()))
        return cookies

    def find(self, cookie_id: int) -> Cookie | None:
        """The cookie with this id, or None."""
        return next((cookie for cookie in self.cookies() if cookie.id == cookie_id), None)

    def _recent(self, cookies: list[Cookie]) -> Cookie | None:
        threshold = self._now() - self.NEW_COOKIE_AFTER
        return next((cookie for cookie in cookies if cookie.created > threshold), None)

    def best_cookie(self) -> Cookie:
        """A recent cookie for a new challenge, adding one to the file if none is recent (server side)."""
        with contextlib.suppress(OSError):
            os.mkdir(self.directory, 0o700)  # fails when it exists; check_directory() reports real problems
        cookie = self._recent(self.cookies())
        if cookie is not None:
            return cookie
        with self._locked():
            cookies = self.cookies()[:self.MAX_COOKIES - 1]  # re-read: another server may have added one
            cookie = self._recent(cookies)
            if cookie is None:
                cookie = self._new_cookie(cookies)
                self._save(cookies + [cookie])
        return cookie

    def _new_cookie(self, existing: list[Cookie]) -> Cookie:
        import secrets  # here, not at the top: only a cookie exchange needs it (it imports hashlib)

        taken = {cookie.id for cookie in existing}
        cookie_id = secrets.randbits(31)
        while cookie_id in taken:
            cookie_id = secrets.randbits(31)
        return Cookie(cookie_id, self._now(), secrets.token_bytes(self.SECRET_BYTES).hex())

    def _save(self, cookies: list[Cookie]) -> None:
        text = "".join(f"{cookie.id} {cookie.created} {cookie.secret_hex}\n" for cookie in cookies)
        temporary = f"{self.path}.{os.urandom(4).hex()}.tmp"
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as keyring_file:
                keyring_file.write(text)
            os.replace(temporary, self.path)  # readers see the old file or the new one, never half
        except OSError as error:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise KeyringError(f"cannot write keyring {self.path}: {error.strerror}") from None

    def _try_lock(self) -> bool:
        try:
            os.close(os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            return False
        except OSError as error:
            raise KeyringError(f"cannot create lock file {self.lock_path}: {error.strerror}") from None
        return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        for _ in range(self.LOCK_ATTEMPTS):
            if self._try_lock():
                break
            time.sleep(self.LOCK_RETRY_SECONDS)  # no event to wait for: the lock is a plain file
        else:
            # Like dbus-daemon: a lock held this long belongs to a process that died.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lock_path)
            if not self._try_lock():
                raise KeyringError(f"lock file {self.lock_path} is held by someone else; "
                                   "remove it if no D-Bus server is running")
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lock_path)


class KeyringDirectory:
    """A CookieStore over the keyring files <directory>/<context> of one user.

    With no `directory`, the keyrings are those of `uid` (default: the effective
    user) in ~/.dbus-keyrings, looked up each time a cookie is needed.
    """

    def __init__(self, directory: str | None = None, uid: int | None = None) -> None:
        self.directory = directory
        self.uid = uid

    def keyring(self, context: str) -> CookieKeyring:
        directory = self.directory if self.directory is not None else default_keyring_dir(self.uid)
        return CookieKeyring(directory, context)

    def best_cookie(self, context: str) -> Cookie:
        return self.keyring(context).best_cookie()

    def find(self, context: str, cookie_id: int) -> Cookie | None:
        return self.keyring(context).find(cookie_id)


__all__ = ["CookieKeyring", "KeyringDirectory", "default_keyring_dir"]
