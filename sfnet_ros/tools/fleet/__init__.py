"""Fleet evaluation: many bags and cameras, one or two models, exact totals, reports people read.

``sources`` (which bags and cameras) -> ``runner`` (a task per bag: here, in worker processes or
on Ray; resumable) -> ``evaluate`` (one bag: per-frame confusion counts, uncertainty, strips) ->
``results`` (a bag's result, stored and merged exactly) -> ``summarize`` and ``compare`` (totals,
groups, bootstrap deltas, the gate) -> ``report_html`` / ``report_markdown``. The command lines
are ``sfnet_ros.tools.fleet_eval``.
"""
