"""knhkd: a single-node, self-governing knowledge daemon.

An observation enters through ``monitor`` (HTTP or the shared-memory ring), is
made durable by ``store``, feeds the detectors of ``analyze``, whose patterns
``plan`` turns into ΔΣ proposals, which ``validate`` judges in seven stages and
``execute`` promotes against ``knowledge``. Every decision leaves a signed,
chained record in ``receipts``. ``runtime`` supervises the actors that carry
this flow; ``api`` and ``cli`` are how operators reach it.
"""

__version__ = "0.1.0"
