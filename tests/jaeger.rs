//! Jaeger test: written below.
