"""The benchmark the README quotes: ``python -m bench.run [--quick|--full] [--json PATH]``.

Every scenario runs NeoForge Mail and a baseline (the typical Celery email
task, bench/baseline.py) in the same run, against the same real parts: a
``redis-server``, Postfix's ``smtp-sink`` and, for the slow-server scenario, a
delaying proxy in front of it (bench/slowproxy.py).
"""
