"""absl entry points: train, compare, plot_patterns, generate_data; the benchmarks in `bench`."""
