"""Scoring: anomaly maps and image scores (the table of terms), tiling, calibration,
thresholds, masks and the [0, 1] unit scale."""
