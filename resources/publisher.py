"""Publishers: where a verified release is staged and then promoted to production.

* ``LocalDirectoryPublisher`` (default): ``<root>/versions/<run_id>/`` and an atomically swapped
  ``<root>/published`` link (``root`` defaults to ``<store>/release``).
* ``HuggingFacePublisher``: a Hub repository through ``huggingface_hub``. Staging uploads the
  release under ``staging/<run_id>/`` in ONE commit; promotion checks the staged files against the
  manifest and copies them to the production paths, with ``manifest.json`` and
  ``releases/<run_id>/manifest.json``, in ONE commit whose parent is the revision it checked. A
  Hub commit is atomic, so production is the old release or the new one, never a mix.

The Hub token comes from an environment variable (``token=dg.EnvVar("HF_TOKEN")`` in
definitions.py): Dagster shows the variable's name, never its value, and nothing here logs it.
"""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Optional

import dagster as dg
from pydantic import Field

from calibration_core import release as rel


class Publisher(dg.ConfigurableResource, ABC):
    """Stages a verified local release folder (``<release root>/versions/<run_id>``) and later
    promotes it to production, all-or-nothing."""

    @abstractmethod
    def stage(self, folder: Path, run_id: str, release_root: Path) -> dict:
        """Put the release where it can be checked, not yet in production; returns
        ``{"location": ..., ...}`` for the asset's metadata (no secrets)."""

    @abstractmethod
    def promote(self, folder: Path, run_id: str, release_root: Path) -> dict:
        """Make the staged ``run_id`` production in one atomic step, or change nothing."""

    @abstractmethod
    def describe(self) -> str:
        """Where releases go, for a person (no secrets)."""


