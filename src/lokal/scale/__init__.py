"""Scale-out on Ray Serve: replicas that each own a ``Runtime``, an ingress that serves the same
adapters over a ``RemoteRuntime``, and a prefix-affine request router (docs/scale-out.md)."""
