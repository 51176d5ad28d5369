"""The harness layer: data, speed benchmarks, accuracy evaluation, reports and sweeps."""
