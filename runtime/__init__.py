"""What every long-running payhook role shares: dependencies, lifetime, health, outcomes.

``ingress`` and ``workers`` both stand on this package (and on ``contracts``), never on each
other. It holds no business logic: connecting to Postgres and RabbitMQ with backoff for as long
as it takes, the process lifetime (signals, grace, exit codes), the health listener, and the
mapping of a message handler's outcome to ack, requeue or dead-letter.

    backoff.py     capped, jittered delays; a stop-aware sleep
    errors.py      RetryLater, PermanentFailure; which driver errors mean "a dependency is away"
    servers.py     URLs: split a node list, name a server (host:port), mask passwords
    database.py    wait for Postgres, then a pool
    broker.py      wait for a RabbitMQ node (of several), declare the topology, sessions
    consume.py     run a handler on a message and settle it by its outcome
    health.py      readiness of each dependency; /healthz, /readyz on the health port
    process.py     run roles until SIGTERM/SIGINT, a bug, or the grace running out
"""
