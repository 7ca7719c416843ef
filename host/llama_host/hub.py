"""GGUF models from the Hugging Face hub: ``-hf user/repo[:QUANT]``, ``hf://user/repo[@rev]/file.gguf``.

Downloading is huggingface_hub's own (``hf_hub_download``): its cache layout (``HF_HOME``, by default
``~/.cache/huggingface/hub``), shared with every other tool that uses it, ``HF_TOKEN`` for private
and gated repos, ``HF_ENDPOINT`` for a mirror, ``HF_HUB_OFFLINE=1``. What this module adds:

- picking one GGUF in a repo by its quantization, by llama-server's ``-hf`` rule (:func:`choose`);
- a model found in the cache is used without asking the hub (starting a server needs no network;
  :func:`resolve` with ``refresh=True``, as ``llama-host pull`` does, checks the hub for a newer one);
- the LFS sha256 that the hub lists is checked after a download: huggingface_hub (2.4) checks only
  the size of a plain HTTP download (its Xet downloads are verified by hf_xet itself);
- typed errors (:class:`HubError`) with a one-line message, and progress as a log line per 10%
  where stderr is not a terminal (on a terminal: huggingface_hub's own tqdm bar).

A dropped connection is resumed by huggingface_hub with a Range request, within the same call (up
to 5 retries); a download cut off by the process ending is not: 2.4 writes each download to a file
of its own (``<blob>.<random>.incomplete``) and deletes it on failure, so nothing half-written ever
looks complete, and a later call starts over.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2  # huggingface_hub's HTTP client: its transport errors are how "no network" shows
from huggingface_hub import HfApi, constants, hf_hub_download, scan_cache_dir, try_to_load_from_cache
from huggingface_hub.errors import (
    CacheNotFound,
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    HfUriError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import parse_hf_uri, tqdm as hf_tqdm, validate_repo_id

from llama_host import __version__

log = logging.getLogger(__name__)

URI_SCHEME = "hf://"
DEFAULT_QUANTS = ("Q4_K_M", "Q8_0")  # llama-server's choice when no :QUANT is given, in this order
# Not a model of their own: a projector, an importance matrix, draft/speculative heads.
_SIDECARS = ("mmproj", "imatrix", "mtp-", "eagle3-", "dflash-", "dspark-")
_SPLIT = re.compile(r"^(.+)-(\d{5})-of-(\d{5})$", re.IGNORECASE)
_TAG = re.compile(r"[-.]([A-Z0-9_]+)$", re.IGNORECASE)
_QUANT = re.compile(r"[A-Za-z0-9_]+")


class HubError(ValueError):
    """A model that cannot be got from the hub; the message is one line."""


class SpecError(HubError):
    """A malformed ``user/repo[:QUANT]`` or ``hf://`` URI (a usage error, not a download failure)."""


class RepoNotFound(HubError):
    pass


class FileNotFound(HubError):
    """No such file, or no GGUF of the asked quantization (the message lists those there are)."""


class HubUnreachable(HubError):
    pass


class NotCached(HubError):
    """Offline (``HF_HUB_OFFLINE``) and the model is not in the cache."""


class DiskFull(HubError):
    pass


class ChecksumMismatch(HubError):
    """The downloaded bytes are not those the hub lists; the bad file has been deleted."""


@dataclasses.dataclass(frozen=True)
class Spec:
    """What to get: an exact ``file``, or the GGUF of ``quant`` (None: llama-server's default rule)."""

    repo_id: str
    revision: str = "main"
    quant: str | None = None
    file: str | None = None

    def __str__(self) -> str:
        rev = "" if self.revision == "main" else f"@{self.revision}"
        what = f"/{self.file}" if self.file else f":{self.quant}" if self.quant else ""
        return f"{self.repo_id}{rev}{what}"

    def pull_command(self) -> str:
        rev = "" if self.revision == "main" else f"@{self.revision}"
        quant = f":{self.quant}" if self.quant else ""
        return f"llama-host pull {self.repo_id}{rev}{quant}" + (f" --hf-file {self.file}" if self.file else "")


@dataclasses.dataclass(frozen=True)
class CachedGguf:
    repo_id: str
    file: str  # the path inside the repo
    size: int
    path: Path
    refs: tuple[str, ...]  # the branches/tags this revision is cached as (empty: an older revision)