class LocalDirectoryPublisher(Publisher):
    """A folder: ``versions/<run_id>/`` plus a ``published`` link swapped atomically."""

    root: Optional[str] = Field(
        default=None, description="Release folder; default <store>/release.")

    def _root(self, release_root: Path) -> Path:
        return Path(self.root).resolve() if self.root else Path(release_root)

    def stage(self, folder: Path, run_id: str, release_root: Path) -> dict:
        root = self._root(release_root)
        if Path(folder).resolve().parent.parent == root.resolve():
            problems = rel.verify_manifest(folder)
            if problems:
                raise rel.ReleaseError(f"{folder} does not verify: " + "; ".join(problems[:10]))
            target = Path(folder)
        else:
            target = rel.copy_version(folder, root)
        return {"location": str(target), "run_id": run_id}

    def promote(self, folder: Path, run_id: str, release_root: Path) -> dict:
        root = self._root(release_root)
        link = rel.promote_local(root, run_id)
        return {"location": str(link), "run_id": run_id, "target": str(link.resolve())}

    def describe(self) -> str:
        return f"local folder {self.root or '<store>/release'}"


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file's content (what the Hub reports as ``oid`` of a non-LFS file)."""
    digest = hashlib.sha1()
    digest.update(b"blob %d\0" % Path(path).stat().st_size)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class HuggingFacePublisher(Publisher):
    """A Hugging Face Hub repository (``huggingface_hub.HfApi``)."""

    repo_id: str = Field(description="owner/name of the Hub repository")
    repo_type: str = Field(default="dataset", description="dataset | model")
    token: Optional[str] = Field(
        default=None, repr=False,
        description="Hub token; set it as dg.EnvVar('HF_TOKEN'), never inline.")
    endpoint: Optional[str] = Field(default=None, description="Hub URL; default huggingface.co")
    revision: str = Field(default="main", description="branch releases are committed to")
    staging_prefix: str = Field(default="staging", description="staging/<run_id>/ in the repo")

    def _api(self):
        from huggingface_hub import HfApi

        # token=False: never fall back to a token saved on this machine
        return HfApi(endpoint=self.endpoint, token=self.token or False)

    def _staged(self, run_id: str, path: str) -> str:
        return f"{self.staging_prefix}/{run_id}/{path}"

    def _verified_manifest(self, folder: Path, run_id: str) -> dict:
        problems = rel.verify_manifest(folder)
        manifest = rel.read_manifest(folder)
        if manifest.get("run_id") != run_id:
            problems.append(f"manifest run_id {manifest.get('run_id')!r} is not {run_id!r}")
        if problems:
            raise rel.ReleaseError(f"{folder} does not verify: " + "; ".join(problems[:10]))
        return manifest

    def stage(self, folder: Path, run_id: str, release_root: Path) -> dict:
        from huggingface_hub import CommitOperationAdd

        folder = Path(folder)
        manifest = self._verified_manifest(folder, run_id)
        operations = [CommitOperationAdd(path_in_repo=self._staged(run_id, p),
                                         path_or_fileobj=str(folder / p))
                      for p in [*manifest["files"], rel.MANIFEST_NAME]]
        info = self._api().create_commit(
            repo_id=self.repo_id, repo_type=self.repo_type, revision=self.revision,
            operations=operations, commit_message=f"Stage release {run_id}",
            commit_description=f"{manifest['file_count']} files, content "
                               f"{manifest['content_sha256'][:16]}; not in production yet")
        return {"location": f"{self.describe()}:{self._staged(run_id, '')}", "run_id": run_id,
                "commit": info.oid, "files": len(operations)}

    def staged_problems(self, folder: Path, run_id: str, revision: str) -> list[str]:
        """Compare the files under ``staging/<run_id>/`` at ``revision`` with the manifest."""
        from huggingface_hub.hf_api import RepoFile

        manifest = rel.read_manifest(folder)
        wanted = {self._staged(run_id, p): p for p in [*manifest["files"], rel.MANIFEST_NAME]}
        infos = self._api().get_paths_info(repo_id=self.repo_id, repo_type=self.repo_type,
                                           paths=list(wanted), revision=revision)
        found = {i.path: i for i in infos if isinstance(i, RepoFile)}
        problems = []
        for staged, path in wanted.items():
            info = found.get(staged)
            local = Path(folder) / path
            if info is None:
                problems.append(f"{staged}: not in the repository at {revision}")
            elif info.size != local.stat().st_size:
                problems.append(f"{staged}: size {info.size}, local {local.stat().st_size}")
            elif info.lfs is not None and info.lfs.sha256 != rel.sha256_file(local):
                problems.append(f"{staged}: LFS sha256 {info.lfs.sha256} differs from the manifest")
            elif info.lfs is None and info.blob_id != git_blob_sha1(local):
                problems.append(f"{staged}: git blob {info.blob_id} differs from the local file")
        return problems

    def promote(self, folder: Path, run_id: str, release_root: Path) -> dict:
        from huggingface_hub import CommitOperationAdd, CommitOperationCopy

        folder = Path(folder)
        manifest = self._verified_manifest(folder, run_id)
        api = self._api()
        head = api.repo_info(repo_id=self.repo_id, repo_type=self.repo_type,
                             revision=self.revision).sha
        problems = self.staged_problems(folder, run_id, head)
        if problems:
            raise rel.ReleaseError(f"staged release {run_id} on the Hub does not match its "
                                   "manifest; production unchanged: " + "; ".join(problems[:10]))
        manifest_bytes = (folder / rel.MANIFEST_NAME).read_bytes()
        operations = [CommitOperationCopy(src_path_in_repo=self._staged(run_id, p),
                                          path_in_repo=p, src_revision=head)
                      for p in manifest["files"]]
        operations += [
            CommitOperationAdd(path_in_repo=rel.MANIFEST_NAME, path_or_fileobj=manifest_bytes),
            CommitOperationAdd(path_in_repo=f"releases/{run_id}/{rel.MANIFEST_NAME}",
                               path_or_fileobj=manifest_bytes),
        ]
        # parent_commit: the commit fails if the branch moved since the check above
        info = api.create_commit(
            repo_id=self.repo_id, repo_type=self.repo_type, revision=self.revision,
            operations=operations, parent_commit=head, commit_message=f"Release {run_id}",
            commit_description=f"Promote staging/{run_id}: {manifest['file_count']} files")
        return {"location": self.describe(), "run_id": run_id, "commit": info.oid,
                "parent": head, "files": len(operations)}

    def describe(self) -> str:
        return f"{self.endpoint or 'https://huggingface.co'} {self.repo_type} {self.repo_id}@{self.revision}"
