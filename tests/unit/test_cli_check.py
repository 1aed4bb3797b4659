"""system check's view of which images exist: every tag of an image counts, not only the one it is listed under."""

from __future__ import annotations

from cli.check import present_images
from protos.state.v1 import state_pb2 as st
from protos.storage.v1 import storage_pb2 as sto

BUSYBOX = "sha256:" + "ab" * 32
GONE = "sha256:" + "cd" * 32


def test_every_tag_names_its_image_with_and_without_latest():
    # Listed under its first tag ("aaa"): a container of "busybox" still has its image.
    image = sto.Image(id=BUSYBOX, name="aaa", repo_tags=["aaa:latest", "busybox:latest", "busybox:1.36"])
    names = present_images([image], [])
    assert {"aaa", "busybox", "busybox:latest", "busybox:1.36"} <= names
    assert "busybox:1" not in names


def test_a_container_named_its_image_by_id_or_full_name_and_the_id_is_listed():
    image = sto.Image(id=BUSYBOX, name="busybox", repo_tags=["busybox:latest"])
    containers = [
        st.Container(image="docker.io/library/busybox", image_id=BUSYBOX),
        st.Container(image="64e3060853e8", image_id=BUSYBOX),
        st.Container(image="gone", image_id=GONE),
        st.Container(image="old"),
    ]
    names = present_images([image], containers)
    assert {"docker.io/library/busybox", "64e3060853e8"} <= names
    assert "gone" not in names and "old" not in names
