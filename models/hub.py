"""``hf:`` sources of the catalog, fetched with ``huggingface_hub`` for ``companion models pull``.

The library does the transfer (``hf_hub_download``), so a pull gets what every
Hugging Face tool gets:

- its standard cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
  ``~/.cache/huggingface/hub``): a file already there is not downloaded again,
  and other tools on the machine share it;
- tokens for gated and private repositories: ``HF_TOKEN``, or the one that
  ``hf auth login`` stored;
- resume: a transfer that breaks off is picked up where it stopped (a Range
  request, a few times over). Whether an interrupted *pull* resumes on the next
  run is the library's business: 1.1 to 1.17 keep the partial file in the
  cache, 1.18 and later start that file again;
- ``HF_ENDPOINT`` (the setting ``hf_endpoint``), passed as the endpoint.

Where the file lands: the catalog expects ``<data dir>/models/<id>/<name>``.
We let the library download into its cache (not ``local_dir``, which bypasses
the cache and would write an unverified file where the catalog looks) and then
hard-link the cached file into the models dir, so the weights take the disk
space once and survive a cleared cache; where the two are on different
filesystems the file is copied instead. The caller checks the SHA-256 first;
a file that fails it is removed from the cache too, so the next pull
downloads it again instead of serving the same bytes.

Offline: the library's ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``),
which the container image and the test suite set for the service, holds for
pull as well: a pull is asked for, but the operator's word that this machine
does not reach the hub stands. Then nothing is downloaded: a file already in
the cache is still linked into place, any other pull fails and says to run it
with ``HF_HUB_OFFLINE=0`` (0, not unset, where ``TRANSFORMERS_OFFLINE=1`` is
set too). ``huggingface_hub`` is imported only when a pull asks for it, so the
rest of the service never loads it through the catalog.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.catalog import CatalogError

Progress = Callable[[int, int | None], None]


@dataclass(frozen=True, slots=True)
class HubFile:
    """One file of a model repository at a revision (a branch, tag or commit)."""

    repo_id: str
    filename: str
    revision: str = "main"

    @classmethod
    def parse(cls, reference: str, revision: str = "main") -> HubFile:
        """``OWNER/REPO/FILE``, the rest of an ``hf:`` source; FILE may hold ``/``."""
        owner, repo, filename = reference.split("/", 2)
        return cls(f"{owner}/{repo}", filename, revision)


def download(file: HubFile, endpoint: str, progress: Progress) -> Path:
    """The file in the library's cache, downloaded there first unless it already is."""
    # Nothing but the file: the library's own usage reports stay off unless the operator
    # set them (it reads this when first imported, which is here: only a pull imports it).
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    where = f"{file.repo_id}/{file.filename}@{file.revision}"
    try:
        path = hf_hub_download(
            file.repo_id,
            file.filename,
            revision=file.revision,
            endpoint=endpoint,
            tqdm_class=_bar_class(progress),
        )
    except LocalEntryNotFoundError as exc:
        if constants.HF_HUB_OFFLINE:
            raise CatalogError(
                f"{where} is not in the Hugging Face cache and HF_HUB_OFFLINE is set:"
                " run the pull with HF_HUB_OFFLINE=0 to download it"
            ) from exc
        raise CatalogError(f"download of {where} failed: {exc}") from exc
    # The library raises its own errors, OSError, ValueError and those of its HTTP
    # client (requests, httpx or httpx2, by version): all of them fail the pull.
    except Exception as exc:
        raise CatalogError(f"download of {where} failed: {exc}") from exc
    return Path(path)


def place(cached: Path, destination: Path) -> None:
    """Put the cached file at ``destination``: a hard link, or a copy across filesystems."""
    blob = cached.resolve()  # the snapshot entry is a symlink to the blob where the OS allows
    destination.unlink(missing_ok=True)
    try:
        os.link(blob, destination)
    except OSError:
        shutil.copyfile(blob, destination)


def forget(cached: Path) -> None:
    """Remove a downloaded file from the cache (its blob and the snapshot's link to it)."""
    blob = cached.resolve()
    cached.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


class _Bar:
    """Shaped like the tqdm bar ``hf_hub_download`` updates; passes bytes on disk to ``report``."""

    report: Progress

    def __init__(
        self, *args: Any, total: int | None = None, initial: int = 0, **kwargs: Any
    ) -> None:
        self.total = total
        self.n = initial
        self.report(self.n, self.total)

    def update(self, n: float | None = 1) -> None:
        # negative when a server ignored a Range request and the file starts over
        self.n += int(n or 0)
        self.report(self.n, self.total)

    def update_transfer(self, n: float | None = 1) -> None:
        """Network bytes of a Xet download; defining it keeps the library to one bar."""

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        """Speed text; the CLI's bar shows its own."""

    def set_transfer_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        """Speed text of the Xet transfer; not shown."""

    def refresh(self) -> None:
        self.report(self.n, self.total)

    def close(self) -> None:
        self.report(self.n, self.total)

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _bar_class(progress: Progress) -> type[_Bar]:
    # hf_hub_download takes a class, not an instance: one per pull, bound to its callback
    return type("PullBar", (_Bar,), {"report": staticmethod(progress)})
