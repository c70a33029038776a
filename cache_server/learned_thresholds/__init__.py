"""The `verified` hit policy: per-entry thresholds learned online, so that a cache serves a
hit only while the chance that it is wrong stays below the error rate the user chose.

- `evidence`: the observations (similarity, was the cached answer right?) kept per entry and
  per cache, in a compact form both stores hold.
- `model`: the logistic curves fitted to them and the serve-or-explore decision.
- `judge`: how an exploration decides whether the cached answer was right.
- `policy`: which policy a request runs under (request, cache, server default).
- `engine`: what SemanticCache calls: decisions, observations, statistics.

The package is named for what it does (per-entry thresholds, learned); the policy, its settings,
metrics and API fields keep the name `verified`.
"""
