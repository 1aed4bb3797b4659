"""What `run` takes from the image: its config merged into the request, and -P's port mappings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cli.services import CliError, Services
from protos.storage.v1 import storage_pb2 as sto
from protos.types.v1 import types_pb2

if TYPE_CHECKING:
    from cli.lifecycle import RunRequest


def apply_image_config(services: Services, request: RunRequest) -> tuple[str, str, str]:
    """Merge the image's config into the request (command, env, working dir, user), as docker run does.

    Returns (image id, stop signal, the image's user or "").
    """
    from services.common import image_config
    from services.common.errors import InvalidArgument

    image = services.call("storage", "GetImage", sto.GetImageRequest(name=request.image, brief=True)).image
    config = image_config_from_proto(image.config)
    try:
        resolved = image_config.resolve_run(
            config, request.command, request.entrypoint, request.env, request.working_dir, request.security.user
        )
    except InvalidArgument as err:
        raise CliError(f'image "{request.image}": {err}') from None
    if request.publish_all:
        request.ports.extend(exposed_port_mappings(config.exposed_ports, request.ports))
    request.command = list(resolved.argv)
    request.env = list(resolved.env)
    request.working_dir = resolved.working_dir
    if resolved.user and not request.security.user:
        request.security.user = resolved.user
    return image.id, config.stop_signal, resolved.user


def exposed_port_mappings(exposed: tuple[str, ...], published: list[types_pb2.PortMapping]) -> list[types_pb2.PortMapping]:
    """A mapping from a free host port for each exposed "PORT/PROTO" not published with -p already (docker -P)."""
    from cli.parse import free_host_port

    taken = {(mapping.container_port, mapping.protocol) for mapping in published}
    mappings = []
    for entry in exposed:
        port_text, _, protocol = entry.partition("/")
        if not port_text.isdigit() or protocol not in ("", "tcp", "udp"):
            continue  # a range or a protocol we do not publish (sctp)
        proto = types_pb2.PROTOCOL_UDP if protocol == "udp" else types_pb2.PROTOCOL_TCP
        if (int(port_text), proto) in taken:
            continue
        mappings.append(
            types_pb2.PortMapping(host_port=free_host_port(protocol or "tcp"), container_port=int(port_text), protocol=proto)
        )
    return mappings


def image_config_from_proto(message: sto.ImageConfig):
    from services.common.image_config import ImageConfig

    return ImageConfig(
        entrypoint=tuple(message.entrypoint.values) if message.HasField("entrypoint") else None,
        cmd=tuple(message.cmd.values) if message.HasField("cmd") else None,
        env=tuple(message.env),
        working_dir=message.working_dir,
        user=message.user,
        exposed_ports=tuple(message.exposed_ports),
        stop_signal=message.stop_signal,
        labels=tuple(sorted(message.labels.items())),
        volumes=tuple(message.volumes),
    )


def split_command(argv: list[str], entrypoint: list[str] | None) -> tuple[list[str] | None, list[str]]:
    """(Entrypoint, Cmd) of a container's argv for commit: the image's entrypoint when argv starts with it
    (None: keep it), else an empty one (the argv says it all), as docker keeps them in a container's config."""
    if not entrypoint:
        return None, argv
    if argv[: len(entrypoint)] == entrypoint:
        return None, argv[len(entrypoint):]
    return [], argv


def container_config(services: Services, record) -> sto.ImageConfig | None:
    """What `commit` keeps of the container's run: its Cmd (and Entrypoint), Env, WorkingDir and User.

    None for a record of an older version (no image id): the image's config stays as it was.
    """
    if not record.image_id:
        return None
    image = services.call("storage", "GetImage", sto.GetImageRequest(name=record.image_id, brief=True)).image
    entrypoint, cmd = split_command(
        list(record.command), list(image.config.entrypoint.values) if image.config.HasField("entrypoint") else None
    )
    working_dir = record.working_dir if record.working_dir != "/" or image.config.working_dir else ""
    config = sto.ImageConfig(
        cmd=sto.StringList(values=cmd),
        env=list(record.env),
        working_dir=working_dir,
        user=record.security.user,
    )
    if entrypoint is not None:
        config.entrypoint.CopyFrom(sto.StringList(values=entrypoint))
    return config
