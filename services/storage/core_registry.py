"""StorageCore's registry verbs: pull, push, login and logout (the protocol is distribution.py's)."""

from __future__ import annotations

import dataclasses
import logging

from services.common import faults, nospace, reference
from services.common.errors import InvalidArgument, NoSpace, NotFound
from services.storage import distribution, registry_auth
from services.storage.archive_read import LoadedImage
from services.storage.images import ImageStore, tag_reference
from services.storage.model import Image

log = logging.getLogger(__name__)


class RegistryMixin:
    """Registry verbs of StorageCore; needs self.images, self.layers, self.paths, self._catalog, self._ingest."""

    images: ImageStore

    def pull_image(self, text: str, platform: str, report: distribution.Report) -> Image:
        """Fetch an image from its registry, unpack its layers, then tag it (a digest reference: no tag).

        On a full disk the blobs it fetched that no image names are deleted at once (not at the next start),
        so freeing space and pulling again works; a partial download stays, to be resumed.
        """
        ref = reference.parse(text)
        before = set(self.images.content.list())
        try:
            with nospace.converted(f'pulling image "{ref.familiar()}"', self.paths.root):
                return self._pull(ref, platform, report)
        except NoSpace:
            with self._ingest.exclusive(), self._catalog:
                used = self.images.blobs_in_use(self.images.db.records())
                for digest in set(self.images.content.list()) - before - used:
                    self.images.content.delete(digest)
            raise

    def _pull(self, ref: reference.Reference, platform: str, report: distribution.Report) -> Image:
        """pull_image's work: fetch, record, unpack, tag."""
        with self._ingest.shared():
            pulled = distribution.pull(
                self.paths.root, self.images.content, ref, platform, report, known=self.images.complete_layers
            )
            faults.step("PullImage", "fetched")
            with self._catalog:
                new = self.images.db.get(pulled.config_digest) is None
                record = self.images.store_record(
                    LoadedImage(pulled.config_digest, pulled.layers, (), "registry"),
                    repo_digest=f"{ref.name}@{pulled.manifest_digest}",
                )
                # Until it is tagged, another pull's failure must not delete it under us.
                self.images.pin(record.id)
            try:
                for layer in record.layers:
                    if self.layers.get(layer.diff_id) is None:
                        report(distribution.Progress(layer.digest, "unpacking", layer.size, layer.size))
                faults.step("PullImage", "recorded")
                self._unpack_all(record, f'image "{ref.familiar()}"')
                faults.step("PullImage", "unpacked")
                if not ref.digest:
                    self.images.write_tag(ref, record, replace=True, written=lambda: faults.step("PullImage", "tag-written"))
            except BaseException:
                with self._catalog:
                    if self.images.unpin(record.id) == 0 and new:
                        self._forget_unused(record.id)
                raise
            with self._catalog:
                self.images.unpin(record.id)
        image = self.get_image(ref.familiar() if not ref.digest else record.id)
        # The digest this pull resolved comes first: `pull` prints it, and it pulls the same again.
        pulled_digest = f"{ref.name}@{pulled.manifest_digest}"
        others = tuple(digest for digest in image.repo_digests if digest != pulled_digest)
        return dataclasses.replace(image, repo_digests=(pulled_digest,) + others)

    def _forget_unused(self, image_id: str) -> None:
        """Delete the record a failed pull made, unless something tagged or used it meanwhile (catalog lock held).

        Its blobs stay: a concurrent pull may be counting on them, and the next pull of the image
        finds them; nothing references them, so the next service start collects them otherwise.
        """
        if not self.images.tags_by_id().get(image_id) and not self._users().get(image_id):
            self.images.db.delete(image_id)

    def push_image(self, text: str, report: distribution.Report) -> str:
        ref = tag_reference(text)
        distribution.check_pushable(ref)
        record = self.images.resolve_tag(ref)
        if record is None:
            raise NotFound(f'image "{ref.familiar()}" not found: tag an image with that name first (mydocker tag IMAGE {ref.familiar()})')
        digest = distribution.push(self.paths.root, self.images.content, ref, record, report)
        with self._catalog:
            self.images.add_repo_digest(record.id, f"{ref.name}@{digest}")
        return digest

    def login(self, registry: str, username: str, password: str) -> str:
        if not registry or not username or not password:
            raise InvalidArgument("login needs a registry, a user name and a password")
        host = registry_auth.checked_host(registry)
        settings = registry_auth.registry_settings(self.paths.root, host)
        client = distribution.RegistryClient(
            settings.endpoint, credentials=(username, password), scheme=settings.scheme, ca_file=settings.ca_file
        )
        with client:
            client.ping()
        registry_auth.store_credentials(self.paths.root / registry_auth.AUTH_FILE, host, username, password)
        return host

    def logout(self, registry: str) -> None:
        host = registry_auth.checked_host(registry)
        if not registry_auth.remove_credentials(self.paths.root / registry_auth.AUTH_FILE, host):
            raise NotFound(f"not logged in to {host}")
