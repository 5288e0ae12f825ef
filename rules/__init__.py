"""Rule plugins: pure, vectorized functions over Arrow data with frozen parameters."""
