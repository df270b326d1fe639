"""The data team's landing: hookline's output topics as Apache Iceberg tables.

``hookline sink`` reads ``<env>.orders.state``, ``<env>.orders.changes`` and
``<env>.webhooks.events`` and writes ``<env>.orders_state``,
``<env>.order_changes`` and ``<env>.webhook_events`` (docs/warehouse.md).
Everything here except :mod:`warehouse.rows` and :mod:`warehouse.command`
needs the ``warehouse`` extra (pyiceberg, pyarrow), which the gateway image
does not install.
"""
