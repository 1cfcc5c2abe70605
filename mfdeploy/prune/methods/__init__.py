"""Pruning methods: one file each, registered in `mfdeploy.prune.registry`."""