def parse_repo(text: str, file: str | None = None) -> Spec:
    """``user/repo[@revision][:QUANT]`` (llama-server's ``-hf``), or an exact ``file`` (``--hf-file``)."""
    repo, _, quant = text.partition(":")
    repo_id, at, revision = repo.partition("@")
    _check_repo_id(repo_id, text)
    if at and not revision:
        raise SpecError(f"{text!r}: empty revision after '@'")
    if quant and not _QUANT.fullmatch(quant):
        raise SpecError(f"{text!r}: the quantization {quant!r} must be letters, digits and '_' (e.g. Q4_K_M)")
    if quant and file:
        raise SpecError(f"{text!r}: give a :QUANT or a file (--hf-file), not both")
    return Spec(repo_id, revision or "main", quant or None, file or None)


def parse_uri(uri: str) -> Spec:
    """``hf://user/repo[@revision]/path/file.gguf``; without a path, the default quantization."""
    try:
        parsed = parse_hf_uri(uri)
    except HfUriError as e:
        raise SpecError(f"{uri!r}: expected hf://user/repo[@revision]/file.gguf ({_first_line(e)})") from None
    if parsed.type != "model":
        raise SpecError(f"{uri!r}: only model repos hold GGUF models (not {parsed.type}s)")
    _check_repo_id(parsed.id, uri)
    return Spec(parsed.id, parsed.revision or "main", None, parsed.path_in_repo or None)


def _check_repo_id(repo_id: str, text: str) -> None:
    if repo_id.count("/") != 1:
        raise SpecError(f"{text!r}: expected user/repo[:QUANT], e.g. ggml-org/gemma-3-1b-it-GGUF:Q4_K_M")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise SpecError(f"{text!r}: not a repo id ({_first_line(e)})") from None


# --- choosing the file: llama-server's rule -------------------------------------------------------

def split_part(path: str) -> tuple[str, int, int]:
    """(prefix, index, count) of ``name-00001-of-00003.gguf``; (stem, 1, 1) for a file in one piece."""
    stem = path[: -len(".gguf")] if path.lower().endswith(".gguf") else path
    if m := _SPLIT.match(stem):
        return m[1], int(m[2]), int(m[3])
    return stem, 1, 1


def quant_tag(path: str) -> str | None:
    """The quantization a file name ends with (``model-Q4_K_M.gguf`` -> ``Q4_K_M``), upper case."""
    m = _TAG.search(split_part(path)[0])
    return m[1].upper() if m else None


