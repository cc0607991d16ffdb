"""edgeproxy benchmarks: side by side with nginx and Varnish (see README.md)."""
