"""Integration tests of the remote Dask engine against real scheduler and worker processes."""
