"""Pruning methods: one file each, registered in `mfdeploy.pruning.registry`."""
