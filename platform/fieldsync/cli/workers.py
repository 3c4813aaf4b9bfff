"""`fieldsync workers set|status` and `dlq list|replay`: the listener pool of every process and
the push queue's dead letters (docs/cli.md, docs/workers.md). `fieldsync worker`, the process
itself, is in cli/serve.py."""

from __future__ import annotations

import json
import sys

import click

from fieldsync.cli.common import (Invocation, action_group, command, data_dir_option, database_options,
                                  json_option, operator, pass_invocation, table)

workers = action_group("workers", "show or change the listener pool of every process")


@workers.add_command
@command("set", "set the desired listener threads per process for a queue")
@click.option("--queue", default="push", help="the queue (default push)")
@click.option("--threads", type=int, required=True, help="threads per process, 1-64")
@database_options
@pass_invocation
def set_size(invocation: Invocation, queue: str, threads: int, database_url: str | None,
             data_dir: str | None) -> int:
    from fieldsync.store.engine import make_engine
    from fieldsync.workers.fleet import create_worker_tables, set_desired_size
    from fieldsync.errors import InvalidPoolSize
    config = invocation.config(database_url=database_url, data_dir=data_dir)
    engine = make_engine(config.database_url)
    try:
        create_worker_tables(engine)
        done = set_desired_size(engine, queue, threads, f"{operator()} (cli)")
    except InvalidPoolSize as exc:
        print(f"fieldsync workers set: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(f"queue {done.queue}: {done.threads} thread(s) per process from now on; each process resizes "
          "at its next heartbeat")
    return 0


@workers.add_command
@command("status", "desired size, queue depth, in-flight and dead letters, and every process")
@json_option
@database_options
@pass_invocation
def status(invocation: Invocation, as_json: bool, database_url: str | None, data_dir: str | None) -> int:
    """The queue's depth waits at most a few seconds (an unreachable broker shows as unknown);
    the spool and every process's dependency outages come from the database."""
    from fieldsync.store.engine import make_engine
    from fieldsync.sync.service import open_push_queue
    from fieldsync.workers.fleet import create_worker_tables, workers_status
    config = invocation.config(database_url=database_url, data_dir=data_dir)
    engine = make_engine(config.database_url)
    queue = open_push_queue(config)
    try:
        create_worker_tables(engine)
        found = workers_status(engine, queue)
    finally:
        queue.close()
        engine.dispose()
    if as_json:
        print(json.dumps(found, indent=2))
        return 0
    depth = found["depth"]
    desired = found["desired_threads"]
    print(f"queue {found['queue']}: desired size "
          + (f"{desired} thread(s) per process (set {found['updated_at']} by {found['updated_by']})"
             if desired is not None else "not set (each process keeps its own)"))
    if depth.get("error"):
        print(f"depth: unknown, the queue did not answer ({depth['error']})")
    else:
        print(f"depth: {depth['visible']} waiting, {depth['in_flight']} in flight, {depth['dead']} dead letter(s)")
    spool = found["spool"]
    if spool is not None:
        print(f"spool: {spool['batches']} push batch(es) of {spool['devices']} device(s) held in the database"
              + (f", the oldest for {spool['oldest_age_seconds']:g} s" if spool["oldest_age_seconds"] is not None else ""))
    for outage in found["outages"]:
        print(f"OUTAGE: {outage['dependency']} is {outage['state']} since {outage['since']} for {outage['worker_id']} "
              f"on {outage['host']}: {outage['error']}")
    items = [dict(p, state="stale" if p["stale"] else "live") for p in found["workers"]]
    if items:
        table(items, ("worker_id", "host", "pid", "threads", "in_flight", "processed", "failed",
                      "started_at", "last_seen", "state"))
    stale = sum(p["stale"] for p in found["workers"])
    print(f"{len(items) - stale} live process(es) with {found['threads']} thread(s) and {found['in_flight']} "
          f"message(s) in flight" + (f"; {stale} stale" if stale else ""))
    return 0


dlq = action_group("dlq", "show and re-drive the push queue's dead letters")


@dlq.add_command
@command("list", "list dead letters: message id, device, mutations, deliveries, enqueue time")
@json_option
@click.option("--limit", type=int, default=100, help="at most this many (default 100)")
@data_dir_option
@pass_invocation
def dlq_list(invocation: Invocation, as_json: bool, limit: int, data_dir: str | None) -> int:
    from fieldsync.sync.service import dead_letter_summaries, open_push_queue
    queue = open_push_queue(invocation.config(data_dir=data_dir))
    try:
        items = dead_letter_summaries(queue, limit)
    finally:
        queue.close()
    if as_json:
        print(json.dumps({"items": items}, indent=2))
        return 0
    if items:
        table(items, ("message_id", "device_id", "mutations", "receive_count", "enqueued_at"))
    print(f"{len(items)} dead letter(s)")
    return 0


@dlq.add_command
@command("replay", "move dead letters back onto the push queue")
@click.option("--id", "ids", multiple=True, metavar="ID", help="a message id (repeatable)")
@click.option("--all", "replay_all", is_flag=True, help="every dead letter")
@data_dir_option
@pass_invocation
def dlq_replay(invocation: Invocation, ids: tuple[str, ...], replay_all: bool, data_dir: str | None) -> int:
    from fieldsync.sync.service import open_push_queue
    if bool(ids) == replay_all:
        print("fieldsync dlq replay: name messages with --id ID (repeatable) or pass --all", file=sys.stderr)
        return 2
    queue = open_push_queue(invocation.config(data_dir=data_dir))
    try:
        moved = queue.replay_dead(None if replay_all else list(ids))
    finally:
        queue.close()
    print(f"replayed {moved} dead letter(s) onto the push queue")
    if ids and moved < len(set(ids)):
        print(f"{len(set(ids)) - moved} of the ids named are not dead letters", file=sys.stderr)
        return 1
    return 0
