"""Unit tests of the registry client's refusals that need no server."""

from __future__ import annotations

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument
from services.storage.registry_auth import Challenge
from services.storage.registry_client import RegistryClient


def test_scheme_and_names_are_checked() -> None:
    with pytest.raises(InvalidArgument, match="invalid registry scheme 'ftp'"):
        RegistryClient("reg.example", scheme="ftp")
    with RegistryClient("reg.example", scheme="https") as client:
        with pytest.raises(InvalidArgument, match="invalid repository name"):
            client.blob_exists("../admin", "sha256:" + "a" * 64)
        with pytest.raises(InvalidArgument, match="invalid digest"):
            client.blob_exists("team/app", "sha256:short")
        with pytest.raises(InvalidArgument, match="invalid tag or digest"):
            client.get_manifest("team/app", "no/slash")
        with pytest.raises(InvalidArgument, match="invalid chunk size 0"):
            client.upload_blob("team/app", "sha256:" + "a" * 64, 1, bytes, chunk_size=0)


def test_credentials_never_go_to_a_plain_http_realm_of_an_https_registry() -> None:
    challenge = Challenge("bearer", {"realm": "http://auth.example/token", "service": "reg"})
    with RegistryClient("reg.example", scheme="https", credentials=("u", "p")) as client:
        with pytest.raises(FailedPrecondition, match="refusing to send the credentials unencrypted"):
            client._fetch_token(challenge, ("repository:team/app:pull",), "team/app")
    with RegistryClient("reg.example", scheme="https") as client:
        with pytest.raises(FailedPrecondition, match="without a usable realm"):
            client._fetch_token(Challenge("bearer", {"realm": "file:///etc/passwd"}), (), None)
