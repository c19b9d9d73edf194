"""DeepSpeed hostfiles (`HOST slots=N` per line) and the `--include/--exclude/--num_nodes/--num_gpus`
filters, resolved to the hosts and slots the DeepSpeed launcher will start ranks on.

DeepSpeed's own parser reports a bad line without its number and silently falls back to the local
machine when the hostfile is missing; here every problem is one line naming the file and line.
The filter rules are DeepSpeed's (`NODE_SPEC[@NODE_SPEC ...]`, `NODE_SPEC = NAME[:SLOT[,SLOT ...]]`)
so that preflight checks exactly the hosts the launcher will use.
"""

from __future__ import annotations

import re
from pathlib import Path

_SLOTS = re.compile(r"slots=(\S*)")
# MPI-style hostfiles carry extra `key=value` fields (e.g. max_slots=8); DeepSpeed ignores them.
_EXTRA_FIELD = re.compile(r"\w+=\S+")


class HostfileError(ValueError):
    """A hostfile or host filter that cannot be launched; the message is one line for the user."""


def parse_hostfile(text: str, source: str = "hostfile") -> dict[str, int]:
    """Map host → slot count, in file order (node rank order). `#` starts a comment line."""
    hosts: dict[str, int] = {}
    first_seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source} line {number}"
        fields = line.split()
        slots = _SLOTS.fullmatch(fields[1]) if len(fields) > 1 else None
        if slots is None:
            raise HostfileError(f"{where}: expected 'HOST slots=N', got {line!r}")
        if not slots.group(1).isdigit() or int(slots.group(1)) < 1:
            raise HostfileError(f"{where}: slots must be a positive integer, got {fields[1]!r}")
        for extra in fields[2:]:
            if not _EXTRA_FIELD.fullmatch(extra):
                raise HostfileError(f"{where}: unexpected field {extra!r} after {fields[1]!r}")
        host = fields[0]
        if host in hosts:
            raise HostfileError(f"{where}: host {host!r} is already listed on line {first_seen[host]}")
        hosts[host] = int(slots.group(1))
        first_seen[host] = number
    if not hosts:
        raise HostfileError(f"{source}: no hosts (expected lines like 'worker-0 slots=8')")
    return hosts


def read_hostfile(path: str | Path) -> dict[str, int]:
    path = Path(path)
    if not path.is_file():
        raise HostfileError(f"hostfile {path} not found")
    return parse_hostfile(path.read_text(encoding="utf-8"), str(path))


def _parse_filter(spec: str, hosts: dict[str, list[int]], flag: str) -> dict[str, list[int]]:
    """`a@b:0,2` → {a: [], b: [0, 2]}; an empty slot list means the whole host."""
    chosen: dict[str, list[int]] = {}
    for node in spec.split("@"):
        name, _, slot_text = node.partition(":")
        if name not in hosts:
            raise HostfileError(f"{flag} {spec!r}: host {name!r} is not in the hostfile")
        slots = chosen.setdefault(name, [])
        for item in filter(None, slot_text.split(",")):
            if not item.isdigit() or int(item) not in hosts[name]:
                raise HostfileError(
                    f"{flag} {spec!r}: host {name!r} has slots 0..{len(hosts[name]) - 1}, not {item!r}"
                )
            if int(item) not in slots:
                slots.append(int(item))
    return chosen


def resolve_active_hosts(
    hostfile: dict[str, int],
    include: str = "",
    exclude: str = "",
    num_nodes: int = -1,
    num_gpus: int = -1,
) -> dict[str, list[int]]:
    """Host → slot indices the launcher will use, in hostfile order (DeepSpeed's rules)."""
    if include and exclude:
        raise HostfileError("--include and --exclude are mutually exclusive")
    if (include or exclude) and (num_nodes >= 0 or num_gpus >= 0):
        raise HostfileError("--num_nodes/--num_gpus cannot be combined with --include/--exclude")
    pool = {host: list(range(slots)) for host, slots in hostfile.items()}
    if include:
        chosen = _parse_filter(include, pool, "--include")
        active = {h: sorted(chosen[h]) or pool[h] for h in pool if h in chosen}
    elif exclude:
        dropped = _parse_filter(exclude, pool, "--exclude")
        active = {}
        for host, slots in pool.items():
            if host in dropped:
                slots = [s for s in slots if dropped[host] and s not in dropped[host]]
            if slots:
                active[host] = slots
    else:
        active = pool
    if num_nodes > 0:
        active = dict(list(active.items())[:num_nodes])
    if num_gpus > 0:
        active = {host: list(range(num_gpus)) for host in active}
    if not active:
        raise HostfileError("no hosts left to launch on after --include/--exclude")
    return active
