"""Inspection commands: ``snapshots ls ID [PATTERN]``, ``snapshots diff A B`` and ``stats``."""

from __future__ import annotations

from typing import Any

import click

from backup.repository.inspect import census_counts, diff_snapshots, list_entries, repository_stats
from lifeboat.context import Session, find_header, json_option, pass_session, print_json, unknown_name
from policies.sizes import human_bytes

CENSUS_SHOWN = 20  # census names per group printed on a terminal (--json has them all)


@click.command("ls")
@click.argument("snapshot_id", metavar="ID")
@click.argument("pattern", required=False)
@json_option(help='Print {"snapshot", "entries": [...], "census": {...}, "totals"} on stdout.')
@pass_session
def snapshots_ls(session: Session, snapshot_id: str, pattern: str | None, as_json: bool) -> None:
    """The entries of a snapshot: S3 objects with size and time, ClickHouse tables and partitions
    with rows, etcd's snapshot file; and its census (etcd: keys per resource, namespace and prefix).
    ID: an id, a unique start of one, or latest. PATTERN: a glob (data/db/*) or the start of names."""
    repository = session.repository()
    header = find_header(repository, snapshot_id)
    entries = list(list_entries(repository, header, pattern))
    census = census_counts(header.census)
    totals = {"entries": len(entries), "bytes": sum(item["size"] for item in entries)}
    if as_json:
        print_json(
            {"snapshot": header.summary(), "pattern": pattern, "entries": entries, "census": census, "totals": totals}
        )
        return
    click.echo(f"{header.id} ({header.kind}, {header.started:%Y-%m-%d %H:%M:%S} UTC, {header.status})")
    rows = [_entry_row(item) for item in entries]
    if rows:
        _table(("SIZE", "ROWS", "TIME (UTC)", "NAME"), rows)
    for group, counts in census.items():
        click.echo(f"{group}:")
        ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        for name, count in ordered[:CENSUS_SHOWN]:
            click.echo(f"  {count:>10}  {name}")
        if len(ordered) > CENSUS_SHOWN:
            click.echo(f"  ... {len(ordered) - CENSUS_SHOWN} more (--json lists them all)")
    click.echo(f"{totals['entries']} entries, {human_bytes(totals['bytes'])}" + (f" matching {pattern}" if pattern else ""))


def _entry_row(item: dict[str, Any]) -> tuple[str, ...]:
    time = str(item.get("time", ""))[:19].replace("T", " ")
    rows = "" if item.get("rows") is None else str(item["rows"])
    return (human_bytes(item["size"]), rows, time, item["name"])


@click.command("diff")
@click.argument("before", metavar="A")
@click.argument("after", metavar="B")
@json_option(help='Print {"added", "removed", "changed", "census", "totals"} on stdout.')
@pass_session
def snapshots_diff(session: Session, before: str, after: str, as_json: bool) -> None:
    """What changed from snapshot A to snapshot B: entries added (+), removed (-) and changed (M: another
    content), census counts that differ, and totals. A, B: ids, unique starts of ids, or latest."""
    repository = session.repository()
    diff = diff_snapshots(repository, find_header(repository, before), find_header(repository, after))
    if as_json:
        print_json(diff.as_dict())
        return
    for item in diff.added:
        click.echo(f"+ {item['name']}  ({human_bytes(item['size'])})")
    for item in diff.removed:
        click.echo(f"- {item['name']}  ({human_bytes(item['size'])})")
    for change in diff.changed:
        click.echo(f"M {change.name}  ({human_bytes(change.size_before)} -> {human_bytes(change.size_after)})")
    for count in diff.census:
        click.echo(f"  {count['group']} {count['name']}: {count['before']} -> {count['after']}")
    totals = diff.totals()
    click.echo(
        f"{diff.before} -> {diff.after}: {totals['added']} added ({human_bytes(totals['added_bytes'])}), "
        f"{totals['removed']} removed ({human_bytes(totals['removed_bytes'])}), {totals['changed']} changed, "
        f"{totals['unchanged']} unchanged"
    )


@click.command()
@click.option("--source", "names", multiple=True, metavar="NAME", help="Only this source (repeatable); default: all.")
@json_option(help='Print {"sources": [...], "total": {...}, "repository": {...}} on stdout.')
@pass_session
def stats(session: Session, names: tuple[str, ...], as_json: bool) -> None:
    """Logical size (what the snapshots' entries add up to), size after dedup, stored size (after
    compression and encryption), chunk count and dedup ratio, per source and in total. Reads every
    manifest once (not the data)."""
    policy = session.policy()
    repository = session.repository()
    headers = [header for header in repository.list_snapshots() if not names or header.source in names]
    unknown = sorted(set(names) - policy.sources.keys() - {header.source for header in headers})
    if unknown:
        raise unknown_name("source", ", ".join(unknown), policy.sources)
    found = repository_stats(repository, headers)
    if as_json:
        print_json(found.as_dict())
        return
    document = found.as_dict()
    rows = [_stats_row(item["source"], item) for item in document["sources"]]
    rows.append(_stats_row("total", document["total"]))
    _table(("SOURCE", "SNAPSHOTS", "LOGICAL", "DEDUPED", "STORED", "CHUNKS", "DEDUP", "COMPRESSION"), rows)
    whole = document["repository"]
    click.echo(f"repository: {whole['chunks_stored']} chunks stored, {human_bytes(whole['bytes_stored'])}")
    if whole["missing_chunks"]:
        click.echo(f"warning: {whole['missing_chunks']} chunk(s) referenced but missing: run `lifeboat check`", err=True)


def _stats_row(name: str, item: dict[str, Any]) -> tuple[str, ...]:
    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    return (
        name,
        str(item["snapshots"]),
        human_bytes(item["logical_bytes"]),
        human_bytes(item["unique_bytes"]),
        human_bytes(item["stored_bytes"]),
        str(item["chunks"]),
        ratio(item["dedup_ratio"]),
        ratio(item["compression_ratio"]),
    )


def _table(headings: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(headings, *rows, strict=True)]
    for row in (headings, *rows):
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
