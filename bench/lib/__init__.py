"""Building blocks of the benchmark: processes, backend servers, tunnel targets, meters."""
