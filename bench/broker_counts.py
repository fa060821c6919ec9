"""Messages the broker handled, from its own counters: what a benchmark costs RabbitMQ.

Reads ``rabbit_global_counters`` (messages published, routed, confirmed, delivered, acked)
and each connection's ``recv_cnt``/``send_cnt`` (the broker's socket reads from and writes to
that connection: a proxy for the frames a role sends, e.g. one ack per message vs. one
``multiple`` ack per batch, and for the deliveries and confirms it gets) through
``scripts/services.sh ctl eval``, so only for the private node of this checkout; ``None``
otherwise. Diff two readings to get a run's figures.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]

_EVAL = """
O = rabbit_global_counters:overview(),
P = maps:get([{protocol,amqp091}], O),
Q = maps:get([{protocol,amqp091},{queue_type,rabbit_quorum_queue}], O),
C = maps:get([{protocol,amqp091},{queue_type,rabbit_classic_queue}], O),
Name = fun(CP) -> case lists:keyfind(<<"connection_name">>, 1, CP) of
    {_, _, V} -> V; _ -> <<"other">> end end,
Conns = [begin
    I = rabbit_reader:info(Pid, [client_properties, recv_cnt, send_cnt]),
    {Name(proplists:get_value(client_properties, I)),
     proplists:get_value(recv_cnt, I), proplists:get_value(send_cnt, I)}
  end || Pid <- rabbit_networking:connections()],
io:format("~s~n", [rabbit_json:encode(#{
    published => maps:get(messages_received_total, P),
    routed => maps:get(messages_routed_total, P),
    confirmed => maps:get(messages_confirmed_total, P),
    delivered => maps:get(messages_delivered_total, Q) + maps:get(messages_delivered_total, C),
    acked => maps:get(messages_acknowledged_total, Q) + maps:get(messages_acknowledged_total, C),
    connections => [#{name => N, recv => R, send => S} || {N, R, S} <- Conns]})]).
"""

COUNTERS = ("published", "routed", "confirmed", "delivered", "acked")


def read() -> dict[str, Any] | None:
    """The broker's counters now, or ``None`` when the node is not ours (or not reachable)."""
    try:
        done = subprocess.run(
            [str(REPO / "scripts" / "services.sh"), "ctl", "eval", _EVAL],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in done.stdout.splitlines():
        if line.startswith(b"{"):
            parsed: dict[str, Any] = orjson.loads(line)
            return parsed
    return None


def per_connection(reading: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Socket reads and writes by connection name, summed over connections of one name."""
    out: dict[str, tuple[int, int]] = {}
    for conn in reading["connections"]:
        recv, send = out.get(conn["name"], (0, 0))
        out[conn["name"]] = (recv + conn["recv"], send + conn["send"])
    return out


def difference(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """Counters of ``after`` minus ``before``; ``recv:<name>``/``send:<name>`` per connection.

    A connection that closed in between (the benchmark's own probes) is left out.
    """
    out: dict[str, float] = {k: after[k] - before[k] for k in COUNTERS}
    old = per_connection(before)
    for name, (recv, send) in per_connection(after).items():
        recv0, send0 = old.get(name, (0, 0))
        out[f"recv:{name}"] = recv - recv0
        out[f"send:{name}"] = send - send0
    return out
