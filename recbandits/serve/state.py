"""A service's state directory: creating it, locking it, and checking it before anything expensive starts.

    <state_dir>/                 0700
        service.json             the policy fields (fixed for the life of the dir), origin
        events.jsonl             the event log (eventlog.py)
        lock                     flock of the live service (its pid)
        admin.token              the admin API's bearer token (when no --admin-token-file is given)
        snapshots/initial.npz    the starting policy; snapshots/v*.npz: policy versions (store.py)

Every file is 0600 and every directory 0700: the log holds users' contexts and ids.

``check_state_dir`` runs in the process that starts the service, before Ray: a state dir that cannot be served
from (not writable, locked by a live service, a corrupt log line, a missing or unreadable starting policy)
fails there with one line naming the file (and line) and what the operator can do, instead of a replica that
fails to start inside Ray with the cause in Ray's logs.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from recbandits.serve.config import POLICY_FIELDS, SERVICE_FILE, ServeConfig
from recbandits.serve.eventlog import LOG_FILE
from recbandits.serve.store import SNAPSHOT_DIR, SnapshotStore, read_npz, write_json_atomic, write_npz_atomic

FILE_MODE = 0o600
DIR_MODE = 0o700
LOCK_FILE = "lock"
ADMIN_TOKEN_FILE = "admin.token"


class StateDirError(ValueError):
    """The state dir cannot be served from; the message says which file and what to do."""


def read_service_file(state_dir: Path) -> dict[str, Any] | None:
    path = Path(state_dir) / SERVICE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def secure_state_dir(state_dir: Path) -> None:
    """Directories 0700, files 0600 (the log and snapshots hold users' data); idempotent."""
    for path in (state_dir, *state_dir.rglob("*")):
        try:
            if path.is_symlink():
                continue
            mode = DIR_MODE if path.is_dir() else FILE_MODE
            if path.stat().st_mode & 0o777 != mode:
                path.chmod(mode)
        except FileNotFoundError:  # a temporary file renamed meanwhile
            continue


RUN_USERS_FILE = "run_users.npz"
RUN_TITLES_FILE = "run_titles.json"


def with_run_catalogue(config: ServeConfig, first_start: bool) -> ServeConfig:
    """Serving a ``simulate`` run: its MovieLens movie ids are the arm ids (MF env, unless ``arm_ids`` is given; a
    ``train`` run of a disjoint dataset: the dataset's arm ids),
    rankings carry the movies' titles and ``user_id`` looks up the run's users (``<state_dir>/run_titles.json`` and
    ``run_users.npz``, written on the first start, unless ``item_titles`` / ``user_table`` is given)."""
    state_dir = config.state_path.resolve()
    users_file, titles_file = state_dir / RUN_USERS_FILE, state_dir / RUN_TITLES_FILE
    updates: dict = {}
    if first_start and config.checkpoint:
        from recbandits.jobs.recommend import run_catalogue, run_directory
        from recbandits.jobs.train import trained_arm_ids
        from recbandits.logs.features import write_feature_table

        arm_ids = trained_arm_ids(config.checkpoint)  # a `recbandits train` output of a disjoint dataset
        if arm_ids and config.arm_ids is None:
            updates.update(arm_ids=arm_ids, num_arms=len(arm_ids))
        run = run_directory(config.checkpoint)
        if run is not None:
            catalogue = run_catalogue(run)
            if catalogue.env == "movielens" and config.arm_ids is None:
                updates.update(arm_ids=[str(movie) for movie in catalogue.movie_ids], num_arms=len(catalogue.movie_ids))
            if config.user_table is None:
                write_feature_table(users_file, catalogue.user_ids, catalogue.contexts)
            if config.item_titles is None:
                titles = {str(movie): str(title) for movie, title in zip(catalogue.movie_ids, catalogue.titles,
                                                                         strict=True)}
                write_json_atomic(titles_file, titles)
    for name, path in (("user_table", users_file), ("item_titles", titles_file)):
        if getattr(config, name) is None and path.is_file():
            updates[name] = str(path)
    return ServeConfig.from_dict({**config.to_dict(), **updates}) if updates else config


def prepare_state_dir(config: ServeConfig, explicit: set[str] | None = None) -> ServeConfig:
    """Create the state dir on a first start (service.json, the initial policy); return the config to run.

    On a restart the policy fields come from service.json (``explicit`` ones must agree, see
    ``config.reconcile_with_state``) and the checkpoint is not read again.
    """
    from recbandits.serve.config import reconcile_with_state
    from recbandits.serve.policy import initial_policy

    state_dir = config.state_path.resolve()
    if config.checkpoint and not (state_dir / SERVICE_FILE).exists():
        from recbandits.algos.checkpoints import find_module_checkpoint

        find_module_checkpoint(config.checkpoint)  # a first start: a wrong path is named before anything is written
    state_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    secure_state_dir(state_dir)
    if config.state_dir != str(state_dir):  # replicas may run in another working directory
        config = ServeConfig.from_dict({**config.to_dict(), "state_dir": str(state_dir)})
    ensure_admin_token(config)
    service = read_service_file(state_dir)
    config = with_run_catalogue(config, first_start=service is None)
    if service is not None:
        config = reconcile_with_state(
            config, service["policy"], explicit if explicit is not None else set(POLICY_FIELDS)
        )
        _check_lookup_files(config)
        return config
    fields, state, origin = initial_policy(config)
    resolved = ServeConfig.from_dict({**config.to_dict(), **fields})
    _check_lookup_files(resolved)
    store = SnapshotStore(state_dir)
    write_npz_atomic(store.initial_path, state, {"origin": origin})
    write_json_atomic(state_dir / SERVICE_FILE, {"policy": resolved.policy_fields(), "origin": origin,
                                                 "created_at": time.time()})
    return resolved


def _check_lookup_files(config: ServeConfig) -> None:
    """A user table or titles file that cannot be read is named here, before Ray starts, not by a replica."""
    from recbandits.serve.schemas import load_item_titles, load_user_table

    try:
        if config.user_table:
            load_user_table(config.user_table, config.context_dim)
        if config.item_titles:
            load_item_titles(config.item_titles)
    except (OSError, ValueError, KeyError) as error:
        raise StateDirError(str(error).splitlines()[0]) from None


def _lock_holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"


class StateLock:
    """An exclusive flock on ``<state_dir>/lock``: one live service per state dir (released when the process dies)."""

    def __init__(self, path: Path, timeout_s: float = 60.0):
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self._fd)
                    raise RuntimeError(f"another service (pid {_lock_holder(path)}) holds {path}: stop it, or use "
                                       "another --state-dir") from None
                time.sleep(0.2)
        os.fchmod(self._fd, FILE_MODE)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
        except OSError:
            pass


