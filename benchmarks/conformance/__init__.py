"""The public HTTP cache test suite (cache-tests.fyi) run against edgeproxy and references.

``python -m benchmarks.conformance --suite PATH`` starts the suite's origin server on loopback,
puts the chosen caches in front of it (edgeproxy edge → shield, a single edgeproxy edge, nginx
``proxy_cache``, or nothing), runs the suite's command-line client against each, and writes
``results.md`` / ``results.json`` judged with the suite's own rules. See README.md here.
"""
