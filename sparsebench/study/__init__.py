"""``sparsebench study``: where sparsity pays, by pattern, sparsity level and representation.

It separates what needs training from what needs only timing. Every representation of a pattern
computes the same function, so accuracy is measured once per (arch, pattern, sparsity, seed), on the
``ci`` budget, trained with the fastest representation (``accuracy``). Cost is measured per (arch,
size, pattern, sparsity, representation) against dense, interleaved in one process, with no training
to convergence (``cost``). Each unit of work is one ``executors.Task``; the driver (``driver``) writes
one validated JSON document per point (``documents``), and ``report`` turns the documents into
``STUDY.md`` and PNG plots (numbers from ``analysis``).

Modules: ``points`` (the sweep and its points), ``accuracy``, ``cost`` (and ``cost_result``, its typed
result), ``documents``, ``driver``, ``analysis`` (break-even, Pareto front, means and spreads),
``plots``, ``report``, ``command`` (its command line). Harness code: the library core never imports it.
"""
