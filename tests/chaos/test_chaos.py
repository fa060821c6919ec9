"""Issue 9: the whole system as separate processes under load while every role is killed in
turn and RabbitMQ and Postgres restart; nothing acknowledged is lost or doubled.

See ``tests/chaos/harness.py`` for the run and ``tests/chaos/verify.py`` for what is checked;
``bench/chaos.py`` is the same run at 100,000 callbacks with the figures printed.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from tests.chaos.harness import ChaosPlan, broker_names, run_chaos
from tests.chaos.system import ServerControl, database_server_url
from tests.servers import BrokerControl, BrokerJanitor, truncate_all

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(420)]


@pytest.fixture
async def servers(broker_control: BrokerControl, amqp_url: str) -> ServerControl:
    """Both servers, when they are ours to restart (``broker_control`` skips otherwise)."""
    control = ServerControl(amqp_url, database_server_url())
    if not await control.is_ours("postgres"):
        pytest.skip(
            f"the Postgres at {database_server_url()} was not started by scripts/services.sh, "
            "so it is not ours to restart"
        )
    return control


async def test_nothing_acknowledged_is_lost_or_doubled_under_chaos(
    servers: ServerControl,
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    amqp_cleanup: BrokerJanitor,
    tmp_path: Path,
) -> None:
    plan = ChaosPlan()
    for name in broker_names(namespace, plan):
        amqp_cleanup.register(name)
    await truncate_all(database_url)  # whatever an earlier test left would count as ours

    report = await run_chaos(
        tmp_path,
        database_url=database_url,
        amqp_url=amqp_url,
        namespace=namespace,
        servers=servers,
        plan=plan,
        say=print,
    )

    print(report.render())
    assert report.problems == [], report.render()
    # The run did what it claims: every callback acknowledged, every fault carried out while
    # callbacks were being sent, the merchant's refusals retried.
    assert report.acked == plan.callbacks
    assert [f.name for f in report.faults] == list(plan.faults)
    assert all(f.dispatched > 0 and f.ready_s is not None for f in report.faults)
    assert report.merchant["failed_on_purpose"] > 0
    assert report.merchant["delivered"] == report.events["distinct"] == report.events["rows"]