# --------------------------------------------------------------------------------------------------
# The admin API's token
# --------------------------------------------------------------------------------------------------


def admin_token_path(config: ServeConfig) -> Path:
    if config.admin_token_file:
        return Path(config.admin_token_file).expanduser().resolve()
    return config.state_path.resolve() / ADMIN_TOKEN_FILE


def ensure_admin_token(config: ServeConfig) -> Path:
    """The token file: a configured one must exist; the default one is made (0600) on the first start."""
    path = admin_token_path(config)
    if config.admin_token_file is None and not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
    read_admin_token(config)
    return path


def read_admin_token(config: ServeConfig) -> str:
    path = admin_token_path(config)
    try:
        token = path.read_text().strip()
    except OSError as error:
        raise StateDirError(f"admin token file {path} cannot be read ({error.strerror or error})") from None
    if len(token) < 16:
        raise StateDirError(f"admin token file {path} must hold a token of at least 16 characters")
    return token


# --------------------------------------------------------------------------------------------------
# Checking a state dir before a start
# --------------------------------------------------------------------------------------------------


MIN_FREE_BYTES = 2**20  # below this a start is refused: a few snapshots and log rows would fill it


def _check_writable(state_dir: Path) -> None:
    try:
        state_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=state_dir)
        os.close(fd)
        os.unlink(probe)
        for path in (state_dir / LOG_FILE, state_dir / SNAPSHOT_DIR):
            if path.is_file():
                os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
            elif path.is_dir():
                fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=path)
                os.close(fd)
                os.unlink(probe)
    except OSError as error:
        raise StateDirError(f"state dir {state_dir} is not writable ({error.strerror or error}: "
                            f"{error.filename or state_dir}): the service logs every decision there; fix its "
                            "permissions or mount, or use another --state-dir") from None
    stats = os.statvfs(state_dir)
    free = stats.f_bavail * stats.f_frsize
    if free < MIN_FREE_BYTES:
        raise StateDirError(f"state dir {state_dir} has {free // 1024} KiB free: the service logs every decision "
                            f"there and needs at least {MIN_FREE_BYTES // 2**20} MiB; free some space or use "
                            "another --state-dir")


def _check_unlocked(path: Path, wait_s: float) -> None:
    if not path.exists():
        return
    fd = os.open(path, os.O_RDWR)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StateDirError(f"another service (pid {_lock_holder(path)}) holds {path}: stop it, or use "
                                        "another --state-dir") from None
                time.sleep(0.2)
    finally:
        os.close(fd)


