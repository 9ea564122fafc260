"""Tests of S3 data, results and state against a real S3-compatible server."""