def is_model(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.lower().endswith(".gguf") and not any(s in name for s in _SIDECARS)


def choose(files: Iterable[str], spec: Spec, *, partial: bool = False) -> list[str]:
    """The files to download for ``spec``, the one to load first (every part of a split model).

    An exact file must be there. Otherwise the first model GGUF (by name) whose name has the quant
    tag, case-insensitively, as a whole word (``-Q8_0.gguf``, ``.q8_0-00001-of-00002.gguf``); with no
    quant given, Q4_K_M, else Q8_0, else the first model GGUF at all, as llama-server does.
    ``partial``: ``files`` is what is cached, not the repo, so only a first choice counts (a Q8_0 in
    the cache must not stand in for a Q4_K_M that the hub has).
    """
    files = sorted(set(files))
    if spec.file:
        if spec.file not in files:
            raise FileNotFound(f"{spec.repo_id} has no file {spec.file!r}{_available(files)}")
        return _parts(files, spec.file)
    models = [f for f in files if is_model(f) and split_part(f)[1] == 1]
    tags = [spec.quant] if spec.quant else list(DEFAULT_QUANTS[:1] if partial else DEFAULT_QUANTS)
    for tag in tags:
        word = re.compile(rf"(?:^|[-._/]){re.escape(tag)}[-.]", re.IGNORECASE)
        if found := next((f for f in models if word.search(f)), None):
            return _parts(files, found)
    if not spec.quant and not partial and models:
        return _parts(files, models[0])
    wanted = f"no {spec.quant} GGUF" if spec.quant else "no GGUF model"
    raise FileNotFound(f"{spec.repo_id} has {wanted}{_available(files)}")


def _parts(files: list[str], first: str) -> list[str]:
    prefix, _, count = split_part(first)
    if count == 1:
        return [first]
    parts = sorted(f for f in files if split_part(f)[0] == prefix and split_part(f)[2] == count)
    if [split_part(f)[1] for f in parts] != list(range(1, count + 1)):
        raise FileNotFound(f"{first}: the parts of this split model are not all there ({len(parts)} of {count})")
    return parts


def _available(files: list[str]) -> str:
    tags = sorted({t for f in files if is_model(f) and (t := quant_tag(f))})
    if tags:
        return f"; quantizations there: {', '.join(tags)}"
    ggufs = [f for f in files if f.lower().endswith(".gguf")]
    return f"; GGUF files there: {', '.join(ggufs)}" if ggufs else "; it holds no GGUF file"


# --- resolving: the cache first, then the hub -----------------------------------------------------

def resolve(spec: Spec, *, endpoint: str | None = None, cache_dir: Path | None = None,
            offline: bool | None = None, refresh: bool = False) -> Path:
    """The local path of ``spec``'s GGUF (the first part of a split one), downloaded if need be.

    A model in the cache is used without a request; ``refresh`` asks the hub anyway (a newer
    revision is downloaded). ``offline`` (default: ``HF_HUB_OFFLINE``) never asks it, and then
    takes what is cached by the whole rule (a cached Q8_0 stands in for the default). ``endpoint``
    and ``cache_dir`` default to huggingface_hub's (``HF_ENDPOINT``, ``HF_HUB_CACHE``).
    """
    offline = constants.is_offline_mode() if offline is None else offline
    if (not refresh or offline) and (path := _cached(spec, cache_dir, partial=not offline)):
        return path
    if offline:
        raise NotCached(f"{spec} is not in the cache ({cache_root(cache_dir)}) and HF_HUB_OFFLINE is set: "
                        f"run '{spec.pull_command()}' with a network first")
    try:
        files, commit = _listing(spec, endpoint)
    except HubUnreachable:
        if path := _cached(spec, cache_dir, partial=False):  # what is there will do, as llama-server does
            log.warning("the hub cannot be reached: using the cached %s", path)
            return path
        raise
    paths = [_download(spec, name, files[name], commit, endpoint, cache_dir) for name in choose(files, spec)]
    return paths[0]


def _cached(spec: Spec, cache_dir: Path | None, *, partial: bool) -> Path | None:
    snapshot, files = _cached_revision(spec, cache_dir)
    if snapshot is None:
        return None
    try:
        return snapshot / choose(files, spec, partial=partial)[0]
    except FileNotFound:
        return None


def _cached_revision(spec: Spec, cache_dir: Path | None) -> tuple[Path | None, list[str]]:
    """The snapshot folder of ``spec.revision`` (a branch, a tag or a commit) and the files in it."""
    try:
        info = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return None, []
    for repo in info.repos:
        if repo.repo_type != "model" or repo.repo_id != spec.repo_id:
            continue
        for revision in repo.revisions:
            if spec.revision in revision.refs or revision.commit_hash == spec.revision:
                return revision.snapshot_path, [f.file_path.relative_to(revision.snapshot_path).as_posix()
                                                for f in revision.files]
    return None, []


def _listing(spec: Spec, endpoint: str | None) -> tuple[dict[str, str | None], str | None]:
    """The repo's files at ``spec.revision`` with their LFS sha256 (None: not in LFS), and its commit."""
    api = HfApi(endpoint=endpoint, library_name="llama-host", library_version=__version__)
    with _errors(spec, endpoint):
        info = api.model_info(spec.repo_id, revision=spec.revision, files_metadata=True)
    return {s.rfilename: s.lfs.sha256 if s.lfs else None for s in info.siblings or []}, info.sha


def _download(spec: Spec, name: str, sha256: str | None, commit: str | None, endpoint: str | None,
              cache_dir: Path | None) -> Path:
    cached = commit and try_to_load_from_cache(spec.repo_id, name, cache_dir=cache_dir, revision=commit)
    with _errors(spec, endpoint, name, cache_dir):
        path = Path(hf_hub_download(spec.repo_id, name, revision=spec.revision, cache_dir=cache_dir,
                                    endpoint=endpoint, library_name="llama-host", library_version=__version__,
                                    tqdm_class=progress_class()))
    if sha256 and not isinstance(cached, str):  # checked once, when downloaded: hashing GBs takes seconds
        _verify(path, sha256)
    return path


def _verify(path: Path, expected: str) -> None:
    log.info("checking the sha256 of %s", path.name)
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != expected.lower():
        blob = path.resolve()
        path.unlink(missing_ok=True)  # the snapshot's link, then the blob it points to
        blob.unlink(missing_ok=True)
        raise ChecksumMismatch(f"{path.name}: the download is corrupt (sha256 {digest.hexdigest()}, the hub lists "
                               f"{expected}); it has been deleted, run again to download it anew")


def cache_root(cache_dir: Path | None = None) -> Path:
    """Where models are cached: ``cache_dir``, else HF_HUB_CACHE (HF_HOME/hub, ~/.cache/huggingface/hub)."""
    return Path(cache_dir or constants.HF_HUB_CACHE)


@contextmanager
def _errors(spec: Spec, endpoint: str | None, name: str | None = None,
            cache_dir: Path | None = None) -> Iterator[None]:
    """huggingface_hub's exceptions as :class:`HubError` kinds, by their types (the order matters:
    its HTTP errors are OSErrors too)."""
    where = endpoint or constants.ENDPOINT
    what = f"{spec.repo_id}/{name}" if name else str(spec)
    try:
        yield
    except GatedRepoError:
        raise RepoNotFound(f"{spec.repo_id} is gated: accept its terms on the hub, then set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise RepoNotFound(f"repository {spec.repo_id} not found on {where} "
                           "(a private one needs HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise FileNotFound(f"{spec.repo_id} has no revision {spec.revision!r}") from None
    except OfflineModeIsEnabled:
        raise NotCached(f"{what} is not in the cache and HF_HUB_OFFLINE is set") from None
    except LocalEntryNotFoundError:  # the hub did not answer, and the file is not cached
        raise HubUnreachable(f"cannot reach the hub at {where} for {what}, and it is not in the cache") from None
    except EntryNotFoundError:
        raise FileNotFound(f"{spec.repo_id} has no file {name!r} at {spec.revision}") from None
    except HfHubHTTPError as e:
        status = e.response.status_code
        kind = HubUnreachable if status >= 500 else HubError  # a hub that is down: the cache may do
        raise kind(f"{what}: the hub at {where} answered HTTP {status}") from None
    except httpx2.TransportError as e:
        raise HubUnreachable(f"cannot reach the hub at {where} ({type(e).__name__}: {_first_line(e)})") from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DiskFull(f"no space left in {cache_root(cache_dir)} for {what} "
                           "(set HF_HOME to a folder on a larger disk)") from None
        raise HubError(f"downloading {what} failed: {_first_line(e)}") from None
    except ValueError as e:  # huggingface_hub's checks of names (a repo id, a path inside the repo)
        raise SpecError(f"{what}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)


# --- progress -------------------------------------------------------------------------------------

class LogProgress(hf_tqdm):
    """A progress "bar" that logs a line per 10% instead of drawing (a service's log has no terminal)."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - tqdm's signature
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)
        self._what = kwargs.get("desc") or "download"
        self._done = kwargs.get("initial") or 0
        self._tenth = self._tenths()
        # hf_xet's second bar counts network bytes against a guessed total: the file's own bar says enough
        self._quiet = str(kwargs.get("name") or "").endswith(".transfer")

    def _tenths(self) -> int:
        return int(10 * self._done // self.total) if self.total else 0

    def update(self, n: float | None = 1) -> bool | None:
        self._done += n or 0
        if (tenth := self._tenths()) > self._tenth and not self._quiet:
            self._tenth = tenth
            log.info("%s: %d%% of %.1f MB", self._what, 10 * tenth, self.total / 1e6)
        return super().update(n)


def progress_class() -> type | None:
    """None (huggingface_hub's own bar) on a terminal, else :class:`LogProgress`."""
    return None if sys.stderr.isatty() else LogProgress


# --- the cache ------------------------------------------------------------------------------------

def cached_ggufs(cache_dir: Path | None = None) -> list[CachedGguf]:
    """Every GGUF file in the cache, by repo and file."""
    try:
        info = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return []
    found = [CachedGguf(repo.repo_id, f.file_path.relative_to(rev.snapshot_path).as_posix(), f.size_on_disk,
                        f.file_path, tuple(sorted(rev.refs)))
             for repo in info.repos if repo.repo_type == "model"
             for rev in repo.revisions for f in rev.files if f.file_name.lower().endswith(".gguf")]
    return sorted(found, key=lambda g: (g.repo_id, g.file, g.refs == (), str(g.path)))
