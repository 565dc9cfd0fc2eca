//! Evaluation of frozen encoders: feature extraction, linear probes, kNN and metrics.
