"""The artifact contract: file and folder names, tower specs (`layout`), typed manifests (`manifest`), and
atomic writes, hashes and the `--force` rules (`io`). Level 0: imports nothing of mfdeploy but `errors`."""
