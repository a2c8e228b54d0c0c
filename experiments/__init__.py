"""absl entry points: train, compare, bench_attention, plot_patterns, generate_data."""