def scan_log_rows(path: Path) -> tuple[set[int], int, tuple[int, str] | None]:
    """(policy versions logged, rows, the first corrupt line as (line number, why) or None) of an event log.

    A torn last line (no newline: a write a crash interrupted, never acknowledged) is not corruption: the service
    cuts it off. A line that is not a JSON object with the next ``seq`` is.
    """
    versions: set[int] = set()
    rows, expected = 0, None
    if not path.exists():
        return versions, 0, None
    with open(path, "rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                break
            if len(line) <= 1:
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as error:
                return versions, rows, (line_number, f"not a JSON row ({error})")
            seq = row.get("seq") if isinstance(row, dict) else None
            if not isinstance(seq, int) or (expected is not None and seq != expected):
                return versions, rows, (line_number, f"seq {seq!r} where {expected} was expected")
            expected = seq + 1
            rows += 1
            if row.get("kind") == "version":
                versions.add(int(row["policy_version"]))
    return versions, rows, None


def move_log_tail_aside(path: Path, line_number: int) -> tuple[Path, int]:
    """Move lines ``line_number``.. of the log into ``<log>.corrupt-<line>-<time>`` next to it; (that file, lines)."""
    with open(path, "rb") as handle:
        lines = handle.readlines()
    keep, tail = b"".join(lines[: line_number - 1]), b"".join(lines[line_number - 1:])
    aside = path.with_name(f"{path.name}.corrupt-{line_number}-{int(time.time())}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "wb") as handle:
        handle.write(tail)
        handle.flush()
        os.fsync(handle.fileno())
    with open(path, "r+b") as handle:
        handle.truncate(len(keep))
        handle.flush()
        os.fsync(handle.fileno())
    return aside, len(lines) - line_number + 1


def _check_policy_file(path: Path, fields: dict[str, Any], what: str) -> None:
    from recbandits.algos.candidates import LinearCandidatePolicy

    try:
        state, _ = read_npz(path)
        LinearCandidatePolicy(fields, state)
    except Exception as error:  # noqa: BLE001 - any failure to load it is what the operator must hear
        raise StateDirError(f"{path} ({what}) cannot be loaded ({type(error).__name__}: {error}): restore it from "
                            "a backup, or move it aside to restore from the snapshot before it") from None


def check_state_dir(config: ServeConfig, repair_log: bool = False, lock_wait_s: float = 5.0) -> list[str]:
    """Check that a service can start on ``config.state_dir``; raise ``StateDirError`` (one line) if not.

    ``repair_log``: a corrupt log line and everything after it is moved into a file next to the log (named in the
    returned notes) instead of failing; nothing is deleted. Returns notes for the operator.
    """
    state_dir = config.state_path.resolve()
    if state_dir.exists() and not state_dir.is_dir():
        raise StateDirError(f"state dir {state_dir} is not a directory")
    _check_writable(state_dir)
    _check_unlocked(state_dir / LOCK_FILE, lock_wait_s)
    if config.admin_token_file is not None:
        read_admin_token(config)
    notes: list[str] = []
    log_path = state_dir / LOG_FILE
    service_path = state_dir / SERVICE_FILE
    try:
        service = read_service_file(state_dir)
    except (OSError, ValueError) as error:
        raise StateDirError(f"{service_path} cannot be read ({error}): restore it from a backup, or use another "
                            "--state-dir") from None
    if service is None:
        if log_path.exists() and log_path.stat().st_size:
            raise StateDirError(f"{log_path} exists but {service_path} does not: the log cannot be replayed without "
                                "its policy; restore service.json, or use another --state-dir")
        return notes
    if not isinstance(service, dict) or not isinstance(service.get("policy"), dict):
        raise StateDirError(f"{service_path} has no policy fields: restore it from a backup")
    versions, _, corrupt = scan_log_rows(log_path)
    if corrupt is not None:
        line, why = corrupt
        if not repair_log:
            raise StateDirError(f"{log_path}:{line} is {why}: the log is corrupt from there; `recbandits serve "
                                f"--state-dir {config.state_dir} --repair-log` moves that line and the ones after it "
                                "into a file next to the log (nothing is deleted) and starts from what comes before")
        aside, moved = move_log_tail_aside(log_path, line)
        notes.append(f"moved {moved} log lines from {log_path}:{line} ({why}) into {aside}")
        versions, _, _ = scan_log_rows(log_path)
    fields = service["policy"]
    store = SnapshotStore(state_dir)
    usable = [version for version in store.versions() if version in versions]
    if usable:
        _check_policy_file(store.path(max(usable)), fields, "the newest snapshot")
    elif store.initial_path.is_file():
        _check_policy_file(store.initial_path, fields, "the starting policy")
    else:
        raise StateDirError(f"{store.initial_path} is missing and no snapshot covers the log: the log cannot be "
                            "replayed without the starting policy; restore it from a backup, or start a new "
                            "--state-dir")
    return notes
